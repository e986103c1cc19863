"""The Grain pipeline: no TensorFlow imported, the same examples as seqio, Grain's first-fit
packing equal to `features.RowPacker`'s, exact resume from a saved (JSON) iterator state."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import seqio

from treasure_jax.data import config
from treasure_jax.data import features
from treasure_jax.data import grain_pipeline
from treasure_jax.data import streams
from treasure_jax.data import tasks
from treasure_jax.data import testing

import grain

KEYS = ("targets", "marker_weights", "response_weights")


@pytest.fixture(scope="module")
def bpe():
  return testing.small_bpe_vocabulary()


@pytest.fixture(scope="module")
def cfg(tmp_path_factory):
  records = [r for r in testing.chatterbot_records()
             if r["id"].split("/")[0] in ("english", "spanish")][::40]
  path = testing.write_jsonl(records, str(tmp_path_factory.mktemp("grain") / "train.jsonl"))
  return config.DataConfig(name="grain_test", train_files=(path,), seq_len=512,
                           shuffle_buffer=1000, seed=3, pipeline="grain")


def _grain_examples(cfg, bpe, count):
  ds = grain_pipeline.examples(cfg, grain_pipeline.chat_options(cfg, bpe), bpe,
                               max_tokens=cfg.seq_len + 1, shard=(0, 1), seed=cfg.seed)
  return [ex for _, ex in zip(range(count), ds.to_iter_dataset())]


def test_examples_equal_seqio_per_id_and_epoch(cfg, bpe):
  """Same files and seed: per (example id, epoch), identical token ids and loss weights (the
  dropout draw included); only the order differs (global shuffle vs tf.data's buffer)."""
  n = len(grain_pipeline.JsonlSource(list(cfg.train_files)))
  name = tasks.register_from_config(cfg, bpe)["markers"]
  stream = streams.TaskStream(seqio.TaskRegistry.get(name), split="train",
                              shard_info=seqio.ShardInfo(0, 1), seed=cfg.seed,
                              max_tokens=cfg.seq_len + 1, shuffle=True,
                              shuffle_buffer=cfg.shuffle_buffer, repeat=True)
  seqio_out = {}
  while (ex := stream.peek())["epoch"] < 2:
    seqio_out[(ex["id"].decode(), int(ex["epoch"]))] = ex
    stream.advance()
  stream.close()
  grain_out = {(ex["id"], ex["epoch"]): ex for ex in _grain_examples(cfg, bpe, 2 * n)
               if ex["epoch"] < 2}
  assert len(grain_out) > n  # Both epochs (records over seq_len are skipped in both).
  assert sorted(grain_out) == sorted(seqio_out)
  for key, ex in grain_out.items():
    for k in KEYS:
      np.testing.assert_array_equal(ex[k], seqio_out[key][k], err_msg=f"{key} {k}")
  # Dropout is re-drawn per epoch: some prompts differ between the epochs.
  assert any(not np.array_equal(grain_out[(i, 0)]["targets"], grain_out[(i, 1)]["targets"])
             for i, _ in grain_out if (i, 1) in grain_out)


def test_grain_packing_equals_row_packer(cfg, bpe):
  """Grain's first-fit rows equal `features.RowPacker`'s on the same example order (every key,
  segment ids and positions included); padding rows aside."""
  exs = _grain_examples(cfg, bpe, 40)
  packer, ours = features.RowPacker(4, cfg.seq_len, pack=True), []
  for ex in exs:
    if not packer.try_add(ex):
      ours.append(packer.build())
      assert packer.try_add(ex)
  ours.append(packer.build())
  rows = lambda batches: [{k: b[k][r] for k in features.BATCH_KEYS} for b in batches  # noqa
                          for r in range(len(b["inputs"])) if b["segment_ids"][r].any()]
  theirs = list(grain_pipeline.packed(grain.MapDataset.source(exs).to_iter_dataset(),
                                      batch_size=4, seq_len=cfg.seq_len, pack=True))
  assert len(rows(theirs)) == len(rows(ours))
  assert max(b["segment_ids"].max() for b in theirs) > 1  # Really packed.
  for a, b in zip(rows(theirs), rows(ours)):
    for k in features.BATCH_KEYS:
      np.testing.assert_array_equal(a[k], b[k], err_msg=k)
      assert a[k].dtype == b[k].dtype, k


def test_resume_is_exact(cfg, bpe):
  """A state saved after batch 3 (JSON round trip) gives batches 4..8 of an uninterrupted run,
  across epoch boundaries."""
  make = lambda: grain_pipeline.make_train_iterator(  # noqa: E731
      cfg, options=grain_pipeline.chat_options(cfg, bpe), vocabulary=bpe, global_batch_size=4)
  full = [next(it) for it in [make()] for _ in range(8)]
  first = make()
  for _ in range(3):
    next(first)
  state = json.loads(json.dumps(first.get_state()))
  resumed = make()
  resumed.set_state(state)
  assert state["counts"]["grain_test"]["train/records"] > 0
  for want in full[3:]:
    got = next(resumed)
    for k in features.BATCH_KEYS:
      np.testing.assert_array_equal(got[k], want[k], err_msg=k)
  other = grain_pipeline.make_train_iterator(
      cfg, options=grain_pipeline.chat_options(cfg, bpe), vocabulary=bpe, global_batch_size=8)
  with pytest.raises(ValueError, match="global_batch_size"):
    other.set_state(state)


def test_grain_path_imports_no_tensorflow(cfg):
  """The Grain pipeline, tokenizer (from the SmolLM2 GGUF) and chat template: no TF, no seqio."""
  script = textwrap.dedent(f"""
      import sys
      from treasure_jax.data import config, grain_pipeline, token_offsets
      vocab = token_offsets.from_gguf({testing.smollm2_gguf_path()!r})
      cfg = config.DataConfig(name="t", train_files=({cfg.train_files[0]!r},), seq_len=512,
                              template="model", pipeline="grain")
      it = grain_pipeline.make_train_iterator(
          cfg, options=grain_pipeline.chat_options(cfg, vocab), vocabulary=vocab,
          global_batch_size=2)
      batch = next(it)
      assert batch["loss_weights"].sum() > 0
      print(sorted(m for m in ("tensorflow", "seqio") if m in sys.modules))
  """)
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                       env=env, timeout=300, check=False)
  assert out.returncode == 0, out.stderr[-3000:]
  assert out.stdout.strip().splitlines()[-1] == "[]"


