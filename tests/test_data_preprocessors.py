"""The chat preprocessor: exact seqio outputs on in-memory sources, loss weights exactly on the
completion (single/multi-turn, markers/baseline, several templates), dropout per epoch, fixed
markers, bad records and overflow."""
from __future__ import annotations

import json

import numpy as np
import pytest
import seqio
import tensorflow as tf

from treasure_jax.data import chat_templates
from treasure_jax.data import preprocessors
from treasure_jax.data import sources
from treasure_jax.data import tasks
from treasure_jax.data import testing
from treasure_jax.data import vocab
from treasure_jax.markers import dropout
from treasure_jax.markers import taxonomy
from treasure_jax.markers import template as template_lib

TAX = taxonomy.default_taxonomy()
KEEP_ALL = dropout.DropoutConfig(p_dataset=0.0, p_sample=0.0)
DROP_ALL = dropout.DropoutConfig(p_dataset=1.0)
R0 = {"id": "q1", "prompt": "What is 2 + 2?", "response": "Four.",
      "markers": {"domain": "Math", "length_tokens": 1}}
R1 = {"id": "c1", "messages": [{"role": "user", "content": "Hi"},
                               {"role": "assistant", "content": "Hello!"},
                               {"role": "user", "content": "Bye"}],
      "response": "Goodbye.", "markers": {"lang": "English"}}
LIST0 = "<MARKER_LIST> <length_tokens> 1 </length_tokens> <domain> Math </domain> </MARKER_LIST>"
LIST1 = "<MARKER_LIST> <lang> English </lang> </MARKER_LIST>"


@pytest.fixture(scope="module")
def bpe():
  return testing.small_bpe_vocabulary()


def _features(v):
  return {"targets": seqio.Feature(v, add_eos=False, dtype=tf.int32)}


def _expected(v, prompt_text, list_text, response_text, tail_text, **extra):
  """Token ids and weights of prompt | marker list | response + end of turn | trailing text."""
  parts = [v.encode(p) for p in (prompt_text, list_text, response_text, tail_text)]
  mw = [0] * len(parts[0]) + [1] * len(parts[1]) + [0] * (len(parts[2]) + len(parts[3]))
  rw = [0] * (len(parts[0]) + len(parts[1])) + [1] * len(parts[2]) + [0] * len(parts[3])
  return {"targets": sum(parts, []), "marker_weights": mw, "response_weights": rw, **extra}


def _dataset(records):
  return sources.records_source({"train": records}).get_dataset("train", shuffle=False)


def _options(variant="markers", drop=KEEP_ALL, **kw):
  return preprocessors.ChatOptions(taxonomy=TAX, template=chat_templates.get("chatml"),
                                   variant=variant, dropout=drop, **kw)


def test_markers_exact(bpe):
  ds = preprocessors.chat_preprocessor(_dataset([R0, R1]), _features(bpe), None,
                                       options=_options())
  user = "<|im_start|>user\n"
  turn = "<|im_end|>\n<|im_start|>assistant\n"
  seqio.test_utils.assert_dataset(ds, [
      _expected(bpe, f"{user}What is 2 + 2? {LIST0}{turn}", LIST0 + "\n", "Four.<|im_end|>",
                "\n", id="q1", origin="memory/train#0",
                markers='{"length_tokens": 1, "domain": "Math"}'),
      _expected(bpe, f"{user}Hi<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n"
                f"{user}Bye {LIST1}{turn}", LIST1 + "\n", "Goodbye.<|im_end|>", "\n",
                id="c1", origin="memory/train#1", markers='{"lang": "English"}'),
  ])


def test_baseline_and_dropped_prompt_side_exact(bpe):
  user, turn = "<|im_start|>user\n", "<|im_end|>\n<|im_start|>assistant\n"
  ds = preprocessors.chat_preprocessor(_dataset([R0]), _features(bpe), None,
                                       options=_options("baseline"))
  seqio.test_utils.assert_dataset(ds, _expected(
      bpe, f"{user}What is 2 + 2?{turn}", "", "Four.<|im_end|>", "\n", id="q1",
      origin="memory/train#0", markers='{"length_tokens": 1, "domain": "Math"}'))
  # Dataset-level dropout removes the prompt-side list; the completion side keeps all of it.
  ds = preprocessors.chat_preprocessor(_dataset([R0]), _features(bpe), None,
                                       options=_options(drop=DROP_ALL))
  seqio.test_utils.assert_dataset(ds, _expected(
      bpe, f"{user}What is 2 + 2?{turn}", LIST0 + "\n", "Four.<|im_end|>", "\n", id="q1",
      origin="memory/train#0", markers='{"length_tokens": 1, "domain": "Math"}'))


