"""Registering marker tasks, their baseline twins and fixed-marker evaluation tasks with seqio.

Task names are `<source>_<template>_<variant>:<version>`, e.g.
`chatterbot_chatml_markers:1.0.0` and its twin `chatterbot_chatml_baseline:1.0.0` (same
source, template and examples, no markers). A user registers both in a few lines:

  vocabulary = vocab.make("hf", "/path/to/tokenizer_dir")
  names = tasks.register_marker_tasks("mydata", sources.JsonlDataSource(
      {"train": "gs://bucket/train-*.jsonl", "validation": "gs://bucket/val.jsonl"}),
      vocabulary=vocabulary, template="chatml")

Every task has one preprocessor (`preprocessors.chat_preprocessor`) and one output feature,
`targets`; its skip/truncation counts are in `counters(name)`. Mixtures are `mixtures`' job.
"""
from __future__ import annotations

import functools
import re
from collections.abc import Iterator, Mapping
from typing import Any

import seqio
import tensorflow as tf

from treasure_jax.data import chat_templates
from treasure_jax.data import config as config_lib
from treasure_jax.data import preprocessors
from treasure_jax.data import sources
from treasure_jax.markers import dropout as dropout_lib
from treasure_jax.markers import taxonomy as taxonomy_lib

VERSION = "1.0.0"
_COUNTERS: dict[str, preprocessors.Counters] = {}


def task_name(source_name: str, template: str, variant: str, version: str = VERSION) -> str:
  return f"{source_name}_{template}_{variant}:{version}"


def twin_key(task: seqio.Task) -> str:
  """The name a marker task and its baseline twin share: `<source>_<template>:<version>` (or
  `..._tail:<version>` for `mixtures.register_long_tail`'s copy), the variant left out; any
  other task's own name. `data.paired_order` shuffles by it."""
  base, colon, version = task.name.rpartition(":")
  try:
    variant = options(task).variant
  except ValueError:
    return task.name
  if variant not in ("markers", "baseline"):
    return task.name
  return re.sub(rf"_{variant}(?=(_tail)?$)", "", base, count=1) + colon + version


def output_features(vocabulary: seqio.Vocabulary) -> dict[str, seqio.Feature]:
  # No EOS added here: the chat template writes the end-of-turn token (or the preprocessor
  # appends EOS), and it must carry loss weight like the rest of the completion.
  return {"targets": seqio.Feature(vocabulary, add_eos=False, dtype=tf.int32)}


def counters(name: str, *, missing_ok: bool = False) -> preprocessors.Counters | None:
  """Records read, skipped (by reason) and truncated by task `name`'s preprocessor, with keys
  prefixed by split ("train/skipped/overflow")."""
  if name not in _COUNTERS and not missing_ok:
    raise KeyError(f"task {name!r} was not registered by treasure_jax.data.tasks")
  return _COUNTERS.get(name)


def as_numpy_iterator(dataset: tf.data.Dataset, name: str) -> Iterator[dict[str, Any]]:
  """Iterates a dataset of task `name` (e.g. `seqio.get_dataset(name, ...)`) as numpy; a bad
  record raises its own `preprocessors.RecordError` (a ValueError naming file:line and the
  reason) instead of TensorFlow's wrapped error with the record buried in a traceback."""
  iterator = dataset.as_numpy_iterator()
  while True:
    try:
      example = next(iterator)
    except StopIteration:
      return
    except tf.errors.OpError as e:
      error = (counters(name, missing_ok=True) or preprocessors.Counters()).last_error
      if error is not None and str(error) in str(e):
        raise error from None
      raise
    yield example


def options(task: seqio.Task) -> preprocessors.ChatOptions:
  """The `ChatOptions` (taxonomy, template, variant, ...) of a task registered here."""
  for prep in task.preprocessors:
    if isinstance(prep, functools.partial) and "options" in prep.keywords:
      return prep.keywords["options"]
  raise ValueError(f"task {task.name!r} has no treasure_jax chat preprocessor")


