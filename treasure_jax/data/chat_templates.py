"""Chat templates: render a conversation to text exactly as `transformers` does, and locate the
completion in it.

A model's own template (the Jinja in its tokenizer config) is rendered in the same sandboxed Jinja
environment `transformers.apply_chat_template` builds (ImmutableSandboxedEnvironment with
trim_blocks/lstrip_blocks, loopcontrols, `raise_exception`, `tojson`, `strftime_now`, `dict`,
`namespace`, the special tokens as variables), so the text, and therefore the token ids, match.
Built-in templates (ChatML, Llama 3, Gemma) are the official ones, for models without a template.

`render_example` renders prompt messages plus one assistant turn and returns the character spans
the loss needs: where the completion starts (the end of the generation prompt), where the
completion-side marker list and the response start, and where the end-of-turn token ends.
What goes into the messages (markers, dropout) is `preprocessors`' job; tokens are `vocab`'s.
"""
from __future__ import annotations

import dataclasses
import datetime
import functools
import json
from collections.abc import Mapping, Sequence
from typing import Any

import jinja2
import jinja2.ext
import jinja2.sandbox

CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
# Meta-Llama-3-*-Instruct's template.
LLAMA3 = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
    "+ message['content'] | trim + '<|eot_id|>' %}"
    "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
    "{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}"
    "{% endif %}")
# gemma-2-*-it's template.
GEMMA = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}"
    "{{ raise_exception('System role not supported') }}{% endif %}"
    "{% for message in messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{% endif %}{% if (message['role'] == 'assistant') %}{% set role = 'model' %}"
    "{% else %}{% set role = message['role'] %}{% endif %}"
    "{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{'<start_of_turn>model\n'}}{% endif %}")


@dataclasses.dataclass(frozen=True)
class ChatTemplate:
  """A Jinja chat template with the variables it needs and the string that ends a turn.

  `end_of_turn` is what the model emits to stop (ChatML `<|im_end|>`, Llama 3 `<|eot_id|>`);
  the completion's loss covers it. If a template does not write it after the assistant turn,
  the tokenizer appends the EOS id instead (`RenderedChat.append_eos`).
  """
  name: str
  source: str
  end_of_turn: str
  special_tokens: Mapping[str, str] = dataclasses.field(default_factory=dict)

  def render(self, messages: Sequence[Mapping[str, Any]], *,
             add_generation_prompt: bool = False) -> str:
    try:
      return _compile(self.source).render(
          messages=[dict(m) for m in messages], tools=None, documents=None,
          add_generation_prompt=add_generation_prompt, **self.special_tokens)
    except jinja2.TemplateError as e:
      raise ValueError(f"chat template {self.name!r}: {e}") from e


