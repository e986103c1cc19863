"""The data side of a run: tokenizer, train iterator, taxonomy, long-tail table, eval batches.

`data.pipeline` picks the input pipeline: "seqio" (tf.data over seqio tasks and mixtures,
`data.iterator`) or "grain" (`data.grain_pipeline`: JSONL, Parquet or ArrayRecord files, no
TensorFlow). Both give this host's [B_local, T] numpy batches with `features.BATCH_KEYS` and a
JSON iterator state that the checkpoint keeps. The seqio modules (which import TensorFlow) are
imported only on the seqio path, so a Grain run never loads TensorFlow or seqio. Per-host
batches become global arrays here (`next_batch`, `eval_batches`).
"""
from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from typing import Any

import jax
import numpy as np

from treasure_jax import config_loader
from treasure_jax.data import features
from treasure_jax.data import grain_pipeline
from treasure_jax.data import token_offsets
from treasure_jax.markers import stats
from treasure_jax.markers import taxonomy as taxonomy_lib
from treasure_jax.model import sharding
from treasure_jax.train import validation


@dataclasses.dataclass
class Data:
  """The run's data side: tokenizer, train iterator, taxonomy, long-tail table, eval codebook."""
  vocab: Any
  tokenizer: dict[str, str]
  provider: str
  train: Any  # data.iterator.BatchIterator or data.grain_pipeline.GrainBatchIterator.
  taxonomy: taxonomy_lib.Taxonomy
  table: stats.FrequencyTable
  codebook: validation.Codebook
  options: Any = None  # The Grain path's preprocessors.ChatOptions (None on the seqio path).


def tokenizer_spec(run: config_loader.RunConfig) -> dict[str, str]:
  path = run.tokenizer or run.init_from
  kind = "gguf" if path.endswith(".gguf") else "sentencepiece" if path.endswith(".model") else "hf"
  return {"kind": kind, "path": os.path.abspath(path)}


def _shard(run: config_loader.RunConfig) -> tuple[int, int]:
  """(index, count) of this host's share of the data; "replicated": every host reads it all."""
  if run.data_loading == "replicated":
    return 0, 1
  return jax.process_index(), jax.process_count()


def make_data(run: config_loader.RunConfig) -> Data:
  if run.eval_every_steps and not run.data.task and not run.data.eval_files:
    raise ValueError("config key eval_every_steps > 0 needs data.eval_files (or data.task)")
  spec = tokenizer_spec(run)
  return (_grain_data if run.data.pipeline == "grain" else _seqio_data)(run, spec)


def _check_vocab(run: config_loader.RunConfig, vocab: Any, spec: dict[str, str]) -> None:
  if vocab.vocab_size > run.model.vocab_size:
    raise ValueError(f"config key model.vocab_size={run.model.vocab_size} is smaller than the "
                     f"tokenizer's {vocab.vocab_size} ids ({spec['path']})")


def _grain_data(run: config_loader.RunConfig, spec: dict[str, str]) -> Data:
  if spec["kind"] == "sentencepiece":
    raise ValueError(f"data.pipeline='grain' tokenizes with Hugging Face tokenizers (GGUF or "
                     f"tokenizer.json); {spec['path']} is SentencePiece: use "
                     "data.pipeline='seqio'")
  vocab = (token_offsets.from_gguf(spec["path"]) if spec["kind"] == "gguf"
           else token_offsets.from_hf(spec["path"]))
  _check_vocab(run, vocab, spec)
  options = grain_pipeline.chat_options(run.data, vocab)
  train = grain_pipeline.make_train_iterator(run.data, options=options, vocabulary=vocab,
                                             global_batch_size=run.batch_size,
                                             shard=_shard(run))
  table = stats.frequency_table(grain_pipeline.read_records(run.data.train_files),
                                options.taxonomy, threshold=run.data.long_tail_threshold)
  return Data(vocab, spec, run.data.name, train, options.taxonomy, table,
              validation.Codebook(options.taxonomy), options)


