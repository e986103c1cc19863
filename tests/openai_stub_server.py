"""A real OpenAI-protocol HTTP server on localhost for the annotate tests (not a mock object).

`StubServer` runs `http.server.ThreadingHTTPServer` on port 0 in a thread and speaks just
enough of the chat-completions protocol: `POST /v1/chat/completions` with
`{model, messages, ...}` → `{"choices": [{"message": {"role", "content"}}]}`, plus a reward
endpoint `POST /reward` `{prompt, response}` → `{"score"}`. Every request body and header is
recorded so tests can check what was sent.

Answers are deterministic from the prompt text, so results are checkable: the classes are read
from the request's system instruction ("- Class: definition" lines) and the answer is
`expected_class(prompt, classes)`. Tags in the prompt select behaviours:
  #invalid-always  answers "NotAClass" every time;
  #invalid-once    answers "Nonsense!" first, a class on the corrective retry;
  #unsure          answers "Unspecified";
  #too-long        answers HTTP 400;
  #flaky           first request for this prompt+category: HTTP 500 (echoing the
                   Authorization header, to test that error text is scrubbed), then normal;
  #stall           first request for this prompt+category sleeps `stall_s` before answering;
  #garbage         first request for this prompt+category gets an HTML page with status 200.
Server-wide: `fail_first` answers the first N chat requests with 500/429 (`fail_status`), and
`hold_after` admits N chat requests and makes every later one wait until `release()`, then
fail with 503 (decided on arrival, so concurrent requests cannot overshoot N): the
kill-and-rerun test freezes the client there and kills it.
"""
from __future__ import annotations

import collections
import hashlib
import http.server
import json
import re
import threading
import time

_CATEGORY_RE = re.compile(r"^Category: (\w+)", re.MULTILINE)
_CLASS_RE = re.compile(r"^- (\S+?)(?::|$)", re.MULTILINE)
RETRY_PREFIX = "Your answer "


def expected_class(prompt: str, classes) -> str:
  digest = hashlib.sha256(prompt.encode("utf-8")).digest()
  return list(classes)[int.from_bytes(digest[:4], "big") % len(classes)]


def reward_score(prompt: str, response: str) -> float:
  """Deterministic stand-in for a reward model (also usable as a python scorer)."""
  digest = hashlib.sha256((prompt + "\x00" + response).encode("utf-8")).digest()
  return round(int.from_bytes(digest[:4], "big") / 2**32 * 10.0 - 5.0, 4)


def parse_request(body: dict) -> tuple[str, list[str], str, bool]:
  """(category, classes, classified prompt, is_retry) from a chat-completions body."""
  messages = body["messages"]
  system = messages[0]["content"]
  category = _CATEGORY_RE.search(system).group(1)
  classes_block = system.split("Classes:\n", 1)[1]
  classes = []
  for line in classes_block.splitlines():
    if not line.startswith("- "):
      break
    classes.append(_CLASS_RE.match(line).group(1))
  retry = messages[-1]["role"] == "user" and messages[-1]["content"].startswith(RETRY_PREFIX)
  prompt = messages[-3]["content"] if retry else messages[-1]["content"]
  return category, classes, prompt, retry


