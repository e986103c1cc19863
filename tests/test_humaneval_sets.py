"""Human-eval sets: seeded AST bug mutations; mutants fail the tests, originals pass."""
from __future__ import annotations

import ast
import json

import pytest

from treasure_jax.annotate import code_mutations
from treasure_jax.annotate import humaneval_sets
from treasure_jax.eval import code_exec
from treasure_jax.eval import sandbox

SOURCE = '''def f(xs, n):
    """Doc: keep < and + here."""  # prompt line, never mutated
    total = 0
    for i in range(len(xs)):  # loop
        if xs[i] < n and i != 3:
            total += xs[i] - 1
    return True if total >= 0 else False
'''
LIMIT = 4  # HumanEval/0-3: has_close_elements ... below_zero; /2 has no mutation site.


def read_jsonl(path) -> list[dict]:
  with open(path, encoding="utf-8") as f:
    return [json.loads(line) for line in f]


@pytest.mark.parametrize("operator,expected", [
    ("flip_comparison", {("xs[i] < n", "xs[i] > n"), ("i != 3", "i == 3"),
                         ("total >= 0", "total <= 0")}),
    ("boundary", {("xs[i] < n", "xs[i] <= n"), ("total >= 0", "total > 0")}),
    ("off_by_one_range", {("len(xs)", "len(xs) + 1"), ("len(xs)", "len(xs) - 1")}),
    ("swap_arith", {("total += xs[i] - 1", "total -= xs[i] - 1"), ("xs[i] - 1", "xs[i] + 1")}),
    ("negate_condition", {("xs[i] < n and i != 3", "not (xs[i] < n and i != 3)"),
                          ("total >= 0", "not (total >= 0)")}),
    ("swap_bool_op", {("xs[i] < n and i != 3", "xs[i] < n or i != 3")}),
    ("return_constant", set()),  # `return <IfExp>` is not a constant.
])
def test_each_operator_finds_its_sites_and_edits_one_span(operator, expected):
  sites = code_mutations.sites(SOURCE, operator, first_line=3)
  assert {(ast.get_source_segment(SOURCE, n), t) for n, t in sites} == expected
  mutant = code_mutations.mutate(SOURCE, operator, seed=0, first_line=3)
  if not expected:
    assert mutant is None
    return
  assert mutant.operator == operator and (mutant.original, mutant.mutated) in expected
  # Exactly one line changes; comments and the prompt lines are untouched.
  before, after = SOURCE.splitlines(), mutant.source.splitlines()
  changed = [i for i, (a, b) in enumerate(zip(before, after)) if a != b]
  assert changed == [mutant.line - 1] and len(before) == len(after)
  assert "# loop" in mutant.source and after[:2] == before[:2]
  ast.parse(mutant.source)


def test_return_constant_and_determinism():
  src = "def g(x):\n    if x:\n        return 0\n    return 'ab'\n"
  found = {(n.lineno, t) for n, t in code_mutations.sites(src, "return_constant")}
  assert found == {(3, "1"), (4, "''")}
  a = code_mutations.mutants(SOURCE, seed="7:task", first_line=3)
  b = code_mutations.mutants(SOURCE, seed="7:task", first_line=3)
  assert [m.source for m in a] == [m.source for m in b]
  assert len({m.source for m in a}) == len(a) >= 5
  assert code_mutations.mutants(SOURCE, seed=0, first_line=99) == []


@pytest.fixture(scope="module")
def built(tmp_path_factory):
  out = tmp_path_factory.mktemp("humaneval")
  summary = humaneval_sets.build(out, seed=0, limit=LIMIT, workers=2)
  return out, summary


def test_build_counts_and_schema(built):
  out, summary = built
  codegen = read_jsonl(out / "humaneval_codegen.jsonl")
  codefix = read_jsonl(out / "humaneval_codefix.jsonl")
  assert summary["problems"] == summary["originals_passed"] == len(codegen) == LIMIT
  assert summary["codefix"] == len(codefix) >= 8
  assert sum(summary["mutants_kept"].values()) == len(codefix)
  assert (sum(summary["mutants_generated"].values())
          == len(codefix) + summary["mutants_dropped"]["tests_pass"])
  for item in codegen:
    assert item["markers"] == {"task": "CodeGeneration", "domain": "Code",
                               "code_type": "python", "lang": "English"}
    assert item["code_prefix"] in item["prompt"]
  assert {i["markers"]["task"] for i in codefix} == {"CodeFix"}
  assert len({i["id"] for i in codefix}) == len(codefix)
  primaries = [i["task_id"] for i in codefix if i["primary"]]
  assert sorted(primaries) == sorted({i["task_id"] for i in codefix})
  for item in codefix:
    assert item["buggy_code"] in item["prompt"] and item["buggy_code"] != item["canonical_solution"]
    assert item["mutant_status"] in ("failed", "crashed", "timeout", "memory")
    assert item["buggy_code"].startswith(item["code_prefix"])  # The bug is in the body only.


def test_mutants_fail_and_originals_pass_through_the_evaluator(built):
  """Independent check with eval.code_exec, the harness that scores model answers."""
  out, _ = built
  codefix = read_jsonl(out / "humaneval_codefix.jsonl")
  sample = [i for i in codefix if i["primary"]]
  fixed = [dict(i, response=f"```python\n{i['canonical_solution']}\n```") for i in sample]
  buggy = [dict(i, response=f"```python\n{i['buggy_code']}\n```") for i in sample]
  results = code_exec.run(fixed + buggy, limits=humaneval_sets.DEFAULT_LIMITS, max_workers=2)
  assert [r["passed"] for r in results] == [True] * len(sample) + [False] * len(sample)


def test_second_build_uses_the_cache(built, monkeypatch):
  out, first = built
  monkeypatch.setattr(sandbox, "run_python", lambda *a, **k: pytest.fail("ran a program"))
  again = humaneval_sets.build(out, seed=0, limit=LIMIT)
  assert again["cache_hits"] == LIMIT + sum(first["mutants_generated"].values())
  assert {k: v for k, v in again.items() if k not in ("cache_hits", "wall_s")} == {
      k: v for k, v in first.items() if k not in ("cache_hits", "wall_s")}
