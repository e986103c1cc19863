"""Transformer building blocks: RMSNorm, projections, embedding, RoPE, attention, MLP, one block.

Every parameter is an `nnx.Param` with logical axis names in its `out_sharding` metadata (see
`sharding.py` for the names and the rules that map them to the mesh). Parameters are stored in
`param_dtype` and cast to the compute dtype at use; norms, RoPE, softmax and logits run in float32.
Eager sharding is off: placement is decided once, by `transformer.create` or `hf.load_*`.
Shape legend: see `transformer.py`. The layer loop, remat, scan and the cache live there.
"""
from __future__ import annotations

import math
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax import ad_checkpoint

from treasure_jax.model import attention
from treasure_jax.model import config as config_lib
from treasure_jax.model import lora
from treasure_jax.model import quant
from treasure_jax.model import sharding

# Activations tagged for the "minimal" remat policy: the projection outputs are saved, the
# attention core and elementwise work are recomputed.
SAVED_BY_MINIMAL = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def _param(value: jax.Array, axes: Sequence[str]) -> nnx.Param:
  return nnx.Param(value, out_sharding=tuple(axes), eager_sharding=False)


class RMSNorm(nnx.Module):
  """y = x / rms(x) * (offset + scale), computed in float32 (offset 1 for Gemma)."""

  def __init__(self, cfg: config_lib.ModelConfig):
    self.eps = cfg.norm_eps
    self.offset = cfg.norm_offset
    self.scale = _param(jnp.full((cfg.embed_dim,), 1.0 - cfg.norm_offset, cfg.jnp_param_dtype),
                        ("norm",))

  def __call__(self, x: jax.Array) -> jax.Array:
    x32 = x.astype(jnp.float32)
    y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
    return (y * (self.offset + self.scale[...].astype(jnp.float32))).astype(x.dtype)


class Linear(nnx.Module):
  """Contracts the last len(in_shape) dims of x with a kernel of shape in_shape + out_shape."""

  def __init__(self, in_shape: tuple[int, ...], out_shape: tuple[int, ...],
               in_axes: tuple[str, ...], out_axes: tuple[str, ...], *, use_bias: bool,
               cfg: config_lib.ModelConfig, rngs: nnx.Rngs, name: str = ""):
    """`name` (e.g. "q_proj") is what `cfg.lora.targets` match to give it an adapter."""
    self.n_in = len(in_shape)
    self.dtype = cfg.jnp_dtype
    stddev = 1.0 / math.sqrt(math.prod(in_shape))
    key = rngs.params()
    kernel = stddev * jax.random.truncated_normal(key, -2.0, 2.0, in_shape + out_shape,
                                                  jnp.float32)
    scale = None
    if cfg.lora is not None and cfg.lora.base_bits and name in config_lib.LORA_TARGETS:
      block = quant.block_size(in_shape, cfg.lora.base_block_size, name)
      kernel, scale = quant.quantize(kernel, len(out_shape), cfg.lora.base_bits, block)
      scale = _param(scale, in_axes + out_axes)  # A frozen QLoRA base (see quant.py).
    self.kernel = _param(kernel if scale is not None else kernel.astype(cfg.jnp_param_dtype),
                         in_axes + out_axes)
    self.kernel_scale = scale
    self.bias = (_param(jnp.zeros(out_shape, cfg.jnp_param_dtype), out_axes) if use_bias
                 else None)
    self.lora = lora.adapter(cfg, name, in_shape, out_shape, in_axes, out_axes, key)
    self.lora_scale = cfg.lora.scale if self.lora is not None else None

  def weight(self) -> jax.Array:
    """The kernel in the compute dtype (dequantized when the base is quantized)."""
    if self.kernel_scale is None:
      return self.kernel[...].astype(self.dtype)
    return quant.dequantize(self.kernel[...], self.kernel_scale[...], self.dtype)

  def __call__(self, x: jax.Array) -> jax.Array:
    y = jnp.tensordot(x.astype(self.dtype), self.weight(), axes=self.n_in)
    if self.bias is not None:
      y = y + self.bias[...].astype(self.dtype)
    return self.adapted(x, y)

  def adapted(self, x: jax.Array, y: jax.Array) -> jax.Array:
    """`y` (this projection's base output for `x`) plus its LoRA update, if it has an adapter."""
    if self.lora is None:
      return y
    return y + lora.delta(self.lora, x, self.n_in, self.kernel.shape[self.n_in:],
                          self.lora_scale).astype(y.dtype)


