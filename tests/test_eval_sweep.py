"""The eval sweep: config checks, cell inputs, and a real sweep over a freshly trained checkpoint.

The end-to-end test trains configs/tiny.py for two steps on chatterbot records with a small BPE
tokenizer (a 1,000-token vocabulary keeps training, decoding and the constraint tables cheap),
runs configs/eval/tiny.py over it (every task kind, constrained decoding, sandboxed code, a
python reward model), checks the records, metrics and report, then reruns and checks that no
cell is recomputed and the checkpoint is not even loaded.
"""
from __future__ import annotations

import dataclasses
import json
import os

import pytest

from treasure_jax import cli
from treasure_jax import config_loader
from treasure_jax.data import chat_templates
from treasure_jax.data import testing as data_testing
from treasure_jax.eval import cells
from treasure_jax.eval import sweep
from treasure_jax.eval import sweep_config
from treasure_jax.markers import taxonomy as taxonomy_lib
from treasure_jax.markers import template

TAX = taxonomy_lib.default_taxonomy()


def _config(**changes) -> dict:
  task = dict(kind="length", data="v.jsonl", settings=("inferred", "nl_instruction"))
  base = dict(checkpoints=("a=/ckpt/a",), tasks={"length": task})
  return {**base, **changes}


def test_resolve_names_bad_keys_and_settings():
  cfg, tasks, ckpts = sweep_config.resolve(_config(data_dir="/data"))
  assert ckpts == {"a": "/ckpt/a"} and tasks["length"].data == "/data/v.jsonl"
  cases = [
      (_config(decod={}), "unknown config key 'decod'"),
      (_config(tasks={"length": dict(kind="length", data="v", limt=3)}),
       "unknown config key 'tasks.length.limt'"),
      (_config(tasks={"x": dict(kind="lenght", data="v")}), "tasks.x.kind"),
      (_config(tasks={"x": dict(kind="markers", data="v", settings=("fixed:domian",))}),
       "domian"),
      (_config(tasks={"x": dict(kind="markers", data="v", settings=("nl_instruction",))}),
       "nl_instruction needs a length task"),
      (_config(tasks={"x": dict(kind="markers", data="v", settings=("fixed:length_bucket=huge",))}),
       "huge"),
      (_config(baselines=("b",)), "baselines: 'b' is not a checkpoint"),
      (_config(checkpoints=("a=/x", "a=/y")), "unique name"),
      (_config(decode={"sampler": "beam"}), "beam"),
      (_config(decode={"frequency_penalty": 3.0}), r"frequency=3.0 must be in \[-2, 2\]"),
      (_config(tasks={"x": dict(kind="length", data="v", decode={"top": 1})}),
       "tasks.x.decode: unknown decode key 'top'"),
      (_config(tasks={"x": dict(kind="length", data="v", decode={"presence_penalty": -5})}),
       "presence=-5"),
      (_config(judge={"url": "http://127.0.0.1:1/v1", "model": "m", "temp": 0}), "judge"),
      (_config(tasks={"x": dict(kind="length", data="v", every_limit=True, length_limits=(5,))}),
       r"tasks.x.every_limit: needs a length task with at least 2 distinct length_limits"),
      (_config(tasks={"x": dict(kind="markers", data="v", every_limit=True,
                                length_limits=(5, 9))}), "tasks.x.every_limit"),
      (_config(tasks={"x": dict(kind="length", data="v", every_limit=True,
                                length_limits=(5, 5, 20))}), "tasks.x.every_limit"),
      (_config(tasks={"x": dict(kind="length", data="v", every_limit=True, length_limits=(5, 9),
                                settings=("inferred",))}), "'inferred' never tells the model N"),
      (_config(tasks={"x": dict(kind="length", data="v", length_limits=(0, 10))}),
       r"tasks.x.length_limits: \(0, 10\) must be positive integers"),
  ]
  for raw, message in cases:
    with pytest.raises(ValueError, match=message):
      sweep_config.resolve(raw)


def test_parse_setting():
  s = cells.parse_setting("fixed:task,quality_bucket=1", TAX, "here")
  assert (s.kind, dict(s.markers)) == ("fixed", {"task": None, "quality_bucket": 1})
  assert cells.parse_setting("inferred", TAX, "here").markers == {}
  for bad in ("fixed", "inferred:task", "guess"):
    with pytest.raises(ValueError, match="here"):
      cells.parse_setting(bad, TAX, "here")


