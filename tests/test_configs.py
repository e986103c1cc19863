"""Every run config loads, resolves, builds at full size and fits its hardware's memory.

For each train config variant (the variant names the hardware, `benchmarks/memory_plan.TARGETS`):
  - it loads and resolves to its dataclasses (`config_loader.resolve`);
  - the model and optimizer state are built at full size with `jax.eval_shape` (nothing
    allocated), sharded by the trainer's own rules on an abstract mesh of the target's size;
  - the per-device memory formula (exact state + estimated activations) fits the device and
    the figure printed in the config's docstring is the formula's;
  - the train step is compiled ahead of time on a fake CPU mesh of the target's device count and
    XLA's `memory_analysis()` per device is printed (`pytest -s`) and must fit the device:
    95 GiB for TPU v5p, 80 GiB for H100, 131 GiB for H200. CPU compilation is a proxy (see
    memory_plan): splash and cuDNN attention are replaced by "xla" attention, whose T x T
    scores are counted.
The 7-9B configs must use the paper's hyperparameters. Eval sweep configs must resolve.

Compile cost, measured on the 2-core test machine: an AOT compile takes 15-25 s of CPU whatever
the depth (layers are scanned: llama3_8b at 2 and at 32 layers compiled in the same time), so
compiling a 2-layer copy and extrapolating would save nothing. The default run compiles one
config at full size, llama3_8b:v5p_64, in a 32-device subprocess (~60 s of CPU with the
subprocess's imports); the others are `slow`: `pytest tests/test_configs.py -m slow -s -k NAME`,
or `python benchmarks/memory_plan.py --aot configs/gemma2_9b.py:h100x8` (prints the JSON).
Results (GiB per device, formula / AOT CPU proxy): llama3_8b v5p_64 47.4 / 76.0, h100x8 41.4 /
64.5; qwen2_7b v5p_64 49.7 / 72.7, h100x8 42.7 / 58.5; gemma2_9b v5p_64 45.2 / 54.9, h100x8
51.3 / 48.2. LoRA (h200x1_lora / v5p_8_lora): llama3_8b 32.9 / 104.5, 43.8 / 83.4; qwen2_7b
34.1 / 97.4, 46.0 / 81.8; gemma2_9b 39.7 / 100.8, 39.7 / 69.0 (the one-GPU proxies are far above
the formula: XLA attention's 8,192 x 8,192 scores). QLoRA (h100x1_qlora, int4 base, 4,096-token
rows): llama3_8b 15.4 / 34.5, qwen2_7b 16.2 / 32.8, gemma2_9b 28.9 / 43.6.
"""
from __future__ import annotations

import functools
import importlib.util
import json
import os
import re
import subprocess
import sys

import jax
import pytest

from treasure_jax import config_loader
from treasure_jax.eval import sweep_config
from treasure_jax.model import config as model_config
from treasure_jax.model import gguf
from treasure_jax.model import hf_config
from treasure_jax.train import setup as setup_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LARGE = [f"configs/{m}.py:{v}" for m in ("llama3_8b", "qwen2_7b", "gemma2_9b")
         for v in ("v5p_64", "h100x8")]
# LoRA over a bfloat16 frozen base: one H200, or a v5p-8; QLoRA (int4 base): one H100.
LORA = [f"configs/{m}.py:{v}" for m in ("llama3_8b", "qwen2_7b", "gemma2_9b")
        for v in ("h200x1_lora", "v5p_8_lora", "h100x1_qlora")]
# (config, target hardware): configs/smollm2_135m.py has no hardware variants; it is for one GPU.
TRAIN = [("configs/smollm2_135m.py", "h100x1")] + [(s, None) for s in LARGE + LORA]
EVAL = [f"configs/eval/{m}.py" for m in ("smollm2_135m", "llama3_8b", "qwen2_7b", "gemma2_9b")]
# The paper's recipe (method.md): 8,000 steps, batch 32, cosine, 10 warm-up steps to 2.5e-4,
# decaying to 1.25e-4.
PAPER = dict(num_train_steps=8000, batch_size=32, schedule="cosine", warmup_steps=10,
             peak_lr=2.5e-4, final_lr=1.25e-4)


def _load_memory_plan():
  path = os.path.join(ROOT, "benchmarks", "memory_plan.py")
  spec = importlib.util.spec_from_file_location("memory_plan", path)
  module = importlib.util.module_from_spec(spec)
  sys.modules[spec.name] = module  # Its dataclasses look their module up there.
  spec.loader.exec_module(module)
  return module


memory_plan = _load_memory_plan()


def _path(spec: str) -> str:
  return os.path.join(ROOT, spec)


def _resolve(spec: str) -> config_loader.RunConfig:
  return config_loader.resolve(config_loader.load(_path(spec)))


@functools.lru_cache(maxsize=None)
def _plan(spec: str, target_name: str | None = None) -> dict:
  """memory_plan.plan without the AOT compile (eval_shape only), once per config."""
  return memory_plan.plan(_path(spec), target=target_name)


