"""Tests of train/export.py and data/marker_template.py: a training checkpoint exported to a
Hugging Face directory loads in transformers with the same logits, the chat template it trained
with, and `apply_chat_template(..., markers=...)` renders the project's own prompt string."""
import json
import os

import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from treasure_jax import cli
from treasure_jax.data import chat_templates
from treasure_jax.data import marker_template
from treasure_jax.data import testing
from treasure_jax.decode import grammar_text
from treasure_jax.markers import taxonomy
from treasure_jax.markers import template as template_lib
from treasure_jax.model import config as model_config
from treasure_jax.model import sharding
from treasure_jax.model import transformer
from treasure_jax.train import checkpoint
from treasure_jax.train import export
from treasure_jax.train import optim
from treasure_jax.train import state as state_lib

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

TAX = taxonomy.default_taxonomy()


@pytest.fixture(scope="module")
def smollm2_tokenizer_dir(tmp_path_factory):
  """An HF tokenizer directory holding SmolLM2's tokenizer and its own chat template (which
  adds a system turn; the runs below train with chatml instead)."""
  vocabulary = testing.smollm2_vocabulary()
  path = tmp_path_factory.mktemp("tokenizer")
  (path / "tokenizer.json").write_text(vocabulary.tokenizer.to_str())
  config = {"tokenizer_class": "PreTrainedTokenizerFast", **vocabulary.special_tokens,
            "chat_template": vocabulary.chat_template}
  (path / "tokenizer_config.json").write_text(json.dumps(config))
  return str(path), vocabulary


def _train_checkpoint(workdir, tokenizer_path, vocab_size, template_name, step=3):
  # Trained in bfloat16 (float32 parameters): inference must still compute in float32.
  cfg = model_config.preset("tiny", dtype="bfloat16", vocab_size=vocab_size)
  tx = optim.make(optim.OptimConfig(warmup_steps=0), 10)
  mesh = sharding.make_mesh(sharding.MeshConfig(shape=(1, -1, 1)))
  plan = sharding.Plan.create(mesh, "fsdp")
  abstract = state_lib.abstract(state_lib.split_model(transformer.abstract_model(cfg, plan))[1],
                                tx)
  params = state_lib.split_model(transformer.create(cfg, seed=1, mesh=mesh))[1]
  train_state = state_lib.create(params, tx, 0, state_lib.shardings(abstract, mesh, plan.rules))
  train_state = train_state.replace(step=jnp.asarray(step, jnp.int32))
  manager = checkpoint.make_manager(str(workdir), checkpoint.CheckpointConfig())
  meta = {"model_config": cfg.to_dict(), "tokenizer": {"kind": "hf", "path": tokenizer_path},
          "chat_template": template_name}
  checkpoint.save(manager, train_state, data_state={}, config={}, taxonomy=TAX.to_dict(),
                  meta=meta, force=True)
  manager.wait_until_finished()
  manager.close()
  return cfg


@pytest.fixture(scope="module")
def exported(smollm2_tokenizer_dir, tmp_path_factory):
  tok_path, vocabulary = smollm2_tokenizer_dir
  workdir = tmp_path_factory.mktemp("run")
  _train_checkpoint(workdir, tok_path, vocabulary.vocab_size, "chatml")
  out = tmp_path_factory.mktemp("hf") / "out"
  assert cli.main(["export", "--checkpoint", str(workdir / "checkpoints" / "3"),
                   "--to", str(out)]) == 0
  return workdir, str(out), vocabulary


@pytest.mark.reference
def test_export_writes_a_directory_transformers_loads(exported):
  workdir, out, vocabulary = exported
  assert {"config.json", "model.safetensors", "generation_config.json", "tokenizer.json",
          "tokenizer_config.json", "taxonomy.json", "marker_list.ebnf",
          "marker_list.regex"} <= set(os.listdir(out))
  assert taxonomy.load(os.path.join(out, "taxonomy.json")) == TAX
  with open(os.path.join(out, "marker_list.regex"), encoding="utf-8") as f:
    assert f.read().strip() == grammar_text.regex(TAX)
  generation = json.load(open(os.path.join(out, "generation_config.json"), encoding="utf-8"))
  assert vocabulary.tokenizer.token_to_id("<|im_end|>") in generation["eos_token_id"]
  loaded = checkpoint.load_for_inference(str(workdir))
  # Inference computes in the checkpoint's dtype unless told otherwise (issue 22).
  assert loaded.model_config.dtype == "float32"
  assert checkpoint.load_for_inference(out).model_config.dtype == "float32"
  assert checkpoint.load_for_inference(out, dtype="bfloat16").model_config.dtype == "bfloat16"
  with pytest.raises(ValueError, match="float16"):
    checkpoint.load_for_inference(out, dtype="float16")
  ids = np.array([[1, 5, 900, 17, 4000, 3]], np.int32)
  ours = np.asarray(loaded.model(jnp.asarray(ids))[0], np.float32)
  hf = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
  with torch.no_grad():
    theirs = hf(torch.tensor(ids, dtype=torch.long)).logits.numpy()
  # float32 on both sides; differences are summation order only.
  np.testing.assert_allclose(ours, theirs, atol=2e-4, rtol=1e-4)


