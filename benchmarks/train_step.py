"""Benchmark: one optimizer step of our JAX trainer vs a PyTorch `transformers` peer, as JSON.

  python benchmarks/train_step.py [--steps 3] [--smollm2_batch 4 --smollm2_seq_len 256]

For configs/tiny.py's and configs/smollm2_135m.py's model: tokens/s, step time, MFU and peak
memory of `train.step.train_step` (jit, donated state, AdamW with clipping, the loss over all
tokens), then of a `transformers` LlamaForCausalLM step with the same architecture, batch,
sequence length, precision recipe (float32 parameters; bfloat16 autocast where the config
computes in bfloat16) and torch.optim.AdamW + clip_grad_norm_. Both start from random weights:
speed does not depend on them. Each measurement runs in its own process so peak memory is its
own (peak RSS on CPU, the allocator's peak on a GPU). The peak FLOP/s is the best of a JAX and
a PyTorch 1024x1024 matmul measured in the compute dtype on this machine; `mfu_vs_jax_matmul`
divides by JAX's own instead (on CPU, XLA does not use the AMX units PyTorch's oneDNN uses for
bfloat16). FLOPs per token: `train.mfu.flops_per_token`. One JSON object per line; the last
holds `speedup_vs_peer` (JAX tokens/s over PyTorch's) and `mfu` for the SmolLM2-135M config.
Batches default small enough for a CPU; --dtype float32 runs both frameworks in float32. The
JAX child runs with mimalloc preloaded, as `treasure-jax train` does (`treasure_jax.allocator`;
--allocator system for glibc's), the PyTorch child with glibc's malloc, which suits it better.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import resource
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = {"tiny": "configs/tiny.py", "smollm2_135m": "configs/smollm2_135m.py"}


def _model_config(name: str, dtype: str):
  from treasure_jax.model import config as model_config  # Children import their own stacks.
  import ml_collections  # noqa: F401  (config files need it)
  import importlib.util
  spec = importlib.util.spec_from_file_location("_cfg", os.path.join(ROOT, CONFIGS[name]))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  cfg = model_config.from_dict(module.get_config().model.to_dict())
  return cfg if dtype == "config" else cfg.replace(dtype=dtype)


def _peak_memory() -> int:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB.


def _jax_step(name: str, dtype: str, batch: int, seq_len: int, steps: int,
              lora_rank: int = 0, base_bits: int = 0) -> dict:
  """Our train step on `name`'s model; with `lora_rank`, LoRA (alpha = 2 rank) on every
  projection of a frozen base: only the adapters get gradients and AdamW moments; with
  `base_bits` (8 or 4) that base's projections are quantized (QLoRA, `model.quant`)."""
  import functools
  import jax
  import numpy as np
  from treasure_jax.model import config as model_config, sharding, transformer
  from treasure_jax.train import mfu, optim, state as state_lib, step as step_lib
  cfg = _model_config(name, dtype)
  if lora_rank:
    cfg = cfg.replace(lora=model_config.LoraConfig(rank=lora_rank, alpha=2.0 * lora_rank,
                                                   base_bits=base_bits))
  mesh = sharding.make_mesh(sharding.MeshConfig(shape=(1, 1, 1)), jax.devices()[:1])
  plan = sharding.Plan.create(mesh, "fsdp")
  model = transformer.create(cfg, seed=0, mesh=mesh)
  graphdef, params = state_lib.split_model(model)
  opt_cfg = optim.OptimConfig(schedule="constant", warmup_steps=0, peak_lr=1e-4)
  tx = optim.make(opt_cfg, 1000)
  shardings = state_lib.shardings(state_lib.abstract(params, tx), mesh, plan.rules)
  train_state = state_lib.create(params, tx, 0, shardings)
  del model, params
  fn = jax.jit(functools.partial(step_lib.train_step, graphdef=graphdef, optimizer=tx,
                                 lr_schedule=optim.schedule(opt_cfg, 1000), plan=plan),
               donate_argnums=0)
  data = random_batch(cfg.vocab_size, batch, seq_len)
  trainable = sum(x.size for x in jax.tree.leaves(train_state.params))
  frozen = sum(x.size for x in jax.tree.leaves(train_state.frozen))
  frozen_bytes = sum(x.size * (4 if np.dtype(x.dtype).name == "int4" else 8 * x.dtype.itemsize)
                     for x in jax.tree.leaves(train_state.frozen)) / 8
  train_state, m, compile_s, times = time_steps(fn, train_state, data, steps)
  stats = jax.devices()[0].memory_stats() or {}
  flops = mfu.flops_per_token(cfg, seq_len)
  return {"step_time_s": float(np.median(times)), "compile_s": compile_s,
          "peak_memory_bytes": stats.get("peak_bytes_in_use", _peak_memory()),
          "memory_kind": "device peak" if stats else "process peak RSS",
          "flops_per_token": flops.per_token, "flop_formula": flops.formula,
          "loss": float(m["loss"]), "device": str(jax.devices()[0].device_kind),
          "trainable_params": int(trainable), "frozen_params": int(frozen),
          "frozen_bytes": int(frozen_bytes),  # int4 counted at 4 bits (packed on GPU/TPU).
          "dtype": cfg.dtype, "jax_matmul_peak": mfu.measure_matmul_peak(cfg.dtype)}


