"""Tests of model.gguf and model.gguf_tokenizer: GGUF -> HF config, tensors and tokenizer.

Ground truth is twofold: tiny GGUF files written here with gguf.GGUFWriter from known HF tensors
(llama.cpp's own edits applied as convert_hf_to_gguf.py does), and, under `reference`, what
transformers makes of the same files and of the bundled SmolLM2-135M-Instruct Q4_1 tokenizer.
The SmolLM2 weights are compared with transformers in test_convert.py, which loads them once.
"""
from __future__ import annotations

import glob
import importlib.util
import os

from flax import nnx
import gguf as gguf_lib
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tokenizers
import yaml

from treasure_jax.model import convert
from treasure_jax.model import gguf
from treasure_jax.model import gguf_tokenizer
from treasure_jax.model import hf
from treasure_jax.model import transformer

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHAT = [{"role": "system", "content": "Réponds brièvement."},
        {"role": "user", "content": "¿Cuánto es 12 + 30?  Ответь: 四十二 <repo_name>"},
        {"role": "assistant", "content": "42"}]


# ---------------------------------------------------------------- tiny GGUF files written here

def tiny_tokenizer_fields() -> dict[str, object]:
  """A byte-level BPE vocabulary: the 256 byte symbols, three control tokens, two merges."""
  alphabet = list(gguf_tokenizer.bytes_to_unicode().values())
  tokens = SPECIALS + alphabet + ["Ġt", "Ġth"]
  return {"tokens": tokens, "types": [3, 3, 3] + [1] * (len(tokens) - 3),
          "merges": ["Ġ t", "Ġt h"]}


def llama_cpp_permute(w: np.ndarray, heads: int) -> np.ndarray:
  """convert_hf_to_gguf.py's LlamaModel.permute: HF q/k rows -> llama.cpp's rope layout."""
  return (w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:])
          .swapaxes(1, 2).reshape(w.shape))


def tiny_dims(arch: str) -> dict[str, int]:
  # Gemma-2's head_dim is set apart from hidden/heads, as in the real models.
  head_dim = 256 if arch == "gemma2" else 16
  return dict(layers=2, hidden=64, heads=4, kv_heads=2, head_dim=head_dim, ffn=256)


def tiny_gguf_shapes(arch: str, tied: bool) -> dict[str, tuple[int, ...]]:
  """GGUF tensor names of a tiny `arch` model and their HF-order shapes."""
  d = tiny_dims(arch)
  vocab, hidden = len(tiny_tokenizer_fields()["tokens"]), d["hidden"]
  nh, kh = d["heads"] * d["head_dim"], d["kv_heads"] * d["head_dim"]
  shapes = {"token_embd.weight": (vocab, hidden), "output_norm.weight": (hidden,)}
  if not tied:
    shapes["output.weight"] = (vocab, hidden)
  layer = {"attn_norm": (hidden,), "ffn_norm": (hidden,), "attn_q": (nh, hidden),
           "attn_k": (kh, hidden), "attn_v": (kh, hidden), "attn_output": (hidden, nh),
           "ffn_gate": (d["ffn"], hidden), "ffn_up": (d["ffn"], hidden),
           "ffn_down": (hidden, d["ffn"])}
  if arch == "qwen2":
    layer |= {"attn_q.bias": (nh,), "attn_k.bias": (kh,), "attn_v.bias": (kh,)}
  if arch == "gemma2":
    layer |= {"post_attention_norm": (hidden,), "post_ffw_norm": (hidden,)}
  for i in range(d["layers"]):
    shapes |= {f"blk.{i}.{k}" + ("" if k.endswith(".bias") else ".weight"): s
               for k, s in layer.items()}
  return shapes


