"""The demo mix built from installed packages: counts, sources, split, rejects, tail, lengths."""
from __future__ import annotations

import collections
import json
import os
import random
import shutil

import pytest
import yaml

from treasure_jax.annotate import chatterbot
from treasure_jax.annotate import demo_data
from treasure_jax.annotate import length_variants
from treasure_jax.annotate import records
from treasure_jax.markers import taxonomy

LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def read_jsonl(path) -> list[dict]:
  with open(path, encoding="utf-8") as f:
    return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
  out = tmp_path_factory.mktemp("demo")
  sources = tuple(s for s in demo_data.SOURCES if s != "humaneval_train")
  summary = demo_data.build(out, seed=0, val_fraction=0.1, humaneval=False, sources=sources)
  return out, summary, read_jsonl(out / "train.jsonl"), read_jsonl(out / "validation.jsonl")


def _chat(recs):
  return [r for r in recs if r["meta"]["dataset"] == "chatterbot-corpus"]


def corpus_entry_count() -> int:
  """Entries of every `conversations` list, counted straight from the YAML files."""
  root, total = chatterbot.default_dir(), 0
  for folder in os.listdir(root):
    for name in os.listdir(os.path.join(root, folder)):
      with open(os.path.join(root, folder, name), encoding="utf-8") as f:
        total += len(yaml.load(f, Loader=LOADER)["conversations"])
  return total


def test_counts_add_up(built):
  out, summary, train, val = built
  assert summary["examples"] == len(train) + len(val) > 7000
  assert summary["train"] == len(train) and summary["validation"] == len(val)
  chats = summary["sources"]["chatterbot-corpus"]["count"]
  assert chats == len(_chat(train + val)) > 6000
  assert chats + summary["rejects"] + summary["duplicates_dropped"] == corpus_entry_count()
  assert sum(s["count"] for s in summary["sources"].values()) == summary["examples"]
  assert all(s["license"] for s in summary["sources"].values())
  provenance = (out / "PROVENANCE.md").read_text()
  assert all(f"| {name} |" in provenance for name in summary["sources"])
  assert "PSF-2.0" in provenance and "Unicode-3.0" in provenance
  assert summary["corpus_languages"] == 28  # 27 languages: two Chinese folders.
  assert len({r["markers"]["lang"] for r in _chat(train + val)}) == 27
  assert len(summary["lang"]) == 33  # Translation adds the paper's languages chatterbot lacks.
  assert summary["topics"] >= 40 and summary["unmapped_topics"] == []
  assert summary["chat_examples"] == sum("messages" in r for r in train + val) > 1000
  assert summary["duplicates_by_file"]["english/tech_support.yml"] > 1000
  assert 0.1 <= summary["validation_share"] < 0.15  # At least one group per stratum.
  assert summary["lang_detection_agreement"] > 0.9
  assert json.loads((out / "summary.json").read_text()) == summary


def test_malformed_entries_are_reported(built):
  out, summary, _, _ = built
  rejects = read_jsonl(out / "rejects.jsonl")
  assert len(rejects) == summary["rejects"] >= 8
  found = {(r["file"], r["index"]) for r in rejects}
  assert ("english/trivia.yml", 13) in found  # A question written as a plain string.
  assert {("ukrainian/gossip.yml", i) for i in range(4, 8)} <= found
  assert all(r["reason"] for r in rejects)


def test_records_are_valid_and_carry_markers(built):
  out, _, train, val = built
  tax = taxonomy.load(out / "taxonomy.json")
  assert tax == demo_data.demo_taxonomy()
  assert {"Thai", "Odia", "Hinglish", "Swedish"} <= set(tax.category("lang").values)
  ids = [r["id"] for r in train + val]
  assert len(ids) == len(set(ids))
  for rec in train + val:
    assert tax.problems(rec["markers"]) == []
    assert rec["markers"]["length_tokens"] >= 1 and rec["markers"]["task"] in tax.category(
        "task").values
    assert list(rec["markers"]) == [n for n, _ in tax.ordered(rec["markers"])]
  for rec in _chat(train + val):
    view = records.normalize(rec, where=rec["id"])
    assert rec["markers"]["source"] == "Human" and rec["markers"]["task"] == "OpenEnded"
    assert rec["markers"]["lang"] == chatterbot.LANGUAGES[rec["meta"]["corpus_language"]]
    assert rec["markers"]["domain"] == chatterbot.TOPIC_DOMAINS[rec["meta"]["topic"]]
    if view.is_chat:
      assert len(view.messages) % 2 == 0 and len(view.messages) >= 2
  coding = [r for r in _chat(train + val) if r["meta"]["topic"] == "coding"]
  assert sum(r["markers"].get("code_type") == "python" for r in coding) > 20


