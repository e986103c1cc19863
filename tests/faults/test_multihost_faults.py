"""Multi-host faults: one process of a 2-process run (`launch/local_multiprocess.sh`, gloo over
localhost) is SIGKILLed mid-run; the other exits non-zero within a bounded time, and the same
command run again resumes the pair from the last complete checkpoint with every later step's
metrics bitwise equal to an uninterrupted 2-process run's. (The dead-process timeout alone is
tests/test_train_loop.py::test_a_dead_process_makes_the_other_fail_within_the_timeout.)"""
from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest

import test_train_loop as loop_test

cache_dir = loop_test.cache_dir  # The shared compilation cache fixture.
STEPS, EVERY = 24, 4
HEARTBEAT_S = 20
SETTINGS = {"num_train_steps": STEPS, "eval_every_steps": 0, "checkpoint.every_steps": EVERY,
            "checkpoint.keep": 10, "distributed.heartbeat_timeout_s": HEARTBEAT_S}


def _checkpointed_steps(workdir):
  root = os.path.join(workdir, "checkpoints")
  return sorted(int(s) for s in os.listdir(root) if s.isdigit()) if os.path.isdir(root) else []


def _kill_process_1_after_a_checkpoint(workdir, cache_dir):
  """Starts the pair, SIGKILLs process 1 once a checkpoint exists and a later step is logged;
  returns (launcher exit code, seconds from the kill to the launcher's exit, its output)."""
  launcher = subprocess.Popen(loop_test._launch_command(workdir, cache_dir, 2, 4, **SETTINGS),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  path = os.path.join(workdir, "metrics.jsonl")
  deadline = time.time() + 900
  while launcher.poll() is None:
    logged = loop_test.metrics(workdir) if os.path.exists(path) else {}
    saved = _checkpointed_steps(workdir)
    if saved and logged and max(logged) > saved[-1]:
      break
    assert time.time() < deadline, "the 2-process run never got past its first checkpoint"
    time.sleep(0.2)
  assert launcher.poll() is None, "the run finished before it could be killed; raise STEPS"
  os.kill(loop_test._child_with_process_id(launcher.pid, 1), signal.SIGKILL)
  killed_at = time.time()
  output, _ = launcher.communicate(timeout=HEARTBEAT_S + 240)
  return launcher.returncode, time.time() - killed_at, output


@pytest.mark.slow
def test_a_killed_pair_restarts_and_resumes_exactly(cache_dir, tmp_path):
  reference = str(tmp_path / "uninterrupted")
  loop_test._launch(reference, cache_dir, **SETTINGS)
  workdir = str(tmp_path / "killed")
  code, elapsed, output = _kill_process_1_after_a_checkpoint(workdir, cache_dir)
  assert code != 0, output[-3000:]
  assert elapsed < HEARTBEAT_S + 180, elapsed  # No hang: the survivor gives up in bounded time.
  killed_at_step = max(loop_test.metrics(workdir))
  assert killed_at_step < STEPS, "the kill came too late to test a resume"
  last_complete = _checkpointed_steps(workdir)[-1]

  result = loop_test._launch(workdir, cache_dir, **SETTINGS)  # The same command again.
  assert f"restored step {last_complete}" in result.stderr, result.stderr[-3000:]
  assert max(loop_test.metrics(workdir)) == STEPS
  # Every step after the restored checkpoint (the rerun's, which replace the killed run's
  # records of the same steps) equals the uninterrupted run's, bitwise.
  loop_test._assert_same_steps(workdir, reference, range(last_complete + 1, STEPS + 1))
  assert _checkpointed_steps(workdir)[-1] == STEPS
