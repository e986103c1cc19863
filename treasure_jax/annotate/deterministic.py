"""Markers computed by rule from the completion: lengths, length bucket, language, code, format.

`annotate(view, tax)` returns the markers of the taxonomy's deterministic categories that it can
compute for the record's completion (the final assistant message), converted and in taxonomy
order. A category the taxonomy lacks is skipped; a value that cannot be decided (no language
detected, no code) gives no marker, never a guess outside the taxonomy.

| category          | rule (details in the module named)                                   |
|-------------------|----------------------------------------------------------------------|
| length_tokens     | words of the completion (`text_stats.count_words`)                   |
| length_sentences  | sentences (`text_stats.count_sentences`)                             |
| length_paragraphs | blank-line paragraphs (`text_stats.count_paragraphs`)                |
| length_bucket     | `taxonomy.length_bucket` of length_tokens with the taxonomy's cuts   |
| lang              | lingua on the completion minus fenced code (`language.Identifier`)   |
| code_type         | fence tags, else a signature/pygments guess (`formats`)              |
| format            | JSON/XML/table/LaTeX/MCQ/CoT/list/Markdown rules (`formats`)          |

Deliberately not here: precedence between these values and dataset metadata or LLM labels (the
pipeline decides; the paper takes metadata where the source gives it).
"""
from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from typing import Any

from treasure_jax.annotate import formats
from treasure_jax.annotate import language
from treasure_jax.annotate import records
from treasure_jax.annotate import text_stats
from treasure_jax.markers import taxonomy

CATEGORIES = ("length_tokens", "length_sentences", "length_paragraphs", "length_bucket", "lang",
              "code_type", "format")
_COUNTERS = {"length_tokens": text_stats.count_words,
             "length_sentences": text_stats.count_sentences,
             "length_paragraphs": text_stats.count_paragraphs}


@functools.lru_cache(maxsize=8)
def _identifier(names: tuple[str, ...], extras: tuple[str, ...]) -> language.Identifier:
  return language.Identifier(names, extras)


def _values(tax: taxonomy.Taxonomy, name: str) -> tuple[str, ...]:
  cat = tax.category(name)
  return cat.values if cat.kind == "enum" else ()


def _prose(text: str) -> str:
  """`text` without fenced code, unless nothing else has letters (code is then all we have)."""
  prose = formats.strip_code_blocks(text)
  return prose if any(c.isalpha() for c in prose) else text


def annotate(view: records.RecordView | str, tax: taxonomy.Taxonomy, *,
             categories: Iterable[str] | None = None,
             lang_extras: Iterable[str] = language.DEFAULT_EXTRAS) -> dict[str, Any]:
  """Deterministic markers of the completion of `view` (or of a bare response string).

  `categories` restricts the work to some of `CATEGORIES` (default: all the taxonomy has).
  """
  return annotate_many([view], tax, categories=None if categories is None else [categories],
                       lang_extras=lang_extras)[0]


def annotate_many(views: Sequence[records.RecordView | str], tax: taxonomy.Taxonomy, *,
                  categories: Sequence[Iterable[str]] | None = None,
                  lang_extras: Iterable[str] = language.DEFAULT_EXTRAS) -> list[dict[str, Any]]:
  """`annotate` of each view (`categories`: one list per view); languages in one lingua batch,
  which runs on all cores (2.7x faster than one text at a time on 2 cores)."""
  texts = [v if isinstance(v, str) else v.response for v in views]
  wanted = []
  for i in range(len(texts)):
    requested = CATEGORIES if categories is None else tuple(categories[i])
    unknown = set(requested) - set(CATEGORIES)
    if unknown:
      raise ValueError(f"not deterministic categories: {sorted(unknown)}; known: {CATEGORIES}")
    wanted.append([c for c in requested if c in tax])
  outs = [_by_rule(text, want, tax) for text, want in zip(texts, wanted)]
  todo = [i for i, want in enumerate(wanted) if "lang" in want]
  if todo and _values(tax, "lang"):
    found = _identifier(_values(tax, "lang"), tuple(lang_extras)).many(
        [_prose(texts[i]) for i in todo])
    for i, lang in zip(todo, found):
      if lang is not None:
        outs[i]["lang"] = lang
  return [tax.validate(out) for out in outs]


def _by_rule(text: str, wanted: Sequence[str], tax: taxonomy.Taxonomy) -> dict[str, Any]:
  """Every wanted marker but `lang`."""
  out: dict[str, Any] = {}
  for name in wanted:
    if name in _COUNTERS:
      out[name] = _COUNTERS[name](text)
  if "length_bucket" in wanted:
    # Not out.get(..., count_words(text)): that counts the words again every time.
    n_words = out["length_tokens"] if "length_tokens" in out else text_stats.count_words(text)
    bucket = tax.length_bucket(n_words)
    if bucket in _values(tax, "length_bucket"):
      out["length_bucket"] = bucket
  if "code_type" in wanted and _values(tax, "code_type"):
    found = formats.detect_code_type(text, _values(tax, "code_type"))
    if found is not None:
      out["code_type"] = found
  if "format" in wanted and _values(tax, "format"):
    found = formats.detect_format(text, _values(tax, "format"))
    if found is not None:
      out["format"] = found
  return out
