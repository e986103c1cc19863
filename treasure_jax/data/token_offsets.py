"""Token ids with each token's start character, without TensorFlow or seqio.

`encode_with_offsets` is what the chat tokenizer in `preprocessors` uses to put loss weights
exactly on the completion; it serves both input pipelines (seqio and Grain). `HfTokenizer` is
the TF-free stand-in for `vocab.HfTokenizerVocabulary` that the Grain pipeline tokenizes with
(same `tokenizers` object, so the same ids). SentencePiece and the seqio vocabulary classes stay
in `vocab`, which imports TensorFlow.
"""
from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import tokenizers


class HfTokenizer:
  """A Hugging Face `tokenizer.json` (text) with its special tokens and chat template."""

  def __init__(self, tokenizer_json: str, *, special_tokens: Mapping[str, str] | None = None,
               chat_template: str | None = None, name: str = "hf"):
    self.tokenizer = tokenizers.Tokenizer.from_str(tokenizer_json)
    self.special_tokens = dict(special_tokens or {})
    self.chat_template, self.name = chat_template, name
    eos = self.special_tokens.get("eos_token")
    self.eos_id = None if eos is None else self.tokenizer.token_to_id(eos)
    if eos is not None and self.eos_id is None:
      raise ValueError(f"{name}: eos_token {eos!r} is not in the tokenizer's vocabulary")

  @property
  def vocab_size(self) -> int:
    return self.tokenizer.get_vocab_size(with_added_tokens=True)

  def encode(self, s: str) -> list[int]:
    return self.tokenizer.encode(s, add_special_tokens=False).ids


def from_gguf(path: str) -> HfTokenizer:
  """The byte-level BPE tokenizer (and chat template) of a llama.cpp GGUF file."""
  # pylint: disable=g-import-not-at-top  (GGUF reading is the model package's)
  from treasure_jax.model import gguf
  from treasure_jax.model import gguf_tokenizer
  metadata = gguf.read_metadata(path)
  config = gguf_tokenizer.tokenizer_config(metadata, path)
  special = {k: v for k, v in config.items() if k.endswith("_token") and isinstance(v, str)}
  return HfTokenizer(gguf_tokenizer.build_tokenizer(metadata, path).to_str(),
                     special_tokens=special, chat_template=config.get("chat_template"),
                     name=path)


# Keys of tokenizer_config.json that transformers passes to chat templates.
SPECIAL_TOKEN_KEYS = ("bos_token", "eos_token", "unk_token", "pad_token", "sep_token",
                      "cls_token", "mask_token")


def read_tokenizer_config(config: Mapping[str, Any]) -> tuple[dict[str, str], str | None]:
  """(special tokens, default chat template or None) of a parsed tokenizer_config.json."""
  special = {}
  for key in SPECIAL_TOKEN_KEYS:
    value = config.get(key)
    if isinstance(value, Mapping):  # Older configs store AddedToken dicts.
      value = value.get("content")
    if value is not None:
      special[key] = value
  template = config.get("chat_template")
  if isinstance(template, list):  # Named templates: [{"name": "default", "template": ...}, ...]
    template = {t["name"]: t["template"] for t in template}.get("default")
  return special, template


def from_hf(path: str) -> HfTokenizer:
  """A local Hugging Face tokenizer: `tokenizer.json` or the directory holding it (with, when
  present, `tokenizer_config.json` and `chat_template.jinja` beside it)."""
  tokenizer_json = os.path.join(path, "tokenizer.json") if os.path.isdir(path) else path
  if not os.path.exists(tokenizer_json):
    raise FileNotFoundError(f"no tokenizer.json at {tokenizer_json!r}")
  folder = os.path.dirname(tokenizer_json)
  config_path = os.path.join(folder, "tokenizer_config.json")
  config = {}
  if os.path.exists(config_path):
    with open(config_path, encoding="utf-8") as f:
      config = json.load(f)
  special, template = read_tokenizer_config(config)
  jinja_path = os.path.join(folder, "chat_template.jinja")
  if template is None and os.path.exists(jinja_path):
    with open(jinja_path, encoding="utf-8") as f:
      template = f.read()
  with open(tokenizer_json, encoding="utf-8") as f:
    text = f.read()
  return HfTokenizer(text, special_tokens=special, chat_template=template, name=tokenizer_json)


def is_hf(vocabulary: Any) -> bool:
  return isinstance(getattr(vocabulary, "tokenizer", None), tokenizers.Tokenizer)


def encode_with_offsets(vocabulary: Any, texts: Sequence[str]
                        ) -> list[tuple[np.ndarray, np.ndarray]]:
  """Per text: (int32 token ids, int64 start character of each token).

  Any vocabulary holding a `tokenizers.Tokenizer` as `.tokenizer` is encoded here; others
  (SentencePiece) go through `vocab.encode_with_offsets`, which imports TensorFlow.
  """
  if not is_hf(vocabulary):
    from treasure_jax.data import vocab  # pylint: disable=g-import-not-at-top
    return vocab.encode_with_offsets(vocabulary, texts)
  tok, out = vocabulary.tokenizer, []
  # encode_batch hands even one text to a thread pool; a plain encode is cheaper then.
  encs = ([tok.encode(texts[0], add_special_tokens=False)] if len(texts) == 1
          else tok.encode_batch(list(texts), add_special_tokens=False))
  for enc in encs:
    starts = np.fromiter((o[0] for o in enc.offsets), np.int64, len(enc.offsets))
    out.append((np.asarray(enc.ids, np.int32), starts))
  return out
