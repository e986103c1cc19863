"""Chat templates: rendering equals transformers' (text and token ids), and the completion spans
are exact for single- and multi-turn chats in every template."""
from __future__ import annotations

import json

import pytest

from treasure_jax.data import chat_templates
from treasure_jax.data import preprocessors
from treasure_jax.data import testing
from treasure_jax.data import vocab
from treasure_jax.markers import taxonomy

SINGLE = [{"role": "user", "content": "What is 2 + 2?"}]
MULTI = [{"role": "user", "content": "Hi there"}, {"role": "assistant", "content": " Hello! "},
         {"role": "user", "content": "Tell me a joke.\n"}]
WITH_SYSTEM = [{"role": "system", "content": "Be brief."}, *SINGLE]
PREFIX = "<MARKER_LIST> <domain> Math </domain> </MARKER_LIST>\n"
# Exercises the environment: loop controls, namespace, tojson, raise_exception, strftime_now.
EXOTIC = (
    "{% set ns = namespace(n=0) %}{% for m in messages %}{% if m.role == 'system' %}"
    "{% continue %}{% endif %}{% set ns.n = ns.n + 1 %}"
    "[{{ ns.n }}:{{ m.role }}]{{ m.content | tojson }}{% endfor %}"
    "{% if messages | length > 9 %}{{ raise_exception('too long') }}{% endif %}"
    "{{ strftime_now('%Y')[:0] }}{% if add_generation_prompt %}[assistant]{% endif %}")


@pytest.fixture(scope="module")
def smollm2():
  return testing.smollm2_vocabulary()


def _templates(smollm2):
  return [*chat_templates.BUILTIN.values(), chat_templates.get("model", smollm2),
          chat_templates.ChatTemplate("exotic", EXOTIC, "<|im_end|>")]


@pytest.mark.reference
def test_render_equals_transformers(smollm2):
  from transformers.utils import chat_template_utils  # pylint: disable=g-import-not-at-top

  for template in _templates(smollm2):
    for messages in (SINGLE, MULTI, WITH_SYSTEM, MULTI + [{"role": "assistant", "content": "x"}]):
      for gen in (False, True):
        try:
          ours = template.render(messages, add_generation_prompt=gen)
        except ValueError as e:
          assert template.name == "gemma" and "System role not supported" in str(e)
          continue
        (want,), _ = chat_template_utils.render_jinja_template(
            conversations=[messages], chat_template=template.source,
            add_generation_prompt=gen, **template.special_tokens)
        assert ours == want, (template.name, messages, gen)


@pytest.mark.reference
def test_token_ids_equal_apply_chat_template(smollm2):
  import transformers  # pylint: disable=g-import-not-at-top

  hf = transformers.PreTrainedTokenizerFast(
      tokenizer_object=smollm2.tokenizer, eos_token="<|im_end|>", bos_token="<|im_start|>",
      chat_template=smollm2.chat_template)
  options = preprocessors.ChatOptions(
      taxonomy=taxonomy.default_taxonomy(), template=chat_templates.get("model", smollm2),
      variant="baseline")
  records = testing.chatterbot_records()[::300]
  assert any("messages" in r for r in records) and any("prompt" in r for r in records)
  texts = [json.dumps(r, ensure_ascii=False) for r in records]
  out = preprocessors.process_records(
      texts, [f"r{i}" for i in range(len(texts))], options=options, vocabulary=smollm2,
      max_tokens=10_000, seeds=[0] * len(texts), epochs=[0] * len(texts))
  for record, ex in zip(records, out):
    chat = record.get("messages") or [{"role": "user", "content": record["prompt"]}]
    chat = chat + [{"role": "assistant", "content": record["response"]}]
    want = hf.apply_chat_template(chat, tokenize=True, return_dict=False)
    assert ex["targets"].tolist() == list(want), record["id"]


@pytest.mark.parametrize("name", ["chatml", "llama3", "gemma", "model"])
@pytest.mark.parametrize("messages", [SINGLE, MULTI], ids=["single", "multi"])
@pytest.mark.parametrize("prefix", [PREFIX, ""], ids=["markers", "baseline"])
def test_spans(smollm2, name, messages, prefix):
  template = chat_templates.get(name, smollm2)
  response = "  Four.  " if name in ("llama3", "gemma") else "Four."
  r = chat_templates.render_example(template, messages, prefix, response)
  prompt = template.render(messages, add_generation_prompt=True)
  assert r.text.startswith(prompt) and r.completion_start == len(prompt)
  stripped = (prefix + response).strip() if name in ("llama3", "gemma") else prefix + response
  assert r.text[r.completion_start:r.completion_end] == stripped + template.end_of_turn
  assert r.text[r.markers_start:r.response_start] == prefix
  assert r.text[r.response_start:].lstrip().startswith(response.strip())
  assert r.text[r.completion_end:] in ("", "\n")
  assert not r.append_eos


def test_end_of_turn_missing_appends_eos():
  template = chat_templates.ChatTemplate("plain", "{% for m in messages %}{{ m.content }}\n"
                                         "{% endfor %}", "<|im_end|>")
  r = chat_templates.render_example(template, SINGLE, PREFIX, "Four.")
  assert r.append_eos and r.completion_end == len(r.text)


def test_errors_name_the_template(smollm2):
  with pytest.raises(ValueError, match="'gemma': System role not supported"):
    chat_templates.render_example(chat_templates.get("gemma"), WITH_SYSTEM, "", "x")
  rewriting = chat_templates.ChatTemplate(
      "upper", "{% for m in messages %}{{ m.content | upper }}{% endfor %}", "</s>")
  with pytest.raises(ValueError, match="'upper'.*does not appear verbatim"):
    chat_templates.render_example(rewriting, SINGLE, "", "four")
  with pytest.raises(ValueError, match="unknown chat template 'vicuna'"):
    chat_templates.get("vicuna")
  with pytest.raises(ValueError, match="has no chat template"):
    chat_templates.get("model", vocab.HfTokenizerVocabulary(
        smollm2.tokenizer.to_str(), special_tokens={"eos_token": "<|im_end|>"}))


def test_sandbox_blocks_unsafe_attributes():
  evil = chat_templates.ChatTemplate(
      "evil", "{{ messages.__class__.__mro__ }}", "<|im_end|>")
  with pytest.raises(Exception, match="unsafe|access"):
    evil.render(SINGLE)
