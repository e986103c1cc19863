"""Annotate: turns raw examples into examples with markers, and builds the bundled data.

Modules, in the order a record meets them:
- `normalize`: optional repairs of real-world chats (roles, empty/leading turns), counted.
- `records`: validates JSONL input (prompt/response or chat messages) into a `RecordView`;
  errors name `path:line` and the field.
- `metadata`: markers from the dataset's own fields, by user rules validated against the
  taxonomy.
- `deterministic`: lengths, length bucket, language, code type and format by rule, from
  `text_stats` (word/sentence/paragraph counts for every script), `language` (lingua) and
  `formats`.
- `llm`, `prompts`, `cache`: the LLM classifier of domain/task/format on the prompt.
- `quality`: reward-model scores and per-language quality buckets.
- `pipeline`: the resumable annotation run over a file; `summary`: what it prints at the end.
Bundled real data, built at run time from installed packages (never committed):
- `demo_data` (with `chatterbot`): the multilingual chatterbot corpus as a training set.
- `humaneval_sets` (with `code_mutations`): HumanEval CodeGeneration and CodeFix sets.

Modules are imported by name (`from treasure_jax.annotate import deterministic`); this file
imports nothing, so that importing one stage does not load lingua, pygments or the sandbox.
"""
