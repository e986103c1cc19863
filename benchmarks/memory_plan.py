"""Per-device memory plan of a training config: exact sharded state, a formula, an AOT compile.

For each `configs/X.py:variant` (the variant names the hardware, see TARGETS) it prints one JSON
object with, per device of the variant's smallest mesh:
  state       parameters and optimizer state, exact: the trainer's own shardings
              (`train.setup.make_model`) evaluated on an abstract mesh of the target's size.
  formula     state + gradients + saved activations under the remat policy + one layer's
              working set + logits + fsdp-gathered weights: an estimate, every term listed.
  aot         (--aot) XLA's `memory_analysis()` of the train step compiled ahead of time on a
              fake CPU mesh of the target's device count: arguments + outputs - aliased
              (donated) + temporaries. A proxy, not the TPU/GPU figure: splash and cuDNN
              attention do not compile on CPU, so "xla" attention is compiled instead and its
              T x T scores (which those kernels never materialize) are counted; XLA:CPU also
              fuses and assigns buffers differently. Read it as an upper-bound-ish early OOM check.
  throughput  tokens/s = assumed MFU x peak FLOP/s x devices / FLOPs per token, with the
              trainer's FLOP count (`train.mfu.flops_per_token`: 6 N + attention); a formula.

Usage (needs no accelerator; forces a 32-device CPU platform when run as a script):
  python benchmarks/memory_plan.py configs/llama3_8b.py:v5p_64 configs/llama3_8b.py:h100x8 --aot
  python benchmarks/memory_plan.py configs/qwen2_7b.py:h100x8 --aot --config.data.seq_len=4096
  python benchmarks/memory_plan.py configs/smollm2_135m.py --target h100x1

An AOT compile costs 15-25 s of CPU per config whatever its depth when layers are scanned
(model.scan_layers); unscanned, the cost grows with the layers.
Deliberately left to others: the configs themselves, the train step (`train.step`), the loop.
"""
from __future__ import annotations

import os
import sys

if __name__ == "__main__":
  # Must precede the jax import: the fake mesh needs as many host devices as the largest target.
  os.environ["JAX_PLATFORMS"] = "cpu"
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                             + " --xla_force_host_platform_device_count=32").strip()

import argparse
import dataclasses
import functools
import json
import math
import time
from typing import Any, Sequence

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec

from treasure_jax import config_loader
from treasure_jax.data import features
from treasure_jax.model import config as model_config
from treasure_jax.model import sharding
from treasure_jax.train import mfu
from treasure_jax.train import optim
from treasure_jax.train import setup as setup_lib
from treasure_jax.train import step as step_lib

GIB = 2**30
# XLA:CPU spends most of an AOT compile in LLVM; these leave buffer assignment (and so
# memory_analysis) unchanged (measured on llama3_8b:v5p_64: 73.22 GiB temp either way).
_FAST_CPU_COMPILE = {"xla_backend_optimization_level": 0,
                     "xla_llvm_disable_expensive_passes": True}
_INT_KEYS = ("inputs", "targets", "segment_ids", "positions")


@dataclasses.dataclass(frozen=True)
class Target:
  """Hardware a config variant is written for: its smallest mesh, memory and peak per device."""
  name: str
  devices: int
  hbm_gib: float
  peak_flops: float  # Dense bf16 FLOP/s per device (data sheet).
  assumed_mfu: float
  mfu_note: str


