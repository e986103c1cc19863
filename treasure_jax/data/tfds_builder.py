"""A TFDS builder over annotated JSONL, so the same data loads as `tfds.load("annotated_jsonl")`.

  config = tfds_builder.AnnotatedJsonlConfig(
      name="chatterbot", files={"train": ["train.jsonl"], "validation": ["val.jsonl"]})
  ds = tfds.load("annotated_jsonl", data_dir=d, split="train", builder_kwargs={"config": config})

Features: `id`, `prompt` ("" for chats), `messages` (Sequence of {role, content}; empty for
single prompts), `response`, `markers` (JSON text: a taxonomy is user-defined, so its shape is
not a fixed TFDS schema). Records are stored as written; checking them against a taxonomy is
`preprocessors`' job, and `source()` feeds a prepared dataset to the same preprocessor.
"""
from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from etils import epath
import tensorflow as tf
import tensorflow_datasets as tfds

from treasure_jax.data import sources

# Record field -> feature of this builder (identity), for `sources.TfdsDataSource`.
FIELD_MAP = {"id": "id", "prompt": "prompt", "messages": "messages", "response": "response",
             "markers": "markers"}


@dataclasses.dataclass(eq=False)
class AnnotatedJsonlConfig(tfds.core.BuilderConfig):
  """`files`: split name -> JSONL paths (any tf.io.gfile path)."""
  files: Mapping[str, Sequence[str]] = dataclasses.field(default_factory=dict)


class AnnotatedJsonl(tfds.core.GeneratorBasedBuilder):
  """Annotated SFT examples (prompt or chat, response, markers) from JSONL files."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "First version."}
  BUILDER_CONFIG_CLASS = AnnotatedJsonlConfig

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> epath.Path:
    # TFDS's own lookup needs the `importlib_resources` backport for a module inside a package
    # (not installed here); this file is what it would find.
    return epath.Path(__file__)

  def _info(self) -> tfds.core.DatasetInfo:
    text = tfds.features.Text()
    return self.dataset_info_from_configs(features=tfds.features.FeaturesDict({
        "id": text, "prompt": text, "response": text, "markers": text,
        "messages": tfds.features.Sequence({"role": text, "content": text}),
    }))

  def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict[str, Any]:
    del dl_manager  # Local or gs:// files, read with tf.io.gfile.
    if not self.builder_config.files:
      raise ValueError(f"AnnotatedJsonlConfig {self.builder_config.name!r} names no files")
    return {split: self._generate_examples(list(paths))
            for split, paths in self.builder_config.files.items()}

  def _generate_examples(self, paths: list[str]) -> Iterator[tuple[str, dict[str, Any]]]:
    for path in paths:
      with tf.io.gfile.GFile(path, "rb") as f:
        for lineno, line in enumerate(f, start=1):
          if line.strip():
            key = f"{path}:{lineno}"
            yield key, _example(line, key)


def _example(line: bytes, where: str) -> dict[str, Any]:
  try:
    record = json.loads(line)
  except ValueError as e:
    raise ValueError(f"{where}: invalid JSON: {e}") from None
  if not isinstance(record, dict):
    raise ValueError(f"{where}: expected a JSON object, got {type(record).__name__}")
  messages = record.get("messages") or []
  if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
    raise ValueError(f"{where}: 'messages' must be a list of {{role, content}} objects")
  text = lambda v: v if isinstance(v, str) else ""  # noqa: E731  (missing: caught downstream)
  return {
      "id": str(record.get("id", where)),
      "prompt": text(record.get("prompt")),
      "response": text(record.get("response")),
      "markers": json.dumps(record.get("markers") or {}, ensure_ascii=False),
      "messages": [{"role": text(m.get("role")), "content": text(m.get("content"))}
                   for m in messages],
  }


def prepare(config: AnnotatedJsonlConfig, data_dir: str) -> AnnotatedJsonl:
  """Builds (once) the dataset for `config` under `data_dir`; returns the builder."""
  builder = AnnotatedJsonl(config=config, data_dir=data_dir)
  builder.download_and_prepare()
  return builder


def source(config_name: str, data_dir: str, version: str = "1.0.0"
           ) -> sources.TfdsDataSource:
  """The prepared dataset as a data source for marker tasks."""
  return sources.TfdsDataSource(f"annotated_jsonl/{config_name}:{version}", FIELD_MAP,
                                tfds_data_dir=data_dir)
