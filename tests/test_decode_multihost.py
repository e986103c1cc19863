"""KV-cache generation with several JAX processes: 2 processes x 2 CPU devices, joined by
`launch/local_multiprocess.sh`, decode on one 4-device mesh and every process reads the whole
batch; the tokens equal those of one process on a mesh of the same shape."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import jax
import numpy as np

from treasure_jax.decode import generate
from treasure_jax.decode import stops
from treasure_jax.model import config
from treasure_jax.model import sharding
from treasure_jax.model import transformer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROMPTS = [[5, 9, 200, 31, 7], [44, 3], [17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27]]
MESH = sharding.MeshConfig((1, 4, 1))

# Each process joins the others, decodes, and writes what it read back (process 0 only).
MP_SCRIPT = """
import json, sys
sys.path.insert(0, sys.argv[1])
import jax
from treasure_jax.model import sharding
from treasure_jax.train import distributed
import test_decode_multihost as t
distributed.initialize(distributed.DistributedConfig(initialization_timeout_s=120,
                                                     heartbeat_timeout_s=20))
assert jax.process_count() == 2 and jax.device_count() == 4, jax.devices()
out = t.generations(sharding.make_mesh(t.MESH))
if jax.process_index() == 0:
  with open(sys.argv[2], "w") as f:
    json.dump(out, f)
"""


def generations(mesh: jax.sharding.Mesh) -> dict[str, Any]:
  """Greedy decoding of PROMPTS (lengths 5, 2, 11) on `mesh`: plain, then with an EOS token and
  a stop string taken from the plain run, so both fire; JSON-ready host results."""
  model = transformer.create(config.preset("tiny", dtype="float32"), seed=0, mesh=mesh)
  plain = generate.generate(model, PROMPTS, max_new_tokens=6)
  # Token t spells "<t>", so a stop string can name any token.
  token_bytes = [f"<{t}>".encode() for t in range(model.cfg.vocab_size)]
  stop_tables = stops.build([f"<{plain.tokens[2][1]}>"], token_bytes, model.cfg.vocab_size)
  stopped = generate.generate(model, PROMPTS, max_new_tokens=6,
                              eos_ids=[plain.tokens[1][1]], stop_tables=stop_tables)
  return {name: {"tokens": g.tokens, "logprobs": [lp.tolist() for lp in g.logprobs],
                 "stop_reasons": g.stop_reasons}
          for name, g in (("plain", plain), ("stopped", stopped))}


def test_two_processes_generate_like_one(tmp_path):
  path = str(tmp_path / "tokens.json")
  command = [os.path.join(ROOT, "launch", "local_multiprocess.sh"), "2", "2", sys.executable,
             "-c", MP_SCRIPT, os.path.join(ROOT, "tests"), path]
  result = subprocess.run(command, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
  with open(path, encoding="utf-8") as f:
    got = json.load(f)
  want = generations(sharding.make_mesh(MESH, jax.devices()[:4]))
  assert set(want["stopped"]["stop_reasons"]) == {"max_tokens", "eos", "stop_string"}
  for name in want:
    assert got[name]["tokens"] == want[name]["tokens"], name
    assert got[name]["stop_reasons"] == want[name]["stop_reasons"], name
    for lp_got, lp_want in zip(got[name]["logprobs"], want[name]["logprobs"]):
      # gloo and in-process collectives may sum the fsdp shards in another order.
      np.testing.assert_allclose(lp_got, lp_want, rtol=1e-5, atol=1e-5)
