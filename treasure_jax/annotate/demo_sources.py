"""The demo mix's parts beside chatterbot-corpus: real text from installed packages, and code.

Each function returns records `{"id", "prompt", "response", "markers", "meta"}` whose markers
are the ones the source itself says (task, domain, lang of the answer, source); the lengths,
length_bucket, code_type and format are left to the deterministic annotators (`demo_data`).
Licences (also in the README and each record's `meta.license`):

  python_reference   Explanation      the Python Language Reference topics that CPython ships
                                      for `help()` (`pydoc_data.topics`; PSF-2.0). Each topic
                                      is answered at up to three lengths (its first paragraphs
                                      up to 30, 90 and 250 words): the same prompt, answers of
                                      different length, so only a length marker tells them apart.
  python_docstrings  QuestionAnswering  docstrings of the standard library's public functions
                                      and classes (`inspect.getdoc`; PSF-2.0), up to 250 words.
  cldr_translation   Translation      weekday, month, country and language names from the
                                      Unicode CLDR data that Babel ships (Babel BSD-3-Clause,
                                      CLDR Unicode-3.0), English into the taxonomy's languages.
  arithmetic         Reasoning        word problems with worked solutions, generated here from
                                      a seed (no third-party text).
  language_id        Classification   "which language is this?" over chatterbot-corpus
                                      utterances (BSD-3-Clause), answered with the corpus's
                                      own language label.

The text depends on the installed Python and Babel versions (their docs and CLDR data change
between releases); `meta.python` / `meta.babel` record them. Nothing is downloaded.
"""
from __future__ import annotations

import hashlib
import importlib
import inspect
import random
import re
import sys
from collections.abc import Iterable, Sequence
from typing import Any

from treasure_jax.annotate import chatterbot
from treasure_jax.annotate import text_stats

PYTHON_LICENSE = "PSF-2.0"
EXPLANATION_BUDGETS = (30, 90, 250)
DOCSTRING_MAX_WORDS = 250
DOCSTRING_MODULES = (
    "abc", "argparse", "ast", "base64", "bisect", "calendar", "codecs", "collections",
    "contextlib", "copy", "csv", "dataclasses", "datetime", "decimal", "difflib", "enum",
    "fnmatch", "fractions", "functools", "glob", "gzip", "hashlib", "heapq", "html", "inspect",
    "io", "ipaddress", "itertools", "json", "logging", "math", "operator", "os", "os.path",
    "pathlib", "pprint", "queue", "random", "re", "secrets", "shlex", "shutil", "statistics",
    "string", "struct", "tarfile", "tempfile", "textwrap", "threading", "time", "tokenize",
    "traceback", "typing", "unicodedata", "urllib.parse", "uuid", "warnings", "weakref",
    "zipfile", "zlib")
_EXPLAIN = ("Explain {title} in Python.", "How does {title} work in Python?",
            "What should I know about {title} in Python?")
_ASK = ("What does `{name}` do in Python?", "Explain `{name}` from the Python standard library.",
        "How do I use `{name}` in Python?")


def _hash(*parts: Any) -> int:
  return int(hashlib.sha256("\x1f".join(map(str, parts)).encode()).hexdigest()[:12], 16)


def _record(rid: str, prompt: str, response: str, markers: dict[str, Any],
            **meta: Any) -> dict[str, Any]:
  return {"id": rid, "prompt": prompt, "response": response, "markers": markers,
          "meta": {"dataset": rid.split("/")[0], **meta}}


def _paragraphs(text: str) -> list[str]:
  return [p.strip("\n") for p in re.split(r"\n\s*\n", text) if p.strip()]


def truncate_words(text: str, budget: int) -> str:
  """Whole paragraphs up to `budget` words; a first paragraph over it is cut at a sentence."""
  out, used = [], 0
  for para in _paragraphs(text):
    n = text_stats.count_words(para)
    if used + n > budget:
      if not out:
        sentences = re.split(r"(?<=[.!?])\s+", para)
        while len(sentences) > 1 and text_stats.count_words(" ".join(sentences)) > budget:
          sentences.pop()
        out.append(" ".join(sentences))
      break
    out.append(para)
    used += n
  return "\n\n".join(out)


