"""The marker taxonomy: categories, their kinds and allowed values, in a fixed order.

A taxonomy is data: the paper's default (13 categories, 90 markers; see
shared/docs/method.md) is built in, and users define their own or extend the default in a JSON
or YAML file. It serializes to JSON so that a checkpoint carries the exact taxonomy it was
trained with. Text formatting of marker lists lives in `template`; dropout in `dropout`.

Two validation paths, on purpose:
- `Taxonomy.validate` is for *user-given* markers (CLI flags, configs): it raises MarkerError
  naming the category and the allowed values.
- `Taxonomy.problems` is for data and model output: it never raises, it reports.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

KINDS = ("enum", "int", "float")
# An int category with a closed range this small is treated as categorical (quality_bucket 1..4):
# it gets frequency counts and long-tail flags like an enum.
_CATEGORICAL_INT_RANGE = 16


class MarkerError(ValueError):
  """A user-given marker (or taxonomy definition) is invalid."""


@dataclasses.dataclass(frozen=True)
class Category:
  """One marker category, e.g. `domain` (enum) or `length_tokens` (int)."""
  name: str
  kind: str
  values: tuple[str, ...] = ()
  minimum: int | None = None
  maximum: int | None = None
  description: str = ""
  value_descriptions: Mapping[str, str] = dataclasses.field(default_factory=dict)
  derived_from: str | None = None

  def __post_init__(self):
    where = f"category {self.name!r}"
    if not self.name or not self.name.replace("_", "").isalnum():
      raise MarkerError(f"{where}: a name is letters, digits and '_' only")
    if self.kind not in KINDS:
      raise MarkerError(f"{where}: kind {self.kind!r} is not one of {', '.join(KINDS)}")
    if self.kind == "enum":
      if not self.values:
        raise MarkerError(f"{where}: an enum needs at least one value")
      for v in self.values:
        if not isinstance(v, str) or not v or any(c.isspace() or c in "<>" for c in v):
          raise MarkerError(f"{where}: value {v!r} must be a non-empty string without spaces or <>")
      dup = {v for v in self.values if self.values.count(v) > 1}
      if dup:
        raise MarkerError(f"{where}: duplicate values {sorted(dup)}")
      if "Unspecified" in self.values:
        raise MarkerError(f"{where}: 'Unspecified' means 'no marker' and cannot be a value")
    elif self.values:
      raise MarkerError(f"{where}: only enum categories list values")
    if self.minimum is not None and self.maximum is not None and self.minimum > self.maximum:
      raise MarkerError(f"{where}: minimum {self.minimum} > maximum {self.maximum}")

  @property
  def is_categorical(self) -> bool:
    if self.kind == "enum":
      return True
    return (self.kind == "int" and self.minimum is not None and self.maximum is not None
            and self.maximum - self.minimum < _CATEGORICAL_INT_RANGE)

  def allowed(self) -> str:
    """Human-readable description of the allowed values, for error messages."""
    if self.kind == "enum":
      return ", ".join(self.values)
    lo = "-inf" if self.minimum is None else self.minimum
    hi = "inf" if self.maximum is None else self.maximum
    return f"{'an integer' if self.kind == 'int' else 'a number'} in [{lo}, {hi}]"

  def convert(self, value: Any) -> Any:
    """Returns `value` as this category's Python type; raises ValueError with the reason."""
    if self.kind == "enum":
      if isinstance(value, str) and value in self.values:
        return value
      raise ValueError(f"{value!r} is not allowed; allowed: {self.allowed()}")
    if isinstance(value, bool):
      raise ValueError(f"{value!r} is not {self.allowed()}")
    if self.kind == "int":
      if isinstance(value, float) and value.is_integer():
        value = int(value)
      if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        value = int(value.strip())
      if not isinstance(value, int):
        raise ValueError(f"{value!r} is not {self.allowed()}")
    else:
      try:
        number = float(value)
      except (TypeError, ValueError):
        raise ValueError(f"{value!r} is not {self.allowed()}") from None
      if not math.isfinite(number):
        raise ValueError(f"{value!r} is not a finite number")
      value = number
    if (self.minimum is not None and value < self.minimum) or (
        self.maximum is not None and value > self.maximum):
      raise ValueError(f"{value!r} is out of range; allowed: {self.allowed()}")
    return value

  def to_dict(self) -> dict[str, Any]:
    d = {"name": self.name, "kind": self.kind}
    for key in ("values", "minimum", "maximum", "description", "value_descriptions",
                "derived_from"):
      v = getattr(self, key)
      if v not in ((), None, "", {}):
        d[key] = list(v) if key == "values" else (dict(v) if key == "value_descriptions" else v)
    return d


