"""The seqio preprocessor of every marker task: record -> markers -> chat template -> tokens.

Stages, each a plain Python function on one example (testable without TensorFlow):

  parse_record    JSON text + origin ("file:line") -> id, messages, response, markers
                  (a chat may end with the assistant's answer instead of a `response`)
  add_markers     prompt side: the list after dropout, re-drawn per (seed, example id, epoch),
                  appended to the last user turn; completion side: full list + separator.
                  variant "baseline" adds nothing; "fixed" puts given markers on the prompt.
  apply_template  the chat rendered as `transformers` renders it, with the completion's spans
  tokenize        `targets` (ids of the whole chat) and `marker_weights`/`response_weights`
                  (1 on the completion's marker list / on its response and end-of-turn token)

`chat_preprocessor` runs them all as one seqio preprocessor, a batch of records per
`tf.numpy_function` call (markers, Jinja and byte-level BPE have no TF ops, and one Python call
per stage and example cost 4x the work itself). A bad record (missing prompt or response, a
marker outside the taxonomy, a template error, too many tokens) raises `RecordError` naming its
origin, or is skipped and counted in `Counters`, as `ChatOptions` says. Packing and batching are
`features`' job; reading files is `sources`'.
"""
from __future__ import annotations

import collections
import dataclasses
import json
import threading
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from treasure_jax.annotate import normalize as normalize_lib
from treasure_jax.data import chat_templates
from treasure_jax.data import token_offsets
from treasure_jax.markers import dropout as dropout_lib
from treasure_jax.markers import taxonomy as taxonomy_lib
from treasure_jax.markers import template as template_lib

VARIANTS = ("markers", "baseline", "fixed")
ON_BAD_RECORD = ("error", "skip")
ON_OVERFLOW = ("error", "skip", "truncate")
_ROLES = ("system", "user", "assistant")


class RecordError(ValueError):
  """A bad input record; `reason` is a short counter key, the message names the record."""

  def __init__(self, origin: str, reason: str, detail: str):
    super().__init__(f"{origin}: {detail}")
    self.origin, self.reason = origin, reason


class Counters:
  """Thread-safe counts of records seen, skipped (by reason) and truncated."""

  def __init__(self):
    self._lock = threading.Lock()
    self._counts: collections.Counter[str] = collections.Counter()
    self.last_error: RecordError | None = None

  def add(self, key: str, n: int = 1) -> None:
    with self._lock:
      self._counts[key] += n

  def snapshot(self) -> dict[str, int]:
    with self._lock:
      return dict(sorted(self._counts.items()))

  def restore(self, counts: Mapping[str, int]) -> None:
    """Sets the given counts (others are kept), e.g. from a saved iterator state."""
    with self._lock:
      for key, value in counts.items():
        self._counts[key] = value

  def scoped(self, prefix: str) -> Counters:
    """A view that adds `prefix/` to every key (one per split); errors go to this object."""
    return _ScopedCounters(self, prefix) if prefix else self


class _ScopedCounters(Counters):

  def __init__(self, parent: Counters, prefix: str):  # pylint: disable=super-init-not-called
    self._parent, self._prefix = parent, prefix

  def add(self, key: str, n: int = 1) -> None:
    self._parent.add(f"{self._prefix}/{key}", n)

  def snapshot(self) -> dict[str, int]:
    head = self._prefix + "/"
    return {k[len(head):]: v for k, v in self._parent.snapshot().items() if k.startswith(head)}

  def restore(self, counts: Mapping[str, int]) -> None:
    self._parent.restore({f"{self._prefix}/{k}": v for k, v in counts.items()})

  @property
  def last_error(self) -> RecordError | None:
    return self._parent.last_error

  @last_error.setter
  def last_error(self, error: RecordError | None) -> None:
    self._parent.last_error = error


# ---------------------------------------------------------------- pure Python stages


