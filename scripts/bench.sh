#!/usr/bin/env bash
# make bench: every benchmark, JSON under results/bench/. BENCH_ARGS=--quick for a smoke run.
# The model is $TIMEBILL_BENCH_MODEL, else the shipped default model, else builtin:tiny-random.
set -euo pipefail
cd "$(dirname "$0")/../bench"
if [ -z "${TIMEBILL_BENCH_MODEL:-}" ]; then
  if python -c "from timebill_ros.core.model import resolve_model_path as r; r('builtin:default')" 2>/dev/null; then
    export TIMEBILL_BENCH_MODEL=builtin:default
  else
    export TIMEBILL_BENCH_MODEL=builtin:tiny-random
  fi
fi
echo "== benchmarks on $TIMEBILL_BENCH_MODEL"
python engine_bench.py ${BENCH_ARGS:-}
python kill_latency.py ${BENCH_ARGS:-}
if python -c "from timebill_ros.core.predictor import load_predictor as l; l('builtin:default', None, 64)" 2>/dev/null; then
  python predictor_bench.py ${BENCH_ARGS:-}
else
  echo "== no shipped length predictor: predictor_overhead skipped"
fi
echo "results in $(cd .. && pwd)/results/bench/"
