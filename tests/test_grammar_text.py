"""Tests of decode/grammar_text.py: the EBNF and the regex accept exactly the completions the
project's own parser reads back without problems (and that `template.serialize` writes)."""
import functools
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from treasure_jax import cli
from treasure_jax.decode import grammar_text
from treasure_jax.markers import taxonomy
from treasure_jax.markers import template

DEFAULT = taxonomy.default_taxonomy()
# Bounded and negative numbers, which the default taxonomy lacks.
SMALL = taxonomy.from_dict({"float_precision": 1, "categories": [
    {"name": "temp", "kind": "float", "minimum": -3, "maximum": 12},
    {"name": "delta", "kind": "int", "minimum": -120, "maximum": 75},
    {"name": "mood", "kind": "enum", "values": ["ok", "Très_bien", 'say"hi'],},
]})
BIG = 10**6 - 1  # grammar_text's default: unbounded numbers get at most 6 integer digits.


# --- A tiny recursive-descent checker for the GBNF subset grammar_text writes ----------------
_TOKEN = re.compile(r'\s*(?:(?P<str>"(?:\\.|[^"\\])*")|(?P<cls>\[(?:\\.|[^\]\\])*\])'
                    r'|(?P<name>[A-Za-z0-9-]+)|(?P<op>[|?*+]))')


def _unescape(body: str) -> list[str]:
  out, i = [], 0
  while i < len(body):
    if body[i] == "\\":
      nxt = body[i + 1]
      if nxt == "x":
        out.append(chr(int(body[i + 2:i + 4], 16)))
        i += 4
        continue
      out.append({"n": "\n", "t": "\t"}.get(nxt, nxt))
      i += 2
    else:
      out.append(body[i])
      i += 1
  return out


def _parse_class(text: str):
  chars = _unescape(text[1:-1])
  negated = chars[:1] == ["^"] and not text.startswith("[\\^")
  chars = chars[1:] if negated else chars
  ranges, i = [], 0
  while i < len(chars):
    if i + 2 < len(chars) and chars[i + 1] == "-":
      ranges.append((chars[i], chars[i + 2]))
      i += 3
    else:
      ranges.append((chars[i], chars[i]))
      i += 1
  return lambda c: any(a <= c <= b for a, b in ranges) != negated


def parse_ebnf(text: str) -> dict[str, list[list[tuple]]]:
  """rule name -> alternatives, each a list of (kind, value, postfix)."""
  rules = {}
  for line in text.splitlines():
    name, sep, body = line.partition("::=")
    assert sep, f"not a rule: {line!r}"
    alts, seq, pos = [], [], 0
    while body[pos:].strip():
      m = _TOKEN.match(body, pos)
      assert m, f"cannot parse {body[pos:]!r}"
      pos = m.end()
      if m.group("op") == "|":
        alts.append(seq)
        seq = []
      elif m.group("op"):
        kind, value, _ = seq[-1]
        seq[-1] = (kind, value, m.group("op"))
      elif m.group("str"):
        seq.append(("str", "".join(_unescape(m.group("str")[1:-1])), ""))
      elif m.group("cls"):
        seq.append(("cls", _parse_class(m.group("cls")), ""))
      else:
        seq.append(("rule", m.group("name"), ""))
    alts.append(seq)
    assert name.strip() not in rules
    rules[name.strip()] = alts
  return rules