def _seqio_data(run: config_loader.RunConfig, spec: dict[str, str]) -> Data:
  # pylint: disable=g-import-not-at-top  (TensorFlow and seqio: only on this path)
  import seqio
  from treasure_jax.data import iterator as data_iterator
  from treasure_jax.data import mixtures
  from treasure_jax.data import tasks
  from treasure_jax.data import vocab as vocab_lib
  vocab = vocab_lib.make(spec["kind"], spec["path"])
  _check_vocab(run, vocab, spec)
  provider = tasks.register_from_config(run.data, vocab)[run.data.variant]
  train = data_iterator.make_train_iterator(run.data, vocab=vocab,
                                            shard_info=seqio.ShardInfo(*_shard(run)),
                                            global_batch_size=run.batch_size)
  leaves = mixtures.task_rates(provider, run.data.train_split)
  try:
    tax = tasks.options(leaves[0][0]).taxonomy
  except ValueError:  # A task registered elsewhere: the config's taxonomy.
    tax = (taxonomy_lib.load(run.data.taxonomy) if run.data.taxonomy
           else taxonomy_lib.default_taxonomy())
  if run.data.task:
    records = (r for task, _ in leaves for r in mixtures.source_records(task,
                                                                         run.data.train_split))
  else:  # Plain JSONL: much faster than a tf.data pass.
    records = grain_pipeline.read_records(run.data.train_files)
  table = stats.frequency_table(records, tax, threshold=run.data.long_tail_threshold)
  return Data(vocab, spec, provider, train, tax, table, validation.Codebook(tax))


def _global(local: dict[str, np.ndarray], mesh: jax.sharding.Mesh) -> dict[str, jax.Array]:
  """Global arrays from this host's rows (`make_array_from_process_local_data`)."""
  batch_sharding = sharding.batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(batch_sharding, v) for k, v in local.items()}


def _from_full(full: dict[str, np.ndarray], mesh: jax.sharding.Mesh) -> dict[str, jax.Array]:
  """Global arrays from the whole batch held by every host (each device takes its slice)."""
  batch_sharding = sharding.batch_sharding(mesh)
  return {k: jax.make_array_from_callback(v.shape, batch_sharding, lambda idx, v=v: v[idx])
          for k, v in full.items()}


def next_batch(data: Data, mesh: jax.sharding.Mesh, mode: str
               ) -> tuple[dict[str, jax.Array], Any]:
  """(the next global batch, the iterator position after it)."""
  batch = next(data.train)
  arrays = {k: batch[k] for k in features.BATCH_KEYS}
  to_global = _from_full if mode == "replicated" else _global
  return to_global(arrays, mesh), data.train.get_state()


def eval_batches(run: config_loader.RunConfig, data: Data, mesh: jax.sharding.Mesh
                 ) -> Iterator[dict[str, jax.Array]]:
  """One pass over the validation split, as global arrays with per-row marker codes."""
  size = run.eval_batch_size or run.batch_size
  if run.data.pipeline == "grain":
    it = grain_pipeline.make_eval_iterator(run.data, options=data.options, vocabulary=data.vocab,
                                           global_batch_size=size, shard=_shard(run))
  else:
    # pylint: disable=g-import-not-at-top
    import seqio
    from treasure_jax.data import iterator as data_iterator
    it = data_iterator.make_eval_iterator(run.data, vocab=data.vocab, global_batch_size=size,
                                          shard_info=seqio.ShardInfo(*_shard(run)))
  to_global = _from_full if run.data_loading == "replicated" else _global
  try:
    for batch in it:
      arrays = {k: batch[k] for k in features.BATCH_KEYS}
      arrays[validation.CODES_KEY] = data.codebook.encode(batch)
      yield to_global(arrays, mesh)
  finally:
    it.close()