def python_reference(seed: int = 0) -> list[dict[str, Any]]:
  """Explanation examples from the Python Language Reference topics (module docstring)."""
  from pydoc_data import topics  # pylint: disable=g-import-not-at-top
  out = []
  for key in sorted(topics.topics):
    lines = topics.topics[key].strip("\n").split("\n")
    title = lines[0].strip()
    body = "\n".join(lines[2:] if len(lines) > 1 and set(lines[1].strip()) == {"*"} else lines)
    prompt = _EXPLAIN[_hash(seed, key) % len(_EXPLAIN)].format(title=title)
    seen = set()
    for budget in EXPLANATION_BUDGETS:
      text = truncate_words(body, budget)
      if text_stats.count_words(text) < 5 or text in seen:
        continue
      seen.add(text)
      out.append(_record(f"python_reference/{key}/{budget}", prompt, text,
                         {"task": "Explanation", "domain": "Code", "lang": "English"},
                         license=PYTHON_LICENSE, topic=key, budget=budget,
                         python=sys.version.split()[0]))
  return out


def _public_members(module: Any) -> Iterable[tuple[str, Any]]:
  for name, obj in sorted(vars(module).items()):
    if name.startswith("_") or not (inspect.isfunction(obj) or inspect.isclass(obj)
                                    or inspect.isbuiltin(obj)):
      continue
    if getattr(obj, "__module__", None) not in (module.__name__, None):
      continue
    yield name, obj


def python_docstrings(seed: int = 0, per_module: int = 16) -> list[dict[str, Any]]:
  """QuestionAnswering examples: the docstrings of public stdlib functions and classes."""
  out = []
  for mod_name in DOCSTRING_MODULES:
    module = importlib.import_module(mod_name)
    rows = []
    for name, obj in _public_members(module):
      doc = inspect.getdoc(obj) or ""
      if text_stats.count_words(doc) < 8:
        continue
      qual = f"{mod_name}.{name}"
      rows.append((_hash(seed, qual), qual, truncate_words(doc, DOCSTRING_MAX_WORDS)))
    for _, qual, doc in sorted(rows)[:per_module]:
      prompt = _ASK[_hash(seed, "ask", qual) % len(_ASK)].format(name=qual)
      out.append(_record(f"python_docstrings/{qual}", prompt, doc,
                         {"task": "QuestionAnswering", "domain": "Code", "lang": "English"},
                         license=PYTHON_LICENSE, python=sys.version.split()[0]))
  return out


# Taxonomy language -> Babel locale.
CLDR_LOCALES = {
    "French": "fr", "Spanish": "es", "Italian": "it", "German": "de", "Portuguese": "pt",
    "Japanese": "ja", "Korean": "ko", "Arabic": "ar", "Chinese": "zh", "Russian": "ru",
    "Polish": "pl", "Turkish": "tr", "Vietnamese": "vi", "Dutch": "nl", "Czech": "cs",
    "Indonesian": "id", "Ukrainian": "uk", "Romanian": "ro", "Greek": "el", "Hindi": "hi",
    "Hebrew": "he", "Persian": "fa"}
_TERRITORIES = ("DE", "FR", "JP", "BR", "IN", "EG", "MX", "CA", "CN", "IT", "ES", "KR", "TR",
                "GR", "PL", "NL", "SE", "NG", "AR", "AU")
_LANGS = ("en", "fr", "de", "es", "ja", "zh", "ar", "ru", "hi", "pt", "it", "ko")
_TRANSLATE = ("Translate into {lang}: {items}", "How do you say these in {lang}? {items}",
              "Give the {lang} words for: {items}")


def _cldr_lists(locale: Any) -> dict[str, tuple[list[str], list[str]]]:
  """List kind -> (English names, names in `locale`)."""
  from babel import Locale  # pylint: disable=g-import-not-at-top
  en = Locale("en")
  days = list(range(7))
  return {
      "weekdays": ([en.days["format"]["wide"][d] for d in days],
                   [locale.days["format"]["wide"][d] for d in days]),
      "months": ([en.months["format"]["wide"][m] for m in range(1, 13)],
                 [locale.months["format"]["wide"][m] for m in range(1, 13)]),
      "countries": ([en.territories[t] for t in _TERRITORIES],
                    [locale.territories[t] for t in _TERRITORIES]),
      "languages": ([en.languages[code] for code in _LANGS],
                    [locale.languages[code] for code in _LANGS]),
  }


def cldr_translation(seed: int = 0, per_language: int = 12) -> list[dict[str, Any]]:
  """Translation examples: 2-7 CLDR names at a time, English into each taxonomy language."""
  import babel  # pylint: disable=g-import-not-at-top
  out = []
  for lang, code in sorted(CLDR_LOCALES.items()):
    lists = _cldr_lists(babel.Locale.parse(code))
    rng = random.Random(f"{seed}:cldr:{lang}")
    for i in range(per_language):
      kind = sorted(lists)[i % len(lists)]
      english, native = lists[kind]
      picks = sorted(rng.sample(range(len(english)), rng.randint(2, min(7, len(english)))))
      sep = "、" if code in ("ja", "zh") else ", "
      prompt = rng.choice(_TRANSLATE).format(lang=lang, items=", ".join(english[j] for j in picks))
      response = sep.join(native[j] for j in picks)
      out.append(_record(f"cldr_translation/{code}/{i:03d}", prompt, response,
                         {"task": "Translation", "lang": lang},
                         license="Unicode-3.0 (CLDR data), BSD-3-Clause (Babel)", kind=kind,
                         babel=babel.__version__))
  return out