def ebnf_matches(rules, text: str, start: str = "root") -> bool:
  @functools.lru_cache(maxsize=None)
  def rule_ends(name: str, pos: int) -> frozenset[int]:
    out = set()
    for alt in rules[name]:
      out |= seq_ends(alt, 0, pos)
    return frozenset(out)

  def once(term, pos):
    kind, value, _ = term
    if kind == "str":
      return {pos + len(value)} if text.startswith(value, pos) else set()
    if kind == "cls":
      return {pos + 1} if pos < len(text) and value(text[pos]) else set()
    return set(rule_ends(value, pos))

  def term_ends(term, pos):
    postfix = term[2]
    ends = {pos} if postfix in ("?", "*") else set()
    frontier = once(term, pos)
    while frontier:
      ends |= frontier
      if postfix not in ("*", "+"):
        break
      frontier = {e for p in frontier for e in once(term, p)} - ends
    return ends

  def seq_ends(seq, i, pos):
    if i == len(seq):
      return {pos}
    return {e for p in term_ends(seq[i], pos) for e in seq_ends(seq, i + 1, p)}

  return len(text) in rule_ends(start, 0)


# --- The oracle: the project's own parser ---------------------------------------------------
def parser_accepts(tax, text: str) -> bool:
  parsed = template.parse_completion(text, tax)
  if parsed.problems or not parsed.has_list:
    return False
  for name, value in parsed.markers.items():
    cat = tax.category(name)
    if cat.kind != "enum" and (cat.maximum is None or cat.minimum is None) and abs(value) > BIG:
      return False  # Beyond the grammar's finite digit bound.
  return text == template.serialize(parsed.markers, tax) + template.SEPARATOR + parsed.response


def _value_strategy(cat, precision):
  if cat.kind == "enum":
    return st.sampled_from(cat.values)
  lo = -BIG if cat.minimum is None else cat.minimum
  hi = BIG if cat.maximum is None else cat.maximum
  if cat.kind == "int":
    return st.integers(lo, hi)
  step = 10**precision
  return st.integers(lo * step, hi * step).map(lambda k: k / step)


def _markers(tax):
  return st.fixed_dictionaries({}, optional={
      c.name: _value_strategy(c, tax.float_precision) for c in tax.categories})


def _text(tax, markers):
  return template.serialize(markers, tax)


_GRAMMARS = {}


def _grammars(tax):
  key = tax.to_json()
  if key not in _GRAMMARS:  # Taxonomy is not hashable.
    _GRAMMARS[key] = (re.compile(grammar_text.regex(tax)), parse_ebnf(grammar_text.ebnf(tax)))
  return _GRAMMARS[key]


@pytest.mark.parametrize("tax", [DEFAULT, SMALL], ids=["default", "small"])
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_every_serialized_list_matches(tax, data):
  markers = data.draw(_markers(tax))
  response = data.draw(st.text(max_size=12))
  text = template.completion_side(response, markers, tax)
  regex, rules = _grammars(tax)
  assert regex.fullmatch(text), text
  assert ebnf_matches(rules, text), text
  assert parser_accepts(tax, text)


# Fragments the candidate lists are built from: good and bad names, values and spacing.
def _fragments(tax):
  names = list(tax.names) + ["unknown", "MARKER_LIST"]
  values = ["7", "007", "-0", "-5", "1.5", "1.50", "0.05", "1000000", "999999", "12", "-3.0",
            "13.0", "-120", "76", "ok", "OK", "Très_bien", 'say"hi', "Code", "code", "English",
            "concise", "", "x y"]
  return names, values


@st.composite
def candidates(draw, tax):
  names, values = _fragments(tax)
  good = draw(_markers(tax))
  parts = [template.LIST_OPEN]
  elements = [(n, template.format_value(tax.category(n), v, tax.float_precision))
              for n, v in tax.ordered(good)]
  for _ in range(draw(st.integers(0, 2))):  # Mutations: insert, swap or drop an element.
    how = draw(st.sampled_from(["insert", "swap", "drop"]))
    if how == "insert":
      elements.insert(draw(st.integers(0, len(elements))),
                      (draw(st.sampled_from(names)), draw(st.sampled_from(values))))
    elif elements and how == "swap":
      i = draw(st.integers(0, len(elements) - 1))
      elements[i] = (elements[i][0], draw(st.sampled_from(values)))
    elif elements:
      elements.pop(draw(st.integers(0, len(elements) - 1)))
  space = lambda: draw(st.sampled_from([" ", " ", " ", "", "  "]))
  for name, value in elements:
    parts.append(f"{space()}<{name}>{space()}{value}{space()}</{name}>")
  close = draw(st.sampled_from([template.LIST_CLOSE, template.LIST_CLOSE, "</MARKER>", ""]))
  sep = draw(st.sampled_from(["\n", "\n", "", " "]))
  return draw(st.sampled_from(["", "", "x"])) + "".join(parts) + space() + close + sep + draw(
      st.sampled_from(["", "answer", "\n<MARKER_LIST>"]))