def random_batch(vocab_size: int, batch: int, seq_len: int) -> dict:
  """A [batch, seq_len] train batch of random tokens, every token in the loss, one sequence
  per row (speed does not depend on the tokens)."""
  import numpy as np
  tokens = np.random.default_rng(0).integers(0, vocab_size, (batch, seq_len + 1), np.int32)
  ones = np.ones((batch, seq_len), np.float32)
  return {"inputs": tokens[:, :-1], "targets": tokens[:, 1:], "loss_weights": ones,
          "marker_weights": 0 * ones, "response_weights": ones,
          "segment_ids": ones.astype(np.int32),
          "positions": np.broadcast_to(np.arange(seq_len, dtype=np.int32), (batch, seq_len))}


def time_steps(fn, train_state, data: dict, steps: int) -> tuple:
  """(state, metrics, first-call seconds (compile + one step), [seconds of each later step])
  of `steps` + 1 calls of the jitted `fn(train_state, data)`, each waited for."""
  import jax
  start = time.perf_counter()
  train_state, m = fn(train_state, data)
  jax.block_until_ready(m)
  compile_s = time.perf_counter() - start
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    train_state, m = fn(train_state, data)
    jax.block_until_ready(m)
    times.append(time.perf_counter() - start)
  return train_state, m, compile_s, times


def _torch_step(name: str, dtype: str, batch: int, seq_len: int, steps: int) -> dict:
  import numpy as np
  import torch
  import transformers
  from treasure_jax.model import hf_config
  cfg = _model_config(name, dtype)
  torch.manual_seed(0)
  hf = {**hf_config.config_to_hf(cfg), "torch_dtype": "float32", "attn_implementation": "sdpa"}
  device = "cuda" if torch.cuda.is_available() else "cpu"
  model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**hf)).to(device)
  model.train()
  opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.01)
  tokens = torch.from_numpy(np.random.default_rng(0).integers(
      0, cfg.vocab_size, (batch, seq_len), np.int64)).to(device)
  autocast = torch.autocast(device, dtype=torch.bfloat16, enabled=cfg.dtype == "bfloat16")

  def one_step() -> float:
    with autocast:
      loss = model(input_ids=tokens, labels=tokens).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return float(loss.detach())

  start = time.perf_counter()
  one_step()
  warmup_s = time.perf_counter() - start
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    loss = one_step()
    times.append(time.perf_counter() - start)
  dtype = torch.bfloat16 if cfg.dtype == "bfloat16" else torch.float32
  a = torch.ones((1024, 1024), dtype=dtype, device=device)
  sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
  best = min(_timed(lambda: (a @ a, sync())) for _ in range(20))
  gpu = device == "cuda"
  return {"step_time_s": float(np.median(times)), "compile_s": warmup_s,
          "peak_memory_bytes": torch.cuda.max_memory_allocated() if gpu else _peak_memory(),
          "memory_kind": "device peak" if gpu else "process peak RSS",
          "loss": loss, "torch_threads": torch.get_num_threads(),
          "torch_matmul_peak": 2 * 1024 ** 3 / best, "dtype": cfg.dtype}


