"""Throughput of `treasure-jax annotate` with the deterministic annotators only (no LLM, no reward).

  python benchmarks/annotate.py [--records 20000] [--normalize] [--cores 2] [--profile]

Builds a real-looking chat file (prompt/response pairs and 2-12 turn chats, 8 languages in 6
scripts, fenced and untagged code, lists, tables, JSON answers, some leading assistant turns and
empty turns for `--normalize`), then times `pipeline.run` end to end (both passes, both files
written, rejects listed) after a 200-record warm-up run that loads lingua's models. Prints one
JSON object: records/s over the whole run and the summary counts. `--profile` prints the top
cProfile entries to stderr instead of timing cleanly.
"""
from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import random
import sys
import tempfile
import time

_PROSE = {
    "en": "The river rises in the hills and flows slowly through the old town towards the sea.",
    "fr": "La rivière prend sa source dans les collines et traverse lentement la vieille ville.",
    "de": "Der Fluss entspringt in den Hügeln und fließt langsam durch die alte Stadt zum Meer.",
    "es": "El río nace en las colinas y atraviesa despacio el casco antiguo hasta llegar al mar.",
    "ru": "Река берёт начало в холмах и медленно течёт через старый город к морю.",
    "zh": "这条河发源于山丘，缓缓流过古老的城镇，最后流入大海。",
    "ja": "その川は丘から流れ出し、古い町をゆっくりと通って海へと向かいます。",
    "ar": "ينبع النهر من التلال ويجري ببطء عبر المدينة القديمة نحو البحر.",
}
_CODE = ["```python\ndef add(a, b):\n    return a + b\n\nprint(add(2, 3))\n```",
         "```\nfunction add(a, b) {\n  return a + b;\n}\nconsole.log(add(2, 3));\n```",
         "```sql\nSELECT name, COUNT(*) FROM users GROUP BY name ORDER BY name;\n```"]


def _answer(rng: random.Random) -> str:
  lang = rng.choice(list(_PROSE))
  prose = " ".join([_PROSE[lang]] * rng.randint(1, 6))
  kind = rng.random()
  if kind < 0.2:
    return prose + "\n\n" + rng.choice(_CODE)
  if kind < 0.35:
    return "\n".join(f"{i}. {_PROSE[lang]}" for i in range(1, rng.randint(3, 6)))
  if kind < 0.45:
    return "| a | b |\n|---|---|\n| 1 | 2 |\n\n" + prose
  if kind < 0.5:
    return json.dumps({"answer": prose, "items": [1, 2, 3]})
  return prose


def make_records(n: int, seed: int = 0) -> list[dict]:
  rng = random.Random(seed)
  out = []
  for i in range(n):
    if rng.random() < 0.4:
      out.append({"id": i, "prompt": f"Question {i}: tell me about rivers.",
                  "response": _answer(rng)})
      continue
    turns = []
    if rng.random() < 0.2:
      turns.append({"role": "system", "content": "You are a helpful assistant."})
    for t in range(rng.randint(1, 6)):
      turns += [{"role": "user", "content": f"Turn {t} of {i}: and then?"},
                {"role": "assistant", "content": _answer(rng)}]
    out.append({"id": i, "messages": turns})
  return out


def _messy(records: list[dict], seed: int = 1) -> list[dict]:
  """Every 4th chat opens with the assistant, every 7th has an empty turn (for --normalize)."""
  rng = random.Random(seed)
  for i, rec in enumerate(records):
    if "messages" in rec and i % 4 == 0:
      rec["messages"].insert(0, {"role": "assistant", "content": "Hello! How can I help?"})
    if "messages" in rec and i % 7 == 0:
      rec["messages"].insert(rng.randint(0, len(rec["messages"]) - 1),
                             {"role": "user", "content": " "})
  return records


def _write(path: str, records: list[dict]) -> None:
  with open(path, "w", encoding="utf-8") as f:
    for rec in records:
      f.write(json.dumps(rec, ensure_ascii=False) + "\n")


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--records", type=int, default=20_000)
  parser.add_argument("--normalize", action="store_true")
  parser.add_argument("--cores", type=int, default=2)
  parser.add_argument("--profile", action="store_true")
  args = parser.parse_args()
  os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:args.cores])
  from treasure_jax.annotate import pipeline  # pylint: disable=g-import-not-at-top
  with tempfile.TemporaryDirectory() as tmp:
    src, warm = os.path.join(tmp, "in.jsonl"), os.path.join(tmp, "warm.jsonl")
    records = make_records(args.records)
    if args.normalize:
      records = _messy(records)
    _write(src, records)
    _write(warm, make_records(200, seed=1))
    pipeline.run(warm, os.path.join(tmp, "warm.out.jsonl"), progress=False)
    run = lambda: pipeline.run(src, os.path.join(tmp, "out.jsonl"),  # noqa: E731
                               skip_invalid=True, normalize=args.normalize, progress=False)
    if args.profile:
      profiler = cProfile.Profile()
      summary = profiler.runcall(run)
      pstats.Stats(profiler, stream=sys.stderr).sort_stats("cumulative").print_stats(30)
    start = time.perf_counter()
    summary = run()
    elapsed = time.perf_counter() - start
  print(json.dumps({"benchmark": "annotate_deterministic", "records": summary.n_read,
                    "written": summary.n_records, "rejected": summary.n_rejected,
                    "repaired": summary.n_repaired, "repairs": summary.repairs,
                    "normalize": args.normalize, "cores": args.cores,
                    "elapsed_s": round(elapsed, 2),
                    "records_per_s": round(summary.n_read / elapsed, 1)}))


if __name__ == "__main__":
  main()
