"""Markdown + PNG report of a sweep, laid out like the paper's tables, next to its figures.

`write(cells, out_dir)` takes one dict per sweep cell, {"name", "checkpoint", "task",
"setting", "metrics"} with `metrics` from `metrics.cell_metrics`, and writes `report.md`,
`cells.json` and PNG plots (matplotlib, Agg backend) into `out_dir`. Each table is followed by
the paper's figure for the same measurement (`PAPER_FIGURES`, from shared/docs/method.md).
Whatever was measured is shown; a missing metric is "n/a" with its reason listed under the
table. Rates are shown as percentages. Running the sweep is not this module's job.
"""
from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")
from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top

from treasure_jax.markers import stats  # pylint: disable=g-import-not-at-top

# The paper's numbers (shared/docs/method.md), shown as text under the matching table.
PAPER_FIGURES: dict[str, dict[str, Any]] = {
    "marker_accuracy": {"source": "marker inference accuracy at p_d = 0.5",
                        "values": {"domain": "74.9%", "task": "53.6%", "format": "47.4%",
                                   "lang": "99.2%"}},
    "length": {"source": "AlpacaEval-LI length violations",
               "values": {"baseline + NL instruction": "36.58%", "markers inferred": "24.74%",
                          "length_tokens fixed": "1.25%"}},
    "judge_win": {"source": "Arena-Hard-Auto win rate vs Gemma2-9B, inferred markers",
                  "values": {"baseline": "32.1%", "with markers": "37.8%"}},
    "reward_win": {"source": "quality lever, reward-model win rate vs baseline",
                   "values": {"baseline": "48.21%", "quality_bucket = 1": "56.5%"}},
    "pass": {"source": "HumanEvalPack pass@1, task marker fixed, baseline → markers",
             "values": {"CodeFix (CodeRepair)": "0.216 → 0.246",
                        "CodeGeneration": "0.406 → 0.419", "CodeTranslation": "0.597 → 0.636"}},
    "head_tail": {"source": "Arena-Hard-Auto, domains under 5% of training data",
                  "values": {"win-rate gain on the tail": "+9.1 points"}},
}
_PAPER_CATEGORIES = ("domain", "task", "format", "lang")
_SETTING_ORDER = ("none", "nl_instruction", "baseline", "inferred", "fixed")
_HEAD_TAIL_SCORES = ("judge_win", "reward_win", "pass")

Getter = Callable[[Mapping[str, Any]], tuple[float | None, str | None]]


def _get(metrics: Mapping[str, Any], *path: str, value: str) -> tuple[float | None, str | None]:
  """(value, None) or (None, reason) for metrics[path...][value]."""
  node: Any = metrics
  for key in path:
    if not isinstance(node, Mapping) or key not in node:
      return None, f"{'.'.join(path)} not measured"
    node = node[key]
    if isinstance(node, Mapping) and node.get("available") is False:
      return None, str(node.get("reason", "not available"))
  result = node.get(value) if isinstance(node, Mapping) else None
  return (result, None) if result is not None else (None, f"{'.'.join(path)}.{value} missing")


def _pct(x: float) -> str:
  return f"{100 * x:.1f}%"


def _num(x: float) -> str:
  return f"{x:.3f}"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
  """A Markdown table, or a one-line note when no cell measured the metric."""
  if not rows:
    return ["n/a for every cell (reasons below)."]
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  return lines + ["| " + " | ".join(row) + " |" for row in rows]


def _notes(reasons: Mapping[str, str], paper_key: str | None,
           paper: Mapping[str, Any]) -> list[str]:
  """The paper's figure, then the cells left out of the table grouped by reason."""
  lines = [""]
  figure = paper.get(paper_key) if paper_key else None
  if figure:
    values = "; ".join(f"{k} {v}" for k, v in figure["values"].items())
    lines += [f"Paper ({figure['source']}): {values}.", ""]
  by_reason: dict[str, list[str]] = {}
  for cell, why in reasons.items():
    by_reason.setdefault(why, []).append(cell)
  lines += [f"n/a ({why}): {', '.join(names)}" for why, names in by_reason.items()]
  return lines + ([""] if by_reason else [])


def _ordered(items: Sequence[str], preferred: Sequence[str] = ()) -> list[str]:
  seen = list(dict.fromkeys(items))
  return [x for x in preferred if x in seen] + [x for x in seen if x not in preferred]


