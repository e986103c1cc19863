#!/usr/bin/env bash
# Multi-host GPU training for schedulers JAX does not detect: run this once on every host with
# the same COORDINATOR (host:port of process 0), the process count and this host's id.
#
#   launch/multihost_gpu.sh COORDINATOR NUM_PROCESSES PROCESS_ID CONFIG WORKDIR [--config.x=y ...]
#   e.g. (host 0) launch/multihost_gpu.sh 10.0.0.1:12345 2 0 configs/qwen2_7b.py:h100x8 /shared/runs/q7
#        (host 1) launch/multihost_gpu.sh 10.0.0.1:12345 2 1 configs/qwen2_7b.py:h100x8 /shared/runs/q7
set -euo pipefail
if [ $# -lt 5 ]; then sed -n '2,8p' "$0"; exit 2; fi
coordinator=$1 nproc=$2 pid=$3 config=$4 workdir=$5; shift 5
cmd=(treasure-jax train --config "$config" --workdir "$workdir"
     --coordinator "$coordinator" --num-processes "$nproc" --process-id "$pid" "$@")
echo "+ ${cmd[*]}" >&2
exec "${cmd[@]}"
