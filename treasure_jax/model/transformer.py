"""The decoder-only transformer (Llama / Mistral / Qwen2 / Gemma 2), its KV cache and creation.

Shape legend (suffixes of array names): B batch, T query length, S key length (cache slots),
D model, N heads, K kv heads, H head dim, F mlp, V vocab, L layers.

Forward:
  model(tokens_BT, positions_BT=None, segment_ids_BT=None, cache=None) -> (logits_BTV, cache)
  logits are float32. segment_ids: packed sequences, 0 = padding; tokens attend only within their
  segment, causally by position. Defaults: segment ids all 1; positions arange(T), or with a cache
  `cache.end_B[:, None] + arange(T)`. Positions must increase within a segment.

KV cache (a pure pytree, `Cache`, carried through `jax.lax.while_loop` / `scan`):
  cache = init_cache(cfg, batch, max_len)  (or model.init_cache(batch, max_len))
  Prefill: prompts RIGHT-padded to T, segment_ids_BT = 1 on prompt tokens and 0 on padding:
    logits_BTV, cache = model(prompts_BT, segment_ids_BT=seg_BT, cache=cache)
  Each row's next-token logits are at index (prompt length - 1). The chunk is written to slots
  [end_b, end_b + T) and `end_b` advances by the row's count of non-padding tokens, so the next
  chunk overwrites the padding. Decode, one token per row (positions default to end_B):
    logits_B1V, cache = model(next_B1, cache=cache)
  Rows keep their own lengths; a caller must keep end_b + T <= max_len (writes past the end are
  dropped). A row fed segment id 0 (e.g. a finished sequence) writes nothing visible and does not
  advance. Cached steps always use the "xla" attention implementation.
  For jitted loops: `graphdef, state = nnx.split(model)` once, then
  `apply(graphdef, state, tokens_BT, ..., cache=cache)` inside the jitted function.
  Cache shardings: `sharding.tree_shardings(cache, Cache.logical_axes(), mesh, rules)` (batch like
  activations, kv heads over "tensor").

Parameters (nnx state paths; with scan_layers the per-layer params have a leading L axis under
`layers/...` instead of `layers/<i>/...`):
  embedder/embedding [V, D]; layers/<i>/{attn_norm,mlp_norm[,post_attn_norm,post_mlp_norm]}/scale
  [D]; layers/<i>/attn/{q,k,v}_proj/kernel [D, N|K, H] (+ bias [N|K, H]); attn/o_proj/kernel
  [N, H, D]; mlp/{gate,up}_proj/kernel [D, F]; mlp/down_proj/kernel [F, D]; final_norm/scale [D];
  lm_head/kernel [D, V] (untied only).

Left to others: losses and train steps (`train/`), sampling and the decode loop (`decode/`),
checkpoint conversion (`hf.py`, `gguf.py`).
"""
from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp
from flax import nnx

from treasure_jax.model import attention
from treasure_jax.model import config as config_lib
from treasure_jax.model import layers
from treasure_jax.model import sharding


@flax.struct.dataclass
class Cache:
  """KV cache: per-layer keys/values plus per-slot positions and segment ids, per-row length."""
  k_LBSKH: jax.Array
  v_LBSKH: jax.Array
  positions_BS: jax.Array  # int32 position of the token in each slot.
  segment_ids_BS: jax.Array  # int32 segment of each slot; 0 = empty.
  end_B: jax.Array  # int32 number of filled slots of each row = next write slot.

  @staticmethod
  def logical_axes() -> Cache:
    kv = ("layers", "batch", "cache_seq", "kv_heads", "head_dim")
    return Cache(kv, kv, ("batch", "cache_seq"), ("batch", "cache_seq"), ("batch",))

  @property
  def max_len(self) -> int:
    return self.positions_BS.shape[1]


def init_cache(cfg: config_lib.ModelConfig, batch: int, max_len: int,
               dtype: Any = None) -> Cache:
  """An empty cache (`dtype` defaults to the compute dtype)."""
  shape = (cfg.num_layers, batch, max_len, cfg.num_kv_heads, cfg.head_dim)
  dtype = cfg.jnp_dtype if dtype is None else dtype
  zeros_BS = jnp.zeros((batch, max_len), jnp.int32)
  return Cache(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype), zeros_BS, zeros_BS,
               jnp.zeros((batch,), jnp.int32))


def remat_policy(name: str) -> Any:
  """The jax.checkpoint policy of a ModelConfig.remat name (None for "none")."""
  policies = jax.checkpoint_policies
  return {
      "none": None,
      "full": policies.nothing_saveable,
      "dots_saveable": policies.dots_saveable,
      "dots_with_no_batch_dims_saveable": policies.dots_with_no_batch_dims_saveable,
      "minimal": policies.save_only_these_names(*layers.SAVED_BY_MINIMAL),
  }[name]


