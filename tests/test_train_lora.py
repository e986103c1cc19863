"""LoRA training end to end on configs/tiny.py with `model.lora` set: only adapters are trained,
optimized and checkpointed (with a pointer to the base), resume is exact, decoding a LoRA
checkpoint equals decoding the merged weights, and export writes the merged model plus a PEFT
adapter (its parity with PyTorch `peft` is tests/test_lora_io.py).

The reference run and its helpers are those of test_train_loop.py (4 steps, checkpoints at 2
and 4, a shared compilation cache).
"""
import json
import os

import numpy as np
import pytest
import safetensors
from flax import nnx

from treasure_jax.decode import generate
from treasure_jax.decode import runner
from treasure_jax.model import hf
from treasure_jax.model import lora
from treasure_jax.model import lora_io
from treasure_jax.model import transformer
from treasure_jax.train import checkpoint
from treasure_jax.train import export
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


@pytest.fixture(scope="module")
def exported(lora_run, tmp_path_factory):
  out = str(tmp_path_factory.mktemp("lora_export") / "out")
  summary = export.export_checkpoint(lora_run[0], out)
  return out, summary


def test_export_writes_the_merged_model_and_a_peft_adapter(lora_run, exported):
  out, summary = exported
  assert {"config.json", "model.safetensors", "tokenizer.json", "adapter", "base"} <= set(
      summary["files"])
  adapter = json.loads(open(os.path.join(out, "adapter", "adapter_config.json")).read())
  assert adapter["base_model_name_or_path"] == os.path.join(out, "base")  # Random base: written.
  assert (adapter["r"], adapter["lora_alpha"]) == (4, 8.0)
  assert adapter["target_modules"] == ["down_proj", "o_proj", "q_proj", "v_proj"]
  with safetensors.safe_open(os.path.join(out, "adapter", "adapter_model.safetensors"),
                             "np") as f:
    names = sorted(f.keys())
  assert len(names) == 16 and names[0] == (
      "base_model.model.model.layers.0.mlp.down_proj.lora_A.weight")
  loaded = checkpoint.load_for_inference(lora_run[0])
  tokens = np.arange(20, dtype=np.int32).reshape(2, 10) * 97
  ours = np.asarray(transformer.apply(*nnx.split(loaded.model), tokens)[0])
  for sub in ("", "base"):
    hf_model = hf.load_dir(os.path.join(out, sub), dtype="float32")[1]
    theirs = np.asarray(transformer.apply(*nnx.split(hf_model), tokens)[0])
    if sub:  # The base alone differs from the trained model...
      assert np.abs(theirs - ours).max() > 1e-3
    else:  # ...the merged weights do not.
      np.testing.assert_allclose(theirs, ours, atol=1e-4)


def test_decoding_a_lora_checkpoint_equals_decoding_the_merged_weights(lora_run, exported):
  loaded = checkpoint.load_for_inference(lora_run[0])
  prompts = [[1, 2, 3, 4, 5], [7, 8, 9]]
  adapted = generate.generate(loaded.model, prompts, max_new_tokens=12)
  merged = generate.generate(lora_io.merged(loaded.model), prompts, max_new_tokens=12)
  assert adapted.tokens == merged.tokens
  for a, b in zip(adapted.logprobs, merged.logprobs):
    np.testing.assert_allclose(a, b, atol=1e-4)
  # `treasure-jax generate` / serve load the LoRA workdir like any checkpoint (runner.load).
  requests = lambda tax: [runner.Request("Hello there", runner.make_mode(None, {}, tax, False))]
  lora_decoder = runner.load(lora_run[0])
  merged_decoder = runner.load(exported[0], chat_template="chatml", taxonomy_path=os.path.join(
      lora_run[0], "taxonomy.json"))
  got = lora_decoder.run(requests(lora_decoder.taxonomy), max_new_tokens=16)
  want = merged_decoder.run(requests(merged_decoder.taxonomy), max_new_tokens=16)
  assert got[0].to_json() == want[0].to_json()


QLORA = {"model.lora.base_bits": 4, "model.lora.base_block_size": 16}


@pytest.fixture(scope="module")
def qlora_run(cache_dir, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("qlora"))
  return workdir, loop.train(lora_config(cache_dir, **QLORA), workdir)


def test_qlora_trains_adapters_over_an_int4_base_and_resumes_exactly(qlora_run, cache_dir,
                                                                     tmp_path):
  workdir, _ = qlora_run
  records = loop_test.metrics(workdir)
  assert records[4]["loss"] < records[1]["loss"]
  manager = checkpoint.make_manager(workdir, checkpoint.CheckpointConfig())
  items = manager.item_metadata(4)
  params = sorted(dict(getattr(items["params"], "tree", items["params"])))
  manager.close()
  assert len(params) == 16 and all(".lora.lora_" in k for k in params)  # No codes, no scales.
  # On restore the pointed-to base is quantized again: the same codes the run trained on.
  loaded = checkpoint.load_for_inference(workdir)
  base = dict(nnx.to_flat_state(lora.split(nnx.state(loaded.model, nnx.Param))[1]))
  fresh = dict(nnx.to_flat_state(nnx.state(transformer.create(loaded.model_config, seed=0),
                                           lora.BASE)))
  assert set(base) == set(fresh) and base[("layers", 0, "attn", "q_proj", "kernel")].dtype.name \
      == "int4"
  for path, var in fresh.items():
    np.testing.assert_array_equal(np.asarray(base[path][...], np.float32),
                                  np.asarray(var[...], np.float32), err_msg=str(path))
  resumed = str(tmp_path / "qlora_resumed")
  loop_test._copy_with_steps(workdir, resumed, steps=(2,))
  assert loop.train(lora_config(cache_dir, **QLORA), resumed)["step"] == 4
  loop_test._assert_same_steps(resumed, workdir, (3, 4))


def test_qlora_decoding_and_export_equal_the_dequantized_merge(qlora_run, tmp_path):
  loaded = checkpoint.load_for_inference(qlora_run[0])
  prompts = [[1, 2, 3, 4, 5], [7, 8, 9]]
  adapted = generate.generate(loaded.model, prompts, max_new_tokens=12)
  merged = generate.generate(lora_io.merged(loaded.model), prompts, max_new_tokens=12)
  assert adapted.tokens == merged.tokens
  out = str(tmp_path / "export")
  export.export_checkpoint(qlora_run[0], out)
  tokens = np.arange(20, dtype=np.int32).reshape(2, 10) * 97
  ours = np.asarray(transformer.apply(*nnx.split(loaded.model), tokens)[0])
  hf_model = hf.load_dir(out, dtype="float32")[1]  # Float weights: W~ + alpha / r * A B.
  assert all(v.dtype.name == "float32" for _, v in nnx.to_flat_state(nnx.state(hf_model)))
  np.testing.assert_allclose(np.asarray(transformer.apply(*nnx.split(hf_model), tokens)[0]),
                             ours, atol=1e-4)
  # The PEFT adapter points at out/base, the dequantized weights it was trained against.
  with open(os.path.join(out, export.ADAPTER_SUBDIR, "adapter_config.json")) as f:
    assert json.load(f)["base_model_name_or_path"] == os.path.join(out, export.BASE_SUBDIR)
  written = hf.load_dir(os.path.join(out, export.BASE_SUBDIR), dtype="float32")[1]
  dequantized = lora_io.base(loaded.model)
  np.testing.assert_allclose(
      np.asarray(transformer.apply(*nnx.split(written), tokens)[0]),
      np.asarray(transformer.apply(*nnx.split(dequantized), tokens)[0]), atol=1e-5)
