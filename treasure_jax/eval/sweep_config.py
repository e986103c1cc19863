"""The eval sweep's config file as frozen dataclasses, checked at start-up (`resolve`).

`SweepConfig` is the file's top level, a `TaskConfig` per evaluation task; `resolve` turns an
ml_collections config into them and the checkpoint paths by name, and checks every task's
settings against the taxonomy, so that a bad key or value fails before any model is loaded,
named. Running the cells is `sweep`'s job.
"""
from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

import ml_collections

from treasure_jax import config_loader
from treasure_jax.annotate import quality
from treasure_jax.eval import cells
from treasure_jax.eval import decoding
from treasure_jax.eval import judge as judge_lib
from treasure_jax.markers import taxonomy as taxonomy_lib
from treasure_jax.model import sharding
from treasure_jax.train import distributed as distributed_lib

_NAME = re.compile(r"[A-Za-z0-9_.-]+\Z")


@dataclasses.dataclass(frozen=True)
class TaskConfig:
  """One evaluation task (see `cells` for kinds and setting syntax).

  limit: first N examples (0 = all). max_new_tokens: 0 = decode.max_new_tokens.
  length_limits: word limits cycled over the examples (length tasks; () = the reference's).
  every_limit: ask every example at every one of `length_limits` instead (>= 2 of them; ids
  become `<id>@<N>`): the report's test of whether the asked length steers the answer.
  categories: restrict marker metrics to these. judge: run the judge and reward model here.
  decode: this task's overrides of the `decode` section, e.g. {"frequency_penalty": 0.5} for
  prose while code keeps the plain loop (`task_decode`; keys are `DecodeConfig` fields).
  """
  kind: str
  data: str
  settings: tuple[str, ...] = ("inferred",)
  limit: int = 0
  max_new_tokens: int = 0
  length_limits: tuple[int, ...] = ()
  every_limit: bool = False
  nl_template: str = "Answer in at most {n} words."
  categories: tuple[str, ...] = ()
  judge: bool = False
  decode: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class SweepConfig:
  """The eval config file's top level; `tasks` maps a task name to a `TaskConfig` section.

  checkpoints: "name=path" (or a path: its base name); baselines: names trained without
  markers; data_dir: base of relative task data, train_files and taxonomy paths;
  train_files: training JSONL for head/tail slices (() = the checkpoint's own training files);
  taxonomy: file to check settings against at start-up ("" = default; each checkpoint's own
  taxonomy is used to run); sharded: place the model on `mesh` (needed with several
  processes; `distributed` joins them as in training); judge: `judge.JudgeConfig` fields
  (url "" = no judge); reward: `annotate.quality.QualityConfig` fields (kind "none" = none).
  """
  checkpoints: tuple[str, ...]
  tasks: dict[str, Any]
  baselines: tuple[str, ...] = ()
  data_dir: str = ""
  train_files: tuple[str, ...] = ()
  long_tail_threshold: float = 0.05
  taxonomy: str = ""
  examples_per_cell: int = 3
  nll_batch_size: int = 8
  sharded: bool = False
  mesh: sharding.MeshConfig = sharding.MeshConfig()
  distributed: distributed_lib.DistributedConfig = distributed_lib.DistributedConfig()
  decode: decoding.DecodeConfig = decoding.DecodeConfig()
  judge: dict[str, Any] = dataclasses.field(default_factory=dict)
  reward: dict[str, Any] = dataclasses.field(default_factory=dict)


def resolve(config: ml_collections.ConfigDict | Mapping[str, Any]
            ) -> tuple[SweepConfig, dict[str, TaskConfig], dict[str, str]]:
  """(config, tasks by name, checkpoint paths by name); every error names its key."""
  raw = config.to_dict() if isinstance(config, ml_collections.ConfigDict) else dict(config)
  cfg = config_loader.to_dataclass(SweepConfig, raw, "")
  under = lambda p: os.path.join(cfg.data_dir, p) if p else p  # noqa: E731
  cfg = dataclasses.replace(cfg, taxonomy=under(cfg.taxonomy),
                            train_files=tuple(map(under, cfg.train_files)))
  tasks = {name: config_loader.to_dataclass(TaskConfig, section, f"tasks.{name}")
           for name, section in cfg.tasks.items()}
  tasks = {name: dataclasses.replace(t, data=under(t.data)) for name, t in tasks.items()}
  if not tasks:
    raise ValueError("tasks: no evaluation task")
  ckpts = _checkpoints(cfg.checkpoints)
  for name in cfg.baselines:
    if name not in ckpts:
      raise ValueError(f"baselines: {name!r} is not a checkpoint name ({', '.join(ckpts)})")
  tax = taxonomy_lib.load(cfg.taxonomy) if cfg.taxonomy else taxonomy_lib.default_taxonomy()
  for name, task in tasks.items():
    if not _NAME.match(name):
      raise ValueError(f"tasks.{name}: task names use letters, digits, _.- only")
    cells.check_task(f"tasks.{name}", task, tax)
    task_decode(cfg.decode, task, f"tasks.{name}.decode")
  judge_config(cfg)
  reward_scorer(cfg)
  return cfg, tasks, ckpts


def task_decode(decode: decoding.DecodeConfig, task: TaskConfig,
                where: str = "decode") -> decoding.DecodeConfig:
  """The sweep's decode section with the task's overrides; an unknown key or bad value is an
  error naming `where`."""
  if not task.decode:
    return decode
  section = dataclasses.asdict(decode)
  unknown = sorted(set(task.decode) - set(section))
  if unknown:
    raise ValueError(f"{where}: unknown decode key {unknown[0]!r}; keys: {', '.join(section)}")
  return config_loader.to_dataclass(decoding.DecodeConfig, {**section, **task.decode}, where)


def _checkpoints(specs: Sequence[str]) -> dict[str, str]:
  out: dict[str, str] = {}
  for i, spec in enumerate(specs):
    name, eq, path = spec.partition("=")
    name, path = (name, path) if eq else (os.path.basename(os.path.normpath(spec)), spec)
    where = f"checkpoints[{i}] ({spec!r})"
    if not path or not _NAME.match(name) or name in out:
      raise ValueError(f"{where}: need 'name=path' with a unique name of letters, digits, _.-")
    out[name] = path
  if not out:
    raise ValueError("checkpoints: no checkpoint to evaluate")
  return out


def judge_config(cfg: SweepConfig) -> judge_lib.JudgeConfig | None:
  """The judge section as a `JudgeConfig`; None where no url is set."""
  if not cfg.judge.get("url"):
    return None
  return judge_lib.JudgeConfig.from_dict(cfg.judge, where="judge")


def reward_scorer(cfg: SweepConfig) -> quality.Scorer | None:
  """The reward model the reward section names; None for kind "none"."""
  qcfg = quality.QualityConfig.from_dict(cfg.reward, where="reward")
  return None if qcfg.kind == "none" else quality.Scorer(qcfg)
