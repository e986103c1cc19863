"""What a run builds once before its loop: data, model and optimizer, the state (restored or new).

`make_data` opens the tokenizer, the resumable train iterator and the long-tail frequency table
of the training split; `make_model` the sharded abstract model, optimizer and state shardings;
`restore_or_init` the latest good checkpoint or a fresh state from random or imported weights
(a Hugging Face directory or a GGUF file, whose architecture must equal the config's `model`;
`base_model`). A LoRA run's checkpoint holds only adapters: its base is reloaded on restore.
Per-host numpy batches become global arrays here. Deliberately left to others: the loop, the
step math, the checkpoint format, the data pipeline itself.
"""
from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import os
from typing import Any, Iterator

import jax
import ml_collections
import numpy as np
import optax
import seqio
import tensorflow as tf
from flax import nnx
from jax.experimental import multihost_utils

from treasure_jax import config_loader
from treasure_jax.data import features
from treasure_jax.data import iterator as data_iterator
from treasure_jax.data import mixtures
from treasure_jax.data import tasks
from treasure_jax.data import vocab as vocab_lib
from treasure_jax.markers import stats
from treasure_jax.markers import taxonomy as taxonomy_lib
from treasure_jax.model import config as model_config
from treasure_jax.model import sharding
from treasure_jax.model import transformer
from treasure_jax.train import base_model
from treasure_jax.train import checkpoint
from treasure_jax.train import optim
from treasure_jax.train import state as state_lib
from treasure_jax.train import validation

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


@dataclasses.dataclass
class Data:
  """The run's data side: tokenizer, train iterator, taxonomy, long-tail table, eval codebook."""
  vocab: Any
  tokenizer: dict[str, str]
  provider: str
  train: data_iterator.BatchIterator
  taxonomy: taxonomy_lib.Taxonomy
  table: stats.FrequencyTable
  codebook: validation.Codebook


def tokenizer_spec(run: config_loader.RunConfig) -> dict[str, str]:
  path = run.tokenizer or run.init_from
  kind = "gguf" if path.endswith(".gguf") else "sentencepiece" if path.endswith(".model") else "hf"
  return {"kind": kind, "path": os.path.abspath(path)}


def make_data(run: config_loader.RunConfig) -> Data:
  spec = tokenizer_spec(run)
  vocab = vocab_lib.make(spec["kind"], spec["path"])
  if vocab.vocab_size > run.model.vocab_size:
    raise ValueError(f"config key model.vocab_size={run.model.vocab_size} is smaller than the "
                     f"tokenizer's {vocab.vocab_size} ids ({spec['path']})")
  if run.eval_every_steps and not run.data.task and not run.data.eval_files:
    raise ValueError("config key eval_every_steps > 0 needs data.eval_files (or data.task)")
  provider = tasks.register_from_config(run.data, vocab)[run.data.variant]
  # "replicated": every host reads the whole stream (shard 0 of 1) and keeps its own rows.
  shard = seqio.ShardInfo(0, 1) if run.data_loading == "replicated" else None
  train = data_iterator.make_train_iterator(run.data, vocab=vocab, shard_info=shard,
                                            global_batch_size=run.batch_size)
  leaves = mixtures.task_rates(provider, run.data.train_split)
  tax = _taxonomy(run, leaves[0][0])
  table = stats.frequency_table(_train_records(run, leaves), tax,
                                threshold=run.data.long_tail_threshold)
  return Data(vocab, spec, provider, train, tax, table, validation.Codebook(tax))


def _train_records(run: config_loader.RunConfig, leaves: list[Any]) -> Iterator[dict[str, Any]]:
  """The training records, for the long-tail table: read as plain JSONL when the config names
  files (much faster than a tf.data pass), else from each task's source."""
  if run.data.task:
    yield from itertools.chain.from_iterable(
        mixtures.source_records(task, run.data.train_split) for task, _ in leaves)
    return
  for pattern in run.data.train_files:
    for path in sorted(tf.io.gfile.glob(pattern)):
      with tf.io.gfile.GFile(path) as f:
        for line in f:
          try:
            record = json.loads(line)
          except ValueError:
            continue  # The data pipeline reports bad lines by file and line.
          if isinstance(record, dict):
            yield record


