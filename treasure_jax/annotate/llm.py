"""LLM annotator: classifies a prompt's domain, task, format against an OpenAI-compatible API.

`Client.classify(prompt, category)` sends the `prompts` message list to `{url}/chat/completions`
and checks the reply against the taxonomy: a class → the marker; `Unspecified` → no marker; any
other reply → one corrective retry, then no marker and a recorded problem. `post_json` does the
HTTP (stdlib urllib): per-request timeout, exponential backoff with jitter on 429, 5xx,
timeouts and dropped connections (honouring Retry-After), `LlmError` when retries run out or the
server refuses the request outright (401, 404, ...): a configuration error stops the run rather
than filling the data with holes. 400/413/422 concern one prompt only: `ItemError`.
`post_configured` adds the API key and a config section's timeout and retry settings;
`chat_completion` asks a chat endpoint for one reply; `check_keys` and `chat_endpoint` read a
config section. The LLM judge (`eval.judge`) and the reward scorer (`quality`) use them too.

The API key is read from the environment variable named in the config, sent only in the
Authorization header, and scrubbed from every error message; it is never stored on disk.
Bounded concurrency (a thread pool), caching and ordering are the pipeline's.
"""
from __future__ import annotations

import dataclasses
import hashlib
import http.client
import json
import logging
import os
import random
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from typing import Any

from treasure_jax.annotate import prompts
from treasure_jax.markers import taxonomy

_ITEM_STATUSES = (400, 413, 422)
_RETRY_STATUSES = (408, 409, 425, 429)


class LlmError(RuntimeError):
  """The endpoint cannot be used: bad config, refused request, or retries exhausted."""


class ItemError(RuntimeError):
  """The endpoint rejected this one request (e.g. prompt too long); other items may work."""


@dataclasses.dataclass(frozen=True)
class LlmConfig:
  """The `llm` config section. `url` is the API base (".../v1") or the full endpoint."""
  url: str
  model: str
  api_key_env: str | None = None
  categories: tuple[str, ...] = ("domain", "task", "format")
  concurrency: int = 8
  timeout_s: float = 60.0
  max_retries: int = 5
  backoff_s: float = 1.0
  max_backoff_s: float = 60.0
  max_tokens: int = 16
  temperature: float = 0.0
  max_prompt_chars: int = 8000
  few_shot: Mapping[str, Mapping[str, str]] = dataclasses.field(default_factory=dict)

  @classmethod
  def from_dict(cls, d: Mapping[str, Any], where: str = "llm") -> LlmConfig:
    check_keys(cls, d, where, required=("url", "model"))
    check_url(d["url"], f"{where}.url")
    kw = dict(d)
    if "categories" in kw:
      kw["categories"] = tuple(kw["categories"])
    cfg = cls(**kw)
    for key in ("concurrency", "max_tokens", "max_prompt_chars"):
      if not isinstance(getattr(cfg, key), int) or getattr(cfg, key) < 1:
        raise ValueError(f"{where}.{key}: must be a positive integer")
    if cfg.max_retries < 0 or cfg.timeout_s <= 0:
      raise ValueError(f"{where}: max_retries must be >= 0 and timeout_s > 0")
    return cfg

  @property
  def endpoint(self) -> str:
    return chat_endpoint(self.url)


@dataclasses.dataclass(frozen=True)
class Answer:
  """One classification: `value` is the marker (None: no marker), `problem` says why not."""
  value: str | None
  raw: str
  problem: str | None = None
  # False for a per-request refusal (ItemError): worth asking again on the next run.
  cacheable: bool = True

  def to_dict(self) -> dict[str, Any]:
    return {"value": self.value, "raw": self.raw, "problem": self.problem}


def read_api_key(env_name: str | None) -> str | None:
  if not env_name:
    return None
  key = os.environ.get(env_name)
  if not key:
    raise LlmError(f"api_key_env: environment variable {env_name} is not set or empty")
  return key


def redact(text: str, secret: str | None) -> str:
  return text.replace(secret, "***") if secret else text


def _retry_after(err: urllib.error.HTTPError) -> float | None:
  try:
    return float(err.headers.get("Retry-After", ""))
  except (TypeError, ValueError):
    return None


