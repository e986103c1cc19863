"""Host-local iterators of numpy batches: infinite and exactly resumable for training, finite and
host-aligned for validation.

Each host reads its own shard (`seqio.ShardInfo(jax.process_index(), jax.process_count())`).
A task's examples come epoch by epoch: epoch e reads the shard in an order shuffled by
hash(seed, task, e) (with `data.paired_order`, the name a task and its baseline twin share),
numbers the records (`index`), and preprocesses them with the epoch known, so every epoch
re-draws the prompt-side dropout. A mixture draws its k-th example from task hash(seed, k) by
rate. The iterator position is therefore small and exact:

  {"tasks": {name: {"epoch", "position"}}, "draws": k, ...}

`position` is the index of the first record not yet inside a returned batch; restoring re-opens
the epoch at that record (`skip` before preprocessing: reading lines, not tokenizing them), and
`features.RowPacker` rebuilds the same batches. `get_state()` after a batch, saved with the
train checkpoint, makes `set_state()` + `next()` return the very batch an uninterrupted run
would have.

Turning per-host batches into global jax.Arrays is `train`'s job (via
`jax.make_array_from_process_local_data`); preprocessing is `preprocessors`'.
"""
from __future__ import annotations

import atexit
import collections
import hashlib
import math
import struct
import weakref
from collections.abc import Iterator, Mapping
from typing import Any

from absl import logging
import numpy as np
import seqio
import tensorflow as tf

from treasure_jax.data import config as config_lib
from treasure_jax.data import features
from treasure_jax.data import mixtures
from treasure_jax.data import tasks as tasks_lib

STATE_VERSION = 1
# Open streams, closed at interpreter exit: a tf.data iterator still running Python functions
# (numpy_function) during interpreter shutdown can deadlock the process on exit.
_OPEN_STREAMS: weakref.WeakSet = weakref.WeakSet()


@atexit.register
def _close_open_streams() -> None:
  for stream in list(_OPEN_STREAMS):
    stream.close()


def _hash_uniform(*parts: Any) -> float:
  key = "\x1f".join(str(p) for p in parts).encode("utf-8")
  (word,) = struct.unpack("<Q", hashlib.blake2b(key, digest_size=8).digest())
  return (word >> 11) / float(1 << 53)


def _epoch_seed(seed: int, task: str, epoch: int) -> int:
  return int(_hash_uniform(seed, task, epoch, "shuffle") * (1 << 31))


def default_shard_info() -> seqio.ShardInfo:
  import jax  # pylint: disable=g-import-not-at-top  (only the iterator needs it)
  return seqio.ShardInfo(index=jax.process_index(), num_shards=jax.process_count())


class TaskStream:
  """The examples of one task split on one host, epoch after epoch, with peek/advance."""

  def __init__(self, task: seqio.Task, *, split: str, shard_info: seqio.ShardInfo | None,
               seed: int, max_tokens: int, shuffle: bool, shuffle_buffer: int,
               repeat: bool, shard_by_example: bool = False, order_key: str = ""):
    """`order_key` names the shuffle order ("" = the task's name; twins that share one read
    their records in the same order)."""
    self.task, self.split, self.shard_info, self.seed = task, split, shard_info, seed
    self.order_key = order_key or task.name
    self.max_tokens, self.shuffle, self.shuffle_buffer = max_tokens, shuffle, shuffle_buffer
    self.repeat, self.shard_by_example = repeat, shard_by_example
    self.epoch, self.position = 0, 0
    self._iter: Iterator[dict[str, Any]] | None = None
    self._peeked: dict[str, Any] | None = None
    self._buffer: collections.deque[dict[str, Any]] = collections.deque()
    self._yielded_this_epoch = self._exhausted = False
    counts = tasks_lib.counters(task.name, missing_ok=True)
    self.counters = counts.scoped(split) if counts is not None else None
    _OPEN_STREAMS.add(self)

  def _dataset(self) -> tf.data.Dataset:
    source, shard = self.task.source, self.shard_info
    if shard is not None and shard.num_shards == 1:
      shard = None
    seed = _epoch_seed(self.seed, self.order_key, self.epoch)
    by_source = shard is not None and not self.shard_by_example and (
        source.supports_arbitrary_sharding
        or len(source.list_shards(self.split)) >= shard.num_shards)
    # File order is shuffled by file sources; in-memory ones have no files to shuffle.
    shuffle_files = self.shuffle and not isinstance(source, seqio.FunctionDataSource)
    ds = source.get_dataset(split=self.split, shuffle=shuffle_files, seed=seed,
                            shard_info=shard if by_source else None)
    if shard is not None and not by_source:
      ds = ds.shard(shard.num_shards, shard.index)
    if self.shuffle:
      ds = ds.shuffle(self.shuffle_buffer, seed=seed, reshuffle_each_iteration=False)
    epoch, data_seed, split = self.epoch, self.seed, self.split
    ds = ds.enumerate().map(tf.autograph.experimental.do_not_convert(
        lambda i, f: {**f, "index": i, "epoch": tf.constant(epoch, tf.int64),
                      "seed": tf.constant(data_seed, tf.int64), "split": tf.constant(split)}))
    ds = ds.skip(self.position)
    ds = self.task.preprocess_precache(ds, seed=seed)
    ds = self.task.preprocess_postcache(ds, sequence_length={"targets": self.max_tokens},
                                        seed=seed)
    # Examples cross into Python a batch at a time (one conversion, not one per example).
    ds = ds.ragged_batch(_READ_BATCH).map(tf.autograph.experimental.do_not_convert(_flatten))
    return ds.prefetch(2)

  def peek(self) -> dict[str, Any] | None:
    """The next example (not consumed), or None at the end of a non-repeating stream."""
    while self._peeked is None:
      if self._buffer:
        self._peeked = self._buffer.popleft()
        break
      if self._exhausted:
        return None
      if self._iter is None:
        self._iter = self._dataset().as_numpy_iterator()
      try:
        self._buffer.extend(_unflatten(next(self._iter)))
      except StopIteration:
        self._end_epoch()
      except tf.errors.OpError as e:
        # A RecordError raised inside tf.data arrives wrapped; re-raise the original.
        error = self.counters.last_error if self.counters is not None else None
        if error is not None and str(error) in str(e):
          raise error from None
        raise
      else:
        self._yielded_this_epoch = True
    return self._peeked

  def _end_epoch(self) -> None:
    counts = self.counters.snapshot() if self.counters else {}
    lossy = any(k.startswith("skipped/") or k == "truncated" for k in counts)
    (logging.warning if lossy else logging.info)(
        "task %s split %s shard %s: epoch %d read; records so far: %s", self.task.name,
        self.split, self.shard_info, self.epoch, counts)
    if self.repeat and not self._yielded_this_epoch and self.position == 0:
      raise ValueError(f"task {self.task.name!r} split {self.split!r} shard {self.shard_info} "
                       f"yields no examples; counts: "
                       f"{self.counters.snapshot() if self.counters else 'n/a'}")
    self._iter = None
    if self.repeat:
      self.epoch, self.position, self._yielded_this_epoch = self.epoch + 1, 0, False
    else:
      self._exhausted = True

  def advance(self) -> None:
    if self._peeked is None:
      raise RuntimeError("advance() without a peeked example")
    self.position = int(self._peeked["index"]) + 1
    self._peeked = None

  def state(self) -> dict[str, int]:
    position = int(self._peeked["index"]) if self._peeked is not None else self.position
    return {"epoch": self.epoch, "position": position}

  def restore(self, state: Mapping[str, int]) -> None:
    self.close()
    self.epoch, self.position = int(state["epoch"]), int(state["position"])
    self._yielded_this_epoch, self._exhausted = self.position > 0, False

  def close(self) -> None:
    self._iter, self._peeked = None, None
    self._buffer.clear()