@pytest.mark.parametrize("tax", [DEFAULT, SMALL], ids=["default", "small"])
@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_grammars_accept_exactly_what_the_parser_reads_cleanly(tax, data):
  text = data.draw(candidates(tax))
  regex, rules = _grammars(tax)
  expected = parser_accepts(tax, text)
  assert bool(regex.fullmatch(text)) == expected, text
  assert ebnf_matches(rules, text) == expected, text


@pytest.mark.parametrize("text,ok", [
    ("<MARKER_LIST> </MARKER_LIST>\n", True),
    ("<MARKER_LIST> <quality_bucket> 3 </quality_bucket> <lang> French </lang> </MARKER_LIST>\n"
     "Bonjour\nà tous", True),
    ("<MARKER_LIST> <length_tokens> 999999 </length_tokens> </MARKER_LIST>\n", True),
    ("<MARKER_LIST> <quality> 0.50 </quality> </MARKER_LIST>\nx", True),
    ("<MARKER_LIST> <quality> 0.5 </quality> </MARKER_LIST>\nx", False),  # Precision is 2.
    ("<MARKER_LIST> <quality_bucket> 5 </quality_bucket> </MARKER_LIST>\n", False),  # Range.
    ("<MARKER_LIST> <lang> French </lang> <quality_bucket> 3 </quality_bucket> </MARKER_LIST>\n",
     False),  # Out of taxonomy order.
    ("<MARKER_LIST> <lang> French </lang> <lang> French </lang> </MARKER_LIST>\n", False),
    ("<MARKER_LIST> <lang> Klingon </lang> </MARKER_LIST>\n", False),
    ("<MARKER_LIST> <lang> French </lang> </MARKER_LIST>", False),  # No separator.
    ("<MARKER_LIST> <lang> French </lang>\n", False),  # Not closed.
    ("hi <MARKER_LIST> </MARKER_LIST>\n", False),  # Text before the list.
    ("<MARKER_LIST><lang> French </lang> </MARKER_LIST>\n", False),  # Spacing is exact.
])
def test_hand_written_lists(text, ok):
  regex, rules = _grammars(DEFAULT)
  assert parser_accepts(DEFAULT, text) == ok
  assert bool(regex.fullmatch(text)) == ok
  assert ebnf_matches(rules, text) == ok


def test_ebnf_shape_and_cli(capsys, tmp_path):
  text = grammar_text.ebnf(DEFAULT)
  assert text.startswith("root ::= marker-list \"\\n\" response\n")
  # GBNF rule names: letters, digits and '-' only (llama.cpp rejects '_').
  assert all(re.fullmatch(r"[a-z0-9-]+", line.split(" ::= ")[0]) for line in text.splitlines())
  path = tmp_path / "tax.json"
  path.write_text(SMALL.to_json())
  assert cli.main(["markers", "grammar", "--format", "regex", "--taxonomy", str(path)]) == 0
  assert capsys.readouterr().out.strip() == grammar_text.regex(SMALL)
  assert cli.main(["markers", "grammar", "--format", "ebnf"]) == 0
  assert capsys.readouterr().out.strip() == text
  with pytest.raises(ValueError, match="not one of ebnf, regex"):
    grammar_text.render(DEFAULT, "lark")
