"""Back-pressure and load on 127.0.0.1: a full queue answers 429 (error object, Retry-After), a
closed batcher 503; N concurrent openai clients each get an answer or a refusal with a status,
nothing is lost and memory stays bounded. The big load and the real SmolLM2 behind the
[annotate] LLM client are `slow`.
"""
from __future__ import annotations

import collections
import concurrent.futures
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request

import openai
import pytest

import test_serve as serve_test
from treasure_jax import cli
from treasure_jax.annotate import llm
from treasure_jax.decode import runner
from treasure_jax.markers import taxonomy
from treasure_jax.model import convert
from treasure_jax.serve import batcher as batcher_lib
from treasure_jax.serve import protocol
from treasure_jax.serve import server


@pytest.fixture(scope="module")
def decoder():
  return serve_test.tiny_decoder()


def rss_mb() -> float:
  with open("/proc/self/status") as f:
    kb = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
  return kb / 1024


def load(url: str, clients: int, per_client: int, max_tokens: int = 8) -> collections.Counter:
  """Each client (own openai.OpenAI, no retries) sends `per_client` requests at once with the
  others; returns the count of each outcome (an HTTP status, or the exception's name)."""
  start = threading.Barrier(clients)

  def one_client(i: int) -> list[object]:
    c = serve_test.client(url)
    start.wait()
    out = []
    for j in range(per_client):
      try:
        r = c.chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": f"q{i}.{j}"}],
            max_tokens=max_tokens)
        out.append(200 if r.choices[0].message.content is not None else "empty")
      except openai.APIStatusError as e:
        out.append(e.status_code if e.body.get("type") else "no error object")
      except Exception as e:  # Anything else is a lost request: counted, then asserted 0.
        out.append(type(e).__name__)
    return out

  with concurrent.futures.ThreadPoolExecutor(clients) as pool:
    outcomes = [o for result in pool.map(one_client, range(clients)) for o in result]
  return collections.Counter(outcomes)


def test_a_full_queue_answers_429_with_an_error_object(decoder):
  with server.Background(decoder, batch=batcher_lib.Config(max_queue=0)) as s:
    raw = serve_test.client(s.url).chat.completions.with_raw_response
    with pytest.raises(openai.RateLimitError) as e:
      raw.create(model="tiny", messages=serve_test.HI, max_tokens=4)
  assert e.value.status_code == 429 and e.value.response.headers["retry-after"] == "1"
  assert e.value.body["code"] == "queue_full" and "queue is full" in e.value.body["message"]


def test_batcher_bounds_its_queue_and_fails_waiting_requests_on_close(decoder):
  b = batcher_lib.Batcher(decoder, batcher_lib.Config(max_queue=2))  # Not started: nothing runs.
  job = protocol.completion_job({"prompt": "abc", "max_tokens": 4}, decoder, protocol.Limits())
  waiting = [b.submit(job), b.submit(job)]
  with pytest.raises(protocol.ApiError) as e:
    b.submit(job)
  assert e.value.status == 429 and b.counts["refused"] == 1
  b.close()
  for f in waiting:
    assert isinstance(f.exception(), protocol.ApiError) and f.exception().status == 503
  with pytest.raises(protocol.ApiError) as e:
    b.submit(job)
  assert e.value.status == 503


def run_load(decoder, clients: int, per_client: int, cfg: batcher_lib.Config):
  with server.Background(decoder, batch=cfg) as s:
    load(s.url, 2, 2)  # Warm-up: compiles the shapes the load uses.
    before = rss_mb()
    counts = load(s.url, clients, per_client)
    grown = rss_mb() - before
    assert s.batcher.queued() == 0
    batches = s.batcher.counts["batches"]
  print(f"load: {clients} clients x {per_client}: {dict(counts)}, {batches} batches, "
        f"RSS +{grown:.1f} MB")
  assert sum(counts.values()) == clients * per_client
  assert set(counts) <= {200, 429}, counts  # Answered or refused with a status; none lost.
  assert counts[200] >= per_client  # At least one client's worth got through.
  assert grown < 200, grown  # Bounded: no backlog beyond the queue.
  return counts, batches


def test_concurrent_clients_are_answered_or_refused(decoder):
  counts, batches = run_load(decoder, 16, 2, batcher_lib.Config(max_batch=4, max_queue=8))
  assert batches < counts[200] + 4  # Requests shared batches.


@pytest.mark.slow
def test_big_load_is_bounded(decoder):
  run_load(decoder, 64, 8, batcher_lib.Config(max_batch=16, max_queue=32))


@pytest.mark.slow
def test_annotate_llm_against_the_served_smollm2(tmp_path):
  """The [annotate] LLM annotator against this server with the real bundled SmolLM2-135M:
  every answer is a taxonomy class or a recorded problem, and the server did the work."""
  hf_dir = tmp_path / "smollm2"
  convert.convert(convert.smollm2_gguf_path(), os.fspath(hf_dir), "gguf")
  tax = taxonomy.default_taxonomy()
  with server.Background(runner.load(os.fspath(hf_dir)), model_name="smollm2") as s:
    cfg = llm.LlmConfig.from_dict({"url": s.url, "model": "smollm2", "timeout_s": 300,
                                   "max_retries": 0, "categories": ["domain"]})
    client = llm.Client(cfg, tax)
    answers = [client.classify(p, "domain") for p in ("Fix this: print(x[len(x)])",
                                                      "What is 17 times 23?")]
    assert s.batcher.counts["batches"] >= 2
  for a in answers:
    assert a.value in tax.category("domain").values or a.problem, a
    assert a.raw or a.problem
  print("smollm2 answers:", [a.to_dict() for a in answers])


def test_cli_serve_reports_a_bad_checkpoint(tmp_path, capsys):
  assert cli.main(["serve", "--checkpoint", str(tmp_path / "missing")]) == 2
  assert "treasure-jax serve: error:" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_serve_answers_on_a_free_port(tmp_path):
  """`treasure-jax serve --checkpoint DIR --port P` in a subprocess, asked over loopback."""
  with socket.socket() as sock:
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
  ckpt = serve_test.tiny_checkpoint(tmp_path)
  proc = subprocess.Popen([sys.executable, "-m", "treasure_jax.cli", "serve", "--checkpoint",
                           ckpt, "--port", str(port)], stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT)
  try:
    url, deadline = f"http://127.0.0.1:{port}/v1", time.monotonic() + 180
    while True:
      try:
        with urllib.request.urlopen(url.removesuffix("/v1") + "/health") as r:
          assert json.loads(r.read())["model"] == os.path.basename(ckpt)
        break
      except OSError:
        assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read()
        time.sleep(0.5)
    r = serve_test.client(url).chat.completions.create(
        model="x", messages=serve_test.HI, max_tokens=4, extra_body={"markers": {"task": "Reasoning"}})
    assert r.choices[0].markers["mode"] == "fixed"
  finally:
    proc.terminate()
    proc.wait(timeout=30)
