"""Checkpoints of a run (orbax CheckpointManager) and loading one for inference.

A checkpoint at step s holds the state after s updates, as items: `params` and `opt_state`
(flat "a.b.c" → array dicts, restored straight into their shardings), `train` (step, RNG key),
and JSON items `data` (the data iterator's position), `config` (the resolved run config),
`taxonomy` and `meta` (model config, tokenizer and chat template: what decoding needs; a LoRA
run's `params`/`opt_state` are its adapters only and meta "base" points to its base). Saves
are asynchronous; orbax writes to a temporary directory and renames it when complete, so a run
killed mid-save leaves no half step. A step that cannot be read (corrupt or incomplete files) is
moved to `checkpoints_corrupt/` with a warning and the previous step is restored instead; a step
whose parameters do not match the model is an error saying what differs, never a fallback.
Deliberately left to others: when to save (`loop`), the model import (`model.hf`, `model.gguf`).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
from typing import Any, NamedTuple

import jax
import orbax.checkpoint as ocp
from flax import nnx
from jax.experimental import multihost_utils

from treasure_jax.markers import taxonomy as taxonomy_lib
from treasure_jax.model import config as model_config
from treasure_jax.model import hf
from treasure_jax.model import sharding as sharding_lib
from treasure_jax.model import transformer
from treasure_jax.train import base_model
from treasure_jax.train import state as state_lib

SUBDIR = "checkpoints"
CORRUPT_SUBDIR = "checkpoints_corrupt"
_ARRAY_ITEMS = ("params", "opt_state", "train")
_JSON_ITEMS = ("data", "config", "taxonomy", "meta")


@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
  """Save every `every_steps` steps (0: only final and preemption saves); keep the last `keep`."""
  every_steps: int = 100
  keep: int = 3
  async_save: bool = True

  def __post_init__(self):
    if self.every_steps < 0:
      raise ValueError(f"checkpoint.every_steps={self.every_steps} must be >= 0")
    if self.keep < 1:
      raise ValueError(f"checkpoint.keep={self.keep} must be >= 1")


class SaveError(RuntimeError):
  """Writing a checkpoint failed (disk full, file too large, permissions)."""


class CorruptCheckpointError(ValueError):
  """A step directory that cannot be read back (truncated, files missing)."""


class StructureError(ValueError):
  """A checkpoint's parameters do not match the model being restored (not a corrupt file)."""


def _handlers() -> dict[str, ocp.CheckpointHandler]:
  handlers = {name: ocp.StandardCheckpointHandler() for name in _ARRAY_ITEMS}
  handlers.update({name: ocp.JsonCheckpointHandler() for name in _JSON_ITEMS})
  return handlers


def make_manager(workdir: str, cfg: CheckpointConfig) -> ocp.CheckpointManager:
  handlers = _handlers()
  options = ocp.CheckpointManagerOptions(max_to_keep=cfg.keep, save_interval_steps=1,
                                         enable_async_checkpointing=cfg.async_save)
  return ocp.CheckpointManager(os.path.join(os.path.abspath(workdir), SUBDIR), options=options,
                               item_handlers=handlers)


def save(manager: ocp.CheckpointManager, train_state: state_lib.TrainState, *,
         data_state: Any, config: dict[str, Any], taxonomy: dict[str, Any],
         meta: dict[str, Any], force: bool = False) -> bool:
  """Starts saving `train_state` at its step (async unless disabled); every process calls it."""
  step = int(jax.device_get(train_state.step))
  args = ocp.args.Composite(
      params=ocp.args.StandardSave(state_lib.flatten(train_state.params)),
      opt_state=ocp.args.StandardSave(state_lib.flatten(train_state.opt_state)),
      train=ocp.args.StandardSave({"step": train_state.step, "rng": train_state.rng}),
      data=ocp.args.JsonSave(data_state), config=ocp.args.JsonSave(config),
      taxonomy=ocp.args.JsonSave(taxonomy), meta=ocp.args.JsonSave(meta))
  try:
    return manager.save(step, args=args, force=force)
  except Exception as e:  # An earlier async save's failure surfaces here too.
    raise _save_failed(manager, step, e) from e


def wait(manager: ocp.CheckpointManager, *, close: bool = False) -> None:
  """Waits for the save in flight (then closes the manager if `close`); a failure of that save
  (disk full, ...) becomes a SaveError, wherever orbax surfaces it."""
  try:
    manager.wait_until_finished()
  except Exception as e:
    raise _save_failed(manager, None, e) from e
  finally:
    if close:
      try:
        manager.close()
      except Exception as e:  # pylint: disable=broad-except
        logging.warning("closing the checkpoint manager: %s: %s", type(e).__name__, e)


