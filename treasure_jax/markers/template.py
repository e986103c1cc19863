"""The marker-list text format: serialize a marker dict to plain text and parse it back.

Format (method.md, "Serialization"): plain text in the model's own vocabulary, no new tokens:

  <MARKER_LIST> <length_tokens> 199 </length_tokens> <domain> Code </domain> </MARKER_LIST>

Prompt side: `prompt + " " + list` (nothing appended when every marker was dropped).
Completion side: `list + SEPARATOR + response`; the list is always there, even when empty, so
the model always learns to open and close it.

Parsing is for model output and never raises: unknown categories, values outside the taxonomy,
duplicates, unclosed or truncated lists become `problems`, and every character that is not part
of a well-formed marker element stays in the returned text (or, for a list cut off mid-element
at the very end of the output, is quoted in the problem). Chat templates and tokenization are
the data package's job.
"""
from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import Any

from treasure_jax.markers import taxonomy as taxonomy_lib

LIST_OPEN = "<MARKER_LIST>"
LIST_CLOSE = "</MARKER_LIST>"
SEPARATOR = "\n"

# An element's tag is any name but the list's own (`<MARKER_LIST>x</MARKER_LIST>` nested in a
# list is not an element: it would swallow the list's closing tag).
_NAME = r"(?!" + re.escape(LIST_OPEN[1:]) + r")([A-Za-z0-9_]+)"
_ELEMENT = re.compile(r"\s*<" + _NAME + r">\s*([^<]*?)\s*</\1>")
_CLOSE = re.compile(r"\s*" + re.escape(LIST_CLOSE))
# What a list cut off at the end of the output looks like: a partial element or closing tag.
_TRUNCATED_TAIL = re.compile(r"\s*(<[A-Za-z0-9_/]*(>[^<]*(<(/[A-Za-z0-9_]*)?)?)?)?\Z")
_WELL_FORMED_LIST = re.compile(
    re.escape(LIST_OPEN) + r"(?:\s*<" + _NAME + r">[^<]*</\1>)*\s*" + re.escape(LIST_CLOSE)
    + "(?:" + re.escape(SEPARATOR) + ")?")


@dataclasses.dataclass
class ParseResult:
  markers: dict[str, Any]
  response: str
  problems: list[str]
  has_list: bool


def format_value(category: taxonomy_lib.Category, value: Any, float_precision: int = 2) -> str:
  if category.kind == "float":
    return f"{float(value):.{float_precision}f}"
  if category.kind == "int":
    return str(int(value))
  return str(value)


def serialize(markers: Mapping[str, Any], tax: taxonomy_lib.Taxonomy) -> str:
  """The marker list for `markers`, in taxonomy order; values are not validated here."""
  parts = [LIST_OPEN]
  for name, value in tax.ordered(markers):
    text = format_value(tax.category(name), value, tax.float_precision)
    parts.append(f"<{name}> {text} </{name}>")
  unknown = set(markers) - set(tax.names)
  if unknown:
    raise taxonomy_lib.MarkerError(
        f"unknown marker categories {sorted(unknown)}; known: {', '.join(tax.names)}")
  parts.append(LIST_CLOSE)
  return " ".join(parts)


def prompt_side(prompt: str, markers: Mapping[str, Any], tax: taxonomy_lib.Taxonomy) -> str:
  return f"{prompt} {serialize(markers, tax)}" if markers else prompt


def completion_side(response: str, markers: Mapping[str, Any],
                    tax: taxonomy_lib.Taxonomy) -> str:
  return serialize(markers, tax) + SEPARATOR + response


def _parse_list(text: str, start: int, tax: taxonomy_lib.Taxonomy
                ) -> tuple[dict[str, Any], int, bool, list[str]]:
  """Parses elements after LIST_OPEN ending at `start`; returns (markers, end, closed, problems)."""
  markers: dict[str, Any] = {}
  problems: list[str] = []
  pos = start
  while True:
    m = _ELEMENT.match(text, pos)
    if m is None:
      break
    pos = m.end()
    name, raw = m.group(1), m.group(2)
    if name not in tax:
      problems.append(f"unknown category {name!r}")
      continue
    if name in markers:
      problems.append(f"duplicate category {name!r} (kept the first value)")
      continue
    try:
      markers[name] = tax.category(name).convert(raw)
    except ValueError as e:
      problems.append(f"{name}: {e}")
  close = _CLOSE.match(text, pos)
  if close:
    return markers, close.end(), True, problems
  return markers, pos, False, problems


def parse_completion(text: str, tax: taxonomy_lib.Taxonomy) -> ParseResult:
  """Splits a completion into (markers, response text, problems); never raises."""
  i = text.find(LIST_OPEN)
  if i < 0:
    return ParseResult({}, text, ["no marker list"], False)
  before = text[:i]
  problems = ["text before the marker list"] if before.strip() else []
  markers, end, closed, list_problems = _parse_list(text, i + len(LIST_OPEN), tax)
  problems += list_problems
  rest = text[end:]
  if closed:
    if rest.startswith(SEPARATOR):
      rest = rest[len(SEPARATOR):]
    else:
      problems.append("no separator after the marker list")
  elif _TRUNCATED_TAIL.match(rest):
    problems.append(f"marker list truncated: {rest.strip()!r}" if rest.strip()
                    else "marker list truncated (no closing tag)")
    rest = ""
  else:
    problems.append(f"marker list not closed before {rest.strip()[:40]!r}")
    rest = rest.lstrip()
  return ParseResult(markers, before + rest, problems, True)


def parse_prompt(text: str, tax: taxonomy_lib.Taxonomy) -> tuple[str, dict[str, Any], list[str]]:
  """Splits `prompt <MARKER_LIST>...</MARKER_LIST>` into (prompt, markers, problems)."""
  i = text.rfind(LIST_OPEN)
  if i < 0:
    return text, {}, []
  markers, end, closed, problems = _parse_list(text, i + len(LIST_OPEN), tax)
  if not closed or text[end:].strip():
    return text, {}, ["prompt-side marker list is not the well-formed end of the prompt"]
  prompt = text[:i]
  return (prompt[:-1] if prompt.endswith(" ") else prompt), markers, problems


def strip_markers(text: str) -> str:
  """Removes every well-formed marker list (and the separator right after it)."""
  return _WELL_FORMED_LIST.sub("", text)
