"""`treasure-jax annotate`: JSONL in, the same records with `markers` and provenance out.

Per record, in order of precedence: markers already in the input ("input"), dataset metadata
rules ("metadata"), deterministic annotators ("deterministic"), the LLM classifier for the
configured categories still missing ("llm:MODEL"), the reward scorer ("reward:NAME"); then, a
second pass over all scores, `quality_bucket` per language. Each output record gets
`markers` (taxonomy order) and `annotation` ({category: annotator}); classifier answers that
were not a class are listed in `annotation_problems`.

Resumable: every paid call (LLM answer, reward score) is written to `OUT.cache.jsonl` and
fsync'd the moment it returns, keyed by content hash, category and model; a rerun after a kill
pays only for what is missing. The output is written to `OUT.partial` files and renamed into
place at the end, so OUT is complete or absent. Bad input is found by a first cheap pass,
before any call is paid: an error naming file and line, or with `skip_invalid` a skip listed
in `OUT.rejects.jsonl`. Record parsing, metadata rules and deterministic markers are
`records`, `metadata` and `deterministic`; the CLI flags are `cli.py`'s. With `normalize`
(config section or `--normalize`), `normalize.repair` fixes real-world chats before validation
(leading assistant turns, repeated roles, empty turns, ShareGPT roles); each repair is counted
in the summary and listed on the record as `annotation.repairs`.
"""
from __future__ import annotations

import collections
import concurrent.futures as futures_lib
import dataclasses
import itertools
import json
import logging
import os
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from typing import Any

import tqdm

from treasure_jax.annotate import cache as cache_lib
from treasure_jax.annotate import deterministic
from treasure_jax.annotate import llm
from treasure_jax.annotate import metadata
from treasure_jax.annotate import normalize as normalize_lib
from treasure_jax.annotate import quality
from treasure_jax.annotate import records
from treasure_jax.annotate import summary as summary_lib
from treasure_jax.markers import stats
from treasure_jax.markers import taxonomy as taxonomy_lib

DETERMINISTIC = "deterministic"


@dataclasses.dataclass(frozen=True)
class AnnotateConfig:
  """The config file: `metadata` rules (or a rules file), `llm`, `quality`, `normalize`."""
  metadata: Mapping[str, Any] | str = dataclasses.field(default_factory=dict)
  llm: llm.LlmConfig | None = None
  quality: quality.QualityConfig = quality.QualityConfig()
  normalize: normalize_lib.NormalizeConfig = normalize_lib.NormalizeConfig()


def load_config(config: str | os.PathLike | Mapping[str, Any] | AnnotateConfig | None,
                ) -> AnnotateConfig:
  """Reads a JSON/YAML config file (or takes a dict); unknown keys fail naming the key."""
  if config is None or isinstance(config, AnnotateConfig):
    return config or AnnotateConfig()
  where = "config"
  if not isinstance(config, Mapping):
    where = os.fspath(config)
    with open(where, encoding="utf-8") as f:
      text = f.read()
    try:
      if where.endswith((".yaml", ".yml")):
        import yaml  # Only needed for YAML configs.
        config = yaml.safe_load(text) or {}
      else:
        config = json.loads(text)
    except Exception as e:  # noqa: BLE001 - any parser error becomes a located error.
      raise ValueError(f"{where}: cannot parse config: {e}") from None
  if not isinstance(config, Mapping):
    raise ValueError(f"{where}: expected an object with sections metadata, llm, quality")
  unknown = sorted(set(config) - {"metadata", "llm", "quality", "normalize"})
  if unknown:
    raise ValueError(f"{where}: unknown sections {unknown}; known: metadata, llm, quality, "
                     "normalize")
  rules = config.get("metadata") or {}
  if isinstance(rules, str) and where != "config":  # A rules file next to the config file.
    rules = os.path.join(os.path.dirname(where), rules)
  return AnnotateConfig(
      metadata=rules,
      llm=llm.LlmConfig.from_dict(config["llm"], f"{where}: llm") if config.get("llm") else None,
      quality=quality.QualityConfig.from_dict(config.get("quality") or {}, f"{where}: quality"),
      normalize=normalize_lib.NormalizeConfig.from_dict(config.get("normalize"),
                                                        f"{where}: normalize"))


def _load_taxonomy(tax: taxonomy_lib.Taxonomy | str | os.PathLike | None) -> taxonomy_lib.Taxonomy:
  if tax is None:
    return taxonomy_lib.default_taxonomy()
  return tax if isinstance(tax, taxonomy_lib.Taxonomy) else taxonomy_lib.load(tax)


