"""Pure train and eval steps: loss sums per micro-batch, gradient accumulation, one AdamW update.

A batch is a dict of [B, T] arrays: `inputs` (token ids fed to the model), `targets` (the next
tokens), `loss_weights` (1 on the completion: its marker list and response), `marker_weights`
and `response_weights` (the two parts), `segment_ids` (packed sequences, 0 = padding) and
`positions`. The loss is the weighted NLL summed over all micro-batches and divided once by the
number of loss-bearing tokens (sum of `loss_weights`), so accumulating A micro-batches gives the
same update as one batch A times larger. Micro-batch a takes rows a, a+A, a+2A, ... so every
micro-batch stays spread over the data-parallel devices.
Deliberately left to others: jit, shardings and donation (`loop`), the optimizer (`optim`).
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from treasure_jax.model import sharding as sharding_lib
from treasure_jax.model import transformer
from treasure_jax.train import optim
from treasure_jax.train import state as state_lib

Batch = Mapping[str, jax.Array]
BATCH_KEYS = ("inputs", "targets", "loss_weights", "marker_weights", "response_weights",
              "segment_ids", "positions")
# Per-token sums a loss pass returns; metrics are ratios of these.
_SUMS = ("loss", "weight", "marker_loss", "marker_weight", "response_loss", "response_weight",
         "marker_correct", "tokens", "examples")


def token_sums(graphdef: nnx.GraphDef, params: nnx.State, batch: Batch) -> dict[str, jax.Array]:
  """Per-example [B] sums of weighted NLL, weights, marker-token hits and real tokens."""
  logits_BTV, _ = transformer.apply(graphdef, params, batch["inputs"], batch["positions"],
                                    batch["segment_ids"])
  targets_BT = batch["targets"]
  # NLL = logsumexp - target logit: no [B, T, V] log-softmax is materialized besides the logits.
  target_logit_BT = jnp.take_along_axis(logits_BTV, targets_BT[..., None], axis=-1)[..., 0]
  nll_BT = jax.nn.logsumexp(logits_BTV, axis=-1) - target_logit_BT
  correct_BT = (jnp.argmax(logits_BTV, axis=-1) == targets_BT).astype(jnp.float32)
  w, mw, rw = (batch[k].astype(jnp.float32) for k in
               ("loss_weights", "marker_weights", "response_weights"))
  return {
      "loss": jnp.sum(nll_BT * w, axis=1), "weight": jnp.sum(w, axis=1),
      "marker_loss": jnp.sum(nll_BT * mw, axis=1), "marker_weight": jnp.sum(mw, axis=1),
      "response_loss": jnp.sum(nll_BT * rw, axis=1), "response_weight": jnp.sum(rw, axis=1),
      "marker_correct": jnp.sum(correct_BT * mw, axis=1),
      "tokens": jnp.sum(batch["segment_ids"] != 0, axis=1).astype(jnp.float32),
      # Examples (packed segments) begun in the row: every segment starts at position 0.
      "examples": jnp.sum((batch["positions"] == 0) & (batch["segment_ids"] != 0),
                          axis=1).astype(jnp.float32),
  }


def _loss_and_sums(params, graphdef, batch, frozen=None):
  """`params` are what is differentiated; `frozen` (LoRA: the base) joins them unchanged."""
  if frozen is not None:
    params = nnx.merge_state(params, frozen)
  sums = {k: jnp.sum(v) for k, v in token_sums(graphdef, params, batch).items()}
  return sums["loss"], sums


def _microbatches(batch: Batch, accum_steps: int, plan: sharding_lib.Plan | None) -> Batch:
  """[B, T] -> [A, B/A, T] with micro-batch a = rows a, a+A, ... (keeps the batch sharding)."""
  def split(x):
    b = x.shape[0]
    x = x.reshape(b // accum_steps, accum_steps, *x.shape[1:]).swapaxes(0, 1)
    return sharding_lib.constrain(x, (None, "batch") + (None,) * (x.ndim - 2), plan)
  return {k: split(v) for k, v in batch.items()}


def _grads_and_sums(graphdef, params, batch, accum_steps, plan, frozen=None):
  grad_fn = jax.grad(_loss_and_sums, has_aux=True)
  if accum_steps == 1:
    return grad_fn(params, graphdef, batch, frozen)

  def body(carry, micro):
    grads, sums = grad_fn(params, graphdef, micro, frozen)
    return jax.tree.map(jnp.add, carry, (grads, sums)), None

  zeros = (jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params),
           {k: jnp.zeros((), jnp.float32) for k in _SUMS})
  (grads, sums), _ = jax.lax.scan(body, zeros, _microbatches(batch, accum_steps, plan))
  return grads, sums


def metrics_from_sums(sums: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
  """Ratios of token sums; a part without tokens in the batch reports 0."""
  ratio = lambda num, den: sums[num] / jnp.maximum(sums[den], 1.0)
  return {"loss": ratio("loss", "weight"), "marker_loss": ratio("marker_loss", "marker_weight"),
          "response_loss": ratio("response_loss", "response_weight"),
          "marker_token_accuracy": ratio("marker_correct", "marker_weight"),
          "loss_tokens": sums["weight"], "tokens": sums["tokens"], "examples": sums["examples"]}


def train_step(train_state: state_lib.TrainState, batch: Batch, *, graphdef: nnx.GraphDef,
               optimizer: optax.GradientTransformation, lr_schedule: Callable[[Any], Any],
               accum_steps: int = 1, plan: sharding_lib.Plan | None = None
               ) -> tuple[state_lib.TrainState, dict[str, jax.Array]]:
  """One optimizer update from `batch` (split into `accum_steps` micro-batches).

  `plan` (the model's mesh and rules) keeps micro-batches sharded over the batch axes. Only
  `train_state.params` get gradients and updates (with LoRA: the adapters, see `state`).
  """
  grads, sums = _grads_and_sums(graphdef, train_state.params, batch, accum_steps, plan,
                                train_state.frozen)
  grads = jax.tree.map(lambda g: g / jnp.maximum(sums["weight"], 1.0), grads)
  grad_norm = optim.global_norm(grads)
  updates, opt_state = optimizer.update(grads, train_state.opt_state, train_state.params)
  params = optax.apply_updates(train_state.params, updates)
  metrics = metrics_from_sums(sums)
  metrics.update(lr=jnp.asarray(lr_schedule(train_state.step), jnp.float32), grad_norm=grad_norm)
  new_state = train_state.replace(step=train_state.step + 1, params=params, opt_state=opt_state,
                                  rng=jax.random.fold_in(train_state.rng, train_state.step))
  return new_state, metrics


def eval_step(params: nnx.State, batch: Batch, *, graphdef: nnx.GraphDef,
              passthrough: tuple[str, ...] = ()) -> dict[str, jax.Array]:
  """Per-example [B] token sums (`token_sums`), plus the `passthrough` batch entries unchanged
  (e.g. per-row marker codes, which then come back aligned with the rows)."""
  out = token_sums(graphdef, params, batch)
  out.update({k: batch[k] for k in passthrough})
  return out
