"""The end-to-end demo: build the demo data, fine-tune SmolLM2-135M-Instruct twice, evaluate.

Command:
  treasure-jax demo --workdir /tmp/demo            (this file, no variant: the full demo)
  treasure-jax demo --workdir /tmp/demo --quick    (variant `quick`)
  library: demo.run(workdir, quick=..., config="configs/demo.py:ablation",
                    config_overrides=("train.num_train_steps=50",))
Variants (comma-separated, e.g. `quick,ablation`):
  (none)          baseline (no markers) and markers (p_d = p_s = 0.5): the same training set,
                  steps and rows (compute-matched; `same_examples` matches examples).
  quick           the same model and data, a smaller budget (below); what CI runs.
  lengthaug       the training split also gets up to 2 copies of each OpenEnded /
                  QuestionAnswering / Explanation example answered by its answer cut at
                  sentence ends, length markers recounted (experiment L below).
  steer           the evaluation also asks the first 12 (quick) / 32 chat prompts at 10, 40
                  and 160 words each (`every_limit`): the sweep report's "Does the asked
                  length steer the answer?" table, experiment P2 as a report section
                  (its 3 cells: 15 min 8 s of decoding at full, experiment S below).
  same_examples   example-matched instead of compute-matched: both runs read the training
                  records in one order and every step's batch closes after 8 examples
                  (`data.paired_order`, `data.examples_per_batch`), so the baseline trains on
                  the same examples at (nearly) the same steps, its rows holding more padding
                  (the paper's "same data and schedule"; a marked batch without room for its
                  8th example closes early and the marked run trails; experiment E below).
  ablation        the paper's Table 7: marked models with p_d = 0, 0.5 and 0.7, no baseline;
                  only marker inference and length control are evaluated.
  ablation_pd0, ablation_pd07   one marked model with that p_d (compare with the main demo's
                  `markers` run, same budget).
Hardware: CPU, 2 cores, float32, no accelerator.
  quick  train 2 x 10 steps of 4 packed rows of 512 tokens (~18,100 tokens a run: baseline
         174 examples, markers 108); eval 12 prose chat prompts x (2 baseline + 3 marked
         settings), 24 likelihood examples x (1 + 2) settings, 3 CodeGeneration + 3 CodeFix
         problems x (1 + 2). Measured 2026-12-03 from a clean venv while a test run shared the
         cores: 20 min 58 s wall, 13.8 GiB peak RSS (training 234 + 214 s, evaluation 751 s,
         data 52 s); CI allows 30 min. Rerun 2026-12-06 (other load not recorded): the same
         figures to the last digit, 18 min 32 s (data 37 s, training 219 + 213 s, evaluation
         645 s, of which markers/likelihood 236 s: its `inferred` setting decodes lists).
         With decode batch 12 (was 4), idle machine, 2026-12-06: the same figures, 15 min
         50 s, 13.3 GiB (data 36 s, training 188 + 185 s, evaluation 535 s); without the
         domain+lang likelihood setting (below): 14 min 58 s, 13.3 GiB (evaluation 465 s);
         2026-12-07, the same figures: 15 min 16 s (training 219 + 187 s, evaluation 468 s);
         again after the every_limit change, the same figures: 17 min 59 s, 13.2 GiB (no
         other job of ours running; the cause of the slower run not found).
  full   train 2 x 64 steps of 4 packed rows of 512 (~256 rows, ~116k tokens a run); eval 32
         chat prompts, 96 likelihood examples, 10 + 10 code problems. Measured 2026-12-03 from
         a clean clone while tests shared the cores: 82 min 21 s wall, 12.3 GiB peak RSS
         (training 1,307 + 1,298 s, evaluation 2,289 s, data 40 s). Seed 1 alone
         (`seeds=(1,)`, 2026-12-06, nothing else running, decode batch 16): 65 min 26 s,
         13.3 GiB (training 1,071 + 1,067 s, evaluation 1,740 s, data 41 s).
         Again from a clean clone of 6f1697c, 2026-12-07, a niced test run sharing the cores
         for ~55 of its minutes: 91 min 23 s, 13.3 GiB peak RSS, examples and tokens
         equal to 12-03's to the digit (its report was lost with the machine, unread).
Produces: in the workdir, data/ (the demo set, its marker statistics, the eval subsets),
  train/<run>/ (checkpoints, metrics.jsonl), eval/ (sweep cells, eval/report/report.md),
  stages/ (one file per finished stage) and report.md: the summary table next to the paper's
  figures, with the sizes that differ from the paper stated.

Rows are packed (first fit, 512 positions): both runs get the same rows x positions per step
(compute-matched), so the baseline, whose examples lack the ~85-token completion-side list,
sees more examples; the report's training table gives examples and tokens seen per run.

Experiments (2 cores, SmolLM2-135M float32, the demo mix, one seed each; "violations" = share of
chat prompts whose response is longer than the limit, the reference length):
  A  16 x 4 unpacked rows of 384, lr 2.5e-4, chat eval incl. code tasks (n=24): the marker
     lists collapsed to one list; violations baseline none 16.7%, asked in words 12.5%;
     markers none 33.3%, words 29.2%, length_tokens 37.5%.
  B  24 x 4 packed rows of 512, lr 1e-3 (n=24 incl. code): marker-list loss 1.74 -> 0.09,
     domain accuracy 77.8% (n=18), lang 83.3%; violations baseline none 33.3%, words 29.2%;
     markers none 25.0%, words 20.8%, length_tokens 37.5%. At 1e-3 many outputs loop until
     max_new_tokens; code references (> 200 tokens) were cut off and counted as within the
     limit -> the length eval now reads the prose-only eval/length.jsonl.
  C  markers only, 40 x 4 packed rows of 512, lr 5e-4, length.jsonl n=32, 300 new tokens:
     training reached marker-list loss 0.07, response loss 1.43 at step 28 (1,408 records
     read, 3 skipped for overflow, 49 truncated); its evaluation figures were lost with the
     machine before they were read.
  quick (this file, 10 x 4 x 512, lr 5e-4, n=12): lang 75.0% [50, 100] (majority +8.3 pts),
     domain 75.0% n=8, task 16.7% (= majority); violations baseline words 41.7% [16.7, 66.7],
     markers words 75.0%, length_tokens 75.0% (+33.3 pts [+8.3, +58.3] paired): after 10
     steps the marked model writes ~70 words whatever the limit, so the length lever is NOT
     learned at the quick budget; the marker-list loss fell 2.24 -> 0.28 (the lists are
     learned first). Whether 64 steps teach it is what the full run measures.
  Q1-Q4 (2026-12-06): can anything inside the quick budget teach it? Markers run only, the
     quick data, chat n=12 with length_tokens set; "runaway" = cut at max_new_tokens, mostly
     repeating the marker list or the prompt (the baseline asked in words: 41.7%, 3 runaway).
     Q1 lists of length_tokens, task, domain, lang only: 119 examples seen (108), list loss
        2.58 -> 0.18; violations 75.0% [50.0, 100.0], 11 of 12 runaway.
     Q2 LoRA r16 (alpha 32, every projection), lr 2e-3: training 161 s (213 s full
        fine-tuning); 58.3% [33.3, 83.3], 10 runaway.
     Q3 as Q2 for 16 steps (169 examples): 66.7% [41.7, 91.7], 7 runaway.
     Q4 full fine-tuning, 16 steps: 66.7% [41.7, 91.7], 9 runaway.
     None comes near the baseline: with <= 16 steps (~170 examples, what 15 minutes on 2
     cores hold for two runs) the marked model has learnt its list but not to stop after it;
     the length lever needs the full budget. Not adopted; the quick budget stays as it was.
  full (this file, 64 x 4 x 512, lr 5e-4, n=32, one seed): baseline saw 1,206 examples,
     markers 674 (120k / 117k tokens); marker-list loss 0.86 -> 0.07, no more repeated lists.
     Inference far above the majority class: domain 90.5% n=21 (+38.1 pts [+19.0, +57.1]),
     task 100% (+84.4), lang 96.9% (+25.0 [+9.4, +43.8]). Length: the length_tokens value is
     copied into the completion list every time and the answer lands near it (|relative
     error| 52.9% vs 108.9% asked in words, -56.0 pts [-119.5, -2.1] paired), but it
     overshoots by a few words as often as the baseline: violations 31.2% vs 34.4% asked in
     words (-3.1 pts [-15.6, +9.4]), so (a) as "fewer violations" is not shown. Response NLL
     higher than the baseline's everywhere, tails included (all +0.069 [+0.047, +0.099], lang
     tail +0.277 [-0.000, +0.605]): no tail gain at this budget, where the baseline sees 79%
     more examples for the same compute.
  full, seed 1 (2026-12-06, the same config with seeds=(1,); baseline 1,205 examples, markers
     629; marker-list loss 0.92 -> 0.07): inference identical to seed 0 (domain 90.5%, task
     100%, lang 96.9%, the same lower bounds). Violations 28.1% [12.5, 43.8] with
     length_tokens vs 40.6% [25.0, 59.4] asked in words (-12.5 pts [-34.4, +9.4] paired);
     seed 0 gave -3.1 [-15.6, +9.4]: the direction holds over both seeds, neither interval
     excludes 0 at n=32. Here the violations are mostly greedy repetition loops cut at
     max_new_tokens (6 of the marked model's 9, 11 of the baseline's 13), not near misses
     (1 each within max(3 words, 10%) of the limit), and loops on 2-7-word targets make the
     mean |relative error| useless (marker 329% vs 133%; medians 0.47 vs 0.85). NLL again
     higher everywhere (all +0.068 [+0.037, +0.104], lang tail +0.362 [+0.163, +0.604],
     domain tail +0.051 [-0.046, +0.151]); CodeFix pass@1 0.3 baseline vs 0.1. A pooled
     two-seed interval needs both seeds in one workdir (`seeds=(0, 1)`, ~130 min here).
  P1-P3 (2026-12-07): the seed-1 full checkpoints again, chat cells only, no retraining.
     P1 all 327 prose prompts of eval/length.jsonl (the 32 reported + 295): violations with
        length_tokens 39.4% [33.9, 44.6] vs baseline asked in words 36.4% [31.2, 41.3],
        paired +3.1 pts [-2.4, +8.6] n=327 (the 263 after line 64 alone: +3.4 [-3.0, +9.9];
        lines 33-64: +15.6 [-3.1, +34.4]). Seed 1's -12.5 on the 32 reported prompts was the
        luck of the slice: at this budget the marker does not lower violations. Cut at
        max_new_tokens: 72 marked, 81 baseline.
     P2 does the value steer the answer? The first 64 prompts with every limit set to 10, 40
        and 160 words: the marked model copies the value into its list 64/64 times at each,
        yet answers median 19.5 / 19.5 / 19.0 words, 40 of 64 answers identical across the
        three values (violations 57.8 / 20.3 / 0.0%). The baseline asked in words: median 8 /
        8 / 7 words, 29 identical (45.3 / 25.0 / 15.6%). Neither model conditions length on
        the request: in the demo data length follows the prompt (chatterbot replies are
        short, docstrings long), so the list's value tells the model nothing new.
     P3 presence/frequency penalties (`decode` keys, per task `tasks.chat.decode`), chosen on
        lines 33-64 only: frequency 0.5 ends every loop (cut at max tokens 8 / 6 -> 0 / 0)
        and lowers violations on both sides (baseline in words 34.4 -> 18.8%, length_tokens
        50.0 -> 37.5%), the gap unchanged (+15.6 -> +18.8 pts [+0.0, +37.5]); the quick
        checkpoints: 31.2 vs 84.4% -> 31.2 vs 87.5%. Not adopted: it changes nothing about
        the marker, and the paper decodes greedily.
  L (2026-12-07) the idea P2 left: `:lengthaug` gives 918 training examples (chatterbot 206,
     docstrings 494, Language Reference 218) cut-answer copies, so one prompt comes with
     several lengths (train 4,041, was 3,123; validation and the eval files byte-identical).
     Full budget, seed 1 (`seeds=(1,)`), both runs retrained: 91 min 29 s, 12.6 GiB, shared
     with a test run for ~25 min; baseline saw 1,250 examples, markers 702; marker-list loss
     0.83 -> 0.07. n=32: inference domain 95.2% (+42.9 [+23.8, +61.9]), task 100%, lang 90.6%
     (+18.8 [+0.0, +40.6]); violations length_tokens 28.1% vs baseline in words 37.5%, -9.4
     pts [-28.1, +9.4] (seed 1 without the copies: -12.5 [-34.4, +9.4]); NLL all +0.043
     [+0.019, +0.075] (was +0.068), lang tail +0.217 [-0.039, +0.579], domain tail +0.076
     [+0.042, +0.107]: (c) still not met. The P2 test on the new checkpoints (first 64
     prompts, every limit 10 / 40 / 160 words): the marked model copies the value 64/64 times
     at each and answers a median 16.0 / 8.5 / 18.0 words; 33 of 64 answers are identical
     across the three values (40 without the copies) and only 7 of 64 are longer at 160 than
     at 10 (violations 53.1 / 17.2 / 0.0%). The baseline asked in words: 12.5 / 10.5 / 10.0,
     26 identical, 18 longer (53.1 / 28.1 / 17.2%). So the copies do not teach the lever at
     702 marked examples: the answer still does not follow the value. Not adopted as the
     default (the variant stays for larger budgets). P1 at n=327 was started and stopped
     unfinished (the session's time), so no 327-prompt interval for L.
  B160 (2026-12-07) the budget L left: the `:lengthaug` data, seed 1, markers run only, 160 steps
     (2.5x full; `train.num_train_steps=160`, the rest as full): training 48 min 39 s idle, 1,678
     examples seen (702 at 64 steps), marker-list loss 0.38 -> 0.06 (means of the first / last
     fifth), response loss 2.45 -> 1.70. n=32, length_tokens fixed: inference domain 90.5%, task
     100%, lang 100% (L's 64 steps: 90.5, 100, 90.6%); violations 18.8% [6.2, 34.4] against the
     64-step baseline of L asked in words 37.5%: -18.8 pts [-37.5, +0.0] paired, the widest gap yet
     but not compute-matched (the baseline trained 64 steps). P2 (first 64 prompts, limits 10 / 40 /
     160): the value copied 64/64 times, answers a median 8.0 / 9.0 / 8.0 words, 39 of 64 identical
     across the three, 5 of 64 longer at 160 than at 10 (violations 45.3 / 10.9 / 0.0%). So the
     fewer violations come from answers shorter overall (median 11 words on the 32, 17.5 at 64
     steps), not from following the value: 2.5x the budget does not teach the length lever either.
     Not adopted (a 160-step pair would not fit the 90-minute full demo on 2 cores). On all 327
     prose prompts (P1's set, 15 min 21 s of decoding) B160 violates 34.3% [29.1, 39.4] n=327: no
     better than the seed-1 baseline asked in words on the same prompts in P1 (36.4% [31.2, 41.3],
     trained without the copies; unpaired), so the -18.8 on the 32 was the luck of the slice, as in
     P1.
  P1L (2026-12-07) the two 327-prompt figures B160 left, decoded from L's seed-1 checkpoints
     (one sweep per model, /tmp/exp/p1_L.py, not in the repo: 985 s markers, 1,468 s baseline
     while a test run shared the cores), paired by id in one report: L's marked model with
     length_tokens 33.0% [27.8, 38.2] vs L's baseline asked in words 35.5% [30.3, 40.7],
     -2.4 pts [-8.3, +3.4] n=327 (the 32 reported prompts gave -9.4); B160 against the same
     baseline -1.2 pts [-7.0, +4.6] n=327 (paired now; the baseline trained 64 steps, B160 160).
     Both models answer a median 7 words (B160 9); 82 of 327 answers of each L model cut at
     max_new_tokens, 67 of B160's. No interval excludes 0: at 327 prompts neither the copies
     nor 2.5x the steps lower violations measurably.
  S (2026-12-07) the `steer` variant (P2 as a report section) on L's seed-1 workdir:
     `treasure-jax demo --workdir W --config configs/demo.py:lengthaug,steer --config.seeds=(1,)`
     ran only the 3 new stages (training and the other cells were finished): 15 min 8 s, 2.8
     GiB peak RSS, while nothing else ran. The first 32 chat prompts at 10 / 40 / 160 words:
     median words baseline asked in words 12.5 / 12 / 12, marked model asked in words 11.5 /
     12.5 / 10.5, with length_tokens 17.5 / 13.5 / 19.5; longer at 160 than at 10: 15.6%,
     18.8%, 12.5% [3.1, 25.0]; log2 ratio 0.04 [-0.26, 0.39], 0.02, 0.01 [-0.20, 0.22] n=32
     against ~4.00 if the length tracked N; marker minus baseline -0.03 [-0.52, +0.42] paired.
     The same finding as P2, now in the report: neither model steers length by the request.
  E (2026-12-07) the `same_examples` variant: is the marked model's higher NLL (all runs above)
     only the compute-matched baseline's 79% more examples? Default data, seed 1, both runs
     retrained: `treasure-jax demo --workdir W --config configs/demo.py:same_examples
     --config.seeds=(1,)`, 76 min 18 s, 13.2 GiB peak RSS (training 1,240 + 1,175 s, a test run
     shared ~5 min of the first; evaluation 2,122 s). Every batch closed after 8 examples and
     both runs read one order: the baseline trained on 512 examples (55k tokens), the marked run
     on 500 (93k; 8 batches closed early at an example with no room), all among the baseline's.
     Response NLL, markers minus baseline, paired, n=96: all -0.007 [-0.019, +0.006] (seed 1
     compute-matched: +0.068 [+0.037, +0.104]); lang head / tail -0.007 [-0.019, +0.005] n=79 /
     +0.002 [-0.107, +0.102] n=17 (was +0.362 [+0.163, +0.604]); domain head / tail -0.009
     [-0.022, +0.004] / -0.008 [-0.042, +0.027] n=13. So the NLL deficit was the example count:
     on the same examples the marked model is level with the baseline everywhere, tails
     included, but no interval shows a gain, so (c) is still not met. With fewer examples
     than compute-matched (500 vs 629) the rest is weaker: inference domain 90.5% n=21, task
     81.2% (+65.6 pts), lang 81.2% (+9.4 [-12.5, +34.4]); violations with length_tokens 46.9%
     vs baseline asked in words 34.4%, +12.5 pts [-3.1, +28.1] n=32 (the baseline asked in
     words keeps its 34-41%, the marker's lever is not learned at 500 examples); CodeFix
     pass@1 0.2 vs 0.1 (n=10). Not adopted as the default: it answers the NLL question, and
     the compute-matched pair stays the headline (the one least favourable to the markers).
"""
import ml_collections

