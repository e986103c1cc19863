"""The annotate pipeline end to end against a real localhost OpenAI-protocol server.

Records carry a `language` field mapped to `lang` by a metadata rule, so these tests do not
load the language identifier (its models take seconds; `deterministic` tests cover it).
"""
from __future__ import annotations

import json
import logging
import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest

import openai_stub_server as stub_lib
from treasure_jax.annotate import cache as cache_lib
from treasure_jax.annotate import llm
from treasure_jax.annotate import metadata
from treasure_jax.annotate import pipeline
from treasure_jax.annotate import quality
from treasure_jax.annotate import records
from treasure_jax.markers import stats
from treasure_jax.markers import taxonomy

KEY = "sk-pipeline-SECRET-9f8e7d6c"
KEY_ENV = "TJ_PIPELINE_TEST_KEY"
REPO = pathlib.Path(__file__).resolve().parents[1]
TAX = taxonomy.default_taxonomy()


def make_records(n: int, tag: str = "") -> list[dict]:
  out = []
  for i in range(n):
    prompt = f"Question {i}{tag}: what should I know about topic number {i}?"
    response = "It depends on the details of the topic. " * (1 + i % 4)
    rec = {"id": f"r{i}", "language": ("English", "French")[i % 2],
           "origin": ("human", "gpt")[i % 3 == 0], "extra": {"kept": i}}
    if i % 3 == 2:
      rec["messages"] = [{"role": "system", "content": "Be brief."},
                         {"role": "user", "content": prompt},
                         {"role": "assistant", "content": response}]
    else:
      rec.update(prompt=prompt, response=response)
    out.append(rec)
  return out


def write_jsonl(path, rows) -> str:
  with open(path, "w", encoding="utf-8") as f:
    for row in rows:
      f.write((row if isinstance(row, str) else json.dumps(row, ensure_ascii=False)) + "\n")
  return str(path)


def make_config(stub, **llm_overrides) -> dict:
  cfg = {"url": stub.url, "model": "stub-model", "api_key_env": KEY_ENV, "concurrency": 4,
         "timeout_s": 5, "max_retries": 3, "backoff_s": 0.01, "max_backoff_s": 0.05}
  cfg.update(llm_overrides)
  rules = {"lang": {"field": "language"},
           "source": {"field": "origin", "map": {"human": "Human", "gpt": "Synthetic"}}}
  return {"metadata": rules,
          "llm": cfg,
          "quality": {"kind": "http", "url": stub.reward_url, "name": "stub-rm", "concurrency": 2}}


@pytest.fixture(autouse=True)
def api_key(monkeypatch):
  monkeypatch.setenv(KEY_ENV, KEY)


def read_out(path) -> list[dict]:
  return [json.loads(line) for line in open(path, encoding="utf-8")]


def prompt_of(rec: dict) -> str:
  return rec["prompt"] if "prompt" in rec else rec["messages"][-2]["content"]


def test_annotates_every_record_and_rerun_pays_nothing(tmp_path):
  rows = make_records(12)
  src = write_jsonl(tmp_path / "in.jsonl", rows)
  out = str(tmp_path / "out.jsonl")
  with stub_lib.StubServer() as stub:
    summary = pipeline.run(src, out, config=make_config(stub), progress=False)
  got = read_out(out)
  assert [r["id"] for r in got] == [r["id"] for r in rows]
  for rec, row in zip(got, rows):
    assert {k: v for k, v in rec.items() if k not in ("markers", "annotation")} == row
    markers, by = rec["markers"], rec["annotation"]
    assert list(markers) == [n for n in TAX.names if n in markers]  # Taxonomy order.
    assert set(by) == set(markers)
    for cat in ("domain", "task", "format"):
      if by.get(cat) == "llm:stub-model":
        assert markers[cat] == stub_lib.expected_class(prompt_of(row), TAX.category(cat).values)
    assert by["domain"] == by["task"] == "llm:stub-model"
    assert markers["lang"] == row["language"] and by["lang"] == "metadata"
    assert by["source"] == "metadata" and by["length_tokens"] == "deterministic"
    response = row["response"] if "response" in row else row["messages"][-1]["content"]
    assert markers["quality"] == stub_lib.reward_score(prompt_of(row), response)
    assert by["quality"] == "reward:stub-rm" and by["quality_bucket"] == "deterministic"
  expected_buckets = quality.buckets([r["markers"]["quality"] for r in got],
                                     [r["markers"]["lang"] for r in got])
  assert [r["markers"]["quality_bucket"] for r in got] == expected_buckets
  n_llm = sum(v == "llm:stub-model" for r in got for v in r["annotation"].values())
  assert summary.llm_calls == len(stub.requests) == n_llm and summary.llm_cached == 0
  assert summary.quality_calls == 12 and summary.n_records == 12
  assert summary.table.total == 12 and summary.table.counts["lang"]["French"] == 6
  assert sorted(os.listdir(tmp_path)) == ["in.jsonl", "out.cache.jsonl", "out.jsonl"]

  before = pathlib.Path(out).read_bytes()
  with stub_lib.StubServer() as stub2:
    again = pipeline.run(src, out, config=make_config(stub2), progress=False)
    assert stub2.requests == [] and not stub2.rewards
  assert pathlib.Path(out).read_bytes() == before
  assert again.llm_calls == 0 and again.llm_cached == n_llm and again.quality_cached == 12