def test_registered_task_with_seqio_test_utils(bpe):
  names = tasks.register_marker_tasks(
      "unit", sources.records_source({"train": [R0]}), vocabulary=bpe, template="chatml",
      dropout=KEEP_ALL)
  assert names == {"markers": "unit_chatml_markers:1.0.0",
                   "baseline": "unit_chatml_baseline:1.0.0"}
  raw = {"train": {"record": json.dumps(R1), "origin": "injected:7"}}
  got = seqio.test_utils.test_preprocessing_single(names["markers"], raw)
  user, turn = "<|im_start|>user\n", "<|im_end|>\n<|im_start|>assistant\n"
  want = _expected(bpe, f"{user}Hi<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n"
                   f"{user}Bye {LIST1}{turn}", LIST1 + "\n", "Goodbye.<|im_end|>", "\n",
                   id=b"c1", origin=b"injected:7", markers=b'{"lang": "English"}')
  seqio.test_utils.assert_dict_values_equal(got, {k: np.asarray(v) for k, v in want.items()})
  base = seqio.test_utils.test_preprocessing_single(names["baseline"], raw)
  assert bpe.decode(base["targets"]).count("MARKER_LIST") == 0
  assert tasks.counters(names["markers"]).snapshot()["records"] >= 1


def test_fixed_marker_eval_task(bpe):
  name = tasks.register_fixed_task(
      "unit", sources.records_source({"validation": [R0]}), vocabulary=bpe,
      fixed_markers={"length_tokens": None, "quality_bucket": 1})
  assert name == "unit_chatml_fixed_length_tokens_quality_bucket:1.0.0"
  got = seqio.test_utils.test_preprocessing_single(
      name, {"validation": {"record": json.dumps(R0), "origin": "v:1"}})
  prompt_ids = got["targets"][:int(np.argmax(got["marker_weights"]))].tolist()
  text = bpe.tokenizer.decode(prompt_ids, skip_special_tokens=False)
  assert text.endswith("What is 2 + 2? <MARKER_LIST> <quality_bucket> 1 </quality_bucket> "
                       "<length_tokens> 1 </length_tokens> </MARKER_LIST><|im_end|>\n"
                       "<|im_start|>assistant\n")
  with pytest.raises(taxonomy.MarkerError, match="quality_bucket"):
    tasks.register_fixed_task("unit", sources.records_source({"validation": [R0]}),
                              vocabulary=bpe, fixed_markers={"quality_bucket": 9})


@pytest.mark.parametrize("name", ["chatml", "model", "gemma", "llama3"])
@pytest.mark.parametrize("variant", ["markers", "baseline"])
def test_loss_weights_cover_exactly_the_completion(tmp_path_factory, name, variant):
  """Decoding the weighted tokens gives back exactly the completion text (and its parts)."""
  if name == "gemma":
    path = testing.train_sentencepiece(testing.chatterbot_texts()[::4],
                                       str(tmp_path_factory.mktemp("sp") / "sp"))
    v = vocab.make("sentencepiece", path)
    decode = lambda ids: v.tokenizer.decode(ids.tolist())  # noqa: E731
  else:
    v = testing.smollm2_vocabulary()
    decode = lambda ids: v.tokenizer.decode(ids.tolist(), skip_special_tokens=False)  # noqa: E731
  options = preprocessors.ChatOptions(taxonomy=TAX, template=chat_templates.get(name, v),
                                      variant=variant)
  records = testing.chatterbot_records()[::97]
  assert {"prompt", "messages"} <= {k for r in records for k in r}
  texts = [json.dumps(r, ensure_ascii=False) for r in records]
  out = preprocessors.process_records(
      texts, [f"r{i}" for i in range(len(texts))], options=options, vocabulary=v,
      max_tokens=100_000, seeds=[1] * len(texts), epochs=[0] * len(texts))
  end = options.template.end_of_turn
  for record, ex in zip(records, out):
    ids, mw, rw = ex["targets"], ex["marker_weights"], ex["response_weights"]
    assert not (mw & rw).any()
    weighted = (mw | rw).astype(bool)
    # The weighted tokens are one contiguous run: the completion.
    first, last = np.flatnonzero(weighted)[[0, -1]]
    assert weighted[first:last + 1].all()
    completion = decode(ids[first:last + 1])
    listed = TAX.validate(record["markers"])
    markers_text = "" if variant == "baseline" else template_lib.serialize(listed, TAX) + "\n"
    want = markers_text + record["response"]
    if name in ("gemma", "llama3"):  # These templates trim the message content.
      want = want.strip()
    assert completion == want + end, record["id"]
    assert decode(ids[mw.astype(bool)]) == markers_text
    assert decode(ids[:first]) + completion + decode(ids[last + 1:]) == decode(ids)


def test_dropout_is_redrawn_per_epoch_and_deterministic():
  ex = preprocessors.parse_record(json.dumps({
      "id": "e", "prompt": "p", "response": "r",
      "markers": {"domain": "Math", "task": "Reasoning", "lang": "English", "format": "Latex",
                  "length_tokens": 5, "source": "Human"}}), "f:1", TAX)
  cfg = dropout.DropoutConfig()
  draws = [preprocessors.add_markers(ex, tax=TAX, variant="markers", dropout=cfg, seed=3,
                                     epoch=e)["messages"][-1]["content"] for e in range(12)]
  assert len(set(draws)) > 3  # Each epoch draws again.
  assert draws == [preprocessors.add_markers(ex, tax=TAX, variant="markers", dropout=cfg, seed=3,
                                             epoch=e)["messages"][-1]["content"]
                   for e in range(12)]
  assert "p" in draws  # The whole list dropped (dataset level) in some epoch.
  prefixes = {preprocessors.add_markers(ex, tax=TAX, variant="markers", dropout=cfg, seed=3,
                                        epoch=e)["completion_prefix"] for e in range(12)}
  assert prefixes == {template_lib.serialize(ex["markers"], TAX) + "\n"}


