"""Marker inference metrics: per-category accuracy, confusion matrices and calibration.

Inputs are per-example result dicts (schema in `treasure_jax/eval/__init__.py`); the fields read
here are `reference_markers` (gold), `markers_generated` (parsed from the completion-side list),
`markers_given` (prompt-side, fixed by the user) and `logprob_of_chosen` ({category: natural-log
probability the model gave the whole value string it chose}).

A category counts for an example when the reference has it and, by default, the prompt did not
give it: a given marker is copied, not inferred. A generated list that lacks the category counts
as wrong, with the prediction `MISSING` in the confusion matrix. Categorical categories
(enums, small int ranges) get accuracy and a confusion matrix; numeric ones (length_tokens,
quality) get exact-match rate and mean absolute error. Also home of the seqio metric_fn.
Running the model and parsing its output is the sweep's job.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from treasure_jax.markers import taxonomy as taxonomy_lib
from treasure_jax.markers import template

MISSING = "<missing>"
# Log-probabilities slightly above 0 come from float round-off in summed token log-probs.
_LOGPROB_SLACK = 1e-4


def _where(record: Mapping, index: int) -> str:
  return f"record {index} (id={record.get('id')!r})"


def _convert(category: taxonomy_lib.Category, value: Any) -> Any:
  """The value as the category's type; a value outside the taxonomy stays as its text."""
  try:
    return category.convert(value)
  except ValueError:
    return str(value)


def _pairs(records: Sequence[Mapping], tax: taxonomy_lib.Taxonomy, name: str,
           exclude_given: bool) -> list[tuple[int, Any, Any]]:
  """(record index, reference, prediction or MISSING) for every record that scores `name`."""
  category = tax.category(name)
  out = []
  for i, record in enumerate(records):
    reference = (record.get("reference_markers") or {}).get(name)
    if reference is None:
      continue
    if exclude_given and name in (record.get("markers_given") or {}):
      continue
    generated = record.get("markers_generated") or {}
    predicted = _convert(category, generated[name]) if name in generated else MISSING
    out.append((i, _convert(category, reference), predicted))
  return out


def correct_by_record(records: Sequence[Mapping], *, tax: taxonomy_lib.Taxonomy, name: str,
                      exclude_given: bool = True) -> list[bool | None]:
  """Per record, in order: whether `name` was inferred right (a missing value is wrong), or
  None when the record does not score it (no reference, or given in the prompt)."""
  out: list[bool | None] = [None] * len(records)
  for i, ref, pred in _pairs(records, tax, name, exclude_given):
    out[i] = pred != MISSING and str(ref) == str(pred)
  return out


def categories_of(records: Sequence[Mapping], tax: taxonomy_lib.Taxonomy,
                  categories: Sequence[str] | None) -> list[str]:
  """`categories` (checked), else the taxonomy's categories some reference carries."""
  if categories is not None:
    for name in categories:
      tax.category(name)  # Raises MarkerError naming the known categories.
    return list(categories)
  seen = {n for r in records for n in (r.get("reference_markers") or {})}
  return [n for n in tax.names if n in seen]


def confusion_matrix(pairs: Sequence[tuple[Any, Any]],
                     category: taxonomy_lib.Category | None = None) -> dict[str, Any]:
  """{"labels", "matrix"}: matrix[i][j] = count of reference labels[i] predicted as labels[j].

  Labels: the category's own values in taxonomy order (only those that occur), then any other
  value in order of first appearance, then MISSING.
  """
  occurring = {str(v) for pair in pairs for v in pair}
  own = [str(v) for v in (category.values if category is not None else ())]
  labels = [v for v in own if v in occurring]
  for pair in pairs:
    for v in map(str, pair):
      if v not in labels and v != MISSING:
        labels.append(v)
  if MISSING in occurring:
    labels.append(MISSING)
  index = {label: i for i, label in enumerate(labels)}
  matrix = [[0] * len(labels) for _ in labels]
  for reference, predicted in pairs:
    matrix[index[str(reference)]][index[str(predicted)]] += 1
  return {"labels": labels, "matrix": matrix}


def marker_accuracy(records: Sequence[Mapping], *, tax: taxonomy_lib.Taxonomy | None = None,
                    categories: Sequence[str] | None = None,
                    exclude_given: bool = True) -> dict[str, Any]:
  """Per-category inference accuracy; {"per_category": {...}, "macro_accuracy", "n_records"}.

  Categorical: {"n", "correct", "accuracy", "missing", "confusion"}. Numeric: {"n", "accuracy"
  (exact match), "missing", "mean_abs_error" (over examples with a prediction)}.
  `macro_accuracy` averages the categorical accuracies (None when there are none).
  """
  tax = tax or taxonomy_lib.default_taxonomy()
  per_category: dict[str, Any] = {}
  for name in categories_of(records, tax, categories):
    category = tax.category(name)
    pairs = [(ref, pred) for _, ref, pred in _pairs(records, tax, name, exclude_given)]
    if not pairs:
      continue
    correct = sum(1 for ok in correct_by_record(records, tax=tax, name=name,
                                                exclude_given=exclude_given) if ok)
    entry = {"n": len(pairs), "correct": correct, "accuracy": correct / len(pairs),
             "missing": sum(1 for _, pred in pairs if pred == MISSING)}
    if category.is_categorical:
      entry["confusion"] = confusion_matrix(pairs, category)
    else:
      errors = [abs(float(ref) - float(pred)) for ref, pred in pairs
                if isinstance(ref, (int, float)) and isinstance(pred, (int, float))]
      entry["mean_abs_error"] = sum(errors) / len(errors) if errors else None
    per_category[name] = entry
  categorical = [e["accuracy"] for n, e in per_category.items()
                 if tax.category(n).is_categorical]
  return {"per_category": per_category, "n_records": len(records),
          "macro_accuracy": sum(categorical) / len(categorical) if categorical else None}