def test_identical_prompts_are_classified_once(tmp_path):
  rows = [{"prompt": "Same question?", "response": f"Answer {i}.", "language": "English"}
          for i in range(6)]
  src = write_jsonl(tmp_path / "in.jsonl", rows)
  with stub_lib.StubServer() as stub:
    summary = pipeline.run(src, tmp_path / "out.jsonl", config=make_config(stub),
                           progress=False)
    assert max(stub.answered.values()) == 1
  assert summary.llm_calls == len(stub.requests) <= 3
  assert len({json.dumps(r["markers"]["domain"]) for r in read_out(tmp_path / "out.jsonl")}) == 1


def test_problems_unspecified_and_refusals(tmp_path):
  tagged = ("Odd one #invalid-always", "Vague one #unsure", "Huge one #too-long",
            "Fixable #invalid-once")
  rows = [{"prompt": p, "response": "Fine.", "language": "English"} for p in tagged]
  src = write_jsonl(tmp_path / "in.jsonl", rows)
  out = tmp_path / "out.jsonl"
  with stub_lib.StubServer() as stub:
    summary = pipeline.run(src, out, config=make_config(stub, categories=["domain"]),
                           progress=False)
  bad, vague, huge, fixed = read_out(out)
  assert "domain" not in bad["markers"] and "NotAClass" in bad["annotation_problems"][0]
  assert "domain" not in vague["markers"] and "annotation_problems" not in vague
  assert "domain" not in huge["markers"] and "HTTP 400" in huge["annotation_problems"][0]
  assert fixed["markers"]["domain"] == stub_lib.expected_class(
      "Fixable #invalid-once", TAX.category("domain").values)
  assert summary.n_problems == 2
  # Finished answers (even problems) are cached; a per-request refusal is asked again.
  with stub_lib.StubServer() as stub2:
    pipeline.run(src, out, config=make_config(stub2, categories=["domain"]), progress=False)
    assert [stub_lib.parse_request(b)[2] for b in stub2.requests] == ["Huge one #too-long"]


BAD_LINES = [
    ('{"prompt": "a", "response": ', "invalid JSON"),
    ('{"prompt": "a"}', "response: is missing"),
    ('{"prompt": "a", "response": 7}', "response: must be a string"),
    ('{"prompt": "a", "response": "   "}', "response: is empty"),
    ('[1, 2]', "expected a JSON object"),
    ('{"prompt": "a", "response": "b", "markers": {"domain": "Astrology"}}', "markers"),
    ('{"messages": [{"role": "user", "content": "hi"}]}', "last message must be the assistant"),
]


@pytest.mark.parametrize("bad, reason", BAD_LINES)
def test_bad_input_names_file_and_line_before_any_call(tmp_path, bad, reason):
  rows = [json.dumps(r) for r in make_records(3)]
  src = write_jsonl(tmp_path / "in.jsonl", rows[:2] + [bad] + rows[2:])
  with stub_lib.StubServer() as stub:
    with pytest.raises((stats.JsonlError, records.RecordError)) as err:
      pipeline.run(src, tmp_path / "out.jsonl", config=make_config(stub), progress=False)
    assert stub.requests == [] and not stub.rewards  # Nothing paid for a doomed run.
  assert str(err.value).startswith(f"{src}:3: ") and reason in str(err.value)
  assert not (tmp_path / "out.jsonl").exists()


def test_invalid_utf8_names_file_and_line(tmp_path):
  src = tmp_path / "in.jsonl"
  src.write_bytes(b'{"prompt": "a", "response": "b"}\n{"prompt": "\xff", "response": "b"}\n')
  with pytest.raises(stats.JsonlError, match=f"{src}:2: invalid UTF-8"):
    pipeline.run(src, tmp_path / "out.jsonl", progress=False)