from treasure_jax.annotate import demo_data
from treasure_jax.model import convert

VARIANTS = ("quick", "lengthaug", "steer", "same_examples", "ablation", "ablation_pd0",
            "ablation_pd07")


def _task(**kw) -> ml_collections.ConfigDict:
  base = dict(kind="", data="", settings=("none",), limit=0, max_new_tokens=0,
              length_limits=(), nl_template="Answer in at most {n} words.", categories=(),
              judge=False)  # every_limit (default off) only where set: older stages stay valid.
  return ml_collections.ConfigDict({**base, **kw})


def _train(quick: bool) -> ml_collections.ConfigDict:
  """A `loop.train` config; the demo fills data paths (under its data dir) and the variant."""
  c = ml_collections.ConfigDict()
  c.num_train_steps = 10 if quick else 64
  c.seed = 0
  c.batch_size = 4
  c.grad_accum_steps = 1
  c.log_every_steps = 1
  c.eval_every_steps = 0  # The demo's evaluation is the sweep, after training.
  c.eval_batches = 0
  c.eval_batch_size = 0
  c.init_from = convert.smollm2_gguf_path()
  c.tokenizer = ""
  c.compilation_cache_dir = ""
  # The base model must match this section (the GGUF's float32 eps reads back as 1e-05).
  c.model = ml_collections.ConfigDict(dict(
      preset="smollm2_135m", vocab_size=49152,
      param_dtype="float32", dtype="float32", remat="none", scan_layers=True,
      attention_impl="xla"))
  c.data = ml_collections.ConfigDict(dict(
      task="", name="demo", train_files=("train.jsonl",), eval_files=("validation.jsonl",),
      taxonomy="taxonomy.json", template="chatml", variant="markers", p_dataset=0.5,
      p_sample=0.5, seq_len=512, pack=True, on_bad_record="skip", on_overflow="truncate",
      shuffle_buffer=10_000, long_tail_boost=1.0, long_tail_threshold=0.05, seed=0))
  c.optim = ml_collections.ConfigDict(dict(
      schedule="cosine", peak_lr=5e-4, final_lr=5e-5, warmup_steps=2 if quick else 6,
      weight_decay=0.01, b1=0.9, b2=0.95, eps=1e-8, clip_norm=1.0))
  c.mesh = ml_collections.ConfigDict(dict(shape=(1, -1, 1), rules="fsdp"))
  # keep=1: a step's state (weights + Adam moments) is ~1.6 GB in float32.
  c.checkpoint = ml_collections.ConfigDict(dict(
      every_steps=5 if quick else 32, keep=1, async_save=True))
  c.distributed = ml_collections.ConfigDict(dict(
      initialization_timeout_s=300, heartbeat_timeout_s=100, shutdown_timeout_s=300))
  return c


