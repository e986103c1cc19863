"""The marker-list grammar as a byte-level DFA: exactly the lists `template.serialize` writes.

  <MARKER_LIST> <cat_a> value </cat_a> <cat_b> value </cat_b> </MARKER_LIST>\\n

Categories appear at most once and in the taxonomy's order; enum values are the category's
allowed set; ints are canonical decimals (no leading zeros) within the category's range; floats
are written with the taxonomy's fixed precision. Any string this DFA accepts therefore parses with
`markers.template.parse_completion` without problems and passes `Taxonomy.validate`. After the
separator the DFA enters FREE, an absorbing state: the rest of the completion is unconstrained.

Ints and floats without an upper bound get at most `max_int_digits` integer digits (the grammar
must be finite for every list to close in a bounded number of tokens).

Built as an NFA (shared prefixes such as `length_tokens` / `length_bucket` overlap), made
deterministic by subset construction and minimized. Mapping the DFA onto a tokenizer's vocabulary
is `constraints`' job.
"""
from __future__ import annotations

import dataclasses
import string

from treasure_jax.markers import taxonomy as taxonomy_lib
from treasure_jax.markers import template

DEAD = -1
_DIGITS = frozenset(string.digits)


@dataclasses.dataclass(frozen=True)
class Dfa:
  """A DFA over bytes. `edges[s]` maps a byte to the next state; missing bytes are dead ends.
  `free` is absorbing (every byte loops); `start` expects the list's opening tag."""
  edges: tuple[dict[int, int], ...]
  start: int
  free: int

  @property
  def num_states(self) -> int:
    return len(self.edges)

  def step(self, state: int, data: bytes) -> int:
    """The state after `data` from `state` (DEAD on a byte the grammar does not allow)."""
    for byte in data:
      if state == self.free:
        return state
      state = self.edges[state].get(byte, DEAD)
      if state == DEAD:
        return DEAD
    return state

  def state_after(self, text: str) -> int:
    """The state after `text` from `start`; raises ValueError if the text leaves the grammar."""
    state = self.step(self.start, text.encode("utf-8"))
    if state == DEAD:
      raise ValueError(f"{text!r} is not the beginning of a well-formed marker list")
    return state


class _Nfa:
  """A byte NFA without epsilon moves: edges[s][byte] = set of next states."""

  def __init__(self):
    self.edges: list[dict[int, set[int]]] = []

  def state(self) -> int:
    self.edges.append({})
    return len(self.edges) - 1

  def edge(self, src: int, byte: int, dst: int) -> None:
    self.edges[src].setdefault(byte, set()).add(dst)

  def path(self, src: int, steps: list[frozenset[int]], dst: int) -> None:
    """A chain src -> ... -> dst, one step per set of allowed bytes."""
    for i, byte_set in enumerate(steps):
      nxt = dst if i == len(steps) - 1 else self.state()
      for byte in byte_set:
        self.edge(src, byte, nxt)
      src = nxt

  def text(self, src: int, text: str, dst: int) -> None:
    self.path(src, [frozenset({b}) for b in text.encode("utf-8")], dst)


def marker_list_dfa(tax: taxonomy_lib.Taxonomy, *, max_int_digits: int = 6) -> Dfa:
  """The minimized DFA of every well-formed completion-side marker list of `tax`."""
  nfa = _Nfa()
  start, free = nfa.state(), nfa.state()
  n = len(tax.categories)
  after = [nfa.state() for _ in range(n + 1)]  # after[i + 1]: category i was the last written.
  nfa.text(start, template.LIST_OPEN, after[0])
  for i in range(n + 1):
    nfa.text(after[i], " " + template.LIST_CLOSE + template.SEPARATOR, free)
  for j, cat in enumerate(tax.categories):
    value_start, value_end = nfa.state(), nfa.state()
    for i in range(j + 1):
      nfa.text(after[i], f" <{cat.name}> ", value_start)
    for steps in value_patterns(cat, tax.float_precision, max_int_digits):
      nfa.path(value_start, steps, value_end)
    nfa.text(value_end, f" </{cat.name}>", after[j + 1])
  edges, start_d, free_d = _determinize(nfa, start, free)
  return _minimize(edges, start_d, free_d)


