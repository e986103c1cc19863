"""One prepared accelerator check, as one JSON object: train MFU, decode speed, kernel parity, memory.

  python benchmarks/accelerator.py            # GPU/TPU: the full suite, <= 6 minutes wall
  python benchmarks/accelerator.py --cpu-smoke  # tiny sizes, seconds (default without GPU/TPU)

On whatever accelerator JAX sees (device 0, a 1-device mesh), with random weights:
  train    the trainer's own step (`train.setup.make_model`, `memory_plan.jit_train_step`) in
           bfloat16 over float32 parameters with the platform's attention kernel ("cudnn" on
           GPU, "splash" on TPU) for SmolLM2-135M (as configs/smollm2_135m.py trains it:
           32 x 512) and a ~1B model (8 x 2048): tokens/s and MFU against the chip's data-sheet
           bf16 peak (`train.mfu`), and the device's peak memory (`memory_stats()`) against
           `memory_plan.formula`. The peak is the process's (JAX cannot reset it): the sections
           run smallest plan first and each says whether its figure is its own.
  parity   forward logits on the device vs a CPU float32 run of the same weights: float32 with
           "xla" attention (tight) and bfloat16 with the platform kernel (loose); max abs diff.
  decode   greedy tokens/s of `generate.generate` at batch 1 and 64 (`decode.time_generate`).
  kv_cache greedy KV-cache decoding vs full forwards over prompt + generated tokens, in float32.
On CPU (no GPU/TPU, or --cpu-smoke) the same code runs the tiny preset; what needs a GPU/TPU
(the cuDNN/splash kernel, allocator statistics, a data-sheet peak) is skipped and listed under
"skipped". The device machine needs jax with its CUDA (jax[cuda12]) or TPU plugin installed.
Deliberately left to others: the step, decode loop, FLOP count and memory formula themselves.
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import sys
import time
from typing import Any, Callable

if __name__ == "__main__" and "--cpu-smoke" in sys.argv:
  # Before jax is imported: XLA:CPU spends the smoke's seconds compiling, mostly in LLVM; these
  # halve that (`memory_plan._FAST_CPU_COMPILE`, the same options) and only slow the tiny steps.
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0"
                             " --xla_llvm_disable_expensive_passes=true").strip()

import jax  # noqa: E402
import numpy as np  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

from treasure_jax import config_loader  # noqa: E402
from treasure_jax.data import config as data_config  # noqa: E402
from treasure_jax.decode import generate  # noqa: E402
from treasure_jax.model import config as model_config  # noqa: E402
from treasure_jax.model import sharding  # noqa: E402
from treasure_jax.model import transformer  # noqa: E402
from treasure_jax.train import checkpoint  # noqa: E402
from treasure_jax.train import distributed  # noqa: E402
from treasure_jax.train import mfu  # noqa: E402
from treasure_jax.train import optim  # noqa: E402
from treasure_jax.train import setup as setup_lib  # noqa: E402
from treasure_jax.train import state as state_lib  # noqa: E402


def _benchmark(name: str) -> Any:
  """benchmarks/<name>.py as a module (benchmarks/ is not a package)."""
  spec = importlib.util.spec_from_file_location(f"_bench_{name}", os.path.join(ROOT, "benchmarks",
                                                                               f"{name}.py"))
  module = importlib.util.module_from_spec(spec)
  sys.modules[spec.name] = module  # dataclasses look their module up while it executes.
  spec.loader.exec_module(module)
  return module


memory_plan, train_step, decode_bench = (_benchmark(n) for n in
                                         ("memory_plan", "train_step", "decode"))

# configs/smollm2_135m.py's model section; the ~1B model is Llama-3.2-1B's shape (width 2048,
# 16 layers, 32 query / 8 kv heads of 64, MLP 8192) with SmolLM2's 49,152-token tied vocabulary:
# 1.07B parameters.
SMOLLM2 = dict(preset="smollm2_135m", dtype="bfloat16", param_dtype="float32", remat="none",
               scan_layers=True)
ONE_B = dict(SMOLLM2, embed_dim=2048, num_layers=16, num_heads=32, num_kv_heads=8, mlp_dim=8192)
TINY = dict(preset="tiny", dtype="bfloat16", param_dtype="float32", scan_layers=True)
KERNELS = {"gpu": "cudnn", "tpu": "splash"}

# Parity tolerances on max |logit difference| (random-init logits are O(1); see PARITY below).
# float32 vs float32: both runs round at 2^-24 and differ only in summation order (GPU
# split-K/tree reductions, TPU/XLA fusion); over ~30 layers that is ~1e-5 of the logits' scale,
# so 2e-3 has 100x margin yet a wrong mask, RoPE or kernel shows up as O(0.1-1).
# bfloat16 vs float32: bfloat16 keeps 8 mantissa bits (2^-8 = 0.4% per rounding) and every
# layer re-rounds its activations; measured on CPU for SmolLM2-135M's shape: ~0.05; 0.25 allows
# the kernels' other accumulation orders while an unmasked future token still exceeds it.
F32_TOL, BF16_TOL = 2e-3, 0.25
# KV-cache decode vs full forward, float32: same math, different shapes (one token vs T).
KV_TOL = 1e-3


@dataclasses.dataclass(frozen=True)
class Suite:
  """The sizes of one run: (name, model section, batch, seq_len) per train config, and so on."""
  name: str
  train: tuple[tuple[str, dict, int, int], ...]
  train_steps: int
  parity: tuple[dict, int, int]  # model, batch, seq_len
  decode: tuple[dict, tuple[int, ...], int, int]  # model, batches, prompt_len, new_tokens
  repeats: int  # timed decode runs (the best counts)


ACCELERATOR = Suite("accelerator", (("smollm2_135m", SMOLLM2, 32, 512), ("1b", ONE_B, 8, 2048)),
                    10, (SMOLLM2, 4, 512), (SMOLLM2, (1, 64), 64, 128), 3)
CPU_SMOKE = Suite("cpu-smoke", (("tiny", TINY, 2, 64),), 2, (TINY, 2, 64), (TINY, (1, 64), 8, 4),
                1)


def run_config(model: dict, batch: int, seq_len: int) -> config_loader.RunConfig:
  """A training RunConfig around `model` (random init, constant lr, 1-device mesh)."""
  return config_loader.RunConfig(
      model=model_config.from_dict(model), data=data_config.DataConfig(seq_len=seq_len, train_files=("unused",)),
      optim=optim.OptimConfig(schedule="constant", warmup_steps=0),
      mesh=sharding.MeshConfig(shape=(1, 1, 1)), checkpoint=checkpoint.CheckpointConfig(),
      distributed=distributed.DistributedConfig(), num_train_steps=1000, seed=0,
      batch_size=batch, log_every_steps=1, tokenizer="unused")


def train(model: dict, batch: int, seq_len: int, steps: int, peak: float,
          peak_before: int | None) -> dict:
  """Tokens/s, MFU and peak memory of the trainer's step on device 0 (see the module docstring)."""
  run = run_config(model, batch, seq_len)
  mesh = sharding.make_mesh(run.mesh, jax.devices()[:1])
  built = setup_lib.make_model(run, mesh)
  train_state = state_lib.create(setup_lib.initial_params(run, built), built.optimizer,
                                 run.seed, built.shardings)
  fn = memory_plan.jit_train_step(run, built)
  data = train_step.random_batch(run.model.vocab_size, batch, seq_len)
  train_state, metrics, compile_s, times = train_step.time_steps(fn, train_state, data, steps)
  flops = mfu.flops_per_token(run.model, seq_len)
  tokens_per_s = batch * seq_len / float(np.median(times))
  plan = memory_plan.formula(run, mesh, memory_plan.state_bytes(built))
  out = {"batch": batch, "seq_len": seq_len, "attention_impl": run.model.attention_impl,
         "params": transformer.param_count(built.target.params), "dtype": run.model.dtype,
         "step_time_s": float(np.median(times)), "compile_s": compile_s,
         "tokens_per_s": tokens_per_s, "mfu": mfu.mfu(tokens_per_s, flops, peak),
         "flops_per_token": flops.per_token, "loss": float(metrics["loss"]),
         "memory_plan_gib": plan["total_gib"]}
  stats = jax.devices()[0].memory_stats()
  if stats:
    peak_bytes = stats["peak_bytes_in_use"]
    out.update(peak_memory_gib=peak_bytes / memory_plan.GIB,
               peak_over_plan=peak_bytes / memory_plan.GIB / plan["total_gib"],
               peak_is_this_section=peak_before is None or peak_bytes > peak_before,
               bytes_limit_gib=stats.get("bytes_limit", 0) / memory_plan.GIB)
  del train_state
  return out


