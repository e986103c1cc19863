"""Run configs: load `configs/X.py[:variant]`, apply `--config.a.b=v` overrides, freeze sections.

A config file defines `get_config(arg=None) -> ml_collections.ConfigDict`; `arg` is the text after
the colon of `configs/X.py:variant`. Overrides may only set keys the file defines, with a value
of the key's type (ints are accepted for floats). `resolve` turns each section into its module's
frozen dataclass (`model` → `model.config.ModelConfig`, `optim` → `train.optim.OptimConfig`...)
and the top-level keys into `RunConfig`; an unknown key fails there, named in full ("optim.lr").

Deliberately left to others: flag parsing (cli.py collects the `--config.*` arguments), the
meaning and cross-checks of each section (their modules), and what the loop does with them.
"""
from __future__ import annotations

import ast
import dataclasses
import difflib
import importlib.util
import json
import os
import types
import typing
from typing import Any, Mapping, Sequence

import ml_collections

from treasure_jax.data import config as data_config
from treasure_jax.model import config as model_config
from treasure_jax.model import sharding
from treasure_jax.train import checkpoint
from treasure_jax.train import distributed
from treasure_jax.train import optim

_PREFIX = "--config."
# Sections read by later commands (generate, eval); `train` carries them without reading them.
_LATER_SECTIONS = ("decode", "eval")


@dataclasses.dataclass(frozen=True)
class RunConfig:
  """A training run: one frozen dataclass per section plus the top-level keys.

  Top-level keys: num_train_steps; seed (parameter init and step RNG; the data has its own
  `data.seed`); batch_size (global examples-rows per optimizer step); grad_accum_steps
  (micro-batches per step); log_every_steps; eval_every_steps (0: never) and eval_batches
  (0: the whole validation split), eval_batch_size (0: batch_size); data_loading ("sharded":
  each process reads its own shard of the examples; "replicated": every process reads all of
  them and keeps its rows of each batch, so batches do not depend on the number of processes
  and a run reproduces across topologies); init_from ("" random init,
  else a Hugging Face directory or a .gguf file); tokenizer ("" = the one of init_from; else
  a .gguf file, a tokenizer.json or its directory, or a sentencepiece .model);
  compilation_cache_dir ("" = none).
  """
  model: model_config.ModelConfig
  data: data_config.DataConfig
  optim: optim.OptimConfig
  mesh: sharding.MeshConfig
  checkpoint: checkpoint.CheckpointConfig
  distributed: distributed.DistributedConfig
  num_train_steps: int
  seed: int
  batch_size: int
  log_every_steps: int
  grad_accum_steps: int = 1
  eval_every_steps: int = 0
  eval_batches: int = 0
  eval_batch_size: int = 0
  data_loading: str = "sharded"
  init_from: str = ""
  tokenizer: str = ""
  compilation_cache_dir: str = ""
  decode: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  eval: Mapping[str, Any] = dataclasses.field(default_factory=dict)


