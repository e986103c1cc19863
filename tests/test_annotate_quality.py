"""Quality scorers (HTTP reward endpoint on localhost, Python callable) and quality buckets."""
from __future__ import annotations

import math

import pytest

import openai_stub_server as stub_lib
from treasure_jax.annotate import llm
from treasure_jax.annotate import quality

KEY = "rm-key-SECRET-42"


def returns_text(prompt, response):
  return "good"


def returns_nan(prompt, response):
  return math.nan


def test_http_scorer_posts_prompt_and_response(monkeypatch):
  monkeypatch.setenv("TJ_RM_KEY", KEY)
  with stub_lib.StubServer() as stub:
    scorer = quality.Scorer(quality.QualityConfig.from_dict(
        {"kind": "http", "url": stub.reward_url, "api_key_env": "TJ_RM_KEY", "name": "rm1"}))
    score = scorer.score("Why?", "Because.")
  assert score == stub_lib.reward_score("Why?", "Because.")
  assert stub.rewards == {("Why?", "Because."): 1}
  assert scorer.provenance == "reward:rm1" and KEY not in repr(scorer)


def test_python_scorer_and_cache_key():
  cfg = quality.QualityConfig.from_dict(
      {"kind": "python", "callable": "openai_stub_server:reward_score"})
  scorer = quality.Scorer(cfg)
  assert scorer.score("a", "b") == stub_lib.reward_score("a", "b")
  assert scorer.provenance == "reward:openai_stub_server:reward_score"
  assert scorer.cache_key("a", "b") != scorer.cache_key("ab", "")  # No concatenation clash.


@pytest.mark.parametrize("spec, match", [
    ("no_such_module_xyz:f", "cannot import"),
    ("openai_stub_server:missing", "cannot import"),
    ("test_annotate_quality:returns_text", "'good', not a number"),
    ("test_annotate_quality:returns_nan", "not a finite number"),
])
def test_python_scorer_errors_name_the_callable(spec, match):
  with pytest.raises(quality.QualityError, match=match) as err:
    quality.Scorer(quality.QualityConfig(kind="python", callable=spec)).score("a", "b")
  assert spec.split(":")[0] in str(err.value)


def test_http_scorer_bad_reply_and_bad_route():
  with stub_lib.StubServer() as stub:
    scorer = quality.Scorer(quality.QualityConfig(kind="http", url=stub.base + "/nowhere"))
    with pytest.raises(llm.LlmError, match="HTTP 404"):
      scorer.score("a", "b")


@pytest.mark.parametrize("d, match", [
    ({"kind": "magic"}, "quality.kind"),
    ({"kind": "http"}, "quality.url"),
    ({"kind": "python", "callable": "module_without_function"}, "quality.callable"),
    ({"kind": "http", "url": "http://h/rm", "timeout": 3}, "unknown keys \\['timeout'\\]"),
])
def test_config_errors(d, match):
  with pytest.raises(ValueError, match=match):
    quality.QualityConfig.from_dict(d)


def test_buckets_are_per_language_quartiles():
  scores = [1.0, 2.0, 3.0, 4.0, None, 0.5, 9.0, 7.0, 8.0, 5.0]
  langs = ["English"] * 5 + ["French", "French", None, None, "English"]
  got = quality.buckets(scores, langs)
  # English: 5 > 4 > 3 > 2 > 1 → ranks 0..4 of 5 → buckets 1,1,2,3,4 (best first).
  assert got[:5] == [4, 3, 2, 1, None] and got[9] == 1
  assert got[5:7] == [3, 1]  # French: 9.0 best, 0.5 worst of two.
  assert got[7:9] == [3, 1]  # Unknown language ranked on its own.
