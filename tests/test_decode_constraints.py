"""The marker-list grammar (byte DFA), its token-level tables and the stop-string automaton."""
from __future__ import annotations

import random

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tokenizers
from tokenizers import decoders, models

from treasure_jax.decode import constraints
from treasure_jax.decode import grammar
from treasure_jax.decode import stops
from treasure_jax.markers import taxonomy
from treasure_jax.markers import template
from treasure_jax.model import convert
from treasure_jax.model import gguf
from treasure_jax.model import gguf_tokenizer

TAX = taxonomy.default_taxonomy()


def char_tokenizer() -> tokenizers.Tokenizer:
  """A toy tokenizer: one token per printable ASCII character (plus newline), no merges."""
  chars = [chr(c) for c in range(32, 127)] + ["\n"]
  tok = tokenizers.Tokenizer(models.BPE({c: i for i, c in enumerate(chars)}, merges=[]))
  tok.decoder = decoders.Fuse()
  tok.add_special_tokens([tokenizers.AddedToken("<eos>", special=True)])
  return tok


@pytest.fixture(scope="module")
def smollm2_tokenizer() -> tokenizers.Tokenizer:
  return gguf_tokenizer.build_tokenizer(gguf.read_metadata(convert.smollm2_gguf_path()))


def random_markers(rng: random.Random, tax: taxonomy.Taxonomy) -> dict:
  out = {}
  for cat in tax.categories:
    if rng.random() < 0.5:
      continue
    if cat.kind == "enum":
      out[cat.name] = rng.choice(cat.values)
    elif cat.kind == "int":
      out[cat.name] = rng.randint(cat.minimum or 0, cat.maximum or 99999)
    else:
      out[cat.name] = round(rng.uniform(-50, 50), 2)
  return out


def test_dfa_accepts_every_serialized_list():
  dfa = grammar.marker_list_dfa(TAX)
  rng = random.Random(0)
  for _ in range(200):
    text = template.serialize(random_markers(rng, TAX), TAX) + template.SEPARATOR
    assert dfa.step(dfa.start, text.encode()) == dfa.free, text
  assert dfa.step(dfa.start, b"<MARKER_LIST> </MARKER_LIST>\nanything <at all>") == dfa.free


@pytest.mark.parametrize("text", [
    "<MARKER_LIST> <domain> Cooking </domain>",  # Not an allowed value.
    "<MARKER_LIST> <domain> Code </domain> <task> CodeFix </task>",  # Out of taxonomy order.
    "<MARKER_LIST> <domain> Code </domain> <domain> Code </domain>",  # Duplicate.
    "<MARKER_LIST> <quality_bucket> 5 </quality_bucket>",  # Out of 1..4.
    "<MARKER_LIST> <length_tokens> 012 </length_tokens>",  # Leading zero.
    "<MARKER_LIST> <length_tokens> 1234567 </length_tokens>",  # More than max_int_digits.
    "<MARKER_LIST> <length_tokens> -3 </length_tokens>",  # Below the minimum 0.
    "<MARKER_LIST> <quality> 1.5 </quality>",  # Not the fixed precision.
    "<MARKER_LIST>  <domain> Code </domain>",  # Not the canonical spacing.
    "<MARKER_LIST> </MARKER_LIST> ",  # Not the separator.
])
def test_dfa_rejects(text):
  dfa = grammar.marker_list_dfa(TAX)
  assert dfa.step(dfa.start, text.encode()) == grammar.DEAD


def test_random_walks_of_the_dfa_parse_cleanly():
  tax = TAX.extend(categories=[taxonomy.Category("score", "float", minimum=-2, maximum=3),
                               taxonomy.Category("n", "int", minimum=-15, maximum=120)])
  dfa = grammar.marker_list_dfa(tax, max_int_digits=3)
  rng = random.Random(1)
  for _ in range(300):
    state, data = dfa.start, b""
    while state != dfa.free:
      byte = rng.choice(sorted(dfa.edges[state]))
      data += bytes([byte])
      state = dfa.edges[state][byte]
    parsed = template.parse_completion(data.decode() + "rest", tax)
    assert parsed.problems == [] and parsed.response == "rest", data
    assert tax.validate(parsed.markers) == parsed.markers


@jax.jit
def _walk_step(tables, state_B, budget_B, key):
  vocab_size = tables.col_of_token_V.shape[0]
  mask_BV = constraints.allowed_mask(tables, state_B, budget_B, vocab_size)
  logits_BV = jax.random.normal(key, mask_BV.shape)
  token_B = jnp.argmax(jnp.where(mask_BV, logits_BV, -jnp.inf), axis=-1).astype(jnp.int32)
  return token_B, constraints.advance(tables, state_B, token_B)


