"""Percentile bootstrap intervals over examples: means, ratios and paired differences.

Every estimator takes per-example values as an array of shape (n,) or (S, n): S seeds (runs)
evaluated on the same n examples, aligned by example. The statistic of an (S, n) array is the
mean over seeds of each seed's statistic, and one resample draws n example indices shared by
every seed (and, for a difference, by both sides), so an interval reflects the spread over
examples of the seed-averaged figure. Paired differences resample the examples jointly, which
is what makes them narrower than the unpaired interval when the two sides are correlated.

Resampling is vectorized (one (B, n) index array); the seed is fixed, so intervals are
reproducible. Results are {"value", "lo", "hi", "n", "level"}; with n = 0 every number is None,
with n = 1 the interval is the point. Which values to feed in is the caller's (`intervals`).
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

RESAMPLES = 2000
SEED = 0
LEVEL = 0.95

Interval = dict[str, Any]
# A statistic of resampled example indices idx_BN -> one value per resample, shape (B,).
Statistic = Callable[[np.ndarray], np.ndarray]


def _as_sn(x: Any, name: str) -> np.ndarray:
  x_sn = np.asarray(x, dtype=np.float64)
  if x_sn.ndim == 1:
    x_sn = x_sn[None, :]
  if x_sn.ndim != 2:
    raise ValueError(f"bootstrap: {name} must have shape (n,) or (seeds, n), got {x_sn.shape}")
  if not np.all(np.isfinite(x_sn)):
    raise ValueError(f"bootstrap: {name} holds a value that is not a finite number")
  return x_sn


def _interval(stat: Statistic, n: int, *, n_resamples: int, seed: int,
              level: float) -> Interval:
  if n == 0:
    return {"value": None, "lo": None, "hi": None, "n": 0, "level": level}
  value = float(stat(np.arange(n)[None, :])[0])
  if n == 1:
    return {"value": value, "lo": value, "hi": value, "n": 1, "level": level}
  idx_bn = np.random.default_rng(seed).integers(0, n, size=(n_resamples, n))
  stats_b = stat(idx_bn)
  tail = 100 * (1 - level) / 2
  lo, hi = np.percentile(stats_b, [tail, 100 - tail])
  return {"value": value, "lo": float(lo), "hi": float(hi), "n": n, "level": level}


def _mean_stat(x_sn: np.ndarray) -> Statistic:
  return lambda idx_bn: x_sn[:, idx_bn].mean(axis=-1).mean(axis=0)


def _ratio_stat(num_sn: np.ndarray, den_sn: np.ndarray) -> Statistic:
  return lambda idx_bn: (num_sn[:, idx_bn].sum(-1) / den_sn[:, idx_bn].sum(-1)).mean(axis=0)


def _check_same(a: np.ndarray, b: np.ndarray, what: str) -> None:
  if a.shape != b.shape:
    raise ValueError(f"bootstrap: {what} need the same shape (seeds, examples), got {a.shape} "
                     f"and {b.shape}")


def mean(x: Any, *, n_resamples: int = RESAMPLES, seed: int = SEED,
         level: float = LEVEL) -> Interval:
  """Mean of per-example values (0/1 for a rate), with its percentile interval."""
  x_sn = _as_sn(x, "values")
  return _interval(_mean_stat(x_sn), x_sn.shape[1], n_resamples=n_resamples, seed=seed,
                   level=level)


def ratio(num: Any, den: Any, *, n_resamples: int = RESAMPLES, seed: int = SEED,
          level: float = LEVEL) -> Interval:
  """sum(num) / sum(den) over examples (e.g. NLL per token, token-weighted)."""
  num_sn, den_sn = _as_sn(num, "numerators"), _as_sn(den, "denominators")
  _check_same(num_sn, den_sn, "numerators and denominators")
  if np.any(den_sn <= 0):
    raise ValueError("bootstrap: ratio denominators must be > 0")
  return _interval(_ratio_stat(num_sn, den_sn), num_sn.shape[1], n_resamples=n_resamples,
                   seed=seed, level=level)


def paired_difference(a: Any, b: Any, *, den_a: Any = None, den_b: Any = None,
                      n_resamples: int = RESAMPLES, seed: int = SEED,
                      level: float = LEVEL) -> Interval:
  """statistic(b) - statistic(a) on the same examples, resampled jointly.

  With `den_a`/`den_b` the statistic is a ratio (sum a / sum den_a), else the mean.
  """
  a_sn, b_sn = _as_sn(a, "a"), _as_sn(b, "b")
  _check_same(a_sn, b_sn, "paired sides")
  if (den_a is None) != (den_b is None):
    raise ValueError("bootstrap: give both denominators or neither")
  if den_a is None:
    stat_a, stat_b = _mean_stat(a_sn), _mean_stat(b_sn)
  else:
    da_sn, db_sn = _as_sn(den_a, "den_a"), _as_sn(den_b, "den_b")
    _check_same(a_sn, da_sn, "a and den_a")
    _check_same(b_sn, db_sn, "b and den_b")
    stat_a, stat_b = _ratio_stat(a_sn, da_sn), _ratio_stat(b_sn, db_sn)
  return _interval(lambda idx_bn: stat_b(idx_bn) - stat_a(idx_bn), a_sn.shape[1],
                   n_resamples=n_resamples, seed=seed, level=level)


def unpaired_difference(a: Any, b: Any, *, n_resamples: int = RESAMPLES, seed: int = SEED,
                        level: float = LEVEL) -> Interval:
  """mean(b) - mean(a) resampling each side on its own (independent samples); n = min size."""
  a_n, b_n = _as_sn(a, "a")[0], _as_sn(b, "b")[0]
  n = min(len(a_n), len(b_n))
  value = float(b_n.mean() - a_n.mean()) if n else None
  if n < 2:
    return {"value": value, "lo": value, "hi": value, "n": n, "level": level}
  rng = np.random.default_rng(seed)
  idx_a = rng.integers(0, len(a_n), size=(n_resamples, len(a_n)))
  idx_b = rng.integers(0, len(b_n), size=(n_resamples, len(b_n)))
  diffs_b = b_n[idx_b].mean(-1) - a_n[idx_a].mean(-1)
  tail = 100 * (1 - level) / 2
  lo, hi = np.percentile(diffs_b, [tail, 100 - tail])
  return {"value": value, "lo": float(lo), "hi": float(hi), "n": n, "level": level}


def format_value(value: float | None, *, pct: bool, digits: int = 3) -> str:
  """One point estimate as the intervals show it ("25.0%" or "1.234")."""
  if value is None:
    return "n/a"
  return f"{100 * value:.1f}%" if pct else f"{value:.{digits}f}"


def format_interval(ci: Interval | None, *, pct: bool, digits: int = 3,
                    signed: bool = False, n: bool = True) -> str:
  """"25.0% [12.5, 40.6] n=32" (pct) or "1.234 [1.100, 1.350] n=32"; "n/a" when unmeasured.

  A signed percentage is a difference of rates, shown in points ("+3.1 pts [...]").
  """
  if not ci or ci.get("value") is None:
    return "n/a" if not ci or not ci.get("n") or not n else f"n/a (n={ci['n']})"
  scale, spec = (100.0, ".1f") if pct else (1.0, f".{digits}f")
  sign = "+" if signed else ""
  unit = " pts" if pct and signed else "%" if pct else ""
  text = (f"{scale * ci['value']:{sign}{spec}}{unit} "
          f"[{scale * ci['lo']:{sign}{spec}}, {scale * ci['hi']:{sign}{spec}}]")
  return f"{text} n={ci['n']}" if n else text
