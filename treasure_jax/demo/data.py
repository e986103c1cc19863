"""The demo's data stages: the bundled demo set, its marker statistics and the eval subset.

`build` calls `annotate.demo_data.build` into `<workdir>/data` and writes the frequency table of
the training split (`marker_stats.json`, the long tail). `write_eval_subset` writes
`data/eval/validation.jsonl`, what the evaluation tasks read: the single-turn examples of the
validation split (a multi-turn chat has no separate reference response for the sweep's
length targets and likelihoods) in a fixed order that takes one example per task in turn,
each task's examples one per language in turn, each language's in (seed, id)-hash order. The
validation file is sorted by id, i.e. by source and language, so its first N lines would all
be one source; this order makes the first N of any budget cover the tasks and languages
evenly, tail values included, and depends on nothing but the seed (no example is picked by
its result). `data/eval/length.jsonl` is the same list without the code tasks (task
CodeGeneration, CodeFix...): the length-control eval reads it, because a program's length is
set by the problem (code is scored by pass@1 instead) and its references run to hundreds of
tokens, past the decode budget, so a cut-off program would count as "within the limit".
Building the set itself and the statistics are the annotate and markers packages' job.
"""
from __future__ import annotations

import collections
import hashlib
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from treasure_jax.annotate import demo_data
from treasure_jax.markers import stats
from treasure_jax.markers import taxonomy as taxonomy_lib

STATS_FILE = "marker_stats.json"
EVAL_FILE = os.path.join("eval", "validation.jsonl")
LENGTH_FILE = os.path.join("eval", "length.jsonl")


def _hash(seed: int, key: str) -> str:
  return hashlib.sha256(f"{seed}\x1f{key}".encode("utf-8")).hexdigest()


def interleave(records: Iterable[Mapping[str, Any]], seed: int,
               keys: Sequence[str] = ("task", "lang")) -> list[dict]:
  """Round-robin over the values of `keys[0]` (by name), each group interleaved by the rest.

  The innermost groups are in (seed, id)-hash order; a record without a marker is in group "-".
  """
  recs = [dict(r) for r in records]
  if not keys:
    return sorted(recs, key=lambda r: _hash(seed, str(r["id"])))
  groups: dict[str, list[dict]] = collections.defaultdict(list)
  for rec in recs:
    groups[_marker(rec, keys[0], "-")].append(rec)
  queues = [interleave(rows, seed, keys[1:]) for _, rows in sorted(groups.items())]
  out = []
  for i in range(max((len(q) for q in queues), default=0)):
    out += [q[i] for q in queues if i < len(q)]
  return out


def _write_jsonl(path: str, rows: Iterable[Mapping[str, Any]]) -> None:
  tmp = f"{path}.tmp{os.getpid()}"
  with open(tmp, "w", encoding="utf-8") as f:
    for row in rows:
      f.write(json.dumps(row, ensure_ascii=False) + "\n")
  os.replace(tmp, path)


def _marker(record: Mapping[str, Any], name: str, default: str = "") -> str:
  return str((record.get("markers") or {}).get(name, default))


def _is_code(record: Mapping[str, Any]) -> bool:
  return _marker(record, "task").startswith("Code")


def write_eval_subset(data_dir: str, seed: int) -> dict[str, Any]:
  """Writes data/eval/validation.jsonl and length.jsonl (module docstring); returns counts."""
  validation = [r for _, r in stats.read_jsonl(os.path.join(data_dir, "validation.jsonl"))]
  single = [r for r in validation if "prompt" in r and "response" in r]
  ordered = interleave(single, seed)
  os.makedirs(os.path.join(data_dir, os.path.dirname(EVAL_FILE)), exist_ok=True)
  _write_jsonl(os.path.join(data_dir, EVAL_FILE), ordered)
  prose = [r for r in ordered if not _is_code(r)]
  _write_jsonl(os.path.join(data_dir, LENGTH_FILE), prose)
  return {"validation": len(validation), "single_turn": len(single), "length": len(prose),
          "languages": len({_marker(r, "lang") for r in single}),
          "tasks": len({_marker(r, "task") for r in single})}


def build(data_dir: str, *, seed: int, val_fraction: float, humaneval_limit: int,
          corpus_dir: str, sources: Sequence[str] = demo_data.SOURCES,
          chatterbot_limit: int = 0, categories: Sequence[str] = (),
          length_variants: int = 0) -> dict[str, Any]:
  """Builds everything into `data_dir`; returns a JSON-ready summary of the set.

  `chatterbot_limit` 0 keeps the whole corpus; `categories` () keeps every category;
  `length_variants` cut-answer copies per training example (`demo_data`), 0 = none.
  """
  sources = tuple(sources)
  humaneval = humaneval_limit > 0
  if not humaneval:
    sources = tuple(s for s in sources if s != "humaneval_train")
  summary = demo_data.build(data_dir, seed=seed, val_fraction=val_fraction,
                            corpus_dir=corpus_dir or None, humaneval=humaneval,
                            humaneval_limit=humaneval_limit or None, sources=sources,
                            chatterbot_limit=chatterbot_limit or None,
                            categories=tuple(categories) or None,
                            length_variants=length_variants)
  tax = taxonomy_lib.load(os.path.join(data_dir, "taxonomy.json"))
  table = stats.table_for_file(os.path.join(data_dir, "train.jsonl"), tax)
  stats.dump(table, os.path.join(data_dir, STATS_FILE))
  return {k: summary.get(k) for k in ("examples", "train", "validation", "corpus_languages",
                                       "topics", "rejects", "duplicates_dropped",
                                       "tail_values", "sources", "length_variants")} | {
      "humaneval_problems": (summary.get("humaneval") or {}).get("problems", 0)}


def stats_table(data_dir: str) -> stats.FrequencyTable:
  tax = taxonomy_lib.load(os.path.join(data_dir, "taxonomy.json"))
  with open(os.path.join(data_dir, STATS_FILE), encoding="utf-8") as f:
    return stats.from_dict(json.load(f), tax)
