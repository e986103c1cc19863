"""Report rendering: the tables, the paper's figures, n/a reasons and valid PNGs."""
from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
from matplotlib import image as mpimg

from treasure_jax.eval import metrics
from treasure_jax.eval import report
from treasure_jax.eval import report_compare
from treasure_jax.markers import stats
from treasure_jax.markers import taxonomy

TAX = taxonomy.default_taxonomy()
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _words(n: int) -> str:
  return " ".join(["w"] * n)


def _records(setting: str, quality: float) -> list[dict]:
  """Four examples; `quality` in [0, 1] moves every metric the same way."""
  out = []
  for i, domain in enumerate(["Medical", "Medical", "Legal", "Finance"]):
    right = i < round(4 * quality)
    given = {"length_tokens": 10} if setting == "fixed" else {}
    out.append({
        "id": i, "prompt": f"p{i}", "markers_given": given,
        "length_target": {"length_tokens": 10},
        "reference_markers": {"domain": domain, "lang": "English"},
        "markers_generated": {"domain": domain if right else "Code", "lang": "English"},
        "logprob_of_chosen": {"domain": math.log(0.8), "lang": math.log(0.99)},
        "response": _words(8 if right else 14),
        "nll_sum": 2.0 * (2 - quality), "n_tokens": 2,
        "scores": {"judge_win": 1.0 if right else 0.0, "reward_win": 0.5}})
  return out


