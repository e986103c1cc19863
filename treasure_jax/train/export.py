"""A training checkpoint as a Hugging Face directory that transformers, vLLM and SGLang load.

`export_checkpoint(checkpoint, out)` takes a training workdir, its checkpoints/ or one step
directory (checkpoints/N) and writes:

  config.json, model.safetensors (or shards + index)   the weights (`model.hf.save_dir`)
  generation_config.json                               bos/eos/pad ids; eos includes the
                                                       template's end-of-turn token
  tokenizer.json, tokenizer_config.json                the run's tokenizer; `chat_template` is the
                                                       template the run TRAINED with
                                                       (data.template), made marker-aware
                                                       (`data.marker_template`)
  taxonomy.json                                        the run's taxonomy
  marker_list.ebnf, marker_list.regex                  the completion's marker-list grammar
                                                       (`decode.grammar_text`)

A LoRA run's `out` holds the merged weights (W + alpha / r * A B), plus
  adapter/  adapter_config.json, adapter_model.safetensors   the PEFT adapter (`model.lora_io`)
            and the tokenizer files; its base_model_name_or_path is the run's init_from when
            that is an HF directory (and the base was not quantized), else
  base/     config.json, model.safetensors                   the frozen base it was trained on;
            for QLoRA (model.lora.base_bits) the DEQUANTIZED base, the weights the adapters
            were trained against, so that PEFT on base/ gives our logits exactly.

Deliberately left to others: loading the checkpoint (`checkpoint.load_for_inference`), the
HF weight layout (`model.hf`), GGUF tokenizers (`model.gguf_tokenizer`), flags (`cli`).
"""
from __future__ import annotations

import json
import os
import shutil
from typing import Any

import jax

from treasure_jax.train import checkpoint as checkpoint_lib

# Tokenizer files of an HF tokenizer directory copied as they are (the chat template is ours).
_TOKENIZER_SIDE_FILES = ("special_tokens_map.json", "added_tokens.json", "vocab.json",
                         "merges.txt")
_SPECIAL_KEYS = ("bos_token", "eos_token", "pad_token", "unk_token")
# A LoRA run's export: the merged model in `out`, PEFT's adapter in out/adapter (and its base).
ADAPTER_SUBDIR = "adapter"
BASE_SUBDIR = "base"


def export_checkpoint(checkpoint: str, out: str, *, dtype: str | None = None) -> dict[str, Any]:
  """Writes the HF directory `out` (absent or empty) from a training checkpoint; returns a
  summary (step, files, chat template name). `dtype` defaults to the stored parameters'."""
  if os.path.isdir(out) and os.listdir(out):
    raise FileExistsError(f"export: destination {out} is not empty")
  loaded = checkpoint_lib.load_for_inference(checkpoint)
  if loaded.info.get("source") != "checkpoint":
    raise ValueError(f"export: {checkpoint} is a Hugging Face directory already, not a training "
                     "checkpoint; use `treasure-jax convert --from hf`")
  from treasure_jax.model import hf  # pylint: disable=g-import-not-at-top
  from treasure_jax.model import lora_io  # pylint: disable=g-import-not-at-top
  vocabulary, tokenizer_config = _tokenizer(loaded.info, checkpoint)
  template = _chat_template(loaded.info, vocabulary)
  ids = _token_ids(vocabulary, template)
  dtype = dtype or loaded.model_config.param_dtype
  extra = {k: v for k, v in ids.items() if k != "eos_token_id"} | {
      "eos_token_id": ids["eos_token_id"][0]}
  is_lora = loaded.model_config.lora is not None
  files = hf.save_dir(lora_io.merged(loaded.model) if is_lora else loaded.model, out,
                      dtype=dtype, extra_config=extra)
  if is_lora:
    _write_adapter(loaded, out, dtype, extra)
  if jax.process_index() != 0:
    return {"step": loaded.info["step"], "files": files}
  _write_tokenizer(out, loaded.info, vocabulary, tokenizer_config, template, loaded.taxonomy)
  if is_lora:
    _write_tokenizer(os.path.join(out, ADAPTER_SUBDIR), loaded.info, vocabulary,
                     tokenizer_config, template, loaded.taxonomy)
  _write_json(os.path.join(out, "generation_config.json"), ids)
  _write_json(os.path.join(out, "taxonomy.json"), loaded.taxonomy.to_dict())
  from treasure_jax.decode import grammar_text  # pylint: disable=g-import-not-at-top
  for fmt in grammar_text.FORMATS:
    with open(os.path.join(out, grammar_text.FILE_NAMES[fmt]), "w", encoding="utf-8") as f:
      f.write(grammar_text.render(loaded.taxonomy, fmt) + "\n")
  return {"step": loaded.info["step"], "chat_template": template.name,
          "files": sorted(os.listdir(out))}


