"""benchmarks/accelerator.py on CPU: the smoke suite runs every part and prints checkable JSON.

No GPU/TPU here, so the GPU-only parts (cuDNN/splash attention, allocator statistics) must be
listed as skipped with their reason, and every measured part must have run without an error.
The script runs as a user runs it (a subprocess with --cpu-smoke: its fast-compile XLA flags
must be set before jax is imported, which this pytest process already did).
"""
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_cpu_smoke_json():
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # One CPU device, as a user.
  proc = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "accelerator.py"),
                         "--cpu-smoke"], capture_output=True, text=True, timeout=300, env=env,
                        cwd=ROOT)
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = json.loads(proc.stdout)
  assert out["suite"] == "cpu-smoke"
  assert out["device"]["platform"] == "cpu" and out["device"]["peak_flops"] > 0
  skipped = " ".join(out["skipped"])
  assert "cuDNN/splash attention" in skipped and "memory_stats()" in skipped
  for key in ("train_tiny", "parity", "decode", "kv_cache"):
    assert "error" not in out[key] and "skipped" not in out[key], (key, out[key])
  train = out["train_tiny"]
  assert train["tokens_per_s"] > 0 and 0 < train["mfu"] < 1.5
  assert train["params"] == 90432 and train["memory_plan_gib"] > 0
  assert 4.0 < train["loss"] < 7.0  # ln(256) = 5.55 for a random model
  assert "peak_memory_gib" not in train  # CPU: no allocator statistics.
  parity = out["parity"]
  for name in ("float32_xla", "bfloat16_xla"):
    assert parity[name]["ok"], (name, parity[name])
  assert parity["bfloat16_xla"]["max_abs_diff"] > 0  # bfloat16 really ran
  assert out["decode"]["batch_1_tokens_per_s"] > 0 and out["decode"]["batch_64_tokens_per_s"] > 0
  assert out["kv_cache"]["ok"], out["kv_cache"]
