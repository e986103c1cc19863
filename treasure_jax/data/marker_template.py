"""The training chat template made marker-aware, as Jinja for an exported tokenizer_config.json.

`marker_aware(template, tax)` prepends a preamble to the Jinja source of the template a run
trained with. The preamble reads an optional `markers` variable (category -> value, passed as
`apply_chat_template(..., markers={...})` in transformers or `chat_template_kwargs` in vLLM and
SGLang) and appends the prompt-side marker list to the last user turn exactly as
`markers.template.prompt_side` writes it: ` <MARKER_LIST> <cat> value </cat> ... </MARKER_LIST>`,
categories in taxonomy order, ints as decimals, floats at the taxonomy's precision. An unknown
category, an enum value outside its set or a number out of range stops rendering with
`raise_exception`, naming the category and the allowed values. Without `markers` the template
renders as before. The taxonomy is baked into the preamble as a literal table, so the exported
directory needs no code of ours.

Deliberately left to others: rendering and completion spans (`chat_templates`), the marker-list
format itself (`markers.template`), writing the directory (`train.export`).
"""
from __future__ import annotations

import json
import re

from treasure_jax.data import chat_templates
from treasure_jax.markers import taxonomy as taxonomy_lib
from treasure_jax.markers import template as template_lib

_PREAMBLE = """\
{%- if markers is defined and markers %}
{%- set marker_table = @TABLE@ %}
{%- set marker_ns = namespace(text=@OPEN@, messages=[]) %}
{%- for name in markers %}
{%- if name not in marker_table | map(attribute=0) | list %}
{{- raise_exception('unknown marker category ' ~ name ~ '; known: ' ~ @NAMES@) }}
{%- endif %}
{%- endfor %}
{%- for name, kind, allowed, lo, hi, shown in marker_table %}
{%- if name in markers and markers[name] is not none %}
{%- set value = markers[name] %}
{%- if kind == 'enum' %}
{%- if value not in allowed %}
{{- raise_exception('marker ' ~ name ~ ': ' ~ value ~ ' is not allowed; allowed: ' ~ shown) }}
{%- endif %}
{%- set text = value | string %}
{%- else %}
{%- set number = (value | int) if kind == 'int' else (value | float) %}
{%- if (lo is not none and number < lo) or (hi is not none and number > hi) %}
{{- raise_exception('marker ' ~ name ~ ': ' ~ value ~ ' is out of range; allowed: ' ~ shown) }}
{%- endif %}
{%- set text = ('%d' | format(number)) if kind == 'int' else (@FLOAT@ | format(number)) %}
{%- endif %}
{%- set marker_ns.text = marker_ns.text ~ ' <' ~ name ~ '> ' ~ text ~ ' </' ~ name ~ '>' %}
{%- endif %}
{%- endfor %}
{%- set marker_ns.text = marker_ns.text ~ ' ' ~ @CLOSE@ %}
{%- for message in messages %}
{%- if loop.last and message['role'] == 'user' %}
{%- set marker_ns.messages = marker_ns.messages + [{'role': 'user', 'content': message['content'] ~ ' ' ~ marker_ns.text}] %}
{%- else %}
{%- set marker_ns.messages = marker_ns.messages + [message] %}
{%- endif %}
{%- endfor %}
{%- if not messages or messages[-1]['role'] != 'user' %}
{{- raise_exception('markers need the conversation to end with a user turn') }}
{%- endif %}
{%- set messages = marker_ns.messages %}
{%- endif %}
"""


def _literal(value: object) -> str:
  """A Jinja literal of a str, int, float, None or list of str (json.dumps strings parse as
  Jinja strings; Jinja spells null `none`)."""
  if value is None:
    return "none"
  if isinstance(value, (list, tuple)):
    return "[" + ", ".join(_literal(v) for v in value) + "]"
  return json.dumps(value)


def preamble(tax: taxonomy_lib.Taxonomy) -> str:
  """The Jinja preamble for `tax` (renders nothing; rewrites `messages` when markers are set)."""
  rows = []
  for cat in tax.categories:
    row = [cat.name, cat.kind, list(cat.values), cat.minimum, cat.maximum, cat.allowed()]
    rows.append("[" + ", ".join(_literal(v) for v in row) + "]")
  fields = {"TABLE": "[" + ", ".join(rows) + "]", "OPEN": _literal(template_lib.LIST_OPEN),
            "CLOSE": _literal(template_lib.LIST_CLOSE), "NAMES": _literal(", ".join(tax.names)),
            "FLOAT": _literal(f"%.{tax.float_precision}f")}
  # One pass, so a value that spells a placeholder is never substituted again.
  return re.sub(r"@([A-Z]+)@", lambda m: fields[m.group(1)], _PREAMBLE)


def marker_aware(template: chat_templates.ChatTemplate, tax: taxonomy_lib.Taxonomy) -> str:
  """The Jinja source of `template` with the marker preamble for `tax` in front."""
  return preamble(tax) + template.source
