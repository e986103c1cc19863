"""Offline evaluation: metrics over per-example results, code sandbox, judges, reports.

Modules: `marker_metrics` (marker accuracy, confusion, calibration, seqio metric_fn),
`length_metrics` (length-control violations), `slices` (head/tail and per-value slices),
`metrics` (one cell's metrics JSON), `sandbox` + `code_exec` (pass@k), `judge` (pairwise LLM
judge, reward model), `bootstrap` + `intervals` (95% intervals from per-example values,
paired differences), `report` + `report_compare` + `plots` (Markdown + PNG). The sweep
runner (checkpoints x tasks x marker settings, decoding, scoring references with the model)
lives elsewhere and calls these
functions on lists of per-example result dicts. Every field is optional; each metric reads
only its own fields and reports itself unavailable when they are absent:

  id                  str | int        example id (error messages, pass@k grouping)
  prompt              str              the user prompt, without markers
  markers_given       {cat: value}     prompt-side markers the user fixed (empty: inferred)
  markers_generated   {cat: value}     parsed from the model's completion-side marker list
  reference_markers   {cat: value}     gold markers of the example (also defines its slices)
  logprob_of_chosen   {cat: float}     natural-log probability of the whole value string the
                                       model generated for cat (<= 0); calibration
  response            str              the model's answer (text after the marker list)
  reference_response  str              reference answer (judge opponent by default)
  baseline_response   str              baseline model's answer (reward-model opponent)
  length_target       {"length_tokens": N} | {"length_bucket": b}   the length instruction's
                                       target when it is not a given marker (NL / none modes)
  nll_sum, n_tokens   float, int       NLL (nats) of the reference response under the cell's
                                       marker setting, and its token count
  tests, entry_point, code_prefix      human-eval style code problem (code_exec)
  scores              {name: number | bool | None}   per-example scores: "pass", "judge_win",
                                       "reward_win", "reward", ... (`metrics.with_scores`)
"""
