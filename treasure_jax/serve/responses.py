"""OpenAI-shaped response bodies from decode results, and their server-sent-event form.

Each choice carries, beside OpenAI's fields, `markers`: {"mode", "values" (the markers read
from the completion's list, forced and generated), "problems" (what parsing found wrong)}.
`message.content` / `text` is the answer with the marker list stripped. Streaming sends the
OpenAI chunk sequence (role, content, finish with markers, [DONE]) once the choice is decoded:
the compiled loop emits a whole batch at a time, so chunks are not token by token.
"""
from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

from treasure_jax.decode import modes
from treasure_jax.serve import protocol

_FINISH = {"eos": "stop", "stop_string": "stop", "max_tokens": "length"}


def _markers(result: modes.Result) -> dict[str, Any]:
  return {"mode": result.mode, "values": result.markers, "problems": result.problems}


def _usage(job: protocol.Job, results: Sequence[modes.Result]) -> dict[str, int]:
  completion = sum(r.num_tokens for r in results)
  return {"prompt_tokens": len(job.ids), "completion_tokens": completion,
          "total_tokens": len(job.ids) + completion}


def body(job: protocol.Job, results: Sequence[modes.Result]) -> dict[str, Any]:
  """The non-streaming reply: a chat.completion or a text_completion."""
  chat = job.kind == "chat"
  choices = []
  for i, r in enumerate(results):
    choice: dict[str, Any] = {"index": i, "finish_reason": _FINISH[r.stop_reason],
                              "logprobs": None, "markers": _markers(r)}
    if chat:
      choice["message"] = {"role": "assistant", "content": r.response}
    else:
      choice["text"] = r.response
    choices.append(choice)
  return {"id": f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}",
          "object": "chat.completion" if chat else "text_completion",
          "created": int(time.time()), "model": job.model, "choices": choices,
          "usage": _usage(job, results)}


def events(job: protocol.Job, results: Sequence[modes.Result]) -> Iterator[str]:
  """The streaming reply as SSE `data:` lines, ending with `data: [DONE]`."""
  full = body(job, results)
  head = {"id": full["id"], "created": full["created"], "model": job.model}
  if job.kind == "chat":
    head["object"] = "chat.completion.chunk"
    for c in full["choices"]:
      yield _event(head, {"index": c["index"], "delta": {"role": "assistant", "content": ""},
                          "finish_reason": None})
      yield _event(head, {"index": c["index"], "delta": {"content": c["message"]["content"]},
                          "finish_reason": None})
      yield _event(head, {"index": c["index"], "delta": {}, "finish_reason": c["finish_reason"],
                          "markers": c["markers"]})
  else:
    head["object"] = "text_completion"
    for c in full["choices"]:
      yield _event(head, {"index": c["index"], "text": c["text"], "finish_reason": None})
      yield _event(head, {"index": c["index"], "text": "", "finish_reason": c["finish_reason"],
                          "markers": c["markers"]})
  yield _event({**head, "choices": [], "usage": full["usage"]}, None)
  yield "data: [DONE]\n\n"


def error_event(error: protocol.ApiError) -> str:
  return f"data: {json.dumps(error.body())}\n\n"


def _event(head: dict[str, Any], choice: dict[str, Any] | None) -> str:
  data = dict(head) if choice is None else {**head, "choices": [choice]}
  return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"
