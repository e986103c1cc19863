"""Marker modes end to end: constrained lists are always valid (random models, real SmolLM2
and toy char tokenizers), forced prefixes appear exactly, results parse, the CLI function reads
and writes JSONL."""
from __future__ import annotations

import json

import pytest
import tokenizers
from tokenizers import decoders, models

from treasure_jax.data import chat_templates
from treasure_jax.data import vocab
from treasure_jax.decode import modes
from treasure_jax.decode import runner
from treasure_jax.markers import taxonomy
from treasure_jax.markers import template
from treasure_jax.model import config
from treasure_jax.model import convert
from treasure_jax.model import gguf
from treasure_jax.model import gguf_tokenizer
from treasure_jax.model import hf
from treasure_jax.model import transformer

TAX = taxonomy.default_taxonomy()
PROMPTS = ["Fix my code", "Bonjour", "Write a haiku about rain", "2+2?", "List three fruits",
           "Explain tides"]


def char_tokenizer() -> tokenizers.Tokenizer:
  chars = [chr(c) for c in range(32, 127)] + ["\n"]
  tok = tokenizers.Tokenizer(models.BPE({c: i for i, c in enumerate(chars)}, merges=[]))
  tok.decoder = decoders.Fuse()
  tok.add_special_tokens([tokenizers.AddedToken(t, special=True)
                          for t in ("<|im_start|>", "<|im_end|>")])
  return tok


def decoder_for(tok: tokenizers.Tokenizer, seed: int = 0) -> runner.Decoder:
  vocabulary = vocab.HfTokenizerVocabulary(tok.to_str(), special_tokens={"eos_token": "<|im_end|>"},
                                           chat_template=chat_templates.CHATML)
  cfg = config.preset("tiny", dtype="float32", vocab_size=tok.get_vocab_size(),
                      max_seq_len=512)
  return runner.Decoder(transformer.create(cfg, seed=seed), TAX, vocabulary,
                        chat_templates.BUILTIN["chatml"])


@pytest.fixture(scope="module")
def smollm2_tokenizer() -> tokenizers.Tokenizer:
  return gguf_tokenizer.build_tokenizer(gguf.read_metadata(convert.smollm2_gguf_path()))


@pytest.mark.parametrize("which", ["char", "smollm2"])
def test_constrained_lists_are_always_valid(which, request):
  tok = char_tokenizer() if which == "char" else request.getfixturevalue("smollm2_tokenizer")
  decoder = decoder_for(tok)
  forced = {"domain": "Code", "length_tokens": 120}
  reqs = [runner.Request(p, modes.make("constrained", None, TAX)) for p in PROMPTS]
  reqs += [runner.Request(p, modes.make("constrained", forced, TAX, force_prefix=True))
           for p in PROMPTS[:2]]
  results = decoder.run(reqs, max_new_tokens=70, seed=0, sampler=runner.sampling.Temperature(1.0))
  for r in results:
    assert r.problems == [], r.completion
    assert TAX.validate(r.markers) == r.markers
  for r in results[len(PROMPTS):]:
    prefix = "<MARKER_LIST> <length_tokens> 120 </length_tokens> <domain> Code </domain>"
    assert r.completion.startswith(prefix)
    assert list(r.markers.items())[:2] == [("length_tokens", 120), ("domain", "Code")]


def test_penalties_leave_constrained_lists_alone_and_act_on_the_answer():
  # Inside a constrained list the taxonomy decides: the same list with or without penalties;
  # the free text after it is penalised (and differs).
  decoder = decoder_for(char_tokenizer())
  reqs = [runner.Request(p, modes.make("constrained", None, TAX)) for p in PROMPTS]
  plain = decoder.run(reqs, max_new_tokens=160)
  pen = decoder.run(reqs, max_new_tokens=160,
                    penalties=runner.sampling.Penalties(presence=1.0, frequency=2.0))
  closed = [(a, b) for a, b in zip(plain, pen) if "</MARKER_LIST>" in a.completion]
  assert closed, [r.completion for r in plain]
  for a, b in closed:
    assert b.completion.startswith(a.completion.split("</MARKER_LIST>")[0] + "</MARKER_LIST>")
    assert a.markers == b.markers
  assert any(a.response != b.response for a, b in closed)
  with pytest.raises(ValueError, match=r"--presence-penalty / --frequency-penalty: "
                                       r"Penalties.frequency=3.0 must be in \[-2, 2\]"):
    runner.generate_cli("/no/checkpoint/needed", prompts=["x"], frequency_penalty=3.0)


