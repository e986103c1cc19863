"""LoRA adapters inside the model: `flax.nnx.LoRA` modules on the targeted projections.

A projection (`layers.Linear`, kernel in_shape + out_shape) that `ModelConfig.lora` targets
holds an `nnx.LoRA` as `lora`: A [prod(in_shape), r] and B [r, prod(out_shape)], both
`nnx.LoRAParam` (a subclass of `nnx.Param`) in float32 whatever the base's `param_dtype`, and
its output is `base(x) + alpha / r * (x A) B`, the adapter run in the compute dtype. A is
He-uniform and B zero at initialization, so a fresh adapter leaves the model unchanged. A and
B carry logical axes (the projection's first input / first output axis, and "lora_rank"), so
the one rules table of `sharding.py` shards them. Adapters are drawn from keys folded out of
their kernel's key: the base weights of a seed are the same with and without LoRA.

Fused projections (`layers.project_together`): the base kernels of q/k/v (gate/up) still run
as one matmul, and each targeted projection adds its own adapter's update to its slice, so
fusion changes speed only, never which weights are trained or exported.

Trainable vs frozen is the variable type: `split` separates LoRAParam (adapters) from the
other parameters (the frozen base). Deliberately left to others: loading the base and
Hugging Face / PEFT export (`lora_io`), the train step over the split (`train.step`).
"""
from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from treasure_jax.model import config as config_lib
from treasure_jax.model import quant

# Adapters: the trainable parameters of a LoRA model. Base: every other parameter.
ADAPTERS = nnx.LoRAParam
BASE = nnx.All(nnx.Param, nnx.Not(nnx.LoRAParam))


def adapter(cfg: config_lib.ModelConfig, name: str, in_shape: tuple[int, ...],
            out_shape: tuple[int, ...], in_axes: tuple[str, ...], out_axes: tuple[str, ...],
            kernel_key: jax.Array) -> nnx.LoRA | None:
  """The adapter of projection `name`, or None when `cfg.lora` does not target it."""
  if cfg.lora is None or name not in cfg.lora.targeted():
    return None
  meta = lambda axes: {"out_sharding": axes, "eager_sharding": False}
  return nnx.LoRA(math.prod(in_shape), cfg.lora.rank, math.prod(out_shape),
                  dtype=cfg.jnp_dtype, param_dtype=jnp.float32,
                  rngs=nnx.Rngs(params=jax.random.fold_in(kernel_key, 1)),
                  a_metadata=meta((in_axes[0], "lora_rank")),
                  b_metadata=meta(("lora_rank", out_axes[0])))


def delta(module: nnx.LoRA, x: jax.Array, n_in: int, out_shape: tuple[int, ...],
          scale: float) -> jax.Array:
  """scale * (x A) B of a projection contracting x's last `n_in` dims into `out_shape`."""
  lead = x.shape[:x.ndim - n_in]
  y = module(x.reshape(lead + (-1,)))
  return (y * jnp.asarray(scale, y.dtype)).reshape(lead + tuple(out_shape))


def split(params: nnx.State) -> tuple[nnx.State, nnx.State]:
  """(adapters, base) of a model's parameter state."""
  return nnx.split_state(params, ADAPTERS, ...)


def merged_kernels(params: nnx.State, cfg: config_lib.ModelConfig, *,
                   adapters: bool = True) -> nnx.State:
  """The base parameters with every adapted kernel replaced by W + alpha / r * A B (or by W
  alone, `adapters=False`), in `cfg.param_dtype` (the product is formed in float32): the state
  of `cfg.replace(lora=None)`. A quantized base (QLoRA) is dequantized. Scanned kernels carry a
  leading L axis."""
  flat = dict(nnx.to_flat_state(params))
  out = []
  for path, var in nnx.to_flat_state(nnx.split_state(params, BASE, ...)[0]):
    if path[-1] != "kernel":
      if not path[-1].endswith(quant.SCALE_SUFFIX):
        out.append((path, var))
      continue
    scale = flat.get(tuple(path[:-1]) + ("kernel" + quant.SCALE_SUFFIX,))
    kernel = (var[...] if scale is None
              else quant.dequantize(var[...], scale[...], jnp.float32))
    a_path = tuple(path[:-1]) + ("lora", "lora_a")
    if adapters and a_path in flat:
      a = flat[a_path][...].astype(jnp.float32)
      b = flat[tuple(path[:-1]) + ("lora", "lora_b")][...].astype(jnp.float32)
      kernel = _merge_one(kernel, a, b, cfg.lora.scale)
    dtype = kernel.dtype if scale is None else cfg.jnp_param_dtype
    out.append((path, var.replace(kernel.astype(dtype))))
  return nnx.from_flat_state(out)


@jax.jit
def _product(a: jax.Array, b: jax.Array) -> jax.Array:
  return jnp.einsum("...ir,...ro->...io", a, b)


def _merge_one(kernel: jax.Array, a: jax.Array, b: jax.Array, scale: float) -> jax.Array:
  ab = _product(a, b) * scale
  return (kernel.astype(jnp.float32) + ab.reshape(kernel.shape)).astype(kernel.dtype)


def count(state: Any) -> int:
  """Adapter scalars in a model or state (works on abstract ones too)."""
  if isinstance(state, nnx.Module):
    state = nnx.state(state, ADAPTERS)
  return sum(int(x.size) for x in jax.tree.leaves(state))