def _cells() -> list[dict]:
  freq = stats.frequency_table([{"markers": {"domain": "Medical"}}] * 24
                               + [{"markers": {"domain": "Legal"}}], TAX)
  count = lambda text: len(text.split())  # noqa: E731
  cells = []
  for ckpt, base in (("baseline", 0.25), ("markers", 0.5)):
    for k, setting in enumerate(("none", "nl_instruction", "inferred", "fixed")):
      records = _records(setting, min(1.0, base + 0.25 * (k // 2)))
      cells.append({"name": f"{ckpt}-{setting}", "checkpoint": ckpt, "task": "alpaca_li",
                    "setting": setting,
                    "metrics": metrics.cell_metrics(records, tax=TAX, freq=freq,
                                                    count_words=count)})
  code = [{"id": i, "scores": {"pass": i % 2 == 0}} for i in range(4)]
  cells.append({"name": "markers-codefix", "checkpoint": "markers", "task": "CodeFix",
                "setting": "fixed", "metrics": metrics.cell_metrics(code, tax=TAX)})
  return cells


def test_report_tables_figures_and_pngs(tmp_path):
  path = report.write(_cells(), str(tmp_path), baselines=("baseline",))
  text = open(path, encoding="utf-8").read()
  for heading in ("## Marker inference accuracy by category", "## Length violations by mode",
                  "## Judge win rate by mode", "## Reward-model win rate by mode",
                  "## Code pass@1 by task", "## Head vs tail",
                  "## Calibration of inferred markers", "## Reference-response NLL per token"):
    assert heading in text
  # Marker accuracy table: paper's categories first; baseline-none inferred 1 of 4 domains.
  assert "| cell | domain | task | format | lang | macro |" not in text  # Only measured ones.
  assert "| cell | domain | lang | macro |" in text
  assert "| baseline-none | 25.0% [0.0, 75.0] n=4 | 100.0% [100.0, 100.0] n=4 | 62.5% |" in text
  # Majority class of the training data (Medical): 2 of the 4 evaluated domains.
  assert "| majority class of the training data | 50.0% [" in text
  # Length pivot: settings as columns in mode order; 1 of 4 responses within 10 words.
  assert "|  | none | nl_instruction | inferred | fixed |" in text
  assert ("| baseline / alpaca_li | 75.0% [25.0, 100.0] n=4 | 75.0% [25.0, 100.0] n=4 | "
          "50.0% [0.0, 100.0] n=4 | 50.0% [0.0, 100.0] n=4 |") in text
  # Only the CodeFix cell measured pass@1; the others are listed as n/a with the reason.
  assert "|  | CodeFix |\n|---|---|\n| markers / fixed | 0.500 [0.000, 1.000] n=4 |\n" in text
  # The paper's figures sit under the matching tables.
  for figure in ("Paper (marker inference accuracy at p_d = 0.5): domain 74.9%",
                 "length_tokens fixed 1.25%", "with markers 37.8%", "quality_bucket = 1 56.5%",
                 "CodeFix (CodeRepair) 0.216 → 0.246", "+9.1 points"):
    assert figure in text
  # Missing metrics are n/a, with the reason.
  assert ("n/a (no record has a reference marker that the prompt did not give): "
          "markers-codefix") in text
  assert "n/a (not measured): baseline-none, baseline-nl_instruction," in text
  assert "| markers / CodeFix |" not in text
  # Head vs tail: Legal (1 of 25 training examples, 4%) and the unseen Finance are tail.
  assert ("| baseline-none | domain | Legal, Finance | 50.0% [0.0, 100.0] n=2 | "
          "0.0% [0.0, 0.0] n=2 |") in text
  # Markers minus baseline on the same examples: every NLL is 0.25 nats lower, so the paired
  # interval is that point; violations drop by one example of four.
  assert ("| markers-none | baseline-none | nll (domain tail) | 1.500 [1.500, 1.500] n=2 | "
          "1.750 [1.750, 1.750] n=2 | -0.250 [-0.250, -0.250] n=2 |") in text
  assert "| markers-none | baseline-none | violation (all) |" in text
  assert "-25.0 pts [" in text
  for name in ("marker_accuracy", "reliability", "length_violations", "length_error",
               "length_scatter", "judge_win", "reward_win", "pass_at_1", "nll_per_token",
               "head_tail"):
    png = tmp_path / f"{name}.png"
    assert png.read_bytes()[:8] == PNG_SIGNATURE, name
    height, width = mpimg.imread(str(png)).shape[:2]
    assert height > 100 and width > 100
    assert f"![{name}.png]({name}.png)" in text
  cells = json.loads((tmp_path / "cells.json").read_text())
  assert len(cells) == 9


def test_report_with_nothing_measured(tmp_path):
  cell = {"name": "empty", "checkpoint": "c", "task": "t", "setting": "inferred",
          "metrics": metrics.cell_metrics([{"id": 1}], tax=TAX)}
  path = report.write([cell], str(tmp_path), paper_figures={"length": None})
  text = open(path, encoding="utf-8").read()
  assert "n/a for every cell (reasons below)." in text
  assert "AlpacaEval-LI" not in text  # The hidden figure.
  assert "n/a (no training frequency table given): empty" in text
  assert not any(p.endswith(".png") for p in os.listdir(tmp_path))
  # The CLI path: the same cell from JSONL gives the same report as `write`.
  cells_path = tmp_path / "cells.jsonl"
  cells_path.write_text(json.dumps(cell) + "\n")
  direct = report.write([cell], str(tmp_path / "direct"))
  again = report.write_from_files(str(cells_path), str(tmp_path / "again"))
  assert open(again, encoding="utf-8").read() == open(direct, encoding="utf-8").read()
  assert "AlpacaEval-LI" in open(again, encoding="utf-8").read()


def test_report_rejects_bad_cells(tmp_path):
  with pytest.raises(ValueError, match="report cell 0: setting"):
    report.write([{"name": "x", "checkpoint": "c", "task": "t", "metrics": {}}], str(tmp_path))
  with pytest.raises(ValueError, match="duplicate name 'x'"):
    cell = {"name": "x", "checkpoint": "c", "task": "t", "setting": "s", "metrics": {}}
    report.write([cell, cell], str(tmp_path))


def _demo_like_cells() -> list[dict]:
  """The demo's layout on synthetic records: two seeds of a baseline and a marked model, a
  length task in three modes and a likelihood task, 40 examples with head and tail values."""
  rng = np.random.default_rng(0)
  train = ([{"markers": {"lang": "English", "domain": "Conversation"}}] * 85
           + [{"markers": {"lang": "French", "domain": "Medical"}}] * 12
           + [{"markers": {"lang": "Thai", "domain": "Legal"}}] * 3)
  freq = stats.frequency_table(train, TAX)
  langs = ["English"] * 28 + ["French"] * 8 + ["Thai"] * 4
  domains = ["Conversation"] * 26 + ["Medical"] * 10 + ["Legal"] * 4
  asked = rng.integers(5, 80, size=40)
  count = lambda text: len(text.split())  # noqa: E731
  cells = []
  plan = (("baseline", ("none", "nl_instruction"), ("none",)),
          ("markers", ("none", "nl_instruction", "fixed:length_tokens"), ("inferred",)))
  for seed in (0, 1):
    for ckpt, chat, lik in plan:
      name = ckpt if seed == 0 else f"{ckpt}_s{seed}"
      for task, settings in (("chat", chat), ("likelihood", lik)):
        for setting in settings:
          good = 0.8 if setting == "fixed:length_tokens" else 0.5 if ckpt == "markers" else 0.3
          records = []
          for i in range(40):
            ok = rng.random() < good
            n = int(asked[i] * (rng.uniform(0.4, 1.0) if ok else rng.uniform(1.05, 2.0)))
            given = {"length_tokens": int(asked[i])} if setting.startswith("fixed") else {}
            record = {"id": f"ex{i}", "markers_given": given,
                      "reference_markers": {"lang": langs[i], "domain": domains[i]}}
            if task == "chat":
              record.update(
                  length_target={"length_tokens": int(asked[i])}, response=_words(max(1, n)),
                  markers_generated=({"lang": langs[i] if ok else "English",
                                      "domain": domains[i] if ok else "Conversation"}
                                     if ckpt == "markers" else {}))
            else:
              record.update(nll_sum=float(rng.uniform(20, 40) - 4 * (ckpt == "markers")),
                            n_tokens=20)
            records.append(record)
          cells.append({"name": f"{name}/{task}/{setting}", "checkpoint": name, "task": task,
                        "setting": setting, "metrics": metrics.cell_metrics(
                            records, tax=TAX, freq=freq, count_words=count,
                            categories=() if ckpt == "baseline" or task == "likelihood"
                            else None)})
  return cells


def test_report_of_a_demo_like_sweep_has_intervals_pairs_and_four_figures(tmp_path):
  cells = _demo_like_cells()
  path = report.write(cells, str(tmp_path), baselines=("baseline", "baseline_s1"))
  text = open(path, encoding="utf-8").read()
  # The length_tokens marker faces the baseline asked in words, seed by seed.
  assert ("| markers/chat/fixed:length_tokens | baseline/chat/nl_instruction | violation (all) |"
          in text)
  assert ("| markers_s1/chat/fixed:length_tokens | baseline_s1/chat/nl_instruction | "
          "violation (all) |") in text
  assert "| markers/likelihood/inferred | baseline/likelihood/none | nll (lang tail) |" in text
  # Thai (3%) is the lang tail and Legal (3%) the domain tail.
  assert "| markers/likelihood/inferred | lang | Thai | " in text
  assert "| majority class of the training data | " in text
  for name in ("length_violations", "marker_accuracy", "head_tail", "length_scatter"):
    height, width = mpimg.imread(str(tmp_path / f"{name}.png")).shape[:2]
    assert 300 < height < 1600 and 500 < width < 1600, (name, height, width)


def _steer_cell(name: str, words_of, setting: str = "fixed:length_tokens") -> dict:
  """Ten prompts, each asked at 10, 40 and 160 words; `words_of(prompt, N)` words answered."""
  records = [{"id": f"u@p{i}@{n}", "markers_given": {"length_tokens": n},
              "response": _words(words_of(i, n))} for i in range(10) for n in (10, 40, 160)]
  return {"name": name, "checkpoint": name, "task": "steer", "setting": setting,
          "metrics": metrics.cell_metrics(records, tax=TAX, count_words=lambda t: len(t.split()))}


def test_steering_tells_a_model_that_follows_the_value_from_one_that_follows_the_prompt(
    tmp_path):
  follows = _steer_cell("follows", lambda i, n: n - 1 - i % 3)
  prompt = _steer_cell("prompt", lambda i, n: 5 + 3 * i)
  mixed = _steer_cell("mixed", lambda i, n: n // 2 if i < 4 else 7)
  s = report_compare.steering(follows)
  assert s["n"] == 10 and s["limits"] == [10, 40, 160] and s["same_length"] == 0
  assert s["median_words"] == {10: 8, 40: 38, 160: 158}
  assert s["longer"]["value"] == 1.0 and s["log2_ratio"]["lo"] > 3.5
  assert s["ideal_log2_ratio"] == 4.0
  s = report_compare.steering(prompt)
  assert s["same_length"] == 10 and s["longer"]["value"] == 0.0
  assert s["log2_ratio"]["value"] == 0.0
  s = report_compare.steering(mixed)
  assert s["longer"]["value"] == pytest.approx(0.4)
  assert s["longer"]["lo"] < 0.4 < s["longer"]["hi"] and s["longer"]["n"] == 10
  # A prompt missing one of the limits is left out; a cell without `@N` ids has no steering.
  follows["metrics"]["per_example"]["words"][0] = None
  assert report_compare.steering(follows)["n"] == 9
  assert report_compare.steering(_cells()[1]) is None
  # The baseline asked in words: answers from the prompt alone; the marked model follows.
  base = _steer_cell("base", lambda i, n: 5 + 3 * i, setting="nl_instruction")
  d = report_compare.steering_difference(base, follows)
  assert d["n"] == 9 and d["lo"] > 3.5
  text = open(report.write([base, follows, prompt], str(tmp_path), baselines=("base",)),
              encoding="utf-8").read()
  assert "## Does the asked length steer the answer?" in text
  assert ("| prompt | length_tokens marker | 10 / 40 / 160 | 18.5 / 18.5 / 18.5 | 10 of 10 | "
          "0.0% [0.0, 0.0] n=10 | 0.00 [0.00, 0.00] n=10 (~4.00 if tracking N) |") in text
  assert "| follows | base | +4.1" in text
  assert "| prompt | base | +0.00 [+0.00, +0.00] n=10 |" in text
  assert "Does the asked length steer" not in open(
      report.write(_cells(), str(tmp_path / "plain")), encoding="utf-8").read()
