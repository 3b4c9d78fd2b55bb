#!/usr/bin/env bash
# Launch tools/test.py on a SLURM cluster with srun, one task per GPU (mmdet's script):
# mmengine's `--launcher slurm` reads the rank and world size from SLURM's variables.
# Usage: GPUS=8 tools/slurm_test.sh PARTITION JOB_NAME CONFIG CHECKPOINT [extra args]
# CHECKPOINT `none` tests a config without one (a fixed rule). Environment as in
# tools/slurm_train.sh: GPUS, GPUS_PER_NODE, CPUS_PER_TASK, SRUN_ARGS, PYTHON.
# Fusing COCO-results files needs no GPU: see docs/benchmarks.md for a SLURM array of
# tools/analysis_tools/fuse_results.py --shard jobs.
set -euo pipefail
PARTITION=$1
JOB_NAME=$2
CONFIG=$3
CHECKPOINT=$4
GPUS=${GPUS:-8}
GPUS_PER_NODE=${GPUS_PER_NODE:-$((GPUS < 8 ? GPUS : 8))}
CPUS_PER_TASK=${CPUS_PER_TASK:-5}
SRUN_ARGS=${SRUN_ARGS:-""}
PYTHON=${PYTHON:-python}
REPO="$(cd "$(dirname "$0")/.." && pwd)"
CKPT=()
if [ "$CHECKPOINT" != "none" ]; then CKPT=("$CHECKPOINT"); fi
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
    "$PYTHON" -u "$REPO/tools/test.py" "$CONFIG" "${CKPT[@]}" --launcher=slurm "${@:5}"