def _attempt(url: str, body: bytes, headers: Mapping[str, str], timeout_s: float) -> bytes:
  request = urllib.request.Request(url, data=body, headers=dict(headers), method="POST")
  with urllib.request.urlopen(request, timeout=timeout_s) as response:
    return response.read()


def _error_body(err: urllib.error.HTTPError) -> str:
  try:
    return err.read().decode("utf-8", "replace")[:200]
  except (OSError, http.client.HTTPException):
    return "(no body)"


def check_url(url: Any, where: str) -> None:
  if not isinstance(url, str) or not url.startswith(("http://", "https://")):
    raise ValueError(f"{where}: {url!r} is not an http:// or https:// URL")


def check_keys(cls: type, d: Mapping[str, Any], where: str,
               required: Sequence[str] = ()) -> None:
  """Checks a config section before `cls(**d)`.

  Args:
    cls: the section's dataclass.
    d: the section.
    where: the section's name in errors ("llm", "judge").
    required: keys that must be non-empty strings.

  Raises:
    ValueError: a key of `d` is not a field of `cls`, or a required key is missing or empty.
  """
  known = {f.name for f in dataclasses.fields(cls)}
  unknown = sorted(set(d) - known)
  if unknown:
    raise ValueError(f"{where}: unknown keys {unknown}; known: {sorted(known)}")
  for key in required:
    if not isinstance(d.get(key), str) or not d[key]:
      raise ValueError(f"{where}.{key}: required, a non-empty string")


def chat_endpoint(url: str) -> str:
  """The chat endpoint of `url`, an API base (".../v1") or the full endpoint."""
  url = url.rstrip("/")
  return url if url.endswith("/chat/completions") else url + "/chat/completions"


def post_json(url: str, payload: Any, *, headers: Mapping[str, str], timeout_s: float,
              max_retries: int, backoff_s: float, max_backoff_s: float,
              secret: str | None = None) -> Any:
  """POSTs JSON, returns the decoded reply; retries transient failures with backoff."""
  body = json.dumps(payload, ensure_ascii=False).encode("utf-8")
  headers = {"Content-Type": "application/json", **headers}
  last = ""
  for attempt in range(max_retries + 1):
    wait = None
    try:
      raw = _attempt(url, body, headers, timeout_s)
    except urllib.error.HTTPError as e:
      detail = redact(_error_body(e), secret)
      last = f"HTTP {e.code}: {detail}"
      if e.code in _ITEM_STATUSES:
        raise ItemError(f"POST {url}: {last}") from None
      if e.code < 500 and e.code not in _RETRY_STATUSES:
        raise LlmError(f"POST {url}: {last}") from None
      wait = _retry_after(e)
    except (urllib.error.URLError, TimeoutError, socket.timeout, ConnectionError,
            http.client.HTTPException) as e:
      last = f"{type(e).__name__}: {getattr(e, 'reason', e)}"
    else:
      try:
        return json.loads(raw.decode("utf-8"))
      except ValueError as e:  # Also UnicodeDecodeError. A proxy's error page, say: retry.
        last = f"reply is not JSON: {redact(str(e), secret)[:200]}"
    if attempt < max_retries:
      delay = min(max_backoff_s, backoff_s * 2**attempt) * (0.5 + random.random() / 2)
      delay = min(max_backoff_s, max(delay, wait or 0.0))
      logging.info("POST %s failed (%s); retry %d/%d in %.2fs", url, redact(last, secret),
                   attempt + 1, max_retries, delay)
      time.sleep(delay)
  raise LlmError(f"POST {url}: gave up after {max_retries + 1} attempts; last error: "
                 f"{redact(last, secret)}")


def post_configured(url: str, payload: Any, cfg: Any, key: str | None) -> Any:
  """`post_json` with the settings of a config section and an optional API key.

  Args:
    url: the endpoint.
    payload: the JSON request body.
    cfg: the section; its timeout_s, max_retries, backoff_s and max_backoff_s are used.
    key: the API key (`read_api_key`), sent as a bearer token and scrubbed from errors; None
      sends no Authorization header.

  Returns:
    The decoded JSON reply.

  Raises:
    LlmError: the endpoint refused the request or retries ran out.
    ItemError: the endpoint rejected this request only.
  """
  headers = {"Authorization": f"Bearer {key}"} if key else {}
  return post_json(url, payload, headers=headers, timeout_s=cfg.timeout_s,
                   max_retries=cfg.max_retries, backoff_s=cfg.backoff_s,
                   max_backoff_s=cfg.max_backoff_s, secret=key)


