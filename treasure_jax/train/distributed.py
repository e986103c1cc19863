"""Multi-process start-up: `jax.distributed.initialize` from the config, environment or cluster.

Order of precedence: the `distributed` config section (coordinator_address, num_processes,
process_id), then the TREASURE_JAX_COORDINATOR_ADDRESS / _NUM_PROCESSES / _PROCESS_ID
environment variables (set by launch/local_multiprocess.sh), then JAX's own cluster detection on
TPU pods and SLURM. With none of these the run is single-process and nothing is initialized.
On CPU, cross-process collectives use gloo. Timeouts bound how long a process waits for a dead
peer: JAX's coordination service fails every process once a peer misses heartbeats for
`heartbeat_timeout_s`. Deliberately left to others: the mesh over the devices (`model.sharding`).
"""
from __future__ import annotations

import dataclasses
import logging
import os

import jax

_ENV = "TREASURE_JAX_"


@dataclasses.dataclass(frozen=True)
class DistributedConfig:
  """Empty/0/-1 values mean "not given here" (use the environment or auto-detection)."""
  coordinator_address: str = ""
  num_processes: int = 0
  process_id: int = -1
  initialization_timeout_s: int = 300
  heartbeat_timeout_s: int = 100
  shutdown_timeout_s: int = 300
  cpu_collectives: str = "gloo"

  def __post_init__(self):
    if self.cpu_collectives not in ("gloo", "mpi"):
      raise ValueError(f"distributed.cpu_collectives={self.cpu_collectives!r}: gloo or mpi")
    for name in ("initialization_timeout_s", "heartbeat_timeout_s", "shutdown_timeout_s"):
      if getattr(self, name) <= 0:
        raise ValueError(f"distributed.{name}={getattr(self, name)} must be > 0")


def _explicit(cfg: DistributedConfig) -> tuple[str, int, int]:
  address = cfg.coordinator_address or os.environ.get(_ENV + "COORDINATOR_ADDRESS", "")
  num = cfg.num_processes or int(os.environ.get(_ENV + "NUM_PROCESSES", "0"))
  pid = cfg.process_id if cfg.process_id >= 0 else int(os.environ.get(_ENV + "PROCESS_ID", "-1"))
  if address and (num <= 0 or pid < 0):
    raise ValueError(f"distributed: coordinator_address={address!r} needs num_processes (got "
                     f"{num}) and process_id (got {pid}), from the config or {_ENV}* variables")
  return address, num, pid


def _cluster_detected() -> bool:
  """Multi-host TPU pod or multi-task SLURM job: JAX's own detection knows the coordinator."""
  tpu_hosts = os.environ.get("TPU_WORKER_HOSTNAMES", "")
  slurm_tasks = int(os.environ.get("SLURM_NTASKS", "1") or 1)
  return "," in tpu_hosts or ("SLURM_JOB_ID" in os.environ and slurm_tasks > 1)


def initialize(cfg: DistributedConfig) -> str:
  """Joins the run's processes (if several) and returns a one-line description of this one."""
  address, num, pid = _explicit(cfg)
  if jax.distributed.is_initialized():
    mode = "already initialized"
  elif address or _cluster_detected():
    jax.config.update("jax_cpu_collectives_implementation", cfg.cpu_collectives)
    kwargs = dict(initialization_timeout=cfg.initialization_timeout_s,
                  heartbeat_timeout_seconds=cfg.heartbeat_timeout_s,
                  shutdown_timeout_seconds=cfg.shutdown_timeout_s)
    if address:
      jax.distributed.initialize(address, num, pid, **kwargs)
      mode = f"coordinator {address}"
    else:
      jax.distributed.initialize(**kwargs)
      mode = "cluster auto-detected"
  else:
    mode = "single process"
  line = (f"process {jax.process_index()}/{jax.process_count()} ({mode}): "
          f"{jax.local_device_count()} local of {jax.device_count()} devices "
          f"{[str(d) for d in jax.local_devices()]}")
  logging.info(line)
  return line
