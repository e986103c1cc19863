"""Host-local iterators of numpy batches: infinite and exactly resumable for training, finite and
host-aligned for validation.

Each host reads its own shard (`seqio.ShardInfo(jax.process_index(), jax.process_count())`).
Examples come from `streams` (a task epoch by epoch in a seeded order, tasks mixed by rate), so
the iterator position is small and exact:

  {"tasks": {name: {"epoch", "position"}}, "draws": k, ...}

`position` is the index of the first record not yet inside a returned batch; restoring re-opens
the epoch at that record and `features.RowPacker` rebuilds the same batches. `get_state()` after
a batch, saved with the train checkpoint, makes `set_state()` + `next()` return the very batch
an uninterrupted run would have.

Turning per-host batches into global jax.Arrays is `train`'s job (via
`jax.make_array_from_process_local_data`); preprocessing is `preprocessors`'.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import seqio
import tensorflow as tf

from treasure_jax.data import config as config_lib
from treasure_jax.data import features
from treasure_jax.data import mixtures
from treasure_jax.data import streams as streams_lib
from treasure_jax.data import tasks as tasks_lib

STATE_VERSION = 1


def default_shard_info() -> seqio.ShardInfo:
  import jax  # pylint: disable=g-import-not-at-top  (only the iterator needs it)
  return seqio.ShardInfo(index=jax.process_index(), num_shards=jax.process_count())


class BatchIterator:
  """numpy batches {key: [B_local, T]} (`features.BATCH_KEYS`) with get_state/set_state."""

  def __init__(self, stream: streams_lib.MixtureStream, packer: features.RowPacker,
               fingerprint: Mapping[str, Any], num_batches: int | None = None):
    self._stream, self._packer, self._fingerprint = stream, packer, dict(fingerprint)
    self._num_batches, self.batches = num_batches, 0

  def __iter__(self) -> BatchIterator:
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    if self._num_batches is not None and self.batches >= self._num_batches:
      raise StopIteration
    while True:
      example = self._stream.peek()
      if example is None or not self._packer.try_add(example):
        break
      self._stream.advance()
    self.batches += 1
    if self._packer.num_examples:
      return self._packer.build()
    if self._num_batches is not None:  # Validation: hosts must agree on the batch count.
      return self._packer.empty()
    raise StopIteration

  def get_state(self) -> dict[str, Any]:
    """JSON-able position after the last returned batch (save it with the checkpoint)."""
    return {"version": STATE_VERSION, "fingerprint": self._fingerprint,
            "batches": self.batches, "stream": self._stream.state(), "counts": self.stats()}

  def set_state(self, state: Mapping[str, Any]) -> None:
    if state.get("version") != STATE_VERSION:
      raise ValueError(f"iterator state version {state.get('version')} != {STATE_VERSION}")
    saved = state["fingerprint"]
    for key in sorted(set(self._fingerprint) | set(saved)):  # A key only one side has differs.
      if saved.get(key) != self._fingerprint.get(key):
        raise ValueError(f"iterator state was saved with {key}={saved.get(key)!r}, this "
                         f"iterator has {self._fingerprint.get(key)!r}; it cannot resume exactly")
    self._stream.restore(state["stream"])
    self.batches = int(state["batches"])
    for stream in self._stream.streams:
      if stream.counters is not None and stream.task.name in state.get("counts", {}):
        stream.counters.restore(state["counts"][stream.task.name])

  def stats(self) -> dict[str, dict[str, int]]:
    """Per task: records read, skipped (by reason), truncated, in this process and split."""
    return {s.task.name: s.counters.snapshot() for s in self._stream.streams if s.counters}

  def close(self) -> None:
    """Stops reading (also done at interpreter exit); the next batch re-opens the stream."""
    self._stream.close()

  def __enter__(self) -> BatchIterator:
    return self

  def __exit__(self, *exc: Any) -> None:
    self.close()


def _per_host(count: int, shard_info: seqio.ShardInfo, what: str = "global_batch_size ") -> int:
  """This host's share of a global count (`what` names it in the error)."""
  if count % shard_info.num_shards:
    raise ValueError(f"{what}{count} is not divisible by the {shard_info.num_shards} hosts")
  return count // shard_info.num_shards


# Fingerprint keys added after states were first saved, with the value that leaves them out:
# at that value a state saved before the key existed still resumes.
_ADDED_LATER = {"paired_order": False, "examples_per_batch": 0}


