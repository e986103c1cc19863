"""Metrics on hand-made records with answers worked out by hand."""
from __future__ import annotations

import math

import pytest

from treasure_jax.eval import length_metrics
from treasure_jax.eval import marker_metrics
from treasure_jax.eval import metrics
from treasure_jax.eval import slices
from treasure_jax.markers import stats
from treasure_jax.markers import taxonomy

TAX = taxonomy.default_taxonomy()
MISSING = marker_metrics.MISSING


def _split_words(text: str) -> int:
  return len(text.split())


def _marker_records():
  return [
      {"id": "a", "markers_given": {},
       "reference_markers": {"domain": "Legal", "task": "QuestionAnswering", "lang": "English",
                             "length_tokens": 100, "quality_bucket": 1},
       "markers_generated": {"domain": "Legal", "task": "Explanation", "lang": "English",
                             "length_tokens": 90, "quality_bucket": "1"}},
      {"id": "b", "reference_markers": {"domain": "Medical", "lang": "French"},
       "markers_generated": {"domain": "Legal", "lang": "French"}},
      {"id": "c", "reference_markers": {"domain": "Legal", "task": "QuestionAnswering"},
       "markers_generated": {"task": "QuestionAnswering"}},
      # The prompt gave the domain: copied, not inferred, so it does not count by default.
      {"id": "d", "markers_given": {"domain": "Code"}, "reference_markers": {"domain": "Code"},
       "markers_generated": {"domain": "Code"}},
  ]


def test_marker_accuracy_per_category_and_confusion():
  result = marker_metrics.marker_accuracy(_marker_records(), tax=TAX)
  per = result["per_category"]
  assert per["domain"]["n"] == 3 and per["domain"]["correct"] == 1
  assert per["domain"]["accuracy"] == pytest.approx(1 / 3)
  assert per["domain"]["missing"] == 1
  # Taxonomy order (Medical before Legal), then the missing prediction.
  assert per["domain"]["confusion"] == {
      "labels": ["Medical", "Legal", MISSING],
      "matrix": [[0, 1, 0], [0, 1, 1], [0, 0, 0]]}
  assert per["task"]["accuracy"] == 0.5
  assert per["lang"]["accuracy"] == 1.0
  assert per["quality_bucket"]["accuracy"] == 1.0  # "1" parses to the int 1.
  assert per["length_tokens"]["mean_abs_error"] == 10.0
  assert "confusion" not in per["length_tokens"]
  assert result["macro_accuracy"] == pytest.approx((1 / 3 + 1 / 2 + 1 + 1) / 4)


def test_marker_accuracy_can_include_given_markers_and_restrict_categories():
  result = marker_metrics.marker_accuracy(_marker_records(), tax=TAX, categories=["domain"],
                                          exclude_given=False)
  assert list(result["per_category"]) == ["domain"]
  assert result["per_category"]["domain"]["accuracy"] == 0.5
  with pytest.raises(taxonomy.MarkerError, match="nonsense"):
    marker_metrics.marker_accuracy(_marker_records(), tax=TAX, categories=["nonsense"])


def test_expected_calibration_error_hand_computed():
  # Bins [0, .5) and [.5, 1]: {0.2: wrong} -> |0 - .2| * 1/4 = .05;
  # {.9 right, .9 wrong, .6 right}: conf .8, acc 2/3 -> 2/15 * 3/4 = .1.
  out = marker_metrics.expected_calibration_error([0.9, 0.9, 0.2, 0.6],
                                                  [True, False, False, True], n_bins=2)
  assert out["ece"] == pytest.approx(0.15)
  assert [b["n"] for b in out["bins"]] == [1, 3]
  assert out["bins"][1]["mean_confidence"] == pytest.approx(0.8)
  assert out["bins"][1]["accuracy"] == pytest.approx(2 / 3)
  perfect = marker_metrics.expected_calibration_error([1.0, 1.0], [True, True], n_bins=10)
  assert perfect["ece"] == 0.0 and perfect["bins"][-1]["n"] == 2
  with pytest.raises(ValueError, match="not in"):
    marker_metrics.expected_calibration_error([1.5], [True])


def test_calibration_from_log_probabilities():
  records = [
      {"id": i, "reference_markers": {"domain": ref}, "markers_generated": {"domain": gen},
       "logprob_of_chosen": {"domain": math.log(p)}}
      for i, (ref, gen, p) in enumerate([("Legal", "Legal", 0.9), ("Legal", "Medical", 0.9),
                                         ("Math", "Code", 0.2), ("Code", "Code", 0.6)])]
  records.append({"id": "no-prob", "reference_markers": {"domain": "Code"},
                  "markers_generated": {"domain": "Code"}})
  out = marker_metrics.calibration(records, tax=TAX, n_bins=2)
  assert out["per_category"]["domain"]["n"] == 4
  assert out["per_category"]["domain"]["ece"] == pytest.approx(0.15)
  assert out["pooled"]["ece"] == pytest.approx(0.15)
  bad = [{"id": "x9", "reference_markers": {"domain": "Code"},
          "markers_generated": {"domain": "Code"}, "logprob_of_chosen": {"domain": 0.7}}]
  with pytest.raises(ValueError, match=r"'x9'.*domain.*<= 0"):
    marker_metrics.calibration(bad, tax=TAX)


