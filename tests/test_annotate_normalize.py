"""annotate.normalize: each repair by kind; the summary and rejects on a mixed real-looking file
(input = written + rejected); multi-turn conversations; the CLI flag; the data path."""
from __future__ import annotations

import json
import random

import pytest

from treasure_jax import cli
from treasure_jax.annotate import deterministic
from treasure_jax.annotate import normalize
from treasure_jax.annotate import pipeline
from treasure_jax.annotate import records
from treasure_jax.annotate import text_stats
from treasure_jax.data import preprocessors
from treasure_jax.markers import taxonomy

TAX = taxonomy.default_taxonomy()


def turn(role, content, sharegpt=False):
  return {"from": role, "value": content} if sharegpt else {"role": role, "content": content}


def test_each_repair_is_counted_by_kind_and_recorded():
  raw = {"id": "c1", "conversations": [
      turn("system", "Be kind.", True), turn("gpt", "Hello! How can I help?", True),
      turn("human", "Hi", True), turn("human", "  ", True), turn("human", "what is 2+2?", True),
      turn("gpt", "4", True), turn("human", "thanks", True)]}
  fixed, made = normalize.repair(raw)
  assert fixed["messages"] == [turn("system", "Be kind."), turn("user", "Hi\n\nwhat is 2+2?"),
                               turn("assistant", "4")]
  assert "conversations" not in fixed and "conversations" in raw  # The input is untouched.
  assert made == {"sharegpt_keys": 8, "role_renamed": 6, "dropped_empty_turn": 1,
                  "merged_same_role": 1, "dropped_leading_assistant": 1,
                  "dropped_trailing_user": 1}
  assert fixed["annotation"]["repairs"] == dict(sorted(made.items()))
  view = records.normalize(fixed)
  assert view.system == "Be kind." and view.response == "4"


def test_clean_records_pass_unchanged_and_history_accumulates():
  clean = {"messages": [turn("user", "a"), turn("assistant", "b")], "meta": 1}
  assert normalize.repair(clean) == (clean, {})
  pair = {"prompt": "a", "response": "b"}
  assert normalize.repair(pair)[0] is pair
  again = {"messages": [turn("Assistant", "hi"), turn("user", "a"), turn("assistant", "b")],
           "annotation": {"repairs": {"dropped_empty_turn": 2}}}
  fixed, made = normalize.repair(again)
  assert made == {"role_renamed": 1, "dropped_leading_assistant": 1}
  assert fixed["annotation"]["repairs"] == {"dropped_empty_turn": 2,
                                            "dropped_leading_assistant": 1, "role_renamed": 1}


def test_content_parts_and_what_cannot_be_repaired():
  parts = {"messages": [turn("user", [{"type": "text", "text": "a"}, {"type": "text",
                                                                      "text": "b"}]),
                        turn("assistant", "c")]}
  fixed, made = normalize.repair(parts)
  assert fixed["messages"][0]["content"] == "a\nb" and made == {"content_parts": 1}
  # Only assistant turns: nothing is left, and validation says so.
  fixed, made = normalize.repair({"messages": [turn("assistant", "hello")]})
  assert made == {"dropped_leading_assistant": 1}
  with pytest.raises(records.RecordError, match="messages: must be a non-empty list"):
    records.normalize(fixed)
  # Unknown roles and a system turn mid-conversation stay for validation to name.
  odd = {"messages": [turn("user", "a"), turn("narrator", "b"), turn("assistant", "c")]}
  assert normalize.repair(odd) == (odd, {})
  # A record with a `response` keeps its final user turn (the data path's form).
  ctx = {"messages": [turn("assistant", "hi"), turn("user", "q")], "response": "r"}
  assert normalize.repair(ctx)[0]["messages"] == [turn("user", "q")]


def test_config_section_and_errors(tmp_path):
  assert not pipeline.load_config({}).normalize.enabled
  assert pipeline.load_config({"normalize": True}).normalize.enabled
  cfg = pipeline.load_config({"normalize": {"separator": "\n", "merge_same_role": False}})
  assert cfg.normalize.enabled and cfg.normalize.separator == "\n"
  with pytest.raises(ValueError, match=r"config: normalize: unknown keys \['merge'\]"):
    pipeline.load_config({"normalize": {"merge": True}})
  path = tmp_path / "annotate.yaml"
  path.write_text("normalize:\n  drop_trailing_user: yes-please\n")
  with pytest.raises(ValueError, match="normalize.drop_trailing_user: expected bool"):
    pipeline.load_config(path)