def _problem(rng: random.Random) -> tuple[str, str]:
  """One word problem and its worked solution (all numbers exact integers)."""
  kind = rng.randrange(4)
  if kind == 0:
    n, price, paid = rng.randint(2, 9), rng.randint(2, 40), 0
    total = n * price
    paid = (total // 50 + 1) * 50
    return (f"A notebook costs {price} dollars. Mia buys {n} notebooks and pays with "
            f"{paid} dollars. How much change does she get?",
            f"Each notebook costs {price} dollars, so {n} notebooks cost {n} x {price} = "
            f"{total} dollars. She pays {paid} dollars, so her change is {paid} - {total} = "
            f"{paid - total} dollars.\n\nAnswer: {paid - total} dollars.")
  if kind == 1:
    speed, hours, extra = rng.randint(30, 90), rng.randint(2, 6), rng.randint(10, 60)
    d = speed * hours
    return (f"A train travels at {speed} km per hour for {hours} hours, then another {extra} "
            f"km. How far does it travel in total?",
            f"At {speed} km per hour for {hours} hours the train covers {speed} x {hours} = "
            f"{d} km. Adding the last {extra} km gives {d} + {extra} = {d + extra} km."
            f"\n\nAnswer: {d + extra} km.")
  if kind == 2:
    rows, cols, eaten = rng.randint(3, 9), rng.randint(3, 9), rng.randint(1, 8)
    return (f"A tray holds {rows} rows of {cols} cookies. {eaten} cookies are eaten. How many "
            "are left?",
            f"The tray starts with {rows} x {cols} = {rows * cols} cookies. After {eaten} are "
            f"eaten, {rows * cols} - {eaten} = {rows * cols - eaten} remain.\n\nAnswer: "
            f"{rows * cols - eaten}.")
  a, b, c = rng.randint(10, 99), rng.randint(10, 99), rng.randint(2, 5)
  return (f"Sam has {a} marbles and Lee has {b}. They put them together and share them "
          f"equally among {c} friends, giving away any left over. How many marbles does each "
          "friend get, and how many are left over?",
          f"Together they have {a} + {b} = {a + b} marbles. Sharing among {c} friends: "
          f"{a + b} = {c} x {(a + b) // c} + {(a + b) % c}. So each friend gets "
          f"{(a + b) // c} marbles and {(a + b) % c} are left over.\n\nAnswer: "
          f"{(a + b) // c} each, {(a + b) % c} left over.")


def arithmetic(seed: int = 0, count: int = 160) -> list[dict[str, Any]]:
  """Reasoning examples: generated word problems with worked solutions."""
  rng = random.Random(f"{seed}:arithmetic")
  return [_record(f"arithmetic/{i:04d}", *_problem(rng),
                  {"task": "Reasoning", "domain": "Math", "source": "Synthetic",
                   "lang": "English"}, license="generated by treasure_jax")
          for i in range(count)]


_LANGID = ("Which language is this sentence written in?\n\n{text}",
           "Identify the language of the following text: {text}")


def language_id(conversations: Sequence[chatterbot.Conversation], seed: int = 0,
                per_language: int = 5) -> list[dict[str, Any]]:
  """Classification examples: the corpus language of one utterance, answered in English."""
  by_lang: dict[str, list[tuple[int, chatterbot.Conversation, str]]] = {}
  for conv in conversations:
    text = conv.utterances[0]
    if text_stats.count_words(text) >= 4:
      by_lang.setdefault(conv.language, []).append(
          (_hash(seed, "langid", conv.file, conv.index), conv, text))
  out = []
  for folder, rows in sorted(by_lang.items()):
    for _, conv, text in sorted(rows, key=lambda r: r[0])[:per_language]:
      name = chatterbot.LANGUAGES[folder]
      template = _LANGID[_hash(seed, conv.file, conv.index) % len(_LANGID)]
      out.append(_record(f"language_id/{conv.file[:-4]}/{conv.index:04d}",
                         template.format(text=text),
                         f"This text is written in {name}.",
                         {"task": "Classification", "lang": "English"},
                         license="BSD-3-Clause (chatterbot-corpus)", file=conv.file))
  return out
