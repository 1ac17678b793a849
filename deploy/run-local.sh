#!/usr/bin/env bash
# Sets up .venv, then serves the API (embedded SmolLM2 by default) and the SPA on loopback.
# API_PORT, SPA_PORT and extra `python -m service` flags (e.g. --model PATH) may be given.
source "$(dirname "${BASH_SOURCE[0]}")/venv.sh"
ensure_venv
API_PORT="${API_PORT:-8000}"
SPA_PORT="${SPA_PORT:-8080}"

.venv/bin/python -m http.server "$SPA_PORT" --bind 127.0.0.1 --directory spa >/dev/null 2>&1 &
spa_pid=$!
trap 'kill $spa_pid 2>/dev/null' EXIT
echo "API: http://127.0.0.1:$API_PORT/v1  (ready at http://127.0.0.1:$API_PORT/readyz)"
echo "SPA: http://127.0.0.1:$SPA_PORT/?api=http://127.0.0.1:$API_PORT"
.venv/bin/python -m service --host 127.0.0.1 --port "$API_PORT" "$@"
