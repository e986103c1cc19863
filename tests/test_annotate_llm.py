"""LLM annotator against a real OpenAI-protocol server on localhost (tests/openai_stub_server)."""
from __future__ import annotations

import logging
import time

import pytest

import openai_stub_server as stub_lib
from treasure_jax.annotate import llm
from treasure_jax.annotate import prompts
from treasure_jax.markers import taxonomy

KEY = "sk-test-SECRET-0123456789abcdef"
PROMPTS = ["Why is the sky blue?", "Write a haiku about the sea.",
           "Fix this: print(x[len(x)])", "¿Cuál es la capital de Perú?"]


@pytest.fixture()
def tax():
  return taxonomy.default_taxonomy()


def make_client(url, tax, monkeypatch, **overrides):
  monkeypatch.setenv("TJ_TEST_KEY", KEY)
  cfg = dict(url=url, model="stub-model", api_key_env="TJ_TEST_KEY", timeout_s=5.0,
             max_retries=3, backoff_s=0.01, max_backoff_s=0.05)
  cfg.update(overrides)
  return llm.Client(llm.LlmConfig.from_dict(cfg), tax)


def test_request_has_definitions_few_shot_and_prompt(tax, monkeypatch):
  with stub_lib.StubServer() as stub:
    client = make_client(stub.url, tax, monkeypatch)
    client.classify("What is a contract?", "domain")
    body, headers = stub.requests[0], stub.headers[0]
  domain = tax.category("domain")
  assert body["model"] == "stub-model" and body["temperature"] == 0
  assert headers["Authorization"] == f"Bearer {KEY}"
  messages = body["messages"]
  system = messages[0]
  assert system["role"] == "system"
  for value, definition in domain.value_descriptions.items():
    assert f"- {value}: {definition}" in system["content"]
  assert "or `Unspecified` if unsure" in system["content"]
  shots = messages[1:-1]
  assert [m["role"] for m in shots] == ["user", "assistant"] * len(domain.values)
  assert [m["content"] for m in shots[1::2]] == list(domain.values)
  assert [m["content"] for m in shots[0::2]] == [
      prompts.FEW_SHOT["domain"][v] for v in domain.values]
  assert messages[-1] == {"role": "user", "content": "What is a contract?"}


@pytest.mark.parametrize("category", ["domain", "task", "format"])
def test_classes_follow_the_server_and_are_validated(tax, monkeypatch, category):
  with stub_lib.StubServer() as stub:
    client = make_client(stub.url, tax, monkeypatch)
    answers = [client.classify(p, category) for p in PROMPTS]
  values = tax.category(category).values
  assert [a.value for a in answers] == [stub_lib.expected_class(p, values) for p in PROMPTS]
  assert all(a.problem is None for a in answers)
  assert len(stub.requests) == len(PROMPTS)


def test_unspecified_means_no_marker(tax, monkeypatch):
  with stub_lib.StubServer() as stub:
    answer = make_client(stub.url, tax, monkeypatch).classify("hmm #unsure", "task")
  assert answer == llm.Answer(None, "Unspecified", None)


def test_invalid_class_is_retried_once_with_a_correction(tax, monkeypatch):
  with stub_lib.StubServer() as stub:
    client = make_client(stub.url, tax, monkeypatch)
    fixed = client.classify("Tell me about tax law #invalid-once", "domain")
    assert len(stub.requests) == 2
    retry = stub.requests[1]["messages"]
    assert retry[-2] == {"role": "assistant", "content": "Nonsense!"}
    correction = retry[-1]["content"]
    assert correction.startswith(prompts.RETRY_PREFIX) and "Finance" in correction
    bad = client.classify("Tell me a secret #invalid-always", "domain")
    assert len(stub.requests) == 4  # Exactly one retry, then give up.
  values = tax.category("domain").values
  assert fixed.value == stub_lib.expected_class("Tell me about tax law #invalid-once", values)
  assert bad.value is None and "NotAClass" in bad.problem and bad.cacheable


@pytest.mark.parametrize("status", [500, 503, 429])
def test_transient_errors_are_retried(tax, monkeypatch, status, caplog):
  caplog.set_level(logging.DEBUG)
  with stub_lib.StubServer(fail_first=2, fail_status=status) as stub:
    answer = make_client(stub.url, tax, monkeypatch).classify("Why is the sky blue?", "domain")
    assert len(stub.requests) == 3
  assert answer.value == stub_lib.expected_class("Why is the sky blue?",
                                                 tax.category("domain").values)
  assert "retry 2/3" in caplog.text and KEY not in caplog.text


def test_stalled_request_times_out_and_is_retried(tax, monkeypatch):
  with stub_lib.StubServer(stall_s=3.0) as stub:
    client = make_client(stub.url, tax, monkeypatch, timeout_s=0.3)
    start = time.monotonic()
    answer = client.classify("Why is the sky blue? #stall", "task")
    elapsed = time.monotonic() - start
    assert len(stub.requests) == 2
  assert elapsed < 2.5, elapsed  # Did not wait for the stalled reply.
  assert answer.value == stub_lib.expected_class("Why is the sky blue? #stall",
                                                 tax.category("task").values)


def test_gives_up_after_max_retries_and_scrubs_the_key(tax, monkeypatch, caplog):
  caplog.set_level(logging.DEBUG)
  with stub_lib.StubServer(fail_first=100) as stub:
    client = make_client(stub.url, tax, monkeypatch, max_retries=2)
    with pytest.raises(llm.LlmError, match="gave up after 3 attempts") as err:
      client.classify("Why?", "domain")
    assert len(stub.requests) == 3
  # The server echoes the Authorization header in its error body: it must come out scrubbed.
  assert "Bearer ***" in str(err.value) and KEY not in str(err.value)
  assert KEY not in caplog.text and KEY not in repr(client)


