"""Word, sentence and paragraph counts of a response, for the length markers.

The paper counts words with spaCy; we count with fixed, documented rules in plain Python
(stdlib `unicodedata`, no segmenter models), so that the counts are the same on every machine
and cheap enough to run on every example and every generated answer.

Words (`count_words`):
- In scripts written with spaces, a word is a maximal run of letters, digits and combining
  marks (so Devanagari vowel signs stay inside their word); an apostrophe or hyphen between two
  such characters joins them ("don't", "state-of-the-art" are one word each), as does a
  zero-width (non-)joiner (Persian "می‌پردازد" is one word), and so does a
  "." or "," between two digits ("3.14", "1,000"). Punctuation and symbols are not words.
- In scripts written without spaces (Han, Hiragana, Katakana; Thai, Lao, Khmer, Myanmar) each
  character, with its combining marks, is one word. For Chinese this equals spaCy's default
  Chinese segmentation ("char"); for Japanese kana and for the Southeast-Asian abugidas it is a
  stable over-count (about 3-4 per Thai word) used because a dictionary segmenter is not
  shipped. Counts stay monotonic in text length and identical between training data and
  evaluation, which is what a length lever needs; cross-script comparisons are approximate.
- Hangul is written with spaces and follows the first rule.

Sentences (`count_sentences`): blocks are separated by blank lines and by lines that start a
list item, heading or table row; inside a block, lines are joined and split after `. ! ? …`
(followed by space or end; not after a lone letter, as in "e.g." or "J. Smith"), and after
`。！？｡؟۔।॥` wherever they occur. In Thai, Lao and
Khmer, which mark sentence ends with a space rather than punctuation, a space between two
characters of those scripts also ends a sentence. A segment counts if it has a letter or digit.
A fenced code block counts as one sentence.

Paragraphs (`count_paragraphs`): non-empty chunks between blank lines; blank lines inside a
fenced code block do not split it.

Sentence cuts (`sentence_cuts`): the places where a prefix of the text ends a whole sentence,
for length-varied copies of an answer (`length_variants.make`): after `. ! ? …` (closing
quotes or brackets kept) or a full stop of an unspaced script, where the character before the
mark is a letter or closing bracket (so never after "1." of a list, or "e.g."). Text with a
fenced code block has no cuts (a program is not cut into a shorter one).

Deliberately not here: which category gets which count (`deterministic`), language (`language`).
"""
from __future__ import annotations

import functools
import re
import unicodedata

# (first, last) code points of scripts written without spaces between words.
_UNSPACED_RANGES = (
    (0x0E00, 0x0EFF),  # Thai, Lao
    (0x1000, 0x109F),  # Myanmar
    (0x1780, 0x17FF),  # Khmer
    (0x3040, 0x30FF),  # Hiragana, Katakana
    (0x31F0, 0x31FF),  # Katakana phonetic extensions
    (0x3400, 0x4DBF),  # CJK extension A
    (0x4E00, 0x9FFF),  # CJK unified ideographs
    (0xF900, 0xFAFF),  # CJK compatibility ideographs
    (0xFF66, 0xFF9F),  # Halfwidth katakana
    (0x20000, 0x3134F),  # CJK extensions B-G
)
# Inside a word: apostrophes, hyphens, and the zero-width (non-)joiner that Persian writes
# within words ("می‌پردازد").
_JOINERS = frozenset("'’-‐\u200c\u200d")
_FENCE = re.compile(r"^[ \t]*(```|~~~)[^\n]*\n.*?(?:^[ \t]*\1[ \t]*$|\Z)", re.DOTALL | re.MULTILINE)
_BLANK_LINE = re.compile(r"\n[ \t]*\n")
_BLOCK_START = re.compile(r"^[ \t]*(?:[-*+•]|\d{1,3}[.)]|[A-Za-z][.)]|#{1,6}|\|)[ \t]+|^[ \t]*\|")
_LIST_MARKER = re.compile(r"^[ \t]*(?:[-*+•]|\d{1,3}[.)]|[A-Za-z][.)]|#{1,6})[ \t]+")
# A "." after a lone letter ("e.g.", "U.S.", "J. Smith") is an abbreviation, not an end.
_SPACED_END = re.compile(r"(?<!\W[A-Za-z]\.)(?<!^[A-Za-z]\.)(?<=[.!?…])[\"'”’)\]»]*\s+")
_UNSPACED_END = re.compile(r"(?<=[。！？｡؟۔।॥])[\"'”’」』)\]]*\s*")
_SEA_SPACE = re.compile(r"(?<=[\u0E00-\u0EFF\u1780-\u17FF])\s+(?=[\u0E00-\u0EFF\u1780-\u17FF])")
_CODE = "\ue000"  # Private-use character standing for one fenced code block.


