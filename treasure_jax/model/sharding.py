"""Device mesh, the one logical-axis rules table, and logical axis names → `NamedSharding`.

Model code names every parameter (nnx `out_sharding` metadata) and key activation with logical
axes ("embed", "heads", ...). This module alone maps them onto the mesh axes ("data", "fsdp",
"tensor"), with one rules table holding the presets "dp", "fsdp" and "fsdp_tp". A mesh axis that
does not divide an array dimension is dropped for that array (it is replicated there instead),
so small models (or 1 kv head) still shard cleanly.

Left to others: creating sharded models (`transformer.create`), optimizer-state shardings and the
jitted steps (`train/`), the decode loop (`decode/`).
"""
from __future__ import annotations

import dataclasses
import logging
import math
from typing import Any, Mapping, Sequence

import jax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

MeshAxes = str | tuple[str, ...] | None
Rules = tuple[tuple[str, MeshAxes], ...]
LogicalAxes = Sequence[str | None]

# The rules table: logical axis -> mesh axes, one column per preset. Parameter names: "embed",
# "vocab", "heads", "kv_heads", "head_dim", "mlp", "layers", "norm", "lora_rank" (the r of LoRA
# adapters, replicated: A and B shard along their other axis). Activation names: "batch",
# "seq", "act_embed" (the residual stream's D must not follow the parameters' fsdp sharding),
# "cache_seq". "heads"/"kv_heads"/"mlp"/"vocab" serve both.
_PRESETS = ("dp", "fsdp", "fsdp_tp")
_TABLE: dict[str, tuple[MeshAxes, MeshAxes, MeshAxes]] = {
    #              dp           fsdp         fsdp_tp
    "batch":      (BATCH_AXES,  BATCH_AXES,  BATCH_AXES),
    "seq":        (None,        None,        None),
    "act_embed":  (None,        None,        None),
    "cache_seq":  (None,        None,        None),
    "embed":      (None,        "fsdp",      "fsdp"),
    "vocab":      (None,        None,        "tensor"),
    "heads":      (None,        None,        "tensor"),
    "kv_heads":   (None,        None,        "tensor"),
    "head_dim":   (None,        None,        None),
    "mlp":        (None,        None,        "tensor"),
    "layers":     (None,        None,        None),
    "norm":       (None,        None,        None),
    "lora_rank":  (None,        None,        None),
}


def preset_rules(preset: str) -> Rules:
  """The rules of one preset column: "dp", "fsdp" or "fsdp_tp"."""
  if preset not in _PRESETS:
    raise ValueError(f"unknown sharding rules preset {preset!r}; known: {', '.join(_PRESETS)}")
  col = _PRESETS.index(preset)
  return tuple((name, axes[col]) for name, axes in _TABLE.items())


@dataclasses.dataclass(frozen=True)
class MeshConfig:
  """Mesh shape over ("data", "fsdp", "tensor"); one entry may be -1 (the remaining devices)."""
  shape: tuple[int, int, int] = (1, -1, 1)
  rules: str = "fsdp"

  def __post_init__(self):
    object.__setattr__(self, "shape", tuple(int(s) for s in self.shape))
    if len(self.shape) != len(MESH_AXES):
      raise ValueError(f"MeshConfig.shape={self.shape} needs one entry per axis {MESH_AXES}")
    if self.shape.count(-1) > 1 or any(s == 0 or s < -1 for s in self.shape):
      raise ValueError(f"MeshConfig.shape={self.shape}: positive sizes and at most one -1")
    preset_rules(self.rules)  # Validates the preset name.


