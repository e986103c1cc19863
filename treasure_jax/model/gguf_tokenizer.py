"""Rebuilds a Hugging Face tokenizer (tokenizer.json + tokenizer_config.json) from GGUF metadata.

A GGUF file carries its tokenizer as metadata under llama.cpp's key names (`tokenizer.ggml.*`).
This module turns a byte-level BPE one (`tokenizer.ggml.model == "gpt2"`) into a
`tokenizers.Tokenizer` that splits text the way llama.cpp does for the file's
`tokenizer.ggml.pre`, which is also how the original HF tokenizer split it.

One known difference from transformers' own GGUF tokenizer: transformers has no entry for
`pre == "smollm"` and falls back to the plain GPT-2 split, while llama.cpp and the original
SmolLM2 tokenizer first isolate every digit. The two agree except on runs of 2+ spaces before a
digit (`"    42"`: `ĠĠĠĠ|4|2` here and in llama.cpp, `ĠĠĠ|Ġ|4|2` in transformers).

Deliberately left to others: SentencePiece/unigram vocabularies (rejected with an error naming the
field), reading the GGUF file (`gguf.read_metadata`), the model weights (`gguf`, `convert`).
"""
from __future__ import annotations

import json
import os
from typing import Any, Mapping

import tokenizers
from tokenizers import decoders, models, pre_tokenizers, processors

_CONTROL, _USER_DEFINED = 3, 4  # llama.cpp token types (llama_token_type)

_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                 r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
                r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
# tokenizer.ggml.pre -> how llama.cpp (llama-vocab.cpp) splits text before BPE. "gpt2": the GPT-2
# regex built into ByteLevel; "digits": each digit isolated first, then the GPT-2 regex.
_PRE_TOKENIZERS = {
    "default": "gpt2", "gpt2": "gpt2", "mpt": "gpt2", "olmo": "gpt2",
    "smollm": "digits", "starcoder": "digits", "refact": "digits", "codeshell": "digits",
    "llama-bpe": _LLAMA3_SPLIT, "llama3": _LLAMA3_SPLIT, "llama-v3": _LLAMA3_SPLIT,
    "smaug-bpe": _LLAMA3_SPLIT, "falcon3": _LLAMA3_SPLIT, "dbrx": _LLAMA3_SPLIT,
    "qwen2": _QWEN2_SPLIT, "deepseek-r1-qwen": _QWEN2_SPLIT,
}
_SPECIAL_IDS = {"bos_token": "bos_token_id", "eos_token": "eos_token_id",
                "unk_token": "unknown_token_id", "pad_token": "padding_token_id"}


def build_tokenizer(metadata: Mapping[str, Any], source: str = "<gguf>") -> tokenizers.Tokenizer:
  """The `tokenizers.Tokenizer` a GGUF file's `tokenizer.ggml.*` metadata describes."""
  kind = metadata.get("tokenizer.ggml.model")
  if kind != "gpt2":
    raise ValueError(f"{source}: tokenizer.ggml.model={kind!r} is not supported; only byte-level "
                     "BPE ('gpt2') tokenizers can be extracted")
  raw_tokens = _require(metadata, "tokenizer.ggml.tokens", source)
  tokens = _byte_level_spellings(raw_tokens)
  types = metadata.get("tokenizer.ggml.token_type") or [1] * len(tokens)
  if len(types) != len(tokens):
    raise ValueError(f"{source}: tokenizer.ggml.token_type has {len(types)} entries for "
                     f"{len(tokens)} tokens")
  merges = []
  for i, merge in enumerate(_require(metadata, "tokenizer.ggml.merges", source)):
    pair = tuple(merge.split(" "))
    if len(pair) != 2:
      raise ValueError(f"{source}: tokenizer.ggml.merges[{i}]={merge!r} is not two tokens")
    merges.append(pair)
  vocab = {token: i for i, token in enumerate(tokens)}
  if len(vocab) != len(tokens):
    raise ValueError(f"{source}: tokenizer.ggml.tokens has duplicate tokens")
  tok = tokenizers.Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False))
  tok.pre_tokenizer = _pre_tokenizer(metadata.get("tokenizer.ggml.pre", "default"), source)
  tok.decoder = decoders.ByteLevel()
  # Control (<|im_end|>) and user-defined (<think>) tokens are matched whole, never split by BPE.
  # One whose stored spelling leaves the byte alphabet is a llama.cpp mislabel: skipped, as
  # transformers does, since its text would not be the token's bytes.
  alphabet = set(bytes_to_unicode().values())
  added = [(t, ty) for t, ty in zip(raw_tokens, types) if set(t) <= alphabet]
  tok.add_special_tokens([tokenizers.AddedToken(t, normalized=False, special=True)
                          for t, ty in added if ty == _CONTROL])
  tok.add_tokens([tokenizers.AddedToken(t, normalized=False, special=False)
                  for t, ty in added if ty == _USER_DEFINED])
  tok.post_processor = _post_processor(metadata, tokens)
  return tok