def test_length_control_violations_and_relative_error():
  words = lambda n: " ".join(["w"] * n)  # noqa: E731
  records = [
      {"id": 1, "markers_given": {"length_tokens": 5}, "response": words(4)},
      {"id": 2, "markers_given": {"length_tokens": "5"}, "response": words(7)},
      {"id": 3, "length_target": {"length_bucket": "concise"}, "response": words(299)},
      {"id": 4, "length_target": {"length_bucket": "concise"}, "response": words(300)},
      {"id": 5, "length_target": {"length_bucket": "long"}, "response": words(500)},
      {"id": 6, "response": words(3)},  # No target: left out, counted.
  ]
  out = length_metrics.length_control(records, count_words=_split_words)
  assert out["available"] and out["n"] == 5 and out["n_without_target"] == 1
  tokens, bucket = out["by_kind"]["length_tokens"], out["by_kind"]["length_bucket"]
  assert tokens["violations"] == 1 and tokens["violation_rate"] == 0.5
  assert tokens["mean_rel_error"] == pytest.approx((-0.2 + 0.4) / 2)
  assert tokens["mean_abs_rel_error"] == pytest.approx((0.2 + 0.4) / 2)
  assert bucket["violations"] == 2
  assert bucket["mean_abs_rel_error"] == pytest.approx((0 + 1 / 299 + 501 / 1001) / 3)
  assert out["violation_rate"] == pytest.approx(3 / 5)


def test_length_target_precedence_and_errors():
  record = {"length_target": {"length_tokens": 10}, "markers_given": {"length_tokens": 3}}
  assert length_metrics.target_of(record) == ("length_tokens", 10)
  assert length_metrics.target_of({"markers_given": {"length_bucket": "medium"}}) == (
      "length_bucket", "medium")
  assert length_metrics.score_one(1000, "length_bucket", "medium") == (False, 0.0)
  assert length_metrics.score_one(1001, "length_bucket", "medium")[0]
  with pytest.raises(ValueError, match=r"record 4 \(id='q'\).*length_bucket.*tiny"):
    length_metrics.target_of({"id": "q", "markers_given": {"length_bucket": "tiny"}}, 4)
  with pytest.raises(ValueError, match="positive integer"):
    length_metrics.target_of({"length_target": {"length_tokens": 0}})
  none = length_metrics.length_control([{"response": "hi"}], count_words=_split_words)
  assert none == {"available": False, "reason": none["reason"], "n_without_target": 1}


def test_default_word_counter_is_the_annotate_one():
  from treasure_jax.annotate import text_stats  # pylint: disable=g-import-not-at-top
  assert length_metrics.default_word_counter() is text_stats.count_words
  out = length_metrics.length_control(
      [{"markers_given": {"length_tokens": 2}, "response": "state-of-the-art 3.14 works"}])
  assert out["by_kind"]["length_tokens"]["mean_words"] == 3


def test_response_nll_and_scores():
  records = [{"nll_sum": 10.0, "n_tokens": 5, "scores": {"pass": True, "judge_win": 0.5}},
             {"nll_sum": 3.0, "n_tokens": 1, "scores": {"pass": False, "judge_win": None}},
             {"scores": {"pass": True}}]
  nll = metrics.response_nll(records)
  assert nll["nll_per_token"] == pytest.approx(13 / 6)
  assert nll["mean_example_nll_per_token"] == pytest.approx(2.5)
  assert nll["perplexity"] == pytest.approx(math.exp(13 / 6))
  assert nll["n"] == 2 and nll["n_skipped"] == 1
  scores = metrics.score_summary(records)
  assert scores["pass"] == {"mean": pytest.approx(2 / 3), "n": 3, "n_missing": 0}
  assert scores["judge_win"] == {"mean": 0.5, "n": 1, "n_missing": 2}
  with pytest.raises(ValueError, match="n_tokens"):
    metrics.response_nll([{"id": 3, "nll_sum": 1.0, "n_tokens": 0}])
  merged = metrics.with_scores(records[:2], "reward_win", [1.0, 0.0])
  assert merged[0]["scores"] == {"pass": True, "judge_win": 0.5, "reward_win": 1.0}
  assert "reward_win" not in records[0]["scores"]  # Inputs are not modified.


def _training_table():
  training = ([{"markers": {"domain": "Medical"}}] * 98 + [{"markers": {"domain": "Legal"}}] * 2)
  return stats.frequency_table(training, TAX)


