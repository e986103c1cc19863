"""Vocabularies: ids equal the `tokenizers`/`sentencepiece` libraries', eagerly and in tf.data,
on the bundled chatterbot text in every language; the factory; offsets."""
from __future__ import annotations

import json
import os
import pickle

import numpy as np
import pytest
import seqio
import sentencepiece
import tensorflow as tf
import tokenizers

from treasure_jax.data import testing
from treasure_jax.data import vocab


@pytest.fixture(scope="module")
def smollm2():
  return testing.smollm2_vocabulary()


@pytest.fixture(scope="module")
def texts():
  return testing.chatterbot_texts()


@pytest.fixture(scope="module")
def reference_ids(smollm2, texts):
  """Ids from an independent `tokenizers.Tokenizer` built from the same tokenizer.json."""
  ref = tokenizers.Tokenizer.from_str(smollm2.tokenizer.to_str())
  return [e.ids for e in ref.encode_batch(texts, add_special_tokens=False)]


@pytest.fixture(scope="module")
def sp_model(tmp_path_factory, texts):
  return testing.train_sentencepiece(texts[::4], str(tmp_path_factory.mktemp("sp") / "sp"))


def test_corpus_has_every_language(texts):
  langs = {lang for lang, _, _ in testing.chatterbot_conversations()}
  assert len(langs) == len(os.listdir(testing.chatterbot_dir())) >= 25
  assert any("\u4e00" <= c <= "\u9fff" for t in texts for c in t)  # CJK present.
  assert len(texts) > 20_000


@pytest.mark.slow
def test_gguf_factory_equals_cached_extraction(smollm2):
  v = vocab.make("gguf", testing.smollm2_gguf_path())
  assert v == smollm2 and v.chat_template == smollm2.chat_template


def test_smollm2_from_gguf(smollm2):
  assert smollm2.vocab_size == 49152
  assert smollm2.tokenizer.id_to_token(smollm2.eos_id) == "<|im_end|>"
  assert smollm2.special_tokens["bos_token"] == "<|im_start|>"
  assert "<|im_start|>" in smollm2.chat_template


def test_eager_parity_all_languages(smollm2, texts, reference_ids):
  want = reference_ids
  assert [list(smollm2.encode(t)) for t in texts] == want
  assert smollm2.encode_batch(texts[::10]) == want[::10]


def test_tf_data_parity_all_languages(smollm2, texts, reference_ids):
  want = reference_ids
  batched = tf.data.Dataset.from_tensor_slices(texts).batch(4096).map(
      lambda s: (lambda r: (r.flat_values, r.row_lengths()))(smollm2.encode_tf(s)))
  flat, lengths = (np.concatenate(x) for x in zip(*batched.as_numpy_iterator()))
  assert lengths.tolist() == [len(w) for w in want]
  assert flat.tolist() == [t for w in want for t in w]
  # Scalar path (one string per element), on every 40th text.
  scalar = tf.data.Dataset.from_tensor_slices(texts[::40]).map(smollm2.encode_tf)
  assert [x.tolist() for x in scalar.as_numpy_iterator()] == want[::40]
  assert smollm2.encode_tf(tf.constant(texts[1])).numpy().tolist() == want[1]


def test_decode(smollm2, texts):
  for t in texts[::50]:
    assert smollm2.decode(smollm2.encode(t)) == t
  ids = smollm2.encode("hello") + [smollm2.eos_id] + smollm2.encode(" world")
  assert smollm2.decode(ids) == "hello"  # seqio semantics: through the first EOS.
  short = ids[:1] + [smollm2.eos_id] + [0] * (len(ids) - 2)  # Padded with id 0 after EOS.
  out = smollm2.decode_tf(tf.constant([ids, short])).numpy()
  assert out.tolist() == [b"hello", smollm2.decode(ids[:1]).encode()]


def test_encode_with_offsets(smollm2, texts):
  sample = texts[::25] + ["<|im_start|>user\nHi 123<|im_end|>\n"]
  for t, (ids, starts) in zip(sample, vocab.encode_with_offsets(smollm2, sample)):
    assert ids.tolist() == list(smollm2.encode(t))
    assert len(starts) == len(ids) and np.all(np.diff(starts) >= 0)
    assert starts.size == 0 or (starts[0] == 0 and starts[-1] < len(t))


def test_sentencepiece_factory_and_parity(sp_model, texts):
  v = vocab.make("sentencepiece", sp_model)
  assert isinstance(v, seqio.SentencePieceVocabulary)
  ref = sentencepiece.SentencePieceProcessor(model_file=sp_model)
  sample = texts[::20] + ["<start_of_turn>user\nHello 你好\n<end_of_turn>\n"]
  want = [ref.encode(t) for t in sample]
  assert [list(v.encode(t)) for t in sample] == want
  ds = tf.data.Dataset.from_tensor_slices(sample).map(v.encode_tf)
  assert [x.tolist() for x in ds.as_numpy_iterator()] == want
  for t, (ids, starts) in zip(sample, vocab.encode_with_offsets(v, sample)):
    assert ids.tolist() == ref.encode(t)
    # Byte offsets were mapped to characters: every piece's text starts at its offset.
    for piece_id, start in zip(ids, starts):
      piece = ref.id_to_piece(int(piece_id)).replace("\u2581", " ")
      if not ref.is_byte(int(piece_id)):
        assert t[start:].startswith(piece), (t, piece, start)


def test_hf_factory_reads_a_tokenizer_dir(tmp_path, smollm2):
  (tmp_path / "tokenizer.json").write_text(smollm2.tokenizer.to_str(), encoding="utf-8")
  config = {"eos_token": {"content": "<|im_end|>", "special": True}, "bos_token": "<|im_start|>"}
  (tmp_path / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
  (tmp_path / "chat_template.jinja").write_text(smollm2.chat_template, encoding="utf-8")
  for path in (str(tmp_path), str(tmp_path / "tokenizer.json")):
    v = vocab.make("hf", path)
    assert v.eos_id == smollm2.eos_id and v.chat_template == smollm2.chat_template
    assert v.encode("Hello there") == smollm2.encode("Hello there")


def test_factory_errors(tmp_path, smollm2):
  with pytest.raises(ValueError, match="kind 'bpe' is not one of"):
    vocab.make("bpe", str(tmp_path))
  with pytest.raises(FileNotFoundError, match="no tokenizer.json"):
    vocab.make("hf", str(tmp_path))
  with pytest.raises(ValueError, match="eos_token '<nope>' is not in"):
    vocab.HfTokenizerVocabulary(smollm2.tokenizer.to_str(), special_tokens={"eos_token": "<nope>"})


def test_pickles(smollm2):
  v = pickle.loads(pickle.dumps(smollm2))
  assert v == smollm2 and v.encode("round trip") == smollm2.encode("round trip")
