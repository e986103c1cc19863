"""Marker frequency statistics and long-tail flags over annotated JSONL files.

A marker value is long-tail when fewer than `threshold` (default 5%) of the examples carry it
(method.md). Categorical categories (enums, small int ranges) get per-value counts and flags;
numeric ones get a summary (count, min, median, max). Also home of the one JSONL reader that
reports bad lines with file and line number, used by every stage that reads JSONL.
"""
from __future__ import annotations

import codecs
import dataclasses
import json
import os
import statistics
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from treasure_jax.markers import taxonomy as taxonomy_lib


class JsonlError(ValueError):
  """A bad line in a JSONL file; the message starts with `path:line:` (`path:` when the
  whole file is at fault, line 0)."""

  def __init__(self, path: str, line: int, reason: str):
    super().__init__(f"{path}:{line}: {reason}" if line else f"{path}: {reason}")
    self.path, self.line, self.reason = path, line, reason


def read_jsonl(path: str | os.PathLike, *, skip_invalid: bool = False,
               rejects: list | None = None, require_records: bool = False
               ) -> Iterator[tuple[int, dict]]:
  """Yields (1-based line number, object) for every non-blank line.

  A line that is not valid UTF-8, not valid JSON, or not a JSON object raises JsonlError, or,
  with `skip_invalid`, is skipped and appended to `rejects` as (line, reason, raw text). A
  UTF-8 byte-order mark before the first line (Windows editors write one) is dropped; line
  endings may be LF or CRLF. `require_records`: a file with no non-blank line is an error.
  """
  path = os.fspath(path)
  seen = False
  with open(path, "rb") as f:
    for lineno, raw in enumerate(f, start=1):
      if lineno == 1 and raw.startswith(codecs.BOM_UTF8):
        raw = raw[len(codecs.BOM_UTF8):]
      if not raw.strip():
        continue
      seen = True
      try:
        text = raw.decode("utf-8")
        obj = json.loads(text)
        if not isinstance(obj, dict):
          raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
      except UnicodeDecodeError as e:
        reason, text = f"invalid UTF-8 at byte {e.start}", raw.decode("utf-8", "replace")
      except ValueError as e:
        reason = f"invalid JSON: {e}" if isinstance(e, json.JSONDecodeError) else str(e)
      else:
        yield lineno, obj
        continue
      if not skip_invalid:
        raise JsonlError(path, lineno, reason)
      if rejects is not None:
        rejects.append((lineno, reason, text.rstrip("\n")))
  if require_records and not seen:
    raise JsonlError(path, 0, "no records: the file is empty")


@dataclasses.dataclass
class FrequencyTable:
  total: int
  threshold: float
  counts: dict[str, dict[Any, int]]
  numeric: dict[str, dict[str, float]]
  problems: dict[str, int]

  def share(self, category: str, value: Any) -> float:
    return self.counts.get(category, {}).get(value, 0) / self.total if self.total else 0.0

  def is_long_tail(self, category: str, value: Any) -> bool:
    return self.share(category, value) < self.threshold

  def tail_values(self, category: str) -> list:
    return [v for v in self.counts.get(category, {}) if self.is_long_tail(category, v)]

  def head_values(self, category: str) -> list:
    return [v for v in self.counts.get(category, {}) if not self.is_long_tail(category, v)]

  def to_dict(self) -> dict[str, Any]:
    cats = {}
    for cat, values in self.counts.items():
      cats[cat] = {str(v): {"count": n, "share": round(self.share(cat, v), 6),
                            "long_tail": self.is_long_tail(cat, v)} for v, n in values.items()}
    return {"total": self.total, "threshold": self.threshold, "categorical": cats,
            "numeric": self.numeric, "problems": self.problems}

  def format(self) -> str:
    """A readable table: one block per category, values by count, tail values flagged."""
    lines = [f"{self.total} examples; long tail = share < {self.threshold:.0%}"]
    for cat, values in self.counts.items():
      carried = sum(values.values())
      if not carried:
        continue  # A category no example carries would only list zeros.
      lines.append(f"\n{cat} (on {carried} examples)")
      for v, n in sorted(values.items(), key=lambda kv: (-kv[1], str(kv[0]))):
        flag = "tail" if self.is_long_tail(cat, v) else "head"
        lines.append(f"  {str(v):<24} {n:>8} {self.share(cat, v):>7.2%}  {flag}")
    for cat, summary in self.numeric.items():
      lines.append(f"\n{cat}: " + ", ".join(f"{k}={v:g}" for k, v in summary.items()))
    if self.problems:
      lines.append("\nproblems: " + ", ".join(f"{k} ({n})" for k, n in self.problems.items()))
    return "\n".join(lines)


def frequency_table(records: Iterable[Mapping], tax: taxonomy_lib.Taxonomy, *,
                    threshold: float = 0.05) -> FrequencyTable:
  """Counts `record["markers"]` over `records`; values the taxonomy lacks count as problems."""
  counts = {c.name: dict.fromkeys(c.values if c.kind == "enum" else
                                  range(c.minimum, c.maximum + 1), 0)
            for c in tax.categories if c.is_categorical}
  numbers: dict[str, list[float]] = {c.name: [] for c in tax.categories if not c.is_categorical}
  problems: dict[str, int] = {}
  total = 0
  for record in records:
    total += 1
    markers = record.get("markers") or {}
    if not isinstance(markers, Mapping):
      problems["markers is not an object"] = problems.get("markers is not an object", 0) + 1
      continue
    for p in tax.problems(markers):
      problems[p] = problems.get(p, 0) + 1
    for name, value in markers.items():
      if name not in tax:
        continue
      try:
        value = tax.category(name).convert(value)
      except ValueError:
        continue  # Already counted in `problems`.
      if name in counts:
        counts[name][value] += 1
      else:
        numbers[name].append(float(value))
  numeric = {name: {"count": len(xs), "min": min(xs), "median": statistics.median(xs),
                    "max": max(xs)} for name, xs in numbers.items() if xs}
  return FrequencyTable(total, threshold, counts, numeric, problems)


def table_for_file(path: str | os.PathLike, tax: taxonomy_lib.Taxonomy, *,
                   threshold: float = 0.05, skip_invalid: bool = False) -> FrequencyTable:
  """The table of an annotated JSONL; a line whose `markers` is not an object is a JsonlError
  (skipped with `skip_invalid`), like a line that is not JSON."""
  def records() -> Iterator[dict]:
    for line, record in read_jsonl(path, skip_invalid=skip_invalid, require_records=True):
      markers = record.get("markers")
      if markers is None or isinstance(markers, Mapping):
        yield record
      elif not skip_invalid:
        raise JsonlError(os.fspath(path), line, "'markers' must be an object {category: value}"
                         f", got {type(markers).__name__}")
  return frequency_table(records(), tax, threshold=threshold)


def dump(table: FrequencyTable, path: str | os.PathLike) -> None:
  with open(path, "w", encoding="utf-8") as f:
    json.dump(table.to_dict(), f, indent=1, ensure_ascii=False)


def from_dict(d: Mapping[str, Any], tax: taxonomy_lib.Taxonomy) -> FrequencyTable:
  """Inverse of `FrequencyTable.to_dict` (values converted back to their kinds)."""
  counts = {cat: {tax.category(cat).convert(v): info["count"] for v, info in values.items()}
            for cat, values in d["categorical"].items()}
  return FrequencyTable(d["total"], d["threshold"], counts, d.get("numeric", {}),
                        d.get("problems", {}))
