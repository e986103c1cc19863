"""Tests of train/setup.py: starting from a base model (HF directory, GGUF), mesh checks."""
import os

import jax
import numpy as np
import pytest

from treasure_jax import config_loader
from treasure_jax.model import config as model_config
from treasure_jax.model import hf
from treasure_jax.model import sharding
from treasure_jax.model import transformer
from treasure_jax.train import setup
from treasure_jax.train import state as state_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(config_name, **overrides):
  flags = [f"--config.{k}={v}" for k, v in overrides.items()]
  return config_loader.resolve(config_loader.load(os.path.join(ROOT, "configs", config_name),
                                                  flags))


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
  """A tiny model (configs/tiny.py's architecture) saved as a Hugging Face directory."""
  run = _run("tiny.py")
  mesh = sharding.make_mesh(run.mesh)
  model = transformer.create(run.model, seed=123, mesh=mesh)
  path = str(tmp_path_factory.mktemp("hf_tiny"))
  hf.save_dir(model, path)
  return path, state_lib.split_model(model)[1]


def test_init_from_a_hugging_face_directory(hf_dir):
  path, saved = hf_dir
  run = _run("tiny.py", init_from=path)
  model = setup.make_model(run, sharding.make_mesh(run.mesh))
  params = setup.initial_params(run, model)
  got, want = state_lib.flatten(params), state_lib.flatten(saved)
  assert got.keys() == want.keys()
  for key in want:
    np.testing.assert_array_equal(np.asarray(got[key]), np.asarray(want[key]), err_msg=key)
  assert got["layers.0.mlp.up_proj.kernel"].sharding == \
      state_lib.flatten(model.shardings.params)["layers.0.mlp.up_proj.kernel"]


def test_a_model_section_unlike_the_base_model_fails_naming_the_fields(hf_dir):
  run = _run("tiny.py", init_from=hf_dir[0], **{"model.num_layers": 3, "model.mlp_dim": 96})
  model = setup.make_model(run, sharding.make_mesh(run.mesh))
  with pytest.raises(ValueError, match=r"does not match the base model .*model.num_layers=3 but "
                                       r"2; model.mlp_dim=96 but 128"):
    setup.initial_params(run, model)


def test_architecture_check_ignores_execution_fields():
  cfg = model_config.preset("tiny")
  setup.check_architecture(cfg.replace(dtype="float32", remat="full", scan_layers=True), cfg,
                           "base")


@pytest.mark.slow
def test_init_from_the_smollm2_gguf():
  run = _run("smollm2_135m.py", **{"model.dtype": "float32"})
  mesh = sharding.make_mesh(run.mesh)
  params = setup.initial_params(run, setup.make_model(run, mesh))
  assert transformer.param_count(params) == 134_515_008
  assert jax.tree.leaves(params)[0].dtype == np.float32
