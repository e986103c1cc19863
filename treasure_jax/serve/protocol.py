"""Request bodies of /v1/chat/completions and /v1/completions -> validated `Job`s.

Everything a request can get wrong is found here, before it is queued, and raised as an
`ApiError` (HTTP status, OpenAI-style error object naming the field in `param`): a body that is
not a JSON object, wrong types, an unknown marker category or a value outside the taxonomy (the
allowed values listed), a prompt that does not fit the context, max_tokens over the server's
limit. OpenAI fields the server cannot honour (tools, logit_bias, logprobs, ...) are refused
rather than silently ignored; presence_penalty and frequency_penalty are honoured
(`decode.sampling.Penalties`, on the answer after its marker list). Marker fields beyond
OpenAI's: `markers` (category -> value), `marker_mode` (inferred | fixed | constrained | none)
and `force_prefix`; the openai client sends them with `extra_body`, which merges into the
body. Decoding is the batcher's job.
"""
from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from typing import Any

from treasure_jax.decode import modes
from treasure_jax.decode import runner
from treasure_jax.decode import sampling
from treasure_jax.markers import taxonomy as taxonomy_lib

_UNSUPPORTED = ("tools", "functions", "tool_choice", "function_call", "logit_bias", "logprobs",
                "top_logprobs", "echo", "best_of", "suffix", "response_format")
_ROLES = ("system", "user", "assistant")
_MAX_STOP_BYTES = 512  # What `decode.stops` compiles.


class ApiError(Exception):
  """A request the server refuses: HTTP `status` and the OpenAI error object."""

  def __init__(self, status: int, message: str, *, param: str | None = None,
               code: str | None = None, type: str = "invalid_request_error"):
    super().__init__(message)
    self.status, self.message, self.param, self.code, self.type = (
        status, message, param, code, type)

  def body(self) -> dict[str, Any]:
    return {"error": {"message": self.message, "type": self.type, "param": self.param,
                      "code": self.code}}


@dataclasses.dataclass(frozen=True)
class Limits:
  """Server-side bounds on one request."""
  max_tokens: int = 512  # The most tokens a request may ask for.
  default_max_tokens: int = 256  # When the request names none (cut to fit the context).
  max_n: int = 16  # Choices per request; at most the batcher's batch size.


@dataclasses.dataclass(frozen=True)
class Job:
  """One validated request: model input ids, forced prefix, how to decode, how to answer."""
  kind: str  # "chat" or "completion"
  model: str
  request: runner.Request  # The prompt text (last user turn) and marker mode.
  ids: tuple[int, ...]
  prefix: str
  sampler: sampling.Sampler
  penalties: sampling.Penalties
  max_tokens: int
  stop: tuple[str, ...]
  n: int
  seed: int | None
  stream: bool


def parse_json(raw: bytes) -> dict[str, Any]:
  """The body as a JSON object; malformed JSON names line and column."""
  try:
    body = json.loads(raw)
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise ApiError(400, f"request body is not valid JSON: {e}", code="invalid_json") from None
  if not isinstance(body, dict):
    raise ApiError(400, f"request body must be a JSON object, got {type(body).__name__}",
                   code="invalid_json")
  return body


def chat_job(body: Mapping[str, Any], decoder: runner.Decoder, limits: Limits) -> Job:
  """A /v1/chat/completions body: markers go into the last user turn, the whole conversation
  is rendered with the checkpoint's chat template."""
  messages = _messages(body.get("messages"))
  mode = _mode(body, decoder.taxonomy)
  last = max(i for i, m in enumerate(messages) if m["role"] == "user")
  turns = [dict(m) for m in messages]
  turns[last]["content"] = modes.prompt_text(mode, messages[last]["content"], decoder.taxonomy)
  text = decoder.chat_template.render(turns, add_generation_prompt=True)
  prefix = modes.forced_prefix(mode, decoder.taxonomy)
  ids = decoder.vocabulary.encode(text + prefix)
  request = runner.Request(messages[last]["content"], mode)
  return _job("chat", body, request, list(ids), prefix, decoder, limits, "messages")


def completion_job(body: Mapping[str, Any], decoder: runner.Decoder, limits: Limits) -> Job:
  """A /v1/completions body: the prompt (one string) is used raw, no chat template."""
  prompt = body.get("prompt")
  if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
    prompt = prompt[0]
  if not isinstance(prompt, str) or not prompt:
    raise ApiError(400, "'prompt' must be a non-empty string (one prompt per request)",
                   param="prompt")
  request = runner.Request(prompt, _mode(body, decoder.taxonomy))
  ids, prefix = decoder.prompt_ids(request, raw=True)
  return _job("completion", body, request, ids, prefix, decoder, limits, "prompt")


def _job(kind: str, body: Mapping[str, Any], request: runner.Request, ids: list[int],
         prefix: str, decoder: runner.Decoder, limits: Limits, prompt_field: str) -> Job:
  for name in _UNSUPPORTED:
    if body.get(name) not in (None, False, {"type": "text"}):
      raise ApiError(400, f"'{name}' is not supported by this server", param=name,
                     code="unsupported_parameter")
  model = body.get("model", "")
  if not isinstance(model, str):
    raise ApiError(400, "'model' must be a string", param="model")
  context = decoder.model.cfg.max_seq_len
  room = context - len(ids)
  if room < 1:
    raise ApiError(400, f"the prompt is {len(ids)} tokens; this model's context is {context}",
                   param=prompt_field, code="context_length_exceeded")
  max_tokens = _max_tokens(body, limits, room, context, len(ids))
  n = _int(body, "n", 1, 1, limits.max_n)
  seed = body.get("seed")
  if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool) or seed < 0):
    raise ApiError(400, "'seed' must be a non-negative integer", param="seed")
  stream = body.get("stream", False)
  if not isinstance(stream, bool):
    raise ApiError(400, "'stream' must be a boolean", param="stream")
  penalties = sampling.Penalties(_number(body, "presence_penalty", 0.0, -2.0, 2.0),
                                 _number(body, "frequency_penalty", 0.0, -2.0, 2.0))
  return Job(kind, model, request, tuple(ids), prefix, _sampler(body), penalties, max_tokens,
             _stop(body), n, seed, stream)


