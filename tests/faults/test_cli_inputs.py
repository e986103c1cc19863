"""Bad input to every CLI subcommand: one clear line naming the file, line, field or key, exit
status 2, no Python traceback (unless --debug); and input that is unusual but valid (a BOM, CRLF
line endings, a 50 MB line) is read, not rejected.

Each case runs `python -m treasure_jax.cli ...` in a fresh process, as a user would; the cases
that load a model (~15-60 s each) beyond one checkpoint check are `slow`. The table of cases
with their outcomes before and after this campaign is in the README ("Reliability").
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = os.path.join(ROOT, "configs", "tiny.py")
GOOD = {"id": "a", "prompt": "Hello there", "response": "Hi! How are you?"}


def cli(*args: str, cwd: str | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "TREASURE_JAX_MALLOC": "system"}
  return subprocess.run([sys.executable, "-m", "treasure_jax.cli", *args], capture_output=True,
                        text=True, cwd=cwd or ROOT, env=env, timeout=timeout, check=False)


def assert_user_error(result: subprocess.CompletedProcess, *expected: str) -> None:
  """Exit 2, no traceback, every `expected` piece in the one error line."""
  assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
  assert "Traceback" not in result.stderr, result.stderr[-2000:]
  errors = [line for line in result.stderr.splitlines() if ": error: " in line]
  assert len(errors) == 1, result.stderr[-2000:]
  for piece in expected:
    assert piece in errors[0], (piece, errors[0])


@pytest.fixture(scope="module")
def files(tmp_path_factory):
  d = tmp_path_factory.mktemp("inputs")
  good = json.dumps(GOOD)
  (d / "empty.jsonl").write_text("")
  (d / "bom.jsonl").write_bytes(b"\xef\xbb\xbf" + good.encode() + b"\n")
  (d / "crlf.jsonl").write_bytes(f"{good}\r\n{json.dumps({**GOOD, 'id': 'b'})}\r\n".encode())
  (d / "badutf8.jsonl").write_bytes(
      good.encode() + b'\n{"id": "c", "prompt": "\xff\xfe", "response": "x"}\n')
  (d / "malformed.jsonl").write_text(good + "\n{not json\n")
  (d / "messages_type.jsonl").write_text(good + "\n" + json.dumps({"id": "d", "messages": "hi"})
                                         + "\n")
  (d / "markers_type.jsonl").write_text(good + "\n" + json.dumps({**GOOD, "markers": ["x"]})
                                        + "\n")
  big = {"id": "big", "prompt": "Summarize: " + "word " * 10_000_000, "response": "ok"}
  (d / "big.jsonl").write_text(good + "\n" + json.dumps(big) + "\n")  # A 50 MB line.
  for name, categories in {
      "tax_kind": [{"name": "lang", "kind": "weird", "values": ["English"]}],
      "tax_dup": [{"name": "lang", "kind": "enum", "values": ["English"]},
                  {"name": "lang", "kind": "enum", "values": ["French"]}],
      "tax_unspecified": [{"name": "lang", "kind": "enum", "values": ["English", "Unspecified"]}],
  }.items():
    (d / f"{name}.json").write_text(json.dumps({"categories": categories}))
  return d


# (case, the file, what the error line names) for annotate, markers stats and data convert.
BAD_JSONL = [
    ("empty", "empty.jsonl", ["empty.jsonl", "the file is empty"]),
    ("invalid_utf8", "badutf8.jsonl", ["badutf8.jsonl:2", "invalid UTF-8"]),
    ("malformed", "malformed.jsonl", ["malformed.jsonl:2", "invalid JSON"]),
]
FIELD_TYPES = {  # Per command: the file and what the error line names.
    "annotate": ("messages_type.jsonl", ["messages_type.jsonl:2", "messages"]),
    "stats": ("markers_type.jsonl", ["markers_type.jsonl:2", "'markers' must be an object"]),
    "convert": ("messages_type.jsonl", ["messages_type.jsonl:2", "messages"]),
}


def _command(name: str, path: str, out_dir) -> list[str]:
  return {"annotate": ["annotate", path, str(out_dir / "out.jsonl"), "--no-progress"],
          "stats": ["markers", "stats", path],
          "convert": ["data", "convert", path, str(out_dir / "out.parquet")]}[name]


@pytest.mark.parametrize("command", ["annotate", "stats", "convert"])
@pytest.mark.parametrize("case,name,expected", BAD_JSONL, ids=[c[0] for c in BAD_JSONL])
def test_bad_jsonl_is_one_line_naming_file_and_line(files, tmp_path, command, case, name,
                                                    expected):
  del case
  assert_user_error(cli(*_command(command, str(files / name), tmp_path)), *expected)


@pytest.mark.parametrize("command", ["annotate", "stats", "convert"])
def test_wrong_field_types_are_named(files, tmp_path, command):
  name, expected = FIELD_TYPES[command]
  assert_user_error(cli(*_command(command, str(files / name), tmp_path)), *expected)


@pytest.mark.parametrize("command", ["annotate", "stats", "convert"])
@pytest.mark.parametrize("name", ["bom.jsonl", "crlf.jsonl"])
def test_bom_and_crlf_files_are_read(files, tmp_path, command, name):
  result = cli(*_command(command, str(files / name), tmp_path))
  assert result.returncode == 0, result.stderr[-2000:]
  if command == "annotate":
    with open(tmp_path / "out.jsonl", encoding="utf-8") as f:
      written = [json.loads(line) for line in f]
    assert [r["id"] for r in written] == (["a"] if name == "bom.jsonl" else ["a", "b"])
    for r in written:  # No BOM, no "\r" kept.
      assert (r["prompt"], r["response"]) == (GOOD["prompt"], GOOD["response"])


def test_a_50_mb_line_is_annotated_not_dropped(files, tmp_path):
  out = tmp_path / "out.jsonl"
  result = cli("annotate", str(files / "big.jsonl"), str(out), "--no-progress")
  assert result.returncode == 0, result.stderr[-2000:]
  with open(out, encoding="utf-8") as f:
    ids = [json.loads(line)["id"] for line in f]
  assert ids == ["a", "big"]


@pytest.mark.parametrize("name,expected", [
    ("tax_kind.json", ["tax_kind.json", "kind 'weird'"]),
    ("tax_dup.json", ["tax_dup.json", "duplicate categories ['lang']"]),
    ("tax_unspecified.json", ["tax_unspecified.json", "'Unspecified'"]),
])
def test_bad_taxonomy_files_are_named(files, name, expected):
  assert_user_error(cli("markers", "taxonomy", "--taxonomy", str(files / name)), *expected)


@pytest.mark.parametrize("args,expected", [
    (["--config.num_trian_steps=3"], ["num_trian_steps", "did you mean 'num_train_steps'"]),
    (["--config.num_train_steps=abc"], ["--config.num_train_steps=abc", "expected an int"]),
], ids=["misspelt_key", "wrong_type"])
def test_bad_config_overrides_are_named(tmp_path, args, expected):
  assert_user_error(cli("train", "--config", TINY, "--workdir", str(tmp_path), *args), *expected)


def test_unknown_variant_and_missing_config_are_named(tmp_path):
  assert_user_error(cli("train", "--config", f"{TINY}:nope", "--workdir", str(tmp_path)),
                    "unknown variant 'nope'")
  assert_user_error(cli("train", "--config", "configs/nothere.py", "--workdir", str(tmp_path)),
                    "configs/nothere.py", "not found")


def test_debug_shows_the_traceback(tmp_path):
  result = cli("--debug", "train", "--config", f"{TINY}:nope", "--workdir", str(tmp_path))
  assert result.returncode != 0 and "Traceback" in result.stderr


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
  """A 3-step tiny run with one checkpoint."""
  workdir = tmp_path_factory.mktemp("faults_run") / "run"
  result = cli("train", "--config", TINY, "--workdir", str(workdir), "--no-progress",
               "--config.num_train_steps=3", "--config.checkpoint.every_steps=3",
               "--config.eval_every_steps=0")
  assert result.returncode == 0, result.stderr[-3000:]
  return workdir


@pytest.mark.parametrize("command", ["generate", pytest.param("export", marks=pytest.mark.slow)])
def test_missing_empty_and_truncated_checkpoints_are_named(run_dir, tmp_path, command):
  empty = tmp_path / "empty"
  empty.mkdir()
  truncated = tmp_path / "truncated"
  shutil.copytree(run_dir, truncated)
  os.remove(truncated / "checkpoints" / "3" / "params" / "_METADATA")
  tail = {"generate": ["--prompt", "hi", "--max-new-tokens", "2"],
          "export": ["--to", str(tmp_path / "exported")]}[command]
  for path, expected in ((tmp_path / "missing", ["missing", "neither a training checkpoint"]),
                         (empty, ["empty", "neither a training checkpoint"]),
                         (truncated, ["truncated/checkpoints/3", "incomplete or corrupt"])):
    assert_user_error(cli(command, "--checkpoint", str(path), *tail), *expected)


@pytest.mark.slow
def test_generate_markers_outside_the_taxonomy_and_too_long_prompts(run_dir, tmp_path):
  base = ["generate", "--checkpoint", str(run_dir), "--max-new-tokens", "2"]
  assert_user_error(cli(*base, "--prompt", "hi", "--marker", "lang=Klingon"),
                    "'Klingon' is not allowed", "allowed: English")
  assert_user_error(cli(*base, "--prompt", "hi", "--marker", "colour=red"),
                    "unknown marker category 'colour'")
  long = tmp_path / "long.jsonl"
  long.write_text(json.dumps({"prompt": "short"}) + "\n"
                  + json.dumps({"prompt": "word " * 5000}) + "\n")
  assert_user_error(cli(*base, "--input", str(long)), f"{long}:2", "exceeds the model's context")


@pytest.mark.slow
def test_resuming_a_workdir_of_another_model_is_refused(run_dir):
  result = cli("train", "--config", TINY, "--workdir", str(run_dir), "--no-progress",
               "--config.num_train_steps=6", "--config.model.embed_dim=128",
               "--config.eval_every_steps=0")
  assert_user_error(result, "checkpoints/3 params do not match the model",
                    "expected (49152, 128), found (49152, 64)")
