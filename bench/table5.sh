#!/usr/bin/env bash
# The paper's Table 5 analogue: every model of the paper plus avg-pool, 3 seeds, on the `make demo`
# data and on MovieLens-1M, each run tracked in MLflow; the table is `cmrec compare` of the study.
#
#   bench/table5.sh demo [MODEL...]        # the demo data: 1,000 users x 400 clicks, 2 epochs
#   bench/table5.sh movielens [MODEL...]   # MovieLens-1M: --max-len 200, 3 epochs
#   MLFLOW_TRACKING_URI=sqlite:///runs/table5/demo.db cmrec compare --experiment table5-demo
#   .venv/bin/python bench/table5_table.py runs/table5   # the table, from the run folders
#
# Resumable: a run whose folder already holds metrics.json is skipped. SEEDS (default "0 1 2"),
# STUDY (default runs/table5) and THREADS (torch threads per run, default 1: two streams share
# the 2 cores) can be set. One seed's data set and model seed are the same number (the larger
# study's convention), so the std covers both.
set -euo pipefail

stream=${1:?usage: bench/table5.sh demo|movielens [MODEL...]}
shift
models=("$@")
if [ ${#models[@]} -eq 0 ]; then
  models=(avg-pool rum caser gru4rec hpmn cm dien cm-paper mimn)
fi
study=${STUDY:-runs/table5}
seeds=${SEEDS:-0 1 2}
cmrec=${CMREC:-.venv/bin/cmrec}
mkdir -p "$study/runs" "$study/logs"
export OMP_NUM_THREADS=${THREADS:-1} MLFLOW_DISABLE_TELEMETRY=true

case $stream in
  demo)
    export MLFLOW_TRACKING_URI=${MLFLOW_TRACKING_URI:-sqlite:///$study/demo.db}
    experiment=table5-demo
    epochs=2
    ;;
  movielens)
    export MLFLOW_TRACKING_URI=${MLFLOW_TRACKING_URI:-sqlite:///$study/movielens.db}
    experiment=table5-movielens
    epochs=3
    ;;
  *)
    echo "bench/table5.sh: the stream must be demo or movielens, got '$stream'" >&2
    exit 2
    ;;
esac

for seed in $seeds; do
  if [ "$stream" = demo ]; then
    data=$study/data/demo-seed$seed
    if [ ! -f "$data/events.parquet" ]; then
      "$cmrec" generate --users 1000 --length 400 --seed "$seed" --out "$data" --overwrite \
        > "$study/logs/generate-demo-seed$seed.log" 2>&1
    fi
    source_args=(--events "$data/events.parquet" --max-len 400)
  else
    source_args=(--dataset movielens-1m --max-len 200)
  fi
  for model in "${models[@]}"; do
    out=$study/runs/$stream-$model-seed$seed
    if [ -f "$out/metrics.json" ]; then
      continue
    fi
    extra=()
    if [ "$model" = cm-paper ]; then
      extra=(--lr 1e-3 --batch-size 128)  # the paper's recipe, as `make demo` trains it
    fi
    echo "$(date +%H:%M:%S) $stream $model seed $seed"
    "$cmrec" train --model "$model" "${source_args[@]}" --epochs "$epochs" --seed "$seed" \
      --experiment "$experiment" --out "$out" --overwrite "${extra[@]}" \
      > "$study/logs/$stream-$model-seed$seed.log" 2>&1
  done
done
echo "$(date +%H:%M:%S) $stream done: MLFLOW_TRACKING_URI=$MLFLOW_TRACKING_URI cmrec compare --experiment $experiment"