def test_refused_request_stops_at_once(tax, monkeypatch):
  with stub_lib.StubServer(fail_first=1, fail_status=401) as stub:
    with pytest.raises(llm.LlmError, match="HTTP 401"):
      make_client(stub.url, tax, monkeypatch).classify("Why?", "domain")
    assert len(stub.requests) == 1


def test_per_item_refusal_is_a_problem_not_cached(tax, monkeypatch):
  with stub_lib.StubServer() as stub:
    answer = make_client(stub.url, tax, monkeypatch).classify("x #too-long", "format")
  assert answer.value is None and "HTTP 400" in answer.problem and not answer.cacheable


def test_unreachable_server_gives_up(tax, monkeypatch):
  with stub_lib.StubServer() as stub:
    url = stub.url
  client = make_client(url, tax, monkeypatch, max_retries=1)  # The server is closed now.
  with pytest.raises(llm.LlmError, match="gave up after 2 attempts"):
    client.classify("Why?", "domain")


def test_missing_key_variable_is_named(tax, monkeypatch):
  monkeypatch.delenv("TJ_ABSENT_KEY", raising=False)
  cfg = llm.LlmConfig.from_dict({"url": "http://127.0.0.1:9/v1", "model": "m",
                                 "api_key_env": "TJ_ABSENT_KEY"})
  with pytest.raises(llm.LlmError, match="TJ_ABSENT_KEY"):
    llm.Client(cfg, tax)


def test_config_errors_name_the_key(tax):
  with pytest.raises(ValueError, match="unknown keys \\['modle'\\]"):
    llm.LlmConfig.from_dict({"url": "http://h/v1", "modle": "m"})
  with pytest.raises(ValueError, match="llm.model: required"):
    llm.LlmConfig.from_dict({"url": "http://h/v1"})
  with pytest.raises(ValueError, match="llm.concurrency"):
    llm.LlmConfig.from_dict({"url": "http://h/v1", "model": "m", "concurrency": 0})
  cfg = llm.LlmConfig.from_dict({"url": "http://h/v1", "model": "m",
                                 "categories": ["length_tokens"]})
  with pytest.raises(taxonomy.MarkerError, match="only enum"):
    llm.Client(cfg, tax)
  cfg = llm.LlmConfig.from_dict({"url": "http://h/v1", "model": "m",
                                 "few_shot": {"domain": {"Astrology": "x"}}})
  with pytest.raises(taxonomy.MarkerError, match="llm.few_shot.domain"):
    llm.Client(cfg, tax)


def test_parse_answer(tax):
  domain = tax.category("domain")
  assert llm.parse_answer(" legal.\n", domain) == ("Legal", True)
  assert llm.parse_answer("`Math`", domain) == ("Math", True)
  assert llm.parse_answer("UNSPECIFIED", domain) == (None, True)
  assert llm.parse_answer("Legal and Finance", domain) == (None, False)
  assert llm.parse_answer("", domain) == (None, False)


def test_cache_key_depends_on_prompt_category_model_and_instruction(tax, monkeypatch):
  url = "http://127.0.0.1:9/v1"
  a = make_client(url, tax, monkeypatch)
  b = make_client(url, tax, monkeypatch, model="other")
  c = make_client(url, tax, monkeypatch, few_shot={"domain": {"Legal": "Is this contract valid?"}})
  keys = {a.cache_key("p", "domain"), a.cache_key("q", "domain"), a.cache_key("p", "task"),
          b.cache_key("p", "domain"), c.cache_key("p", "domain")}
  assert len(keys) == 5
  assert a.cache_key("p", "domain") == make_client(url, tax, monkeypatch).cache_key("p", "domain")
  assert KEY not in "".join(keys)


def test_added_value_without_example_still_gets_definition(tax, monkeypatch):
  extended = tax.extend(values={"domain": ["Astrology"]})
  with stub_lib.StubServer() as stub:
    client = make_client(stub.url, extended, monkeypatch,
                         few_shot={"domain": {"Astrology": "What does my horoscope say?"}})
    client.classify("Is Mercury in retrograde?", "domain")
    messages = stub.requests[0]["messages"]
  assert "- Astrology" in messages[0]["content"]
  assert {"role": "assistant", "content": "Astrology"} in messages


@pytest.mark.parametrize("category", ["domain", "task", "format"])
def test_default_few_shot_covers_every_class(tax, caplog, category):
  cat = tax.category(category)
  pairs = prompts.few_shot(cat)
  assert [value for _, value in pairs] == list(cat.values)
  assert len({example for example, _ in pairs}) == len(pairs)
  assert "no few-shot example" not in caplog.text


def test_non_json_reply_is_retried_and_bad_url_refused(tax, monkeypatch):
  with stub_lib.StubServer() as stub:
    answer = make_client(stub.url, tax, monkeypatch).classify("Why? #garbage", "domain")
    assert len(stub.requests) == 2
  assert answer.value == stub_lib.expected_class("Why? #garbage", tax.category("domain").values)
  with stub_lib.StubServer() as stub:
    with pytest.raises(llm.LlmError, match="HTTP 404"):  # A wrong path is not retried.
      make_client(stub.base + "/v2", tax, monkeypatch).classify("Why?", "domain")
  with pytest.raises(ValueError, match="llm.url: 'localhost:8000' is not an http"):
    llm.LlmConfig.from_dict({"url": "localhost:8000", "model": "m"})
