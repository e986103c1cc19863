"""Bootstrap intervals: coverage, pairing, determinism, edge cases, and per-example extraction."""
from __future__ import annotations

import numpy as np
import pytest

from treasure_jax.eval import bootstrap
from treasure_jax.eval import intervals
from treasure_jax.eval import metrics
from treasure_jax.markers import stats
from treasure_jax.markers import taxonomy

TAX = taxonomy.default_taxonomy()


def test_coverage_of_a_known_mean():
  # 200 samples of n=40 from Bernoulli(0.3): a 95% interval should cover 0.3 about 95% of the
  # time (percentile bootstrap runs a little narrow at small n: accept 88-99%).
  rng = np.random.default_rng(1)
  covered = 0
  for trial in range(200):
    ci = bootstrap.mean(rng.random(40) < 0.3, n_resamples=1000, seed=trial)
    covered += ci["lo"] <= 0.3 <= ci["hi"]
    assert ci["lo"] <= ci["value"] <= ci["hi"] and ci["n"] == 40
  assert 0.88 <= covered / 200 <= 0.99


def test_paired_is_narrower_than_unpaired_on_correlated_data():
  rng = np.random.default_rng(0)
  skill = rng.normal(size=64)  # Per-example difficulty shared by both models.
  a = skill + rng.normal(scale=0.2, size=64)
  b = skill + 0.3 + rng.normal(scale=0.2, size=64)
  paired = bootstrap.paired_difference(a, b)
  unpaired = bootstrap.unpaired_difference(a, b)
  assert paired["value"] == pytest.approx(unpaired["value"]) == pytest.approx(b.mean() - a.mean())
  assert paired["hi"] - paired["lo"] < 0.4 * (unpaired["hi"] - unpaired["lo"])
  assert paired["lo"] > 0 > unpaired["lo"] - 1  # The paired interval excludes 0.


def test_deterministic_given_the_seed_and_edge_cases():
  x = np.random.default_rng(0).normal(size=30)
  assert bootstrap.mean(x, seed=5) == bootstrap.mean(x, seed=5)
  assert bootstrap.mean(x, seed=5)["lo"] != bootstrap.mean(x, seed=6)["lo"]
  assert bootstrap.mean([]) == {"value": None, "lo": None, "hi": None, "n": 0, "level": 0.95}
  assert bootstrap.mean([0.25]) == {"value": 0.25, "lo": 0.25, "hi": 0.25, "n": 1, "level": 0.95}
  assert bootstrap.paired_difference([], [])["value"] is None
  with pytest.raises(ValueError, match="same shape"):
    bootstrap.paired_difference([1, 2], [1, 2, 3])
  with pytest.raises(ValueError, match="finite"):
    bootstrap.mean([1.0, float("nan")])
  assert bootstrap.format_interval(bootstrap.mean([0.0, 1.0, 1.0, 1.0]), pct=True).startswith(
      "75.0% [")
  assert bootstrap.format_interval(None, pct=True) == "n/a"


def test_ratio_and_seeds():
  num, den = np.array([2.0, 4.0, 6.0]), np.array([1.0, 1.0, 2.0])
  assert bootstrap.ratio(num, den)["value"] == pytest.approx(12 / 4)
  # Two seeds on the same examples: the seed mean, resampled jointly.
  two = bootstrap.mean(np.array([[0, 1, 1, 0], [1, 1, 1, 0]]))
  assert two["value"] == pytest.approx(0.625) and two["n"] == 4


def _records(shift: float, ids) -> list[dict]:
  """Chat records with per-example NLL; `shift` lowers every NLL (a better model)."""
  out = []
  for k, i in enumerate(ids):
    out.append({"id": i, "reference_markers": {"domain": "Medical" if k % 4 else "Legal"},
                "markers_generated": {"domain": "Medical"}, "length_target": {"length_tokens": 5},
                "response": " ".join(["w"] * (3 + k % 5)),
                "nll_sum": 10.0 + (k % 7) - shift, "n_tokens": 5})
  return out


def test_paired_difference_pairs_by_example_id():
  freq = stats.frequency_table([{"markers": {"domain": "Medical"}}] * 40
                               + [{"markers": {"domain": "Legal"}}], TAX)
  count = lambda text: len(text.split())  # noqa: E731
  ids = [f"ex{i}" for i in range(40)]
  base = metrics.cell_metrics(_records(0.0, ids), tax=TAX, freq=freq, count_words=count)
  # The marked cell lists the same examples in another order and lacks one.
  marked = metrics.cell_metrics(list(reversed(_records(1.0, ids)))[1:], tax=TAX, freq=freq,
                                count_words=count)
  diff = intervals.difference([(base, marked)], "nll")
  assert diff["n"] == 39
  assert diff["value"] == pytest.approx(-1.0 / 5) and diff["lo"] == pytest.approx(-0.2)
  tail = intervals.estimate([base], "nll", ("domain", "tail"))
  assert tail["n"] == 10  # Legal (1 of 41 training examples) is tail.
  majority = intervals.estimate([base], "majority:domain")
  assert majority["value"] == pytest.approx(30 / 40)  # Medical, the training majority.
  assert intervals.estimate([base], "acc:domain")["value"] == pytest.approx(30 / 40)
  assert intervals.estimate([base], "violation")["value"] == pytest.approx(2 / 5)  # 6, 7 words.
  assert intervals.estimate([{"n_records": 3}], "violation") is None  # No per-example values.


def test_sweep_backfills_per_example_values_of_older_cells(tmp_path):
  from treasure_jax.eval import sweep  # pylint: disable=g-import-not-at-top
  from treasure_jax.eval import sweep_config  # pylint: disable=g-import-not-at-top
  import json  # pylint: disable=g-import-not-at-top
  records = _records(0.0, ["a", "b", "c"])
  (tmp_path / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
  task = sweep_config.TaskConfig(kind="likelihood", data="v.jsonl")
  cell = sweep._Cell("m", "/ckpt", "lik", task, "none", str(tmp_path))  # pylint: disable=protected-access
  cfg, _, _ = sweep_config.resolve({"checkpoints": ("m=/ckpt",), "tasks": {"lik": {
      "kind": "likelihood", "data": "v.jsonl"}}})
  old = {"name": "m/lik/none", "metrics": {"n_records": 3}}
  new = sweep._with_per_example(old, cell, cfg)  # pylint: disable=protected-access
  assert new["metrics"]["per_example"]["id"] == ["a", "b", "c"]
  assert intervals.estimate([new["metrics"]], "nll")["value"] == pytest.approx((10 + 11 + 12) / 15)
  assert sweep._with_per_example(new, cell, cfg) is new  # pylint: disable=protected-access
