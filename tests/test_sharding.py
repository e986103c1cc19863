"""Tests of mesh construction, the rules table and sharded execution on the 8-device CPU mesh."""
from __future__ import annotations

import functools

import jax
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from treasure_jax.model import config
from treasure_jax.model import hf
from treasure_jax.model import layers
from treasure_jax.model import sharding
from treasure_jax.model import transformer

TINY = config.preset("tiny", dtype="float32")


def _numpy_model(cfg: config.ModelConfig, seed: int = 0) -> transformer.Transformer:
  rng = np.random.RandomState(seed)
  tensors = {name: (rng.randn(*shape) / np.sqrt(shape[-1])).astype(np.float32)
             for name, shape in hf.tensor_shapes(cfg).items()}
  return hf.load_from_tensors(hf.config_to_hf(cfg), tensors.__getitem__, tensors,
                              dtype="float32")[1]


@pytest.fixture(scope="module")
def mesh():
  return sharding.make_mesh(sharding.MeshConfig(shape=(2, 2, 2)))


def test_make_mesh_resolves_minus_one_and_rejects_bad_shapes():
  assert dict(sharding.make_mesh(sharding.MeshConfig((1, -1, 2))).shape) == {
      "data": 1, "fsdp": 4, "tensor": 2}
  with pytest.raises(ValueError, match="needs 6 devices"):
    sharding.make_mesh(sharding.MeshConfig((1, 3, 2)))
  with pytest.raises(ValueError, match="at most one -1"):
    sharding.MeshConfig((-1, -1, 2))
  with pytest.raises(ValueError, match="unknown sharding rules preset 'tp'"):
    sharding.MeshConfig((1, -1, 1), rules="tp")


@pytest.mark.parametrize("preset,q_spec,embedding_spec", [
    ("dp", P(None, None, None), P(None, None)),
    ("fsdp", P("fsdp", None, None), P(None, "fsdp")),
    ("fsdp_tp", P("fsdp", "tensor", None), P("tensor", "fsdp"))])
def test_rules_presets_shard_parameters(mesh, preset, q_spec, embedding_spec):
  state = nnx.state(transformer.abstract_model(TINY))
  shardings = sharding.state_shardings(state, mesh, sharding.preset_rules(preset))
  assert shardings["layers"][0]["attn"]["q_proj"]["kernel"].get_value().spec == q_spec
  assert shardings["embedder"]["embedding"].get_value().spec == embedding_spec
  assert sharding.batch_sharding(mesh).spec == P(("data", "fsdp"))


def test_indivisible_mesh_axes_are_dropped_and_unknown_names_rejected(mesh):
  rules = sharding.preset_rules("fsdp_tp")
  assert sharding.logical_to_spec(("kv_heads", "embed"), rules, mesh, (3, 8)) == P(None, "fsdp")
  assert sharding.logical_to_spec(("batch",), rules, mesh, (6,)) == P("data")
  with pytest.raises(ValueError, match="logical axis 'hidden'"):
    sharding.logical_to_spec(("hidden",), rules)


@pytest.fixture(scope="module")
def reference():
  tokens = np.random.RandomState(0).randint(0, TINY.vocab_size, (8, 12))
  segments = np.array([[1] * 5 + [2] * 7] * 4 + [[1] * 12] * 4)
  model = _numpy_model(TINY)
  return model, tokens, segments, np.asarray(jax.jit(lambda m, t, s: m(t, None, s)[0])(
      model, tokens, segments))


def test_projections_fuse_unless_the_plan_splits_heads_or_mlp(mesh):
  fsdp, tp = sharding.Plan.create(mesh, "fsdp"), sharding.Plan.create(mesh, "fsdp_tp")
  assert fsdp.splits("embed") and not fsdp.splits("heads") and tp.splits("heads")
  fuse = functools.partial(layers.fuse, cached=False)
  assert fuse(TINY, None, "heads") and fuse(TINY, fsdp, "heads", "kv_heads")
  assert not fuse(TINY, tp, "heads", "kv_heads") and not fuse(TINY, tp, "mlp")
  assert not fuse(TINY.replace(fuse_projections=False), fsdp, "mlp")
  one_way = sharding.make_mesh(sharding.MeshConfig((8, 1, 1), "fsdp_tp"))
  assert fuse(TINY, sharding.Plan.create(one_way, "fsdp_tp"), "heads")  # tensor size 1
  assert not layers.fuse(TINY, None, "heads", cached=True)  # The KV-cache path: unfused.


@pytest.mark.parametrize("preset", ["dp", "fsdp", "fsdp_tp"])
def test_sharded_forward_matches_unsharded(mesh, reference, preset):
  model, tokens, segments, expected = reference
  sharded = transformer.shard_model(model, mesh, preset)
  graphdef, state = nnx.split(sharded)
  batch = sharding.batch_sharding(mesh)
  forward = jax.jit(lambda state, t, s: transformer.apply(graphdef, state, t, None, s)[0],
                    in_shardings=(sharding.state_shardings(state, mesh, sharded.plan.rules),
                                  batch, batch))
  logits = forward(state, tokens, segments)
  assert logits.sharding.spec[0] == ("data", "fsdp")
  np.testing.assert_allclose(np.asarray(logits), expected, atol=1e-5)


def test_sharded_cache_prefill_matches_unsharded_forward(mesh, reference):
  model, tokens, segments, expected = reference
  sharded = transformer.shard_model(model, mesh, "fsdp_tp")
  cache = sharded.init_cache(8, 16)
  assert cache.k_LBSKH.sharding.spec == P(None, ("data", "fsdp"), None, "tensor", None)
  graphdef, state = nnx.split(sharded)
  logits, cache = jax.jit(lambda state, t, s, c: transformer.apply(graphdef, state, t, None, s, c))(
      state, tokens, segments, cache)
  # Packed prefill with a cache: segment 2 attends only to itself, as without the cache.
  np.testing.assert_allclose(np.asarray(logits), expected, atol=1e-5)
  np.testing.assert_array_equal(np.asarray(cache.end_B), [12] * 8)


def test_create_initializes_directly_into_shardings(mesh):
  model = transformer.create(TINY, seed=0, mesh=mesh, rules="fsdp_tp")
  kernel = model.layers[0].attn.q_proj.kernel[...]
  assert kernel.sharding.spec == P("fsdp", "tensor", None)
  assert {s.data.shape for s in kernel.addressable_shards} == {(32, 2, 16)}
  assert model.plan.mesh is mesh
  assert 0.05 < np.std(np.asarray(kernel)) < 1.0
