"""Bootstrap intervals of a cell's metrics, from its per-example values (`metrics.per_example`).

A metric is named by a string:

  violation          length violation (0/1 per example with a length target)
  abs_rel_error      |words - target| / target
  nll                reference-response NLL per token (token-weighted ratio)
  acc:<category>     marker inferred right (0/1)
  majority:<cat>     the training data's most frequent value of <cat> equals the example's
                     reference (0/1), over the examples that score acc:<cat> (or carry <cat>)
  score:<name>       a per-example score (pass, judge_win, ...)

`subset=(category, "head" | "tail")` keeps the examples whose reference value of the category is
(not) in the cell's long-tail values (`metrics.slices.by_category.<cat>.tail_values`).
Several cells of one measurement (seeds) are combined on the examples they share; a difference
pairs examples by id (`bootstrap`). The resampling itself is `bootstrap`'s.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from treasure_jax.eval import bootstrap

Subset = tuple[str, str] | None
Column = dict[str, Any]  # example id -> value, or (numerator, denominator) for a ratio.


def is_ratio(metric: str) -> bool:
  return metric == "nll"


def is_rate(metric: str) -> bool:
  """Shown as a percentage."""
  return metric in ("violation", "abs_rel_error") or metric.startswith(("acc:", "majority:")) \
      or metric in ("score:judge_win", "score:reward_win")


def _values(pe: Mapping[str, Any], metric: str) -> list[Any] | None:
  kind, _, arg = metric.partition(":")
  if kind == "violation":
    return [None if v is None else float(v) for v in pe.get("violated", [])]
  if kind == "abs_rel_error":
    return [None if v is None else abs(v) for v in pe.get("rel_error", [])]
  if kind == "nll":
    return [None if s is None else (s, t) for s, t in zip(pe.get("nll_sum", []),
                                                          pe.get("n_tokens", []))]
  if kind == "acc":
    column = (pe.get("correct") or {}).get(arg)
    return None if column is None else [None if v is None else float(v) for v in column]
  if kind == "majority":
    majority = (pe.get("train_majority") or {}).get(arg)
    refs = (pe.get("reference") or {}).get(arg)
    if majority is None or refs is None:
      return None
    scored = (pe.get("correct") or {}).get(arg) or refs
    return [None if r is None or s is None else float(r == majority)
            for r, s in zip(refs, scored)]
  if kind == "score":
    column = (pe.get("scores") or {}).get(arg)
    return None if column is None else list(column)
  raise ValueError(f"intervals: unknown metric {metric!r}")


def column(metrics: Mapping[str, Any], metric: str, subset: Subset = None) -> Column | None:
  """{id: value} of one cell (examples without the metric left out); None when not recorded."""
  pe = metrics.get("per_example")
  if not isinstance(pe, Mapping):
    return None
  values = _values(pe, metric)
  if values is None:
    return None
  keep = [True] * len(values)
  if subset is not None:
    category, side = subset
    refs = (pe.get("reference") or {}).get(category)
    groups = ((metrics.get("slices") or {}).get("by_category") or {}).get(category)
    if refs is None or groups is None:
      return None
    tails = set(groups.get("tail_values") or ())
    keep = [r is not None and ((r in tails) == (side == "tail")) for r in refs]
  return {i: v for i, v, k in zip(pe["id"], values, keep) if k and v is not None}


def _shared(columns: Sequence[Column]) -> list[str]:
  ids = [i for i in columns[0] if all(i in c for c in columns[1:])]
  return ids


def _arrays(columns: Sequence[Column], ids: Sequence[str], ratio: bool
            ) -> tuple[np.ndarray, np.ndarray | None]:
  if not ratio:
    return np.array([[c[i] for i in ids] for c in columns], dtype=np.float64).reshape(
        len(columns), len(ids)), None
  num = np.array([[c[i][0] for i in ids] for c in columns], dtype=np.float64)
  den = np.array([[c[i][1] for i in ids] for c in columns], dtype=np.float64)
  return num.reshape(len(columns), len(ids)), den.reshape(len(columns), len(ids))


def estimate(cells: Sequence[Mapping[str, Any]], metric: str,
             subset: Subset = None) -> bootstrap.Interval | None:
  """The metric's interval over one or more cells' metrics (seeds; their shared examples)."""
  columns = [column(m, metric, subset) for m in cells]
  if not columns or any(c is None for c in columns):
    return None
  ids = _shared(columns)
  x, den = _arrays(columns, ids, is_ratio(metric))
  ci = bootstrap.ratio(x, den) if den is not None else bootstrap.mean(x)
  if len(cells) > 1:
    ci["per_seed"] = [_point(c, ids, metric) for c in columns]
  return ci


def _point(col: Column, ids: Sequence[str], metric: str) -> float | None:
  if not ids:
    return None
  if is_ratio(metric):
    return sum(col[i][0] for i in ids) / sum(col[i][1] for i in ids)
  return sum(col[i] for i in ids) / len(ids)


def difference(pairs: Sequence[tuple[Mapping[str, Any], Mapping[str, Any]]], metric: str,
               metric_b: str | None = None, subset: Subset = None
               ) -> bootstrap.Interval | None:
  """Paired interval of metric_b(b) - metric(a) over (a, b) cell pairs (one per seed),
  on the example ids every cell has."""
  metric_b = metric_b or metric
  if is_ratio(metric) != is_ratio(metric_b):
    raise ValueError(f"intervals: cannot pair {metric!r} with {metric_b!r}")
  cols_a = [column(a, metric, subset) for a, _ in pairs]
  cols_b = [column(b, metric_b, subset) for _, b in pairs]
  if not pairs or any(c is None for c in cols_a + cols_b):
    return None
  ids = _shared(cols_a + cols_b)
  a, den_a = _arrays(cols_a, ids, is_ratio(metric))
  b, den_b = _arrays(cols_b, ids, is_ratio(metric))
  return bootstrap.paired_difference(a, b, den_a=den_a, den_b=den_b)


def fmt_value(value: float | None, metric: str) -> str:
  return bootstrap.format_value(value, pct=is_rate(metric))


def fmt(ci: bootstrap.Interval | None, metric: str, *, signed: bool = False,
        n: bool = True) -> str:
  """The interval as report text, a percentage for rates."""
  return bootstrap.format_interval(ci, pct=is_rate(metric), signed=signed, n=n)


def pooled(cells: Sequence[Mapping[str, Any]], metric: str) -> bootstrap.Interval | None:
  """The metric over the union of the cells' examples (by id; e.g. a majority-class rate,
  which depends only on the examples, not on the model)."""
  merged: Column = {}
  for m in cells:
    merged.update(column(m, metric) or {})
  if not merged:
    return None
  x, den = _arrays([merged], list(merged), is_ratio(metric))
  return bootstrap.ratio(x, den) if den is not None else bootstrap.mean(x)