def register_task(name: str, source: seqio.DataSource, *, vocabulary: seqio.Vocabulary,
                  options: preprocessors.ChatOptions,
                  extra_preprocessors: tuple[Any, ...] = (),
                  post_preprocessors: tuple[Any, ...] = (), **task_kwargs: Any) -> seqio.Task:
  """Registers (replacing any task of that name) one chat task over annotated records;
  `extra_preprocessors`/`post_preprocessors` run before/after the chat preprocessor and
  `task_kwargs` (postprocess_fn, metric_fns) go to `seqio.TaskRegistry.add`."""
  counts = _COUNTERS.setdefault(name, preprocessors.Counters())
  prep = functools.partial(preprocessors.chat_preprocessor, options=options, counters=counts)
  if name in seqio.TaskRegistry.names():
    seqio.TaskRegistry.remove(name)
  return seqio.TaskRegistry.add(
      name, source=source, output_features=output_features(vocabulary),
      preprocessors=[*extra_preprocessors, prep, *post_preprocessors], **task_kwargs)


def register_marker_tasks(source_name: str, source: seqio.DataSource, *,
                          vocabulary: seqio.Vocabulary, template: str = "chatml",
                          taxonomy: taxonomy_lib.Taxonomy | None = None,
                          dropout: dropout_lib.DropoutConfig | None = None, seed: int = 0,
                          on_bad_record: str = "error", on_overflow: str = "skip",
                          version: str = VERSION, normalize: bool = False) -> dict[str, str]:
  """Registers the marker task and its baseline twin; returns {"markers": ..., "baseline": ...}.

  `template` is "model" (the vocabulary's own chat template) or a built-in name; `normalize`
  repairs raw chats first (`ChatOptions.normalize`).
  """
  common = dict(taxonomy=taxonomy or taxonomy_lib.default_taxonomy(),
                template=chat_templates.get(template, vocabulary),
                dropout=dropout or dropout_lib.DropoutConfig(), seed=seed,
                on_bad_record=on_bad_record, on_overflow=on_overflow, normalize=normalize)
  names = {}
  for variant in ("markers", "baseline"):
    names[variant] = task_name(source_name, template, variant, version)
    register_task(names[variant], source, vocabulary=vocabulary,
                  options=preprocessors.ChatOptions(variant=variant, **common))
  return names


def register_fixed_task(source_name: str, source: seqio.DataSource, *,
                        vocabulary: seqio.Vocabulary, fixed_markers: Mapping[str, Any],
                        template: str = "chatml",
                        taxonomy: taxonomy_lib.Taxonomy | None = None,
                        on_bad_record: str = "error", on_overflow: str = "skip",
                        version: str = VERSION) -> str:
  """An evaluation task whose prompts carry `fixed_markers` (value None = the record's own,
  e.g. {"length_tokens": None}); named `<source>_<template>_fixed_<categories>:<version>`."""
  tax = taxonomy or taxonomy_lib.default_taxonomy()
  unknown = [c for c in fixed_markers if c not in tax]
  if unknown:
    raise ValueError(f"fixed_markers: unknown categories {unknown}; known: {', '.join(tax.names)}")
  name = task_name(source_name, template, "fixed_" + "_".join(fixed_markers), version)
  options = preprocessors.ChatOptions(
      taxonomy=tax, template=chat_templates.get(template, vocabulary), variant="fixed",
      fixed_markers=dict(fixed_markers), on_bad_record=on_bad_record, on_overflow=on_overflow)
  register_task(name, source, vocabulary=vocabulary, options=options)
  return name


def register_from_config(cfg: config_lib.DataConfig, vocabulary: seqio.Vocabulary
                         ) -> dict[str, str]:
  """The tasks `cfg` describes: `cfg.task` as is, or marker/baseline tasks over its files.

  Returns {"markers": name, "baseline": name} (both `cfg.task` when a task is named).
  """
  if cfg.task:
    seqio.get_mixture_or_task(cfg.task)  # Fails early, naming the registered ones.
    return {"markers": cfg.task, "baseline": cfg.task}
  split_files = {split: list(files) for split, files in
                 ((cfg.train_split, cfg.train_files), (cfg.eval_split, cfg.eval_files)) if files}
  tax = taxonomy_lib.load(cfg.taxonomy) if cfg.taxonomy else taxonomy_lib.default_taxonomy()
  return register_marker_tasks(
      cfg.name, sources.JsonlDataSource(split_files), vocabulary=vocabulary,
      template=cfg.template, taxonomy=tax,
      dropout=dropout_lib.DropoutConfig(p_dataset=cfg.p_dataset, p_sample=cfg.p_sample),
      seed=cfg.seed, on_bad_record=cfg.on_bad_record, on_overflow=cfg.on_overflow,
      normalize=cfg.normalize)