def project_together(x: jax.Array, linears: Sequence[Linear]) -> list[jax.Array]:
  """`[lin(x) for lin in linears]` as one matmul: the kernels (same input shape, any output
  shapes) are concatenated along their flattened outputs for this call only."""
  first = linears[0]
  in_shape = first.kernel.shape[:first.n_in]
  out_shapes = [lin.kernel.shape[lin.n_in:] for lin in linears]
  kernels = [lin.weight().reshape(in_shape + (math.prod(shape),))
             for lin, shape in zip(linears, out_shapes)]
  y = jnp.tensordot(x.astype(first.dtype), jnp.concatenate(kernels, axis=-1), axes=first.n_in)
  sizes = np.cumsum([math.prod(shape) for shape in out_shapes])[:-1]
  outs = []
  for lin, shape, part in zip(linears, out_shapes, jnp.split(y, sizes, axis=-1)):
    part = part.reshape(part.shape[:-1] + shape)
    part = part if lin.bias is None else part + lin.bias[...].astype(lin.dtype)
    outs.append(lin.adapted(x, part))  # Adapters stay per projection (see lora.py).
  return outs


def fuse(cfg: config_lib.ModelConfig, plan: sharding.Plan | None, *logical_axes: str,
         cached: bool) -> bool:
  """Whether projections sharing an input run as one matmul (`cfg.fuse_projections`): not
  where the plan splits their output axes over the mesh (tensor parallelism), and not on the
  KV-cache path, where a decode step's few rows do not repay concatenating the kernels (SmolLM2
  -135M CPU decoding at batch 16: 148 tokens/s unfused vs 144 fused)."""
  return cfg.fuse_projections and not cached and (
      plan is None or not any(plan.splits(axis) for axis in logical_axes))


class Embedder(nnx.Module):
  """Token embedding [V, D]; also the output projection when embeddings are tied."""

  def __init__(self, cfg: config_lib.ModelConfig, *, rngs: nnx.Rngs):
    self.dtype = cfg.jnp_dtype
    self.scale = math.sqrt(cfg.embed_dim) if cfg.scale_embeddings else None
    table = 0.02 * jax.random.normal(rngs.params(), (cfg.vocab_size, cfg.embed_dim), jnp.float32)
    self.embedding = _param(table.astype(cfg.jnp_param_dtype), ("vocab", "embed"))

  def encode(self, tokens_BT: jax.Array) -> jax.Array:
    x_BTD = jnp.take(self.embedding[...], tokens_BT, axis=0).astype(self.dtype)
    if self.scale is not None:
      # Gemma rounds sqrt(D) to the compute dtype before multiplying.
      x_BTD = x_BTD * jnp.asarray(self.scale, self.dtype)
    return x_BTD

  def decode(self, x_BTD: jax.Array) -> jax.Array:
    return jnp.einsum("btd,vd->btv", x_BTD, self.embedding[...].astype(self.dtype),
                      preferred_element_type=jnp.float32)


def rope_inv_freq(cfg: config_lib.ModelConfig) -> np.ndarray:
  """Inverse RoPE frequencies [H/2] (float32), with Llama-3 scaling when configured."""
  exponents = np.arange(0, cfg.head_dim, 2, dtype=np.int64).astype(np.float32) / cfg.head_dim
  inv_freq = (1.0 / (cfg.rope_theta ** exponents)).astype(np.float32)
  s = cfg.rope_scaling
  if s is None:
    return inv_freq
  low_freq_wavelen = s.original_max_len / s.low_freq_factor
  high_freq_wavelen = s.original_max_len / s.high_freq_factor
  wavelen = 2 * math.pi / inv_freq
  scaled = np.where(wavelen > low_freq_wavelen, inv_freq / s.factor, inv_freq)
  smooth = (s.original_max_len / wavelen - s.low_freq_factor) / (
      s.high_freq_factor - s.low_freq_factor)
  smoothed = (1 - smooth) * scaled / s.factor + smooth * scaled
  is_medium = (wavelen >= high_freq_wavelen) & (wavelen <= low_freq_wavelen)
  return np.where(is_medium, smoothed, scaled).astype(np.float32)


def apply_rope(x_BTNH: jax.Array, positions_BT: jax.Array, inv_freq: np.ndarray) -> jax.Array:
  """Rotary embedding, HF "rotate_half" layout (first half / second half of H are the pairs)."""
  angles_BT1F = (positions_BT.astype(jnp.float32)[:, :, None, None]
                 * jnp.asarray(inv_freq)[None, None, None, :])
  sin, cos = jnp.sin(angles_BT1F), jnp.cos(angles_BT1F)
  x1, x2 = jnp.split(x_BTNH.astype(jnp.float32), 2, axis=-1)
  out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return out.astype(x_BTNH.dtype)


