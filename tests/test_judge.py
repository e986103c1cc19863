"""Pairwise judge and reward win rates against a real HTTP server on localhost."""
from __future__ import annotations

import http.server
import json
import logging
import re
import threading

import pytest

from treasure_jax.annotate import quality
from treasure_jax.eval import judge

KEY = "sk-test-SECRET-0123456789"
_ANSWER = re.compile(r"Start of Assistant (A|B)'s Answer\|>\n(.*?)\n<\|The End", re.DOTALL)


class _Handler(http.server.BaseHTTPRequestHandler):
  """A scripted judge; the prompt names the behaviour."""

  def log_message(self, *args):  # Keep test output quiet.
    del args

  def _reply(self, status: int, body: object) -> None:
    data = json.dumps(body).encode()
    self.send_response(status)
    self.send_header("Content-Type", "application/json")
    self.send_header("Content-Length", str(len(data)))
    self.end_headers()
    self.wfile.write(data)

  def do_POST(self):  # noqa: N802 - http.server's naming.
    server = self.server
    request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
    with server.lock:
      server.auth.append(self.headers.get("Authorization"))
    if self.path.endswith("/reward"):
      self._reply(200, {"score": len(request["response"])})
      return
    if self.headers.get("Authorization") != f"Bearer {KEY}":
      self._reply(401, {"error": "bad key"})
      return
    content = request["messages"][1]["content"]
    prompt = content.split("\n", 2)[1]
    answers = dict(_ANSWER.findall(content))
    with server.lock:
      server.calls[prompt] = server.calls.get(prompt, 0) + 1
      first_call = server.calls[prompt] == 1
    if prompt == "error" or (prompt == "flaky" and first_call):
      self._reply(500 if prompt == "error" else 503, {"error": "overloaded"})
      return
    self._reply(200, {"choices": [{"message": {"content": _verdict(prompt, answers)}}]})


def _verdict(prompt: str, answers: dict[str, str]) -> str:
  if prompt == "position-bias":
    return "Assistant A answered first, so [[A]]"
  if prompt == "tie":
    return "Both are equally fine. [[C]]"
  if prompt == "malformed":
    return "Hard to say; maybe [[A]] or maybe [[B]]."
  if prompt == "no-verdict":
    return "I refuse to pick."
  good = [k for k, v in answers.items() if "GOOD" in v]
  return f"Explanation... [[{good[0]}]]" if len(good) == 1 else "[[C]]"


@pytest.fixture
def server():
  httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
  httpd.lock, httpd.calls, httpd.auth = threading.Lock(), {}, []
  thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05},
                            daemon=True)
  thread.start()
  yield httpd
  httpd.shutdown()
  httpd.server_close()


def _config(server, **kw) -> judge.JudgeConfig:
  base = {"url": f"http://127.0.0.1:{server.server_address[1]}/v1", "model": "judge-test",
          "api_key_env": "TJ_TEST_JUDGE_KEY", "max_retries": 1, "backoff_s": 0.01,
          "max_backoff_s": 0.02, "timeout_s": 10.0, "concurrency": 3}
  return judge.JudgeConfig.from_dict({**base, **kw})


def _rec(i, prompt, response, opponent):
  return {"id": i, "prompt": prompt, "response": response, "reference_response": opponent}


