"""Batched generation for the sweep: conversations + marker modes in, `modes.Result`s out.

`Decoder(loaded, cfg)` opens the checkpoint's tokenizer and chat template (what training used,
from the checkpoint's meta), renders each conversation with the generation prompt plus the
mode's forced prefix, and runs `generate.generate` in batches of `cfg.batch_size`. A short batch
is padded with copies to the next power of two (at most `batch_size`; `padded_rows`), so a
prompt-length bucket compiles the loop for a few row counts only, and 3 code problems at
batch_size 12 decode 4 rows, not 12 (decoding a small model on a CPU reads the weights every
step, so the padded rows are not free).
Rows stop at the end-of-turn token; constrained rows start in the marker-list automaton.
A prompt too long for the model's context gets an empty response and a problem, not an error;
`max_new_tokens` shrinks to what the context leaves. The loop itself is `decode.generate`'s,
reading the completion back `decode.modes`'.
"""
from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Sequence
from typing import Any

from treasure_jax.data import chat_templates
from treasure_jax.data import vocab as vocab_lib
from treasure_jax.decode import constraints
from treasure_jax.decode import generate
from treasure_jax.decode import modes
from treasure_jax.decode import sampling
from treasure_jax.decode import stops
from treasure_jax.train import checkpoint

@dataclasses.dataclass(frozen=True)
class DecodeConfig:
  """The `decode` section of an eval config (sampler kinds: `decode.sampling.KINDS`).

  Prompts are padded to a multiple of `prompt_bucket` tokens: each (bucket, max_new_tokens)
  pair compiles the decode loop once, so a large bucket trades prefill work for compiles.
  presence_penalty / frequency_penalty: `decode.sampling.Penalties` (0 = off), on free text.
  A task may override any of these fields (`sweep_config.TaskConfig.decode`).
  """
  batch_size: int = 8
  max_new_tokens: int = 256
  sampler: str = "greedy"
  temperature: float = 1.0
  top_k: int = 0
  top_p: float = 1.0
  seed: int = 0
  force_prefix: bool = False
  prompt_bucket: int = 64
  presence_penalty: float = 0.0
  frequency_penalty: float = 0.0

  def __post_init__(self):
    for key in ("batch_size", "max_new_tokens", "prompt_bucket"):
      if getattr(self, key) < 1:
        raise ValueError(f"decode.{key}={getattr(self, key)} must be >= 1")
    self.make_sampler()  # Validates the sampler name and its parameters.
    self.make_penalties()

  def make_sampler(self) -> sampling.Sampler:
    return sampling.make(self.sampler, temperature=self.temperature, top_k=self.top_k,
                         top_p=self.top_p)

  def make_penalties(self) -> sampling.Penalties:
    try:
      return sampling.Penalties(self.presence_penalty, self.frequency_penalty)
    except ValueError as e:
      raise ValueError(f"decode: {e} (presence_penalty / frequency_penalty)") from None


def padded_rows(n: int, batch_size: int) -> int:
  """Rows of a batch of `n` requests: the next power of two, at most `batch_size`."""
  return min(batch_size, 1 << max(0, n - 1).bit_length())