def _taxonomy(run: config_loader.RunConfig, task: Any) -> taxonomy_lib.Taxonomy:
  try:
    return tasks.options(task).taxonomy
  except ValueError:  # A task registered elsewhere: the config's taxonomy.
    return (taxonomy_lib.load(run.data.taxonomy) if run.data.taxonomy
            else taxonomy_lib.default_taxonomy())


def write_outputs(config: ml_collections.ConfigDict, run: config_loader.RunConfig, data: Data,
                  workdir: str) -> None:
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
                    data: Data) -> state_lib.TrainState:
  """The latest readable checkpoint (and its data position), else a new state."""
  restored = checkpoint.restore_latest(manager, model.target)
  if restored is not None:
    train_state, data_state = restored
    if model.shardings.frozen is not None:  # LoRA: the checkpoint holds adapters, not the base.
      base = base_model.load_params(dataclasses.replace(run.model, lora=None), run.init_from,
                                    run.seed, model.plan.mesh, model.plan.rules)
      train_state = train_state.replace(frozen=base)
    data.train.set_state(_own_data_state(data_state))
    logging.info("restored step %d from %s", int(train_state.step), manager.directory)
    return train_state
  return state_lib.create(initial_params(run, model), model.optimizer, run.seed,
                          model.shardings)


def initial_params(run: config_loader.RunConfig, model: Model) -> nnx.State:
  """Random parameters (seed `run.seed`) or the base model's, placed in their shardings (with
  fresh adapters for a LoRA run: `base_model.load_params`)."""
  return base_model.load_params(run.model, run.init_from, run.seed, model.plan.mesh,
                                model.plan.rules)


check_architecture = base_model.check_architecture


def _global(local: dict[str, np.ndarray], mesh: jax.sharding.Mesh) -> dict[str, jax.Array]:
  """Global arrays from this host's rows (`make_array_from_process_local_data`)."""
  batch_sharding = sharding.batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(batch_sharding, v) for k, v in local.items()}


def _from_full(full: dict[str, np.ndarray], mesh: jax.sharding.Mesh) -> dict[str, jax.Array]:
  """Global arrays from the whole batch held by every host (each device takes its slice)."""
  batch_sharding = sharding.batch_sharding(mesh)
  return {k: jax.make_array_from_callback(v.shape, batch_sharding, lambda idx, v=v: v[idx])
          for k, v in full.items()}


def next_batch(data: Data, model: Model, mode: str) -> tuple[dict[str, jax.Array], Any]:
  """(the next global batch, the iterator position after it)."""
  batch = next(data.train)
  arrays = {k: batch[k] for k in features.BATCH_KEYS}
  if mode == "replicated":
    return _from_full(arrays, model.plan.mesh), data.train.get_state()
  return _global(arrays, model.plan.mesh), data.train.get_state()


def eval_batches(run: config_loader.RunConfig, data: Data, model: Model
                 ) -> Iterator[dict[str, jax.Array]]:
  """One pass over the validation split, as global arrays with per-row marker codes."""
  replicated = run.data_loading == "replicated"
  it = data_iterator.make_eval_iterator(
      run.data, vocab=data.vocab, global_batch_size=run.eval_batch_size or run.batch_size,
      shard_info=seqio.ShardInfo(0, 1) if replicated else None)
  try:
    for batch in it:
      arrays = {k: batch[k] for k in features.BATCH_KEYS}
      arrays[validation.CODES_KEY] = data.codebook.encode(batch)
      yield (_from_full if replicated else _global)(arrays, model.plan.mesh)
  finally:
    it.close()


def meta(run: config_loader.RunConfig, data: Data) -> dict[str, Any]:
  """What decoding needs from a checkpoint (see `checkpoint.load_for_inference`)."""
  out = {"model_config": run.model.to_dict(), "tokenizer": data.tokenizer,
         "chat_template": run.data.template, "variant": run.data.variant,
         "init_from": run.init_from, "data": dataclasses.asdict(run.data)}
  if run.model.lora is not None:  # The checkpoint's adapters need their base back.
    out["base"] = base_model.pointer(run.init_from, run.seed)
  return out


def save(train_state: state_lib.TrainState, data_state: Any, *, manager: Any,
         config: ml_collections.ConfigDict, run: config_loader.RunConfig, data: Data,
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
