"""Weight-only quantization of a frozen base's projection kernels: the "Q" of QLoRA.

With `model.lora.base_bits` = 8 or 4, every projection kernel (q/k/v/o, gate/up/down; not the
embedding, the head or the norms) is stored as int8 / int4 codes plus float32 scales, and
dequantized to the compute dtype where it is used (`layers.Linear.weight`). Blockwise absmax:
the kernel's last input axis is cut into blocks of `base_block_size` weights, each block b of
one output column has scale s_b = max|W_b| / qmax (qmax 127 for int8, 7 for int4, symmetric),
and W ~= s_b * round(W / s_b); so |W - W~| <= s_b / 2 element-wise. A kernel in_shape +
out_shape gets a scale in_shape[:-1] + (in_shape[-1] / block,) + out_shape with the kernel's
logical axes, so the one rules table shards both alike. Storage per weight: 8 or 4 bits plus 32
/ block bits of scale (4.5 bits at block 64; bitsandbytes' NF4 with double quantization stores
~4.13, and its 16 levels follow a normal distribution where ours are uniform).

A quantized base is not checkpointed: a LoRA checkpoint points at its base (`train.base_model`),
which is loaded and quantized again on restore, deterministically, so the codes are those the
adapters were trained on. Export dequantizes (`lora.merged_kernels`).
Deliberately left to others: which kernels are quantized (`layers.Linear`), loading (`hf`).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

BITS = (8, 4)
_CODE_DTYPE = {8: jnp.int8, 4: jnp.int4}
_QMAX = {8: 127, 4: 7}
SCALE_SUFFIX = "_scale"  # The scale of `kernel` is the sibling variable `kernel_scale`.


def block_size(in_shape: tuple[int, ...], block: int, name: str) -> int:
  """The block along the last input axis; it must divide that axis (a clear error if not)."""
  last = in_shape[-1]
  block = min(block, last)
  if last % block:
    raise ValueError(f"model.lora.base_block_size={block} does not divide {name}'s input axis "
                     f"of {last}; choose a divisor of it")
  return block


def quantize(w: jax.Array, n_out: int, bits: int, block: int) -> tuple[jax.Array, jax.Array]:
  """(codes, scale) of kernel `w` (any leading axes, then in_shape, then n_out output axes)."""
  axis = w.ndim - n_out - 1
  blocks = w.shape[:axis] + (w.shape[axis] // block, block) + w.shape[axis + 1:]
  w_blocks = w.astype(jnp.float32).reshape(blocks)
  scale = jnp.max(jnp.abs(w_blocks), axis=axis + 1, keepdims=True) / _QMAX[bits]
  safe = jnp.where(scale == 0, 1.0, scale)
  codes = jnp.clip(jnp.round(w_blocks / safe), -_QMAX[bits], _QMAX[bits])
  return (codes.astype(_CODE_DTYPE[bits]).reshape(w.shape),
          jnp.squeeze(scale, axis + 1))


def dequantize(codes: jax.Array, scale: jax.Array, dtype: jnp.dtype) -> jax.Array:
  """The kernel `codes` stands for, in `dtype`. The blocked axis is the one where the shapes of
  codes and scale differ (found from the shapes alone, so stacked layers work too)."""
  axis = blocked_axis(codes.shape, scale.shape)
  n = scale.shape[axis]
  blocks = codes.shape[:axis] + (n, codes.shape[axis] // n) + codes.shape[axis + 1:]
  w = codes.reshape(blocks).astype(dtype) * jnp.expand_dims(scale, axis + 1).astype(dtype)
  return w.reshape(codes.shape)


def blocked_axis(kernel_shape: tuple[int, ...], scale_shape: tuple[int, ...]) -> int:
  differ = [i for i, (k, s) in enumerate(zip(kernel_shape, scale_shape)) if k != s]
  if len(kernel_shape) != len(scale_shape) or len(differ) > 1:
    raise ValueError(f"a quantized kernel {kernel_shape} and its scale {scale_shape} do not "
                     "match")
  # One block spanning an axis of length 1 leaves the shapes equal: any axis dequantizes alike.
  return differ[0] if differ else 0


def is_quantized(kernel: nnx.Variable | jax.Array) -> bool:
  return jnp.issubdtype(kernel.dtype, jnp.integer)


def quantize_state(params: nnx.State, abstract: nnx.State, bits: int) -> nnx.State:
  """`params` (float kernels) in the layout of `abstract` (a quantized model's parameter state):
  every kernel that has a `kernel_scale` there is quantized; the rest is passed through."""
  flat = dict(nnx.to_flat_state(params))
  want = dict(nnx.to_flat_state(abstract))
  out = []
  for path, var in want.items():
    if path[-1].endswith(SCALE_SUFFIX):
      continue
    scale_path = path[:-1] + (path[-1] + SCALE_SUFFIX,)
    if scale_path not in want:
      out.append((path, flat[path]))
      continue
    axis = blocked_axis(var.shape, want[scale_path].shape)
    block = var.shape[axis] // want[scale_path].shape[axis]
    codes, scale = quantize(flat[path][...], var.ndim - axis - 1, bits, block)
    out += [(path, var.replace(codes)), (scale_path, want[scale_path].replace(scale))]
  return nnx.from_flat_state(out)
