"""Model configuration: one frozen dataclass for Llama, Mistral, Qwen2 and Gemma 2, plus presets.

Family differences are a handful of explicit fields (biases, norm offset, soft-capping, sliding
windows, ...), never subclasses. `family` only names the Hugging Face `model_type` used on export;
the forward pass reads the explicit fields. Reading configs from Hugging Face lives in `hf.py`,
the mesh/sharding configuration in `sharding.py`. `LoraConfig` (the `model.lora` section) names
low-rank adapters on top of the architecture; their mechanics live in `lora.py`.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Any, Mapping

import jax.numpy as jnp

FAMILIES = ("llama", "mistral", "qwen2", "gemma2")
DTYPES = ("float32", "bfloat16")
ACTIVATIONS = ("silu", "gelu_tanh")
REMAT_POLICIES = ("none", "full", "dots_saveable", "dots_with_no_batch_dims_saveable", "minimal")
ATTENTION_IMPLS = ("xla", "dpa_xla", "cudnn", "splash")
ATTENTION_KINDS = ("global", "local")
# How a model runs, not what it computes: free to differ between a checkpoint and the run
# that loads it, and not part of a Hugging Face config.
EXECUTION_FIELDS = ("param_dtype", "dtype", "remat", "scan_layers", "attention_impl",
                    "fuse_projections")
# Projections a LoRA adapter may target (HF PEFT `target_modules` names).
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclasses.dataclass(frozen=True)
class LoraConfig:
  """Low-rank adapters W + (alpha / rank) * A B on the projections that `targets` name.

  Attributes:
    rank: r, the inner dimension of A [in, r] and B [r, out].
    alpha: the update is scaled by alpha / rank (HF PEFT's `lora_alpha`, no rsLoRA).
    dropout: must be 0.0: the train step is deterministic (no RNG reaches the model), so PEFT's
      dropout on the adapter input is not implemented; a non-zero value fails at start-up.
    targets: regular expressions, each fully matching one or more of LORA_TARGETS, e.g.
      ("q_proj", "v_proj") or (".*_proj",).
    base_bits: 0 keeps the frozen base in `param_dtype`; 8 or 4 stores every projection kernel
      of the base (all of LORA_TARGETS, adapted or not) as int8 / int4 codes with blockwise
      float32 scales (QLoRA; `quant.py`). The embedding, head and norms stay in param_dtype.
    base_block_size: weights per scale along a kernel's last input axis (base_bits > 0).
  """
  rank: int = 16
  alpha: float = 32.0
  dropout: float = 0.0
  targets: tuple[str, ...] = LORA_TARGETS
  base_bits: int = 0
  base_block_size: int = 64

  def __post_init__(self):
    targets = (self.targets,) if isinstance(self.targets, str) else tuple(self.targets)
    object.__setattr__(self, "targets", targets)
    if self.rank < 1:
      raise ValueError(f"model.lora.rank={self.rank} must be >= 1")
    if self.dropout != 0.0:
      raise ValueError(f"model.lora.dropout={self.dropout}: only 0.0 is supported (the train "
                       "step runs the model without an RNG)")
    if not targets:
      raise ValueError("model.lora.targets: name at least one projection")
    if self.base_bits not in (0, 8, 4):
      raise ValueError(f"model.lora.base_bits={self.base_bits!r}: use 0 (no quantization), 8 "
                       "or 4")
    if self.base_block_size < 1:
      raise ValueError(f"model.lora.base_block_size={self.base_block_size} must be >= 1")
    for pattern in targets:
      try:
        matched = [name for name in LORA_TARGETS if re.fullmatch(pattern, name)]
      except re.error as e:
        raise ValueError(f"model.lora.targets: {pattern!r} is not a regular expression: {e}")
      if not matched:
        raise ValueError(f"model.lora.targets: {pattern!r} matches none of "
                         f"{', '.join(LORA_TARGETS)}")

  @property
  def scale(self) -> float:
    return self.alpha / self.rank

  def targeted(self) -> tuple[str, ...]:
    """The projection names (of LORA_TARGETS) that get an adapter."""
    return tuple(n for n in LORA_TARGETS if any(re.fullmatch(p, n) for p in self.targets))


@dataclasses.dataclass(frozen=True)
class RopeScaling:
  """Llama-3 style RoPE frequency scaling (HF `rope_type: llama3`)."""
  factor: float = 8.0
  low_freq_factor: float = 1.0
  high_freq_factor: float = 4.0
  original_max_len: int = 8192


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Architecture, precision and execution choices of one decoder-only transformer.

  Attributes (D embed_dim, N num_heads, K num_kv_heads, H head_dim, F mlp_dim, V vocab_size):
    family: HF model_type written on export ("llama", "mistral", "qwen2", "gemma2").
    norm_offset: 1.0 for Gemma's `x * (1 + w)` RMSNorm, 0.0 for `x * w`.
    scale_embeddings: multiply token embeddings by sqrt(D) (Gemma).
    post_norms: extra RMSNorm on the attention and MLP outputs before the residual add (Gemma 2).
    query_pre_attn_scalar: attention scale is this**-0.5 instead of H**-0.5 (Gemma 2).
    attention_pattern: per-layer kinds, cycled over layers: "global" (full causal) or "local"
      (causal within `sliding_window` positions). Gemma 2 is ("local", "global").
    param_dtype / dtype: storage dtype of parameters / dtype of activations and matmuls.
      Norms, softmax, RoPE and the final logits are always float32.
    remat: activation rematerialization policy of each block (REMAT_POLICIES).
    scan_layers: stack layer parameters on a leading "layers" axis and run `jax.lax.scan`.
    attention_impl: "xla" (einsum reference), "dpa_xla" (jax.nn.dot_product_attention, XLA),
      "cudnn" (GPU only), "splash" (Pallas, TPU only). Cached decoding always uses "xla".
    fuse_projections: run q/k/v as one matmul and gate/up as one matmul, their kernels
      concatenated at use (parameters stay one per projection, as in HF checkpoints). Skipped
      where the sharding plan splits heads or mlp over the mesh (tensor parallelism), whose
      shards a concatenation would have to gather. Same math; on XLA:CPU one wide matmul runs
      ~20% faster per layer than three narrow ones (benchmarks/train_step.py). With LoRA the
      base kernels stay fused and each targeted projection adds its own adapter's update.
    lora: low-rank adapters (LoraConfig) or None. Not an architecture field: a LoRA run's base
      checkpoint has none, and Hugging Face export goes through `lora_io`.
  """
  vocab_size: int
  num_layers: int
  embed_dim: int
  num_heads: int
  num_kv_heads: int
  head_dim: int
  mlp_dim: int
  family: str = "llama"
  max_seq_len: int = 8192
  rope_theta: float = 10_000.0
  rope_scaling: RopeScaling | None = None
  norm_eps: float = 1e-5
  norm_offset: float = 0.0
  tie_embeddings: bool = False
  qkv_bias: bool = False
  out_bias: bool = False
  activation: str = "silu"
  scale_embeddings: bool = False
  post_norms: bool = False
  query_pre_attn_scalar: float | None = None
  attn_logit_softcap: float | None = None
  final_logit_softcap: float | None = None
  sliding_window: int | None = None
  attention_pattern: tuple[str, ...] = ("global",)
  param_dtype: str = "float32"
  dtype: str = "bfloat16"
  remat: str = "none"
  scan_layers: bool = False
  attention_impl: str = "xla"
  fuse_projections: bool = True
  lora: LoraConfig | None = None

  def __post_init__(self):
    _check_choice("family", self.family, FAMILIES)
    _check_choice("param_dtype", self.param_dtype, DTYPES)
    _check_choice("dtype", self.dtype, DTYPES)
    _check_choice("activation", self.activation, ACTIVATIONS)
    _check_choice("remat", self.remat, REMAT_POLICIES)
    _check_choice("attention_impl", self.attention_impl, ATTENTION_IMPLS)
    object.__setattr__(self, "attention_pattern", tuple(self.attention_pattern))
    for kind in self.attention_pattern:
      _check_choice("attention_pattern", kind, ATTENTION_KINDS)
    if not self.attention_pattern:
      raise ValueError("ModelConfig.attention_pattern: must name at least one kind")
    if "local" in self.attention_pattern and not self.sliding_window:
      raise ValueError("ModelConfig.attention_pattern has 'local' layers but sliding_window is "
                       "unset")
    if self.num_heads % self.num_kv_heads:
      raise ValueError(f"ModelConfig.num_heads={self.num_heads} is not a multiple of "
                       f"num_kv_heads={self.num_kv_heads}")
    if self.head_dim % 2:
      raise ValueError(f"ModelConfig.head_dim={self.head_dim} must be even for RoPE")
    if self.scan_layers and self.num_layers % len(self.attention_pattern):
      raise ValueError(f"ModelConfig.scan_layers needs num_layers={self.num_layers} to be a "
                       f"multiple of len(attention_pattern)={len(self.attention_pattern)}")

  @property
  def jnp_param_dtype(self) -> jnp.dtype:
    return jnp.dtype(self.param_dtype)

  @property
  def jnp_dtype(self) -> jnp.dtype:
    return jnp.dtype(self.dtype)

  def window(self, layer: int) -> int | None:
    """Sliding-window size of `layer`, or None for a global layer."""
    kind = self.attention_pattern[layer % len(self.attention_pattern)]
    return self.sliding_window if kind == "local" else None

  def replace(self, **changes: Any) -> ModelConfig:
    return dataclasses.replace(self, **changes)

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)


