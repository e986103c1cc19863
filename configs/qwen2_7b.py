"""Fine-tunes Qwen2-7B with training-time markers: the paper's recipe, on TPU v5p or H100s.

Command (README "Running at scale"; --config.data.variant=baseline gives the no-marker run):
  v5p_64: launch/tpu_vm_pod.sh tj-v5p europe-west4-b v5p-64 configs/qwen2_7b.py:v5p_64 \
            gs://BUCKET/runs/qwen2_7b -- --config.init_from=gs://BUCKET/models/qwen2-7b
          i.e. on every host: treasure-jax train --config configs/qwen2_7b.py:v5p_64 \
            --workdir gs://BUCKET/runs/qwen2_7b
  h100x8: sbatch --nodes=1 --gpus-per-node=8 --ntasks-per-node=1 launch/slurm_gpu.sh \
            configs/qwen2_7b.py:h100x8 /shared/runs/qwen2_7b
          (N = 2 or 4 nodes: --nodes=N and --config.grad_accum_steps=4/N; same memory per GPU)
Inputs: init_from, the base model (Qwen/Qwen2-7B, safetensors), and data.train_files /
  eval_files, annotated JSONL, rendered with the ChatML template. gs://BUCKET and /shared are
  placeholders: override them (--config.init_from=..., --config.data.train_files=...).
Hardware, expected memory per device and throughput (`python benchmarks/memory_plan.py SPEC --aot`;
  formula = exact sharded state + estimated activations; AOT = XLA memory_analysis of the train
  step compiled on a fake CPU mesh, with "xla" attention standing in for splash/cuDNN: its
  T x T scores make it an overestimate; throughput is a formula, 6N + attention FLOPs a token):
  v5p_64  TPU v5p-64 in GCP naming = 32 chips (64 TensorCores; one JAX device a chip), 8 hosts,
          95 GiB HBM a chip. Mesh data 1 x fsdp 32 x tensor 1, 1 row a chip, 'minimal' remat,
          splash attention. Memory (formula) ~49.7 GiB (state 2.7 exact, saved activations
          22.8, logits 13.9); AOT (CPU proxy) 72.7 GiB. Throughput (formula, 40% MFU)
          ~112k tokens/s: 2.3 s a step, 5.2 h for the 8,000 steps.
  h100x8  Nodes of 8 H100 80GB. Mesh data nodes x fsdp 8 x tensor 1 (fsdp inside a node), 4
          micro-batches of 1 row a GPU, 'full' remat, cuDNN attention. Memory (formula) ~42.7
          GiB (state 10.6 exact, gradients and accumulator 7.1, logits 13.9); AOT (CPU proxy)
          58.5 GiB. Throughput (formula, 35% MFU, 1 node) ~53k tokens/s: 5.0 s a step,
          11.0 h for the 8,000 steps.
Precision: float32 master weights and Adam moments, bfloat16 matmuls and activations (norms,
  softmax and logits in float32).
Produces: in the workdir, metrics.jsonl (loss, marker and response loss, marker-token accuracy,
  tokens/s, MFU; every 500 steps eval/ metrics with head and long-tail slices), checkpoints/
  every 500 steps (3 kept; a rerun resumes), config.json and taxonomy.json;
  configs/eval/qwen2_7b.py evaluates the result against the baseline run.

Recipe (method.md): 8,000 steps of 32 rows, 10 warm-up steps to 2.5e-4, cosine to 1.25e-4.
[ours] A row is 8,192 packed tokens: 2.7M examples in 8,000 x 32 rows is ~10 examples a row
(~800 tokens each), so 262k tokens a step, 2.1B in all.
"""
import ml_collections

# Per hardware target: mesh (data, fsdp, tensor), micro-batching, remat, attention kernel, and
# where the base model and data live. Rows per device per micro-batch:
# 32 / accum / (data * fsdp) = 1.
VARIANTS = {
    "v5p_64": dict(mesh=(1, 32, 1), grad_accum_steps=1, remat="minimal", attention_impl="splash",
                   root="gs://BUCKET"),
    "h100x8": dict(mesh=(-1, 8, 1), grad_accum_steps=4, remat="full", attention_impl="cudnn",
                   root="/shared"),
}


def get_config(variant: str | None = None) -> ml_collections.ConfigDict:
  if variant not in VARIANTS:
    raise ValueError(f"configs/qwen2_7b.py: choose a hardware variant, "
                     f"configs/qwen2_7b.py:VARIANT with VARIANT one of {', '.join(VARIANTS)} "
                     f"(got {variant!r})")
  v = VARIANTS[variant]
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
  c.init_from = f"{v['root']}/models/qwen2-7b"
  c.tokenizer = ""  # The base model's.
  c.compilation_cache_dir = ""

  c.model = ml_collections.ConfigDict(dict(
      preset="qwen2_7b", param_dtype="float32", dtype="bfloat16", remat=v["remat"],
      scan_layers=True, attention_impl=v["attention_impl"]))
  c.data = ml_collections.ConfigDict(dict(
      task="", name="sft", train_files=(f"{v['root']}/data/train.jsonl",),
      eval_files=(f"{v['root']}/data/validation.jsonl",), taxonomy="", template="chatml",
      variant="markers", p_dataset=0.5, p_sample=0.5, seq_len=8192, pack=True,
      on_bad_record="error", on_overflow="skip", shuffle_buffer=10_000, long_tail_boost=1.0,
      long_tail_threshold=0.05, seed=0))
  c.optim = ml_collections.ConfigDict(dict(
      schedule="cosine", peak_lr=2.5e-4, final_lr=1.25e-4, warmup_steps=10, weight_decay=0.01,
      b1=0.9, b2=0.95, eps=1e-8, clip_norm=1.0))
  c.mesh = ml_collections.ConfigDict(dict(shape=v["mesh"], rules="fsdp"))
  c.checkpoint = ml_collections.ConfigDict(dict(every_steps=500, keep=3, async_save=True))
  c.distributed = ml_collections.ConfigDict(dict(
      initialization_timeout_s=600, heartbeat_timeout_s=100, shutdown_timeout_s=300))
  return c
