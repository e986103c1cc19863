"""Samplers: pick the next token of each row from float32 logits_BV.

Each sampler is a small frozen (hashable) dataclass, so it is a static argument of the jitted
decode loop: changing the sampler recompiles, changing the prompts or the seed does not.
`sample(logits_BV, keys_B)` takes one PRNG key per row (see `generate`: row keys come from the
request's seed and the row's index, so a prompt's sample does not depend on what else shares its
batch). Disallowed tokens (constraints, padding of the vocabulary) arrive as -inf logits and are
never picked. The model's own log-probabilities for reporting are computed in `generate`, not here.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

KINDS = ("greedy", "temperature", "top_k", "top_p")
_NEG_INF = -jnp.inf


@dataclasses.dataclass(frozen=True)
class Greedy:
  """argmax; ties go to the lowest token id (as `jnp.argmax` and `torch.argmax`)."""

  def sample(self, logits_BV: jax.Array, keys_B: jax.Array) -> jax.Array:
    del keys_B
    return jnp.argmax(logits_BV, axis=-1).astype(jnp.int32)


@dataclasses.dataclass(frozen=True)
class Temperature:
  """Sample from softmax(logits / temperature)."""
  temperature: float = 1.0

  def __post_init__(self):
    _check_temperature(self.temperature)

  def sample(self, logits_BV: jax.Array, keys_B: jax.Array) -> jax.Array:
    return _categorical(logits_BV / self.temperature, keys_B)


@dataclasses.dataclass(frozen=True)
class TopK:
  """Sample among the k most likely tokens, at `temperature`."""
  k: int
  temperature: float = 1.0

  def __post_init__(self):
    if self.k < 1:
      raise ValueError(f"TopK.k={self.k} must be >= 1")
    _check_temperature(self.temperature)

  def sample(self, logits_BV: jax.Array, keys_B: jax.Array) -> jax.Array:
    k = min(self.k, logits_BV.shape[-1])
    top_BK, idx_BK = jax.lax.top_k(logits_BV, k)
    choice_B = _categorical(top_BK / self.temperature, keys_B)
    return jnp.take_along_axis(idx_BK, choice_B[:, None], axis=-1)[:, 0].astype(jnp.int32)


@dataclasses.dataclass(frozen=True)
class TopP:
  """Nucleus sampling: the smallest set of most likely tokens whose probability reaches p
  (computed after the temperature), always at least the most likely token."""
  p: float
  temperature: float = 1.0

  def __post_init__(self):
    if not 0.0 < self.p <= 1.0:
      raise ValueError(f"TopP.p={self.p} must be in (0, 1]")
    _check_temperature(self.temperature)

  def sample(self, logits_BV: jax.Array, keys_B: jax.Array) -> jax.Array:
    logits_BV = logits_BV / self.temperature
    sorted_BV = jnp.sort(logits_BV, axis=-1)[:, ::-1]
    probs_BV = jax.nn.softmax(sorted_BV, axis=-1)
    # Mass strictly before each sorted token: a token is kept while that is still below p.
    before_BV = jnp.cumsum(probs_BV, axis=-1) - probs_BV
    kept_B = jnp.maximum(jnp.sum(before_BV < self.p, axis=-1), 1)
    cutoff_B1 = jnp.take_along_axis(sorted_BV, (kept_B - 1)[:, None], axis=-1)
    # Ties at the cutoff are all kept; they have equal probability, so this changes mass by
    # at most one tie group.
    return _categorical(jnp.where(logits_BV >= cutoff_B1, logits_BV, _NEG_INF), keys_B)


Sampler = Greedy | Temperature | TopK | TopP


@dataclasses.dataclass(frozen=True)
class Penalties:
  """Presence and frequency penalties (OpenAI's definition), applied before the sampler:
  logit[v] -= frequency * count[v] + presence * (count[v] > 0), where count[v] is how often the
  row has generated v so far. Prompt tokens do not count, so copying a name or a fixed marker
  from the prompt is not penalised. Positive values discourage repetition (the greedy loops a
  small model falls into), negative ones encourage it; OpenAI's range, [-2, 2].
  `generate` applies them to free text only: inside a constrained marker list the taxonomy
  decides, and list tokens are not counted. The values are inputs of the compiled loop (per
  row, `penalize`), so new values do not recompile it.
  """
  presence: float = 0.0
  frequency: float = 0.0

  def __post_init__(self):
    for name in ("presence", "frequency"):
      value = getattr(self, name)
      if not -2.0 <= value <= 2.0:
        raise ValueError(f"Penalties.{name}={value} must be in [-2, 2]")

  @property
  def active(self) -> bool:
    return self.presence != 0.0 or self.frequency != 0.0


def penalize(logits_BV: jax.Array, counts_BV: jax.Array, penalty_B2: jax.Array) -> jax.Array:
  """`Penalties` per row: penalty_B2[:, 0] presence, [:, 1] frequency; counts_BV the row's
  earlier answer tokens. A row with zeros gets its logits back exactly."""
  counts_BV = counts_BV.astype(jnp.float32)
  return (logits_BV.astype(jnp.float32) - penalty_B2[:, 1:2] * counts_BV
          - penalty_B2[:, 0:1] * (counts_BV > 0))


def make(kind: str = "greedy", *, temperature: float = 1.0, top_k: int = 0,
         top_p: float = 1.0) -> Sampler:
  """A sampler by name (CLI/config strings): greedy, temperature, top_k, top_p."""
  if kind == "greedy":
    return Greedy()
  if kind == "temperature":
    return Temperature(temperature)
  if kind == "top_k":
    return TopK(top_k, temperature)
  if kind == "top_p":
    return TopP(top_p, temperature)
  raise ValueError(f"unknown sampler {kind!r}; known: {', '.join(KINDS)}")


def _check_temperature(t: float) -> None:
  if not t > 0.0:
    raise ValueError(f"temperature={t} must be > 0 (use the greedy sampler for argmax)")


def _categorical(logits_BV: jax.Array, keys_B: jax.Array) -> jax.Array:
  return jax.vmap(jax.random.categorical)(keys_B, logits_BV).astype(jnp.int32)