def test_chat_ending_with_the_answer():
  chat = {"id": "c", "messages": R1["messages"] + [{"role": "assistant", "content": "Bye!"}]}
  ex = preprocessors.parse_record(json.dumps(chat), "f:2", TAX)
  assert ex["messages"] == R1["messages"] and ex["response"] == "Bye!"


def test_fixed_markers():
  ex = preprocessors.parse_record(json.dumps(R0), "f:1", TAX)
  out = preprocessors.add_markers(ex, tax=TAX, variant="fixed", dropout=KEEP_ALL, seed=0,
                                  epoch=0, fixed_markers={"length_tokens": None,
                                                          "quality_bucket": 1})
  assert out["messages"][-1]["content"] == (
      "What is 2 + 2? <MARKER_LIST> <quality_bucket> 1 </quality_bucket> <length_tokens> 1 "
      "</length_tokens> </MARKER_LIST>")
  assert out["completion_prefix"] == (
      "<MARKER_LIST> <quality_bucket> 1 </quality_bucket> <length_tokens> 1 </length_tokens> "
      "<domain> Math </domain> </MARKER_LIST>\n")


@pytest.mark.parametrize("record, reason, message", [
    ({"id": "a", "response": "r"}, "missing_prompt", "missing or empty 'prompt'"),
    ({"prompt": "p", "response": " "}, "missing_response", "missing or empty 'response'"),
    ({"prompt": "p", "response": "r", "markers": {"domain": "Cooking"}}, "bad_marker",
     "domain: 'Cooking' is not allowed"),
    ({"prompt": "p", "response": "r", "markers": {"mood": "happy"}}, "bad_marker",
     "unknown category 'mood'"),
    ({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
      "response": "r"}, "missing_prompt", "must end with a non-empty user turn"),
    ("[1, 2]", "invalid_json", "expected a JSON object"),
    ("{not json", "invalid_json", "invalid JSON"),
])
def test_bad_records(record, reason, message):
  text = record if isinstance(record, str) else json.dumps(record)
  with pytest.raises(preprocessors.RecordError, match=message) as info:
    preprocessors.parse_record(text, "data.jsonl:12", TAX)
  assert info.value.reason == reason and str(info.value).startswith("data.jsonl:12")


def test_bad_records_skip_or_error_in_tf_data(bpe):
  bad = {"id": "bad", "prompt": "p", "response": "r", "markers": {"lang": "Klingon"}}
  counts = preprocessors.Counters()
  ds = preprocessors.chat_preprocessor(_dataset([R0, bad, R1]), _features(bpe), None,
                                       options=_options(on_bad_record="skip"), counters=counts)
  assert [ex["id"] for ex in ds.as_numpy_iterator()] == [b"q1", b"c1"]
  assert counts.snapshot() == {"records": 3, "skipped/bad_marker": 1}
  ds = preprocessors.chat_preprocessor(_dataset([R0, bad]), _features(bpe), None,
                                       options=_options(), counters=counts)
  with pytest.raises(tf.errors.InvalidArgumentError, match=r"memory/train#1 \(id bad\).*Klingon"):
    list(ds.as_numpy_iterator())
  assert "Klingon" in str(counts.last_error)


def test_overflow(bpe):
  ex = preprocessors.apply_template(preprocessors.add_markers(
      preprocessors.parse_record(json.dumps(R0), "f:3", TAX), tax=TAX, variant="markers",
      dropout=KEEP_ALL, seed=0, epoch=0), chat_templates.get("chatml"))
  full = preprocessors.tokenize(ex, bpe, max_tokens=10_000, on_overflow="error")
  n = len(full["targets"])
  with pytest.raises(preprocessors.RecordError, match=f"f:3: {n} tokens exceed .*{n - 3} tokens"):
    preprocessors.tokenize(ex, bpe, max_tokens=n - 3, on_overflow="error")
  counts = preprocessors.Counters()
  assert preprocessors.tokenize(ex, bpe, max_tokens=n - 3, on_overflow="skip",
                                counters=counts) is None
  cut = preprocessors.tokenize(ex, bpe, max_tokens=n - 3, on_overflow="truncate",
                               counters=counts)
  np.testing.assert_array_equal(cut["targets"], full["targets"][:n - 3])
  np.testing.assert_array_equal(cut["response_weights"], full["response_weights"][:n - 3])
  prompt_len = int(np.argmax(full["marker_weights"]))
  assert preprocessors.tokenize(ex, bpe, max_tokens=prompt_len, on_overflow="truncate",
                                counters=counts) is None  # Nothing left to learn from.
  assert counts.snapshot() == {"skipped/overflow": 2, "truncated": 1}
