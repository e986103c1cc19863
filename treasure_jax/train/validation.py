"""Validation metrics: loss overall and per marker value, with head and long-tail slices.

An example belongs to the slice `loss/domain/Code` when its markers say so; a value is long-tail
when it is rare in the *training* data (`stats.FrequencyTable.is_long_tail`, < 5% by default).
Slice losses are token-weighted: summed NLL over summed loss weights of the slice's examples.
`loss_head`/`loss_tail` pool every (example, categorical category) pair by its value's slice, so
an example counts once per category it carries. Per-row markers travel to the device as integer
codes ([B, C], -1 = absent) inside the batch and come back with the per-example sums, so rows
and markers stay aligned on every host of a multi-process run.
Deliberately left to others: the per-example sums (`step.eval_step`), the batches (`data`).
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from treasure_jax.markers import stats as stats_lib
from treasure_jax.markers import taxonomy as taxonomy_lib

CODES_KEY = "marker_codes"


class Codebook:
  """Categorical categories of a taxonomy and their values, as integer codes."""

  def __init__(self, tax: taxonomy_lib.Taxonomy):
    self.categories = [c for c in tax.categories if c.is_categorical]
    self.values = [list(c.values) if c.kind == "enum" else list(range(c.minimum, c.maximum + 1))
                   for c in self.categories]

  def encode(self, batch: Mapping[str, np.ndarray]) -> np.ndarray:
    """[B, C] codes from the eval iterator's `markers/<category>` string columns."""
    rows = len(batch["inputs"])
    codes = np.full((rows, len(self.categories)), -1, np.int32)
    for j, (cat, values) in enumerate(zip(self.categories, self.values)):
      column = batch.get(f"markers/{cat.name}")
      if column is None:
        continue
      for i, text in enumerate(column):
        text = text.decode() if isinstance(text, bytes) else str(text)
        if not text:
          continue
        try:
          codes[i, j] = values.index(cat.convert(text))
        except ValueError:
          pass  # A value outside the taxonomy is no slice (the data checks markers).
    return codes


class Accumulator:
  """Sums per-example [B] token sums into overall, per-value and head/tail buckets."""

  def __init__(self, codebook: Codebook, table: stats_lib.FrequencyTable | None):
    self.codebook = codebook
    self.table = table
    self.sums: dict[str, np.ndarray] = {}

  def _add(self, key: str, row: np.ndarray) -> None:
    self.sums[key] = self.sums.get(key, np.zeros(4)) + row

  def add(self, sums: Mapping[str, np.ndarray], codes: np.ndarray) -> None:
    """`sums`: `step.token_sums` arrays [B]; `codes`: [B, C] from `Codebook.encode`."""
    rows = np.stack([sums["loss"], sums["weight"], sums["marker_correct"],
                     sums["marker_weight"]], axis=1).astype(np.float64)
    for i in np.flatnonzero(rows[:, 1] > 0):  # Padding rows carry no loss weight.
      self._add("all", rows[i])
      for j in np.flatnonzero(codes[i] >= 0):
        cat = self.codebook.categories[j]
        value = self.codebook.values[j][codes[i, j]]
        self._add(f"{cat.name}/{value}", rows[i])
        if self.table is not None:
          self._add("tail" if self.table.is_long_tail(cat.name, value) else "head", rows[i])

  def result(self) -> dict[str, float]:
    """{"loss", "marker_token_accuracy", "loss_head", "loss_tail", "loss/domain/Code", ...}."""
    out = {}
    for key, (loss, weight, correct, marker_weight) in sorted(self.sums.items()):
      if key == "all":
        out["loss"] = loss / weight
        if marker_weight:
          out["marker_token_accuracy"] = correct / marker_weight
      elif key in ("head", "tail"):
        out[f"loss_{key}"] = loss / weight
      else:
        out[f"loss/{key}"] = loss / weight
    return out


def evaluate(eval_fn: Any, params: Any, batches: Any, codebook: Codebook,
             table: stats_lib.FrequencyTable | None, max_batches: int = 0) -> dict[str, float]:
  """Runs `eval_fn(params, batch) -> {sums [B], CODES_KEY}` over device-ready `batches`."""
  acc = Accumulator(codebook, table)
  for i, batch in enumerate(batches):
    if max_batches and i >= max_batches:
      break
    out = {k: np.asarray(v) for k, v in eval_fn(params, batch).items()}
    acc.add(out, out[CODES_KEY])
  return acc.result()
