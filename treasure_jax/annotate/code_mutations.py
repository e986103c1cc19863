"""Deterministic single-site bug mutations of Python source, via `ast`, for CodeFix prompts.

Operators (each finds its candidate sites, then one site is picked with a seeded RNG):
  flip_comparison   mirror a comparison: < >, <= >=, == !=, in / not in, is / is not
  boundary          move a bound by one: < <=, > >=
  off_by_one_range  range(...)'s stop argument +1 or -1
  swap_arith        + and - in a binary operation or augmented assignment
  return_constant   a returned constant changes: True/False flip, numbers +1, "" <-> "x"
  negate_condition  the test of an if, while or conditional expression gets `not (...)`
  swap_bool_op      and <-> or
Only nodes starting at or after `first_line` are mutated (the canonical solution, never the
prompt), and the edit replaces just the mutated node's source span (ast positions are UTF-8
byte offsets), so the rest of the code keeps its formatting and comments.

Deliberately not here: whether a mutant is a real bug (the tests decide, `humaneval_sets`).
"""
from __future__ import annotations

import ast
import copy
import dataclasses
import random
from collections.abc import Callable

_MIRROR = {ast.Lt: ast.Gt, ast.Gt: ast.Lt, ast.LtE: ast.GtE, ast.GtE: ast.LtE, ast.Eq: ast.NotEq,
           ast.NotEq: ast.Eq, ast.In: ast.NotIn, ast.NotIn: ast.In, ast.Is: ast.IsNot,
           ast.IsNot: ast.Is}
_BOUNDARY = {ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Gt: ast.GtE, ast.GtE: ast.Gt}
_SIMPLE = (ast.Name, ast.Constant, ast.Call, ast.Attribute, ast.Subscript)


@dataclasses.dataclass(frozen=True)
class Mutant:
  operator: str
  source: str  # the whole mutated source
  line: int  # 1-based line of the edit
  original: str  # the replaced source span
  mutated: str  # its replacement


def _replace(source: str, node: ast.AST, text: str) -> tuple[str, str]:
  """(new source, old span) with `node`'s span replaced by `text`."""
  data = source.encode("utf-8")
  starts = [0]
  for line in data.splitlines(keepends=True):
    starts.append(starts[-1] + len(line))
  a = starts[node.lineno - 1] + node.col_offset
  b = starts[node.end_lineno - 1] + node.end_col_offset
  return (data[:a] + text.encode("utf-8") + data[b:]).decode("utf-8"), data[a:b].decode("utf-8")


def _swap_ops(table: dict) -> Callable[[ast.AST, str], list[tuple[ast.AST, str]]]:
  def sites(node: ast.AST, source: str) -> list[tuple[ast.AST, str]]:
    if not isinstance(node, ast.Compare):
      return []
    out = []
    for i, op in enumerate(node.ops):
      if type(op) in table:
        new = copy.deepcopy(node)
        new.ops[i] = table[type(op)]()
        out.append((node, ast.unparse(new)))
    return out
  return sites


def _range_sites(node: ast.AST, source: str) -> list[tuple[ast.AST, str]]:
  if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
          and node.func.id == "range" and 1 <= len(node.args) <= 3 and not node.keywords):
    return []
  stop = node.args[0 if len(node.args) == 1 else 1]
  span = ast.get_source_segment(source, stop)
  text = span if isinstance(stop, _SIMPLE) else f"({span})"
  return [(stop, f"{text} + 1"), (stop, f"{text} - 1")]


def _arith_sites(node: ast.AST, source: str) -> list[tuple[ast.AST, str]]:
  swap = {ast.Add: ast.Sub, ast.Sub: ast.Add}
  if isinstance(node, (ast.BinOp, ast.AugAssign)) and type(node.op) in swap:
    new = copy.deepcopy(node)
    new.op = swap[type(node.op)]()
    return [(node, ast.unparse(new))]
  return []


def _return_sites(node: ast.AST, source: str) -> list[tuple[ast.AST, str]]:
  if not (isinstance(node, ast.Return) and isinstance(node.value, ast.Constant)):
    return []
  value = node.value.value
  if isinstance(value, bool):
    new = not value
  elif isinstance(value, (int, float)):
    new = value + 1
  elif isinstance(value, str):
    new = "" if value else "x"
  else:
    return []  # None and bytes: no obvious wrong constant.
  return [(node.value, repr(new))]


def _negate_sites(node: ast.AST, source: str) -> list[tuple[ast.AST, str]]:
  if isinstance(node, (ast.If, ast.While, ast.IfExp)):
    return [(node.test, f"not ({ast.get_source_segment(source, node.test)})")]
  return []


def _bool_sites(node: ast.AST, source: str) -> list[tuple[ast.AST, str]]:
  if isinstance(node, ast.BoolOp):
    new = copy.deepcopy(node)
    new.op = ast.Or() if isinstance(node.op, ast.And) else ast.And()
    return [(node, ast.unparse(new))]
  return []


OPERATORS: dict[str, Callable[[ast.AST, str], list[tuple[ast.AST, str]]]] = {
    "flip_comparison": _swap_ops(_MIRROR),
    "boundary": _swap_ops(_BOUNDARY),
    "off_by_one_range": _range_sites,
    "swap_arith": _arith_sites,
    "return_constant": _return_sites,
    "negate_condition": _negate_sites,
    "swap_bool_op": _bool_sites,
}


def sites(source: str, operator: str, first_line: int = 1) -> list[tuple[ast.AST, str]]:
  """Every (node, replacement text) of `operator` in `source` at or after `first_line`."""
  tree = ast.parse(source)
  out = []
  for node in ast.walk(tree):
    if getattr(node, "lineno", 0) >= first_line:
      out.extend(OPERATORS[operator](node, source))
  return sorted(out, key=lambda s: (s[0].lineno, s[0].col_offset, s[1]))


def mutate(source: str, operator: str, *, seed: int | str, first_line: int = 1
           ) -> Mutant | None:
  """One mutant of `source` by `operator` at a seeded site; None when there is no site."""
  candidates = sites(source, operator, first_line)
  rng = random.Random(f"{seed}:{operator}")
  rng.shuffle(candidates)
  for node, text in candidates:
    new_source, old = _replace(source, node, text)
    if new_source == source or old == text:
      continue
    try:
      ast.parse(new_source)
    except SyntaxError:
      continue
    return Mutant(operator, new_source, node.lineno, old, text)
  return None


def mutants(source: str, *, seed: int | str, first_line: int = 1,
            operators: tuple[str, ...] = tuple(OPERATORS)) -> list[Mutant]:
  """At most one mutant per operator, distinct sources, in operator order."""
  out, seen = [], {source}
  for op in operators:
    m = mutate(source, op, seed=seed, first_line=first_line)
    if m is not None and m.source not in seen:
      seen.add(m.source)
      out.append(m)
  return out
