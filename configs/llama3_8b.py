"""Fine-tunes Llama-3.1-8B with training-time markers: the paper's recipe, on TPU v5p or H100s.

Command (README "Running at scale"; --config.data.variant=baseline gives the no-marker run):
  v5p_64: launch/tpu_vm_pod.sh tj-v5p europe-west4-b v5p-64 configs/llama3_8b.py:v5p_64 \
            gs://BUCKET/runs/llama3_8b -- --config.init_from=gs://BUCKET/models/llama3-8b
          i.e. on every host: treasure-jax train --config configs/llama3_8b.py:v5p_64 \
            --workdir gs://BUCKET/runs/llama3_8b
  h100x8: sbatch --nodes=1 --gpus-per-node=8 --ntasks-per-node=1 launch/slurm_gpu.sh \
            configs/llama3_8b.py:h100x8 /shared/runs/llama3_8b
          (N = 2 or 4 nodes: --nodes=N and --config.grad_accum_steps=4/N; same memory per GPU)
  h200x1_lora: treasure-jax train --config configs/llama3_8b.py:h200x1_lora \
            --workdir /shared/runs/llama3_8b_lora   (LoRA; export writes merged + PEFT adapter)
  v5p_8_lora: launch/tpu_vm_pod.sh tj-v5p8 europe-west4-b v5p-8 configs/llama3_8b.py:v5p_8_lora \
            gs://BUCKET/runs/llama3_8b_lora
  h100x1_qlora: treasure-jax train --config configs/llama3_8b.py:h100x1_qlora \
            --workdir /shared/runs/llama3_8b_qlora   (QLoRA: int4 base; export dequantizes)
Inputs: init_from, the base model (meta-llama/Llama-3.1-8B, safetensors; `treasure-jax convert`
  checks it), and data.train_files / eval_files, annotated JSONL. gs://BUCKET and /shared are
  placeholders: override them (--config.init_from=..., --config.data.train_files=...).
Hardware, expected memory per device and throughput (`python benchmarks/memory_plan.py SPEC --aot`;
  formula = exact sharded state + estimated activations; AOT = XLA memory_analysis of the train
  step compiled on a fake CPU mesh, with "xla" attention standing in for splash/cuDNN: its
  T x T scores make it an overestimate; throughput is a formula, 6N + attention FLOPs a token):
  v5p_64  TPU v5p-64 in GCP naming = 32 chips (64 TensorCores; one JAX device a chip), 8 hosts,
          95 GiB HBM a chip. Mesh data 1 x fsdp 32 x tensor 1, 1 row a chip, 'minimal' remat,
          splash attention. Memory (formula) ~47.4 GiB (state 2.8 exact, saved activations
          23.0, logits 11.7); AOT (CPU proxy) 76.0 GiB. Throughput (formula, 40% MFU)
          ~101k tokens/s: 2.6 s a step, 5.7 h for the 8,000 steps.
  h100x8  Nodes of 8 H100 80GB. Mesh data nodes x fsdp 8 x tensor 1 (fsdp inside a node), 4
          micro-batches of 1 row a GPU, 'full' remat, cuDNN attention. Memory (formula) ~41.4
          GiB (state 11.2 exact, gradients and accumulator 7.5, logits 11.7); AOT (CPU proxy)
          64.5 GiB. Throughput (formula, 35% MFU, 1 node) ~48k tokens/s: 5.5 s a step,
          12.2 h for the 8,000 steps.
  h200x1_lora One H200 141GB (131 GiB). LoRA rank 16 (alpha 32) on q/k/v/o and gate/up/down over a
          frozen bfloat16 base; 32 micro-batches of 1 row, 'full' remat, cuDNN attention. Memory
          (formula) ~32.9 GiB (base 15.0, adapters + AdamW 0.47 exact, logits 11.7); AOT (CPU proxy)
          104.5 GiB. Throughput (formula, 35% MFU, counting 6N a token though the frozen base needs
          no weight gradients) ~6k tokens/s: 43.9 s a step, 97.5 h for the 8,000 steps.
  v5p_8_lora TPU v5p-8 = 4 chips, 1 host. LoRA rank 16 (alpha 32) on every projection over a frozen
          bfloat16 base; mesh data 1 x fsdp 4 x tensor 1, 8 micro-batches of 1 row a chip, 'minimal'
          remat, splash attention. Memory (formula) ~43.8 GiB (base 3.7, adapters + AdamW 0.35
          exact, logits 11.7); AOT (CPU proxy) 83.4 GiB. Throughput (formula, 40% MFU, counting 6N a
          token though the frozen base needs no weight gradients) ~13k tokens/s: 20.7 s a step, 45.9
          h for the 8,000 steps.
  h100x1_qlora One H100 80GB. QLoRA: the LoRA adapters above over a base whose projections are
          int4 codes with float32 scales per 64 weights (model.lora.base_bits=4), at 4,096-token
          rows; 32 micro-batches of 1 row, 'full' remat, cuDNN attention. Memory (formula)
          ~15.4 GiB (base 5.6 exact at 4.5 bits a projection weight, adapters + AdamW
          0.47, logits 5.9, one layer dequantized); AOT (CPU proxy, int4 stored
          unpacked there) 34.5 GiB. Throughput (formula, 30% MFU) ~6k tokens/s: 22.7 s a
          step, 50.5 h for the 8,000 steps; 8,192-token rows need the H200 variant.
Precision: float32 master weights (LoRA: a bfloat16 frozen base, float32 adapters) and Adam
  moments, bfloat16 matmuls and activations (norms, softmax and logits in float32).
Produces: in the workdir, metrics.jsonl (loss, marker and response loss, marker-token accuracy,
  tokens/s, MFU; every 500 steps eval/ metrics with head and long-tail slices), checkpoints/
  every 500 steps (3 kept; a rerun resumes), config.json and taxonomy.json;
  configs/eval/llama3_8b.py evaluates the result against the baseline run.

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
      "configs/llama3_8b.py", variant, targets=VARIANTS, preset="llama3_8b", template="llama3",
      model_dir="llama3-8b")
