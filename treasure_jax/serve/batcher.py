"""Groups concurrent requests into batches of the compiled decode loop (`decode.generate`).

One worker thread owns the model. Requests wait in a bounded FIFO queue (`Config.max_queue`
requests); a full queue refuses at once with HTTP 429 and Retry-After (never a growing
backlog), a closed batcher with 503. When the worker is idle it waits `window_s` after a
request arrives so others can join; while it decodes, arrivals simply accumulate.

Scheduling policy (no request waits forever): the next batch always contains the OLDEST waiting
request, plus later requests that can share its compiled loop (same sampler, stop strings and
step bucket; penalties are per row), in arrival order, up to `max_batch` rows (a request with
n choices is n rows). So a request is in the batch after at most (requests ahead of it)
batches, and each batch is bounded by the server's max_tokens limit. Short requests are not
put into a long one's batch: max_tokens is rounded up to a power-of-two step bucket (exact for
constrained rows, whose list-closing budget depends on it), each row is cut at its own
max_tokens afterwards. Batch sizes are padded to powers of two so a handful of shapes compile
once and are reused.

A decode failure fails that batch's requests with a 500 error object; the worker carries on.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import logging
import random
import threading
import time
from typing import Any

from treasure_jax.decode import generate as generate_lib
from treasure_jax.decode import modes
from treasure_jax.decode import runner
from treasure_jax.decode import stops
from treasure_jax.serve import protocol

_MIN_STEPS = 16
_GOLDEN = 0x9E3779B1  # Spreads request seeds apart so their choices' row seeds do not overlap.


@dataclasses.dataclass(frozen=True)
class Config:
  """Batching and queue bounds."""
  max_batch: int = 16  # Rows per decode batch.
  max_queue: int = 64  # Requests waiting (not counting the batch being decoded).
  window_s: float = 0.01  # How long an idle worker waits for more requests to join.


@dataclasses.dataclass
class _Entry:
  job: protocol.Job
  key: tuple[Any, ...]
  future: concurrent.futures.Future
  seeds: list[int]


class Batcher:
  """`submit(job)` -> a Future of the job's n `modes.Result`s; `start()` and `close()`."""

  def __init__(self, decoder: runner.Decoder, cfg: Config = Config()):
    self.decoder, self.cfg = decoder, cfg
    self._pending: list[_Entry] = []
    self._cond = threading.Condition()
    self._closed = False
    self._thread = threading.Thread(target=self._loop, name="serve-batcher", daemon=True)
    self.counts = {"batches": 0, "rows": 0, "refused": 0, "failed": 0}
    self._tables = None

  def start(self) -> Batcher:
    self._thread.start()
    return self

  def close(self) -> None:
    """Stops the worker after its current batch; waiting requests get 503."""
    with self._cond:
      self._closed = True
      pending, self._pending = self._pending, []
      self._cond.notify_all()
    for e in pending:
      e.future.set_exception(_unavailable())
    if self._thread.is_alive():
      self._thread.join()

  def queued(self) -> int:
    with self._cond:
      return len(self._pending)

  def submit(self, job: protocol.Job) -> concurrent.futures.Future:
    room = self.decoder.model.cfg.max_seq_len - len(job.ids)
    steps = job.max_tokens if job.request.mode.constrained else min(
        room, max(_MIN_STEPS, 1 << (job.max_tokens - 1).bit_length()))
    base = job.seed if job.seed is not None else random.getrandbits(32)
    seeds = [(base * _GOLDEN + c) % (1 << 32) for c in range(job.n)]
    entry = _Entry(job, (job.sampler, job.stop, steps), concurrent.futures.Future(), seeds)
    with self._cond:
      if self._closed:
        raise _unavailable()
      if len(self._pending) >= self.cfg.max_queue:
        self.counts["refused"] += 1
        raise protocol.ApiError(
            429, f"the server's queue is full ({self.cfg.max_queue} requests waiting); retry "
            "later", code="queue_full", type="server_overloaded")
      self._pending.append(entry)
      self._cond.notify_all()
    return entry.future

  def _loop(self) -> None:
    while True:
      entries = self._next_batch()
      if entries is None:
        return
      try:
        results = self._decode(entries)
      except Exception as e:  # Any failure is this batch's; the server goes on.
        logging.exception("serve: a decode batch failed")
        self.counts["failed"] += len(entries)
        error = protocol.ApiError(500, f"decoding failed: {type(e).__name__}: {e}",
                                  type="server_error", code="decode_failed")
        for entry in entries:
          entry.future.set_exception(error)
        continue
      for entry, result in zip(entries, results):
        entry.future.set_result(result)

  def _next_batch(self) -> list[_Entry] | None:
    with self._cond:
      while not self._pending and not self._closed:
        self._cond.wait()
      if self._closed:
        return None
      deadline = time.monotonic() + self.cfg.window_s
      while sum(e.job.n for e in self._pending) < self.cfg.max_batch and not self._closed:
        left = deadline - time.monotonic()
        if left <= 0:
          break
        self._cond.wait(left)
      return self._take()

  def _take(self) -> list[_Entry]:
    """The oldest entry and the later ones that share its key, up to max_batch rows."""
    first = self._pending[0]
    chosen, rows = [first], first.job.n
    for e in self._pending[1:]:
      if e.key == first.key and rows + e.job.n <= self.cfg.max_batch:
        chosen.append(e)
        rows += e.job.n
    taken = set(map(id, chosen))
    self._pending = [e for e in self._pending if id(e) not in taken]
    return chosen

  def _decode(self, entries: list[_Entry]) -> list[list[modes.Result]]:
    d = self.decoder
    rows = [(e, c) for e in entries for c in range(e.job.n)]
    width = min(self.cfg.max_batch, 1 << (len(rows) - 1).bit_length())
    rows += [rows[0]] * (width - len(rows))  # Padding rows: copies, results dropped.
    requests = [e.job.request for e, _ in rows]
    inputs = [(list(e.job.ids), e.job.prefix) for e, _ in rows]
    tables, starts = None, None
    if any(r.mode.constrained for r in requests):
      if self._tables is None:
        self._tables = d.automaton().tables(d.model.cfg.vocab_size)
      tables = self._tables
      starts = [d._start_state(r, p) for r, (_, p) in zip(requests, inputs)]  # pylint: disable=protected-access
    first = entries[0].job
    penalized = any(e.job.penalties.active for e in entries)
    gen = generate_lib.generate(
        d.model, [ids for ids, _ in inputs], max_new_tokens=entries[0].key[2],
        sampler=first.sampler, penalties=[e.job.penalties for e, _ in rows],
        eos_ids=d.eos_ids(), constraint=tables, start_states=starts,
        list_rows=[r.mode.parses for r in requests] if penalized else None,
        list_close=d.list_close() if penalized else None,
        stop_tables=self._stop_tables(first.stop), row_seeds=[e.seeds[c] for e, c in rows])
    gen = _cut(gen, [e.job.max_tokens for e, _ in rows])
    out: dict[int, list[modes.Result]] = {id(e): [] for e in entries}
    for i, (e, _) in enumerate(rows[:sum(x.job.n for x in entries)]):
      # `_finish` is the runner's own read-back (token ids -> text -> marker parse).
      out[id(e)].append(d._finish(requests[i], inputs[i], gen, i, first.stop, False))  # pylint: disable=protected-access
    self.counts["batches"] += 1
    self.counts["rows"] += len(rows)
    return [out[id(e)] for e in entries]

  @functools.lru_cache(maxsize=32)
  def _stop_tables(self, stop: tuple[str, ...]) -> stops.StopTables | None:
    return stops.build(stop, self.decoder.token_bytes, self.decoder.model.cfg.vocab_size)


def _cut(gen: generate_lib.Generation, limits: list[int]) -> generate_lib.Generation:
  """Each row's tokens cut at its own max_tokens (the batch ran a rounded-up step count)."""
  tokens, logprobs, reasons = [], [], []
  for t, lp, reason, m in zip(gen.tokens, gen.logprobs, gen.stop_reasons, limits):
    tokens.append(t[:m])
    logprobs.append(lp[:m])
    reasons.append("max_tokens" if len(t) > m else reason)
  return generate_lib.Generation(tokens, logprobs, reasons)


def _unavailable() -> protocol.ApiError:
  return protocol.ApiError(503, "the server is shutting down", code="unavailable",
                           type="server_error")
