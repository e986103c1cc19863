"""Reads the `chatterbot-corpus` package's YAML files into conversations, reporting bad entries.

Layout: `chatterbot_corpus/data/<language>/<topic>.yml`, each with `categories:` (a list of
names) and `conversations:` (a list of lists of utterances). Every file is checked: a file that
does not parse or lacks a `conversations` list is rejected whole; an entry that is not a list
of at least two non-empty strings is rejected alone (some entries are plain strings, e.g.
"Q? - A." written on one line). Each rejection is (file, index, reason, entry). Exact repeats
of a conversation in the same language (the English tech_support file repeats 10 pairs 105
times) are dropped and counted, first occurrence kept, files read in sorted order.

Also the two tables that turn corpus metadata into markers: corpus folder -> `lang` value and
file topic -> `domain` value.

Deliberately not here: markers, splits and output files (`demo_data`).
"""
from __future__ import annotations

import dataclasses
import importlib.util
import os
from typing import Any

import yaml

_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml when present: 10x faster.

# Corpus folder -> taxonomy `lang` value. Traditional Chinese is the Chinese language in
# another script; the folder stays in the record's meta. Hinglish (Hindi-English code-mixing in
# Latin script) is kept apart from Hindi, which the corpus writes in Devanagari.
LANGUAGES = {
    "bengali": "Bengali", "chinese": "Chinese", "dutch": "Dutch", "english": "English",
    "french": "French", "german": "German", "hebrew": "Hebrew", "hindi": "Hindi",
    "hinglish": "Hinglish", "indonesian": "Indonesian", "italian": "Italian",
    "japanese": "Japanese", "korean": "Korean", "marathi": "Marathi", "oriya": "Odia",
    "persian": "Persian", "portuguese": "Portuguese", "russian": "Russian",
    "spanish": "Spanish", "swedish": "Swedish", "tamil": "Tamil", "telugu": "Telugu",
    "thai": "Thai", "traditionalchinese": "Chinese", "turkish": "Turkish",
    "ukrainian": "Ukrainian", "urdu": "Urdu", "yoruba": "Yoruba",
}
# File topic (lower-cased file stem; Spanish and misspelled names included) -> `domain`.
# Jokes, food, sport, film, books, games, proverbs and trivia are Culture; the bot's profile,
# emotions, gossip, compliments and suggestions are small talk (Conversation).
TOPIC_DOMAINS = {
    "ai": "Technology", "ia": "Technology", "computer": "Technology",
    "computers": "Technology", "tech_support": "Technology",
    "coding": "Code",
    "health": "Medical",
    "money": "Finance", "dinero": "Finance",
    "science": "Sciences",
    "psychology": "SocialSciences", "psicologia": "SocialSciences",
    "politics": "SocialSciences", "linguistic_knowledge": "SocialSciences",
    "history": "Culture", "history_brasil": "Culture", "literature": "Culture",
    "movies": "Culture", "music": "Culture", "humor": "Culture", "food": "Culture",
    "sports": "Culture", "sport": "Culture", "trivia": "Culture", "games": "Culture",
    "proverbs": "Culture", "traveling": "Culture", "unilab": "Culture",
    "conversations": "Conversation", "coversations": "Conversation",
    "greetings": "Conversation", "greeting": "Conversation", "emotion": "Conversation",
    "emotions": "Conversation", "emociones": "Conversation", "gossip": "Conversation",
    "botprofile": "Conversation", "profile": "Conversation", "perfilbot": "Conversation",
    "origen": "Conversation", "compliment": "Conversation", "suggestions": "Conversation",
}


@dataclasses.dataclass(frozen=True)
class Conversation:
  language: str  # corpus folder, e.g. "traditionalchinese"
  topic: str  # lower-cased file stem, e.g. "tech_support"
  categories: tuple[str, ...]
  file: str  # "<language>/<topic>.yml", relative to the corpus root
  index: int  # position in the file's `conversations` list
  utterances: tuple[str, ...]


@dataclasses.dataclass
class Corpus:
  conversations: list[Conversation]
  rejects: list[dict[str, Any]]
  duplicates: dict[str, int]  # file -> exact repeats dropped


def default_dir() -> str:
  """The installed corpus's data folder (found without importing the package)."""
  spec = importlib.util.find_spec("chatterbot_corpus")
  if spec is None or not spec.submodule_search_locations:
    raise FileNotFoundError("the chatterbot-corpus package is not installed")
  return os.path.join(list(spec.submodule_search_locations)[0], "data")


def _reject(file: str, index: int | None, reason: str, entry: Any = None) -> dict[str, Any]:
  shown = entry if isinstance(entry, (str, list, type(None))) else repr(entry)
  return {"file": file, "index": index, "reason": reason, "entry": shown}


def _entry_problem(entry: Any) -> str | None:
  if not isinstance(entry, list):
    return f"entry is a {type(entry).__name__}, not a list of utterances"
  if len(entry) < 2:
    return f"entry has {len(entry)} utterance(s); a conversation needs at least 2"
  for i, u in enumerate(entry):
    if not isinstance(u, str):
      return f"utterance {i} is a {type(u).__name__}, not a string"
    if not u.strip():
      return f"utterance {i} is empty"
  return None


def _load_file(root: str, file: str) -> tuple[dict | None, str | None]:
  try:
    with open(os.path.join(root, file), encoding="utf-8") as f:
      data = yaml.load(f, Loader=_LOADER)
  except (yaml.YAMLError, UnicodeDecodeError) as e:
    return None, f"not valid YAML: {' '.join(str(e).split())}"
  if not isinstance(data, dict) or not isinstance(data.get("conversations"), list):
    return None, "no 'conversations' list at the top level"
  return data, None


def read(root: str | None = None) -> Corpus:
  """All conversations of the corpus under `root` (default: the installed package's data)."""
  root = default_dir() if root is None else os.fspath(root)
  out = Corpus([], [], {})
  seen: set[tuple[str, tuple[str, ...]]] = set()
  for language in sorted(os.listdir(root)):
    if not os.path.isdir(os.path.join(root, language)):
      continue
    for name in sorted(os.listdir(os.path.join(root, language))):
      if not name.endswith((".yml", ".yaml")):
        continue
      file = f"{language}/{name}"
      data, problem = _load_file(root, file)
      if problem:
        out.rejects.append(_reject(file, None, problem))
        continue
      categories = tuple(str(c).strip() for c in data.get("categories") or ())
      topic = os.path.splitext(name)[0].lower()
      for index, entry in enumerate(data["conversations"]):
        problem = _entry_problem(entry)
        if problem:
          out.rejects.append(_reject(file, index, problem, entry))
          continue
        utterances = tuple(u.strip() for u in entry)
        if (language, utterances) in seen:
          out.duplicates[file] = out.duplicates.get(file, 0) + 1
          continue
        seen.add((language, utterances))
        out.conversations.append(
            Conversation(language, topic, categories, file, index, utterances))
  return out
