"""What a run builds once before its loop: the model and optimizer, the state (restored or new).

`make_model` builds the sharded abstract model, optimizer and state shardings; `restore_or_init`
the latest good checkpoint (with the data position it saved) or a fresh state from random or
imported weights (a Hugging Face directory or a GGUF file, whose architecture must equal the
config's `model`; `base_model`). A LoRA run's checkpoint holds only adapters: its base is
reloaded on restore. `save` gathers every host's data position into the checkpoint. The data
side (tokenizer, iterators, long-tail table) is `inputs`'; the loop, the step math and the
checkpoint format are others'.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
from typing import Any

import jax
import ml_collections
import numpy as np
import optax
from flax import nnx
from jax.experimental import multihost_utils

from treasure_jax import config_loader
from treasure_jax.model import config as model_config
from treasure_jax.model import sharding
from treasure_jax.model import transformer
from treasure_jax.train import base_model
from treasure_jax.train import checkpoint
from treasure_jax.train import inputs
from treasure_jax.train import optim
from treasure_jax.train import state as state_lib

# ModelConfig fields a config may set for an imported model; the rest come from its checkpoint.
EXECUTION_FIELDS = model_config.EXECUTION_FIELDS


def check_mesh(run: config_loader.RunConfig, mesh: jax.sharding.Mesh) -> None:
  """Batch sizes must split evenly over the batch axes ("data" x "fsdp") and the processes."""
  ways = mesh.shape["data"] * mesh.shape["fsdp"]
  micro = run.batch_size // run.grad_accum_steps
  if micro % ways:
    raise ValueError(f"config key batch_size={run.batch_size} (/ grad_accum_steps="
                     f"{run.grad_accum_steps} = {micro} per micro-batch) is not divisible by the "
                     f"mesh's data x fsdp = {ways} devices (mesh.shape={run.mesh.shape})")
  eval_size = run.eval_batch_size or run.batch_size
  for key, size in (("batch_size", run.batch_size), ("eval_batch_size", eval_size)):
    if size % ways or size % jax.process_count():
      raise ValueError(f"config key {key}={size} is not divisible by the {ways} data x fsdp "
                       f"devices and the {jax.process_count()} processes")


def write_outputs(config: ml_collections.ConfigDict, run: config_loader.RunConfig,
                  data: inputs.Data, workdir: str) -> None:
  """By process 0: config.json (the config after overrides: `--config` reruns it),
  config_resolved.json (every section with its defaults, the model preset expanded) and
  taxonomy.json."""
  if jax.process_index() != 0:
    return
  config_loader.write_json(config, os.path.join(workdir, "config.json"))
  config_loader.write_json(dataclasses.asdict(run), os.path.join(workdir, "config_resolved.json"))
  with open(os.path.join(workdir, "taxonomy.json"), "w", encoding="utf-8") as f:
    f.write(data.taxonomy.to_json() + "\n")


@dataclasses.dataclass(frozen=True)
class Model:
  """The static side of the model: config, sharding plan, graph, optimizer, state layout."""
  cfg: model_config.ModelConfig
  plan: sharding.Plan
  graphdef: nnx.GraphDef
  optimizer: optax.GradientTransformation
  shardings: state_lib.TrainState
  target: state_lib.TrainState  # ShapeDtypeStructs with shardings (restore target).


def make_model(run: config_loader.RunConfig, mesh: jax.sharding.Mesh) -> Model:
  plan = sharding.Plan.create(mesh, run.mesh.rules)
  graphdef, abstract_params = state_lib.split_model(transformer.abstract_model(run.model, plan))
  optimizer = optim.make(run.optim, run.num_train_steps)
  abstract = state_lib.abstract(abstract_params, optimizer)
  shardings = state_lib.shardings(abstract, mesh, plan.rules)
  target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                        abstract, shardings)
  return Model(run.model, plan, graphdef, optimizer, shardings, target)


def restore_or_init(run: config_loader.RunConfig, model: Model, manager: Any,
                    data: inputs.Data) -> state_lib.TrainState:
  """The latest readable checkpoint (and its data position), else a new state."""
  restored = checkpoint.restore_latest(manager, model.target)
  if restored is not None:
    train_state, data_state = restored
    if model.shardings.frozen is not None:  # LoRA: the checkpoint holds adapters, not the base.
      base = base_model.load_base(run.model, run.init_from, run.seed, model.plan.mesh,
                                  model.plan.rules)
      train_state = train_state.replace(frozen=base)
    data.train.set_state(_own_data_state(data_state))
    # A warning, so it shows at the default level: reusing a workdir by mistake resumes it.
    logging.warning("resuming: restored step %d from %s (a new --workdir starts over)",
                    int(train_state.step), manager.directory)
    return train_state
  return state_lib.create(initial_params(run, model), model.optimizer, run.seed,
                          model.shardings)


def initial_params(run: config_loader.RunConfig, model: Model) -> nnx.State:
  """Random parameters (seed `run.seed`) or the base model's, placed in their shardings (with
  fresh adapters for a LoRA run: `base_model.load_params`)."""
  return base_model.load_params(run.model, run.init_from, run.seed, model.plan.mesh,
                                model.plan.rules)


check_architecture = base_model.check_architecture


def meta(run: config_loader.RunConfig, data: inputs.Data) -> dict[str, Any]:
  """What decoding needs from a checkpoint (see `checkpoint.load_for_inference`)."""
  out = {"model_config": run.model.to_dict(), "tokenizer": data.tokenizer,
         "chat_template": run.data.template, "variant": run.data.variant,
         "init_from": run.init_from, "data": dataclasses.asdict(run.data)}
  if run.model.lora is not None:  # The checkpoint's adapters need their base back.
    out["base"] = base_model.pointer(run.init_from, run.seed)
  return out


def save(train_state: state_lib.TrainState, data_state: Any, *, manager: Any,
         config: ml_collections.ConfigDict, run: config_loader.RunConfig, data: inputs.Data,
         force: bool = False) -> None:
  """Every process calls this: data positions are gathered (each host reads its own shard)."""
  checkpoint.save(manager, train_state, data_state={"processes": _gather_json(data_state)},
                  config=config.to_dict(), taxonomy=data.taxonomy.to_dict(),
                  meta=meta(run, data), force=force)


def _gather_json(obj: Any) -> list[Any]:
  """`obj` of every process, in process order (JSON round trip)."""
  if jax.process_count() == 1:
    return [obj]
  raw = np.frombuffer(json.dumps(obj).encode("utf-8"), np.uint8)
  sizes = multihost_utils.process_allgather(np.array([raw.size], np.int32))
  padded = np.zeros(int(np.max(sizes)), np.uint8)
  padded[:raw.size] = raw
  everything = multihost_utils.process_allgather(padded)
  return [json.loads(bytes(everything[i, :int(sizes[i][0])]).decode("utf-8"))
          for i in range(jax.process_count())]


def _own_data_state(saved: Any) -> Any:
  processes = saved["processes"]
  if all(p == processes[0] for p in processes) and processes[0]["fingerprint"].get(
      "shard") == [0, 1]:
    return processes[0]  # Replicated loading: one stream, whatever the number of processes.
  if len(processes) != jax.process_count():
    raise ValueError(f"the checkpoint's data position was saved by {len(processes)} processes; "
                     f"this run has {jax.process_count()}, so each would read another shard")
  return processes[jax.process_index()]