def _write_adapter(loaded: Any, out: str, dtype: str, extra: dict[str, Any]) -> None:
  """out/adapter (PEFT) and, unless it can point at the HF directory trained on, out/base."""
  from treasure_jax.model import hf  # pylint: disable=g-import-not-at-top
  from treasure_jax.model import lora_io  # pylint: disable=g-import-not-at-top
  base = (loaded.info.get("base") or {}).get("init_from", "")
  quantized = loaded.model_config.lora.base_bits > 0  # Trained on W~, not on init_from's W.
  if not base or base.endswith(".gguf") or quantized:  # PEFT needs the HF base trained on.
    base = os.path.abspath(os.path.join(out, BASE_SUBDIR))
    hf.save_dir(lora_io.base(loaded.model), base, dtype=dtype, extra_config=extra)
  lora_io.save_peft(loaded.model, os.path.join(out, ADAPTER_SUBDIR),
                    base_model_name_or_path=base)


def _tokenizer(info: dict[str, Any], where: str) -> tuple[Any, dict[str, Any]]:
  """The run's vocabulary and the tokenizer_config.json fields to start from."""
  from treasure_jax.data import vocab  # pylint: disable=g-import-not-at-top
  spec = info.get("tokenizer") or {}
  kind, path = spec.get("kind", "hf"), spec.get("path")
  if not path:
    raise ValueError(f"export: {where}: the checkpoint names no tokenizer (meta 'tokenizer.path')")
  if kind == "gguf":
    from treasure_jax.model import gguf, gguf_tokenizer  # pylint: disable=g-import-not-at-top
    config = gguf_tokenizer.tokenizer_config(gguf.read_metadata(path), path)
  elif kind == "hf":
    config_file = os.path.join(path if os.path.isdir(path) else os.path.dirname(path),
                               "tokenizer_config.json")
    config = {"tokenizer_class": "PreTrainedTokenizerFast"}
    if os.path.isfile(config_file):
      with open(config_file, encoding="utf-8") as f:
        config = json.load(f)
  else:
    raise ValueError(f"export: {where}: tokenizer kind {kind!r} ({path}) cannot be exported to a "
                     "Hugging Face directory; only 'hf' and 'gguf' tokenizers can")
  return vocab.make(kind, path), config


def _chat_template(info: dict[str, Any], vocabulary: Any) -> Any:
  from treasure_jax.data import chat_templates  # pylint: disable=g-import-not-at-top
  return chat_templates.get(info.get("chat_template") or "model", vocabulary)


def _token_ids(vocabulary: Any, template: Any) -> dict[str, Any]:
  """bos/pad ids and the eos ids (the tokenizer's EOS and the template's end-of-turn token)."""
  eos = [] if vocabulary.eos_id is None else [int(vocabulary.eos_id)]
  end = list(vocabulary.encode(template.end_of_turn))
  if len(end) == 1 and int(end[0]) not in eos:
    eos.append(int(end[0]))
  if not eos:
    raise ValueError(f"export: the tokenizer has no EOS token and the chat template's end of turn "
                     f"{template.end_of_turn!r} is not one token")
  ids: dict[str, Any] = {"eos_token_id": eos}
  if vocabulary.bos_id is not None:
    ids["bos_token_id"] = int(vocabulary.bos_id)
  pad = vocabulary.special_tokens.get("pad_token") if vocabulary.special_tokens else None
  if pad is not None and vocabulary.tokenizer.token_to_id(pad) is not None:
    ids["pad_token_id"] = int(vocabulary.tokenizer.token_to_id(pad))
  return ids


def _write_tokenizer(out: str, info: dict[str, Any], vocabulary: Any,
                     config: dict[str, Any], template: Any, tax: Any) -> None:
  from treasure_jax.data import marker_template  # pylint: disable=g-import-not-at-top
  with open(os.path.join(out, "tokenizer.json"), "w", encoding="utf-8") as f:
    f.write(vocabulary.tokenizer.to_str())
  path = info["tokenizer"]["path"]
  if info["tokenizer"].get("kind", "hf") == "hf":
    source_dir = path if os.path.isdir(path) else os.path.dirname(path)
    for name in _TOKENIZER_SIDE_FILES:
      if os.path.isfile(os.path.join(source_dir, name)):
        shutil.copyfile(os.path.join(source_dir, name), os.path.join(out, name))
  config = dict(config)
  for key in _SPECIAL_KEYS:  # Tokens the chat template uses ({{ bos_token }}) must be defined.
    if key in template.special_tokens and key not in config:
      config[key] = template.special_tokens[key]
  config["chat_template"] = marker_template.marker_aware(template, tax)
  _write_json(os.path.join(out, "tokenizer_config.json"), config)


def _write_json(path: str, value: Any) -> None:
  with open(path, "w", encoding="utf-8") as f:
    json.dump(value, f, indent=2, ensure_ascii=False)
    f.write("\n")
