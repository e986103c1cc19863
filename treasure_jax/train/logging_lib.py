"""Run outputs a user watches: console progress bar, `metrics.jsonl` and TensorBoard event files.

Only process 0 writes. `metrics.jsonl` holds one JSON object per logged step (`step`, `loss`,
...); after a resume, lines beyond the restored step are dropped so the file reads like one
uninterrupted run. Deliberately left to others: computing the metrics (`step`, `loop`).
"""
from __future__ import annotations

import json
import math
import os
from typing import Any, Mapping

import jax
import tensorboardX
import tqdm

METRICS_FILE = "metrics.jsonl"


class RunLogger:
  """Writes logged steps to metrics.jsonl and TensorBoard, and drives the progress bar."""

  def __init__(self, workdir: str, *, total_steps: int, start_step: int, progress: bool = True):
    self.enabled = jax.process_index() == 0
    self.path = os.path.join(workdir, METRICS_FILE)
    self._tb = None
    self._bar = None
    if not self.enabled:
      return
    truncate_after(self.path, start_step)
    self._tb = tensorboardX.SummaryWriter(os.path.join(workdir, "tensorboard"))
    if progress:
      self._bar = tqdm.tqdm(total=total_steps, initial=start_step, unit="step",
                            dynamic_ncols=True, desc="train")

  def write(self, step: int, metrics: Mapping[str, Any]) -> None:
    """Appends `{"step": step, **metrics}` and the scalars to TensorBoard."""
    if not self.enabled:
      return
    record = {"step": int(step), **{k: _plain(v) for k, v in metrics.items()}}
    with open(self.path, "a", encoding="utf-8") as f:
      f.write(json.dumps(record, sort_keys=False) + "\n")
    for key, value in record.items():
      if key != "step" and isinstance(value, (int, float)) and math.isfinite(value):
        self._tb.add_scalar(key, value, global_step=int(step))

  def progress(self, step: int, metrics: Mapping[str, Any]) -> None:
    """Moves the bar to `step` (1-based count of finished steps) with loss and tokens/s."""
    if self._bar is None:
      return
    self._bar.update(step - self._bar.n)
    shown = {k: f"{float(metrics[k]):.4g}" for k in ("loss", "tokens_per_s") if k in metrics}
    self._bar.set_postfix(shown, refresh=False)

  def text(self, tag: str, text: str) -> None:
    if self._tb is not None:
      self._tb.add_text(tag, text)

  def close(self) -> None:
    if self._bar is not None:
      self._bar.close()
    if self._tb is not None:
      self._tb.close()


def _plain(x: Any) -> Any:
  """A JSON-ready scalar (numpy/JAX scalars to Python; NaN/Inf kept as floats)."""
  if hasattr(x, "item"):
    return x.item()
  return x


def truncate_after(path: str, step: int) -> None:
  """Drops the records with `step > step` (left by a run that died after its last checkpoint)."""
  if not os.path.exists(path):
    return
  with open(path, encoding="utf-8") as f:
    lines = [line for line in f if line.strip()]
  kept = [line for line in lines if json.loads(line).get("step", 0) <= step]
  if len(kept) != len(lines):
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
      f.writelines(kept)
    os.replace(tmp, path)


def read_metrics(path: str) -> list[dict[str, Any]]:
  """The records of a metrics.jsonl file (for tests, benchmarks and reports)."""
  with open(path, encoding="utf-8") as f:
    return [json.loads(line) for line in f if line.strip()]
