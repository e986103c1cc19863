"""The demo's data stages: the bundled demo set, its marker statistics and the eval subset.

`build` calls `annotate.demo_data.build` into `<workdir>/data` and writes the frequency table of
the training split (`marker_stats.json`, the long tail). `write_eval_subset` writes
`data/eval/validation.jsonl`, what the evaluation tasks read: the single-turn examples of the
validation split (a multi-turn chat has no separate reference response for the sweep's
length targets and likelihoods) in a fixed order that takes one example per language in turn,
each language's examples ordered by a hash of (seed, id). The validation file is sorted
by id, i.e. by language, so its first N lines would all be one or two languages; this order
makes the first N of any budget cover the languages evenly, tail languages included, and
depends on nothing but the seed (no example is picked by its result).
Building the set itself and the statistics are the annotate and markers packages' job.
"""
from __future__ import annotations

import collections
import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from typing import Any

from treasure_jax.annotate import demo_data
from treasure_jax.markers import stats
from treasure_jax.markers import taxonomy as taxonomy_lib

STATS_FILE = "marker_stats.json"
EVAL_FILE = os.path.join("eval", "validation.jsonl")


def _hash(seed: int, key: str) -> str:
  return hashlib.sha256(f"{seed}\x1f{key}".encode("utf-8")).hexdigest()


def interleave_by_language(records: Iterable[Mapping[str, Any]], seed: int) -> list[dict]:
  """Round-robin over languages (by name), each language in (seed, id)-hash order."""
  by_lang: dict[str, list[dict]] = collections.defaultdict(list)
  for rec in records:
    by_lang[str((rec.get("markers") or {}).get("lang", "-"))].append(dict(rec))
  queues = [sorted(rows, key=lambda r: _hash(seed, str(r["id"])))
            for _, rows in sorted(by_lang.items())]
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


def write_eval_subset(data_dir: str, seed: int) -> dict[str, Any]:
  """Writes data/eval/validation.jsonl (see the module docstring); returns its counts."""
  validation = [r for _, r in stats.read_jsonl(os.path.join(data_dir, "validation.jsonl"))]
  single = [r for r in validation if "prompt" in r and "response" in r]
  ordered = interleave_by_language(single, seed)
  os.makedirs(os.path.join(data_dir, os.path.dirname(EVAL_FILE)), exist_ok=True)
  _write_jsonl(os.path.join(data_dir, EVAL_FILE), ordered)
  return {"validation": len(validation), "single_turn": len(single),
          "languages": len({str((r.get("markers") or {}).get("lang")) for r in single})}


def build(data_dir: str, *, seed: int, val_fraction: float, humaneval_limit: int,
          corpus_dir: str) -> dict[str, Any]:
  """Builds everything into `data_dir`; returns a JSON-ready summary of the set."""
  summary = demo_data.build(data_dir, seed=seed, val_fraction=val_fraction,
                            corpus_dir=corpus_dir or None, humaneval=humaneval_limit > 0,
                            humaneval_limit=humaneval_limit or None)
  tax = taxonomy_lib.load(os.path.join(data_dir, "taxonomy.json"))
  table = stats.table_for_file(os.path.join(data_dir, "train.jsonl"), tax)
  stats.dump(table, os.path.join(data_dir, STATS_FILE))
  return {k: summary.get(k) for k in ("examples", "train", "validation", "corpus_languages",
                                       "topics", "rejects", "duplicates_dropped",
                                       "tail_values")} | {
      "humaneval_problems": (summary.get("humaneval") or {}).get("problems", 0)}


def stats_table(data_dir: str) -> stats.FrequencyTable:
  tax = taxonomy_lib.load(os.path.join(data_dir, "taxonomy.json"))
  with open(os.path.join(data_dir, STATS_FILE), encoding="utf-8") as f:
    return stats.from_dict(json.load(f), tax)
