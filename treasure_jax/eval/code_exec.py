"""Code pass@k: runs generated code against human-eval style tests in the sandbox.

A code record (CodeGeneration, CodeFix, ...) has `id`, `tests` (code defining
`check(candidate)`), `entry_point` (the function under test), the model's `response`, and
optionally `code_prefix` (code placed before the answer: a HumanEval prompt for completion-style
answers, or the imports the tests expect). The program is

  code_prefix + extracted code + tests + f"check({entry_point})"

where the extracted code is the first fenced Python block of the response (or the text after
an unclosed fence), else the whole response. Each sample runs in its own sandboxed subprocess
(`sandbox`), at most `max_workers` at once. Several samples per id give the unbiased pass@k
estimate of Chen et al. (2021). Generating the responses is the sweep's job.
"""
from __future__ import annotations

import concurrent.futures
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

from treasure_jax.eval import sandbox

_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+.-]*)[^\n]*\n(.*?)(?:```|\Z)", re.DOTALL)
_PYTHON_TAGS = ("", "python", "py", "python3")
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


def extract_code(response: str) -> str:
  """The code in a model response: the first Python (or untagged) fenced block, else all."""
  blocks = [(tag.lower(), body) for tag, body in _FENCE.findall(response)]
  for tag, body in blocks:
    if tag in _PYTHON_TAGS:
      return body
  return response if not blocks else blocks[0][1]


def build_program(record: Mapping, index: int = 0, *, response_field: str = "response") -> str:
  """The program one sample runs; bad records raise ValueError naming the record and field."""
  where = f"code record {index} (id={record.get('id')!r})"
  for field in ("tests", "entry_point", response_field):
    if not isinstance(record.get(field), str):
      raise ValueError(f"{where}: {field} must be a string, got "
                       f"{type(record.get(field)).__name__}")
  if not _IDENTIFIER.match(record["entry_point"]):
    raise ValueError(f"{where}: entry_point {record['entry_point']!r} is not an identifier")
  if "def check" not in record["tests"]:
    raise ValueError(f"{where}: tests do not define check(candidate)")
  prefix = record.get("code_prefix") or ""
  code = extract_code(record[response_field])
  return (f"{prefix}\n{code}\n\n{record['tests']}\n\n"
          f"check({record['entry_point']})\n")


def run(records: Sequence[Mapping], *, limits: sandbox.Limits = sandbox.Limits(),
        max_workers: int | None = None, response_field: str = "response"
        ) -> list[dict[str, Any]]:
  """Runs every sample; one result per record, in order.

  Result: {"id", "status" (sandbox.STATUSES), "passed", "detail", "stderr_tail", "wall_s",
  "network_isolation"}. `max_workers` defaults to min(4, cpu count).
  """
  programs = [build_program(r, i, response_field=response_field)
              for i, r in enumerate(records)]
  workers = max_workers or min(4, os.cpu_count() or 1)
  with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
    outcomes = list(pool.map(lambda p: sandbox.run_python(p, limits), programs))
  return [{"id": r.get("id"), "status": o.status, "passed": o.passed, "detail": o.detail,
           "stderr_tail": o.stderr_tail, "wall_s": o.wall_s,
           "network_isolation": o.network_isolation} for r, o in zip(records, outcomes)]


def pass_at_k(n: int, c: int, k: int) -> float:
  """Unbiased pass@k from n samples of which c passed: 1 - C(n-c, k) / C(n, k)."""
  if not 0 <= c <= n or k < 1:
    raise ValueError(f"pass_at_k: need 0 <= c <= n and k >= 1, got n={n}, c={c}, k={k}")
  if n - c < k:
    return 1.0
  product = 1.0
  for i in range(n - c + 1, n + 1):  # Product form: no huge binomials.
    product *= 1.0 - k / i
  return 1.0 - product


def summarize(results: Sequence[Mapping], ks: Sequence[int] = (1,)) -> dict[str, Any]:
  """{"pass@k" for k in ks, "n_problems", "n_samples", "status_counts"} over results by id.

  pass@k averages over the problems that have at least k samples (all of them for k = 1).
  """
  if not results:
    return {"available": False, "reason": "no code samples"}
  by_id: dict[Any, list[bool]] = {}
  counts = dict.fromkeys(sandbox.STATUSES, 0)
  for r in results:
    by_id.setdefault(r["id"], []).append(bool(r["passed"]))
    counts[r["status"]] += 1
  out: dict[str, Any] = {"available": True, "n_problems": len(by_id),
                         "n_samples": len(results), "status_counts": counts}
  for k in ks:
    scored = [pass_at_k(len(s), sum(s), k) for s in by_id.values() if len(s) >= k]
    out[f"pass@{k}"] = sum(scored) / len(scored) if scored else None
  return out
