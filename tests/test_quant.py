"""Tests of the QLoRA base quantization (model/quant.py and its use in layers.Linear): the error
bound of blockwise absmax codes, which kernels are quantized, that a quantized model computes
exactly with its dequantized kernels, that an imported base is quantized as a random one is,
and the shardings of codes and scales."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from treasure_jax.model import config
from treasure_jax.model import lora
from treasure_jax.model import quant
from treasure_jax.model import sharding
from treasure_jax.model import transformer
from treasure_jax.train import base_model

import test_lora

TINY = config.preset("tiny", dtype="float32")


def qlora(bits: int, **changes) -> config.ModelConfig:
  return TINY.replace(lora=config.LoraConfig(rank=4, alpha=8.0, base_bits=bits,
                                             base_block_size=16), **changes)


@pytest.mark.parametrize("bits", [8, 4])
def test_codes_stay_within_half_a_step_of_the_weights(bits):
  w = jax.random.normal(jax.random.PRNGKey(0), (3, 4, 32, 5))  # lead, in (4, 32), out (5,).
  w = w.at[0, 1, :16, 2].set(0.0)  # An all-zero block dequantizes to zeros, not NaN.
  codes, scale = quant.quantize(w, n_out=1, bits=bits, block=8)
  assert codes.dtype == {8: jnp.int8, 4: jnp.int4}[bits] and codes.shape == w.shape
  assert scale.shape == (3, 4, 4, 5) and scale.dtype == jnp.float32
  qmax = 2 ** (bits - 1) - 1
  assert int(jnp.max(jnp.abs(codes.astype(jnp.int32)))) == qmax  # Each block's max is used.
  back = quant.dequantize(codes, scale, jnp.float32)
  step = np.repeat(np.asarray(scale), 8, axis=2)  # Each weight's own block scale.
  err = np.abs(np.asarray(back - w))
  assert np.all(err <= step / 2 + 1e-6)
  assert np.all(np.asarray(back)[0, 1, :16, 2] == 0.0)
  # The error is really that of `bits` bits: int8 is ~16x finer than int4.
  # Mean error / mean |w|, scaled by the levels: 0.059 (int8 x 16), 0.071 (int4) for this w.
  assert 0.03 < float(err.mean() / jnp.abs(w).mean()) * (2 ** (bits - 4)) < 0.15


def test_config_and_block_errors_name_the_field():
  with pytest.raises(ValueError, match="base_bits=3"):
    config.LoraConfig(base_bits=3)
  with pytest.raises(ValueError, match=r"base_block_size=24 does not divide q_proj's input axis "
                                       r"of 64"):
    transformer.abstract_model(TINY.replace(lora=config.LoraConfig(base_bits=4,
                                                                   base_block_size=24)))
  cfg = config.from_dict({**TINY.to_dict(), "lora": {"rank": 2, "base_bits": 4}})
  assert (cfg.lora.base_bits, cfg.lora.base_block_size) == (4, 64)


@pytest.mark.parametrize("bits,scan", [(4, False), (8, False),
                                       pytest.param(4, True, marks=pytest.mark.slow)])
def test_a_quantized_model_computes_with_its_dequantized_kernels(bits, scan):
  cfg = qlora(bits, scan_layers=scan)
  model = test_lora.with_random_b(transformer.create(cfg, seed=0))
  state = dict(nnx.to_flat_state(nnx.state(model, nnx.Param)))
  kernels = {p[-2]: v.dtype for p, v in state.items() if p[-1] == "kernel"}
  # Every projection is quantized (adapted or not); the (tied) embedding is not.
  assert kernels == dict.fromkeys(config.LORA_TARGETS, {8: jnp.int8, 4: jnp.int4}[bits])
  assert state[("embedder", "embedding")].dtype == jnp.float32
  merged_cfg = cfg.replace(lora=None)
  merged = nnx.merge(nnx.graphdef(transformer.abstract_model(merged_cfg)),
                     lora.merged_kernels(nnx.state(model, nnx.Param), cfg))
  tokens = (jnp.arange(16, dtype=jnp.int32).reshape(2, 8) * 7) % cfg.vocab_size
  got, want = test_lora._logits(model, tokens), test_lora._logits(merged, tokens)
  np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5)
  # The same seed's float base differs from its quantized one by the quantization error only.
  float_base = test_lora._logits(transformer.create(
      TINY.replace(scan_layers=scan, lora=config.LoraConfig(rank=4)), seed=0), tokens)
  quant_base = test_lora._logits(transformer.create(cfg, seed=0), tokens)
  rel = np.abs(quant_base - float_base).max() / np.abs(float_base).max()
  assert 0 < rel < {8: 0.05, 4: 0.5}[bits]


def test_an_imported_base_is_quantized_like_a_created_one(tmp_path):
  from treasure_jax.model import hf  # pylint: disable=g-import-not-at-top
  cfg = qlora(4)
  hf.save_dir(transformer.create(TINY, seed=5), tmp_path / "base")
  got = base_model.load_params(cfg, str(tmp_path / "base"), seed=5, mesh=None)
  want = nnx.state(transformer.create(cfg, seed=5), nnx.Param)
  got, want = dict(nnx.to_flat_state(got)), dict(nnx.to_flat_state(want))
  assert set(got) == set(want)
  for path, var in want.items():
    assert got[path].dtype == var.dtype, path
    np.testing.assert_array_equal(np.asarray(got[path][...], np.float32),
                                  np.asarray(var[...], np.float32), err_msg=str(path))


def test_codes_and_scales_shard_like_their_kernel():
  mesh = sharding.make_mesh(sharding.MeshConfig(shape=(2, 2, 2)))
  state = nnx.state(transformer.abstract_model(qlora(4)), lora.BASE)
  specs = {path[-2:]: s.spec for path, s in nnx.to_flat_state(
      sharding.state_shardings(state, mesh, sharding.preset_rules("fsdp_tp")))
           if path[1] == 0 and path[-2] in ("q_proj", "down_proj")}
  assert specs == {("q_proj", "kernel"): P("fsdp", "tensor", None),
                   ("q_proj", "kernel_scale"): P("fsdp", "tensor", None),
                   ("down_proj", "kernel"): P("tensor", "fsdp"),
                   ("down_proj", "kernel_scale"): P("tensor", "fsdp")}
