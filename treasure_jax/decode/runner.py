"""The library behind `treasure-jax generate`: load a checkpoint, wrap prompts, batch, decode.

`load(path)` takes a training checkpoint or a Hugging Face directory (e.g. one imported from
GGUF by `model.convert`) and returns a `Decoder`: model, taxonomy, vocabulary and chat template
(the one the data was trained with; for an imported model, its own). `Decoder.run(requests)`
wraps each prompt (marker mode, chat template unless `raw`, forced list prefix), decodes in
batches of `batch_size` and returns one `modes.Result` per prompt. `generate_cli` adds prompts
from flags or a JSONL file and writes JSONL results; printing is the CLI's.
"""
from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from typing import Any


from treasure_jax.decode import constraints
from treasure_jax.decode import generate as generate_lib
from treasure_jax.decode import modes
from treasure_jax.decode import sampling
from treasure_jax.decode import stops
from treasure_jax.markers import stats
from treasure_jax.markers import taxonomy as taxonomy_lib


@dataclasses.dataclass(frozen=True)
class Request:
  """One prompt and how to decode it."""
  prompt: str
  mode: modes.Mode = modes.Mode()
  id: Any = None
  origin: str = ""  # Where it was read ("file:line"), for error messages.


@dataclasses.dataclass
class Decoder:
  """A loaded model with what decoding needs around it."""
  model: Any
  taxonomy: taxonomy_lib.Taxonomy
  vocabulary: Any
  chat_template: Any  # data.chat_templates.ChatTemplate
  _automaton: constraints.TokenAutomaton | None = None
  _token_bytes: list[bytes | None] | None = None
  _list_close: stops.StopTables | None = None

  @property
  def token_bytes(self) -> list[bytes | None]:
    if self._token_bytes is None:
      self._token_bytes = constraints.token_bytes(self.vocabulary)
    return self._token_bytes

  def automaton(self) -> constraints.TokenAutomaton:
    if self._automaton is None:
      self._automaton = constraints.build(self.taxonomy, self.token_bytes)
    return self._automaton

  def list_close(self) -> stops.StopTables:
    """Where a completion's marker list ends: penalties act on the answer after it."""
    if self._list_close is None:
      self._list_close = modes.list_close(self.token_bytes, self.model.cfg.vocab_size)
    return self._list_close

  def eos_ids(self) -> list[int]:
    ids = {self.vocabulary.eos_id} if self.vocabulary.eos_id is not None else set()
    end = self.vocabulary.encode(self.chat_template.end_of_turn)
    if len(end) == 1:
      ids.add(int(end[0]))
    return sorted(ids)

  def prompt_ids(self, request: Request, raw: bool) -> tuple[list[int], str]:
    """Token ids of the full model input and the forced completion prefix."""
    text = modes.prompt_text(request.mode, request.prompt, self.taxonomy)
    if not raw:
      text = self.chat_template.render([{"role": "user", "content": text}],
                                       add_generation_prompt=True)
    prefix = modes.forced_prefix(request.mode, self.taxonomy)
    return list(self.vocabulary.encode(text + prefix)), prefix

  def run(self, requests: Sequence[Request], *, max_new_tokens: int = 256,
          sampler: sampling.Sampler = sampling.Greedy(), seed: int = 0, raw: bool = False,
          stop_strings: Sequence[str] = (), batch_size: int = 16,
          logprobs: bool = False,
          penalties: sampling.Penalties = sampling.Penalties()) -> list[modes.Result]:
    """Decodes every request; results in request order."""
    vocab_size = self.model.cfg.vocab_size
    stop_tables = stops.build(stop_strings, self.token_bytes, vocab_size)
    tables = None
    if any(r.mode.constrained for r in requests):
      tables = self.automaton().tables(vocab_size)
    results = []
    for lo in range(0, len(requests), batch_size):
      batch = list(requests[lo:lo + batch_size])
      inputs = [self.prompt_ids(r, raw) for r in batch]
      self._check_lengths(batch, inputs, max_new_tokens)
      starts = None
      if tables is not None:
        starts = [self._start_state(r, prefix) for r, (_, prefix) in zip(batch, inputs)]
      gen = generate_lib.generate(
          self.model, [ids for ids, _ in inputs], max_new_tokens=max_new_tokens,
          sampler=sampler, eos_ids=self.eos_ids(), seed=seed, constraint=tables,
          start_states=starts, stop_tables=stop_tables,
          row_seeds=list(range(lo, lo + len(batch))), penalties=penalties,
          list_rows=[r.mode.parses for r in batch] if penalties.active else None,
          list_close=self.list_close() if penalties.active else None)
      for i, r in enumerate(batch):
        results.append(self._finish(r, inputs[i], gen, i, stop_strings, logprobs))
    return results

  def _check_lengths(self, batch: Sequence[Request], inputs: Sequence[tuple[list[int], str]],
                     max_new_tokens: int) -> None:
    """A prompt that cannot fit the context with `max_new_tokens` is an error naming it."""
    limit = self.model.cfg.max_seq_len
    for r, (ids, _) in zip(batch, inputs):
      if len(ids) + max_new_tokens > limit:
        raise ValueError(f"{r.origin or f'prompt {r.id!r}'}: the prompt has {len(ids)} tokens; "
                         f"with max_new_tokens {max_new_tokens} that exceeds the model's "
                         f"context of {limit} tokens: shorten it or lower --max-new-tokens")

  def _start_state(self, request: Request, prefix: str) -> int:
    automaton = self.automaton()
    if not request.mode.constrained:
      return automaton.free
    return automaton.state_after(prefix) if prefix else automaton.start

  def _finish(self, request: Request, inputs: tuple[list[int], str],
              gen: generate_lib.Generation, i: int, stop_strings: Sequence[str],
              logprobs: bool) -> modes.Result:
    tokens = gen.tokens[i]
    eos = set(self.eos_ids())
    text_ids = [t for t in tokens if t not in eos]
    pieces = [self.token_bytes[t] or b"" if t < len(self.token_bytes) else b"" for t in tokens]
    return modes.finish(
        request.mode, self.taxonomy, prompt=request.prompt,
        generated_text=self.vocabulary.decode(text_ids), stop_reason=gen.stop_reasons[i],
        num_tokens=len(tokens), num_prompt_tokens=len(inputs[0]), stop_strings=stop_strings,
        prefix=inputs[1], token_bytes=pieces if logprobs else None,
        logprobs=gen.logprobs[i].tolist() if logprobs else None)


