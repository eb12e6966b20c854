#!/bin/sh
# Runs one CI job (an evaluation, a benchmark, a training smoke test) and reports it to
# scientist as a run, through `scientist emit`: created on the `ci` queue, RUNNING with a
# heartbeat every 30 s while the job runs, its output lines as logs, COMPLETED or FAILED
# (code EXIT_<n>, with the output's tail) when it ends. Exits with the job's status.
#
#   SCIENTIST_SERVER=https://scientist.lab.example SCIENTIST_TOKEN=$TOKEN \
#     examples/ci-emit.sh python eval.py --checkpoint model.pt
#
# In GitHub Actions:
#   - run: examples/ci-emit.sh make eval
#     env:
#       SCIENTIST_SERVER: https://scientist.lab.example
#       SCIENTIST_TOKEN: ${{ secrets.SCIENTIST_TOKEN }}
#
# The token needs the admin scope (creating a run and ending it without a worker's claim are
# admin's; see the README's token scopes). The job itself may report more: it runs with
# SCIENTIST_RUN_ID set, so `scientist emit ai.run.stage_metric --run "$SCIENTIST_RUN_ID"
# --data '{"name": "accuracy", "value": 0.91}'` works inside it. Every emit here uses
# --spool: an event the control plane cannot take now is kept on disk and sent by the next
# emit, so a blip never fails the job (only a wrong token, exit 7, stops the script).
#
# Settings (environment):
#   SCIENTIST_RUN_ID  the run's id [ci-$GITHUB_RUN_ID-$GITHUB_RUN_ATTEMPT, else ci-<time>-<pid>]
#   CI_STAGE          the stage the job is [validation]
#   CI_QUEUE          the queue the run is listed under [ci]; no worker should serve it
#   SCIENTIST         the scientist binary [scientist]
#   CI_HEARTBEAT_S    seconds between heartbeats [30]
#   CI_LOG_LINES      how many of the last output lines to send as logs [200]
set -eu

if [ "$#" -eq 0 ]; then
  echo "usage: $0 COMMAND [ARGS...]  (runs COMMAND and reports it as a scientist run)" >&2
  exit 2
fi

scientist=${SCIENTIST:-scientist}
if [ -n "${GITHUB_RUN_ID:-}" ]; then
  run="ci-${GITHUB_RUN_ID}-${GITHUB_RUN_ATTEMPT:-1}"
else
  run="ci-$(date -u +%Y%m%dT%H%M%S)-$$"
fi
run=${SCIENTIST_RUN_ID:-$run}
stage=${CI_STAGE:-validation}
queue=${CI_QUEUE:-ci}
heartbeat_s=${CI_HEARTBEAT_S:-30}
log_lines=${CI_LOG_LINES:-200}
export SCIENTIST_RUN_ID="$run"

tab=$(printf '\t')
cr=$(printf '\r')
# Each line of stdin as the inside of a JSON string: backslashes, quotes, tabs and carriage
# returns escaped, other control characters dropped.
json_escape() {
  tr -d '\000-\010\013\014\016-\037' | sed -e 's/\\/\\\\/g' -e 's/"/\\"/g' -e "s/$tab/\\\\t/g" -e "s/$cr/\\\\r/g"
}

# Stdin as one JSON string, its lines joined with \n.
json_string() {
  json_escape | awk 'BEGIN { printf "\"" } NR > 1 { printf "\\n" } { printf "%s", $0 } END { printf "\"" }'
}

emit() {
  "$scientist" emit "$@" --run "$run" --spool
}

describe=$(printf '%s ' "$@" | json_string)
commit=$(printf '%s' "${GITHUB_SHA:-$(git rev-parse HEAD 2>/dev/null || true)}" | json_string)
emit ai.run.enqueued --data "{\"queue\": \"$queue\", \"idea\": {\"ci\": true, \"command\": $describe, \"commit\": $commit}}"
emit ai.run.started --data "{\"pod_id\": \"ci-$(uname -n | tr -cd 'A-Za-z0-9.-')\"}"
emit ai.run.stage_started --data "{\"stage\": \"$stage\", \"desc\": $describe}"

output=$(mktemp "${TMPDIR:-/tmp}/ci-emit.XXXXXX")
trap 'rm -f "$output"' EXIT
started=$(date +%s)

# The job, with its output both shown and kept; its status is kept in a file because a
# pipeline's status is tee's.
status_file="$output.status"
( set +e; "$@" 2>&1; echo $? > "$status_file" ) | tee "$output" &
job=$!
# Heartbeats while it runs: without word for the lease, the control plane would count the
# run's "worker" lost.
while kill -0 "$job" 2>/dev/null; do
  waited=0
  while [ "$waited" -lt "$heartbeat_s" ] && kill -0 "$job" 2>/dev/null; do
    sleep 1
    waited=$((waited + 1))
  done
  if kill -0 "$job" 2>/dev/null; then
    emit ai.run.heartbeat --data '{}' 2>/dev/null || true
  fi
done
wait "$job" || true
status=$(cat "$status_file" 2>/dev/null || echo 1)
rm -f "$status_file"
duration=$(( $(date +%s) - started ))

# The output's last lines as ai.run.log events, in one batch (a line refused is reported by
# number and does not keep the run from ending).
tail -n "$log_lines" "$output" | json_escape |
  awk 'length($0) > 0 { printf "{\"type\": \"ai.run.log\", \"data\": {\"message\": \"%s\", \"level\": \"info\", \"source\": \"ci\"}}\n", $0 }' |
  emit --batch - >/dev/null || true

if [ "$status" -eq 0 ]; then
  emit ai.run.stage_completed --data "{\"stage\": \"$stage\", \"duration_s\": $duration}"
  emit ai.run.completed --data "{\"duration_s\": $duration}"
else
  tail_text=$(tail -n 20 "$output" | json_string)
  emit ai.run.failed --data "{\"stage\": \"$stage\", \"code\": \"EXIT_$status\", \"message\": \"the CI job exited with status $status\", \"traceback\": $tail_text}"
fi
exit "$status"
