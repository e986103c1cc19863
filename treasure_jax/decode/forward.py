"""The cached forward pass used by the decode loop: the model's own blocks over a per-layer cache.

`transformer.Transformer.__call__` keeps keys/values stacked as one [L, B, S, K, H] array and
updates it layer by layer (`k_LBSKH.at[i].set(...)`). Inside a decode loop XLA:CPU copies the
whole stacked array on every such update (measured: ~50 ms per step for SmolLM2-135M at batch 1,
with minutes of compile time), so decoding keeps one [B, S, K, H] array per layer instead, which
the while loop updates in place. Everything else is the model's: embedding, `layers.Block`
(attention with `attention.CacheView`, RoPE, masks, MLP), final norm, logits and soft-capping;
`tests/test_decode_generate.py` checks greedy decoding against full forwards of the model.
Models with `scan_layers` are unstacked once (`for_decoding`), outside the loop.
"""
from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp
from flax import nnx

from treasure_jax.model import attention
from treasure_jax.model import sharding
from treasure_jax.model import transformer


@flax.struct.dataclass
class Cache:
  """Per-layer keys/values, per-slot positions and segment ids (0 = empty), per-row length."""
  k: tuple[jax.Array, ...]  # L arrays k_BSKH.
  v: tuple[jax.Array, ...]
  positions_BS: jax.Array
  segment_ids_BS: jax.Array
  end_B: jax.Array


def init_cache(model: transformer.Transformer, batch: int, length: int) -> Cache:
  """An empty cache in the compute dtype; sharded like the model's own cache under its plan."""
  cfg = model.cfg
  shape = (batch, length, cfg.num_kv_heads, cfg.head_dim)
  zeros = lambda: jnp.zeros(shape, cfg.jnp_dtype)
  zeros_BS = jnp.zeros((batch, length), jnp.int32)
  cache = Cache(tuple(zeros() for _ in range(cfg.num_layers)),
                tuple(zeros() for _ in range(cfg.num_layers)), zeros_BS, zeros_BS,
                jnp.zeros((batch,), jnp.int32))
  if model.plan is None:
    return cache
  plan = model.plan
  kv = plan.sharding(("batch", "cache_seq", "kv_heads", "head_dim"), shape)
  bs = plan.sharding(("batch", "cache_seq"), (batch, length))
  shardings = Cache((kv,) * cfg.num_layers, (kv,) * cfg.num_layers, bs, bs,
                    plan.sharding(("batch",), (batch,)))
  return jax.lax.with_sharding_constraint(cache, shardings)


def forward(model: transformer.Transformer, tokens_BT: jax.Array, cache: Cache,
            segment_ids_BT: jax.Array | None = None,
            logits_at_B: jax.Array | None = None) -> tuple[jax.Array, Cache]:
  """Like `model(tokens_BT, segment_ids_BT=..., cache=...)`: right-padded chunks, positions
  continuing from each row's `end_B`, logits_BTV in float32. With `logits_at_B` (an index
  into T per row) only that position's logits are computed, logits_B1V: a prefill needs just
  the last prompt token's, and the head is a sixth of SmolLM2-135M's FLOPs per token."""
  cfg, plan = model.cfg, model.plan
  if cfg.scan_layers:
    raise ValueError("forward: call for_decoding(model) once before decoding")
  b, t = tokens_BT.shape
  start_B1 = cache.end_B[:, None]
  positions_BT = start_B1 + jnp.arange(t, dtype=jnp.int32)[None, :]
  if segment_ids_BT is None:
    segment_ids_BT = jnp.ones((b, t), jnp.int32)
  slots_BT, rows_B1 = positions_BT, jnp.arange(b)[:, None]
  positions_BS = cache.positions_BS.at[rows_B1, slots_BT].set(positions_BT, mode="drop")
  segment_ids_BS = cache.segment_ids_BS.at[rows_B1, slots_BT].set(segment_ids_BT, mode="drop")
  x_BTD = sharding.constrain(model.embedder.encode(tokens_BT), ("batch", "seq", "act_embed"),
                             plan)
  new_k, new_v = [], []
  for i, block in enumerate(model.layers):
    view = attention.CacheView(cache.k[i], cache.v[i], slots_BT, positions_BS, segment_ids_BS)
    x_BTD, (k_BSKH, v_BSKH) = block(x_BTD, positions_BT, segment_ids_BT, window=cfg.window(i),
                                    plan=plan, kv=view)
    new_k.append(k_BSKH)
    new_v.append(v_BSKH)
  if logits_at_B is not None:
    x_BTD = jnp.take_along_axis(x_BTD, logits_at_B[:, None, None], axis=1)
  logits_BTV = model.logits(x_BTD)
  end_B = cache.end_B + jnp.sum(segment_ids_BT != 0, axis=1, dtype=jnp.int32)
  return logits_BTV, Cache(tuple(new_k), tuple(new_v), positions_BS, segment_ids_BS, end_B)


def for_decoding(model: transformer.Transformer) -> transformer.Transformer:
  """The same model with per-layer parameters (no-op unless `cfg.scan_layers`)."""
  if not model.cfg.scan_layers:
    return model
  cfg = model.cfg.replace(scan_layers=False)
  graphdef, abstract = nnx.split(transformer.abstract_model(cfg, model.plan))
  leaves: dict[tuple[Any, ...], Any] = {}
  for path, var in nnx.to_flat_state(nnx.state(model)):
    if path[0] == "layers":
      for i in range(cfg.num_layers):
        leaves[("layers", i) + tuple(path[1:])] = var.replace(var[...][i])
    else:
      leaves[tuple(path)] = var
  flat = [(path, leaves[tuple(path)]) for path, _ in nnx.to_flat_state(abstract)]
  return nnx.merge(graphdef, nnx.from_flat_state(flat))
