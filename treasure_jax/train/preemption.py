"""SIGTERM (preemption) notice, agreed on by every process at the same step.

Multi-process runs use JAX's preemption service: `jax.distributed.initialize` installs a SIGTERM
listener, and `multihost_utils.reached_preemption_sync_point(step)` turns True on every process
at the same step once any of them was signalled, so they all save the same checkpoint.
A single process installs a Python SIGTERM handler that sets a flag. Deliberately left to
others: the save itself and leaving the loop (`loop`).
"""
from __future__ import annotations

import logging
import signal
import threading
from typing import Any

import jax
from jax.experimental import multihost_utils


class Notice:
  """Context manager; `requested(step)` is True once SIGTERM arrived (all processes agree)."""

  def __init__(self):
    self._flag = threading.Event()
    self._previous: Any = None
    self._installed = False

  def __enter__(self) -> Notice:
    multi = jax.process_count() > 1
    if not multi and threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._handle)
      self._installed = True
    return self

  def _handle(self, signum: int, frame: Any) -> None:
    del frame
    logging.warning("received signal %d: saving a checkpoint and stopping after this step",
                    signum)
    self._flag.set()

  def requested(self, step: int) -> bool:
    """Every process must call this at every step when there are several processes."""
    if jax.process_count() > 1:
      return multihost_utils.reached_preemption_sync_point(step)
    return self._flag.is_set()

  def __exit__(self, *exc: Any) -> None:
    if self._installed:
      signal.signal(signal.SIGTERM, self._previous)
      self._installed = False
