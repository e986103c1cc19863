"""Teacher-forced NLL of reference responses under a marker setting, with a jitted forward.

An example is built by the data package's own stages (`preprocessors.parse_record` →
`add_markers` → `apply_template` → `tokenize`), so its text, template and token ids are exactly
what training saw; only the prompt side differs by setting:

  none                 no marker list anywhere (the baseline variant; native to a baseline model)
  inferred             no prompt-side markers; the completion-side list is the reference list
  fixed (categories)   those categories on the prompt (the reference value, or a given value);
                       the completion-side list is the reference list with them in force

The completion-side list is teacher-forced like the rest, and the NLL counts the response
tokens only (`response_weights`: the answer and its end-of-turn token), so settings compare the
same tokens. The sums come from `train.step.eval_step`, the function validation uses, jitted
once per (batch, length) bucket. Choosing settings and examples is the sweep's job.
"""
from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from flax import nnx

from treasure_jax.data import chat_templates
from treasure_jax.data import features
from treasure_jax.data import preprocessors
from treasure_jax.eval import cells
from treasure_jax.markers import dropout as dropout_lib
from treasure_jax.markers import taxonomy as taxonomy_lib
from treasure_jax.model import sharding
from treasure_jax.model import transformer
from treasure_jax.train import step as step_lib

# Dropping the whole prompt-side list with probability 1: the "inferred" prompt.
_DROP_ALL = dropout_lib.DropoutConfig(p_dataset=1.0)
_MIN_LENGTH = 64


def build_example(record: Mapping[str, Any], *, kind: str, fixed: Mapping[str, Any] | None,
                  tax: taxonomy_lib.Taxonomy, template: chat_templates.ChatTemplate,
                  vocabulary: Any, max_tokens: int, origin: str) -> dict[str, Any] | None:
  """Token ids and weights of one record under a setting; None when it exceeds `max_tokens`.

  `kind` is "none", "inferred" (also "constrained") or "fixed"; `fixed` maps a category to a
  value, or to None for the record's own value. Bad records raise `preprocessors.RecordError`
  naming `origin`.
  """
  example = preprocessors.parse_record(json.dumps(dict(record), ensure_ascii=False), origin, tax)
  if kind == "none":
    variant, fixed_markers = "baseline", None
  elif kind in ("inferred", "constrained") or not fixed:
    variant, fixed_markers = "markers", None
  elif kind == "fixed":
    variant, fixed_markers = "fixed", dict(fixed)
  else:
    raise ValueError(f"likelihood setting kind {kind!r}: use none, inferred or fixed")
  example = preprocessors.add_markers(example, tax=tax, variant=variant, dropout=_DROP_ALL,
                                      seed=0, epoch=0, fixed_markers=fixed_markers)
  example = preprocessors.apply_template(example, template)
  return preprocessors.tokenize(example, vocabulary, max_tokens=max_tokens, on_overflow="skip")


def _row_sums(graphdef: nnx.GraphDef, state: nnx.State, batch: Mapping[str, jax.Array]):
  sums = step_lib.eval_step(state, batch, graphdef=graphdef)
  return sums["response_loss"], sums["response_weight"]


_JITTED: dict[Any, Any] = {}


def _jitted(graphdef: nnx.GraphDef, plan: sharding.Plan | None):
  """One compiled function per model structure; outputs replicated so every host can read them."""
  key = (graphdef, plan)
  if key not in _JITTED:
    out = None if plan is None else jax.sharding.NamedSharding(plan.mesh,
                                                               jax.sharding.PartitionSpec())
    _JITTED[key] = jax.jit(lambda s, b: _row_sums(graphdef, s, b), out_shardings=out)
  return _JITTED[key]


def _batch_rows(model: transformer.Transformer, n: int) -> int:
  if model.plan is None:
    return n
  shards = math.prod(model.plan.mesh.shape[a] for a in sharding.BATCH_AXES)
  return shards * math.ceil(n / shards)


def score(model: transformer.Transformer, examples: Sequence[Mapping[str, Any] | None], *,
          batch_size: int = 8) -> list[tuple[float, int] | None]:
  """(NLL sum in nats, response token count) per example, in order; None stays None.

  Rows are one example each (no packing); the row length is rounded up to a power of two (at
  least 64) so later batches and cells reuse the compiled forward.
  """
  graphdef, state = nnx.split(model)
  fn = _jitted(graphdef, model.plan)
  out: list[tuple[float, int] | None] = [None] * len(examples)
  todo = [i for i, ex in enumerate(examples) if ex is not None]
  for start in range(0, len(todo), batch_size):
    chunk = todo[start:start + batch_size]
    longest = max(features.positions_needed(examples[i]) for i in chunk)
    seq_len = min(model.cfg.max_seq_len, max(_MIN_LENGTH, 1 << (longest - 1).bit_length()))
    packer = features.RowPacker(_batch_rows(model, batch_size), seq_len, pack=False)
    for i in chunk:
      if not packer.try_add(examples[i]):
        raise ValueError(f"likelihood: example {i} does not fit a row of {seq_len} positions")
    batch = {k: v for k, v in packer.build().items() if k in step_lib.BATCH_KEYS}
    if model.plan is not None:
      batch = jax.device_put(batch, sharding.batch_sharding(model.plan.mesh))
    nll_B, weight_B = jax.device_get(fn(state, batch))
    for row, i in enumerate(chunk):
      out[i] = (float(nll_B[row]), int(np.rint(weight_B[row])))
  return out


def records(model: transformer.Transformer, examples: Sequence[Mapping[str, Any]],
            setting: cells.Setting, *, tax: taxonomy_lib.Taxonomy,
            template: chat_templates.ChatTemplate, vocabulary: Any, batch_size: int,
            origin: str) -> list[dict[str, Any]]:
  """One likelihood cell's records: `nll_sum` and `n_tokens` unless the example is too long."""
  out, inputs = [], []
  for i, example in enumerate(examples):
    given = cells.given_markers(setting, example, None)
    out.append(cells.base_record(example, setting, given, None))
    inputs.append(build_example(example, kind=setting.kind, fixed=setting.markers, tax=tax,
                                template=template, vocabulary=vocabulary,
                                max_tokens=model.cfg.max_seq_len + 1, origin=f"{origin}:{i + 1}"))
  for record, sums in zip(out, score(model, inputs, batch_size=batch_size)):
    if sums is not None:
      record["nll_sum"], record["n_tokens"] = sums
  return out
