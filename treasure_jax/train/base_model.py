"""A run's starting parameters (random, a Hugging Face directory or a GGUF file), and the pointer
a LoRA checkpoint keeps to the frozen base it was trained on.

`load_params(cfg, init_from, seed, ...)` gives every parameter a forward pass of `cfg` needs:
the base (random for `seed`, or imported, whose architecture must equal `cfg`'s) plus, when
`cfg.lora` is set, fresh adapters drawn for `seed` exactly as `transformer.create` draws them.
A LoRA checkpoint stores only its adapters; its meta item "base" (`pointer`) says where the base
came from: {"init_from": absolute path or "" for a random base, "seed": the run's seed,
"sha256": of the base's config.json and weight files (empty for a random base)}. `load_pointed`
reloads that base and refuses one whose files have changed since.
Deliberately left to others: the adapters' math (`model.lora`), the checkpoint format
(`checkpoint`), the train state (`state`).
"""
from __future__ import annotations

import dataclasses
import functools
import glob
import hashlib
import os
from typing import Any

import jax
from flax import nnx

from treasure_jax.model import config as model_config
from treasure_jax.model import gguf
from treasure_jax.model import hf
from treasure_jax.model import lora
from treasure_jax.model import quant
from treasure_jax.model import sharding
from treasure_jax.model import transformer
from treasure_jax.train import state as state_lib

# Fields a config may set for an imported model, and `lora` (a LoRA run's base has none).
NOT_ARCHITECTURE = model_config.EXECUTION_FIELDS + ("lora",)


def load_params(cfg: model_config.ModelConfig, init_from: str, seed: int,
                mesh: jax.sharding.Mesh | None, rules: sharding.Rules | str = "fsdp"
                ) -> nnx.State:
  """Random parameters (seed `seed`) or the base model's, placed in their shardings (on the
  first local device without a mesh), with fresh adapters when `cfg.lora` is set."""
  if not init_from:
    return state_lib.split_model(transformer.create(cfg, seed=seed, mesh=mesh, rules=rules))[1]
  overrides = {k: getattr(cfg, k) for k in model_config.EXECUTION_FIELDS}
  if init_from.endswith(".gguf"):
    ckpt = gguf.load(init_from)
    loaded_cfg, loaded = hf.load_from_tensors(ckpt.config, ckpt.get_tensor, ckpt.names,
                                              mesh=mesh, rules=rules,
                                              get_shape=lambda n: ckpt.shapes[n], **overrides)
  else:
    loaded_cfg, loaded = hf.load_dir(init_from, mesh=mesh, rules=rules, **overrides)
  check_architecture(cfg, loaded_cfg, init_from)
  params = state_lib.split_model(loaded)[1]
  if cfg.lora is None:
    return params
  plan = None if mesh is None else sharding.Plan.create(mesh, rules)
  if cfg.lora.base_bits:
    params = _quantized(params, cfg, plan)
  return nnx.merge_state(params, _fresh_adapters(cfg, seed, plan))


def _quantized(params: nnx.State, cfg: model_config.ModelConfig,
               plan: sharding.Plan | None) -> nnx.State:
  """An imported float base with its projection kernels quantized as `cfg.lora` says (the
  layout `transformer.create(cfg)` gives a random base), placed in their shardings."""
  abstract = nnx.state(transformer.abstract_model(cfg, plan), lora.BASE)
  shardings = (None if plan is None
               else sharding.state_shardings(abstract, plan.mesh, plan.rules))
  fn = jax.jit(lambda p: quant.quantize_state(p, abstract, cfg.lora.base_bits),
               out_shardings=shardings)
  return fn(params)


