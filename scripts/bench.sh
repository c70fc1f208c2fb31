#!/usr/bin/env bash
# make bench: every benchmark, JSON under results/bench/. BENCH_ARGS=--quick for a smoke run.
set -euo pipefail
cd "$(dirname "$0")/../bench"
python engine_bench.py ${BENCH_ARGS:-}
python kill_latency.py ${BENCH_ARGS:-}
echo "results in $(cd .. && pwd)/results/bench/"
