"""Rule-based `format` and `code_type` of a response.

`detect_format` tries, in this order, and returns the first that holds and that the taxonomy
allows (one value per category, so the more specific format wins):
  JSON        the whole answer (or its only fenced block) parses as a JSON object or array;
  XML         the whole answer (or its only fenced block) parses as XML (no DTD entities);
  Tabular     a Markdown table: a `|`-row followed by a `|---|` delimiter row;
  Latex       \\begin{...}, $$...$$, \\(...\\), \\[...\\], or $...$ holding a command, ^ or _;
  MCQAnswer   a short answer (<= 12 words) that names an option letter A-E ("B", "(C) Paris",
              "The answer is D");
  ChainOfThought  "step by step" / "let's think", two or more "Step N", or two ordinal
              connectives (first, then, next, finally...) plus a conclusion (therefore, so the
              answer is...); English cues only;
  Enumeration two or more lines starting with a bullet or a number;
  Markdown    a heading, bold text, a code fence, a link or a block quote.
The paper has an LLM infer `format` from the prompt; these rules read the answer instead and are
meant for data whose answers show their format.

`detect_code_type`: the tags of fenced code blocks, resolved through pygments' lexer aliases
("py3", "c++", "golang", "zsh" ...), the most frequent wins. Untagged code (an untagged fence,
or an answer whose lines look like code) gets a guess: each taxonomy language scores one point
per matching signature (keywords, idioms) plus one if its pygments lexer's `analyse_text`
rates the code >= 0.3; a superset language adds its base's points (TypeScript over JavaScript,
C++ over C) so it wins only on a cue of its own. Ties or too little evidence give no marker.
"""
from __future__ import annotations

import collections
import functools
import json
import re
import xml.etree.ElementTree as ElementTree
from collections.abc import Sequence

import pygments.lexers
import pygments.util

_FENCE = re.compile(r"^[ \t]*```[ \t]*([^\s`]*)[^\n]*\n(.*?)^[ \t]*```[ \t]*$",
                    re.DOTALL | re.MULTILINE)
_TABLE = re.compile(r"^[ \t]*\|?.*\|.*\n"  # a header row with a pipe, then the delimiter row
                    r"[ \t]*\|?[ \t]*:?-+:?[ \t]*(\|[ \t]*:?-+:?[ \t]*)+\|?[ \t]*$", re.MULTILINE)
_LATEX = re.compile(r"\\begin\{[A-Za-z*]+\}|\$\$.+?\$\$|\\\(.+?\\\)|\\\[.+?\\\]"
                    r"|\$[^$\s][^$\n]*?(\\[A-Za-z]+|\^|_)[^$\n]*?\$", re.DOTALL)
_MCQ = re.compile(r"^\(?([A-E])\)?(?:[.):]|\s*$)|^(?:the\s+)?(?:correct\s+)?(?:answer|option|"
                  r"choice)(?:\s+is)?\s*:?\s*\(?([A-E])\)?(?:\W|$)", re.IGNORECASE)
_COT_EXPLICIT = re.compile(r"step[- ]by[- ]step|let'?s think|let us think", re.IGNORECASE)
_COT_STEP = re.compile(r"\bstep\s+\d+\b", re.IGNORECASE)
_COT_ORDINAL = re.compile(r"(?:^|[.!?]\s+|\n\s*)(first(?:ly)?|second(?:ly)?|third(?:ly)?|then|"
                          r"next|after that|finally)\b", re.IGNORECASE)
_COT_CONCLUSION = re.compile(r"\b(therefore|thus|hence|so the answer is|the answer is)\b",
                             re.IGNORECASE)
_LIST_ITEM = re.compile(r"^[ \t]*(?:[-*+•]|\d{1,3}[.)])[ \t]+\S", re.MULTILINE)
_MARKDOWN = re.compile(r"^#{1,6}[ \t]+\S|\*\*[^*\n]+\*\*|^[ \t]*```|\[[^\]\n]+\]\([^)\s]+\)"
                       r"|^>[ \t]", re.MULTILINE)