TARGETS = {
    # GCP naming: v5p-64 is 64 TensorCores = 32 chips; each chip (megacore) is one JAX device.
    "v5p_64": Target("TPU v5p-64 slice: 32 chips (64 TensorCores), 8 hosts x 4 chips", 32, 95.0,
                     459e12, 0.40, "40%: fsdp + splash, 'minimal' remat recomputes attention only"),
    "h100x8": Target("one node of 8 NVIDIA H100 80GB (per node; more nodes add data parallelism)",
                     8, 80.0, 989e12, 0.35,
                     "35%: 'full' remat recomputes the forward (~1/3 more work, not in MFU)"),
    "h100x1": Target("one NVIDIA H100 80GB", 1, 80.0, 989e12, 0.35,
                     "35%: a 135M model is overhead-bound on an H100"),
    # 141 GB = 131 GiB; the H200's bf16 dense peak is the H100 SXM's.
    "h200x1_lora": Target("one NVIDIA H200 141GB, LoRA over a bfloat16 base", 1, 131.0, 989e12,
                          0.35, "35%: 'full' remat, 1-row micro-batches"),
    "v5p_8_lora": Target("TPU v5p-8 slice: 4 chips, 1 host, LoRA over a bfloat16 base", 4, 95.0,
                         459e12, 0.40, "40%: fsdp + splash, 'minimal' remat"),
    "h100x1_qlora": Target("one NVIDIA H100 80GB, QLoRA over an int4 base", 1, 80.0, 989e12,
                           0.30, "30%: 'full' remat, 1-row micro-batches, kernels dequantized"
                           " at every use"),
}


def target_of(spec: str, name: str | None = None) -> Target:
  """TARGETS[name], else the Target the variant of `spec` names ("x.py:v5p_64" -> "v5p_64")."""
  name = name or spec.partition(":")[2]
  if name not in TARGETS:
    raise ValueError(f"{spec}: {name!r} names no target hardware (known: {', '.join(TARGETS)}); "
                     f"for a config without hardware variants pass the target (--target)")
  return TARGETS[name]


def cpu_proxy(run: config_loader.RunConfig) -> config_loader.RunConfig:
  """`run` with an attention kernel that compiles on CPU ("splash"/"cudnn" -> "xla")."""
  if run.model.attention_impl in ("splash", "cudnn"):
    return dataclasses.replace(run, model=run.model.replace(attention_impl="xla"))
  return run


def abstract_mesh(run: config_loader.RunConfig, devices: int) -> jax.sharding.AbstractMesh:
  """The config's mesh over `devices` devices, without devices (a -1 entry takes the rest)."""
  shape = list(run.mesh.shape)
  known = math.prod(s for s in shape if s != -1)
  if -1 in shape:
    shape[shape.index(-1)] = devices // known
  if math.prod(shape) != devices:
    raise ValueError(f"mesh.shape={run.mesh.shape} does not fit {devices} devices")
  return jax.sharding.AbstractMesh(tuple(shape), sharding.MESH_AXES)


def state_bytes(model: setup_lib.Model) -> dict[str, int]:
  """Bytes per device of the trainable parameters, their optimizer state and (LoRA) the frozen
  base, under their shardings."""
  def per_device(tree: Any) -> int:
    return sum(math.prod(x.sharding.shard_shape(x.shape)) * _bits(x.dtype) // 8
               for x in jax.tree.leaves(tree))
  return {"params": per_device(model.target.params),
          "opt_state": per_device(model.target.opt_state),
          "frozen": per_device(model.target.frozen)}  # LoRA: the base (0 without LoRA).


def _bits(dtype: Any) -> int:
  """Storage bits of one element (int4 is packed two to a byte on GPU and TPU)."""
  return 4 if jnp.dtype(dtype).name == "int4" else 8 * jnp.dtype(dtype).itemsize


def _saved_bytes_per_token_layer(cfg: model_config.ModelConfig, seq_len: int) -> int:
  """Activation bytes one layer keeps for the backward pass, per token, under `cfg.remat`."""
  d, n, k, h, f = cfg.embed_dim, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.mlp_dim
  a = cfg.jnp_dtype.itemsize
  layer_input = d * a  # The residual stream between layers (the remat boundary).
  projections = (n * h + 2 * k * h + 2 * d + 2 * f) * a  # q, k, v, o, gate, up, down.
  scores = n * seq_len * (4 + a) if cfg.attention_impl == "xla" else 0  # f32 logits + probs.
  elementwise = 2 * d * (4 + a) + (n + k) * h * 4 + 2 * f * a  # Norms, RoPE, gate * up.
  return {"full": layer_input,
          "minimal": layer_input + projections,
          "dots_with_no_batch_dims_saveable": layer_input + projections,
          "dots_saveable": layer_input + projections + scores,
          "none": layer_input + projections + scores + elementwise}[cfg.remat]