def load(spec: str, overrides: Sequence[str] = ()) -> ml_collections.ConfigDict:
  """`get_config(variant)` of the file in `spec` ("path.py" or "path.py:variant"), overridden."""
  path, _, variant = spec.partition(":")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"config file {path!r} not found (from {spec!r})")
  module_spec = importlib.util.spec_from_file_location(
      f"_treasure_config_{abs(hash(path))}", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  if not hasattr(module, "get_config"):
    raise ValueError(f"{path}: defines no get_config(arg=None)")
  cfg = module.get_config(variant or None)
  if not isinstance(cfg, ml_collections.ConfigDict):
    raise ValueError(f"{path}: get_config returned {type(cfg).__name__}, not a ConfigDict")
  return apply_overrides(cfg, overrides)


def apply_overrides(cfg: ml_collections.ConfigDict,
                    overrides: Sequence[str]) -> ml_collections.ConfigDict:
  """A copy of `cfg` with each "--config.a.b=v" (or "a.b=v") applied in order.

  A key must be in the file or be a field of the run schema (`RunConfig` and its sections'
  dataclasses, e.g. `model.num_layers` next to a `model.preset`); its value is parsed as the
  current value's type, else the schema's.
  """
  cfg = ml_collections.ConfigDict(cfg.to_dict())
  for text in overrides:
    key, value = _split_override(text)
    hint = _schema_hint(key)
    if hint is not None and not _has_key(cfg, key):
      parent, leaf = _parent(cfg, key, create=True)
      kind, optional = _kind_of_hint(hint)
      parsed = None if optional and value.lower() == "none" else parse_value(value, kind, key)
      with parent.ignore_type():
        parent[leaf] = parsed
      continue
    parent, leaf = _parent(cfg, key)
    old = parent[leaf]
    if isinstance(old, ml_collections.ConfigDict):
      raise ValueError(f"--config.{key}: is a section; set one of its keys "
                       f"({', '.join(sorted(old.keys()))})")
    with parent.ignore_type():
      parent[leaf] = parse_value(value, parent.get_type(leaf) if old is None else type(old),
                                 key)
  return cfg


def _has_key(cfg: ml_collections.ConfigDict, key: str) -> bool:
  node: Any = cfg
  for name in key.split("."):
    if not isinstance(node, ml_collections.ConfigDict) or name not in node:
      return False
    node = node[name]
  return True


def _schema_hint(key: str) -> Any:
  """The type hint of dotted `key` in the run schema, or None if the schema has no such key."""
  cls: Any = RunConfig
  parts = key.split(".")
  for i, name in enumerate(parts):
    if not (dataclasses.is_dataclass(cls) and name in {f.name for f in dataclasses.fields(cls)}):
      return None
    hint = typing.get_type_hints(cls)[name]
    inner = [a for a in typing.get_args(hint) if a is not type(None)]
    if len(inner) == 1 and dataclasses.is_dataclass(inner[0]):  # An optional section (model.lora).
      hint = inner[0]
    if i == len(parts) - 1:
      return None if dataclasses.is_dataclass(hint) else hint
    cls = hint
  return None


def _kind_of_hint(hint: Any) -> tuple[type, bool]:
  """(the Python type to parse a value as, whether None is allowed) of a field's hint."""
  args = typing.get_args(hint)
  optional = type(None) in args
  if typing.get_origin(hint) in (typing.Union, types.UnionType):
    hint = next(a for a in args if a is not type(None))
  origin = typing.get_origin(hint) or hint
  if origin in (tuple, list, typing.Sequence):
    return tuple, optional
  return (origin if origin in (bool, int, float, str) else object), optional


def _split_override(text: str) -> tuple[str, str]:
  body = text[len(_PREFIX):] if text.startswith(_PREFIX) else text
  key, eq, value = body.partition("=")
  if not eq or not key:
    raise ValueError(f"config override {text!r}: expected --config.KEY=VALUE")
  return key, value


def _parent(cfg: ml_collections.ConfigDict, key: str, create: bool = False
            ) -> tuple[ml_collections.ConfigDict, str]:
  """The section holding dotted `key` and its last name; unknown names fail with the full key
  (or, with `create`, missing sections are added)."""
  node = cfg
  parts = key.split(".")
  for i, name in enumerate(parts[:-1]):
    if create and isinstance(node, ml_collections.ConfigDict) and name not in node:
      node[name] = ml_collections.ConfigDict()
    if not isinstance(node, ml_collections.ConfigDict) or name not in node:
      _unknown(key, parts, i, node)
    node = node[name]
  if not create and (not isinstance(node, ml_collections.ConfigDict) or parts[-1] not in node):
    _unknown(key, parts, len(parts) - 1, node)
  return node, parts[-1]


def _unknown(key: str, parts: list[str], i: int, node: Any) -> None:
  where = ".".join(parts[:i]) or "<top level>"
  known = sorted(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []
  raise ValueError(f"--config.{key}: unknown key {'.'.join(parts[:i + 1])!r}"
                   f"{_did_you_mean(parts[i], known)}; keys of {where}: {', '.join(known)}")


def _did_you_mean(name: str, known: Sequence[str]) -> str:
  close = difflib.get_close_matches(name, known, n=1)
  return f" (did you mean {close[0]!r}?)" if close else ""


def parse_value(text: str, kind: type, key: str) -> Any:
  """`text` as a value of type `kind` (the current value's type), or an error naming `key`."""
  def fail(what: str) -> ValueError:
    return ValueError(f"--config.{key}={text}: expected {what}")
  if kind is bool:
    lowered = text.strip().lower()
    if lowered not in ("true", "false", "1", "0"):
      raise fail("a bool (true/false)")
    return lowered in ("true", "1")
  if kind is int:
    try:
      return int(text)
    except ValueError:
      raise fail("an int") from None
  if kind is float:
    try:
      return float(text)
    except ValueError:
      raise fail("a float") from None
  if kind is str:
    return text
  if kind in (tuple, list):
    value = _literal(text)
    if not isinstance(value, (tuple, list)):
      value = tuple(v.strip() for v in text.split(",") if v.strip())
    return kind(value)
  return _literal(text)  # None-valued key without a declared type: a literal, else the string.


def _literal(text: str) -> Any:
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text


def resolve(cfg: ml_collections.ConfigDict) -> RunConfig:
  """Every section as its frozen dataclass; unknown keys and inconsistent settings fail here."""
  d = cfg.to_dict()
  model_section = dict(d.get("model", {}))
  _check_keys(model_section, {f.name for f in dataclasses.fields(model_config.ModelConfig)}
              | {"preset"}, "model")
  try:
    model = model_config.from_dict(model_section)
  except (TypeError, ValueError) as e:
    raise ValueError(f"config section model: {e}") from e
  top = {k: v for k, v in d.items() if k != "model"}
  for name in _LATER_SECTIONS:
    top.setdefault(name, {})
  run = to_dataclass(RunConfig, {**top, "model": model})
  _check_consistency(run)
  return run


def _check_keys(section: Mapping[str, Any], known: set[str], prefix: str) -> None:
  unknown = sorted(set(section) - known)
  if unknown:
    raise ValueError(f"unknown config key {_join(prefix, unknown[0])!r}"
                     f"{_did_you_mean(unknown[0], sorted(known))}; keys of {prefix}: "
                     f"{', '.join(sorted(known))}")


def _check_consistency(run: RunConfig) -> None:
  """Cross-section checks that need no devices (the mesh divisibility is checked by the loop)."""
  for key in ("num_train_steps", "batch_size", "log_every_steps", "grad_accum_steps"):
    if getattr(run, key) < 1:
      raise ValueError(f"config key {key}={getattr(run, key)} must be >= 1")
  for key in ("eval_every_steps", "eval_batches", "eval_batch_size"):
    if getattr(run, key) < 0:
      raise ValueError(f"config key {key}={getattr(run, key)} must be >= 0")
  if run.data.seq_len > run.model.max_seq_len:
    raise ValueError(f"config key data.seq_len={run.data.seq_len} exceeds the model's positions "
                     f"model.max_seq_len={run.model.max_seq_len}")
  if run.data_loading not in ("sharded", "replicated"):
    raise ValueError(f"config key data_loading={run.data_loading!r}: sharded or replicated")
  if run.batch_size % run.grad_accum_steps:
    raise ValueError(f"config key batch_size={run.batch_size} is not divisible by "
                     f"grad_accum_steps={run.grad_accum_steps}")
  if not run.init_from and not run.tokenizer:
    raise ValueError("config key tokenizer: set it (or init_from, whose tokenizer is used)")
  if run.optim.schedule != "constant" and run.optim.warmup_steps >= run.num_train_steps:
    raise ValueError(f"config key optim.warmup_steps={run.optim.warmup_steps} must be < "
                     f"num_train_steps={run.num_train_steps}")


def to_json(cfg: ml_collections.ConfigDict | Mapping[str, Any]) -> str:
  d = cfg.to_dict() if isinstance(cfg, ml_collections.ConfigDict) else dict(cfg)
  return json.dumps(d, indent=2, sort_keys=True, default=_json_default)


def _json_default(x: Any) -> Any:
  if dataclasses.is_dataclass(x):
    return dataclasses.asdict(x)
  if isinstance(x, (tuple, set, frozenset)):
    return list(x)
  raise TypeError(f"config value {x!r} of type {type(x).__name__} is not JSON-serializable")


def write_json(cfg: ml_collections.ConfigDict | Mapping[str, Any], path: str) -> None:
  """Writes the resolved config (atomically: a reader never sees half a file)."""
  tmp = f"{path}.tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    f.write(to_json(cfg) + "\n")
  os.replace(tmp, path)


def to_dataclass(cls: type, section: Mapping[str, Any], prefix: str = "") -> Any:
  """`cls(**section)` with nested dataclasses converted and each key checked against `cls`.

  `prefix` is the section's dotted name ("" at the top level), used in errors
  ("unknown config key optim.lr", "config key optim.peak_lr: expected float").
  """
  if isinstance(section, ml_collections.ConfigDict):
    section = section.to_dict()
  hints = typing.get_type_hints(cls)
  names = [f.name for f in dataclasses.fields(cls) if f.init]
  unknown = sorted(set(section) - set(names))
  if unknown:
    where = prefix or "the top level"
    raise ValueError(f"unknown config key {_join(prefix, unknown[0])!r}"
                     f"{_did_you_mean(unknown[0], names)}; keys of {where}: {', '.join(names)}")
  missing = [f.name for f in dataclasses.fields(cls) if f.init and f.name not in section
             and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
  if missing:
    raise ValueError(f"config key {_join(prefix, missing[0])!r} is required (no default)")
  kwargs = {k: _convert(hints[k], v, _join(prefix, k)) for k, v in section.items()}
  try:
    return cls(**kwargs)
  except (TypeError, ValueError) as e:
    raise ValueError(f"config section {prefix or 'top level'}: {e}") from e


def _join(prefix: str, key: str) -> str:
  return f"{prefix}.{key}" if prefix else key


def _convert(hint: Any, value: Any, key: str) -> Any:
  """`value` checked (and lists made tuples) against the type hint of its field."""
  origin = typing.get_origin(hint)
  args = typing.get_args(hint)
  if origin in (typing.Union, types.UnionType):
    if value is None and type(None) in args:
      return None
    options = [a for a in args if a is not type(None)]
    errors = []
    for option in options:
      try:
        return _convert(option, value, key)
      except ValueError as e:
        errors.append(str(e))
    raise ValueError(errors[0])
  if dataclasses.is_dataclass(hint):
    if isinstance(value, hint):
      return value
    if not isinstance(value, Mapping):
      raise ValueError(f"config key {key}: expected a section for {hint.__name__}, got {value!r}")
    return to_dataclass(hint, value, key)
  if origin in (tuple, list, typing.Sequence) or hint in (tuple, list):
    if not isinstance(value, (tuple, list)):
      raise ValueError(f"config key {key}: expected a sequence, got {value!r}")
    if len(args) == 2 and args[1] is Ellipsis or len(args) == 1:
      items = [args[0]] * len(value)
    elif args:
      if len(args) != len(value):
        raise ValueError(f"config key {key}: expected {len(args)} items, got {value!r}")
      items = list(args)
    else:
      items = [Any] * len(value)
    return tuple(_convert(t, v, f"{key}[{i}]") for i, (t, v) in enumerate(zip(items, value)))
  if origin in (dict, typing.Mapping) or hint in (dict, typing.Mapping):
    if not isinstance(value, Mapping):
      raise ValueError(f"config key {key}: expected a mapping, got {value!r}")
    return dict(value)
  return _check_scalar(hint, value, key)


def _check_scalar(hint: Any, value: Any, key: str) -> Any:
  if hint is Any or not isinstance(hint, type):
    return value
  if hint is float and isinstance(value, int) and not isinstance(value, bool):
    return float(value)
  if hint is int and isinstance(value, bool):
    raise ValueError(f"config key {key}: expected int, got bool {value!r}")
  if not isinstance(value, hint):
    raise ValueError(f"config key {key}: expected {hint.__name__}, got "
                     f"{type(value).__name__} {value!r}")
  return value
