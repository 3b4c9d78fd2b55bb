#!/usr/bin/env bash
# Launch tools/train.py on a SLURM cluster with srun, one task per GPU (mmdet's script):
# mmengine's `--launcher slurm` reads the rank and world size from SLURM's variables.
# Usage: GPUS=16 tools/slurm_train.sh PARTITION JOB_NAME CONFIG WORK_DIR [extra args]
# Environment: GPUS (tasks, default 8), GPUS_PER_NODE (8), CPUS_PER_TASK (5), SRUN_ARGS
# (more srun options, e.g. "--quotatype=auto"), PYTHON (default python).
set -euo pipefail
PARTITION=$1
JOB_NAME=$2
CONFIG=$3
WORK_DIR=$4
GPUS=${GPUS:-8}
GPUS_PER_NODE=${GPUS_PER_NODE:-$((GPUS < 8 ? GPUS : 8))}
CPUS_PER_TASK=${CPUS_PER_TASK:-5}
SRUN_ARGS=${SRUN_ARGS:-""}
PYTHON=${PYTHON:-python}
REPO="$(cd "$(dirname "$0")/.." && pwd)"
# SRUN_ARGS unquoted: it holds several options
# shellcheck disable=SC2086
PYTHONPATH="$REPO":${PYTHONPATH:-} \
srun -p "$PARTITION" \
    --job-name="$JOB_NAME" \
    --gres=gpu:"$GPUS_PER_NODE" \
    --ntasks="$GPUS" \
    --ntasks-per-node="$GPUS_PER_NODE" \
    --cpus-per-task="$CPUS_PER_TASK" \
    --kill-on-bad-exit=1 \
    $SRUN_ARGS \
    "$PYTHON" -u "$REPO/tools/train.py" "$CONFIG" --work-dir="$WORK_DIR" --launcher=slurm \
    "${@:5}"
