"""The marker-list grammar lifted to a tokenizer's vocabulary: dense tables used inside the jitted
decode loop to mask logits and advance each row's automaton state.

Every token is mapped to the bytes it adds to the text (`token_bytes`; special tokens map to None
and are never allowed inside a list). For each state of the byte DFA (`grammar`) the allowed tokens
are those whose bytes keep the DFA alive, found by walking the DFA alongside the sorted token
strings (no per-token replay). A token may run past the end of the list into free text: it is
allowed and leads to FREE. Only "relevant" tokens (allowed in some constrained state) get a
column, so the next-state table is [S, R] rather than [S, V] (R is a few thousand, V up to 256k):

  next_SR[s, c] = state after token token_of_col_R[c] from state s, -1 = disallowed
  col_of_token_V[t] = column of token t, -1 = never allowed while constrained
  dist_S[s] = fewest tokens from s to FREE

`allowed_mask` also keeps each list closable within the row's remaining token budget (a token is
allowed only if FREE stays reachable in time), so a constrained list closes whenever the budget
can hold the shortest list. Choosing a mode per prompt is `modes`' job; the loop is `generate`'s.
"""
from __future__ import annotations

import bisect
import collections
import dataclasses
import json
from collections.abc import Sequence
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np

from treasure_jax.decode import grammar
from treasure_jax.markers import taxonomy as taxonomy_lib
from treasure_jax.model import gguf_tokenizer

_UNREACHABLE = np.iinfo(np.int32).max // 2


def token_bytes(vocabulary: Any) -> list[bytes | None]:
  """The bytes each token id adds to decoded text (None: special/control token).

  Accepts `data.vocab.HfTokenizerVocabulary`, a `tokenizers.Tokenizer`, a
  `seqio.SentencePieceVocabulary`, or a plain sequence of token strings or bytes.
  """
  if isinstance(vocabulary, Sequence) and not isinstance(vocabulary, str):
    return [t if t is None or isinstance(t, bytes) else t.encode("utf-8") for t in vocabulary]
  tokenizer = getattr(vocabulary, "tokenizer", vocabulary)
  if hasattr(tokenizer, "to_str"):
    return _hf_token_bytes(tokenizer)
  if hasattr(tokenizer, "id_to_piece"):
    return _sentencepiece_token_bytes(tokenizer)
  raise TypeError(f"token_bytes: unsupported vocabulary type {type(vocabulary).__name__}")


def _hf_token_bytes(tokenizer: Any) -> list[bytes | None]:
  spec = json.loads(tokenizer.to_str())
  decoder = json.dumps(spec.get("decoder"))
  byte_level = '"ByteLevel"' in decoder
  metaspace = "\u2581" in decoder or '"Metaspace"' in decoder
  byte_fallback = '"ByteFallback"' in decoder
  inverse = {c: b for b, c in gguf_tokenizer.bytes_to_unicode().items()}
  size = tokenizer.get_vocab_size(with_added_tokens=True)
  out: list[bytes | None] = [None] * size
  added = tokenizer.get_added_tokens_decoder()
  for token, i in tokenizer.get_vocab(with_added_tokens=True).items():
    if i in added:
      out[i] = None if added[i].special else added[i].content.encode("utf-8")
    elif byte_level:
      out[i] = bytes(inverse[c] for c in token) if all(c in inverse for c in token) else None
    elif byte_fallback and len(token) == 6 and token.startswith("<0x") and token.endswith(">"):
      out[i] = bytes([int(token[3:5], 16)])
    else:
      out[i] = (token.replace("\u2581", " ") if metaspace else token).encode("utf-8")
  return out


def _sentencepiece_token_bytes(sp: Any) -> list[bytes | None]:
  out: list[bytes | None] = []
  for i in range(sp.get_piece_size()):
    piece = sp.id_to_piece(i)
    if sp.is_control(i) or sp.is_unknown(i):
      out.append(None)
    elif sp.is_byte(i):
      out.append(bytes([int(piece[3:5], 16)]))
    else:
      out.append(piece.replace("\u2581", " ").encode("utf-8"))
  return out


@flax.struct.dataclass
class Tables:
  """Device arrays of a `TokenAutomaton` (a pytree: an argument of the jitted loop)."""
  next_SR: jax.Array
  token_of_col_R: jax.Array
  col_of_token_V: jax.Array
  dist_S: jax.Array
  free: int = flax.struct.field(pytree_node=False)


@dataclasses.dataclass(frozen=True)
class TokenAutomaton:
  """The marker-list grammar over one vocabulary (numpy tables; see the module docstring)."""
  dfa: grammar.Dfa
  next_SR: np.ndarray
  token_of_col_R: np.ndarray
  dist_S: np.ndarray

  @property
  def start(self) -> int:
    return self.dfa.start

  @property
  def free(self) -> int:
    return self.dfa.free

  def state_after(self, text: str) -> int:
    """The state after a forced list prefix (text that starts with `<MARKER_LIST>`)."""
    return self.dfa.state_after(text)

  def tables(self, vocab_size: int) -> Tables:
    """Device tables for a model with `vocab_size` logits (>= the tokenizer's size)."""
    if vocab_size < int(self.token_of_col_R.max(initial=-1)) + 1:
      raise ValueError(f"model vocab_size={vocab_size} is smaller than the tokenizer's")
    col_of_token_V = np.full((vocab_size,), -1, np.int32)
    col_of_token_V[self.token_of_col_R] = np.arange(len(self.token_of_col_R), dtype=np.int32)
    return Tables(jnp.asarray(self.next_SR), jnp.asarray(self.token_of_col_R),
                  jnp.asarray(col_of_token_V), jnp.asarray(self.dist_S), self.free)