_READ_BATCH = 64


def _flatten(batch: dict[str, Any]) -> dict[str, tf.Tensor]:
  """Ragged features -> flat values plus `<key>/lengths` (plain tensors convert fastest)."""
  out = {}
  for key, value in batch.items():
    if isinstance(value, tf.RaggedTensor):
      out[key], out[f"{key}/lengths"] = value.flat_values, value.row_lengths()
    else:
      out[key] = value
  return out


def _unflatten(batch: dict[str, np.ndarray]) -> list[dict[str, Any]]:
  """The examples of a `_flatten`ed batch, as dicts of numpy values."""
  ragged = {k[:-len("/lengths")] for k in batch if k.endswith("/lengths")}
  n = len(batch["index"])
  columns = {k: (np.split(v, np.cumsum(batch[f"{k}/lengths"])[:-1]) if k in ragged else v)
             for k, v in batch.items() if not k.endswith("/lengths")}
  return [{k: v[i] for k, v in columns.items()} for i in range(n)]


class MixtureStream:
  """Task streams mixed by rate: draw k picks task hash(seed, k); restartable at any k."""

  def __init__(self, streams: list[TaskStream], rates: list[float], seed: int):
    self.streams, self.seed, self.draws = streams, seed, 0
    self._cum = np.cumsum(np.asarray(rates, np.float64) / sum(rates))

  def _current(self) -> TaskStream:
    u = _hash_uniform(self.seed, "mixture", self.draws)
    return self.streams[min(int(np.searchsorted(self._cum, u, side="right")),
                            len(self.streams) - 1)]

  def peek(self) -> dict[str, Any] | None:
    return self._current().peek()

  def advance(self) -> None:
    self._current().advance()
    self.draws += 1

  def state(self) -> dict[str, Any]:
    return {"draws": self.draws, "tasks": {s.task.name: s.state() for s in self.streams}}

  def restore(self, state: Mapping[str, Any]) -> None:
    self.draws = int(state["draws"])
    for s in self.streams:
      s.restore(state["tasks"][s.task.name])

  def close(self) -> None:
    for s in self.streams:
      s.close()


class BatchIterator:
  """numpy batches {key: [B_local, T]} (`features.BATCH_KEYS`) with get_state/set_state."""

  def __init__(self, stream: MixtureStream, packer: features.RowPacker,
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
  streams = [TaskStream(task, split=cfg.train_split, shard_info=shard_info, seed=seed,
                        max_tokens=seq_len + 1, shuffle=True,
                        shuffle_buffer=cfg.shuffle_buffer, repeat=True,
                        order_key=tasks_lib.twin_key(task) if cfg.paired_order else "")
             for task, _ in pairs]
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
  return BatchIterator(MixtureStream(streams, [r for _, r in pairs], seed), packer, fingerprint)


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
  stream = TaskStream(provider, split=cfg.eval_split, shard_info=shard_info, seed=cfg.seed,
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
  return BatchIterator(MixtureStream([stream], [1.0], cfg.seed), packer, fingerprint,
                       num_batches=num_batches)
