#!/usr/bin/env bash
# The edge under abuse (issue: admission before bodies, timeouts, bounded
# memory and connections): builds the release binaries and runs bench/abuse.py
# against 127.0.0.1 only, for about 40 s. ABUSE_SECONDS sets the abuse phase.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --release --locked -p sluice -p sluice-mock
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" || true
python3 bench/abuse.py "$@"
