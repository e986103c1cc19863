"""The report's figures (matplotlib, Agg): grouped bars with 95% intervals, and a scatter.

Sized to be read at 100% zoom: 100 dpi, 11-12 pt text, long labels on horizontal bars or
wrapped, the example count n in the group labels (a range when series differ). Every
function returns the PNG's base name, or None (and no file) when there is nothing to draw.
What the values mean is the report's (`report`); the intervals come from `intervals`.
"""
from __future__ import annotations

import math
import os
import textwrap
from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")
from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top

DPI = 100
MAX_SERIES = 8  # Bars per group beyond which a figure stops being readable.
FONT = {"font.size": 11, "axes.titlesize": 12, "axes.labelsize": 11, "legend.fontsize": 10,
        "xtick.labelsize": 10, "ytick.labelsize": 10}
Ci = Mapping[str, Any] | None


def _n_of(cis: Sequence[Ci]) -> str | None:
  """The group's n ("32", or a range "1-4" when series differ); None when nothing measured."""
  ns = sorted({ci["n"] for ci in cis if ci and ci.get("value") is not None})
  return None if not ns else str(ns[0]) if len(ns) == 1 else f"{ns[0]}-{ns[-1]}"


def _save(fig: Any, path: str, layout: bool = True) -> str:
  if layout:
    fig.tight_layout()
  fig.savefig(path, dpi=DPI, bbox_inches="tight")
  plt.close(fig)
  return os.path.basename(path)


def bars(path: str, groups: Sequence[str], series: Mapping[str, Sequence[Ci]], *, title: str,
         label: str, pct: bool, horizontal: bool = False,
         reference: Sequence[str] = ()) -> str | None:
  """Grouped bars (one per series and group) with their interval as error bars; `reference`
  series (e.g. a majority-class rate) are drawn hatched, white."""
  if not any(ci and ci.get("value") is not None for cis in series.values() for ci in cis):
    return None
  scale = 100.0 if pct else 1.0
  common = [_n_of([cis[g] for cis in series.values()]) for g in range(len(groups))]
  names = [f"{name}  (n={n})" if horizontal and n is not None else
           f"{textwrap.fill(name, 16)}\n(n={n})" if n is not None else textwrap.fill(name, 16)
           for name, n in zip(groups, common)]
  k, width = len(series), 0.8 / max(1, len(series))
  with plt.rc_context(FONT):
    long_side = max(6.0, min(14.0, 0.55 * k * len(groups) + 2.5))
    fig, ax = plt.subplots(figsize=(9.0, long_side * 0.6) if horizontal else (long_side, 5.0))
    for i, (name, cis) in enumerate(series.items()):
      pos = [g + (i - (k - 1) / 2) * width for g in range(len(groups))]
      vals = [scale * ci["value"] if ci and ci.get("value") is not None else math.nan
              for ci in cis]
      err = [[max(0.0, v - scale * ci["lo"]) if not math.isnan(v) else 0.0 for v, ci in
              zip(vals, cis)], [max(0.0, scale * ci["hi"] - v) if not math.isnan(v) else 0.0
                                for v, ci in zip(vals, cis)]]
      draw = ax.barh if horizontal else ax.bar
      kw = {"xerr" if horizontal else "yerr": err, "capsize": 3, "label": name}
      if name in reference:
        kw.update(color="white", edgecolor="black", hatch="//")
      drawn = draw(pos, vals, width * 0.95, **kw)
      for bar_, v in zip(drawn, vals):
        if v == 0:  # A measured 0 draws no bar: say so, unlike a missing value.
          at = ((bar_.get_x() + bar_.get_width() / 2, 0) if not horizontal else
                (0, bar_.get_y() + bar_.get_height() / 2))
          ax.annotate("0", at, fontsize=9, ha="center" if not horizontal else "left",
                      va="bottom" if not horizontal else "center")
    ticks = list(range(len(groups)))
    if horizontal:
      ax.set_yticks(ticks, names)
      ax.invert_yaxis()
      ax.set_xlabel(label)
    else:
      ax.set_xticks(ticks, names)
      ax.set_ylabel(label)
    ax.set_title(title)
    ax.grid(axis="x" if horizontal else "y", alpha=0.3)
    if pct:  # Rates on their whole range, so that 0% reads as a measured 0.
      (ax.set_xlim if horizontal else ax.set_ylim)(0, 105)
    fig.tight_layout()
    # Under the figure (savefig's tight box grows to hold it), so that no legend hides a bar
    # or a label.
    handles, labels = ax.get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, 0.0),
               ncol=min(3, k), framealpha=0.9)
    return _save(fig, path, layout=False)


def scatter(path: str, points: Mapping[str, Sequence[tuple[float, float]]], *, title: str,
            xlabel: str, ylabel: str) -> str | None:
  """One colour per series, with the y = x line."""
  if not any(points.values()):
    return None
  with plt.rc_context(FONT):
    fig, ax = plt.subplots(figsize=(8.0, 6.5))
    top = max(max(max(x, y) for x, y in pts) for pts in points.values() if pts)
    ax.plot([0, top], [0, top], "k--", linewidth=1, label="produced = asked")
    markers = "osD^vP*X"
    for i, (name, pts) in enumerate(points.items()):
      if pts:
        ax.scatter([x for x, _ in pts], [y for _, y in pts], s=28, alpha=0.6,
                   marker=markers[i % len(markers)], label=f"{name} (n={len(pts)})")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.set_xlim(left=0)
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", framealpha=0.9)
    return _save(fig, path)


def reliability(path: str, curves: Mapping[str, Sequence[Mapping]]) -> str | None:
  """Accuracy vs confidence per cell, with the diagonal."""
  if not curves:
    return None
  with plt.rc_context(FONT):
    fig, ax = plt.subplots(figsize=(6.5, 6.0))
    ax.plot([0, 1], [0, 1], "k--", linewidth=1, label="perfect")
    for name, bins in curves.items():
      full = [b for b in bins if b["n"]]
      ax.plot([b["mean_confidence"] for b in full], [b["accuracy"] for b in full], "o-",
              label=name)
    ax.set_xlabel("confidence (probability of the chosen value)")
    ax.set_ylabel("accuracy")
    ax.set_title("Reliability of inferred markers")
    ax.legend(framealpha=0.9)
    return _save(fig, path)
