#!/usr/bin/env bash
# The soak: builds the release binaries and the plugin it hot-reloads, then
# runs bench/soak.py against 127.0.0.1 only for 30 minutes (plus ~20 s).
#   bench/soak.sh                 30 minutes
#   bench/soak.sh --minutes 5     shorter (the RSS target is checked from 20)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --release --locked -p sluice -p sluice-mock
(cd plugins && cargo build --release --locked --target wasm32-wasip2 -p team-header)
if [ "${1:-}" = "--minutes" ]; then
  export SOAK_MINUTES="$2"
fi
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" || true
python3 bench/soak.py
