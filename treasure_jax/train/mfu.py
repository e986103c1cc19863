"""Model FLOPs utilization: the training FLOP formula and the accelerator's peak.

FLOPs are the model's matmuls only (MFU, not hardware FLOPs: rematerialization is not counted),
PaLM-style (Chowdhery et al. 2022, appendix B): per token, 6 x the matmul parameters (forward
2, backward 4) plus 12 x layers x (heads x head_dim) x seq_len for the attention scores and
the weighted sum, counting the full T x T matrix as PaLM does even though it is causal. The
peak is a table of dense bf16 figures for GPUs/TPUs and, on CPU, a matmul measured at start-up
on this machine. Deliberately left to others: timing the steps (`loop`), logging (`logging_lib`).
"""
from __future__ import annotations

import dataclasses
import time

import jax
import jax.numpy as jnp

from treasure_jax.model import config as model_config

# Dense bf16 peak FLOP/s per device, from the vendors' data sheets (no sparsity).
_PEAKS = (
    ("h200", 989e12), ("h100", 989e12), ("a100", 312e12), ("l4", 121e12), ("a10", 125e12),
    ("tpu v6", 918e12), ("tpu v5p", 459e12), ("tpu v5 lite", 197e12), ("tpu v5e", 197e12),
    ("tpu v4", 275e12), ("tpu v3", 123e12),
)


@dataclasses.dataclass(frozen=True)
class FlopCount:
  """Training FLOPs per token and how they were counted (printed at start-up)."""
  per_token: float
  matmul_params: int
  formula: str


def flops_per_token(cfg: model_config.ModelConfig, seq_len: int) -> FlopCount:
  """Training FLOPs per token of `cfg` at sequence length `seq_len` (see module docstring)."""
  d, h, f = cfg.embed_dim, cfg.head_dim, cfg.mlp_dim
  attn_proj = d * cfg.num_heads * h * 2 + d * cfg.num_kv_heads * h * 2  # q, o; k, v
  mlp = 3 * d * f  # gate, up, down
  matmul_params = cfg.num_layers * (attn_proj + mlp) + d * cfg.vocab_size  # + lm head
  attention = 12 * cfg.num_layers * cfg.num_heads * h * seq_len
  per_token = 6 * matmul_params + attention
  formula = (f"6 * N + 12 * L * N_heads * H * T = 6 * {matmul_params:,} + 12 * {cfg.num_layers}"
             f" * {cfg.num_heads} * {h} * {seq_len} = {per_token:,.0f} FLOPs/token "
             f"(N: matmul parameters incl. the LM head; embedding lookups excluded)")
  return FlopCount(per_token=float(per_token), matmul_params=matmul_params, formula=formula)


def measure_matmul_peak(dtype: str = "float32", size: int = 1024, seconds: float = 0.5) -> float:
  """FLOP/s of a jitted `size`x`size` matmul on device 0, best of repeated timings.

  On CPU one device's matmul already uses every core (XLA's intra-op thread pool), so this is
  the machine's peak whatever the number of simulated devices.
  """
  device = jax.local_devices()[0]
  a = jax.device_put(jnp.ones((size, size), dtype), device)
  matmul = jax.jit(lambda x, y: x @ y)
  matmul(a, a).block_until_ready()
  best = float("inf")
  deadline = time.perf_counter() + seconds
  while time.perf_counter() < deadline or best == float("inf"):
    start = time.perf_counter()
    matmul(a, a).block_until_ready()
    best = min(best, time.perf_counter() - start)
  return 2.0 * size ** 3 / best


def peak_flops(dtype: str = "bfloat16") -> tuple[float, str]:
  """(peak FLOP/s of one device, where the number comes from)."""
  device = jax.local_devices()[0]
  if device.platform == "cpu":
    peak = measure_matmul_peak(dtype)
    return peak, f"measured {dtype} 1024x1024 matmul on this CPU: {peak / 1e9:.1f} GFLOP/s"
  kind = device.device_kind.lower()
  for name, peak in _PEAKS:
    if name in kind:
      return peak, f"data-sheet dense bf16 peak of {device.device_kind}: {peak / 1e12:.0f} TFLOP/s"
  peak = measure_matmul_peak(dtype, size=8192)
  return peak, (f"{device.device_kind} not in the table; measured {dtype} matmul: "
                f"{peak / 1e12:.1f} TFLOP/s")


def total_peak(peak_per_device: float) -> float:
  """Peak FLOP/s of the whole run: per device x devices, or per process on CPU.

  Simulated CPU devices share one machine's cores, and `measure_matmul_peak` already measured
  all of them, so on CPU each process (assumed to own its host) counts once.
  """
  if jax.local_devices()[0].platform == "cpu":
    return peak_per_device * jax.process_count()
  return peak_per_device * jax.device_count()


def mfu(tokens_per_s: float, flops: FlopCount, peak: float) -> float:
  """Achieved model FLOP/s (`tokens_per_s` over the whole run) over the run's `peak`."""
  return tokens_per_s * flops.per_token / peak
