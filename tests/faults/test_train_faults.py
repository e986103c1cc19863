"""Training faults: a second trainer on a busy workdir, SIGKILL in the middle of a checkpoint
save. (SIGTERM, a corrupt latest checkpoint, NaN loss and a dead process of a multi-host run
are in tests/test_train_loop.py; the README's "Reliability" table lists them all.)"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from treasure_jax.train import workdir_lock

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = os.path.join(ROOT, "configs", "tiny.py")
KEYS = ("loss", "marker_loss", "response_loss", "grad_norm", "lr", "tokens")


def _train_command(workdir, *overrides):
  return [sys.executable, "-m", "treasure_jax.cli", "train", "--config", TINY, "--workdir",
          str(workdir), "--no-progress", "--config.eval_every_steps=0", *overrides]


def _env():
  return {**os.environ, "JAX_PLATFORMS": "cpu", "TREASURE_JAX_MALLOC": "system"}


def test_a_second_trainer_on_a_busy_workdir_is_refused_naming_the_lock(tmp_path):
  with workdir_lock.hold(str(tmp_path)):
    result = subprocess.run(_train_command(tmp_path, "--config.num_train_steps=3"),
                            capture_output=True, text=True, env=_env(), timeout=300,
                            check=False)
  assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
  assert f"workdir {tmp_path} is in use by another trainer (pid {os.getpid()} on" in (
      result.stderr)
  assert workdir_lock.LOCK_NAME in result.stderr
  assert not os.path.exists(tmp_path / "checkpoints")  # It stopped before touching anything.
  with workdir_lock.hold(str(tmp_path)):  # Released: the next holder gets it.
    pass


def _metrics(workdir):
  out = {}
  with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
    for line in f:
      record = json.loads(line)
      if "step" in record and "loss" in record:
        out[record["step"]] = record  # A resumed run re-logs the steps after its checkpoint.
  return out


@pytest.mark.slow
def test_sigkill_during_a_checkpoint_save_then_the_rerun_matches(tmp_path):
  """checkpoint.every_steps=1: SIGKILL as soon as a save is in flight (orbax's temporary step
  directory exists); the rerun resumes from the last complete step, the unfinished one is never
  read, and every step's metrics equal an uninterrupted run's."""
  overrides = ("--config.num_train_steps=6", "--config.checkpoint.every_steps=1",
               "--config.checkpoint.keep=2", f"--config.compilation_cache_dir={tmp_path}/cache")
  reference = tmp_path / "reference"
  done = subprocess.run(_train_command(reference, *overrides), capture_output=True, text=True,
                        env=_env(), timeout=600, check=False)
  assert done.returncode == 0, done.stderr[-3000:]
  killed = tmp_path / "killed"
  proc = subprocess.Popen(_train_command(killed, *overrides), stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL, env=_env())
  checkpoints = killed / "checkpoints"
  deadline = time.monotonic() + 300
  while time.monotonic() < deadline and proc.poll() is None:
    names = os.listdir(checkpoints) if checkpoints.exists() else []
    if any("tmp" in n for n in names) and any(n.isdigit() for n in names):
      proc.send_signal(signal.SIGKILL)  # A second save is in flight.
      break
    time.sleep(0.005)
  proc.wait()
  assert proc.returncode == -signal.SIGKILL, "the run ended before a save could be interrupted"
  rerun = subprocess.run(_train_command(killed, *overrides), capture_output=True, text=True,
                         env=_env(), timeout=600, check=False)
  assert rerun.returncode == 0, rerun.stderr[-3000:]
  got, want = _metrics(killed), _metrics(reference)
  assert sorted(got) == sorted(want) == list(range(1, 7))
  for step in want:
    for key in KEYS:
      assert got[step][key] == want[step][key], (step, key)


@pytest.mark.slow
def test_a_full_disk_during_a_save_is_one_line_and_the_previous_checkpoint_survives(tmp_path):
  """The second save fails for want of space (RLIMIT_FSIZE: writes past 2 MiB fail with EFBIG,
  as ENOSPC would); the error names the last complete step, which a rerun resumes from."""
  import resource  # pylint: disable=g-import-not-at-top
  workdir = tmp_path / "run"
  first = subprocess.run(_train_command(workdir, "--config.num_train_steps=3",
                                        "--config.checkpoint.every_steps=3"),
                         capture_output=True, text=True, env=_env(), timeout=600, check=False)
  assert first.returncode == 0, first.stderr[-3000:]
  more = ("--config.num_train_steps=6", "--config.checkpoint.every_steps=6")
  full = subprocess.run(
      _train_command(workdir, *more), capture_output=True, text=True, env=_env(), timeout=600,
      check=False, preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (2 << 20,) * 2))
  assert full.returncode == 2, full.stderr[-3000:]
  # Orbax's writer threads log their own tracebacks to stderr, possibly interleaved with ours.
  prefix = "treasure-jax train: error:"
  assert full.stderr.count(prefix) == 1, full.stderr[-3000:]
  line = full.stderr[full.stderr.index(prefix):].split("\n", 1)[0]
  assert "File too large" in line and "the last complete checkpoint, step 3, is intact" in line, (
      full.stderr[-3000:])
  rerun = subprocess.run(_train_command(workdir, *more), capture_output=True, text=True,
                         env=_env(), timeout=600, check=False)
  assert rerun.returncode == 0, rerun.stderr[-3000:]
  assert sorted(n for n in os.listdir(workdir / "checkpoints")) == ["3", "6"]
  assert sorted(_metrics(workdir)) == list(range(1, 7))


def _mount_tmpfs(path, size_bytes) -> str:
  """Mounts a tmpfs of `size_bytes` at `path`; returns why not ('' when mounted)."""
  if os.geteuid() != 0:
    return "mounting a tmpfs needs root"
  os.makedirs(path, exist_ok=True)
  done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_bytes}", "tmpfs", str(path)],
                        capture_output=True, text=True, check=False)
  return "" if done.returncode == 0 else f"mount -t tmpfs failed: {done.stderr.strip()}"


def _du(path) -> int:
  return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)


@pytest.mark.slow
def test_a_really_full_disk_during_a_save_is_one_line_and_the_previous_checkpoint_survives(
    tmp_path):
  """ENOSPC for real: the run (6 steps, a checkpoint every 3) has its workdir on a tmpfs with
  room for everything an uninterrupted run writes except half of its second checkpoint. The
  save of step 6 fails with "No space left on device", the error names step 3 as intact, and
  after space is freed the same command resumes from step 3 and logs the uninterrupted run's
  metrics. Skipped where a tmpfs cannot be mounted (not root, or no CAP_SYS_ADMIN); the
  RLIMIT_FSIZE test above covers the error path there."""
  import shutil  # pylint: disable=g-import-not-at-top
  command = ("--config.num_train_steps=6", "--config.checkpoint.every_steps=3",
             "--config.checkpoint.keep=2", "--config.checkpoint.async_save=false")
  reference = tmp_path / "reference"
  done = subprocess.run(_train_command(reference, *command), capture_output=True, text=True,
                        env=_env(), timeout=600, check=False)
  assert done.returncode == 0, done.stderr[-3000:]
  checkpoint_bytes = _du(reference / "checkpoints" / "6")
  assert checkpoint_bytes > 0
  mount_point = tmp_path / "tmpfs"
  why = _mount_tmpfs(mount_point, _du(reference) - checkpoint_bytes // 2)
  if why:
    pytest.skip(why)
  workdir = mount_point / "run"
  moved = tmp_path / "moved"
  try:
    full = subprocess.run(_train_command(workdir, *command), capture_output=True, text=True,
                          env=_env(), timeout=600, check=False)
    assert full.returncode == 2, full.stderr[-3000:]
    prefix = "treasure-jax train: error:"
    assert full.stderr.count(prefix) == 1, full.stderr[-3000:]
    line = full.stderr[full.stderr.index(prefix):].split("\n", 1)[0]
    assert "No space left on device" in line, line
    assert "the last complete checkpoint, step 3, is intact" in line, line
    names = os.listdir(workdir / "checkpoints")
    assert "3" in names and "6" not in names, names
    shutil.copytree(workdir, moved, ignore=shutil.ignore_patterns("*.orbax-checkpoint-tmp*"))
  finally:
    subprocess.run(["umount", str(mount_point)], check=False)
  # Space freed (the workdir moved to the bigger disk): the same command resumes from step 3.
  rerun = subprocess.run(_train_command(moved, *command), capture_output=True, text=True,
                         env=_env(), timeout=600, check=False)
  assert rerun.returncode == 0, rerun.stderr[-3000:]
  assert "restored step 3 from" in rerun.stderr, rerun.stderr[-3000:]
  got, want = _metrics(moved), _metrics(reference)
  assert sorted(got) == sorted(want) == list(range(1, 7))
  for step in want:
    for key in KEYS:
      assert got[step][key] == want[step][key], (step, key)
