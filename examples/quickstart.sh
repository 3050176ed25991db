#!/usr/bin/env bash
# Builds Sluice, starts the fake upstream and the gateway on 127.0.0.1, creates
# a key and prints a curl line that works. Ctrl-C stops both.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --locked -p sluice -p sluice-mock
bin="${CARGO_TARGET_DIR:-target}/debug/sluice"
export SLUICE_ADMIN_TOKEN="${SLUICE_ADMIN_TOKEN:-quickstart-admin-token}"
export MOCK_UPSTREAM_KEY="quickstart-upstream-key"
mkdir -p .quickstart
"$bin-mock" --listen 127.0.0.1:9100 --chunk-delay-ms 30 2> .quickstart/mock.log &
mock=$!
trap 'kill $mock 2>/dev/null || true' EXIT
key=$("$bin" keys create --config examples/quickstart.toml --name quickstart --quota 1000000)
cat <<MSG

Sluice is starting on http://127.0.0.1:8080 (admin and /metrics on 127.0.0.1:8081).
Your key (shown once): $key

  curl -N http://127.0.0.1:8080/v1/chat/completions \\
    -H "Authorization: Bearer $key" -H "Content-Type: application/json" \\
    -d '{"model":"gpt-4o-mini","stream":true,"messages":[{"role":"user","content":"Hello"}]}'

  curl http://127.0.0.1:8081/admin/usage -H "Authorization: Bearer $SLUICE_ADMIN_TOKEN"

MSG
"$bin" serve --config examples/quickstart.toml