@dataclasses.dataclass(frozen=True)
class Taxonomy:
  """An ordered set of categories; the order is the serialization order."""
  categories: tuple[Category, ...]
  length_bucket_cuts: tuple[int, int] = (300, 1000)
  float_precision: int = 2

  def __post_init__(self):
    names = [c.name for c in self.categories]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
      raise MarkerError(f"taxonomy: duplicate categories {dup}")
    for c in self.categories:
      if c.derived_from is not None and c.derived_from not in names:
        raise MarkerError(f"category {c.name!r}: derived_from {c.derived_from!r} is not a category")
    lo, hi = self.length_bucket_cuts
    if not 0 < lo < hi:
      raise MarkerError(f"taxonomy: length_bucket_cuts {self.length_bucket_cuts} must be 0 < a < b")
    if not 0 <= self.float_precision <= 8:
      raise MarkerError("taxonomy: float_precision must be in [0, 8]")
    object.__setattr__(self, "_by_name", {c.name: c for c in self.categories})

  @property
  def names(self) -> tuple[str, ...]:
    return tuple(c.name for c in self.categories)

  def __contains__(self, name: object) -> bool:
    return name in self._by_name

  def category(self, name: str) -> Category:
    try:
      return self._by_name[name]
    except KeyError:
      raise MarkerError(
          f"unknown marker category {name!r}; known: {', '.join(self.names)}") from None

  def validate(self, markers: Mapping[str, Any]) -> dict[str, Any]:
    """Checks user-given markers; returns them converted and in taxonomy order."""
    out = {}
    for name, value in markers.items():
      cat = self.category(name)
      try:
        out[name] = cat.convert(value)
      except ValueError as e:
        raise MarkerError(f"{name}: {e}") from None
    return dict(self.ordered(out))

  def problems(self, markers: Mapping[str, Any]) -> list[str]:
    """Same checks as `validate`, reported instead of raised."""
    found = []
    for name, value in markers.items():
      if name not in self:
        found.append(f"unknown category {name!r}")
        continue
      try:
        self._by_name[name].convert(value)
      except ValueError as e:
        found.append(f"{name}: {e}")
    return found

  def ordered(self, markers: Mapping[str, Any]) -> list[tuple[str, Any]]:
    return [(n, markers[n]) for n in self.names if n in markers]

  def extend(self, categories: Sequence[Category] = (),
             values: Mapping[str, Sequence[str]] | None = None) -> Taxonomy:
    """A new taxonomy with extra categories (appended) and extra enum values."""
    cats = []
    for c in self.categories:
      extra = [v for v in (values or {}).get(c.name, ()) if v not in c.values]
      if extra and c.kind != "enum":
        raise MarkerError(f"category {c.name!r}: only enum categories take extra values")
      cats.append(dataclasses.replace(c, values=c.values + tuple(extra)) if extra else c)
    unknown = set(values or {}) - set(self.names)
    if unknown:
      raise MarkerError(f"extra values for unknown categories {sorted(unknown)}; "
                        f"known: {', '.join(self.names)}")
    return dataclasses.replace(self, categories=tuple(cats) + tuple(categories))

  def to_dict(self) -> dict[str, Any]:
    return {"categories": [c.to_dict() for c in self.categories],
            "length_bucket_cuts": list(self.length_bucket_cuts),
            "float_precision": self.float_precision}

  def to_json(self) -> str:
    return json.dumps(self.to_dict(), indent=1, ensure_ascii=False)

  def length_bucket(self, n_words: int) -> str:
    return length_bucket(n_words, self.length_bucket_cuts)


def length_bucket(n_words: int, cuts: tuple[int, int] = (300, 1000)) -> str:
  """concise (< cuts[0] words), medium (cuts[0]..cuts[1]), long (> cuts[1])."""
  if n_words < cuts[0]:
    return "concise"
  return "medium" if n_words <= cuts[1] else "long"