def parse_record(text: str, origin: str, tax: taxonomy_lib.Taxonomy, *, normalize: bool = False,
                 counters: Counters | None = None) -> dict[str, Any]:
  """A canonical example from one JSONL record; raises RecordError naming `origin`.

  `normalize`: raw chats are first repaired by `annotate.normalize.repair` (the same repairs
  as `treasure-jax annotate --normalize`), each counted in `counters` as `repaired/<kind>`.
  """
  if text.startswith("\ufeff"):
    text = text[1:]  # A byte-order mark before a file's first record is not data.
  try:
    record = json.loads(text)
  except ValueError as e:
    raise RecordError(origin, "invalid_json", f"invalid JSON: {e}") from None
  if not isinstance(record, dict):
    raise RecordError(origin, "invalid_json",
                      f"expected a JSON object, got {type(record).__name__}")
  if normalize:
    record, repairs = normalize_lib.repair(record)
    for kind, n in repairs.items():
      if counters is not None:
        counters.add(f"repaired/{kind}", n)
  example_id = str(record.get("id", origin))
  where = f"{origin} (id {example_id})" if "id" in record else origin
  record = _split_final_answer(record)
  messages = _messages(record, where)
  response = record.get("response")
  if not isinstance(response, str) or not response.strip():
    raise RecordError(where, "missing_response", "missing or empty 'response'")
  markers = record.get("markers") or {}
  if not isinstance(markers, dict):
    raise RecordError(where, "bad_marker", f"'markers' must be an object, got {markers!r}")
  problems = tax.problems(markers)
  if problems:
    raise RecordError(where, "bad_marker", "markers outside the taxonomy: " + "; ".join(problems))
  return {"id": example_id, "origin": origin, "messages": messages, "response": response,
          "markers": tax.validate(markers)}


def _split_final_answer(record: dict[str, Any]) -> dict[str, Any]:
  """A chat whose last message is the assistant's answer, with no `response`: that message is
  the response (the form chat datasets usually take)."""
  messages = record.get("messages")
  if ("response" not in record and isinstance(messages, list) and len(messages) > 1
      and isinstance(messages[-1], dict) and messages[-1].get("role") == "assistant"):
    return {**record, "messages": messages[:-1], "response": messages[-1].get("content")}
  return record


def _messages(record: Mapping[str, Any], where: str) -> list[dict[str, str]]:
  if "messages" in record:
    messages = record["messages"]
    ok = isinstance(messages, list) and messages and all(
        isinstance(m, dict) and m.get("role") in _ROLES and isinstance(m.get("content"), str)
        for m in messages)
    if not ok:
      raise RecordError(where, "missing_prompt", "'messages' must be a non-empty list of "
                        f"{{role: {'|'.join(_ROLES)}, content: str}}")
    if messages[-1]["role"] != "user" or not messages[-1]["content"].strip():
      raise RecordError(where, "missing_prompt", "'messages' must end with a non-empty user turn")
    return [{"role": m["role"], "content": m["content"]} for m in messages]
  prompt = record.get("prompt")
  if not isinstance(prompt, str) or not prompt.strip():
    raise RecordError(where, "missing_prompt", "missing or empty 'prompt' (and no 'messages')")
  return [{"role": "user", "content": prompt}]


def add_markers(example: Mapping[str, Any], *, tax: taxonomy_lib.Taxonomy, variant: str,
                dropout: dropout_lib.DropoutConfig, seed: int, epoch: int,
                fixed_markers: Mapping[str, Any] | None = None) -> dict[str, Any]:
  """`messages` with the prompt-side list on the last user turn, and `completion_prefix`.

  `fixed_markers` (variant "fixed"): category -> value, or -> None to copy the record's value
  (e.g. {"length_tokens": None} asks for the reference length); the completion-side list is
  the record's markers with the fixed values in force.
  """
  out = dict(example)
  if variant == "baseline":
    out["completion_prefix"] = ""
    return out
  markers = example["markers"]
  if variant == "markers":
    prompt_markers = dropout_lib.apply(markers, dropout, seed=seed,
                                       example_id=example["id"], epoch=epoch)
    full = markers
  elif variant == "fixed":
    prompt_markers = {k: (markers.get(k) if v is None else v)
                      for k, v in (fixed_markers or {}).items()}
    prompt_markers = tax.validate({k: v for k, v in prompt_markers.items() if v is not None})
    full = dict(tax.ordered({**markers, **prompt_markers}))
  else:
    raise ValueError(f"variant {variant!r} is not one of {', '.join(VARIANTS)}")
  messages = [dict(m) for m in example["messages"]]
  messages[-1]["content"] = template_lib.prompt_side(messages[-1]["content"], prompt_markers, tax)
  out["messages"] = messages
  out["completion_prefix"] = template_lib.serialize(full, tax) + template_lib.SEPARATOR
  return out


def apply_template(example: Mapping[str, Any], template: chat_templates.ChatTemplate
                   ) -> dict[str, Any]:
  """Adds `text` and the completion spans (`chat_templates.RenderedChat`)."""
  try:
    rendered = chat_templates.render_example(
        template, example["messages"], example["completion_prefix"], example["response"])
  except ValueError as e:
    raise RecordError(example["origin"], "template_error", str(e)) from None
  return {**example, **vars(rendered)}