def _walk_tokens(automaton, tables, rows, seed, budget, start=None):
  """Samples `budget` tokens per row under the mask from random logits; (ids per row, states).
  Tokens after a row's list closed are free text."""
  state = jnp.full((rows,), automaton.start if start is None else start, jnp.int32)
  out = []
  for i in range(budget):
    token, state = _walk_step(tables, state, jnp.full((rows,), budget - i),
                              jax.random.fold_in(jax.random.key(seed), i))
    out.append(np.asarray(token))
  return np.stack(out, axis=1).tolist(), np.asarray(state)


@pytest.mark.parametrize("which", ["char", "smollm2"])
def test_token_walks_always_close_a_valid_list(which, request):
  tok = char_tokenizer() if which == "char" else request.getfixturevalue("smollm2_tokenizer")
  automaton = constraints.build(TAX, tok)
  tables = automaton.tables(tok.get_vocab_size() + 7)  # Models often pad the vocabulary.
  rows, states = _walk_tokens(automaton, tables, 8, seed=0, budget=120)
  assert (states == automaton.free).all()
  for ids in rows:
    parsed = template.parse_completion(tok.decode(ids), TAX)
    assert parsed.problems == [] and parsed.has_list, tok.decode(ids)
    assert TAX.validate(parsed.markers) == parsed.markers
  # The tightest budget still closes the list.
  budget = int(automaton.dist_S[automaton.start])
  rows, states = _walk_tokens(automaton, tables, 4, seed=1, budget=budget)
  assert (states == automaton.free).all()


def test_special_and_padding_tokens_are_never_allowed_in_a_list():
  tok = char_tokenizer()
  automaton = constraints.build(TAX, tok)
  tables = automaton.tables(tok.get_vocab_size() + 3)
  mask = constraints.allowed_mask(tables, jnp.asarray([automaton.start]), jnp.asarray([100]),
                                  tok.get_vocab_size() + 3)
  assert np.flatnonzero(np.asarray(mask[0])).tolist() == [tok.token_to_id("<")]
  free = constraints.allowed_mask(tables, jnp.asarray([automaton.free]), jnp.asarray([1]),
                                  tok.get_vocab_size() + 3)
  assert bool(jnp.all(free))


def test_forced_prefix_starts_mid_list(smollm2_tokenizer):
  automaton = constraints.build(TAX, smollm2_tokenizer)
  prefix = template.serialize({"domain": "Code"}, TAX)[:-len(" </MARKER_LIST>")]
  state = automaton.state_after(prefix)
  rows, ends = _walk_tokens(automaton, automaton.tables(49152), 1, 3, budget=200, start=state)
  parsed = template.parse_completion(prefix + smollm2_tokenizer.decode(rows[0]), TAX)
  assert ends[0] == automaton.free and parsed.problems == [] and parsed.markers["domain"] == "Code"
  assert all(k not in ("quality", "task") for k in list(parsed.markers)[1:])  # Order kept.
  with pytest.raises(ValueError, match="not the beginning"):
    automaton.state_after("<MARKER_LIST> <domain> Cooking")


def test_token_bytes_undo_byte_level_spelling(smollm2_tokenizer):
  table = constraints.token_bytes(smollm2_tokenizer)
  text = "Grüße, 世界!\n  <MARKER_LIST>"
  ids = smollm2_tokenizer.encode(text).ids
  assert b"".join(table[i] for i in ids).decode() == text
  assert table[smollm2_tokenizer.token_to_id("<|im_end|>")] is None


def test_stop_strings_match_across_token_splits():
  tok = char_tokenizer()
  table = stops.build(["END", "\n\n"], constraints.token_bytes(tok), tok.get_vocab_size())
  match = table.next_QV.shape[0]

  def run(text):
    state = jnp.zeros((1,), jnp.int32)
    for i, t in enumerate(tok.encode(text).ids):
      state = stops.advance(table, state, jnp.asarray([t]))
      if int(state[0]) == match:
        return i
    return None
  assert run("abc EN END x") == len("abc EN END") - 1
  assert run("ENEND") == 4
  assert run("a\nb\n\nc") == 4
  assert run("no stop here") is None
  words = stops.build(["stop"], [b"st", b"op", b"sto", b"p", None], 6)
  state = jnp.zeros((1,), jnp.int32)
  for t in [0, 3, 1]:  # "st" "p" "op": "stpop" holds no "stop".
    state = stops.advance(words, state, jnp.asarray([t]))
  assert int(state[0]) != words.next_QV.shape[0]
  state = jnp.zeros((1,), jnp.int32)
  for t in [2, 4, 3]:  # "sto", special, "p": the special token adds no text.
    state = stops.advance(words, state, jnp.asarray([t]))
  assert int(state[0]) == words.next_QV.shape[0]