# Code signatures per taxonomy `code_type`; each matching pattern is one point.
_M = re.MULTILINE
_SIGNATURES = {
    "python": [r"^\s*def \w+\(.*\)\s*(->.*)?:\s*$", r"^\s*(from [\w.]+ )?import \w+",
               r"^\s*(elif .*|else|try|except\b.*|finally):\s*$", r"\bself\.\w+",
               r"^\s*for \w+(, \w+)* in .+:\s*$", r"\b(None|True|False)\b"],
    "javascript": [r"\bfunction\s*\w*\s*\(", r"\b(const|let|var)\s+\w+\s*=", r"=>",
                   r"console\.log\(", r"\b(document|window)\.\w+", r"require\(['\"]"],
    "typescript": [r"\w\s*:\s*(string|number|boolean|any|void)\b", r"\binterface\s+\w+\s*\{",
                   r"\bexport\s+(type|interface)\b"],
    "java": [r"\bpublic\s+(static\s+)?(final\s+)?(class|void|int|String)\b",
             r"System\.out\.print", r"\bString\[\]\s+args", r"^\s*import\s+java\.", r"@Override"],
    "c": [r"#include\s*<\w+\.h>", r"\bprintf\s*\(", r"\bint\s+main\s*\(", r"\bmalloc\s*\(",
          r"\w->\w", r"\bstruct\s+\w+\s*\{"],
    "cpp": [r"#include\s*<(iostream|vector|string|map|algorithm)>", r"\bstd::", r"\bcout\s*<<",
            r"\btemplate\s*<", r"\busing\s+namespace\b"],
    "csharp": [r"^\s*using\s+System", r"Console\.Write", r"^\s*namespace\s+[\w.]+",
               r"\bstring\[\]\s+args", r"\bvar\s+\w+\s*=\s*new\b"],
    "go": [r"^package\s+\w+", r"\bfunc\s+(\(\w+\s+\*?\w+\)\s*)?\w+\s*\(", r"\w\s*:=",
           r"\bfmt\.\w+", r"^import\s+\("],
    "rust": [r"\bfn\s+\w+\s*(<.*>)?\(", r"\blet\s+mut\b", r"\bprintln!\(", r"^\s*impl\b",
             r"::new\(", r"&(mut\s+)?str\b"],
    "swift": [r"\bfunc\s+\w+\s*\(.*\)\s*(->\s*\w+\s*)?\{", r"\bvar\s+\w+\s*:\s*\w+",
              r"^\s*import\s+(Foundation|UIKit|SwiftUI)", r"\bguard\s+let\b", r"\bif\s+let\b"],
    "kotlin": [r"\bfun\s+\w+\s*\(", r"\bval\s+\w+", r"\bprintln\(", r"\bwhen\s*\(",
               r"\bdata\s+class\b"],
    "php": [r"<\?php", r"\$\w+\s*=", r"\becho\s+", r"\$\w+->\w+", r"\bfunction\s+\w+\s*\(\$"],
    "ruby": [r"^\s*def\s+\w+[?!]?(\(.*\))?\s*$", r"^\s*end\s*$", r"\bputs\s+",
             r"\.each\s+do\b|\bdo\s*\|\w+\|", r"^\s*require\s+['\"]", r"@\w+\s*="],
    "haskell": [r"^\w+\s*::\s*.+->", r"^module\s+\w+", r"\bwhere\s*$",
                r"^import\s+(qualified\s+)?Data\.", r"\bputStrLn\b", r"\w\s*<-\s*\w"],
    "shell": [r"^#!\s*/(usr/)?bin/(env\s+)?(ba|z)?sh", r"^\s*(sudo|apt(-get)?|pip3?|npm|cd|ls|"
              r"echo|export|mkdir|chmod|git|curl|wget)\s", r"\$\{\w+\}", r"^\s*(fi|done|esac)\s*$",
              r"^\s*if \[\[? "],
    "sql": [r"(?i)\bselect\b.+\bfrom\b", r"(?i)\binsert\s+into\b", r"(?i)\bcreate\s+table\b",
            r"(?i)\bwhere\b.+=", r"(?i)\b(inner|left|right)?\s*join\b.+\bon\b",
            r"(?i)\b(group|order)\s+by\b"],
    "cobol": [r"IDENTIFICATION\s+DIVISION", r"PROCEDURE\s+DIVISION", r"\bPIC\s+[X9]",
              r"WORKING-STORAGE", r"\bSTOP\s+RUN\b"],
}
_SIGNATURES_RE = {k: [re.compile(p, _M) for p in v] for k, v in _SIGNATURES.items()}
_SUPERSETS = {"typescript": "javascript", "cpp": "c"}
# Pygments lexer names that are a dialect of a taxonomy language.
_LEXER_NAMES = {"Python 2.x": "python", "Python console session": "python",
                "Bash Session": "shell", "Shell Session": "shell", "PostgreSQL SQL dialect": "sql",
                "MySQL": "sql", "Transact-SQL": "sql", "sqlite3con": "sql", "PL/pgSQL": "sql",
                "TSX": "typescript", "JSX": "javascript", "C++": "cpp", "Zsh": "shell"}
# Fence tags pygments does not know as aliases.
_TAG_ALIASES = {"shell": "bash", "kt": "kotlin", "kts": "kotlin", "cob": "cobol", "cbl": "cobol",
                "node": "javascript", "c#": "csharp"}
_CODE_LINE = re.compile(r"[;{}:)]\s*$|^\s{2,}\S|^\s*(def|class|import|from|#include|function|"
                        r"return|package|fn|func|let|var|const|SELECT|public|private)\b")


