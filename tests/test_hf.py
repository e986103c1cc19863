"""Tests of Hugging Face import/export: configs, tensor mapping, errors, logits vs transformers."""
from __future__ import annotations

import dataclasses
import json

import jax
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from treasure_jax.model import config
from treasure_jax.model import hf
from treasure_jax.model import sharding
from treasure_jax.model import transformer

TINY = config.preset("tiny", dtype="float32")
_RUNTIME = ("param_dtype", "dtype", "remat", "scan_layers", "attention_impl", "fuse_projections")


def _tensors(cfg: config.ModelConfig, seed: int = 0) -> dict[str, np.ndarray]:
  rng = np.random.RandomState(seed)
  return {name: rng.randn(*shape).astype(np.float32)
          for name, shape in hf.tensor_shapes(cfg).items()}


def _load(cfg, tensors, **kw):
  return hf.load_from_tensors(hf.config_to_hf(cfg), tensors.__getitem__, tensors, **kw)


@pytest.mark.parametrize("name", config.preset_names())
def test_config_round_trips_through_hf(name):
  cfg = config.preset(name)
  assert hf.config_from_hf(hf.config_to_hf(cfg), **{k: getattr(cfg, k) for k in _RUNTIME}) == cfg


def test_config_from_hf_reads_legacy_and_v5_rope_fields():
  base = dict(model_type="llama", vocab_size=10, hidden_size=8, intermediate_size=16,
              num_hidden_layers=1, num_attention_heads=2)
  scaling = dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                 original_max_position_embeddings=8192)
  legacy = hf.config_from_hf({**base, "rope_theta": 5e5, "rope_scaling": scaling})
  v5 = hf.config_from_hf({**base, "rope_parameters": {**scaling, "rope_theta": 5e5}})
  assert legacy == v5
  assert legacy.rope_theta == 5e5 and legacy.rope_scaling == config.RopeScaling(8.0, 1.0, 4.0, 8192)
  assert legacy.num_kv_heads == 2 and legacy.head_dim == 4
  with pytest.raises(ValueError, match="rope type 'yarn'"):
    hf.config_from_hf({**base, "rope_scaling": {"rope_type": "yarn", "factor": 2.0}})
  with pytest.raises(ValueError, match="model_type='gpt2'"):
    hf.config_from_hf({**base, "model_type": "gpt2"})
  with pytest.raises(ValueError, match="missing field 'hidden_size'"):
    hf.config_from_hf({k: v for k, v in base.items() if k != "hidden_size"})
  with pytest.raises(ValueError, match="cannot be overridden"):
    hf.config_from_hf(base, vocab_size=3)


def test_config_to_hf_rejects_what_the_family_cannot_express():
  with pytest.raises(ValueError, match="ModelConfig.post_norms=True.*'llama'"):
    hf.config_to_hf(TINY.replace(post_norms=True))


def test_mismatched_checkpoints_are_errors_naming_the_tensor():
  cfg = TINY.replace(tie_embeddings=False)
  good = _tensors(cfg)
  missing = {k: v for k, v in good.items() if k != "model.layers.1.mlp.up_proj.weight"}
  with pytest.raises(ValueError, match="missing tensor 'model.layers.1.mlp.up_proj.weight'"):
    _load(cfg, missing)
  with pytest.raises(ValueError, match="unexpected tensor 'model.layers.2.mlp.up_proj.weight'"):
    _load(cfg, {**good, "model.layers.2.mlp.up_proj.weight": good["lm_head.weight"]})
  bad_shape = {**good, "model.layers.0.self_attn.k_proj.weight": np.zeros((64, 64), np.float32)}
  with pytest.raises(ValueError, match=r"'model.layers.0.self_attn.k_proj.weight' has shape "
                                       r"\(64, 64\), config.json implies \(32, 64\)"):
    _load(cfg, bad_shape)
  with pytest.raises(ValueError, match="'lm_head.weight' differs"):
    _load(TINY, good)  # Tied config, but the checkpoint's lm_head is not the embedding.
  tied = {k: v for k, v in good.items() if k != "lm_head.weight"}
  tied_with_copy = {**tied, "lm_head.weight": tied["model.embed_tokens.weight"]}
  assert _load(TINY, tied_with_copy)[0].tie_embeddings


def test_pickle_weights_are_refused(tmp_path):
  (tmp_path / "config.json").write_text(json.dumps(hf.config_to_hf(TINY)))
  (tmp_path / "pytorch_model.bin").write_bytes(b"not even a pickle")
  with pytest.raises(ValueError, match="pickle-based weights .*pytorch_model.bin"):
    hf.load_dir(tmp_path)


