"""The TF-free input pipeline: annotated JSONL, Parquet or ArrayRecord files through Grain to packed, resumable batches.

Per example it runs the very stages the seqio path runs (`preprocessors.process_records`:
taxonomy validation, markers with dropout keyed by (seed, example id, epoch), chat template,
tokenization, loss weights), so an example's tokens and weights are identical in both pipelines.
What differs is the order: Grain shuffles the host's shard globally per epoch
(`MapDataset.shuffle`, re-seeded each epoch) where tf.data uses a shuffle buffer. Rows are packed
by Grain's `FirstFitPackIterDataset` (the first-fit rule of `features.RowPacker`) and carry the
same `features.BATCH_KEYS`. The iterator state is Grain's own (JSON), saved with the checkpoint
like the seqio iterator's. The seqio path is `iterator`'s.
"""
from __future__ import annotations

import glob
import itertools
import json
import math
import os
from collections.abc import Iterator, Mapping
from typing import Any

import grain
import numpy as np

from treasure_jax.data import config as config_lib
from treasure_jax.data import features
from treasure_jax.data import preprocessors

STATE_VERSION = 1


def list_files(patterns: tuple[str, ...]) -> list[str]:
  """Sorted files of local globs (or remote paths through etils.epath)."""
  files: list[str] = []
  for pattern in patterns:
    if "://" in pattern:
      from etils import epath  # pylint: disable=g-import-not-at-top
      head, _, tail = pattern.rpartition("/")
      found = sorted(str(p) for p in epath.Path(head).glob(tail))
    else:
      found = sorted(glob.glob(pattern))
    if not found:
      raise FileNotFoundError(f"data file pattern {pattern!r} matches no file")
    files.extend(found)
  return files


class JsonlSource:
  """Random access to the non-blank lines of JSONL files: {"record", "origin": "path:line"}."""

  def __init__(self, paths: list[str]):
    self._paths, index = paths, []
    for f, path in enumerate(paths):
      with _open(path) as fh:
        offset = 0
        for line_no, line in enumerate(fh, start=1):
          if line.strip():
            index.append((f, line_no, offset))
          offset += len(line)
    self._index = np.asarray(index, np.int64).reshape(-1, 3)

  def __len__(self) -> int:
    return len(self._index)

  def __getitem__(self, i: int) -> dict[str, str]:
    f, line_no, offset = (int(x) for x in self._index[i])
    with _open(self._paths[f]) as fh:
      fh.seek(offset)
      text = fh.readline().decode("utf-8")
    return {"record": text, "origin": f"{self._paths[f]}:{line_no}"}


class ParquetSource:
  """Rows of Parquet files: the `record` column (JSON text) if present, else each row as JSON;
  origin "path#row"."""

  def __init__(self, paths: list[str]):
    import pyarrow.parquet as pq  # pylint: disable=g-import-not-at-top  (only for Parquet)
    self._records, self._origins = [], []
    for path in paths:
      table = pq.read_table(_open(path))
      rows = (table.column("record").to_pylist() if "record" in table.column_names
              else [json.dumps(r, ensure_ascii=False) for r in table.to_pylist()])
      self._records.extend(rows)
      self._origins.extend(f"{path}#{i}" for i in range(len(rows)))

  def __len__(self) -> int:
    return len(self._records)

  def __getitem__(self, i: int) -> dict[str, str]:
    return {"record": self._records[i], "origin": self._origins[i]}


class ArrayRecordSource:
  """Records (UTF-8 JSON) of ArrayRecord files; origin "path#index"."""

  def __init__(self, paths: list[str]):
    self._inner, self._paths = grain.sources.ArrayRecordDataSource(paths), paths
    self._ends = np.cumsum([len(grain.sources.ArrayRecordDataSource([p])) for p in paths])

  def __len__(self) -> int:
    return len(self._inner)

  def __getitem__(self, i: int) -> dict[str, str]:
    f = int(np.searchsorted(self._ends, i, side="right"))
    start = int(self._ends[f - 1]) if f else 0
    return {"record": self._inner[i].decode("utf-8"), "origin": f"{self._paths[f]}#{i - start}"}


def source(patterns: tuple[str, ...]) -> Any:
  """A random-access record source over JSONL, Parquet or ArrayRecord files (by extension)."""
  files = list_files(patterns)
  kinds = {os.path.splitext(f)[1] for f in files}
  if len(kinds) != 1 or not kinds <= set(_SOURCES):
    raise ValueError(f"data files {patterns}: one kind of {', '.join(_SOURCES)} expected, got "
                     f"{sorted(kinds)}")
  return _SOURCES[kinds.pop()](files)


