"""Attention kernels over already-projected, already-rotated q/k/v.

Implementations (chosen by `ModelConfig.attention_impl`):
  "xla"      einsum + float32 softmax; the reference, and the only one used with a KV cache.
  "dpa_xla"  `jax.nn.dot_product_attention(implementation="xla")`.
  "cudnn"    `jax.nn.dot_product_attention(implementation="cudnn")`, GPU only.
  "splash"   Pallas splash attention (`jax.experimental.pallas.ops.tpu.splash_attention`), TPU only.

Masking: a key is visible to a query when both have the same segment id, the key's position is
<= the query's, and (local layers) the query's position is less than `window` past the key's. On
the no-cache path "dpa_xla"/"cudnn"/"splash" use index-based causality, which is the same thing
when positions increase within each segment (packed sequences as produced by `data/`).

Left to others: projections and RoPE (`layers.py`), cache bookkeeping (`transformer.py`).
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from treasure_jax.model import sharding

# Finite, so a fully masked query row (padding) gets a uniform softmax instead of NaN.
_MASK_VALUE = -0.7 * float(jnp.finfo(jnp.float32).max)


class CacheView(NamedTuple):
  """One layer's view of the KV cache during a cached forward pass (S = cache length)."""
  k_BSKH: jax.Array
  v_BSKH: jax.Array
  slots_BT: jax.Array  # Cache slot of each incoming token.
  positions_BS: jax.Array  # Position of the token in each slot, incoming tokens included.
  segment_ids_BS: jax.Array  # Segment of each slot (0: empty), incoming tokens included.


def make_mask(q_positions_BT: jax.Array, q_segment_ids_BT: jax.Array, kv_positions_BS: jax.Array,
              kv_segment_ids_BS: jax.Array, window: int | None) -> jax.Array:
  """Boolean mask_BTS: same segment, causal by position, within `window` positions if set."""
  q_pos = q_positions_BT[:, :, None]
  kv_pos = kv_positions_BS[:, None, :]
  mask = q_segment_ids_BT[:, :, None] == kv_segment_ids_BS[:, None, :]
  mask &= kv_pos <= q_pos
  if window is not None:
    mask &= q_pos - kv_pos < window
  return mask


def xla_attention(q_BTNH: jax.Array, k_BSKH: jax.Array, v_BSKH: jax.Array, mask_BTS: jax.Array,
                  *, scale: float, softcap: float | None) -> jax.Array:
  """Grouped-query attention as two batched matmuls; logits and softmax in float32.

  Layout: batch and kv head lead, and the G query heads of a kv head are stacked as rows
  (q_BKQH with Q = G * T), so each matmul is one [Q, H] x [H, S] product per (b, kv head)
  with no broadcast of keys/values over G. On XLA:CPU this runs ~10% faster per layer than
  einsums over [B, T, K, G, H] (whose transposes XLA inserts around every dot anyway)."""
  b, t, n, h = q_BTNH.shape
  s, k = k_BSKH.shape[1], k_BSKH.shape[2]
  g = n // k
  q_BKQH = q_BTNH.reshape(b, t, k, g, h).transpose(0, 2, 3, 1, 4).reshape(b, k, g * t, h)
  k_BKSH = k_BSKH.transpose(0, 2, 1, 3)
  v_BKSH = v_BSKH.transpose(0, 2, 1, 3)
  logits_BKQS = jnp.einsum("bkqh,bksh->bkqs", q_BKQH, k_BKSH,
                           preferred_element_type=jnp.float32) * scale
  logits_BKGTS = logits_BKQS.reshape(b, k, g, t, s)
  if softcap is not None:
    logits_BKGTS = jnp.tanh(logits_BKGTS / softcap) * softcap
  logits_BKGTS = jnp.where(mask_BTS[:, None, None], logits_BKGTS, _MASK_VALUE)
  probs_BKQS = jax.nn.softmax(logits_BKGTS, axis=-1).astype(v_BSKH.dtype).reshape(b, k, g * t, s)
  out_BKQH = jnp.einsum("bkqs,bksh->bkqh", probs_BKQS, v_BKSH)
  return out_BKQH.reshape(b, k, g, t, h).transpose(0, 3, 1, 2, 4).reshape(b, t, n, h)


def dpa_attention(q_BTNH: jax.Array, k_BTKH: jax.Array, v_BTKH: jax.Array,
                  segment_ids_BT: jax.Array, *, scale: float, window: int | None,
                  implementation: str) -> jax.Array:
  """`jax.nn.dot_product_attention` (self-attention, no cache) with segment + causal masks."""
  mask_B1TT = (segment_ids_BT[:, :, None] == segment_ids_BT[:, None, :])[:, None]
  return jax.nn.dot_product_attention(
      q_BTNH, k_BTKH, v_BTKH, mask=mask_B1TT, scale=scale, is_causal=True,
      local_window_size=None if window is None else (window - 1, 0),
      implementation=implementation)


