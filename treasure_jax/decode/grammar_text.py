"""The marker-list grammar as text for serving stacks: GBNF-style EBNF and a regular expression.

Both describe a whole completion, the same language as `grammar.marker_list_dfa` (whose value
patterns they reuse): the list `template.serialize` writes, the separator, then free text:

  <MARKER_LIST> <cat_a> value </cat_a> ... </MARKER_LIST>\\n<anything>

categories at most once and in taxonomy order, enum values from their set, ints and floats as
canonical decimals within range (unbounded ones up to `max_int_digits` integer digits). The EBNF
(`root ::= ...`, quoted strings, character classes, `?`, `*`, rule names of letters, digits and
`-`) is the dialect vLLM's `structured_outputs={"grammar": ...}` and SGLang's `ebnf` take
(xgrammar's, shared with llama.cpp's GBNF); the regex is for `structured_outputs={"regex": ...}`
and SGLang's `regex` and works with Python's `re.fullmatch`. Mapping either onto tokens is the
serving stack's job; our own decoder uses the DFA (`constraints`).
"""
from __future__ import annotations

from treasure_jax.decode import grammar
from treasure_jax.markers import taxonomy as taxonomy_lib
from treasure_jax.markers import template

FORMATS = ("ebnf", "regex")
FILE_NAMES = {"ebnf": "marker_list.ebnf", "regex": "marker_list.regex"}
# Free text after the separator: any character, spelled with no escapes beyond \n (xgrammar's
# and llama.cpp's dialects differ on \x and \U in classes).
_EBNF_ANY = ('response-char', r'[^\n] | "\n"')
_REGEX_ANY = r"[\s\S]"


def render(tax: taxonomy_lib.Taxonomy, fmt: str, *, max_int_digits: int = 6) -> str:
  """The grammar of `tax`'s completions in `fmt` ("ebnf" or "regex")."""
  if fmt == "ebnf":
    return ebnf(tax, max_int_digits=max_int_digits)
  if fmt == "regex":
    return regex(tax, max_int_digits=max_int_digits)
  raise ValueError(f"grammar format {fmt!r} is not one of {', '.join(FORMATS)}")


def _value_alternatives(cat: taxonomy_lib.Category, precision: int, max_int_digits: int
                        ) -> list[list[frozenset[str]]]:
  """Character-set sequences, one per alternative (enum values as single-character sets)."""
  if cat.kind == "enum":
    return [[frozenset(c) for c in value] for value in cat.values]
  return [[frozenset(chr(b) for b in step) for step in steps]
          for steps in grammar.value_patterns(cat, precision, max_int_digits)]


def _runs(chars: frozenset[str]) -> list[tuple[str, str]]:
  """Sorted characters as (first, last) runs of consecutive code points."""
  out: list[tuple[str, str]] = []
  for c in sorted(chars):
    if out and ord(c) == ord(out[-1][1]) + 1:
      out[-1] = (out[-1][0], c)
    else:
      out.append((c, c))
  return out


def _re_escape(text: str, in_class: bool = False) -> str:
  """Escapes only regex metacharacters (`re.escape` also escapes spaces, which some serving
  stacks' regex engines reject)."""
  meta = "\\]^-[" if in_class else "\\.^$|?*+()[]{}"
  return "".join("\\n" if c == "\n" else "\\" + c if c in meta else c for c in text)


def regex(tax: taxonomy_lib.Taxonomy, *, max_int_digits: int = 6) -> str:
  """A regular expression matching (with `re.fullmatch`) exactly the grammar's completions."""
  def cls(chars: frozenset[str]) -> str:
    if len(chars) == 1:
      return _re_escape(next(iter(chars)))
    body = "".join(_re_escape(a, True) + ("" if a == b else "-" + _re_escape(b, True))
                   for a, b in _runs(chars))
    return f"[{body}]"
  parts = [_re_escape(template.LIST_OPEN)]
  for cat in tax.categories:
    alts = ["".join(cls(s) for s in alt)
            for alt in _value_alternatives(cat, tax.float_precision, max_int_digits)]
    parts.append(f"(?:{_re_escape(f' <{cat.name}> ')}(?:{'|'.join(alts)})"
                 f"{_re_escape(f' </{cat.name}>')})?")
  parts.append(_re_escape(" " + template.LIST_CLOSE + template.SEPARATOR) + _REGEX_ANY + "*")
  return "".join(parts)


def _quote(text: str) -> str:
  escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
  return f'"{escaped}"'


def _class_char(c: str) -> str:
  if c in "\\]^-[":
    return "\\" + c
  return {"\n": "\\n", "\t": "\\t"}.get(c, c)


def _rule_name(category: str, what: str) -> str:
  return f"{category.replace('_', '-')}-{what}"


def ebnf(tax: taxonomy_lib.Taxonomy, *, max_int_digits: int = 6) -> str:
  """GBNF-style EBNF: `root` is a completion, `marker-list` the list alone."""
  def term(chars: frozenset[str]) -> str:
    if len(chars) == 1:
      return _quote(next(iter(chars)))
    body = "".join(_class_char(a) if a == b else f"{_class_char(a)}-{_class_char(b)}"
                   for a, b in _runs(chars))
    return f"[{body}]"
  rules = [f'root ::= marker-list {_quote(template.SEPARATOR)} response',
           "marker-list ::= " + " ".join(
               [_quote(template.LIST_OPEN)]
               + [_rule_name(c.name, "element") + "?" for c in tax.categories]
               + [_quote(" " + template.LIST_CLOSE)])]
  for cat in tax.categories:
    rules.append(f"{_rule_name(cat.name, 'element')} ::= {_quote(f' <{cat.name}> ')} "
                 f"{_rule_name(cat.name, 'value')} {_quote(f' </{cat.name}>')}")
    alts = []
    for alt in _value_alternatives(cat, tax.float_precision, max_int_digits):
      if cat.kind == "enum":
        alts.append(_quote("".join(next(iter(s)) for s in alt)))
      else:
        alts.append(" ".join(term(s) for s in alt))
    rules.append(f"{_rule_name(cat.name, 'value')} ::= " + " | ".join(alts))
  rules += [f"response ::= {_EBNF_ANY[0]}*", f"{_EBNF_ANY[0]} ::= {_EBNF_ANY[1]}"]
  return "\n".join(rules)
