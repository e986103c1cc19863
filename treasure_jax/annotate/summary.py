"""The summary printed at the end of every `treasure-jax annotate` run.

Read, written (and records/s), repaired (by kind), rejected (by reason, with the rejects file),
paid calls and the frequency table of the written records. `pipeline` fills it in.
"""
from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping

from treasure_jax.markers import stats


@dataclasses.dataclass
class Summary:
  out_path: str
  rejects_path: str | None
  n_records: int
  n_rejected: int
  llm_calls: int
  llm_cached: int
  quality_calls: int
  quality_cached: int
  n_problems: int
  elapsed_s: float
  table: stats.FrequencyTable
  n_repaired: int = 0  # Written records that normalization changed.
  repairs: dict[str, int] = dataclasses.field(default_factory=dict)  # kind -> repairs made
  reject_reasons: dict[str, int] = dataclasses.field(default_factory=dict)  # reason -> lines

  @property
  def n_read(self) -> int:
    """Non-blank input lines: written + rejected."""
    return self.n_records + self.n_rejected

  def format(self) -> str:
    per_s = self.n_records / self.elapsed_s if self.elapsed_s > 0 else 0.0
    lines = [f"read {self.n_read} records, wrote {self.n_records} to {self.out_path} in "
             f"{self.elapsed_s:.1f}s ({per_s:.0f} records/s)",
             f"repaired {self.n_repaired} records" + _by_kind(self.repairs),
             f"rejected {self.n_rejected} records" + _by_kind(self.reject_reasons)
             + (f", listed in {self.rejects_path}" if self.rejects_path else ""),
             f"LLM calls {self.llm_calls} (+{self.llm_cached} from cache), reward calls "
             f"{self.quality_calls} (+{self.quality_cached} from cache), "
             f"{self.n_problems} annotation problems"]
    return "\n".join(lines) + "\n\n" + self.table.format()


def _by_kind(counts: Mapping[str, int]) -> str:
  if not counts:
    return ""
  ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
  return ": " + ", ".join(f"{k} {v}" for k, v in ranked)


def reject_reason(reason: str) -> str:
  """A reject's reason without its specifics (line/column, turn index), to count by."""
  for prefix in ("invalid JSON", "invalid UTF-8"):
    if reason.startswith(prefix):
      return prefix
  return re.sub(r"\[\d+\]", "[i]", reason)
