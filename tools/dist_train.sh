#!/usr/bin/env bash
# Launch tools/train.py in several processes with torch.distributed.run (mmengine's DDP path).
# On a machine without CUDA the processes use the gloo backend on the CPU.
# Usage: tools/dist_train.sh CONFIG NUM_PROCS [extra args]
set -euo pipefail
CONFIG=$1
NPROC=$2
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
PORT=${PORT:-29500}
MASTER_ADDR=${MASTER_ADDR:-"127.0.0.1"}
# the interpreter: $PYTHON if set, else the repository's venv (made by `make setup`), so the
# script works in a fresh shell without activating it, else python from PATH
REPO="$(cd "$(dirname "$0")/.." && pwd)"
if [ -z "${PYTHON:-}" ]; then
    if [ -x "$REPO/.venv/bin/python" ]; then PYTHON="$REPO/.venv/bin/python"; else PYTHON=python; fi
fi
PYTHONPATH="$REPO":${PYTHONPATH:-} \
"$PYTHON" -m torch.distributed.run --nnodes="$NNODES" --node_rank="$NODE_RANK" \
    --master_addr="$MASTER_ADDR" --nproc_per_node="$NPROC" --master_port="$PORT" \
    "$(dirname "$0")/train.py" "$CONFIG" --launcher pytorch "${@:3}"
