"""Throughput of the full data pipeline on demo data with the SmolLM2 tokenizer, on 2 cores.

  python benchmarks/data_pipeline.py [--batches 30] [--seq_len 2048] [--batch 16] [--cores 2]

Measures read (JSONL) -> markers (dropout) -> chat template (SmolLM2's own) -> tokenize (byte-
level BPE with offsets) -> pack, through `iterator.make_train_iterator`, i.e. exactly what
training consumes, after a warm-up batch. Also times each Python stage alone and the tokenizer
routes (eager batch, tf.data batched `encode_tf`, tf.data per-string `encode_tf`), so a slow
figure can be traced to its stage. Prints one JSON object per line; the last one holds
`tokens_per_s` (non-padding positions per second) and `examples_per_s` of the seqio path; the
line before it the Grain path's (`grain_pipeline`, same files and config) start-up and tokens/s.

The data is `treasure_jax.annotate.demo_data.build` (the chatterbot corpus, annotated); if that
module cannot run, the chatterbot yml files are turned into records directly.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time


def _limit_cores(cores: int) -> list[int]:
  available = sorted(os.sched_getaffinity(0))
  chosen = available[:cores]
  os.sched_setaffinity(0, chosen)
  # Before TensorFlow / tokenizers start their thread pools.
  os.environ["RAYON_NUM_THREADS"] = str(cores)
  os.environ.setdefault("TF_NUM_INTEROP_THREADS", str(cores))
  os.environ.setdefault("TF_NUM_INTRAOP_THREADS", str(cores))
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  return chosen


def _demo_data(out_dir: str) -> tuple[str, str, str, str]:
  """(train.jsonl, validation.jsonl, taxonomy path or "", which builder)."""
  try:
    from treasure_jax.annotate import demo_data  # pylint: disable=g-import-not-at-top
    demo_data.build(out_dir, humaneval=False)
    return (os.path.join(out_dir, "train.jsonl"), os.path.join(out_dir, "validation.jsonl"),
            os.path.join(out_dir, "taxonomy.json"), "annotate.demo_data")
  except Exception as e:  # pylint: disable=broad-except  (fallback is reported in the JSON)
    print(json.dumps({"demo_data_unavailable": repr(e)[:200]}), flush=True)
  from treasure_jax.data import testing  # pylint: disable=g-import-not-at-top
  records = testing.chatterbot_records()
  train = testing.write_jsonl(records[:-500], os.path.join(out_dir, "train.jsonl"))
  val = testing.write_jsonl(records[-500:], os.path.join(out_dir, "validation.jsonl"))
  return train, val, "", "data.testing.chatterbot_records"


def _stage_times(train: str, tax_path: str, vocabulary, n: int) -> dict[str, float]:
  """Microseconds per example of each Python stage, on the first `n` records."""
  # pylint: disable=g-import-not-at-top  (imported after the core limit is set)
  from treasure_jax.data import chat_templates
  from treasure_jax.data import preprocessors
  from treasure_jax.data import vocab
  from treasure_jax.markers import dropout
  from treasure_jax.markers import taxonomy
  tax = taxonomy.load(tax_path) if tax_path else taxonomy.default_taxonomy()
  with open(train, encoding="utf-8") as f:
    lines = [line for _, line in zip(range(n), f)]
  template = chat_templates.get("model", vocabulary)
  out, t = {}, time.perf_counter()
  exs = [preprocessors.parse_record(line, f"train:{i}", tax) for i, line in enumerate(lines)]
  out["parse_us"], t = (time.perf_counter() - t) / n * 1e6, time.perf_counter()
  exs = [preprocessors.add_markers(e, tax=tax, variant="markers", seed=0, epoch=0,
                                   dropout=dropout.DropoutConfig()) for e in exs]
  out["markers_us"], t = (time.perf_counter() - t) / n * 1e6, time.perf_counter()
  exs = [preprocessors.apply_template(e, template) for e in exs]
  out["template_us"], t = (time.perf_counter() - t) / n * 1e6, time.perf_counter()
  encoded = vocab.encode_with_offsets(vocabulary, [e["text"] for e in exs])
  out["tokenize_us"], t = (time.perf_counter() - t) / n * 1e6, time.perf_counter()
  for e, enc in zip(exs, encoded):
    preprocessors.tokenize(e, vocabulary, max_tokens=1 << 30, on_overflow="error", encoded=enc)
  out["weights_us"] = (time.perf_counter() - t) / n * 1e6
  out["tokens_per_example"] = sum(len(ids) for ids, _ in encoded) / n
  out["texts"] = [e["text"] for e in exs]
  return out


def _tokenizer_routes(vocabulary, texts: list[str]) -> dict[str, float]:
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  n_tokens = sum(len(x) for x in vocabulary.encode_batch(texts))
  out = {}
  t = time.perf_counter()
  vocabulary.encode_batch(texts)
  out["eager_encode_batch_tokens_per_s"] = n_tokens / (time.perf_counter() - t)
  t = time.perf_counter()
  for s in texts:
    vocabulary.encode(s)
  out["eager_encode_tokens_per_s"] = n_tokens / (time.perf_counter() - t)
  ds = tf.data.Dataset.from_tensor_slices(texts).batch(64).map(
      lambda s: vocabulary.encode_tf(s).flat_values)
  t = time.perf_counter()
  for _ in ds.as_numpy_iterator():
    pass
  out["tf_data_batched_tokens_per_s"] = n_tokens / (time.perf_counter() - t)
  ds = tf.data.Dataset.from_tensor_slices(texts).map(vocabulary.encode_tf)
  t = time.perf_counter()
  for _ in ds.as_numpy_iterator():
    pass
  out["tf_data_per_string_tokens_per_s"] = n_tokens / (time.perf_counter() - t)
  return out


def _measure_grain(cfg, vocabulary, args) -> None:
  """The Grain pipeline on the same files and config: start-up (index the JSONL, first batch)
  and tokens/s over `args.batches` batches."""
  # pylint: disable=g-import-not-at-top  (imported after the core limit is set)
  import dataclasses
  from treasure_jax.data import grain_pipeline
  cfg = dataclasses.replace(cfg, pipeline="grain")
  t = time.perf_counter()
  it = grain_pipeline.make_train_iterator(
      cfg, options=grain_pipeline.chat_options(cfg, vocabulary), vocabulary=vocabulary,
      global_batch_size=args.batch)
  next(it)
  startup = time.perf_counter() - t
  t, tokens = time.perf_counter(), 0
  for _ in range(args.batches):
    tokens += int((next(it)["segment_ids"] > 0).sum())
  elapsed = time.perf_counter() - t
  print(json.dumps({"grain_startup_s": round(startup, 2),
                    "grain_tokens_per_s": round(tokens / elapsed, 1),
                    "grain_batches_per_s": round(args.batches / elapsed, 3)}), flush=True)


def main(argv: list[str]) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batches", type=int, default=30)
  parser.add_argument("--seq_len", type=int, default=2048)
  parser.add_argument("--batch", type=int, default=16)
  parser.add_argument("--cores", type=int, default=2)
  parser.add_argument("--stage_examples", type=int, default=2000)
  args = parser.parse_args(argv)
  cores = _limit_cores(args.cores)

  # pylint: disable=g-import-not-at-top  (imported after the core limit is set)
  import seqio
  from treasure_jax.data import config
  from treasure_jax.data import features
  from treasure_jax.data import iterator
  from treasure_jax.data import testing

  work = tempfile.mkdtemp(prefix="data_bench_")
  t = time.perf_counter()
  train, val, tax_path, builder = _demo_data(work)
  vocabulary = testing.smollm2_vocabulary()
  print(json.dumps({"cores": cores, "data": builder, "setup_s": round(time.perf_counter() - t, 2),
                    "seq_len": args.seq_len, "batch": args.batch}), flush=True)

  stages = _stage_times(train, tax_path, vocabulary, args.stage_examples)
  texts = stages.pop("texts")
  print(json.dumps({"stage_us_per_example": {k: round(v, 1) for k, v in stages.items()}}),
        flush=True)
  routes = _tokenizer_routes(vocabulary, texts)
  print(json.dumps({"tokenizer": {k: round(v) for k, v in routes.items()}}), flush=True)

  cfg = config.DataConfig(name="bench", train_files=(train,), eval_files=(val,),
                          template="model", taxonomy=tax_path, seq_len=args.seq_len,
                          on_overflow="truncate", shuffle_buffer=10_000)
  t = time.perf_counter()
  it = iterator.make_train_iterator(cfg, vocab=vocabulary, global_batch_size=args.batch,
                                    shard_info=seqio.ShardInfo(0, 1))
  next(it)  # Warm-up: opens files, traces the tf.data graph, fills the shuffle buffer.
  print(json.dumps({"seqio_startup_s": round(time.perf_counter() - t, 2)}), flush=True)
  _measure_grain(cfg, vocabulary, args)
  t = time.perf_counter()
  tokens = examples = 0
  efficiency = []
  for _ in range(args.batches):
    batch = next(it)
    tokens += int((batch["segment_ids"] > 0).sum())
    examples += int(batch["segment_ids"].max(axis=1).sum())
    efficiency.append(features.packing_efficiency(batch))
  elapsed = time.perf_counter() - t
  it.close()
  print(json.dumps({
      "examples_per_s": round(examples / elapsed, 1),
      "batches_per_s": round(args.batches / elapsed, 3),
      "packing_efficiency": round(sum(efficiency) / len(efficiency), 4),
      "counts": it.stats(),
      "tokens_per_s": round(tokens / elapsed, 1),
  }), flush=True)


if __name__ == "__main__":
  main(sys.argv[1:])
