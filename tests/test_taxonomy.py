"""Tests of markers.taxonomy: the built-in default, user files, validation messages."""
import json

import pytest

from treasure_jax.markers import taxonomy


def test_default_has_the_papers_categories_in_order():
  tax = taxonomy.default_taxonomy()
  assert tax.names == ("quality", "quality_bucket", "length_tokens", "length_sentences",
                       "length_paragraphs", "length_bucket", "task", "domain", "code_type",
                       "format", "source", "style", "lang")
  assert len(tax.category("task").values) == 14
  assert len(tax.category("code_type").values) == 17
  assert len(tax.category("format").values) == 8
  assert len(tax.category("lang").values) == 23
  assert "Finance" in tax.category("domain").values
  assert "Unspecified" not in tax.category("domain").values
  assert tax.category("length_bucket").derived_from == "length_tokens"
  assert tax.category("quality_bucket").is_categorical
  assert not tax.category("length_tokens").is_categorical


def test_validate_coerces_and_orders_user_markers():
  tax = taxonomy.default_taxonomy()
  out = tax.validate({"lang": "French", "length_tokens": "199", "quality": "0.5"})
  assert out == {"quality": 0.5, "length_tokens": 199, "lang": "French"}
  assert list(out) == ["quality", "length_tokens", "lang"]


@pytest.mark.parametrize("markers,needle", [
    ({"length_bucket": "tiny"}, "length_bucket: 'tiny' is not allowed; allowed: concise, medium, long"),
    ({"colour": "red"}, "unknown marker category 'colour'; known: quality"),
    ({"quality_bucket": 7}, "quality_bucket: 7 is out of range"),
    ({"length_tokens": "many"}, "length_tokens: 'many' is not an integer"),
    ({"quality": "nan"}, "quality: 'nan' is not a finite number"),
])
def test_validate_names_category_and_allowed_values(markers, needle):
  with pytest.raises(taxonomy.MarkerError, match=None) as e:
    taxonomy.default_taxonomy().validate(markers)
  assert needle in str(e.value)


def test_problems_reports_instead_of_raising():
  tax = taxonomy.default_taxonomy()
  assert tax.problems({"domain": "Code", "task": "Nope", "x": 1}) == [
      "task: 'Nope' is not allowed; allowed: " + ", ".join(tax.category("task").values),
      "unknown category 'x'"]


def test_json_round_trip_is_identity():
  tax = taxonomy.default_taxonomy()
  assert taxonomy.from_json(tax.to_json()) == tax


def test_user_file_extends_default(tmp_path):
  path = tmp_path / "tax.yaml"
  path.write_text("extends: default\nvalues:\n  lang: [Swahili, Thai]\n"
                  "categories:\n  - {name: audience, kind: enum, values: [Kids, Experts]}\n"
                  "length_bucket_cuts: [100, 500]\n")
  tax = taxonomy.load(path)
  assert tax.names[-1] == "audience"
  assert tax.category("lang").values[-2:] == ("Swahili", "Thai")
  assert tax.length_bucket(150) == "medium"
  assert tax.validate({"audience": "Kids"}) == {"audience": "Kids"}


def test_user_file_standalone_json(tmp_path):
  path = tmp_path / "tax.json"
  path.write_text(json.dumps({"categories": [
      {"name": "tone", "kind": "enum", "values": ["Calm", "Angry"]},
      {"name": "n_steps", "kind": "int", "minimum": 0}]}))
  tax = taxonomy.load(path)
  assert tax.names == ("tone", "n_steps")


@pytest.mark.parametrize("body,needle", [
    ('{"categories": [{"name": "tone", "kind": "enum", "values": ["a b"]}]}',
     "category 'tone': value 'a b' must be a non-empty string without spaces"),
    ('{"categories": [{"name": "tone", "kind": "text"}]}', "kind 'text' is not one of"),
    ('{"extends": "default", "values": {"colour": ["Red"]}}', "unknown categories ['colour']"),
    ('{"extends": "default", "values": {"length_tokens": ["x"]}}',
     "only enum categories take extra values"),
    ('{"categories": [{"name": "d", "kind": "enum", "values": ["Unspecified"]}]}',
     "'Unspecified' means 'no marker'"),
    ('{"categorie": []}', "unknown keys ['categorie']"),
    ('{"categories": [', "not valid JSON"),
])
def test_bad_taxonomy_file_names_file_and_offender(tmp_path, body, needle):
  path = tmp_path / "bad.json"
  path.write_text(body)
  with pytest.raises(taxonomy.MarkerError) as e:
    taxonomy.load(path)
  assert str(path) in str(e.value) and needle in str(e.value)


@pytest.mark.parametrize("words,bucket", [(0, "concise"), (299, "concise"), (300, "medium"),
                                          (1000, "medium"), (1001, "long")])
def test_length_bucket_cut_points(words, bucket):
  assert taxonomy.length_bucket(words) == bucket


def test_quality_buckets_are_per_language_quartiles():
  scores = [0.9, 0.1, 0.5, 0.3, 5.0, -1.0, 2.0, 1.0]
  langs = ["en"] * 4 + ["fr"] * 4
  assert taxonomy.quality_buckets(scores, langs) == [1, 4, 2, 3, 1, 4, 2, 3]
  assert taxonomy.quality_buckets([0.3], ["de"]) == [1]
