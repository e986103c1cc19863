"""Stage bookkeeping of the demo: one marker file per finished stage, specs, timings.

A stage is a named unit of work with a `spec` (the JSON-ready settings it depends on). When it
starts, `stages/<name>.started.json` records the spec; when it finishes, `stages/<name>.json`
records the spec, its result, wall and CPU time. A rerun skips a finished stage with the same
spec and resumes an unfinished one (a training run from its checkpoint). A stage whose spec
changed is done again, unless its `guard` path holds outputs (a training run's checkpoints):
resuming or reusing that under other settings would mix two experiments, so the workdir is
refused before anything runs, naming the stage and the setting that differs.
What a stage does is the caller's business.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import resource
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

SUBDIR = "stages"


@dataclasses.dataclass(frozen=True)
class Stage:
  """`fn()` returns the stage's JSON-ready result (kept in its marker file); `guard`: a path
  whose existence means the stage's outputs cannot be redone under another spec."""
  name: str
  spec: Mapping[str, Any]
  fn: Callable[[], Any]
  guard: str = ""

  @property
  def digest(self) -> str:
    blob = json.dumps(self.spec, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]


@dataclasses.dataclass
class Record:
  """One stage's outcome in this invocation: "ran" or "skipped" (finished earlier)."""
  name: str
  status: str
  wall_s: float
  cpu_s: float
  result: Any


def _path(workdir: str, name: str, started: bool = False) -> str:
  safe = name.replace("/", "__")
  return os.path.join(workdir, SUBDIR, f"{safe}{'.started' if started else ''}.json")


def _read(path: str) -> dict[str, Any] | None:
  if not os.path.isfile(path):
    return None
  with open(path, encoding="utf-8") as f:
    return json.load(f)


def _write(path: str, obj: Mapping[str, Any]) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  tmp = f"{path}.tmp{os.getpid()}"
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump(obj, f, indent=1, ensure_ascii=False, default=str)
  os.replace(tmp, path)


def check(workdir: str, stages: Sequence[Stage]) -> None:
  """Raises ValueError if a guarded stage was started or finished under another spec."""
  for stage in stages:
    if not _has_outputs(stage.guard):
      continue
    for started in (False, True):
      saved = _read(_path(workdir, stage.name, started))
      if saved is not None and saved.get("digest") != stage.digest:
        what = "started" if started else "finished"
        raise ValueError(
            f"{workdir}: stage {stage.name!r} was {what} with other settings "
            f"({_path(workdir, stage.name, started)}: {_diff(saved.get('spec', {}), stage.spec)})"
            "; use another --workdir, or delete this one to start over")


def _has_outputs(path: str) -> bool:
  """A file, or a directory with something in it (an empty one is made before any output)."""
  if not path or not os.path.exists(path):
    return False
  return not os.path.isdir(path) or bool(os.listdir(path))


def _diff(old: Mapping[str, Any], new: Mapping[str, Any], prefix: str = "") -> str:
  """The first differing key, e.g. "train.num_train_steps: 12 -> 150"."""
  for key in sorted(set(old) | set(new)):
    a, b = old.get(key), new.get(key)
    if isinstance(a, Mapping) and isinstance(b, Mapping):
      inner = _diff(a, b, f"{prefix}{key}.")
      if inner:
        return inner
    elif json.dumps(a, default=str) != json.dumps(b, default=str):
      return f"{prefix}{key}: {a!r} -> {b!r}"
  return ""


def finished(workdir: str, stage: Stage) -> dict[str, Any] | None:
  saved = _read(_path(workdir, stage.name))
  return saved if saved is not None and saved.get("digest") == stage.digest else None


def forget(workdir: str, stage: Stage) -> None:
  """Removes `stage`'s marker files, so the next `run` does it again."""
  for started in (False, True):
    path = _path(workdir, stage.name, started)
    if os.path.exists(path):
      os.remove(path)


def _cpu_s() -> float:
  """CPU seconds of this process and its finished children (user + system)."""
  own = resource.getrusage(resource.RUSAGE_SELF)
  kids = resource.getrusage(resource.RUSAGE_CHILDREN)
  return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def run(workdir: str, stage: Stage) -> Record:
  """Runs `stage` unless it finished earlier; writes its marker files."""
  saved = finished(workdir, stage)
  if saved is not None:
    return Record(stage.name, "skipped", saved["wall_s"], saved["cpu_s"], saved["result"])
  head = {"stage": stage.name, "digest": stage.digest, "spec": stage.spec}
  _write(_path(workdir, stage.name, started=True),
         {**head, "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
  wall, cpu = time.perf_counter(), _cpu_s()
  result = stage.fn()
  wall, cpu = time.perf_counter() - wall, _cpu_s() - cpu
  _write(_path(workdir, stage.name), {
      **head, "result": result, "wall_s": round(wall, 1), "cpu_s": round(cpu, 1),
      "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
  return Record(stage.name, "ran", round(wall, 1), round(cpu, 1), result)