def test_pairwise_both_orders_ties_errors(server, monkeypatch, caplog):
  monkeypatch.setenv("TJ_TEST_JUDGE_KEY", KEY)
  caplog.set_level(logging.DEBUG)
  records = [_rec(0, "prefer-good", "GOOD answer", "weak answer"),
             _rec(1, "prefer-good", "weak answer", "GOOD answer"),
             _rec(2, "position-bias", "x", "y"),
             _rec(3, "tie", "x", "y"),
             _rec(4, "malformed", "x", "y"),
             _rec(5, "no-verdict", "x", "y"),
             _rec(6, "error", "x", "y"),
             _rec(7, "flaky", "GOOD", "weak")]
  out = judge.pairwise(records, _config(server))
  scores = [e["score"] for e in out["per_example"]]
  # A judge that always picks the first answer scores 0.5: the two orders cancel its bias.
  assert scores == [1.0, 0.0, 0.5, 0.5, None, None, None, 1.0]
  assert out["per_example"][0]["verdicts"] == ["A", "B"]
  assert out["summary"] == {"win_rate": 0.6, "n": 5, "n_invalid": 3, "wins": 2, "ties": 2,
                            "losses": 1}
  assert "malformed judge answer" in out["per_example"][4]["errors"][0]
  assert "HTTP 500" in out["per_example"][6]["errors"][0]
  assert server.calls["error"] == 4  # Two orders x (1 try + 1 retry).
  assert server.calls["flaky"] == 3  # One 503, then both orders.
  assert set(server.auth) == {f"Bearer {KEY}"}
  assert KEY not in json.dumps(out) and KEY not in caplog.text


def test_wrong_key_makes_the_judge_unavailable_without_leaking_it(server, monkeypatch, caplog):
  monkeypatch.setenv("TJ_TEST_JUDGE_KEY", "sk-wrong-" + KEY[::-1])
  caplog.set_level(logging.DEBUG)
  out = judge.pairwise([_rec(0, "tie", "x", "y")], _config(server))
  assert out["available"] is False and "HTTP 401" in out["reason"]
  assert KEY[::-1] not in json.dumps(out) and KEY[::-1] not in caplog.text


def test_not_configured_is_reported():
  assert judge.pairwise([], None) == {"available": False,
                                      "reason": "no judge endpoint configured"}
  cfg = judge.JudgeConfig(url="http://127.0.0.1:9/v1", model="m", api_key_env="TJ_UNSET_VAR")
  out = judge.pairwise([_rec(0, "p", "a", "b")], cfg)
  assert out["available"] is False and "TJ_UNSET_VAR" in out["reason"]
  with pytest.raises(ValueError, match="judge: unknown keys"):
    judge.JudgeConfig.from_dict({"url": "u", "model": "m", "temprature": 0})


def test_parse_verdict():
  assert judge.parse_verdict("... [[A>>B]]") == "A"
  assert judge.parse_verdict("[[b]]") == "B"
  assert judge.parse_verdict("[[A=B]]") == "tie"
  assert judge.parse_verdict("[[A]] then again [[A>B]]") == "A"
  assert judge.parse_verdict("[[A]] [[B]]") is None
  assert judge.parse_verdict("A is better") is None


def test_reward_win_rate_with_the_quality_scorer(server):
  url = f"http://127.0.0.1:{server.server_address[1]}/reward"
  scorer = quality.Scorer(quality.QualityConfig(kind="http", url=url, max_retries=0))
  records = [{"id": 0, "prompt": "p", "response": "aaaa", "baseline_response": "aa"},
             {"id": 1, "prompt": "p", "response": "a", "baseline_response": "aaa"},
             {"id": 2, "prompt": "p", "response": "aa", "baseline_response": "bb"},
             {"id": 3, "prompt": "p", "response": "aaaaa"}]
  out = judge.reward_compare(records, scorer)
  assert [e["score"] for e in out["per_example"]] == [1.0, 0.0, 0.5, None]
  assert out["mean_reward"] == pytest.approx((4 + 1 + 2 + 5) / 4)
  assert out["summary"]["win_rate"] == 0.5 and out["summary"]["n_invalid"] == 1


def test_reward_with_a_callable_and_failures():
  def scorer(prompt, response):
    if response == "boom":
      raise RuntimeError("reward model down")
    return float(len(prompt + response))

  records = [{"id": 0, "prompt": "p", "response": "long answer", "baseline_response": "s"},
             {"id": 1, "prompt": "p", "response": "boom", "baseline_response": "s"}]
  out = judge.reward_compare(records, scorer)
  assert out["per_example"][1]["error"] == "RuntimeError: reward model down"
  assert out["summary"]["win_rate"] == 1.0 and out["summary"]["n_invalid"] == 1
  assert judge.reward_compare(records, None)["available"] is False
