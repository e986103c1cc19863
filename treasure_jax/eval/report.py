"""Markdown + PNG report of a sweep, laid out like the paper's tables, next to its figures.

`write(cells, out_dir, baselines=...)` takes one dict per sweep cell, {"name", "checkpoint",
"task", "setting", "metrics"} with `metrics` from `metrics.cell_metrics`, and writes
`report.md`, `cells.json` and PNG plots into `out_dir`. Each table is followed by the paper's
figure for the same measurement (`PAPER_FIGURES`, from shared/docs/method.md). Every rate and
mean carries its 95% percentile-bootstrap interval over examples and n (`intervals`, from the
cell's `metrics.per_example`); markers-vs-baseline differences on the same examples and head vs
tail are `report_compare`'s sections. Whatever was measured is shown; a missing metric is "n/a"
with its reason listed under the table. Rates are shown as percentages. Running the sweep is
not this module's job.
"""
from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from treasure_jax.eval import intervals
from treasure_jax.eval import plots
from treasure_jax.eval import report_compare
from treasure_jax.markers import stats

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

# (value, None) or (None, why it is missing) of one cell's metrics.
Getter = Callable[[Mapping[str, Any]], tuple[Any, str | None]]
NO_VALUES = "per-example values not recorded (a cell from an older sweep)"
MAJORITY = "majority class of the training data"
_NUMERIC = ("length_tokens", "quality")  # Exact-match rates: tabled, not plotted.


def _reason(metrics: Mapping[str, Any], *path: str) -> str | None:
  """Why metrics[path...] is missing, or None when it was measured."""
  node: Any = metrics
  for key in path:
    if not isinstance(node, Mapping) or key not in node:
      return f"{'.'.join(path)} not measured"
    node = node[key]
    if isinstance(node, Mapping) and node.get("available") is False:
      return str(node.get("reason", "not available"))
  return None


def ci_getter(metric: str, *path: str) -> Getter:
  """The interval of `metric` when the block at `path` was measured, else its reason."""
  def get(metrics: Mapping[str, Any]) -> tuple[Any, str | None]:
    why = _reason(metrics, *path)
    if why:
      return None, why
    ci = intervals.estimate([metrics], metric)
    return (ci, None) if ci and ci["n"] else (None, NO_VALUES if ci is None else "n = 0")
  return get


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
  """A Markdown table, or a one-line note when no cell measured the metric."""
  if not rows:
    return ["n/a for every cell (reasons below)."]
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  return lines + ["| " + " | ".join(row) + " |" for row in rows]


