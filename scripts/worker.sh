#!/usr/bin/env bash
# The Procfile's worker: a django-q2 cluster. honcho stops a process with a SIGTERM to its whole
# process group, which would kill the cluster's workers in the middle of a task (they die on
# SIGTERM) and leave its main process hanging. The cluster stops its workers cleanly, after
# their current task, on a SIGINT to its main process alone: so it runs in a session of its
# own, out of honcho's reach, and gets that SIGINT from here.
set -euo pipefail
setsid python manage.py qcluster &
cluster=$!

stop() {
  stopping=1
  kill -INT "$cluster" 2>/dev/null || true
  # honcho kills this script 5 s after Ctrl-C. A cluster still busy with a task by then is
  # killed with its workers, as a crashed host would be: the task's lease runs out and the
  # reconcile schedule picks its work up at the next start.
  local deadline=$((SECONDS + 4))
  while kill -0 "$cluster" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.1; done
  if kill -0 "$cluster" 2>/dev/null; then
    echo "The worker cluster is still busy: stopped now; its unfinished work resumes at the next start."
    kill -KILL -- "-$cluster" 2>/dev/null || true
  fi
}
trap stop INT TERM

while true; do
  wait "$cluster" 2>/dev/null && status=0 || status=$?
  # A wait cut short by the trap returns with the cluster still stopping: wait again.
  kill -0 "$cluster" 2>/dev/null || break
done
# Stopped as asked is a success, however the cluster went.
[ -n "${stopping:-}" ] && exit 0
exit "$status"
