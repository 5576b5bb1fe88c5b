#!/usr/bin/env bash
# bench.sh: stapesd, the real Incus daemon and a minimal hyper+rustls server (the
# ceiling), side by side on loopback. A benchmark, not a test: run it by hand, as root,
# on an otherwise idle machine. See docs/performance.md.
#
# This script installs what is missing (oha, Incus from bookworm-backports), builds
# stapesd and the benchmark (crates/bench) in release mode, and runs `stapes-bench`,
# which does everything else: it starts the daemons, trusts one client certificate on
# each, measures every case with oha in interleaved rounds, and prints medians, ratios,
# RSS, start-up and cluster figures, and the targets as PASS/MISS lines.
#
# usage: scripts/bench.sh                 (as root)
#        MODE=cluster scripts/bench.sh    three-member clusters, side by side
#        MODE=cluster CASES="import256 import2g" CEILING=0 scripts/bench.sh
#                                          image import through node1, both sides
#        MODE=cluster CASES="launch list" CEILING=0 scripts/bench.sh
#                                          real containers on both clusters: launch,
#                                          stop/start, delete through node1 onto node2;
#                                          incus list of 100 running + 300 stopped
#        MODE=cluster CASES="exec exec_cat file" CEILING=0 scripts/bench.sh
#                                          incus exec and file push/pull through
#                                          node1, c1 on node2
#        MODE=cluster CASES="move evacuate" CEILING=0 scripts/bench.sh
#                                          through node1: incus move of a stopped
#                                          container with 500 MiB of payload node2 ->
#                                          node3 -> node2; incus cluster evacuate and
#                                          restore of node2 holding 20 running
#                                          containers
#        scripts/bench.sh --help          every setting of stapes-bench
#
# Environment (all optional; stapes-bench --help lists them with their flags):
#   DURATION=8         seconds per oha run
#   ROUNDS=3           interleaved rounds; every figure is the median over them
#   STARTS=3           restarts per daemon for start-to-ready (single mode)
#   FORMS=1            cluster formations per side (cluster mode)
#   CASES="tls unix"   load cases, in order (also: tls_handshake);
#                      MODE=cluster: "members fwd direct unix" by default;
#                      image imports through the first member, either mode:
#                      import256, import2g (256 MiB, 2 GiB; made in the temp dir);
#                      MODE=cluster only, real LXC containers from a busybox image
#                      (busybox-static): launch (launch/stop/start/delete on node2
#                      through node1), list (incus list and RSS per member),
#                      restart (node2 killed -9 and started; until it serves an
#                      instance as Running again),
#                      exec (incus exec c1 -- true, p50 of 50), exec_cat (1 GiB
#                      through cat in c1 and back), file (incus file push and pull
#                      of 1 GiB); c1 is a busybox container on node2, reached through
#                      node1;
#                      move (incus move of a stopped container holding 500 MiB of
#                      random bytes, node2 -> node3 -> node2: MB/s), evacuate
#                      (incus cluster evacuate node2 --action migrate with 20
#                      running containers, then incus cluster restore node2)
#   LIST_RUNNING=100 LIST_STOPPED=300
#                      instances made for the list case (running, created only)
#   RESTART_RUNNING=30 running instances on node2 for the restart case
#   MODE=single        single (one standalone daemon per side) or cluster
#   CLUSTER_STAPES_PORT=8444  CLUSTER_INCUS_PORT=8443  CLUSTER_CEILING_PORT=8445
#                      (cluster mode, on 127.0.0.1-3)
#   STAPES_HTTPS=127.0.0.1:8443  INCUS_HTTPS=127.0.0.2:8443  CEILING_HTTPS=127.0.0.3:8443
#                      (single mode; loopback only)
#   CEILING=1          0 leaves the ceiling out
#   STAPESD=path       use this stapesd binary (then only the benchmark is built)
#   STAPESD_ARGS="..." extra stapesd arguments, e.g. "--log-level warn"
#   LISTENERS=0        event listeners (every type, unix socket) held on stapesd and
#                      incusd during the load (single mode; at most 256)
#   INCUSD=path        incusd binary (default /usr/libexec/incus/incusd)
#   OHA=path           oha binary (default: PATH, then ~/.cargo/bin/oha)
#   RESULTS_DIR=dir    keep raw oha JSON, logs and summary.txt there
#   KEEP_DIR=1         keep the temporary directory (state dirs, daemon logs)
#   STRICT=1           exit 1 if any target is missed
#   SKIP_BUILD=1       build nothing (target/release/stapes-bench must exist)
#   SKIP_INSTALL=1     install nothing
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SKIP_BUILD=${SKIP_BUILD:-0}
SKIP_INSTALL=${SKIP_INSTALL:-0}
INCUSD=${INCUSD:-/usr/libexec/incus/incusd}
export PATH="$PATH:${CARGO_HOME:-$HOME/.cargo}/bin"

log() { printf '[bench %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() {
  log "error: $*"
  exit 1
}

ensure_backports() {
  if grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then return 0; fi
  local src=/etc/apt/sources.list.d/debian.sources uris signed
  uris=$(awk '/^URIs:/{print $2; exit}' "$src" 2>/dev/null || true)
  signed=$(awk '/^Signed-By:/{print $2; exit}' "$src" 2>/dev/null || true)
  log "adding /etc/apt/sources.list.d/backports.sources"
  cat >/etc/apt/sources.list.d/backports.sources <<EOF
Types: deb
URIs: ${uris:-http://deb.debian.org/debian}
Suites: bookworm-backports
Components: main
Signed-By: ${signed:-/usr/share/keyrings/debian-archive-keyring.gpg}
EOF
}

ensure_tools() {
  # oha first: it takes minutes to build.
  if [[ -z ${OHA:-} ]] && ! command -v oha >/dev/null; then
    log "installing oha (cargo install oha --locked; this takes a few minutes)"
    cargo install oha --locked
  fi
  if [[ ! -x $INCUSD ]] || ! command -v incus >/dev/null; then
    # shellcheck disable=SC1091
    if [[ $(. /etc/os-release && echo "${VERSION_CODENAME:-}") != bookworm ]]; then
      die "Incus is missing and this is not Debian bookworm: install incus and incus-client, or set INCUSD"
    fi
    ensure_backports
    apt-get update
    apt-get install -y -t bookworm-backports incus incus-client
  fi
}

case " $* " in
  *" --help "* | *" -h "*) SKIP_INSTALL=1 ;;
esac
if [[ $SKIP_INSTALL != 1 ]]; then ensure_tools; fi

TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
[[ $TARGET == /* ]] || TARGET=$ROOT/$TARGET
if [[ $SKIP_BUILD != 1 ]]; then
  packages=(-p stapes-bench)
  [[ -n ${STAPESD:-} ]] || packages+=(-p stapesd)
  log "building ${packages[*]} (release)"
  (cd "$ROOT" && cargo build --release --locked "${packages[@]}")
fi
BENCH=$TARGET/release/stapes-bench
[[ -x $BENCH ]] || die "$BENCH not found (cargo build --release -p stapes-bench)"
exec "$BENCH" "$@"
