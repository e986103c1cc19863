"""`treasure-jax eval`: checkpoints × evaluation tasks × marker settings, then one report.

`run(config, workdir)` resolves the eval config (`sweep_config`: an ml_collections file with a
section per task, the decode, judge and reward sections; an unknown key fails at start-up,
named) and runs every cell in a fixed order, baseline checkpoints first:

  workdir/config.json                                     the resolved config
  workdir/cells/<checkpoint>/<task>/<setting>/records.jsonl  per-example results
  workdir/cells/<checkpoint>/<task>/<setting>/metrics.json   the report cell (written last)
  workdir/report/report.md (+ cells.json, PNGs)            `report.write`, plus example generations

Both cell files are written atomically (temporary file, then rename); a cell whose metrics.json
exists with the same spec (checkpoint path, task, setting, decoding) is finished and skipped on
a rerun, and a checkpoint whose cells are all finished is not even loaded. Multi-host: every
process runs the same cells in the same order (the device work is collective); process 0
decides which cells are finished, scores (sandbox, judge), writes, and the others wait for it at
the end of each cell. What a cell computes is `cells`' and `likelihood`'s job.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import re
import time
from collections.abc import Mapping
from typing import Any

import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils

from treasure_jax import config_loader
from treasure_jax.annotate import quality
from treasure_jax.eval import cells
from treasure_jax.eval import decoding
from treasure_jax.eval import judge as judge_lib
from treasure_jax.eval import likelihood
from treasure_jax.eval import metrics as metrics_lib
from treasure_jax.eval import report
from treasure_jax.eval import sweep_config
from treasure_jax.markers import stats
from treasure_jax.markers import taxonomy as taxonomy_lib
from treasure_jax.model import sharding
from treasure_jax.train import checkpoint
from treasure_jax.train import distributed as distributed_lib

# ---------------------------------------------------------------- files and hosts


def _is_writer() -> bool:
  return jax.process_index() == 0


def _agree(flag: bool) -> bool:
  """Process 0's answer, on every process (only it reads the cell files)."""
  if jax.process_count() == 1:
    return flag
  return bool(multihost_utils.broadcast_one_to_all(np.int32(flag)))


def _barrier(name: str) -> None:
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


def _atomic_write(path: str, text: str) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  tmp = f"{path}.tmp{os.getpid()}"
  with open(tmp, "w", encoding="utf-8") as f:
    f.write(text)
  os.replace(tmp, path)


def _slug(setting: str) -> str:
  return re.sub(r"[^A-Za-z0-9_.=-]+", "_", setting)


# Fields added after cells were first saved, with the value that leaves them out of a cell's
# spec: at that value a cell made before the field existed stays finished.
_TASK_ADDED_LATER = {"every_limit": False}
_DECODE_ADDED_LATER = {"presence_penalty": 0.0, "frequency_penalty": 0.0}


def _without_later_defaults(fields: dict[str, Any], later: Mapping[str, Any]) -> dict[str, Any]:
  return {k: v for k, v in fields.items() if k not in later or v != later[k]}


@dataclasses.dataclass(frozen=True)
class _Cell:
  checkpoint: str
  path: str
  task_name: str
  task: sweep_config.TaskConfig
  setting: str
  directory: str

  @property
  def name(self) -> str:
    return f"{self.checkpoint}/{self.task_name}/{self.setting}"

  def spec(self, cfg: sweep_config.SweepConfig) -> str:
    """A hash of what the cell computes: the decoding it runs with (the task's overrides
    merged in), not how the config spells it."""
    task = _without_later_defaults(dataclasses.asdict(self.task), _TASK_ADDED_LATER)
    del task["decode"]
    decode = sweep_config.task_decode(cfg.decode, self.task)
    decode = _without_later_defaults(dataclasses.asdict(decode), _DECODE_ADDED_LATER)
    blob = json.dumps([self.path, task, self.setting,
                       decode, cfg.train_files, cfg.long_tail_threshold,
                       cfg.examples_per_cell, self.task.judge and (cfg.judge, cfg.reward)],
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]


def _plan(cfg: sweep_config.SweepConfig, tasks: Mapping[str, sweep_config.TaskConfig],
          ckpts: Mapping[str, str], workdir: str) -> list[_Cell]:
  """Every cell, baselines first; a baseline checkpoint runs only none / nl_instruction."""
  order = [n for n in ckpts if n in cfg.baselines] + [n for n in ckpts if n not in cfg.baselines]
  out = []
  for ckpt in order:
    for task_name, task in tasks.items():
      for setting in task.settings:
        kind = setting.partition(":")[0]
        if ckpt in cfg.baselines and kind not in cells.BASELINE_SETTINGS:
          logging.info("eval: %s is a baseline; skipping setting %s of %s", ckpt, setting,
                       task_name)
          continue
        directory = os.path.join(workdir, "cells", ckpt, task_name, _slug(setting))
        out.append(_Cell(ckpt, ckpts[ckpt], task_name, task, setting, directory))
  return out