def _pivot(cells: Sequence[Mapping], row_of: Callable[[Mapping], str],
           col_of: Callable[[Mapping], str], get: Getter, fmt: Callable[[float], str],
           col_order: Sequence[str] = ()) -> tuple[list[str], dict, list[str], dict]:
  """Table lines, {row: {col: value}}, columns, and n/a reasons.

  Cells without the metric are left out of the table and listed with their reason; a row or
  column with some measured cells shows "n/a" where a cell is missing.
  """
  measured, reasons = [], {}
  for cell in cells:
    value, why = get(cell["metrics"])
    if value is None:
      reasons[cell["name"]] = why or "not measured"
    else:
      measured.append((cell, value))
  cols = _ordered([col_of(c) for c, _ in measured], col_order)
  rows = _ordered([row_of(c) for c, _ in measured])
  values: dict[str, dict[str, float]] = {r: {} for r in rows}
  for cell, value in measured:
    values[row_of(cell)][col_of(cell)] = value
  body = [[r] + [fmt(values[r][c]) if c in values[r] else "n/a" for c in cols] for r in rows]
  return _table([""] + cols, body), values, cols, reasons


def _bar_plot(path: str, groups: Sequence[str], series: Mapping[str, Sequence[float | None]],
              title: str, ylabel: str) -> str | None:
  """Grouped bars; None (and no file) when there is nothing to draw."""
  if not any(v is not None for vs in series.values() for v in vs):
    return None
  fig, ax = plt.subplots(figsize=(min(16.0, max(4.0, 1.2 * len(groups) + 2)), 3.5))
  width = 0.8 / max(1, len(series))
  for i, (label, vs) in enumerate(series.items()):
    xs = [g + i * width for g in range(len(groups))]
    # A missing value draws no bar (NaN), so it cannot be mistaken for a measured 0.
    ax.bar(xs, [v if v is not None else math.nan for v in vs], width, label=label)
  ax.set_xticks([g + 0.4 - width / 2 for g in range(len(groups))])
  ax.set_xticklabels(groups, rotation=20, ha="right", fontsize=8)
  ax.set_title(title)
  ax.set_ylabel(ylabel)
  ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=80)
  plt.close(fig)
  return os.path.basename(path)


def _image(name: str | None) -> list[str]:
  return [f"![{name}]({name})", ""] if name else []


def _row_ckpt_task(cell: Mapping) -> str:
  return f"{cell['checkpoint']} / {cell['task']}"


def _setting(cell: Mapping) -> str:
  return str(cell["setting"])


def _marker_section(cells: Sequence[Mapping], out_dir: str, paper: Mapping) -> list[str]:
  per_cell, reasons = {}, {}
  for cell in cells:
    m = cell["metrics"].get("marker_accuracy", {})
    if m.get("available"):
      per_cell[cell["name"]] = m
    else:
      reasons[cell["name"]] = str(m.get("reason", "marker accuracy not measured"))
  cats = _ordered([cat for m in per_cell.values() for cat in m["per_category"]],
                  _PAPER_CATEGORIES)
  rows, series = [], {}
  for name, m in per_cell.items():
    accs = [m["per_category"].get(cat, {}).get("accuracy") for cat in cats]
    rows.append([name] + [_pct(a) if a is not None else "n/a"
                          for a in accs + [m.get("macro_accuracy")]])
    series[name] = accs
  png = _bar_plot(os.path.join(out_dir, "marker_accuracy.png"), cats, series,
                  "Marker inference accuracy", "accuracy")
  return (["## Marker inference accuracy by category", ""]
          + _table(["cell"] + cats + ["macro"], rows) + _notes(reasons, "marker_accuracy", paper)
          + _image(png))


def _reliability_plot(path: str, curves: Mapping[str, Sequence[Mapping]]) -> str | None:
  if not curves:
    return None
  fig, ax = plt.subplots(figsize=(4, 4))
  ax.plot([0, 1], [0, 1], "k--", linewidth=1, label="perfect")
  for name, bins in curves.items():
    full = [b for b in bins if b["n"]]
    ax.plot([b["mean_confidence"] for b in full], [b["accuracy"] for b in full], "o-",
            label=name)
  ax.set_xlabel("confidence (probability of the chosen value)")
  ax.set_ylabel("accuracy")
  ax.set_title("Reliability of inferred markers")
  ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=80)
  plt.close(fig)
  return os.path.basename(path)


