"""Quality markers: a pluggable reward scorer and per-language quality buckets.

A scorer maps (prompt, response) to a float, the `quality` marker. Two kinds, chosen by the
`quality` config section: `http` POSTs `{"prompt", "response"}` to a reward endpoint and reads
`{"score"}` (retries and backoff as in `llm.post_configured`); `python` calls a function named
"module:function" with (prompt, response). `quality_bucket` is a second pass over all scores:
per-language quartiles, 1 = best (`taxonomy.quality_buckets`). Caching and threading are the
pipeline's; the reward model itself is the user's.
"""
from __future__ import annotations

import dataclasses
import hashlib
import importlib
import json
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from treasure_jax.annotate import llm
from treasure_jax.markers import taxonomy

KINDS = ("none", "http", "python")
# Records without a `lang` marker are ranked together, as one more "language".
UNKNOWN_LANG = ""


class QualityError(RuntimeError):
  """The scorer is misconfigured or returned something that is not a finite number."""


@dataclasses.dataclass(frozen=True)
class QualityConfig:
  """The `quality` config section."""
  kind: str = "none"
  # Names the reward model in provenance ("reward:NAME") and cache keys; default: url/callable.
  name: str | None = None
  url: str | None = None
  callable: str | None = None
  api_key_env: str | None = None
  concurrency: int = 4
  timeout_s: float = 60.0
  max_retries: int = 5
  backoff_s: float = 1.0
  max_backoff_s: float = 60.0

  @classmethod
  def from_dict(cls, d: Mapping[str, Any], where: str = "quality") -> QualityConfig:
    llm.check_keys(cls, d, where)
    cfg = cls(**d)
    if cfg.kind not in KINDS:
      raise ValueError(f"{where}.kind: {cfg.kind!r} is not one of {', '.join(KINDS)}")
    if cfg.kind == "http":
      if not cfg.url:
        raise ValueError(f"{where}.url: required when kind is 'http'")
      llm.check_url(cfg.url, f"{where}.url")
    if cfg.kind == "python" and (not cfg.callable or cfg.callable.count(":") != 1):
      raise ValueError(f"{where}.callable: required when kind is 'python', as 'module:function'")
    if not isinstance(cfg.concurrency, int) or cfg.concurrency < 1:
      raise ValueError(f"{where}.concurrency: must be a positive integer")
    return cfg


class Scorer:
  """Scores (prompt, response) pairs; `name` identifies it in cache keys and provenance."""

  def __init__(self, cfg: QualityConfig):
    if cfg.kind not in ("http", "python"):
      raise QualityError(f"quality.kind {cfg.kind!r} has no scorer")
    self.cfg = cfg
    # Provenance names the model, not its address (which changes when a server moves).
    self.name = cfg.name or (cfg.callable if cfg.kind == "python" else "http")
    self._cache_id = cfg.name or cfg.callable or cfg.url
    self.concurrency = cfg.concurrency
    self._fn: Callable[[str, str], Any] | None = None
    self.__key = None
    if cfg.kind == "python":
      self._fn = _import_callable(cfg.callable)
    else:
      self.__key = llm.read_api_key(cfg.api_key_env)

  def __repr__(self) -> str:
    return f"quality.Scorer({self.cfg.kind}:{self.name})"

  @property
  def provenance(self) -> str:
    return f"reward:{self.name}"

  def cache_key(self, prompt: str, response: str) -> str:
    blob = json.dumps([prompt, response], ensure_ascii=False)
    digest = hashlib.sha256(blob.encode("utf-8")).hexdigest()
    return f"quality|{self._cache_id}|{digest}"

  def score(self, prompt: str, response: str) -> float:
    if self._fn is not None:
      return _finite(self._fn(prompt, response), f"quality.callable {self.name}")
    cfg = self.cfg
    reply = llm.post_configured(cfg.url, {"prompt": prompt, "response": response}, cfg,
                                self.__key)
    if not isinstance(reply, Mapping) or "score" not in reply:
      raise QualityError(f"quality.url {cfg.url}: reply has no 'score': "
                         f"{llm.redact(json.dumps(reply)[:200], self.__key)}")
    return _finite(reply["score"], f"quality.url {cfg.url}")


def _import_callable(spec: str) -> Callable[[str, str], Any]:
  module_name, _, fn_name = spec.partition(":")
  try:
    fn = getattr(importlib.import_module(module_name), fn_name)
  except (ImportError, AttributeError) as e:
    raise QualityError(f"quality.callable {spec!r}: cannot import: {e}") from None
  if not callable(fn):
    raise QualityError(f"quality.callable {spec!r} is not callable")
  return fn


def _finite(value: Any, where: str) -> float:
  if isinstance(value, bool):
    raise QualityError(f"{where}: returned {value!r}, not a number")
  try:
    score = float(value)
  except (TypeError, ValueError):
    raise QualityError(f"{where}: returned {value!r}, not a number") from None
  if not math.isfinite(score):
    raise QualityError(f"{where}: returned {score!r}, not a finite number")
  return score


def buckets(scores: Sequence[float | None], langs: Sequence[str | None]) -> list[int | None]:
  """Per-language quartiles of the given scores; None where there is no score."""
  have = [i for i, s in enumerate(scores) if s is not None]
  ranked = taxonomy.quality_buckets([scores[i] for i in have],
                                    [langs[i] or UNKNOWN_LANG for i in have])
  out: list[int | None] = [None] * len(scores)
  for i, b in zip(have, ranked):
    out[i] = b
  return out
