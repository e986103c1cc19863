"""One sweep cell's metrics JSON: every metric over all records and over every long-tail slice.

`cell_metrics` runs marker accuracy and calibration (`marker_metrics`), length control
(`length_metrics`), response likelihood (`response_nll`) and the per-example scores (`pass`
from `code_exec`, `judge_win` from `judge.pairwise`, `reward_win`/`reward` from
`judge.reward_compare`, or anything else numeric in `record["scores"]`) on one cell's records,
then the same, in compact form, on each head/tail and per-value slice (`slices`). A metric
without inputs is {"available": False, "reason": ...}, so the report can say why it is missing.
Producing the records (decoding, scoring the reference with the model) is the sweep's job.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from treasure_jax.eval import length_metrics
from treasure_jax.eval import marker_metrics
from treasure_jax.eval import slices
from treasure_jax.markers import stats
from treasure_jax.markers import taxonomy as taxonomy_lib

# Scores the report knows; others in record["scores"] are summarized too.
KNOWN_SCORES = ("pass", "judge_win", "reward_win")


def _where(record: Mapping, index: int) -> str:
  return f"record {index} (id={record.get('id')!r})"


def _nll_of(record: Mapping, index: int) -> tuple[float, int] | None:
  """(nll_sum, n_tokens) of one record, None without both; bad values raise ValueError."""
  nll, n_tokens = record.get("nll_sum"), record.get("n_tokens")
  if nll is None or n_tokens is None:
    return None
  if isinstance(n_tokens, bool) or not isinstance(n_tokens, int) or n_tokens < 1:
    raise ValueError(f"{_where(record, index)}: n_tokens = {n_tokens!r} is not a positive integer")
  if isinstance(nll, bool) or not isinstance(nll, (int, float)) or not math.isfinite(nll) \
      or nll < 0:
    raise ValueError(f"{_where(record, index)}: nll_sum = {nll!r} is not a finite number >= 0")
  return float(nll), n_tokens


def response_nll(records: Sequence[Mapping]) -> dict[str, Any]:
  """Mean NLL per token of reference responses, from per-example `nll_sum` and `n_tokens`.

  `nll_per_token` is token-weighted (sum of NLL / sum of tokens, the usual corpus figure);
  `mean_example_nll_per_token` weights examples equally. Records without both fields are left
  out and counted.
  """
  total_nll, total_tokens, per_example, skipped = 0.0, 0, [], 0
  for i, record in enumerate(records):
    pair = _nll_of(record, i)
    if pair is None:
      skipped += 1
      continue
    total_nll += pair[0]
    total_tokens += pair[1]
    per_example.append(pair[0] / pair[1])
  if not per_example:
    return {"available": False, "reason": "no record has nll_sum and n_tokens",
            "n_skipped": skipped}
  per_token = total_nll / total_tokens
  return {"available": True, "n": len(per_example), "n_tokens": total_tokens,
          "n_skipped": skipped, "nll_per_token": per_token, "perplexity": math.exp(per_token),
          "mean_example_nll_per_token": sum(per_example) / len(per_example)}


def _score_values(records: Sequence[Mapping]) -> dict[str, list[float | None]]:
  """{name: per-record value or None} over `record["scores"]`; booleans count as 0/1."""
  values: dict[str, list[float | None]] = {}
  for i, record in enumerate(records):
    for name, value in (record.get("scores") or {}).items():
      column = values.setdefault(name, [None] * len(records))
      if value is None:
        continue
      if not isinstance(value, (bool, int, float)) or not math.isfinite(float(value)):
        raise ValueError(f"{_where(record, i)}: scores[{name!r}] = {value!r} is not a number")
      column[i] = float(value)
  return values


def score_summary(records: Sequence[Mapping]) -> dict[str, dict[str, Any]]:
  """{name: {"mean", "n", "n_missing"}} over `record["scores"]`; booleans count as 0/1."""
  out = {}
  for name, column in _score_values(records).items():
    xs = [x for x in column if x is not None]
    out[name] = {"mean": sum(xs) / len(xs) if xs else None, "n": len(xs),
                 "n_missing": len(records) - len(xs)}
  return out


def _scores_block(records: Sequence[Mapping], notes: Mapping[str, str]) -> dict[str, Any]:
  block: dict[str, Any] = {}
  for name, summary in score_summary(records).items():
    block[name] = ({"available": True, **summary} if summary["n"] else
                   {"available": False, "reason": notes.get(name, "every value is missing")})
  for name in KNOWN_SCORES:
    if name not in block:
      block[name] = {"available": False, "reason": notes.get(name, "not measured")}
  return block


def _length_block(records: Sequence[Mapping], count_words: Callable[[str], int] | None,
                  cuts: tuple[int, int]) -> dict[str, Any]:
  try:
    return length_metrics.length_control(records, count_words=count_words, cuts=cuts)
  except RuntimeError as e:  # The annotate word counter is not importable.
    return {"available": False, "reason": str(e)}


def _marker_blocks(records: Sequence[Mapping], tax: taxonomy_lib.Taxonomy,
                   categories: Sequence[str] | None, n_bins: int, exclude_given: bool
                   ) -> tuple[dict[str, Any], dict[str, Any]]:
  accuracy = marker_metrics.marker_accuracy(records, tax=tax, categories=categories,
                                            exclude_given=exclude_given)
  accuracy = ({"available": True, **accuracy} if accuracy["per_category"] else
              {"available": False, "reason": "no record has a reference marker that the "
               "prompt did not give"})
  calib = marker_metrics.calibration(records, tax=tax, categories=categories, n_bins=n_bins,
                                     exclude_given=exclude_given)
  calib = ({"available": True, **calib} if calib["pooled"]["n"] else
           {"available": False, "reason": "no logprob_of_chosen for an inferred categorical "
            "marker"})
  return accuracy, calib


def _compact(records: Sequence[Mapping], tax: taxonomy_lib.Taxonomy,
             count_words: Callable[[str], int] | None, cuts: tuple[int, int],
             exclude_given: bool) -> dict[str, Any]:
  """The headline numbers of one slice (no confusion matrices or bins)."""
  accuracy, calib = _marker_blocks(records, tax, None, 10, exclude_given)
  length = _length_block(records, count_words, cuts)
  nll = response_nll(records)
  return {
      "n": len(records),
      "marker_accuracy": {n: e["accuracy"] for n, e in accuracy.get("per_category", {}).items()},
      "ece": calib["pooled"]["ece"] if calib["available"] else None,
      "length_violation_rate": length.get("violation_rate"),
      "nll_per_token": nll.get("nll_per_token"),
      "scores": {n: s["mean"] for n, s in score_summary(records).items()},
  }


def per_example(records: Sequence[Mapping], *, tax: taxonomy_lib.Taxonomy,
                freq: stats.FrequencyTable | None = None,
                count_words: Callable[[str], int] | None = None,
                categories: Sequence[str] | None = None,
                exclude_given: bool = True) -> dict[str, Any]:
  """The per-example values that the report's bootstrap intervals are computed from.

  Lists aligned with "id" (None where a record does not score the metric): "violated",
  "rel_error", "words", "target" (the asked N of a length_tokens target), "nll_sum",
  "n_tokens", "correct" {category: bool}, "reference" {categorical category: value as sliced},
  "scores" {name: float}; with `freq`, "train_majority" {category: the training data's most
  frequent value}.
  """
  cuts = tuple(tax.length_bucket_cuts)
  try:
    lengths = length_metrics.per_record(records, count_words=count_words, cuts=cuts)
  except RuntimeError:  # No word counter: the length block says why.
    lengths = [None] * len(records)
  nll = [_nll_of(r, i) for i, r in enumerate(records)]
  names = marker_metrics.categories_of(records, tax, categories)
  reference: dict[str, list[str | None]] = {}
  for category in tax.categories:
    if category.is_categorical and any(category.name in (r.get("reference_markers") or {})
                                       for r in records):
      column = [(r.get("reference_markers") or {}).get(category.name) for r in records]
      reference[category.name] = [None if v is None else str(slices.value_key(category, v))
                                  for v in column]
  out = {
      "id": [str(r.get("id", i)) for i, r in enumerate(records)],
      "violated": [None if x is None else bool(x["violated"]) for x in lengths],
      "rel_error": [None if x is None else x["rel_error"] for x in lengths],
      "words": [None if x is None else x["words"] for x in lengths],
      "target": [x["target"] if x and x["kind"] == "length_tokens" else None for x in lengths],
      "nll_sum": [None if x is None else x[0] for x in nll],
      "n_tokens": [None if x is None else x[1] for x in nll],
      "correct": {name: marker_metrics.correct_by_record(records, tax=tax, name=name,
                                                         exclude_given=exclude_given)
                  for name in names},
      "reference": reference,
      "scores": _score_values(records),
  }
  if freq is not None:
    out["train_majority"] = {name: str(max(counts, key=counts.get))
                             for name, counts in freq.counts.items()
                             if name in reference and counts and max(counts.values()) > 0}
  return out


def cell_metrics(records: Sequence[Mapping], *, tax: taxonomy_lib.Taxonomy | None = None,
                 freq: stats.FrequencyTable | None = None,
                 count_words: Callable[[str], int] | None = None,
                 categories: Sequence[str] | None = None, n_bins: int = 10,
                 exclude_given: bool = True,
                 score_notes: Mapping[str, str] | None = None) -> dict[str, Any]:
  """All metrics of one sweep cell, as one JSON-ready dict.

  Args:
    records: the cell's per-example result dicts (schema: `treasure_jax.eval` docstring).
    tax: the taxonomy (default: the paper's).
    freq: frequency table of the *training* data; without it the slices are unavailable.
    count_words: word counter for length control (default: the annotate package's).
    categories: restrict marker metrics to these categories.
    n_bins: reliability-diagram bins.
    exclude_given: leave markers the prompt gave out of marker accuracy and calibration.
    score_notes: why a score was not measured, e.g. {"judge_win": judge_result["reason"]}.
  """
  tax = tax or taxonomy_lib.default_taxonomy()
  cuts = tuple(tax.length_bucket_cuts)
  accuracy, calib = _marker_blocks(records, tax, categories, n_bins, exclude_given)
  out = {"n_records": len(records), "marker_accuracy": accuracy, "calibration": calib,
         "length": _length_block(records, count_words, cuts), "nll": response_nll(records),
         "scores": _scores_block(records, score_notes or {}),
         "per_example": per_example(records, tax=tax, freq=freq, count_words=count_words,
                                    categories=categories, exclude_given=exclude_given)}
  if freq is None:
    out["slices"] = {"available": False, "reason": "no training frequency table given"}
    return out
  sliced = slices.slice_records(records, freq, tax=tax)
  out["slices"] = {
      "available": bool(sliced), "threshold": freq.threshold,
      "by_category": slices.map_slices(
          sliced, lambda rs: _compact(rs, tax, count_words, cuts, exclude_given))}
  if not sliced:
    out["slices"]["reason"] = "no record has a categorical reference marker"
  return out


def with_scores(records: Sequence[Mapping], name: str, values: Sequence[Any]) -> list[dict]:
  """Copies of `records` with `scores[name]` set from `values` (same order and length).

  E.g. `with_scores(records, "pass", [r["passed"] for r in code_exec.run(records)])` or
  `with_scores(records, "judge_win", [e["score"] for e in judged["per_example"]])`.
  """
  if len(values) != len(records):
    raise ValueError(f"with_scores({name!r}): {len(values)} values for {len(records)} records")
  out = []
  for record, value in zip(records, values):
    copy = dict(record)
    copy["scores"] = {**(record.get("scores") or {}), name: value}
    out.append(copy)
  return out
