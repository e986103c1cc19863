"""Report sections that compare: markers vs baseline on the same examples, head vs tail slices,
length asked vs produced, and the same prompts asked at several lengths.

Pairing: a marked checkpoint is compared with the baseline of the same seed suffix (`_s<N>`,
else the first baseline), cell by cell within a task: the same setting when the baseline ran
it, a length_tokens marker against the length asked in words (the paper's comparison), else
against the baseline's "none". Differences are paired bootstrap intervals over the example ids
both cells scored (`intervals.difference`). The layout of the other tables is `report`'s.
"""
from __future__ import annotations

import math
import os
import re
import statistics
from collections.abc import Mapping, Sequence
from typing import Any

from treasure_jax.eval import bootstrap
from treasure_jax.eval import intervals
from treasure_jax.eval import plots

_MODE_LABELS = {"none": "length not asked", "nl_instruction": "asked in words",
                "fixed:length_tokens": "length_tokens marker", "inferred": "markers inferred"}
_COMPARED = ("violation", "nll", "score:pass", "score:judge_win", "score:reward_win")
_HEAD_TAIL_METRICS = ("nll", "score:judge_win", "score:reward_win", "score:pass", "violation")
_PAPER_CATEGORIES = ("domain", "task", "format", "lang")
_TITLES = {"nll": "Reference-response NLL per token", "violation": "Length violations",
           "acc": "Marker accuracy of the sliced category", "score:pass": "pass@1",
           "score:judge_win": "Judge win rate", "score:reward_win": "Reward-model win rate"}
MAX_CATEGORIES = 6
MAX_TAIL_NAMES = 6
_SEED = re.compile(r"_s\d+\Z")


def mode_label(setting: str) -> str:
  """A length mode's words ("asked in words"); other settings as they are."""
  return _MODE_LABELS.get(setting, setting)


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  return lines + ["| " + " | ".join(row) + " |" for row in rows]


def baseline_for(checkpoint: str, baselines: Sequence[str]) -> str | None:
  """The baseline with the checkpoint's seed suffix, else the first baseline."""
  match = _SEED.search(checkpoint)
  suffix = match.group(0) if match else ""
  same = [b for b in baselines if (_SEED.search(b).group(0) if _SEED.search(b) else "") == suffix]
  return (same or list(baselines) or [None])[0]


def partner_setting(setting: str, available: Sequence[str]) -> str | None:
  """The baseline setting a marked cell's setting is compared with (module docstring)."""
  if setting in available:
    return setting
  if "length_tokens" in setting and "nl_instruction" in available:
    return "nl_instruction"
  return "none" if "none" in available else None


def pairs(cells: Sequence[Mapping], baselines: Sequence[str]
          ) -> list[tuple[Mapping, Mapping]]:
  """(baseline cell, marked cell) pairs, in the cells' order."""
  index = {(c["checkpoint"], c["task"], c["setting"]): c for c in cells}
  out = []
  for cell in cells:
    base = baseline_for(cell["checkpoint"], baselines)
    if base is None or cell["checkpoint"] in baselines:
      continue
    available = [s for (ck, task, s) in index if ck == base and task == cell["task"]]
    setting = partner_setting(cell["setting"], available)
    if setting is not None:
      out.append((index[(base, cell["task"], setting)], cell))
  return out


def both_slices(metrics: Mapping[str, Any]) -> list[str]:
  """Categories whose head and tail both hold evaluated examples (paper's order first)."""
  by_cat = (metrics.get("slices") or {}).get("by_category") or {}
  cats = [c for c, g in by_cat.items()
          if (g.get("head") or {}).get("n") and (g.get("tail") or {}).get("n")]
  return [c for c in _PAPER_CATEGORIES if c in cats] + [c for c in cats
                                                         if c not in _PAPER_CATEGORIES]


def _diff_rows(base: Mapping, marked: Mapping) -> list[list[str]]:
  rows = []
  subsets = [(None, "all")] + [((c, side), f"{c} {side}") for c in both_slices(marked["metrics"])
                               for side in ("head", "tail")]
  for metric in _COMPARED:
    for subset, where in subsets if metric == "nll" else subsets[:1]:
      diff = intervals.difference([(base["metrics"], marked["metrics"])], metric, subset=subset)
      if not diff or not diff["n"]:
        continue
      a = intervals.estimate([base["metrics"]], metric, subset)
      b = intervals.estimate([marked["metrics"]], metric, subset)
      rows.append([marked["name"], base["name"], f"{metric} ({where})",
                   intervals.fmt(b, metric), intervals.fmt(a, metric),
                   intervals.fmt(diff, metric, signed=True)])
  return rows


def paired_section(cells: Sequence[Mapping], baselines: Sequence[str]) -> list[str]:
  """Markers minus baseline on the same examples, with paired intervals."""
  rows = [row for base, marked in pairs(cells, baselines) for row in _diff_rows(base, marked)]
  head = ["## Markers vs baseline on the same examples (paired bootstrap)", "",
          "Difference = marked cell minus baseline cell over the examples both scored "
          "(paired by example id; n = those examples); lower is better for violations and "
          "NLL. A length_tokens marker is compared with the baseline asked in words.", ""]
  if not rows:
    why = "no baseline checkpoint given" if not baselines else "no cell pairs a baseline"
    return head + [f"n/a ({why}).", ""]
  return head + _table(["marked cell", "baseline cell", "metric (examples)", "marked",
                        "baseline", "difference (paired 95% CI)"], rows) + [""]


