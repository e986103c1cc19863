"""Tests of the mimalloc re-exec of JAX commands (`treasure_jax.allocator`), in subprocesses."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from treasure_jax import allocator

pytestmark = pytest.mark.skipif(
    sys.platform != "linux" or allocator.mimalloc_path() is None,
    reason="mimalloc (cmeel-mimalloc) is installed on Linux only")

# Prints whether libmimalloc is mapped into the process after the call, and the arguments.
_PROBE = ("import sys; from treasure_jax import allocator; allocator.exec_with_mimalloc(); "
          "print('libmimalloc' in open('/proc/self/maps').read(), sys.argv[1:])")


def _env(**changes: str | None) -> dict[str, str]:
  env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", allocator.ENV)}
  env.update({k: v for k, v in changes.items() if v is not None})
  return env


def _probe(**env: str | None) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, "-c", _PROBE, "a", "--b=1"], capture_output=True,
                        text=True, env=_env(**env), timeout=120)


def test_reexec_preloads_mimalloc_and_keeps_the_command_line():
  out = _probe()
  assert out.returncode == 0, out.stderr
  assert out.stdout.strip() == "True ['a', '--b=1']"


def test_system_setting_and_an_existing_preload_leave_the_process_alone():
  assert _probe(**{allocator.ENV: "system"}).stdout.strip() == "False ['a', '--b=1']"
  # Already preloaded (by a launcher, or by the re-exec itself): no second exec, still loaded.
  out = _probe(LD_PRELOAD=allocator.mimalloc_path())
  assert out.stdout.strip() == "True ['a', '--b=1']"


def test_bad_setting_is_a_clear_cli_error():
  out = subprocess.run(
      [sys.executable, "-m", "treasure_jax.cli", "generate", "--checkpoint", "/nonexistent",
       "--prompt", "hi"], capture_output=True, text=True, timeout=120,
      env=_env(**{allocator.ENV: "tcmalloc"}))
  assert out.returncode == 2
  assert "TREASURE_JAX_MALLOC='tcmalloc': expected one of mimalloc, system" in out.stderr


def test_jax_command_runs_under_mimalloc():
  # MIMALLOC_VERBOSE makes mimalloc announce itself: proof the command ran with it loaded.
  out = subprocess.run(
      [sys.executable, "-m", "treasure_jax.cli", "generate", "--checkpoint", "/nonexistent",
       "--prompt", "hi"], capture_output=True, text=True, timeout=300,
      env=_env(MIMALLOC_VERBOSE="1"))
  assert out.returncode == 2
  assert "mimalloc: process init" in out.stderr
  assert "/nonexistent: neither a training checkpoint" in out.stderr


def test_preloading_sets_and_restores_the_environment(monkeypatch):
  monkeypatch.setenv("LD_PRELOAD", "/lib/other.so")
  with allocator.preloading("/lib/mine.so"):
    assert os.environ["LD_PRELOAD"] == "/lib/mine.so"
  assert os.environ["LD_PRELOAD"] == "/lib/other.so"
  monkeypatch.delenv("LD_PRELOAD")
  with allocator.preloading(None):
    assert "LD_PRELOAD" not in os.environ
  with allocator.preloading("/lib/mine.so"):
    pass
  assert "LD_PRELOAD" not in os.environ
