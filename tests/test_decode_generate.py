"""KV-cache generation: equals full forwards (every family), compiles once, samples
reproducibly, applies presence/frequency penalties as OpenAI defines them, stops on EOS, and
gives the same tokens sharded on the 8-device mesh."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from treasure_jax.decode import generate
from treasure_jax.decode import sampling
from treasure_jax.decode import stops
from treasure_jax.model import config
from treasure_jax.model import sharding
from treasure_jax.model import transformer

PROMPTS = [[5, 9, 200, 31, 7], [44, 3], [17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27]]

FAMILIES = {
    "llama": dict(),
    "qwen2": dict(family="qwen2", qkv_bias=True, tie_embeddings=False, rope_theta=1e6),
    "gemma2": dict(family="gemma2", norm_offset=1.0, activation="gelu_tanh",
                   scale_embeddings=True, post_norms=True, query_pre_attn_scalar=16.0,
                   attn_logit_softcap=50.0, final_logit_softcap=30.0, sliding_window=4,
                   attention_pattern=("local", "global")),
}


def tiny(family: str, **kw) -> config.ModelConfig:
  return config.preset("tiny", dtype="float32", **FAMILIES[family], **kw)


def full_forward_greedy(model, prompt, n, penalties=sampling.Penalties(), answer_from=0):
  """Reference: argmax of a full (cache-free) forward over the whole sequence, n times, less
  the penalties on the tokens generated so far from index `answer_from` on, applied from
  there on (numpy, not the library's `sampling.penalize`)."""
  graphdef, state = nnx.split(model)
  length = 32
  fwd = jax.jit(lambda s, t, seg: transformer.apply(graphdef, s, t, segment_ids_BT=seg)[0])
  seq = list(prompt)
  for _ in range(n):
    tokens = np.zeros((1, length), np.int32)
    tokens[0, :len(seq)] = seq
    seg = (np.arange(length) < len(seq)).astype(np.int32)[None]
    logits = np.asarray(fwd(state, tokens, seg)[0, len(seq) - 1], np.float64)
    counts = np.bincount(seq[len(prompt) + answer_from:], minlength=logits.shape[0])
    if len(seq) - len(prompt) >= answer_from:
      logits -= penalties.frequency * counts + penalties.presence * (counts > 0)
    seq.append(int(np.argmax(logits)))
  return seq[len(prompt):]


@pytest.mark.parametrize("family,scan", [
    ("llama", False), ("qwen2", False), ("gemma2", False),
    pytest.param("gemma2", True, marks=pytest.mark.slow)])
def test_greedy_equals_argmax_of_full_forwards(family, scan):
  model = transformer.create(tiny(family, scan_layers=scan), seed=1)
  out = generate.generate(model, PROMPTS, max_new_tokens=8)
  ref_model = transformer.create(tiny(family), seed=1) if scan else model
  for prompt, tokens in zip(PROMPTS, out.tokens):
    assert tokens == full_forward_greedy(ref_model, prompt, 8)
  assert out.stop_reasons == ["max_tokens"] * 3
  assert all(np.all(lp <= 0) and lp.shape == (8,) for lp in out.logprobs)


def test_penalties_equal_the_reference_and_break_repetition():
  # A random tiny model repeats itself under greedy decoding; the penalties are what stop it.
  model = transformer.create(tiny("llama"), seed=1)
  plain = generate.generate(model, PROMPTS, max_new_tokens=10)
  pen = sampling.Penalties(presence=0.5, frequency=1.5)
  out = generate.generate(model, PROMPTS, max_new_tokens=10, penalties=pen)
  for prompt, tokens in zip(PROMPTS, out.tokens):
    assert tokens == full_forward_greedy(model, prompt, 10, pen)
  assert out.tokens != plain.tokens
  repeats = lambda gen: sum(len(t) - len(set(t)) for t in gen.tokens)  # noqa: E731
  assert repeats(out) < repeats(plain), (plain.tokens, out.tokens)
  # Log-probabilities stay the model's own (before penalties): equal where the tokens agree.
  np.testing.assert_allclose(out.logprobs[0][:1], plain.logprobs[0][:1], rtol=1e-6)
  # Penalties are per row: one batch mixing them gives each row what it gets alone.
  mixed = generate.generate(model, PROMPTS, max_new_tokens=10,
                            penalties=[pen, sampling.Penalties(), pen])
  assert mixed.tokens == [out.tokens[0], plain.tokens[1], out.tokens[2]]
  with pytest.raises(ValueError, match=r"Penalties.frequency=2.5 must be in \[-2, 2\]"):
    sampling.Penalties(frequency=2.5)


def test_penalties_start_after_the_list_close():
  # A row with list_rows=True is neither penalised nor counted up to and including the token
  # that completes the list's closing string (here: one token's bytes stand for it).
  model = transformer.create(tiny("llama"), seed=1)
  vocab = model.cfg.vocab_size
  plain = generate.generate(model, PROMPTS, max_new_tokens=10)
  close_token = plain.tokens[0][3]
  k = plain.tokens[0].index(close_token)
  token_bytes = [b"a"] * vocab
  token_bytes[close_token] = b"</MARKER_LIST>"
  close = stops.build(["</MARKER_LIST>"], token_bytes, vocab)
  pen = sampling.Penalties(presence=0.5, frequency=1.5)
  out = generate.generate(model, PROMPTS, max_new_tokens=10, penalties=pen,
                          list_rows=[True, False, False], list_close=close)
  assert out.tokens[0][:k + 1] == plain.tokens[0][:k + 1]
  assert out.tokens[0] == full_forward_greedy(model, PROMPTS[0], 10, pen, answer_from=k + 1)
  for prompt, tokens in zip(PROMPTS[1:], out.tokens[1:]):
    assert tokens == full_forward_greedy(model, prompt, 10, pen)
  with pytest.raises(ValueError, match="list_rows needs list_close"):
    generate.generate(model, PROMPTS, max_new_tokens=2, penalties=pen, list_rows=[True] * 3)
  with pytest.raises(ValueError, match="2 penalties for 3 prompts"):
    generate.generate(model, PROMPTS, max_new_tokens=2, penalties=[pen, pen])


def test_decoding_compiles_once_per_shape_bucket():
  compiles = []
  listener = lambda event, *a, **k: compiles.append(event) if "backend_compile" in event else None
  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    model = transformer.create(tiny("llama"), seed=0)
    generate.generate(model, PROMPTS, max_new_tokens=24, seed=1)
    first = len(compiles)
    # New prompts (other lengths, same bucket), another seed and sampler parameters that are
    # the same dataclass: nothing new to compile, however many tokens are generated.
    generate.generate(model, [[1, 2, 3], [4] * 20, [7, 7]], max_new_tokens=24, seed=5)
    assert len(compiles) == first
    # Penalties compile one more loop; other penalty values reuse it.
    generate.generate(model, PROMPTS, max_new_tokens=24, penalties=sampling.Penalties(0.5, 1.0))
    penalized = len(compiles)
    generate.generate(model, PROMPTS, max_new_tokens=24,
                      penalties=[sampling.Penalties(1.5, 0.2), sampling.Penalties(),
                                 sampling.Penalties(0.0, 2.0)])
    assert len(compiles) == penalized
    assert first <= 3, compiles  # The loop itself is one executable, not one per token.
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)


