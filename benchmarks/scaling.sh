#!/bin/bash
# Training throughput of benchmarks/reference.yaml as 1 process and as 2 gloo processes under
# torchrun, one thread each and the same global batch: target tokens/s from each run's metrics.csv.
#   bash benchmarks/scaling.sh [DATA_ROOT]   (default ../shared/data/multi30k)
set -euo pipefail
data=$(realpath "${1:-../shared/data/multi30k}")
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
common=(train.max_steps=40 train.valid_every=1000 train.log_every=10 train.threads=1
        train.valid_max_sentences=50 "data.root=$data")
export OMP_NUM_THREADS=1
# A run's log goes to a file, shown should the run fail (set -e would end the script silently).
python -m nmt train benchmarks/reference.yaml --run-dir "$work/one" "${common[@]}" \
    > "$work/one.log" 2>&1 || { cat "$work/one.log"; exit 1; }
python -m torch.distributed.run --standalone --nproc_per_node 2 -m nmt train \
    benchmarks/reference.yaml --run-dir "$work/two" "${common[@]}" \
    > "$work/two.log" 2>&1 || { cat "$work/two.log"; exit 1; }
for run in one two; do
    # the first window includes the warm-up: average the last three (updates 20-40); columns
    # are found by their names in metrics.csv's header
    rate=$(awk -F, 'NR == 1 { for (i = 1; i <= NF; i++) col[$i] = i; next }
                    $col["kind"] == "train" { r[++n] = $col["target_tokens_per_s"] }
                    END { s = 0; for (i = n - 2; i <= n; i++) s += r[i]; printf "%.0f", s / 3 }' \
           "$work/$run/metrics.csv")
    echo "$run process(es): $rate target tokens/s"
done
