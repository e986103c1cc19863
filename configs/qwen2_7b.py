"""Fine-tunes Qwen2-7B with training-time markers: the paper's recipe, on TPU v5p or H100s.

Command (README "Running at scale"; --config.data.variant=baseline gives the no-marker run):
  v5p_64: launch/tpu_vm_pod.sh tj-v5p europe-west4-b v5p-64 configs/qwen2_7b.py:v5p_64 \
            gs://BUCKET/runs/qwen2_7b -- --config.init_from=gs://BUCKET/models/qwen2-7b
          i.e. on every host: treasure-jax train --config configs/qwen2_7b.py:v5p_64 \
            --workdir gs://BUCKET/runs/qwen2_7b
  h100x8: sbatch --nodes=1 --gpus-per-node=8 --ntasks-per-node=1 launch/slurm_gpu.sh \
            configs/qwen2_7b.py:h100x8 /shared/runs/qwen2_7b
          (N = 2 or 4 nodes: --nodes=N and --config.grad_accum_steps=4/N; same memory per GPU)
  h200x1_lora: treasure-jax train --config configs/qwen2_7b.py:h200x1_lora \
            --workdir /shared/runs/qwen2_7b_lora   (LoRA; export writes merged + PEFT adapter)
  v5p_8_lora: launch/tpu_vm_pod.sh tj-v5p8 europe-west4-b v5p-8 configs/qwen2_7b.py:v5p_8_lora \
            gs://BUCKET/runs/qwen2_7b_lora
  h100x1_qlora: treasure-jax train --config configs/qwen2_7b.py:h100x1_qlora \
            --workdir /shared/runs/qwen2_7b_qlora   (QLoRA: int4 base; export dequantizes)
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
  h200x1_lora One H200 141GB (131 GiB). LoRA rank 16 (alpha 32) on q/k/v/o and gate/up/down over a
          frozen bfloat16 base; 32 micro-batches of 1 row, 'full' remat, cuDNN attention. Memory
          (formula) ~34.1 GiB (base 14.2, adapters + AdamW 0.45 exact, logits 13.9); AOT (CPU proxy)
          97.4 GiB. Throughput (formula, 35% MFU, counting 6N a token though the frozen base needs
          no weight gradients) ~7k tokens/s: 39.6 s a step, 88.0 h for the 8,000 steps.
  v5p_8_lora TPU v5p-8 = 4 chips, 1 host. LoRA rank 16 (alpha 32) on every projection over a frozen
          bfloat16 base; mesh data 1 x fsdp 4 x tensor 1, 8 micro-batches of 1 row a chip, 'minimal'
          remat, splash attention. Memory (formula) ~46.0 GiB (base 3.5, adapters + AdamW 0.36
          exact, logits 13.9); AOT (CPU proxy) 81.8 GiB. Throughput (formula, 40% MFU, counting 6N a
          token though the frozen base needs no weight gradients) ~14k tokens/s: 18.7 s a step, 41.5
          h for the 8,000 steps.
  h100x1_qlora One H100 80GB. QLoRA: the LoRA adapters above over a base whose projections are
          int4 codes with float32 scales per 64 weights (model.lora.base_bits=4), at 4,096-token
          rows; 32 micro-batches of 1 row, 'full' remat, cuDNN attention. Memory (formula)
          ~16.2 GiB (base 5.4 exact at 4.5 bits a projection weight, adapters + AdamW
          0.45, logits 7.0, one layer dequantized); AOT (CPU proxy, int4 stored
          unpacked there) 32.8 GiB. Throughput (formula, 30% MFU) ~6k tokens/s: 20.9 s a
          step, 46.5 h for the 8,000 steps; 8,192-token rows need the H200 variant.
Precision: float32 master weights (LoRA: a bfloat16 frozen base, float32 adapters) and Adam
  moments, bfloat16 matmuls and activations (norms, softmax and logits in float32).
Produces: in the workdir, metrics.jsonl (loss, marker and response loss, marker-token accuracy,
  tokens/s, MFU; every 500 steps eval/ metrics with head and long-tail slices), checkpoints/
  every 500 steps (3 kept; a rerun resumes), config.json and taxonomy.json;
  configs/eval/qwen2_7b.py evaluates the result against the baseline run.

Recipe (method.md): 8,000 steps of 32 rows, 10 warm-up steps to 2.5e-4, cosine to 1.25e-4.
[ours] A row is 8,192 packed tokens: 2.7M examples in 8,000 x 32 rows is ~10 examples a row
(~800 tokens each), so 262k tokens a step, 2.1B in all.
"""
import ml_collections

from treasure_jax import config_presets

# Per hardware target: mesh (data, fsdp, tensor), micro-batching, remat, attention kernel, and
# where the base model and data live (config_presets.FINETUNE_TARGETS).
VARIANTS = config_presets.finetune_targets()


def get_config(variant: str | None = None) -> ml_collections.ConfigDict:
  """The paper's recipe on hardware target `variant`, one of VARIANTS."""
  return config_presets.finetune_config(
      "configs/qwen2_7b.py", variant, targets=VARIANTS, preset="qwen2_7b", template="chatml",
      model_dir="qwen2-7b")
