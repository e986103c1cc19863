"""Markers taken from a dataset's own fields, by a user mapping validated against the taxonomy.

A rules mapping has one entry per marker category:

    {"source": {"field": "origin", "map": {"human": "Human", "gpt4": "Synthetic"},
                "default": "Others"},
     "task":   {"const": "QuestionAnswering"},
     "lang":   {"field": "meta.language", "unknown": "error"}}

Rule keys:
- `const`: the value, always; or
- `field`: a dotted path into the record ("meta.language"); its value is looked up in `map`
  when a map is given (compared as strings; a non-string as its JSON: 1, true), else used as
  is (converted: "3" -> 3 for an int category);
- `default`: the value when the field is missing or null, or its value is not in `map`;
- `unknown`: what an unusable value does: "skip" (default; no marker) or "error" (raise).
Every value written in the rules (`const`, `map` values, `default`) is checked against the
taxonomy when the rules are built, and errors name the rule ("rule 'source': map['gpt4']: ...").
At apply time, errors name the record (`path:line`) and the rule.

Deliberately not here: deterministic markers (`deterministic`) and precedence between sources
of markers (the pipeline decides; the paper takes metadata where the source gives it).
"""
from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from typing import Any

from treasure_jax.markers import taxonomy

_RULE_KEYS = frozenset({"const", "field", "map", "default", "unknown"})
_MISSING = object()


class MetadataError(ValueError):
  """An invalid rule, or (with unknown="error") a record value no rule can turn into a marker."""


@dataclasses.dataclass(frozen=True)
class Rule:
  category: str
  const: Any = None
  field: str | None = None
  mapping: Mapping[str, Any] | None = None
  default: Any = None
  unknown: str = "skip"

  def value(self, record: Mapping, tax: taxonomy.Taxonomy, where: str) -> Any:
    """The marker value for `record`, or None for no marker."""
    if self.field is None:
      return self.const
    raw = _lookup(record, self.field)
    if raw is _MISSING or raw is None:
      return self.default
    if self.mapping is not None:
      key = _key(raw)
      if key in self.mapping:
        return self.mapping[key]
      if self.default is not None:
        return self.default
      return self._unusable(where, f"field {self.field!r} value {raw!r} is not in the map "
                            f"({', '.join(map(repr, self.mapping))})")
    try:
      return tax.category(self.category).convert(raw)
    except ValueError as e:
      if self.default is not None:
        return self.default
      return self._unusable(where, f"field {self.field!r}: {e}")

  def _unusable(self, where: str, reason: str) -> None:
    if self.unknown == "error":
      raise MetadataError(f"{where}: rule {self.category!r}: {reason}")
    return None


def _key(value: Any) -> str:
  """Map keys and field values compare as strings; non-strings as their JSON (1, true, null)."""
  return value if isinstance(value, str) else json.dumps(value)


def _lookup(record: Mapping, path: str) -> Any:
  value: Any = record
  for part in path.split("."):
    if not isinstance(value, Mapping) or part not in value:
      return _MISSING
    value = value[part]
  return value


def _convert(tax: taxonomy.Taxonomy, category: str, value: Any, what: str) -> Any:
  try:
    return tax.category(category).convert(value)
  except ValueError as e:
    raise MetadataError(f"rule {category!r}: {what}: {e}") from None


def _rule(category: str, spec: Any, tax: taxonomy.Taxonomy) -> Rule:
  where = f"rule {category!r}"
  if category not in tax:
    raise MetadataError(f"{where}: unknown marker category; known: {', '.join(tax.names)}")
  if not isinstance(spec, Mapping):
    raise MetadataError(f"{where}: expected an object with 'const' or 'field', "
                        f"got {type(spec).__name__}")
  bad = set(spec) - _RULE_KEYS
  if bad:
    raise MetadataError(f"{where}: unknown keys {sorted(bad)}; known: {sorted(_RULE_KEYS)}")
  if ("const" in spec) == ("field" in spec):
    raise MetadataError(f"{where}: give exactly one of 'const' or 'field'")
  if "const" in spec:
    if set(spec) != {"const"}:
      extra = sorted(set(spec) - {"const"})
      raise MetadataError(f"{where}: 'const' takes no other keys, got {extra}")
    return Rule(category, const=_convert(tax, category, spec["const"], "const"))
  field = spec["field"]
  if not isinstance(field, str) or not field or any(not p for p in field.split(".")):
    raise MetadataError(f"{where}: field must be a dotted path like 'meta.origin', got {field!r}")
  mapping = spec.get("map")
  if mapping is not None:
    if not isinstance(mapping, Mapping) or not mapping:
      raise MetadataError(f"{where}: map must be a non-empty object")
    mapping = {_key(k): _convert(tax, category, v, f"map[{k!r}]") for k, v in mapping.items()}
  default = spec.get("default")
  if default is not None:
    default = _convert(tax, category, default, "default")
  unknown = spec.get("unknown", "skip")
  if unknown not in ("skip", "error"):
    raise MetadataError(f"{where}: unknown must be 'skip' or 'error', got {unknown!r}")
  return Rule(category, field=field, mapping=mapping, default=default, unknown=unknown)


@dataclasses.dataclass(frozen=True)
class MetadataRules:
  """Validated rules; `apply(record)` gives the record's metadata markers."""
  rules: tuple[Rule, ...]
  tax: taxonomy.Taxonomy

  @classmethod
  def from_mapping(cls, spec: Mapping[str, Any], tax: taxonomy.Taxonomy) -> MetadataRules:
    if not isinstance(spec, Mapping):
      raise MetadataError(f"metadata rules: expected an object, got {type(spec).__name__}")
    ordered = [name for name in tax.names if name in spec]
    ordered += [name for name in spec if name not in tax]  # Raises, naming the rule.
    return cls(tuple(_rule(name, spec[name], tax) for name in ordered), tax)

  @classmethod
  def from_file(cls, path: str | os.PathLike, tax: taxonomy.Taxonomy) -> MetadataRules:
    """Rules from a JSON file, or YAML for .yaml/.yml."""
    path = os.fspath(path)
    try:
      with open(path, encoding="utf-8") as f:
        text = f.read()
      if path.endswith((".yaml", ".yml")):
        import yaml  # Only needed for YAML rule files.
        spec = yaml.safe_load(text)
      else:
        spec = json.loads(text)
    except (OSError, ValueError) as e:
      raise MetadataError(f"{path}: cannot read metadata rules: {e}") from None
    except Exception as e:  # noqa: BLE001 - YAML errors have no common base with ValueError.
      raise MetadataError(f"{path}: not valid YAML: {e}") from None
    try:
      return cls.from_mapping(spec, tax)
    except MetadataError as e:
      raise MetadataError(f"{path}: {e}") from None

  @property
  def categories(self) -> tuple[str, ...]:
    return tuple(r.category for r in self.rules)

  def apply(self, record: Mapping, *, where: str = "<record>") -> dict[str, Any]:
    """Markers for `record` in taxonomy order; rules that give no value are left out."""
    out = {}
    for rule in self.rules:
      value = rule.value(record, self.tax, where)
      if value is not None:
        out[rule.category] = value
    return out
