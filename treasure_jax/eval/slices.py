"""Long-tail slices: group per-example records by marker value, and into head and tail.

A value is long-tail when its share of the *training* data is under the frequency table's
threshold (5% by default; `markers.stats.FrequencyTable.is_long_tail`), so the table must be
built from the training set, not the evaluation set. An example is sliced by its
`reference_markers` (its gold properties: a Legal prompt is in the Legal slice whatever the
model inferred); NLL records can be sliced by another field. Only categorical categories are
sliced; a value the training data never had is tail (share 0). Which metrics run on a slice is
the caller's (`metrics.cell_metrics`).
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from treasure_jax.markers import stats
from treasure_jax.markers import taxonomy as taxonomy_lib

Slices = dict[str, dict[str, Any]]


def value_key(category: taxonomy_lib.Category, value: Any) -> Any:
  """The value as the frequency table stores it (converted to the category's type)."""
  try:
    return category.convert(value)
  except ValueError:
    return value


def slice_records(records: Sequence[Mapping], freq: stats.FrequencyTable, *,
                  tax: taxonomy_lib.Taxonomy | None = None,
                  categories: Sequence[str] | None = None,
                  field: str = "reference_markers") -> Slices:
  """{category: {"head", "tail", "values": {str(value): [...]}, "tail_values"}} of records.

  "tail_values" lists the evaluated values (as strings) that are long-tail in training.

  Categories default to the categorical ones of `tax` that the frequency table counts and
  some record carries; each record lands in exactly one value slice per category it carries.
  """
  tax = tax or taxonomy_lib.default_taxonomy()
  if categories is None:
    seen = {n for r in records for n in (r.get(field) or {})}
    categories = [c.name for c in tax.categories
                  if c.is_categorical and c.name in freq.counts and c.name in seen]
  out: Slices = {}
  for name in categories:
    category = tax.category(name)
    groups: dict[str, Any] = {"head": [], "tail": [], "values": {}, "tail_values": []}
    for record in records:
      value = (record.get(field) or {}).get(name)
      if value is None:
        continue
      key = value_key(category, value)
      tail = freq.is_long_tail(name, key)
      groups["tail" if tail else "head"].append(record)
      if tail and str(key) not in groups["tail_values"]:
        groups["tail_values"].append(str(key))
      groups["values"].setdefault(str(key), []).append(record)
    if groups["values"]:
      out[name] = groups
  return out


def map_slices(sliced: Slices, fn: Callable[[Sequence[Mapping]], Mapping[str, Any]]
               ) -> dict[str, Any]:
  """Applies `fn` to every slice: {category: {"head", "tail", "values", "tail_values"}}.

  An empty head or tail slice maps to {"n": 0}; `fn` never sees an empty list.
  """
  def run(group: Sequence[Mapping]) -> Mapping[str, Any]:
    return fn(group) if group else {"n": 0}

  return {name: {"head": run(groups["head"]), "tail": run(groups["tail"]),
                 "values": {v: run(rs) for v, rs in groups["values"].items()},
                 "tail_values": list(groups["tail_values"])}
          for name, groups in sliced.items()}