def test_fixed_markers_are_validated_and_go_to_the_prompt():
  with pytest.raises(taxonomy.MarkerError, match="allowed: concise, medium, long"):
    modes.make("fixed", {"length_bucket": "tiny"}, TAX)
  with pytest.raises(taxonomy.MarkerError, match="takes no markers"):
    modes.make("inferred", {"domain": "Code"}, TAX)
  mode = modes.make("fixed", {"lang": "French", "quality_bucket": "1"}, TAX, force_prefix=True)
  assert modes.prompt_text(mode, "Salut", TAX) == (
      "Salut <MARKER_LIST> <quality_bucket> 1 </quality_bucket> <lang> French </lang> "
      "</MARKER_LIST>")
  assert modes.forced_prefix(mode, TAX) == (
      "<MARKER_LIST> <quality_bucket> 1 </quality_bucket> <lang> French </lang>")
  assert modes.forced_prefix(modes.make("fixed", {"lang": "French"}, TAX), TAX) == ""


def test_finish_parses_cuts_stops_and_maps_logprobs():
  mode = modes.make("inferred", None, TAX)
  pieces = [b"<MARKER_LIST>", b" <domain>", b" Co", b"de", b" </domain>", b" </MARKER_LIST>",
            b"\n", b"Hi", b" STOP", b" more"]
  logprobs = [-0.1, -0.2, -1.0, -0.5, -0.1, -0.1, -0.1, -2.0, -0.3, -0.3]
  text = b"".join(pieces).decode()
  r = modes.finish(mode, TAX, prompt="p", generated_text=text, stop_reason="stop_string",
                   num_tokens=10, num_prompt_tokens=4, stop_strings=["STOP"],
                   token_bytes=pieces, logprobs=logprobs)
  assert r.markers == {"domain": "Code"} and r.response == "Hi " and r.problems == []
  assert r.marker_logprobs == {"domain": pytest.approx(-1.5)}
  broken = modes.finish(mode, TAX, prompt="p", generated_text="<MARKER_LIST> <domain> Co",
                        stop_reason="max_tokens", num_tokens=5, num_prompt_tokens=4)
  assert broken.problems and broken.markers == {}
  plain = modes.finish(modes.make("none", None, TAX), TAX, prompt="p", generated_text=text,
                       stop_reason="eos", num_tokens=3, num_prompt_tokens=1)
  assert plain.response == text and plain.markers == {} and plain.problems == []


def test_generate_cli_reads_and_writes_jsonl(tmp_path):
  tok = char_tokenizer()
  decoder = decoder_for(tok, seed=3)
  model_dir = tmp_path / "model"
  hf.save_dir(decoder.model, model_dir)
  tok.save(str(model_dir / "tokenizer.json"))
  (model_dir / "tokenizer_config.json").write_text(json.dumps(
      {"eos_token": "<|im_end|>", "chat_template": chat_templates.CHATML}))
  inputs = tmp_path / "in.jsonl"
  inputs.write_text("\n".join(json.dumps(x) for x in [
      {"prompt": "fix it", "id": "a", "markers": {"task": "CodeFix"}, "mode": "constrained",
       "force_prefix": True},
      {"prompt": "hello", "mode": "constrained"}]) + "\n")
  out = tmp_path / "out.jsonl"
  results = runner.generate_cli(str(model_dir), prompts=["plain"], input_path=str(inputs),
                                output_path=str(out), mode="none", max_new_tokens=80,
                                stop=["zz"], logprobs=True)
  lines = [json.loads(x) for x in out.read_text().splitlines()]
  assert [x["id"] for x in lines] == [0, "a", 2]
  assert lines[1]["markers"]["task"] == "CodeFix" and lines[1]["problems"] == []
  assert lines[2]["problems"] == [] and lines[0]["mode"] == "none"
  for x in lines:
    assert {"response", "markers", "problems", "num_tokens", "stop_reason"} <= set(x)
    assert len(x["token_logprobs"]) == x["num_tokens"]
  assert "task" not in results[1].marker_logprobs  # Forced, not generated.
  assert json.loads(runner.format_result(results[1], True))["markers"]["task"] == "CodeFix"
  bad = tmp_path / "bad.jsonl"
  bad.write_text(json.dumps({"prompt": "x", "markers": {"domain": "Cooking"}}) + "\n")
  with pytest.raises(taxonomy.MarkerError, match=r"bad.jsonl:1: domain: .*allowed: Sciences"):
    runner.generate_cli(str(model_dir), input_path=str(bad))
