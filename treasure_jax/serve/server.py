"""Starting the server: `run` (the `treasure-jax serve` command, blocking) and `Background`
(a uvicorn server in a thread, for tests and benchmarks). Both load nothing themselves beyond
`runner.load`, the loader `generate` uses (a training workdir/checkpoint or an HF directory).
"""
from __future__ import annotations

import os
import threading
import time

import uvicorn

from treasure_jax.decode import runner
from treasure_jax.serve import app as app_lib
from treasure_jax.serve import batcher as batcher_lib
from treasure_jax.serve import protocol


def run(checkpoint: str, *, host: str = "127.0.0.1", port: int = 8000,
        model_name: str | None = None, batch: batcher_lib.Config = batcher_lib.Config(),
        limits: protocol.Limits = protocol.Limits(), chat_template: str | None = None,
        taxonomy_path: str | None = None, dtype: str | None = None) -> None:
  """Loads `checkpoint` and serves it until interrupted."""
  if limits.max_n > batch.max_batch:
    raise ValueError(f"serve: max n {limits.max_n} exceeds max_batch {batch.max_batch}")
  decoder = runner.load(checkpoint, chat_template=chat_template, taxonomy_path=taxonomy_path,
                        dtype=dtype)
  name = model_name or os.path.basename(os.path.normpath(checkpoint))
  batcher = batcher_lib.Batcher(decoder, batch).start()
  try:
    uvicorn.run(app_lib.build(decoder, batcher, model_name=name, limits=limits), host=host,
                port=port, log_level="info")
  finally:
    batcher.close()


class Background:
  """`with Background(decoder) as s:` serves `decoder` on 127.0.0.1 at `s.url` (".../v1")."""

  def __init__(self, decoder: runner.Decoder, *, model_name: str = "tiny",
               batch: batcher_lib.Config = batcher_lib.Config(),
               limits: protocol.Limits = protocol.Limits(), port: int = 0):
    self.batcher = batcher_lib.Batcher(decoder, batch)
    asgi = app_lib.build(decoder, self.batcher, model_name=model_name, limits=limits)
    self._server = uvicorn.Server(uvicorn.Config(asgi, host="127.0.0.1", port=port,
                                                 log_level="warning", lifespan="off"))
    self._thread = threading.Thread(target=self._server.run, name="serve-uvicorn", daemon=True)
    self.url = ""

  def __enter__(self) -> Background:
    self.batcher.start()
    self._thread.start()
    deadline = time.monotonic() + 30
    while not self._server.started:
      if not self._thread.is_alive() or time.monotonic() > deadline:
        raise RuntimeError("serve: the server did not start")
      time.sleep(0.01)
    port = self._server.servers[0].sockets[0].getsockname()[1]
    self.url = f"http://127.0.0.1:{port}/v1"
    return self

  def __exit__(self, *exc) -> None:
    self._server.should_exit = True
    self._thread.join(timeout=30)
    self.batcher.close()
