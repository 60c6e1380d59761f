#!/usr/bin/env bash
# Starts web, worker and, without AIGPTIMAGE_API_KEY, the provider simulator; stops all on Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
PORT=${PORT:-8000}
export DEBUG=${DEBUG:-1}

servers=()
cluster=""
stop() {
  trap - EXIT INT TERM
  # Background jobs of a script ignore SIGINT, so the web server and the simulator get SIGTERM.
  # The worker cluster runs in a session of its own, out of reach of the terminal's Ctrl-C,
  # and stops its workers cleanly on a SIGINT to its main process alone.
  kill -TERM "${servers[@]}" 2>/dev/null || true
  [ -n "$cluster" ] && kill -INT "$cluster" 2>/dev/null || true
  wait 2>/dev/null || true
}
trap stop EXIT INT TERM

if [ -z "${AIGPTIMAGE_API_KEY:-}" ]; then
  SIM_PORT=${SIMULATOR_PORT:-8765}
  export SIMULATOR_SPEED=${SIMULATOR_SPEED:-0.5}
  export AIGPTIMAGE_API_KEY=sim-key
  export AIGPTIMAGE_BASE_URL="http://127.0.0.1:${SIM_PORT}"
  export AIGPTIMAGE_RESULT_HOSTS_ALLOWED="127.0.0.1:${SIM_PORT}"
  $PY -m simulator --host 127.0.0.1 --port "$SIM_PORT" &
  servers+=($!)
  echo "No AIGPTIMAGE_API_KEY set: images come from the provider simulator at ${AIGPTIMAGE_BASE_URL}"
else
  echo "Using the provider at ${AIGPTIMAGE_BASE_URL:-https://aigptimage.com}"
fi

setsid $PY manage.py qcluster &
cluster=$!
$PY manage.py runserver "127.0.0.1:${PORT}" --noreload &
servers+=($!)

sleep 2
echo
echo "  Banana Gallery is running: http://127.0.0.1:${PORT}/"
echo "  Sign up at http://127.0.0.1:${PORT}/accounts/signup/ . Mail (password resets, verification)"
echo "  is printed here. Press Ctrl-C to stop."
echo
wait -n "${servers[@]}" "$cluster"
