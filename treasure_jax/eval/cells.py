"""One sweep cell's records: evaluation examples × a marker setting → per-example result dicts.

A task kind says what a cell measures (records follow the schema in `treasure_jax.eval`):

  markers     marker inference on annotated examples: reference markers, generated markers and
              their log-probabilities (accuracy, calibration)
  length      length control: each example gets a word limit N (a config list, cycled, or the
              reference response's word count) as `length_target`
  likelihood  teacher-forced NLL of the reference response (`likelihood`), no generation
  code        human-eval style items (tests, entry_point, code_prefix), scored by `code_exec`

A setting says what the prompt carries: "none" (nothing; a marked model still writes its list,
so in generation it equals "inferred", while in likelihood it means no list on either side),
"inferred" (no markers; the model writes its list), "nl_instruction" (the length limit in words, "Answer in at most N words."),
"fixed:cat[,cat=value...]" (prompt-side markers; a bare category takes the example's reference
value, or N for length_tokens in a length task), "constrained:..." (fixed, and the generated
list restricted to the taxonomy). A baseline checkpoint (trained without markers) runs only
none / nl_instruction, decoded without parsing. Running cells, skipping finished ones and the
report are `sweep`'s job; generation is the `generate_fn` the sweep passes in.
"""
from __future__ import annotations

import dataclasses
import itertools
import json
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from treasure_jax.annotate import text_stats
from treasure_jax.decode import modes
from treasure_jax.eval import code_exec
from treasure_jax.eval import judge as judge_lib
from treasure_jax.eval import metrics as metrics_lib
from treasure_jax.markers import stats
from treasure_jax.markers import taxonomy as taxonomy_lib

TASK_KINDS = ("markers", "length", "likelihood", "code")
SETTING_KINDS = ("none", "inferred", "nl_instruction", "fixed", "constrained")
BASELINE_SETTINGS = ("none", "nl_instruction")
# A mode's prompt plus conversation; what the sweep's generator takes per example.
Request = tuple[list[dict[str, str]], modes.Mode]
# (requests, max_new_tokens, the task's decode config) -> results in request order.
GenerateFn = Callable[[Sequence[Request], int, Any], list[modes.Result]]


@dataclasses.dataclass(frozen=True)
class Setting:
  """A parsed setting: `markers` maps a category to a value, or to None (the example's)."""
  label: str
  kind: str
  markers: Mapping[str, Any] = dataclasses.field(default_factory=dict)


def parse_setting(spec: str, tax: taxonomy_lib.Taxonomy, where: str) -> Setting:
  """`Setting` of "kind" or "kind:cat,cat=value"; errors name `where` and the allowed values."""
  kind, _, rest = spec.partition(":")
  if kind not in SETTING_KINDS:
    raise ValueError(f"{where}: setting {spec!r}: kind {kind!r} is not one of "
                     f"{', '.join(SETTING_KINDS)}")
  markers: dict[str, Any] = {}
  for item in filter(None, (s.strip() for s in rest.split(","))):
    name, eq, value = item.partition("=")
    try:
      category = tax.category(name)
      markers[name] = category.convert(value) if eq else None
    except ValueError as e:  # MarkerError is a ValueError.
      raise ValueError(f"{where}: setting {spec!r}: {e}") from None
  if kind == "fixed" and not markers:
    raise ValueError(f"{where}: setting {spec!r} names no category (fixed:task, "
                     "fixed:quality_bucket=1, ...)")
  if kind in ("none", "inferred", "nl_instruction") and markers:
    raise ValueError(f"{where}: setting {spec!r}: {kind!r} takes no markers")
  return Setting(spec, kind, markers)


