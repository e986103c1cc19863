"""Vocabularies: seqio `Vocabulary` objects for the tokenizers our models ship with.

Three kinds, one factory (`make(kind, path)`):
- "sentencepiece": `seqio.SentencePieceVocabulary` (Gemma, T5-style models).
- "hf": `HfTokenizerVocabulary`, a Hugging Face `tokenizer.json` (byte-level BPE: SmolLM2,
  Llama 3, Qwen2) whose ids equal the `tokenizers` library's on the same text, eagerly and inside
  tf.data (the TF path calls the Rust tokenizer through `tf.numpy_function`; no TF op implements
  byte-level BPE). Special tokens are never added: a chat template writes them as text.
- "gguf": an `HfTokenizerVocabulary` rebuilt from a llama.cpp GGUF file (tokenizer, special
  tokens and chat template) by `treasure_jax.model.gguf_tokenizer`.

`encode_with_offsets` gives ids plus each token's start character, which the chat tokenizer in
`preprocessors` uses to put loss weights exactly on the completion of a fully rendered chat.
Parsing GGUF metadata is `treasure_jax.model`'s job; chat templates are `chat_templates`'.
"""
from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import seqio
import tensorflow as tf
import tokenizers

from treasure_jax.data import token_offsets

KINDS = ("hf", "sentencepiece", "gguf")


