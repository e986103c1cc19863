"""Throughput of `treasure-jax serve` over loopback vs sequential `generate` calls.

  python benchmarks/serve.py [--model tiny|smollm2] [--requests 32] [--new-tokens 32]

The same prompts (benchmarks/decode.py's), greedy, `--new-tokens` each (max_tokens; a row may
stop earlier on EOS, tokens are counted from the replies' usage). Baseline: one
`Decoder.run([request])` (the library behind `treasure-jax generate`) per prompt, one after the
other, and, as the ceiling, one `Decoder.run` of all prompts in batches of 16. Server: a
`serve.server.Background` on 127.0.0.1 and 1, 4, 16 concurrent official `openai` clients that
share the request list. Every setting runs once untimed (compilation; for the server all three
levels first, as batch widths vary with timing) and once timed. `tiny` is
a random 2-layer model with the SmolLM2 tokenizer; `smollm2` the bundled SmolLM2-135M-Instruct
(converted to a temporary HF directory). Prints one JSON object a line.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import sys
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import decode as decode_bench  # noqa: E402  (benchmarks/decode.py: the shared prompts)
import openai  # noqa: E402

from treasure_jax.data import chat_templates  # noqa: E402
from treasure_jax.data import vocab  # noqa: E402
from treasure_jax.decode import runner  # noqa: E402
from treasure_jax.markers import taxonomy  # noqa: E402
from treasure_jax.model import config  # noqa: E402
from treasure_jax.model import convert  # noqa: E402
from treasure_jax.model import gguf  # noqa: E402
from treasure_jax.model import gguf_tokenizer  # noqa: E402
from treasure_jax.model import transformer  # noqa: E402
from treasure_jax.serve import batcher  # noqa: E402
from treasure_jax.serve import server  # noqa: E402


def tiny_decoder() -> runner.Decoder:
  tok = gguf_tokenizer.build_tokenizer(gguf.read_metadata(convert.smollm2_gguf_path()))
  vocabulary = vocab.HfTokenizerVocabulary(
      tok.to_str(), special_tokens={"eos_token": "<|im_end|>"}, chat_template=chat_templates.CHATML)
  cfg = config.preset("tiny", dtype="float32", vocab_size=tok.get_vocab_size(), max_seq_len=512)
  return runner.Decoder(transformer.create(cfg, seed=0), taxonomy.default_taxonomy(), vocabulary,
                        chat_templates.BUILTIN["chatml"])


def sequential(decoder: runner.Decoder, prompts: list[str], new_tokens: int,
               batch_size: int) -> dict:
  def once() -> int:
    tokens = 0
    for lo in range(0, len(prompts), batch_size):
      batch = [runner.Request(p) for p in prompts[lo:lo + batch_size]]
      tokens += sum(r.num_tokens for r in decoder.run(batch, max_new_tokens=new_tokens,
                                                      batch_size=batch_size))
    return tokens
  once()
  start = time.perf_counter()
  tokens = once()
  seconds = time.perf_counter() - start
  return {"setting": f"generate batch_size={batch_size}", "requests": len(prompts),
          "seconds": round(seconds, 3), "requests_per_s": round(len(prompts) / seconds, 2),
          "tokens_per_s": round(tokens / seconds, 1)}


def served(url: str, prompts: list[str], new_tokens: int, clients: int, warm: bool) -> dict:
  def client_loop(queue: list[str]) -> tuple[int, int]:
    c = openai.OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=600)
    done = tokens = 0
    while True:
      try:
        prompt = queue.pop()
      except IndexError:
        return done, tokens
      r = c.chat.completions.create(model="m", messages=[{"role": "user", "content": prompt}],
                                    max_tokens=new_tokens, temperature=0)
      done, tokens = done + 1, tokens + r.usage.completion_tokens

  def once() -> tuple[float, int, int]:
    queue = list(reversed(prompts))  # list.pop is atomic: the clients share it safely.
    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
      results = list(pool.map(client_loop, [queue] * clients))
    return time.perf_counter() - start, sum(r[0] for r in results), sum(r[1] for r in results)
  if warm:
    once()
    return {}
  seconds, done, tokens = once()
  return {"setting": f"serve clients={clients}", "requests": done, "seconds": round(seconds, 3),
          "requests_per_s": round(done / seconds, 2), "tokens_per_s": round(tokens / seconds, 1)}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--model", choices=("tiny", "smollm2"), default="tiny")
  parser.add_argument("--requests", type=int, default=32)
  parser.add_argument("--new-tokens", type=int, default=32)
  args = parser.parse_args()
  prompts = [decode_bench.PROMPTS[i % len(decode_bench.PROMPTS)] for i in range(args.requests)]
  with tempfile.TemporaryDirectory() as tmp:
    if args.model == "tiny":
      decoder = tiny_decoder()
    else:
      convert.convert(convert.smollm2_gguf_path(), tmp, "gguf")
      decoder = runner.load(tmp)
    head = {"model": args.model, "new_tokens": args.new_tokens, "cpus": os.cpu_count()}
    for batch_size in (1, 16):
      print(json.dumps({**head, **sequential(decoder, prompts, args.new_tokens, batch_size)}),
            flush=True)
    with server.Background(decoder, batch=batcher.Config(max_batch=16, max_queue=64)) as s:
      for clients in (1, 4, 16):  # Compiles the batch widths and prompt buckets they reach.
        served(s.url, prompts, args.new_tokens, clients, warm=True)
      for clients in (1, 4, 16):
        print(json.dumps({**head, **served(s.url, prompts, args.new_tokens, clients, False),
                          "batches_so_far": s.batcher.counts["batches"]}), flush=True)


if __name__ == "__main__":
  main()
