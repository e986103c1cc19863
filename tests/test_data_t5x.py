"""Tests of data/t5x.py with seqio's own utilities: completion-only loss under packing, dropout
re-drawn per epoch and per seed under `get_dataset`, cacheable tasks, completion metrics."""
import json

import numpy as np
import pytest
import seqio

from treasure_jax.data import preprocessors
from treasure_jax.data import sources
from treasure_jax.data import t5x
from treasure_jax.data import tasks
from treasure_jax.data import testing
from treasure_jax.markers import dropout as dropout_lib
from treasure_jax.markers import taxonomy
from treasure_jax.markers import template

TAX = taxonomy.default_taxonomy()
MARKERS = {"quality_bucket": 3, "length_tokens": 12, "length_bucket": "concise", "task": "QuestionAnswering",
           "domain": "Math", "lang": "English"}


def _records(n):
  return [{"id": f"r{i}", "prompt": f"What is {i} + {i}?", "response": f"It is {2 * i}.",
           "markers": MARKERS} for i in range(n)]


@pytest.fixture(scope="module")
def names():
  assert TAX.validate(MARKERS)
  return t5x.register_t5x_tasks(
      "t5xunit", sources.records_source({"train": _records(6)}),
      vocabulary=testing.small_bpe_vocabulary(), template="chatml",
      dropout=dropout_lib.DropoutConfig(p_dataset=0.0, p_sample=0.5), seed=3)


def test_feature_converter_keeps_completion_weights_when_packing():
  ds = seqio.test_utils.create_default_dataset(
      [{"targets": [5, 6, 7, 8], "marker_weights": [0, 0, 1, 0],
        "response_weights": [0, 0, 0, 1]},
       {"targets": [9, 10, 11], "marker_weights": [0, 1, 0], "response_weights": [0, 0, 1]}],
      feature_names=("targets", "marker_weights", "response_weights"))
  packed = t5x.MarkerLMFeatureConverter(pack=True)(ds, {"targets": 8})
  seqio.test_utils.assert_dataset(packed, {
      "decoder_target_tokens": [5, 6, 7, 8, 9, 10, 11, 0],
      "decoder_input_tokens": [0, 5, 6, 7, 0, 9, 10, 0],
      "decoder_loss_weights": [0, 0, 1, 1, 0, 1, 1, 0],
      "decoder_marker_weights": [0, 0, 1, 0, 0, 1, 0, 0],
      "decoder_response_weights": [0, 0, 0, 1, 0, 0, 1, 0],
      "decoder_segment_ids": [1, 1, 1, 1, 2, 2, 2, 0],
      "decoder_positions": [0, 1, 2, 3, 0, 1, 2, 0]})
  padded = t5x.MarkerLMFeatureConverter(pack=False)(ds, {"targets": 5})
  got = list(padded.as_numpy_iterator())
  np.testing.assert_array_equal(got[1]["decoder_loss_weights"], [0, 1, 1, 0, 0])


def _prompt_lists(task_name, *, num_epochs=1, seed=None):
  ds = seqio.get_dataset(task_name, task_feature_lengths={"targets": 512},
                         dataset_split="train", shuffle=False, num_epochs=num_epochs, seed=seed,
                         feature_converter=t5x.MarkerLMFeatureConverter(pack=False))
  vocab = testing.small_bpe_vocabulary()
  out = []
  for ex in ds.as_numpy_iterator():
    w = ex["decoder_loss_weights"]
    prompt = ex["decoder_target_tokens"][:int(np.argmax(w > 0))]
    text = vocab.tokenizer.decode(prompt.tolist(), skip_special_tokens=False)
    out.append(template.parse_prompt(text.split("<|im_start|>user\n")[-1].split("<|im_end|>")[0],
                                     TAX)[1])
  return out


def test_dropout_redraws_per_epoch_and_seed_under_get_dataset(names):
  two = _prompt_lists(names["markers"], num_epochs=2, seed=1)
  first, second = two[:6], two[6:]
  assert first != second  # Re-drawn on the second pass over the same records.
  assert _prompt_lists(names["markers"], num_epochs=2, seed=1) == two  # Deterministic.
  assert _prompt_lists(names["markers"], num_epochs=1, seed=2) != first  # Seed matters.
  # The completion-side list is always the full one: only the prompt side drops.
  assert all(set(m) <= set(MARKERS) for m in two)


