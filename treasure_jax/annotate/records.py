"""Input records: validation and one normalized view of prompt/response and chat examples.

Accepted JSONL records (one JSON object per line):
- `{"prompt": str, "response": str, ...}`: a single turn;
- `{"messages": [{"role": "system"|"user"|"assistant", "content": str}, ...], ...}`: a chat,
  an optional system message first, then user and assistant turns alternating, ending with an
  assistant turn (the completion the markers describe). Roles "human" and "bot"/"gpt"/"model"
  are read as user and assistant.
Optional fields: `id` (str or int; default: a hash of the conversation, so it is stable when
files are concatenated or reordered), `markers` (an object of existing markers), `meta`; any
other field is kept untouched for metadata rules. Every error names where it happened
(`path:line`) and the field (`messages[3].role`). Real-world chats that break these rules
(assistant first, repeated roles, empty turns, ShareGPT keys) can be repaired, counted, by
`normalize` first.

Deliberately not here: computing markers (`deterministic`, `metadata`, the LLM annotator) and
reading the JSONL itself (`markers.stats.read_jsonl`, which reports bad JSON by line).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Iterator, Mapping
from typing import Any

from treasure_jax.markers import stats
from treasure_jax.markers import taxonomy

ROLES = ("system", "user", "assistant")
_ROLE_ALIASES = {"human": "user", "bot": "assistant", "gpt": "assistant", "model": "assistant"}


class RecordError(ValueError):
  """An invalid input record; the message is `{where}: {field}: {reason}`."""

  def __init__(self, where: str, field: str, reason: str):
    super().__init__(f"{where}: {field}: {reason}")
    self.where, self.field, self.reason = where, field, reason


@dataclasses.dataclass(frozen=True)
class Message:
  role: str
  content: str


@dataclasses.dataclass(frozen=True)
class RecordView:
  """A record seen as a conversation whose last message is the completion."""
  id: str
  messages: tuple[Message, ...]
  is_chat: bool  # True when the record came as `messages`.
  where: str

  @property
  def response(self) -> str:
    """The completion: the final assistant message."""
    return self.messages[-1].content

  @property
  def prompt(self) -> str:
    """The last user message: what the LLM annotator classifies."""
    return next(m.content for m in reversed(self.messages) if m.role == "user")

  @property
  def system(self) -> str | None:
    return self.messages[0].content if self.messages[0].role == "system" else None

  @property
  def context(self) -> tuple[Message, ...]:
    """Everything before the completion."""
    return self.messages[:-1]


def _message(raw: Any, i: int, where: str) -> Message:
  field = f"messages[{i}]"
  if not isinstance(raw, Mapping):
    raise RecordError(where, field, f"must be an object, got {type(raw).__name__}")
  for key in ("role", "content"):
    if key not in raw:
      raise RecordError(where, f"{field}.{key}", "is missing")
  role = raw["role"]
  role = _ROLE_ALIASES.get(role, role) if isinstance(role, str) else role
  if role not in ROLES:
    raise RecordError(where, f"{field}.role", f"{raw['role']!r} is not one of {', '.join(ROLES)}")
  return Message(role, _content(raw["content"], f"{field}.content", where))


def _content(value: Any, field: str, where: str) -> str:
  if not isinstance(value, str):
    raise RecordError(where, field, f"must be a string, got {type(value).__name__}")
  if not value.strip():
    raise RecordError(where, field, "is empty")
  return value


def _check_turns(messages: list[Message], where: str) -> None:
  """System first (optional), then user/assistant alternating, ending with assistant."""
  start = 1 if messages and messages[0].role == "system" else 0
  turns = messages[start:]
  if not turns:
    raise RecordError(where, "messages", "has no user or assistant message")
  for i, m in enumerate(turns, start=start):
    expected = "user" if (i - start) % 2 == 0 else "assistant"
    if m.role != expected:
      raise RecordError(where, f"messages[{i}].role",
                        f"expected {expected!r} (system first, then user/assistant alternating), "
                        f"got {m.role!r}")
  if turns[-1].role != "assistant":
    raise RecordError(where, f"messages[{len(messages) - 1}].role",
                      "the last message must be the assistant's completion")


def _default_id(messages: tuple[Message, ...]) -> str:
  blob = json.dumps([[m.role, m.content] for m in messages], ensure_ascii=False)
  return "sha1:" + hashlib.sha1(blob.encode("utf-8")).hexdigest()[:16]


def normalize(record: Mapping, *, where: str = "<record>") -> RecordView:
  """Validates `record` and returns its view; raises RecordError naming `where` and the field."""
  if not isinstance(record, Mapping):
    raise RecordError(where, "<record>", f"must be an object, got {type(record).__name__}")
  has_pair = "prompt" in record or "response" in record
  if "messages" in record and has_pair:
    raise RecordError(where, "messages", "give either 'messages' or 'prompt'/'response', not both")
  if "messages" in record:
    raw = record["messages"]
    if not isinstance(raw, list) or not raw:
      raise RecordError(where, "messages", "must be a non-empty list")
    messages = [_message(m, i, where) for i, m in enumerate(raw)]
    _check_turns(messages, where)
    is_chat = True
  elif has_pair:
    for field in ("prompt", "response"):
      if field not in record:
        raise RecordError(where, field, "is missing")
    messages = [Message("user", _content(record["prompt"], "prompt", where)),
                Message("assistant", _content(record["response"], "response", where))]
    is_chat = False
  else:
    raise RecordError(where, "<record>", "needs 'prompt' and 'response', or 'messages'")
  rid = record.get("id")
  if rid is not None and (isinstance(rid, bool) or not isinstance(rid, (str, int))):
    raise RecordError(where, "id", f"must be a string or an integer, got {type(rid).__name__}")
  messages = tuple(messages)
  return RecordView(str(rid) if rid is not None else _default_id(messages), messages, is_chat,
                    where)


def markers_of(record: Mapping, tax: taxonomy.Taxonomy, *, where: str = "<record>"
               ) -> dict[str, Any]:
  """The record's existing `markers`, converted and in taxonomy order; RecordError if invalid."""
  markers = record.get("markers")
  if markers is None:
    return {}
  if not isinstance(markers, Mapping):
    raise RecordError(where, "markers", f"must be an object, got {type(markers).__name__}")
  try:
    return tax.validate(markers)
  except taxonomy.MarkerError as e:
    raise RecordError(where, "markers", str(e)) from None


def read(path: str | os.PathLike, *, skip_invalid: bool = False,
         rejects: list | None = None) -> Iterator[tuple[int, dict, RecordView]]:
  """Yields (line, record, view) for each record of a JSONL file.

  Bad JSON and invalid records raise (stats.JsonlError / RecordError, both naming path:line),
  or with `skip_invalid` are appended to `rejects` as (line, reason, raw text) and skipped.
  """
  path = os.fspath(path)
  for line, record in stats.read_jsonl(path, skip_invalid=skip_invalid, rejects=rejects):
    try:
      yield line, record, normalize(record, where=f"{path}:{line}")
    except RecordError as e:
      if not skip_invalid:
        raise
      if rejects is not None:
        rejects.append((line, f"{e.field}: {e.reason}", json.dumps(record, ensure_ascii=False)))
