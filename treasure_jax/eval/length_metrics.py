"""Length control metrics: violation rate and relative length error (AlpacaEval-LI protocol).

The paper's AlpacaEval-LI run replaces a natural-language length instruction ("answer in at
most N words") by a marker. The mode (no instruction, NL instruction, markers inferred, marker
fixed) is the sweep cell's setting; every mode is scored the same way against the example's
target, so the rates are comparable across modes.

Target of an example: `record["length_target"]` ({"length_tokens": N} or {"length_bucket":
name}) when present, else the given (prompt-side) `length_tokens` marker, else the given
`length_bucket` marker. Records without a target are counted and left out.

Definitions (words counted on `record["response"]`, the text after the marker list, with the
annotate package's word counter `text_stats.count_words`, which produced the training
`length_tokens` markers):
- length_tokens = N: a violation is a response of more than N words (AlpacaEval-LI's "max
  length" rule). Relative error = (words - N) / N, signed and absolute.
- length_bucket = b: a violation is a word count outside b's range, as `taxonomy.length_bucket`
  assigns it with the taxonomy's cuts (c0, c1): concise = [0, c0 - 1], medium = [c0, c1],
  long = [c1 + 1, inf). Relative error = distance to the range / the nearest bound (0 inside).
Generating responses is the sweep's job.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from treasure_jax.markers import taxonomy as taxonomy_lib

KINDS = ("length_tokens", "length_bucket")
_BUCKETS = ("concise", "medium", "long")


def default_word_counter() -> Callable[[str], int]:
  """`annotate.text_stats.count_words`, imported on first use.

  It is the counter that produced the training `length_tokens` markers; a different one would
  make the lengths disagree with them, so its absence raises RuntimeError rather than falling
  back.
  """
  try:
    from treasure_jax.annotate import text_stats  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise RuntimeError("length metrics need treasure_jax.annotate.text_stats.count_words, "
                       f"which cannot be imported: {e}") from None
  return text_stats.count_words


def target_of(record: Mapping, index: int = 0) -> tuple[str, Any] | None:
  """(kind, target) of one record, or None when it has none; bad targets raise ValueError."""
  where = f"record {index} (id={record.get('id')!r})"
  if record.get("length_target"):
    source, field = record["length_target"], "length_target"
  else:
    source, field = record.get("markers_given") or {}, "markers_given"
  if not isinstance(source, Mapping):
    raise ValueError(f"{where}: {field} must be a dict, got {type(source).__name__}")
  for kind in KINDS:
    if source.get(kind) is None:
      continue
    value = source[kind]
    if kind == "length_tokens":
      if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
      if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{where}: {field}.length_tokens = {value!r} is not a positive integer")
    elif value not in _BUCKETS:
      raise ValueError(f"{where}: {field}.length_bucket = {value!r}; allowed: "
                       f"{', '.join(_BUCKETS)}")
    return kind, value
  return None


def bucket_range(bucket: str, cuts: tuple[int, int]) -> tuple[int, float]:
  """Inclusive word-count range of a bucket, matching `taxonomy.length_bucket`."""
  return {"concise": (0, cuts[0] - 1), "medium": (cuts[0], cuts[1]),
          "long": (cuts[1] + 1, float("inf"))}[bucket]


def score_one(n_words: int, kind: str, target: Any, cuts: tuple[int, int] = (300, 1000)
              ) -> tuple[bool, float]:
  """(violated, relative error) of one response; see the module docstring."""
  if kind == "length_tokens":
    return n_words > target, (n_words - target) / target
  violated = taxonomy_lib.length_bucket(n_words, cuts) != target
  lo, hi = bucket_range(target, cuts)
  if n_words > hi:
    return violated, (n_words - hi) / max(hi, 1)
  if n_words < lo:
    return violated, (lo - n_words) / lo
  return violated, 0.0


def _summary(rows: Sequence[tuple[int, bool, float]]) -> dict[str, Any]:
  n = len(rows)
  return {"n": n, "violations": sum(v for _, v, _ in rows),
          "violation_rate": sum(v for _, v, _ in rows) / n,
          "mean_words": sum(w for w, _, _ in rows) / n,
          "mean_rel_error": sum(e for _, _, e in rows) / n,
          "mean_abs_rel_error": sum(abs(e) for _, _, e in rows) / n}


def per_record(records: Sequence[Mapping], *,
               count_words: Callable[[str], int] | None = None,
               cuts: tuple[int, int] | None = None) -> list[dict[str, Any] | None]:
  """Per record, in order: {"kind", "target", "words", "violated", "rel_error"}, or None when
  it has no length target. `cuts` defaults to the default taxonomy's length-bucket cuts."""
  cuts = tuple(cuts or taxonomy_lib.default_taxonomy().length_bucket_cuts)
  out: list[dict[str, Any] | None] = []
  for i, record in enumerate(records):
    target = target_of(record, i)
    if target is None:
      out.append(None)
      continue
    if count_words is None:
      count_words = default_word_counter()
    response = record.get("response")
    if not isinstance(response, str):
      raise ValueError(f"record {i} (id={record.get('id')!r}): response must be a string, got "
                       f"{type(response).__name__}")
    n_words = int(count_words(response))
    violated, error = score_one(n_words, *target, cuts)
    out.append({"kind": target[0], "target": target[1], "words": n_words,
                "violated": violated, "rel_error": error})
  return out


def length_control(records: Sequence[Mapping], *,
                   count_words: Callable[[str], int] | None = None,
                   cuts: tuple[int, int] | None = None) -> dict[str, Any]:
  """Violation rate and relative length error over the records that have a length target.

  Returns {"available": True, "n", "n_without_target", "violation_rate", "mean_abs_rel_error",
  "by_kind": {kind: {"n", "violations", "violation_rate", "mean_words", "mean_rel_error",
  "mean_abs_rel_error"}}}, or {"available": False, "reason"} when no record has a target.
  `cuts` defaults to the default taxonomy's length-bucket cuts.
  """
  scored = per_record(records, count_words=count_words, cuts=cuts)
  rows: dict[str, list[tuple[int, bool, float]]] = {}
  for row in scored:
    if row is not None:
      rows.setdefault(row["kind"], []).append((row["words"], row["violated"], row["rel_error"]))
  missing = sum(row is None for row in scored)
  if not rows:
    return {"available": False, "reason": "no record has a length target (length_target, or "
            "a given length_tokens/length_bucket marker)", "n_without_target": missing}
  everything = [row for kind_rows in rows.values() for row in kind_rows]
  overall = _summary(everything)
  return {"available": True, "n": overall["n"], "n_without_target": missing,
          "violation_rate": overall["violation_rate"],
          "mean_abs_rel_error": overall["mean_abs_rel_error"],
          "by_kind": {kind: _summary(rows[kind]) for kind in KINDS if kind in rows}}