def test_load_examples_reads_both_chat_formats(tmp_path):
  path = tmp_path / "d.jsonl"
  rows = [{"id": "a", "messages": [{"role": "user", "content": "hi"},
                                   {"role": "assistant", "content": "hello"}]},
          {"id": "b", "messages": [{"role": "user", "content": "q"}], "response": "r"},
          {"prompt": "p", "response": "r2"}]
  path.write_text("".join(json.dumps(r) + "\n" for r in rows))
  got = cells.load_examples(str(path), kind="markers", limit=0, where="t")
  assert [(e["id"], e.get("response")) for e in got] == [("a", "hello"), ("b", "r"),
                                                         ("d.jsonl:3", "r2")]
  assert got[0]["messages"] == [{"role": "user", "content": "hi"}]
  assert len(cells.load_examples(str(path), kind="markers", limit=2, where="t")) == 2


def test_requests_per_setting():
  examples = [{"id": 1, "prompt": "Tell me about cats.", "response": "Cats purr a lot.",
               "markers": {"domain": "Sciences", "length_tokens": 4}}]
  targets = cells.length_targets(examples, ())
  assert targets == [4]

  def one(spec, baseline=False):
    records, reqs = cells.requests(
        examples, cells.parse_setting(spec, TAX, "t"), task_kind="length", targets=[7],
        tax=TAX, baseline=baseline, nl_template="Answer in at most {n} words.",
        force_prefix=False)
    return records[0], reqs[0][0][-1]["content"], reqs[0][1]

  record, prompt, mode = one("nl_instruction")
  assert prompt == "Tell me about cats.\n\nAnswer in at most 7 words." and mode.name == "inferred"
  assert record["length_target"] == {"length_tokens": 7} and record["markers_given"] == {}
  record, prompt, mode = one("fixed:length_tokens,domain")
  assert record["markers_given"] == {"length_tokens": 7, "domain": "Sciences"}
  assert prompt.endswith("<domain> Sciences </domain> </MARKER_LIST>") and mode.name == "fixed"
  assert "<length_tokens> 7 </length_tokens>" in prompt
  record, prompt, mode = one("none", baseline=True)
  assert prompt == "Tell me about cats." and mode.name == "none"
  assert record["reference_response"] == "Cats purr a lot."


def test_add_results_carries_markers_and_value_logprobs():
  from treasure_jax.decode import modes  # pylint: disable=g-import-not-at-top
  text = "<MARKER_LIST> <domain> Code </domain> </MARKER_LIST>\nprint(1)"
  pieces = [text[:23].encode(), b"Code", text[27:].encode()]
  result = modes.finish(modes.make("inferred", None, TAX), TAX, prompt="p", generated_text=text,
                        stop_reason="eos", num_tokens=3, num_prompt_tokens=5,
                        token_bytes=pieces, logprobs=[-0.5, -0.25, -1.0])
  (record,) = cells.add_results([{"id": 1}], [result])
  assert record["markers_generated"] == {"domain": "Code"} and record["response"] == "print(1)"
  assert record["logprob_of_chosen"] == {"domain": -0.25}
  with pytest.raises(ValueError):
    cells.add_results([{"id": 1}, {"id": 2}], [result])


def test_score_judges_without_judge_and_with_a_reward_model():
  records = [{"id": i, "prompt": "p", "response": "r" * i, "reference_response": "rr"}
             for i in range(1, 4)]
  out, notes = cells.score_judges(records, None, lambda prompt, response: len(response))
  assert [r["scores"]["reward_win"] for r in out] == [0.0, 0.5, 1.0]
  assert notes == {"judge_win": "no judge endpoint configured"}
  _, notes = cells.score_judges(records, None, None)
  assert notes["reward_win"] == "no reward model configured"


# ---------------------------------------------------------------- end to end


