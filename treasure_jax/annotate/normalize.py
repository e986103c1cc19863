"""Repairs of real-world chat records before validation, each one counted by kind, never silent.

Shared chat dumps rarely satisfy `records`' strict rules (system first, then user/assistant
alternating, ending with the assistant): conversations open with the assistant's greeting, a
turn was sent twice, a message is empty, roles are "human"/"gpt" and ShareGPT writes
`{"conversations": [{"from": ..., "value": ...}]}`. `repair(record, cfg)` returns the record
rewritten into the strict form and the repairs it made, {kind: count}:

  sharegpt_keys          `conversations` -> `messages`, `from`/`value` -> `role`/`content`
  content_parts          OpenAI content parts ([{"type": "text", "text": ...}]) joined as text
  role_renamed           human/gpt/bot/model/ai/chatgpt/"User"... -> user/assistant/system
  dropped_empty_turn     a turn whose content is empty or whitespace
  merged_same_role       consecutive turns of one role joined with `cfg.separator`
  dropped_leading_assistant  assistant turns before the first user turn (system kept)
  dropped_trailing_user  user turns after the last assistant turn (records without `response`)

System prompts are kept: leading system turns merge into one; a system turn later in the
conversation is left alone (and rejected by validation). What cannot be repaired (a turn that is
not an object, non-text content, unknown roles, a conversation with no user/assistant pair) is
left as it is, so validation rejects it naming the field. The repairs so far are added to the
record's `annotation.repairs`, so a record carries its history. Pure Python, no I/O: the
annotate pipeline and the data path (`data.preprocessors.parse_record`) both call it.
"""
from __future__ import annotations

import collections
import dataclasses
from collections.abc import Mapping
from typing import Any

KINDS = ("sharegpt_keys", "content_parts", "role_renamed", "dropped_empty_turn",
         "merged_same_role", "dropped_leading_assistant", "dropped_trailing_user")
_ROLES = {"user": "user", "human": "user", "prompter": "user", "customer": "user",
          "assistant": "assistant", "gpt": "assistant", "bot": "assistant", "model": "assistant",
          "ai": "assistant", "chatgpt": "assistant", "gpt-4": "assistant", "claude": "assistant",
          "system": "system", "system_prompt": "system", "developer": "system"}


@dataclasses.dataclass(frozen=True)
class NormalizeConfig:
  """The `normalize` section of the annotate config (`true` enables it with these defaults)."""
  enabled: bool = False
  separator: str = "\n\n"  # Joins merged turns.
  drop_leading_assistant: bool = True
  merge_same_role: bool = True
  drop_empty_turns: bool = True
  drop_trailing_user: bool = True

  @classmethod
  def from_dict(cls, d: Mapping[str, Any] | bool | None, where: str = "normalize"
                ) -> NormalizeConfig:
    """From `true`/`false` or a mapping; an unknown key or a wrong type fails, named."""
    if d is None or isinstance(d, bool):
      return cls(enabled=bool(d))
    if not isinstance(d, Mapping):
      raise ValueError(f"{where}: expected true/false or an object, got {type(d).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - set(fields))
    if unknown:
      raise ValueError(f"{where}: unknown keys {unknown}; known: {sorted(fields)}")
    for key, value in d.items():
      want = str if key == "separator" else bool
      if not isinstance(value, want):
        raise ValueError(f"{where}.{key}: expected {want.__name__}, got {value!r}")
    return cls(**{"enabled": True, **d})


def _text(content: Any, repairs: collections.Counter) -> Any:
  """Content parts joined into one string; anything else unchanged (validation judges it)."""
  if isinstance(content, list) and content and all(
      isinstance(p, Mapping) and isinstance(p.get("text"), str) for p in content):
    repairs["content_parts"] += 1
    return "\n".join(p["text"] for p in content)
  return content


def _turn(raw: Any, repairs: collections.Counter) -> Any:
  """One message as {role, content, ...}; a non-object is returned unchanged."""
  if not isinstance(raw, Mapping):
    return raw
  turn = dict(raw)
  if "role" not in turn and "content" not in turn and ("from" in turn or "value" in turn):
    turn["role"], turn["content"] = turn.pop("from", None), turn.pop("value", None)
    repairs["sharegpt_keys"] += 1
  role = turn.get("role")
  if isinstance(role, str):
    mapped = _ROLES.get(role.strip().lower())
    if mapped is not None and mapped != role:
      turn["role"] = mapped
      repairs["role_renamed"] += 1
  turn["content"] = _text(turn.get("content"), repairs)
  return turn


def _is_ok(turn: Any) -> bool:
  return isinstance(turn, dict) and turn.get("role") in ("system", "user", "assistant") and \
      isinstance(turn.get("content"), str)


def _merge(turns: list, cfg: NormalizeConfig, repairs: collections.Counter) -> list:
  out: list = []
  for turn in turns:
    if out and _is_ok(turn) and _is_ok(out[-1]) and out[-1]["role"] == turn["role"]:
      out[-1] = {**out[-1], "content": out[-1]["content"] + cfg.separator + turn["content"]}
      repairs["merged_same_role"] += 1
    else:
      out.append(turn)
  return out


def _repair_turns(turns: list, cfg: NormalizeConfig, has_response: bool,
                  repairs: collections.Counter) -> list:
  turns = [_turn(t, repairs) for t in turns]
  if cfg.drop_empty_turns:
    kept = [t for t in turns if not (_is_ok(t) and not t["content"].strip())]
    repairs["dropped_empty_turn"] += len(turns) - len(kept)
    turns = kept
  if cfg.merge_same_role:
    turns = _merge(turns, cfg, repairs)
  if cfg.drop_leading_assistant:
    start = 1 if turns and _is_ok(turns[0]) and turns[0]["role"] == "system" else 0
    end = start
    while end < len(turns) and _is_ok(turns[end]) and turns[end]["role"] == "assistant":
      end += 1
    repairs["dropped_leading_assistant"] += end - start
    turns = turns[:start] + turns[end:]
  if cfg.drop_trailing_user and not has_response:
    end = len(turns)
    while end > 0 and _is_ok(turns[end - 1]) and turns[end - 1]["role"] == "user":
      end -= 1
    if any(_is_ok(t) and t["role"] == "assistant" for t in turns[:end]):
      repairs["dropped_trailing_user"] += len(turns) - end
      turns = turns[:end]
  return turns


def repair(record: Any, cfg: NormalizeConfig = NormalizeConfig(enabled=True)
           ) -> tuple[Any, dict[str, int]]:
  """(record in the strict form where it could be repaired, {kind: count} of this call).

  The input is not modified; a record needing no repair is returned as it is. Records that
  are not objects, or have no conversation, pass through for validation to judge.
  """
  if not isinstance(record, Mapping):
    return record, {}
  repairs: collections.Counter = collections.Counter()
  out = dict(record)
  if "messages" not in out and isinstance(out.get("conversations"), list):
    out["messages"] = out.pop("conversations")
    repairs["sharegpt_keys"] += 1
  if isinstance(out.get("messages"), list):
    out["messages"] = _repair_turns(out["messages"], cfg, "response" in out, repairs)
  repairs = {k: repairs[k] for k in KINDS if repairs[k]}
  if not repairs:
    return record, {}
  annotation = out.get("annotation")
  annotation = dict(annotation) if isinstance(annotation, Mapping) else {}
  earlier = annotation.get("repairs")
  total = collections.Counter(earlier if isinstance(earlier, Mapping) else {})
  total.update(repairs)
  annotation["repairs"] = {k: total[k] for k in sorted(total)}
  out["annotation"] = annotation
  return out, repairs
