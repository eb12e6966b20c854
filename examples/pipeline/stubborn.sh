#!/bin/sh
# A stage that ignores SIGTERM, and starts a helper that ignores it too: stopping it takes
# SIGKILL to the whole process group after the grace period. Records the pids of both in
# $SCIENTIST_RUN_DIR/pids and each SIGTERM it receives in $SCIENTIST_RUN_DIR/terms.
trap 'echo "$$ got SIGTERM" >> "$SCIENTIST_RUN_DIR/terms"' TERM
sh -c 'trap "" TERM; while :; do sleep 1; done' &
helper=$!
echo "$$ $helper" > "$SCIENTIST_RUN_DIR/pids.tmp" && mv "$SCIENTIST_RUN_DIR/pids.tmp" "$SCIENTIST_RUN_DIR/pids"
echo "stubborn: running as $$ with helper $helper"
while :; do sleep 1; done