def is_unspaced(ch: str) -> bool:
  """True for characters of scripts that do not separate words with spaces."""
  cp = ord(ch)
  return cp >= 0x0E00 and any(lo <= cp <= hi for lo, hi in _UNSPACED_RANGES)


@functools.lru_cache(maxsize=1 << 14)
def _kind(ch: str) -> str:
  """'u' unspaced-script char, 'w' letter/digit, 'm' combining mark, 'o' anything else."""
  if is_unspaced(ch):
    return "m" if unicodedata.category(ch)[0] == "M" else "u"
  major = unicodedata.category(ch)[0]
  if major in "LN":
    return "w"
  return "m" if major == "M" else "o"


# The same rules on ASCII text (no marks, no unspaced scripts), as one C-speed regex: 8x faster.
_ASCII_WORD = re.compile(r"[A-Za-z0-9]+(?:['-][A-Za-z0-9]+|(?<=[0-9])[.,][0-9][A-Za-z0-9]*)*")


def count_words(text: str) -> int:
  """Words of `text` by the rules in the module docstring."""
  if text.isascii():
    return sum(1 for _ in _ASCII_WORD.finditer(text))
  count = 0
  in_word = False
  kinds = [_kind(c) for c in text]
  for i, k in enumerate(kinds):
    if k == "u":
      count += 1
      in_word = False
    elif k == "w":
      if not in_word:
        count += 1
      in_word = True
    elif k == "m":
      continue  # A mark belongs to the character before it.
    elif in_word and i + 1 < len(kinds) and kinds[i + 1] == "w" and (
        text[i] in _JOINERS or (text[i] in ".," and text[i - 1].isdigit()
                                and text[i + 1].isdigit())):
      continue  # "don't", "e-mail", "3.14", "1,000": the joiner keeps the word open.
    else:
      in_word = False
  return count


def _has_word(segment: str) -> bool:
  return any(unicodedata.category(c)[0] in "LN" for c in segment)


def _mask_code(text: str) -> tuple[str, int]:
  """Replaces each fenced code block by a one-line placeholder; returns the block count."""
  blocks = _FENCE.findall(text)
  return _FENCE.sub(_CODE, text), len(blocks)


def _blocks(text: str) -> list[str]:
  """Blank-line paragraphs, further split before list items, headings, table rows and code."""
  blocks = []
  for para in _BLANK_LINE.split(text):
    current: list[str] = []
    for line in para.split("\n"):
      if line.strip() == _CODE:
        blocks.extend([" ".join(current), _CODE] if current else [_CODE])
        current = []
        continue
      if _BLOCK_START.match(line) and current:
        blocks.append(" ".join(current))
        current = []
      current.append(_LIST_MARKER.sub("", line, count=1).strip())
    if current:
      blocks.append(" ".join(current))
  return blocks


def count_sentences(text: str) -> int:
  """Sentences of `text` by the rules in the module docstring."""
  masked, n_code = _mask_code(text)
  count = 0
  for block in _blocks(masked.replace("\r\n", "\n")):
    if block == _CODE:
      continue  # Counted once per block via n_code.
    for piece in _SPACED_END.split(block):
      for part in _UNSPACED_END.split(piece):
        count += sum(1 for s in _SEA_SPACE.split(part) if _has_word(s))
  return count + n_code


# A prefix ends a sentence: a letter or closing bracket, then an end mark (closers may follow).
_CUT_END = re.compile(r"(?:[^\W\d_]|[\"'”’)\]»])[.!?…][\"'”’)\]»]*$"
                      r"|[。！？｡؟۔।॥][\"'”’」』)\]]*$")


def sentence_cuts(text: str) -> list[int]:
  """Ascending lengths of the prefixes of `text` that end a whole sentence (module docstring).

  Each prefix, `text[:n]`, has at least one word and fewer words than `text`.
  """
  if _FENCE.search(text):
    return []
  total = count_words(text)
  cuts = set()
  for pattern in (_SPACED_END, _UNSPACED_END):
    for m in pattern.finditer(text):
      prefix = text[:m.end()].rstrip()
      if prefix and _CUT_END.search(prefix) and 0 < count_words(prefix) < total:
        cuts.add(len(prefix))
  return sorted(cuts)


def count_paragraphs(text: str) -> int:
  """Non-empty chunks between blank lines; a fenced code block never splits."""
  masked, _ = _mask_code(text.replace("\r\n", "\n"))
  return sum(1 for chunk in _BLANK_LINE.split(masked) if chunk.strip())
