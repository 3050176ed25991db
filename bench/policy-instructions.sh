#!/usr/bin/env bash
# Instructions per request through the pooled policy path (auth + route + shape,
# the policy bench's inputs), counted by callgrind: unlike time, the count does
# not move with this machine's speed, so two builds compare exactly (±1 %).
# Installs valgrind (Debian package) if missing. About a minute per line.
#   bench/policy-instructions.sh          the whole path, then each phase alone
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
if ! command -v valgrind >/dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq valgrind
fi
bench=$(cargo bench --locked -p sluice --bench policy --no-run --message-format=json 2>/dev/null \
  | python3 -c 'import json,sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "policy" and m.get("executable"):
        print(m["executable"])')
requests=2000
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
for phases in ars a r s; do
  collected=$(POLICY_BENCH_INSTRUCTIONS=$requests POLICY_BENCH_PHASES=$phases \
    valgrind --tool=callgrind --callgrind-out-file="$out/cg.%p" --collect-atstart=no \
      '--toggle-collect=*counted_requests*' "$bench" --bench policy_path/pooled 2>&1 \
    | awk '/Collected/ {gsub(",", "", $NF); print $NF}' | sort -n | tail -1)
  case $phases in
    ars) name="auth + route + shape" ;; a) name="auth" ;; r) name="route" ;; s) name="shape" ;;
  esac
  echo "policy path instructions per request, $name: $((collected / requests))"
done