def check_task(where: str, task: Any, tax: taxonomy_lib.Taxonomy) -> None:
  """Start-up checks of a task section (`sweep_config.TaskConfig`); errors name `where`."""
  if task.kind not in TASK_KINDS:
    raise ValueError(f"{where}.kind: {task.kind!r} is not one of {', '.join(TASK_KINDS)}")
  if not task.settings or len(set(task.settings)) != len(task.settings):
    raise ValueError(f"{where}.settings: {task.settings!r} must be non-empty and distinct")
  limits = tuple(task.length_limits)
  if any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in limits):
    raise ValueError(f"{where}.length_limits: {limits!r} must be positive integers")
  if task.every_limit and (task.kind != "length" or len(limits) < 2
                           or len(set(limits)) != len(limits)):
    raise ValueError(f"{where}.every_limit: needs a length task with at least 2 distinct "
                     f"length_limits (got kind {task.kind!r}, limits {limits})")
  for spec in task.settings:
    setting = parse_setting(spec, tax, f"{where}.settings")
    if setting.kind == "nl_instruction" and task.kind != "length":
      raise ValueError(f"{where}.settings: nl_instruction needs a length task")
    if (task.every_limit and setting.kind not in ("none", "nl_instruction")
        and "length_tokens" not in setting.markers):
      raise ValueError(f"{where}.settings: {spec!r} never tells the model N, so every_limit "
                       "would decode the same prompt once per limit; use none, "
                       "nl_instruction or a setting with length_tokens")
  for category in task.categories:
    if category not in tax:
      raise ValueError(f"{where}.categories: unknown category {category!r}")
  try:
    task.nl_template.format(n=1)
  except (KeyError, IndexError) as e:
    raise ValueError(f"{where}.nl_template: only {{n}} may be used ({e})") from None


def load_examples(path: str, *, kind: str, limit: int, where: str) -> list[dict[str, Any]]:
  """Records of a task file (annotated JSONL or human-eval items); the first `limit` (0: all).

  Code items marked `primary: false` (extra CodeFix mutants of a problem) are left out. A chat
  that ends with the assistant turn (the annotate format) becomes messages + `response`.
  """
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{where}.data: {path!r} does not exist")
  rows = (obj for _, obj in stats.read_jsonl(path))
  if kind == "code":
    rows = (r for r in rows if r.get("primary", True))
  examples = list(itertools.islice(rows, limit or None))
  for i, ex in enumerate(examples):
    where = f"{path}: example {i + 1} (id={ex.get('id')!r})"
    ex.setdefault("id", f"{os.path.basename(path)}:{i + 1}")
    messages = ex.get("messages")
    if messages is not None:
      if not isinstance(messages, list) or not messages or not all(
          isinstance(m, dict) and isinstance(m.get("content"), str) for m in messages):
        raise ValueError(f"{where}: messages must be a non-empty list of {{role, content}}")
      # The annotate format ends a chat with the assistant turn the markers describe; the
      # data package's ends it with the user turn and keeps the answer in `response`.
      if messages[-1].get("role") == "assistant" and "response" not in ex:
        ex["response"], ex["messages"] = messages[-1]["content"], messages[:-1]
      if not ex["messages"] or ex["messages"][-1].get("role") != "user":
        raise ValueError(f"{where}: the conversation does not end with a user turn")
    elif not isinstance(ex.get("prompt"), str):
      raise ValueError(f"{where}: no prompt or messages")
  return examples


def conversation(example: Mapping[str, Any]) -> list[dict[str, str]]:
  """The example's turns up to and including its last user turn."""
  if "messages" in example:
    return [{"role": m["role"], "content": m["content"]} for m in example["messages"]]
  return [{"role": "user", "content": example["prompt"]}]


def length_targets(examples: Sequence[Mapping[str, Any]], limits: Sequence[int]) -> list[int]:
  """N per example: `limits` cycled, else the reference response's word count (at least 1)."""
  if limits:
    return [int(limits[i % len(limits)]) for i in range(len(examples))]
  return [max(1, text_stats.count_words(ex.get("response", ""))) for ex in examples]