def tokenize(example: Mapping[str, Any], vocabulary: seqio.Vocabulary, *, max_tokens: int,
             on_overflow: str, counters: Counters | None = None,
             encoded: tuple[np.ndarray, np.ndarray] | None = None) -> dict[str, Any] | None:
  """Adds `targets`, `marker_weights`, `response_weights` (int32 [L]); None = skipped.

  A token is on the completion when its first character is; the appended EOS (templates that
  do not write one) is a response token. `encoded`: `vocab.encode_with_offsets` of the text,
  when the caller tokenized a batch at once.
  """
  ids, starts = encoded or token_offsets.encode_with_offsets(vocabulary, [example["text"]])[0]
  completion = (starts >= example["completion_start"]) & (starts < example["completion_end"])
  markers = completion & (starts >= example["markers_start"]) & (
      starts < example["response_start"])
  response = completion & ~markers
  if example["append_eos"]:
    ids = np.append(ids, np.int32(vocabulary.eos_id))
    markers, response = np.append(markers, False), np.append(response, True)
  if len(ids) > max_tokens:
    detail = f"{len(ids)} tokens exceed the sequence length ({max_tokens} tokens)"
    if on_overflow == "error":
      raise RecordError(example["origin"], "overflow",
                        detail + "; set on_overflow to 'skip' or 'truncate'")
    if on_overflow == "skip" or not (markers[:max_tokens] | response[:max_tokens])[1:].any():
      if counters is not None:
        counters.add("skipped/overflow")
      return None
    if counters is not None:
      counters.add("truncated")
    ids, markers, response = ids[:max_tokens], markers[:max_tokens], response[:max_tokens]
  return {**example, "targets": ids.astype(np.int32), "marker_weights": markers.astype(np.int32),
          "response_weights": response.astype(np.int32)}


# ---------------------------------------------------------------- the seqio preprocessor


@dataclasses.dataclass(frozen=True)
class ChatOptions:
  """Everything `chat_preprocessor` needs besides the vocabulary and sequence length."""
  taxonomy: taxonomy_lib.Taxonomy
  template: chat_templates.ChatTemplate
  variant: str = "markers"
  dropout: dropout_lib.DropoutConfig = dropout_lib.DropoutConfig()
  seed: int = 0
  fixed_markers: Mapping[str, Any] | None = None
  on_bad_record: str = "error"
  on_overflow: str = "error"
  normalize: bool = False  # Repair raw chats first (`annotate.normalize`), counted.

  def __post_init__(self):
    _check_choice("variant", self.variant, VARIANTS)
    _check_choice("on_bad_record", self.on_bad_record, ON_BAD_RECORD)
    _check_choice("on_overflow", self.on_overflow, ON_OVERFLOW)
    if self.variant == "fixed":
      if not self.fixed_markers:
        raise ValueError("variant 'fixed' needs fixed_markers")
      # Fails here, naming the category, rather than inside tf.data.
      self.taxonomy.validate({k: v for k, v in self.fixed_markers.items() if v is not None})
      for name in self.fixed_markers:
        self.taxonomy.category(name)


def process_records(texts: Sequence[str], origins: Sequence[str], *, options: ChatOptions,
                    vocabulary: seqio.Vocabulary, max_tokens: int, seeds: Sequence[int],
                    epochs: Sequence[int], counters: Counters | None = None
                    ) -> list[dict[str, Any] | None]:
  """JSONL records through every stage (one tokenizer call for all); None = skipped."""
  rendered: list[dict[str, Any] | None] = []
  for text, origin, seed, epoch in zip(texts, origins, seeds, epochs):
    if counters is not None:
      counters.add("records")
    rendered.append(_guard(lambda: apply_template(add_markers(
        parse_record(text, origin, options.taxonomy, normalize=options.normalize,
                     counters=counters), tax=options.taxonomy,
        variant=options.variant, dropout=options.dropout, seed=seed, epoch=epoch,
        fixed_markers=options.fixed_markers), options.template), options, counters))
  done = [ex for ex in rendered if ex is not None]
  encoded = iter(token_offsets.encode_with_offsets(vocabulary, [ex["text"] for ex in done]))
  return [None if ex is None else _guard(lambda: tokenize(
      ex, vocabulary, max_tokens=max_tokens, on_overflow=options.on_overflow,
      counters=counters, encoded=next(encoded)), options, counters) for ex in rendered]


def _guard(stage: Any, options: ChatOptions, counters: Counters | None) -> dict[str, Any] | None:
  """Runs `stage()`; a RecordError is raised or counted and skipped, as `options` say."""
  try:
    return stage()
  except RecordError as e:
    skip = options.on_overflow if e.reason == "overflow" else options.on_bad_record
    if skip == "error":
      if counters is not None:
        counters.last_error = e
      raise
    if counters is not None:
      counters.add(f"skipped/{e.reason}")
    return None


