"""Evaluation sweep of the Gemma-2-9B fine-tunes of configs/gemma2_9b.py: markers vs the baseline.

Command:
  treasure-jax eval --config configs/eval/gemma2_9b.py --workdir /shared/evals/gemma2_9b \
      --config.checkpoints=markers=/shared/runs/gemma2_9b,baseline=/shared/runs/gemma2_9b_baseline
  (the two runs of configs/gemma2_9b.py:h100x8, with and without --config.data.variant=baseline;
   /shared/data holds validation.jsonl, the held-out split of the training data, and
   demo/humaneval/, the human-eval sets: `treasure-jax data build-demo --out /shared/data/demo`.)
Hardware: one host, 8 x H100 80GB or a TPU v5p-8 (4 chips). Mesh (1, 1, -1), rules
  fsdp_tp: tensor parallel over every local device (16 heads, 8 kv heads and the
  256,000-token vocabulary divide by 8 and 4). The float32 weights are 34 GiB (~4.3 GiB a GPU)
  plus a KV cache of 32 rows; multi-host works the same (every process runs the same cells).
  Mostly decoding: hours.
Produces: /shared/evals/gemma2_9b/report/report.md (+ cells.json, PNGs) and per cell
  cells/<checkpoint>/<task>/<setting>/{records.jsonl,metrics.json}; a rerun skips finished cells.
  The paper's comparisons: marker inference accuracy and calibration (markers: inferred,
  constrained); the quality lever, quality_bucket=1 vs none (quality; needs a judge or reward
  model: --config.judge.url=http://HOST/v1 --config.judge.model=MODEL, or
  --config.reward.kind=http --config.reward.url=URL; off by default, reported as
  unavailable); length control with a
  length_tokens marker vs "Answer in at most N words." (length); response NLL with no, inferred
  and given markers (likelihood); pass@1 with and without the task marker on HumanEval
  CodeGeneration and CodeFix (codegen, codefix). Every metric is split into head and long-tail
  marker values of the training data.
"""
import ml_collections

from treasure_jax import config_presets


def get_config(variant: str | None = None) -> ml_collections.ConfigDict:
  """The sweep of the docstring; no variants."""
  return config_presets.paper_eval_config("configs/eval/gemma2_9b.py", variant, run="gemma2_9b",
                                          mesh=(1, 1, -1))
