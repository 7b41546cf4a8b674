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
python -m nmt train benchmarks/reference.yaml --run-dir "$work/one" "${common[@]}" > /dev/null 2>&1
python -m torch.distributed.run --standalone --nproc_per_node 2 -m nmt train \
    benchmarks/reference.yaml --run-dir "$work/two" "${common[@]}" > /dev/null 2>&1
for run in one two; do
    # the first window includes the warm-up: average the last three (updates 20-40)
    rate=$(grep ',train,' "$work/$run/metrics.csv" | tail -3 | cut -d, -f6 |
           awk '{ s += $1 } END { printf "%.0f", s / NR }')
    echo "$run process(es): $rate target tokens/s"
done
