#!/bin/sh
# A stage that reports across a control-plane outage: some events, then it signals
# readiness ($SCIENTIST_RUN_DIR/ready) and waits for $OUTAGE_GO to exist, then reports more.
# Used by the worker's outage test; every event must reach the control plane in the end.
set -e
for i in 1 2 3; do
  echo "before outage $i"
  scientist emit ai.run.stage_progress --run "$SCIENTIST_RUN_ID" \
    --data "{\"stage\": \"Stage_1\", \"iteration\": $i, \"max_iterations\": 6, \"progress\": 0.$i}" 2>/dev/null
done
touch "$SCIENTIST_RUN_DIR/ready"
while [ ! -e "$OUTAGE_GO" ]; do sleep 0.05; done
for i in 4 5 6; do
  scientist emit ai.run.stage_progress --run "$SCIENTIST_RUN_ID" \
    --data "{\"stage\": \"Stage_1\", \"iteration\": $i, \"max_iterations\": 6, \"progress\": 0.$((i + 3))}" 2>/dev/null
done
i=1
while [ $i -le 20 ]; do echo "during outage $i"; i=$((i + 1)); done
echo "outage stage done"