def load(path: str, *, mesh_shape: Sequence[int] | None = None, rules: str = "fsdp",
         chat_template: str | None = None,
         taxonomy_path: str | None = None, dtype: str | None = None) -> Decoder:
  """A Decoder for a training checkpoint or HF directory (`chat_template` overrides the
  checkpoint's: a built-in name or "model"; `taxonomy_path` overrides its taxonomy; `dtype`
  the compute dtype, by default the checkpoint's: see `checkpoint.load_for_inference`)."""
  from treasure_jax.data import chat_templates  # TensorFlow-heavy imports stay lazy.
  from treasure_jax.data import vocab
  from treasure_jax.model import sharding
  from treasure_jax.train import checkpoint
  mesh = None if mesh_shape is None else sharding.make_mesh(
      sharding.MeshConfig(tuple(mesh_shape), rules))
  loaded = checkpoint.load_for_inference(path, mesh=mesh, rules=rules, dtype=dtype)
  tokenizer = loaded.info.get("tokenizer") or {}
  if "path" not in tokenizer:
    raise ValueError(f"{path}: the checkpoint names no tokenizer (meta 'tokenizer.path')")
  vocabulary = vocab.make(tokenizer.get("kind", "hf"), tokenizer["path"])
  name = chat_template or loaded.info.get("chat_template") or "model"
  template = chat_templates.get(name, vocabulary)
  tax = taxonomy_lib.load(taxonomy_path) if taxonomy_path else loaded.taxonomy
  return Decoder(loaded.model, tax, vocabulary, template)


