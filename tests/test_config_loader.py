"""Tests of config_loader.py: loading, variants, overrides with type checks, sections, JSON."""
import json
import os
import textwrap

import ml_collections
import pytest

from treasure_jax import config_loader
from treasure_jax.train import optim

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CONFIG = textwrap.dedent('''
    """A test config."""
    import ml_collections

    def get_config(arg=None):
      c = ml_collections.ConfigDict()
      c.num_train_steps = 100 if arg != "short" else 3
      c.seed = 0
      c.batch_size = 8
      c.log_every_steps = 1
      c.tokenizer = "tok.json"
      c.model = ml_collections.ConfigDict(dict(preset="tiny", dtype="float32"))
      c.data = ml_collections.ConfigDict(dict(train_files=("a.jsonl",), seq_len=64))
      c.optim = ml_collections.ConfigDict(dict(peak_lr=1e-3, warmup_steps=2))
      c.mesh = ml_collections.ConfigDict(dict(shape=(1, -1, 1)))
      c.checkpoint = ml_collections.ConfigDict(dict(every_steps=10, keep=2))
      c.distributed = ml_collections.ConfigDict()
      if arg == "extra":  # Keys of other types, for override tests (not RunConfig keys).
        c.debug = False
        c.tags = ("a", "b")
      return c
''')


@pytest.fixture()
def config_file(tmp_path):
  path = tmp_path / "cfg.py"
  path.write_text(CONFIG)
  return str(path)


def test_load_variant_and_overrides(config_file):
  cfg = config_loader.load(f"{config_file}:extra", [
      "--config.optim.peak_lr=3e-4", "--config.seed=7", "--config.debug=true",
      "--config.tags=x,y,z", "--config.model.dtype=bfloat16", "--config.optim.warmup_steps=1"])
  assert config_loader.load(f"{config_file}:short").num_train_steps == 3
  assert cfg.optim.peak_lr == 3e-4 and cfg.seed == 7 and cfg.debug is True
  assert cfg.tags == ("x", "y", "z")
  assert cfg.model.dtype == "bfloat16"


def test_overrides_may_set_schema_keys_the_file_leaves_out(config_file):
  cfg = config_loader.load(config_file, [
      "--config.model.num_layers=3", "--config.model.sliding_window=None",
      "--config.data_loading=replicated", "--config.data.eval_files=v1.jsonl,v2.jsonl",
      "--config.distributed.heartbeat_timeout_s=7"])
  run = config_loader.resolve(cfg)
  assert run.model.num_layers == 3 and run.model.embed_dim == 64  # the rest from the preset
  assert run.data_loading == "replicated"
  assert run.data.eval_files == ("v1.jsonl", "v2.jsonl")
  assert run.distributed.heartbeat_timeout_s == 7
  with pytest.raises(ValueError, match="expected an int"):
    config_loader.load(config_file, ["--config.model.num_layers=three"])


def test_override_of_an_unknown_key_names_the_full_key(config_file):
  with pytest.raises(ValueError, match=r"--config.optim.peak_lrr: unknown key 'optim.peak_lrr'"
                                       r" \(did you mean 'peak_lr'\?\)"):
    config_loader.load(config_file, ["--config.optim.peak_lrr=1.0"])
  with pytest.raises(ValueError, match="unknown key 'nosuch'"):
    config_loader.load(config_file, ["--config.nosuch.x=1"])


@pytest.mark.parametrize("override, message", [
    ("--config.seed=abc", "expected an int"),
    ("--config.optim.peak_lr=fast", "expected a float"),
    ("--config.debug=maybe", "expected a bool"),
    ("--config.optim=1", "is a section"),
    ("config.seed", "expected --config.KEY=VALUE"),
])
def test_override_type_errors(config_file, override, message):
  with pytest.raises(ValueError, match=message):
    config_loader.load(f"{config_file}:extra", [override])


def test_resolve_builds_frozen_sections(config_file):
  run = config_loader.resolve(config_loader.load(config_file))
  assert isinstance(run.optim, optim.OptimConfig) and run.optim.peak_lr == 1e-3
  assert run.model.num_layers == 2 and run.model.dtype == "float32"
  assert run.mesh.shape == (1, -1, 1)
  assert run.data.train_files == ("a.jsonl",)
  assert run.checkpoint.keep == 2 and run.grad_accum_steps == 1


def _resolve_with(config_file, **changes):
  cfg = config_loader.load(config_file)
  with cfg.unlocked():
    for key, value in changes.items():
      section, _, leaf = key.rpartition("__")
      node = cfg[section] if section else cfg
      with node.ignore_type():  # A wrong type is what some cases test.
        node[leaf] = value
  return config_loader.resolve(cfg)


@pytest.mark.parametrize("changes, message", [
    ({"optim__lr": 1.0}, r"unknown config key 'optim.lr'"),
    ({"model__num_layerz": 3}, r"unknown config key 'model.num_layerz'"),
    ({"checkpoint__every": 3}, r"unknown config key 'checkpoint.every'"),
    ({"data__seq_length": 3}, r"unknown config key 'data.seq_length'"),
    ({"optim__peak_lr": "fast"}, r"config key optim.peak_lr: expected float"),
    ({"data__seq_len": 4096}, r"data.seq_len=4096 exceeds the model's positions "
                              r"model.max_seq_len=256"),
    ({"batch_size": 9, "grad_accum_steps": 2}, r"batch_size=9 is not divisible by "
                                               r"grad_accum_steps=2"),
    ({"optim__schedule": "exp"}, r"optim.schedule='exp'"),
    ({"checkpoint__keep": 0}, r"checkpoint.keep=0"),
])
def test_resolve_errors_name_the_key(config_file, changes, message):
  with pytest.raises(ValueError, match=message):
    _resolve_with(config_file, **changes)


def test_unknown_top_level_key_fails(config_file):
  # The "extra" variant's `debug` and `tags` are not RunConfig keys.
  with pytest.raises(ValueError, match=r"unknown config key 'debug'"):
    config_loader.resolve(config_loader.load(f"{config_file}:extra"))


def test_write_json_round_trips(config_file, tmp_path):
  cfg = config_loader.load(f"{config_file}:extra", ["--config.seed=3"])
  path = str(tmp_path / "config.json")
  config_loader.write_json(cfg, path)
  with open(path) as f:
    d = json.load(f)
  assert d["seed"] == 3 and d["model"]["preset"] == "tiny" and d["tags"] == ["a", "b"]


@pytest.mark.parametrize("name", ["tiny.py", "smollm2_135m.py"])
def test_shipped_configs_resolve_and_open_with_a_docstring(name):
  path = os.path.join(ROOT, "configs", name)
  with open(path) as f:
    source = f.read()
  assert source.startswith('"""') and "Command:" in source and "Hardware:" in source
  run = config_loader.resolve(config_loader.load(path))
  assert run.num_train_steps > 0 and run.checkpoint.every_steps > 0
  assert isinstance(config_loader.load(path), ml_collections.ConfigDict)