def test_parquet_and_arrayrecord_give_the_jsonl_examples(cfg, bpe, tmp_path):
  import dataclasses
  import pyarrow as pa
  import pyarrow.parquet as pq
  from array_record.python import array_record_module
  with open(cfg.train_files[0], encoding="utf-8") as f:
    lines = [line.strip() for line in f if line.strip()]
  pq.write_table(pa.table({"record": lines}), str(tmp_path / "a.parquet"))
  writer = array_record_module.ArrayRecordWriter(str(tmp_path / "a.arrayrecord"), "group_size:1")
  for line in lines:
    writer.write(line.encode("utf-8"))
  writer.close()
  want = {ex["id"]: ex for ex in _grain_examples(cfg, bpe, 20)}
  for name in ("a.parquet", "a.arrayrecord"):
    other = dataclasses.replace(cfg, train_files=(str(tmp_path / name),))
    got = {ex["id"]: ex for ex in _grain_examples(other, bpe, 20)}
    assert got.keys() == want.keys(), name
    for key, ex in got.items():
      for k in KEYS:
        np.testing.assert_array_equal(ex[k], want[key][k], err_msg=f"{name} {key} {k}")


def test_data_convert_cli(cfg, bpe, tmp_path):
  """`treasure-jax data convert`: bad lines named file:line (error, or skipped and listed); the
  output reads back as the same examples."""
  import dataclasses
  with open(cfg.train_files[0], encoding="utf-8") as f:
    lines = f.read().splitlines()
  bad = tmp_path / "bad.jsonl"
  bad.write_text("\n".join(lines[:3] + ['{"prompt": "hi"}'] + lines[3:]) + "\n")
  cmd = [sys.executable, "-m", "treasure_jax.cli", "data", "convert", str(bad)]
  out = subprocess.run(cmd + [str(tmp_path / "o.parquet")], capture_output=True, text=True,
                       check=False, timeout=120)
  assert out.returncode == 2 and f"{bad}:4" in out.stderr and "response" in out.stderr
  assert "Traceback" not in out.stderr
  out = subprocess.run(cmd + [str(tmp_path / "o.arrayrecord"), "--skip-invalid"],
                       capture_output=True, text=True, check=False, timeout=120)
  assert out.returncode == 0, out.stderr
  assert json.loads(out.stdout.splitlines()[-1]) == {"written": len(lines), "skipped": 1}
  assert f"{bad}:4" in out.stderr
  other = dataclasses.replace(cfg, train_files=(str(tmp_path / "o.arrayrecord"),))
  want = {ex["id"]: ex["targets"] for ex in _grain_examples(cfg, bpe, 10)}
  got = {ex["id"]: ex["targets"] for ex in _grain_examples(other, bpe, 10)}
  assert got.keys() == want.keys()


def test_eval_batches_cover_every_example_once_with_equal_counts_per_host(cfg, bpe):
  """Two hosts: the same number of batches each (the short one padded), every example of the
  file exactly once, with its id and markers per row, like the seqio eval iterator's rows."""
  import dataclasses
  evaluate = dataclasses.replace(cfg, eval_files=cfg.train_files)
  options = grain_pipeline.chat_options(evaluate, bpe)
  hosts = [list(grain_pipeline.make_eval_iterator(evaluate, options=options, vocabulary=bpe,
                                                  global_batch_size=6, shard=(i, 2)))
           for i in range(2)]
  with open(cfg.train_files[0], encoding="utf-8") as f:
    records = [json.loads(line) for line in f if line.strip()]
  assert len(hosts[0]) == len(hosts[1]) == -(-len(records) // 2 // 3)
  ids = [i for batches in hosts for b in batches for i in b["example_ids"] if i]
  assert sorted(ids) == sorted(r["id"] for r in records)
  langs = {i: lang for b in hosts[0] for i, lang in zip(b["example_ids"], b["markers/lang"])}
  by_id = {r["id"]: r for r in records}
  for example_id, lang in langs.items():
    if example_id:
      assert lang == str(by_id[example_id]["markers"].get("lang", ""))
  with pytest.raises(ValueError, match="eval_files"):
    next(grain_pipeline.make_eval_iterator(cfg, options=options, vocabulary=bpe,
                                           global_batch_size=6))


def test_chat_options_equal_the_seqio_tasks_for_every_data_field(cfg, bpe):
  """The Grain path builds its ChatOptions from the same DataConfig fields as the seqio task
  (normalize, dropout, variant, seed, error policies): none is silently dropped."""
  import dataclasses
  other = dataclasses.replace(cfg, name="grain_options", normalize=True, p_dataset=0.3,
                              p_sample=0.7, variant="baseline", on_bad_record="skip",
                              on_overflow="truncate", seed=11)
  names = tasks.register_from_config(other, bpe)
  want = tasks.options(seqio.TaskRegistry.get(names[other.variant]))
  got = grain_pipeline.chat_options(other, bpe)
  for field in dataclasses.fields(want):
    assert getattr(got, field.name) == getattr(want, field.name), field.name
