"""`treasure-jax demo`: data → two fine-tuning runs → evaluation sweep → report, resumable.

`run(workdir, quick=...)` loads `configs/demo.py` (variant `quick` with `quick=True`), then runs
its stages in order, each skipped when it finished earlier (`stages`):

  data                 the demo set and its marker statistics (echoed) (`data`)
  eval_subset          the validation examples the evaluation reads, in a fixed order
  train/<run>          `loop.train` of each run (baseline: no markers; markers: p_d, p_s) on
                       the same training set and steps, once per seed of `cfg.seeds` (default
                       (train.seed,)); train.seed's runs keep their names (train/markers),
                       the others are train/<run>_s<seed>; an interrupted run resumes from
                       its last checkpoint
  eval/<run>/<task>    `sweep.run` of one checkpoint and one task (finished cells are skipped)
  report               the sweep's report over every cell, then report.md with the summary
                       table next to the paper's figures (`summary`)

A progress bar counts stages; the training loop adds its own step bar. Text meant for the user
(statistics, the summary table) goes to `echo` (the CLI passes `print`), else to logging.
What each stage computes belongs to the packages it calls.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Callable, Sequence
from typing import Any

import ml_collections
import tqdm

from treasure_jax import config_loader
from treasure_jax.demo import data as data_lib
from treasure_jax.demo import stages
from treasure_jax.demo import summary as summary_lib

REPORT = "report.md"


@dataclasses.dataclass
class Summary:
  """What `run` returns: where things are, the summary table and each stage's outcome."""
  workdir: str
  report_path: str
  eval_report_path: str
  table: str
  stages: list[stages.Record]

  def format(self) -> str:
    ran = sum(r.status == "ran" for r in self.stages)
    wall = sum(r.wall_s for r in self.stages if r.status == "ran")
    return (f"{self.table}\n\nreport: {self.report_path}\ndetails: {self.eval_report_path}\n"
            f"stages run now: {ran} of {len(self.stages)} ({wall:.0f} s); "
            f"finished earlier: {len(self.stages) - ran}")


def default_config_path() -> str:
  """configs/demo.py of the source tree this package lives in."""
  path = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
      os.path.abspath(__file__)))), "configs", "demo.py")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path} not found: the demo config lives in the source tree's "
                            "configs/; pass config='path/to/demo.py'")
  return path


def load_config(*, quick: bool, config: str | None = None,
                overrides: Sequence[str] = ()) -> tuple[str, ml_collections.ConfigDict]:
  """(spec, config): `config` ("path.py[:variant]", default configs/demo.py) plus `quick`."""
  path, _, variant = (config or default_config_path()).partition(":")
  names = [v for v in variant.split(",") if v]
  if quick and "quick" not in names:
    names.append("quick")
  spec = f"{path}:{','.join(names)}" if names else path
  return spec, config_loader.load(spec, overrides)


def seeds(cfg: ml_collections.ConfigDict) -> tuple[int, ...]:
  """`cfg.seeds` (a list of training seeds), default (train.seed,)."""
  values = tuple(cfg.get("seeds", None) or (cfg.train.seed,))
  if any(isinstance(v, bool) or not isinstance(v, int) for v in values) or \
      len(set(values)) != len(values):
    raise ValueError(f"seeds={values!r}: use distinct integers, e.g. (0, 1)")
  return values


def _runs(cfg: ml_collections.ConfigDict) -> list[summary_lib.RunInfo]:
  """Every run of every seed; train.seed's keep the `runs` names (train/markers), the others
  get a suffix (train/markers_s1)."""
  runs = []
  for name, r in cfg.runs.items():
    if r.variant not in ("baseline", "markers"):
      raise ValueError(f"runs.{name}.variant={r.variant!r}: use baseline or markers")
    for seed in seeds(cfg):
      run_name = name if seed == cfg.train.seed else f"{name}_s{seed}"
      runs.append(summary_lib.RunInfo(run_name, r.variant, float(r.p_dataset), name, seed))
  return runs


def _train_section(cfg: ml_collections.ConfigDict, run: summary_lib.RunInfo) -> dict[str, Any]:
  """The `train` section of one run: another seed sets train.seed and train.data.seed (the
  data order and the marker dropout draws; with a pretrained base model train.seed alone
  would change almost nothing). train.seed's run keeps the section as configured."""
  section = cfg.train.to_dict()
  if run.seed != cfg.train.seed:
    section["seed"] = run.seed
    section["data"] = {**section["data"], "seed": run.seed}
  return section


def _train_config(cfg: ml_collections.ConfigDict, run: summary_lib.RunInfo,
                  data_dir: str) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict(_train_section(cfg, run))
  under = lambda files: tuple(os.path.join(data_dir, f) for f in files)  # noqa: E731
  c.data.train_files = under(c.data.train_files)
  c.data.eval_files = under(c.data.eval_files)
  c.data.taxonomy = os.path.join(data_dir, c.data.taxonomy) if c.data.taxonomy else ""
  for key in ("variant", "p_dataset", "p_sample"):
    c.data[key] = cfg.runs[run.group_name][key]
  return c


