#!/usr/bin/env bash
# Runs COMMAND as N JAX processes on this machine with D CPU devices each, joined through a
# coordinator on localhost: multi-host training without a cluster (tests, demos).
#
#   launch/local_multiprocess.sh N D COMMAND [ARGS...]
#   launch/local_multiprocess.sh 2 4 treasure-jax train --config configs/tiny.py --workdir /tmp/mp
#
# Each process gets TREASURE_JAX_{COORDINATOR_ADDRESS,NUM_PROCESSES,PROCESS_ID}, which
# treasure_jax.train.distributed reads. SIGTERM/SIGINT are forwarded to every process (a
# preemption: they save a checkpoint and stop). The exit status is the first non-zero one.
set -euo pipefail

if [ "$#" -lt 3 ]; then
  echo "usage: $0 NUM_PROCESSES DEVICES_PER_PROCESS COMMAND [ARGS...]" >&2
  exit 2
fi
num="$1"
devices="$2"
shift 2
port="${TREASURE_JAX_PORT:-$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}"
read -ra inherited <<< "${XLA_FLAGS:-}"
flags="--xla_force_host_platform_device_count=${devices}"
for flag in "${inherited[@]}"; do
  case "${flag}" in
    --xla_force_host_platform_device_count=*) ;;
    *) flags="${flags} ${flag}" ;;
  esac
done

printf -v command '%q ' "$@"
pids=()
# shellcheck disable=SC2317  # Called by the traps.
forward() { kill -s "$1" "${pids[@]}" 2>/dev/null || true; }
trap 'forward TERM' TERM
trap 'forward INT' INT

for ((i = 0; i < num; i++)); do
  echo "+ JAX_PLATFORMS=cpu XLA_FLAGS='${flags}' TREASURE_JAX_COORDINATOR_ADDRESS=localhost:${port}" \
       "TREASURE_JAX_NUM_PROCESSES=${num} TREASURE_JAX_PROCESS_ID=${i} ${command}"
  JAX_PLATFORMS=cpu XLA_FLAGS="${flags}" \
    TREASURE_JAX_COORDINATOR_ADDRESS="localhost:${port}" \
    TREASURE_JAX_NUM_PROCESSES="${num}" TREASURE_JAX_PROCESS_ID="${i}" "$@" &
  pids+=("$!")
done

status=0
for pid in "${pids[@]}"; do
  # `wait` returns early when a trapped signal arrives: wait again until the process is gone.
  while true; do
    rc=0
    wait "${pid}" || rc=$?
    if ! kill -0 "${pid}" 2>/dev/null; then break; fi
  done
  if [ "${rc}" -ne 0 ] && [ "${status}" -eq 0 ]; then status="${rc}"; fi
done
exit "${status}"
