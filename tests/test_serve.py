"""`treasure_jax.serve` on 127.0.0.1 driven by the official openai client: markers fixed,
inferred and constrained through `extra_body`, streaming, n and seeds, /v1/models and /health,
OpenAI-style 400 errors naming the field, and the [annotate] LLM client against it.

The model is a tiny random 2-layer one with a character tokenizer, saved as an HF directory and
loaded with `runner.load`, the loader `treasure-jax serve --checkpoint` uses. Requests keep to a
few shapes (max_tokens <= 16 -> one step bucket) so the test compiles a handful of loops.
"""
from __future__ import annotations

import atexit
import functools
import json
import pathlib
import shutil
import tempfile
import urllib.error
import urllib.request

import openai
import pytest

import test_decode_modes as decode_modes_test
from treasure_jax.annotate import llm
from treasure_jax.data import chat_templates
from treasure_jax.decode import modes
from treasure_jax.decode import runner
from treasure_jax.decode import sampling
from treasure_jax.markers import taxonomy
from treasure_jax.model import hf
from treasure_jax.serve import protocol
from treasure_jax.serve import server

TAX = taxonomy.default_taxonomy()
HI = [{"role": "user", "content": "hi"}]


def tiny_checkpoint(directory) -> str:
  """A random tiny model with a char tokenizer and ChatML, as an HF directory."""
  tok = decode_modes_test.char_tokenizer()
  decoder = decode_modes_test.decoder_for(tok, seed=3)
  hf.save_dir(decoder.model, directory)
  tok.save(str(directory / "tokenizer.json"))
  (directory / "tokenizer_config.json").write_text(json.dumps(
      {"eos_token": "<|im_end|>", "chat_template": chat_templates.CHATML}))
  return str(directory)


def client(url: str) -> openai.OpenAI:
  return openai.OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=120)


@functools.cache
def tiny_decoder() -> runner.Decoder:
  """One loaded tiny checkpoint for both serve test modules (loading costs seconds)."""
  directory = pathlib.Path(tempfile.mkdtemp(prefix="tiny_serve_"))
  atexit.register(shutil.rmtree, directory, ignore_errors=True)
  return runner.load(tiny_checkpoint(directory))


@pytest.fixture(scope="module")
def decoder():
  return tiny_decoder()


@pytest.fixture(scope="module")
def served(decoder):
  with server.Background(decoder) as s:
    yield s


def test_markers_fixed_inferred_and_constrained(served):
  c = client(served.url)
  fixed = c.chat.completions.create(
      model="tiny", messages=HI, max_tokens=16,
      extra_body={"markers": {"task": "CodeFix", "length_bucket": "concise"},
                  "marker_mode": "fixed", "force_prefix": True})
  got = fixed.choices[0].markers
  assert got["mode"] == "fixed"
  assert got["values"]["task"] == "CodeFix" and got["values"]["length_bucket"] == "concise"
  assert "<MARKER_LIST>" not in fixed.choices[0].message.content
  inferred = c.chat.completions.create(model="tiny", messages=HI, max_tokens=16)
  assert inferred.choices[0].markers["mode"] == "inferred"
  assert inferred.usage.completion_tokens == 16 and inferred.choices[0].finish_reason == "length"
  # A random model writes no list: the problem is reported, not hidden.
  assert inferred.choices[0].markers["problems"] and not inferred.choices[0].markers["values"]
  # "none": plain generation, nothing added to the prompt and nothing parsed.
  plain = c.chat.completions.create(model="tiny", messages=HI, max_tokens=16,
                                    extra_body={"marker_mode": "none"})
  assert plain.choices[0].markers == {"mode": "none", "values": {}, "problems": []}
  assert plain.usage.prompt_tokens < fixed.usage.prompt_tokens  # No prompt-side list.
  # Constrained: the random model's list always parses; forced, it starts with the marker.
  constrained = c.chat.completions.create(
      model="tiny", messages=HI, max_tokens=80,
      extra_body={"markers": {"domain": "Code"}, "marker_mode": "constrained",
                  "force_prefix": True})
  m = constrained.choices[0].markers
  assert m["problems"] == [] and TAX.problems(m["values"]) == []
  assert m["values"]["domain"] == "Code"
  assert "</MARKER_LIST>" not in constrained.choices[0].message.content


def test_streaming_equals_the_plain_reply(served):
  c = client(served.url)
  kwargs = dict(model="tiny", messages=HI, max_tokens=12, n=2)
  plain = c.chat.completions.create(**kwargs)
  texts, finals = {0: "", 1: ""}, {}
  for chunk in c.chat.completions.create(stream=True, **kwargs):
    for ch in chunk.choices:
      texts[ch.index] += ch.delta.content or ""
      if ch.finish_reason:
        finals[ch.index] = (ch.finish_reason, ch.markers)
  for choice in plain.choices:
    assert texts[choice.index] == choice.message.content
    assert finals[choice.index] == (choice.finish_reason, choice.markers)
  events = list(client(served.url).completions.create(
      model="tiny", prompt="abc", max_tokens=5, stream=True))
  assert "".join(e.choices[0].text for e in events if e.choices)
  assert events[-1].usage.completion_tokens == 5


def test_n_seed_stop_and_completions(served):
  c = client(served.url)
  kwargs = dict(model="tiny", prompt="abc", max_tokens=8, n=3, temperature=1.0, seed=7)
  a, b = c.completions.create(**kwargs), c.completions.create(**kwargs)
  texts = [x.text for x in a.choices]
  assert texts == [x.text for x in b.choices] and len(set(texts)) > 1
  assert [x.index for x in a.choices] == [0, 1, 2]
  assert a.usage.prompt_tokens == 3 and 3 <= a.usage.completion_tokens <= 24
  assert a.usage.total_tokens == 3 + a.usage.completion_tokens
  greedy = c.completions.create(model="tiny", prompt="abc", max_tokens=8, temperature=0)
  cut = greedy.choices[0].text[2:4]
  stopped = c.completions.create(model="tiny", prompt="abc", max_tokens=8, temperature=0,
                                 stop=[cut])
  assert stopped.choices[0].finish_reason == "stop"
  assert greedy.choices[0].text.startswith(stopped.choices[0].text)
  assert cut not in stopped.choices[0].text


