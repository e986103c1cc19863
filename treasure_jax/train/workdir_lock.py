"""One trainer per workdir: an advisory lock that a second trainer on the same workdir meets.

Process 0 of a run holds `flock(LOCK_EX)` on WORKDIR/.treasure_jax.lock for the whole run and
writes its pid and host into it; a second run on that workdir fails at start with
`WorkdirBusyError`, naming the lock file and its holder. The kernel drops the lock when the
holder exits, however it exits (SIGKILL included), so a crash never leaves a stale lock behind.
Remote workdirs (gs://...) have no file locks and are not locked: there the scheduler must keep
runs apart. flock on NFS depends on the server's lock support.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import socket
from collections.abc import Iterator

import jax

LOCK_NAME = ".treasure_jax.lock"


class WorkdirBusyError(RuntimeError):
  """Another trainer holds the workdir's lock."""


@contextlib.contextmanager
def hold(workdir: str) -> Iterator[None]:
  """Holds the workdir's lock (process 0, local paths) while the block runs."""
  if "://" in workdir or jax.process_index() != 0:
    yield
    return
  path = os.path.join(workdir, LOCK_NAME)
  fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
  try:
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      holder = os.pread(fd, 200, 0).decode("utf-8", "replace").strip() or "unknown process"
      raise WorkdirBusyError(
          f"workdir {workdir} is in use by another trainer ({holder}; lock {path}): stop it, "
          "or train in another --workdir") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode("utf-8"), 0)
    yield
  finally:
    os.close(fd)  # Closing the descriptor releases the lock.