def test_sampling_is_seeded_per_row():
  model = transformer.create(tiny("llama"), seed=0)
  hot = sampling.Temperature(5.0)
  a = generate.generate(model, PROMPTS, max_new_tokens=6, sampler=hot, seed=3)
  b = generate.generate(model, PROMPTS, max_new_tokens=6, sampler=hot, seed=3)
  c = generate.generate(model, PROMPTS, max_new_tokens=6, sampler=hot, seed=4)
  alone = generate.generate(model, PROMPTS[1:2], max_new_tokens=6, sampler=hot, seed=3,
                            row_seeds=[1])
  assert a.tokens == b.tokens and a.tokens != c.tokens
  assert alone.tokens[0] == a.tokens[1]


def test_samplers_respect_their_support():
  logits = jnp.log(jnp.asarray([[0.5, 0.3, 0.15, 0.05]] * 4000))
  keys = jax.random.split(jax.random.key(0), 4000)
  top_k = np.asarray(sampling.TopK(2).sample(logits, keys))
  top_p = np.asarray(sampling.TopP(0.7).sample(logits, keys))
  assert set(top_k) == {0, 1} and set(top_p) == {0, 1}
  assert abs((top_k == 0).mean() - 0.5 / 0.8) < 0.03
  greedy = np.asarray(sampling.Greedy().sample(logits[:8], keys[:8]))
  assert (np.asarray(sampling.TopK(1).sample(logits[:8], keys[:8])) == greedy).all()
  assert (np.asarray(sampling.TopP(1e-6).sample(logits[:8], keys[:8])) == greedy).all()
  with pytest.raises(ValueError, match="temperature"):
    sampling.make("temperature", temperature=0.0)
  with pytest.raises(ValueError, match="unknown sampler"):
    sampling.make("beam")


def test_eos_stops_each_row():
  model = transformer.create(tiny("llama"), seed=0)
  greedy = generate.generate(model, PROMPTS, max_new_tokens=8)
  eos = greedy.tokens[0][2]
  out = generate.generate(model, PROMPTS, max_new_tokens=8, eos_ids=[eos])
  first = greedy.tokens[0].index(eos)
  assert out.tokens[0] == greedy.tokens[0][:first + 1] and out.stop_reasons[0] == "eos"
  for got, full, reason in zip(out.tokens[1:], greedy.tokens[1:], out.stop_reasons[1:]):
    cut = full.index(eos) + 1 if eos in full else len(full)
    assert got == full[:cut] and reason == ("eos" if eos in full else "max_tokens")


def test_sharded_generation_equals_unsharded():
  cfg = tiny("llama")
  hot = sampling.TopP(0.9, temperature=2.0)
  ref = generate.generate(transformer.create(cfg, seed=2), PROMPTS, max_new_tokens=6,
                          sampler=hot, seed=1)
  mesh = sharding.make_mesh(sharding.MeshConfig((2, 2, 2), "fsdp_tp"))
  model = transformer.create(cfg, seed=2, mesh=mesh, rules="fsdp_tp")
  out = generate.generate(model, PROMPTS, max_new_tokens=6, sampler=hot, seed=1)
  assert out.tokens == ref.tokens
  np.testing.assert_allclose(np.concatenate(out.logprobs), np.concatenate(ref.logprobs),
                             rtol=1e-4, atol=1e-4)  # Sharded reductions reorder float sums.
  # Per-row penalties and the list gate, batch-sharded like the prompts (greedy: exact ties
  # are unlikely, so the sharded float sums give the same tokens).
  pen = dict(max_new_tokens=8, penalties=[sampling.Penalties(0.5, 1.5), sampling.Penalties(),
                                          sampling.Penalties(0.0, 2.0)],
             list_rows=[False, True, True],
             list_close=stops.build(["b"], [b"a"] * 255 + [b"b"], cfg.vocab_size))
  ref_pen = generate.generate(transformer.create(cfg, seed=2), PROMPTS, **pen)
  assert generate.generate(model, PROMPTS, **pen).tokens == ref_pen.tokens
