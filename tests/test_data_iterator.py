"""Host-local batch iterators: exact resume (across epochs and mixtures), per-epoch dropout,
disjoint host shards, mixture rates, long-tail up-sampling, bad records, validation batches."""
from __future__ import annotations

import collections
import dataclasses
import json

import numpy as np
import pytest
import seqio

from treasure_jax.data import config
from treasure_jax.data import features
from treasure_jax.data import iterator
from treasure_jax.data import mixtures
from treasure_jax.data import preprocessors
from treasure_jax.data import sources
from treasure_jax.data import streams
from treasure_jax.data import tasks
from treasure_jax.data import testing
from treasure_jax.markers import taxonomy

ONE_HOST = seqio.ShardInfo(index=0, num_shards=1)


@pytest.fixture(scope="module")
def bpe():
  return testing.small_bpe_vocabulary()


@pytest.fixture(scope="module")
def records():
  # Short examples (Latin-script languages) so that a few batches span several epochs.
  latin = [r for r in testing.chatterbot_records()
           if r["id"].split("/")[0] in ("english", "spanish", "italian", "german")]
  return latin[::60]


@pytest.fixture(scope="module")
def cfg(tmp_path_factory, records):
  d = tmp_path_factory.mktemp("jsonl")
  testing.write_jsonl(records[:16], str(d / "train.jsonl"))
  testing.write_jsonl(records[40:47], str(d / "val.jsonl"))
  return config.DataConfig(name="itest", train_files=(str(d / "train.jsonl"),),
                           eval_files=(str(d / "val.jsonl"),), seq_len=512, shuffle_buffer=16,
                           on_overflow="truncate", seed=5)


def _take(it, n):
  return [next(it) for _ in range(n)]


def _assert_same(a, b):
  assert a.keys() == b.keys()
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_resume_is_exact_across_epochs(cfg, bpe):
  it = iterator.make_train_iterator(cfg, vocab=bpe, global_batch_size=2, shard_info=ONE_HOST)
  batches, states = [], []
  for _ in range(8):
    batches.append(next(it))
    states.append(json.loads(json.dumps(it.get_state())))  # Must survive JSON.
  assert states[-1]["stream"]["tasks"]["itest_chatml_markers:1.0.0"]["epoch"] >= 1
  assert set(batches[0]) == set(features.BATCH_KEYS)
  assert batches[0]["inputs"].shape == (2, 512)
  for k in (1, 5):  # Mid-epoch, and after the epoch boundary.
    resumed = iterator.make_train_iterator(cfg, vocab=bpe, global_batch_size=2,
                                           shard_info=ONE_HOST)
    resumed.set_state(states[k])
    for want in batches[k + 1:k + 3]:
      _assert_same(next(resumed), want)
  with pytest.raises(ValueError, match="seq_len=512, this iterator has 256"):
    iterator.make_train_iterator(cfg, vocab=bpe, global_batch_size=2, seq_len=256,
                                 shard_info=ONE_HOST).set_state(states[3])


def test_every_epoch_redraws_prompt_markers(cfg, bpe):
  tasks.register_from_config(cfg, bpe)
  stream = streams.TaskStream(seqio.TaskRegistry.get("itest_chatml_markers:1.0.0"),
                              split="train", shard_info=ONE_HOST, seed=1, max_tokens=10_000,
                              shuffle=True, shuffle_buffer=16, repeat=True)
  seen = collections.defaultdict(dict)
  while True:
    ex = stream.peek()
    if stream.epoch == 2:
      break
    seen[ex["id"]][stream.epoch] = ex
    stream.advance()
  changed = 0
  for by_epoch in seen.values():
    assert sorted(by_epoch) == [0, 1]
    completions = {bytes(e["targets"][(e["marker_weights"] | e["response_weights"]) > 0])
                   for e in by_epoch.values()}
    assert len(completions) == 1  # The completion side never changes.
    changed += len({bytes(e["targets"]) for e in by_epoch.values()}) > 1
  assert changed > len(seen) // 3


