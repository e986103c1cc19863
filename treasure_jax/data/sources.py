"""seqio data sources yielding annotated records: `{"record": JSON text, "origin": str}`.

- `JsonlDataSource`: annotated JSONL (the [annotate] output) from any `tf.io.gfile` path or glob,
  local or `gs://`; `origin` is "path:line" so a bad record is named exactly.
- `TfdsDataSource`: an existing TFDS dataset through a field mapping onto the record format
  (`{"prompt": "question", "response": "answer", "markers/domain": "topic"}`); `origin` is
  "tfds:name/split#n" (n counts within the host's shard).
- `records_source`: in-memory records (tests, small evaluation sets).

Every source emits the same two string features, so one `preprocessors.chat_preprocessor`
parses and validates them all. Sharding across hosts and per-epoch order are `streams`' job.
"""
from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import seqio
import tensorflow as tf

class JsonlDataSource(seqio.FileDataSource):
  """JSONL files (one record per non-blank line); blank lines are ignored."""

  def __init__(self, split_to_filepattern: Mapping[str, str | Sequence[str]],
               num_input_examples: Mapping[str, int] | None = None):
    super().__init__(read_file_fn=_read_jsonl_file, split_to_filepattern=split_to_filepattern,
                     num_input_examples=num_input_examples, cycle_length=4, block_length=64)
    self._counted: dict[str, int] = {}

  def num_input_examples(self, split: str) -> int:  # pytype: disable=signature-mismatch
    """The given count, else the non-blank lines of the split's files (read once)."""
    given = super().num_input_examples(split)
    if given is not None:
      return given
    if split not in self._counted:
      n = 0
      for path in self.list_shards(split):
        with tf.io.gfile.GFile(path, "rb") as f:
          n += sum(1 for line in f if line.strip())
      self._counted[split] = n
    return self._counted[split]


def _read_jsonl_file(path: tf.Tensor) -> tf.data.Dataset:
  lines = tf.data.TextLineDataset(path).enumerate(start=1)
  no_autograph = tf.autograph.experimental.do_not_convert
  lines = lines.filter(no_autograph(
      lambda i, line: tf.strings.length(tf.strings.strip(line)) > 0))
  return lines.map(no_autograph(lambda i, line: {
      "record": line, "origin": tf.strings.join([path, ":", tf.strings.as_string(i)])}))


def records_source(records_by_split: Mapping[str, Sequence[Mapping[str, Any]]],
                   name: str = "memory") -> seqio.FunctionDataSource:
  """A source over in-memory records (dicts, JSON-serialized here); origin "name/split#index"."""
  encoded = {split: [json.dumps(r, ensure_ascii=False) for r in records]
             for split, records in records_by_split.items()}

  def dataset_fn(split: str, shuffle_files: bool, seed: int | None = None) -> tf.data.Dataset:
    del shuffle_files, seed  # Order is `streams`' job.
    lines = encoded[split]
    origins = [f"{name}/{split}#{i}" for i in range(len(lines))]
    return tf.data.Dataset.from_tensor_slices(
        {"record": np.array(lines, dtype=object), "origin": np.array(origins, dtype=object)}
        if lines else {"record": tf.zeros([0], tf.string), "origin": tf.zeros([0], tf.string)})

  return seqio.FunctionDataSource(dataset_fn, splits=list(encoded),
                                  num_input_examples={s: len(v) for s, v in encoded.items()})