def test_long_tail_present_in_both_splits(built):
  _, summary, _, _ = built
  tail = [v for v, info in summary["domain"].items() if info["share"] < 0.05]
  assert len(tail) >= 3 and set(tail) == set(summary["tail_values"]["domain"])
  assert {"Medical", "Math"} <= set(tail)
  assert set(summary["validation_values"]["domain"]) == set(summary["domain"])
  assert set(summary["validation_values"]["lang"]) == set(summary["lang"])
  tasks = summary["task"]
  assert {"OpenEnded", "QuestionAnswering", "Explanation", "Translation", "Reasoning",
          "Classification"} <= set(tasks)
  assert tasks["OpenEnded"]["share"] > 0.5 and {"Reasoning", "Classification"} <= set(
      summary["tail_values"]["task"])


def test_answers_span_every_length_bucket(built):
  _, summary, train, _ = built
  assert set(summary["length_bucket"]) == {"concise", "medium", "long"}
  lengths = sorted(r["markers"]["length_tokens"] for r in train)
  assert lengths[0] <= 3 and lengths[-1] >= 200
  # One Language Reference topic answered at several lengths, under one prompt.
  by_prompt = {}
  for r in train:
    if r["meta"]["dataset"] == "python_reference":
      by_prompt.setdefault(r["prompt"], set()).add(r["markers"]["length_tokens"])
  assert sum(len(v) == 3 for v in by_prompt.values()) > 20


def test_categories_and_subsample(tmp_path):
  summary = demo_data.build(tmp_path / "out", humaneval=False, sources=("chatterbot",),
                            chatterbot_limit=500, categories=("task", "lang", "length_tokens"))
  recs = read_jsonl(tmp_path / "out" / "train.jsonl") + read_jsonl(
      tmp_path / "out" / "validation.jsonl")
  assert 450 < summary["examples"] == len(recs) < 600
  assert all(set(r["markers"]) == {"length_tokens", "task", "lang"} for r in recs)
  assert len(summary["lang"]) == 27  # Every language keeps a share.
  with pytest.raises(taxonomy.MarkerError, match="colour"):
    demo_data.build(tmp_path / "bad", humaneval=False, sources=("arithmetic",),
                    categories=("colour",))
  with pytest.raises(ValueError, match="needs humaneval"):
    demo_data.build(tmp_path / "bad", humaneval=False)


def test_length_variants_cut_training_answers_only(tmp_path):
  sources = ("python_docstrings", "arithmetic")
  plain = demo_data.build(tmp_path / "plain", humaneval=False, sources=sources)
  summary = demo_data.build(tmp_path / "aug", humaneval=False, sources=sources,
                            length_variants=2)
  assert (tmp_path / "aug" / "validation.jsonl").read_text() == \
      (tmp_path / "plain" / "validation.jsonl").read_text()
  train = {r["id"]: r for r in read_jsonl(tmp_path / "aug" / "train.jsonl")}
  plain_train = {r["id"]: r for r in read_jsonl(tmp_path / "plain" / "train.jsonl")}
  variants = [r for r in train.values() if "length_variant_of" in r["meta"]]
  assert set(train) - set(plain_train) == {r["id"] for r in variants}
  assert len(variants) == summary["length_variants"]["count"] > 300
  assert summary["length_variants"]["by_source"] == {"python_docstrings": len(variants)}
  assert summary["train"] == len(train) == plain["train"] + len(variants)
  tax = taxonomy.load(tmp_path / "aug" / "taxonomy.json")
  per_original = collections.Counter(r["meta"]["length_variant_of"] for r in variants)
  assert max(per_original.values()) == 2
  for v in variants:
    orig = plain_train[v["meta"]["length_variant_of"]]
    assert v["prompt"] == orig["prompt"] and orig["response"].startswith(v["response"])
    assert v["response"].rstrip("\"'”’)]»")[-1] in ".!?…"
    # Rule markers recounted from the cut answer, the source's markers kept.
    again = demo_data.annotate({**v, "markers": {}}, tax)["markers"]
    assert {k: again[k] for k in demo_data.RULE_CATEGORIES if k in again} == \
        {k: v["markers"][k] for k in demo_data.RULE_CATEGORIES if k in v["markers"]}
    assert v["markers"]["length_tokens"] <= 0.8 * orig["markers"]["length_tokens"]
    assert (v["markers"]["task"], v["markers"]["domain"]) == ("QuestionAnswering", "Code")
    assert v["id"] == f"{orig['id']}#cut{v['markers']['length_tokens']}"
  assert "length variants" in (tmp_path / "aug" / "PROVENANCE.md").read_text()
  with pytest.raises(ValueError, match="length_variants must be >= 0"):
    length_variants.make([], tax, -1)
  with pytest.raises(ValueError, match="length_variants must be >= 0"):
    demo_data.build(tmp_path / "bad", humaneval=False, sources=sources, length_variants=-1)