def _finished(cell: _Cell, cfg: sweep_config.SweepConfig) -> dict[str, Any] | None:
  """The saved report cell when it is complete and was made by the same spec."""
  path = os.path.join(cell.directory, "metrics.json")
  if not os.path.isfile(path):
    return None
  with open(path, encoding="utf-8") as f:
    saved = json.load(f)
  if saved.get("spec") != cell.spec(cfg):
    logging.warning("eval: %s was made by another config; running it again", cell.name)
    return None
  return saved


# ---------------------------------------------------------------- computing cells


@dataclasses.dataclass
class _Context:
  """What the cells of one checkpoint share (loaded once, only if some cell is pending)."""
  cfg: sweep_config.SweepConfig
  loaded: checkpoint.Loaded
  generate: cells.GenerateFn
  likelihood_inputs: tuple[Any, Any]  # (chat template, vocabulary)
  freq: stats.FrequencyTable | None
  judge: judge_lib.JudgeConfig | None
  scorer: quality.Scorer | None
  workdir: str


def _load(cfg: sweep_config.SweepConfig, name: str, path: str, workdir: str,
          constrain: bool) -> _Context:
  mesh = sharding.make_mesh(cfg.mesh) if cfg.sharded else None
  # A training workdir also holds a config.json, which load_for_inference would take for a
  # Hugging Face directory's; its checkpoints/ folder is unambiguous.
  steps = os.path.join(path, checkpoint.SUBDIR)
  loaded = checkpoint.load_for_inference(steps if os.path.isdir(steps) else path, mesh=mesh,
                                         rules=cfg.mesh.rules)
  variant = loaded.info.get("variant")
  if variant == "baseline" and name not in cfg.baselines:
    raise ValueError(f"checkpoints: {name} ({path}) was trained without markers "
                     "(data.variant=baseline); list it in baselines")
  runner = decoding.Decoder(loaded, cfg.decode, always_constrain=constrain)
  train_files = cfg.train_files or tuple((loaded.info.get("data") or {}).get("train_files", ()))
  freq = None
  if train_files:
    rows = (obj for f in train_files for _, obj in stats.read_jsonl(f))
    freq = stats.frequency_table(rows, loaded.taxonomy, threshold=cfg.long_tail_threshold)
  return _Context(cfg, loaded, runner.generate, (runner.template, runner.vocabulary), freq,
                  sweep_config.judge_config(cfg), sweep_config.reward_scorer(cfg), workdir)


def _baseline_responses(ctx: _Context, cell: _Cell) -> dict[str, str]:
  """The first baseline checkpoint's "none" answers to this task (reward-model opponent)."""
  if not ctx.cfg.baselines or cell.checkpoint in ctx.cfg.baselines:
    return {}
  path = os.path.join(ctx.workdir, "cells", ctx.cfg.baselines[0], cell.task_name, "none",
                      "records.jsonl")
  if not os.path.isfile(path):
    return {}
  return {str(r["id"]): r["response"] for _, r in stats.read_jsonl(path) if "response" in r}


def _compute(ctx: _Context, cell: _Cell) -> tuple[list[dict[str, Any]], dict[str, str]]:
  """(records, score notes) of one cell; scoring runs on process 0 only."""
  task, tax = cell.task, ctx.loaded.taxonomy
  setting = cells.parse_setting(cell.setting, tax, f"tasks.{cell.task_name}.settings")
  examples = cells.load_examples(task.data, kind=task.kind, limit=task.limit,
                                 where=f"tasks.{cell.task_name}")
  if task.kind == "likelihood":
    template, vocabulary = ctx.likelihood_inputs
    return likelihood.records(
        ctx.loaded.model, examples, setting, tax=tax, template=template, vocabulary=vocabulary,
        batch_size=ctx.cfg.nll_batch_size, origin=task.data), {}
  if task.every_limit:
    examples, targets = cells.at_every_limit(examples, task.length_limits)
  else:
    targets = ([None] * len(examples) if task.kind != "length" else
               cells.length_targets(examples, task.length_limits))
  decode = sweep_config.task_decode(ctx.cfg.decode, task)
  records, requests = cells.requests(
      examples, setting, task_kind=task.kind, targets=targets, tax=tax,
      baseline=cell.checkpoint in ctx.cfg.baselines, nl_template=task.nl_template,
      force_prefix=decode.force_prefix)
  results = ctx.generate(requests, task.max_new_tokens or decode.max_new_tokens, decode)
  records = cells.add_results(records, results)
  if not _is_writer():
    return records, {}
  return cells.score(records, task_kind=task.kind, judged=task.judge, judge_cfg=ctx.judge,
                     scorer=ctx.scorer, opponents=_baseline_responses(ctx, cell))


