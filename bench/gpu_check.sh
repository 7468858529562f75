#!/usr/bin/env bash
# The prepared GPU check (issue 30): on a machine with one CUDA GPU, install the documented GPU route
# (docs/install.md, "Installing on a GPU machine") into its own virtual environment, then measure, in
# bfloat16 where the GPU has it:
#   1. the training step of cm, dien and gru4rec at L = 1,000 on the GPU (`cmrec bench --device cuda`);
#   2. the serving benchmark at L = 1,000 (scoring runs on the CPU, as served; bf16 autocast);
#   3. one epoch of a one-GPU DistributedModelParallel run with TorchRec's fused Adam for the tables
#      (`cmrec train --nproc 1 --embedding-optimizer adam`, on tiny generated data).
# Everything is written under $OUT_DIR (bench/results/gpu), one JSON or log per step, plus summary.json.
# The whole check must finish in 8 minutes: each step has its own timeout, and a failed step is
# recorded (its exit status and log) without stopping the others.
#
#   bash bench/gpu_check.sh            # run it
#   bash bench/gpu_check.sh --dry-run  # print what it would run, run nothing (works without a GPU)
#
# Settings (environment): OUT_DIR, GPU_VENV (.venv-gpu), CUDA_INDEX (PyTorch's wheel index for the
# machine's CUDA, default cu128), PYTHON (python3.11), BUDGET (seconds for the whole check, 460: a
# step that would pass it gets the time left, and is skipped when none is).
set -uo pipefail

DRY_RUN=0
if [ "${1:-}" = "--dry-run" ]; then DRY_RUN=1; fi
OUT_DIR=${OUT_DIR:-bench/results/gpu}
GPU_VENV=${GPU_VENV:-.venv-gpu}
CUDA_INDEX=${CUDA_INDEX:-https://download.pytorch.org/whl/cu128}
PYTHON=${PYTHON:-python3.11}
BUDGET=${BUDGET:-460}
PY="$GPU_VENV/bin/python"
STATUS=()

run() {  # run NAME TIMEOUT CMD...: run (or print) one step, log it, keep its exit status
    local name=$1 limit=$2
    shift 2
    if [ "$DRY_RUN" = 1 ]; then
        echo "[$name, <= ${limit}s] $*"
        return 0
    fi
    local left=$((BUDGET - SECONDS))
    if [ "$left" -le 5 ]; then
        echo "== $name: skipped, the ${BUDGET}s budget is spent"
        STATUS+=("\"$name\": \"skipped\"")
        return 1
    fi
    if [ "$limit" -gt "$left" ]; then limit=$left; fi
    echo "== $name (<= ${limit}s): $*"
    timeout "$limit" "$@" >"$OUT_DIR/$name.log" 2>&1
    local rc=$?
    STATUS+=("\"$name\": $rc")
    tail -n 15 "$OUT_DIR/$name.log"
    return $rc
}

if [ "$DRY_RUN" = 0 ]; then
    if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
        echo "gpu_check: no NVIDIA GPU here (nvidia-smi is missing or finds no device); nothing was run" >&2
        exit 2
    fi
    mkdir -p "$OUT_DIR"
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >"$OUT_DIR/nvidia-smi.csv"
fi

SCRATCH=$(mktemp -d)  # data and the DMP run's checkpoints: only JSON and logs go to $OUT_DIR
trap 'rm -rf "$SCRATCH"' EXIT

# The documented GPU route, in its own environment (the CPU .venv stays as it is).
if [ "$DRY_RUN" = 1 ] || [ ! -x "$PY" ]; then
    run venv 30 "$PYTHON" -m venv "$GPU_VENV"
    run install_torch 180 "$PY" -m pip install -q torch==2.13.0 fbgemm-gpu==1.8.0 --index-url "$CUDA_INDEX"
    run install_stack 90 "$PY" -m pip install -q torchrec==1.8.0 tensordict torchmetrics==1.0.3 \
        pyre-extensions tqdm pandas pyarrow scikit-learn mlflow==3.17.2 pyyaml
    run install_cmrec 30 "$PY" -m pip install -q --no-deps -e .
fi
run cuda 30 "$PY" -c "import torch; assert torch.cuda.is_available(), 'torch sees no CUDA device'; print(torch.cuda.get_device_name(0), 'bf16:', torch.cuda.is_bf16_supported())"

# 1. Training step on the GPU: float32 and bfloat16 (auto), each model's share of the in-run matmul.
run train 120 "$PY" -m cmrec.cli bench --model cm dien gru4rec --length 1000 --batch-size 32 --steps 3 \
    --device cuda --precision auto --out "$OUT_DIR/train.json"
# 2. Serving (CPU scoring, as served) in bfloat16 autocast, beside DIEN and GRU4REC.
run serving 90 "$PY" -m cmrec.cli bench --serving --lengths 1000 --precision bfloat16 --requests 30 \
    --out "$OUT_DIR/serving.json"
# 3. A one-GPU DMP run with fused Adam for the sharded tables.
run generate 30 "$PY" -m cmrec.cli generate --users 400 --length 200 --seed 0 --out "$SCRATCH/data"
if run dmp 120 "$PY" -m cmrec.cli train --model cm --events "$SCRATCH/data/events.parquet" --max-len 200 \
    --epochs 1 --seed 0 --no-mlflow --nproc 1 --embedding-optimizer adam --out "$SCRATCH/dmp-run"; then
    [ "$DRY_RUN" = 1 ] || cp "$SCRATCH/dmp-run/metrics.json" "$OUT_DIR/dmp-metrics.json"
fi

if [ "$DRY_RUN" = 0 ]; then
    (IFS=,; echo "{${STATUS[*]}, \"seconds\": $SECONDS}") >"$OUT_DIR/summary.json"
    echo "gpu_check: exit status per step in $OUT_DIR/summary.json"
fi
