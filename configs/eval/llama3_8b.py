"""Evaluation sweep of the Llama-3.1-8B fine-tunes of configs/llama3_8b.py: markers vs the baseline.

Command:
  treasure-jax eval --config configs/eval/llama3_8b.py --workdir /shared/evals/llama3_8b \
      --config.checkpoints=markers=/shared/runs/llama3_8b,baseline=/shared/runs/llama3_8b_baseline
  (the two runs of configs/llama3_8b.py:h100x8, with and without --config.data.variant=baseline;
   /shared/data holds validation.jsonl, the held-out split of the training data, and
   demo/humaneval/, the human-eval sets: `treasure-jax data build-demo --out /shared/data/demo`.)
Hardware: one host, 8 x H100 80GB or a TPU v5p-8 (4 chips). Mesh (1, 1, -1), rules
  fsdp_tp: tensor parallel over every local device (32 heads, 8 kv heads and the
  128,256-token vocabulary divide by 8 and 4). The float32 weights are 30 GiB (~3.7 GiB a GPU)
  plus a KV cache of 32 rows; multi-host works the same (every process runs the same cells).
  Mostly decoding: hours.
Produces: /shared/evals/llama3_8b/report/report.md (+ cells.json, PNGs) and per cell
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


def _task(**kw) -> ml_collections.ConfigDict:
  base = dict(kind="", data="", settings=("inferred",), limit=0, max_new_tokens=0,
              length_limits=(), nl_template="Answer in at most {n} words.", categories=(),
              judge=False)
  return ml_collections.ConfigDict({**base, **kw})


def get_config(variant: str | None = None) -> ml_collections.ConfigDict:
  if variant is not None:
    raise ValueError(f"configs/eval/llama3_8b.py: no variants (got {variant!r}); the mesh takes "
                     "every local device")
  c = ml_collections.ConfigDict()
  c.checkpoints = ("markers=/shared/runs/llama3_8b", "baseline=/shared/runs/llama3_8b_baseline")
  c.baselines = ("baseline",)
  c.data_dir = "/shared/data"
  c.train_files = ()  # () = each checkpoint's own training files (long-tail slices).
  c.long_tail_threshold = 0.05
  c.taxonomy = ""  # Settings are checked against the default; each checkpoint runs its own.
  c.examples_per_cell = 3
  c.nll_batch_size = 16
  c.sharded = True
  c.mesh = ml_collections.ConfigDict(dict(shape=(1, 1, -1), rules="fsdp_tp"))
  c.decode = ml_collections.ConfigDict(dict(
      batch_size=32, max_new_tokens=1024, sampler="greedy", temperature=1.0, top_k=0, top_p=1.0,
      seed=0, force_prefix=False))
  # Every task has "none" (or nl_instruction): the only settings a baseline checkpoint runs.
  c.tasks = ml_collections.ConfigDict(dict(
      markers=_task(kind="markers", data="validation.jsonl", limit=2000,
                    settings=("none", "inferred", "constrained")),
      quality=_task(kind="markers", data="validation.jsonl", limit=500, judge=True,
                    settings=("none", "inferred", "fixed:quality_bucket=1")),
      length=_task(kind="length", data="validation.jsonl", limit=500, max_new_tokens=2048,
                   settings=("none", "nl_instruction", "inferred", "fixed:length_tokens")),
      likelihood=_task(kind="likelihood", data="validation.jsonl", limit=2000,
                       settings=("none", "inferred", "fixed:domain,task,lang")),
      codegen=_task(kind="code", data="demo/humaneval/humaneval_codegen.jsonl",
                    max_new_tokens=512, settings=("none", "inferred", "fixed:task")),
      codefix=_task(kind="code", data="demo/humaneval/humaneval_codefix.jsonl",
                    max_new_tokens=512, settings=("none", "inferred", "fixed:task")),
  ))
  # Off until pointed at a server: judge and reward metrics are then reported as unavailable.
  c.judge = ml_collections.ConfigDict(dict(
      url="", model="", api_key_env="OPENAI_API_KEY", concurrency=8))
  c.reward = ml_collections.ConfigDict(dict(
      kind="none", name=None, url=None, callable=None, api_key_env=None, concurrency=8))
  return c