class TfdsDataSource(seqio.DataSource):
  """A TFDS dataset mapped onto the record format.

  Args:
    tfds_name: "name/config:version" as `seqio.TfdsDataSource` takes it.
    field_map: record field -> TFDS feature path ("a/b" for nested features). Record fields:
      "id", "prompt", "messages" (a TFDS Sequence of {role, content}), "response", "markers"
      (a JSON-text feature), or "markers/<category>" for one category per feature.
    tfds_data_dir: where the prepared dataset lives.
  """

  def __init__(self, tfds_name: str, field_map: Mapping[str, str], *,
               tfds_data_dir: str | None = None, splits: Sequence[str] | None = None):
    self._inner = seqio.TfdsDataSource(tfds_name=tfds_name, tfds_data_dir=tfds_data_dir,
                                       splits=splits)
    self._name = tfds_name
    self._field_map = dict(field_map)
    unknown = [k for k in field_map if k not in ("id", "prompt", "messages", "response", "markers")
               and not k.startswith("markers/")]
    if unknown:
      raise ValueError(f"TfdsDataSource({tfds_name}): unknown record fields {unknown}")
    super().__init__(splits=self._inner.splits)

  @property
  def supports_arbitrary_sharding(self) -> bool:
    return False

  def list_shards(self, split: str) -> Sequence[str]:
    return self._inner.list_shards(split)

  def num_input_examples(self, split: str) -> int | None:  # pytype: disable=signature-mismatch
    return self._inner.num_input_examples(split)

  def get_dataset(self, split: str = "train", shuffle: bool = True, seed: int | None = None,
                  shard_info: seqio.ShardInfo | None = None, *,
                  sequence_length: Mapping[str, int] | None = None, use_cached: bool = False,
                  num_epochs: int | None = 1) -> tf.data.Dataset:
    del sequence_length, use_cached, num_epochs
    ds = self._inner.get_dataset(split=split, shuffle=shuffle, seed=seed, shard_info=shard_info)
    prefix = f"tfds:{self._name}/{split}#"

    def to_record(index: tf.Tensor, ex: Mapping[str, tf.Tensor]) -> dict[str, tf.Tensor]:
      paths = list(self._field_map.values())
      tensors = [_get_path(ex, p, self._name) for p in paths]
      flat = tf.nest.flatten(tensors)
      record = tf.numpy_function(
          lambda *xs: _record_json(self._field_map, tf.nest.pack_sequence_as(tensors, list(xs))),
          flat, tf.string, stateful=False)
      origin = tf.strings.join([prefix, tf.strings.as_string(index)])
      return {"record": tf.ensure_shape(record, []), "origin": origin}

    return ds.enumerate().map(tf.autograph.experimental.do_not_convert(to_record),
                              num_parallel_calls=tf.data.AUTOTUNE)


def _get_path(ex: Mapping[str, Any], path: str, name: str) -> Any:
  value: Any = ex
  for part in path.split("/"):
    if not isinstance(value, Mapping) or part not in value:
      raise KeyError(f"TFDS dataset {name}: no feature {path!r}; features: {sorted(ex)}")
    value = value[part]
  return value


def _record_json(field_map: Mapping[str, str], values: Sequence[Any]) -> np.ndarray:
  record: dict[str, Any] = {}
  markers: dict[str, Any] = {}
  for field, value in zip(field_map, values):
    value = _plain(value)
    if (field == "prompt" and not value) or (field == "messages" and not value.get("role")):
      continue  # A builder stores "" / [] for the form a record does not use.
    if field == "messages":
      record["messages"] = [{"role": r, "content": c}
                            for r, c in zip(value["role"], value["content"])]
    elif field == "markers":
      markers.update(json.loads(value) if isinstance(value, str) else value)
    elif field.startswith("markers/"):
      if value not in ("", None):
        markers[field.split("/", 1)[1]] = value
    else:
      record[field] = value
  if markers:
    record["markers"] = markers
  return np.asarray(json.dumps(record, ensure_ascii=False).encode("utf-8"), object)


def _plain(value: Any) -> Any:
  if isinstance(value, Mapping):
    return {k: _plain(v) for k, v in value.items()}
  if isinstance(value, bytes):
    return value.decode("utf-8")
  if isinstance(value, np.ndarray):
    return [_plain(v) for v in value.tolist()]
  if isinstance(value, np.generic):
    return value.item()
  return value