class StubServer:
  """Use as a context manager; `url` is the API base to put in the llm config."""

  def __init__(self, *, fail_first: int = 0, fail_status: int = 500, stall_s: float = 2.0,
               hold_after: int | None = None, delay_s: float = 0.0):
    self.fail_first, self.fail_status, self.stall_s = fail_first, fail_status, stall_s
    self.delay_s = delay_s  # Every chat answer takes this long: lets requests overlap.
    self.inflight = self.max_inflight = 0
    self.hold_after = hold_after
    self.lock = threading.Lock()
    self.requests: list[dict] = []
    self.headers: list[dict] = []
    # (category, prompt, is_retry) → answers delivered in time (a stalled reply is not counted).
    self.answered: collections.Counter = collections.Counter()
    self.rewards: collections.Counter = collections.Counter()  # (prompt, response) → count
    self.held = 0
    self._admitted = 0
    self._seen: set = set()
    self._release = threading.Event()
    stub = self

    class Handler(http.server.BaseHTTPRequestHandler):
      protocol_version = "HTTP/1.1"

      def log_message(self, *args):  # Quiet: tests read stderr for leaks.
        pass

      def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        try:
          if self.path.rstrip("/") == "/reward":
            status, reply = stub._reward(body)
          elif self.path.rstrip("/") == "/v1/chat/completions":
            with stub.lock:
              stub.inflight += 1
              stub.max_inflight = max(stub.max_inflight, stub.inflight)
            try:
              status, reply = stub._chat(body, dict(self.headers))
            finally:
              with stub.lock:
                stub.inflight -= 1
          else:
            status, reply = 404, {"error": f"no route {self.path}"}
          data = reply if isinstance(reply, bytes) else json.dumps(reply).encode("utf-8")
          self.send_response(status)
          self.send_header("Content-Type", "application/json")
          self.send_header("Content-Length", str(len(data)))
          if status == 429:
            self.send_header("Retry-After", "0")
          self.end_headers()
          self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
          pass  # The client timed out or was killed.

    self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    self._server.daemon_threads = True
    self._thread = threading.Thread(target=self._server.serve_forever, args=(0.02,),
                                    daemon=True)

  @property
  def base(self) -> str:
    return f"http://127.0.0.1:{self._server.server_address[1]}"

  @property
  def url(self) -> str:
    return self.base + "/v1"

  @property
  def reward_url(self) -> str:
    return self.base + "/reward"

  def n_answered(self) -> int:
    with self.lock:
      return sum(self.answered.values())

  def release(self) -> None:
    """Lets held requests fail (503) and stops holding new ones."""
    with self.lock:
      self.hold_after = None
    self._release.set()

  def _first(self, tag: str, category: str, prompt: str) -> bool:
    key = (tag, category, prompt)
    if key in self._seen:
      return False
    self._seen.add(key)
    return True

  def _chat(self, body: dict, headers: dict) -> tuple[int, dict]:
    category, classes, prompt, retry = parse_request(body)
    with self.lock:
      self.requests.append(body)
      self.headers.append(headers)
      n = len(self.requests)
      held = self.hold_after is not None and self._admitted >= self.hold_after
      self.held += held
      self._admitted += not held
      flaky = "#flaky" in prompt and self._first("flaky", category, prompt)
      stall = "#stall" in prompt and self._first("stall", category, prompt)
      garbage = "#garbage" in prompt and self._first("garbage", category, prompt)
    if held:
      self._release.wait(60)
      return 503, {"error": "held"}
    if n <= self.fail_first or flaky:
      return self.fail_status, {"error": "boom; got Authorization: "
                                + headers.get("Authorization", "")}
    if stall:
      time.sleep(self.stall_s)
      return 200, {"choices": [{"index": 0, "message": {"role": "assistant",
                                                          "content": "late"}}]}
    time.sleep(self.delay_s)
    if garbage:
      return 200, b"<html>proxy says hi</html>"
    if "#too-long" in prompt:
      return 400, {"error": "context length exceeded"}
    if "#invalid-always" in prompt or ("#invalid-once" in prompt and not retry):
      content = "NotAClass" if "#invalid-always" in prompt else "Nonsense!"
    elif "#unsure" in prompt:
      content = "Unspecified"
    else:
      content = expected_class(prompt, classes)
    with self.lock:
      self.answered[(category, prompt, retry)] += 1
    return 200, {"id": f"chatcmpl-{n}", "object": "chat.completion", "model": body["model"],
                 "choices": [{"index": 0, "finish_reason": "stop",
                              "message": {"role": "assistant", "content": content}}]}

  def _reward(self, body: dict) -> tuple[int, dict]:
    with self.lock:
      self.rewards[(body["prompt"], body["response"])] += 1
    return 200, {"score": reward_score(body["prompt"], body["response"])}

  def __enter__(self) -> StubServer:
    self._thread.start()
    return self

  def __exit__(self, *exc) -> None:
    self._release.set()
    self._server.shutdown()
    self._server.server_close()