def _save_failed(manager: ocp.CheckpointManager, step: int | None,
                 error: Exception) -> SaveError:
  manager.reload()  # The failed step was never committed: the latest is the last good one.
  latest = manager.latest_step()
  kept = (f"the last complete checkpoint, step {latest}, is intact" if latest is not None
          else "no checkpoint was completed before it")
  what = f"checkpoint step {step}" if step is not None else "a checkpoint"
  return SaveError(f"writing {what} to {manager.directory} failed ({type(error).__name__}: "
                   f"...{str(error)[-160:]}); {kept}: free disk space (or fix the error) and "
                   "rerun the same command to resume from it")


def _restore_args(target: state_lib.TrainState) -> ocp.args.Composite:
  return ocp.args.Composite(
      params=ocp.args.StandardRestore(state_lib.flatten(target.params)),
      opt_state=ocp.args.StandardRestore(state_lib.flatten(target.opt_state)),
      train=ocp.args.StandardRestore({"step": target.step, "rng": target.rng}),
      data=ocp.args.JsonRestore())


def check_structure(manager: ocp.CheckpointManager, step: int, target: Any,
                    item: str = "params") -> None:
  """Raises StructureError naming missing/unexpected/mis-shaped arrays of `item` at `step`."""
  found = manager.item_metadata(step)[item]
  if found is None:
    raise OSError(f"checkpoint step {step}: no readable metadata for item {item!r}")
  found = dict(getattr(found, "tree", found))
  diff = state_lib.describe_diff(target, found)
  if diff != "no differences":
    raise StructureError(f"checkpoint {manager.directory}/{step} {item} do not match the model: "
                         f"{diff}")


def restore(manager: ocp.CheckpointManager, step: int, target: state_lib.TrainState
            ) -> tuple[state_lib.TrainState, Any]:
  """(state, data_state) of `step`; `target` holds ShapeDtypeStructs with shardings."""
  check_structure(manager, step, target.params)
  check_structure(manager, step, target.opt_state, "opt_state")
  restored = manager.restore(step, args=_restore_args(target))
  state = state_lib.TrainState(
      step=restored["train"]["step"], rng=restored["train"]["rng"],
      params=state_lib.unflatten(target.params, restored["params"]),
      opt_state=state_lib.unflatten(target.opt_state, restored["opt_state"]))
  return state, restored["data"]


def restore_latest(manager: ocp.CheckpointManager, target: state_lib.TrainState
                   ) -> tuple[state_lib.TrainState, Any] | None:
  """The newest readable checkpoint, falling back past corrupt ones; None if there is none."""
  for step in sorted(manager.all_steps(), reverse=True):
    try:
      return restore(manager, step, target)
    except StructureError:
      raise
    except Exception as e:  # Orbax/tensorstore raise many types for unreadable files.
      logging.warning("checkpoint step %d in %s is incomplete or corrupt (%s: %s); moving it to "
                      "%s and falling back to the previous one", step, manager.directory,
                      type(e).__name__, str(e)[:300], CORRUPT_SUBDIR)
      _quarantine(manager, step)
  return None


def _quarantine(manager: ocp.CheckpointManager, step: int) -> None:
  """Moves a bad step aside (so a later save of that step can succeed) on process 0."""
  src = os.path.join(str(manager.directory), str(step))
  if jax.process_index() == 0 and os.path.exists(src):
    dst_dir = os.path.join(os.path.dirname(str(manager.directory)), CORRUPT_SUBDIR)
    os.makedirs(dst_dir, exist_ok=True)
    dst = os.path.join(dst_dir, str(step))
    if os.path.exists(dst):
      shutil.rmtree(dst)
    shutil.move(src, dst)
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(f"quarantine checkpoint {step}")
  manager.reload()


class Loaded(NamedTuple):
  """What decoding needs: `info` has "tokenizer" (vocab kind and path), "chat_template", "step"."""
  model_config: model_config.ModelConfig
  model: transformer.Transformer
  taxonomy: taxonomy_lib.Taxonomy
  info: dict[str, Any]


def _checkpoint_dir(path: str) -> tuple[str, int | None] | None:
  """(directory of steps, step or None for the latest) of a workdir, its checkpoints/ or one
  step; None when `path` is none of these."""
  path = os.path.abspath(path)
  if os.path.isdir(os.path.join(path, SUBDIR)):
    return os.path.join(path, SUBDIR), None
  if os.path.basename(path).isdigit() and os.path.isdir(os.path.join(path, "params")):
    return os.path.dirname(path), int(os.path.basename(path))
  steps = [n for n in os.listdir(path) if n.isdigit()] if os.path.isdir(path) else []
  if any(os.path.isdir(os.path.join(path, n, "params")) for n in steps):
    return path, None
  return None