class Decoder:
  """Generation with one loaded checkpoint; `generate(requests, max_new_tokens)`.

  `always_constrain`: pass the marker-list automaton to every batch (unconstrained rows start
  FREE, which allows every token), so constrained and free batches share one compiled loop.
  """

  def __init__(self, loaded: checkpoint.Loaded, cfg: DecodeConfig, *,
               always_constrain: bool = False):
    info = loaded.info
    self.loaded, self.cfg, self.always_constrain = loaded, cfg, always_constrain
    self.vocabulary = vocab_lib.make(info["tokenizer"]["kind"], info["tokenizer"]["path"])
    self.template = chat_templates.get(info.get("chat_template") or "model", self.vocabulary)
    self._token_bytes = constraints.token_bytes(self.vocabulary)
    eos = {self.vocabulary.eos_id}
    tokenizer = getattr(self.vocabulary, "tokenizer", None)
    if hasattr(tokenizer, "token_to_id"):
      eos.add(tokenizer.token_to_id(self.template.end_of_turn))
    self._eos_ids = sorted(i for i in eos if i is not None)
    self._automaton: constraints.TokenAutomaton | None = None
    self._tables: constraints.Tables | None = None
    self._list_close: stops.StopTables | None = None

  def _constraint(self) -> tuple[constraints.TokenAutomaton, constraints.Tables]:
    if self._automaton is None:
      self._automaton = constraints.build(self.loaded.taxonomy, self.vocabulary)
      self._tables = self._automaton.tables(self.loaded.model_config.vocab_size)
    return self._automaton, self._tables

  def _close(self) -> stops.StopTables:
    """The list-close automaton (penalties start after it), built on first use."""
    if self._list_close is None:
      self._list_close = modes.list_close(self._token_bytes,
                                          self.loaded.model_config.vocab_size)
    return self._list_close

  def _prompt(self, request: tuple[list[dict[str, str]], modes.Mode]) -> tuple[list[int], str]:
    messages, mode = request
    prefix = modes.forced_prefix(mode, self.loaded.taxonomy)
    text = self.template.render(messages, add_generation_prompt=True) + prefix
    return list(self.vocabulary.encode(text)), prefix

  def generate(self, requests: Sequence[tuple[list[dict[str, str]], modes.Mode]],
               max_new_tokens: int, cfg: DecodeConfig | None = None) -> list[modes.Result]:
    """Results in request order; `cfg` replaces the decoder's own config for this call (a
    task's overrides), sharing the loaded model, tokenizer and marker automaton."""
    cfg = cfg or self.cfg
    prompts = [self._prompt(r) for r in requests]
    out: list[modes.Result] = []
    for start in range(0, len(requests), cfg.batch_size):
      end = start + cfg.batch_size
      out += self._batch(requests[start:end], prompts[start:end], max_new_tokens, start, cfg)
    return out

  def _batch(self, requests: Sequence[Any], prompts: Sequence[tuple[list[int], str]],
             max_new_tokens: int, first: int, cfg: DecodeConfig) -> list[modes.Result]:
    context, bucket = self.loaded.model_config.max_seq_len, cfg.prompt_bucket
    fits = [bucket * math.ceil(len(ids) / bucket) < context
            for ids, _ in prompts]
    rows = [i for i, ok in enumerate(fits) if ok]
    results: list[modes.Result | None] = [None] * len(requests)
    for i, ok in enumerate(fits):
      if not ok:
        results[i] = modes.Result(
            prompt=requests[i][0][-1]["content"], mode=requests[i][1].name, response="",
            markers={}, problems=[f"prompt of {len(prompts[i][0])} tokens does not fit the "
                                  f"model's context of {context}"], completion="",
            num_tokens=0, num_prompt_tokens=len(prompts[i][0]), stop_reason="max_tokens")
    if rows:
      for i, result in zip(rows, self._run([requests[i] for i in rows],
                                           [prompts[i] for i in rows], max_new_tokens,
                                           [first + i for i in rows], cfg)):
        results[i] = result
    return results

  def _run(self, requests: Sequence[Any], prompts: Sequence[tuple[list[int], str]],
           max_new_tokens: int, seeds: list[int], cfg: DecodeConfig) -> list[modes.Result]:
    """One padded batch; row i samples with the stream of its request index (`seeds`), so a
    sample does not depend on the batching."""
    tax, context = self.loaded.taxonomy, self.loaded.model_config.max_seq_len
    n = len(requests)
    pad = padded_rows(n, cfg.batch_size) - n
    ids = [p for p, _ in prompts] + [prompts[-1][0]] * pad
    bucket = cfg.prompt_bucket * math.ceil(max(map(len, ids)) / cfg.prompt_bucket)
    budget = min(max_new_tokens, context - bucket)
    if budget < max_new_tokens:
      logging.warning("eval decoding: prompts of %d tokens leave %d of %d new tokens", bucket,
                      budget, max_new_tokens)
    constraint, starts = None, None
    if self.always_constrain or any(mode.constrained for _, mode in requests):
      automaton, constraint = self._constraint()
      starts = [(automaton.state_after(prefix) if prefix else automaton.start)
                if mode.constrained else automaton.free
                for (_, mode), (_, prefix) in zip(requests, prompts)]
      starts += [automaton.free] * pad
    penalties = cfg.make_penalties()
    gen = generate.generate(
        self.loaded.model, ids, max_new_tokens=budget, sampler=cfg.make_sampler(),
        eos_ids=self._eos_ids, seed=cfg.seed, constraint=constraint, start_states=starts,
        row_seeds=seeds + [seeds[-1]] * pad, prompt_bucket=cfg.prompt_bucket,
        penalties=penalties, list_close=self._close() if penalties.active else None,
        list_rows=[mode.parses for _, mode in requests] + [False] * pad if penalties.active
        else None)
    results = []
    for i in range(n):
      tokens = [t for t in gen.tokens[i] if t not in self._eos_ids]
      pieces = [self._token_bytes[t] or b"" if t < len(self._token_bytes) else b""
                for t in tokens]
      messages, mode = requests[i]
      results.append(modes.finish(
          mode, tax, prompt=messages[-1]["content"],
          generated_text=b"".join(pieces).decode("utf-8", errors="replace"),
          stop_reason=gen.stop_reasons[i], num_tokens=len(gen.tokens[i]),
          num_prompt_tokens=len(prompts[i][0]), prefix=prompts[i][1], token_bytes=pieces,
          logprobs=gen.logprobs[i][:len(tokens)]))
    return results