def notes(reasons: Mapping[str, str], paper_key: str | None,
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


def ordered(items: Sequence[str], preferred: Sequence[str] = ()) -> list[str]:
  seen = list(dict.fromkeys(items))
  return [x for x in preferred if x in seen] + [x for x in seen if x not in preferred]


def _pivot(cells: Sequence[Mapping], row_of: Callable[[Mapping], str],
           col_of: Callable[[Mapping], str], get: Getter, fmt: Callable[[Any], str],
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
  cols = ordered([col_of(c) for c, _ in measured], col_order)
  rows = ordered([row_of(c) for c, _ in measured])
  values: dict[str, dict[str, Any]] = {r: {} for r in rows}
  for cell, value in measured:
    values[row_of(cell)][col_of(cell)] = value
  body = [[r] + [fmt(values[r][c]) if c in values[r] else "n/a" for c in cols] for r in rows]
  return table([""] + cols, body), values, cols, reasons


def image(name: str | None) -> list[str]:
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
      per_cell[cell["name"]] = cell["metrics"]
    else:
      reasons[cell["name"]] = str(m.get("reason", "marker accuracy not measured"))
  cats = ordered([cat for m in per_cell.values() for cat in m["marker_accuracy"]["per_category"]],
                 _PAPER_CATEGORIES)
  rows, series = [], {}
  for name, m in per_cell.items():
    cis = [intervals.estimate([m], f"acc:{cat}")
           if cat in m["marker_accuracy"]["per_category"] else None for cat in cats]
    macro = m["marker_accuracy"].get("macro_accuracy")
    rows.append([name] + [intervals.fmt(ci, "acc:") for ci in cis]
                + [_pct(macro) if macro is not None else "n/a"])
    series[name] = cis
  majority = [intervals.pooled(list(per_cell.values()), f"majority:{cat}") for cat in cats]
  if any(majority):
    rows.append([MAJORITY] + [intervals.fmt(ci, "acc:") for ci in majority] + ["-"])
    series[MAJORITY] = majority
  png = _marker_plot(out_dir, cells, cats, series)
  return (["## Marker inference accuracy by category", "",
           "Entries: accuracy [95% bootstrap interval] n = examples scored; majority class: "
           "the share of those examples whose reference is the training data's most frequent "
           "value; macro: mean of the category accuracies (no interval).", ""]
          + table(["cell"] + cats + ["macro"], rows) + notes(reasons, "marker_accuracy", paper)
          + image(png))


def _marker_plot(out_dir: str, cells: Sequence[Mapping], cats: Sequence[str],
                 series: Mapping[str, Sequence[Any]]) -> str | None:
  """Categorical categories only; the cells that infer every marker (settings none /
  inferred) when there are such, at most `plots.MAX_SERIES`, then the majority class."""
  tax_cats = [i for i, c in enumerate(cats) if c not in _NUMERIC]
  inferring = {c["name"] for c in cells if c["setting"] in ("none", "inferred")}
  names = [n for n in series if n in inferring] or [n for n in series if n != MAJORITY]
  shown = {n: [series[n][i] for i in tax_cats] for n in names[:plots.MAX_SERIES]}
  if MAJORITY in series:
    shown[MAJORITY] = [series[MAJORITY][i] for i in tax_cats]
  return plots.bars(os.path.join(out_dir, "marker_accuracy.png"), [cats[i] for i in tax_cats],
                    shown, title="Marker inference accuracy vs the training data's majority "
                    "class (95% CI)", label="accuracy (%)", pct=True, reference=[MAJORITY])


def _pct(x: float) -> str:
  return f"{100 * x:.1f}%"


def _calibration_section(cells: Sequence[Mapping], out_dir: str, paper: Mapping) -> list[str]:
  per_cell = {c["name"]: c["metrics"].get("calibration", {}) for c in cells}
  cats = ordered([k for m in per_cell.values() for k in (m.get("per_category") or {})],
                 _PAPER_CATEGORIES)
  rows, reasons, curves = [], {}, {}
  for name, m in per_cell.items():
    if not m.get("available"):
      reasons[name] = str(m.get("reason", "calibration not measured"))
      continue
    eces = [m["pooled"]] + [m["per_category"].get(c) for c in cats]
    rows.append([name] + [f"{e['ece']:.3f} (n={e['n']})" if e else "n/a" for e in eces])
    curves[name] = m["pooled"]["bins"]
  png = plots.reliability(os.path.join(out_dir, "reliability.png"), curves)
  return (["## Calibration of inferred markers (expected calibration error)", "",
           "ECE is a binned statistic, shown without an interval.", ""]
          + table(["cell", "pooled"] + cats, rows) + notes(reasons, None, paper)
          + image(png))


def _pivot_section(cells: Sequence[Mapping], out_dir: str, paper: Mapping, *, title: str,
                   get: Getter, metric: str, paper_key: str | None, png_name: str,
                   ylabel: str, row_of=_row_ckpt_task, col_of=_setting, label_of=str
                   ) -> list[str]:
  fmt = lambda ci: intervals.fmt(ci, metric)  # noqa: E731
  lines, values, cols, reasons = _pivot(cells, row_of, col_of, get, fmt, _SETTING_ORDER)
  series = {row: [v.get(c) for c in cols] for row, v in values.items()}
  groups = [label_of(c) for c in cols]
  png = plots.bars(os.path.join(out_dir, png_name), groups, series, title=f"{title} (95% CI)",
                   label=ylabel, pct=intervals.is_rate(metric))
  return [f"## {title}", ""] + lines + notes(reasons, paper_key, paper) + image(png)


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


def write(cells: Sequence[Mapping], out_dir: str, *,
          paper_figures: Mapping[str, Any] | None = None,
          baselines: Sequence[str] = ()) -> str:
  """Writes report.md, cells.json and the PNGs into `out_dir`; returns report.md's path.

  `paper_figures` entries ({"source", "values": {label: text}}) replace the defaults of the
  same key in `PAPER_FIGURES`; a key mapped to None hides that figure. `baselines`: the
  checkpoints trained without markers, compared with the others on the same examples.
  """
  _check_cells(cells)
  os.makedirs(out_dir, exist_ok=True)
  paper = {**PAPER_FIGURES, **(paper_figures or {})}
  overview = [[c["name"], c["checkpoint"], c["task"], c["setting"],
               str(c["metrics"].get("n_records", "n/a"))] for c in cells]
  lines = ["# Evaluation report", "",
           "Intervals: 95% percentile bootstrap over examples (2,000 resamples, seed 0); "
           "n = examples.", ""]
  lines += table(["cell", "checkpoint", "task", "setting", "examples"], overview) + [""]
  lines += _marker_section(cells, out_dir, paper)
  lines += _calibration_section(cells, out_dir, paper)
  common = {"cells": cells, "out_dir": out_dir, "paper": paper}
  lines += _pivot_section(
      **common, title="Length violations by mode", paper_key="length", metric="violation",
      get=ci_getter("violation", "length"), png_name="length_violations.png",
      ylabel="responses longer than asked (%)", label_of=report_compare.mode_label)
  lines += _pivot_section(
      **common, title="Relative length error by mode (mean |words - target| / target)",
      paper_key=None, metric="abs_rel_error", get=ci_getter("abs_rel_error", "length"),
      png_name="length_error.png", ylabel="mean |relative error| (%)",
      label_of=report_compare.mode_label)
  lines += report_compare.length_scatter_section(cells, out_dir)
  lines += report_compare.steering_section(cells, baselines)
  for name, title, png, ylabel in (
      ("judge_win", "Judge win rate by mode (both orders, ties = 1/2)", "judge_win.png",
       "win rate (%)"),
      ("reward_win", "Reward-model win rate by mode", "reward_win.png", "win rate (%)")):
    lines += _pivot_section(**common, title=title, paper_key=name, metric=f"score:{name}",
                            get=ci_getter(f"score:{name}", "scores", name), png_name=png,
                            ylabel=ylabel)
  lines += _pivot_section(
      **common, title="Code pass@1 by task", paper_key="pass", metric="score:pass",
      get=ci_getter("score:pass", "scores", "pass"), png_name="pass_at_1.png", ylabel="pass@1",
      row_of=lambda c: f"{c['checkpoint']} / {c['setting']}", col_of=lambda c: c["task"])
  lines += _pivot_section(
      **common, title="Reference-response NLL per token by mode", paper_key=None, metric="nll",
      get=ci_getter("nll", "nll"), png_name="nll_per_token.png", ylabel="NLL / token (nats)")
  lines += report_compare.paired_section(cells, baselines)
  lines += report_compare.head_tail_section(cells, out_dir, notes(
      {}, "head_tail", paper))
  with open(os.path.join(out_dir, "cells.json"), "w", encoding="utf-8") as f:
    json.dump(list(cells), f, indent=1, ensure_ascii=False, default=str)
  path = os.path.join(out_dir, "report.md")
  with open(path, "w", encoding="utf-8") as f:
    f.write("\n".join(lines).rstrip() + "\n")
  return path


def write_from_files(cells_path: str, out_dir: str, *,
                     paper_figures_path: str | None = None,
                     baselines: Sequence[str] = ()) -> str:
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
  return write(cells, out_dir, paper_figures=paper, baselines=baselines)
