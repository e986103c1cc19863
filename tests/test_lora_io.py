"""LoRA export (model/lora_io.py) against PyTorch: `peft` loads our adapter directory onto the
exported base with our logits, and transformers loads the merged checkpoint with them too."""
from __future__ import annotations

import json

import jax
import numpy as np
import pytest
from flax import nnx

from treasure_jax.model import config
from treasure_jax.model import hf
from treasure_jax.model import lora_io
from treasure_jax.model import transformer
from treasure_jax.train import base_model

import test_lora


def _random_llama(path):
  """A tiny random Llama (untied head, GQA) saved as an HF directory, float32."""
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  torch.manual_seed(0)
  hf_cfg = transformers.LlamaConfig(
      vocab_size=96, hidden_size=64, intermediate_size=112, num_hidden_layers=2,
      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
      tie_word_embeddings=False)
  reference = transformers.AutoModelForCausalLM.from_config(
      hf_cfg, attn_implementation="eager", dtype=torch.float32).eval()
  with torch.no_grad():
    for name, p in reference.named_parameters():
      if "norm" in name:
        p.copy_(1.0 + 0.1 * torch.randn_like(p))
      else:
        p.normal_(0.0, 0.5 if p.ndim == 1 or "embed" in name else p.shape[-1] ** -0.5)
  reference.save_pretrained(path)


def _torch_logits(model, tokens):
  import torch  # pylint: disable=g-import-not-at-top
  with torch.no_grad():
    return model(torch.tensor(tokens)).logits.numpy()


def lora_model(base_dir, lora_cfg, scan=False) -> transformer.Transformer:
  """Our model of the HF base in `base_dir` with adapters whose A and B are both random."""
  cfg = hf.config_from_hf(json.loads((base_dir / "config.json").read_text()), dtype="float32",
                          scan_layers=scan).replace(lora=lora_cfg)
  params = base_model.load_params(cfg, str(base_dir), seed=0, mesh=None)
  model = nnx.merge(nnx.graphdef(transformer.abstract_model(cfg)), params)
  return test_lora.with_random_b(model)


@pytest.mark.reference
@pytest.mark.parametrize("scan", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_peft_loads_our_adapter_with_our_logits(tmp_path, scan):
  import peft  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  _random_llama(tmp_path / "base")
  model = lora_model(tmp_path / "base", config.LoraConfig(rank=4, alpha=8.0), scan)
  graphdef, state = nnx.split(model)
  tokens = np.random.RandomState(0).randint(0, 96, (2, 11))
  ours = np.asarray(jax.jit(lambda s, t: transformer.apply(graphdef, s, t)[0])(state, tokens))

  files = lora_io.save_peft(model, tmp_path / "adapter",
                            base_model_name_or_path=str(tmp_path / "base"))
  assert files == ["adapter_config.json", "adapter_model.safetensors"]
  load = lambda path: transformers.AutoModelForCausalLM.from_pretrained(
      path, attn_implementation="eager").eval()
  base = load(tmp_path / "base")
  without = _torch_logits(base, tokens)
  adapted = peft.PeftModel.from_pretrained(base, str(tmp_path / "adapter")).eval()
  n_lora = sum(p.numel() for n, p in adapted.named_parameters() if "lora_" in n)
  assert n_lora == sum(x.size for _, x in lora_io.peft_tensors(model))  # Every adapter loaded.
  expected = _torch_logits(adapted, tokens)
  assert np.abs(expected - without).max() > 0.1  # The adapters change the logits...
  np.testing.assert_allclose(ours, expected, atol=1e-4)  # ...exactly as ours do.

  hf.save_dir(lora_io.merged(model), tmp_path / "merged")
  np.testing.assert_allclose(_torch_logits(load(tmp_path / "merged"), tokens), expected,
                             atol=1e-4)


@pytest.mark.reference
def test_peft_loads_a_qlora_adapter_onto_the_dequantized_base(tmp_path):
  """QLoRA (int4 base): the adapter was trained against the dequantized base, which
  `lora_io.base` writes; `peft` on it, and the merged checkpoint, give our logits."""
  import peft  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  _random_llama(tmp_path / "original")
  model = lora_model(tmp_path / "original",
                     config.LoraConfig(rank=4, alpha=8.0, base_bits=4, base_block_size=16))
  graphdef, state = nnx.split(model)
  tokens = np.random.RandomState(0).randint(0, 96, (2, 11))
  ours = np.asarray(jax.jit(lambda s, t: transformer.apply(graphdef, s, t)[0])(state, tokens))
  hf.save_dir(lora_io.base(model), tmp_path / "base")
  lora_io.save_peft(model, tmp_path / "adapter", base_model_name_or_path=str(tmp_path / "base"))
  load = lambda path: transformers.AutoModelForCausalLM.from_pretrained(
      path, attn_implementation="eager").eval()
  original = _torch_logits(load(tmp_path / "original"), tokens)
  adapted = peft.PeftModel.from_pretrained(load(tmp_path / "base"), str(tmp_path / "adapter"))
  expected = _torch_logits(adapted.eval(), tokens)
  np.testing.assert_allclose(ours, expected, atol=1e-4)
  hf.save_dir(lora_io.merged(model), tmp_path / "merged")
  np.testing.assert_allclose(_torch_logits(load(tmp_path / "merged"), tokens), expected,
                             atol=1e-4)
  # The dequantized base is not the original: the codes are 4-bit.
  dequantized = _torch_logits(load(tmp_path / "base"), tokens)
  assert 1e-3 < np.abs(dequantized - original).max() < 0.5 * np.abs(original).max()
