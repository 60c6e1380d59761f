#!/usr/bin/env bash
# `make run`, `make dev` and friends, with the same environment:
#   scripts/run.sh             migrate, collect static files, start the Procfile's processes
#                              with honcho: gunicorn with DEBUG off, the worker cluster and,
#                              without AIGPTIMAGE_API_KEY, the provider simulator
#   scripts/run.sh dev         the same with runserver: autoreload and Django's debug pages
#   scripts/run.sh manage ...  any manage.py command (createsuperuser, say)
# Ctrl-C stops every process.
set -euo pipefail
cd "$(dirname "$0")/.."
# Ctrl-C before the processes start (while migrating, say) stops here too.
trap 'exit 130' INT
VENV=$(cd "${VENV:-.venv}" && pwd)
export PATH="$VENV/bin:$PATH"
# Lines reach the terminal as they are written, through honcho's pipes.
export PYTHONUNBUFFERED=1
mode=${1:-serve}

# A key of this checkout's own, made once, so that sign-ins survive a restart and nobody else
# knows it (without DEBUG the app refuses to start without one).
if [ -z "${SECRET_KEY:-}" ]; then
  mkdir -p var
  if [ ! -s var/secret_key ]; then
    (umask 077 && python -c 'import secrets; print(secrets.token_urlsafe(50))' > var/secret_key)
  fi
  SECRET_KEY=$(cat var/secret_key)
  export SECRET_KEY
fi

case "$mode" in
  serve) export DEBUG=0 web=web ;;
  dev) export DEBUG=1 web=dev ;;
  manage) shift; exec python manage.py "$@" ;;
  *) echo "usage: $0 [dev | manage COMMAND...]" >&2; exit 2 ;;
esac

export PORT=${PORT:-8000}
export SIMULATOR_PORT=${SIMULATOR_PORT:-8765}
processes=("$web" worker)
if [ -z "${AIGPTIMAGE_API_KEY:-}" ]; then
  export SIMULATOR_SPEED=${SIMULATOR_SPEED:-0.5}
  export AIGPTIMAGE_API_KEY=sim-key
  export AIGPTIMAGE_BASE_URL="http://127.0.0.1:${SIMULATOR_PORT}"
  export AIGPTIMAGE_RESULT_HOSTS_ALLOWED="127.0.0.1:${SIMULATOR_PORT}"
  processes+=(simulator)
  echo "No AIGPTIMAGE_API_KEY set: images come from the provider simulator at ${AIGPTIMAGE_BASE_URL}"
else
  echo "Using the provider at ${AIGPTIMAGE_BASE_URL:-https://aigptimage.com}"
fi

python manage.py migrate --noinput --verbosity 0
python manage.py collectstatic --noinput --verbosity 0

# The environment is this script's: no .env file is read.
exec honcho start --procfile Procfile --env /dev/null "${processes[@]}"