def _split(model: dict, **changes: Any) -> tuple[Any, Any]:
  """(graphdef, abstract params) of the model section with `changes`."""
  return state_lib.split_model(transformer.abstract_model(model_config.from_dict(
      {**model, **changes})))


def parity(model: dict, batch: int, seq_len: int, kernel: str) -> dict:
  """Max |logit diff| of device runs vs a CPU float32 run of the same random weights."""
  cpu = jax.devices("cpu")[0]
  tokens_BT = np.random.default_rng(1).integers(0, 256, (batch, seq_len), np.int32)
  with jax.default_device(cpu):
    ref_model = transformer.create(model_config.from_dict(
        {**model, "dtype": "float32", "attention_impl": "xla"}), seed=0)
  graphdef, params = state_lib.split_model(ref_model)
  forward = lambda g: jax.jit(lambda p, t: transformer.apply(g, p, t)[0])
  with jax.default_matmul_precision("highest"):
    ref_BTV = np.asarray(forward(graphdef)(params, jax.device_put(tokens_BT, cpu)))
    out = {"batch": batch, "seq_len": seq_len, "ref_max_abs_logit": float(np.abs(ref_BTV).max())}
    on_device = jax.device_put(params, jax.devices()[0])
    for name, dtype, impl, tol in (("float32_xla", "float32", "xla", F32_TOL),
                                   (f"bfloat16_{kernel}", "bfloat16", kernel, BF16_TOL)):
      got_BTV = np.asarray(forward(_split(model, dtype=dtype, attention_impl=impl)[0])(
          on_device, tokens_BT))
      diff = float(np.abs(got_BTV - ref_BTV).max())
      out[name] = {"max_abs_diff": diff, "tolerance": tol, "ok": diff <= tol,
                   "argmax_agreement": float(np.mean(got_BTV.argmax(-1) == ref_BTV.argmax(-1)))}
  return out


