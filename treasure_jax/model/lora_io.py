"""LoRA models as Hugging Face files: a PEFT adapter directory, and the merged model.

  lora_io.save_peft(model, out, base_model_name_or_path=base)  # adapter_config.json +
                                                               # adapter_model.safetensors
  hf.save_dir(lora_io.merged(model), out)  # an ordinary HF checkpoint, W + alpha / r * A B

PEFT's names and layout: base_model.model.model.layers.{i}.self_attn.q_proj.lora_A.weight
[r, in] and ...lora_B.weight [out, r] (torch Linear layout: our A [in, r] and B [r, out]
transposed; `in`/`out` flatten heads x head_dim in HF's order, as `hf._entries` does for the
kernels); PEFT's scaling lora_alpha / r is ours. Deliberately left to others: the adapters'
math (`lora`), the base weights (`hf`), tokenizer files and the checkpoint (`train.export`).
"""
from __future__ import annotations

import json
import pathlib
from typing import Any, Iterator

import jax
import numpy as np
import safetensors.numpy
from flax import nnx

from treasure_jax.model import hf
from treasure_jax.model import lora
from treasure_jax.model import transformer

# Our module names -> HF's, for the block's two sub-modules.
_HF_PARENT = {"attn": "self_attn", "mlp": "mlp"}
_PEFT_PREFIX = "base_model.model.model.layers"


def peft_tensors(model: transformer.Transformer) -> Iterator[tuple[str, np.ndarray]]:
  """(PEFT name, [r, in] or [out, r] float32 host array) of every adapter; a scanned stack is
  gathered to the host once and sliced there, layer by layer."""
  theirs = {"lora_a": "lora_A", "lora_b": "lora_B"}
  for path, value in nnx.to_flat_state(nnx.state(model, lora.ADAPTERS)):
    *head, parent, proj, _, ours = path  # ("layers", [i,] parent, proj, "lora", "lora_a")
    x = hf.host_array(value[...])
    layers = enumerate(x) if model.cfg.scan_layers else [(head[1], x)]
    for i, layer in layers:
      name = f"{_PEFT_PREFIX}.{i}.{_HF_PARENT[parent]}.{proj}.{theirs[ours]}.weight"
      yield name, np.ascontiguousarray(layer.T.astype(np.float32))


def adapter_config(model: transformer.Transformer, base_model_name_or_path: str
                   ) -> dict[str, Any]:
  """adapter_config.json of PEFT's LoraConfig for `model.cfg.lora`."""
  cfg = model.cfg.lora
  return {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": cfg.rank,
          "lora_alpha": cfg.alpha, "lora_dropout": cfg.dropout,
          "target_modules": sorted(cfg.targeted()), "bias": "none", "fan_in_fan_out": False,
          "use_rslora": False, "use_dora": False, "init_lora_weights": True,
          "inference_mode": True, "modules_to_save": None,
          "base_model_name_or_path": base_model_name_or_path}


def save_peft(model: transformer.Transformer, path: str | pathlib.Path, *,
              base_model_name_or_path: str) -> list[str]:
  """Writes the PEFT adapter directory `path`; every process calls it, process 0 writes."""
  if model.cfg.lora is None:
    raise ValueError("save_peft: the model has no LoRA adapters (model.lora is None)")
  tensors = dict(peft_tensors(model))
  if jax.process_index() == 0:
    path = pathlib.Path(path)
    path.mkdir(parents=True, exist_ok=True)
    config = adapter_config(model, base_model_name_or_path)
    (path / "adapter_config.json").write_text(json.dumps(config, indent=2) + "\n")
    safetensors.numpy.save_file(tensors, str(path / "adapter_model.safetensors"),
                                metadata={"format": "pt"})
  return ["adapter_config.json", "adapter_model.safetensors"]


def _without_adapters(model: transformer.Transformer) -> nnx.GraphDef:
  """The graph of `model`'s architecture with model.lora = None (same sharding plan)."""
  return nnx.graphdef(transformer.abstract_model(model.cfg.replace(lora=None), model.plan))


def merged(model: transformer.Transformer) -> transformer.Transformer:
  """The same function without adapters: every adapted kernel becomes W + alpha / r * A B."""
  return nnx.merge(_without_adapters(model),
                   lora.merged_kernels(nnx.state(model, nnx.Param), model.cfg))


def base(model: transformer.Transformer) -> transformer.Transformer:
  """The frozen base alone (the adapters dropped; a quantized base dequantized)."""
  return nnx.merge(_without_adapters(model),
                   lora.merged_kernels(nnx.state(model, nnx.Param), model.cfg, adapters=False))