def expected_calibration_error(confidences: Sequence[float], correct: Sequence[bool], *,
                               n_bins: int = 10) -> dict[str, Any]:
  """ECE over equal-width confidence bins on [0, 1]; {"ece", "n", "bins"}.

  ECE = sum_b (n_b / n) * |accuracy_b - mean confidence_b|. A confidence of exactly 1.0 falls in
  the last bin. Bins: {"lo", "hi", "n", "mean_confidence", "accuracy"} (the last two None when
  the bin is empty).
  """
  if len(confidences) != len(correct):
    raise ValueError(f"expected_calibration_error: {len(confidences)} confidences but "
                     f"{len(correct)} correctness flags")
  if n_bins < 1:
    raise ValueError(f"expected_calibration_error: n_bins must be >= 1, got {n_bins}")
  members: list[list[int]] = [[] for _ in range(n_bins)]
  for i, c in enumerate(confidences):
    if not 0.0 <= c <= 1.0:
      raise ValueError(f"expected_calibration_error: confidence {i} is {c}, not in [0, 1]")
    members[min(int(c * n_bins), n_bins - 1)].append(i)
  n, ece, bins = len(confidences), 0.0, []
  for b, idx in enumerate(members):
    conf = sum(confidences[i] for i in idx) / len(idx) if idx else None
    acc = sum(1 for i in idx if correct[i]) / len(idx) if idx else None
    if idx:
      ece += len(idx) / n * abs(acc - conf)
    bins.append({"lo": b / n_bins, "hi": (b + 1) / n_bins, "n": len(idx),
                 "mean_confidence": conf, "accuracy": acc})
  return {"ece": ece if n else None, "n": n, "bins": bins}


def _confidence(record: Mapping, index: int, name: str) -> float | None:
  logprob = (record.get("logprob_of_chosen") or {}).get(name)
  if logprob is None:
    return None
  if isinstance(logprob, bool) or not isinstance(logprob, (int, float)) or math.isnan(logprob):
    raise ValueError(f"{_where(record, index)}: logprob_of_chosen[{name!r}] = {logprob!r} is "
                     "not a number")
  if logprob > _LOGPROB_SLACK:
    raise ValueError(f"{_where(record, index)}: logprob_of_chosen[{name!r}] = {logprob} is a "
                     "log-probability and must be <= 0")
  return math.exp(min(logprob, 0.0))


def calibration(records: Sequence[Mapping], *, tax: taxonomy_lib.Taxonomy | None = None,
                categories: Sequence[str] | None = None, n_bins: int = 10,
                exclude_given: bool = True) -> dict[str, Any]:
  """Calibration of the inferred categorical markers, from exp(logprob_of_chosen[cat]).

  Returns {"per_category": {cat: ECE dict}, "pooled": ECE dict over all categories}. Examples
  without a generated value or without a log-probability for the category are left out.
  """
  tax = tax or taxonomy_lib.default_taxonomy()
  per_category, pooled_conf, pooled_ok = {}, [], []
  for name in categories_of(records, tax, categories):
    if not tax.category(name).is_categorical:
      continue
    conf, ok = [], []
    for i, ref, pred in _pairs(records, tax, name, exclude_given):
      c = _confidence(records[i], i, name) if pred != MISSING else None
      if c is not None:
        conf.append(c)
        ok.append(str(ref) == str(pred))
    if conf:
      per_category[name] = expected_calibration_error(conf, ok, n_bins=n_bins)
      pooled_conf += conf
      pooled_ok += ok
  pooled = expected_calibration_error(pooled_conf, pooled_ok, n_bins=n_bins)
  return {"per_category": per_category, "pooled": pooled}


def _as_markers(item: Any, tax: taxonomy_lib.Taxonomy) -> Mapping:
  if isinstance(item, bytes):
    item = item.decode("utf-8", "replace")
  if isinstance(item, str):
    return template.parse_completion(item, tax).markers
  if isinstance(item, Mapping):
    return item
  raise TypeError(f"seqio marker metric: expected a completion string or a marker dict, got "
                  f"{type(item).__name__}")


def make_seqio_marker_accuracy(tax: taxonomy_lib.Taxonomy | None = None,
                               categories: Sequence[str] | None = None
                               ) -> Callable[[Sequence[Any], Sequence[Any]], dict[str, float]]:
  """A seqio `metric_fn(targets, predictions)` for marker inference accuracy.

  Targets and predictions are completion texts (marker list + response, parsed with
  `template.parse_completion`) or marker dicts. Returns flat scalars
  {"marker_accuracy/<category>": ..., "marker_accuracy/macro": ...} (accuracies in [0, 1]).
  """
  tax = tax or taxonomy_lib.default_taxonomy()

  def seqio_marker_accuracy(targets: Sequence[Any], predictions: Sequence[Any]
                            ) -> dict[str, float]:
    if len(targets) != len(predictions):
      raise ValueError(f"seqio marker metric: {len(targets)} targets but "
                       f"{len(predictions)} predictions")
    records = [{"reference_markers": _as_markers(t, tax),
                "markers_generated": _as_markers(p, tax)} for t, p in zip(targets, predictions)]
    result = marker_accuracy(records, tax=tax, categories=categories, exclude_given=False)
    out = {f"marker_accuracy/{n}": e["accuracy"] for n, e in result["per_category"].items()}
    if result["macro_accuracy"] is not None:
      out["marker_accuracy/macro"] = result["macro_accuracy"]
    return out

  return seqio_marker_accuracy