def _blocks(cfg: config_lib.ModelConfig, rngs: nnx.Rngs) -> nnx.Module:
  """All blocks, initialized by one vmapped init: each parameter kind is one random draw for all
  layers (XLA compile time grows with the number of draws, not their size), and the scanned and
  unscanned layouts get the same weights for the same seed."""
  keys = jax.random.split(rngs.params(), cfg.num_layers)

  @nnx.vmap(in_axes=0, out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
  def make(key):
    return layers.Block(cfg, rngs=nnx.Rngs(params=key))
  stacked = make(keys)
  if cfg.scan_layers:
    return stacked
  # Unstack into per-layer Blocks whose metadata comes from an abstract (unstacked) template.
  graphdef, template = nnx.split(nnx.eval_shape(lambda: layers.Block(cfg, rngs=nnx.Rngs(0))))
  values = {path: var[...] for path, var in nnx.to_flat_state(nnx.state(stacked))}
  return nnx.List([
      nnx.merge(graphdef, nnx.from_flat_state(
          [(path, var.replace(values[path][i])) for path, var in nnx.to_flat_state(template)]))
      for i in range(cfg.num_layers)])


class Transformer(nnx.Module):
  """Token ids in, float32 next-token logits out (see the module docstring for the API)."""

  def __init__(self, cfg: config_lib.ModelConfig, *, rngs: nnx.Rngs,
               plan: sharding.Plan | None = None):
    self.cfg = cfg
    self.plan = plan
    self.embedder = layers.Embedder(cfg, rngs=rngs)
    self.layers = _blocks(cfg, rngs)
    self.final_norm = layers.RMSNorm(cfg)
    self.lm_head = None if cfg.tie_embeddings else layers.Linear(
        (cfg.embed_dim,), (cfg.vocab_size,), ("embed",), ("vocab",), use_bias=False, cfg=cfg,
        rngs=rngs)

  def init_cache(self, batch: int, max_len: int, dtype: Any = None) -> Cache:
    cache = init_cache(self.cfg, batch, max_len, dtype)
    if self.plan is None:
      return cache
    return jax.device_put(cache, sharding.tree_shardings(cache, Cache.logical_axes(),
                                                         self.plan.mesh, self.plan.rules))

  def __call__(self, tokens_BT: jax.Array, positions_BT: jax.Array | None = None,
               segment_ids_BT: jax.Array | None = None, cache: Cache | None = None
               ) -> tuple[jax.Array, Cache | None]:
    cfg, plan = self.cfg, self.plan
    if cache is None and cfg.attention_impl in ("cudnn", "splash"):
      attention.check_platform(cfg.attention_impl, cfg.attn_logit_softcap, cfg.jnp_dtype)
    b, t = tokens_BT.shape
    start_B1 = jnp.zeros((b, 1), jnp.int32) if cache is None else cache.end_B[:, None]
    if positions_BT is None:
      positions_BT = start_B1 + jnp.arange(t, dtype=jnp.int32)[None, :]
    if segment_ids_BT is None:
      segment_ids_BT = jnp.ones((b, t), jnp.int32)
    tokens_BT = sharding.constrain(tokens_BT, ("batch", "seq"), plan)
    x_BTD = sharding.constrain(self.embedder.encode(tokens_BT), ("batch", "seq", "act_embed"),
                               plan)
    view = kv_L = None
    if cache is not None:
      # Slot bookkeeping shared by all layers; each layer fills in its own k/v (None here).
      slots_BT = start_B1 + jnp.arange(t, dtype=jnp.int32)[None, :]
      rows_B1 = jnp.arange(b)[:, None]
      view = attention.CacheView(
          None, None, slots_BT,
          cache.positions_BS.at[rows_B1, slots_BT].set(positions_BT, mode="drop"),
          cache.segment_ids_BS.at[rows_B1, slots_BT].set(segment_ids_BT, mode="drop"))
      kv_L = (cache.k_LBSKH, cache.v_LBSKH)
    run = self._scan_layers if cfg.scan_layers else self._loop_layers
    x_BTD, kv = run(x_BTD, positions_BT, segment_ids_BT, view, kv_L)
    logits_BTV = self.logits(x_BTD)
    if cache is None:
      return logits_BTV, None
    new_cache = Cache(kv[0], kv[1], view.positions_BS, view.segment_ids_BS,
                      cache.end_B + jnp.sum(segment_ids_BT != 0, axis=1, dtype=jnp.int32))
    return logits_BTV, new_cache

  def logits(self, x_BTD: jax.Array) -> jax.Array:
    """The head: final norm, output projection (tied or not), soft-capping; float32 logits."""
    cfg = self.cfg
    x_BTD = self.final_norm(x_BTD)
    if self.lm_head is None:
      logits_BTV = self.embedder.decode(x_BTD)
    else:
      logits_BTV = jnp.einsum("btd,dv->btv", x_BTD, self.lm_head.kernel[...].astype(x_BTD.dtype),
                              preferred_element_type=jnp.float32)
    if cfg.final_logit_softcap is not None:
      logits_BTV = jnp.tanh(logits_BTV / cfg.final_logit_softcap) * cfg.final_logit_softcap
    return sharding.constrain(logits_BTV, ("batch", "seq", "vocab"), self.plan)

  def _block_fn(self, graphdef: nnx.GraphDef, window: int | None):
    """Pure (state, x, positions, segment_ids, view) -> (x, kv) of one block, rematerialized."""
    def fn(state, x_BTD, positions_BT, segment_ids_BT, view):
      block = nnx.merge(graphdef, state)
      return block(x_BTD, positions_BT, segment_ids_BT, window=window, plan=self.plan, kv=view)
    policy = remat_policy(self.cfg.remat)
    return fn if policy is None else jax.checkpoint(fn, policy=policy)

  def _loop_layers(self, x_BTD, positions_BT, segment_ids_BT, view, kv_L):
    k_LBSKH, v_LBSKH = kv_L or (None, None)
    for i, block in enumerate(self.layers):
      graphdef, state = nnx.split(block)
      layer_view = None if view is None else view._replace(k_BSKH=k_LBSKH[i], v_BSKH=v_LBSKH[i])
      x_BTD, kv = self._block_fn(graphdef, self.cfg.window(i))(
          state, x_BTD, positions_BT, segment_ids_BT, layer_view)
      if kv is not None:
        k_LBSKH, v_LBSKH = k_LBSKH.at[i].set(kv[0]), v_LBSKH.at[i].set(kv[1])
    return x_BTD, (None if view is None else (k_LBSKH, v_LBSKH))

  def _scan_layers(self, x_BTD, positions_BT, segment_ids_BT, view, kv_L):
    # Scan over groups of len(attention_pattern) layers so each layer's window stays static.
    period = len(self.cfg.attention_pattern)
    groups = self.cfg.num_layers // period
    graphdef, state = nnx.split(self.layers)
    regroup = lambda a: a.reshape(groups, period, *a.shape[1:])
    state = jax.tree.map(regroup, state)
    kv_xs = None if kv_L is None else (regroup(kv_L[0]), regroup(kv_L[1]))
    fns = [self._block_fn(graphdef, self.cfg.window(j)) for j in range(period)]

    def body(x_BTD, xs):
      group_state, group_kv = xs
      outs = []
      for j, fn in enumerate(fns):
        layer_state = jax.tree.map(lambda a: a[j], group_state)
        layer_view = None if view is None else view._replace(
            k_BSKH=group_kv[0][j], v_BSKH=group_kv[1][j])
        x_BTD, kv = fn(layer_state, x_BTD, positions_BT, segment_ids_BT, layer_view)
        outs.append(kv)
      if view is None:
        return x_BTD, None
      return x_BTD, (jnp.stack([kv[0] for kv in outs]), jnp.stack([kv[1] for kv in outs]))

    x_BTD, kv_ys = jax.lax.scan(body, x_BTD, (state, kv_xs))
    if view is None:
      return x_BTD, None
    flat = lambda a: a.reshape(self.cfg.num_layers, *a.shape[2:])
    return x_BTD, (flat(kv_ys[0]), flat(kv_ys[1]))


def apply(graphdef: nnx.GraphDef, state: nnx.State, tokens_BT: jax.Array,
          positions_BT: jax.Array | None = None, segment_ids_BT: jax.Array | None = None,
          cache: Cache | None = None) -> tuple[jax.Array, Cache | None]:
  """Pure forward over split model state, for use inside jitted train/decode functions."""
  return nnx.merge(graphdef, state)(tokens_BT, positions_BT, segment_ids_BT, cache)


def abstract_model(cfg: config_lib.ModelConfig, plan: sharding.Plan | None = None) -> Transformer:
  """The model with ShapeDtypeStruct parameters (nothing allocated)."""
  return nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0), plan=plan))


