"""Data: seqio sources, chat templates, vocabularies, marker tasks and resumable batches.

Read in pipeline order: `sources` (annotated JSONL, TFDS) -> `preprocessors` (markers, chat
template, tokens and loss weights) -> `tasks`/`mixtures` (seqio registration) -> `features`
(packing) -> `streams` (a task epoch by epoch, tasks mixed by rate) -> `iterator` (per-host,
resumable batches for train and eval). `vocab` and `chat_templates` are the tokenizer side;
`config.DataConfig` is the run's data section.
"""
