#!/usr/bin/env bash
# make demo: calibrate if needed, start timebill_node, send one goal with feedback, stop the node.
set -euo pipefail
cd "$(dirname "$0")/.."
PARAMS=${PARAMS:-config/timebill.yaml}
MODEL=$(python -c "import yaml,sys; print(next(iter(yaml.safe_load(open('$PARAMS')).values()))['ros__parameters']['model_path'])")
# Default prompt: a three-fact retrieval question (reference answer "closet").
PROMPT=${PROMPT:-"The vase is in the closet. The shirt is in the bathroom. The valve is in the dock. Question: Where is the vase? Answer in one word."}
REFERENCE=${REFERENCE:-closet}
# Without a length predictor distilled from SmolLM2 the node plans with N_hat = 64 and k = 5;
# capping the answer at MAX_NEW tokens keeps the worst case (N_W) inside the budget.
MAX_NEW=${MAX_NEW:-24}
BUDGET=${BUDGET:-4.0}
echo "== ROS_DOMAIN_ID=$ROS_DOMAIN_ID, discovery $ROS_AUTOMATIC_DISCOVERY_RANGE, model $MODEL"

if ! timebill calibrate --check --params-file "$PARAMS" >/dev/null 2>&1; then
  echo "== no calibration for $MODEL on this machine yet: calibrating (once)"
  timebill calibrate --params-file "$PARAMS" --points 12 --repeats 2
fi

LOG=$(mktemp -t timebill_node.XXXX.log)
timebill_node --ros-args --params-file "$PARAMS" >"$LOG" 2>&1 &
NODE=$!
trap 'kill -INT $NODE 2>/dev/null; wait $NODE 2>/dev/null || true; echo "== node log: $LOG"' EXIT

echo "== prompt:"; echo "$PROMPT" | fold -s -w 100 | sed 's/^/   | /'
echo "== (reference answer: $REFERENCE)"
echo "== timebill send <prompt> --budget $BUDGET --max-new-tokens $MAX_NEW --feedback"
status=0
timebill send "$PROMPT" --budget "$BUDGET" --max-new-tokens "$MAX_NEW" --feedback --server-timeout 60 || status=$?
echo "== exit code $status (0 = SUCCEEDED)"