def _timed(fn) -> float:
  start = time.perf_counter()
  fn()
  return time.perf_counter() - start


def _child(queue, fn_name, *args):
  try:
    queue.put(globals()[fn_name](*args))
  except Exception as e:  # Reported in the JSON, not lost in a child's stderr.
    queue.put({"error": f"{type(e).__name__}: {e}"})


def _isolated(fn_name: str, *args, preload: str | None = None) -> dict:
  """fn_name(*args) in a spawned child, with `preload` in its LD_PRELOAD if given."""
  ctx = multiprocessing.get_context("spawn")
  queue = ctx.Queue()
  from treasure_jax import allocator
  with allocator.preloading(preload):
    proc = ctx.Process(target=_child, args=(queue, fn_name, *args))
    proc.start()
  result = queue.get()
  proc.join()
  result["allocator"] = "mimalloc" if preload else "system"
  return result


def main(argv: list[str]) -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--steps", type=int, default=3, help="timed steps (after one warm-up step)")
  p.add_argument("--dtype", default="config", choices=("config", "float32", "bfloat16"),
                 help="compute dtype of both frameworks (default: each config's)")
  p.add_argument("--allocator", default="mimalloc", choices=("mimalloc", "system"),
                 help="host allocator of the JAX child (the trainer's default: mimalloc)")
  p.add_argument("--tiny_batch", type=int, default=8)
  p.add_argument("--tiny_seq_len", type=int, default=128)
  p.add_argument("--smollm2_batch", type=int, default=4)
  p.add_argument("--smollm2_seq_len", type=int, default=256)
  args = p.parse_args(argv)
  sys.path.insert(0, ROOT)
  from treasure_jax import allocator
  # Each framework with the host allocator it runs best with: JAX as `treasure-jax train`
  # runs (mimalloc), PyTorch with glibc's (mimalloc slows its step, see `allocator`).
  mimalloc = None if args.allocator == "system" else allocator.mimalloc_path()
  summary = {}
  for name, batch, seq_len in (("tiny", args.tiny_batch, args.tiny_seq_len),
                               ("smollm2_135m", args.smollm2_batch, args.smollm2_seq_len)):
    jax_result = _isolated("_jax_step", name, args.dtype, batch, seq_len, args.steps,
                           preload=mimalloc)
    torch_result = _isolated("_torch_step", name, args.dtype, batch, seq_len, args.steps)
    peak = max(jax_result.get("jax_matmul_peak", 0), torch_result.get("torch_matmul_peak", 0))
    tokens = batch * seq_len
    for framework, result in (("jax", jax_result), ("torch", torch_result)):
      if "step_time_s" in result:
        result["tokens_per_s"] = tokens / result["step_time_s"]
        achieved = result["tokens_per_s"] * jax_result["flops_per_token"]
        result["mfu"] = achieved / peak
        # Against XLA's own matmul (on CPU, XLA does not use the AMX units oneDNN uses).
        result["mfu_vs_jax_matmul"] = achieved / jax_result["jax_matmul_peak"]
      print(json.dumps({"config": name, "framework": framework, "batch": batch,
                        "seq_len": seq_len, "peak_flops": peak, **result}), flush=True)
    summary[name] = (jax_result, torch_result, peak)
  jax_result, torch_result, summary_peak = summary["smollm2_135m"]
  print(json.dumps({"config": "smollm2_135m",
                    "speedup_vs_peer": jax_result["tokens_per_s"] / torch_result["tokens_per_s"],
                    "mfu": jax_result["mfu"], "peak_flops": summary_peak,
                    "dtype": jax_result["dtype"],
                    "peer": "transformers LlamaForCausalLM + AdamW"}))


if __name__ == "__main__":
  main(sys.argv[1:])