def test_tasks_are_cacheable_and_score_the_completion(names):
  markers_task = seqio.get_mixture_or_task(names["markers"])
  baseline_task = seqio.get_mixture_or_task(names["baseline"])
  assert markers_task.supports_caching and baseline_task.supports_caching
  # Dropout (and the run-time token cap) come after the cache point.
  for task in (markers_task, baseline_task):
    assert isinstance(task.preprocessors[0], seqio.CacheDatasetPlaceholder)
  raw = {"train": {"record": json.dumps(_records(1)[0]), "origin": "x:1"}}
  ex = seqio.test_utils.test_preprocessing_single(names["markers"], raw)
  target = markers_task.postprocess_fn(ex["targets_pretokenized"], example=ex, is_target=True)
  # Decoded like a prediction: special tokens (the end of turn) are not text.
  assert target == template.completion_side("It is 0.", MARKERS, TAX)
  wrong = target.replace("Math", "Code").replace("It is 0.", "It is 1.")
  scores = {}
  for fn in markers_task.metric_fns:
    scores.update(fn(targets=[target, target], predictions=[target, wrong]))
  assert scores["marker_accuracy/domain"] == 50.0
  assert scores["marker_accuracy"] == pytest.approx(100 * 11 / 12)
  assert scores["response_exact_match"] == 50.0


def test_a_record_outside_the_taxonomy_is_a_catchable_error_naming_file_and_line(tmp_path):
  """The README's seqio snippet on the demo data without its taxonomy (issue 22)."""
  path = tmp_path / "train.jsonl"
  records = [{"id": "ok", "prompt": "Hi", "response": "Hello", "markers": {"lang": "English"}},
             {"id": "sv", "prompt": "Hej", "response": "Hej!", "markers": {"lang": "Swedish"}}]
  testing.write_jsonl(records, str(path))
  source = sources.JsonlDataSource({"train": str(path)})
  vocabulary = testing.small_bpe_vocabulary()
  name = tasks.register_marker_tasks("issue22", source, vocabulary=vocabulary)["markers"]
  ds = seqio.get_mixture_or_task(name).get_dataset(None, "train", shuffle=False)
  with pytest.raises(preprocessors.RecordError, match=r"train\.jsonl:2 \(id sv\): markers "
                     r"outside the taxonomy: lang: 'Swedish' is not allowed"):
    list(tasks.as_numpy_iterator(ds, name))
  demo_like = TAX.extend(values={"lang": ["Swedish"]})
  name = tasks.register_marker_tasks("issue22", source, vocabulary=vocabulary,
                                     taxonomy=demo_like)["markers"]
  ds = seqio.get_mixture_or_task(name).get_dataset(None, "train", shuffle=False)
  assert len(list(tasks.as_numpy_iterator(ds, name))) == 2


def test_seqio_evaluator_scores_predictions_against_the_completion(names):
  """seqio's own Evaluator on the T5X task: a model that writes each example's completion (the
  tokens that carry loss) scores 100; one that writes another answer loses exact match but keeps
  the markers. So the cached targets are the completion, not the prompt."""
  vocab = testing.small_bpe_vocabulary()
  evaluator = seqio.Evaluator(names["markers"],
                              feature_converter=t5x.MarkerLMFeatureConverter(pack=False),
                              eval_split="train", sequence_length={"targets": 512},
                              async_compute_metrics=False)

  def padded(ids):  # Like a T5X model's output: fixed length, 0-padded (0 decodes to nothing).
    return list(ids) + [0] * (512 - len(ids))

  def completions(ds):
    out = []
    for index, ex in ds.as_numpy_iterator():
      ids = ex["decoder_target_tokens"][ex["decoder_loss_weights"] > 0]
      out.append((index, padded(ids.tolist())))
    return out

  def other_answers(ds):
    out = []
    for index, ids in completions(ds):
      text = vocab.decode(ids).replace("It is", "Maybe")
      out.append((index, padded(vocab.encode(text))))
    return out

  scores = {}
  for name, predict in (("exact", completions), ("other", other_answers)):
    future, _ = evaluator.evaluate(compute_metrics=True, predict_fn=predict)
    scores[name] = {k: v for k, v in future.result()[names["markers"]].items()}
  assert scores["exact"]["marker_accuracy"] == 100.0
  assert scores["exact"]["response_exact_match"] == 100.0
  assert scores["other"]["marker_accuracy"] == 100.0
  assert scores["other"]["response_exact_match"] == 0.0
