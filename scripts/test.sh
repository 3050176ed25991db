#!/usr/bin/env bash
# The test command: installs what the suite needs, then runs every test
# (the billing conformance suite first, then unit tests, the storage
# conformance suite on both backends, and the end-to-end suite that drives the
# real binary with the openai SDK).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --python
# One test at a time: the end-to-end tests measure latencies and pacing, and on
# a 2-core machine parallel gateways would measure each other instead.
# Both runs build the same targets with the same features, so the second
# reuses the first's build (the workspace build includes the binary the
# end-to-end suite drives).
echo "== billing conformance suite"
cargo test --workspace --locked "$@" -- --test-threads=1 billing::
echo "== everything else"
cargo test --workspace --locked "$@" -- --test-threads=1 --skip billing::
