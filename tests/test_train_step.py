"""Tests of train/step.py: loss normalization, metrics, accumulation, sharded = unsharded."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from treasure_jax.model import config as model_config
from treasure_jax.model import sharding
from treasure_jax.model import transformer
from treasure_jax.train import optim
from treasure_jax.train import state as state_lib
from treasure_jax.train import step as step_lib

CFG = model_config.preset("tiny", dtype="float32")


def make_batch(seed: int, batch: int = 8, length: int = 32) -> dict[str, np.ndarray]:
  """Random tokens; each row: a prompt (no loss), a marker list, a response, then padding."""
  rng = np.random.default_rng(seed)
  tokens = rng.integers(1, CFG.vocab_size, (batch, length + 1)).astype(np.int32)
  idx = np.arange(length)[None, :]
  prompt = rng.integers(4, 10, (batch, 1))
  markers_end = prompt + rng.integers(2, 6, (batch, 1))
  end = rng.integers(length - 8, length + 1, (batch, 1))
  real = idx < end
  marker = (idx >= prompt) & (idx < markers_end)
  response = (idx >= markers_end) & real
  return {"inputs": tokens[:, :-1] * real, "targets": tokens[:, 1:] * real,
          "loss_weights": (marker | response).astype(np.float32),
          "marker_weights": marker.astype(np.float32),
          "response_weights": response.astype(np.float32),
          "segment_ids": real.astype(np.int32),
          "positions": np.broadcast_to(idx, (batch, length)).astype(np.int32) * real}


@pytest.fixture(scope="module")
def setup():
  mesh = sharding.make_mesh(sharding.MeshConfig(shape=(1, 1, 1)), jax.devices()[:1])
  model = transformer.create(CFG, seed=0, mesh=mesh)
  graphdef, params = state_lib.split_model(model)
  tx = optim.make(optim.OptimConfig(warmup_steps=0, peak_lr=1e-3), 10)
  abstract = state_lib.abstract(params, tx)
  shardings = state_lib.shardings(abstract, mesh, sharding.preset_rules("fsdp"))
  train_state = state_lib.create(params, tx, 0, shardings)
  return graphdef, train_state, tx


_RESULTS = {}


def _step(setup, accum_steps):
  """One jitted train step on batch 0 (compiled once per accum_steps in this module)."""
  if accum_steps not in _RESULTS:
    graphdef, train_state, tx = setup
    fn = functools.partial(step_lib.train_step, graphdef=graphdef, optimizer=tx,
                           lr_schedule=optim.schedule(optim.OptimConfig(warmup_steps=0), 10),
                           accum_steps=accum_steps)
    _RESULTS[accum_steps] = jax.jit(fn)(train_state, make_batch(0))
  return _RESULTS[accum_steps]


def test_loss_is_the_weighted_mean_nll_over_loss_tokens(setup):
  graphdef, train_state, _ = setup
  batch = make_batch(0)
  forward = jax.jit(lambda p, b: transformer.apply(graphdef, p, b["inputs"], b["positions"],
                                                   b["segment_ids"])[0])
  logits = forward(train_state.params, batch)
  logp = np.asarray(jax.nn.log_softmax(logits.astype(jnp.float32)))
  nll = -np.take_along_axis(logp, batch["targets"][..., None], -1)[..., 0]
  w, mw = batch["loss_weights"], batch["marker_weights"]
  _, metrics = _step(setup, 1)
  np.testing.assert_allclose(metrics["loss"], (nll * w).sum() / w.sum(), rtol=1e-5)
  np.testing.assert_allclose(metrics["marker_loss"], (nll * mw).sum() / mw.sum(), rtol=1e-5)
  hits = (logp.argmax(-1) == batch["targets"]) * mw
  np.testing.assert_allclose(metrics["marker_token_accuracy"], hits.sum() / mw.sum(), rtol=1e-6)
  assert float(metrics["tokens"]) == batch["segment_ids"].sum()
  assert float(metrics["loss_tokens"]) == w.sum()
  assert set(metrics) >= {"loss", "marker_loss", "response_loss", "marker_token_accuracy", "lr",
                          "grad_norm"}


def test_accumulation_gives_the_same_update_as_one_batch(setup):
  state1, m1 = _step(setup, 1)
  state4, m4 = _step(setup, 4)
  # Float sums in another order: equal to float32 rounding, not bitwise.
  for key in ("loss", "marker_loss", "response_loss", "grad_norm"):
    np.testing.assert_allclose(m4[key], m1[key], rtol=2e-5, err_msg=key)
  flat1, flat4 = state_lib.flatten(state1.params), state_lib.flatten(state4.params)
  for key in flat1:
    np.testing.assert_allclose(flat4[key], flat1[key], rtol=1e-4, atol=1e-6, err_msg=key)
  assert int(state4.step) == 1


def test_sharded_step_equals_single_device_step(setup):
  graphdef, train_state, tx = setup
  mesh = sharding.make_mesh(sharding.MeshConfig(shape=(2, 2, 2), rules="fsdp_tp"))
  rules = sharding.preset_rules("fsdp_tp")
  shardings = state_lib.shardings(jax.eval_shape(lambda s: s, train_state), mesh, rules)
  plan = sharding.Plan.create(mesh, rules)
  sharded_graphdef, _ = state_lib.split_model(transformer.abstract_model(CFG, plan))
  fn = functools.partial(step_lib.train_step, graphdef=sharded_graphdef, optimizer=tx,
                         lr_schedule=optim.schedule(optim.OptimConfig(warmup_steps=0), 10),
                         accum_steps=2, plan=plan)
  batch_sharding = sharding.batch_sharding(mesh)
  jitted = jax.jit(fn, in_shardings=(shardings, batch_sharding),
                   out_shardings=(shardings, None))
  sharded_state, metrics = jitted(jax.device_put(train_state, shardings), make_batch(0))
  _, expected = _step(setup, 1)  # Accumulation itself is tested above.
  for key in ("loss", "marker_token_accuracy", "grad_norm"):
    np.testing.assert_allclose(metrics[key], expected[key], rtol=2e-5, err_msg=key)
  assert sharded_state.params["layers"][0]["mlp"]["up_proj"]["kernel"].sharding.spec == \
      jax.sharding.PartitionSpec("fsdp", "tensor")
