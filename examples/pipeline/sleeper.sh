#!/bin/sh
# A stage that runs until stopped (it exits on SIGTERM); writes $SCIENTIST_RUN_DIR/started
# once it runs. For trying out cancel, shutdown and drain.
echo "sleeper: started"
touch "$SCIENTIST_RUN_DIR/started"
if [ -n "$SLEEPER_UNTIL" ]; then
  while [ ! -e "$SLEEPER_UNTIL" ]; do sleep 0.05; done
  echo "sleeper: released"
  exit 0
fi
while :; do sleep 1; done