def read_requests(input_path: str, tax: taxonomy_lib.Taxonomy, *, mode: str | None,
                  markers: Mapping[str, Any], force_prefix: bool) -> list[Request]:
  """JSONL lines {"prompt": ..., optional "markers", "mode", "force_prefix", "id"}; a line's
  markers are added to (and override) the command-line ones. Errors name file and line."""
  requests = []
  for line, record in stats.read_jsonl(input_path):
    where = f"{input_path}:{line}"
    if not isinstance(record.get("prompt"), str):
      raise ValueError(f"{where}: needs a string field 'prompt'")
    line_markers = record.get("markers") or {}
    if not isinstance(line_markers, Mapping):
      raise ValueError(f"{where}: 'markers' must be an object")
    try:
      m = make_mode(record.get("mode", mode), {**markers, **line_markers}, tax,
                    bool(record.get("force_prefix", force_prefix)))
    except (taxonomy_lib.MarkerError, ValueError) as e:
      raise type(e)(f"{where}: {e}") from None
    requests.append(Request(record["prompt"], m, record.get("id", line), where))
  return requests


def make_mode(mode: str | None, markers: Mapping[str, Any], tax: taxonomy_lib.Taxonomy,
              force_prefix: bool) -> modes.Mode:
  """The default mode is "fixed" when markers are given, "inferred" otherwise."""
  return modes.make(mode or ("fixed" if markers else "inferred"), markers, tax,
                    force_prefix=force_prefix)


def parse_marker_flags(flags: Sequence[str]) -> dict[str, str]:
  """["length_bucket=concise", ...] -> dict; values are validated later by the taxonomy."""
  out = {}
  for flag in flags:
    name, sep, value = flag.partition("=")
    if not sep or not name.strip() or not value.strip():
      raise taxonomy_lib.MarkerError(f"--marker {flag!r}: expected CATEGORY=VALUE")
    out[name.strip()] = value.strip()
  return out


def generate_cli(checkpoint: str, *, prompts: Sequence[str] = (), input_path: str | None = None,
                 output_path: str | None = None, markers: Sequence[str] = (),
                 mode: str | None = None, force_prefix: bool = False,
                 max_new_tokens: int = 256, raw: bool = False, sampler: str = "greedy",
                 temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, seed: int = 0,
                 presence_penalty: float = 0.0, frequency_penalty: float = 0.0,
                 stop: Sequence[str] = (), batch_size: int = 16, logprobs: bool = False,
                 chat_template: str | None = None, taxonomy_path: str | None = None,
                 mesh_shape: Sequence[int] | None = None,
                 dtype: str | None = None) -> list[modes.Result]:
  """`treasure-jax generate`: decode `prompts` and/or the JSONL `input_path`; with
  `output_path` also write one JSON result a line (input ids kept in "id")."""
  if not prompts and not input_path:
    raise ValueError("generate: give --prompt or --input")
  chosen = sampling.make(sampler, temperature=temperature, top_k=top_k, top_p=top_p)
  try:
    penalties = sampling.Penalties(presence_penalty, frequency_penalty)
  except ValueError as e:
    raise ValueError(f"--presence-penalty / --frequency-penalty: {e}") from None
  decoder = load(checkpoint, mesh_shape=mesh_shape, chat_template=chat_template,
                 taxonomy_path=taxonomy_path, dtype=dtype)
  flag_markers = parse_marker_flags(markers)
  requests = [Request(p, make_mode(mode, flag_markers, decoder.taxonomy, force_prefix), i)
              for i, p in enumerate(prompts)]
  if input_path:
    requests += read_requests(input_path, decoder.taxonomy, mode=mode, markers=flag_markers,
                              force_prefix=force_prefix)
  results = decoder.run(requests, max_new_tokens=max_new_tokens, sampler=chosen, seed=seed,
                        raw=raw, stop_strings=stop, batch_size=batch_size, logprobs=logprobs,
                        penalties=penalties)
  if output_path:
    with open(output_path, "w", encoding="utf-8") as f:
      for r, result in zip(requests, results):
        f.write(json.dumps({"id": r.id, **result.to_json()}, ensure_ascii=False) + "\n")
  return results


def format_result(result: modes.Result, as_json: bool) -> str:
  """What the CLI prints for one result: a JSON object, or markers then the response."""
  if as_json:
    return json.dumps(result.to_json(), ensure_ascii=False)
  lines = [f"[markers] {json.dumps(result.markers, ensure_ascii=False)}"]
  if result.problems:
    lines.append(f"[problems] {'; '.join(result.problems)}")
  lines.append(result.response)
  return "\n".join(lines)