def _tokenizer_dir(path) -> str:
  """A 1,000-token BPE of the corpus and its marker lists (so a list is a few dozen tokens)."""
  lists = [template.serialize(r["markers"], TAX) for r in data_testing.chatterbot_records()]
  vocab = data_testing.train_bpe(data_testing.chatterbot_texts() + lists, vocab_size=1000)
  os.makedirs(path, exist_ok=True)
  with open(os.path.join(path, "tokenizer.json"), "w", encoding="utf-8") as f:
    f.write(vocab.tokenizer.to_str())
  with open(os.path.join(path, "tokenizer_config.json"), "w", encoding="utf-8") as f:
    json.dump({"eos_token": "<|im_end|>", "bos_token": "<|im_start|>",
               "chat_template": chat_templates.CHATML}, f)
  return str(path)


def _demo_dir(path) -> str:
  """The chatterbot records split 9:1, and a small BPE as the demo tokenizer (tokenizer/)."""
  _tokenizer_dir(path / "tokenizer")
  records = data_testing.chatterbot_records()[::3]  # ~2,300: a quicker data set-up.
  data_testing.write_jsonl([r for i, r in enumerate(records) if i % 10], path / "train.jsonl")
  data_testing.write_jsonl(records[::10], path / "validation.jsonl")
  (path / "taxonomy.json").write_text(TAX.to_json())
  return str(path)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
  """A demo directory that configs/tiny.py and configs/eval/tiny.py read (via the env var)."""
  root = tmp_path_factory.mktemp("eval_sweep")
  with pytest.MonkeyPatch.context() as mp:
    mp.setenv("TREASURE_JAX_DEMO_DIR", _demo_dir(root / "demo"))
    yield root


@pytest.fixture(scope="module")
def trained(demo):
  """The workdir of configs/tiny.py trained for two steps (a checkpoint at step 2)."""
  from treasure_jax.train import loop  # pylint: disable=g-import-not-at-top
  cfg = config_loader.load("configs/tiny.py", [
      "--config.num_train_steps=2", "--config.optim.warmup_steps=1",
      "--config.eval_every_steps=0", "--config.checkpoint.every_steps=0",
      "--config.checkpoint.async_save=false", "--config.model.vocab_size=1024",
      "--config.data.seq_len=256"])
  cfg.model.max_seq_len = 1024  # Room for human-eval prompts in a byte-heavy 1k vocabulary.
  loop.train(cfg, str(demo / "ckpt"))
  return str(demo / "ckpt")


def _eval_overrides(ckpt: str) -> list[str]:
  return [f"--config.checkpoints=tiny={ckpt}", "--config.decode.prompt_bucket=512",
          "--config.reward.kind=python",
          "--config.reward.callable=openai_stub_server:reward_score",
          "--config.tasks.length.limit=3", "--config.tasks.markers.limit=3",
          "--config.tasks.likelihood.limit=6"]


def _eval_config(ckpt: str):
  return config_loader.load("configs/eval/tiny.py", _eval_overrides(ckpt))