def mixed_lines() -> tuple[list[str], dict[str, int]]:
  """A real-looking dump: ShareGPT and OpenAI styles, greetings first, empty turns, bad JSON.

  Returns the lines and the repairs `normalize` must report for the records it keeps.
  """
  lines = []
  for i in range(6):  # ShareGPT, opening with the assistant's greeting.
    lines.append(json.dumps({"id": f"s{i}", "conversations": [
        turn("gpt", "Hi! What can I do for you?", True), turn("human", f"Explain item {i}.", True),
        turn("gpt", f"Item {i} is a small thing that does one job well.", True)]}))
  for i in range(4):  # OpenAI style with an empty user turn and a doubled assistant turn.
    lines.append(json.dumps({"id": f"o{i}", "messages": [
        turn("system", "You are terse."), turn("user", "Bonjour, ça va ?"), turn("user", ""),
        turn("assistant", "Oui, très bien."), turn("assistant", "Et vous ?")]},
        ensure_ascii=False))
  lines.append('{"id": "broken", "messages": [')  # Truncated JSON.
  lines.append("not json at all")
  lines.append(json.dumps({"id": "e0", "messages": []}))  # Nothing to repair.
  lines.append(json.dumps({"id": "e1", "messages": [turn("assistant", "only me")]}))
  lines.append(json.dumps({"id": "p0", "prompt": "2+2?", "response": "4"}))  # Clean.
  repairs = {"sharegpt_keys": 6 * 4, "role_renamed": 6 * 3, "dropped_leading_assistant": 6,
             "dropped_empty_turn": 4, "merged_same_role": 4}
  return lines, repairs


def test_mixed_file_input_equals_written_plus_rejected(tmp_path):
  lines, repairs = mixed_lines()
  src = tmp_path / "chats.jsonl"
  src.write_text("\n".join(lines) + "\n", encoding="utf-8")
  out = tmp_path / "out.jsonl"
  strict = pipeline.run(src, out, skip_invalid=True, progress=False)
  assert (strict.n_read, strict.n_records, strict.n_repaired) == (15, 1, 0)
  summary = pipeline.run(src, out, skip_invalid=True, normalize=True, progress=False)
  assert summary.n_read == len(lines) == summary.n_records + summary.n_rejected
  assert (summary.n_records, summary.n_rejected, summary.n_repaired) == (11, 4, 10)
  assert summary.repairs == repairs
  assert summary.reject_reasons == {"invalid JSON": 2, "messages: must be a non-empty list": 2}
  text = summary.format()
  assert "read 15 records, wrote 11" in text
  assert f"rejected 4 records: invalid JSON 2, messages: must be a non-empty list 2, listed " \
         f"in {tmp_path / 'out.rejects.jsonl'}" in text
  assert "repaired 10 records: sharegpt_keys 24, role_renamed 18" in text
  written = [json.loads(l) for l in out.read_text(encoding="utf-8").splitlines()]
  by_id = {r["id"]: r for r in written}
  assert by_id["s0"]["annotation"]["repairs"] == {
      "dropped_leading_assistant": 1, "role_renamed": 3, "sharegpt_keys": 4}
  assert by_id["o0"]["messages"][-1] == turn("assistant", "Oui, très bien.\n\nEt vous ?")
  assert by_id["o0"]["messages"][0] == turn("system", "You are terse.")  # Kept.
  assert by_id["o0"]["markers"]["lang"] == "French"
  assert "repairs" not in by_id["p0"]["annotation"]
  rejects = [json.loads(l) for l in (tmp_path / "out.rejects.jsonl").read_text().splitlines()]
  assert [r["line"] for r in rejects] == [11, 12, 13, 14]
  assert json.loads(rejects[3]["text"])["messages"] == [turn("assistant", "only me")]  # As read.


def test_cli_flag_prints_the_summary(tmp_path, capsys):
  lines, _ = mixed_lines()
  src = tmp_path / "chats.jsonl"
  src.write_text("\n".join(lines) + "\n", encoding="utf-8")
  out = tmp_path / "out.jsonl"
  assert cli.main(["annotate", str(src), str(out), "--normalize", "--skip-invalid",
                   "--no-progress"]) == 0
  printed = capsys.readouterr().out
  assert "read 15 records, wrote 11" in printed and "repaired 10 records" in printed
  assert "rejected 4 records" in printed


def long_conversation(rng: random.Random, n_turns: int) -> list[dict]:
  """2-40 turns: Cyrillic, Arabic, CJK and Latin prose, code blocks; the last answer Japanese."""
  texts = ["Привет, как дела? Расскажи мне о реке.", "مرحبا، كيف حالك؟ أخبرني عن النهر.",
           "这条河发源于山丘。", "```python\ndef f(x):\n    return x * 2\n```\nThat doubles x.",
           "The river rises in the hills and flows slowly to the sea."]
  msgs = [turn("user" if i % 2 == 0 else "assistant", rng.choice(texts))
          for i in range(n_turns - 1)]
  return msgs + [turn("assistant", "その川は丘から流れ出し、古い町をゆっくりと通って海へと向かいます。")]