def create(cfg: config_lib.ModelConfig, *, seed: int = 0, mesh: jax.sharding.Mesh | None = None,
           rules: sharding.Rules | str = "fsdp") -> Transformer:
  """A randomly initialized model, built by one jitted init (eager init would compile every op).
  With a mesh, each parameter is created directly in its sharding (eval_shape → shardings →
  jit(init, out_shardings)), never whole on one device, and the model carries the plan."""
  plan = None if mesh is None else sharding.Plan.create(mesh, rules)
  graphdef, abstract_state = nnx.split(abstract_model(cfg, plan))
  shardings = None if plan is None else sharding.state_shardings(abstract_state, mesh, plan.rules)
  init = jax.jit(lambda: nnx.state(Transformer(cfg, rngs=nnx.Rngs(seed))),
                 out_shardings=shardings)
  return nnx.merge(graphdef, init())


def param_count(model_or_state: Any) -> int:
  """Number of parameter scalars (works on abstract models too)."""
  state = (nnx.state(model_or_state, nnx.Param) if isinstance(model_or_state, nnx.Module)
           else model_or_state)
  return sum(int(x.size) for x in jax.tree.leaves(state))


def shard_model(model: Transformer, mesh: jax.sharding.Mesh,
                rules: sharding.Rules | str = "fsdp") -> Transformer:
  """Move an existing model's parameters onto `mesh` and attach the plan."""
  plan = sharding.Plan.create(mesh, rules)
  graphdef, state = nnx.split(model)
  state = jax.device_put(state, sharding.state_shardings(state, mesh, plan.rules))
  model = nnx.merge(graphdef, state)
  model.plan = plan
  return model

