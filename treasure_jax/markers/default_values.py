"""The paper's default taxonomy as data: 13 categories, their values and class definitions.

Values follow shared/docs/method.md exactly (domain includes Finance). The one-line class
definitions are ours: the paper's LLM annotator prompt has one definition per class, and the
annotate package builds that prompt from `value_descriptions`.
"""
from __future__ import annotations

from treasure_jax.markers import taxonomy

TASKS = {
    "OpenEnded": "open-ended chat or advice with no single correct answer",
    "Explanation": "explain a concept, process or reason in prose",
    "Translation": "translate text from one natural language to another",
    "Classification": "assign a label or category to a given input",
    "CreativeWriting": "write fiction, poetry, jokes or other creative text",
    "QuestionAnswering": "answer a factual question with a short answer",
    "InformationExtraction": "pull specific facts or fields out of a given text",
    "Summarization": "shorten a given text keeping its main points",
    "Rewrite": "rephrase, edit or change the style of a given text",
    "Reasoning": "solve a problem that needs multi-step logical or mathematical reasoning",
    "CodeGeneration": "write new code from a description",
    "CodeFix": "repair a bug in given code",
    "CodeTranslation": "port given code to another programming language",
    "CodeExplanation": "explain what given code does",
}
DOMAINS = {
    "Sciences": "natural sciences: physics, chemistry, biology, astronomy, earth science",
    "Technology": "computers, software products, engineering, gadgets, the internet",
    "SocialSciences": "psychology, politics, economics theory, history, sociology, law-free society topics",
    "Culture": "arts, literature, music, film, food, sports, religion, entertainment",
    "Medical": "health, medicine, diseases, anatomy, nutrition as health",
    "Legal": "law, regulations, contracts, rights, courts",
    "Conversation": "small talk, greetings, personal chat with no subject-matter domain",
    "Code": "programming and source code",
    "Math": "mathematics: arithmetic, algebra, geometry, statistics, proofs",
    "Finance": "money, banking, investing, accounting, markets",
}
CODE_TYPES = ("python", "javascript", "cpp", "cobol", "java", "go", "rust", "swift", "csharp",
              "php", "typescript", "shell", "c", "kotlin", "ruby", "haskell", "sql")
FORMATS = {
    "MCQAnswer": "the answer picks one option of a multiple-choice question",
    "ChainOfThought": "the answer reasons step by step before concluding",
    "XML": "the answer is XML",
    "JSON": "the answer is JSON",
    "Enumeration": "the answer is a numbered or bulleted list",
    "Tabular": "the answer is a table",
    "Markdown": "the answer uses Markdown structure (headings, emphasis, code fences)",
    "Latex": "the answer contains LaTeX math or markup",
}
SOURCES = ("Human", "Translation", "Synthetic", "Others")
STYLES = ("Formal", "Informal", "Custom")
LANGUAGES = ("English", "French", "Spanish", "Italian", "German", "Portuguese", "Japanese",
             "Korean", "Arabic", "Chinese", "Russian", "Polish", "Turkish", "Vietnamese", "Dutch",
             "Czech", "Indonesian", "Ukrainian", "Romanian", "Greek", "Hindi", "Hebrew", "Persian")
LENGTH_BUCKETS = {
    "concise": "fewer than 300 words",
    "medium": "300 to 1000 words",
    "long": "more than 1000 words",
}


def default_categories() -> list[taxonomy.Category]:
  C = taxonomy.Category
  return [
      C("quality", "float", description="reward-model score of the completion"),
      C("quality_bucket", "int", minimum=1, maximum=4, derived_from="quality",
        description="per-language quartile of quality; 1 = best"),
      C("length_tokens", "int", minimum=0, description="word count of the completion"),
      C("length_sentences", "int", minimum=0, description="sentence count of the completion"),
      C("length_paragraphs", "int", minimum=0,
        description="paragraphs of the completion, split on blank lines"),
      C("length_bucket", "enum", tuple(LENGTH_BUCKETS), derived_from="length_tokens",
        value_descriptions=LENGTH_BUCKETS, description="length class of the completion"),
      C("task", "enum", tuple(TASKS), value_descriptions=TASKS,
        description="what the prompt asks the model to do"),
      C("domain", "enum", tuple(DOMAINS), value_descriptions=DOMAINS,
        description="subject-matter domain of the prompt"),
      C("code_type", "enum", CODE_TYPES, description="programming language of the code"),
      C("format", "enum", tuple(FORMATS), value_descriptions=FORMATS,
        description="format of the expected answer"),
      C("source", "enum", SOURCES, description="where the example comes from"),
      C("style", "enum", STYLES, description="register of the completion"),
      C("lang", "enum", LANGUAGES, description="language of the completion"),
  ]