def test_sweep_end_to_end_then_rerun_skips_every_cell(trained, tmp_path, monkeypatch, capsys):
  config = _eval_config(trained)
  workdir = tmp_path / "eval"
  path = sweep.run(config, str(workdir))
  text = open(path, encoding="utf-8").read()
  for title in ("Marker inference accuracy", "Calibration", "Length violations by mode",
                "Code pass@1 by task", "Reference-response NLL", "Head vs tail",
                "Example generations", "Reward-model win rate"):
    assert title in text, title
  cells_json = json.load(open(workdir / "report" / "cells.json", encoding="utf-8"))
  by_name = {c["name"]: c for c in cells_json}
  assert len(by_name) == 14

  def records(name):
    return [json.loads(l) for l in open(os.path.join(
        workdir, "cells", *name.split("/")[:2], sweep._slug(name.split("/", 2)[2]),
        "records.jsonl"), encoding="utf-8")]

  # Constrained decoding always yields a closed, parsable marker list.
  for r in records("tiny/markers/constrained"):
    assert not any("no marker list" in p or "truncated" in p for p in r["problems"]), r
  for r in records("tiny/markers/constrained"):
    assert set(r.get("logprob_of_chosen", {})) == set(r["markers_generated"]), r
  assert not by_name["tiny/likelihood/none"]["metrics"]["marker_accuracy"]["available"]
  # The response tokens scored are the same whatever the prompt carries.
  nll = {s: records(f"tiny/likelihood/{s}") for s in ("none", "inferred", "fixed:domain,lang")}
  assert [r["n_tokens"] for r in nll["none"]] == [r["n_tokens"] for r in nll["inferred"]]
  assert [r["n_tokens"] for r in nll["none"]] == [r["n_tokens"] for r in nll["fixed:domain,lang"]]
  assert all(r["nll_sum"] > 0 for rs in nll.values() for r in rs)
  assert by_name["tiny/likelihood/inferred"]["metrics"]["nll"]["n"] == 6
  fixed = records("tiny/likelihood/fixed:domain,lang")
  assert all(r["markers_given"] == {k: v for k, v in r["reference_markers"].items()
                                    if k in ("domain", "lang")} for r in fixed)
  assert any("lang" in r["markers_given"] for r in fixed)
  # Length targets, code scores, reward scores.
  nl = records("tiny/length/nl_instruction")
  assert [r["length_target"]["length_tokens"] for r in nl] == [5, 12, 5]
  assert by_name["tiny/length/fixed:length_tokens"]["metrics"]["length"]["available"]
  # every_limit: each of the 2 prompts asked at 5 and at 20 words, the value given as the marker.
  steer = records("tiny/steer/fixed:length_tokens")
  assert [(r["id"].rpartition("@")[2], r["markers_given"]["length_tokens"]) for r in steer] == [
      ("5", 5), ("20", 20), ("5", 5), ("20", 20)]
  assert steer[0]["prompt"] == steer[1]["prompt"] != steer[2]["prompt"]
  assert "| tiny/steer/fixed:length_tokens | length_tokens marker | 5 / 20 |" in text
  for name in ("tiny/codegen/fixed:task", "tiny/codefix/inferred"):
    rs = records(name)
    assert len(rs) == 2 and all(isinstance(r["scores"]["pass"], bool) for r in rs)
    assert by_name[name]["metrics"]["scores"]["pass"]["available"]
  assert records("tiny/codefix/fixed:task")[0]["markers_given"] == {"task": "CodeFix"}
  markers = by_name["tiny/markers/inferred"]["metrics"]
  assert markers["scores"]["reward_win"]["available"]
  assert markers["scores"]["judge_win"]["reason"] == "no judge endpoint configured"
  assert markers["slices"]["available"]
  assert len(by_name["tiny/markers/inferred"]["examples"]) == 2

  # Rerun, through the CLI: every cell is finished, so nothing is computed and the checkpoint
  # is not loaded.
  stamps = {p: os.stat(p).st_mtime_ns for p in workdir.glob("cells/**/metrics.json")}
  monkeypatch.setattr(sweep, "_load", lambda *a: pytest.fail("a finished sweep reloaded"))
  capsys.readouterr()
  assert cli.main(["eval", "--config", "configs/eval/tiny.py", "--workdir", str(workdir)]
                  + _eval_overrides(trained)) == 0
  assert capsys.readouterr().out.strip() == path
  assert {p: os.stat(p).st_mtime_ns for p in workdir.glob("cells/**/metrics.json")} == stamps
  assert open(path, encoding="utf-8").read() == text


def test_a_changed_cell_spec_is_not_finished(demo, tmp_path):
  ckpt = str(demo / "no_checkpoint_needed")
  cfg, tasks, ckpts = sweep_config.resolve(_eval_config(ckpt))
  plan = sweep._plan(cfg, tasks, ckpts, str(tmp_path))
  cell = plan[0]
  os.makedirs(cell.directory)
  with open(os.path.join(cell.directory, "metrics.json"), "w", encoding="utf-8") as f:
    json.dump({"spec": cell.spec(cfg), "name": cell.name}, f)
  assert sweep._finished(cell, cfg)["name"] == cell.name
  # every_limit enters the spec only when set: cells made before it stay finished.
  steer = dataclasses.replace(cell, task=dataclasses.replace(
      cell.task, kind="length", length_limits=(5, 9), every_limit=True))
  assert steer.spec(cfg) != dataclasses.replace(
      steer, task=dataclasses.replace(steer.task, every_limit=False)).spec(cfg)
  other = sweep_config.resolve(config_loader.apply_overrides(
      _eval_config(ckpt), ["--config.decode.max_new_tokens=8"]))[0]
  assert sweep._finished(cell, other) is None
  # A task's decode override is that task's: it changes its cells' spec and decode config.
  raw = _eval_config(ckpt)
  task = next(iter(raw.tasks))
  raw.tasks[task].decode = {"frequency_penalty": 0.5}
  cfg2, tasks2, _ = sweep_config.resolve(raw)
  decode = sweep_config.task_decode(cfg2.decode, tasks2[task])
  assert decode.frequency_penalty == 0.5 and decode.max_new_tokens == cfg.decode.max_new_tokens
  assert sweep_config.task_decode(cfg.decode, tasks[task]) is cfg.decode
  changed = [c for c in sweep._plan(cfg2, tasks2, ckpts, str(tmp_path)) if c.name == cell.name]
  assert changed[0].spec(cfg2) != cell.spec(cfg)
  # The spec hashes what runs: an override equal to the decode section changes nothing.
  raw.tasks[task].decode = {"frequency_penalty": 0.0, "batch_size": cfg.decode.batch_size}
  cfg3, tasks3, _ = sweep_config.resolve(raw)
  same = [c for c in sweep._plan(cfg3, tasks3, ckpts, str(tmp_path)) if c.name == cell.name]
  assert same[0].spec(cfg3) == cell.spec(cfg)


