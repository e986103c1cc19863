"""Training with data.pipeline="grain": no TensorFlow in the process, an exact resume from the
iterator state the checkpoint keeps, with one and with two processes (configs/tiny.py)."""
import json
import os
import subprocess
import sys
import textwrap

import pytest

from treasure_jax import config_loader
from treasure_jax.train import checkpoint
from treasure_jax.train import inputs

import test_train_loop as tl  # Its helpers: metrics, copies of a workdir, the launcher.

GRAIN = {"data.pipeline": "grain"}
FAST = {**GRAIN, "eval_every_steps": 0}


def _train_in_subprocess(workdir, cache_dir, **overrides):
  """Trains configs/tiny.py in a fresh interpreter; returns the TF/seqio modules it loaded."""
  settings = {"num_train_steps": 4, "log_every_steps": 1, "eval_every_steps": 4,
              "eval_batches": 1, "checkpoint.every_steps": 2, "checkpoint.keep": 3,
              "compilation_cache_dir": cache_dir, **overrides}
  flags = [f"--config.{k}={v}" for k, v in settings.items()]
  script = textwrap.dedent(f"""
      import json, sys
      from treasure_jax import config_loader
      from treasure_jax.train import loop
      loop.train(config_loader.load({tl.TINY!r}, {flags!r}), {workdir!r}, progress=False)
      print(json.dumps(sorted(m for m in ("tensorflow", "seqio") if m in sys.modules)))
  """)
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env,
                       timeout=900, check=False)
  assert out.returncode == 0, out.stderr[-4000:]
  return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("jax_cache"))


@pytest.fixture(scope="module")
def grain_reference(cache_dir, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("grain_reference"))
  loaded = _train_in_subprocess(workdir, cache_dir, **GRAIN)
  return workdir, loaded


def test_a_grain_run_trains_evaluates_and_never_imports_tensorflow(grain_reference):
  workdir, loaded = grain_reference
  assert loaded == []
  records = tl.metrics(workdir)
  assert sorted(records) == [1, 2, 3, 4]
  assert records[4]["loss"] < records[1]["loss"]
  assert records[4]["eval/loss"] > 0 and records[4]["data/train/records"] > 0
  steps = sorted(int(s) for s in os.listdir(os.path.join(workdir, "checkpoints")) if s.isdigit())
  assert steps == [2, 4]


def test_a_grain_run_resumes_exactly_from_its_checkpoint(grain_reference, cache_dir, tmp_path):
  resumed = str(tmp_path / "resumed")
  tl._copy_with_steps(grain_reference[0], resumed, steps=(2,))
  _train_in_subprocess(resumed, cache_dir, **GRAIN)
  tl._assert_same_steps(resumed, grain_reference[0], (3, 4))


def test_two_processes_reading_their_own_grain_shards_resume_exactly(cache_dir, tmp_path):
  workdir = str(tmp_path / "mp_grain")
  result = tl._launch(workdir, cache_dir, data_loading="sharded", **FAST)
  assert "process 1/2" in result.stderr
  saved = checkpoint.read_json_item(os.path.join(workdir, "checkpoints", "2"), "data")
  processes = saved["processes"]
  assert [p["pipeline"] for p in processes] == ["grain", "grain"]
  assert [p["fingerprint"]["shard"] for p in processes] == [[0, 2], [1, 2]]
  resumed = str(tmp_path / "mp_grain_resumed")
  tl._copy_with_steps(workdir, resumed, steps=(2,))
  tl._launch(resumed, cache_dir, data_loading="sharded", **FAST)
  tl._assert_same_steps(resumed, workdir, (3, 4))


def test_grain_with_a_sentencepiece_tokenizer_is_refused_by_name(cache_dir, tmp_path):
  model = tmp_path / "spm.model"
  model.write_bytes(b"")
  run = config_loader.resolve(tl.tiny_config(cache_dir, tokenizer=str(model), **GRAIN))
  with pytest.raises(ValueError, match=r"spm\.model is SentencePiece: use data.pipeline='seqio'"):
    inputs.make_data(run)