def check_platform(impl: str, softcap: float | None, dtype: jnp.dtype) -> None:
  """Fail early, naming the config field, when `impl` cannot run here."""
  backend = jax.default_backend()
  if impl == "cudnn":
    if backend != "gpu":
      raise ValueError(f"ModelConfig.attention_impl='cudnn' needs a GPU; this backend is "
                       f"{backend!r} (use 'xla' or 'dpa_xla')")
    if softcap is not None:
      raise ValueError("ModelConfig.attention_impl='cudnn' does not support attn_logit_softcap "
                       "(Gemma 2); use 'xla'")
    if jnp.dtype(dtype) != jnp.bfloat16:
      raise ValueError("ModelConfig.attention_impl='cudnn' needs dtype='bfloat16'")
  if impl == "splash" and backend != "tpu":
    raise ValueError(f"ModelConfig.attention_impl='splash' needs a TPU; this backend is "
                     f"{backend!r} (use 'xla', 'dpa_xla' or on GPU 'cudnn')")


def splash_attention(q_BTNH: jax.Array, k_BTKH: jax.Array, v_BTKH: jax.Array,
                     segment_ids_BT: jax.Array, *, scale: float, window: int | None,
                     softcap: float | None, plan: sharding.Plan | None,
                     interpret: bool = False) -> jax.Array:
  """Pallas splash attention (TPU), under shard_map when a plan is given (batch over the batch
  axes, heads over the heads axis when kv heads shard the same way). T must be a multiple of 128
  on TPU. `interpret=True` runs the kernel in the Pallas interpreter (tests)."""
  run = functools.partial(_splash_local, scale=scale, window=window, softcap=softcap,
                          interpret=interpret)
  if plan is None:
    return run(q_BTNH, k_BTKH, v_BTKH, segment_ids_BT)
  q_spec = sharding.logical_to_spec(("batch", "seq", "heads", "head_dim"), plan.rules, plan.mesh,
                                    q_BTNH.shape)
  kv_spec = sharding.logical_to_spec(("batch", "seq", "kv_heads", "head_dim"), plan.rules,
                                     plan.mesh, k_BTKH.shape)
  if kv_spec[2] != q_spec[2]:  # GQA groups must stay whole on each shard.
    q_spec = jax.sharding.PartitionSpec(q_spec[0], None, None, None)
    kv_spec = jax.sharding.PartitionSpec(kv_spec[0], None, None, None)
  seg_spec = jax.sharding.PartitionSpec(q_spec[0], None)
  return jax.shard_map(run, mesh=plan.mesh, in_specs=(q_spec, kv_spec, kv_spec, seg_spec),
                       out_specs=q_spec, check_vma=False)(q_BTNH, k_BTKH, v_BTKH, segment_ids_BT)


def _splash_local(q_BTNH: jax.Array, k_BTKH: jax.Array, v_BTKH: jax.Array,
                  segment_ids_BT: jax.Array, *, scale: float, window: int | None,
                  softcap: float | None, interpret: bool) -> jax.Array:
  from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as kernel_lib
  from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as mask_lib
  t, n = q_BTNH.shape[1], q_BTNH.shape[2]
  if window is None:
    head_mask = mask_lib.CausalMask((t, t))
  else:
    head_mask = mask_lib.LocalMask((t, t), window_size=(window - 1, 0), offset=0)
  block = min(512, t)
  blocks = kernel_lib.BlockSizes(
      block_q=block, block_kv=block, block_kv_compute=block, block_q_dkv=block,
      block_kv_dkv=block, block_kv_dkv_compute=block, block_q_dq=block, block_kv_dq=block)
  kernel = kernel_lib.make_splash_mha(
      mask_lib.MultiHeadMask([head_mask] * n), block_sizes=blocks, head_shards=1,
      q_seq_shards=1, attn_logits_soft_cap=softcap, interpret=interpret)
  # The kernel takes one example, heads first, and does not scale q itself.
  q_BNTH = (q_BTNH * jnp.asarray(scale, q_BTNH.dtype)).transpose(0, 2, 1, 3)
  k_BKTH = k_BTKH.transpose(0, 2, 1, 3)
  v_BKTH = v_BTKH.transpose(0, 2, 1, 3)
  segs = kernel_lib.SegmentIds(q=segment_ids_BT, kv=segment_ids_BT)
  out_BNTH = jax.vmap(kernel, in_axes=(0, 0, 0, kernel_lib.SegmentIds(0, 0)))(
      q_BNTH, k_BKTH, v_BKTH, segs)
  return out_BNTH.transpose(0, 2, 1, 3).astype(q_BTNH.dtype)


def write_kv(cache_BSKH: jax.Array, new_BTKH: jax.Array, slots_BT: jax.Array) -> jax.Array:
  """Scatter new keys (or values) into their cache slots; slots past the end are dropped."""
  rows_B1 = jnp.arange(cache_BSKH.shape[0])[:, None]
  return cache_BSKH.at[rows_B1, slots_BT].set(new_BTKH.astype(cache_BSKH.dtype), mode="drop")
