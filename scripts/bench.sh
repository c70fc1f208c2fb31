#!/usr/bin/env bash
# make bench: every benchmark, JSON under results/bench/. BENCH_ARGS=--quick for a smoke run.
# The model is $TIMEBILL_BENCH_MODEL, else builtin:smollm2 (the node's default model).
# The length-predictor benchmark needs a predictor distilled from the same model; it runs on
# builtin:toy (the fine-tuned SmolLM2 target's predictor is timed by `timebill rlp-layers`).
set -euo pipefail
cd "$(dirname "$0")/../bench"
export TIMEBILL_BENCH_MODEL=${TIMEBILL_BENCH_MODEL:-builtin:smollm2}
echo "== benchmarks on $TIMEBILL_BENCH_MODEL"
python engine_bench.py ${BENCH_ARGS:-}
python kill_latency.py ${BENCH_ARGS:-}
python online_bench.py ${BENCH_ARGS:-}
echo "== length predictor beside prefill, on builtin:toy with its distilled predictor"
TIMEBILL_BENCH_MODEL=builtin:toy python predictor_bench.py ${BENCH_ARGS:-}
echo "results in $(cd .. && pwd)/results/bench/; publish them with: make results"
