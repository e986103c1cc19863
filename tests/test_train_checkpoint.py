"""Tests of train/checkpoint.py: round trip, structure diffs, corrupt-step fallback, inference."""
import glob
import logging
import os

import jax
import numpy as np
import pytest

from treasure_jax.markers import taxonomy
from treasure_jax.model import config as model_config
from treasure_jax.model import sharding
from treasure_jax.model import transformer
from treasure_jax.train import checkpoint
from treasure_jax.train import optim
from treasure_jax.train import state as state_lib

CFG = model_config.preset("tiny", dtype="float32")


def _target(cfg, mesh, tx):
  plan = sharding.Plan.create(mesh, "fsdp")
  _, abstract_params = state_lib.split_model(transformer.abstract_model(cfg, plan))
  abstract = state_lib.abstract(abstract_params, tx)
  shardings = state_lib.shardings(abstract, mesh, plan.rules)
  return shardings, jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                                 abstract, shardings)


@pytest.fixture(scope="module")
def setup():
  mesh = sharding.make_mesh(sharding.MeshConfig(shape=(1, -1, 1)))
  tx = optim.make(optim.OptimConfig(warmup_steps=0), 10)
  shardings, target = _target(CFG, mesh, tx)
  params = state_lib.split_model(transformer.create(CFG, seed=0, mesh=mesh))[1]
  train_state = state_lib.create(params, tx, 0, shardings)
  return mesh, tx, target, train_state


def _save(manager, train_state, step):
  meta = {"model_config": CFG.to_dict(), "tokenizer": {"kind": "hf", "path": "/tok"},
          "chat_template": "chatml"}
  train_state = train_state.replace(step=jax.numpy.asarray(step, jax.numpy.int32))
  checkpoint.save(manager, train_state, data_state={"position": step}, config={"seed": 0},
                  taxonomy=taxonomy.default_taxonomy().to_dict(), meta=meta, force=True)
  manager.wait_until_finished()


def _equal(a, b):
  fa, fb = state_lib.flatten(a), state_lib.flatten(b)
  assert fa.keys() == fb.keys()
  for k in fa:
    np.testing.assert_array_equal(np.asarray(fa[k]), np.asarray(fb[k]), err_msg=k)


def test_round_trip_is_exact_and_keeps_shardings(setup, tmp_path):
  _, _, target, train_state = setup
  manager = checkpoint.make_manager(str(tmp_path), checkpoint.CheckpointConfig(keep=2))
  for step in (1, 2, 3):
    _save(manager, train_state, step)
  assert manager.all_steps() == [2, 3]  # keep=2
  restored, data_state = checkpoint.restore_latest(manager, target)
  assert int(restored.step) == 3 and data_state == {"position": 3}
  _equal(restored.params, train_state.params)
  _equal(restored.opt_state, train_state.opt_state)
  np.testing.assert_array_equal(restored.rng, train_state.rng)
  kernel = restored.params["layers"][0]["mlp"]["up_proj"]["kernel"][...]
  assert kernel.sharding.spec == jax.sharding.PartitionSpec("fsdp", None)
  manager.close()


def test_structure_mismatch_says_what_differs(setup, tmp_path):
  mesh, tx, _, train_state = setup
  manager = checkpoint.make_manager(str(tmp_path), checkpoint.CheckpointConfig())
  _save(manager, train_state, 1)
  _, wider = _target(CFG.replace(num_layers=3, mlp_dim=96), mesh, tx)
  with pytest.raises(checkpoint.StructureError) as e:
    checkpoint.restore_latest(manager, wider)
  message = str(e.value)
  assert "missing (e.g. layers.2.attn.k_proj.kernel" in message
  assert "layers.0.mlp.down_proj.kernel: expected (96, 64), found (128, 64)" in message
  manager.close()


def test_corrupt_latest_step_falls_back_with_a_warning(setup, tmp_path, caplog):
  _, _, target, train_state = setup
  manager = checkpoint.make_manager(str(tmp_path), checkpoint.CheckpointConfig())
  _save(manager, train_state, 1)
  _save(manager, train_state, 2)
  # Truncate every array data file of step 2 (a disk that filled up mid-write).
  files = [f for f in glob.glob(str(tmp_path / "checkpoints/2/params/**/d/*"), recursive=True)
           if os.path.isfile(f)]
  assert files
  for f in files:
    with open(f, "r+b") as fh:
      fh.truncate(7)
  # An unfinished save (orbax's temporary directory) must be ignored, not restored.
  os.makedirs(tmp_path / "checkpoints/3.orbax-checkpoint-tmp-1234/params")
  manager.reload()
  with caplog.at_level(logging.WARNING):
    restored, data_state = checkpoint.restore_latest(manager, target)
  assert int(restored.step) == 1 and data_state == {"position": 1}
  assert "checkpoint step 2" in caplog.text and "incomplete or corrupt" in caplog.text
  assert os.path.isdir(tmp_path / "checkpoints_corrupt/2")
  assert manager.all_steps() == [1]
  _save(manager, train_state, 2)  # The step can be written again.
  assert manager.all_steps() == [1, 2]
  manager.close()


def test_load_for_inference_from_a_training_checkpoint(setup, tmp_path):
  _, _, _, train_state = setup
  manager = checkpoint.make_manager(str(tmp_path), checkpoint.CheckpointConfig())
  _save(manager, train_state, 5)
  manager.close()
  cfg, model, tax, info = checkpoint.load_for_inference(str(tmp_path))
  assert cfg == CFG
  assert tax == taxonomy.default_taxonomy()
  assert info["step"] == 5 and info["tokenizer"] == {"kind": "hf", "path": "/tok"}
  assert info["chat_template"] == "chatml"
  _equal(state_lib.split_model(model)[1], train_state.params)
  # A step directory works too.
  assert checkpoint.load_for_inference(str(tmp_path / "checkpoints" / "5")).info["step"] == 5