def _eval(quick: bool, ablation: bool, steer: bool) -> ml_collections.ConfigDict:
  """A `sweep.run` config; the demo fills checkpoints, baselines and data_dir."""
  c = ml_collections.ConfigDict()
  c.train_files = ("train.jsonl",)
  c.taxonomy = "taxonomy.json"
  c.long_tail_threshold = 0.05
  c.examples_per_cell = 3
  c.nll_batch_size = 8
  c.sharded = False
  c.mesh = ml_collections.ConfigDict(dict(shape=(1, -1, 1), rules="fsdp"))
  # One batch holds the quick chat set (12) or half the full one (32): decoding this model on
  # 2 cores reads the weights every step, so 12 rows cost little more than 4 (measured: the
  # quick markers chat cell 98 s at 4 rows, 61 s at 12, the same outputs).
  c.decode = ml_collections.ConfigDict(dict(
      batch_size=12 if quick else 16, max_new_tokens=160, sampler="greedy", temperature=1.0,
      top_k=0, top_p=1.0, seed=0, force_prefix=False, presence_penalty=0.0,
      frequency_penalty=0.0))
  # Paths are under the demo's data dir; eval/validation.jsonl holds the single-turn validation
  # examples in an order that covers the tasks and languages evenly, eval/length.jsonl the same
  # without the code tasks (`treasure_jax.demo.data`); a task takes its first N.
  # chat: a "none" cell of a marked model is its inferred mode (marker inference accuracy).
  tasks = dict(
      chat=_task(kind="length", data="eval/length.jsonl", limit=12 if quick else 32,
                 max_new_tokens=256,
                 settings=("none", "nl_instruction", "fixed:length_tokens")))
  if steer:
    tasks["steer"] = _task(kind="length", data="eval/length.jsonl", limit=12 if quick else 32,
                           max_new_tokens=256, length_limits=(10, 40, 160), every_limit=True,
                           settings=("nl_instruction", "fixed:length_tokens"))
  if not ablation:
    # quick leaves out the domain+lang-given likelihood setting: each setting is ~73 s of
    # forward passes here, and without it the quick demo fits its 15 minutes.
    tasks.update(
        likelihood=_task(kind="likelihood", data="eval/validation.jsonl",
                         limit=24 if quick else 96,
                         settings=("none", "inferred") + (() if quick else ("fixed:domain,lang",))),
        codegen=_task(kind="code", data="humaneval/humaneval_codegen.jsonl",
                      limit=3 if quick else 10, max_new_tokens=256,
                      settings=("none", "fixed:task")),
        codefix=_task(kind="code", data="humaneval/humaneval_codefix.jsonl",
                      limit=3 if quick else 10, max_new_tokens=256,
                      settings=("none", "fixed:task")))
  c.tasks = ml_collections.ConfigDict(tasks)
  c.judge = ml_collections.ConfigDict(dict(url="", model=""))  # No judge endpoint offline.
  c.reward = ml_collections.ConfigDict(dict(kind="none"))
  return c