def make_mesh(cfg: MeshConfig, devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A mesh of `devices` (default: all) shaped by `cfg`, with Auto axis types."""
  devices = list(jax.devices() if devices is None else devices)
  shape = list(cfg.shape)
  known = math.prod(s for s in shape if s != -1)
  if -1 in shape:
    if len(devices) % known:
      raise ValueError(f"MeshConfig.shape={cfg.shape}: {len(devices)} devices are not divisible "
                       f"by {known}")
    shape[shape.index(-1)] = len(devices) // known
  if math.prod(shape) != len(devices):
    raise ValueError(f"MeshConfig.shape={cfg.shape} needs {math.prod(shape)} devices, "
                     f"got {len(devices)}")
  return jax.make_mesh(tuple(shape), MESH_AXES, devices=devices,
                       axis_types=(jax.sharding.AxisType.Auto,) * len(MESH_AXES))


def logical_to_spec(logical_axes: LogicalAxes, rules: Rules, mesh: Mesh | None = None,
                    shape: Sequence[int] | None = None) -> PartitionSpec:
  """PartitionSpec of logical axes. With `mesh` and `shape`, mesh axes that do not divide their
  dimension are dropped; a mesh axis is never used twice in one spec."""
  table = dict(rules)
  used: set[str] = set()
  entries = []
  for dim, name in enumerate(logical_axes):
    if name is None:
      entries.append(None)
      continue
    if name not in table:
      raise ValueError(f"logical axis {name!r} is not in the sharding rules; known: "
                       f"{sorted(table)}")
    axes = _as_tuple(table[name])
    kept = []
    for axis in axes:
      if axis in used:
        continue
      if mesh is not None and shape is not None:
        size = math.prod(mesh.shape[a] for a in kept + [axis])
        if shape[dim] % size:
          continue
      kept.append(axis)
    used.update(kept)
    entries.append(None if not kept else kept[0] if len(kept) == 1 else tuple(kept))
  return PartitionSpec(*entries)


def _as_tuple(axes: MeshAxes) -> tuple[str, ...]:
  """A rules-table entry (None, one mesh axis or several) as a tuple of mesh axes."""
  return () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)


def logical_to_mesh_sharding(logical_axes: LogicalAxes | None, mesh: Mesh, rules: Rules,
                             shape: Sequence[int] | None = None) -> NamedSharding:
  """NamedSharding of an array whose dimensions carry `logical_axes` (None: replicated)."""
  if logical_axes is None:
    return NamedSharding(mesh, PartitionSpec())
  if shape is not None and len(shape) != len(logical_axes):
    raise ValueError(f"logical axes {tuple(logical_axes)} do not match shape {tuple(shape)}")
  return NamedSharding(mesh, logical_to_spec(logical_axes, rules, mesh, shape))


def _is_variable(x: Any) -> bool:
  return isinstance(x, nnx.Variable)


def state_shardings(abstract_state: Any, mesh: Mesh, rules: Rules) -> Any:
  """The same tree as `abstract_state` (an nnx.State of Variables, e.g. from `nnx.eval_shape`)
  with each Variable's value replaced by its NamedSharding: usable as jit in/out_shardings."""
  def one(v: Any) -> Any:
    if not _is_variable(v):
      return NamedSharding(mesh, PartitionSpec())
    axes = v.get_metadata().get("out_sharding")
    sharding = logical_to_mesh_sharding(axes, mesh, rules, v.shape)
    if axes is not None and sharding.spec != logical_to_spec(axes, rules):
      logging.info("sharding: %s %s falls back to %s (mesh axes must divide dims)",
                   tuple(axes), v.shape, sharding.spec)
    return v.replace(sharding)
  return jax.tree.map(one, abstract_state, is_leaf=_is_variable)


def tree_shardings(tree: Any, logical_axes_tree: Any, mesh: Mesh, rules: Rules) -> Any:
  """NamedShardings for a pytree of arrays (or ShapeDtypeStructs) given a matching pytree of
  logical-axes tuples (e.g. `transformer.Cache.logical_axes()`)."""
  axes_leaves = jax.tree.leaves(logical_axes_tree, is_leaf=lambda x: isinstance(x, tuple))
  leaves, treedef = jax.tree.flatten(tree)
  if len(axes_leaves) != len(leaves):
    raise ValueError(f"{len(leaves)} arrays but {len(axes_leaves)} logical-axes entries")
  return treedef.unflatten([logical_to_mesh_sharding(a, mesh, rules, x.shape)
                            for x, a in zip(leaves, axes_leaves)])


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Sharding of input batches (tokens_BT, ...): batch over ("data", "fsdp"), rest replicated."""
  return NamedSharding(mesh, PartitionSpec(BATCH_AXES))


@dataclasses.dataclass(frozen=True)
class Plan:
  """A mesh plus rules: what the model needs to constrain activations. Hashable (it is a static
  attribute of the model and so part of its nnx GraphDef)."""
  mesh: Mesh
  rules: Rules

  @classmethod
  def create(cls, mesh: Mesh, rules: Rules | str | Mapping[str, MeshAxes]) -> Plan:
    if isinstance(rules, str):
      rules = preset_rules(rules)
    elif isinstance(rules, Mapping):
      rules = tuple(rules.items())
    return cls(mesh, tuple((name, tuple(a) if isinstance(a, list) else a) for name, a in rules))

  def sharding(self, logical_axes: LogicalAxes, shape: Sequence[int]) -> NamedSharding:
    return logical_to_mesh_sharding(logical_axes, self.mesh, self.rules, shape)

  def splits(self, logical_axis: str) -> bool:
    """Whether `logical_axis` is sharded over mesh axes of total size > 1 under these rules."""
    return math.prod(self.mesh.shape[a] for a in _as_tuple(dict(self.rules).get(logical_axis))) > 1


def constrain(x: jax.Array, logical_axes: LogicalAxes, plan: Plan | None) -> jax.Array:
  """`with_sharding_constraint` by logical names; a no-op without a plan (single device)."""
  if plan is None:
    return x
  return jax.lax.with_sharding_constraint(x, plan.sharding(logical_axes, x.shape))