@pytest.mark.parametrize("by_file", [False, True])
def test_host_shards_are_disjoint_and_cover(tmp_path, records, bpe, by_file):
  if by_file:  # Two files, two hosts: each host reads its own file.
    testing.write_jsonl(records[:20], str(tmp_path / "a.jsonl"))
    testing.write_jsonl(records[20:], str(tmp_path / "b.jsonl"))
    source = sources.JsonlDataSource({"train": str(tmp_path / "*.jsonl")})
  else:  # One source, sharded by example.
    source = sources.records_source({"train": records})
  name = tasks.register_marker_tasks("shard", source, vocabulary=bpe,
                                     on_overflow="truncate")["markers"]
  ids = []
  for index in range(2):
    stream = streams.TaskStream(seqio.TaskRegistry.get(name), split="train",
                                shard_info=seqio.ShardInfo(index, 2), seed=0,
                                max_tokens=10_000, shuffle=True, shuffle_buffer=8,
                                repeat=False)
    host = []
    while (ex := stream.peek()) is not None:
      host.append(ex["id"].decode())
      stream.advance()
    ids.append(host)
  assert ids[0] and ids[1] and not set(ids[0]) & set(ids[1])
  assert sorted(ids[0] + ids[1]) == sorted(r["id"] for r in records)


def test_mixture_rates_and_resume(bpe, records):
  a = tasks.register_marker_tasks("mixa", sources.records_source({"train": records[:20]}),
                                  vocabulary=bpe, on_overflow="truncate")["markers"]
  b = tasks.register_marker_tasks("mixb", sources.records_source({"train": records[20:]}),
                                  vocabulary=bpe, on_overflow="truncate")["markers"]
  mixtures.register_mixture("mix_ab", [(a, 3.0), (b, 1.0)])
  assert [(t.name, r) for t, r in mixtures.task_rates("mix_ab")] == [(a, 0.75), (b, 0.25)]
  mixtures.register_mixture("mix_ab_n", [(a, mixtures.rate_num_examples()),
                                         (b, mixtures.rate_num_examples(temperature=2.0))])
  rates = dict((t.name, r) for t, r in mixtures.task_rates("mix_ab_n"))
  n_b = len(records) - 20
  assert rates[a] == pytest.approx(20 / (20 + n_b ** 0.5))
  cfg = config.DataConfig(task="mix_ab", seq_len=128, shuffle_buffer=8)
  it = iterator.make_train_iterator(cfg, vocab=bpe, global_batch_size=2, shard_info=ONE_HOST)
  batches = _take(it, 6)
  state = it.get_state()
  later = _take(it, 2)
  took = {k: v["position"] for k, v in state["stream"]["tasks"].items()}
  assert took[a] > took[b] > 0
  it2 = iterator.make_train_iterator(cfg, vocab=bpe, global_batch_size=2, shard_info=ONE_HOST)
  it2.set_state(state)
  for want in later:
    _assert_same(next(it2), want)
  assert batches


def test_long_tail_upsampling(bpe, records):
  recs = [dict(r, markers=dict(r["markers"], domain="Legal" if i % 10 == 0 else "Conversation"))
          for i, r in enumerate(records[:40])]
  name = tasks.register_marker_tasks("tail", sources.records_source({"train": recs}),
                                     vocabulary=bpe, on_overflow="truncate")["markers"]
  tax = taxonomy.default_taxonomy()
  mix = mixtures.register_long_tail(name, boost=4.0, taxonomy=tax, threshold=0.15)
  assert mix == "tail_chatml_markers_longtail:1.0.0"
  rates = dict((t.name, r) for t, r in mixtures.task_rates(mix))
  n_tail = sum(1 for r in recs if r["markers"]["domain"] == "Legal")
  assert n_tail == 4
  # Several tail values in a 40-example set (rare languages too), so count what the table says.
  table = mixtures.frequency_table(seqio.TaskRegistry.get(name), tax, threshold=0.15)
  flagged = sum(mixtures.carries_long_tail(r["markers"], table, tax) for r in recs)
  assert rates["tail_chatml_markers_tail:1.0.0"] == pytest.approx(3 * flagged / (40 + 3 * flagged))
  tail = seqio.TaskRegistry.get("tail_chatml_markers_tail:1.0.0")
  got = {ex["id"].decode() for ex in tail.get_dataset(None, "train", shuffle=False)
         .as_numpy_iterator()}
  assert got == {r["id"] for r in recs if mixtures.carries_long_tail(r["markers"], table, tax)}
  assert {r["id"] for r in recs if r["markers"]["domain"] == "Legal"} <= got


