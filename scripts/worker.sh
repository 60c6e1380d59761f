#!/usr/bin/env bash
# The Procfile's worker: a django-q2 cluster. honcho stops a process with a SIGTERM to its whole
# process group, which would kill the cluster's workers in the middle of a task (they die on
# SIGTERM) and leave its main process hanging. The cluster stops its workers cleanly, after
# their current task, on a SIGINT to its main process alone: so it runs in a session of its
# own, out of honcho's reach, and gets that SIGINT from here. honcho gives up on this script
# after 5 s; scripts/run.sh then waits for the cluster, whose id is in QCLUSTER_PID_FILE.
set -euo pipefail
setsid python manage.py qcluster &
cluster=$!
echo "$cluster" > "${QCLUSTER_PID_FILE:-var/qcluster.pid}"
trap 'kill -INT "$cluster" 2>/dev/null || true' INT TERM
status=0
while kill -0 "$cluster" 2>/dev/null; do
  wait "$cluster" || status=$?
done
exit "$status"
