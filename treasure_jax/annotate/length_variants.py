"""Cut-answer copies of training examples: one prompt with several lengths, for the length lever.

A `length_tokens` marker can only steer length if, in training, it tells the model something
the prompt does not. Where each kind of prompt comes with one typical length (short chat
replies, long docstrings), the value is predictable from the prompt and the model learns to
copy it into its list, not to obey it (measured: configs/demo.py, experiment P2). `make` gives
each eligible example up to `per_record` copies whose answer is a prefix of its answer cut
after a whole sentence (`text_stats.sentence_cuts`), at the cuts nearest 1/(k+1), 2/(k+1)...
of its words, each at most `MAX_SHARE` of the words; the markers that depend on the answer's
text (`RECOUNTED`) are counted again from the cut answer, the others (task, domain, lang...)
are kept. Eligible: single-turn examples of a task in `TASKS`, where an answer cut after a
sentence is still an answer (not a worked solution whose result comes last, a list of
translations, a label or a program).

A copy's id is "<id>#cut<words>" and `meta.length_variant_of` names the original. Make copies
of the training split only, after splitting, so that evaluation data stays as it was.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from treasure_jax.annotate import deterministic
from treasure_jax.annotate import text_stats
from treasure_jax.markers import taxonomy

TASKS = ("OpenEnded", "QuestionAnswering", "Explanation")
MAX_SHARE = 0.8
RECOUNTED = ("length_tokens", "length_sentences", "length_paragraphs", "length_bucket",
             "code_type", "format")


def choose_cuts(answer: str, per_record: int) -> list[tuple[int, int]]:
  """(words, prefix length) of the cuts `make` takes from `answer`, shortest first."""
  total = text_stats.count_words(answer)
  cuts = [(text_stats.count_words(answer[:n]), n) for n in text_stats.sentence_cuts(answer)]
  cuts = [(w, n) for w, n in cuts if w <= MAX_SHARE * total]
  if not cuts:
    return []
  chosen: dict[int, int] = {}
  for j in range(1, per_record + 1):
    words, n = min(cuts, key=lambda c: (abs(c[0] - total * j / (per_record + 1)), c[0]))
    chosen[words] = n
  return sorted(chosen.items())


def check_count(per_record: int) -> None:
  """Raises for a copy count `make` refuses; callers check before slow work that precedes it."""
  if per_record < 0:
    raise ValueError(f"length_variants must be >= 0, got {per_record}")


def make(recs: Iterable[Mapping[str, Any]], tax: taxonomy.Taxonomy, per_record: int, *,
         categories: Iterable[str] | None = None,
         tasks: Iterable[str] = TASKS) -> list[dict[str, Any]]:
  """The copies of `recs` (module docstring). `categories`: the marker categories the records
  keep (default: all of the taxonomy's); those in `RECOUNTED` are counted from the cut answer."""
  check_count(per_record)
  if per_record == 0:
    return []
  keep = set(tax.names if categories is None else categories)
  recount = [c for c in RECOUNTED if c in keep and c in tax]
  tasks = set(tasks)
  out = []
  for rec in recs:
    markers = rec.get("markers") or {}
    if "response" not in rec or markers.get("task") not in tasks:
      continue
    for words, n in choose_cuts(rec["response"], per_record):
      answer = rec["response"][:n]
      new = {k: v for k, v in markers.items() if k not in recount}
      new.update(deterministic.annotate(answer, tax, categories=recount))
      out.append({"id": f"{rec['id']}#cut{words}", "prompt": rec["prompt"], "response": answer,
                  "markers": dict(tax.ordered(new)),
                  "meta": {**rec.get("meta", {}), "length_variant_of": rec["id"]}})
  return out
