"""Fine-tunes Gemma-2-9B with training-time markers: the paper's recipe, on TPU v5p or H100s.

Command (README "Running at scale"; --config.data.variant=baseline gives the no-marker run):
  v5p_64: launch/tpu_vm_pod.sh tj-v5p europe-west4-b v5p-64 configs/gemma2_9b.py:v5p_64 \
            gs://BUCKET/runs/gemma2_9b -- --config.init_from=gs://BUCKET/models/gemma2-9b
          i.e. on every host: treasure-jax train --config configs/gemma2_9b.py:v5p_64 \
            --workdir gs://BUCKET/runs/gemma2_9b
  h100x8: sbatch --nodes=1 --gpus-per-node=8 --ntasks-per-node=1 launch/slurm_gpu.sh \
            configs/gemma2_9b.py:h100x8 /shared/runs/gemma2_9b
          (N = 2 or 4 nodes: --nodes=N and --config.grad_accum_steps=4/N; same memory per GPU)
  h200x1_lora: treasure-jax train --config configs/gemma2_9b.py:h200x1_lora \
            --workdir /shared/runs/gemma2_9b_lora   (LoRA; export writes merged + PEFT adapter)
  v5p_8_lora: launch/tpu_vm_pod.sh tj-v5p8 europe-west4-b v5p-8 configs/gemma2_9b.py:v5p_8_lora \
            gs://BUCKET/runs/gemma2_9b_lora
  h100x1_qlora: treasure-jax train --config configs/gemma2_9b.py:h100x1_qlora \
            --workdir /shared/runs/gemma2_9b_qlora   (QLoRA: int4 base; export dequantizes)
Inputs: init_from, the base model (google/gemma-2-9b, safetensors), and data.train_files /
  eval_files, annotated JSONL, rendered with the Gemma template (which has no system turn).
  gs://BUCKET and /shared are placeholders: override them (--config.init_from=..., ...).
Hardware, expected memory per device and throughput (`python benchmarks/memory_plan.py SPEC --aot`;
  formula = exact sharded state + estimated activations; AOT = XLA memory_analysis of the train
  step compiled on a fake CPU mesh, with "xla" attention standing in for splash: its T x T
  scores make it an overestimate; throughput is a formula, 6N + attention FLOPs a token):
  v5p_64  TPU v5p-64 in GCP naming = 32 chips (64 TensorCores; one JAX device a chip), 8 hosts,
          95 GiB HBM a chip. Mesh data 1 x fsdp 32 x tensor 1, 1 row a chip, 'minimal' remat,
          splash attention (with Gemma's logit soft-capping). Memory (formula) ~45.2 GiB (state
          3.2 exact, saved activations 15.3, logits 15.6); AOT (CPU proxy) 54.9 GiB.
          Throughput (formula, 40% MFU) ~92k tokens/s: 1.4 s a step, 3.2 h for 8,000 steps.
  h100x8  Nodes of 8 H100 80GB. Mesh data nodes x fsdp 8 x tensor 1 (fsdp inside a node), 4
          micro-batches of 1 row a GPU, 'full' remat, "xla" attention (cuDNN has no soft-
          capping). Memory (formula) ~51.3 GiB (state 12.9 exact, gradients and accumulator
          8.6, logits 15.6); AOT (CPU proxy) 48.2 GiB. Throughput (formula, 35% MFU, 1 node)
          ~43k tokens/s: 3.0 s a step, 6.7 h for the 8,000 steps.
  h200x1_lora One H200 141GB (131 GiB). LoRA rank 16 (alpha 32) on q/k/v/o and gate/up/down over a
          frozen bfloat16 base; 32 micro-batches of 1 row, 'full' remat, "xla" attention. Memory
          (formula) ~39.7 GiB (base 17.2, adapters + AdamW 0.60 exact, logits 15.6); AOT (CPU proxy)
          100.8 GiB. Throughput (formula, 35% MFU, counting 6N a token though the frozen base needs
          no weight gradients) ~5k tokens/s: 24.2 s a step, 53.8 h for the 8,000 steps.
  v5p_8_lora TPU v5p-8 = 4 chips, 1 host. LoRA rank 16 (alpha 32) on every projection over a frozen
          bfloat16 base; mesh data 1 x fsdp 4 x tensor 1, 8 micro-batches of 1 row a chip, 'minimal'
          remat, splash attention. Memory (formula) ~39.7 GiB (base 4.3, adapters + AdamW 0.46
          exact, logits 15.6); AOT (CPU proxy) 69.0 GiB. Throughput (formula, 40% MFU, counting 6N a
          token though the frozen base needs no weight gradients) ~11k tokens/s: 11.4 s a step, 25.3
          h for the 8,000 steps.
  h100x1_qlora One H100 80GB. QLoRA: the LoRA adapters above over a base whose projections are
          int4 codes with float32 scales per 64 weights (model.lora.base_bits=4), at 4,096-token
          rows; 32 micro-batches of 1 row, 'full' remat, XLA attention. Memory (formula)
          ~28.9 GiB (base 6.1 exact at 4.5 bits a projection weight, adapters + AdamW
          0.60, logits 15.6, one layer dequantized); AOT (CPU proxy, int4 stored
          unpacked there) 43.6 GiB. Throughput (formula, 30% MFU) ~5k tokens/s: 28.2 s a
          step, 62.7 h for the 8,000 steps; 8,192-token rows need the H200 variant.
Precision: float32 master weights (LoRA: a bfloat16 frozen base, float32 adapters) and Adam
  moments, bfloat16 matmuls and activations (norms, softmax and logits in float32).
Produces: in the workdir, metrics.jsonl (loss, marker and response loss, marker-token accuracy,
  tokens/s, MFU; every 500 steps eval/ metrics with head and long-tail slices), checkpoints/
  every 500 steps (3 kept; a rerun resumes), config.json and taxonomy.json;
  configs/eval/gemma2_9b.py evaluates the result against the baseline run.

Recipe (method.md): 8,000 steps of 32 rows, 10 warm-up steps to 2.5e-4, cosine to 1.25e-4.
[ours] A row is 4,096 packed tokens (131k a step), half the Llama/Qwen rows: Gemma's 256k
vocabulary makes the float32 logits of one 8,192-token row 7.8 GiB, ~31 GiB with their
soft-capped copy and gradient, too close to an H100's 80 GiB; 4,096 is also its sliding window.
"""
import ml_collections

from treasure_jax import config_presets

# Per hardware target: mesh (data, fsdp, tensor), micro-batching, remat, attention kernel, and
# where the base model and data live (config_presets.FINETUNE_TARGETS).
VARIANTS = config_presets.finetune_targets(  # cuDNN attention has no logit soft-capping.
    h100x8=dict(attention_impl="xla"), h200x1_lora=dict(attention_impl="xla"),
    h100x1_qlora=dict(attention_impl="xla"))


def get_config(variant: str | None = None) -> ml_collections.ConfigDict:
  """The paper's recipe on hardware target `variant`, one of VARIANTS."""
  return config_presets.finetune_config(
      "configs/gemma2_9b.py", variant, targets=VARIANTS, preset="gemma2_9b", template="gemma",
      model_dir="gemma2-9b", seq_len=4096)