def test_slices_head_and_tail_from_training_frequencies():
  freq = _training_table()
  records = [{"id": 1, "reference_markers": {"domain": "Medical"}},
             {"id": 2, "reference_markers": {"domain": "Legal"}},
             {"id": 3, "reference_markers": {"domain": "Finance"}},  # Never in training: tail.
             {"id": 4, "reference_markers": {"lang": "English"}}]
  sliced = slices.slice_records(records, freq, tax=TAX)
  assert set(sliced) == {"domain", "lang"}
  assert [r["id"] for r in sliced["domain"]["head"]] == [1]
  assert [r["id"] for r in sliced["domain"]["tail"]] == [2, 3]
  assert sorted(sliced["domain"]["values"]) == ["Finance", "Legal", "Medical"]
  assert sliced["domain"]["tail_values"] == ["Legal", "Finance"]
  mapped = slices.map_slices(sliced, lambda rs: {"n": len(rs)})
  assert mapped["lang"]["head"] == {"n": 0} and mapped["lang"]["tail"] == {"n": 1}


def test_cell_metrics_with_slices():
  records = [
      {"id": 1, "reference_markers": {"domain": "Medical"},
       "markers_generated": {"domain": "Medical"}, "logprob_of_chosen": {"domain": -0.1},
       "markers_given": {"length_tokens": 3}, "response": "one two", "nll_sum": 4.0,
       "n_tokens": 2, "scores": {"judge_win": 1.0}},
      {"id": 2, "reference_markers": {"domain": "Legal"},
       "markers_generated": {"domain": "Medical"}, "logprob_of_chosen": {"domain": -0.2},
       "markers_given": {"length_tokens": 3}, "response": "one two three four",
       "nll_sum": 9.0, "n_tokens": 3, "scores": {"judge_win": 0.0}},
  ]
  out = metrics.cell_metrics(records, tax=TAX, freq=_training_table(), count_words=_split_words)
  assert out["marker_accuracy"]["per_category"]["domain"]["accuracy"] == 0.5
  assert out["calibration"]["available"]
  assert out["length"]["violation_rate"] == 0.5
  assert out["nll"]["nll_per_token"] == pytest.approx(13 / 5)
  assert out["scores"]["judge_win"]["mean"] == 0.5
  assert out["scores"]["pass"] == {"available": False, "reason": "not measured"}
  domain = out["slices"]["by_category"]["domain"]
  assert domain["tail_values"] == ["Legal"]
  assert domain["head"]["marker_accuracy"] == {"domain": 1.0}
  assert domain["tail"]["marker_accuracy"] == {"domain": 0.0}
  assert domain["tail"]["scores"] == {"judge_win": 0.0}
  assert domain["head"]["length_violation_rate"] == 0.0
  assert domain["tail"]["length_violation_rate"] == 1.0
  assert domain["values"]["Legal"]["nll_per_token"] == 3.0


def test_cell_metrics_reports_every_missing_metric_with_a_reason():
  out = metrics.cell_metrics([{"id": 1, "prompt": "p", "response": "r"}], tax=TAX,
                             score_notes={"judge_win": "no judge endpoint configured"})
  for key in ("marker_accuracy", "calibration", "length", "nll", "slices"):
    assert out[key]["available"] is False and out[key]["reason"], key
  assert out["scores"]["judge_win"]["reason"] == "no judge endpoint configured"


def test_seqio_marker_accuracy_through_the_evaluator():
  seqio = pytest.importorskip("seqio")
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from treasure_jax.markers import template  # pylint: disable=g-import-not-at-top

  def completion(markers):
    return template.completion_side("answer", markers, TAX)

  targets = [completion({"domain": "Legal", "lang": "English"}),
             completion({"domain": "Medical", "lang": "French"})]
  predictions = [completion({"domain": "Legal", "lang": "English"}),
                 completion({"domain": "Legal", "lang": "French"})]
  data = {"inputs": ["q1", "q2"], "targets": targets}

  def dataset_fn(split, shuffle_files, seed=None):
    del split, shuffle_files, seed
    return tf.data.Dataset.from_tensor_slices(data)

  name = "treasure_jax_test_marker_accuracy"
  vocab = seqio.ByteVocabulary()
  seqio.TaskRegistry.remove(name)
  seqio.TaskRegistry.add(
      name, source=seqio.FunctionDataSource(dataset_fn, splits=["validation"]),
      preprocessors=[seqio.preprocessors.tokenize, seqio.preprocessors.append_eos],
      output_features={k: seqio.Feature(vocab, add_eos=True) for k in ("inputs", "targets")},
      metric_fns=[marker_metrics.make_seqio_marker_accuracy(TAX)])
  try:
    evaluator = seqio.Evaluator(name, seqio.EncDecFeatureConverter(pack=False))

    def predict_fn(dataset, model_feature_lengths=None):
      del dataset, model_feature_lengths
      # Real decoders return equal-length, zero-padded id arrays; seqio stacks them.
      ids = [vocab.encode(p) for p in predictions]
      width = max(map(len, ids))
      return [(i, x + [0] * (width - len(x))) for i, x in enumerate(ids)]

    result = evaluator.evaluate(compute_metrics=True, predict_fn=predict_fn)[0].result()[name]
  finally:
    seqio.TaskRegistry.remove(name)
  assert result["marker_accuracy/domain"] == 0.5
  assert result["marker_accuracy/lang"] == 1.0
  assert result["marker_accuracy/macro"] == 0.75