def write_tiny_gguf(path, arch: str = "llama", *, tied: bool = True,
                    bad_shape: str | None = None, drop: str | None = None,
                    raw_types: dict[str, str] | None = None) -> dict[str, np.ndarray]:
  """Writes a random tiny `arch` model as GGUF; returns the HF tensors a reader must produce.

  Matrices are Q4_1 (the embedding Q8_0), vectors F32, unless `raw_types` says otherwise.
  """
  rng = np.random.default_rng(0)
  writer = gguf_lib.GGUFWriter(os.fspath(path), arch)
  _write_metadata(writer, arch, tiny_dims(arch), tiny_tokenizer_fields())
  expected = {}
  for name, shape in tiny_gguf_shapes(arch, tied).items():
    if name == drop:
      continue
    # Multiples of 2**-8 keep Gemma's stored (1 + w) exact in float32.
    x = (np.round(rng.normal(0.0, 0.5, shape) * 256) / 256).astype(np.float32)
    if name == bad_shape:
      x = np.concatenate([x, x])
    default = "F32" if x.ndim == 1 else "Q8_0" if name == "token_embd.weight" else "Q4_1"
    qtype = gguf_lib.GGMLQuantizationType[(raw_types or {}).get(name, default)]
    packed, expected[gguf.hf_name(name, arch)] = _pack(x, name, arch, qtype)
    writer.add_tensor(name, packed, raw_dtype=qtype)
  writer.write_header_to_file()
  writer.write_kv_data_to_file()
  writer.write_tensors_to_file()
  writer.close()
  return expected


def _pack(x: np.ndarray, name: str, arch: str, qtype) -> tuple[np.ndarray, np.ndarray]:
  """(what llama.cpp would store for HF tensor `x`, what a reader must give back)."""
  stored = x
  if arch == "llama" and (".attn_q." in name or ".attn_k." in name):
    d = tiny_dims(arch)
    stored = llama_cpp_permute(x, d["heads"] if ".attn_q." in name else d["kv_heads"])
  if arch == "gemma2" and name.endswith("norm.weight"):
    stored = x + 1.0
  if qtype == gguf_lib.GGMLQuantizationType.F32:
    return stored, x
  if qtype == gguf_lib.GGMLQuantizationType.Q8_K:  # gguf-py cannot (de)quantize Q8_K.
    return np.zeros(gguf_lib.quants.quant_shape_to_byte_shape(x.shape, qtype), np.uint8), x
  # Quantization acts on blocks within a row; permuting rows commutes with it.
  roundtrip = gguf_lib.quants.dequantize(gguf_lib.quants.quantize(x, qtype), qtype)
  return gguf_lib.quants.quantize(stored, qtype), roundtrip


def _write_metadata(writer, arch: str, d: dict[str, int], tok: dict[str, object]) -> None:
  for key, value in (("block_count", d["layers"]), ("context_length", 128),
                     ("embedding_length", d["hidden"]), ("feed_forward_length", d["ffn"]),
                     ("attention.head_count", d["heads"]),
                     ("attention.head_count_kv", d["kv_heads"]),
                     ("vocab_size", len(tok["tokens"]))):
    writer.add_uint32(f"{arch}.{key}", value)
  writer.add_float32(f"{arch}.attention.layer_norm_rms_epsilon", 1e-6)
  writer.add_float32(f"{arch}.rope.freq_base", 50000.0)
  if arch == "llama":
    writer.add_uint32("llama.rope.dimension_count", d["head_dim"])
  if arch == "gemma2":
    writer.add_uint32("gemma2.attention.key_length", d["head_dim"])
    writer.add_uint32("gemma2.attention.value_length", d["head_dim"])
    writer.add_uint32("gemma2.attention.sliding_window", 4096)
    writer.add_float32("gemma2.attn_logit_softcapping", 50.0)
    writer.add_float32("gemma2.final_logit_softcapping", 30.0)
  writer.add_tokenizer_model("gpt2")
  writer.add_tokenizer_pre("smollm")
  writer.add_token_list(tok["tokens"])
  writer.add_token_types(tok["types"])
  writer.add_token_merges(tok["merges"])
  writer.add_bos_token_id(1)
  writer.add_eos_token_id(2)
  writer.add_add_bos_token(True)
  writer.add_chat_template("{% for m in messages %}<|im_start|>{{ m['content'] }}<|im_end|>"
                           "{% endfor %}")