def _fresh_adapters(cfg: model_config.ModelConfig, seed: int,
                    plan: sharding.Plan | None) -> nnx.State:
  """The adapters `transformer.create(cfg, seed)` would draw; the base's random init is traced
  too (adapter keys fold out of kernel keys) but is dead code that XLA drops."""
  abstract = nnx.state(transformer.abstract_model(cfg, plan), lora.ADAPTERS)
  shardings = (None if plan is None
               else sharding.state_shardings(abstract, plan.mesh, plan.rules))
  init = jax.jit(lambda: nnx.state(transformer.Transformer(cfg, rngs=nnx.Rngs(seed)),
                                   lora.ADAPTERS), out_shardings=shardings)
  return init()


def check_architecture(want: model_config.ModelConfig, got: model_config.ModelConfig,
                       source: str) -> None:
  """The config's `model` section must describe the base model it fine-tunes."""
  diffs = [f"model.{f.name}={getattr(want, f.name)!r} but {getattr(got, f.name)!r}"
           for f in dataclasses.fields(want)
           if f.name not in NOT_ARCHITECTURE and getattr(want, f.name) != getattr(got, f.name)]
  if diffs:
    raise ValueError(f"the config's model section does not match the base model {source}: "
                     f"{'; '.join(diffs)}")


def pointer(init_from: str, seed: int) -> dict[str, Any]:
  """What a LoRA checkpoint records about its base (see the module docstring)."""
  path = os.path.abspath(init_from) if init_from else ""
  return {"init_from": path, "seed": int(seed), "sha256": fingerprint(path) if path else ""}


def _base_files(path: str) -> list[str]:
  if os.path.isfile(path):
    return [path]
  files = sorted(glob.glob(os.path.join(path, "*.safetensors")))
  return [os.path.join(path, "config.json")] + files


def fingerprint(path: str) -> str:
  """sha256 over the base's files (names, sizes, contents): read once per process and file
  state (~1 s per GB)."""
  files = _base_files(path)
  stats = tuple((f, os.path.getsize(f), os.path.getmtime(f)) for f in files if os.path.isfile(f))
  return _fingerprint(stats)


@functools.lru_cache(maxsize=8)
def _fingerprint(stats: tuple[tuple[str, int, float], ...]) -> str:
  digest = hashlib.sha256()
  for name, size, _ in stats:
    digest.update(f"{os.path.basename(name)}:{size}\n".encode())
    with open(name, "rb") as f:
      for chunk in iter(lambda: f.read(16 << 20), b""):
        digest.update(chunk)
  return digest.hexdigest()


def load_pointed(base: dict[str, Any], cfg: model_config.ModelConfig, where: str,
                 mesh: jax.sharding.Mesh | None, rules: sharding.Rules | str = "fsdp"
                 ) -> nnx.State:
  """The frozen base parameters (no adapters) of LoRA checkpoint `where` from its pointer."""
  init_from = base.get("init_from", "")
  if init_from:
    if not os.path.exists(init_from):
      raise FileNotFoundError(f"{where}: its LoRA base {init_from} (meta 'base.init_from') does "
                              "not exist; the checkpoint holds only adapters")
    found = fingerprint(init_from)
    if found != base.get("sha256"):
      raise ValueError(f"{where}: the LoRA base {init_from} has changed since training (sha256 "
                       f"{found[:12]}..., the checkpoint recorded {str(base.get('sha256'))[:12]}"
                       "...); the adapters belong to the other base")
  return load_base(cfg, init_from, int(base["seed"]), mesh, rules)


def load_base(cfg: model_config.ModelConfig, init_from: str, seed: int,
              mesh: jax.sharding.Mesh | None, rules: sharding.Rules | str = "fsdp"
              ) -> nnx.State:
  """The frozen base of LoRA config `cfg` (no adapters), quantized as `cfg.lora` says: on a
  resume or a reload, the same codes the adapters were trained on."""
  params = load_params(dataclasses.replace(cfg, lora=None), init_from, seed, mesh, rules)
  if cfg.lora is not None and cfg.lora.base_bits:
    params = _quantized(params, cfg, None if mesh is None else sharding.Plan.create(mesh, rules))
  return params