def _tail_names(groups: Mapping[str, Any]) -> str:
  names = list(groups.get("tail_values") or ())
  more = f" (+{len(names) - MAX_TAIL_NAMES} more)" if len(names) > MAX_TAIL_NAMES else ""
  return ", ".join(names[:MAX_TAIL_NAMES]) + more or "-"


def head_tail_section(cells: Sequence[Mapping], out_dir: str,
                      paper_lines: Sequence[str]) -> list[str]:
  """Per metric, a head / tail table over (cell, category); the figure for the first metric."""
  entries = [(c, cat) for c in cells for cat in both_slices(c["metrics"])]
  by_reason: dict[str, list[str]] = {}
  for cell in cells:
    sl = cell["metrics"].get("slices") or {}
    if not sl.get("available"):
      by_reason.setdefault(str(sl.get("reason", "slices not computed")), []).append(cell["name"])
  paper_lines = list(paper_lines) + [f"n/a ({why}): {', '.join(names)}"
                                     for why, names in by_reason.items()] + [""]
  lines = ["## Head vs tail (long tail: under the threshold share of training data)", "",
           "Only categories with evaluated examples on both sides; per-value slices are in "
           "cells.json (metrics.slices.by_category.<category>.values).", ""]
  if not entries:
    return lines + ["n/a (no cell has a category with both head and tail examples)."] + list(
        paper_lines)
  shown = []
  for metric in _HEAD_TAIL_METRICS + ("acc",):
    rows = []
    for cell, cat in entries:
      m = f"acc:{cat}" if metric == "acc" else metric
      cis = [intervals.estimate([cell["metrics"]], m, (cat, side)) for side in ("head", "tail")]
      if any(ci and ci["n"] for ci in cis):
        rows.append([cell["name"], cat, _tail_names(cell["metrics"]["slices"]["by_category"][cat])]
                    + [intervals.fmt(ci, m) for ci in cis])
    if rows:
      shown.append(metric)
      title = _TITLES.get(metric, metric)
      lines += [f"### {title}", ""] + _table(
          ["cell", "category", "tail values (evaluated)", "head", "tail"], rows) + [""]
  png = _head_tail_plot(entries, shown[0], out_dir) if shown else None
  return lines + list(paper_lines) + ([f"![{png}]({png})", ""] if png else [])


def _head_tail_plot(entries: Sequence[tuple[Mapping, str]], metric: str,
                    out_dir: str) -> str | None:
  cats = list(dict.fromkeys(cat for _, cat in entries))[:MAX_CATEGORIES]
  cells = list({c["name"]: c for c, _ in entries}.values())
  groups = [(cat, side) for cat in cats for side in ("head", "tail")]
  series = {}
  for cell in cells:
    m = lambda cat: f"acc:{cat}" if metric == "acc" else metric  # noqa: E731
    cis = [intervals.estimate([cell["metrics"]], m(cat), (cat, side)) for cat, side in groups]
    if any(ci and ci["n"] for ci in cis) and len(series) < plots.MAX_SERIES:
      series[cell["name"]] = cis
  label = {"nll": "reference NLL / token (nats), lower is better",
           "acc": "marker accuracy (%)"}.get(metric, f"{metric} (%)")
  return plots.bars(os.path.join(out_dir, "head_tail.png"), [f"{c}: {s}" for c, s in groups],
                    series, title=f"Head vs tail: {_TITLES.get(metric, metric)} (95% CI)",
                    label=label,
                    pct=metric != "nll" and metric != "score:pass", horizontal=True)


def length_scatter_section(cells: Sequence[Mapping], out_dir: str) -> list[str]:
  """Words asked vs produced, one point per example, for the modes that ask a length (in
  words, or a length_tokens marker); the seeds of a checkpoint (`_s<N>`) share a colour."""
  points: dict[str, list[tuple[float, float]]] = {}
  for cell in cells:
    if cell["setting"] != "nl_instruction" and "length_tokens" not in cell["setting"]:
      continue
    pe = cell["metrics"].get("per_example") or {}
    pts = [(t, w) for t, w in zip(pe.get("target") or [], pe.get("words") or [])
           if t is not None and w is not None]
    if pts:
      model = _SEED.sub("", cell["checkpoint"])
      points.setdefault(f"{model} / {cell['task']}: {mode_label(cell['setting'])}", []).extend(
          pts)
  png = plots.scatter(os.path.join(out_dir, "length_scatter.png"), points,
                      title="Length asked vs produced (one point per example)",
                      xlabel="words asked (N)", ylabel="words produced")
  if png is None:
    return []
  return ["## Length asked vs produced", "", "One point per example and cell of the modes that "
          "ask a length (the seeds of a model pooled); points above the dashed line are "
          "violations.", "", f"![{png}]({png})", ""]