def _runs(ablation: str) -> ml_collections.ConfigDict:
  """Training runs: name -> data variant and prompt-side dropout."""
  def run(variant, p_dataset):
    return dict(variant=variant, p_dataset=p_dataset, p_sample=0.5)
  if ablation == "ablation":
    runs = dict(markers_pd0=run("markers", 0.0), markers_pd05=run("markers", 0.5),
                markers_pd07=run("markers", 0.7))
  elif ablation == "ablation_pd0":
    runs = dict(markers_pd0=run("markers", 0.0))
  elif ablation == "ablation_pd07":
    runs = dict(markers_pd07=run("markers", 0.7))
  else:
    runs = dict(baseline=run("baseline", 0.5), markers=run("markers", 0.5))
  return ml_collections.ConfigDict(runs)


def get_config(variant: str | None = None) -> ml_collections.ConfigDict:
  names = [v.strip() for v in (variant or "").split(",") if v.strip()]
  unknown = [v for v in names if v not in VARIANTS]
  ablations = [v for v in names if v.startswith("ablation")]
  if unknown or len(ablations) > 1:
    raise ValueError(f"configs/demo.py: variant {variant!r}: use a comma-separated subset of "
                     f"{', '.join(VARIANTS)} with at most one ablation")
  quick = "quick" in names
  ablation = ablations[0] if ablations else ""
  c = ml_collections.ConfigDict()
  c.variant = ",".join(names)
  # demo_data.build arguments; corpus_dir "" = the installed chatterbot-corpus package.
  # humaneval_limit: problems built (all 164: the first 40 are evaluated, the rest trained on).
  # categories: what rides in the marker lists (the others are not annotated).
  c.build = ml_collections.ConfigDict(dict(
      seed=0, val_fraction=0.1, humaneval_limit=164, corpus_dir="",
      sources=demo_data.SOURCES, chatterbot_limit=demo_data.CHATTERBOT_LIMIT,
      categories=demo_data.CATEGORIES))
  if "lengthaug" in names:
    # Two cut-answer copies per eligible training example (`length_variants.make`). Set
    # only here: the default build section, and so every default stage digest, is unchanged.
    c.build.length_variants = 2
  c.eval_sample_seed = 0  # Order of the eval subsets (a hash of seed and id), never tuned.
  c.train = _train(quick)
  if "same_examples" in names:
    # Set only here, like length_variants: the default stage digests stay as they were.
    c.train.data.paired_order = True
    c.train.data.examples_per_batch = 8
  # Training seeds: every run once per seed (`demo.seeds`), the summary gives each seed's value
  # and their mean. One seed fits the full demo's 90 minutes on 2 cores; (0, 1) doubles it.
  c.seeds = (0,)
  c.runs = _runs(ablation)
  c.eval = _eval(quick, bool(ablation), "steer" in names)
  return c