@pytest.mark.parametrize("n_turns", [2, 4, 11, 40])
def test_multi_turn_markers_describe_the_final_assistant_turn(tmp_path, n_turns):
  rng = random.Random(n_turns)
  messages = long_conversation(rng, n_turns + (n_turns % 2))  # Even: user first, assistant last.
  src = tmp_path / "in.jsonl"
  src.write_text(json.dumps({"id": "m", "messages": messages}, ensure_ascii=False) + "\n",
                 encoding="utf-8")
  pipeline.run(src, tmp_path / "out.jsonl", normalize=True, progress=False)
  rec = json.loads((tmp_path / "out.jsonl").read_text(encoding="utf-8"))
  assert rec["messages"] == messages  # Earlier turns stay, as context.
  final = deterministic.annotate(messages[-1]["content"], TAX)
  assert {k: rec["markers"][k] for k in final} == final
  assert rec["markers"]["lang"] == "Japanese" and "code_type" not in rec["markers"]


def test_very_long_turns(tmp_path):
  """100 kB turns, before and as the completion; code in the completion is found."""
  big_prose = ("Der Fluss entspringt in den Hügeln und fließt langsam zum Meer. " * 1700)
  big_code = "```rust\n" + "fn main() { let mut x = 1; println!(\"{}\", x); }\n" * 2100 + "```"
  assert len(big_prose.encode()) > 100_000 and len(big_code) > 100_000
  rows = [{"id": "a", "messages": [turn("user", big_code), turn("assistant", "Kurz: ja.")]},
          {"id": "b", "messages": [turn("user", "Erkläre."), turn("assistant", big_prose)]},
          {"id": "c", "messages": [turn("user", "Code?"), turn("assistant", big_code)]}]
  src = tmp_path / "in.jsonl"
  src.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows),
                 encoding="utf-8")
  pipeline.run(src, tmp_path / "out.jsonl", progress=False)
  out = [json.loads(l) for l in (tmp_path / "out.jsonl").read_text("utf-8").splitlines()]
  assert "code_type" not in out[0]["markers"] and out[0]["markers"]["length_tokens"] == 2
  assert out[1]["markers"]["lang"] == "German"
  assert out[1]["markers"]["length_tokens"] == text_stats.count_words(big_prose) == 1700 * 11
  assert out[1]["markers"]["length_bucket"] == "long"
  assert out[2]["markers"]["code_type"] == "rust"


def test_ascii_word_count_fast_path_follows_the_general_rules():
  rng = random.Random(0)
  alphabet = "ab9 '-.,_\n\t!x0"
  for _ in range(5000):
    text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 30)))
    # A trailing em space (not ASCII, not a word character) sends the text the general way.
    assert text_stats.count_words(text) == text_stats.count_words(text + "\u2003"), text


def test_data_path_uses_the_same_repairs():
  raw = json.dumps({"id": 7, "conversations": [
      turn("gpt", "Hello!", True), turn("human", "2+2?", True), turn("gpt", "4", True)]})
  with pytest.raises(preprocessors.RecordError, match="f:1"):
    preprocessors.parse_record(raw, "f:1", TAX)
  counters = preprocessors.Counters()
  ex = preprocessors.parse_record(raw, "f:1", TAX, normalize=True, counters=counters)
  assert ex["messages"] == [turn("user", "2+2?")] and ex["response"] == "4"
  assert counters.snapshot() == {"repaired/dropped_leading_assistant": 1,
                                 "repaired/role_renamed": 3, "repaired/sharegpt_keys": 4}


def test_data_option_gives_the_clean_records_tokens():
  """`ChatOptions.normalize` (set from `data.normalize`): a raw chat trains as its clean twin."""
  from treasure_jax.data import chat_templates  # pylint: disable=g-import-not-at-top
  from treasure_jax.data import config as data_config
  from treasure_jax.data import testing
  assert not data_config.DataConfig(train_files="x").normalize
  assert data_config.DataConfig.from_dict({"train_files": "x", "normalize": True}).normalize
  clean = {"id": "c", "messages": [turn("user", "Hi there"), turn("assistant", "Hello!")],
           "markers": {"lang": "English"}}
  raw = {"id": "c", "conversations": [
      turn("gpt", "Welcome!", True), turn("human", "Hi", True), turn("human", "there", True),
      turn("gpt", "", True), turn("gpt", "Hello!", True)], "markers": {"lang": "English"}}
  v = testing.small_bpe_vocabulary()

  def run(record, **kw):
    options = preprocessors.ChatOptions(taxonomy=TAX, template=chat_templates.get("chatml"),
                                        **kw)
    counters = preprocessors.Counters()
    out = preprocessors.process_records([json.dumps(record)], ["f:1"], options=options,
                                        vocabulary=v, max_tokens=10_000, seeds=[0], epochs=[0],
                                        counters=counters)
    return out[0], counters.snapshot()

  want, _ = run(clean)
  got, counts = run(raw, normalize=True)
  assert got["text"] == want["text"].replace("Hi there", "Hi\n\nthere")
  assert counts == {"records": 1, "repaired/dropped_empty_turn": 1,
                    "repaired/dropped_leading_assistant": 1, "repaired/merged_same_role": 1,
                    "repaired/role_renamed": 5, "repaired/sharegpt_keys": 6}
  skipped, counts = run(raw, on_bad_record="skip")
  assert skipped is None and counts == {"records": 1, "skipped/missing_prompt": 1}
