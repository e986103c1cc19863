#!/usr/bin/env bash
# Train on a Cloud TPU VM pod slice: create (or reuse) it, install the package on every worker,
# run the same `treasure-jax train` on all workers (JAX auto-detects the pod), stream the logs.
#
#   launch/tpu_vm_pod.sh NAME ZONE ACCELERATOR CONFIG WORKDIR [--delete] [-- --config.x=y ...]
#   e.g. launch/tpu_vm_pod.sh tj-v5p europe-west4-b v5p-64 configs/llama3_8b.py:v5p_64 gs://bucket/run1
#
# WORKDIR must be a gs:// path every worker can write (orbax checkpoints are written jointly).
# Env: TPU_RUNTIME (default v2-alpha-tpuv5), PROJECT (default: gcloud's), PIP_SPEC (default: the
# local checkout, copied with scp).
set -euo pipefail
if [ $# -lt 5 ]; then sed -n '2,12p' "$0"; exit 2; fi
name=$1 zone=$2 accel=$3 config=$4 workdir=$5; shift 5
delete=0
if [ "${1:-}" = "--delete" ]; then delete=1; shift; fi
if [ "${1:-}" = "--" ]; then shift; fi
runtime=${TPU_RUNTIME:-v2-alpha-tpuv5}
project_flag=()
if [ -n "${PROJECT:-}" ]; then project_flag=(--project "$PROJECT"); fi

run() { echo "+ $*" >&2; "$@"; }

if ! gcloud compute tpus tpu-vm describe "$name" --zone "$zone" "${project_flag[@]}" >/dev/null 2>&1; then
  run gcloud compute tpus tpu-vm create "$name" --zone "$zone" "${project_flag[@]}" \
    --accelerator-type "$accel" --version "$runtime"
fi
ssh_all() { run gcloud compute tpus tpu-vm ssh "$name" --zone "$zone" "${project_flag[@]}" --worker=all --command "$1"; }

if [ -z "${PIP_SPEC:-}" ]; then
  src=$(cd "$(dirname "$0")/.." && pwd)
  tarball=$(mktemp --suffix=.tar.gz)
  tar -C "$src" --exclude=.venv --exclude=.git -czf "$tarball" .
  run gcloud compute tpus tpu-vm scp "$tarball" "$name:treasure_jax.tar.gz" --zone "$zone" "${project_flag[@]}" --worker=all
  ssh_all "mkdir -p treasure_jax && tar -xzf treasure_jax.tar.gz -C treasure_jax"
  PIP_SPEC="./treasure_jax"
fi
ssh_all "python3 -m pip install -q 'jax[tpu]' && python3 -m pip install -q '$PIP_SPEC'"
train_args=(--config "$config" --workdir "$workdir" "$@")
ssh_all "cd treasure_jax 2>/dev/null || true; python3 -m treasure_jax.cli train ${train_args[*]} 2>&1 | sed \"s/^/[\$(hostname)] /\""
if [ "$delete" = 1 ]; then
  run gcloud compute tpus tpu-vm delete "$name" --zone "$zone" "${project_flag[@]}" --quiet
fi