def at_every_limit(examples: Sequence[Mapping[str, Any]], limits: Sequence[int]
                   ) -> tuple[list[dict[str, Any]], list[int]]:
  """(examples, N per example): each example once per limit, its id `<id>@<N>`."""
  out, targets = [], []
  for ex in examples:
    for n in limits:
      out.append({**ex, "id": f"{ex['id']}@{int(n)}"})
      targets.append(int(n))
  return out, targets


def given_markers(setting: Setting, example: Mapping[str, Any],
                  target: int | None) -> dict[str, Any]:
  """The prompt-side markers of one example; a category the example lacks is not given."""
  reference = example.get("markers") or {}
  out = {}
  for name, value in setting.markers.items():
    if value is None:
      value = target if name == "length_tokens" and target is not None else reference.get(name)
    if value is not None:
      out[name] = value
  return out


def base_record(example: Mapping[str, Any], setting: Setting, given: Mapping[str, Any],
                target: int | None) -> dict[str, Any]:
  turns = conversation(example)
  record: dict[str, Any] = {"id": example["id"], "setting": setting.label,
                            "prompt": turns[-1]["content"], "markers_given": dict(given),
                            "reference_markers": dict(example.get("markers") or {})}
  if len(turns) > 1:
    record["context"] = turns[:-1]
  if isinstance(example.get("response"), str):
    record["reference_response"] = example["response"]
  if target is not None:
    record["length_target"] = {"length_tokens": target}
  for field in ("tests", "entry_point", "code_prefix"):
    if field in example:
      record[field] = example[field]
  return record


def requests(examples: Sequence[Mapping[str, Any]], setting: Setting, *, task_kind: str,
             targets: Sequence[int | None], tax: taxonomy_lib.Taxonomy, baseline: bool,
             nl_template: str, force_prefix: bool) -> tuple[list[dict[str, Any]], list[Request]]:
  """(partial records, generation requests) of one generation cell, in example order."""
  records, reqs = [], []
  for example, target in zip(examples, targets):
    given = given_markers(setting, example, target)
    turns = conversation(example)
    if setting.kind == "nl_instruction":
      turns[-1]["content"] += "\n\n" + nl_template.format(n=target)
    if baseline:
      mode = modes.make("none", None, tax)
    elif setting.kind in ("fixed", "constrained") and given:
      mode = modes.make(setting.kind, given, tax, force_prefix=force_prefix)
    else:
      mode = modes.make("constrained" if setting.kind == "constrained" else "inferred", None,
                        tax)
    turns[-1]["content"] = modes.prompt_text(mode, turns[-1]["content"], tax)
    records.append(base_record(example, setting, given, target))
    reqs.append((turns, mode))
  return records, reqs


def add_results(records: Sequence[dict[str, Any]], results: Sequence[modes.Result]
                ) -> list[dict[str, Any]]:
  """Records with the generation's response, parsed markers and their log-probabilities."""
  out = []
  for record, result in zip(records, results, strict=True):
    record = dict(record, response=result.response, completion=result.completion,
                  markers_generated=dict(result.markers), problems=list(result.problems),
                  num_tokens=result.num_tokens, stop_reason=result.stop_reason)
    if result.marker_logprobs:
      record["logprob_of_chosen"] = dict(result.marker_logprobs)
    out.append(record)
  return out


