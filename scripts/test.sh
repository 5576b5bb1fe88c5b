#!/usr/bin/env bash
# The one command that installs the test dependencies and runs every check and test.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-test-deps.sh

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
# Integration tests start the real binaries, so build them first.
cargo build --workspace --bins --locked
cargo test --workspace --locked
