"""The training loop: `train(config, workdir)` fine-tunes a model on a seqio task or mixture,
or on files through Grain (`data.pipeline`, `inputs`).

Set-up (devices, mesh, data, model, optimizer, restore-or-init) happens once; then a visible
`for step in ...` loop runs the jitted step and does, at explicit intervals, logging,
validation and checkpointing. Step numbers count finished updates: the record `step: 1` holds
the metrics of the first update, and checkpoint 10 the state after ten.
Deliberately left to others: flags (cli.py), config parsing (`config_loader`), the step math
(`step`), the checkpoint format (`checkpoint`), the data pipeline (`data`).
"""
from __future__ import annotations

import functools
import logging
import math
import os
import time
from typing import Any

import jax
import ml_collections
import numpy as np
from jax.experimental.compilation_cache import compilation_cache
from jax.sharding import NamedSharding, PartitionSpec

from treasure_jax import config_loader
from treasure_jax.model import sharding
from treasure_jax.train import checkpoint
from treasure_jax.train import distributed
from treasure_jax.train import inputs
from treasure_jax.train import logging_lib
from treasure_jax.train import mfu
from treasure_jax.train import optim
from treasure_jax.train import preemption
from treasure_jax.train import setup as setup_lib
from treasure_jax.train import state as state_lib
from treasure_jax.train import step as step_lib
from treasure_jax.train import validation
from treasure_jax.train import workdir_lock


class NonFiniteLossError(FloatingPointError):
  """The loss or gradient norm became NaN/Inf; the run stopped without saving that state."""


def train(config: ml_collections.ConfigDict, workdir: str, *,
          progress: bool = True) -> dict[str, Any]:
  """Trains as `config` says, in `workdir`, resuming from its latest checkpoint if any.
  `progress=False` hides the console step bar (metrics are logged all the same).

  Returns the last logged metrics (with the latest validation metrics, "eval/...") and "step",
  the number of finished steps (less than num_train_steps after a SIGTERM).
  """
  run = config_loader.resolve(config)
  if run.compilation_cache_dir:
    compilation_cache.set_cache_dir(run.compilation_cache_dir)
    compilation_cache.reset_cache()  # Takes effect even after earlier compilations.
  logging.info("%s", distributed.initialize(run.distributed))
  mesh = sharding.make_mesh(run.mesh)
  setup_lib.check_mesh(run, mesh)
  os.makedirs(workdir, exist_ok=True)
  with workdir_lock.hold(workdir):
    data = inputs.make_data(run)
    setup_lib.write_outputs(config, run, data, workdir)
    model = setup_lib.make_model(run, mesh)
    manager = checkpoint.make_manager(workdir, run.checkpoint)
    try:
      train_state = setup_lib.restore_or_init(run, model, manager, data)
      save = functools.partial(setup_lib.save, manager=manager, config=config, run=run,
                               data=data)
      return _loop(run, model, data, manager, save, train_state, workdir, progress)
    finally:
      try:
        checkpoint.wait(manager, close=True)
      finally:
        data.train.close()


def _compile_steps(run: config_loader.RunConfig, model: setup_lib.Model) -> tuple[Any, Any]:
  replicated = NamedSharding(model.plan.mesh, PartitionSpec())
  batch = sharding.batch_sharding(model.plan.mesh)
  train_fn = jax.jit(
      functools.partial(step_lib.train_step, graphdef=model.graphdef, optimizer=model.optimizer,
                        lr_schedule=optim.schedule(run.optim, run.num_train_steps),
                        accum_steps=run.grad_accum_steps, plan=model.plan),
      in_shardings=(model.shardings, batch), out_shardings=(model.shardings, replicated),
      donate_argnums=0)
  eval_fn = jax.jit(
      functools.partial(step_lib.eval_step, graphdef=model.graphdef,
                        passthrough=(validation.CODES_KEY,)),
      in_shardings=(state_lib.model_params(model.shardings), batch), out_shardings=replicated)
  return train_fn, eval_fn


def _flops_report(run: config_loader.RunConfig, logger: logging_lib.RunLogger
                  ) -> tuple[mfu.FlopCount, float]:
  flops = mfu.flops_per_token(run.model, run.data.seq_len)
  peak, source = mfu.peak_flops(run.model.dtype)
  total = mfu.total_peak(peak)
  text = (f"MFU: FLOPs per token {flops.formula}; peak {source}; run peak "
          f"{total / 1e12:.3f} TFLOP/s")
  logging.info("%s", text)
  logger.text("mfu", text)
  return flops, total