def test_skip_invalid_counts_and_lists_rejects(tmp_path):
  rows = [json.dumps(r) for r in make_records(4)]
  lines = [rows[0], BAD_LINES[0][0], rows[1], BAD_LINES[3][0], "", rows[2], BAD_LINES[1][0],
           rows[3]]
  src = write_jsonl(tmp_path / "in.jsonl", lines)
  with stub_lib.StubServer() as stub:
    summary = pipeline.run(src, tmp_path / "out.jsonl", config=make_config(stub),
                           skip_invalid=True, progress=False)
  assert summary.n_records == 4 and summary.n_rejected == 3
  assert [r["id"] for r in read_out(tmp_path / "out.jsonl")] == ["r0", "r1", "r2", "r3"]
  rejects = read_out(summary.rejects_path)
  assert summary.rejects_path == str(tmp_path / "out.rejects.jsonl")
  assert [r["line"] for r in rejects] == [2, 4, 7]
  assert "invalid JSON" in rejects[0]["reason"] and rejects[1]["reason"] == "response: is empty"
  assert rejects[2]["reason"] == "response: is missing"
  text = summary.format()
  assert "read 7 records, wrote 4" in text and "repaired 0 records" in text
  assert (f"rejected 3 records: invalid JSON 1, response: is empty 1, response: is missing 1, "
          f"listed in {summary.rejects_path}") in text


def test_metadata_rule_errors_name_the_record(tmp_path):
  src = write_jsonl(tmp_path / "in.jsonl", [{"prompt": "a", "response": "b", "origin": "alien"}])
  cfg = {"metadata": {"source": {"field": "origin", "map": {"human": "Human"},
                                 "unknown": "error"}}}
  with pytest.raises(metadata.MetadataError, match=f"{src}:1: rule 'source'"):
    pipeline.run(src, tmp_path / "out.jsonl", config=cfg, progress=False)


def test_api_key_never_written_or_logged(tmp_path, caplog, capfd):
  caplog.set_level(logging.DEBUG)
  rows = make_records(4) + [{"prompt": "Shaky #flaky", "response": "ok", "language": "English"}]
  src = write_jsonl(tmp_path / "in.jsonl", rows)
  with stub_lib.StubServer() as stub:
    summary = pipeline.run(src, tmp_path / "out.jsonl", config=make_config(stub),
                           skip_invalid=True, progress=True)
    assert {h["Authorization"] for h in stub.headers} == {f"Bearer {KEY}"}  # It was used.
  with stub_lib.StubServer(fail_first=1000) as stub:
    with pytest.raises(llm.LlmError) as err:
      pipeline.run(src, tmp_path / "out2.jsonl", config=make_config(stub, max_retries=1),
                   progress=True)
  assert "Bearer ***" in str(err.value)  # The server echoed the header; it was scrubbed.
  captured = capfd.readouterr()
  assert "it/s" in captured.err or "ex/s" in captured.err  # The progress bar ran.
  texts = [caplog.text, captured.out, captured.err, str(err.value), repr(summary),
           summary.format()]
  texts += [p.read_bytes().decode("utf-8", "replace") for p in tmp_path.rglob("*") if p.is_file()]
  assert "retry 1/3" in caplog.text
  assert not [t for t in texts if KEY in t]


def test_config_file_yaml_with_rules_file(tmp_path):
  (tmp_path / "rules.json").write_text(json.dumps({"lang": {"field": "language"},
                                                   "style": {"const": "Formal"}}))
  (tmp_path / "cfg.yaml").write_text("metadata: rules.json\nquality:\n  kind: python\n"
                                     "  callable: openai_stub_server:reward_score\n")
  src = write_jsonl(tmp_path / "in.jsonl", make_records(3))
  summary = pipeline.run(src, tmp_path / "out.jsonl", config=tmp_path / "cfg.yaml",
                         progress=False)
  rec = read_out(tmp_path / "out.jsonl")[0]
  assert rec["markers"]["style"] == "Formal" and rec["annotation"]["quality"] == (
      "reward:openai_stub_server:reward_score")
  assert summary.llm_calls == 0 and summary.quality_calls == 3
  (tmp_path / "bad.yaml").write_text("llm:\n  url: u\n  model: m\nqualty: {}\n")
  with pytest.raises(ValueError, match="bad.yaml: unknown sections \\['qualty'\\]"):
    pipeline.run(src, tmp_path / "out.jsonl", config=tmp_path / "bad.yaml", progress=False)