def _calibration_section(cells: Sequence[Mapping], out_dir: str, paper: Mapping) -> list[str]:
  per_cell = {c["name"]: c["metrics"].get("calibration", {}) for c in cells}
  cats = _ordered([k for m in per_cell.values() for k in (m.get("per_category") or {})],
                  _PAPER_CATEGORIES)
  rows, reasons, curves = [], {}, {}
  for name, m in per_cell.items():
    if not m.get("available"):
      reasons[name] = str(m.get("reason", "calibration not measured"))
      continue
    eces = [m["pooled"]["ece"]] + [m["per_category"].get(c, {}).get("ece") for c in cats]
    rows.append([name] + [_num(e) if e is not None else "n/a" for e in eces])
    curves[name] = m["pooled"]["bins"]
  png = _reliability_plot(os.path.join(out_dir, "reliability.png"), curves)
  return (["## Calibration of inferred markers (expected calibration error)", ""]
          + _table(["cell", "pooled"] + cats, rows) + _notes(reasons, None, paper)
          + _image(png))


def _pivot_section(cells: Sequence[Mapping], out_dir: str, paper: Mapping, *, title: str,
                   get: Getter, fmt: Callable[[float], str], paper_key: str | None,
                   png_name: str, ylabel: str, row_of=_row_ckpt_task, col_of=_setting
                   ) -> list[str]:
  lines, values, cols, reasons = _pivot(cells, row_of, col_of, get, fmt, _SETTING_ORDER)
  series = {row: [v.get(c) for c in cols] for row, v in values.items()}
  png = _bar_plot(os.path.join(out_dir, png_name), cols, series, title, ylabel)
  return [f"## {title}", ""] + lines + _notes(reasons, paper_key, paper) + _image(png)


def _slice_value(node: Mapping, metric: str, category: str) -> float | None:
  if metric == "marker_accuracy":
    return (node.get("marker_accuracy") or {}).get(category)
  if metric in ("length_violation_rate", "nll_per_token"):
    return node.get(metric)
  return (node.get("scores") or {}).get(metric)


def _head_tail_section(cells: Sequence[Mapping], out_dir: str, paper: Mapping) -> list[str]:
  metrics = ("marker_accuracy", "length_violation_rate", "nll_per_token") + _HEAD_TAIL_SCORES
  entries, reasons = [], {}
  for cell in cells:
    sl = cell["metrics"].get("slices", {})
    if not sl.get("available"):
      reasons[cell["name"]] = str(sl.get("reason", "slices not computed"))
      continue
    for cat, groups in sl["by_category"].items():
      entries.append((cell["name"], cat, groups["head"], groups["tail"],
                      groups["tail_values"]))
  shown = [m for m in metrics if any(_slice_value(g, m, c) is not None
                                     for _, c, h, t, _ in entries for g in (h, t))]
  rows = []
  for name, cat, head, tail, tails in entries:
    cols = []
    for m in shown:
      pair = [_slice_value(g, m, cat) for g in (head, tail)]
      show = _num if m == "nll_per_token" else _pct
      cols.append(" / ".join(show(v) if v is not None else "n/a" for v in pair))
    rows.append([name, cat, f"{head['n']} / {tail['n']}", ", ".join(tails) or "-"] + cols)
  plotted = next((m for m in _HEAD_TAIL_SCORES + ("marker_accuracy",) if m in shown), None)
  png = None
  if plotted:
    groups = [f"{n}: {c}" for n, c, *_ in entries]
    series = {s: [_slice_value(g[2 + i], plotted, g[1]) for g in entries]
              for i, s in enumerate(("head", "tail"))}
    png = _bar_plot(os.path.join(out_dir, "head_tail.png"), groups, series,
                    f"Head vs tail: {plotted}", plotted)
  header = ["cell", "category", "n head / tail", "tail values (evaluated)"] + [
      f"{m} head / tail" for m in shown]
  return (["## Head vs tail (long tail: under the threshold share of training data)", "",
           "Each entry is head / tail; per-value slices are in cells.json "
           "(metrics.slices.by_category.<category>.values).", ""]
          + _table(header, rows) + _notes(reasons, "head_tail", paper) + _image(png))


