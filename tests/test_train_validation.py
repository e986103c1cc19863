"""Tests of train/validation.py: marker codes and head/long-tail slice losses (no JAX)."""
import numpy as np
import pytest

from treasure_jax.markers import stats
from treasure_jax.markers import taxonomy
from treasure_jax.train import validation

TAX = taxonomy.default_taxonomy()


@pytest.fixture()
def codebook():
  return validation.Codebook(TAX)


def test_codes_cover_categorical_categories_only(codebook):
  names = [c.name for c in codebook.categories]
  assert "domain" in names and "quality_bucket" in names and "length_bucket" in names
  assert "length_tokens" not in names and "quality" not in names
  batch = {"inputs": np.zeros((3, 4)),
           "markers/domain": np.array(["Code", "", "NotADomain"], object),
           "markers/quality_bucket": np.array(["1", "4", ""], object)}
  codes = codebook.encode(batch)
  d, q = names.index("domain"), names.index("quality_bucket")
  assert codebook.values[d][codes[0, d]] == "Code"
  assert codes[1, d] == -1 and codes[2, d] == -1  # absent; outside the taxonomy
  assert codebook.values[q][codes[0, q]] == 1 and codebook.values[q][codes[1, q]] == 4
  assert (codes[:, names.index("lang")] == -1).all()  # column missing from the batch


def test_slice_losses_are_token_weighted_and_split_head_from_tail(codebook):
  records = [{"markers": {"domain": "Code"}}] * 19 + [{"markers": {"domain": "Legal"}}]
  table = stats.frequency_table(records, TAX, threshold=0.1)  # Legal: 5% -> long tail
  batch = {"inputs": np.zeros((4, 2)),
           "markers/domain": np.array(["Code", "Code", "Legal", ""], object)}
  codes = codebook.encode(batch)
  sums = {"loss": np.array([2.0, 6.0, 9.0, 0.0]), "weight": np.array([1.0, 3.0, 3.0, 0.0]),
          "marker_correct": np.array([1.0, 0.0, 2.0, 0.0]),
          "marker_weight": np.array([1.0, 1.0, 2.0, 0.0])}
  acc = validation.Accumulator(codebook, table)
  acc.add(sums, codes)
  result = acc.result()
  assert result["loss"] == pytest.approx(17 / 7)
  assert result["loss/domain/Code"] == pytest.approx(8 / 4)
  assert result["loss/domain/Legal"] == pytest.approx(9 / 3)
  assert result["loss_head"] == pytest.approx(2.0) and result["loss_tail"] == pytest.approx(3.0)
  assert result["marker_token_accuracy"] == pytest.approx(3 / 4)


def test_evaluate_runs_the_eval_function_over_batches(codebook):
  batch = {"inputs": np.zeros((2, 2)), "markers/domain": np.array(["Code", "Math"], object)}
  codes = codebook.encode(batch)

  def eval_fn(params, b):
    del params
    return {"loss": np.array([1.0, 3.0]), "weight": np.ones(2), "marker_correct": np.zeros(2),
            "marker_weight": np.ones(2), validation.CODES_KEY: b[validation.CODES_KEY]}

  batches = [{validation.CODES_KEY: codes}] * 3
  result = validation.evaluate(eval_fn, None, batches, codebook, None, max_batches=2)
  assert result["loss"] == pytest.approx(2.0)
  assert result["loss/domain/Math"] == pytest.approx(3.0)
  assert "loss_head" not in result  # No frequency table, no head/tail split.
