"""Prompt-side marker dropout, deterministic from (seed, example id, epoch).

Two levels (method.md, "Training"): with probability p_dataset the whole prompt-side list is
dropped; otherwise each marker is dropped with probability p_sample (overridable per category,
e.g. 0.0 = never drop `quality`). Every draw is a hash of (seed, example id, epoch, what), not
a stateful RNG, so a resumed run re-draws exactly what an uninterrupted run would, on any host,
in any order, and each epoch sees a fresh mask. The completion side is never dropped; that is
the template's business, not this module's.
"""
from __future__ import annotations

import dataclasses
import hashlib
import struct
from collections.abc import Mapping
from typing import Any

_DATASET_LEVEL = "\x00dataset"


@dataclasses.dataclass(frozen=True)
class DropoutConfig:
  p_dataset: float = 0.5
  p_sample: float = 0.5
  per_category: Mapping[str, float] = dataclasses.field(default_factory=dict)

  def __post_init__(self):
    for name, p in [("p_dataset", self.p_dataset), ("p_sample", self.p_sample),
                    *((f"per_category.{k}", v) for k, v in self.per_category.items())]:
      if not 0.0 <= float(p) <= 1.0:
        raise ValueError(f"dropout {name}={p} must be in [0, 1]")

  def p_for(self, category: str) -> float:
    return float(self.per_category.get(category, self.p_sample))


def uniform(seed: int, example_id: str | int, epoch: int, what: str) -> float:
  """A uniform draw in [0, 1) that depends only on its arguments (blake2b, 53 bits)."""
  key = f"{seed}\x1f{example_id}\x1f{epoch}\x1f{what}".encode("utf-8")
  (word,) = struct.unpack("<Q", hashlib.blake2b(key, digest_size=8).digest())
  return (word >> 11) / float(1 << 53)


def keep_mask(names: list[str] | tuple[str, ...], cfg: DropoutConfig, *, seed: int,
              example_id: str | int, epoch: int) -> dict[str, bool]:
  """Which of `names` survive on the prompt side for this (seed, example, epoch)."""
  if uniform(seed, example_id, epoch, _DATASET_LEVEL) < cfg.p_dataset:
    return {n: False for n in names}
  return {n: uniform(seed, example_id, epoch, n) >= cfg.p_for(n) for n in names}


def apply(markers: Mapping[str, Any], cfg: DropoutConfig, *, seed: int,
          example_id: str | int, epoch: int) -> dict[str, Any]:
  """The prompt-side markers kept for this draw, in the order given."""
  mask = keep_mask(tuple(markers), cfg, seed=seed, example_id=example_id, epoch=epoch)
  return {n: v for n, v in markers.items() if mask[n]}
