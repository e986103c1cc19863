"""The train state pytree (step, parameters, optimizer state, RNG) and its shardings.

The model is split once (`nnx.split`) into a static GraphDef and its parameter `nnx.State`; the
jitted steps only see the State. Optimizer-state leaves shaped like a parameter inherit that
parameter's sharding (its logical axes travel in the nnx.Param metadata); scalars are replicated.
With LoRA (`ModelConfig.lora`) `params` holds only the adapters (nnx.LoRAParam: what gets
gradients, optimizer state and checkpoints) and `frozen` the base parameters; `model_params`
joins them for a forward pass. Without LoRA `frozen` is None and `params` is everything.
`flatten`/`unflatten` give the "a.b.c" → array view used by checkpoints and structure diffs.
Deliberately left to others: building or importing the model (`model/`), the steps (`step`).
"""
from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from treasure_jax.model import lora
from treasure_jax.model import sharding as sharding_lib


@flax.struct.dataclass
class TrainState:
  """Everything a step reads and writes. `rng` is a raw uint32 key (checkpointable as is)."""
  step: jax.Array
  params: nnx.State
  opt_state: optax.OptState
  rng: jax.Array
  frozen: nnx.State | None = None  # LoRA: the base parameters (not trained, not checkpointed).


def split_model(model: nnx.Module) -> tuple[nnx.GraphDef, nnx.State]:
  """(graphdef, params); fails if the model holds state other than parameters."""
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  if jax.tree.leaves(rest):
    raise ValueError(f"model holds non-parameter state the train step would drop: "
                     f"{sorted(flatten(rest))[:5]}")
  return graphdef, params


def split_trainable(params: nnx.State) -> tuple[nnx.State, nnx.State | None]:
  """(adapters, base) of a LoRA model's parameters; (params, None) of a model without adapters."""
  adapters, base = lora.split(params)
  return (params, None) if not jax.tree.leaves(adapters) else (adapters, base)


def model_params(train_state: TrainState) -> nnx.State:
  """Every parameter of the model (trainable and frozen), e.g. for an eval forward pass."""
  if train_state.frozen is None:
    return train_state.params
  return nnx.merge_state(train_state.params, train_state.frozen)


def _initial(params: nnx.State, optimizer: optax.GradientTransformation, seed: int
             ) -> TrainState:
  trainable, frozen = split_trainable(params)
  return TrainState(step=jnp.zeros((), jnp.int32), params=trainable,
                    opt_state=optimizer.init(trainable), rng=jax.random.PRNGKey(seed),
                    frozen=frozen)


def create(params: nnx.State, optimizer: optax.GradientTransformation, seed: int,
           shardings: TrainState) -> TrainState:
  """The state at step 0 around already-placed `params` (optimizer state created in place)."""
  init = jax.jit(lambda p: _initial(p, optimizer, seed), out_shardings=shardings)
  return init(params)


def abstract(abstract_params: nnx.State, optimizer: optax.GradientTransformation) -> TrainState:
  """ShapeDtypeStructs of the state (nothing allocated)."""
  return jax.eval_shape(lambda p: _initial(p, optimizer, 0), abstract_params)


def shardings(abstract_state: TrainState, mesh: Mesh, rules: sharding_lib.Rules) -> TrainState:
  """NamedShardings of every leaf of `abstract_state` (see the module docstring)."""
  replicated = NamedSharding(mesh, PartitionSpec())
  return TrainState(
      step=replicated,
      params=sharding_lib.state_shardings(abstract_state.params, mesh, rules),
      opt_state=sharding_lib.state_shardings(abstract_state.opt_state, mesh, rules),
      rng=replicated,
      frozen=(None if abstract_state.frozen is None
              else sharding_lib.state_shardings(abstract_state.frozen, mesh, rules)))


def _key_name(entry: Any) -> str:
  for attr in ("key", "name", "idx"):
    if hasattr(entry, attr):
      return str(getattr(entry, attr))
  return str(entry)


def flatten(tree: Any) -> dict[str, Any]:
  """{"layers.0.attn.q_proj.kernel": leaf, ...}; nnx Variables' `.value` is left out of names."""
  flat = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    names = [_key_name(p) for p in path]
    if names and names[-1] == "value" and isinstance(path[-1], jax.tree_util.GetAttrKey):
      names = names[:-1]
    flat[".".join(names)] = leaf
  return flat


def unflatten(template: Any, flat: dict[str, Any]) -> Any:
  """The tree of `template` with the leaves of `flat` (keys as `flatten(template)` makes them)."""
  keys = list(flatten(template))
  if set(keys) != set(flat):
    raise ValueError(f"unflatten: keys differ from the template: {describe_diff(template, flat)}")
  return jax.tree_util.tree_structure(template).unflatten([flat[k] for k in keys])


def describe_diff(expected: Any, found: dict[str, Any], limit: int = 8) -> str:
  """What differs between a tree and a flat {name: array-like}: missing, unexpected, shapes."""
  want = {k: v for k, v in flatten(expected).items()}
  problems = []
  missing = sorted(set(want) - set(found))
  extra = sorted(set(found) - set(want))
  if missing:
    problems.append(f"{len(missing)} missing (e.g. {', '.join(missing[:limit])})")
  if extra:
    problems.append(f"{len(extra)} unexpected (e.g. {', '.join(extra[:limit])})")
  shapes = [f"{k}: expected {tuple(want[k].shape)}, found {tuple(found[k].shape)}"
            for k in sorted(set(want) & set(found))
            if hasattr(found[k], "shape") and tuple(want[k].shape) != tuple(found[k].shape)]
  if shapes:
    problems.append(f"{len(shapes)} with other shapes ({'; '.join(shapes[:limit])})")
  return "; ".join(problems) if problems else "no differences"
