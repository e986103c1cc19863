"""Tests of train/optim.py: schedules, the weight-decay mask, clipping."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from treasure_jax.model import config as model_config
from treasure_jax.model import transformer
from treasure_jax.train import optim
from treasure_jax.train import state as state_lib


def test_cosine_schedule_warms_up_from_zero_and_ends_at_final_lr():
  cfg = optim.OptimConfig(schedule="cosine", peak_lr=2.5e-4, final_lr=1.25e-4, warmup_steps=10)
  lr = optim.schedule(cfg, 100)
  assert float(lr(0)) == 0.0
  np.testing.assert_allclose(float(lr(5)), 1.25e-4, rtol=1e-6)
  np.testing.assert_allclose(float(lr(10)), 2.5e-4, rtol=1e-6)
  np.testing.assert_allclose(float(lr(55)), (2.5e-4 + 1.25e-4) / 2, rtol=1e-5)  # cosine midpoint
  np.testing.assert_allclose(float(lr(100)), 1.25e-4, rtol=1e-6)


def test_linear_and_constant_schedules():
  linear = optim.schedule(optim.OptimConfig(schedule="linear", peak_lr=1.0, final_lr=0.0,
                                            warmup_steps=0), 10)
  np.testing.assert_allclose([float(linear(s)) for s in (0, 5, 10)], [1.0, 0.5, 0.0], atol=1e-7)
  constant = optim.schedule(optim.OptimConfig(schedule="constant", peak_lr=3e-4,
                                              warmup_steps=4), 10)
  np.testing.assert_allclose([float(constant(s)) for s in (0, 2, 4, 9)],
                             [0.0, 1.5e-4, 3e-4, 3e-4], rtol=1e-6)


def test_bad_settings_name_the_key():
  with pytest.raises(ValueError, match="optim.schedule"):
    optim.OptimConfig(schedule="exp")
  with pytest.raises(ValueError, match="optim.warmup_steps"):
    optim.schedule(optim.OptimConfig(warmup_steps=20), 10)


def test_decay_mask_spares_norms_and_biases_only():
  params = state_lib.split_model(transformer.abstract_model(model_config.preset("tiny")))[1]
  mask = state_lib.flatten(optim.decay_mask(params))
  no_decay = sorted(k for k, v in mask.items() if not v)
  assert no_decay == sorted(k for k in mask if k.endswith("norm.scale"))
  assert mask["embedder.embedding"] and mask["layers.0.attn.q_proj.kernel"]
  assert not optim.decay_mask({"attn": {"q_proj": {"bias": 1.0}}})["attn"]["q_proj"]["bias"]


def test_weight_decay_moves_kernels_not_norms_when_grads_are_zero():
  params = {"final_norm": {"scale": jnp.full((4,), 2.0)},
            "layers": {"0": {"mlp": {"up_proj": {"kernel": jnp.full((4, 8), 3.0)}}}}}
  tx = optim.make(optim.OptimConfig(schedule="constant", peak_lr=0.1, warmup_steps=0,
                                    weight_decay=0.5), 10)

  @jax.jit
  def one_update(p):
    updates, _ = tx.update(jax.tree.map(jnp.zeros_like, p), tx.init(p), p)
    return optax.apply_updates(p, updates)
  new = state_lib.flatten(one_update(params))
  np.testing.assert_array_equal(new["final_norm.scale"], 2.0)
  # Decoupled decay: w <- w - lr * wd * w.
  np.testing.assert_allclose(new["layers.0.mlp.up_proj.kernel"], 3.0 * (1 - 0.1 * 0.5),
                             rtol=1e-6)


def test_clipping_bounds_the_global_norm_seen_by_adam():
  params = {"w": jnp.ones((4, 4))}
  grads = {"w": jnp.full((4, 4), 25.0)}  # global norm 100
  for clip, expected in ((1.0, 1.0), (0.0, 100.0)):
    tx = optim.make(optim.OptimConfig(clip_norm=clip, b1=0.9, warmup_steps=0), 10)
    _, state = jax.jit(lambda g, p: tx.update(g, tx.init(p), p))(grads, params)
    adam_state = state[-1][0] if clip else state[0]
    # After one step, Adam's first moment is (1 - b1) * the (clipped) gradient.
    np.testing.assert_allclose(float(optim.global_norm(adam_state.mu)), 0.1 * expected,
                               rtol=1e-5)