def decode(model: dict, batches: tuple[int, ...], prompt_len: int, new_tokens: int,
           repeats: int) -> dict:
  """Greedy tokens/s at each batch size (random prompts of `prompt_len`, no EOS)."""
  lm = transformer.create(model_config.from_dict(model), seed=0)
  rng = np.random.default_rng(2)
  out = {"prompt_len": prompt_len, "new_tokens": new_tokens, "dtype": model["dtype"]}
  for b in batches:
    prompts = rng.integers(0, lm.cfg.vocab_size, (b, prompt_len)).tolist()
    out[f"batch_{b}_tokens_per_s"] = decode_bench.time_generate(lm, prompts, new_tokens, repeats)
  return out


def kv_cache(model: dict, prompt_len: int, new_tokens: int) -> dict:
  """Greedy KV-cache tokens and log-probs vs a full forward over prompt + generated, float32."""
  cfg = model_config.from_dict({**model, "dtype": "float32", "attention_impl": "xla"})
  with jax.default_matmul_precision("highest"):
    lm = transformer.create(cfg, seed=0)
    prompts = np.random.default_rng(3).integers(0, cfg.vocab_size, (2, prompt_len))
    gen = generate.generate(lm, prompts.tolist(), max_new_tokens=new_tokens)
    tokens_BT = np.concatenate([prompts, np.asarray(gen.tokens)], axis=1).astype(np.int32)
    graphdef, params = state_lib.split_model(lm)
    logits_BTV = jax.jit(lambda p, t: transformer.apply(graphdef, p, t)[0])(params, tokens_BT)
  logp_BNV = np.asarray(jax.nn.log_softmax(logits_BTV[:, prompt_len - 1:-1], axis=-1))
  chosen_BN = np.take_along_axis(logp_BNV, np.asarray(gen.tokens)[..., None], -1)[..., 0]
  logprob_diff = float(np.abs(chosen_BN - np.stack(gen.logprobs)).max())
  # 0 when every generated token is the full forward's argmax; tiny at an exact tie.
  argmax_gap = float((logp_BNV.max(-1) - chosen_BN).max())
  return {"new_tokens": new_tokens, "max_logprob_diff": logprob_diff,
          "max_argmax_gap": argmax_gap, "tolerance": KV_TOL,
          "ok": logprob_diff <= KV_TOL and argmax_gap <= KV_TOL}