def _check_choice(field: str, value: Any, allowed: tuple[str, ...]) -> None:
  if value not in allowed:
    raise ValueError(f"ModelConfig.{field}={value!r} is not one of {', '.join(allowed)}")


def from_dict(d: Mapping[str, Any]) -> ModelConfig:
  """ModelConfig from a plain mapping (e.g. a ml_collections section); unknown keys fail by name.

  A "preset" key starts from that preset and applies the other keys as overrides.
  """
  d = dict(d)
  names = {f.name for f in dataclasses.fields(ModelConfig)}
  unknown = sorted(set(d) - names - {"preset"})
  if unknown:
    raise ValueError(f"model config: unknown key(s) {unknown}; known: {sorted(names)}")
  if isinstance(d.get("rope_scaling"), Mapping):
    d["rope_scaling"] = RopeScaling(**d["rope_scaling"])
  if isinstance(d.get("lora"), Mapping):
    d["lora"] = _lora_from_dict(d["lora"])
  if "attention_pattern" in d:
    d["attention_pattern"] = tuple(d["attention_pattern"])
  preset_name = d.pop("preset", None)
  if preset_name:
    return preset(preset_name, **d)
  return ModelConfig(**d)


def _lora_from_dict(d: Mapping[str, Any]) -> LoraConfig:
  names = {f.name for f in dataclasses.fields(LoraConfig)}
  unknown = sorted(set(d) - names)
  if unknown:
    raise ValueError(f"model.lora: unknown key(s) {unknown}; known: {sorted(names)}")
  return LoraConfig(**d)