class HfTokenizerVocabulary(seqio.Vocabulary):
  """A seqio vocabulary over a Hugging Face `tokenizer.json`.

  Args:
    tokenizer_json: the JSON text of a `tokenizer.json` (text, not a path, so the object pickles
      and compares by content).
    special_tokens: the tokenizer config's special tokens (`eos_token`, `bos_token`, ...), the
      strings chat templates see; `eos_token` sets `eos_id`.
    chat_template: the model's own Jinja chat template, if it has one.
  """

  def __init__(self, tokenizer_json: str, *, special_tokens: Mapping[str, str] | None = None,
               chat_template: str | None = None, name: str = "hf"):
    self._json = tokenizer_json
    self._tokenizer = tokenizers.Tokenizer.from_str(tokenizer_json)
    self.special_tokens = dict(special_tokens or {})
    self.chat_template = chat_template
    self.name = name
    self._eos_id = self._token_id(self.special_tokens.get("eos_token"), "eos_token")
    self._bos_id = self._token_id(self.special_tokens.get("bos_token"), "bos_token")
    unk = json.loads(tokenizer_json).get("model", {}).get("unk_token")
    self._unk_id = None if unk is None else self._tokenizer.token_to_id(unk)
    super().__init__(extra_ids=0)

  def _token_id(self, token: str | None, what: str) -> int | None:
    if token is None:
      return None
    token_id = self._tokenizer.token_to_id(token)
    if token_id is None:
      raise ValueError(f"{self.name}: {what} {token!r} is not in the tokenizer's vocabulary")
    return token_id

  @property
  def tokenizer(self) -> tokenizers.Tokenizer:
    return self._tokenizer

  @property
  def eos_id(self) -> int | None:
    return self._eos_id

  @property
  def bos_id(self) -> int | None:
    return self._bos_id

  @property
  def unk_id(self) -> int | None:
    return self._unk_id

  @property
  def _base_vocab_size(self) -> int:
    return self._tokenizer.get_vocab_size(with_added_tokens=True)

  def _encode(self, s: str) -> Sequence[int]:
    return self._tokenizer.encode(s, add_special_tokens=False).ids

  def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
    return [e.ids for e in self._tokenizer.encode_batch(list(texts), add_special_tokens=False)]

  def _decode(self, ids: Sequence[int]) -> str:
    return self._tokenizer.decode([int(i) for i in ids], skip_special_tokens=True)

  def _encode_tf(self, s: tf.Tensor) -> tf.Tensor:
    """Scalar string -> int32 [L]; string vector -> int32 ragged [N, None]."""
    s = tf.convert_to_tensor(s, tf.string)
    if s.shape.rank == 0:
      ids = tf.numpy_function(self._encode_np, [s], tf.int32, stateful=False)
      ids.set_shape([None])
      return ids
    if s.shape.rank != 1:
      raise ValueError(f"{self.name}: encode_tf takes a scalar or a vector of strings, "
                       f"got rank {s.shape.rank}")
    flat, lengths = tf.numpy_function(self._encode_batch_np, [s], (tf.int32, tf.int64),
                                      stateful=False)
    flat.set_shape([None])
    lengths.set_shape([None])
    return tf.RaggedTensor.from_row_lengths(flat, lengths, validate=False)

  def _encode_np(self, s: bytes | np.ndarray) -> np.ndarray:
    s = s.item() if isinstance(s, np.ndarray) else s  # Eager mode passes a 0-d array.
    return np.asarray(self._encode(s.decode("utf-8")), np.int32)

  def _encode_batch_np(self, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ids = self.encode_batch([x.decode("utf-8") for x in s])
    lengths = np.asarray([len(x) for x in ids], np.int64)
    flat = np.fromiter((t for x in ids for t in x), np.int32, int(lengths.sum()))
    return flat, lengths

  def _decode_tf(self, ids: tf.Tensor) -> tf.Tensor:
    """int [..., L] -> string [...], each row through its first EOS.

    seqio overwrites what follows the EOS with id 0, a real token in most BPE vocabularies,
    so rows are cut at the EOS again here.
    """
    ids = tf.convert_to_tensor(ids)
    batch_shape = tf.shape(ids)[:-1]
    flat = tf.reshape(ids, [-1, tf.shape(ids)[-1]])
    text = tf.numpy_function(
        lambda x: np.asarray([self._decode(self._through_eos(row)).encode("utf-8")
                              for row in x], object), [flat], tf.string, stateful=False)
    return tf.reshape(text, batch_shape)

  def _through_eos(self, ids: np.ndarray) -> np.ndarray:
    hits = np.flatnonzero(ids == self._eos_id) if self._eos_id is not None else []
    return ids[:hits[0] + 1] if len(hits) else ids

  def __getstate__(self) -> dict[str, Any]:
    return {"json": self._json, "special_tokens": self.special_tokens,
            "chat_template": self.chat_template, "name": self.name}

  def __setstate__(self, state: dict[str, Any]) -> None:
    self.__init__(state["json"], special_tokens=state["special_tokens"],
                  chat_template=state["chat_template"], name=state["name"])

  def __eq__(self, other: object) -> bool:
    return (isinstance(other, HfTokenizerVocabulary) and other._json == self._json
            and other.special_tokens == self.special_tokens)

  def __hash__(self) -> int:
    return hash(self._json)


def from_hf_files(tokenizer_json: str, tokenizer_config: str | None = None,
                  name: str | None = None) -> HfTokenizerVocabulary:
  """An `HfTokenizerVocabulary` from `tokenizer.json` and optional `tokenizer_config.json`."""
  with tf.io.gfile.GFile(tokenizer_json) as f:
    text = f.read()
  config: dict[str, Any] = {}
  if tokenizer_config is not None:
    with tf.io.gfile.GFile(tokenizer_config) as f:
      config = json.load(f)
  special, template = token_offsets.read_tokenizer_config(config)
  jinja_path = os.path.join(os.path.dirname(tokenizer_json), "chat_template.jinja")
  if template is None and tf.io.gfile.exists(jinja_path):
    with tf.io.gfile.GFile(jinja_path) as f:
      template = f.read()
  return HfTokenizerVocabulary(text, special_tokens=special, chat_template=template,
                               name=name or tokenizer_json)


def make(kind: str, path: str) -> seqio.Vocabulary:
  """The vocabulary of `kind` ("hf", "sentencepiece" or "gguf") stored at `path`.

  For "hf", `path` is a `tokenizer.json` or a directory holding one (plus, optionally,
  `tokenizer_config.json` and `chat_template.jinja`, as Hugging Face saves them).
  For "sentencepiece", `path` is the `.model` file.
  """
  if kind == "sentencepiece":
    if not tf.io.gfile.exists(path):
      raise FileNotFoundError(f"sentencepiece model {path!r} does not exist")
    return seqio.SentencePieceVocabulary(path)
  if kind == "hf":
    if tf.io.gfile.isdir(path):
      tokenizer_json = os.path.join(path, "tokenizer.json")
      config = os.path.join(path, "tokenizer_config.json")
    else:
      tokenizer_json, config = path, os.path.join(os.path.dirname(path), "tokenizer_config.json")
    if not tf.io.gfile.exists(tokenizer_json):
      raise FileNotFoundError(f"no tokenizer.json at {tokenizer_json!r}")
    return from_hf_files(tokenizer_json, config if tf.io.gfile.exists(config) else None)
  if kind == "gguf":
    return from_gguf(path)
  raise ValueError(f"vocabulary kind {kind!r} is not one of {', '.join(KINDS)}")


def from_gguf(path: str) -> HfTokenizerVocabulary:
  """The byte-level BPE tokenizer (and chat template) stored in a llama.cpp GGUF file."""
  from treasure_jax.model import gguf  # pylint: disable=g-import-not-at-top
  from treasure_jax.model import gguf_tokenizer  # pylint: disable=g-import-not-at-top

  metadata = gguf.read_metadata(path)
  tok = gguf_tokenizer.build_tokenizer(metadata, path)
  config = gguf_tokenizer.tokenizer_config(metadata, path)
  special = {k: config[k] for k in token_offsets.SPECIAL_TOKEN_KEYS if k in config}
  return HfTokenizerVocabulary(tok.to_str(), special_tokens=special,
                               chat_template=config.get("chat_template"), name=path)


def encode_with_offsets(vocabulary: seqio.Vocabulary, texts: Sequence[str]
                        ) -> list[tuple[np.ndarray, np.ndarray]]:
  """Per text: (int32 token ids, int64 start character of each token).

  The ids are exactly `vocabulary.encode(text)`; a token made of part of a character (byte-level
  BPE splitting a CJK character) starts where that character starts.
  """
  if token_offsets.is_hf(vocabulary):
    return token_offsets.encode_with_offsets(vocabulary, texts)
  if isinstance(vocabulary, seqio.SentencePieceVocabulary):
    return [_sentencepiece_offsets(vocabulary, t) for t in texts]
  raise TypeError(f"encode_with_offsets does not support {type(vocabulary).__name__}; "
                  f"supported kinds: {', '.join(KINDS)}")


def _sentencepiece_offsets(vocabulary: seqio.SentencePieceVocabulary, text: str
                           ) -> tuple[np.ndarray, np.ndarray]:
  proto = vocabulary.tokenizer.encode(text, return_type="proto")
  ids = np.asarray([p.id for p in proto.pieces], np.int32)
  # SentencePiece reports byte offsets into the UTF-8 input; map them back to characters.
  byte_to_char = np.repeat(np.arange(len(text) + 1),
                           [len(c.encode("utf-8")) for c in text] + [1])
  starts = np.asarray([byte_to_char[p.begin] for p in proto.pieces], np.int64)
  return ids, starts