def _messages(messages: Any) -> list[dict[str, str]]:
  if not isinstance(messages, list) or not messages:
    raise ApiError(400, "'messages' must be a non-empty list", param="messages")
  out = []
  for i, m in enumerate(messages):
    where = f"messages[{i}]"
    if not isinstance(m, Mapping) or m.get("role") not in _ROLES:
      raise ApiError(400, f"{where} needs a 'role' in {', '.join(_ROLES)}", param=where)
    content = m.get("content")
    if isinstance(content, list):  # [{"type": "text", "text": ...}, ...]
      if not all(isinstance(p, Mapping) and p.get("type") == "text" for p in content):
        raise ApiError(400, f"{where}.content: only text parts are supported",
                       param=f"{where}.content")
      content = "".join(str(p.get("text", "")) for p in content)
    if not isinstance(content, str):
      raise ApiError(400, f"{where}.content must be a string", param=f"{where}.content")
    out.append({"role": m["role"], "content": content})
  if not any(m["role"] == "user" for m in out):
    raise ApiError(400, "'messages' needs at least one user message", param="messages")
  return out


def _mode(body: Mapping[str, Any], tax: taxonomy_lib.Taxonomy) -> modes.Mode:
  """The marker mode; each marker is checked alone so the error names its category."""
  markers = body.get("markers") or {}
  if not isinstance(markers, Mapping):
    raise ApiError(400, "'markers' must be an object (category -> value)", param="markers")
  kind = body.get("marker_mode")
  if kind is not None and kind not in modes.KINDS:
    raise ApiError(400, f"unknown marker_mode {kind!r}; allowed: {', '.join(modes.KINDS)}",
                   param="marker_mode")
  for name, value in markers.items():
    try:
      tax.validate({name: value})
    except taxonomy_lib.MarkerError as e:
      raise ApiError(400, str(e), param=f"markers.{name}", code="invalid_marker") from None
  force = body.get("force_prefix", False)
  if not isinstance(force, bool):
    raise ApiError(400, "'force_prefix' must be a boolean", param="force_prefix")
  try:
    return runner.make_mode(kind, markers, tax, force)
  except (taxonomy_lib.MarkerError, ValueError) as e:
    raise ApiError(400, str(e), param="marker_mode") from None


def _max_tokens(body: Mapping[str, Any], limits: Limits, room: int, context: int,
                prompt_tokens: int) -> int:
  field = "max_completion_tokens" if body.get("max_completion_tokens") is not None else (
      "max_tokens")
  if body.get(field) is None:
    return min(limits.default_max_tokens, limits.max_tokens, room)
  value = _int(body, field, None, 1, limits.max_tokens)
  if value > room:
    raise ApiError(400, f"the prompt ({prompt_tokens} tokens) plus {field}={value} exceeds "
                   f"this model's context of {context} tokens", param=field,
                   code="context_length_exceeded")
  return value


def _int(body: Mapping[str, Any], name: str, default: int | None, lo: int, hi: int) -> int:
  value = body.get(name, default)
  if value is None:
    value = default
  if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
    raise ApiError(400, f"'{name}' must be an integer in [{lo}, {hi}], got {value!r}",
                   param=name)
  return value


def _number(body: Mapping[str, Any], name: str, default: float, lo: float, hi: float) -> float:
  value = body.get(name)
  if value is None:
    return default
  if isinstance(value, bool) or not isinstance(value, (int, float)) or not lo <= value <= hi:
    raise ApiError(400, f"'{name}' must be a number in [{lo}, {hi}], got {value!r}", param=name)
  return float(value)


def _sampler(body: Mapping[str, Any]) -> sampling.Sampler:
  """temperature 0 is greedy. Unlike OpenAI (default 1.0), an omitted temperature is greedy too,
  so a bare request is reproducible; with top_p or top_k given it defaults to 1.0."""
  temperature = _number(body, "temperature", 0.0 if body.get("top_p") is None and body.get(
      "top_k") is None else 1.0, 0.0, 2.0)
  top_p = _number(body, "top_p", 1.0, 0.0, 1.0)
  top_k = _int(body, "top_k", 0, 0, 1 << 20)
  if temperature == 0.0:
    return sampling.Greedy()
  if top_k > 0:
    return sampling.make("top_k", temperature=temperature, top_k=top_k)
  if top_p < 1.0:
    if top_p == 0.0:
      raise ApiError(400, "'top_p' must be > 0", param="top_p")
    return sampling.make("top_p", temperature=temperature, top_p=top_p)
  return sampling.make("temperature", temperature=temperature)


def _stop(body: Mapping[str, Any]) -> tuple[str, ...]:
  stop = body.get("stop")
  if stop is None:
    return ()
  stops = [stop] if isinstance(stop, str) else stop
  if not isinstance(stops, list) or len(stops) > 4 or not all(
      isinstance(s, str) and s for s in stops):
    raise ApiError(400, "'stop' must be a non-empty string or a list of up to 4 of them",
                   param="stop")
  if sum(len(s.encode("utf-8")) for s in stops) > _MAX_STOP_BYTES:
    raise ApiError(400, f"'stop' strings total more than {_MAX_STOP_BYTES} bytes", param="stop")
  return tuple(stops)