def preset(name: str, **overrides: Any) -> ModelConfig:
  """A named architecture; `overrides` replace fields (e.g. dtype="float32", scan_layers=True)."""
  if name not in _PRESETS:
    raise ValueError(f"unknown model preset {name!r}; known: {', '.join(sorted(_PRESETS))}")
  return dataclasses.replace(_PRESETS[name], **overrides)


def preset_names() -> tuple[str, ...]:
  return tuple(sorted(_PRESETS))


_PRESETS: dict[str, ModelConfig] = {
    # SmolLM2 family shape (GQA, tied embeddings, large RoPE theta), shrunk for tests.
    "tiny": ModelConfig(
        vocab_size=256, num_layers=2, embed_dim=64, num_heads=4, num_kv_heads=2, head_dim=16,
        mlp_dim=128, max_seq_len=256, rope_theta=100_000.0, tie_embeddings=True),
    # HuggingFaceTB/SmolLM2-135M: 134,515,008 parameters.
    "smollm2_135m": ModelConfig(
        vocab_size=49152, num_layers=30, embed_dim=576, num_heads=9, num_kv_heads=3, head_dim=64,
        mlp_dim=1536, max_seq_len=8192, rope_theta=100_000.0, tie_embeddings=True),
    # meta-llama/Llama-3.1-8B (Llama 3.0 differs only in RoPE scaling): 8,030,261,248 parameters.
    "llama3_8b": ModelConfig(
        vocab_size=128256, num_layers=32, embed_dim=4096, num_heads=32, num_kv_heads=8,
        head_dim=128, mlp_dim=14336, max_seq_len=131072, rope_theta=500_000.0,
        rope_scaling=RopeScaling(8.0, 1.0, 4.0, 8192)),
    # Qwen/Qwen2-7B: 7,615,616,512 parameters.
    "qwen2_7b": ModelConfig(
        vocab_size=152064, num_layers=28, embed_dim=3584, num_heads=28, num_kv_heads=4,
        head_dim=128, mlp_dim=18944, family="qwen2", max_seq_len=131072,
        rope_theta=1_000_000.0, norm_eps=1e-6, qkv_bias=True),
    # google/gemma-2-9b: 9,241,705,984 parameters.
    "gemma2_9b": ModelConfig(
        vocab_size=256000, num_layers=42, embed_dim=3584, num_heads=16, num_kv_heads=8,
        head_dim=256, mlp_dim=14336, family="gemma2", max_seq_len=8192, norm_eps=1e-6,
        norm_offset=1.0, tie_embeddings=True, activation="gelu_tanh", scale_embeddings=True,
        post_norms=True, query_pre_attn_scalar=256.0, attn_logit_softcap=50.0,
        final_logit_softcap=30.0, sliding_window=4096, attention_pattern=("local", "global")),
}