def score_code(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
  """`scores.pass` from running each answer against its tests in the sandbox."""
  results = code_exec.run(records)
  out = metrics_lib.with_scores(records, "pass", [r["passed"] for r in results])
  for record, result in zip(out, results):
    record["exec_status"] = result["status"]
  return out


def score(records: Sequence[dict[str, Any]], *, task_kind: str, judged: bool,
          judge_cfg: judge_lib.JudgeConfig | None, scorer: Any | None,
          opponents: Mapping[str, str]) -> tuple[list[dict[str, Any]], dict[str, str]]:
  """(records with scores, notes on unavailable scores): pass@1 for code, and with `judged`
  the judge and reward model; `opponents` (id -> a baseline model's answer) face the reward
  model where given."""
  records = score_code(records) if task_kind == "code" else list(records)
  if not judged:
    return records, {k: "judge and reward model not enabled for this task"
                     for k in ("judge_win", "reward_win")}
  records = [dict(r, baseline_response=opponents[str(r["id"])]) if str(r["id"]) in opponents
             else r for r in records]
  return score_judges(records, judge_cfg, scorer)


def judge_text(record: Mapping[str, Any]) -> str:
  """The prompt a judge sees: earlier turns, if any, then the last user turn."""
  turns = list(record.get("context") or []) + [{"role": "user", "content": record["prompt"]}]
  if len(turns) == 1:
    return record["prompt"]
  return "\n\n".join(f"{t['role']}: {t['content']}" for t in turns)


def score_judges(records: Sequence[dict[str, Any]], judge_cfg: judge_lib.JudgeConfig | None,
                 scorer: Any | None) -> tuple[list[dict[str, Any]], dict[str, str]]:
  """Judge win rate vs the reference and reward-model scores (vs `baseline_response` where the
  sweep filled it, else vs the reference); notes say why a score is unavailable."""
  notes: dict[str, str] = {}
  view = [dict(r, prompt=judge_text(r)) for r in records]
  out = list(records)
  if all(isinstance(r.get("reference_response"), str) for r in view):
    judged = judge_lib.pairwise(view, judge_cfg)
  else:
    judged = {"available": False, "reason": "an example has no reference response"}
  if judged.get("per_example"):
    out = metrics_lib.with_scores(out, "judge_win", [e["score"] for e in judged["per_example"]])
  if not judged["available"]:
    notes["judge_win"] = judged["reason"]
  for r in view:
    r.setdefault("baseline_response", r.get("reference_response"))
  rewarded = judge_lib.reward_compare(view, scorer)
  if rewarded.get("per_example"):
    per = rewarded["per_example"]
    out = metrics_lib.with_scores(out, "reward_win", [e["score"] for e in per])
    out = metrics_lib.with_scores(out, "reward", [e["reward"] for e in per])
  if not rewarded["available"]:
    notes["reward_win"] = notes["reward"] = rewarded["reason"]
  return out, notes


def examples_for_report(records: Sequence[Mapping[str, Any]], n: int,
                        max_chars: int = 300) -> list[dict[str, Any]]:
  """The first `n` records, shortened, for the report's example generations."""
  def cut(text: Any) -> Any:
    return text[:max_chars] + " …" if isinstance(text, str) and len(text) > max_chars else text
  keys = ("id", "prompt", "markers_given", "markers_generated", "response", "nll_sum",
          "n_tokens", "scores")
  return [{k: cut(r[k]) for k in keys if k in r} for r in records[:n]]


def _inline(value: Any) -> str:
  """One Markdown table cell: line breaks shown as ⏎, other control characters dropped."""
  text = json.dumps(value, ensure_ascii=False) if not isinstance(value, str) else value
  text = " ⏎ ".join(text.splitlines())
  text = "".join(c if c.isprintable() else " " for c in text)
  return text.replace("|", "\\|").replace("`", "'")


def examples_markdown(report_cells: Sequence[Mapping[str, Any]]) -> str:
  """A report section: each cell's example generations, grouped by task, one table per cell."""
  lines = ["## Example generations", ""]
  by_task: dict[str, list[Mapping[str, Any]]] = {}
  for cell in report_cells:
    by_task.setdefault(cell["task"], []).append(cell)
  for task, group in by_task.items():
    lines += [f"### {task}", ""]
    for cell in group:
      examples = cell.get("examples") or []
      lines += [f"**{cell['checkpoint']} / {cell['setting']}**", ""]
      if not examples:
        lines += ["(no examples)", ""]
        continue
      keys = [k for k in ("id", "prompt", "markers_given", "markers_generated", "response",
                          "nll_sum", "scores") if any(k in e for e in examples)]
      lines += ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
      lines += ["| " + " | ".join(_inline(e.get(k, "")) for k in keys) + " |" for e in examples]
      lines.append("")
  return "\n".join(lines).rstrip() + "\n"
