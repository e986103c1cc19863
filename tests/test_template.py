"""Tests of markers.template: serialize/parse identity, robustness on arbitrary model output."""
import hypothesis
from hypothesis import strategies as st
import pytest

from treasure_jax.markers import taxonomy, template

TAX = taxonomy.default_taxonomy()


def _value(cat: taxonomy.Category):
  if cat.kind == "enum":
    return st.sampled_from(cat.values)
  if cat.kind == "int":
    return st.integers(cat.minimum if cat.minimum is not None else -10**6,
                       cat.maximum if cat.maximum is not None else 10**6)
  # Floats are serialized at the taxonomy's precision: draw values representable at it.
  return st.integers(-10**6, 10**6).map(lambda i: i / 10**TAX.float_precision)


marker_dicts = st.fixed_dictionaries(
    {}, optional={c.name: _value(c) for c in TAX.categories})


def test_papers_verbatim_example():
  assert (template.prompt_side("<prompt>", {"length_tokens": 199}, TAX)
          == "<prompt> <MARKER_LIST> <length_tokens> 199 </length_tokens> </MARKER_LIST>")


def test_empty_markers():
  assert template.prompt_side("p", {}, TAX) == "p"
  assert template.completion_side("r", {}, TAX) == "<MARKER_LIST> </MARKER_LIST>\nr"
  assert template.parse_completion("<MARKER_LIST> </MARKER_LIST>\nr", TAX).response == "r"


@hypothesis.given(marker_dicts, st.text())
@hypothesis.settings(max_examples=300, deadline=None)
def test_serialize_then_parse_is_identity(markers, response):
  text = template.completion_side(response, markers, TAX)
  parsed = template.parse_completion(text, TAX)
  assert parsed.markers == markers
  assert parsed.response == response
  assert parsed.problems == []
  assert list(parsed.markers) == [n for n in TAX.names if n in markers]
  prompt, prompt_markers, problems = template.parse_prompt(
      template.prompt_side("question?", markers, TAX), TAX)
  assert (prompt, prompt_markers, problems) == ("question?", markers, [])


_PIECES = list("<>/ \nab_") + ["<MARKER_LIST>", "</MARKER_LIST>", "<domain>", "</domain>",
                               " Code ", "<lang>", " Klingon ", "</lang>", "\u00e9\u4e2d"]


@hypothesis.given(st.one_of(st.text(), st.lists(st.sampled_from(_PIECES)).map("".join)))
@hypothesis.example("<MARKER_LIST><MARKER_LIST>b</MARKER_LIST>")  # Once lost the "b".
@hypothesis.example("<MARKER_LIST><MARKER_LIST>x</MARKER_LIST></MARKER_LIST>")
@hypothesis.settings(max_examples=500, deadline=None)
def test_parse_of_arbitrary_text_never_raises_and_keeps_non_list_text(text):
  parsed = template.parse_completion(text, TAX)
  assert isinstance(parsed.problems, list)
  if template.LIST_OPEN not in text:
    assert parsed.response == text and parsed.markers == {}
  # Every character survives, either in the response, in a well-formed list, or quoted in a
  # truncation problem.
  # Every non-space character outside well-formed lists is in the response or quoted in a
  # problem (only a list cut off at the very end of the output is quoted instead of kept).
  stripped = template.strip_markers(text)
  kept = "".join(parsed.response.split()) + "".join("".join(parsed.problems).split())
  for ch in set("".join(stripped.split())) - set("<>/"):
    assert ch in kept or ch in "".join(template.serialize(parsed.markers, TAX).split())
  if template.LIST_OPEN not in stripped and parsed.problems == []:
    assert parsed.response == stripped


@hypothesis.given(st.text(), st.text())
@hypothesis.settings(max_examples=200, deadline=None)
def test_text_around_a_well_formed_list_is_kept(before, after):
  hypothesis.assume(template.LIST_OPEN not in before + after and "<" not in after[:1])
  lst = template.serialize({"domain": "Code"}, TAX)
  parsed = template.parse_completion(before + lst + template.SEPARATOR + after, TAX)
  assert parsed.response == before + after
  assert parsed.markers == {"domain": "Code"}
  assert template.strip_markers(before + lst + template.SEPARATOR + after) == before + after


@pytest.mark.parametrize("text,markers,response,problem", [
    ("just an answer", {}, "just an answer", "no marker list"),
    ("<MARKER_LIST> <domain> Code </domain> <task> Co", {"domain": "Code"}, "",
     "marker list truncated: '<task> Co'"),
    ("<MARKER_LIST> <domain> Code </domain>", {"domain": "Code"}, "",
     "marker list truncated (no closing tag)"),
    ("<MARKER_LIST> <domain> Code </domain> Here it is.", {"domain": "Code"}, "Here it is.",
     "marker list not closed before 'Here it is.'"),
    ("<MARKER_LIST> <colour> red </colour> </MARKER_LIST>\nok", {}, "ok",
     "unknown category 'colour'"),
    ("<MARKER_LIST> <domain> Cooking </domain> </MARKER_LIST>\nok", {}, "ok",
     "domain: 'Cooking' is not allowed"),
    ("<MARKER_LIST> <lang> French </lang> <lang> German </lang> </MARKER_LIST>\nok",
     {"lang": "French"}, "ok", "duplicate category 'lang'"),
    ("Sure! <MARKER_LIST> </MARKER_LIST>\nok", {}, "Sure! ok", "text before the marker list"),
    ("<MARKER_LIST> </MARKER_LIST>ok", {}, "ok", "no separator after the marker list"),
])
def test_malformed_lists_are_reported_and_text_kept(text, markers, response, problem):
  parsed = template.parse_completion(text, TAX)
  assert parsed.markers == markers
  assert parsed.response == response
  assert any(p.startswith(problem) for p in parsed.problems), parsed.problems


def test_serialize_rejects_unknown_category():
  with pytest.raises(taxonomy.MarkerError, match="unknown marker categories"):
    template.serialize({"colour": "red"}, TAX)
