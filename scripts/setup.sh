#!/usr/bin/env bash
# Installs what building and testing Sluice needs beyond rustup's toolchain:
# the wasm32-wasip2 target (RUSTUP_AUTO_INSTALL=0 machines do not add it from
# rust-toolchain.toml) and, with --python, what the suite runs in Python: the
# official openai and anthropic SDKs, componentize-py to build the Python plugins,
# and Node.js with npm to build the JavaScript ones.
set -euo pipefail
cd "$(dirname "$0")/.."
toolchain=$(sed -n 's/^channel *= *"\(.*\)"/\1/p' rust-toolchain.toml)
if ! rustup toolchain list | grep -q "^${toolchain}"; then
  rustup toolchain install "$toolchain" --profile minimal --component rustfmt,clippy
fi
if ! rustup target list --installed --toolchain "$toolchain" | grep -qx wasm32-wasip2; then
  rustup target add wasm32-wasip2 --toolchain "$toolchain"
fi
if [ "${1:-}" = "--python" ]; then
  python3 -c 'import openai' 2>/dev/null ||
    python3 -m pip install --quiet --disable-pip-version-check openai
  python3 -c 'import anthropic' 2>/dev/null ||
    python3 -m pip install --quiet --disable-pip-version-check anthropic
  python3 -c 'import componentize_py' 2>/dev/null ||
    python3 -m pip install --quiet --disable-pip-version-check componentize-py==0.25.1
  # The plugin projects' READMEs call `componentize-py` by name: under pyenv a
  # script installed through `python3 -m pip` needs its shim made.
  command -v componentize-py >/dev/null || { command -v pyenv >/dev/null && pyenv rehash; }
  command -v componentize-py >/dev/null ||
    { echo "componentize-py is installed but not on PATH" >&2; exit 1; }
  # JavaScript plugins build with componentize-js from the npm registry.
  command -v npm >/dev/null || {
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm
  }
fi
