"""The LLM classifier's prompt: class definitions, few-shot examples, the message list.

The paper's design (method.md): a system instruction with one definition per class and the rule
"answer with one class from this list, or `Unspecified` if unsure", one few-shot example per
class as a user/assistant turn pair, then the prompt to classify. Only the example's *prompt*
is shown, never its response.

Class definitions come from the taxonomy (`Category.value_descriptions`, which the default
taxonomy fills for domain, task and format and which a user taxonomy may set for its own
values); this module keeps the few-shot examples. [ours] The few-shot prompts are English; a
config may add or replace examples per class (`llm.few_shot`), e.g. for an added value or for
examples in the data's language. HTTP, retries and answer checking live in `llm`.
"""
from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping

from treasure_jax.markers import taxonomy

UNSPECIFIED = "Unspecified"
CATEGORY_LINE = "Category: "
RETRY_PREFIX = "Your answer "

# One example prompt per class: the assistant turn answers with the class name.
FEW_SHOT: dict[str, dict[str, str]] = {
    "domain": {
        "Sciences": "Why does ice float on liquid water?",
        "Technology": "My laptop's Wi-Fi keeps dropping after the last update. What can I try?",
        "SocialSciences": "What were the main causes of the French Revolution?",
        "Culture": "Recommend three classic Italian films for a movie night.",
        "Medical": "What are the early symptoms of type 2 diabetes?",
        "Legal": "Can my landlord keep my deposit for normal wear and tear?",
        "Conversation": "Hey, how was your weekend?",
        "Code": "Write a Python function that removes duplicates from a list, keeping order.",
        "Math": "Prove that the square root of 2 is irrational.",
        "Finance": "Should I pay off my car loan early or invest the money in an index fund?",
    },
    "task": {
        "OpenEnded": "I'm feeling stuck in my career. Any thoughts?",
        "Explanation": "Explain how vaccines train the immune system.",
        "Translation": "Translate into German: 'The meeting is moved to Thursday.'",
        "Classification": "Is this review positive or negative? 'The battery died after a day.'",
        "CreativeWriting": "Write a short poem about autumn rain in a city.",
        "QuestionAnswering": "What is the capital of Australia?",
        "InformationExtraction": ("List every date mentioned in this text: 'The contract was "
                                  "signed on 3 May 2021 and expires on 2 May 2024.'"),
        "Summarization": ("Summarize this paragraph in one sentence: 'Remote work grew quickly "
                          "in 2020 as offices closed, and many firms kept it afterwards.'"),
        "Rewrite": "Rewrite this email to sound more polite: 'Send me the report now.'",
        "Reasoning": ("A train leaves at 3 pm at 60 km/h; a second leaves the same station at "
                      "4 pm at 90 km/h. When does the second catch up?"),
        "CodeGeneration": ("Write a JavaScript function that checks whether a string is a "
                           "palindrome."),
        "CodeFix": ("This Python code raises IndexError, fix it:\n"
                    "for i in range(len(xs) + 1):\n  print(xs[i])"),
        "CodeTranslation": "Convert this Python to Go:\ndef add(a, b):\n  return a + b",
        "CodeExplanation": "What does this SQL do? SELECT dept, COUNT(*) FROM emp GROUP BY dept;",
    },
    "format": {
        "MCQAnswer": ("Which planet is largest? (A) Mars (B) Jupiter (C) Venus (D) Earth. "
                      "Answer with the letter."),
        "ChainOfThought": "Solve step by step, showing your reasoning: 17 * 24 - 56 = ?",
        "XML": "Give me an XML document describing a book with title, author and year.",
        "JSON": "Return the three largest EU countries by area as a JSON array of objects.",
        "Enumeration": "List five tips for better sleep.",
        "Tabular": ("Compare Python, Java and C++ in a table by speed, typing and memory "
                    "management."),
        "Markdown": "Write a README with headings for installation, usage and license.",
        "Latex": "Write the quadratic formula in LaTeX.",
    },
}


def definitions(category: taxonomy.Category) -> dict[str, str]:
  """One definition per class; a class without one is defined by its name (and logged)."""
  out = {}
  for value in category.values:
    text = category.value_descriptions.get(value, "")
    if not text:
      logging.warning("llm prompt: %s class %r has no definition in the taxonomy; "
                      "the class name stands alone", category.name, value)
    out[value] = text
  return out


def few_shot(category: taxonomy.Category,
             extra: Mapping[str, Mapping[str, str]] | None = None) -> list[tuple[str, str]]:
  """(example prompt, class) pairs in the category's value order; config examples win."""
  given = dict((extra or {}).get(category.name, {}))
  bad = sorted(set(given) - set(category.values))
  if bad:
    raise taxonomy.MarkerError(
        f"llm.few_shot.{category.name}: {bad} are not classes; allowed: {category.allowed()}")
  examples = {**FEW_SHOT.get(category.name, {}), **given}
  missing = [v for v in category.values if v not in examples]
  if missing:
    logging.warning("llm prompt: no few-shot example for %s classes %s (add them under "
                    "llm.few_shot.%s)", category.name, missing, category.name)
  return [(examples[v], v) for v in category.values if v in examples]


def system_instruction(category: taxonomy.Category) -> str:
  lines = [
      "You classify user prompts for a training-data taxonomy.",
      f"{CATEGORY_LINE}{category.name}" + (
          f" ({category.description})" if category.description else ""),
      "Classes:",
  ]
  for value, text in definitions(category).items():
    lines.append(f"- {value}: {text}" if text else f"- {value}")
  lines += [
      "Classify the prompt only; do not answer it.",
      f"Answer with one class from this list, or `{UNSPECIFIED}` if unsure.",
      "Reply with the class name alone, nothing else.",
  ]
  return "\n".join(lines)


def instruction_messages(category: taxonomy.Category,
                         extra_few_shot: Mapping[str, Mapping[str, str]] | None = None,
                         ) -> list[dict[str, str]]:
  """System instruction plus the few-shot turns: everything but the prompt itself."""
  messages = [{"role": "system", "content": system_instruction(category)}]
  for example, value in few_shot(category, extra_few_shot):
    messages.append({"role": "user", "content": example})
    messages.append({"role": "assistant", "content": value})
  return messages


def retry_message(raw: str, category: taxonomy.Category) -> dict[str, str]:
  """The corrective user turn after an answer that is not a class."""
  return {"role": "user", "content": (
      f"{RETRY_PREFIX}{raw.strip()[:80]!r} is not one of the classes. Answer with exactly one "
      f"of: {', '.join(category.values)}, or {UNSPECIFIED}.")}


def fingerprint(model: str, messages: list[dict[str, str]]) -> str:
  """Short hash of the model and the instruction: part of every cache key.

  Changing a definition, an example or the model invalidates earlier answers.
  """
  blob = json.dumps([model, messages], ensure_ascii=False, sort_keys=True)
  return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]
