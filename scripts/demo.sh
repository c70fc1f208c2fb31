#!/usr/bin/env bash
# make demo: calibrate if needed, start timebill_node, send one goal with feedback, stop the node.
set -euo pipefail
cd "$(dirname "$0")/.."
PARAMS=${PARAMS:-config/timebill.yaml}
MODEL=$(python -c "import yaml,sys; print(next(iter(yaml.safe_load(open('$PARAMS')).values()))['ros__parameters']['model_path'])")
# Default prompt: the shortest retrieval question of the task suite's test split.
PROMPT=${PROMPT:-$(python -c "
from timebill_ros.eval import tasks
qa = sorted((e for e in tasks.load('test') if e.task == 'qa'), key=lambda e: len(e.prompt))[0]
print(qa.prompt)
print('(reference answer: ' + qa.answer + ')', end='', file=__import__('sys').stderr)
" 2>"${TMPDIR:-/tmp}/timebill_demo_reference")}
BUDGET=${BUDGET:-2.0}
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
echo "== $(cat "${TMPDIR:-/tmp}/timebill_demo_reference" 2>/dev/null)"
echo "== timebill send <prompt> --budget $BUDGET --feedback"
status=0
timebill send "$PROMPT" --budget "$BUDGET" --feedback --server-timeout 30 || status=$?
echo "== exit code $status (0 = SUCCEEDED)"