def test_bad_records_named_or_counted(tmp_path, records, bpe):
  lines = [json.dumps(r) for r in records[:6]]
  lines[2] = json.dumps({"id": "nope", "prompt": "hi"})  # Line 3: no response.
  lines.insert(4, "")  # Blank lines are not records but still count as lines.
  (tmp_path / "train.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
  base = dict(name="bad", train_files=(str(tmp_path / "train.jsonl"),), seq_len=128,
              shuffle_buffer=1, on_overflow="truncate")
  it = iterator.make_train_iterator(config.DataConfig(**base), vocab=bpe, global_batch_size=8,
                                    shard_info=ONE_HOST)
  with pytest.raises(preprocessors.RecordError, match=r"train.jsonl:3 \(id nope\): missing"):
    next(it)
  it = iterator.make_train_iterator(config.DataConfig(**base, on_bad_record="skip"), vocab=bpe,
                                    global_batch_size=8, shard_info=ONE_HOST)
  next(it)
  counts = it.stats()["bad_chatml_markers:1.0.0"]
  assert counts["skipped/missing_response"] >= 1 and counts["records"] >= 6


def test_eval_batches_align_across_hosts(cfg, bpe, records):
  out = []
  for index in range(2):
    it = iterator.make_eval_iterator(cfg, vocab=bpe, global_batch_size=4,
                                     shard_info=seqio.ShardInfo(index, 2))
    out.append(list(it))
  assert len(out[0]) == len(out[1]) == 2  # ceil(ceil(7 / 2) / 2)
  ids = [i for host in out for b in host for i in b["example_ids"].tolist() if i]
  assert sorted(ids) == sorted(r["id"] for r in records[40:47])
  last = out[1][-1]
  assert last["example_ids"].tolist()[1] == "" and not last["loss_weights"][1].any()
  by_id = {r["id"]: r for r in records[40:47]}
  for host in out:
    for b in host:
      for row, i in enumerate(b["example_ids"].tolist()):
        if i:
          assert b["markers/domain"][row] == by_id[i]["markers"]["domain"]
          assert b["markers/lang"][row] == by_id[i]["markers"].get("lang", "")
          assert (b["segment_ids"][row] > 0).sum() > 0 and b["loss_weights"][row].any()


def test_config_from_dict():
  cfg = config.DataConfig.from_dict({"train_files": ["a.jsonl"], "seq_len": 64})
  assert cfg.train_files == ("a.jsonl",) and cfg.seq_len == 64
  with pytest.raises(ValueError, match=r"unknown keys \['seqlen'\]"):
    config.DataConfig.from_dict({"train_files": ["a.jsonl"], "seqlen": 64})
  with pytest.raises(ValueError, match="template='vicuna'"):
    config.DataConfig(train_files=("a",), template="vicuna")
  with pytest.raises(ValueError, match="set `task` or"):
    config.DataConfig()
  with pytest.raises(ValueError, match="examples_per_batch=-1 must be >= 0"):
    config.DataConfig(train_files=("a",), examples_per_batch=-1)
  with pytest.raises(ValueError, match="examples_per_batch=8 needs paired_order=True"):
    config.DataConfig(train_files=("a",), examples_per_batch=8)
  with pytest.raises(ValueError, match="examples_per_batch needs data.pipeline='seqio'"):
    config.DataConfig(train_files=("a",), examples_per_batch=8, paired_order=True,
                      pipeline="grain")


@pytest.mark.slow
def test_process_exits_with_an_open_iterator(tmp_path, records):
  """An iterator left open (mid-epoch, prefetching) must not hang interpreter shutdown."""
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top

  testing.write_jsonl(records, str(tmp_path / "t.jsonl"))
  script = (
      "import seqio\n"
      "from treasure_jax.data import config, iterator, testing\n"
      f"cfg = config.DataConfig(name='exit', train_files=({str(tmp_path / 't.jsonl')!r},), "
      "seq_len=256, on_overflow='truncate')\n"
      "it = iterator.make_train_iterator(cfg, vocab=testing.small_bpe_vocabulary(), "
      "global_batch_size=2, shard_info=seqio.ShardInfo(0, 1))\n"
      "next(it)\nprint('done')\n")
  out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                       timeout=300, check=True)
  assert "done" in out.stdout