@pytest.fixture(scope="module", params=["llama", "qwen2", "gemma2"])
def tiny(request, tmp_path_factory):
  path = tmp_path_factory.mktemp("tiny") / f"{request.param}.gguf"
  return request.param, path, write_tiny_gguf(path, request.param, tied=request.param != "llama")


def test_tiny_tensors_equal_the_hf_tensors_written(tiny):
  arch, path, expected = tiny
  checkpoint = gguf.load(path)
  assert checkpoint.architecture == arch
  assert sorted(checkpoint.names) == sorted(expected)
  for name, want in expected.items():
    np.testing.assert_array_equal(checkpoint.get_tensor(name), want, err_msg=name)


def test_tiny_config(tiny):
  arch, path, _ = tiny
  config = gguf.load(path).config
  d = tiny_dims(arch)
  assert config["model_type"] == arch
  assert (config["hidden_size"], config["num_hidden_layers"], config["intermediate_size"]) == (
      d["hidden"], d["layers"], d["ffn"])
  assert (config["num_attention_heads"], config["num_key_value_heads"], config["head_dim"]) == (
      d["heads"], d["kv_heads"], d["head_dim"])
  assert config["rope_theta"] == 50000.0 and config["max_position_embeddings"] == 128
  assert config["tie_word_embeddings"] == (arch != "llama")
  assert config["vocab_size"] == len(tiny_tokenizer_fields()["tokens"])
  assert (config["bos_token_id"], config["eos_token_id"]) == (1, 2)
  if arch == "gemma2":
    assert config["query_pre_attn_scalar"] == 256
    assert config["attn_logit_softcapping"] == 50.0


@pytest.fixture(scope="module")
def tiny_transformers(tiny):
  """transformers' model from the tiny GGUF file, in float32."""
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  _, path, _ = tiny
  return transformers.AutoModelForCausalLM.from_pretrained(
      path.parent, gguf_file=path.name, dtype=torch.float32)


@pytest.mark.reference
def test_tiny_matches_transformers_gguf_loader(tiny, tiny_transformers):
  """Same tensors, and same logits from a transformers model built from our config dict."""
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  _, path, _ = tiny
  ref = tiny_transformers
  checkpoint = gguf.load(path)
  ours = transformers.AutoModelForCausalLM.from_config(
      transformers.AutoConfig.for_model(**checkpoint.config), dtype=torch.float32)
  state = {n: torch.from_numpy(checkpoint.get_tensor(n)) for n in checkpoint.names}
  missing, unexpected = ours.load_state_dict(state, strict=False)
  assert not unexpected and set(missing) <= {"lm_head.weight"}
  ours.tie_weights()
  ref_state = ref.state_dict()
  for name in checkpoint.names:
    np.testing.assert_array_equal(state[name].numpy(), ref_state[name].numpy(), err_msg=name)
  ids = torch.tensor([[3, 70, 259, 260, 100, 2]])
  with torch.no_grad():
    np.testing.assert_allclose(ours(ids).logits.numpy(), ref(ids).logits.numpy(), atol=1e-5)


def jax_logits(checkpoint: gguf.GGUFCheckpoint, ids: np.ndarray) -> np.ndarray:
  """Our JAX model, built from the GGUF tensors through hf.load_from_tensors, in float32."""
  _, model = hf.load_from_tensors(
      checkpoint.config, checkpoint.get_tensor, checkpoint.names,
      get_shape=checkpoint.shapes.__getitem__, param_dtype="float32", dtype="float32")
  graphdef, state = nnx.split(model)
  # One compiled forward is faster on CPU than dispatching 30 layers' ops eagerly.
  forward = jax.jit(lambda state, ids: transformer.apply(graphdef, state, ids)[0])
  return np.asarray(forward(state, jnp.asarray(ids, jnp.int32)))