def _only_block(text: str) -> str:
  """The body of a fenced block that is the whole answer, else the stripped answer."""
  stripped = text.strip()
  blocks = _FENCE.findall(stripped)
  if len(blocks) == 1 and stripped.startswith("```") and stripped.endswith("```"):
    return blocks[0][1].strip()
  return stripped


def strip_code_blocks(text: str) -> str:
  """`text` with every closed fenced code block removed."""
  return _FENCE.sub("", text)


def _is_json(text: str) -> bool:
  if not text[:1] in "{[":
    return False
  try:
    return isinstance(json.loads(text), (dict, list))
  except ValueError:
    return False


def _is_xml(text: str) -> bool:
  if not (text.startswith("<") and text.endswith(">")) or "<!ENTITY" in text:
    return False
  try:
    ElementTree.fromstring(text)
  except ElementTree.ParseError:
    return False
  return True


def _is_mcq(text: str) -> bool:
  if len(text.split()) > 12:
    return False
  match = _MCQ.match(text)
  return bool(match) and (match.group(1) or match.group(2) or "").isupper()


def _is_cot(text: str) -> bool:
  if _COT_EXPLICIT.search(text) or len(_COT_STEP.findall(text)) >= 2:
    return True
  ordinals = {m.lower() for m in _COT_ORDINAL.findall(text)}
  return len(ordinals) >= 2 and bool(_COT_CONCLUSION.search(text))


def detect_format(text: str, allowed: Sequence[str]) -> str | None:
  """The answer's format (see module docstring), restricted to `allowed` values."""
  body = _only_block(text)
  checks = (
      ("JSON", lambda: _is_json(body)),
      ("XML", lambda: _is_xml(body)),
      ("Tabular", lambda: bool(_TABLE.search(text))),
      ("Latex", lambda: bool(_LATEX.search(text))),
      ("MCQAnswer", lambda: _is_mcq(text.strip())),
      ("ChainOfThought", lambda: _is_cot(text)),
      ("Enumeration", lambda: len(_LIST_ITEM.findall(text)) >= 2),
      ("Markdown", lambda: bool(_MARKDOWN.search(text))),
  )
  for name, holds in checks:
    if name in allowed and holds():
      return name
  return None


@functools.lru_cache(maxsize=None)
def _lexer_value(alias: str, values: tuple[str, ...]) -> str | None:
  """Taxonomy code_type for a fence tag or language name, through pygments' aliases."""
  alias = _TAG_ALIASES.get(alias, alias)
  try:
    name = pygments.lexers.get_lexer_by_name(alias).name
  except pygments.util.ClassNotFound:
    return None
  for value in values:
    if _lexer_name(value) == name:
      return value
  return _LEXER_NAMES.get(name) if _LEXER_NAMES.get(name) in values else None


@functools.lru_cache(maxsize=None)
def _lexer_class(value: str) -> type | None:
  """Pygments lexer class of a taxonomy code_type value, None if pygments lacks it."""
  try:
    return type(pygments.lexers.get_lexer_by_name(_TAG_ALIASES.get(value, value)))
  except pygments.util.ClassNotFound:
    return None


def _lexer_name(value: str) -> str | None:
  cls = _lexer_class(value)
  return None if cls is None else cls.name


def _looks_like_code(text: str) -> bool:
  lines = [line for line in text.splitlines() if line.strip()]
  return len(lines) >= 2 and sum(bool(_CODE_LINE.search(l)) for l in lines) >= 0.7 * len(lines)


def guess_code_type(code: str, values: Sequence[str], *, min_points: int = 2) -> str | None:
  """Best-scoring taxonomy language for untagged `code`; None on a tie or < min_points."""
  points = {}
  for value in values:
    pats = _SIGNATURES_RE.get(value, [])
    score = sum(bool(p.search(code)) for p in pats)
    lexer = _lexer_class(value)
    if lexer is not None:
      score += lexer.analyse_text(code) >= 0.3
    points[value] = score
  for sup, base in _SUPERSETS.items():
    if sup in points and base in points and points[sup]:
      points[sup] += points[base]
  ranked = sorted(points.items(), key=lambda kv: -kv[1])
  if not ranked or ranked[0][1] < min_points:
    return None
  if len(ranked) > 1 and ranked[1][1] == ranked[0][1]:
    return None
  return ranked[0][0]


def detect_code_type(text: str, values: Sequence[str]) -> str | None:
  """The answer's programming language (see module docstring), one of `values`, or None."""
  values = tuple(values)
  blocks = _FENCE.findall(text)
  tagged = [v for v in (_lexer_value(tag.lower(), values) for tag, _ in blocks if tag) if v]
  if tagged:
    return collections.Counter(tagged).most_common(1)[0][0]
  untagged = "\n".join(body for tag, body in blocks if not tag)
  if untagged.strip():
    return guess_code_type(untagged, values, min_points=1)
  if _looks_like_code(text):
    return guess_code_type(text, values)
  return None
