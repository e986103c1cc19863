"""Tests of the LoRA adapter mechanics (model/lora.py): init, forward = merged kernels, sharding."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from treasure_jax.model import config
from treasure_jax.model import lora
from treasure_jax.model import sharding
from treasure_jax.model import transformer

TINY = config.preset("tiny", dtype="float32")
LORA = config.LoraConfig(rank=4, alpha=8.0, targets=("q_proj", "v_proj", "(gate|up)_proj"))

_forward = jax.jit(lambda graphdef, state, tokens: transformer.apply(graphdef, state, tokens)[0],
                   static_argnums=0)


def _logits(model: transformer.Transformer, tokens) -> np.ndarray:
  graphdef, state = nnx.split(model)
  return np.asarray(_forward(graphdef, state, tokens))


def with_random_b(model: transformer.Transformer, seed: int = 1) -> transformer.Transformer:
  """The model with every (zero-initialized) LoRA B drawn at random, so adapters change logits."""
  graphdef, state = nnx.split(model)
  rng = np.random.RandomState(seed)
  leaves = []
  for path, var in nnx.to_flat_state(state):
    if path[-1] == "lora_b":
      var = var.replace(jnp.asarray(0.3 * rng.randn(*var.shape), var.dtype))
    leaves.append((path, var))
  return nnx.merge(graphdef, nnx.from_flat_state(leaves))


def test_config_checks_targets_rank_and_dropout():
  assert LORA.targeted() == ("q_proj", "v_proj", "gate_proj", "up_proj")
  assert LORA.scale == 2.0
  with pytest.raises(ValueError, match="'qproj' matches none"):
    config.LoraConfig(targets=("qproj",))
  with pytest.raises(ValueError, match="dropout"):
    config.LoraConfig(dropout=0.1)
  with pytest.raises(ValueError, match=r"model.lora: unknown key\(s\) \['ranks'\]"):
    config.from_dict({**TINY.to_dict(), "lora": {"ranks": 4}})
  assert config.from_dict({**TINY.to_dict(), "lora": {"rank": 2}}).lora.rank == 2


@pytest.mark.parametrize("scan", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_fresh_adapters_keep_the_base_weights_and_logits(scan):
  cfg = TINY.replace(scan_layers=scan)
  base = transformer.create(cfg, seed=3)
  adapted = transformer.create(cfg.replace(lora=LORA), seed=3)
  adapters, frozen = lora.split(nnx.state(adapted, nnx.Param))
  want = dict(nnx.to_flat_state(nnx.state(base, nnx.Param)))
  got = dict(nnx.to_flat_state(frozen))
  assert set(got) == set(want)
  for path in want:
    np.testing.assert_array_equal(got[path][...], want[path][...])
  d, n, k, h, f, layers = (cfg.embed_dim, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim,
                           cfg.mlp_dim, cfg.num_layers)
  per_layer = 4 * ((d + n * h) + (d + k * h) + 2 * (d + f))  # q, v, gate, up at rank 4.
  assert lora.count(adapted) == lora.count(adapters) == layers * per_layer
  assert all(isinstance(v, nnx.LoRAParam) for _, v in nnx.to_flat_state(adapters))
  tokens = jnp.arange(12, dtype=jnp.int32).reshape(2, 6) % cfg.vocab_size
  np.testing.assert_array_equal(_logits(adapted, tokens), _logits(base, tokens))


@pytest.mark.parametrize("fuse,scan", [(True, False),
                                       pytest.param(False, True, marks=pytest.mark.slow)])
def test_adapted_forward_equals_the_merged_kernels(fuse, scan):
  cfg = TINY.replace(fuse_projections=fuse, scan_layers=scan,
                     lora=config.LoraConfig(rank=4, alpha=8.0))
  adapted = with_random_b(transformer.create(cfg, seed=0))
  merged_cfg = cfg.replace(lora=None)
  graphdef = nnx.graphdef(transformer.abstract_model(merged_cfg))
  merged = nnx.merge(graphdef, lora.merged_kernels(nnx.state(adapted, nnx.Param), cfg))
  tokens = (jnp.arange(16, dtype=jnp.int32).reshape(2, 8) * 7) % cfg.vocab_size
  got, want = _logits(adapted, tokens), _logits(merged, tokens)
  assert np.abs(want - _logits(transformer.create(merged_cfg, seed=0), tokens)).max() > 1e-2
  np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5)


def test_adapters_shard_along_their_projection_axis():
  mesh = sharding.make_mesh(sharding.MeshConfig(shape=(2, 2, 2)))
  cfg = TINY.replace(lora=config.LoraConfig(rank=4, targets=("q_proj", "down_proj")))
  state = nnx.state(transformer.abstract_model(cfg), lora.ADAPTERS)
  specs = {path[-3:]: s.spec for path, s in nnx.to_flat_state(
      sharding.state_shardings(state, mesh, sharding.preset_rules("fsdp_tp")))
           if path[1] == 0}
  assert specs == {("q_proj", "lora", "lora_a"): P("fsdp", None),
                   ("q_proj", "lora", "lora_b"): P(None, "tensor"),
                   ("down_proj", "lora", "lora_a"): P("tensor", None),
                   ("down_proj", "lora", "lora_b"): P(None, "fsdp")}
