"""Hugging Face checkpoints ↔ the NNX Transformer: import tensor by tensor, export to safetensors.

  cfg, model = hf.load_dir(path, mesh=mesh, rules="fsdp", dtype="bfloat16")
  cfg, model = hf.load_from_tensors(hf_config, tensors.__getitem__, tensors.keys())  # e.g. GGUF
  hf.save_dir(model, out_path)  # config.json + model.safetensors (+ index when sharded)
  hf.config_from_hf(config_dict, **overrides) / hf.config_to_hf(cfg)  (see hf_config.py)
  hf.tensor_shapes(cfg) -> {hf_name: shape}; hf.hf_tensors(model) -> iterator of (name, array)

Import reads one HF tensor at a time (safetensors `safe_open`), converts it to our layout on the
host and places it straight into its sharding with `jax.make_array_from_callback`; scanned models
stack per-layer arrays (on device when a mesh is given). Tensors in HF layout ([out, in] linear weights, q/k in HF's
rotate-half RoPE order) map to our params as listed in `_entries`. Missing, unexpected or
mis-shaped tensors are errors naming the tensor. Pickle-based `.bin` weights are refused.
Export gathers one parameter at a time. Tokenizer files are the caller's business.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import pathlib
from typing import Any, Callable, Iterable, Iterator, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import safetensors
import safetensors.numpy
from flax import nnx
from jax.experimental import multihost_utils

from treasure_jax.model import config as config_lib
from treasure_jax.model import hf_config
from treasure_jax.model import sharding
from treasure_jax.model import transformer

config_from_hf = hf_config.config_from_hf
config_to_hf = hf_config.config_to_hf

# Buffers some old checkpoints carry that are not parameters.
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


@dataclasses.dataclass(frozen=True)
class _Entry:
  """One HF tensor ↔ one parameter (or one layer of a stacked parameter)."""
  hf_name: str
  path: tuple[Any, ...]  # nnx state path of the parameter.
  layer: int | None  # Index on the leading L axis of a scanned parameter.
  shape: tuple[int, ...]  # Our (per-layer) shape.
  n_in: int | None  # Linear: HF [out, in] is our kernel in_shape + out_shape; None: reshape only.
  flat: bool = False  # HF stores it flat (biases [N*H]).

  @property
  def hf_shape(self) -> tuple[int, ...]:
    if self.n_in is None:
      return (math.prod(self.shape),) if self.flat else self.shape
    return (math.prod(self.shape[self.n_in:]), math.prod(self.shape[:self.n_in]))

  def to_ours(self, x: np.ndarray) -> np.ndarray:
    return x.reshape(self.shape) if self.n_in is None else x.T.reshape(self.shape)

  def to_hf(self, x: np.ndarray) -> np.ndarray:
    if self.n_in is None:
      return x.reshape(self.hf_shape)
    return x.reshape(math.prod(self.shape[:self.n_in]), -1).T


def _entries(cfg: config_lib.ModelConfig) -> list[_Entry]:
  d, n, k, h, f, v = (cfg.embed_dim, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.mlp_dim,
                      cfg.vocab_size)
  block = [("input_layernorm.weight", ("attn_norm", "scale"), (d,), None),
           ("self_attn.q_proj.weight", ("attn", "q_proj", "kernel"), (d, n, h), 1),
           ("self_attn.k_proj.weight", ("attn", "k_proj", "kernel"), (d, k, h), 1),
           ("self_attn.v_proj.weight", ("attn", "v_proj", "kernel"), (d, k, h), 1),
           ("self_attn.o_proj.weight", ("attn", "o_proj", "kernel"), (n, h, d), 2),
           ("mlp.gate_proj.weight", ("mlp", "gate_proj", "kernel"), (d, f), 1),
           ("mlp.up_proj.weight", ("mlp", "up_proj", "kernel"), (d, f), 1),
           ("mlp.down_proj.weight", ("mlp", "down_proj", "kernel"), (f, d), 1)]
  if cfg.qkv_bias:
    block += [(f"self_attn.{p}_proj.bias", ("attn", f"{p}_proj", "bias"), (heads, h), "flat")
              for p, heads in (("q", n), ("k", k), ("v", k))]
  if cfg.out_bias:
    block.append(("self_attn.o_proj.bias", ("attn", "o_proj", "bias"), (d,), None))
  if cfg.post_norms:  # Gemma 2 names its four norms; Llama's "post_attention" is the pre-MLP one.
    block += [("post_attention_layernorm.weight", ("post_attn_norm", "scale"), (d,), None),
              ("pre_feedforward_layernorm.weight", ("mlp_norm", "scale"), (d,), None),
              ("post_feedforward_layernorm.weight", ("post_mlp_norm", "scale"), (d,), None)]
  else:
    block.append(("post_attention_layernorm.weight", ("mlp_norm", "scale"), (d,), None))
  out = [_Entry("model.embed_tokens.weight", ("embedder", "embedding"), None, (v, d), None),
         _Entry("model.norm.weight", ("final_norm", "scale"), None, (d,), None)]
  if not cfg.tie_embeddings:
    out.append(_Entry("lm_head.weight", ("lm_head", "kernel"), None, (d, v), 1))
  for i in range(cfg.num_layers):
    for name, sub, shape, n_in in block:
      path = ("layers", *sub) if cfg.scan_layers else ("layers", i, *sub)
      out.append(_Entry(f"model.layers.{i}.{name}", path, i if cfg.scan_layers else None, shape,
                        None if n_in == "flat" else n_in, flat=n_in == "flat"))
  return out


def tensor_shapes(cfg: config_lib.ModelConfig) -> dict[str, tuple[int, ...]]:
  """HF tensor name -> HF shape of every tensor a checkpoint of `cfg` holds."""
  return {e.hf_name: e.hf_shape for e in _entries(cfg)}


class _HostTensor:
  """Our-layout host copy of the most recently used HF tensor: every device shard of one
  parameter slices the same copy, and only one tensor is held at a time."""

  def __init__(self, get_tensor: Callable[[str], np.ndarray], dtype: np.dtype):
    self.get_tensor, self.dtype = get_tensor, dtype
    self.name, self.value = None, None

  def __call__(self, entry: _Entry) -> np.ndarray:
    if self.name != entry.hf_name:
      self.value = None
      x = np.asarray(self.get_tensor(entry.hf_name))
      self.value = np.ascontiguousarray(entry.to_ours(x).astype(self.dtype))
      self.name = entry.hf_name
    return self.value


def _validate(entries: list[_Entry], names: Iterable[str], get_shape: Callable[[str], Any],
              get_tensor: Callable[[str], np.ndarray], cfg: config_lib.ModelConfig) -> None:
  names = set(names)
  expected = {e.hf_name for e in entries}
  missing = sorted(expected - names)
  if missing:
    raise ValueError(f"checkpoint is missing tensor {missing[0]!r} ({len(missing)} missing in "
                     f"all: {missing[:5]})")
  extra = sorted(n for n in names - expected if not n.endswith(_IGNORED_SUFFIXES))
  if cfg.tie_embeddings and "lm_head.weight" in extra:
    if not np.array_equal(np.asarray(get_tensor("lm_head.weight")),
                          np.asarray(get_tensor("model.embed_tokens.weight"))):
      raise ValueError("checkpoint: tensor 'lm_head.weight' differs from "
                       "'model.embed_tokens.weight' but config.json ties them")
    extra.remove("lm_head.weight")
  if extra:
    raise ValueError(f"checkpoint has unexpected tensor {extra[0]!r} ({len(extra)} in all: "
                     f"{extra[:5]}); it does not match config.json")
  for e in entries:
    shape = tuple(int(s) for s in get_shape(e.hf_name))
    if shape != e.hf_shape:
      raise ValueError(f"checkpoint tensor {e.hf_name!r} has shape {shape}, config.json implies "
                       f"{e.hf_shape}")


def load_from_tensors(hf_config_dict: Mapping[str, Any], get_tensor: Callable[[str], np.ndarray],
                      names: Iterable[str], *, mesh: jax.sharding.Mesh | None = None,
                      rules: sharding.Rules | str = "fsdp", param_dtype: str | None = None,
                      get_shape: Callable[[str], Any] | None = None, **overrides: Any
                      ) -> tuple[config_lib.ModelConfig, transformer.Transformer]:
  """Build (cfg, model) from HF-named, HF-layout tensors fetched one at a time by `get_tensor`.

  `overrides` are non-architecture ModelConfig fields (dtype, scan_layers, remat, ...). With a
  mesh, every parameter lands directly in its sharding under `rules` and the model carries the
  plan. `get_shape` (default: `get_tensor(name).shape`) lets shapes be checked before loading.
  """
  if param_dtype is not None:
    overrides["param_dtype"] = param_dtype
  cfg = config_from_hf(hf_config_dict, **overrides)
  names = list(names)
  entries = _entries(cfg)
  _validate(entries, names, get_shape or (lambda n: np.shape(get_tensor(n))), get_tensor, cfg)
  plan = None if mesh is None else sharding.Plan.create(mesh, rules)
  graphdef, abstract_state = nnx.split(transformer.abstract_model(cfg, plan))
  by_path: dict[tuple[Any, ...], list[_Entry]] = {}
  for e in entries:
    by_path.setdefault(e.path, []).append(e)
  host = _HostTensor(get_tensor, cfg.jnp_param_dtype)
  leaves = []
  for path, var in nnx.to_flat_state(abstract_state):
    if path not in by_path:
      raise ValueError(f"no checkpoint tensor maps to parameter {'/'.join(map(str, path))}")
    leaves.append((path, var.replace(_place(var, by_path[path], host, plan))))
  return cfg, nnx.merge(graphdef, nnx.from_flat_state(leaves))


def _place(var: nnx.Variable, entries: list[_Entry], host: _HostTensor,
           plan: sharding.Plan | None) -> jax.Array:
  axes = var.get_metadata().get("out_sharding")
  if plan is None:
    target = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  else:
    target = plan.sharding(axes, var.shape)
  if entries[0].layer is None:
    return jax.make_array_from_callback(var.shape, target, lambda idx: host(entries[0])[idx])
  entries = sorted(entries, key=lambda e: e.layer)
  if plan is None:  # One device holds the whole model anyway: stack this parameter on the host.
    return jax.device_put(np.stack([host(e) for e in entries]), target)
  # Scanned: place each layer in the stacked sharding minus its layer axis, then stack on device.
  layer_target = jax.sharding.NamedSharding(plan.mesh, jax.sharding.PartitionSpec(
      *target.spec[1:]))
  per_layer = [jax.make_array_from_callback(var.shape[1:], layer_target,
                                            lambda idx, e=e: host(e)[idx]) for e in entries]
  return jax.jit(lambda xs: jnp.stack(xs), out_shardings=target)(per_layer)


def _weight_files(path: pathlib.Path) -> dict[str, str]:
  """HF tensor name -> safetensors file name, from the index or the single file."""
  index = path / "model.safetensors.index.json"
  if index.exists():
    weight_map = json.loads(index.read_text())["weight_map"]
    for file in sorted(set(weight_map.values())):
      if not (path / file).exists():
        raise FileNotFoundError(f"{index}: lists {file}, which does not exist")
    return dict(weight_map)
  single = path / "model.safetensors"
  if single.exists():
    with safetensors.safe_open(str(single), framework="np") as f:
      return {name: single.name for name in f.keys()}
  pickles = sorted(p.name for p in path.glob("*.bin"))
  if pickles:
    raise ValueError(f"{path}: only pickle-based weights ({', '.join(pickles[:3])}); refusing to "
                     "load them (unpickling can run arbitrary code). Convert the checkpoint to "
                     "safetensors first.")
  raise FileNotFoundError(f"{path}: no model.safetensors or model.safetensors.index.json")


def load_dir(path: str | pathlib.Path, *, mesh: jax.sharding.Mesh | None = None,
             rules: sharding.Rules | str = "fsdp", param_dtype: str | None = None,
             **overrides: Any) -> tuple[config_lib.ModelConfig, transformer.Transformer]:
  """Load a HF model directory (config.json + model.safetensors or a sharded index)."""
  path = pathlib.Path(path)
  config_file = path / "config.json"
  if not config_file.exists():
    raise FileNotFoundError(f"{config_file}: not found (not a Hugging Face model directory?)")
  hf = json.loads(config_file.read_text())
  files = _weight_files(path)
  with contextlib.ExitStack() as stack:
    handles = {file: stack.enter_context(safetensors.safe_open(str(path / file), framework="np"))
               for file in sorted(set(files.values()))}
    return load_from_tensors(
        hf, lambda n: handles[files[n]].get_tensor(n), files.keys(), mesh=mesh, rules=rules,
        param_dtype=param_dtype, get_shape=lambda n: handles[files[n]].get_slice(n).get_shape(),
        **overrides)


def host_array(x: jax.Array) -> np.ndarray:
  """`x` as one host array (gathered from every process when it is not all addressable)."""
  if not x.is_fully_addressable:
    x = multihost_utils.process_allgather(x, tiled=True)
  return np.asarray(jax.device_get(x))


# Traced index: one compile per stacked parameter shape, not per (shape, layer).
_take_layer = jax.jit(lambda x, i: jax.lax.dynamic_index_in_dim(x, i, keepdims=False))


def hf_tensors(model: transformer.Transformer, dtype: str | None = None
               ) -> Iterator[tuple[str, np.ndarray]]:
  """(HF name, HF-layout host array) of each parameter, one at a time."""
  cfg = model.cfg
  dtype = jnp.dtype(dtype or cfg.param_dtype)
  flat = dict(nnx.to_flat_state(nnx.state(model, nnx.Param)))
  for e in _entries(cfg):
    x = flat[e.path][...]
    if e.layer is not None:
      x = _take_layer(x, e.layer)
    yield e.hf_name, np.ascontiguousarray(e.to_hf(host_array(x)).astype(dtype))


def save_dir(model: transformer.Transformer, path: str | pathlib.Path, *, dtype: str | None = None,
             max_shard_bytes: int = 4 << 30, extra_config: Mapping[str, Any] | None = None
             ) -> list[str]:
  """Write config.json + safetensors that `transformers` loads; returns the weight file names.

  More than `max_shard_bytes` of weights are split into model-0000i-of-0000n.safetensors with
  an index. `extra_config` adds fields to config.json (e.g. bos/eos token ids). Every process
  must call this (gathering is collective); process 0 writes.
  """
  cfg, path = model.cfg, pathlib.Path(path)
  dtype = dtype or cfg.param_dtype
  itemsize = jnp.dtype(dtype).itemsize
  shards: list[list[str]] = [[]]
  size = 0
  for e in _entries(cfg):
    nbytes = math.prod(e.shape) * itemsize
    if shards[-1] and size + nbytes > max_shard_bytes:
      shards.append([])
      size = 0
    shards[-1].append(e.hf_name)
    size += nbytes
  files = (["model.safetensors"] if len(shards) == 1 else
           [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))])
  writer = jax.process_index() == 0
  if writer:
    path.mkdir(parents=True, exist_ok=True)
    hf = {**config_to_hf(cfg), "torch_dtype": dtype, "dtype": dtype, **(extra_config or {})}
    (path / "config.json").write_text(json.dumps(hf, indent=2, sort_keys=True) + "\n")
  tensors = hf_tensors(model, dtype)
  weight_map, total = {}, 0
  for file, names in zip(files, shards):
    chunk = dict(next(tensors) for _ in names)
    total += sum(x.nbytes for x in chunk.values())
    weight_map.update({name: file for name in chunk})
    if writer:
      safetensors.numpy.save_file(chunk, str(path / file), metadata={"format": "pt"})
  if writer and len(files) > 1:
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (path / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
  return files