def chat_preprocessor(dataset: tf.data.Dataset, output_features: Mapping[str, seqio.Feature],
                      sequence_length: Mapping[str, int] | None, *, options: ChatOptions,
                      counters: Counters | None = None, batch_size: int = 128
                      ) -> tf.data.Dataset:
  """{"record", "origin", ...} -> {"targets", "marker_weights", "response_weights" (int32 [L]),
  "id", "markers" (JSON of the record's full marker dict), "origin", ...}.

  Other scalar features pass through; per-example `seed` and `epoch` (int64), when present,
  override `options.seed` and epoch 0 for the dropout draw; `split` (one per batch of records)
  prefixes the counter keys, so train and validation are counted apart.
  `sequence_length["targets"]` caps the tokens of an example (see `on_overflow`). Records go
  through Python `batch_size` at a time: one `tf.numpy_function` call per batch, not per stage
  and example.
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top  (the Grain path has no TF)
  vocabulary = output_features["targets"].vocabulary
  max_tokens = (sequence_length or {}).get("targets") or np.iinfo(np.int32).max
  has_seed, has_epoch = "seed" in dataset.element_spec, "epoch" in dataset.element_spec

  def py(records, origins, seeds, epochs, splits):
    scoped = None if counters is None else counters.scoped(
        splits[0].decode("utf-8") if len(splits) else "")
    out = process_records(
        [t.decode("utf-8") for t in records], [o.decode("utf-8") for o in origins],
        options=options, vocabulary=vocabulary, max_tokens=max_tokens,
        seeds=seeds.tolist() if has_seed else [options.seed] * len(records),
        epochs=epochs.tolist() if has_epoch else [0] * len(records), counters=scoped)
    return _pack_outputs(out)

  def map_fn(f: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
    n = tf.shape(f["record"])[0]
    zeros = tf.zeros([n], tf.int64)
    splits = f.get("split", tf.fill([n], ""))
    outs = tf.numpy_function(
        py, [f["record"], f["origin"], f.get("seed", zeros), f.get("epoch", zeros), splits],
        [tf.bool, tf.string, tf.string, tf.int64, tf.int32, tf.int32, tf.int32], stateful=False)
    keep, ids, markers, lengths, targets, mw, rw = outs
    new = {k: v for k, v in f.items() if k != "record"}
    new["_keep"] = tf.ensure_shape(keep, [None])
    new["id"], new["markers"] = tf.ensure_shape(ids, [None]), tf.ensure_shape(markers, [None])
    splits = tf.concat([[0], tf.cumsum(tf.ensure_shape(lengths, [None]))], 0)
    for key, flat in (("targets", targets), ("marker_weights", mw), ("response_weights", rw)):
      # Python built the lengths from the arrays themselves: no validation ops needed.
      new[key] = tf.RaggedTensor.from_row_splits(tf.ensure_shape(flat, [None]), splits,
                                                 validate=False)
    return new

  # Plain graph code: skipping autograph conversion saves most of the tracing time.
  no_autograph = tf.autograph.experimental.do_not_convert
  ds = dataset.batch(batch_size).map(no_autograph(map_fn), num_parallel_calls=tf.data.AUTOTUNE,
                                     deterministic=True)
  ds = ds.unbatch().filter(no_autograph(lambda f: f["_keep"]))
  return ds.map(no_autograph(lambda f: {k: v for k, v in f.items() if k != "_keep"}))


def _pack_outputs(out: list[dict[str, Any] | None]) -> list[np.ndarray]:
  """Per-example results -> (keep, id, markers JSON, lengths, flat targets/weights)."""
  kept = [ex for ex in out if ex is not None]
  cat = lambda key: (np.concatenate([ex[key] for ex in kept]) if kept  # noqa: E731
                     else np.zeros([0], np.int32)).astype(np.int32)
  lengths = np.asarray([len(ex["targets"]) if ex is not None else 0 for ex in out], np.int64)
  ids = [ex["id"].encode("utf-8") if ex is not None else b"" for ex in out]
  markers = [json.dumps(ex["markers"], ensure_ascii=False).encode("utf-8") if ex is not None
             else b"" for ex in out]
  return [np.asarray([ex is not None for ex in out], np.bool_), np.asarray(ids, object),
          np.asarray(markers, object), lengths, cat("targets"), cat("marker_weights"),
          cat("response_weights")]


def _check_choice(what: str, value: str, allowed: tuple[str, ...]) -> None:
  if value not in allowed:
    raise ValueError(f"{what}={value!r} is not one of {', '.join(allowed)}")
