"""KV-cache generation: one prefill of the right-padded prompt batch, then a compiled
`jax.lax.while_loop` that emits one token per row per step.

Everything per token happens on device inside one jitted function: the model step, optional
marker-list constraints (`constraints`), presence/frequency penalties and sampling
(`sampling`), EOS and stop-string checks (`stops`) and per-token log-probabilities. Shapes are
fixed by (batch, padded prompt length, max_new_tokens), so a batch compiles once and later
batches of the same bucket reuse it; the prompt length is rounded up to `prompt_bucket` for
that reason. Penalty values are per-row inputs, not compile-time constants: rows with other
penalties (or none) share a batch and its compiled loop. With a mesh (the model created
with `transformer.create(mesh=...)` or `shard_model`), the batch is split over the data axes
like training and the weights stay sharded; the batch is padded to a multiple of the data shards.
Multi-host (a mesh over several processes' devices), every process calls `generate` with the
same prompts, runs the same loop and gets the whole batch back (`_to_host`).

Each row samples with its own key, fold_in(PRNGKey(seed), row) per request (`row_seeds`), then
folded with the step: a prompt's sample does not depend on the rest of its batch.
Text, chat templates and marker modes are `modes`' and `runner`'s job.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from treasure_jax.decode import constraints
from treasure_jax.decode import forward
from treasure_jax.decode import sampling
from treasure_jax.decode import stops
from treasure_jax.model import sharding
from treasure_jax.model import transformer

STOP_REASONS = ("max_tokens", "eos", "stop_string")
_MAX_TOKENS, _EOS, _STOP_STRING = 0, 1, 2


@dataclasses.dataclass(frozen=True)
class Generation:
  """Host results per prompt: generated ids (the EOS token, if any, included), the model's
  log-probability of each (log_softmax of the raw logits, before penalties, constraints and
  temperature), and why generation stopped (STOP_REASONS)."""
  tokens: list[list[int]]
  logprobs: list[np.ndarray]
  stop_reasons: list[str]


@dataclasses.dataclass(frozen=True)
class _Static:
  """Everything the compiled loop is specialized on (hashable)."""
  graphdef: nnx.GraphDef
  sampler: sampling.Sampler
  max_new_tokens: int
  cache_len: int
  eos_ids: tuple[int, ...]


def generate(model: transformer.Transformer, prompts: Sequence[Sequence[int]], *,
             max_new_tokens: int, sampler: sampling.Sampler = sampling.Greedy(),
             eos_ids: Sequence[int] = (), seed: int = 0,
             constraint: constraints.Tables | None = None,
             start_states: Sequence[int] | None = None,
             stop_tables: stops.StopTables | None = None,
             row_seeds: Sequence[int] | None = None,
             prompt_bucket: int = 32,
             penalties: sampling.Penalties | Sequence[sampling.Penalties] = sampling.Penalties(),
             list_rows: Sequence[bool] | None = None,
             list_close: stops.StopTables | None = None) -> Generation:
  """Generates up to `max_new_tokens` after each prompt (lists of token ids, lengths may differ).

  `constraint` with `start_states` (one automaton state per prompt; the automaton's FREE state
  for unconstrained prompts) restricts tokens while a row's state is not FREE.
  `row_seeds` (default: the prompt index) picks each row's PRNG stream under `seed`.
  `penalties` (one for all prompts, or one per prompt) act on the answer only
  (`sampling.Penalties`): not inside a constrained list, and for rows with `list_rows[i]` (a
  completion that opens with a marker list, constrained or not) not before `list_close` (the
  stop table of `template.LIST_CLOSE`) has matched; a list that never closes is never
  penalised.
  """
  if not prompts or any(len(p) == 0 for p in prompts):
    raise ValueError("generate: every prompt needs at least one token")
  if max_new_tokens < 1:
    raise ValueError(f"generate: max_new_tokens={max_new_tokens} must be >= 1")
  n = len(prompts)
  batch = _padded_batch(n, model.plan)
  longest = max(map(len, prompts))
  prompt_len = min(prompt_bucket * math.ceil(longest / prompt_bucket),
                   max(longest, model.cfg.max_seq_len - max_new_tokens))
  cache_len = prompt_len + max_new_tokens
  if cache_len > model.cfg.max_seq_len:
    raise ValueError(f"generate: prompt ({prompt_len} padded) + max_new_tokens "
                     f"({max_new_tokens}) exceeds the model's max_seq_len {model.cfg.max_seq_len}")
  tokens_BP = np.zeros((batch, prompt_len), np.int32)
  lengths_B = np.ones((batch,), np.int32)
  for i, p in enumerate(prompts):
    tokens_BP[i, :len(p)] = p
    lengths_B[i] = len(p)
  seeds = list(range(n)) if row_seeds is None else list(row_seeds)
  seeds += [0] * (batch - n)
  if constraint is None:
    states_B = np.zeros((batch,), np.int32)
  else:
    if start_states is None or len(start_states) != n:
      raise ValueError("generate: a constraint needs one start state per prompt")
    states_B = np.full((batch,), constraint.free, np.int32)
    states_B[:n] = start_states
  graphdef, state = nnx.split(forward.for_decoding(model))
  static = _Static(graphdef, sampler, max_new_tokens, cache_len,
                   tuple(sorted(set(int(e) for e in eos_ids))))
  active_B = np.arange(batch) < n
  penalty_B2, answer_B = _penalty_inputs(penalties, n, batch, list_rows, list_close)
  if penalty_B2 is None:
    list_close = None
  inputs = (tokens_BP, lengths_B, active_B, np.asarray(seeds, np.uint32), states_B, penalty_B2,
            answer_B)
  if model.plan is not None:
    inputs = jax.device_put(inputs, sharding.batch_sharding(model.plan.mesh))
  out_BN, logprobs_BN, counts_B, reasons_B = _run(
      static, state, *inputs, np.uint32(seed), constraint, stop_tables, list_close)
  out_BN, logprobs_BN, counts_B, reasons_B = _to_host(
      (out_BN, logprobs_BN, counts_B, reasons_B), model.plan)
  return Generation(
      tokens=[out_BN[i, :counts_B[i]].tolist() for i in range(n)],
      logprobs=[logprobs_BN[i, :counts_B[i]] for i in range(n)],
      stop_reasons=[STOP_REASONS[reasons_B[i]] for i in range(n)])


def _penalty_inputs(penalties: sampling.Penalties | Sequence[sampling.Penalties], n: int,
                    batch: int, list_rows: Sequence[bool] | None,
                    list_close: stops.StopTables | None
                    ) -> tuple[np.ndarray | None, np.ndarray | None]:
  """(presence, frequency) per row [B, 2] and "already in the answer" per row [B], or None
  when no row is penalised (the loop then carries no counts at all)."""
  rows = [penalties] * n if isinstance(penalties, sampling.Penalties) else list(penalties)
  if len(rows) != n:
    raise ValueError(f"generate: {len(rows)} penalties for {n} prompts (give one or one each)")
  if list_rows is not None and (list_close is None or len(list_rows) != n):
    raise ValueError("generate: list_rows needs list_close and one flag per prompt")
  if not any(p.active for p in rows):
    return None, None
  penalty_B2 = np.zeros((batch, 2), np.float32)  # Padding rows: no penalty.
  penalty_B2[:n] = [(p.presence, p.frequency) for p in rows]
  if list_rows is None:
    return penalty_B2, None
  answer_B = np.ones((batch,), bool)
  answer_B[:n] = ~np.asarray(list_rows, bool)
  return penalty_B2, answer_B


def _to_host(outputs: tuple[jax.Array, ...], plan: sharding.Plan | None
             ) -> tuple[np.ndarray, ...]:
  """Numpy copies of the loop's outputs, the whole batch on every process.

  Multi-host, the batch-sharded outputs span other processes' devices, which `jax.device_get`
  cannot read: they are replicated over the mesh first (a compiled identity that every process
  runs, as it runs the loop). A single process reads them directly.
  """
  if plan is not None and not all(x.is_fully_addressable for x in outputs):
    outputs = _replicator(plan.mesh)(outputs)
  return jax.device_get(outputs)


@functools.cache
def _replicator(mesh: jax.sharding.Mesh) -> Callable[..., tuple[jax.Array, ...]]:
  """A jitted identity whose outputs are replicated over `mesh`."""
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  return jax.jit(lambda tree: tree, out_shardings=replicated)


def _padded_batch(n: int, plan: sharding.Plan | None) -> int:
  if plan is None:
    return n
  shards = math.prod(plan.mesh.shape[a] for a in sharding.BATCH_AXES)
  return shards * math.ceil(n / shards)


@functools.partial(jax.jit, static_argnums=0)
def _run(static: _Static, state: nnx.State, tokens_BP: jax.Array, lengths_B: jax.Array,
         active_B: jax.Array, seeds_B: jax.Array, states_B: jax.Array,
         penalty_B2: jax.Array | None, answer_B: jax.Array | None, seed: jax.Array,
         constraint: constraints.Tables | None,
         stop_tables: stops.StopTables | None, list_close: stops.StopTables | None):
  model = nnx.merge(static.graphdef, state)
  b, p = tokens_BP.shape
  n = static.max_new_tokens
  keys_B = jax.vmap(lambda s: jax.random.fold_in(jax.random.key(seed), s))(seeds_B)
  cache = forward.init_cache(model, b, static.cache_len)
  seg_BP = (jnp.arange(p)[None, :] < lengths_B[:, None]).astype(jnp.int32)
  logits_B1V, cache = forward.forward(model, tokens_BP, cache, seg_BP, logits_at_B=lengths_B - 1)
  logits_BV = logits_B1V[:, 0]
  carry = dict(
      step=jnp.int32(0), cache=cache, logits_BV=logits_BV,
      out_BN=jnp.zeros((b, n), jnp.int32), logprobs_BN=jnp.zeros((b, n), jnp.float32),
      done_B=~active_B, counts_B=jnp.zeros((b,), jnp.int32),
      reasons_B=jnp.zeros((b,), jnp.int32), states_B=states_B,
      stops_B=jnp.zeros((b,), jnp.int32))
  if penalty_B2 is not None:
    # How often each row generated each token (its answer only): int32 [B, V], a few MB.
    carry["counts_BV"] = jnp.zeros_like(logits_BV, jnp.int32)
    carry["penalty_B2"] = penalty_B2
  if answer_B is not None:
    # Rows still in their marker list, and how far they are into LIST_CLOSE.
    carry["answer_B"], carry["close_B"] = answer_B, jnp.zeros((b,), jnp.int32)

  def cond(c):
    return (c["step"] < n) & ~jnp.all(c["done_B"])

  def body(c):
    c = _emit(static, c, keys_B, constraint, stop_tables, list_close)
    logits_B1V, c["cache"] = forward.forward(model, c["out_BN"][:, c["step"] - 1][:, None],
                                             c["cache"])
    c["logits_BV"] = logits_B1V[:, 0]
    return c

  # The last token needs no forward pass after it: the loop runs n - 1 model steps at most.
  c = jax.lax.while_loop(lambda c: cond(c) & (c["step"] < n - 1), body, carry)
  c = jax.lax.cond(cond(c), lambda c: _emit(static, c, keys_B, constraint, stop_tables,
                                            list_close),
                   lambda c: c, c)
  return c["out_BN"], c["logprobs_BN"], c["counts_B"], c["reasons_B"]


def _emit(static: _Static, c: dict, keys_B: jax.Array,
          constraint: constraints.Tables | None,
          stop_tables: stops.StopTables | None,
          list_close: stops.StopTables | None = None) -> dict:
  """Samples token `step` of every live row from c["logits_BV"] and updates the bookkeeping."""
  c = dict(c)
  step, logits_BV = c["step"], c["logits_BV"]
  v = logits_BV.shape[-1]
  masked_BV = logits_BV
  penalized = "counts_BV" in c
  if penalized:
    free_B = (jnp.ones_like(c["done_B"]) if constraint is None
              else c["states_B"] == constraint.free)
    if "answer_B" in c:
      free_B = free_B & c["answer_B"]
    masked_BV = jnp.where(free_B[:, None],
                          sampling.penalize(logits_BV, c["counts_BV"], c["penalty_B2"]),
                          logits_BV)
  if constraint is not None:
    budget_B = jnp.full_like(c["states_B"], static.max_new_tokens) - step
    allowed_BV = constraints.allowed_mask(constraint, c["states_B"], budget_B, v)
    masked_BV = jnp.where(allowed_BV, masked_BV, -jnp.inf)
  step_keys_B = jax.vmap(lambda k: jax.random.fold_in(k, step))(keys_B)
  token_B = static.sampler.sample(masked_BV, step_keys_B)
  live_B = ~c["done_B"]
  logprob_B = jnp.take_along_axis(jax.nn.log_softmax(logits_BV, axis=-1), token_B[:, None],
                                  axis=-1)[:, 0]
  c["out_BN"] = c["out_BN"].at[:, step].set(jnp.where(live_B, token_B, 0))
  c["logprobs_BN"] = c["logprobs_BN"].at[:, step].set(jnp.where(live_B, logprob_B, 0.0))
  c["counts_B"] = c["counts_B"] + live_B.astype(jnp.int32)
  if penalized:
    # An element-wise one-hot add, not a scatter: it stays local to each batch shard.
    hit_BV = (jnp.arange(v)[None, :] == token_B[:, None]) & (live_B & free_B)[:, None]
    c["counts_BV"] = c["counts_BV"] + hit_BV.astype(jnp.int32)
  if "answer_B" in c:
    c["close_B"] = stops.advance(list_close, c["close_B"], token_B)
    c["answer_B"] = c["answer_B"] | (c["close_B"] == list_close.next_QV.shape[0])
  reason_B = jnp.zeros_like(c["reasons_B"])
  if static.eos_ids:
    reason_B = jnp.where(jnp.isin(token_B, jnp.asarray(static.eos_ids)), _EOS, reason_B)
  if constraint is not None:
    c["states_B"] = jnp.where(live_B, constraints.advance(constraint, c["states_B"], token_B),
                              c["states_B"])
  if stop_tables is not None:
    c["stops_B"] = stops.advance(stop_tables, c["stops_B"], token_B)
    matched_B = c["stops_B"] == stop_tables.next_QV.shape[0]
    reason_B = jnp.where(matched_B & (reason_B == 0), _STOP_STRING, reason_B)
  c["reasons_B"] = jnp.where(live_B, reason_B, c["reasons_B"])
  c["done_B"] = c["done_B"] | (reason_B != _MAX_TOKENS)
  c["step"] = step + 1
  return c
