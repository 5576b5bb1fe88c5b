#!/usr/bin/env bash
# Builds stapes and starts a three-member demo cluster on 127.0.0.1, 127.0.0.2 and
# 127.0.0.3 (port 8443), one state directory each under $DEMO_DIR, formed with the
# `stapes` client itself.
#
#   scripts/demo.sh        start a fresh demo; a demo that is running is stopped first,
#                          and every start wipes the previous demo's state
#   scripts/demo.sh stop   stop it: SIGTERM, then up to STOP_TIMEOUT seconds (15) for
#                          each member to exit, then SIGKILL
#
# Overrides: DEMO_DIR (/tmp/stapes-demo), PORT (8443), DEMO_ADDRESSES (the three member
# IPs), STAPES_BIN_DIR (use these binaries instead of building), STOP_TIMEOUT.
set -euo pipefail
cd "$(dirname "$0")/.."
DEMO_DIR=${DEMO_DIR:-/tmp/stapes-demo}
PORT=${PORT:-8443}
STOP_TIMEOUT=${STOP_TIMEOUT:-15}
read -r -a ADDRESSES <<<"${DEMO_ADDRESSES:-127.0.0.1 127.0.0.2 127.0.0.3}"
if [ "${#ADDRESSES[@]}" -ne 3 ]; then
    echo "DEMO_ADDRESSES must name three addresses" >&2
    exit 1
fi

# The pid of member N's stapesd, if that process is still the demo's daemon (a pid file
# can outlive its process, and the pid can be reused by something else).
member_pid() {
    local n=$1 pid
    [ -f "$DEMO_DIR/node$n/stapesd.pid" ] || return 1
    pid=$(cat "$DEMO_DIR/node$n/stapesd.pid")
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    [ -r "/proc/$pid/cmdline" ] || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF -- "stapesd --state-dir $DEMO_DIR/node$n/state" || return 1
    echo "$pid"
}

running() {
    local n
    for n in 1 2 3; do
        member_pid "$n" >/dev/null && return 0
    done
    return 1
}

# Whether process $1 has exited (a zombie waiting to be reaped counts as exited).
gone() {
    local stat
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 0
    [ "$(echo "${stat##*) }" | cut -c1)" = "Z" ]
}

stop() {
    local n pid pids=() names=() i waited
    for n in 1 2 3; do
        if pid=$(member_pid "$n"); then
            kill -TERM "$pid" 2>/dev/null || true
            pids+=("$pid")
            names+=("node$n")
        fi
        rm -f "$DEMO_DIR/node$n/stapesd.pid"
    done
    for i in "${!pids[@]}"; do
        waited=0
        while ! gone "${pids[$i]}" && [ "$waited" -lt $((STOP_TIMEOUT * 10)) ]; do
            sleep 0.1
            waited=$((waited + 1))
        done
        if gone "${pids[$i]}"; then
            echo "stopped ${names[$i]} (pid ${pids[$i]})"
            continue
        fi
        kill -KILL "${pids[$i]}" 2>/dev/null || true
        # SIGKILL is delivered asynchronously: wait (bounded) until it has taken effect.
        waited=0
        while ! gone "${pids[$i]}" && [ "$waited" -lt 100 ]; do
            sleep 0.1
            waited=$((waited + 1))
        done
        echo "${names[$i]} (pid ${pids[$i]}) did not stop within ${STOP_TIMEOUT}s of SIGTERM: killed"
    done
}

if [ "${1:-}" = "stop" ]; then
    stop
    exit 0
fi
if [ -n "${1:-}" ]; then
    echo "usage: scripts/demo.sh [stop]" >&2
    exit 2
fi

if [ -n "${STAPES_BIN_DIR:-}" ]; then
    BIN=$STAPES_BIN_DIR
else
    cargo build --release --bins
    BIN=$PWD/target/release
fi
if running; then
    echo "A demo is running: stopping it and starting a fresh one (its state is wiped)."
    stop
fi
rm -rf "$DEMO_DIR"
mkdir -p "$DEMO_DIR/client"

# `stapes` against member N's unix socket, with a configuration of its own.
stapes() {
    local n=$1
    shift
    STAPES_CONF="$DEMO_DIR/client" STAPES_SOCKET="$DEMO_DIR/node$n/state/unix.socket" "$BIN/stapes" "$@"
}

for n in 1 2 3; do
    mkdir -p "$DEMO_DIR/node$n"
    "$BIN/stapesd" --state-dir "$DEMO_DIR/node$n/state" >"$DEMO_DIR/node$n/stapesd.log" 2>&1 </dev/null &
    echo $! >"$DEMO_DIR/node$n/stapesd.pid"
done
for n in 1 2 3; do
    if ! stapes "$n" admin waitready --timeout 30 >/dev/null; then
        echo "node$n did not become ready; its log: $DEMO_DIR/node$n/stapesd.log" >&2
        stop
        exit 1
    fi
done

stapes 1 config set core.https_address "${ADDRESSES[0]}:$PORT"
stapes 1 cluster enable node1 >/dev/null
for n in 2 3; do
    token=$(stapes 1 cluster add "node$n" --quiet)
    stapes "$n" admin init --preseed >/dev/null <<YAML
cluster:
  enabled: true
  server_name: node$n
  server_address: ${ADDRESSES[$((n - 1))]}:$PORT
  cluster_token: $token
YAML
done

cat <<TXT

A three-member stapes cluster is running (a new one each time this script runs):
  node1  https://${ADDRESSES[0]}:$PORT   socket $DEMO_DIR/node1/state/unix.socket
  node2  https://${ADDRESSES[1]}:$PORT   socket $DEMO_DIR/node2/state/unix.socket
  node3  https://${ADDRESSES[2]}:$PORT   socket $DEMO_DIR/node3/state/unix.socket

With stapes (local access to node1):
  export STAPES_SOCKET=$DEMO_DIR/node1/state/unix.socket
  $BIN/stapes cluster list
  $BIN/stapes info --target node3

With the official incus client:
  INCUS_SOCKET=$DEMO_DIR/node2/state/unix.socket incus cluster list
  TOKEN=\$(INCUS_SOCKET=$DEMO_DIR/node1/state/unix.socket incus config trust add me --quiet)
  incus remote add demo "\$TOKEN" && incus cluster list demo:

Logs: $DEMO_DIR/node*/stapesd.log     Stop: scripts/demo.sh stop
TXT
