"""The marker tasks in the shape T5X consumes: a feature converter, per-epoch dropout under
`seqio.get_dataset`, cacheable tasks and metrics whose targets are the completion.

- `MarkerLMFeatureConverter`: seqio's decoder-only layout (`decoder_target_tokens`,
  `decoder_input_tokens`, `decoder_loss_weights`, with `decoder_segment_ids`/`decoder_positions`
  when packing) where the loss weights are the completion's (`marker_weights + response_weights`,
  both kept as `decoder_marker_weights`/`decoder_response_weights`), packed or not. seqio's own
  `LMFeatureConverter` puts loss on every token and drops the weights.
- `register_t5x_tasks`: the marker task and its baseline twin, named `<...>_t5x:<version>`, with
  a `seqio.CacheDatasetPlaceholder` after the source (the cache holds the records; dropout is
  drawn after it, and seqio allows no run-time `sequence_length` before it), `epoch` and
  `seed` features that make dropout re-draw per epoch of `get_dataset(num_epochs=N)` and per
  `get_dataset(seed=...)`, a `targets_pretokenized` feature holding the completion text
  (marker list + response), and `metric_fns` scoring the completion (marker accuracy, response
  exact match).

Deliberately left to others: the per-example stages (`preprocessors`), the project's own
batches (`features`, `iterator`), T5X itself (not a dependency).
"""
from __future__ import annotations

import collections
import functools
import threading
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import seqio
import tensorflow as tf

from treasure_jax.data import chat_templates
from treasure_jax.data import preprocessors
from treasure_jax.data import tasks
from treasure_jax.markers import dropout as dropout_lib
from treasure_jax.markers import taxonomy as taxonomy_lib
from treasure_jax.markers import template as template_lib

_WEIGHTS = ("marker_weights", "response_weights")


class MarkerLMFeatureConverter(seqio.LMFeatureConverter):
  """LMFeatureConverter with completion-only loss: `task_feature_lengths={"targets": L}`."""
  TASK_FEATURES = {k: seqio.FeatureConverter.FeatureSpec(dtype=tf.int32)
                   for k in ("targets", *_WEIGHTS)}
  MODEL_FEATURES = {k: seqio.FeatureConverter.FeatureSpec(dtype=tf.int32)
                    for k in ("decoder_target_tokens", "decoder_input_tokens",
                              "decoder_loss_weights", "decoder_marker_weights",
                              "decoder_response_weights")}

  def _convert_example(self, features: Mapping[str, tf.Tensor]) -> Mapping[str, tf.Tensor]:
    d = dict(super()._convert_example(features))
    # Weights sit on the target token itself (as in `features.RowPacker`), so no shift; they
    # arrive offset by one (see __call__), padding being 0 - 1, clipped to 0.
    marker, response = (tf.maximum(features[k] - 1, 0) for k in _WEIGHTS)
    d["decoder_marker_weights"], d["decoder_response_weights"] = marker, response
    d["decoder_loss_weights"] = marker + response
    return d

  def __call__(self, ds: tf.data.Dataset, task_feature_lengths: Mapping[str, int]
               ) -> tf.data.Dataset:
    # The weights are as long as `targets`; callers give only its length.
    lengths = {**{k: task_feature_lengths["targets"] for k in _WEIGHTS}, **task_feature_lengths}
    # seqio's packing takes 0 for padding and would drop zero weights: pack weights + 1.
    offset = lambda f: {**f, **{k: f[k] + 1 for k in _WEIGHTS}}  # noqa: E731
    return super().__call__(ds.map(offset, num_parallel_calls=tf.data.AUTOTUNE), lengths)

  def get_model_feature_lengths(self, task_feature_lengths: Mapping[str, int]
                                ) -> Mapping[str, int]:
    lengths = dict(super().get_model_feature_lengths(task_feature_lengths))
    for k in ("decoder_marker_weights", "decoder_response_weights"):
      lengths[k] = task_feature_lengths["targets"]
    return lengths