def _layer_params(cfg: model_config.ModelConfig) -> int:
  d, n, k, h, f = cfg.embed_dim, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.mlp_dim
  return 2 * d * n * h + 2 * d * k * h + 3 * d * f


def formula(run: config_loader.RunConfig, mesh: jax.sharding.AbstractMesh,
            state: dict[str, int]) -> dict[str, Any]:
  """Estimated peak bytes per device, by term (see the module docstring)."""
  cfg, t = run.model, run.data.seq_len
  ways = mesh.shape["data"] * mesh.shape["fsdp"]
  rows = run.batch_size // run.grad_accum_steps // ways  # Rows per device per micro-batch.
  p_item = cfg.jnp_param_dtype.itemsize
  # Trainable parameters: LoRA adapters are float32 whatever the base's param_dtype.
  param_elems = state["params"] // (4 if cfg.lora else p_item)
  sharded = mesh.shape["fsdp"] * mesh.shape["tensor"] > 1 and run.mesh.rules != "dp"
  none_cfg = cfg.replace(remat="none")
  terms = {
      "params_and_optimizer (exact)": state["params"] + state["opt_state"] + state["frozen"],
      "gradients": state["params"]  # Of the trainable parameters only (LoRA: the adapters).
                   + (param_elems * 4 if run.grad_accum_steps > 1 else 0),  # + f32 accumulator
      "saved_activations": cfg.num_layers * rows * t * _saved_bytes_per_token_layer(cfg, t),
      # Recomputed forward of one layer plus its gradients, during that layer's backward.
      "layer_working_set": 2 * rows * t * _saved_bytes_per_token_layer(none_cfg, t),
      # f32 logits, their softmax and their gradient (+ the soft-capped copy).
      "logits": rows * t * cfg.vocab_size * 4 * (4 if cfg.final_logit_softcap else 3),
      # fsdp all-gathers one layer's and the [V, D] table's weights, and their gradients
      # (none for a frozen LoRA base).
      "gathered_weights": ((1 if cfg.lora else 2) * p_item
                           * (_layer_params(cfg) + cfg.vocab_size * cfg.embed_dim)
                           if sharded else 0),
      # A quantized base (QLoRA): one layer's kernels dequantized to the compute dtype.
      "dequantized_layer": (cfg.jnp_dtype.itemsize * _layer_params(cfg)
                            if cfg.lora and cfg.lora.base_bits else 0),
  }
  total = sum(terms.values())
  return {"rows_per_device": rows, "terms_gib": {k: v / GIB for k, v in terms.items()},
          "total_gib": total / GIB}


def throughput(run: config_loader.RunConfig, target: Target) -> dict[str, Any]:
  """Tokens/s, step time and run time at the target's assumed MFU (a formula, not measured)."""
  flops = mfu.flops_per_token(run.model, run.data.seq_len)
  tokens_per_s = target.assumed_mfu * target.peak_flops * target.devices / flops.per_token
  step_s = run.batch_size * run.data.seq_len / tokens_per_s
  return {"flops_per_token": flops.per_token, "assumed_mfu": target.assumed_mfu,
          "mfu_note": target.mfu_note, "tokens_per_s": tokens_per_s, "step_s": step_s,
          "run_hours": run.num_train_steps * step_s / 3600,
          "note": "formula: MFU x peak x devices / (6 N + 12 L N_heads H T); padding not counted"}


def jit_train_step(run: config_loader.RunConfig, model: setup_lib.Model) -> Any:
  """The train step jitted as `train.loop` jits it (shardings, donation)."""
  replicated = NamedSharding(model.plan.mesh, PartitionSpec())
  batch = sharding.batch_sharding(model.plan.mesh)
  return jax.jit(
      functools.partial(step_lib.train_step, graphdef=model.graphdef, optimizer=model.optimizer,
                        lr_schedule=optim.schedule(run.optim, run.num_train_steps),
                        accum_steps=run.grad_accum_steps, plan=model.plan),
      in_shardings=(model.shardings, batch), out_shardings=(model.shardings, replicated),
      donate_argnums=0)


