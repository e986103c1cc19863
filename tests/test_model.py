"""Tests of the transformer: presets at full size, packing, KV cache, remat, scan, attention impls.

Models are built from numpy weights through `hf.load_from_tensors` (no XLA compile for random
init), so every test pays for its forward/grad compiles only.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from treasure_jax.model import attention
from treasure_jax.model import config
from treasure_jax.model import hf
from treasure_jax.model import transformer

TINY = config.preset("tiny", dtype="float32")
# Gemma 2 features on the tiny shape: local/global layers (window 3), soft-capping, post-norms.
TINY_GEMMA = TINY.replace(
    family="gemma2", norm_offset=1.0, activation="gelu_tanh", scale_embeddings=True,
    post_norms=True, query_pre_attn_scalar=24.0, attn_logit_softcap=2.0, final_logit_softcap=5.0,
    sliding_window=3, attention_pattern=("local", "global"))


def random_tensors(cfg: config.ModelConfig, seed: int) -> dict[str, np.ndarray]:
  """HF-named random weights: unit-scale activations, non-trivial norm scales and biases."""
  rng = np.random.RandomState(seed)
  out = {}
  for name, shape in hf.tensor_shapes(cfg).items():
    if name.endswith("norm.weight"):
      out[name] = (1.0 - cfg.norm_offset) + 0.1 * rng.randn(*shape)
    elif name.endswith("bias") or name.endswith("embed_tokens.weight"):
      out[name] = 0.5 * rng.randn(*shape)
    else:
      out[name] = rng.randn(*shape) / np.sqrt(shape[-1])
  return {name: x.astype(np.float32) for name, x in out.items()}


def numpy_model(cfg: config.ModelConfig, seed: int = 0, **overrides) -> transformer.Transformer:
  tensors = random_tensors(cfg, seed)
  return hf.load_from_tensors(hf.config_to_hf(cfg), tensors.__getitem__, tensors,
                              dtype=cfg.dtype, **overrides)[1]


# One jitted forward for the module: the GraphDef (which holds the config) is a static argument,
# so tests using the same config and shapes share one compile.
_forward = jax.jit(lambda graphdef, state, *args: transformer.apply(graphdef, state, *args)[0],
                   static_argnums=0)


def jit_forward(model: transformer.Transformer):
  graphdef, state = nnx.split(model)
  return lambda *args: np.asarray(_forward(graphdef, state, *args))


@pytest.mark.parametrize("name,expected", [
    ("smollm2_135m", 134_515_008), ("llama3_8b", 8_030_261_248),
    ("qwen2_7b", 7_615_616_512), ("gemma2_9b", 9_241_705_984)])
def test_full_size_presets_build_with_eval_shape(name, expected):
  cfg = config.preset(name)
  assert transformer.param_count(transformer.abstract_model(cfg)) == expected
  hf.config_to_hf(cfg)  # Every preset is expressible as a HF config.


def test_scanned_preset_builds_with_eval_shape():
  model = transformer.abstract_model(config.preset("gemma2_9b", scan_layers=True))
  assert model.layers.attn.q_proj.kernel.shape == (42, 3584, 16, 256)
  assert model.layers.attn.q_proj.kernel.get_metadata()["out_sharding"] == (
      "layers", "embed", "heads", "head_dim")
  assert transformer.param_count(model) == 9_241_705_984


def test_config_errors_name_the_field():
  with pytest.raises(ValueError, match="remat"):
    config.preset("tiny", remat="sometimes")
  with pytest.raises(ValueError, match="sliding_window"):
    config.preset("tiny", attention_pattern=("local",))
  with pytest.raises(ValueError, match="num_layers=3"):
    config.preset("tiny", num_layers=3, attention_pattern=("local", "global"), sliding_window=4,
                  scan_layers=True)
  with pytest.raises(ValueError, match="unknown key.*num_layer"):
    config.from_dict({"preset": "tiny", "num_layer": 3})
  assert config.from_dict({"preset": "tiny", "num_layers": 3}).num_layers == 3


# Packing inputs, batch 4 x 12: row 0 packs a (7 tokens) and b (5); rows 1 and 2 hold a and b
# alone, right-padded; row 3 packs a with a different b.
_A, _B = np.random.RandomState(0).randint(0, TINY.vocab_size, (2, 7))
_B = _B[:5]
_PACKED = np.stack([np.concatenate([_A, _B]), np.pad(_A, (0, 5)), np.pad(_B, (0, 7)),
                    np.concatenate([_A, (_B + 1) % TINY.vocab_size])])
_POSITIONS = np.stack([np.r_[0:7, 0:5], np.arange(12), np.arange(12), np.r_[0:7, 0:5]])
_SEGMENTS = np.array([[1] * 7 + [2] * 5, [1] * 7 + [0] * 5, [1] * 5 + [0] * 7, [1] * 7 + [2] * 5])
_NO_SOFTCAP = TINY_GEMMA.replace(attn_logit_softcap=None)  # dot_product_attention: no softcap.


def test_packed_segments_do_not_see_each_other():
  logits = jit_forward(numpy_model(_NO_SOFTCAP))(_PACKED, _POSITIONS, _SEGMENTS)
  np.testing.assert_allclose(logits[0, :7], logits[1, :7], atol=1e-5)
  np.testing.assert_allclose(logits[0, 7:], logits[2, :5], atol=1e-5)
  np.testing.assert_allclose(logits[3, :7], logits[0, :7], atol=1e-6)  # b changed, a did not.
  assert np.abs(logits[3, 7:] - logits[0, 7:]).max() > 1e-2


def test_dpa_xla_matches_einsum_path():
  einsum = jit_forward(numpy_model(_NO_SOFTCAP))(_PACKED, _POSITIONS, _SEGMENTS)
  dpa = jit_forward(numpy_model(_NO_SOFTCAP, attention_impl="dpa_xla"))(
      _PACKED, _POSITIONS, _SEGMENTS)
  np.testing.assert_allclose(dpa, einsum, atol=1e-5)


@pytest.mark.slow  # The Pallas interpreter runs the TPU kernel on CPU: ~6 s for one small case.
def test_splash_interpreted_on_cpu_matches_einsum():
  ks = jax.random.split(jax.random.key(0), 3)
  q = jax.random.normal(ks[0], (1, 128, 2, 16))  # 128: the kernel's smallest block.
  k, v = (jax.random.normal(kk, (1, 128, 1, 16)) for kk in ks[1:])
  segments = jnp.array([[1] * 70 + [2] * 58])
  positions = jnp.array([list(range(70)) + list(range(58))])
  mask = attention.make_mask(positions, segments, positions, segments, 16)
  ref = attention.xla_attention(q, k, v, mask, scale=0.25, softcap=5.0)
  out = attention.splash_attention(q, k, v, segments, scale=0.25, window=16, softcap=5.0,
                                   plan=None, interpret=True)
  np.testing.assert_allclose(np.asarray(out), np.asarray(ref), atol=1e-5)


@pytest.mark.parametrize("impl,platform", [("cudnn", "GPU"), ("splash", "TPU")])
def test_accelerator_only_attention_fails_clearly_on_cpu(impl, platform):
  model = transformer.abstract_model(TINY.replace(attention_impl=impl, dtype="bfloat16"))
  with pytest.raises(ValueError, match=f"attention_impl='{impl}' needs a {platform}"):
    model(jnp.zeros((1, 4), jnp.int32))


@pytest.mark.parametrize("cfg", [TINY, TINY_GEMMA.replace(scan_layers=True)],
                         ids=["llama", "gemma2_scan"])
def test_kv_cache_prefill_and_decode_match_full_forward(cfg):
  model = numpy_model(cfg, seed=3)
  graphdef, state = nnx.split(model)
  rng = np.random.RandomState(2)
  lengths, steps, width = np.array([5, 2, 7]), 4, 7
  full = np.zeros((3, width + steps), np.int32)  # Each row: prompt + continuation, right-padded.
  full_segments = np.zeros_like(full)
  for i, n in enumerate(lengths):
    full[i, :n + steps] = rng.randint(0, cfg.vocab_size, n + steps)
    full_segments[i, :n + steps] = 1
  prompts = np.where(np.arange(width) < lengths[:, None], full[:, :width], 0)
  next_tokens = np.stack([full[i, n:n + steps] for i, n in enumerate(lengths)])  # [B, steps]

  @jax.jit
  def prefill_and_decode(state, prompts, segments, next_tokens):
    cache = transformer.init_cache(cfg, 3, 16)
    logits, cache = transformer.apply(graphdef, state, prompts, segment_ids_BT=segments,
                                      cache=cache)

    def step(cache, token_B):  # The cache is a loop carry, as in a while_loop decoder.
      step_logits, cache = transformer.apply(graphdef, state, token_B[:, None], cache=cache)
      return cache, step_logits[:, 0]
    cache, step_logits = jax.lax.scan(step, cache, next_tokens.T)
    return logits, step_logits.transpose(1, 0, 2), cache

  segments = (np.arange(width) < lengths[:, None]).astype(np.int32)
  prefill_logits, step_logits, cache = prefill_and_decode(state, prompts, segments, next_tokens)
  np.testing.assert_array_equal(np.asarray(cache.end_B), lengths + steps)
  reference = jit_forward(model)(full, np.arange(width + steps)[None].repeat(3, 0), full_segments)
  for i, n in enumerate(lengths):
    np.testing.assert_allclose(prefill_logits[i, :n], reference[i, :n], atol=1e-5)
    np.testing.assert_allclose(step_logits[i], reference[i, n:n + steps], atol=1e-5)


def _logits_and_grads(model, tokens):
  graphdef, state = nnx.split(model)

  def loss_fn(state):
    logits = transformer.apply(graphdef, state, tokens)[0]
    logp = jax.nn.log_softmax(logits[:, :-1])
    return -jnp.mean(jnp.take_along_axis(logp, tokens[:, 1:, None], axis=-1)), logits
  (_, logits), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(state)
  # As HF-named arrays, so plain and scanned (stacked) layouts compare name by name.
  return np.asarray(logits), dict(hf.hf_tensors(nnx.merge(graphdef, grads)))


@pytest.fixture(scope="module")
def plain_logits_and_grads():
  tokens = jnp.asarray(np.random.RandomState(3).randint(0, TINY.vocab_size, (2, 10)))
  return tokens, _logits_and_grads(numpy_model(TINY, seed=4), tokens)


@pytest.mark.parametrize("changes", [
    dict(remat="minimal"), dict(scan_layers=True, remat="full"), dict(fuse_projections=False),
    pytest.param(dict(remat="dots_saveable"), marks=pytest.mark.slow),
    pytest.param(dict(scan_layers=True), marks=pytest.mark.slow)],
    ids=["minimal", "scan_full", "unfused", "dots_saveable", "scan"])
def test_remat_and_scan_match_plain_logits_and_grads(changes, plain_logits_and_grads):
  tokens, (logits, grads) = plain_logits_and_grads
  variant_logits, variant_grads = _logits_and_grads(numpy_model(TINY, seed=4, **changes), tokens)
  np.testing.assert_allclose(variant_logits, logits, atol=1e-5)
  assert grads.keys() == variant_grads.keys()
  for name, g in grads.items():
    np.testing.assert_allclose(variant_grads[name], g, atol=1e-6, err_msg=name)


def test_bfloat16_scanned_cached_forward_tracks_float32():
  cfg = TINY_GEMMA.replace(scan_layers=True)
  tokens = np.random.RandomState(5).randint(0, cfg.vocab_size, (3, 11))  # Shapes of the KV test.
  expected = jit_forward(numpy_model(cfg, seed=3))(
      tokens, np.arange(11)[None].repeat(3, 0), np.ones((3, 11), np.int32))
  model = numpy_model(cfg.replace(dtype="bfloat16"), seed=3, param_dtype="bfloat16")
  graphdef, state = nnx.split(model)
  logits, cache = jax.jit(lambda state, t: transformer.apply(
      graphdef, state, t, cache=transformer.init_cache(model.cfg, 3, 12)))(state, tokens)
  assert logits.dtype == jnp.float32 and cache.k_LBSKH.dtype == jnp.bfloat16
  # bfloat16 weights and activations (8 mantissa bits) on logits soft-capped at 5.
  np.testing.assert_allclose(np.asarray(logits), expected, atol=0.15)
