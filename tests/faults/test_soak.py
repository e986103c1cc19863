"""The soak: the tiny trainer SIGKILLed at random points, 200 times, every finished run's
per-step metrics equal to an uninterrupted run's (slow; 48 min on 2 cores, 2026-12-06).

`TREASURE_JAX_SOAK_CYCLES` sets the number of kills (default 200, the README's figure). Each
cycle starts the same command on the same workdir and kills it after a delay drawn uniformly
from [0, the uninterrupted run's wall time]: so kills land in the imports, the data pipeline,
the restore, a step and a checkpoint save (every step saves), in the proportions of the run's
own time. A run that ends before its kill is checked against the reference and the next
cycle starts a fresh workdir. The delays come from a seeded generator: a failure names its
cycle and delay, and rerunning reproduces the schedule (not the exact instant, which depends
on the machine's load).
"""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time

import pytest
# The trainer's command line, environment and metrics reader: the fault tests' own.
from test_train_faults import KEYS, _env, _metrics, _train_command

STEPS = 12


def _command(workdir, cache):
  return _train_command(workdir, f"--config.num_train_steps={STEPS}",
                        "--config.checkpoint.every_steps=1", "--config.checkpoint.keep=2",
                        f"--config.compilation_cache_dir={cache}")


def _assert_equal(got, want, where):
  assert sorted(got) == sorted(want), f"{where}: steps {sorted(got)}"
  for step in want:
    for key in KEYS:
      assert got[step][key] == want[step][key], f"{where}: step {step} {key}"


def _completed_steps(workdir):
  directory = os.path.join(workdir, "checkpoints")
  names = os.listdir(directory) if os.path.isdir(directory) else []
  return max((int(n) for n in names if n.isdigit()), default=0)


@pytest.mark.slow
def test_200_random_kills_and_restarts_give_the_uninterrupted_losses(tmp_path):
  cycles = int(os.environ.get("TREASURE_JAX_SOAK_CYCLES", "200"))
  cache = tmp_path / "cache"
  reference = tmp_path / "reference"
  done = subprocess.run(_command(reference, cache), capture_output=True, text=True, env=_env(),
                        timeout=600, check=False)
  assert done.returncode == 0, done.stderr[-3000:]
  want = _metrics(reference)
  assert sorted(want) == list(range(1, STEPS + 1))
  # The reference also warmed the compilation cache: time a warm run as the kill window.
  warm = tmp_path / "warm"
  started = time.monotonic()
  done = subprocess.run(_command(warm, cache), capture_output=True, text=True, env=_env(),
                        timeout=600, check=False)
  window = time.monotonic() - started
  assert done.returncode == 0, done.stderr[-3000:]

  rng = random.Random(0)
  kills = finished = productive = 0
  episode = 0
  workdir = tmp_path / f"run{episode}"
  while kills < cycles:
    delay = rng.uniform(0.0, window)
    before = _completed_steps(workdir)
    proc = subprocess.Popen(_command(workdir, cache), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, env=_env())
    try:
      proc.wait(timeout=delay)
    except subprocess.TimeoutExpired:
      proc.send_signal(signal.SIGKILL)
      proc.wait()
    stderr = proc.stderr.read().decode(errors="replace")
    proc.stderr.close()
    where = f"kill {kills}, episode {episode}, delay {delay:.2f} s of {window:.2f} s"
    if proc.returncode == -signal.SIGKILL:
      kills += 1
      productive += _completed_steps(workdir) > before
      continue
    assert proc.returncode == 0, f"{where}: exit {proc.returncode}\n{stderr[-3000:]}"
    _assert_equal(_metrics(workdir), want, where)
    finished += 1
    episode += 1
    workdir = tmp_path / f"run{episode}"
  # The last episode, cut off by the last kill, must finish equal too.
  done = subprocess.run(_command(workdir, cache), capture_output=True, text=True, env=_env(),
                        timeout=600, check=False)
  assert done.returncode == 0, done.stderr[-3000:]
  _assert_equal(_metrics(workdir), want, f"the last episode, {episode}")
  finished += 1
  print(json.dumps({"kills": kills, "episodes_finished": finished,
                    "kills_after_progress": productive, "window_s": round(window, 2),
                    "wall_s": round(time.monotonic() - started, 1)}))
  # Not vacuous: a good share of the kills came after the killed run had saved a step.
  assert productive >= cycles // 5, (productive, cycles)
  assert finished >= 2 or cycles < 50, finished  # Runs ran to the end between kills, too.