def _reject(rejects: list | None, line: int, obj: dict, reason: str) -> None:
  if rejects is not None:
    rejects.append((line, reason, json.dumps(obj, ensure_ascii=False)))


def _examples(in_path: str, tax, rules: metadata.MetadataRules, skip_invalid: bool,
              rejects: list | None, norm: normalize_lib.NormalizeConfig,
              repairs: collections.Counter | None = None,
              ) -> Iterator[tuple[dict, records.RecordView, dict, dict]]:
  """(record, view, markers given in the input, metadata markers) per valid line.

  Every check that can fail on a record happens here, so the first (counting) pass finds all
  bad input before any call is paid; bad lines raise, or go to `rejects` (with the line as
  read) with `skip_invalid`. `repairs` counts the normalization repairs of the valid records,
  and "records" the records repaired.
  """
  for line, raw in stats.read_jsonl(in_path, skip_invalid=skip_invalid, rejects=rejects,
                                    require_records=True):
    obj, made = normalize_lib.repair(raw, norm) if norm.enabled else (raw, {})
    where = f"{in_path}:{line}"
    try:
      view = records.normalize(obj, where=where)
      given = records.markers_of(obj, tax, where=where)
      from_rules = rules.apply(obj, where=where)
    except records.RecordError as e:
      if not skip_invalid:
        raise
      _reject(rejects, line, raw, f"{e.field}: {e.reason}")
      continue
    except metadata.MetadataError as e:
      if not skip_invalid:
        raise
      _reject(rejects, line, raw, str(e).removeprefix(f"{where}: "))
      continue
    if repairs is not None and made:
      repairs.update(made)
      repairs["records"] += 1
    yield obj, view, given, from_rules


def _rules(spec: Mapping[str, Any] | str, tax) -> metadata.MetadataRules:
  if isinstance(spec, (str, os.PathLike)):
    return metadata.MetadataRules.from_file(spec, tax)
  return metadata.MetadataRules.from_mapping(spec, tax)


class _Annotator:
  """Pass 1 of one run: annotates records in input order with a bounded window of calls."""

  def __init__(self, tax, cfg: AnnotateConfig, store: cache_lib.Cache):
    self.tax, self.store = tax, store
    self.client = llm.Client(cfg.llm, tax) if cfg.llm else None
    self.scorer = quality.Scorer(cfg.quality) if cfg.quality.kind != "none" else None
    self.counts = collections.Counter()
    self._counts_lock = threading.Lock()
    self.llm_pool = futures_lib.ThreadPoolExecutor(cfg.llm.concurrency if cfg.llm else 1)
    self.quality_pool = futures_lib.ThreadPoolExecutor(
        self.scorer.concurrency if self.scorer else 1)
    self.window = 4 * max(cfg.llm.concurrency if cfg.llm else 1,
                          self.scorer.concurrency if self.scorer else 1, 16)
    self._inflight: dict[str, futures_lib.Future] = {}

  def close(self) -> None:
    # Let running calls finish (and reach the cache); drop queued ones.
    for pool in (self.llm_pool, self.quality_pool):
      pool.shutdown(wait=True, cancel_futures=True)

  def _count(self, what: str, n: int = 1) -> None:
    with self._counts_lock:  # Worker threads count too.
      self.counts[what] += n

  def _paid(self, pool, key: str, kind: str, call) -> futures_lib.Future:
    """A future for a cached or fresh call; fresh results are stored as soon as they return."""
    cached = self.store.get(key)
    done: futures_lib.Future = futures_lib.Future()
    if cached is not None:
      self._count(f"{kind}_cached")
      done.set_result(cached)
      return done
    if key in self._inflight:  # Same content twice in the window: one call.
      return self._inflight[key]

    def work():
      value, durable = call()
      if durable:
        self.store.put(key, value)
      self._count(f"{kind}_calls")
      return value
    self._inflight[key] = pool.submit(work)
    return self._inflight[key]

  def deterministic(self, chunk: list[tuple[dict, records.RecordView, dict, dict]]
                    ) -> list[dict]:
    """Deterministic markers of a chunk of `_examples` (languages in one parallel batch)."""
    # Only what is still missing: language identification is the costly rule.
    todo = [[c for c in deterministic.CATEGORIES if c not in given and c not in from_rules]
            for _, _, given, from_rules in chunk]
    return deterministic.annotate_many([view for _, view, _, _ in chunk], self.tax,
                                       categories=todo)

  def start(self, obj: dict, view: records.RecordView, given: dict, from_rules: dict,
            computed: dict) -> tuple[dict, dict, dict[str, futures_lib.Future]]:
    """Markers known without calls (`computed`: the deterministic ones), and futures for the
    paid ones."""
    markers, by = dict(given), {name: _given_by(obj, name) for name in given}
    for name, value in from_rules.items():
      if name not in markers:
        markers[name], by[name] = value, "metadata"
    for name, value in computed.items():
      markers[name], by[name] = value, DETERMINISTIC
    pending = {}
    if self.client:
      for cat in self.client.cfg.categories:
        if cat not in markers:
          def call(cat=cat):
            answer = self.client.classify(view.prompt, cat)
            return answer.to_dict(), answer.cacheable
          pending[cat] = self._paid(self.llm_pool, self.client.cache_key(view.prompt, cat),
                                    "llm", call)
    if self.scorer and "quality" in self.tax and "quality" not in markers:
      def score():
        return {"score": self.scorer.score(view.prompt, view.response)}, True
      pending["quality"] = self._paid(
          self.quality_pool, self.scorer.cache_key(view.prompt, view.response),
          "quality", score)
    return markers, by, pending

  def finish(self, obj: dict, markers: dict, by: dict, pending) -> dict:
    problems = []
    for cat, future in pending.items():
      result = future.result()
      if cat == "quality":
        markers[cat], by[cat] = result["score"], self.scorer.provenance
        continue
      if result["problem"]:
        problems.append(result["problem"])
      if result["value"] is not None:
        markers[cat], by[cat] = result["value"], self.client.provenance
    for key in [k for k, f in self._inflight.items() if f.done()]:
      del self._inflight[key]
    self._count("problems", len(problems))
    return _output_record(obj, markers, by, problems, self.tax)


