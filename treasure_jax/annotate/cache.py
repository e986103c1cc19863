"""A durable key → JSON-value cache for paid annotation calls (LLM answers, reward scores).

One append-only JSONL file next to the output (`OUT.cache.jsonl`). Every `put` appends one
line `{"k": key, "v": value}`, flushes and fsyncs before returning, so a run killed at any
moment loses at most the calls still in flight; a rerun reads the file and skips them. Only a
SIGKILL mid-write can leave a torn last line: it is cut off on open. An exclusive flock keeps
two runs from writing the same cache (the kernel drops it when a process dies).

What goes in is the caller's business (`llm` and `quality` build the keys); values must never
contain secrets: API keys are kept out by construction there.
"""
from __future__ import annotations

import fcntl
import json
import logging
import os
import threading
from typing import Any


class CacheError(RuntimeError):
  """The cache file is corrupt or held by another run."""


class Cache:
  """Append-only JSONL cache; thread-safe `get`/`put`; use as a context manager."""

  def __init__(self, path: str | os.PathLike):
    self.path = os.fspath(path)
    self._lock = threading.Lock()
    self._entries: dict[str, Any] = {}
    self._file = open(self.path, "a+b")  # noqa: SIM115 - closed in close().
    try:
      fcntl.flock(self._file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      self._file.close()
      raise CacheError(f"{self.path}: another annotate run is using this cache") from None
    self._load()

  def _load(self) -> None:
    self._file.seek(0)
    data = self._file.read()
    end = data.rfind(b"\n") + 1
    if end < len(data):
      logging.warning("%s: dropping a torn last line (%d bytes) left by an interrupted run",
                      self.path, len(data) - end)
      self._file.truncate(end)
      os.fsync(self._file.fileno())
    for number, line in enumerate(data[:end].splitlines(), start=1):
      try:
        entry = json.loads(line)
        self._entries[entry["k"]] = entry["v"]
      except (ValueError, KeyError, TypeError) as e:
        self.close()
        raise CacheError(f"{self.path}:{number}: corrupt cache entry ({e}); delete the file "
                         "to start over (finished calls will be paid again)") from None
    self._file.seek(0, os.SEEK_END)

  def __len__(self) -> int:
    return len(self._entries)

  def __contains__(self, key: str) -> bool:
    return key in self._entries

  def get(self, key: str) -> Any | None:
    return self._entries.get(key)

  def put(self, key: str, value: Any) -> None:
    """Stores `value` durably (fsync'd) before returning."""
    line = json.dumps({"k": key, "v": value}, ensure_ascii=False, sort_keys=True) + "\n"
    with self._lock:
      self._file.write(line.encode("utf-8"))
      self._file.flush()
      os.fsync(self._file.fileno())
      self._entries[key] = value

  def close(self) -> None:
    if not self._file.closed:
      fcntl.flock(self._file.fileno(), fcntl.LOCK_UN)
      self._file.close()

  def __enter__(self) -> Cache:
    return self

  def __exit__(self, *exc) -> None:
    self.close()
