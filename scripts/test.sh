#!/usr/bin/env bash
# The one command that installs the test dependencies and runs every check and test.
set -euo pipefail
cd "$(dirname "$0")/.."
# dnsmasq and haproxy install to /usr/sbin; a node from npm to /usr/local/bin, ahead of
# Debian's.
export PATH="/usr/local/bin:$PATH:/usr/sbin:/sbin"

if ! command -v cargo >/dev/null 2>&1; then
    echo "scripts/test.sh needs a Rust toolchain, 1.90 or later (rustup: https://rustup.rs)" >&2
    exit 1
fi

bash scripts/install-test-deps.sh

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
# Dependency policy (deny.toml). Advisories are left out: their database is on GitHub.
cargo deny --locked check bans licenses sources
# Integration tests start the real binaries, so build them first.
cargo build --workspace --bins --locked

log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
cargo test --workspace --locked 2>&1 | tee "$log" || status=$?
# One closing line for the whole run: cargo prints one per test binary.
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed;?$/) p += $i; if ($(i+1) ~ /^failed;?$/) f += $i } }
     END { printf "%d passed, %d failed\n", p, f }' "$log"
# The Debian package, from the debug binaries built above.
bash scripts/test-package.sh || status=$?
exit "$status"