def epoch_preprocessor(dataset: tf.data.Dataset, default_seed: int = 0) -> tf.data.Dataset:
  """Adds `epoch` (times this record's `origin` was seen before in this dataset) and `seed`
  (`get_dataset`'s seed, else `default_seed`).

  seqio repeats a task after its preprocessors, so a preprocessor never sees the epoch; counting
  each record's passes does. The counter is created when seqio builds the dataset (one per
  `get_dataset` call) and runs sequentially, so the count is deterministic.
  """
  seed = seqio.utils._NEXT_MAP_SEED  # pylint: disable=protected-access (seqio's own seed hook)
  seed = default_seed if seed is None else int(seed)
  seen: collections.Counter[bytes] = collections.Counter()
  lock = threading.Lock()

  def count(origin: bytes) -> np.int64:
    with lock:
      epoch = seen[origin]
      seen[origin] += 1
    return np.int64(epoch)

  def add(f: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
    epoch = tf.numpy_function(count, [f["origin"]], tf.int64, stateful=True)
    return {**f, "epoch": tf.ensure_shape(epoch, []), "seed": tf.constant(seed, tf.int64)}

  return dataset.map(tf.autograph.experimental.do_not_convert(add))  # Sequential.


def completion_text(dataset: tf.data.Dataset, output_features: Mapping[str, seqio.Feature]
                    ) -> tf.data.Dataset:
  """Adds `targets_pretokenized`: the decoded completion (the tokens that carry loss)."""
  vocabulary = output_features["targets"].vocabulary

  def add(f: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
    ids = tf.boolean_mask(f["targets"], (f["marker_weights"] + f["response_weights"]) > 0)
    return {**f, "targets_pretokenized": vocabulary.decode_tf(ids)}

  return dataset.map(tf.autograph.experimental.do_not_convert(add),
                     num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def postprocess(output: Any, example: Any = None, is_target: bool = False) -> str:
  """Model output or `targets_pretokenized` as text (parsing is the metrics' job)."""
  del example, is_target
  return output.decode("utf-8") if isinstance(output, bytes) else str(output)


def marker_accuracy(targets: Sequence[str], predictions: Sequence[str], *,
                    taxonomy: taxonomy_lib.Taxonomy) -> dict[str, float]:
  """Share of the target completions' markers the predictions reproduce, overall and per
  category (a category absent from a target is not scored)."""
  hits: collections.Counter[str] = collections.Counter()
  totals: collections.Counter[str] = collections.Counter()
  for target, prediction in zip(targets, predictions):
    want = template_lib.parse_completion(target, taxonomy).markers
    got = template_lib.parse_completion(prediction, taxonomy).markers
    for name, value in want.items():
      totals[name] += 1
      hits[name] += got.get(name) == value
  out = {f"marker_accuracy/{k}": 100.0 * hits[k] / totals[k] for k in sorted(totals)}
  out["marker_accuracy"] = 100.0 * sum(hits.values()) / max(sum(totals.values()), 1)
  return out


def response_exact_match(targets: Sequence[str], predictions: Sequence[str], *,
                         taxonomy: taxonomy_lib.Taxonomy) -> dict[str, float]:
  """Share of predictions whose response (marker list stripped) equals the target's."""
  strip = lambda text: template_lib.parse_completion(text, taxonomy).response.strip()  # noqa
  same = [strip(t) == strip(p) for t, p in zip(targets, predictions)]
  return {"response_exact_match": 100.0 * sum(same) / max(len(same), 1)}


def register_t5x_tasks(source_name: str, source: seqio.DataSource, *,
                       vocabulary: seqio.Vocabulary, template: str = "chatml",
                       taxonomy: taxonomy_lib.Taxonomy | None = None,
                       dropout: dropout_lib.DropoutConfig | None = None, seed: int = 0,
                       on_bad_record: str = "error", on_overflow: str = "skip",
                       version: str = tasks.VERSION) -> dict[str, str]:
  """The marker task and its baseline twin for T5X; returns {"markers": ..., "baseline": ...}
  (names `<source>_<template>_<variant>_t5x:<version>`). Train them with
  `MarkerLMFeatureConverter`."""
  tax = taxonomy or taxonomy_lib.default_taxonomy()
  common = dict(taxonomy=tax, template=chat_templates.get(template, vocabulary),
                dropout=dropout or dropout_lib.DropoutConfig(), seed=seed,
                on_bad_record=on_bad_record, on_overflow=on_overflow)
  metrics = [functools.partial(marker_accuracy, taxonomy=tax),
             functools.partial(response_exact_match, taxonomy=tax)]
  names = {}
  for variant in ("markers", "baseline"):
    names[variant] = tasks.task_name(source_name, template, variant + "_t5x", version)
    # Cache the records: dropout is drawn after the cache, and the token cap
    # (`sequence_length`) is only known at run time, which seqio forbids before it.
    before = (seqio.CacheDatasetPlaceholder(),
              functools.partial(epoch_preprocessor, default_seed=seed))
    tasks.register_task(names[variant], source, vocabulary=vocabulary,
                        options=preprocessors.ChatOptions(variant=variant, **common),
                        extra_preprocessors=before, post_preprocessors=(completion_text,),
                        postprocess_fn=postprocess, metric_fns=metrics)
  return names
