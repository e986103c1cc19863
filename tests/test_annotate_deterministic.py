"""Deterministic annotators on real multilingual text from the installed chatterbot corpus.

Expected counts were made by hand from the rules in `text_stats` (each listed in a comment), so
a change of rule shows up here as a failure, not as a silent shift of the length markers.
"""
from __future__ import annotations

import dataclasses
import functools
import os

import pytest
import yaml

from treasure_jax.annotate import chatterbot
from treasure_jax.annotate import demo_data
from treasure_jax.annotate import deterministic
from treasure_jax.annotate import formats
from treasure_jax.annotate import language
from treasure_jax.annotate import records
from treasure_jax.annotate import text_stats
from treasure_jax.markers import taxonomy


@functools.lru_cache(maxsize=None)
def corpus_file(name: str) -> list:
  with open(os.path.join(chatterbot.default_dir(), name), encoding="utf-8") as f:
    return yaml.safe_load(f)["conversations"]


def utterance(name: str, conv: int, turn: int) -> str:
  return corpus_file(name)[conv][turn].strip()


# (file, conversation, utterance, words, sentences, lang); words counted by hand:
CASES = [
    # "Artificial Intelligence is the branch ... that think." 15 space-separated words.
    ("english/ai.yml", 0, 1, 15, 1, "English"),
    # 13 + 12 Han characters, the comma and 。 are punctuation.
    ("chinese/ai.yml", 0, 1, 25, 1, "Chinese"),
    # 人工知能は (5) + 思考する...枝である (28 kanji and kana); 、。 not words.
    ("japanese/ai.yml", 0, 1, 33, 1, "Japanese"),
    # Hangul is spaced: 10 eojeol.
    ("korean/ai.yml", 0, 1, 10, 1, "Korean"),
    # "Хорошо, а у тебя?"
    ("russian/conversations.yml", 0, 1, 4, 1, "Russian"),
    # Devanagari vowel signs and virama stay inside their word: 10 words.
    ("hindi/health.yml", 0, 8, 10, 1, "Hindi"),
    # "שלומי טוב, ומה שלומך"
    ("hebrew/conversations.yml", 0, 1, 4, 1, "Hebrew"),
    # 13 words, ends with the Arabic question mark ؟.
    ("persian/science.yml", 0, 1, 13, 1, "Persian"),
    # 19 words: "شاخه‌ای" and "می‌پردازد" are joined by a zero-width non-joiner.
    ("persian/science.yml", 0, 2, 19, 1, "Persian"),
    # ห ว พ อ ด เ ล ย เ น ย: 11 base characters (vowel and tone marks attach).
    ("thai/greeting.yml", 5, 3, 11, 1, "Thai"),
    # Odia is not in lingua; recognized by its script. 9 words.
    ("oriya/food.yml", 4, 1, 9, 1, "Odia"),
]


@pytest.fixture(scope="module")
def tax() -> taxonomy.Taxonomy:
  return demo_data.demo_taxonomy()


@pytest.mark.parametrize("name,conv,turn,words,sentences,lang", CASES)
def test_counts_and_language_on_corpus_text(tax, name, conv, turn, words, sentences, lang):
  text = utterance(name, conv, turn)
  markers = deterministic.annotate(text, tax)
  assert markers["length_tokens"] == words, text
  assert markers["length_sentences"] == sentences, text
  assert markers["length_paragraphs"] == 1
  assert markers["length_bucket"] == "concise"
  assert markers["lang"] == lang, text
  assert "code_type" not in markers and "format" not in markers


def test_thai_text_is_the_expected_utterance():
  # Guards the Thai case above against a corpus update shifting indices.
  assert utterance("thai/greeting.yml", 5, 3) == "หิวพอดีเลยเนี่ย"


def test_code_answer_from_the_coding_file(tax):
  text = utterance("english/coding.yml", 0, 1)
  markers = deterministic.annotate(text, tax)
  # "Sure." / "Here's quicksort in Python:" / code / "Here's another example: merge sort:" / code
  assert markers["length_sentences"] == 5
  assert markers["length_paragraphs"] == 4  # Blank lines inside the code do not split it.
  assert markers["code_type"] == "python"  # Untagged fences: guessed from def/for/if lines.
  assert markers["format"] == "Markdown"
  assert markers["lang"] == "English"  # Detected on the prose, not the code.


def test_language_agreement_per_corpus_folder(tax):
  """Lingua agrees with the folder label on most answers of several scripts and languages."""
  ident = language.Identifier.for_taxonomy(tax)
  for folder, minimum in [("english", 0.85), ("chinese", 0.95), ("japanese", 0.9),
                          ("korean", 0.95), ("persian", 0.85), ("ukrainian", 0.9),
                          ("hebrew", 0.95), ("bengali", 0.95)]:
    answers = [c[-1] for name in os.listdir(os.path.join(chatterbot.default_dir(), folder))
               for c in corpus_file(f"{folder}/{name}") if isinstance(c, list) and len(c) > 1]
    label = chatterbot.LANGUAGES[folder]
    share = sum(ident(a) == label for a in answers) / len(answers)
    assert share >= minimum, (folder, share)


def test_out_of_taxonomy_language_gets_no_marker():
  ident = language.Identifier.for_taxonomy(taxonomy.default_taxonomy())
  # Swedish is an "extra" of the default taxonomy: recognized, so not mislabelled as Dutch.
  assert ident("Jag heter Anna och jag bor i Stockholm med min familj.") is None
  assert ident("Ich heiße Anna und wohne mit meiner Familie in Berlin.") == "German"
  assert ident("12345 !!!") is None