def test_sharded_export_then_sharded_scanned_import_round_trips(tmp_path):
  cfg = TINY.replace(family="qwen2", qkv_bias=True, tie_embeddings=False)
  tensors = _tensors(cfg)
  _, model = _load(cfg, tensors)
  files = hf.save_dir(model, tmp_path, max_shard_bytes=200_000)
  assert len(files) > 1 and (tmp_path / "model.safetensors.index.json").exists()
  assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "qwen2"
  mesh = sharding.make_mesh(sharding.MeshConfig((2, 2, 2)))
  loaded_cfg, loaded = hf.load_dir(tmp_path, mesh=mesh, rules="fsdp_tp", dtype="float32",
                                   scan_layers=True)
  assert loaded_cfg == dataclasses.replace(cfg, scan_layers=True)
  kernel = loaded.layers.attn.q_proj.kernel[...]
  assert kernel.shape == (2, 64, 4, 16) and kernel.sharding.spec == P(None, "fsdp", "tensor", None)
  assert loaded.plan is not None and loaded.plan.mesh is mesh
  exported = dict(hf.hf_tensors(loaded))
  assert exported.keys() == tensors.keys()
  for name, x in tensors.items():
    np.testing.assert_array_equal(exported[name], x, err_msg=name)


def test_bfloat16_params_export_as_bfloat16(tmp_path):
  _, model = _load(TINY, _tensors(TINY), param_dtype="bfloat16")
  assert model.embedder.embedding[...].dtype == jax.numpy.bfloat16
  hf.save_dir(model, tmp_path)
  assert json.loads((tmp_path / "config.json").read_text())["torch_dtype"] == "bfloat16"
  with hf.safetensors.safe_open(str(tmp_path / "model.safetensors"), framework="np") as f:
    assert f.get_slice("model.norm.weight").get_dtype() == "BF16"


# ---------------------------------------------------------------------------------------------
# Reference: tiny random transformers models, float32, eager attention.

def _hf_case(name: str):
  import transformers  # pylint: disable=g-import-not-at-top
  common = dict(vocab_size=96, hidden_size=64, intermediate_size=112, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
  if name == "llama3_rope_untied":
    return transformers.LlamaConfig(**common, tie_word_embeddings=False, rms_norm_eps=1e-5,
                                    rope_parameters=dict(
                                        rope_type="llama3", rope_theta=500_000.0, factor=8.0,
                                        low_freq_factor=1.0, high_freq_factor=4.0,
                                        original_max_position_embeddings=16))
  if name == "llama_tied":  # SmolLM2 shape: tied embeddings, large theta.
    return transformers.LlamaConfig(**common, tie_word_embeddings=True,
                                    rope_parameters=dict(rope_type="default", rope_theta=1e5))
  if name == "mistral_window":
    return transformers.MistralConfig(**common, sliding_window=5, head_dim=16)
  if name == "qwen2":
    return transformers.Qwen2Config(**common, tie_word_embeddings=False)
  return transformers.Gemma2Config(**common, head_dim=16, query_pre_attn_scalar=24,
                                   sliding_window=4, attn_logit_softcapping=3.0,
                                   final_logit_softcapping=8.0)


def _torch_logits(model, tokens):
  import torch  # pylint: disable=g-import-not-at-top
  with torch.no_grad():
    return model(torch.tensor(tokens)).logits.numpy()


@pytest.mark.reference
@pytest.mark.parametrize("case", ["llama3_rope_untied", "llama_tied", "mistral_window", "qwen2",
                                  "gemma2_window"])
def test_logits_match_transformers_and_export_loads_back(case, tmp_path):
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  torch.manual_seed(0)
  hf_cfg = _hf_case(case)
  reference = transformers.AutoModelForCausalLM.from_config(
      hf_cfg, attn_implementation="eager", dtype=torch.float32).eval()
  with torch.no_grad():
    for name, p in reference.named_parameters():
      if "norm" in name:  # Gemma stores w of (1 + w): both kinds get non-trivial scales.
        p.copy_((0.0 if case.startswith("gemma") else 1.0) + 0.1 * torch.randn_like(p))
      else:
        p.normal_(0.0, 0.5 if p.ndim == 1 or "embed" in name else p.shape[-1] ** -0.5)
  reference.save_pretrained(tmp_path / "hf")
  tokens = np.random.RandomState(0).randint(0, 96, (2, 14))  # Longer than the windows.
  expected = _torch_logits(reference, tokens)

  cfg, model = hf.load_dir(tmp_path / "hf", dtype="float32")
  graphdef, state = nnx.split(model)
  ours = jax.jit(lambda state, t: transformer.apply(graphdef, state, t)[0])(state, tokens)
  np.testing.assert_allclose(np.asarray(ours), expected, atol=1e-4)

  hf.save_dir(model, tmp_path / "export")
  reloaded = transformers.AutoModelForCausalLM.from_pretrained(
      tmp_path / "export", attn_implementation="eager").eval()
  np.testing.assert_allclose(_torch_logits(reloaded, tokens), expected, atol=1e-4)
  assert cfg.family == reloaded.config.model_type