def test_cli_names_a_bad_override(demo, tmp_path, capsys):  # pylint: disable=unused-argument
  code = cli.main(["eval", "--config", "configs/eval/tiny.py", "--workdir", str(tmp_path),
                   "--config.decode.max_new_tokenz=8"])
  assert code == 2
  assert "max_new_tokenz" in capsys.readouterr().err


def test_a_short_batch_decodes_padded_rows_with_the_same_results(trained, monkeypatch):
  from treasure_jax.decode import generate  # pylint: disable=g-import-not-at-top
  from treasure_jax.decode import modes  # pylint: disable=g-import-not-at-top
  from treasure_jax.eval import decoding  # pylint: disable=g-import-not-at-top
  from treasure_jax.train import checkpoint  # pylint: disable=g-import-not-at-top
  assert [decoding.padded_rows(n, 12) for n in (1, 2, 3, 5, 8, 9, 12)] == [1, 2, 4, 8, 8, 12, 12]
  loaded = checkpoint.load_for_inference(os.path.join(trained, checkpoint.SUBDIR))
  requests = [([{"role": "user", "content": text}], modes.make("inferred", None, loaded.taxonomy))
              for text in ("hello there", "what is the time?", "tell me a joke")]
  rows, real = [], generate.generate
  monkeypatch.setattr(generate, "generate", lambda model, ids, **kw: (
      rows.append(len(ids)), real(model, ids, **kw))[1])
  out = {}
  for size in (12, 3, 1):
    cfg = decoding.DecodeConfig(batch_size=size, max_new_tokens=12, prompt_bucket=64)
    out[size] = [(r.completion, r.num_tokens, r.stop_reason)
                 for r in decoding.Decoder(loaded, cfg).generate(requests, 12)]
  assert rows == [4, 3, 1, 1, 1]  # 3 requests: 4 rows, not 12; then one batch of 3; then 1 x 3.
  assert out[12] == out[3] == out[1]
  # Penalties (a task's decode override) reach the loop, padded rows or not. They act after a
  # marker list closes, which this tiny model's inferred lists never do: unchanged there.
  inferred = requests
  requests = [(turns, modes.make("none", None, loaded.taxonomy)) for turns, _ in inferred]
  plain = decoding.Decoder(loaded, plain_cfg := decoding.DecodeConfig(
      batch_size=3, max_new_tokens=12, prompt_bucket=64)).generate(requests, 12)
  pen = {}
  for size in (3, 1):
    cfg = decoding.DecodeConfig(batch_size=size, max_new_tokens=12, prompt_bucket=64,
                                presence_penalty=2.0, frequency_penalty=2.0)
    pen[size] = [(r.completion, r.num_tokens, r.stop_reason)
                 for r in decoding.Decoder(loaded, cfg).generate(requests, 12)]
  via_call = decoding.Decoder(loaded, plain_cfg).generate(requests, 12, cfg)
  assert pen[3] == pen[1] == [(r.completion, r.num_tokens, r.stop_reason) for r in via_call]
  assert [r.completion for r in plain] != [c for c, _, _ in pen[3]]
  assert [r.completion for r in decoding.Decoder(loaded, cfg).generate(inferred, 12)] == [
      c for c, _, _ in out[3]]