def chat_completion(cfg: Any, messages: Sequence[Mapping[str, str]], key: str | None) -> str:
  """One reply of a chat model to `messages` (`post_configured` to `cfg.endpoint`).

  Args:
    cfg: the config section: endpoint, model, temperature, max_tokens and the settings
      `post_configured` reads.
    messages: the chat messages ({"role", "content"}).
    key: the API key or None, as in `post_configured`.

  Returns:
    The reply's `choices[0].message.content`; "" when that is not a string.

  Raises:
    LlmError: as `post_configured`, or the reply has no such content.
    ItemError: as `post_configured`.
  """
  reply = post_configured(
      cfg.endpoint, {"model": cfg.model, "messages": messages, "temperature": cfg.temperature,
                     "max_tokens": cfg.max_tokens}, cfg, key)
  try:
    content = reply["choices"][0]["message"]["content"]
  except (KeyError, IndexError, TypeError):
    raise LlmError(f"POST {cfg.endpoint}: reply has no choices[0].message.content: "
                   f"{redact(json.dumps(reply)[:200], key)}") from None
  return content if isinstance(content, str) else ""


def parse_answer(text: str, category: taxonomy.Category) -> tuple[str | None, bool]:
  """(class or None, is_valid). Tolerates case, quotes, backticks and a final period."""
  cleaned = text.strip().strip("`*\"' ").rstrip(".").strip()
  if cleaned.lower() == prompts.UNSPECIFIED.lower():
    return None, True
  by_lower = {v.lower(): v for v in category.values}
  value = by_lower.get(cleaned.lower())
  return value, value is not None


class Client:
  """Classifies prompts for the configured categories; safe to share between threads."""

  def __init__(self, cfg: LlmConfig, tax: taxonomy.Taxonomy):
    self.cfg = cfg
    self._categories: dict[str, taxonomy.Category] = {}
    self._instructions: dict[str, list[dict[str, str]]] = {}
    self._fingerprints: dict[str, str] = {}
    for name in cfg.categories:
      cat = tax.category(name)
      if cat.kind != "enum":
        raise taxonomy.MarkerError(f"llm.categories: {name!r} is {cat.kind}; only enum "
                                   "categories can be classified")
      self._categories[name] = cat
      self._instructions[name] = prompts.instruction_messages(cat, cfg.few_shot)
      self._fingerprints[name] = prompts.fingerprint(cfg.model, self._instructions[name])
    self.__key = read_api_key(cfg.api_key_env)

  def __repr__(self) -> str:
    return f"llm.Client(url={self.cfg.url!r}, model={self.cfg.model!r})"

  @property
  def provenance(self) -> str:
    return f"llm:{self.cfg.model}"

  def cache_key(self, prompt: str, category: str) -> str:
    """Content hash of the prompt, the category, the model and the instruction's hash."""
    digest = hashlib.sha256(prompt.encode("utf-8")).hexdigest()
    return f"llm|{category}|{self.cfg.model}|{self._fingerprints[category]}|{digest}"

  def messages(self, prompt: str, category: str) -> list[dict[str, str]]:
    return self._instructions[category] + [
        {"role": "user", "content": prompt[:self.cfg.max_prompt_chars]}]

  def _complete(self, messages: list[dict[str, str]]) -> str:
    return chat_completion(self.cfg, messages, self.__key)

  def classify(self, prompt: str, category: str) -> Answer:
    """Asks once, and once more after an answer that is not a class."""
    cat = self._categories[category]
    messages = self.messages(prompt, category)
    try:
      raw = self._complete(messages)
      value, valid = parse_answer(raw, cat)
      if not valid:
        messages = messages + [{"role": "assistant", "content": raw},
                               prompts.retry_message(raw, cat)]
        first, raw = raw, self._complete(messages)
        value, valid = parse_answer(raw, cat)
        if not valid:
          return Answer(None, raw[:200], f"{category}: LLM answered {first[:80]!r}, then "
                        f"{raw[:80]!r}; neither is a class")
    except ItemError as e:
      return Answer(None, "", f"{category}: {e}", cacheable=False)
    return Answer(value, raw[:200])