class Attention(nnx.Module):
  """Grouped-query self-attention with RoPE, optional q/k/v bias, soft-capping, sliding window."""

  def __init__(self, cfg: config_lib.ModelConfig, *, rngs: nnx.Rngs):
    d, n, k, h = cfg.embed_dim, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    self.cfg = cfg
    self.q_proj = Linear((d,), (n, h), ("embed",), ("heads", "head_dim"), use_bias=cfg.qkv_bias,
                         cfg=cfg, rngs=rngs, name="q_proj")
    self.k_proj = Linear((d,), (k, h), ("embed",), ("kv_heads", "head_dim"),
                         use_bias=cfg.qkv_bias, cfg=cfg, rngs=rngs, name="k_proj")
    self.v_proj = Linear((d,), (k, h), ("embed",), ("kv_heads", "head_dim"),
                         use_bias=cfg.qkv_bias, cfg=cfg, rngs=rngs, name="v_proj")
    self.o_proj = Linear((n, h), (d,), ("heads", "head_dim"), ("embed",), use_bias=cfg.out_bias,
                         cfg=cfg, rngs=rngs, name="o_proj")
    self.scale = (cfg.query_pre_attn_scalar or cfg.head_dim) ** -0.5

  def __call__(self, x_BTD: jax.Array, positions_BT: jax.Array, segment_ids_BT: jax.Array, *,
               window: int | None, plan: sharding.Plan | None,
               kv: attention.CacheView | None = None
               ) -> tuple[jax.Array, tuple[jax.Array, jax.Array] | None]:
    """Returns out_BTD and, on the cached path, the updated (k_BSKH, v_BSKH) of this layer."""
    inv_freq = rope_inv_freq(self.cfg)  # numpy: a trace-time constant.
    name = ad_checkpoint.checkpoint_name
    projections = (self.q_proj, self.k_proj, self.v_proj)
    if fuse(self.cfg, plan, "heads", "kv_heads", cached=kv is not None):
      q_BTNH, k_BTKH, v_BTKH = project_together(x_BTD, projections)
    else:
      q_BTNH, k_BTKH, v_BTKH = (proj(x_BTD) for proj in projections)
    q_BTNH = apply_rope(name(q_BTNH, "q_proj"), positions_BT, inv_freq)
    k_BTKH = apply_rope(name(k_BTKH, "k_proj"), positions_BT, inv_freq)
    v_BTKH = name(v_BTKH, "v_proj")
    q_BTNH = sharding.constrain(q_BTNH, ("batch", "seq", "heads", "head_dim"), plan)
    k_BTKH = sharding.constrain(k_BTKH, ("batch", "seq", "kv_heads", "head_dim"), plan)
    v_BTKH = sharding.constrain(v_BTKH, ("batch", "seq", "kv_heads", "head_dim"), plan)
    new_kv = None
    if kv is not None:
      k_BSKH = attention.write_kv(kv.k_BSKH, k_BTKH, kv.slots_BT)
      v_BSKH = attention.write_kv(kv.v_BSKH, v_BTKH, kv.slots_BT)
      new_kv = (k_BSKH, v_BSKH)
      mask_BTS = attention.make_mask(positions_BT, segment_ids_BT, kv.positions_BS,
                                     kv.segment_ids_BS, window)
      out_BTNH = attention.xla_attention(q_BTNH, k_BSKH.astype(q_BTNH.dtype),
                                         v_BSKH.astype(q_BTNH.dtype), mask_BTS, scale=self.scale,
                                         softcap=self.cfg.attn_logit_softcap)
    else:
      out_BTNH = self._self_attention(q_BTNH, k_BTKH, v_BTKH, positions_BT, segment_ids_BT,
                                      window, plan)
    out_BTNH = sharding.constrain(out_BTNH, ("batch", "seq", "heads", "head_dim"), plan)
    return ad_checkpoint.checkpoint_name(self.o_proj(out_BTNH), "o_proj"), new_kv

  def _self_attention(self, q_BTNH, k_BTKH, v_BTKH, positions_BT, segment_ids_BT, window, plan):
    impl, softcap = self.cfg.attention_impl, self.cfg.attn_logit_softcap
    if impl == "xla":
      mask_BTT = attention.make_mask(positions_BT, segment_ids_BT, positions_BT, segment_ids_BT,
                                     window)
      return attention.xla_attention(q_BTNH, k_BTKH, v_BTKH, mask_BTT, scale=self.scale,
                                     softcap=softcap)
    attention.check_platform(impl, softcap, self.cfg.jnp_dtype)
    if impl == "splash":
      return attention.splash_attention(q_BTNH, k_BTKH, v_BTKH, segment_ids_BT, scale=self.scale,
                                        window=window, softcap=softcap, plan=plan)
    if softcap is not None:
      raise ValueError(f"ModelConfig.attention_impl={impl!r} does not support "
                       "attn_logit_softcap; use 'xla' or 'splash'")
    return attention.dpa_attention(q_BTNH, k_BTKH, v_BTKH, segment_ids_BT, scale=self.scale,
                                   window=window, implementation=impl.removeprefix("dpa_"))