def _per_prompt(cell: Mapping) -> tuple[list[int], dict[str, dict[int, int]]]:
  """(limits, {prompt id: {N: words}} of the prompts asked at every limit) of a cell run with
  `every_limit` (ids `<id>@<N>`); no limits when it was not."""
  pe = cell["metrics"].get("per_example") or {}
  prompts: dict[str, dict[int, int]] = {}
  for i, t, w in zip(pe.get("id") or [], pe.get("target") or [], pe.get("words") or []):
    base, at, n = str(i).rpartition("@")
    if at and t is not None and w is not None and n == str(t):
      prompts.setdefault(base, {})[int(t)] = int(w)
  limits = sorted({n for by_n in prompts.values() for n in by_n})
  return limits, {p: by_n for p, by_n in prompts.items() if len(by_n) == len(limits)}


def _log_ratios(limits: Sequence[int], prompts: Mapping[str, Mapping[int, int]]
                ) -> dict[str, float]:
  """log2((words at max N + 1) / (words at min N + 1)) per prompt."""
  lo, hi = limits[0], limits[-1]
  return {p: math.log2((by_n[hi] + 1) / (by_n[lo] + 1)) for p, by_n in prompts.items()}


def steering(cell: Mapping) -> dict[str, Any] | None:
  """Does the asked length steer the answer? Over the prompts asked at every limit of the cell:
  median words per N, prompts answered with the same word count at every N, the share answered
  longer at the largest N than at the smallest, and the mean log2 ratio of those two answers'
  (words + 1): about log2(max N / min N) when the answer's length tracks N, 0 when it does not
  change with N. None when the cell was not run with `every_limit`."""
  limits, full = _per_prompt(cell)
  if len(limits) < 2 or not full:
    return None
  lo, hi = limits[0], limits[-1]
  rows = list(full.values())
  return {"n": len(rows), "limits": limits,
          "median_words": {n: statistics.median(by_n[n] for by_n in rows) for n in limits},
          "same_length": sum(len(set(by_n.values())) == 1 for by_n in rows),
          "longer": bootstrap.mean([float(by_n[hi] > by_n[lo]) for by_n in rows]),
          "log2_ratio": bootstrap.mean(list(_log_ratios(limits, full).values())),
          "ideal_log2_ratio": math.log2(hi / lo)}


def steering_difference(base: Mapping, marked: Mapping) -> dict[str, Any] | None:
  """Marked minus baseline log2 ratio over the prompts both asked at the same limits (paired by
  prompt id); None when either cell has no steering or their limits differ."""
  (limits, a), (limits_b, b) = _per_prompt(base), _per_prompt(marked)
  if len(limits) < 2 or limits != limits_b or not set(a) & set(b):
    return None
  ra, rb = _log_ratios(limits, a), _log_ratios(limits, b)
  shared = sorted(set(a) & set(b))
  return bootstrap.paired_difference([ra[p] for p in shared], [rb[p] for p in shared])


def steering_section(cells: Sequence[Mapping], baselines: Sequence[str] = ()) -> list[str]:
  """One row per cell run with `every_limit` (tasks.<name>.every_limit), then each marked
  cell minus its baseline (`pairs`); no such cell: no section."""
  rows = []
  for cell in cells:
    s = steering(cell)
    if s is None:
      continue
    medians = " / ".join(f"{s['median_words'][n]:g}" for n in s["limits"])
    rows.append([cell["name"], mode_label(cell["setting"]),
                 " / ".join(map(str, s["limits"])), medians,
                 f"{s['same_length']} of {s['n']}",
                 bootstrap.format_interval(s["longer"], pct=True),
                 bootstrap.format_interval(s["log2_ratio"], pct=False, digits=2)
                 + f" (~{s['ideal_log2_ratio']:.2f} if tracking N)"])
  if not rows:
    return []
  lines = ["## Does the asked length steer the answer? (each prompt at every limit)", "",
           "The same prompts asked at each N; n = prompts. log2 ratio = mean over prompts of "
           "log2((words at max N + 1) / (words at min N + 1)): about log2(max N / min N) when "
           "the answer's length tracks N, 0 when it comes from the prompt alone (an answer "
           "short enough for every N obeys \"at most N words\" and still scores 0). Below it, "
           "each marked cell minus its baseline on that ratio, over the prompts both asked "
           "(paired by prompt id); a length_tokens marker faces the baseline asked in words.",
           ""]
  lines += _table(["cell", "mode", "N asked", "median words at each N",
                   "same length at every N", "longer at max N than min N",
                   "log2 ratio max / min N"], rows) + [""]
  diffs = [[marked["name"], base["name"],
            bootstrap.format_interval(d, pct=False, digits=2, signed=True)]
           for base, marked in pairs(cells, baselines)
           if (d := steering_difference(base, marked)) is not None]
  if diffs:
    lines += _table(["marked cell", "baseline cell",
                     "log2 ratio, marked minus baseline (paired by prompt, 95% CI)"],
                    diffs) + [""]
  return lines