def build(tax: taxonomy_lib.Taxonomy, vocabulary: Any, *,
          max_int_digits: int = 6) -> TokenAutomaton:
  """The token-level automaton of `tax`'s marker lists over `vocabulary` (see `token_bytes`)."""
  dfa = grammar.marker_list_dfa(tax, max_int_digits=max_int_digits)
  tokens = token_bytes(vocabulary)
  moves = _token_moves(dfa, tokens)
  dist_S = _distances(dfa, moves)
  if dist_S[dfa.start] >= _UNREACHABLE:
    raise ValueError("the vocabulary cannot spell a complete marker list (a byte the grammar "
                     "needs has no token)")
  relevant = sorted({t for s in range(dfa.num_states) for t, nxt in moves[s].items()
                     if dist_S[nxt] < _UNREACHABLE})
  col = {t: c for c, t in enumerate(relevant)}
  next_SR = np.full((dfa.num_states, len(relevant)), -1, np.int32)
  for s in range(dfa.num_states):
    for t, nxt in moves[s].items():
      if dist_S[nxt] < _UNREACHABLE:  # A token into a dead end can never finish the list.
        next_SR[s, col[t]] = nxt
  next_SR[dfa.free, :] = dfa.free
  return TokenAutomaton(dfa, next_SR, np.asarray(relevant, np.int32), dist_S)


def _token_moves(dfa: grammar.Dfa, tokens: list[bytes | None]) -> list[dict[int, int]]:
  """moves[s][token] = state after the token from s, for every token the DFA accepts at s."""
  ordered = sorted((b, i) for i, b in enumerate(tokens) if b)
  keys = [b for b, _ in ordered]
  ids = [i for _, i in ordered]
  moves: list[dict[int, int]] = [{} for _ in range(dfa.num_states)]
  for s in range(dfa.num_states):
    if s == dfa.free:
      continue
    # Depth-first over (DFA state, token prefix); keys[lo:hi] share the prefix of length depth.
    stack = [(s, 0, 0, len(keys))]
    while stack:
      state, depth, lo, hi = stack.pop()
      prefix = keys[lo][:depth]
      if state == dfa.free:
        for k in range(lo, hi):
          moves[s][ids[k]] = dfa.free
        continue
      while depth and lo < hi and len(keys[lo]) == depth:
        moves[s][ids[lo]] = state
        lo += 1
      for byte, nxt in dfa.edges[state].items():
        a = bisect.bisect_left(keys, prefix + bytes([byte]), lo, hi)
        b = hi if byte == 255 else bisect.bisect_left(keys, prefix + bytes([byte + 1]), a, hi)
        if a < b:
          stack.append((nxt, depth + 1, a, b))
  return moves


def _distances(dfa: grammar.Dfa, moves: list[dict[int, int]]) -> np.ndarray:
  """Fewest tokens from each state to FREE (breadth-first over reversed token moves)."""
  reverse: dict[int, set[int]] = collections.defaultdict(set)
  for s, out in enumerate(moves):
    for nxt in out.values():
      reverse[nxt].add(s)
  dist = np.full((dfa.num_states,), _UNREACHABLE, np.int32)
  dist[dfa.free] = 0
  queue = collections.deque([dfa.free])
  while queue:
    s = queue.popleft()
    for prev in reverse[s]:
      if dist[prev] == _UNREACHABLE:
        dist[prev] = dist[s] + 1
        queue.append(prev)
  return dist


def allowed_mask(tables: Tables, state_B: jax.Array, budget_B: jax.Array,
                 vocab_size: int) -> jax.Array:
  """bool[B, V]: the tokens row b may emit in `state_B[b]` with `budget_B[b]` tokens left
  (this one included). FREE rows allow everything."""
  b = state_B.shape[0]
  live_B = jnp.maximum(state_B, 0)
  next_BR = tables.next_SR[live_B]
  dist_BR = jnp.where(next_BR >= 0, tables.dist_S[jnp.maximum(next_BR, 0)], _UNREACHABLE)
  # Never below the shortest path: if the budget is already too small, still head for FREE.
  limit_B = jnp.maximum(budget_B - 1, tables.dist_S[live_B] - 1)
  ok_BR = dist_BR <= limit_B[:, None]
  mask_BV = jnp.zeros((b, vocab_size), bool).at[:, tables.token_of_col_R].set(ok_BR)
  return mask_BV | (state_B == tables.free)[:, None]


def advance(tables: Tables, state_B: jax.Array, token_B: jax.Array) -> jax.Array:
  """Each row's state after emitting token_B (FREE stays FREE)."""
  col_B = tables.col_of_token_V[token_B]
  next_B = tables.next_SR[jnp.maximum(state_B, 0), jnp.maximum(col_B, 0)]
  next_B = jnp.where(col_B >= 0, next_B, -1)
  return jnp.where(state_B == tables.free, tables.free, next_B)
