"""Stop strings detected on device, whatever the tokenizer's splits.

An Aho-Corasick automaton over bytes tracks the longest suffix of the generated text that is a
prefix of some stop string; lifted to tokens it is one table next_QV[q, t] (Q = total length of
the stop strings + 1), with MATCH where token t completes a stop string from state q. The decode
loop carries one state per row and stops the row on MATCH; cutting the text at the stop string
is the host's job (`modes`). Special tokens add no text and leave the state as it is.
"""
from __future__ import annotations

import collections
from collections.abc import Sequence

import flax
import jax
import jax.numpy as jnp
import numpy as np

_MAX_TOTAL_BYTES = 512


@flax.struct.dataclass
class StopTables:
  """Device table of the stop automaton; MATCH = next_QV.shape[0] (one past the last state)."""
  next_QV: jax.Array


def _byte_automaton(stops: Sequence[bytes]) -> tuple[np.ndarray, np.ndarray]:
  """(delta[Q, 256], accepting[Q]) of the Aho-Corasick automaton of `stops`."""
  children: list[dict[int, int]] = [{}]
  accepting = [False]
  for s in stops:
    node = 0
    for byte in s:
      if byte not in children[node]:
        children.append({})
        accepting.append(False)
        children[node][byte] = len(children) - 1
      node = children[node][byte]
    accepting[node] = True
  q = len(children)
  delta = np.zeros((q, 256), np.int32)
  fail = [0] * q
  queue = collections.deque()
  for byte, child in children[0].items():
    delta[0, byte] = child
    queue.append(child)
  while queue:
    node = queue.popleft()
    accepting[node] = accepting[node] or accepting[fail[node]]
    delta[node] = delta[fail[node]]
    for byte, child in children[node].items():
      fail[child] = delta[fail[node], byte]
      delta[node, byte] = child
      queue.append(child)
  return delta, np.asarray(accepting)


def build(stop_strings: Sequence[str], token_bytes: Sequence[bytes | None],
          vocab_size: int) -> StopTables | None:
  """The token-level stop automaton (None when there are no stop strings)."""
  stops = [s.encode("utf-8") for s in stop_strings if s]
  if not stops:
    return None
  if sum(map(len, stops)) > _MAX_TOTAL_BYTES:
    raise ValueError(f"stop strings total more than {_MAX_TOTAL_BYTES} bytes")
  delta, accepting = _byte_automaton(stops)
  q = delta.shape[0]
  tokens = [b or b"" for b in token_bytes] + [b""] * (vocab_size - len(token_bytes))
  longest = max(map(len, tokens))
  padded = np.zeros((vocab_size, max(longest, 1)), np.int32)
  lengths = np.asarray([len(b) for b in tokens])
  for t, b in enumerate(tokens):
    padded[t, :len(b)] = np.frombuffer(b, np.uint8)
  next_QV = np.empty((q, vocab_size), np.int32)
  for start in range(q):
    state = np.full((vocab_size,), start, np.int32)
    hit = np.zeros((vocab_size,), bool)
    for j in range(padded.shape[1]):
      live = j < lengths
      state = np.where(live, delta[state, padded[:, j]], state)
      hit |= live & accepting[state]
    next_QV[start] = np.where(hit, q, state)
  return StopTables(jnp.asarray(next_QV))


def advance(tables: StopTables, state_B: jax.Array, token_B: jax.Array) -> jax.Array:
  """Next stop state of each row; == MATCH (tables.next_QV.shape[0]) when a stop string ended."""
  q = tables.next_QV.shape[0]
  return tables.next_QV[jnp.minimum(state_B, q - 1), token_B]
