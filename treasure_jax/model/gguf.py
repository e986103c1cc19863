"""Reads a llama.cpp GGUF checkpoint as a Hugging Face config dict and HF-named float32 tensors.

`load(path)` parses the header only; `GGUFCheckpoint.get_tensor(hf_name)` dequantizes one tensor
at a time from the memory-mapped file, in the layout `transformers` uses (`(out, in)` for linear
weights), with llama.cpp's conversion-time edits undone: the rope row permutation of llama q/k
projections and the `+1` folded into Gemma-2 norm weights. These inverses are those of
transformers' own GGUF loader (`transformers/modeling_gguf_pytorch_utils.py`), which the tests
compare against. Architectures: llama, qwen2, gemma2; no rope scaling, no partial rotary.

Deliberately left to others: the tokenizer (`gguf_tokenizer`), writing HF directories (`convert`),
building the JAX model from these tensors (`hf`).
"""
from __future__ import annotations

import dataclasses
import os
import re
import struct
from typing import Any, Mapping

import gguf as gguf_lib
import numpy as np

SUPPORTED_ARCHITECTURES = ("llama", "qwen2", "gemma2")

# GGUF per-layer tensor name (after `blk.{i}.`) -> HF name (after `model.layers.{i}.`).
_LAYER_NAMES = {
    "attn_norm": "input_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
# Gemma-2 has four norms per layer; llama.cpp calls the pre-MLP one `ffn_norm`.
_GEMMA2_LAYER_NAMES = _LAYER_NAMES | {
    "post_attention_norm": "post_attention_layernorm",
    "ffn_norm": "pre_feedforward_layernorm",
    "post_ffw_norm": "post_feedforward_layernorm",
}
_GLOBAL_NAMES = {
    "token_embd": "model.embed_tokens",
    "output_norm": "model.norm",
    "output": "lm_head",
}
_HF_ARCHITECTURES = {
    "llama": "LlamaForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "gemma2": "Gemma2ForCausalLM",
}
_BLOCK = re.compile(r"blk\.(\d+)\.(\w+)\.(weight|bias)")
_REQUIRED = object()


@dataclasses.dataclass(frozen=True)
class GGUFCheckpoint:
  """A parsed GGUF file: metadata, HF config and lazily dequantized HF tensors.

  `names` lists every HF tensor name `get_tensor` serves, in file order; `shapes` their HF shapes.
  """
  path: str
  architecture: str
  metadata: Mapping[str, Any]
  config: Mapping[str, Any]
  names: tuple[str, ...]
  shapes: Mapping[str, tuple[int, ...]]
  _reader: gguf_lib.GGUFReader = dataclasses.field(repr=False)
  _index: Mapping[str, int] = dataclasses.field(repr=False)  # HF name -> reader.tensors index

  def raw(self, name: str) -> Any:
    """The file's own record (`gguf.ReaderTensor`: GGUF name, type, packed data) of HF `name`."""
    if name not in self._index:
      raise KeyError(f"{self.path}: no tensor {name!r}; it has {len(self.names)} tensors, "
                     f"e.g. {self.names[:3]}")
    return self._reader.tensors[self._index[name]]

  def get_tensor(self, name: str) -> np.ndarray:
    """The HF tensor `name` as a fresh float32 array in HF layout."""
    tensor = self.raw(name)
    x = _dequantize(tensor, self.path).reshape(self.shapes[name])
    x = _undo_llama_cpp_edits(x, tensor.name, self.architecture, self.config)
    return np.ascontiguousarray(x, dtype=np.float32)


def load(path: str | os.PathLike[str]) -> GGUFCheckpoint:
  """Parses the header of the GGUF file at `path` and checks its tensors against its config."""
  path = os.fspath(path)
  reader = _open(path)
  metadata = {name: _field_value(field, name, path) for name, field in reader.fields.items()}
  tensor_names = tuple(t.name for t in reader.tensors)
  config = hf_config(metadata, tensor_names, source=path)
  shapes = hf_shapes(config)
  index = {hf_name(n, config["model_type"], source=path): i for i, n in enumerate(tensor_names)}
  missing = [n for n in shapes if n not in index]
  if missing:
    raise ValueError(f"{path}: missing tensors for a {config['model_type']} model: {missing[:5]}"
                     f"{' ...' if len(missing) > 5 else ''}")
  extra = [tensor_names[i] for n, i in index.items() if n not in shapes]
  if extra:
    raise ValueError(f"{path}: tensors unexpected for this config: {extra[:5]}")
  for name, i in index.items():
    # GGUF lists dimensions innermost first; HF/numpy order is the reverse.
    shape = tuple(int(n) for n in reversed(reader.tensors[i].shape))
    if shape != shapes[name]:
      raise ValueError(f"{path}: tensor {tensor_names[i]!r} (HF {name!r}) has shape {shape}, but "
                       f"the metadata implies {shapes[name]}")
  return GGUFCheckpoint(
      path=path, architecture=config["model_type"], metadata=metadata, config=config,
      names=tuple(index), shapes=shapes, _reader=reader, _index=index)


def read_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
  """All metadata key/values of a GGUF file as Python values (arrays as lists)."""
  path = os.fspath(path)
  reader = _open(path)
  return {name: _field_value(field, name, path) for name, field in reader.fields.items()}


def hf_name(gguf_name: str, architecture: str, source: str = "<gguf>") -> str:
  """The HF tensor name for llama.cpp tensor `gguf_name` (e.g. `blk.0.attn_q.weight`)."""
  layer_names = _GEMMA2_LAYER_NAMES if architecture == "gemma2" else _LAYER_NAMES
  if m := _BLOCK.fullmatch(gguf_name):
    layer, kind, suffix = m.groups()
    if kind in layer_names:
      return f"model.layers.{layer}.{layer_names[kind]}.{suffix}"
  else:
    stem, _, suffix = gguf_name.rpartition(".")
    if stem in _GLOBAL_NAMES and suffix in ("weight", "bias"):
      return f"{_GLOBAL_NAMES[stem]}.{suffix}"
  raise ValueError(f"{source}: tensor {gguf_name!r} has no Hugging Face {architecture} counterpart "
                   "(unsupported feature of this checkpoint)")


def hf_config(metadata: Mapping[str, Any], tensor_names: tuple[str, ...],
              source: str = "<gguf>") -> dict[str, Any]:
  """An HF `config.json` dict from GGUF metadata (llama.cpp key names) and the tensor names."""
  arch = _get(metadata, "general.architecture", source)
  if arch not in SUPPORTED_ARCHITECTURES:
    raise ValueError(f"{source}: general.architecture={arch!r} is not supported; supported: "
                     f"{', '.join(SUPPORTED_ARCHITECTURES)}")

  def key(name: str, default: Any = _REQUIRED) -> Any:
    return _get(metadata, f"{arch}.{name}", source, default)

  for name in ("rope.scaling.type", "rope.scaling.factor"):
    value = key(name, None)
    if value not in (None, "none", 1.0):
      raise ValueError(f"{source}: {arch}.{name}={value!r}: rope scaling is not supported")
  if "rope_freqs.weight" in tensor_names:
    raise ValueError(f"{source}: tensor 'rope_freqs.weight' (llama-3 rope scaling) is not "
                     "supported")
  hidden, heads = key("embedding_length"), key("attention.head_count")
  head_dim = key("attention.key_length", None) or hidden // heads
  tokens = metadata.get("tokenizer.ggml.tokens")
  config = {
      "model_type": arch,
      "architectures": [_HF_ARCHITECTURES[arch]],
      "hidden_size": hidden,
      "intermediate_size": key("feed_forward_length"),
      "num_hidden_layers": key("block_count"),
      "num_attention_heads": heads,
      "num_key_value_heads": key("attention.head_count_kv", heads),
      "head_dim": head_dim,
      # GGUF stores float32; its shortest decimal (1e-05, not 9.99999974e-06) is what the
      # original config.json said, so configs compare equal to the file's own model.
      "rms_norm_eps": _shortest_float32(key("attention.layer_norm_rms_epsilon")),
      # llama.cpp's default when a file states no base frequency.
      "rope_theta": _shortest_float32(key("rope.freq_base", 10000.0)),
      "max_position_embeddings": key("context_length"),
      "vocab_size": key("vocab_size", len(tokens) if tokens is not None else _REQUIRED),
      # llama.cpp writes `output.weight` only when it differs from the embedding.
      "tie_word_embeddings": "output.weight" not in tensor_names,
  }
  for field, hf_key in (("bos_token_id", "bos_token_id"), ("eos_token_id", "eos_token_id"),
                        ("padding_token_id", "pad_token_id")):
    if f"tokenizer.ggml.{field}" in metadata:
      config[hf_key] = metadata[f"tokenizer.ggml.{field}"]
  config.update(_ARCH_CONFIG[arch](metadata, tensor_names, config, source))
  return config


def _shortest_float32(value: float) -> float:
  return float(str(np.float32(value)))


def _llama_config(metadata, tensor_names, config, source) -> dict[str, Any]:
  rope_dim = _get(metadata, "llama.rope.dimension_count", source, config["head_dim"])
  if rope_dim != config["head_dim"]:
    raise ValueError(f"{source}: llama.rope.dimension_count={rope_dim} != head_dim "
                     f"{config['head_dim']}: partial rotary embeddings are not supported")
  return {"hidden_act": "silu", "attention_bias": "blk.0.attn_q.bias" in tensor_names,
          "mlp_bias": False}


def _qwen2_config(metadata, tensor_names, config, source) -> dict[str, Any]:
  del metadata, tensor_names, config, source
  return {"hidden_act": "silu", "use_sliding_window": False}


def _gemma2_config(metadata, tensor_names, config, source) -> dict[str, Any]:
  del tensor_names
  # llama.cpp scales queries by 1/sqrt(head_dim), except for the 46-layer 27B model, which uses
  # 1/sqrt(hidden/heads); HF expresses both as query_pre_attn_scalar.
  scalar = config["head_dim"]
  if config["num_hidden_layers"] == 46:
    scalar = config["hidden_size"] // config["num_attention_heads"]
  # Defaults are llama.cpp's when the file omits a key.
  return {
      "hidden_activation": "gelu_pytorch_tanh",
      "query_pre_attn_scalar": scalar,
      "sliding_window": _get(metadata, "gemma2.attention.sliding_window", source, 4096),
      "attn_logit_softcapping": _get(metadata, "gemma2.attn_logit_softcapping", source, 50.0),
      "final_logit_softcapping": _get(metadata, "gemma2.final_logit_softcapping", source, 30.0),
  }


_ARCH_CONFIG = {"llama": _llama_config, "qwen2": _qwen2_config, "gemma2": _gemma2_config}


def hf_shapes(config: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
  """Every HF tensor name of a llama/qwen2/gemma2 config and its shape, in HF layout."""
  d, f, v = config["hidden_size"], config["intermediate_size"], config["vocab_size"]
  nh = config["num_attention_heads"] * config["head_dim"]
  kh = config["num_key_value_heads"] * config["head_dim"]
  arch = config["model_type"]
  shapes = {"model.embed_tokens.weight": (v, d), "model.norm.weight": (d,)}
  if not config["tie_word_embeddings"]:
    shapes["lm_head.weight"] = (v, d)
  layer = {
      "input_layernorm.weight": (d,), "post_attention_layernorm.weight": (d,),
      "self_attn.q_proj.weight": (nh, d), "self_attn.k_proj.weight": (kh, d),
      "self_attn.v_proj.weight": (kh, d), "self_attn.o_proj.weight": (d, nh),
      "mlp.gate_proj.weight": (f, d), "mlp.up_proj.weight": (f, d), "mlp.down_proj.weight": (d, f),
  }
  if arch == "qwen2" or config.get("attention_bias"):
    layer |= {"self_attn.q_proj.bias": (nh,), "self_attn.k_proj.bias": (kh,),
              "self_attn.v_proj.bias": (kh,)}
  if arch == "gemma2":
    layer |= {"pre_feedforward_layernorm.weight": (d,), "post_feedforward_layernorm.weight": (d,)}
  for i in range(config["num_hidden_layers"]):
    shapes |= {f"model.layers.{i}.{name}": shape for name, shape in layer.items()}
  return shapes


def _undo_llama_cpp_edits(x: np.ndarray, gguf_name: str, arch: str,
                          config: Mapping[str, Any]) -> np.ndarray:
  """Inverts what llama.cpp's convert_hf_to_gguf.py did to this tensor beyond renaming."""
  if arch == "llama" and (".attn_q." in gguf_name or ".attn_k." in gguf_name):
    heads = config["num_attention_heads" if ".attn_q." in gguf_name else "num_key_value_heads"]
    # llama.cpp interleaves each head's rotary halves (rows [h, 2, H/2] -> [h, H/2, 2]) for its
    # GPT-J style rope; HF's rotate_half wants them back as two contiguous halves.
    w = x.reshape(heads, x.shape[0] // heads // 2, 2, *x.shape[1:])
    return w.swapaxes(1, 2).reshape(x.shape)
  if arch == "gemma2" and gguf_name.endswith("norm.weight"):
    # llama.cpp stores Gemma's RMSNorm scale as (1 + w); HF keeps w and adds the 1 at run time.
    return x - 1.0
  return x


def _dequantize(tensor: Any, path: str) -> np.ndarray:
  qtype = tensor.tensor_type
  try:
    x = gguf_lib.quants.dequantize(tensor.data, qtype)
  except NotImplementedError as e:
    raise ValueError(f"{path}: tensor {tensor.name!r} has unsupported type {qtype.name}") from e
  if x.dtype.kind != "f":
    raise ValueError(f"{path}: tensor {tensor.name!r} has integer type {qtype.name}, not weights")
  return x.astype(np.float32)


def _open(path: str) -> gguf_lib.GGUFReader:
  if not os.path.isfile(path):
    raise FileNotFoundError(f"no GGUF file at {path}")
  try:
    return gguf_lib.GGUFReader(path)
  except (ValueError, KeyError, IndexError, TypeError, OverflowError, struct.error,
          UnicodeDecodeError) as e:
    raise ValueError(f"{path}: not a readable GGUF file ({type(e).__name__}: {e}); "
                     "the file is truncated, corrupt or not GGUF") from e


def _field_value(field: Any, name: str, path: str) -> Any:
  try:
    value = field.contents()
  except (ValueError, IndexError, UnicodeDecodeError) as e:
    raise ValueError(f"{path}: metadata field {name!r} is corrupt ({e})") from e
  return value.item() if isinstance(value, np.generic) else value


def _get(metadata: Mapping[str, Any], name: str, source: str, default: Any = _REQUIRED) -> Any:
  if name in metadata:
    return metadata[name]
  if default is _REQUIRED:
    raise ValueError(f"{source}: required metadata field {name!r} is missing")
  return default
