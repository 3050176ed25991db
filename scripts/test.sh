#!/usr/bin/env bash
# The test command: installs what the suite needs, then runs every test
# (unit tests, the storage conformance suite on both backends, and the
# end-to-end suite that drives the real binary with the openai SDK).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --python
cargo test --workspace --locked "$@"
