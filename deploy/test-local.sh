#!/usr/bin/env bash
# Sets up .venv with everything the tests need (Debian's Chromium included) and runs them all.
source "$(dirname "${BASH_SOURCE[0]}")/venv.sh"
if [ ! -x /usr/bin/chromium ]; then
  SUDO=$([ "$(id -u)" -eq 0 ] || echo sudo)
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
fi
ensure_venv dev,browser
.venv/bin/python -m pytest "$@"
