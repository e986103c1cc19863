"""Hugging Face config.json ↔ ModelConfig for model_type llama, mistral, qwen2 and gemma2.

Reads both the transformers v5 layout (`rope_parameters`, `layer_types`) and the older one
(top-level `rope_theta`, `rope_scaling`); writes both so v4 and v5 readers agree. Anything the
model cannot represent (other RoPE types, MLP biases, ...) is an error naming the field.
Tensors are `hf.py`'s business; `hf.config_from_hf` / `hf.config_to_hf` are the public names.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from treasure_jax.model import config as config_lib

_ARCHITECTURES = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM",
                  "qwen2": "Qwen2ForCausalLM", "gemma2": "Gemma2ForCausalLM"}
_ACTIVATIONS = {"silu": "silu", "gelu_pytorch_tanh": "gelu_tanh", "gelu_tanh": "gelu_tanh"}
_MISSING = object()


def _field(hf: Mapping[str, Any], key: str, default: Any = _MISSING) -> Any:
  value = hf.get(key, default)
  if value is _MISSING or value is None and default is _MISSING:
    raise ValueError(f"config.json: missing field {key!r} (model_type={hf.get('model_type')!r})")
  return value


def _rope_from_hf(hf: Mapping[str, Any]) -> tuple[float, config_lib.RopeScaling | None]:
  params = dict(hf.get("rope_parameters") or {})
  if params and all(isinstance(v, Mapping) for v in params.values()):  # Per layer type.
    distinct = {tuple(sorted(v.items())) for v in params.values()}
    if len(distinct) != 1:
      raise ValueError(f"config.json: rope_parameters differ between layer types: {params}")
    params = dict(next(iter(params.values())))
  theta = float(params.get("rope_theta", hf.get("rope_theta", 10_000.0)))
  spec = dict(hf.get("rope_scaling") or params)
  rope_type = spec.get("rope_type", spec.get("type", "default"))
  if rope_type == "default":
    return theta, None
  if rope_type != "llama3":
    raise ValueError(f"config.json: rope type {rope_type!r} is not supported (default, llama3)")
  return theta, config_lib.RopeScaling(
      factor=float(_field(spec, "factor")), low_freq_factor=float(_field(spec, "low_freq_factor")),
      high_freq_factor=float(_field(spec, "high_freq_factor")),
      original_max_len=int(_field(spec, "original_max_position_embeddings")))


def _pattern_from_hf(hf: Mapping[str, Any], family: str, num_layers: int
                     ) -> tuple[int | None, tuple[str, ...]]:
  """(sliding_window, attention_pattern) with the pattern shortened to its period."""
  window = hf.get("sliding_window")
  if family == "qwen2" and not hf.get("use_sliding_window", False):
    window = None
  if family == "llama" or not window:
    return None, ("global",)
  if hf.get("layer_types"):
    kinds = ["local" if t == "sliding_attention" else "global" for t in hf["layer_types"]]
  elif family == "gemma2":
    kinds = ["local" if i % 2 == 0 else "global" for i in range(num_layers)]
  elif family == "qwen2":
    first = int(hf.get("max_window_layers", num_layers))
    kinds = ["local" if i >= first else "global" for i in range(num_layers)]
  else:
    kinds = ["local"] * num_layers
  if len(kinds) != num_layers:
    raise ValueError(f"config.json: layer_types has {len(kinds)} entries for {num_layers} layers")
  period = next(p for p in range(1, num_layers + 1)
                if all(kinds[i] == kinds[i % p] for i in range(num_layers)))
  pattern = tuple(kinds[:period])
  return (int(window) if "local" in pattern else None), pattern


def config_from_hf(hf: Mapping[str, Any], **overrides: Any) -> config_lib.ModelConfig:
  """ModelConfig of a HF config.json dict; `overrides` set non-architecture fields (dtype, ...)."""
  family = hf.get("model_type")
  if family not in config_lib.FAMILIES:
    raise ValueError(f"config.json: model_type={family!r} is not supported; supported: "
                     f"{', '.join(config_lib.FAMILIES)}")
  if hf.get("mlp_bias"):
    raise ValueError("config.json: mlp_bias=true is not supported")
  d, n = int(_field(hf, "hidden_size")), int(_field(hf, "num_attention_heads"))
  num_layers = int(_field(hf, "num_hidden_layers"))
  act_key = "hidden_activation" if family == "gemma2" and hf.get("hidden_activation") else (
      "hidden_act")
  act = _field(hf, act_key, "gelu_pytorch_tanh" if family == "gemma2" else "silu")
  if act not in _ACTIVATIONS:
    raise ValueError(f"config.json: {act_key}={act!r} is not supported; supported: "
                     f"{', '.join(_ACTIVATIONS)}")
  theta, scaling = _rope_from_hf(hf)
  window, pattern = _pattern_from_hf(hf, family, num_layers)
  attention_bias = bool(hf.get("attention_bias", False))
  fields: dict[str, Any] = dict(
      vocab_size=int(_field(hf, "vocab_size")), num_layers=num_layers, embed_dim=d,
      num_heads=n, num_kv_heads=int(hf.get("num_key_value_heads") or n),
      head_dim=int(hf.get("head_dim") or d // n), mlp_dim=int(_field(hf, "intermediate_size")),
      family=family, max_seq_len=int(hf.get("max_position_embeddings", 8192)),
      rope_theta=theta, rope_scaling=scaling,
      norm_eps=float(hf.get("rms_norm_eps", 1e-6)), activation=_ACTIVATIONS[act],
      tie_embeddings=bool(hf.get("tie_word_embeddings", family == "gemma2")),
      qkv_bias=family == "qwen2" or attention_bias, out_bias=attention_bias and family != "qwen2",
      sliding_window=window, attention_pattern=pattern)
  if family == "gemma2":
    fields.update(
        norm_offset=1.0, scale_embeddings=True, post_norms=True,
        query_pre_attn_scalar=float(_field(hf, "query_pre_attn_scalar")),
        attn_logit_softcap=_float_or_none(hf.get("attn_logit_softcapping")),
        final_logit_softcap=_float_or_none(hf.get("final_logit_softcapping")))
  architecture = set(fields)
  clash = sorted(architecture & set(overrides))
  if clash:
    raise ValueError(f"config_from_hf: {clash} come from config.json and cannot be overridden")
  return config_lib.ModelConfig(**fields, **overrides)


def _float_or_none(x: Any) -> float | None:
  return None if x is None else float(x)


def config_to_hf(cfg: config_lib.ModelConfig) -> dict[str, Any]:
  """The config.json dict of `cfg`; an error naming the field when HF cannot express it."""
  family = cfg.family
  rope = {"rope_type": "default", "rope_theta": cfg.rope_theta}
  rope_scaling = None
  if cfg.rope_scaling is not None:
    s = cfg.rope_scaling
    rope_scaling = {"rope_type": "llama3", "factor": s.factor, "low_freq_factor": s.low_freq_factor,
                    "high_freq_factor": s.high_freq_factor,
                    "original_max_position_embeddings": s.original_max_len}
    rope = {**rope_scaling, "rope_theta": cfg.rope_theta}
  layer_types = ["sliding_attention" if cfg.window(i) else "full_attention"
                 for i in range(cfg.num_layers)]
  hf: dict[str, Any] = {
      "architectures": [_ARCHITECTURES[family]], "model_type": family,
      "vocab_size": cfg.vocab_size, "hidden_size": cfg.embed_dim,
      "intermediate_size": cfg.mlp_dim, "num_hidden_layers": cfg.num_layers,
      "num_attention_heads": cfg.num_heads, "num_key_value_heads": cfg.num_kv_heads,
      "head_dim": cfg.head_dim, "max_position_embeddings": cfg.max_seq_len,
      "rms_norm_eps": cfg.norm_eps, "tie_word_embeddings": cfg.tie_embeddings,
      "rope_theta": cfg.rope_theta, "rope_scaling": rope_scaling, "rope_parameters": rope,
      "hidden_act": {"silu": "silu", "gelu_tanh": "gelu_pytorch_tanh"}[cfg.activation],
      "torch_dtype": cfg.param_dtype, "dtype": cfg.param_dtype,
  }
  if family == "llama":
    hf.update(attention_bias=cfg.qkv_bias, mlp_bias=False)
  elif family == "mistral":
    hf.update(sliding_window=cfg.sliding_window if "local" in cfg.attention_pattern else None)
  elif family == "qwen2":
    local = "local" in cfg.attention_pattern
    first_local = layer_types.index("sliding_attention") if local else cfg.num_layers
    hf.update(use_sliding_window=local, sliding_window=cfg.sliding_window if local else None,
              max_window_layers=first_local, layer_types=layer_types)
  else:
    scalar = cfg.query_pre_attn_scalar  # transformers' strict config wants an int here.
    hf.update(hidden_activation=hf["hidden_act"],
              query_pre_attn_scalar=int(scalar) if float(scalar).is_integer() else scalar,
              attn_logit_softcapping=cfg.attn_logit_softcap,
              final_logit_softcapping=cfg.final_logit_softcap,
              sliding_window=cfg.sliding_window, layer_types=layer_types)
  _check_round_trip(cfg, hf)
  return hf


def _check_round_trip(cfg: config_lib.ModelConfig, hf: Mapping[str, Any]) -> None:
  back = config_from_hf(hf, **{k: getattr(cfg, k) for k in config_lib.EXECUTION_FIELDS})
  for f in dataclasses.fields(cfg):
    ours, theirs = getattr(cfg, f.name), getattr(back, f.name)
    if f.name in ("attention_pattern", "sliding_window"):  # Per layer: ("local",) == 2x"local".
      ours = tuple(cfg.window(i) for i in range(cfg.num_layers))
      theirs = tuple(back.window(i) for i in range(cfg.num_layers))
    if ours != theirs:
      raise ValueError(f"ModelConfig.{f.name}={getattr(cfg, f.name)!r} cannot be expressed as "
                       f"Hugging Face model_type {cfg.family!r} (it would read back as "
                       f"{getattr(back, f.name)!r})")
