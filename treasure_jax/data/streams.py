"""The examples behind the batch iterators: one seqio task on one host, read epoch by epoch
(`TaskStream`), and several tasks mixed by rate (`MixtureStream`), each with peek/advance and a
small exact position.

Epoch e of a task reads this host's shard in an order shuffled by hash(seed, order key, e) (the
task's name, or with `data.paired_order` the name a task and its baseline twin share), numbers
the records (`index`) and preprocesses them with the epoch known, so every epoch re-draws the
prompt-side dropout. A task's position is {"epoch", "position"}, `position` being the index of
the first record not yet consumed; restoring re-opens the epoch at that record (`skip` before
preprocessing: reading lines, not tokenizing them). A mixture's k-th example comes from task
hash(seed, k) by rate, so its position is k plus its tasks'. Packing examples into batches is
`iterator`'s job.
"""
from __future__ import annotations

import atexit
import collections
import hashlib
import struct
import weakref
from collections.abc import Iterator, Mapping
from typing import Any

from absl import logging
import numpy as np
import seqio
import tensorflow as tf

from treasure_jax.data import tasks as tasks_lib

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
