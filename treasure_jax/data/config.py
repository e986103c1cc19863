"""`DataConfig`: the data section of a run's config, as one frozen dataclass.

It names either a registered seqio Task/Mixture (`task`) or annotated JSONL files, from which
`tasks.register_from_config` registers `<name>_<template>_<variant>` tasks. Everything about
the data a run needs is here; the batch size, sequence length and host shard come from the
trainer (`iterator.make_train_iterator`'s arguments), which owns them.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from treasure_jax.data import chat_templates
from treasure_jax.data import preprocessors

PIPELINES = ("seqio", "grain")

@dataclasses.dataclass(frozen=True)
class DataConfig:
  """Args:
    task: a registered seqio Task or Mixture name; if set, the file fields are ignored.
    name: the source name in task names built from files (`<name>_<template>_<variant>`).
    train_files / eval_files: annotated JSONL paths or globs (local or any tf.io.gfile path).
    template: "model" (the tokenizer's own chat template) or a built-in: chatml, llama3, gemma.
    variant: "markers" or "baseline" (same examples and template, no markers at all).
    taxonomy: a taxonomy JSON/YAML path; "" = the built-in default.
    p_dataset / p_sample: prompt-side dropout (whole list / per marker).
    seq_len: positions per row (an example may have seq_len + 1 tokens).
    pack: several examples per row.
    paired_order: shuffle a marker task and its baseline twin by the name they share
      (`tasks.twin_key`), so both runs read the records in the same order; off, each task
      shuffles by its own name (two different orders of the same records). The Grain
      pipeline's order never depends on the variant.
    examples_per_batch: > 0 closes each step's batch (global, over all hosts) after that many
      examples, even with room left in its rows; with `paired_order` (required), a run and its
      twin then train on one stream of examples, K a step, the paper's "same data and
      schedule", although the baseline's examples are shorter (no marker lists): the same
      rows and positions, so the same compute, the baseline's rows holding more padding.
      A batch still closes early at an example that fits in no row (more often for the longer
      marked examples), and an example skipped in one variant only (on_overflow="skip") is
      missing from that run; from then on it trails its twin by those examples, which the
      per-step `examples` metric shows. Choose K the rows hold. 0 = as many as fit
      (compute-matched: the baseline sees more examples).
    on_bad_record: "error" (raise naming file:line) or "skip" (drop and count).
    normalize: repair raw chats before validation (`annotate.normalize`: leading assistant
      turns, repeated roles, empty turns, ShareGPT roles), each repair counted.
    on_overflow: "error", "skip" or "truncate" (cut the completion's end) for long examples.
    shuffle_buffer: examples in the per-epoch shuffle buffer (after host sharding).
    long_tail_boost: > 1 up-samples examples carrying a long-tail marker value that many times.
    long_tail_threshold: share below which a marker value is long-tail.
    seed: the data seed (shuffle order and dropout draws).
    pipeline: "seqio" (tf.data, seqio tasks and mixtures) or "grain" (no TensorFlow; JSONL,
      Parquet or ArrayRecord train_files / eval_files; same per-example preprocessing, see
      `grain_pipeline`; the trainer's side is `train.inputs`).
    train_split / eval_split: split names of the task.
  """
  task: str = ""
  name: str = "data"
  train_files: tuple[str, ...] = ()
  eval_files: tuple[str, ...] = ()
  template: str = "chatml"
  variant: str = "markers"
  taxonomy: str = ""
  p_dataset: float = 0.5
  p_sample: float = 0.5
  seq_len: int = 2048
  pack: bool = True
  paired_order: bool = False
  examples_per_batch: int = 0
  on_bad_record: str = "error"
  normalize: bool = False
  on_overflow: str = "skip"
  shuffle_buffer: int = 10_000
  long_tail_boost: float = 1.0
  long_tail_threshold: float = 0.05
  seed: int = 0
  train_split: str = "train"
  eval_split: str = "validation"
  pipeline: str = "seqio"

  def __post_init__(self):
    for key in ("train_files", "eval_files"):
      value = getattr(self, key)
      if isinstance(value, str):
        object.__setattr__(self, key, (value,))
      else:
        object.__setattr__(self, key, tuple(value))
    if not self.task and not self.train_files and not self.eval_files:
      raise ValueError("DataConfig: set `task` or `train_files`/`eval_files`")
    if self.template != "model" and self.template not in chat_templates.BUILTIN:
      raise ValueError(f"DataConfig.template={self.template!r}: use model, "
                       f"{', '.join(chat_templates.BUILTIN)}")
    if self.pipeline not in PIPELINES:
      raise ValueError(f"DataConfig.pipeline={self.pipeline!r}: use {', '.join(PIPELINES)}")
    if self.variant not in ("markers", "baseline"):
      raise ValueError(f"DataConfig.variant={self.variant!r}: use markers or baseline")
    for key, allowed in (("on_bad_record", preprocessors.ON_BAD_RECORD),
                         ("on_overflow", preprocessors.ON_OVERFLOW)):
      if getattr(self, key) not in allowed:
        raise ValueError(f"DataConfig.{key}={getattr(self, key)!r}: use {', '.join(allowed)}")
    if self.seq_len < 1 or self.shuffle_buffer < 1:
      raise ValueError("DataConfig: seq_len and shuffle_buffer must be positive")
    if self.examples_per_batch < 0:
      raise ValueError(f"DataConfig.examples_per_batch={self.examples_per_batch} must be >= 0 "
                       "(0 = as many as fit)")
    if self.examples_per_batch and not self.paired_order:
      raise ValueError(f"DataConfig.examples_per_batch={self.examples_per_batch} needs "
                       "paired_order=True: without it the twins read different examples")
    if self.examples_per_batch and self.pipeline == "grain":
      raise ValueError("DataConfig.examples_per_batch needs data.pipeline='seqio' (Grain's "
                       "first-fit packer has no per-batch example cap)")
    if self.long_tail_boost < 1:
      raise ValueError(f"DataConfig.long_tail_boost={self.long_tail_boost} must be >= 1")

  @classmethod
  def from_dict(cls, d: Mapping[str, Any]) -> DataConfig:
    """From a config section (e.g. `cfg.data.to_dict()`); an unknown key fails, named."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
      raise ValueError(f"data config: unknown keys {unknown}; known: {sorted(known)}")
    return cls(**dict(d))

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)
