#!/usr/bin/env bash
# Multi-node GPU training under SLURM: one process per node, all local GPUs per process.
# JAX's jax.distributed.initialize() detects SLURM (coordinator = first node of the job).
#
#   sbatch --nodes=2 --gpus-per-node=8 --ntasks-per-node=1 launch/slurm_gpu.sh CONFIG WORKDIR [--config.x=y ...]
#   e.g. sbatch --nodes=2 --gpus-per-node=8 --ntasks-per-node=1 launch/slurm_gpu.sh configs/llama3_8b.py:h100x8 /shared/runs/l8b
#
# WORKDIR must be on a file system every node sees. Env: VENV (default .venv in the checkout).
#SBATCH --job-name=treasure-jax
#SBATCH --exclusive
#SBATCH --output=%x-%j.out
set -euo pipefail
if [ $# -lt 2 ]; then sed -n '2,9p' "$0"; exit 2; fi
config=$1 workdir=$2; shift 2
# shellcheck disable=SC1091
source "${VENV:-.venv}/bin/activate"
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.92}
cmd=(srun --kill-on-bad-exit=1 --label treasure-jax train --config "$config" --workdir "$workdir" "$@")
echo "+ ${cmd[*]}" >&2
exec "${cmd[@]}"