def test_cache_survives_a_torn_line_and_is_exclusive(tmp_path):
  path = tmp_path / "c.jsonl"
  with cache_lib.Cache(path) as c:
    c.put("a", {"value": 1})
    c.put("b", {"value": 2})
    with pytest.raises(cache_lib.CacheError, match="another annotate run"):
      cache_lib.Cache(path)
  with open(path, "ab") as f:
    f.write(b'{"k": "c", "v": {"val')  # What a kill mid-write leaves.
  with cache_lib.Cache(path) as c:
    assert len(c) == 2 and c.get("b") == {"value": 2} and "c" not in c
    c.put("c", {"value": 3})
  with cache_lib.Cache(path) as c:
    assert c.get("c") == {"value": 3} and len(c) == 3
  path.write_text('{"k": "a", "v": 1}\nnot json\n{"k": "b", "v": 2}\n')
  with pytest.raises(cache_lib.CacheError, match="c.jsonl:2: corrupt"):
    cache_lib.Cache(path)


_CHILD = """
import sys
from treasure_jax.annotate import pipeline
pipeline.run(sys.argv[1], sys.argv[2], config=sys.argv[3], progress=False)
"""


def _count_cached(path: pathlib.Path, kind: str) -> int:
  if not path.exists():
    return 0
  return path.read_bytes().count(f'{{"k": "{kind}|'.encode())


def _wait_until_frozen(proc, stub, cache_path, n_held, deadline_s=60.0) -> None:
  """Waits until the child has cached every answer it got and waits on held requests."""
  deadline, stable_since, last = time.monotonic() + deadline_s, None, None
  while time.monotonic() < deadline:
    if proc.poll() is not None:
      pytest.fail(f"child exited early ({proc.returncode}): {proc.stderr.read().decode()}")
    state = (stub.n_answered(), _count_cached(cache_path, "llm"), sum(stub.rewards.values()),
             _count_cached(cache_path, "quality"), stub.held)
    frozen = state[0] == state[1] == n_held and state[2] == state[3] and state[4] >= 1
    if frozen and state == last:
      if time.monotonic() - stable_since > 0.3:
        return
    else:
      stable_since = time.monotonic()
    last = state
    time.sleep(0.02)
  pytest.fail(f"child never froze; answered/cached/rewards/cached/held = {last}")


def test_kill_and_rerun_repeats_no_finished_call(tmp_path):
  rows = make_records(30)
  src = write_jsonl(tmp_path / "in.jsonl", rows)
  out, cache_path = tmp_path / "out.jsonl", tmp_path / "out.cache.jsonl"
  n_held = 20
  with stub_lib.StubServer(hold_after=n_held) as stub:
    (tmp_path / "cfg.json").write_text(json.dumps(make_config(stub, concurrency=3)))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests")])}
    proc = subprocess.Popen([sys.executable, "-c", _CHILD, src, str(out),
                             str(tmp_path / "cfg.json")], env=env, stderr=subprocess.PIPE)
    try:
      _wait_until_frozen(proc, stub, cache_path, n_held)
    finally:
      proc.send_signal(signal.SIGKILL)
      proc.wait()
      proc.stderr.close()
    assert not out.exists()  # Never half-written: only OUT.partial can be there.
    stub.release()
    summary = pipeline.run(src, out, config=tmp_path / "cfg.json", progress=False)
    assert stub.answered and max(stub.answered.values()) == 1, stub.answered.most_common(3)
    assert max(stub.rewards.values()) == 1 and len(stub.rewards) == 30
  assert summary.llm_cached == n_held and summary.quality_cached == 30
  assert summary.llm_calls == len(stub.answered) - n_held

  ref_dir = tmp_path / "ref"
  ref_dir.mkdir()
  with stub_lib.StubServer() as fresh:
    pipeline.run(src, ref_dir / "out.jsonl", config=make_config(fresh, concurrency=3),
                 progress=False)
    assert len(fresh.answered) == len(stub.answered)
  assert out.read_bytes() == (ref_dir / "out.jsonl").read_bytes()


def test_llm_concurrency_is_bounded(tmp_path):
  src = write_jsonl(tmp_path / "in.jsonl", make_records(12))
  with stub_lib.StubServer(delay_s=0.03) as stub:
    pipeline.run(src, tmp_path / "out.jsonl", config=make_config(stub, concurrency=3),
                 progress=False)
    assert stub.max_inflight == 3 and len(stub.requests) >= 24
