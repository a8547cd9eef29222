#!/usr/bin/env bash
# Runs every check and test of the repository. This is the README's test command and what
# .ci/run calls. It installs what it needs (nothing beyond cargo, curl and python3 so far).
set -euo pipefail
cd "$(dirname "$0")/.."

need() { command -v "$1" >/dev/null 2>&1; }
if ! need curl || ! need python3; then
  apt-get update -qq && apt-get install -y -qq curl python3 >/dev/null
fi

echo "== format"
cargo fmt --all --check
echo "== clippy"
cargo clippy --all-targets --locked -- -D warnings
echo "== unit, contract and integration tests"
cargo test --workspace --locked
echo "== README walkthrough through the real binary"
scripts/walkthrough.sh
