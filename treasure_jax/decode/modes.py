"""Marker modes (how a prompt is wrapped and a completion read back) and the per-prompt result.

- inferred:    no markers in the prompt; the model writes its marker list, then the answer.
- fixed:       user markers (validated) appended to the prompt; the rest inferred. With
               `force_prefix` the completion starts with those markers, written for the model.
- constrained: like fixed (markers optional), and the generated list is restricted token by
               token to the taxonomy (`constraints`), so it always parses.
- none:        plain generation for baselines: nothing added, nothing parsed.

A mode is a small frozen dataclass: `prompt_text`, `forced_prefix`, `constrained`. `finish` turns
generated text into a `Result`: the response without the list, the parsed markers, problems,
token counts, stop reason, and optionally per-token log-probabilities with the summed
log-probability of the tokens that spell each generated marker value (`marker_logprobs`).
Tokenizing, batching and the model are `runner`'s and `generate`'s job.
"""
from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

from treasure_jax.decode import stops
from treasure_jax.markers import taxonomy as taxonomy_lib
from treasure_jax.markers import template

KINDS = ("inferred", "fixed", "constrained", "none")
_ELEMENT_BYTES = re.compile(rb" <([A-Za-z0-9_]+)> ([^<]*?) </\1>")


@dataclasses.dataclass(frozen=True)
class Mode:
  """One of KINDS (`name`) with its validated user markers; build it with `make`."""
  name: str = "inferred"
  markers: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  force_prefix: bool = False

  @property
  def constrained(self) -> bool:
    return self.name == "constrained"

  @property
  def parses(self) -> bool:
    """Whether the completion carries a marker list to read back."""
    return self.name != "none"


def make(kind: str, markers: Mapping[str, Any] | None, tax: taxonomy_lib.Taxonomy, *,
         force_prefix: bool = False) -> Mode:
  """A mode by name with user markers validated against `tax` (MarkerError lists the allowed
  values). "inferred" and "none" take no markers."""
  markers = dict(markers or {})
  if kind in ("inferred", "none") and markers:
    raise taxonomy_lib.MarkerError(
        f"mode {kind!r} takes no markers (got {sorted(markers)}); use mode 'fixed' or "
        "'constrained'")
  if kind not in KINDS:
    raise ValueError(f"unknown marker mode {kind!r}; known: {', '.join(KINDS)}")
  if kind in ("inferred", "none"):
    return Mode(kind)
  return Mode(kind, tax.validate(markers), force_prefix)


def prompt_text(mode: Mode, prompt: str, tax: taxonomy_lib.Taxonomy) -> str:
  """The user turn: the prompt with the mode's prompt-side marker list."""
  return template.prompt_side(prompt, mode.markers, tax) if mode.markers else prompt


def list_close(token_bytes: Sequence[bytes | None], vocab_size: int) -> stops.StopTables:
  """The automaton of the list's closing tag: decoding penalties act on the answer after it."""
  return stops.build([template.LIST_CLOSE], token_bytes, vocab_size)


def forced_prefix(mode: Mode, tax: taxonomy_lib.Taxonomy) -> str:
  """Completion text written for the model before it generates ("" unless force_prefix)."""
  if not (mode.force_prefix and mode.parses):
    return ""
  closing = " " + template.LIST_CLOSE
  return template.serialize(mode.markers, tax)[:-len(closing)]


@dataclasses.dataclass
class Result:
  """One prompt's generation. `completion` is the forced prefix plus the generated text (cut at
  a stop string); `num_tokens` counts generated tokens (EOS included, forced prefix excluded)."""
  prompt: str
  mode: str
  response: str
  markers: dict[str, Any]
  problems: list[str]
  completion: str
  num_tokens: int
  num_prompt_tokens: int
  stop_reason: str
  token_logprobs: list[float] | None = None
  tokens: list[str] | None = None
  marker_logprobs: dict[str, float] | None = None

  def to_json(self) -> dict[str, Any]:
    d = dataclasses.asdict(self)
    return {k: v for k, v in d.items() if v is not None}


def finish(mode: Mode, tax: taxonomy_lib.Taxonomy, *, prompt: str, generated_text: str,
           stop_reason: str, num_tokens: int, num_prompt_tokens: int,
           stop_strings: Sequence[str] = (), prefix: str = "",
           token_bytes: Sequence[bytes] | None = None,
           logprobs: Sequence[float] | None = None) -> Result:
  """Reads a completion back. With `token_bytes` and `logprobs` (the generated tokens' bytes and
  model log-probabilities) the result carries per-token logprobs and per-marker sums."""
  text = generated_text
  if stop_reason == "stop_string":
    cuts = [text.find(s) for s in stop_strings if s and s in text]
    text = text[:min(cuts)] if cuts else text
  completion = prefix + text
  if mode.parses:
    parsed = template.parse_completion(completion, tax)
    markers, response, problems = parsed.markers, parsed.response, parsed.problems
  else:
    markers, response, problems = {}, completion, []
  result = Result(prompt=prompt, mode=mode.name, response=response, markers=markers,
                  problems=problems, completion=completion, num_tokens=num_tokens,
                  num_prompt_tokens=num_prompt_tokens, stop_reason=stop_reason)
  if token_bytes is not None and logprobs is not None:
    result.token_logprobs = [float(x) for x in logprobs]
    result.tokens = [b.decode("utf-8", errors="replace") for b in token_bytes]
    if mode.parses:
      result.marker_logprobs = marker_logprobs(prefix.encode("utf-8"), token_bytes, logprobs,
                                               markers)
  return result


def marker_logprobs(prefix: bytes, token_bytes: Sequence[bytes], logprobs: Sequence[float],
                    markers: Mapping[str, Any]) -> dict[str, float]:
  """Per generated marker: the summed log-probability of the tokens that overlap its value's
  bytes in the completion's first marker list (exp of it is the model's probability of that
  value given the list so far). Markers written in the forced prefix are left out."""
  data = prefix + b"".join(token_bytes)
  start = data.find(template.LIST_OPEN.encode())
  end = data.find(template.LIST_CLOSE.encode(), max(start, 0))
  if start < 0:
    return {}
  end = len(data) if end < 0 else end
  token_ends, pos = [], len(prefix)
  for b in token_bytes:
    pos += len(b)
    token_ends.append(pos)
  out: dict[str, float] = {}
  for m in _ELEMENT_BYTES.finditer(data, start, end):
    name = m.group(1).decode()
    a, b = m.span(2)
    if name not in markers or name in out or b <= len(prefix):
      continue
    total, begin = 0.0, len(prefix)
    for stop, lp in zip(token_ends, logprobs):
      if begin < b and stop > a:
        total += float(lp)
      begin = stop
    out[name] = total if math.isfinite(total) else -math.inf
  return out