def aot(run: config_loader.RunConfig, devices: Sequence[jax.Device]) -> dict[str, Any]:
  """memory_analysis() of the train step compiled for a mesh over `devices` (CPU proxy)."""
  run = cpu_proxy(run)
  mesh = sharding.make_mesh(run.mesh, devices)
  setup_lib.check_mesh(run, mesh)
  model = setup_lib.make_model(run, mesh)
  batch_sharding = sharding.batch_sharding(mesh)
  batch = {k: jax.ShapeDtypeStruct((run.batch_size, run.data.seq_len),
                                   jnp.int32 if k in _INT_KEYS else jnp.float32,
                                   sharding=batch_sharding) for k in features.BATCH_KEYS}
  start = time.perf_counter()
  lowered = jit_train_step(run, model).lower(model.target, batch)
  lowered_s = time.perf_counter() - start
  stats = lowered.compile(compiler_options=_FAST_CPU_COMPILE).memory_analysis()
  total = (stats.argument_size_in_bytes + stats.output_size_in_bytes
           - stats.alias_size_in_bytes + stats.temp_size_in_bytes)
  return {"platform": f"cpu x {len(devices)} (proxy)", "attention_impl": run.model.attention_impl,
          "argument_gib": stats.argument_size_in_bytes / GIB,
          "output_gib": stats.output_size_in_bytes / GIB,
          "alias_gib": stats.alias_size_in_bytes / GIB,
          "temp_gib": stats.temp_size_in_bytes / GIB, "total_gib": total / GIB,
          "lower_s": lowered_s, "compile_s": time.perf_counter() - start - lowered_s}


def plan(spec: str, overrides: Sequence[str] = (), *, target: str | None = None,
         with_aot: bool = False, devices: Sequence[jax.Device] | None = None) -> dict[str, Any]:
  """The memory plan of one config on `target` (default: its variant's), JSON-ready."""
  target = target_of(spec, target)
  run = config_loader.resolve(config_loader.load(spec, overrides))
  mesh = abstract_mesh(run, target.devices)
  model = setup_lib.make_model(run, mesh)
  state = state_bytes(model)
  out = {"config": spec, "overrides": list(overrides), "target": dataclasses.asdict(target),
         "mesh": dict(mesh.shape), "rules": run.mesh.rules, "family": run.model.family,
         "num_layers": run.model.num_layers, "remat": run.model.remat,
         "param_dtype": run.model.param_dtype, "dtype": run.model.dtype,
         "attention_impl": run.model.attention_impl, "batch_size": run.batch_size,
         "grad_accum_steps": run.grad_accum_steps, "seq_len": run.data.seq_len,
         "state_gib": {k: v / GIB for k, v in state.items()},
         "formula": formula(run, mesh, state), "throughput": throughput(run, target)}
  if with_aot:
    devices = list(jax.devices() if devices is None else devices)[:target.devices]
    if len(devices) < target.devices:
      raise ValueError(f"{spec}: the AOT compile needs {target.devices} devices, this process "
                       f"has {len(devices)} (XLA_FLAGS=--xla_force_host_platform_device_count)")
    out["aot"] = aot(run, devices)
  return out


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("specs", nargs="+", help="configs/x.py:variant (variant: a target name)")
  parser.add_argument("--aot", action="store_true", help="also compile the train step (CPU proxy)")
  parser.add_argument("--target", choices=sorted(TARGETS),
                      help="hardware (default: the variant's name)")
  args, overrides = parser.parse_known_args(argv)  # Unknown options: --config.* overrides.
  if any(not o.startswith("--config.") for o in overrides):
    parser.error(f"unrecognized arguments: {' '.join(overrides)}")
  for spec in args.specs:
    print(json.dumps(plan(spec, overrides, target=args.target, with_aot=args.aot), indent=1),
          flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
