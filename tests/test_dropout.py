"""Tests of markers.dropout: rates, determinism, per-category overrides, epoch re-draws."""
import pytest

from treasure_jax.markers import dropout

MARKERS = {"domain": "Code", "task": "CodeFix", "lang": "English", "length_bucket": "concise"}


def _draws(cfg, n=10_000, epoch=0):
  return [dropout.apply(MARKERS, cfg, seed=0, example_id=i, epoch=epoch) for i in range(n)]


@pytest.mark.parametrize("p_d,p_s", [(0.5, 0.5), (0.7, 0.3), (0.0, 0.5)])
def test_rates_over_10k_draws_within_2_percent(p_d, p_s):
  draws = _draws(dropout.DropoutConfig(p_dataset=p_d, p_sample=p_s))
  all_dropped = sum(1 for d in draws if not d) / len(draws)
  # P(empty) = p_d + (1 - p_d) * p_s^4; estimate p_d from it, and p_s from surviving lists.
  expected_empty = p_d + (1 - p_d) * p_s ** len(MARKERS)
  assert abs(all_dropped - expected_empty) < 0.02
  dataset_kept = [d for i, d in enumerate(draws)
                  if dropout.uniform(0, i, 0, dropout._DATASET_LEVEL) >= p_d]
  assert abs(1 - len(dataset_kept) / len(draws) - p_d) < 0.02
  dropped_share = 1 - sum(len(d) for d in dataset_kept) / (len(MARKERS) * len(dataset_kept))
  assert abs(dropped_share - p_s) < 0.02


def test_deterministic_and_epoch_redraws():
  cfg = dropout.DropoutConfig()
  assert _draws(cfg, 200) == _draws(cfg, 200)
  assert _draws(cfg, 200, epoch=0) != _draws(cfg, 200, epoch=1)
  other_seed = [dropout.apply(MARKERS, cfg, seed=1, example_id=i, epoch=0) for i in range(200)]
  assert other_seed != _draws(cfg, 200)


def test_per_category_never_drop():
  cfg = dropout.DropoutConfig(p_dataset=0.0, p_sample=0.9, per_category={"lang": 0.0})
  draws = _draws(cfg, 1000)
  assert all(d.get("lang") == "English" for d in draws)
  assert sum("domain" in d for d in draws) < 200


def test_draw_of_one_marker_does_not_depend_on_the_others():
  cfg = dropout.DropoutConfig(p_dataset=0.0)
  for i in range(100):
    full = dropout.apply(MARKERS, cfg, seed=3, example_id=f"ex{i}", epoch=2)
    alone = dropout.apply({"task": "CodeFix"}, cfg, seed=3, example_id=f"ex{i}", epoch=2)
    assert ("task" in full) == ("task" in alone)


def test_invalid_probability():
  with pytest.raises(ValueError, match="per_category.lang=1.5"):
    dropout.DropoutConfig(per_category={"lang": 1.5})