def quality_buckets(scores: Sequence[float], langs: Sequence[str]) -> list[int]:
  """Per-language quartile of each score: 1 = best quarter, 4 = worst.

  Rank-based, so ties and tiny languages are handled: the i-th best of n gets
  1 + floor(4 * i / n). A language with a single example gets bucket 1.
  """
  if len(scores) != len(langs):
    raise ValueError(f"{len(scores)} scores but {len(langs)} languages")
  by_lang: dict[str, list[int]] = {}
  for i, lang in enumerate(langs):
    by_lang.setdefault(lang, []).append(i)
  out = [0] * len(scores)
  for idx in by_lang.values():
    ranked = sorted(idx, key=lambda i: (-scores[i], i))
    for rank, i in enumerate(ranked):
      out[i] = 1 + (4 * rank) // len(ranked)
  return out


def from_dict(d: Mapping[str, Any], *, where: str = "taxonomy") -> Taxonomy:
  """Builds a taxonomy from its dict form; `extends: default` starts from the built-in one."""
  if not isinstance(d, Mapping):
    raise MarkerError(f"{where}: expected an object, got {type(d).__name__}")
  known = {"extends", "categories", "values", "length_bucket_cuts", "float_precision"}
  unknown = set(d) - known
  if unknown:
    raise MarkerError(f"{where}: unknown keys {sorted(unknown)}; known: {sorted(known)}")
  cats = []
  for i, c in enumerate(d.get("categories", [])):
    if not isinstance(c, Mapping) or "name" not in c or "kind" not in c:
      raise MarkerError(f"{where}: categories[{i}] needs at least 'name' and 'kind'")
    fields = {f.name for f in dataclasses.fields(Category)}
    bad = set(c) - fields
    if bad:
      raise MarkerError(f"{where}: category {c['name']!r} has unknown keys {sorted(bad)}")
    kw = dict(c)
    kw["values"] = tuple(kw.get("values", ()))
    kw["value_descriptions"] = dict(kw.get("value_descriptions", {}))
    try:
      cats.append(Category(**kw))
    except MarkerError as e:
      raise MarkerError(f"{where}: {e}") from None
  extends = d.get("extends")
  if extends not in (None, "default"):
    raise MarkerError(f"{where}: extends {extends!r}: only 'default' can be extended")
  try:
    if extends == "default":
      tax = default_taxonomy().extend(cats, d.get("values"))
    else:
      if d.get("values"):
        raise MarkerError("'values' adds to an extended taxonomy; use it with extends: default")
      tax = Taxonomy(tuple(cats))
    overrides = {}
    if "length_bucket_cuts" in d:
      overrides["length_bucket_cuts"] = tuple(d["length_bucket_cuts"])
    if "float_precision" in d:
      overrides["float_precision"] = int(d["float_precision"])
    return dataclasses.replace(tax, **overrides) if overrides else tax
  except MarkerError as e:
    raise MarkerError(f"{where}: {e}") from None


def from_json(s: str) -> Taxonomy:
  return from_dict(json.loads(s))


def load(path: str | os.PathLike) -> Taxonomy:
  """Loads a taxonomy file: JSON, or YAML for .yaml/.yml."""
  path = os.fspath(path)
  try:
    with open(path, encoding="utf-8") as f:
      text = f.read()
  except OSError as e:
    raise MarkerError(f"{path}: cannot read taxonomy: {e.strerror}") from None
  try:
    if path.endswith((".yaml", ".yml")):
      import yaml  # Only needed for YAML files.
      data = yaml.safe_load(text)
    else:
      data = json.loads(text)
  except Exception as e:  # noqa: BLE001 - any parser error becomes a located error.
    raise MarkerError(f"{path}: not valid {'YAML' if path.endswith(('.yaml', '.yml')) else 'JSON'}: {e}") from None
  return from_dict(data, where=path)


def default_taxonomy() -> Taxonomy:
  """The paper's 13 categories; see shared/docs/method.md and `default_values`."""
  from treasure_jax.markers import default_values as dv
  return Taxonomy(tuple(dv.default_categories()))
