#!/usr/bin/env bash
# bench-failover.sh: how long `stapes info REMOTE:` and `incus info REMOTE:` take when
# the first address of the remote is sick. A benchmark, not a test: run it by hand on
# an otherwise idle machine (as root for the blackhole mode). See docs/performance.md,
# "Failover: a sick first address".
#
# This script builds stapesd, stapes and the benchmark (release) and runs
# `stapes-bench failover`, which starts a three-member stapes cluster on
# 127.0.0.1-3:PORT in a temporary directory, trusts one client certificate (used by
# both clients) and times N invocations per mode and client:
#
#   healthy    baseline: stapes remote = the three members; incus remote = node2
#   refuse     first candidate 127.0.0.1:PORT+1, where nothing listens
#   blackhole  first candidate 127.0.0.4:PORT, whose SYNs are dropped by an nftables
#              rule in a table of its own, deleted afterwards (needs root and nft;
#              skipped otherwise)
#   hang       first candidate node1 (127.0.0.1:PORT) stopped with SIGSTOP
#              (SIGCONT after the mode)
#
# Per mode and client it prints p50, p99 (nearest rank; with N=20 the p99 is the
# maximum), failures, and PASS/MISS for the target: stapes p99 < 0.5 s and zero
# failures in every sick mode. The incus client is used if installed.
#
# Environment (all optional):
#   N=20               invocations per mode and client
#   N_INCUS=$N         invocations of incus per mode (its sick runs take seconds each)
#   MODES="healthy refuse blackhole hang"
#   PORT=8453          the members' https port on 127.0.0.1-3 (loopback only)
#   INCUS_TIMEOUT=30   bound on one incus invocation (seconds)
#   SKIP_BUILD=1       build nothing; use $CARGO_TARGET_DIR/release or target/release
#   KEEP_DIR=1         keep the temporary directory (logs)
#   RESULTS_DIR=dir    keep the logs and summary.txt there
#   STRICT=1           exit 1 if a target is missed
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
[[ $TARGET == /* ]] || TARGET=$ROOT/$TARGET
if [[ ${SKIP_BUILD:-0} != 1 ]]; then
  (cd "$ROOT" && cargo build --release --locked -p stapesd -p stapes -p stapes-bench)
fi
BENCH=$TARGET/release/stapes-bench
[[ -x $BENCH ]] || { echo "bench-failover: $BENCH not found" >&2; exit 1; }
exec "$BENCH" failover "$@"