def _check_cells(cells: Sequence[Mapping]) -> None:
  names = set()
  for i, cell in enumerate(cells):
    for field in ("name", "checkpoint", "task", "setting"):
      if not isinstance(cell.get(field), str) or not cell[field]:
        raise ValueError(f"report cell {i}: {field} must be a non-empty string")
    if not isinstance(cell.get("metrics"), Mapping):
      raise ValueError(f"report cell {i} ({cell['name']}): metrics must be a dict")
    if cell["name"] in names:
      raise ValueError(f"report cell {i}: duplicate name {cell['name']!r}")
    names.add(cell["name"])


def _score_getter(name: str) -> Getter:
  return lambda m: _get(m, "scores", name, value="mean")


def write(cells: Sequence[Mapping], out_dir: str, *,
          paper_figures: Mapping[str, Any] | None = None) -> str:
  """Writes report.md, cells.json and the PNGs into `out_dir`; returns report.md's path.

  `paper_figures` entries ({"source", "values": {label: text}}) replace the defaults of the
  same key in `PAPER_FIGURES`; a key mapped to None hides that figure.
  """
  _check_cells(cells)
  os.makedirs(out_dir, exist_ok=True)
  paper = {**PAPER_FIGURES, **(paper_figures or {})}
  overview = [[c["name"], c["checkpoint"], c["task"], c["setting"],
               str(c["metrics"].get("n_records", "n/a"))] for c in cells]
  lines = ["# Evaluation report", ""]
  lines += _table(["cell", "checkpoint", "task", "setting", "examples"], overview) + [""]
  lines += _marker_section(cells, out_dir, paper)
  lines += _calibration_section(cells, out_dir, paper)
  common = {"cells": cells, "out_dir": out_dir, "paper": paper}
  lines += _pivot_section(
      **common, title="Length violations by mode", paper_key="length",
      get=lambda m: _get(m, "length", value="violation_rate"), fmt=_pct,
      png_name="length_violations.png", ylabel="violation rate")
  lines += _pivot_section(
      **common, title="Relative length error by mode (mean |words - target| / target)",
      paper_key=None, get=lambda m: _get(m, "length", value="mean_abs_rel_error"), fmt=_pct,
      png_name="length_error.png", ylabel="mean |relative error|")
  lines += _pivot_section(
      **common, title="Judge win rate by mode (both orders, ties = 1/2)", paper_key="judge_win",
      get=_score_getter("judge_win"), fmt=_pct, png_name="judge_win.png", ylabel="win rate")
  lines += _pivot_section(
      **common, title="Reward-model win rate by mode", paper_key="reward_win",
      get=_score_getter("reward_win"), fmt=_pct, png_name="reward_win.png", ylabel="win rate")
  lines += _pivot_section(
      **common, title="Code pass@1 by task", paper_key="pass", get=_score_getter("pass"),
      fmt=_num, png_name="pass_at_1.png", ylabel="pass@1",
      row_of=lambda c: f"{c['checkpoint']} / {c['setting']}", col_of=lambda c: c["task"])
  lines += _pivot_section(
      **common, title="Reference-response NLL per token by mode", paper_key=None,
      get=lambda m: _get(m, "nll", value="nll_per_token"), fmt=_num,
      png_name="nll_per_token.png", ylabel="NLL / token (nats)")
  lines += _head_tail_section(cells, out_dir, paper)
  with open(os.path.join(out_dir, "cells.json"), "w", encoding="utf-8") as f:
    json.dump(list(cells), f, indent=1, ensure_ascii=False, default=str)
  path = os.path.join(out_dir, "report.md")
  with open(path, "w", encoding="utf-8") as f:
    f.write("\n".join(lines).rstrip() + "\n")
  return path


def write_from_files(cells_path: str, out_dir: str, *,
                     paper_figures_path: str | None = None) -> str:
  """`write` for the CLI: cells from a JSON list, or a .jsonl file with one cell per line."""
  if cells_path.endswith(".jsonl"):
    cells = [obj for _, obj in stats.read_jsonl(cells_path)]
  else:
    with open(cells_path, encoding="utf-8") as f:
      cells = json.load(f)
  if not isinstance(cells, list):
    raise ValueError(f"{cells_path}: expected a JSON list of cells, got {type(cells).__name__}")
  paper = None
  if paper_figures_path:
    with open(paper_figures_path, encoding="utf-8") as f:
      paper = json.load(f)
  return write(cells, out_dir, paper_figures=paper)