def test_word_rules():
  assert text_stats.count_words("don't stop state-of-the-art") == 3
  assert text_stats.count_words("pi is 3.14, about 1,000 times") == 6
  assert text_stats.count_words("— ... !!") == 0
  assert text_stats.count_words("2011年に") == 3  # Digits run + 2 characters.


def test_sentence_and_paragraph_rules():
  assert text_stats.count_sentences("E.g. this stays one. J. Smith came! Did he?") == 3
  assert text_stats.count_sentences("Items:\n- first\n- second\n1. third") == 4
  assert text_stats.count_sentences("สวัสดี ครับ") == 2  # Thai ends sentences with a space.
  assert text_stats.count_sentences("こんにちは。元気ですか？") == 2
  assert text_stats.count_sentences("") == 0
  assert text_stats.count_paragraphs("a\n\n  \n\nb\nc\n\n") == 2
  assert text_stats.count_paragraphs("x\n```\n1\n\n2\n```\ny") == 1


def test_sentence_cuts_end_whole_sentences():
  def prefixes(text):
    return [text[:n] for n in text_stats.sentence_cuts(text)]
  assert prefixes("E.g. this stays one. J. Smith came! Did he?") == [
      "E.g. this stays one.", "E.g. this stays one. J. Smith came!"]
  # Never after a list number; closing quotes stay with their sentence; wrapped lines join.
  assert prefixes("Items:\n1. first thing.\n2. second.") == ["Items:\n1. first thing."]
  assert prefixes('He said "yes." Then left.') == ['He said "yes."']
  assert prefixes("Returns the\nvalue. Raises (foo). Done") == [
      "Returns the\nvalue.", "Returns the\nvalue. Raises (foo)."]
  assert prefixes("こんにちは。元気ですか？") == ["こんにちは。"]
  assert prefixes("One only.") == [] and prefixes("") == []
  assert prefixes("Code:\n```\nx = 1\n```\nDone. Ok.") == []  # Code is never cut.


@pytest.mark.parametrize("text,expected", [
    ('{"name": "Ada", "born": 1815}', "JSON"),
    ("```json\n[1, 2, 3]\n```", "JSON"),
    ("<note><to>Ada</to></note>", "XML"),
    ("| a | b |\n|---|:-:|\n| 1 | 2 |", "Tabular"),
    (r"The area is $\pi r^2$.", "Latex"),
    ("(C) Paris", "MCQAnswer"),
    ("The answer is B.", "MCQAnswer"),
    ("Let's think step by step. 3 + 4 = 7, so 7.", "ChainOfThought"),
    ("First, add them. Then halve it. Therefore it is 6.", "ChainOfThought"),
    ("You need:\n- flour\n- eggs", "Enumeration"),
    ("## Setup\nRun the **installer**.", "Markdown"),
    ("It costs $5 or $10 at most.", None),
    ("A dog is a friendly animal.", None),
    ('{"broken": ', None),
])
def test_formats(text, expected):
  values = taxonomy.default_taxonomy().category("format").values
  assert formats.detect_format(text, values) == expected


def test_format_restricted_to_taxonomy_values():
  # A taxonomy without JSON falls through to the next rule that holds.
  assert formats.detect_format("```json\n[1]\n```", ("XML", "Markdown")) == "Markdown"
  assert formats.detect_format("[1]", ("XML",)) is None


@pytest.mark.parametrize("text,expected", [
    ("```py3\nprint(1)\n```", "python"),
    ("```c++\nint x;\n```", "cpp"),
    ("```golang\nx\n```", "go"),
    ("```zsh\nls\n```", "shell"),
    ("```kt\nval x = 1\n```", "kotlin"),
    ("```\nconst x: number = 1;\nconsole.log(x);\n```", "typescript"),
    ("```\nconst x = 1;\nconsole.log(x);\n```", "javascript"),
    ("#include <stdio.h>\nint main() {\n  printf(\"hi\");\n}", "c"),
    ("#include <iostream>\nint main() {\n  std::cout << 1;\n}", "cpp"),
    ("fn main() {\n    let mut x = 1;\n    println!(\"{}\", x);\n}", "rust"),
    ("```\nSELECT name FROM users WHERE id = 1;\n```", "sql"),
    ("I like programming: it is fun.\nYes it is.", None),
])
def test_code_type(text, expected):
  values = taxonomy.default_taxonomy().category("code_type").values
  assert formats.detect_code_type(text, values) == expected


def test_annotate_reads_the_final_assistant_turn_and_respects_the_taxonomy(tax):
  view = records.normalize({"messages": [
      {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Bonjour !"},
      {"role": "user", "content": "Again"},
      {"role": "assistant", "content": "Guten Morgen, wie geht es dir heute?"}]})
  assert deterministic.annotate(view, tax)["lang"] == "German"
  small = taxonomy.Taxonomy(tuple(c for c in tax.categories if c.name == "length_tokens"))
  assert deterministic.annotate(view, small) == {"length_tokens": 7}
  with pytest.raises(ValueError, match="not deterministic"):
    deterministic.annotate(view, tax, categories=("domain",))


def test_length_bucket_uses_the_taxonomy_cuts(tax):
  text = " ".join(["word"] * 350)
  paper_cuts = dataclasses.replace(tax, length_bucket_cuts=(300, 1000))
  assert deterministic.annotate(text, paper_cuts)["length_bucket"] == "medium"
  assert deterministic.annotate(text, tax)["length_bucket"] == "long"  # Demo cuts 50 / 150.
  short_cuts = dataclasses.replace(tax, length_bucket_cuts=(10, 20))
  assert deterministic.annotate(text, short_cuts)["length_bucket"] == "long"
