"""Decoder-only batches from tokenized examples: next-token pairs, loss-weight channels, packing.

An example of L tokens t_0..t_{L-1} takes L-1 positions of a row: `inputs` t_0..t_{L-2},
`targets` t_1..t_{L-1}; each target carries its own token's weights, so `loss_weights` is 1
exactly where the target is a completion token (marker list, response, end of turn) and 0 on
the prompt and on padding. `marker_weights + response_weights == loss_weights`, so training can
report the two losses apart. Packed rows hold several examples: `segment_ids` (1, 2, ... per
row; 0 = padding) and `positions` (restarting at 0) let attention keep them apart.

`RowPacker` fills rows first-fit and closes a batch at the first example that fits nowhere, or
after `max_examples`; that example starts the next batch. A batch is thus a pure function of
where it starts in the example stream, which is what makes `iterator`'s resume exact. Reading
the stream is `streams`' job; tokenization `preprocessors`'.
"""
from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

BATCH_KEYS = ("inputs", "targets", "loss_weights", "marker_weights", "response_weights",
              "segment_ids", "positions")
_INT_KEYS = ("inputs", "targets", "segment_ids", "positions")


def positions_needed(example: Mapping[str, Any]) -> int:
  return len(example["targets"]) - 1


class RowPacker:
  """Collects examples into a [batch_size, seq_len] batch.

  Args:
    batch_size: rows (B, per host).
    seq_len: positions per row (T); an example needs len(targets) - 1 of them.
    pack: several examples per row (first fit) or one example per row.
    max_examples: > 0 closes the batch after that many examples even with room left.
    marker_categories: when given, `build` adds per-row metadata for per-slice evaluation:
      `example_ids` and `markers/<category>` (object arrays of str, "" when absent); only
      meaningful without packing.
  """

  def __init__(self, batch_size: int, seq_len: int, *, pack: bool, max_examples: int = 0,
               marker_categories: Sequence[str] | None = None):
    if batch_size < 1 or seq_len < 1 or max_examples < 0:
      raise ValueError(f"batch_size={batch_size} and seq_len={seq_len} must be positive, "
                       f"max_examples={max_examples} >= 0")
    self.batch_size, self.seq_len, self.pack = batch_size, seq_len, pack
    self.max_examples = max_examples
    self.marker_categories = tuple(marker_categories) if marker_categories is not None else None
    self._reset()

  def _reset(self) -> None:
    self._batch = {k: np.zeros([self.batch_size, self.seq_len],
                               np.int32 if k in _INT_KEYS else np.float32) for k in BATCH_KEYS}
    self._used = [0] * self.batch_size
    self._segments = [0] * self.batch_size
    self._rows_used = 0
    self._examples: list[Mapping[str, Any]] = []
    self._row_examples: list[list[Mapping[str, Any]]] = [[] for _ in range(self.batch_size)]

  @property
  def num_examples(self) -> int:
    return len(self._examples)

  def try_add(self, example: Mapping[str, Any]) -> bool:
    """Places `example` and returns True, or returns False if it fits in no row or the batch
    holds `max_examples`."""
    n = positions_needed(example)
    if n < 1 or n > self.seq_len:
      raise ValueError(f"example {_name(example)} needs {n} positions; a row has "
                       f"{self.seq_len} (and an example needs at least 2 tokens)")
    if self.max_examples and len(self._examples) >= self.max_examples:
      return False
    if self.pack:
      rows = (r for r in range(self.batch_size) if self._used[r] + n <= self.seq_len)
    else:
      rows = iter([self._rows_used] if self._rows_used < self.batch_size else [])
    row = next(rows, None)
    if row is None:
      return False
    self._place(example, row, n)
    return True

  def _place(self, example: Mapping[str, Any], row: int, n: int) -> None:
    start, end = self._used[row], self._used[row] + n
    tokens = np.asarray(example["targets"])
    marker = np.asarray(example["marker_weights"], np.float32)
    response = np.asarray(example["response_weights"], np.float32)
    b = self._batch
    b["inputs"][row, start:end] = tokens[:-1]
    b["targets"][row, start:end] = tokens[1:]
    b["marker_weights"][row, start:end] = marker[1:]
    b["response_weights"][row, start:end] = response[1:]
    b["loss_weights"][row, start:end] = marker[1:] + response[1:]
    self._segments[row] += 1
    b["segment_ids"][row, start:end] = self._segments[row]
    b["positions"][row, start:end] = np.arange(n, dtype=np.int32)
    if self._used[row] == 0:
      self._rows_used += 1
    self._used[row] = end
    self._examples.append(example)
    self._row_examples[row].append(example)

  def build(self) -> dict[str, np.ndarray]:
    """The batch so far (padding rows are all zero); the packer starts a new one."""
    if not self._examples:
      raise ValueError("no examples to build a batch from")
    batch = self._batch
    if not batch["loss_weights"].any():
      raise ValueError("batch has no loss-bearing token; examples: "
                       + ", ".join(_name(e) for e in self._examples[:8]))
    if self.marker_categories is not None:
      batch.update(self._row_metadata())
    self._reset()
    return batch

  def empty(self) -> dict[str, np.ndarray]:
    """An all-padding batch (zero weights) with `build`'s keys, for hosts that ran out."""
    batch = {k: np.zeros_like(v) for k, v in self._batch.items()}
    if self.marker_categories is not None:
      batch["example_ids"] = np.full([self.batch_size], "", object)
      batch.update({f"markers/{c}": np.full([self.batch_size], "", object)
                    for c in self.marker_categories})
    return batch

  def _row_metadata(self) -> dict[str, np.ndarray]:
    ids = np.full([self.batch_size], "", object)
    meta = {f"markers/{c}": np.full([self.batch_size], "", object)
            for c in self.marker_categories}
    for row, examples in enumerate(self._row_examples):
      if not examples:
        continue
      ex = examples[0]
      ids[row] = _text(ex.get("id", ""))
      markers = json.loads(_text(ex.get("markers", "{}")) or "{}")
      for c in self.marker_categories:
        if c in markers:
          meta[f"markers/{c}"][row] = str(markers[c])
    return {"example_ids": ids, **meta}


def packing_efficiency(batch: Mapping[str, np.ndarray]) -> float:
  """Share of positions holding an example (not padding)."""
  return float((batch["segment_ids"] > 0).mean())


def _text(value: Any) -> str:
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _name(example: Mapping[str, Any]) -> str:
  return _text(example.get("origin", example.get("id", "?")))