def _section(results: dict, key: str, deadline: float, fn: Callable[[], dict]) -> None:
  """results[key] = fn(), or why not: past the time budget, or the error (the rest still runs)."""
  if time.perf_counter() > deadline:
    results[key] = {"skipped": "time budget spent (--budget-s)"}
    return
  start = time.perf_counter()
  try:
    results[key] = fn()
  except Exception as e:  # One failing part must not lose the others' figures.
    results[key] = {"error": f"{type(e).__name__}: {str(e)[:2000]}"}
  results[key]["wall_s"] = time.perf_counter() - start
  print(f"[accelerator] {key}: {time.perf_counter() - start:.1f} s", file=sys.stderr, flush=True)


def device_info(smoke: bool) -> tuple[dict, list[str]]:
  """Device 0's description, its bf16 peak, and the parts skipped on this platform."""
  device = jax.devices()[0]
  peak, source = mfu.peak_flops("bfloat16")
  info = {"platform": device.platform, "device_kind": device.device_kind,
          "device_count": jax.device_count(), "jax": jax.__version__,
          "peak_flops": peak, "peak_source": source}
  skipped = []
  if device.platform not in KERNELS:
    skipped.append(f"cuDNN/splash attention: no GPU/TPU (backend {device.platform!r}); "
                   f"'xla' attention ran instead")
  if not device.memory_stats():
    skipped.append(f"peak device memory: {device.platform} reports no allocator statistics "
                   f"(memory_stats() is empty); only the memory plan's formula is given")
  if smoke:
    skipped.append("full sizes (SmolLM2-135M, ~1B): CPU smoke runs the tiny preset")
  return info, skipped


def main(argv: list[str] | None = None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--cpu-smoke", action="store_true",
                      help="tiny sizes (the default when JAX sees no GPU/TPU)")
  parser.add_argument("--budget-s", type=float, default=330.0,
                      help="start no new section after this many seconds (6 min - margin)")
  args = parser.parse_args(argv)
  start = time.perf_counter()
  deadline = start + args.budget_s
  platform = jax.devices()[0].platform
  smoke = args.cpu_smoke or platform not in KERNELS
  suite = CPU_SMOKE if smoke else ACCELERATOR
  kernel = KERNELS.get(platform, "xla")
  info, skipped = device_info(smoke)
  results: dict[str, Any] = {"suite": suite.name, "device": info, "skipped": skipped}
  peak_bytes = None
  for name, model, batch, seq_len in suite.train:
    _section(results, f"train_{name}", deadline, lambda: train(
        {**model, "attention_impl": kernel}, batch, seq_len, suite.train_steps,
        info["peak_flops"], peak_bytes))
    peak_bytes = (jax.devices()[0].memory_stats() or {}).get("peak_bytes_in_use")
  _section(results, "parity", deadline, lambda: parity(*suite.parity, kernel))
  model, batches, prompt_len, new_tokens = suite.decode
  _section(results, "decode", deadline, lambda: decode(
      {**model, "attention_impl": kernel}, batches, prompt_len, new_tokens, suite.repeats))
  _section(results, "kv_cache", deadline, lambda: kv_cache(model, prompt_len, new_tokens))
  results["wall_s"] = time.perf_counter() - start
  print(json.dumps(results, indent=1), flush=True)
  return results


if __name__ == "__main__":
  main()