def value_patterns(cat: taxonomy_lib.Category, precision: int,
                    max_digits: int) -> list[list[frozenset[int]]]:
  """Byte-set sequences, one per alternative, covering exactly the category's written values."""
  to_bytes = lambda steps: [frozenset(c.encode()[0] for c in s) for s in steps]
  if cat.kind == "enum":
    out = []
    for value in cat.values:
      out.append([frozenset({b}) for b in value.encode("utf-8")])
    return out
  biggest = 10**max_digits - 1
  lo = -biggest if cat.minimum is None else cat.minimum
  hi = biggest if cat.maximum is None else cat.maximum
  alternatives: list[list[frozenset[str]]] = []
  if cat.kind == "int":
    if hi >= 0:
      alternatives += _range_patterns(max(lo, 0), hi)
    if lo < 0:
      alternatives += [[frozenset("-")] + p for p in _range_patterns(max(-hi, 1), -lo)]
    return [to_bytes(p) for p in alternatives]
  # float: integer part k, '.', `precision` digits; magnitude m in [a, b] is k in [a, b - 1]
  # with any fraction, or k == b with a zero fraction (a, b are ints: the category's bounds).
  for sign, a, b in (("", max(lo, 0), hi), ("-", max(-hi, 0), -lo)):
    if b < a or (sign == "-" and lo >= 0):
      continue
    head = [frozenset(sign)] if sign else []
    fraction = [frozenset(".")] + [_DIGITS] * precision if precision else []
    zero_fraction = [frozenset(".")] + [frozenset("0")] * precision if precision else []
    if precision == 0:
      alternatives += [head + p for p in _range_patterns(a, b)]
      continue
    if b - 1 >= a:
      alternatives += [head + p + fraction for p in _range_patterns(a, b - 1)]
    alternatives += [head + p + zero_fraction for p in _range_patterns(b, b)]
  return [to_bytes(p) for p in alternatives]


def _range_patterns(lo: int, hi: int) -> list[list[frozenset[str]]]:
  """Digit-set sequences matching exactly the canonical decimals of lo..hi (0 <= lo <= hi)."""
  out = []
  for width in range(len(str(lo)), len(str(hi)) + 1):
    a = max(lo, 0 if width == 1 else 10 ** (width - 1))
    b = min(hi, 10**width - 1)
    if a <= b:
      out += _same_width(str(a), str(b))
  return out


def _same_width(a: str, b: str) -> list[list[frozenset[str]]]:
  if not a:
    return [[]]
  if a[1:] == "0" * (len(a) - 1) and b[1:] == "9" * (len(b) - 1):
    return [[_digit_range(a[0], b[0])] + [_DIGITS] * (len(a) - 1)]
  if a[0] == b[0]:
    return [[frozenset(a[0])] + p for p in _same_width(a[1:], b[1:])]
  rest = len(a) - 1
  out = [[frozenset(a[0])] + p for p in _same_width(a[1:], "9" * rest)]
  if int(b[0]) - int(a[0]) > 1:
    out.append([_digit_range(str(int(a[0]) + 1), str(int(b[0]) - 1))] + [_DIGITS] * rest)
  out += [[frozenset(b[0])] + p for p in _same_width("0" * rest, b[1:])]
  return out


def _digit_range(a: str, b: str) -> frozenset[str]:
  return frozenset(str(d) for d in range(int(a), int(b) + 1))


def _determinize(nfa: _Nfa, start: int, free: int) -> tuple[list[dict[int, int]], int, int]:
  """Subset construction; returns (edges, start, free) with FREE as its own absorbing state."""
  ids: dict[frozenset[int], int] = {}
  edges: list[dict[int, int]] = []
  queue = []

  def intern(subset: frozenset[int]) -> int:
    if subset not in ids:
      if free in subset and len(subset) > 1:
        raise ValueError("marker-list grammar is ambiguous at the end of the list")
      ids[subset] = len(edges)
      edges.append({})
      queue.append(subset)
    return ids[subset]

  start_d, free_d = intern(frozenset({start})), intern(frozenset({free}))
  while queue:
    subset = queue.pop()
    src = ids[subset]
    moves: dict[int, set[int]] = {}
    for s in subset:
      for byte, targets in nfa.edges[s].items():
        moves.setdefault(byte, set()).update(targets)
    for byte, targets in moves.items():
      edges[src][byte] = intern(frozenset(targets))
  return edges, start_d, free_d


def _minimize(edges: list[dict[int, int]], start: int, free: int) -> Dfa:
  """Moore partition refinement (every state is live: each NFA path reaches FREE)."""
  block = [1 if s == free else 0 for s in range(len(edges))]
  while True:
    signatures = {}
    new_block = []
    for s, out in enumerate(edges):
      sig = (block[s], tuple(sorted((byte, block[t]) for byte, t in out.items())))
      new_block.append(signatures.setdefault(sig, len(signatures)))
    if len(signatures) == len(set(block)):
      break
    block = new_block
  # Renumber blocks so that start is 0 and the order is deterministic.
  order = {}
  for s in [start] + list(range(len(edges))):
    order.setdefault(block[s], len(order))
  merged: list[dict[int, int]] = [{} for _ in order]
  for s, out in enumerate(edges):
    merged[order[block[s]]] = {byte: order[block[t]] for byte, t in out.items()}
  return Dfa(tuple(merged), order[block[start]], order[block[free]])