class MLP(nnx.Module):
  """Gated MLP: down(act(gate(x)) * up(x)); SwiGLU (silu) or GeGLU (tanh-approximated gelu)."""

  def __init__(self, cfg: config_lib.ModelConfig, *, rngs: nnx.Rngs):
    d, f = cfg.embed_dim, cfg.mlp_dim
    self.gate_proj = Linear((d,), (f,), ("embed",), ("mlp",), use_bias=False, cfg=cfg, rngs=rngs,
                            name="gate_proj")
    self.up_proj = Linear((d,), (f,), ("embed",), ("mlp",), use_bias=False, cfg=cfg, rngs=rngs,
                          name="up_proj")
    self.down_proj = Linear((f,), (d,), ("mlp",), ("embed",), use_bias=False, cfg=cfg, rngs=rngs,
                            name="down_proj")
    self.activation = cfg.activation
    self.cfg = cfg

  def __call__(self, x_BTD: jax.Array, plan: sharding.Plan | None, *,
               cached: bool = False) -> jax.Array:
    """`cached`: on the KV-cache path (see `fuse`)."""
    if fuse(self.cfg, plan, "mlp", cached=cached):
      gate_BTF, up_BTF = project_together(x_BTD, (self.gate_proj, self.up_proj))
    else:
      gate_BTF, up_BTF = self.gate_proj(x_BTD), self.up_proj(x_BTD)
    gate_BTF = ad_checkpoint.checkpoint_name(gate_BTF, "gate_proj")
    up_BTF = ad_checkpoint.checkpoint_name(up_BTF, "up_proj")
    if self.activation == "silu":
      gate_BTF = jax.nn.silu(gate_BTF)
    else:
      gate_BTF = jax.nn.gelu(gate_BTF, approximate=True)
    h_BTF = sharding.constrain(gate_BTF * up_BTF, ("batch", "seq", "mlp"), plan)
    return ad_checkpoint.checkpoint_name(self.down_proj(h_BTF), "down_proj")


class Block(nnx.Module):
  """Pre-norm residual block: attention then MLP; Gemma 2 adds post-norms on both branches."""

  def __init__(self, cfg: config_lib.ModelConfig, *, rngs: nnx.Rngs):
    self.attn_norm = RMSNorm(cfg)
    self.attn = Attention(cfg, rngs=rngs)
    self.mlp_norm = RMSNorm(cfg)
    self.mlp = MLP(cfg, rngs=rngs)
    self.post_attn_norm = RMSNorm(cfg) if cfg.post_norms else None
    self.post_mlp_norm = RMSNorm(cfg) if cfg.post_norms else None

  def __call__(self, x_BTD: jax.Array, positions_BT: jax.Array, segment_ids_BT: jax.Array, *,
               window: int | None, plan: sharding.Plan | None,
               kv: attention.CacheView | None = None):
    h_BTD, new_kv = self.attn(self.attn_norm(x_BTD), positions_BT, segment_ids_BT, window=window,
                              plan=plan, kv=kv)
    if self.post_attn_norm is not None:
      h_BTD = self.post_attn_norm(h_BTD)
    x_BTD = sharding.constrain(x_BTD + h_BTD, ("batch", "seq", "act_embed"), plan)
    h_BTD = self.mlp(self.mlp_norm(x_BTD), plan, cached=kv is not None)
    if self.post_mlp_norm is not None:
      h_BTD = self.post_mlp_norm(h_BTD)
    x_BTD = sharding.constrain(x_BTD + h_BTD, ("batch", "seq", "act_embed"), plan)
    return x_BTD, new_kv