def _given_by(obj: dict, name: str) -> str:
  """Provenance of a marker given in the input: kept from an earlier run, else "input"."""
  earlier = obj.get("annotation")
  by = earlier.get(name) if isinstance(earlier, Mapping) else None
  return by if isinstance(by, str) else "input"


def _output_record(obj: dict, markers: dict, by: dict, problems: list, tax) -> dict:
  out = {k: v for k, v in obj.items() if k not in ("markers", "annotation",
                                                  "annotation_problems")}
  out["markers"] = dict(tax.ordered(markers))
  out["annotation"] = {name: by[name] for name in out["markers"]}
  repairs = obj.get("annotation", {}).get("repairs") if isinstance(
      obj.get("annotation"), Mapping) else None
  if isinstance(repairs, Mapping) and repairs:  # Kept from normalization (this run or earlier).
    out["annotation"]["repairs"] = dict(repairs)
  if problems:
    out["annotation_problems"] = problems
  return out


def _write_line(f, record: dict) -> None:
  f.write(json.dumps(record, ensure_ascii=False) + "\n")


def _sync(f) -> None:
  f.flush()
  os.fsync(f.fileno())


def _pass1(in_path, partial, tax, cfg, rules, store, n_total, progress, counts) -> list:
  """Writes annotated records to `partial`; returns (quality, lang) per record."""
  annotator = _Annotator(tax, cfg, store)
  window: collections.deque = collections.deque()
  scores = []
  bar = tqdm.tqdm(total=n_total, desc="annotate", unit="ex", file=sys.stderr,
                  disable=not progress, dynamic_ncols=True)
  try:
    with open(partial, "w", encoding="utf-8") as f:
      def flush(limit):
        while len(window) > limit:
          record = annotator.finish(*window.popleft())
          scores.append((record["markers"].get("quality"), record["markers"].get("lang")))
          _write_line(f, record)
          bar.update(1)
          if len(scores) % 64:  # Formatting the counts for every record costs 5% of a run.
            continue
          c = annotator.counts
          bar.set_postfix(llm=c["llm_calls"], cached=c["llm_cached"] + c["quality_cached"],
                          reward=c["quality_calls"], refresh=False)
      # Bad lines were found (raised or listed) by the first pass: skip them quietly here.
      examples = _examples(in_path, tax, rules, True, None, cfg.normalize)
      while chunk := list(itertools.islice(examples, annotator.window)):
        for example, computed in zip(chunk, annotator.deterministic(chunk)):
          window.append((example[0], *annotator.start(*example, computed)))
          flush(annotator.window)
      flush(0)
      _sync(f)
  finally:
    annotator.close()
    bar.close()
    counts.update(annotator.counts)
  return scores


