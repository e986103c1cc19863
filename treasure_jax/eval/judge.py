"""Pairwise LLM-judge win rate and reward-model win rate; both optional.

Judge: an OpenAI-compatible `/chat/completions` endpoint compares the model's response with an
opponent's (e.g. the reference or a baseline model) in *both* orders, which cancels the judge's
position bias: each order gives the model 1 (win), 0.5 (tie) or 0 (loss), and the example's
score is the mean of the two. An example whose judge answer is malformed (no single verdict)
or whose request failed in either order is invalid and left out of the win rate, and counted.
HTTP, retries with backoff and API-key handling are `annotate.llm.chat_completion`'s (stdlib
urllib; the key is read from the environment variable named in the config, sent only in the
Authorization header and scrubbed from errors; never logged).

Reward model: any `annotate.quality.Scorer`, object with `.score(prompt, response)`, or
callable (prompt, response) -> float scores the model's and the opponent's responses; higher
wins, equal is a tie. Not configured → {"available": False, "reason": ...}. Per-example scores
go back into `record["scores"]` (`metrics.with_scores`); choosing the opponent is the sweep's.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from treasure_jax.annotate import llm

SYSTEM_PROMPT = (
    "Please act as an impartial judge and evaluate the quality of the responses provided by "
    "two AI assistants to the user prompt displayed below. Consider helpfulness, relevance, "
    "accuracy, depth and whether the response follows the instructions in the prompt. Do not "
    "let the order of the responses, their length or the assistants' names influence you. "
    "After a short explanation, output your final verdict strictly as one of: [[A]] if "
    "assistant A is better, [[B]] if assistant B is better, [[C]] for a tie.")
_VERDICT = re.compile(r"\[\[\s*(A>>B|A>B|A=B|B>A|B>>A|A|B|C|TIE)\s*\]\]", re.IGNORECASE)
_MEANING = {"A>>B": "A", "A>B": "A", "A": "A", "B>A": "B", "B>>A": "B", "B": "B",
            "A=B": "tie", "C": "tie", "TIE": "tie"}


@dataclasses.dataclass(frozen=True)
class JudgeConfig:
  """The `judge` config section. `url` is the API base (".../v1") or the full endpoint."""
  url: str
  model: str
  api_key_env: str | None = "OPENAI_API_KEY"
  concurrency: int = 4
  timeout_s: float = 120.0
  max_retries: int = 3
  backoff_s: float = 1.0
  max_backoff_s: float = 30.0
  max_tokens: int = 1024
  temperature: float = 0.0
  system_prompt: str = SYSTEM_PROMPT

  @classmethod
  def from_dict(cls, d: Mapping[str, Any], where: str = "judge") -> JudgeConfig:
    llm.check_keys(cls, d, where, required=("url", "model"))
    cfg = cls(**d)
    if not isinstance(cfg.concurrency, int) or cfg.concurrency < 1:
      raise ValueError(f"{where}.concurrency: must be a positive integer")
    return cfg

  @property
  def endpoint(self) -> str:
    return llm.chat_endpoint(self.url)


def parse_verdict(text: str) -> str | None:
  """"A", "B" or "tie" from a judge answer; None when it has no verdict or contradictory ones."""
  found = {_MEANING[m.upper()] for m in _VERDICT.findall(text or "")}
  return found.pop() if len(found) == 1 else None


def user_message(prompt: str, response_a: str, response_b: str) -> str:
  return (f"<|User Prompt|>\n{prompt}\n\n"
          f"<|The Start of Assistant A's Answer|>\n{response_a}\n"
          f"<|The End of Assistant A's Answer|>\n\n"
          f"<|The Start of Assistant B's Answer|>\n{response_b}\n"
          f"<|The End of Assistant B's Answer|>")


class Judge:
  """One configured judge endpoint; `ask` returns the verdict of one ordered pair."""

  def __init__(self, cfg: JudgeConfig):
    self.cfg = cfg
    self.__key = llm.read_api_key(cfg.api_key_env)  # LlmError when the variable is unset.

  def __repr__(self) -> str:
    return f"judge.Judge({self.cfg.model}@{self.cfg.endpoint})"

  def ask(self, prompt: str, response_a: str, response_b: str) -> tuple[str | None, str]:
    """(verdict or None, raw answer); transport failures raise llm.LlmError / llm.ItemError."""
    messages = [{"role": "system", "content": self.cfg.system_prompt},
                {"role": "user", "content": user_message(prompt, response_a, response_b)}]
    content = llm.chat_completion(self.cfg, messages, self.__key)
    return parse_verdict(content), content

  def compare(self, prompt: str, response: str, opponent: str) -> dict[str, Any]:
    """Both orders; {"score": 1/0.75/0.5/0.25/0 or None, "verdicts", "errors"}."""
    points = {0: {"A": 1.0, "tie": 0.5, "B": 0.0}, 1: {"A": 0.0, "tie": 0.5, "B": 1.0}}
    verdicts, errors, scores = [], [], []
    for order, (a, b) in enumerate(((response, opponent), (opponent, response))):
      try:
        verdict, raw = self.ask(prompt, a, b)
      except (llm.LlmError, llm.ItemError) as e:
        verdicts.append(None)
        errors.append(f"order {order}: {e}")
        continue
      verdicts.append(verdict)
      if verdict is None:
        errors.append(f"order {order}: malformed judge answer: {raw[-200:]!r}")
      else:
        scores.append(points[order][verdict])
    score = sum(scores) / 2 if len(scores) == 2 else None
    return {"score": score, "verdicts": verdicts, "errors": errors}


def win_rate(scores: Sequence[float | None]) -> dict[str, Any]:
  """Mean score over valid examples (ties count half); wins/ties/losses by score vs 0.5."""
  valid = [s for s in scores if s is not None]
  return {"win_rate": sum(valid) / len(valid) if valid else None, "n": len(valid),
          "n_invalid": len(scores) - len(valid), "wins": sum(s > 0.5 for s in valid),
          "ties": sum(s == 0.5 for s in valid), "losses": sum(s < 0.5 for s in valid)}


def _texts(records: Sequence[Mapping], fields: Sequence[str]) -> list[tuple[str, ...]]:
  out = []
  for i, record in enumerate(records):
    for field in fields:
      if not isinstance(record.get(field), str):
        raise ValueError(f"record {i} (id={record.get('id')!r}): {field} must be a string, got "
                         f"{type(record.get(field)).__name__}")
    out.append(tuple(record[f] for f in fields))
  return out


def pairwise(records: Sequence[Mapping], cfg: JudgeConfig | None, *,
             response_field: str = "response", opponent_field: str = "reference_response"
             ) -> dict[str, Any]:
  """Judge win rate of `response_field` against `opponent_field` over `records`.

  Returns {"available": True, "summary": win_rate(...), "per_example": [{"id", "score",
  "verdicts", "errors"}]}, or {"available": False, "reason"} when there is no judge.
  """
  if cfg is None:
    return {"available": False, "reason": "no judge endpoint configured"}
  try:
    judge = Judge(cfg)
  except llm.LlmError as e:
    return {"available": False, "reason": str(e)}
  texts = _texts(records, ("prompt", response_field, opponent_field))
  with concurrent.futures.ThreadPoolExecutor(max_workers=cfg.concurrency) as pool:
    results = list(pool.map(lambda t: judge.compare(*t), texts))
  per_example = [{"id": r.get("id"), **res} for r, res in zip(records, results)]
  summary = win_rate([res["score"] for res in results])
  if summary["n"] == 0:
    first = next((e for res in results for e in res["errors"]), "no records")
    return {"available": False, "reason": f"no valid judgement; first error: {first}",
            "per_example": per_example}
  return {"available": True, "summary": summary, "per_example": per_example}


def _score_fn(scorer: Any) -> Callable[[str, str], float]:
  if hasattr(scorer, "score") and callable(scorer.score):
    return scorer.score
  if callable(scorer):
    return scorer
  raise TypeError(f"reward scorer {scorer!r} is neither callable nor has .score(prompt, "
                  "response)")


def _reward_one(fn: Callable[[str, str], float], prompt: str, response: str,
                opponent: str | None) -> dict[str, Any]:
  try:
    reward = float(fn(prompt, response))
    other = float(fn(prompt, opponent)) if opponent is not None else None
  except Exception as e:  # noqa: BLE001 - a scorer failure invalidates one example only.
    return {"reward": None, "opponent_reward": None, "score": None,
            "error": f"{type(e).__name__}: {e}"}
  score = None if other is None else (1.0 if reward > other else 0.5 if reward == other else 0.0)
  return {"reward": reward, "opponent_reward": other, "score": score, "error": None}


def reward_compare(records: Sequence[Mapping], scorer: Any | None, *,
                   response_field: str = "response",
                   opponent_field: str = "baseline_response",
                   concurrency: int | None = None) -> dict[str, Any]:
  """Reward-model scores of the responses and, where the opponent exists, the win rate.

  Returns {"available": True, "mean_reward", "summary": win_rate(...), "per_example": [{"id",
  "reward", "opponent_reward", "score", "error"}]}, or {"available": False, "reason"}.
  """
  if scorer is None:
    return {"available": False, "reason": "no reward model configured"}
  fn = _score_fn(scorer)
  texts = _texts(records, ("prompt", response_field))
  opponents = [r.get(opponent_field) if isinstance(r.get(opponent_field), str) else None
               for r in records]
  workers = concurrency or getattr(scorer, "concurrency", None) or 4
  with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
    results = list(pool.map(lambda t: _reward_one(fn, *t[0], t[1]), zip(texts, opponents)))
  per_example = [{"id": r.get("id"), **res} for r, res in zip(records, results)]
  rewards = [res["reward"] for res in results if res["reward"] is not None]
  if not rewards:
    first = next((res["error"] for res in results if res["error"]), "no records")
    return {"available": False, "reason": f"no reward scored; first error: {first}",
            "per_example": per_example}
  return {"available": True, "mean_reward": sum(rewards) / len(rewards),
          "summary": win_rate([res["score"] for res in results]),
          "per_example": per_example}
