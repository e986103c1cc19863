"""Runs one untrusted Python program in a subprocess with resource limits and no network.

Guarantees, per run:
- A fresh temporary directory is the program's cwd, HOME and TMPDIR; it (and the runner's own
  files, kept one level above) is removed afterwards, whatever happened.
- CPU time (RLIMIT_CPU), address space (RLIMIT_AS), file size (RLIMIT_FSIZE) and core dumps
  (RLIMIT_CORE = 0) are limited by `setrlimit` in the child before any user code runs; the wall
  clock is limited by the parent, which kills the child's whole process group (it runs in its
  own session). A process that leaves that session with setsid() is not tracked.
- Network, layer 1: when `unshare -n` (root) or `unshare -rn` (unprivileged user namespaces)
  works, the child runs in a new network namespace with no interfaces up, loopback included;
  nothing it starts (subprocesses, C code) can reach any host. Layer 2, always: before user
  code runs, socket creation for any family but AF_UNIX raises PermissionError in Python
  (`socket.socket` and `_socket.socket`). Layer 2 alone stops accidental network use by Python
  code, not a determined program (ctypes, subprocess): it is not a security boundary, and
  `Result.network_isolation` says which layers were active.
- Processes and files, in Python (like layer 2, not a security boundary): before user code
  runs, process creation (os.fork/system/exec*/spawn*, subprocess) raises PermissionError, so a
  fork bomb fails at its first fork; opening a file for writing, or removing, renaming or
  creating paths, outside the program's directory raises PermissionError.
- The child's environment is minimal (no API keys or tokens from the parent) and Python runs
  isolated (-I: no PYTHON* variables, no user site-packages); stdin is /dev/null.
- The outcome is always recorded, as one of STATUSES, with the stdout/stderr tails.
Statuses: passed (the program ran to the end), failed (AssertionError), timeout (wall clock or
CPU limit), memory (MemoryError, or a C-level allocation failure in stderr), crashed (any other
exception, an early exit, or a signal such as SIGSEGV). Assembling programs from model output
and tests is `code_exec`'s job.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time

STATUSES = ("passed", "failed", "timeout", "memory", "crashed")
_MEMORY_HINTS = ("MemoryError", "std::bad_alloc", "Cannot allocate memory", "out of memory")

# Executed by the child interpreter: limits, socket guard, then the program. It reports through
# a result file outside the program's cwd, so printing to stdout cannot fake a pass.
_RUNNER = r'''
import errno, json, resource, sys, traceback
cfg = json.load(open(sys.argv[1]))
_open = open
def _report(status, detail=""):
  with _open(cfg["result_path"], "w") as f:
    json.dump({"status": status, "detail": detail}, f)
cpu = int(cfg["cpu_s"])
resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
resource.setrlimit(resource.RLIMIT_AS, (cfg["memory_bytes"], cfg["memory_bytes"]))
resource.setrlimit(resource.RLIMIT_FSIZE, (cfg["file_bytes"], cfg["file_bytes"]))
resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
import _socket, socket
_Raw = _socket.socket
def _check(family, fileno):
  if fileno is None and family not in (_socket.AF_UNIX,):
    raise PermissionError(errno.EACCES, "network access is disabled in this sandbox")
class _GuardedRaw(_Raw):
  def __init__(self, family=-1, type=-1, proto=-1, fileno=None):
    _check(_socket.AF_INET if family == -1 else family, fileno)
    _Raw.__init__(self, family, type, proto, fileno)
_socket.socket = _socket.SocketType = _GuardedRaw
_py_init = socket.socket.__init__
def _guarded_init(self, family=-1, type=-1, proto=-1, fileno=None):
  _check(socket.AF_INET if family == -1 else family, fileno)
  _py_init(self, family, type, proto, fileno)
socket.socket.__init__ = _guarded_init
import builtins, io, os, subprocess
def _no_process(*args, **kwargs):
  raise PermissionError(errno.EPERM, "process creation is disabled in this sandbox")
for _name in ("fork", "forkpty", "system", "popen", "posix_spawn", "posix_spawnp", "spawnv",
              "spawnve", "spawnvp", "spawnvpe", "execv", "execve", "execvp", "execvpe", "execl",
              "execle", "execlp", "execlpe"):
  if hasattr(os, _name):
    setattr(os, _name, _no_process)
subprocess.Popen._execute_child = _no_process
_work = os.path.realpath(os.getcwd())
def _inside(path):
  if isinstance(path, int):
    return True  # An already-open descriptor.
  full = os.path.realpath(os.fsdecode(path))
  return full == _work or full.startswith(_work + os.sep) or full == os.devnull
def _outside(path):
  raise PermissionError(errno.EACCES, "writing outside the sandbox directory is disabled", path)
def _guarded_open(file, mode="r", *args, **kwargs):
  if any(c in mode for c in "wax+") and not _inside(file):
    _outside(file)
  return _open(file, mode, *args, **kwargs)
builtins.open = io.open = _guarded_open
_os_open = os.open
_WRITE = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
def _guarded_os_open(path, flags, *args, **kwargs):
  if flags & _WRITE and not _inside(path):
    _outside(path)
  return _os_open(path, flags, *args, **kwargs)
os.open = _guarded_os_open
def _guard_paths(name, count):
  real = getattr(os, name)
  def guarded(*args, **kwargs):
    for path in args[:count]:
      if not _inside(path):
        _outside(path)
    return real(*args, **kwargs)
  setattr(os, name, guarded)
for _name, _count in (("remove", 1), ("unlink", 1), ("rmdir", 1), ("mkdir", 1),
                      ("makedirs", 1), ("rename", 2), ("replace", 2), ("chmod", 1),
                      ("symlink", 2), ("link", 2), ("truncate", 1)):
  _guard_paths(_name, _count)
source = open(cfg["program_path"], encoding="utf-8").read()
scope = {"__name__": "__main__", "__builtins__": __builtins__}
try:
  exec(compile(source, "program.py", "exec"), scope)
except AssertionError as e:
  traceback.print_exc()
  _report("failed", "AssertionError: " + str(e)[:200])
except MemoryError:
  traceback.print_exc()
  _report("memory", "MemoryError")
except SystemExit as e:
  _report("crashed", "SystemExit(%r) before the end of the program" % (e.code,))
except BaseException as e:
  traceback.print_exc()
  _report("crashed", type(e).__name__ + ": " + str(e)[:200])
else:
  _report("passed")
'''


@dataclasses.dataclass(frozen=True)
class Limits:
  cpu_s: int = 5
  wall_s: float = 10.0
  memory_mb: int = 1024
  file_mb: int = 16
  tail_chars: int = 2000


@dataclasses.dataclass(frozen=True)
class Result:
  status: str
  detail: str
  returncode: int | None
  stdout_tail: str
  stderr_tail: str
  wall_s: float
  network_isolation: str  # "netns+socket-guard" or "socket-guard"

  @property
  def passed(self) -> bool:
    return self.status == "passed"

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)


@functools.lru_cache(maxsize=None)
def netns_prefix() -> tuple[str, ...]:
  """The argv prefix that runs a command in a fresh network namespace, or () when none works."""
  unshare = shutil.which("unshare")
  if unshare is None:
    return ()
  for flags in (("-n",), ("-r", "-n")):
    try:
      probe = subprocess.run([unshare, *flags, "true"], capture_output=True, timeout=10,
                             check=False)
    except (OSError, subprocess.SubprocessError):
      continue
    if probe.returncode == 0:
      return (unshare, *flags)
  logging.warning("sandbox: `unshare -n` is not permitted here; only the Python socket guard "
                  "blocks network access")
  return ()


def _tail(path: str, chars: int) -> str:
  try:
    with open(path, "rb") as f:
      f.seek(0, os.SEEK_END)
      f.seek(max(0, f.tell() - 4 * chars))
      return f.read().decode("utf-8", "replace")[-chars:]
  except OSError:
    return ""


def _rmtree(path: str) -> None:
  """Removes a tree even where the program took away its own permissions."""
  def make_writable(func, p, _):
    try:
      os.chmod(os.path.dirname(p), stat.S_IRWXU)
      os.chmod(p, stat.S_IRWXU)
      func(p)
    except OSError:
      pass
  shutil.rmtree(path, onerror=make_writable)


def _classify(returncode: int, timed_out: bool, elapsed: float, report: dict | None,
              stderr: str, limits: Limits) -> tuple[str, str]:
  if timed_out:
    return "timeout", f"wall-clock limit of {limits.wall_s:g}s"
  if returncode < 0:
    sig = -returncode
    name = signal.Signals(sig).name if sig in signal.valid_signals() else str(sig)
    if sig == signal.SIGXCPU:
      return "timeout", f"CPU limit of {limits.cpu_s}s ({name})"
    if sig == signal.SIGKILL and elapsed >= limits.cpu_s:
      # The kernel's SIGKILL at the hard CPU limit, one second after an ignored SIGXCPU.
      return "timeout", f"CPU limit of {limits.cpu_s}s (SIGKILL at the hard limit)"
    if any(h in stderr for h in _MEMORY_HINTS):
      return "memory", f"killed by {name} after an allocation failure"
    return "crashed", f"killed by {name}"
  if isinstance(report, dict) and report.get("status") in STATUSES:
    return report["status"], str(report.get("detail", ""))
  if any(h in stderr for h in _MEMORY_HINTS):
    return "memory", f"exit code {returncode} after an allocation failure"
  return "crashed", f"exit code {returncode} without reaching the end of the program"


def _child_env(work: str) -> dict[str, str]:
  return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": work, "TMPDIR": work,
          "LANG": "C.UTF-8", "PYTHONHASHSEED": "0", "PYTHONDONTWRITEBYTECODE": "1",
          "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def run_python(program: str, limits: Limits = Limits(), *, network_namespace: bool = True,
               python: str | None = None) -> Result:
  """Runs `program` (Python source) in the sandbox; never raises on the program's behaviour.

  `network_namespace=False` skips layer 1 (used by tests of layer 2 alone).
  """
  root = tempfile.mkdtemp(prefix="tj_sandbox_")
  try:
    work = os.path.join(root, "work")
    os.mkdir(work)
    paths = {name: os.path.join(root, name) for name in
             ("runner.py", "program.py", "config.json", "result.json", "stdout", "stderr")}
    with open(paths["runner.py"], "w", encoding="utf-8") as f:
      f.write(_RUNNER)
    with open(paths["program.py"], "w", encoding="utf-8") as f:
      f.write(program)
    with open(paths["config.json"], "w", encoding="utf-8") as f:
      json.dump({"cpu_s": max(1, int(limits.cpu_s)), "memory_bytes": limits.memory_mb << 20,
                 "file_bytes": limits.file_mb << 20, "result_path": paths["result.json"],
                 "program_path": paths["program.py"]}, f)
    prefix = netns_prefix() if network_namespace else ()
    argv = [*prefix, python or sys.executable, "-I", paths["runner.py"], paths["config.json"]]
    return _execute(argv, work, paths, limits,
                    "netns+socket-guard" if prefix else "socket-guard")
  finally:
    _rmtree(root)


def _execute(argv: list[str], work: str, paths: dict[str, str], limits: Limits,
             isolation: str) -> Result:
  start = time.monotonic()
  with open(paths["stdout"], "wb") as out, open(paths["stderr"], "wb") as err:
    proc = subprocess.Popen(argv, cwd=work, env=_child_env(work), stdin=subprocess.DEVNULL,
                            stdout=out, stderr=err, start_new_session=True)
    timed_out = False
    try:
      proc.wait(timeout=limits.wall_s)
    except subprocess.TimeoutExpired:
      timed_out = True
    finally:
      try:
        os.killpg(proc.pid, signal.SIGKILL)  # Also reaps whatever the program spawned.
      except (ProcessLookupError, PermissionError):
        pass
      proc.wait()
  elapsed = time.monotonic() - start
  report = None
  if os.path.exists(paths["result.json"]):
    try:
      with open(paths["result.json"], encoding="utf-8") as f:
        report = json.load(f)
    except (OSError, ValueError):
      report = None
  stderr = _tail(paths["stderr"], limits.tail_chars)
  status, detail = _classify(proc.returncode, timed_out, elapsed, report, stderr, limits)
  return Result(status, detail, proc.returncode, _tail(paths["stdout"], limits.tail_chars),
                stderr, elapsed, isolation)
