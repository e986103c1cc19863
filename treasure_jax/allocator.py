"""The host memory allocator of JAX commands: mimalloc, preloaded by re-executing the process.

Why: XLA:CPU allocates each step's large temporaries afresh (a scanned model's stacked
residuals are hundreds of MB). glibc's malloc serves blocks above 32 MB with mmap and gives
them back with munmap, so every step page-faults through gigabytes of new pages and the kernel
zeroes them; zero-filling the scan's residual stacks then runs at ~1 GB/s. mimalloc keeps the
pages and reuses them. Measured on the 2-core CPU machine (SmolLM2-135M float32, 4 x 256
tokens, `benchmarks/train_step.py`): 6.2-6.5 s a train step with glibc, 5.8 s with mimalloc;
decoding gains 2-4%. PyTorch's CPU step is slower under mimalloc (5.2 -> 6.8 s), so the
benchmark gives the peer glibc.

The allocator must be in place before the process allocates anything, hence `LD_PRELOAD` and
one `execve` of the same command line at start-up (`treasure-jax train|eval|demo|generate`);
library users and tests that import treasure_jax keep whatever allocator their process has.
`TREASURE_JAX_MALLOC=system` turns it off; without the `cmeel-mimalloc` package (or off Linux)
the command runs with the system allocator and says so at debug level.
"""
from __future__ import annotations

import contextlib
import importlib.metadata
import logging
import os
import sys
from typing import Iterator

ENV = "TREASURE_JAX_MALLOC"
CHOICES = ("mimalloc", "system")


def mimalloc_path() -> str | None:
  """The shared library shipped by the `cmeel-mimalloc` wheel, or None if not installed."""
  try:
    files = importlib.metadata.files("cmeel-mimalloc") or []
  except importlib.metadata.PackageNotFoundError:
    return None
  for f in files:
    if f.name == "libmimalloc.so":
      path = str(f.locate())
      return path if os.path.exists(path) else None
  return None


def preloaded(path: str) -> bool:
  return path in os.environ.get("LD_PRELOAD", "").split(":")


def exec_with_mimalloc() -> None:
  """Re-executes this process's command line with mimalloc in LD_PRELOAD, unless it is already
  there, TREASURE_JAX_MALLOC=system, or mimalloc is unavailable. Returns only in those cases.

  Raises:
    ValueError: TREASURE_JAX_MALLOC is neither "mimalloc" nor "system".
  """
  choice = os.environ.get(ENV, "mimalloc")
  if choice not in CHOICES:
    raise ValueError(f"{ENV}={choice!r}: expected one of {', '.join(CHOICES)}")
  if choice == "system":
    return
  path = mimalloc_path() if sys.platform == "linux" else None
  if path is None:
    logging.debug("%s: mimalloc is not installed; using the system allocator", ENV)
    return
  if preloaded(path):
    return
  previous = os.environ.get("LD_PRELOAD")
  env = dict(os.environ, LD_PRELOAD=path if not previous else f"{path}:{previous}")
  sys.stdout.flush()
  sys.stderr.flush()
  os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)


@contextlib.contextmanager
def preloading(path: str | None) -> Iterator[None]:
  """Within the block, LD_PRELOAD is `path` (unchanged if None): child processes started there
  (e.g. multiprocessing "spawn") run with it; restored on exit."""
  saved = os.environ.get("LD_PRELOAD")
  if path:
    os.environ["LD_PRELOAD"] = path
  try:
    yield
  finally:
    if saved is None:
      os.environ.pop("LD_PRELOAD", None)
    else:
      os.environ["LD_PRELOAD"] = saved