@pytest.mark.parametrize("spec,target_name", TRAIN)
def test_builds_at_full_size_and_formula_fits(spec, target_name):
  plan = _plan(spec, target_name)
  run = _resolve(spec)
  target = memory_plan.target_of(spec, target_name)
  preset = model_config.preset(os.path.basename(spec.partition(":")[0])[:-len(".py")])
  for field in ("num_layers", "embed_dim", "num_heads", "num_kv_heads", "mlp_dim", "vocab_size"):
    assert getattr(run.model, field) == getattr(preset, field), field  # Full size, not shrunk.
  assert plan["mesh"]["data"] * plan["mesh"]["fsdp"] * plan["mesh"]["tensor"] == target.devices
  print(f"\n{spec}: {json.dumps(plan['formula'], indent=1)}")
  assert plan["formula"]["total_gib"] < target.hbm_gib, plan["formula"]


@pytest.mark.parametrize("spec", LARGE + LORA)
def test_docstring_states_the_formula_figures(spec):
  """The memory and throughput in the config's docstring are the formula's current ones."""
  plan = _plan(spec, None)
  variant = spec.partition(":")[2]
  block = _variant_entry(_docstring(spec), variant)
  memory = f"~{plan['formula']['total_gib']:.1f} GiB"
  tokens = _tokens_text(plan["throughput"]["tokens_per_s"])
  assert memory in block and tokens in block, (
      f"{spec}: update the docstring's {variant} entry: formula memory {memory}, "
      f"throughput {tokens} tokens/s")


def _variant_entry(doc: str, variant: str) -> str:
  """The docstring line starting with `variant` and its more indented continuation lines."""
  lines = doc.splitlines()
  for i, line in enumerate(lines):
    if line.strip().startswith(variant + " "):
      indent = len(line) - len(line.lstrip())
      entry = [line]
      for more in lines[i + 1:]:
        if not more.strip() or len(more) - len(more.lstrip()) <= indent:
          break
        entry.append(more)
      return " ".join(" ".join(entry).split())  # Figures may wrap across lines.
  return ""


def _tokens_text(tokens_per_s: float) -> str:
  return f"~{tokens_per_s / 1e3:.0f}k" if tokens_per_s >= 1e3 else f"~{tokens_per_s:.0f}"


def _docstring(spec: str) -> str:
  with open(_path(spec.partition(":")[0]), encoding="utf-8") as f:
    text = f.read()
  match = re.match(r'\s*"""(.*?)"""', text, re.S)
  assert match, f"{spec}: no module docstring"
  return match.group(1)


@pytest.mark.parametrize("spec", LORA)
def test_lora_variants_train_adapters_over_a_bfloat16_base(spec):
  run, plan = _resolve(spec), _plan(spec, None)
  assert run.model.lora is not None and run.model.param_dtype == "bfloat16"
  assert run.model.lora.base_bits == (4 if spec.endswith("qlora") else 0)
  assert set(run.model.lora.targeted()) == set(model_config.LORA_TARGETS)
  state = plan["state_gib"]
  # The optimizer holds AdamW's two moments of the adapters (float32, as the adapters), none of
  # the base; adapters are < 10% of the base per device (some stay replicated under fsdp).
  assert 0 < state["params"] < 0.1 * state["frozen"]
  assert state["opt_state"] < 2.01 * state["params"]
  assert plan["formula"]["terms_gib"]["gradients"] < 0.1 * state["frozen"]


@pytest.mark.parametrize("spec", LARGE)
def test_large_configs_use_the_paper_hyperparameters(spec):
  run = _resolve(spec)
  got = dict(num_train_steps=run.num_train_steps, batch_size=run.batch_size,
             schedule=run.optim.schedule, warmup_steps=run.optim.warmup_steps,
             peak_lr=run.optim.peak_lr, final_lr=run.optim.final_lr)
  assert got == PAPER
  assert run.model.param_dtype == "float32" and run.model.dtype == "bfloat16"
  assert run.model.scan_layers
  expected = "splash" if spec.endswith("v5p_64") else ("xla" if "gemma2" in spec else "cudnn")
  assert run.model.attention_impl == expected  # cuDNN has no attention soft-capping (Gemma 2).
  for key in ("command", "hardware", "memory", "throughput"):
    assert key in _docstring(spec).lower(), key


@pytest.mark.parametrize("path", ["configs/llama3_8b.py", "configs/qwen2_7b.py:tpu"])
def test_a_missing_or_unknown_variant_is_named(path):
  with pytest.raises(ValueError, match="variant"):
    config_loader.load(_path(path))


def test_smollm2_config_matches_its_base_model():
  run = _resolve("configs/smollm2_135m.py")
  ckpt = gguf.load(run.init_from)
  setup_lib.check_architecture(run.model, hf_config.config_from_hf(ckpt.config), run.init_from)


