"""Packing: next-token pairs, weight channels, segment ids and positions; unpacked rows; errors."""
from __future__ import annotations

import numpy as np
import pytest

from treasure_jax.data import features


def _example(name, tokens, markers, response):
  """An example whose weights are 0 (prompt), 1 on `markers` then on `response` tokens."""
  n = len(tokens)
  mw = np.zeros(n, np.int32)
  rw = np.zeros(n, np.int32)
  mw[n - markers - response:n - response] = 1
  rw[n - response:] = 1
  return {"targets": np.asarray(tokens, np.int32), "marker_weights": mw, "response_weights": rw,
          "origin": name, "id": name, "markers": '{"domain": "Math"}'}


def test_packed_batch_is_exact():
  a = _example("a", [10, 11, 12, 13, 14], markers=2, response=1)   # 4 positions
  b = _example("b", [20, 21, 22], markers=0, response=1)           # 2 positions
  c = _example("c", [30, 31, 32, 33, 34, 35, 36], markers=1, response=2)  # 6 positions
  packer = features.RowPacker(2, 7, pack=True)
  assert packer.try_add(a) and packer.try_add(b) and packer.try_add(c)
  d = _example("d", [40, 41], markers=0, response=1)  # 1 position: fits in row 0's last slot.
  assert packer.try_add(d)
  assert not packer.try_add(_example("e", [1, 2, 3], markers=0, response=1))
  batch = packer.build()
  np.testing.assert_array_equal(batch["inputs"], [[10, 11, 12, 13, 20, 21, 40],
                                                  [30, 31, 32, 33, 34, 35, 0]])
  np.testing.assert_array_equal(batch["targets"], [[11, 12, 13, 14, 21, 22, 41],
                                                   [31, 32, 33, 34, 35, 36, 0]])
  np.testing.assert_array_equal(batch["segment_ids"], [[1, 1, 1, 1, 2, 2, 3],
                                                       [1, 1, 1, 1, 1, 1, 0]])
  np.testing.assert_array_equal(batch["positions"], [[0, 1, 2, 3, 0, 1, 0],
                                                     [0, 1, 2, 3, 4, 5, 0]])
  # Weights belong to the target token: a's targets 11..14 carry weights of tokens 1..4.
  np.testing.assert_array_equal(batch["marker_weights"], [[0, 1, 1, 0, 0, 0, 0],
                                                          [0, 0, 0, 1, 0, 0, 0]])
  np.testing.assert_array_equal(batch["response_weights"], [[0, 0, 0, 1, 0, 1, 1],
                                                            [0, 0, 0, 0, 1, 1, 0]])
  np.testing.assert_array_equal(batch["loss_weights"],
                                batch["marker_weights"] + batch["response_weights"])
  assert batch["loss_weights"].dtype == np.float32 and batch["inputs"].dtype == np.int32
  assert packer.num_examples == 0  # build() starts a new batch.


def test_segments_never_mix_tokens():
  rng = np.random.default_rng(0)
  examples = []
  for i in range(40):
    n = int(rng.integers(2, 12))
    examples.append(_example(f"x{i}", list(range(1000 * (i + 1), 1000 * (i + 1) + n)),
                             markers=0, response=1))
  packer = features.RowPacker(4, 16, pack=True)
  placed = 0
  while placed < len(examples) and packer.try_add(examples[placed]):
    placed += 1
  batch = packer.build()
  for row in range(4):
    for seg in set(batch["segment_ids"][row].tolist()) - {0}:
      mask = batch["segment_ids"][row] == seg
      # One example per segment: inputs and targets come from the same 1000-block, in order.
      block = set((batch["inputs"][row][mask] // 1000).tolist())
      block |= set((batch["targets"][row][mask] // 1000).tolist())
      assert len(block) == 1
      np.testing.assert_array_equal(batch["positions"][row][mask], np.arange(mask.sum()))
      np.testing.assert_array_equal(batch["targets"][row][mask][:-1],
                                    batch["inputs"][row][mask][1:])
  assert batch["segment_ids"].max() > 1 and features.packing_efficiency(batch) > 0.5


def test_unpacked_rows_and_metadata():
  packer = features.RowPacker(3, 6, pack=False, marker_categories=("domain", "lang"))
  assert packer.try_add(_example("a", [1, 2, 3], markers=1, response=1))
  assert packer.try_add(_example("b", [4, 5], markers=0, response=1))
  batch = packer.build()
  np.testing.assert_array_equal(batch["segment_ids"], [[1, 1, 0, 0, 0, 0], [1, 0, 0, 0, 0, 0],
                                                       [0, 0, 0, 0, 0, 0]])
  assert batch["example_ids"].tolist() == ["a", "b", ""]
  assert batch["markers/domain"].tolist() == ["Math", "Math", ""]
  assert batch["markers/lang"].tolist() == ["", "", ""]


def test_errors():
  packer = features.RowPacker(1, 4, pack=True)
  with pytest.raises(ValueError, match="example long needs 5 positions; a row has 4"):
    packer.try_add(_example("long", [1, 2, 3, 4, 5, 6], markers=0, response=1))
  with pytest.raises(ValueError, match="no examples"):
    packer.build()
  assert packer.try_add(_example("prompt-only", [1, 2, 3], markers=0, response=0))
  with pytest.raises(ValueError, match="no loss-bearing token; examples: prompt-only"):
    packer.build()


def test_max_examples_closes_a_batch_with_room_left():
  packer = features.RowPacker(2, 16, pack=True, max_examples=3)
  for name in "abc":
    assert packer.try_add(_example(name, [1, 2, 3], markers=0, response=1))
  assert not packer.try_add(_example("d", [1, 2, 3], markers=0, response=1))  # Room, but 3.
  batch = packer.build()
  assert batch["segment_ids"].max(axis=1).sum() == 3 and (batch["segment_ids"] == 0).sum() > 16
  assert packer.try_add(_example("d", [1, 2, 3], markers=0, response=1))  # The next batch.
  with pytest.raises(ValueError, match="max_examples=-1 >= 0"):
    features.RowPacker(2, 16, pack=True, max_examples=-1)
