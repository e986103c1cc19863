"""Sources: JSONL with file:line origins, the TFDS builder (`tfds.load`), and an existing TFDS
dataset through a field mapping; all feed the same preprocessor."""
from __future__ import annotations

import json

import pytest
import seqio
import tensorflow as tf
import tensorflow_datasets as tfds

from treasure_jax.data import chat_templates
from treasure_jax.data import preprocessors
from treasure_jax.data import sources
from treasure_jax.data import testing
from treasure_jax.data import tfds_builder
from treasure_jax.markers import taxonomy

TAX = taxonomy.default_taxonomy()


@pytest.fixture(scope="module")
def records():
  return testing.chatterbot_records()[::300]


def _process(source, split="train"):
  v = testing.small_bpe_vocabulary()
  options = preprocessors.ChatOptions(taxonomy=TAX, template=chat_templates.get("chatml"),
                                      on_overflow="truncate")
  ds = preprocessors.chat_preprocessor(
      source.get_dataset(split, shuffle=False),
      {"targets": seqio.Feature(v, add_eos=False, dtype=tf.int32)}, None, options=options)
  return {ex["id"].decode(): ex["targets"].tolist() for ex in ds.as_numpy_iterator()}


def test_jsonl_origins_and_counts(tmp_path, records):
  path = tmp_path / "x.jsonl"
  lines = [json.dumps(r, ensure_ascii=False) for r in records[:3]]
  path.write_text(lines[0] + "\n\n" + lines[1] + "\n  \n" + lines[2] + "\n", encoding="utf-8")
  source = sources.JsonlDataSource({"train": str(path)})
  got = list(source.get_dataset("train", shuffle=False).as_numpy_iterator())
  assert [g["origin"].decode() for g in got] == [f"{path}:1", f"{path}:3", f"{path}:5"]
  assert [json.loads(g["record"]) for g in got] == records[:3]
  assert source.num_input_examples("train") == 3


def test_tfds_builder_loads_and_matches_jsonl(tmp_path, records):
  testing.write_jsonl(records, str(tmp_path / "train.jsonl"))
  config = tfds_builder.AnnotatedJsonlConfig(name="demo",
                                             files={"train": [str(tmp_path / "train.jsonl")]})
  ds = tfds.load("annotated_jsonl", data_dir=str(tmp_path / "tfds"), split="train",
                 builder_kwargs={"config": config})
  loaded = {ex["id"].decode(): ex for ex in ds.as_numpy_iterator()}
  assert set(loaded) == {r["id"] for r in records}
  chat = next(r for r in records if "messages" in r)
  assert [m.decode() for m in loaded[chat["id"]]["messages"]["content"]] == [
      m["content"] for m in chat["messages"]]
  assert json.loads(loaded[chat["id"]]["markers"]) == chat["markers"]
  from_tfds = _process(tfds_builder.source("demo", str(tmp_path / "tfds")))
  from_jsonl = _process(sources.JsonlDataSource({"train": str(tmp_path / "train.jsonl")}))
  assert from_tfds == from_jsonl and len(from_tfds) == len(records)


class QaToy(tfds.core.GeneratorBasedBuilder):
  """An 'existing' TFDS dataset with its own feature names."""
  VERSION = tfds.core.Version("0.1.0")
  code_path = None  # No checksums file to find next to a test module.

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        "question": tfds.features.Text(), "answer": tfds.features.Text(),
        "meta": {"topic": tfds.features.Text(), "n": tf.int32}}))

  def _split_generators(self, dl_manager):
    del dl_manager
    return {"train": self._generate_examples()}

  def _generate_examples(self):
    yield "a", {"question": "Q1?", "answer": "A1.", "meta": {"topic": "Math", "n": 2}}
    yield "b", {"question": "Q2?", "answer": "A2.", "meta": {"topic": "", "n": 7}}


def test_tfds_field_mapping(tmp_path):
  QaToy(data_dir=str(tmp_path)).download_and_prepare()
  source = sources.TfdsDataSource(
      "qa_toy:0.1.0", {"prompt": "question", "response": "answer",
                       "markers/domain": "meta/topic", "markers/length_tokens": "meta/n"},
      tfds_data_dir=str(tmp_path))
  got = sorted((json.loads(ex["record"]) for ex in
                source.get_dataset("train", shuffle=False).as_numpy_iterator()),
               key=lambda r: r["prompt"])
  assert got == [
      {"prompt": "Q1?", "response": "A1.", "markers": {"domain": "Math", "length_tokens": 2}},
      {"prompt": "Q2?", "response": "A2.", "markers": {"length_tokens": 7}}]
  with pytest.raises(ValueError, match=r"unknown record fields \['answer'\]"):
    sources.TfdsDataSource("qa_toy:0.1.0", {"answer": "answer"}, tfds_data_dir=str(tmp_path))
  bad = sources.TfdsDataSource("qa_toy:0.1.0", {"prompt": "title"},
                               tfds_data_dir=str(tmp_path))
  with pytest.raises(KeyError, match="no feature 'title'"):
    bad.get_dataset("train", shuffle=False)