def test_sampling_fields_pick_the_sampler(decoder):
  def sampler(**fields):
    body = {"prompt": "abc", **fields}
    return protocol.completion_job(body, decoder, protocol.Limits()).sampler
  assert sampler() == sampler(temperature=0) == sampling.Greedy()
  assert sampler(temperature=0.7) == sampling.Temperature(0.7)
  assert sampler(top_k=5) == sampling.TopK(5, 1.0)
  assert sampler(top_p=0.9, temperature=0.5) == sampling.TopP(0.9, 0.5)


def test_penalties_are_honoured_like_the_runner(served, decoder):
  # The server's penalised greedy answer is the library's (`Decoder.run` with Penalties), and
  # differs from the plain one: the fields are used, not dropped.
  # marker_mode none: this random model never closes a marker list, after which penalties act.
  c = client(served.url)
  kwargs = dict(model="tiny", prompt="abc", max_tokens=12, temperature=0,
                extra_body={"marker_mode": "none"})
  plain = c.completions.create(**kwargs).choices[0].text
  got = c.completions.create(**kwargs, frequency_penalty=1.5, presence_penalty=0.5)
  pen = sampling.Penalties(presence=0.5, frequency=1.5)
  want = decoder.run([runner.Request("abc", modes.make("none", None, decoder.taxonomy))],
                     max_new_tokens=12, raw=True, penalties=pen)[0]
  assert got.choices[0].text == want.completion != plain


def test_models_and_health(served):
  c = client(served.url)
  assert [m.id for m in c.models.list()] == ["tiny"]
  with urllib.request.urlopen(served.url.removesuffix("/v1") + "/health") as r:
    health = json.loads(r.read())
  assert health["status"] == "ok" and health["max_queue"] == 64 and health["batches"] >= 0


def post(url: str, data: bytes) -> tuple[int, dict]:
  req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
  try:
    with urllib.request.urlopen(req) as r:
      return r.status, json.loads(r.read())
  except urllib.error.HTTPError as e:
    return e.code, json.loads(e.read())


@pytest.mark.parametrize("extra,param,message", [
    ({"markers": {"colour": "red"}}, "markers.colour", "unknown marker category 'colour'"),
    ({"markers": {"domain": "Cooking"}}, "markers.domain", "allowed: Sciences, Technology"),
    ({"markers": {"domain": "Code"}, "marker_mode": "inferred"}, "marker_mode", "takes no"),
    ({"marker_mode": "loud"}, "marker_mode", "allowed: inferred, fixed, constrained, none"),
    ({"max_tokens": 100000}, "max_tokens", "must be an integer in [1, 512]"),
    ({"max_tokens": 500}, "max_tokens", "exceeds this model's context of 512"),
    ({"messages": [{"role": "user", "content": "x" * 600}]}, "messages", "context is 512"),
    ({"n": 0}, "n", "[1, 16]"),
    ({"temperature": "hot"}, "temperature", "must be a number"),
    ({"frequency_penalty": 3}, "frequency_penalty", "must be a number in [-2.0, 2.0]"),
    ({"tools": [{"type": "function"}]}, "tools", "not supported"),
    ({"messages": [{"role": "robot", "content": "x"}]}, "messages[0]", "needs a 'role'"),
])
def test_bad_input_is_a_400_naming_the_field(served, extra, param, message):
  body = {"model": "tiny", "messages": HI, **extra}
  with pytest.raises(openai.BadRequestError) as e:
    client(served.url).chat.completions.create(**{k: body.pop(k) for k in ("model", "messages")},
                                               extra_body=body)
  error = e.value.body
  assert e.value.status_code == 400 and error["param"] == param, error
  assert message in error["message"] and error["type"] == "invalid_request_error"


def test_malformed_json_and_unknown_routes_get_error_objects(served):
  status, body = post(served.url + "/chat/completions", b'{"model": "tiny", "messages": [}')
  assert status == 400 and body["error"]["code"] == "invalid_json"
  assert "line 1 column" in body["error"]["message"]
  status, body = post(served.url + "/completions", b"[1, 2]")
  assert status == 400 and "JSON object" in body["error"]["message"]
  status, body = post(served.url + "/completions", b'{"prompt": ""}')
  assert status == 400 and body["error"]["param"] == "prompt"
  status, body = post(served.url + "/embeddings", b"{}")
  assert status == 404 and body["error"]["code"] == "not_found"
  # The server is still answering after all that.
  assert client(served.url).completions.create(model="t", prompt="a", max_tokens=2).choices


def test_annotate_llm_client_against_the_server(served, monkeypatch):
  """The [annotate] client's HTTP path against this real endpoint: a chat reply comes back,
  and a prompt too long for the tiny context is that item's error (400), not a crash."""
  cfg = llm.LlmConfig.from_dict({"url": served.url, "model": "tiny", "timeout_s": 60,
                                 "max_retries": 0, "max_tokens": 4})
  reply = llm.chat_completion(cfg, HI, None)
  assert isinstance(reply, str)
  answer = llm.Client(cfg, TAX).classify("Why is the sky blue?", "domain")
  assert answer.value is None and not answer.cacheable
  assert "HTTP 400" in answer.problem and "context_length_exceeded" in answer.problem