@pytest.mark.parametrize("quick", [True, False])
def test_demo_config_matches_its_base_model(quick):
  from treasure_jax import demo  # pylint: disable=g-import-not-at-top
  _, cfg = demo.load_config(quick=quick)
  run = config_loader.resolve(cfg.train)
  ckpt = gguf.load(run.init_from)
  setup_lib.check_architecture(run.model, hf_config.config_from_hf(ckpt.config), run.init_from)


@pytest.mark.parametrize("spec", EVAL)
def test_eval_configs_resolve(spec):
  cfg, tasks, checkpoints = sweep_config.resolve(config_loader.load(_path(spec)))
  assert {t.kind for t in tasks.values()} == {"markers", "length", "likelihood", "code"}
  assert all(b in checkpoints for b in cfg.baselines)
  if "smollm2" not in spec:
    assert cfg.sharded and cfg.baselines


def _aot(spec: str, target_name: str | None) -> dict:
  target = memory_plan.target_of(spec, target_name)
  if target.devices <= len(jax.devices()):
    return memory_plan.plan(_path(spec), target=target_name, with_aot=True)["aot"]
  # More devices than this process has (conftest: 8): a fresh process with its own fake mesh.
  script = os.path.join(ROOT, "benchmarks", "memory_plan.py")
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  args = [sys.executable, script, "--aot", _path(spec)]
  args += ["--target", target_name] if target_name else []
  out = subprocess.run(args, env=env, cwd=ROOT,
                       capture_output=True, text=True, timeout=900, check=False)
  assert out.returncode == 0, out.stderr[-4000:]
  return json.loads(out.stdout)["aot"]


def _check_aot(spec: str, target_name: str | None) -> None:
  target = memory_plan.target_of(spec, target_name)
  result = _aot(spec, target_name)
  print(f"\n{spec} on {target.name}: AOT per device (CPU proxy): {json.dumps(result, indent=1)}")
  assert result["total_gib"] < target.hbm_gib, (
      f"{spec}: the compiled train step needs {result['total_gib']:.1f} GiB per device, more "
      f"than the {target.hbm_gib} GiB of {target.name}")


# Every full fine-tuning config and one LoRA config in the default run (each compile ~15-25
# CPU-s: layers are scanned); the other LoRA configs are `slow`.
@pytest.mark.parametrize("spec,target_name", [
    t if t[0] in LARGE + ["configs/smollm2_135m.py", "configs/llama3_8b.py:h200x1_lora"]
    else pytest.param(*t, marks=pytest.mark.slow) for t in TRAIN])
def test_aot_memory_fits(spec, target_name):
  _check_aot(spec, target_name)


def test_demo_lengthaug_variant_changes_only_the_build():
  from treasure_jax import demo  # pylint: disable=g-import-not-at-top
  _, plain = demo.load_config(quick=True)
  _, aug = demo.load_config(quick=True, config=demo.default_config_path() + ":lengthaug")
  assert "length_variants" not in plain.build  # Default stage digests stay as they were.
  assert aug.build.length_variants == 2
  assert {k: v for k, v in aug.build.items() if k != "length_variants"} == dict(plain.build)
  assert aug.train == plain.train and aug.eval == plain.eval


def test_demo_steer_variant_adds_only_the_every_limit_task():
  from treasure_jax import demo  # pylint: disable=g-import-not-at-top
  _, plain = demo.load_config(quick=True)
  _, steer = demo.load_config(quick=True, config=demo.default_config_path() + ":steer,lengthaug")
  assert set(steer.eval.tasks) - set(plain.eval.tasks) == {"steer"}
  task = steer.eval.tasks.steer
  assert task.every_limit and tuple(task.length_limits) == (10, 40, 160) and task.limit == 12
  assert steer.train == plain.train and steer.build.length_variants == 2
  cfg = dict(steer.eval.to_dict(), checkpoints=("m=/ckpt",), taxonomy="")
  assert sweep_config.resolve(cfg)[1]["steer"].every_limit


def test_demo_same_examples_variant_changes_only_the_batching():
  from treasure_jax import config_loader  # pylint: disable=g-import-not-at-top
  from treasure_jax import demo  # pylint: disable=g-import-not-at-top
  _, plain = demo.load_config(quick=True)
  _, same = demo.load_config(quick=True, config=demo.default_config_path() + ":same_examples")
  extra = {"paired_order", "examples_per_batch"}
  assert not extra & set(plain.train.data)  # Default stage digests stay as they were.
  assert same.train.data.paired_order and same.train.data.examples_per_batch == 8
  assert {k: v for k, v in same.train.data.items() if k not in extra} == dict(plain.train.data)
  assert same.build == plain.build and same.eval == plain.eval
  # pylint: disable=protected-access
  run = next(r for r in demo._runs(same) if r.variant == "baseline")
  resolved = config_loader.resolve(demo._train_config(same, run, "/data"))
  assert resolved.data.examples_per_batch == 8 and resolved.data.variant == "baseline"
  sizes = demo._sizes(same, demo._runs(same), {"train": 10})["steps x batch"][0]
  assert "each step at most 8 examples of one stream (example-matched)" in sizes
