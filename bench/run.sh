#!/usr/bin/env bash
# Sluice's benchmark suite (not part of `cargo test`). Builds the release binary
# (plus a frame-pointer copy for the phase profile), installs nginx, perf (Debian
# packages) and oha (cargo install --locked) if missing, runs every scenario
# against direct-to-upstream, nginx and Sluice interleaved on 127.0.0.1, profiles
# Sluice by phase, then runs the criterion benchmarks, and writes
# bench/results/<time>.md.
#   bench/run.sh            full run (about 15 minutes after the build)
#   bench/run.sh --quick    shorter runs, for a smoke test
# Each run works in a temporary folder (stores, configs, logs) removed at its
# end; BENCH_KEEP_DIR=1 keeps it, e.g. to read a failed run's logs.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --release --locked -p sluice -p sluice-mock
# The same binary with frame pointers, for the per-phase CPU profile (perf -g).
RUSTFLAGS="-C force-frame-pointers=yes" cargo build --release --locked -p sluice --target-dir target/profiling
missing=()
command -v nginx >/dev/null || missing+=(nginx-light)
command -v perf >/dev/null || missing+=(linux-perf)
if [ ${#missing[@]} -gt 0 ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
fi
tools="$PWD/bench/.tools"
if ! command -v oha >/dev/null && [ ! -x "$tools/bin/oha" ]; then
  cargo install oha --locked --root "$tools"
fi
export PATH="$tools/bin:$PATH"
ulimit -n 65536 2>/dev/null || ulimit -n 8192 || true
python3 bench/bench.py "$@"
if [ "${1:-}" != "--quick" ]; then
  cargo bench --locked -p sluice --bench policy -- --noplot 2>&1 | grep -E "policy path|time:" | tee -a "$(ls -t bench/results/*.md | head -1)"
  cargo bench --locked -p sluice --bench ingest -- --noplot 2>&1 | grep -E "ingest \(|thrpt:" | tee -a "$(ls -t bench/results/*.md | head -1)"
fi