def make_train_iterator(cfg: config_lib.DataConfig, *, vocab: seqio.Vocabulary,
                        global_batch_size: int, seq_len: int | None = None,
                        shard_info: seqio.ShardInfo | None = None,
                        seed: int | None = None) -> BatchIterator:
  """The infinite, resumable training iterator of this host: [global_batch_size / hosts, T]
  batches with keys `features.BATCH_KEYS` (T = seq_len or cfg.seq_len; seed or cfg.seed)."""
  shard_info = shard_info or default_shard_info()
  seq_len, seed = seq_len or cfg.seq_len, cfg.seed if seed is None else seed
  name = _train_provider(cfg, vocab)
  pairs = mixtures.task_rates(name, cfg.train_split)
  streams = [streams_lib.TaskStream(
      task, split=cfg.train_split, shard_info=shard_info, seed=seed, max_tokens=seq_len + 1,
      shuffle=True, shuffle_buffer=cfg.shuffle_buffer, repeat=True,
      order_key=tasks_lib.twin_key(task) if cfg.paired_order else "") for task, _ in pairs]
  packer = features.RowPacker(
      _per_host(global_batch_size, shard_info), seq_len, pack=cfg.pack,
      max_examples=_per_host(cfg.examples_per_batch, shard_info, "data.examples_per_batch="))
  fingerprint = {"provider": name, "seq_len": seq_len, "global_batch_size": global_batch_size,
                 "shard": [shard_info.index, shard_info.num_shards], "seed": seed,
                 "pack": cfg.pack, "split": cfg.train_split,
                 "shuffle_buffer": cfg.shuffle_buffer,
                 # tf.data shuffles mix in TF's global seed (tf.random.set_seed): same order
                 # only with the same global seed.
                 "tf_global_seed": int(tf.compat.v1.get_seed(0)[0])}
  fingerprint.update({k: getattr(cfg, k) for k, off in _ADDED_LATER.items()
                      if getattr(cfg, k) != off})
  mixture = streams_lib.MixtureStream(streams, [r for _, r in pairs], seed)
  return BatchIterator(mixture, packer, fingerprint)


def _train_provider(cfg: config_lib.DataConfig, vocab: seqio.Vocabulary) -> str:
  names = tasks_lib.register_from_config(cfg, vocab)
  name = names[cfg.variant]
  if cfg.long_tail_boost > 1:
    task = seqio.TaskRegistry.get(name)
    return mixtures.register_long_tail(
        name, boost=cfg.long_tail_boost, taxonomy=tasks_lib.options(task).taxonomy,
        split=cfg.train_split, threshold=cfg.long_tail_threshold)
  return name


def make_eval_iterator(cfg: config_lib.DataConfig, *, vocab: seqio.Vocabulary,
                       global_batch_size: int, seq_len: int | None = None,
                       shard_info: seqio.ShardInfo | None = None,
                       task: str | None = None) -> BatchIterator:
  """One pass over the validation split of `task` (default: cfg's task for cfg.variant), one
  example per row, with `example_ids` and `markers/<category>` ([B_local] str) per row.

  Every host returns the same number of batches (ceil(examples / hosts / B_local)); rows and
  batches past the end of a host's shard are padding with zero weights.
  """
  shard_info = shard_info or default_shard_info()
  seq_len = seq_len or cfg.seq_len
  name = task or tasks_lib.register_from_config(cfg, vocab)[cfg.variant]
  provider = seqio.TaskRegistry.get(name)
  local = _per_host(global_batch_size, shard_info)
  stream = streams_lib.TaskStream(
      provider, split=cfg.eval_split, shard_info=shard_info, seed=cfg.seed,
      max_tokens=seq_len + 1, shuffle=False, shuffle_buffer=1, repeat=False,
      shard_by_example=True)  # So that hosts differ by one example at most.
  total = provider.source.num_input_examples(cfg.eval_split)
  num_batches = None
  if total is not None:
    num_batches = max(1, math.ceil(math.ceil(total / shard_info.num_shards) / local))
  packer = features.RowPacker(local, seq_len, pack=False,
                              marker_categories=tasks_lib.options(provider).taxonomy.names)
  fingerprint = {"provider": name, "seq_len": seq_len, "split": cfg.eval_split,
                 "global_batch_size": global_batch_size,
                 "shard": [shard_info.index, shard_info.num_shards]}
  return BatchIterator(streams_lib.MixtureStream([stream], [1.0], cfg.seed), packer, fingerprint,
                       num_batches=num_batches)