def _loop(run: config_loader.RunConfig, model: setup_lib.Model, data: inputs.Data,
          manager: Any, save: Any, train_state: Any, workdir: str,
          progress: bool) -> dict[str, Any]:
  start, total = int(jax.device_get(train_state.step)), run.num_train_steps
  if start >= total:
    logging.info("checkpoint step %d >= num_train_steps=%d: nothing to train", start, total)
    return {"step": start}
  logger = logging_lib.RunLogger(workdir, total_steps=total, start_step=start, progress=progress)
  flops, peak = _flops_report(run, logger)
  train_fn, eval_fn = _compile_steps(run, model)
  last, done, window = {}, start, _Window()
  try:
    with preemption.Notice() as notice:
      fetch = functools.partial(inputs.next_batch, data, model.plan.mesh, run.data_loading)
      batch, data_state = fetch()
      for step in range(start, total):
        train_state, metrics = train_fn(train_state, batch)
        step_data_state = data_state  # Position after this step's batch: saved with its state.
        if step + 1 < total:  # Host-side data work overlaps the device's step.
          batch, data_state = fetch()
        done = step + 1
        m = {k: float(v) for k, v in jax.device_get(metrics).items()}
        window.add(m["tokens"], first=step == start)
        _check_finite(done, m, manager, logger)
        record = {}
        if done % run.log_every_steps == 0 or done == total:
          record.update(m, **window.rates(flops, peak))
        if run.eval_every_steps and done % run.eval_every_steps == 0:
          record.update(m, **_evaluate(run, eval_fn, train_state, data, model))
          window.pause()
        if record:
          record.update(_data_counts(data.train))
          logger.write(done, record)
          last.update(record)  # Keeps the latest "eval/..." values between validations.
        logger.progress(done, {**m, **window.rates(flops, peak)})
        stop = notice.requested(done)
        if stop or done == total or (run.checkpoint.every_steps
                                     and done % run.checkpoint.every_steps == 0):
          save(train_state, step_data_state, force=stop or done == total)
          window.pause()
        if stop:
          logging.warning("stopped by SIGTERM after step %d; checkpoint saved", done)
          break
  finally:
    logger.close()
    _report_data_counts(data.train)
  return {**last, "step": done}


def _data_counts(iterator: Any) -> dict[str, float]:
  """This process's records read, skipped (by reason) and truncated so far, summed over tasks:
  {"data/records": n, "data/skipped/overflow": n, "data/truncated": n}."""
  out: dict[str, float] = {}
  for counts in iterator.stats().values():
    for key, n in counts.items():
      out[f"data/{key}"] = out.get(f"data/{key}", 0) + float(n)
  return out


def _report_data_counts(iterator: Any) -> None:
  """Says what the data pipeline dropped or cut, never silently (a warning when it did)."""
  counts = _data_counts(iterator)
  lost = {k: int(v) for k, v in counts.items() if ("skipped" in k or "truncated" in k) and v}
  read = int(sum(v for k, v in counts.items() if k.endswith("/records")))
  if lost:
    logging.warning("data (process %d): %d records read; %s", jax.process_index(), read,
                    ", ".join(f"{k.removeprefix('data/')}={v}" for k, v in sorted(lost.items())))
  else:
    logging.info("data (process %d): %d records read, none skipped or truncated",
                 jax.process_index(), read)


class _Window:
  """Tokens and wall time since the last log, leaving out the first (compiling) step."""

  def __init__(self):
    self.tokens, self.steps, self.start = 0.0, 0, time.perf_counter()

  def add(self, tokens: float, first: bool) -> None:
    if first:
      self.pause()
      return
    self.tokens += tokens
    self.steps += 1

  def pause(self) -> None:
    """Restart the clock (after compiling, validation or a save) keeping nothing counted."""
    self.tokens, self.steps, self.start = 0.0, 0, time.perf_counter()

  def rates(self, flops: mfu.FlopCount, peak: float) -> dict[str, float]:
    if not self.steps:
      return {}
    seconds = time.perf_counter() - self.start
    tokens_per_s = self.tokens / seconds
    return {"tokens_per_s": tokens_per_s, "step_time_s": seconds / self.steps,
            "mfu": mfu.mfu(tokens_per_s, flops, peak)}


def _check_finite(done: int, m: dict[str, float], manager: Any,
                  logger: logging_lib.RunLogger) -> None:
  if math.isfinite(m["loss"]) and math.isfinite(m["grad_norm"]):
    return
  logger.write(done, m)
  checkpoint.wait(manager)
  latest = manager.latest_step()
  kept = (f"the last good checkpoint is step {latest} in {manager.directory}" if latest is not None
          else "no checkpoint was saved before it")
  raise NonFiniteLossError(f"step {done}: the loss or the gradient norm is not finite (loss="
                           f"{m['loss']}, grad_norm={m['grad_norm']}); stopping without saving "
                           f"this state ({kept}). Lower optim.peak_lr or check the data.")


def _evaluate(run: config_loader.RunConfig, eval_fn: Any, train_state: Any,
              data: inputs.Data, model: setup_lib.Model) -> dict[str, float]:
  batches = inputs.eval_batches(run, data, model.plan.mesh)
  result = validation.evaluate(eval_fn, state_lib.model_params(train_state), batches,
                               data.codebook, data.table, max_batches=run.eval_batches)
  return {f"eval/{k}": float(np.float32(v)) for k, v in result.items()}