@pytest.mark.reference
def test_tiny_jax_model_matches_transformers_gguf_loader(tiny, tiny_transformers):
  torch = pytest.importorskip("torch")
  _, path, _ = tiny
  ids = np.array([[3, 70, 259, 260, 100, 2, 9, 1]])
  with torch.no_grad():
    want = tiny_transformers(torch.from_numpy(ids)).logits.numpy()
  np.testing.assert_allclose(jax_logits(gguf.load(path), ids), want, atol=1e-4, rtol=0)


# ----------------------------------------------------------------------------- clear errors

def test_truncated_or_corrupt_file_is_a_clear_error(tmp_path):
  path = tmp_path / "tiny.gguf"
  write_tiny_gguf(path)
  data = path.read_bytes()
  for cut in (3, 40, len(data) // 2, len(data) - 512):
    (tmp_path / "cut.gguf").write_bytes(data[:cut])
    with pytest.raises(ValueError, match=r"cut\.gguf.*truncated, corrupt or not GGUF"):
      gguf.load(tmp_path / "cut.gguf")
  (tmp_path / "text.gguf").write_bytes(b"this is not a gguf file at all" * 10)
  with pytest.raises(ValueError, match="not GGUF"):
    gguf.load(tmp_path / "text.gguf")
  with pytest.raises(FileNotFoundError, match="no GGUF file"):
    gguf.load(tmp_path / "absent.gguf")


def test_unsupported_architecture_is_a_clear_error(tmp_path):
  writer = gguf_lib.GGUFWriter(os.fspath(tmp_path / "m.gguf"), "mamba")
  writer.add_uint32("mamba.block_count", 1)
  writer.add_tensor("token_embd.weight", np.zeros((4, 8), np.float32))
  writer.write_header_to_file()
  writer.write_kv_data_to_file()
  writer.write_tensors_to_file()
  writer.close()
  with pytest.raises(ValueError, match=r"m\.gguf: general\.architecture='mamba' is not supported"):
    gguf.load(tmp_path / "m.gguf")


def test_unsupported_quant_type_names_the_tensor(tmp_path):
  path = tmp_path / "q8k.gguf"
  write_tiny_gguf(path, raw_types={"blk.1.ffn_down.weight": "Q8_K"})
  checkpoint = gguf.load(path)
  with pytest.raises(ValueError, match=r"'blk\.1\.ffn_down\.weight' has unsupported type Q8_K"):
    checkpoint.get_tensor("model.layers.1.mlp.down_proj.weight")


def test_shape_mismatch_and_missing_tensor_name_the_tensor(tmp_path):
  write_tiny_gguf(tmp_path / "shape.gguf", bad_shape="blk.1.attn_k.weight")
  with pytest.raises(ValueError, match=r"'blk\.1\.attn_k\.weight' .* has shape \(64, 64\), but the "
                     r"metadata implies \(32, 64\)"):
    gguf.load(tmp_path / "shape.gguf")
  write_tiny_gguf(tmp_path / "drop.gguf", drop="blk.0.ffn_up.weight")
  with pytest.raises(ValueError, match=r"missing tensors .*model\.layers\.0\.mlp\.up_proj\.weight"):
    gguf.load(tmp_path / "drop.gguf")


def test_unsupported_tokenizer_names_the_field():
  with pytest.raises(ValueError, match=r"tokenizer\.ggml\.model='llama' is not supported"):
    gguf_tokenizer.build_tokenizer({"tokenizer.ggml.model": "llama"}, "x.gguf")
  fields = tiny_tokenizer_fields()
  metadata = {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.tokens": fields["tokens"],
              "tokenizer.ggml.merges": fields["merges"], "tokenizer.ggml.pre": "made-up"}
  with pytest.raises(ValueError, match=r"tokenizer\.ggml\.pre='made-up' is not supported"):
    gguf_tokenizer.build_tokenizer(metadata, "x.gguf")


def test_tiny_tokenizer_adds_bos_as_the_file_says(tmp_path):
  write_tiny_gguf(tmp_path / "t.gguf")
  tok = gguf_tokenizer.build_tokenizer(gguf.read_metadata(tmp_path / "t.gguf"))
  assert tok.encode(" th<|im_end|>").tokens == ["<|im_start|>", "Ġth", "<|im_end|>"]


# ------------------------------------------------------- the bundled SmolLM2-135M-Instruct Q4_1

@pytest.fixture(scope="module")
def smollm2():
  return gguf.load(convert.smollm2_gguf_path())


@pytest.fixture(scope="module")
def smollm2_tokenizer_dir(smollm2, tmp_path_factory):
  directory = tmp_path_factory.mktemp("smollm2_tokenizer")
  gguf_tokenizer.save(smollm2.metadata, os.fspath(directory), smollm2.path)
  return directory


@pytest.fixture(scope="module")
def transformers_gguf_tokenizer(smollm2):
  """transformers' tokenizer from the GGUF alone (a folder holding our files would mix in)."""
  transformers = pytest.importorskip("transformers")
  return transformers.AutoTokenizer.from_pretrained(
      os.path.dirname(smollm2.path), gguf_file=os.path.basename(smollm2.path))


def test_smollm2_config(smollm2):
  c = smollm2.config
  assert c["model_type"] == "llama" and c["architectures"] == ["LlamaForCausalLM"]
  assert (c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"]) == (576, 1536, 30)
  assert (c["num_attention_heads"], c["num_key_value_heads"], c["head_dim"]) == (9, 3, 64)
  assert (c["vocab_size"], c["max_position_embeddings"], c["rope_theta"]) == (49152, 8192, 1e5)
  assert c["rms_norm_eps"] == pytest.approx(1e-5)
  assert c["tie_word_embeddings"] and "lm_head.weight" not in smollm2.names
  assert (c["bos_token_id"], c["eos_token_id"], c["pad_token_id"]) == (1, 2, 2)
  assert len(smollm2.names) == 2 + 9 * 30


def test_q4_1_dequantization_matches_the_block_layout(smollm2):
  """Q4_1 block: f16 scale d, f16 min m, 32 4-bit q (low nibbles first); x = d * q + m."""
  name = "model.layers.0.mlp.down_proj.weight"
  raw = smollm2.raw(name)
  assert raw.tensor_type.name == "Q4_1"
  block = np.asarray(raw.data[0, :20])
  d, m = block[:4].view(np.float16).astype(np.float32)
  q = np.concatenate([block[4:] & 0x0F, block[4:] >> 4]).astype(np.float32)
  np.testing.assert_array_equal(smollm2.get_tensor(name)[0, :32], d * q + m)


def test_llama_q_k_rows_are_unpermuted(smollm2):
  for name, heads in (("model.layers.3.self_attn.q_proj.weight", 9),
                      ("model.layers.3.self_attn.k_proj.weight", 3)):
    raw = smollm2.raw(name)
    stored = gguf_lib.quants.dequantize(raw.data, raw.tensor_type)
    ours = smollm2.get_tensor(name)
    assert not np.array_equal(ours, stored)
    np.testing.assert_array_equal(llama_cpp_permute(ours, heads), stored)


def chatterbot_lines(per_language: int = 120) -> dict[str, list[str]]:
  """The first `per_language` conversation lines of the chatterbot corpus, by language (28)."""
  root = importlib.util.find_spec("chatterbot_corpus").submodule_search_locations[0]
  lines: dict[str, list[str]] = {}
  for path in sorted(glob.glob(os.path.join(root, "data", "*", "*.yml"))):
    with open(path, encoding="utf-8") as f:
      for conversation in (yaml.safe_load(f) or {}).get("conversations") or []:
        language = os.path.basename(os.path.dirname(path))
        lines.setdefault(language, []).extend(s for s in conversation if isinstance(s, str))
  return {language: texts[:per_language] for language, texts in lines.items()}


@pytest.mark.reference
def test_smollm2_tokenizer_ids_equal_transformers(smollm2_tokenizer_dir,
                                                  transformers_gguf_tokenizer):
  transformers = pytest.importorskip("transformers")
  by_language = chatterbot_lines()
  assert {"english", "chinese", "japanese", "russian", "hindi", "persian", "hebrew",
          "korean", "thai"} <= set(by_language)
  lines = [s for language in sorted(by_language) for s in by_language[language]]
  lines += ["<|im_start|>user\nhi<|im_end|>\n<repo_name>x<file_sep>", "\t  tabs\n\n  ", ""]
  ref = transformers_gguf_tokenizer
  ours_hf = transformers.AutoTokenizer.from_pretrained(smollm2_tokenizer_dir)
  ours = tokenizers.Tokenizer.from_file(os.fspath(smollm2_tokenizer_dir / "tokenizer.json"))
  want = ref(lines)["input_ids"]
  assert [e.ids for e in ours.encode_batch(lines)] == want
  assert ours_hf(lines)["input_ids"] == want
  assert [ours.decode(ids, skip_special_tokens=False) for ids in want] == lines
  for name in ("bos_token", "eos_token", "pad_token", "unk_token"):
    assert getattr(ours_hf, name) == getattr(ref, name), name
  assert ours_hf.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>"]) == [1, 2]
  assert ours_hf.decode(want[-3], skip_special_tokens=True) == "user\nhi\nx"


@pytest.mark.reference
def test_smollm2_chat_template_renders_like_transformers(smollm2_tokenizer_dir,
                                                         transformers_gguf_tokenizer):
  transformers = pytest.importorskip("transformers")
  ref = transformers_gguf_tokenizer
  ours = transformers.AutoTokenizer.from_pretrained(smollm2_tokenizer_dir)
  for messages, generation in ((CHAT, False), (CHAT[1:2], True)):
    text = ours.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation)
    assert text == ref.apply_chat_template(messages, tokenize=False,
                                           add_generation_prompt=generation)
    assert ours(text)["input_ids"] == ref(text)["input_ids"]
  assert text.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
  assert text.endswith("<|im_start|>assistant\n")


def test_smollm2_digits_split_like_llama_cpp(smollm2):
  """pre="smollm" isolates digits before the GPT-2 split, as llama.cpp and SmolLM2's own
  tokenizer.json do; transformers' GGUF tokenizer (no "smollm" entry) gives ĠĠĠ|Ġ|4|2 here."""
  tok = gguf_tokenizer.build_tokenizer(smollm2.metadata)
  assert tok.encode("    42").tokens == ["ĠĠĠĠ", "4", "2"]
  assert tok.encode("x=123").tokens == ["x", "=", "1", "2", "3"]
  assert gguf_tokenizer.tokenizer_config(smollm2.metadata)["add_bos_token"] is False


def test_get_tensor_unknown_name(smollm2):
  with pytest.raises(KeyError, match="no tensor 'lm_head.weight'"):
    smollm2.get_tensor("lm_head.weight")


def test_hf_name_rejects_unknown_tensors():
  assert gguf.hf_name("blk.7.ffn_norm.weight", "gemma2") == (
      "model.layers.7.pre_feedforward_layernorm.weight")
  with pytest.raises(ValueError, match="'rope_freqs.weight' has no Hugging Face llama"):
    gguf.hf_name("rope_freqs.weight", "llama", "f.gguf")
