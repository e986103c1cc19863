"""Input records: the normalized view, and errors that name file:line and field."""
from __future__ import annotations

import json

import pytest

from treasure_jax.annotate import records
from treasure_jax.markers import stats
from treasure_jax.markers import taxonomy

CHAT = {"messages": [{"role": "system", "content": "Be brief."},
                     {"role": "user", "content": "Hi"},
                     {"role": "assistant", "content": "Hello!"},
                     {"role": "human", "content": "Capital of France?"},
                     {"role": "gpt", "content": "Paris."}]}


def test_pair_and_chat_views():
  pair = records.normalize({"id": 7, "prompt": "Q?", "response": "A."})
  assert (pair.id, pair.prompt, pair.response, pair.is_chat) == ("7", "Q?", "A.", False)
  assert pair.system is None and len(pair.context) == 1
  chat = records.normalize(CHAT)
  assert chat.is_chat and chat.system == "Be brief."
  assert chat.prompt == "Capital of France?" and chat.response == "Paris."
  assert [m.role for m in chat.messages] == ["system", "user", "assistant", "user", "assistant"]
  # Without an id, the id is a content hash: stable, and different for different content.
  assert chat.id == records.normalize(dict(CHAT)).id and chat.id.startswith("sha1:")
  assert chat.id != records.normalize({"prompt": "Hi", "response": "Hello!"}).id


@pytest.mark.parametrize("record,field,reason", [
    ({"prompt": "Q"}, "response", "is missing"),
    ({"prompt": "Q", "response": 3}, "response", "must be a string, got int"),
    ({"prompt": " ", "response": "A"}, "prompt", "is empty"),
    ({"messages": []}, "messages", "must be a non-empty list"),
    ({"messages": [{"role": "user", "content": "Q"}], "prompt": "Q"}, "messages", "not both"),
    ({"messages": [{"role": "user", "content": "Q"}, {"role": "robot", "content": "A"}]},
     "messages[1].role", "'robot' is not one of"),
    ({"messages": [{"role": "user", "content": "Q"}, {"role": "assistant"}]},
     "messages[1].content", "is missing"),
    ({"messages": [{"role": "user", "content": "Q"}]}, "messages[0].role", "must be the assistant"),
    ({"messages": [{"role": "user", "content": "Q"}, {"role": "user", "content": "Q2"},
                   {"role": "assistant", "content": "A"}]}, "messages[1].role",
     "expected 'assistant'"),
    ({"messages": [{"role": "assistant", "content": "A"}]}, "messages[0].role",
     "expected 'user'"),
    ({"prompt": "Q", "response": "A", "id": [1]}, "id", "must be a string or an integer"),
    ({"text": "hello"}, "<record>", "needs 'prompt' and 'response', or 'messages'"),
])
def test_invalid_records_name_the_field(record, field, reason):
  with pytest.raises(records.RecordError) as err:
    records.normalize(record, where="train.jsonl:12")
  assert err.value.field == field
  assert str(err.value).startswith(f"train.jsonl:12: {field}: ")
  assert reason in str(err.value)


def test_read_reports_path_and_line(tmp_path):
  path = tmp_path / "data.jsonl"
  lines = [json.dumps({"prompt": "Q", "response": "A"}), "",
           json.dumps({"prompt": "Q", "response": ""}), "{not json",
           json.dumps(CHAT)]
  path.write_text("\n".join(lines) + "\n")
  with pytest.raises(records.RecordError, match=rf"{path}:3: response: is empty"):
    list(records.read(path))
  rejects = []
  got = list(records.read(path, skip_invalid=True, rejects=rejects))
  assert [line for line, _, _ in got] == [1, 5]
  assert [(line, reason.split(":")[0]) for line, reason, _ in rejects] == [
      (3, "response"), (4, "invalid JSON")]
  bad = tmp_path / "bad.jsonl"
  bad.write_text(json.dumps({"prompt": "Q", "response": "A"}) + "\n" * 3 + "{not json\n")
  with pytest.raises(stats.JsonlError, match=rf"{bad}:4: invalid JSON"):
    list(records.read(bad))


def test_markers_of_validates_existing_markers():
  tax = taxonomy.default_taxonomy()
  assert records.markers_of({"markers": {"lang": "French", "length_tokens": "3"}}, tax) == {
      "length_tokens": 3, "lang": "French"}
  assert records.markers_of({}, tax) == {}
  with pytest.raises(records.RecordError, match=r"x.jsonl:2: markers: domain: 'Space'"):
    records.markers_of({"markers": {"domain": "Space"}}, tax, where="x.jsonl:2")
  with pytest.raises(records.RecordError, match="markers: must be an object"):
    records.markers_of({"markers": ["lang"]}, tax)