def _run_cell(ctx: _Context, cell: _Cell) -> dict[str, Any]:
  start = time.monotonic()
  records, notes = _compute(ctx, cell)
  report_cell = {"name": cell.name, "checkpoint": cell.checkpoint, "task": cell.task_name,
                 "setting": cell.setting, "spec": cell.spec(ctx.cfg)}
  if _is_writer():
    # Likelihood cells and baselines generate no marker list: no marker metrics for them.
    no_markers = cell.task.kind == "likelihood" or cell.checkpoint in ctx.cfg.baselines
    report_cell["metrics"] = metrics_lib.cell_metrics(
        records, tax=ctx.loaded.taxonomy, freq=ctx.freq, score_notes=notes,
        categories=() if no_markers else (cell.task.categories or None))
    report_cell["examples"] = cells.examples_for_report(records, ctx.cfg.examples_per_cell)
    lines = "".join(json.dumps(r, ensure_ascii=False, default=str) + "\n" for r in records)
    _atomic_write(os.path.join(cell.directory, "records.jsonl"), lines)
    # metrics.json last: its presence marks the cell complete.
    _atomic_write(os.path.join(cell.directory, "metrics.json"),
                  json.dumps(report_cell, indent=1, ensure_ascii=False, default=str) + "\n")
  logging.info("eval: %s: %d examples in %.1f s", cell.name, len(records),
               time.monotonic() - start)
  _barrier(f"eval cell {cell.name}")
  return report_cell


def _with_per_example(saved: dict[str, Any], cell: _Cell,
                      cfg: sweep_config.SweepConfig) -> dict[str, Any]:
  """A cell finished by an older sweep, with the per-example values the report's intervals
  need (`metrics.per_example`) computed from its records.jsonl; others unchanged."""
  path = os.path.join(cell.directory, "records.jsonl")
  if "per_example" in saved.get("metrics", {}) or not os.path.isfile(path):
    return saved
  tax = taxonomy_lib.load(cfg.taxonomy) if cfg.taxonomy else taxonomy_lib.default_taxonomy()
  freq = None
  if cfg.train_files:
    rows = (obj for f in cfg.train_files for _, obj in stats.read_jsonl(f))
    freq = stats.frequency_table(rows, tax, threshold=cfg.long_tail_threshold)
  no_markers = cell.task.kind == "likelihood" or cell.checkpoint in cfg.baselines
  records = [obj for _, obj in stats.read_jsonl(path)]
  values = metrics_lib.per_example(records, tax=tax, freq=freq, categories=() if no_markers
                                   else (cell.task.categories or None))
  return {**saved, "metrics": {**saved["metrics"], "per_example": values}}


def run(config: ml_collections.ConfigDict | Mapping[str, Any], workdir: str) -> str:
  """Runs (or resumes) the sweep into `workdir`; returns the report's path (report.md)."""
  cfg, tasks, ckpts = sweep_config.resolve(config)
  logging.info("%s", distributed_lib.initialize(cfg.distributed))
  if jax.process_count() > 1 and not cfg.sharded:
    raise ValueError("sharded=false: a multi-process eval must place the model on the mesh "
                     "(set sharded=true and mesh.shape)")
  workdir = os.path.abspath(workdir)
  if _is_writer():
    os.makedirs(workdir, exist_ok=True)
    config_loader.write_json(dataclasses.asdict(cfg), os.path.join(workdir, "config.json"))
  plan = _plan(cfg, tasks, ckpts, workdir)
  done = {c.name: _finished(c, cfg) if _is_writer() else None for c in plan}
  report_cells = []
  for ckpt in dict.fromkeys(c.checkpoint for c in plan):
    mine = [c for c in plan if c.checkpoint == ckpt]
    pending = [c for c in mine if not _agree(done[c.name] is not None)]
    # One compiled decode loop for all cells when some need the marker-list automaton.
    constrain = any(c.setting.startswith("constrained") for c in pending)
    ctx = _load(cfg, ckpt, ckpts[ckpt], workdir, constrain) if pending else None
    for cell in mine:
      if cell in pending:
        report_cells.append(_run_cell(ctx, cell))
      else:
        logging.info("eval: %s finished earlier; skipped", cell.name)
        report_cells.append(_with_per_example(done[cell.name], cell, cfg))
  path = os.path.join(workdir, "report", "report.md")
  if _is_writer():
    path = report.write(report_cells, os.path.dirname(path), baselines=cfg.baselines)
    with open(path, "a", encoding="utf-8") as f:
      f.write("\n" + cells.examples_markdown(report_cells))
  _barrier("eval report")
  return path