def _responses(batch):
  """The sorted response token strings of a batch's examples (row order differs by length)."""
  out = []
  for row in range(batch["targets"].shape[0]):
    for seg in range(1, int(batch["segment_ids"][row].max()) + 1):
      keep = (batch["segment_ids"][row] == seg) & (batch["response_weights"][row] > 0)
      out.append(batch["targets"][row][keep].tobytes())
  return sorted(out)


def _twins(cfg, bpe, n, **kw):
  twins = []
  for variant in ("baseline", "markers"):
    c = dataclasses.replace(cfg, variant=variant, **kw)
    twins.append(_take(iterator.make_train_iterator(c, vocab=bpe, global_batch_size=2,
                                                    shard_info=ONE_HOST), n))
  return twins


def test_paired_twins_train_on_the_same_examples_at_the_same_steps(cfg, bpe):
  # 16 records, 8 batches of 3: the pairing holds across the epoch boundary too.
  base, marked = _twins(cfg, bpe, 8, paired_order=True, examples_per_batch=3)
  for step, (b, m) in enumerate(zip(base, marked)):
    assert len(_responses(b)) == len(_responses(m)) == 3, step
    assert _responses(b) == _responses(m), step
    assert m["loss_weights"].sum() > b["loss_weights"].sum()  # The marker lists.
  # Each task shuffles by its own name without paired_order: same records, other order.
  base, marked = _twins(cfg, bpe, 4, paired_order=False)
  assert [_responses(b) for b in base] != [_responses(m) for m in marked]
  # The cap is part of the resume fingerprint, both ways.
  c = dataclasses.replace(cfg, paired_order=True, examples_per_batch=3)
  it = iterator.make_train_iterator(c, vocab=bpe, global_batch_size=2, shard_info=ONE_HOST)
  _take(it, 2)
  state = json.loads(json.dumps(it.get_state()))
  resumed = iterator.make_train_iterator(c, vocab=bpe, global_batch_size=2, shard_info=ONE_HOST)
  resumed.set_state(state)
  _assert_same(next(resumed), next(it))
  plain = iterator.make_train_iterator(cfg, vocab=bpe, global_batch_size=2, shard_info=ONE_HOST)
  with pytest.raises(ValueError, match="examples_per_batch=3, this iterator has None"):
    plain.set_state(state)
  with pytest.raises(ValueError, match="examples_per_batch=None, this iterator has 3"):
    resumed.set_state(plain.get_state())
  with pytest.raises(ValueError, match="not divisible by the 2 hosts"):
    iterator.make_train_iterator(c, vocab=bpe, global_batch_size=2,
                                 shard_info=seqio.ShardInfo(index=0, num_shards=2))


def test_paired_twins_after_an_early_close_read_one_stream(cfg, bpe):
  """A marked batch without room for its K-th example closes early; the marked run then trails
  the baseline by the examples it left, but reads the same stream: every example it trains on
  is one the baseline trained on by that step."""
  base, marked = _twins(cfg, bpe, 6, paired_order=True, examples_per_batch=4)
  counts = [len(_responses(m)) for m in marked]
  assert all(len(_responses(b)) == 4 for b in base) and min(counts) < 4, counts
  seen_base, seen_marked = collections.Counter(), collections.Counter()
  for b, m in zip(base, marked):
    seen_base.update(_responses(b))
    seen_marked.update(_responses(m))
    assert not seen_marked - seen_base


def test_twin_key_drops_only_the_variant(bpe, records):
  recs = [dict(r, markers=dict(r["markers"], domain="Legal" if i % 10 == 0 else "Conversation"))
          for i, r in enumerate(records[:40])]
  names = tasks.register_marker_tasks("twins", sources.records_source({"train": recs}),
                                      vocabulary=bpe, on_overflow="truncate")
  keys = {tasks.twin_key(seqio.TaskRegistry.get(n)) for n in names.values()}
  assert keys == {"twins_chatml:1.0.0"}
  tails = set()
  for name in names.values():  # The long-tail copy of each twin shares a key too.
    mix = mixtures.register_long_tail(name, boost=4.0, taxonomy=taxonomy.default_taxonomy(),
                                      threshold=0.15)
    tails |= {tasks.twin_key(t) for t in seqio.get_mixture_or_task(mix).tasks}
  assert tails == {"twins_chatml:1.0.0", "twins_chatml_tail:1.0.0"}
