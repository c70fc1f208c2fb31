#!/usr/bin/env bash
# make demo: start timebill_node, send one goal with feedback (the node calibrates itself on its
# first start on this machine; the goal is sent again while it answers "node is starting"), stop.
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

# The demo's node takes prompts up to DEMO_MAX_PROMPT tokens and answers up to
# DEMO_MAX_ANSWER, and keeps a calibration of its own for just those lengths (under
# calibration/demo/): its first start profiles 640 tokens instead of the full node's 2,560.
DEMO_MAX_PROMPT=${DEMO_MAX_PROMPT:-512}
DEMO_MAX_ANSWER=${DEMO_MAX_ANSWER:-128}
DEMO_PARAMS=$(mktemp -t timebill_demo.XXXX.yaml)
trap 'rm -f "$DEMO_PARAMS"' EXIT
python - "$PARAMS" "$DEMO_PARAMS" "$DEMO_MAX_PROMPT" "$DEMO_MAX_ANSWER" <<'PY'
import sys
import yaml
from timebill_ros.cli.calibrate import CalibrationTarget

src, out, max_prompt, max_answer = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
doc = yaml.safe_load(open(src))
params = next(iter(doc.values()))["ros__parameters"]
params.update(max_prompt_tokens=max_prompt, max_new_tokens=max_answer,
              default_max_new_tokens=min(max_answer, params.get("default_max_new_tokens", max_answer)))
full = CalibrationTarget.from_sources(src, {}).path()  # keyed by model, weights, threads, machine
params["calibration_path"] = str(full.parent / "demo" / full.name)
yaml.safe_dump(doc, open(out, "w"))
PY
if ! timebill calibrate --check --params-file "$DEMO_PARAMS" >/dev/null 2>&1; then
  echo "== no demo calibration for $MODEL on this machine yet: the node makes one at its first start"
fi

LOG=$(mktemp -t timebill_node.XXXX.log)
timebill_node --ros-args --params-file "$DEMO_PARAMS" >"$LOG" 2>&1 &
NODE=$!
trap 'kill -INT $NODE 2>/dev/null; wait $NODE 2>/dev/null || true; rm -f "$DEMO_PARAMS"; echo "== node log: $LOG"' EXIT

echo "== prompt:"; echo "$PROMPT" | fold -s -w 100 | sed 's/^/   | /'
echo "== (reference answer: $REFERENCE)"
echo "== timebill send <prompt> --budget $BUDGET --max-new-tokens $MAX_NEW --feedback --wait-ready 600"
mkdir -p results
set +e
timebill send "$PROMPT" --budget "$BUDGET" --max-new-tokens "$MAX_NEW" --feedback --server-timeout 60 \
  --wait-ready 600 | tee results/demo.txt
status=${PIPESTATUS[0]}
set -e
echo "== exit code $status (0 = SUCCEEDED)"
# The transcript the README shows (`make results` renders it from docs/results/demo.json).
python - "$status" "$BUDGET" "$MAX_NEW" "$MODEL" <<'PY'
import json, sys, time
from timebill_ros.core.calibration import machine_id

status, budget, max_new, model = sys.argv[1:5]
json.dump({"benchmark": "demo", "machine": machine_id(), "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
           "model": model, "budget_s": float(budget), "max_new_tokens": int(max_new), "exit_code": int(status),
           "transcript": open("results/demo.txt").read().splitlines()}, open("results/demo.json", "w"), indent=2)
PY
