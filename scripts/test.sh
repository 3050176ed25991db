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
echo "== billing conformance suite"
# The end-to-end suite drives the real binary: build it first.
cargo build --locked -p sluice
cargo test --locked -p sluice-tests --test e2e "$@" -- --test-threads=1 billing::
echo "== everything else"
cargo test --workspace --locked "$@" -- --test-threads=1 --skip billing::
