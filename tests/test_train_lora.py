"""LoRA training end to end on configs/tiny.py with `model.lora` set: only adapters are trained,
optimized and checkpointed (with a pointer to the base), resume is exact, decoding a LoRA
checkpoint equals decoding the merged weights.

The reference run and its helpers are those of test_train_loop.py (4 steps, checkpoints at 2
and 4, a shared compilation cache).
"""
import os

import jax
import numpy as np
import pytest
from flax import nnx

from treasure_jax.model import lora
from treasure_jax.model import transformer
from treasure_jax.train import checkpoint
from treasure_jax.train import loop

import test_train_loop as loop_test

LORA = {"model.lora.rank": 4, "model.lora.alpha": 8.0,
        "model.lora.targets": '("q_proj", "v_proj", "o_proj", "down_proj")',
        "optim.peak_lr": 3e-2}
cache_dir = loop_test.cache_dir


def lora_config(cache_dir, **overrides):
  return loop_test.tiny_config(cache_dir, **LORA, **overrides)


@pytest.fixture(scope="module")
def lora_run(cache_dir, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("lora"))
  return workdir, loop.train(lora_config(cache_dir), workdir)


def test_only_adapters_are_trained_and_checkpointed(lora_run):
  workdir, final = lora_run
  records = loop_test.metrics(workdir)
  assert sorted(records) == [1, 2, 3, 4] and "eval/loss" in final
  assert records[4]["loss"] < records[1]["loss"]
  step_dir = os.path.join(workdir, "checkpoints", "4")
  meta = checkpoint.read_json_item(step_dir, "meta")
  assert meta["base"] == {"init_from": "", "seed": 0, "sha256": ""}
  assert meta["model_config"]["lora"]["rank"] == 4
  manager = checkpoint.make_manager(workdir, checkpoint.CheckpointConfig())
  items = manager.item_metadata(4)
  params = sorted(dict(getattr(items["params"], "tree", items["params"])))
  opt_state = sorted(dict(getattr(items["opt_state"], "tree", items["opt_state"])))
  manager.close()
  # 2 layers x 4 projections x (A, B); AdamW's mu and nu are shaped like them, nothing else.
  assert len(params) == 16 and all(".lora.lora_" in k for k in params)
  assert all(".lora.lora_" in k for k in opt_state if k.endswith(("kernel", "lora_a", "lora_b")))
  assert sum(k.endswith(("lora_a", "lora_b")) for k in opt_state) == 32
  # The base is frozen: the loaded model's base equals the run's random base (seed 0).
  loaded = checkpoint.load_for_inference(workdir)
  adapters, base = lora.split(nnx.state(loaded.model, nnx.Param))
  fresh = transformer.create(loaded.model_config.replace(lora=None), seed=0)
  want = dict(nnx.to_flat_state(nnx.state(fresh, nnx.Param)))
  for path, var in nnx.to_flat_state(base):
    np.testing.assert_array_equal(var[...], want[path][...])
  assert min(float(np.abs(v[...]).max()) for p, v in nnx.to_flat_state(adapters)
             if p[-1] == "lora_b") > 0  # B moved off its zero init.


def test_lora_resume_after_kill_matches(lora_run, cache_dir, tmp_path):
  resumed = str(tmp_path / "lora_resumed")
  loop_test._copy_with_steps(lora_run[0], resumed, steps=(2,))  # Killed after step 2's save.
  assert loop.train(lora_config(cache_dir), resumed)["step"] == 4
  loop_test._assert_same_steps(resumed, lora_run[0], (3, 4))