@pytest.mark.reference
def test_exported_template_is_the_trained_one_and_takes_markers(exported):
  _, out, vocabulary = exported
  tok = transformers.AutoTokenizer.from_pretrained(out)
  chatml = chat_templates.BUILTIN["chatml"]
  messages = [{"role": "user", "content": "Quelle heure est-il ?"}]
  # The run trained with chatml, not SmolLM2's own template (which adds a system turn).
  assert tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) == (
      chatml.render(messages, add_generation_prompt=True))
  markers = {"lang": "French", "length_tokens": 40, "quality": 0.5}
  ours = chatml.render([{"role": "user", "content": template_lib.prompt_side(
      messages[0]["content"], markers, TAX)}], add_generation_prompt=True)
  assert tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True,
                                 markers=markers) == ours
  with pytest.raises(Exception, match="unknown marker category colour"):
    tok.apply_chat_template(messages, tokenize=False, markers={"colour": "red"})
  with pytest.raises(Exception, match="Klingon is not allowed; allowed: English"):
    tok.apply_chat_template(messages, tokenize=False, markers={"lang": "Klingon"})
  with pytest.raises(Exception, match="out of range"):
    tok.apply_chat_template(messages, tokenize=False, markers={"quality_bucket": 9})


def _value(cat):
  if cat.kind == "enum":
    return st.sampled_from(cat.values)
  lo = -10**5 if cat.minimum is None else cat.minimum
  hi = 10**5 if cat.maximum is None else cat.maximum
  if cat.kind == "int":
    return st.integers(lo, hi)
  return st.floats(lo, hi, allow_nan=False)


@pytest.mark.reference
@pytest.mark.parametrize("name", ["chatml", "llama3", "model"])
@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_marker_template_equals_the_project_prompt(smollm2_tokenizer_dir, name, data):
  """Any markers, any of the templates, multi-turn: transformers' rendering of the exported
  template equals the project's prompt (the last user turn gets `prompt_side`)."""
  _, vocabulary = smollm2_tokenizer_dir
  tok = _fast_tokenizer(vocabulary)
  trained = chat_templates.get(name, vocabulary)
  tok.chat_template = marker_template.marker_aware(trained, TAX)
  markers = data.draw(st.fixed_dictionaries({}, optional={c.name: _value(c)
                                                          for c in TAX.categories}))
  turns = data.draw(st.sampled_from([1, 3]))
  messages = [{"role": "user" if i % 2 == 0 else "assistant", "content": f"turn {i} ça 你好"}
              for i in range(turns)]
  project = [dict(m) for m in messages]
  project[-1]["content"] = template_lib.prompt_side(project[-1]["content"], markers, TAX)
  expected = trained.render(project, add_generation_prompt=True)
  got = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True,
                                markers=markers, **trained.special_tokens)
  assert got == expected


_FAST = {}


def _fast_tokenizer(vocabulary):
  if "tok" not in _FAST:
    _FAST["tok"] = transformers.PreTrainedTokenizerFast(
        tokenizer_object=vocabulary.tokenizer, **vocabulary.special_tokens)
  return _FAST["tok"]


def test_export_refuses_bad_inputs(exported, tmp_path, capsys):
  workdir, out, _ = exported
  assert cli.main(["export", "--checkpoint", str(workdir), "--to", out]) == 2
  assert "is not empty" in capsys.readouterr().err
  with pytest.raises(ValueError, match="already, not a training checkpoint"):
    export.export_checkpoint(out, str(tmp_path / "again"))
  with pytest.raises(FileNotFoundError, match="neither a training checkpoint"):
    export.export_checkpoint(str(tmp_path), str(tmp_path / "x"))