def _hf_dtype(path: str) -> str:
  """The stored dtype of an HF directory (config.json torch_dtype/dtype; float32 otherwise)."""
  with open(os.path.join(path, "config.json"), encoding="utf-8") as f:
    hf_json = json.load(f)
  stored = hf_json.get("torch_dtype") or hf_json.get("dtype")
  return stored if stored in model_config.DTYPES else "float32"


def load_for_inference(path: str, *, mesh: jax.sharding.Mesh | None = None,
                       rules: str = "fsdp", dtype: str | None = None) -> Loaded:
  """A training checkpoint (workdir, its checkpoints/ or one step dir) or an HF model directory.

  Parameters land on `mesh` under `rules`, or on the first device without a mesh. Activations
  and matmuls run in `dtype`, by default the checkpoint's own: the stored parameters' dtype
  (float32 for a training run's parameters and for SmolLM2 from GGUF), not the bfloat16 a run
  may have trained in, so inference matches the reference implementation.
  """
  if dtype is not None and dtype not in model_config.DTYPES:
    raise ValueError(f"dtype={dtype!r} is not one of {', '.join(model_config.DTYPES)}")
  found = _checkpoint_dir(path)
  if found is None:
    if not os.path.isfile(os.path.join(path, "config.json")):
      raise FileNotFoundError(f"{path}: neither a training checkpoint (no checkpoints/ or step "
                              f"directories) nor a Hugging Face directory (no config.json)")
    cfg, model = hf.load_dir(path, mesh=mesh, rules=rules, dtype=dtype or _hf_dtype(path))
    info = {"source": "hf", "step": None, "tokenizer": {"kind": "hf", "path": path},
            "chat_template": "model"}
    return Loaded(cfg, model, taxonomy_lib.default_taxonomy(), info)
  directory, step = found
  options = ocp.CheckpointManagerOptions(read_only=True, create=False)
  manager = ocp.CheckpointManager(directory, options=options, item_handlers=_handlers())
  step = manager.latest_step() if step is None else step
  if step is None:
    raise FileNotFoundError(f"{directory}: no complete checkpoint step")
  try:
    small = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore(),
                                                          taxonomy=ocp.args.JsonRestore()))
    meta = small["meta"]
    cfg = model_config.from_dict(meta["model_config"])
    cfg = dataclasses.replace(cfg, dtype=dtype or cfg.param_dtype)
    model = _restore_params(manager, step, cfg, mesh, rules, meta.get("base"))
  except ValueError:  # StructureError and bad metadata: already named.
    raise
  except Exception as e:  # Orbax/tensorstore raise many types for unreadable files.
    others = sorted(s for s in manager.all_steps() if s != step)
    hint = (f"; earlier steps: {', '.join(f'{directory}/{s}' for s in others[-3:])}" if others
            else "; it has no other step")
    raise CorruptCheckpointError(
        f"checkpoint {directory}/{step} is incomplete or corrupt ({type(e).__name__}: "
        f"{str(e)[:200]}){hint}") from e
  info = {"source": "checkpoint", "step": step, **{k: v for k, v in meta.items()
                                                   if k != "model_config"}}
  return Loaded(cfg, model, taxonomy_lib.from_dict(small["taxonomy"]), info)


def _restore_params(manager: ocp.CheckpointManager, step: int, cfg: model_config.ModelConfig,
                    mesh: jax.sharding.Mesh | None, rules: str,
                    base: dict[str, Any] | None = None) -> transformer.Transformer:
  """The model of `step`; a LoRA step's adapters join the base its meta "base" points to."""
  plan = None if mesh is None else sharding_lib.Plan.create(mesh, rules)
  graphdef, abstract_params = state_lib.split_model(transformer.abstract_model(cfg, plan))
  if plan is None:
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])  # Addressable on any host.
    shardings = jax.tree.map(lambda _: device, abstract_params)
  else:
    shardings = sharding_lib.state_shardings(abstract_params, plan.mesh, plan.rules)
  target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                        abstract_params, shardings)
  target, frozen = state_lib.split_trainable(target)
  check_structure(manager, step, target)
  restored = manager.restore(step, args=ocp.args.Composite(
      params=ocp.args.StandardRestore(state_lib.flatten(target))))
  params = state_lib.unflatten(target, restored["params"])
  if frozen is not None:
    if base is None:
      raise ValueError(f"{manager.directory}/{step}: a LoRA checkpoint without meta 'base'")
    params = nnx.merge_state(params, base_model.load_pointed(
        base, cfg, f"{manager.directory}/{step}", mesh, plan.rules if plan else rules))
  return nnx.merge(graphdef, params)


def read_json_item(step_dir: str, item: str) -> Any:
  """A JSON item of one step directory, read without orbax (for reports and tests)."""
  with open(os.path.join(step_dir, item, "metadata"), encoding="utf-8") as f:
    return json.load(f)
