"""Language of a text, as a value of the taxonomy's `lang` category.

Identifier: lingua (`lingua-language-detector`, Apache-2.0; its n-gram models ship inside the
wheel, so it works offline). Chosen over langid.py after measuring both on the final utterances
of the bundled chatterbot corpus (7.6k mostly short answers, 25 languages both know; the corpus
folder is the label): lingua restricted to the taxonomy's languages 93.4% correct in 2.8 s,
langid.py 89.8% in 34 s. Lingua is also documented as strong on short text, which is most chat
answers. Restricting the candidate set helps twice: accuracy (short Indonesian is no longer
taken for Malay) and speed (fewer models to score).

The detector is built once per candidate set and cached. Candidates are the taxonomy's `lang`
values that lingua knows (by English name, plus a few aliases) and `extras`: languages outside
the taxonomy that share a script with a taxonomy language, so that such text gets no marker
rather than a wrong one. Scripts that lingua lacks but that belong to one language (Odia) are
recognized by code point.

Deliberately not here: deciding when the detected language should override dataset metadata
(the pipeline does; `demo_data` keeps the corpus label and records the detection).
"""
from __future__ import annotations

import functools
import re
import unicodedata
from collections.abc import Iterable

import lingua

from treasure_jax.markers import taxonomy

# Taxonomy names that are not lingua's English names (upper-cased).
_ALIASES = {
    "Norwegian": ("BOKMAL", "NYNORSK"), "Slovenian": ("SLOVENE",), "Farsi": ("PERSIAN",),
    "Filipino": ("TAGALOG",), "Malay": ("MALAY",), "Luganda": ("GANDA",),
    "Sesotho": ("SOTHO",), "Setswana": ("TSWANA",),
}
# Languages outside the paper's 23 that share a script with them; detected -> no marker.
DEFAULT_EXTRAS = ("Catalan", "Danish", "Norwegian", "Swedish", "Slovak", "Bulgarian")
# Characters given to lingua: its time is linear in the text, its answer settles long before.
MAX_CHARS = 2000
# Scripts used by one language that lingua does not model: (first, last) -> taxonomy name.
_SCRIPT_LANGUAGES = {(0x0B00, 0x0B7F): ("Odia", "Oriya")}


def lingua_languages(name: str) -> tuple[lingua.Language, ...]:
  """Lingua's languages for a taxonomy `lang` value; () when lingua lacks it."""
  codes = _ALIASES.get(name, (name.upper(),))
  return tuple(getattr(lingua.Language, c) for c in codes if hasattr(lingua.Language, c))


@functools.lru_cache(maxsize=8)
def _detector(candidates: tuple[str, ...]) -> lingua.LanguageDetector:
  langs = {lang for name in candidates for lang in lingua_languages(name)}
  if len(langs) < 2:
    langs |= {lingua.Language.ENGLISH, lingua.Language.FRENCH}  # Lingua needs two or more.
  return lingua.LanguageDetectorBuilder.from_languages(*sorted(langs, key=str)).build()


class Identifier:
  """Maps text to one of `names` (the taxonomy's `lang` values) or None.

  >>> ident = Identifier.for_taxonomy(taxonomy.default_taxonomy())
  >>> ident("Das ist ein ganz normaler deutscher Satz.")
  'German'
  """

  def __init__(self, names: Iterable[str], extras: Iterable[str] = DEFAULT_EXTRAS):
    self.names = tuple(names)
    candidates = tuple(sorted(set(self.names) | set(extras)))
    self._detector = _detector(candidates)
    # lingua name -> taxonomy name, only for taxonomy languages (extras map to None).
    self._to_name = {lang: name for name in self.names for lang in lingua_languages(name)}
    self._scripts = {rng: next((n for n in aliases if n in self.names), None)
                     for rng, aliases in _SCRIPT_LANGUAGES.items()}
    self._script_re = re.compile("[" + "".join(f"{chr(lo)}-{chr(hi)}" for (lo, hi), name
                                              in self._scripts.items() if name) + "]"
                                 if any(self._scripts.values()) else r"(?!)")
    self.undetectable = tuple(n for n in self.names if not lingua_languages(n)
                              and n not in self._scripts.values())

  @classmethod
  def for_taxonomy(cls, tax: taxonomy.Taxonomy,
                   extras: Iterable[str] = DEFAULT_EXTRAS) -> Identifier:
    return cls(tax.category("lang").values, extras)

  def __call__(self, text: str) -> str | None:
    script_lang = self._script_language(text)
    if script_lang is not None:
      return script_lang
    # Lingua's time grows with the text (60 ms for 100 kB); a prefix decides a long text.
    found = self._detector.detect_language_of(text[:MAX_CHARS])
    return None if found is None else self._to_name.get(found)

  def many(self, texts: list[str]) -> list[str | None]:
    """`self(text)` for each text, lingua's part in one parallel batch."""
    out = [self._script_language(t) for t in texts]
    todo = [i for i, found in enumerate(out) if found is None]
    found = self._detector.detect_languages_in_parallel_of(
        [texts[i][:MAX_CHARS] for i in todo]) if todo else []
    for i, lang in zip(todo, found):
      out[i] = None if lang is None else self._to_name.get(lang)
    return out

  def _script_language(self, text: str) -> str | None:
    """The language owning most letters of `text` by script, if it has such a script."""
    if not self._script_re.search(text):  # Most text: no such script, no per-letter pass.
      return None
    letters = [ord(c) for c in text if unicodedata.category(c)[0] == "L"]
    for (lo, hi), name in self._scripts.items():
      if name and letters and sum(lo <= cp <= hi for cp in letters) * 2 > len(letters):
        return name
    return None