def _train(cfg: ml_collections.ConfigDict, run: summary_lib.RunInfo, data_dir: str, out: str,
           progress: bool) -> dict[str, Any]:
  from treasure_jax.train import logging_lib  # pylint: disable=g-import-not-at-top
  from treasure_jax.train import loop  # pylint: disable=g-import-not-at-top
  last = loop.train(_train_config(cfg, run, data_dir), out, progress=progress)
  records = logging_lib.read_metrics(os.path.join(out, logging_lib.METRICS_FILE))
  keep = ("loss", "response_loss", "marker_loss", "marker_token_accuracy", "tokens")
  # One step's loss on a few short rows is noisy: means over the first and last fifth of steps.
  window = max(1, len(records) // 5)

  def mean(recs):
    return {k: sum(r[k] for r in recs) / len(recs) for k in keep
            if recs and all(k in r for r in recs)}
  total = lambda k: sum(r.get(k, 0.0) for r in records)  # noqa: E731
  # Packed runs see different numbers of examples for the same tokens (a marked example is
  # longer): the totals say how many each run trained on.
  return {"steps": last.get("step"), "workdir": out, "window": window,
          "first": mean(records[:window]), "last": mean(records[-window:]),
          "examples_seen": total("examples"), "tokens_seen": total("tokens")}


def _sweep_config(cfg: ml_collections.ConfigDict, runs: Sequence[summary_lib.RunInfo],
                  tasks: Sequence[str], workdir: str) -> dict[str, Any]:
  c = cfg.eval.to_dict()
  c["tasks"] = {t: c["tasks"][t] for t in tasks}
  c["checkpoints"] = tuple(f"{r.name}={os.path.join(workdir, 'train', r.name)}" for r in runs)
  c["baselines"] = tuple(r.name for r in runs if r.variant == "baseline")
  c["data_dir"] = os.path.join(workdir, "data")
  return c


def _evaluate(cfg: ml_collections.ConfigDict, run: summary_lib.RunInfo, task: str,
              workdir: str) -> dict[str, Any]:
  from treasure_jax.eval import sweep  # pylint: disable=g-import-not-at-top
  path = sweep.run(_sweep_config(cfg, [run], [task], workdir), os.path.join(workdir, "eval"))
  return {"report": path}


def _stage_list(cfg: ml_collections.ConfigDict, workdir: str,
                runs: Sequence[summary_lib.RunInfo], progress: bool = True
                ) -> list[stages.Stage]:
  data_dir = os.path.join(workdir, "data")
  data_spec = {"build": cfg.build.to_dict()}
  out = [stages.Stage("data", data_spec, lambda: data_lib.build(data_dir, **cfg.build.to_dict())),
         stages.Stage("eval_subset", {"data": data_spec, "seed": cfg.eval_sample_seed,
                                      "rule": "single-turn, interleaved by language"},
                      lambda: data_lib.write_eval_subset(data_dir, cfg.eval_sample_seed))]
  train_digests = {}
  for r in runs:
    stage = stages.Stage(
        f"train/{r.name}", {"data": data_spec, "train": _train_section(cfg, r),
                            "run": cfg.runs[r.group_name].to_dict()},
        lambda r=r: _train(cfg, r, data_dir, os.path.join(workdir, "train", r.name),
                           progress),
        guard=os.path.join(workdir, "train", r.name, "checkpoints"))
    train_digests[r.name] = stage.digest
    out.append(stage)
  shared = {k: v for k, v in cfg.eval.to_dict().items() if k != "tasks"}
  for r in runs:
    for task, task_cfg in cfg.eval.tasks.items():
      spec = {"train": train_digests[r.name], "eval": shared, "task": task_cfg.to_dict(),
              "eval_subset": out[1].digest}
      out.append(stages.Stage(f"eval/{r.name}/{task}", spec,
                              lambda r=r, task=task: _evaluate(cfg, r, task, workdir)))
  return out


def _training_set(data_result: dict[str, Any]) -> str:
  """"N examples from k sources (name n, ...)", largest source first."""
  sources = data_result.get("sources") or {}
  parts = ", ".join(f"{name} {info['count']}" for name, info in
                    sorted(sources.items(), key=lambda kv: -kv[1]["count"]))
  return f"{data_result.get('train')} examples; all splits by source: {parts or '-'}"


def _sizes(cfg: ml_collections.ConfigDict, runs: Sequence[summary_lib.RunInfo],
           data_result: dict[str, Any]) -> dict[str, tuple[str, str]]:
  t, tasks = cfg.train, cfg.eval.tasks
  rows = "examples" if not t.data.pack else "packed rows"
  cap = t.data.get("examples_per_batch", 0)
  matched = (f"each step at most {cap} examples of one stream (example-matched)" if cap
             else "as many examples as fit (compute-matched)" if t.data.pack
             else "one example per row")
  dropout = ", ".join(f"{name}: p_d={r.p_dataset:g}, p_s={r.p_sample:g}"
                      for name, r in cfg.runs.items() if r.variant == "markers")
  evals = ", ".join(f"{name} {task.limit or 'all'}" for name, task in tasks.items())
  return {
      "base model": (f"{t.model.preset} ({os.path.basename(t.init_from) or 'random init'}), "
                     f"{t.model.dtype}", "a 7B model"),
      "training set": (_training_set(data_result), "2.7M examples"),
      "steps x batch": (f"{t.num_train_steps} x {t.batch_size} = "
                        f"{t.num_train_steps * t.batch_size} {rows} per run, " + matched,
                        "8,000 x 32 examples, the baseline on the same data and schedule"),
      "seeds": (", ".join(map(str, seeds(cfg))) + " (every run once per seed; all reported)",
                "not stated in method.md"),
      "sequence length": (f"{t.data.seq_len} tokens", "not stated in method.md"),
      "learning rate": (f"{t.optim.warmup_steps} warm-up steps to {t.optim.peak_lr:g}, "
                        f"{t.optim.schedule} to {t.optim.final_lr:g}",
                        "10 warm-up steps to 2.5e-4, cosine to 1.25e-4"),
      "prompt-side dropout": (dropout or "-", "p_d=0.5, p_s=0.5 (Table 7: p_d 0, 0.5, 0.7)"),
      "evaluation examples": (evals + f"; decode {cfg.eval.decode.sampler}",
                              "Arena-Hard-Auto, AlpacaEval-LI, HumanEvalPack (164 problems)"),
  }


def _report(cfg: ml_collections.ConfigDict, spec: str, workdir: str,
            runs: Sequence[summary_lib.RunInfo], done: Sequence[stages.Record]) -> dict[str, Any]:
  from treasure_jax.eval import sweep  # pylint: disable=g-import-not-at-top
  tasks = list(cfg.eval.tasks.keys())
  eval_report = sweep.run(_sweep_config(cfg, runs, tasks, workdir), os.path.join(workdir, "eval"))
  with open(os.path.join(os.path.dirname(eval_report), "cells.json"), encoding="utf-8") as f:
    cells = json.load(f)
  table = summary_lib.table(cells, runs, tasks)
  by_name = {r.name: r for r in done}
  train = {r.name: by_name[f"train/{r.name}"].result for r in runs}
  summary_lib.write_report(
      os.path.join(workdir, REPORT), title=f"treasure_jax demo ({os.path.basename(spec)})",
      summary=table, sizes=_sizes(cfg, runs, by_name["data"].result), train=train,
      records=done, eval_report=eval_report,
      stats_text=data_lib.stats_table(os.path.join(workdir, "data")).format())
  return {"table": table, "eval_report": eval_report}


def run(workdir: str, *, quick: bool, config_overrides: Sequence[str] = (),
        config: str | None = None, progress: bool = True,
        echo: Callable[[str], None] | None = None) -> Summary:
  """Runs (or resumes) the demo in `workdir`; returns its summary (report.md written there).

  Args:
    workdir: output directory; rerunning with the same settings skips finished stages.
    quick: the `quick` variant (smaller budget, same model and data).
    config_overrides: "key=value" or "--config.key=value" items (e.g. "train.num_train_steps=4").
    config: "path.py[:variant]" instead of configs/demo.py.
    progress: show the stage progress bar (and the training step bar).
    echo: where the marker statistics and the summary table go (default: logging).
  """
  spec, cfg = load_config(quick=quick, config=config, overrides=config_overrides)
  workdir = os.path.abspath(workdir)
  os.makedirs(workdir, exist_ok=True)
  runs = _runs(cfg)
  todo = _stage_list(cfg, workdir, runs, progress)
  report_stage = stages.Stage("report", {"stages": [s.digest for s in todo]}, lambda: None)
  stages.check(workdir, todo + [report_stage])
  config_loader.write_json(cfg, os.path.join(workdir, "demo_config.json"))
  bar = tqdm.tqdm(total=len(todo) + 1, desc="demo", unit="stage", disable=not progress)

  def say(text: str) -> None:
    with tqdm.tqdm.external_write_mode():
      (echo or logging.info)(text)

  done = []
  try:
    for stage in todo:
      bar.set_postfix_str(stage.name)
      done.append(stages.run(workdir, stage))
      if stage.name == "data":
        say(data_lib.stats_table(os.path.join(workdir, "data")).format())
      bar.update(1)
    bar.set_postfix_str("report")
    if any(r.status == "ran" for r in done):
      stages.forget(workdir, report_stage)  # Something changed: the report is written again.
    report_stage = dataclasses.replace(
        report_stage, fn=lambda: _report(cfg, spec, workdir, runs, done))
    done.append(stages.run(workdir, report_stage))
    bar.update(1)
  finally:
    bar.close()
  result = done[-1].result
  out = Summary(workdir, os.path.join(workdir, REPORT), result["eval_report"], result["table"],
                done)
  say(out.format())
  return out
