"""Mixtures of marker tasks: rates by example count or temperature, and long-tail up-sampling.

Rates are seqio's: a number, or a function of the task (`rate_num_examples`, i.e. seqio's
`mixing_rate_num_examples` with a temperature). Long-tail up-sampling adds, next to a task, its
`_tail` twin (the same examples filtered to those carrying a long-tail marker value per
`markers.stats`), mixed so that every tail example is drawn `boost` times as often as a head
example. Sampling itself (deterministic, resumable) is `streams`' job.
"""
from __future__ import annotations

import functools
import json
from collections.abc import Callable, Sequence
from typing import Any, Union

import numpy as np
import seqio
import tensorflow as tf

from treasure_jax.markers import stats
from treasure_jax.markers import taxonomy as taxonomy_lib

Rate = Union[float, Callable[[seqio.Task], float]]


def rate_num_examples(split: str = "train", maximum: int | None = None,
                      temperature: float = 1.0) -> Callable[[seqio.Task], float]:
  """Rate = (number of input examples, capped at `maximum`) ** (1 / temperature)."""
  return functools.partial(seqio.mixing_rate_num_examples, split=split, maximum=maximum,
                           temperature=temperature)


def register_mixture(name: str, tasks_and_rates: Sequence[tuple[str, Rate]]) -> seqio.Mixture:
  """Registers (replacing any of that name) a mixture of registered tasks."""
  if name in seqio.MixtureRegistry.names():
    seqio.MixtureRegistry.remove(name)
  return seqio.MixtureRegistry.add(name, list(tasks_and_rates))


def task_rates(name: str, split: str = "train") -> list[tuple[seqio.Task, float]]:
  """The leaf tasks of a registered task or mixture, with their normalized rates."""
  provider = seqio.get_mixture_or_task(name)
  if isinstance(provider, seqio.Task):
    return [(provider, 1.0)]
  rates = [(task, float(provider.get_rate(task))) for task in provider.tasks]
  total = sum(r for _, r in rates)
  if total <= 0:
    raise ValueError(f"mixture {name!r} has no positive rate (split {split!r})")
  return [(task, r / total) for task, r in rates if r > 0]


def source_records(task: seqio.Task, split: str) -> list[dict[str, Any]]:
  """The JSON records of a task's source split (unparseable lines left out)."""
  records = []
  ds = task.source.get_dataset(split=split, shuffle=False)
  for ex in ds.as_numpy_iterator():
    try:
      record = json.loads(ex["record"])
    except ValueError:
      continue
    if isinstance(record, dict):
      records.append(record)
  return records


def frequency_table(task: seqio.Task, taxonomy: taxonomy_lib.Taxonomy, *, split: str = "train",
                    threshold: float = 0.05) -> stats.FrequencyTable:
  return stats.frequency_table(source_records(task, split), taxonomy, threshold=threshold)


def carries_long_tail(markers: Any, table: stats.FrequencyTable,
                      taxonomy: taxonomy_lib.Taxonomy) -> bool:
  """Whether a record's markers hold a categorical value under the table's threshold."""
  if not isinstance(markers, dict):
    return False
  for name, value in markers.items():
    if name not in table.counts:
      continue
    try:
      value = taxonomy.category(name).convert(value)
    except ValueError:
      continue
    if table.is_long_tail(name, value):
      return True
  return False


def filter_long_tail(dataset: tf.data.Dataset, *, table: stats.FrequencyTable,
                     taxonomy: taxonomy_lib.Taxonomy) -> tf.data.Dataset:
  """seqio preprocessor on raw records: keeps those carrying a long-tail marker value."""

  def keep(text: bytes) -> np.bool_:
    try:
      record = json.loads(text)
    except ValueError:
      return np.bool_(False)
    return np.bool_(isinstance(record, dict)
                    and carries_long_tail(record.get("markers"), table, taxonomy))

  return dataset.filter(tf.autograph.experimental.do_not_convert(
      lambda f: tf.ensure_shape(tf.numpy_function(keep, [f["record"]], tf.bool,
                                                  stateful=False), [])))


def register_long_tail(task_name: str, *, boost: float, taxonomy: taxonomy_lib.Taxonomy,
                       split: str = "train", threshold: float = 0.05,
                       table: stats.FrequencyTable | None = None) -> str:
  """Registers `<task>_tail` and the mixture `<task>_longtail`; returns the mixture's name.

  With N examples of which N_t carry a tail value, rates N : (boost - 1) * N_t draw each tail
  example `boost` times as often as each head example.
  """
  if boost <= 1:
    raise ValueError(f"long-tail boost {boost} must be > 1")
  task = seqio.TaskRegistry.get(task_name)
  records = source_records(task, split)
  table = table or stats.frequency_table(records, taxonomy, threshold=threshold)
  base, _, version = task_name.partition(":")
  suffix = f":{version}" if version else ""
  tail_name, mix_name = f"{base}_tail{suffix}", f"{base}_longtail{suffix}"
  prep = functools.partial(filter_long_tail, table=table, taxonomy=taxonomy)
  if tail_name in seqio.TaskRegistry.names():
    seqio.TaskRegistry.remove(tail_name)
  seqio.TaskRegistry.add_provider(
      tail_name, task.replace(name=tail_name, preprocessors=[prep, *task.preprocessors]))
  n = len(records)
  n_tail = sum(carries_long_tail(r.get("markers"), table, taxonomy) for r in records)
  if n_tail == 0:
    raise ValueError(f"task {task_name!r}: no example carries a long-tail marker value "
                     f"(threshold {threshold:.0%}), nothing to up-sample")
  register_mixture(mix_name, [(task_name, float(n)), (tail_name, (boost - 1) * n_tail)])
  return mix_name