def tokenizer_config(metadata: Mapping[str, Any], source: str = "<gguf>") -> dict[str, Any]:
  """The `tokenizer_config.json` dict: special tokens, BOS/EOS flags and the chat template."""
  tokens = _require(metadata, "tokenizer.ggml.tokens", source)
  config: dict[str, Any] = {
      # Loads tokenizer.json as is; "GPT2Tokenizer" would replace our pre-tokenizer with GPT-2's.
      "tokenizer_class": "PreTrainedTokenizerFast",
      "add_bos_token": bool(metadata.get("tokenizer.ggml.add_bos_token", False)),
      "add_eos_token": bool(metadata.get("tokenizer.ggml.add_eos_token", False)),
      "clean_up_tokenization_spaces": False,
  }
  for name, field in _SPECIAL_IDS.items():
    token_id = metadata.get(f"tokenizer.ggml.{field}")
    if token_id is not None:
      if not 0 <= token_id < len(tokens):
        raise ValueError(f"{source}: tokenizer.ggml.{field}={token_id} is out of the vocabulary")
      config[name] = tokens[token_id]
  context = metadata.get(f"{metadata.get('general.architecture')}.context_length")
  if context is not None:
    config["model_max_length"] = context
  if "tokenizer.chat_template" in metadata:
    config["chat_template"] = metadata["tokenizer.chat_template"]
  return config


def save(metadata: Mapping[str, Any], directory: str, source: str = "<gguf>") -> None:
  """Writes tokenizer.json and tokenizer_config.json for this metadata into `directory`."""
  tok = build_tokenizer(metadata, source)
  config = tokenizer_config(metadata, source)
  os.makedirs(directory, exist_ok=True)
  tok.save(os.path.join(directory, "tokenizer.json"))
  with open(os.path.join(directory, "tokenizer_config.json"), "w", encoding="utf-8") as f:
    json.dump(config, f, indent=2, ensure_ascii=False)


def _pre_tokenizer(pre: str, source: str) -> pre_tokenizers.PreTokenizer:
  if pre not in _PRE_TOKENIZERS:
    raise ValueError(f"{source}: tokenizer.ggml.pre={pre!r} is not supported; known: "
                     f"{', '.join(sorted(_PRE_TOKENIZERS))}")
  split = _PRE_TOKENIZERS[pre]
  if split == "gpt2":
    return pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
  if split == "digits":
    return pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
  return pre_tokenizers.Sequence([
      pre_tokenizers.Split(tokenizers.Regex(split), behavior="isolated"),
      pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])


def _post_processor(metadata: Mapping[str, Any], tokens: list[str]) -> processors.PostProcessor:
  """Adds BOS/EOS around each sequence exactly when the file's add_bos/add_eos flags say so."""
  single, pair, specials = ["$A:0"], ["$A:0", "$B:1"], []
  for flag, field in (("add_bos_token", "bos_token_id"), ("add_eos_token", "eos_token_id")):
    token_id = metadata.get(f"tokenizer.ggml.{field}")
    if metadata.get(f"tokenizer.ggml.{flag}") and token_id is not None:
      token = tokens[token_id]
      specials.append((token, token_id))
      if flag == "add_bos_token":
        single, pair = [token] + single, [token] + pair[:1] + [token] + pair[1:]
      else:
        single, pair = single + [token], pair[:1] + [token] + pair[1:] + [token]
  return processors.TemplateProcessing(single=single, pair=pair, special_tokens=specials)


def _byte_level_spellings(tokens: list[str]) -> list[str]:
  """Tokens as the byte-level alphabet spells them; a few files store some as raw text."""
  mapping = bytes_to_unicode()
  alphabet = set(mapping.values())
  return [t if set(t) <= alphabet else "".join(mapping[b] for b in t.encode("utf-8"))
          for t in tokens]


def bytes_to_unicode() -> dict[int, str]:
  """GPT-2's reversible byte -> printable character map used by byte-level BPE vocabularies."""
  printable = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
               + list(range(ord("®"), ord("ÿ") + 1)))
  chars, extra = list(printable), 0
  for b in range(256):
    if b not in printable:
      printable.append(b)
      chars.append(256 + extra)
      extra += 1
  return dict(zip(printable, map(chr, chars)))


def _require(metadata: Mapping[str, Any], name: str, source: str) -> Any:
  if name not in metadata:
    raise ValueError(f"{source}: required tokenizer field {name!r} is missing")
  return metadata[name]