def read_records(patterns: tuple[str, ...]) -> Iterator[dict[str, Any]]:
  """Every JSON-object record of the files in order (JSONL read sequentially). Lines that do not
  parse are passed over here: the pipeline reports them by file and line."""
  files = list_files(patterns)
  if all(f.endswith(".jsonl") for f in files):
    texts = (line for path in files for line in _lines(path))
  else:
    records = source(patterns)
    texts = (records[i]["record"] for i in range(len(records)))
  for text in texts:
    try:
      record = json.loads(text.removeprefix("\ufeff"))  # A first line's byte-order mark.
    except ValueError:
      continue
    if isinstance(record, dict):
      yield record


def _lines(path: str) -> Iterator[str]:
  with _open(path) as f:
    for line in f:
      if line.strip():
        yield line.decode("utf-8", errors="replace")


def _open(path: str) -> Any:
  if "://" in path:
    from etils import epath  # pylint: disable=g-import-not-at-top
    return epath.Path(path).open("rb")
  return open(path, "rb")


_SOURCES = {".jsonl": JsonlSource, ".parquet": ParquetSource, ".arrayrecord": ArrayRecordSource}


def examples(cfg: config_lib.DataConfig, options: preprocessors.ChatOptions, vocabulary: Any,
             *, max_tokens: int, shard: tuple[int, int], seed: int,
             counters: preprocessors.Counters | None = None) -> grain.MapDataset:
  """Tokenized examples of this host's shard, epoch after epoch (None = skipped, filtered)."""
  index, count = shard
  ds = grain.MapDataset.source(source(cfg.train_files))[index::count]
  n = len(ds)
  if not n:
    raise ValueError(f"data shard {index} of {count} has no records ({cfg.train_files})")

  def process(i: int, raw: Mapping[str, str]) -> dict[str, Any] | None:
    (ex,) = preprocessors.process_records(
        [raw["record"]], [raw["origin"]], options=options, vocabulary=vocabulary,
        max_tokens=max_tokens, seeds=[seed], epochs=[i // n], counters=counters)
    return None if ex is None else {**ex, "epoch": i // n}

  ds = ds.shuffle(seed=seed).repeat().map_with_index(process)
  return ds.filter(lambda ex: ex is not None)


def _pairs(ex: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """An example of L tokens as the L - 1 next-token positions a row holds (`features`)."""
  tokens = np.asarray(ex["targets"], np.int32)
  marker = np.asarray(ex["marker_weights"], np.float32)[1:]
  response = np.asarray(ex["response_weights"], np.float32)[1:]
  return {"inputs": tokens[:-1], "targets": tokens[1:], "loss_weights": marker + response,
          "marker_weights": marker, "response_weights": response}


def _batch_keys(batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  out = {k: batch[k] for k in features.BATCH_KEYS if k in batch}
  out["segment_ids"] = batch["inputs_segment_ids"].astype(np.int32)
  out["positions"] = batch["inputs_positions"].astype(np.int32)
  return out


def packed(ds: grain.IterDataset, *, batch_size: int, seq_len: int, pack: bool
           ) -> grain.IterDataset:
  """[batch_size, seq_len] batches with `features.BATCH_KEYS` (one example per row if not
  `pack`); Grain's first-fit packer numbers segments 1, 2, ... and restarts positions."""
  keys = ("inputs", "targets", "loss_weights", "marker_weights", "response_weights")
  ds = ds.map(_pairs)
  ds = grain.experimental.FirstFitPackIterDataset(
      ds, length_struct={k: seq_len for k in keys}, num_packing_bins=batch_size if pack else 1,
      shuffle_bins=False)
  return ds.batch(batch_size).map(_batch_keys)


class GrainBatchIterator:
  """numpy batches {key: [B_local, T]} with get_state/set_state (like `iterator.BatchIterator`)."""

  def __init__(self, dataset: grain.IterDataset, fingerprint: Mapping[str, Any],
               counters: preprocessors.Counters, name: str):
    self._dataset, self._fingerprint = dataset, dict(fingerprint)
    self._it, self._counters, self._name, self.batches = iter(dataset), counters, name, 0

  def __iter__(self) -> GrainBatchIterator:
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    batch = next(self._it)
    self.batches += 1
    return batch

  def get_state(self) -> dict[str, Any]:
    return {"version": STATE_VERSION, "pipeline": "grain", "fingerprint": self._fingerprint,
            "batches": self.batches, "grain": self._it.get_state(), "counts": self.stats()}

  def set_state(self, state: Mapping[str, Any]) -> None:
    if state.get("version") != STATE_VERSION or state.get("pipeline") != "grain":
      raise ValueError(f"iterator state {state.get('pipeline', 'seqio')} v"
                       f"{state.get('version')} is not a Grain v{STATE_VERSION} state")
    for key, value in self._fingerprint.items():
      if state["fingerprint"].get(key) != value:
        raise ValueError(f"iterator state was saved with {key}={state['fingerprint'].get(key)!r}"
                         f", this iterator has {value!r}; it cannot resume exactly")
    self._it.set_state(state["grain"])
    self.batches = int(state["batches"])
    self._counters.restore(state.get("counts", {}).get(self._name, {}))

  def stats(self) -> dict[str, dict[str, int]]:
    return {self._name: self._counters.snapshot()}

  def close(self) -> None:
    pass


def make_train_iterator(cfg: config_lib.DataConfig, *, options: preprocessors.ChatOptions,
                        vocabulary: Any, global_batch_size: int, seq_len: int | None = None,
                        shard: tuple[int, int] = (0, 1), seed: int | None = None
                        ) -> GrainBatchIterator:
  """This host's infinite, resumable training batches over `cfg.train_files`."""
  if cfg.task or cfg.long_tail_boost > 1:
    raise ValueError("data.pipeline='grain' reads train_files; seqio tasks, mixtures and "
                     "long_tail_boost need data.pipeline='seqio'")
  if global_batch_size % shard[1]:
    raise ValueError(f"global_batch_size {global_batch_size} is not divisible by the "
                     f"{shard[1]} hosts")
  seq_len, seed = seq_len or cfg.seq_len, cfg.seed if seed is None else seed
  counters = preprocessors.Counters()
  ds = examples(cfg, options, vocabulary, max_tokens=seq_len + 1, shard=shard, seed=seed,
                counters=counters.scoped(cfg.train_split))
  batches = packed(ds.to_iter_dataset(), batch_size=global_batch_size // shard[1],
                   seq_len=seq_len, pack=cfg.pack)
  fingerprint = {"provider": cfg.name, "seq_len": seq_len, "shard": list(shard), "seed": seed,
                 "global_batch_size": global_batch_size, "pack": cfg.pack}
  return GrainBatchIterator(batches, fingerprint, counters, cfg.name)


def make_eval_iterator(cfg: config_lib.DataConfig, *, options: preprocessors.ChatOptions,
                       vocabulary: Any, global_batch_size: int, seq_len: int | None = None,
                       shard: tuple[int, int] = (0, 1)) -> Iterator[dict[str, np.ndarray]]:
  """One pass over `cfg.eval_files` in file order, one example per row, with `example_ids` and
  `markers/<category>` per row (like `iterator.make_eval_iterator`). Every host yields
  ceil(examples / hosts / B_local) batches; rows past the end of its shard are padding."""
  if not cfg.eval_files:
    raise ValueError("data.pipeline='grain' evaluates data.eval_files; none are set")
  if global_batch_size % shard[1]:
    raise ValueError(f"eval batch size {global_batch_size} is not divisible by the "
                     f"{shard[1]} hosts")
  seq_len, local = seq_len or cfg.seq_len, global_batch_size // shard[1]
  everything = source(cfg.eval_files)
  mine = grain.MapDataset.source(everything)[shard[0]::shard[1]]
  num_batches = max(1, math.ceil(math.ceil(len(everything) / shard[1]) / local))
  counters = preprocessors.Counters().scoped(cfg.eval_split)
  packer = features.RowPacker(local, seq_len, pack=False,
                              marker_categories=options.taxonomy.names)
  def processed() -> Iterator[dict[str, Any]]:
    for i in range(len(mine)):
      raw = mine[i]
      (ex,) = preprocessors.process_records(
          [raw["record"]], [raw["origin"]], options=options, vocabulary=vocabulary,
          max_tokens=seq_len + 1, seeds=[cfg.seed], epochs=[0], counters=counters)
      if ex is not None:
        yield {**ex, "markers": json.dumps(ex["markers"])}

  examples_left = processed()
  for _ in range(num_batches):
    for ex in itertools.islice(examples_left, local):
      packer.try_add(ex)
    yield packer.build() if packer.num_examples else packer.empty()


def chat_options(cfg: config_lib.DataConfig, vocabulary: Any) -> preprocessors.ChatOptions:
  """The `ChatOptions` `tasks.register_from_config` gives the seqio task of `cfg`."""
  # pylint: disable=g-import-not-at-top  (TF-free modules; kept local to the Grain path)
  from treasure_jax.data import chat_templates
  from treasure_jax.markers import dropout as dropout_lib
  from treasure_jax.markers import taxonomy as taxonomy_lib
  tax = taxonomy_lib.load(cfg.taxonomy) if cfg.taxonomy else taxonomy_lib.default_taxonomy()
  return preprocessors.ChatOptions(
      taxonomy=tax, template=chat_templates.get(cfg.template, vocabulary), variant=cfg.variant,
      dropout=dropout_lib.DropoutConfig(p_dataset=cfg.p_dataset, p_sample=cfg.p_sample),
      seed=cfg.seed, on_bad_record=cfg.on_bad_record, on_overflow=cfg.on_overflow,
      normalize=cfg.normalize)