BUILTIN = {
    "chatml": ChatTemplate("chatml", CHATML, "<|im_end|>"),
    "llama3": ChatTemplate("llama3", LLAMA3, "<|eot_id|>",
                           {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"}),
    "gemma": ChatTemplate("gemma", GEMMA, "<end_of_turn>",
                          {"bos_token": "<bos>", "eos_token": "<eos>"}),
}


def get(name: str, vocabulary: Any = None) -> ChatTemplate:
  """A built-in template by name, or "model": the vocabulary's own (`HfTokenizerVocabulary`)."""
  if name in BUILTIN:
    return BUILTIN[name]
  if name == "model":
    source = getattr(vocabulary, "chat_template", None)
    special = dict(getattr(vocabulary, "special_tokens", {}) or {})
    if not source:
      raise ValueError(f"template 'model': vocabulary {getattr(vocabulary, 'name', vocabulary)!r}"
                       f" has no chat template; use one of {', '.join(BUILTIN)}")
    if "eos_token" not in special:
      raise ValueError("template 'model': the tokenizer config names no eos_token, so the end "
                       "of an assistant turn is unknown")
    return ChatTemplate("model", source, special["eos_token"], special)
  raise ValueError(f"unknown chat template {name!r}; known: model, {', '.join(BUILTIN)}")


@dataclasses.dataclass(frozen=True)
class RenderedChat:
  """A rendered chat and its spans, as character offsets into `text`.

  [0, completion_start): the prompt (the generation prompt included), no loss.
  [completion_start, completion_end): what the model must generate, loss on; within it,
  [markers_start, response_start) is the completion-side marker list and its separator.
  [completion_end, len(text)): template text after the end-of-turn token, no loss.
  """
  text: str
  completion_start: int
  markers_start: int
  response_start: int
  completion_end: int
  append_eos: bool


def render_example(template: ChatTemplate, messages: Sequence[Mapping[str, Any]],
                   completion_prefix: str, response: str) -> RenderedChat:
  """Renders `messages` + an assistant turn `completion_prefix + response`, with its spans.

  `messages` must end with a user turn; `completion_prefix` is the marker list and separator
  ("" for a baseline example).
  """
  prompt = template.render(messages, add_generation_prompt=True)
  content = completion_prefix + response
  text = template.render([*messages, {"role": "assistant", "content": content}])
  where = f"chat template {template.name!r}"
  if not text.startswith(prompt):
    raise ValueError(f"{where}: the rendered chat does not start with the generation prompt, "
                     "so prompt and completion cannot be told apart")
  # Templates may trim the content (Llama 3, Gemma), so search for the stripped content.
  body = content.strip()
  content_start = text.find(body, len(prompt)) if body else len(prompt)
  if content_start < 0:
    raise ValueError(f"{where}: the assistant content does not appear verbatim in the "
                     "rendered chat (the template rewrites it)")
  prefix = completion_prefix.lstrip()
  markers_end = content_start + len(prefix) if prefix.strip() else content_start
  end = text.find(template.end_of_turn, content_start + len(body))
  append_eos = end < 0
  completion_end = len(text) if append_eos else end + len(template.end_of_turn)
  return RenderedChat(text=text, completion_start=len(prompt), markers_start=content_start,
                      response_start=min(markers_end, content_start + len(body)),
                      completion_end=completion_end, append_eos=append_eos)


@functools.lru_cache(maxsize=32)
def _compile(source: str) -> jinja2.Template:
  """The environment `transformers.utils.chat_template_utils` builds, minus assistant masks."""
  env = jinja2.sandbox.ImmutableSandboxedEnvironment(
      trim_blocks=True, lstrip_blocks=True,
      extensions=[_GenerationTag, jinja2.ext.loopcontrols])
  env.filters["tojson"] = _tojson
  env.globals["raise_exception"] = _raise_exception
  env.globals["strftime_now"] = lambda fmt: datetime.datetime.now().strftime(fmt)
  env.globals["dict"] = _TemplateDict()
  env.globals["namespace"] = _TemplateNamespace
  return env.from_string(source)


def _raise_exception(message: str) -> None:
  raise jinja2.exceptions.TemplateError(message)


def _tojson(x: Any, ensure_ascii: bool = False, indent: int | None = None,
            separators: Any = None, sort_keys: bool = False) -> str:
  # Jinja's own tojson escapes HTML characters; transformers overrides it with plain json.dumps.
  return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                    sort_keys=sort_keys)


class _TemplateDict:
  def __call__(self, *args: Any, **kwargs: Any) -> dict:
    return dict(*args, **kwargs)

  def fromkeys(self, *args: Any, **kwargs: Any) -> dict:
    return dict.fromkeys(*args, **kwargs)


class _TemplateNamespace(jinja2.utils.Namespace):
  """A namespace that refuses dunder attributes (as transformers' does)."""

  def __init__(*args: Any, **kwargs: Any):  # noqa: N805 (same signature trick as Jinja's)
    self, args = args[0], args[1:]
    attrs = dict(*args, **kwargs)
    for name in attrs:
      _TemplateNamespace._check_name(name)
    jinja2.utils.Namespace.__init__(self, attrs)

  def __setitem__(self, name: str, value: Any) -> None:
    _TemplateNamespace._check_name(name)
    jinja2.utils.Namespace.__setitem__(self, name, value)

  @staticmethod
  def _check_name(name: Any) -> None:
    if isinstance(name, str) and name.startswith("_"):
      raise jinja2.exceptions.SecurityError(
          f"chat templates cannot store underscore-prefixed attributes, got {name!r}")


class _GenerationTag(jinja2.ext.Extension):
  """`{% generation %}...{% endgeneration %}` renders its body (transformers tracks it)."""
  tags = {"generation"}

  def parse(self, parser: Any) -> jinja2.nodes.Node:
    lineno = next(parser.stream).lineno
    body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
    return jinja2.nodes.CallBlock(self.call_method("_render"), [], [], body).set_lineno(lineno)

  def _render(self, caller: Any) -> str:
    return caller()
