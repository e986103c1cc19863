"""Metadata rules: validation against the taxonomy, errors naming the rule, application."""
from __future__ import annotations

import json

import pytest

from treasure_jax.annotate import metadata
from treasure_jax.markers import taxonomy

TAX = taxonomy.default_taxonomy()
RULES = {
    "source": {"field": "origin", "map": {"human": "Human", "gpt4": "Synthetic"},
               "default": "Others"},
    "task": {"const": "QuestionAnswering"},
    "lang": {"field": "meta.language"},
    "length_tokens": {"field": "meta.words", "unknown": "error"},
    "quality_bucket": {"field": "tier", "map": {"1": 1, "true": 2}},
}


def test_apply_maps_fields_to_markers_in_taxonomy_order():
  rules = metadata.MetadataRules.from_mapping(RULES, TAX)
  assert rules.categories == ("quality_bucket", "length_tokens", "task", "source", "lang")
  record = {"origin": "human", "meta": {"language": "French", "words": "42"}, "tier": 1}
  out = rules.apply(record)
  assert out == {"quality_bucket": 1, "length_tokens": 42, "task": "QuestionAnswering",
                 "source": "Human", "lang": "French"}
  assert list(out) == ["quality_bucket", "length_tokens", "task", "source", "lang"]


def test_defaults_missing_fields_and_skipped_values():
  rules = metadata.MetadataRules.from_mapping(RULES, TAX)
  out = rules.apply({"origin": "forum", "meta": {"language": "Klingon"}, "tier": True})
  # Unknown origin -> default; unknown language -> no marker (unknown: skip); true -> "true".
  assert out == {"quality_bucket": 2, "task": "QuestionAnswering", "source": "Others"}
  assert rules.apply({}) == {"task": "QuestionAnswering", "source": "Others"}


def test_unknown_error_names_record_and_rule():
  rules = metadata.MetadataRules.from_mapping(RULES, TAX)
  with pytest.raises(metadata.MetadataError,
                     match=r"data.jsonl:7: rule 'length_tokens': field 'meta.words'"):
    rules.apply({"meta": {"words": "many"}}, where="data.jsonl:7")


@pytest.mark.parametrize("spec,message", [
    ({"source": {"field": "origin", "map": {"human": "Humans"}}},
     r"rule 'source': map\['human'\]: 'Humans' is not allowed; allowed: Human"),
    ({"colour": {"const": "red"}}, r"rule 'colour': unknown marker category"),
    ({"task": {"const": "Chat"}}, r"rule 'task': const: 'Chat' is not allowed"),
    ({"task": {"const": "OpenEnded", "field": "x"}}, r"rule 'task': give exactly one"),
    ({"task": {"fild": "x"}}, r"rule 'task': unknown keys \['fild'\]"),
    ({"task": {"field": "x", "default": "Nope"}}, r"rule 'task': default: 'Nope'"),
    ({"task": {"field": "a..b"}}, r"rule 'task': field must be a dotted path"),
    ({"task": {"field": "x", "unknown": "ignore"}}, r"rule 'task': unknown must be"),
    ({"task": "OpenEnded"}, r"rule 'task': expected an object"),
    ({"length_tokens": {"const": -3}}, r"rule 'length_tokens': const: -3 is out of range"),
])
def test_invalid_rules_name_the_rule(spec, message):
  with pytest.raises(metadata.MetadataError, match=message):
    metadata.MetadataRules.from_mapping(spec, TAX)


def test_from_file_json_and_yaml(tmp_path):
  (tmp_path / "rules.json").write_text(json.dumps({"task": {"const": "Translation"}}))
  (tmp_path / "rules.yaml").write_text("source:\n  field: origin\n  map: {human: Human}\n")
  assert metadata.MetadataRules.from_file(tmp_path / "rules.json", TAX).apply({}) == {
      "task": "Translation"}
  assert metadata.MetadataRules.from_file(tmp_path / "rules.yaml", TAX).apply(
      {"origin": "human"}) == {"source": "Human"}
  (tmp_path / "bad.yaml").write_text("task: {const: Chat}\n")
  with pytest.raises(metadata.MetadataError, match=r"bad.yaml: rule 'task': const"):
    metadata.MetadataRules.from_file(tmp_path / "bad.yaml", TAX)
  (tmp_path / "broken.json").write_text("{")
  with pytest.raises(metadata.MetadataError, match=r"broken.json: cannot read"):
    metadata.MetadataRules.from_file(tmp_path / "broken.json", TAX)


def test_rules_follow_an_extended_taxonomy():
  tax = TAX.extend(values={"lang": ["Swahili"]})
  rules = metadata.MetadataRules.from_mapping({"lang": {"const": "Swahili"}}, tax)
  assert rules.apply({}) == {"lang": "Swahili"}
  with pytest.raises(metadata.MetadataError, match="'Swahili' is not allowed"):
    metadata.MetadataRules.from_mapping({"lang": {"const": "Swahili"}}, TAX)