def _pass2(partial: str, final_tmp: str, tax, scores: list) -> stats.FrequencyTable:
  """Adds per-language quality buckets; returns the frequency table of the final records."""
  buckets = [None] * len(scores)
  if "quality_bucket" in tax:
    buckets = quality.buckets([s for s, _ in scores], [lang for _, lang in scores])

  def annotated() -> Iterator[dict]:
    with open(partial, encoding="utf-8") as src, open(final_tmp, "w", encoding="utf-8") as dst:
      for text, bucket in zip(src, buckets, strict=True):
        record = json.loads(text)
        markers = record["markers"]
        if bucket is not None and "quality_bucket" not in markers:
          markers["quality_bucket"] = bucket
          record["annotation"]["quality_bucket"] = DETERMINISTIC
          record = _output_record(record, markers, record["annotation"],
                                  record.get("annotation_problems", []), tax)
        _write_line(dst, record)
        yield record
      _sync(dst)
  return stats.frequency_table(annotated(), tax)


def sidecar(out_path: str, kind: str) -> str:
  """OUT.jsonl → OUT.cache.jsonl / OUT.rejects.jsonl."""
  return f"{out_path.removesuffix('.jsonl')}.{kind}.jsonl"


def _write_rejects(path: str, rejects: list) -> None:
  tmp = path + ".partial"
  with open(tmp, "w", encoding="utf-8") as f:
    for line, reason, text in rejects:
      _write_line(f, {"line": line, "reason": reason, "text": text})
    _sync(f)
  os.replace(tmp, path)


def run(in_path: str | os.PathLike, out_path: str | os.PathLike, *,
        taxonomy: taxonomy_lib.Taxonomy | str | os.PathLike | None = None,
        config: str | os.PathLike | Mapping[str, Any] | AnnotateConfig | None = None,
        skip_invalid: bool = False, progress: bool = True, normalize: bool | None = None,
        ) -> summary_lib.Summary:
  """Annotates IN.jsonl into OUT.jsonl; rerunning after an interruption resumes from the cache.

  Raises `stats.JsonlError`, `records.RecordError` or `metadata.MetadataError` (each naming
  file:line) on bad input unless `skip_invalid`; `llm.LlmError`/`quality.QualityError` when an
  endpoint cannot be used (finished calls stay in the cache for the rerun). `normalize`
  True/False overrides the config's `normalize.enabled`.
  """
  start = time.monotonic()
  in_path, out_path = os.fspath(in_path), os.fspath(out_path)
  if os.path.abspath(in_path) == os.path.abspath(out_path):
    raise ValueError(f"{out_path}: the output must not overwrite the input")
  tax, cfg = _load_taxonomy(taxonomy), load_config(config)
  if normalize is not None:
    cfg = dataclasses.replace(cfg, normalize=dataclasses.replace(cfg.normalize,
                                                                 enabled=normalize))
  rejects: list = []
  repairs: collections.Counter = collections.Counter()
  rules = _rules(cfg.metadata, tax)
  n_valid = sum(1 for _ in _examples(in_path, tax, rules, skip_invalid, rejects,
                                     cfg.normalize, repairs))
  counts: collections.Counter = collections.Counter()
  partial = out_path + ".partial"
  with cache_lib.Cache(sidecar(out_path, "cache")) as store:
    scores = _pass1(in_path, partial, tax, cfg, rules, store, n_valid, progress, counts)
  table = _pass2(partial, out_path + ".final.partial", tax, scores)
  os.replace(out_path + ".final.partial", out_path)
  os.remove(partial)
  rejects_path = None
  if skip_invalid:
    rejects_path = sidecar(out_path, "rejects")
    _write_rejects(rejects_path, rejects)
  summary = summary_lib.Summary(
      out_path, rejects_path, len(scores), len(rejects), counts["llm_calls"],
      counts["llm_cached"], counts["quality_calls"], counts["quality_cached"],
      counts["problems"], time.monotonic() - start, table, n_repaired=repairs.pop("records", 0),
      repairs=dict(repairs), reject_reasons=dict(collections.Counter(
          summary_lib.reject_reason(reason) for _, reason, _ in rejects)))
  logging.info("%s", summary.format())
  return summary