def test_humaneval_train_keeps_the_holdout_out(tmp_path):
  he = tmp_path / "humaneval"
  he.mkdir()
  item = {"prompt": "p", "canonical_solution": "def f():\n  return 1\n", "markers": {
      "task": "CodeGeneration"}}
  rows = [dict(item, id=f"HumanEval/{i}", task_id=f"HumanEval/{i}") for i in (3, 39, 40, 77)]
  (he / "humaneval_codegen.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
  fix = [dict(item, id="HumanEval/41/fix/a", task_id="HumanEval/41", primary=True),
         dict(item, id="HumanEval/41/fix/b", task_id="HumanEval/41", primary=False),
         dict(item, id="HumanEval/2/fix/a", task_id="HumanEval/2", primary=True)]
  (he / "humaneval_codefix.jsonl").write_text("".join(json.dumps(r) + "\n" for r in fix))
  out = demo_data.humaneval_train(str(tmp_path / "humaneval"), holdout=40)
  assert [r["id"] for r in out] == ["humaneval_train/HumanEval/40", "humaneval_train/HumanEval/77",
                                    "humaneval_train/HumanEval/41/fix/a"]
  assert out[0]["response"] == "```python\ndef f():\n  return 1\n```"


def test_split_is_deterministic_grouped_and_seeded(built):
  _, _, train, val = built
  recs = train + val
  shuffled = list(recs)
  random.Random(1).shuffle(shuffled)
  again_train, again_val = demo_data.split(shuffled, seed=0, val_fraction=0.1)
  assert [r["id"] for r in again_val] == [r["id"] for r in val]
  assert [r["id"] for r in again_train] == [r["id"] for r in train]
  _, other_val = demo_data.split(recs, seed=1, val_fraction=0.1)
  assert {r["id"] for r in other_val} != {r["id"] for r in val}

  def keys(rs):
    return {(r["markers"].get("domain"), r["markers"].get("lang"),
             demo_data._first_utterance(r)) for r in rs}
  assert not keys(train) & keys(val)  # No prompt in both splits within a stratum.


def test_yaml_errors_and_bad_entries_in_a_small_corpus(tmp_path):
  corpus = tmp_path / "corpus"
  for name in ("thai/greeting.yml", "hebrew/greetings.yml"):
    (corpus / os.path.dirname(name)).mkdir(parents=True, exist_ok=True)
    shutil.copy(os.path.join(chatterbot.default_dir(), name), corpus / name)
  (corpus / "english").mkdir()
  (corpus / "english" / "broken.yml").write_text("conversations:\n- - a\n  - 'b\n")
  (corpus / "english" / "flat.yml").write_text("categories: [x]\nconversations: hello\n")
  (corpus / "english" / "health.yml").write_text(
      "conversations:\n- - Are you ill?\n  - No, I am fine.\n- Just a string\n- - alone\n"
      "- - 'Q'\n  - 42\n- - Are you ill?\n  - No, I am fine.\n")
  summary = demo_data.build(tmp_path / "out", corpus_dir=corpus, humaneval=False,
                            sources=("chatterbot",))
  rejects = read_jsonl(tmp_path / "out" / "rejects.jsonl")
  reasons = {(r["file"], r["index"]): r["reason"] for r in rejects}
  assert reasons[("english/broken.yml", None)].startswith("not valid YAML")
  assert reasons[("english/flat.yml", None)] == "no 'conversations' list at the top level"
  assert "not a list" in reasons[("english/health.yml", 1)]
  assert "at least 2" in reasons[("english/health.yml", 2)]
  assert "utterance 1 is a int" in reasons[("english/health.yml", 3)]
  assert summary["rejects"] == 5 and summary["duplicates_dropped"] == 1
  assert summary["domain"]["Medical"]["count"] == 1
  thai = [r for r in read_jsonl(tmp_path / "out" / "train.jsonl")
          + read_jsonl(tmp_path / "out" / "validation.jsonl") if r["markers"]["lang"] == "Thai"]
  assert len(thai) == 6 and sum("messages" in r for r in thai) == 3
  assert sum(r["meta"]["dropped_last_turn"] for r in thai) == 2  # 5 utterances -> 4 messages.
