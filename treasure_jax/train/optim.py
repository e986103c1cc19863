"""The optimizer: AdamW with a weight-decay mask, global-norm clipping and learning-rate schedules.

The method's schedule is a linear warm-up from 0 to `peak_lr`, then a cosine decay to
`final_lr` at `num_train_steps` (paper: 10 warm-up steps, 2.5e-4 → 1.25e-4). "linear" decays
linearly instead, "constant" holds the peak after warm-up. Norm scales and biases are not
decayed. Deliberately left to others: gradient accumulation and loss normalization (`step`),
the state holding the optimizer state (`state`).
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import optax

SCHEDULES = ("cosine", "linear", "constant")
# A parameter whose path contains one of these names is not decayed (RMSNorm scales, biases).
NO_DECAY_NAMES = ("norm", "bias")


@dataclasses.dataclass(frozen=True)
class OptimConfig:
  """AdamW hyperparameters; `clip_norm=0` disables clipping, `weight_decay` is decoupled."""
  schedule: str = "cosine"
  peak_lr: float = 2.5e-4
  final_lr: float = 1.25e-4
  warmup_steps: int = 10
  weight_decay: float = 0.01
  b1: float = 0.9
  b2: float = 0.95
  eps: float = 1e-8
  clip_norm: float = 1.0

  def __post_init__(self):
    if self.schedule not in SCHEDULES:
      raise ValueError(f"optim.schedule={self.schedule!r} is not one of {', '.join(SCHEDULES)}")
    for name in ("peak_lr", "final_lr", "weight_decay", "clip_norm", "eps"):
      if getattr(self, name) < 0:
        raise ValueError(f"optim.{name}={getattr(self, name)} must be >= 0")
    if self.warmup_steps < 0:
      raise ValueError(f"optim.warmup_steps={self.warmup_steps} must be >= 0")


def schedule(cfg: OptimConfig, num_train_steps: int) -> optax.Schedule:
  """Learning rate as a function of the optimizer step (0-based: step 0 uses lr(0))."""
  if cfg.warmup_steps >= num_train_steps and cfg.schedule != "constant":
    raise ValueError(f"optim.warmup_steps={cfg.warmup_steps} must be < num_train_steps="
                     f"{num_train_steps} for the {cfg.schedule} schedule")
  warmup = optax.linear_schedule(0.0, cfg.peak_lr, cfg.warmup_steps)
  decay_steps = max(num_train_steps - cfg.warmup_steps, 1)
  if cfg.schedule == "cosine":
    # optax's alpha is the final value as a fraction of the peak.
    alpha = cfg.final_lr / cfg.peak_lr if cfg.peak_lr else 0.0
    after = optax.cosine_decay_schedule(cfg.peak_lr, decay_steps, alpha=alpha)
  elif cfg.schedule == "linear":
    after = optax.linear_schedule(cfg.peak_lr, cfg.final_lr, decay_steps)
  else:
    after = optax.constant_schedule(cfg.peak_lr)
  if cfg.warmup_steps == 0:
    return after
  return optax.join_schedules([warmup, after], [cfg.warmup_steps])


def _path_names(path: tuple[Any, ...]) -> list[str]:
  names = []
  for entry in path:
    for attr in ("key", "name", "idx"):
      if hasattr(entry, attr):
        names.append(str(getattr(entry, attr)).lower())
        break
    else:
      names.append(str(entry).lower())
  return names


def decay_mask(params: Any) -> Any:
  """A pytree of bools like `params`: True where weight decay applies (not norms or biases)."""
  def decays(path, _):
    return not any(bad in name for name in _path_names(path) for bad in NO_DECAY_NAMES)
  return jax.tree_util.tree_map_with_path(decays, params)


def make(cfg: OptimConfig, num_train_steps: int) -> optax.GradientTransformation:
  """Clip by global norm, then AdamW at `schedule(cfg, num_train_steps)`."""
  adamw = optax.adamw(schedule(cfg, num_train_steps), b1=cfg.b1, b2=cfg.b2, eps=cfg.eps,
                      weight_decay=cfg.weight_decay, mask=decay_mask)
  if cfg.clip_norm <= 0:
    return adamw
  return optax.chain(optax.clip_by_global_norm(cfg.clip_norm), adamw)


def global_norm(tree: Any) -> jax.Array:
  """L2 norm over every leaf, accumulated in float32 whatever the leaves' dtype."""
  leaves = jax.tree_util.tree_leaves(tree)
  return jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in leaves))
