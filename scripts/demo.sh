#!/usr/bin/env bash
# Builds stapes and starts a three-member demo cluster on 127.0.0.1, 127.0.0.2 and
# 127.0.0.3 (port 8443), one state directory each under $DEMO_DIR. Stop it with
# `scripts/demo.sh stop`.
set -euo pipefail
cd "$(dirname "$0")/.."
DEMO_DIR=${DEMO_DIR:-/tmp/stapes-demo}
PORT=${PORT:-8443}

stop() {
    for pidfile in "$DEMO_DIR"/node*/stapesd.pid; do
        [ -f "$pidfile" ] || continue
        pid=$(cat "$pidfile")
        kill "$pid" 2>/dev/null && echo "stopped member (pid $pid)"
        rm -f "$pidfile"
    done
}

if [ "${1:-}" = "stop" ]; then
    stop
    exit 0
fi

cargo build --release --bins
BIN=$PWD/target/release
stop
rm -rf "$DEMO_DIR"
mkdir -p "$DEMO_DIR"

# Talks to a member's unix socket with curl; prints the response body.
api() {
    local n=$1 method=$2 path=$3 body=${4:-}
    curl -sS --fail-with-body --unix-socket "$DEMO_DIR/node$n/state/unix.socket" \
        -X "$method" "http://stapes$path" ${body:+-H 'Content-Type: application/json' -d "$body"}
}

for n in 1 2 3; do
    mkdir -p "$DEMO_DIR/node$n"
    "$BIN/stapesd" --state-dir "$DEMO_DIR/node$n/state" >"$DEMO_DIR/node$n/stapesd.log" 2>&1 &
    echo $! >"$DEMO_DIR/node$n/stapesd.pid"
done
for n in 1 2 3; do
    for _ in $(seq 1 100); do
        api "$n" GET /internal/ready >/dev/null 2>&1 && break
        sleep 0.05
    done
done

api 1 PATCH /1.0 "{\"config\":{\"core.https_address\":\"127.0.0.1:$PORT\"}}" >/dev/null
api 1 PUT /1.0/cluster '{"server_name":"node1","enabled":true}' >/dev/null
for n in 2 3; do
    token=$(api 1 POST /1.0/cluster/members "{\"server_name\":\"node$n\"}" | python3 -c '
import base64, json, sys
m = json.load(sys.stdin)["metadata"]["metadata"]
t = {"server_name": m["serverName"], "fingerprint": m["fingerprint"], "addresses": m["addresses"],
     "secret": m["secret"], "expires_at": m.get("expiresAt", "0001-01-01T00:00:00Z")}
print(base64.b64encode(json.dumps(t).encode()).decode())')
    api "$n" PUT /1.0/cluster "{\"server_name\":\"node$n\",\"enabled\":true,\"server_address\":\"127.0.0.$n:$PORT\",\"cluster_token\":\"$token\"}" >/dev/null
done

cat <<TXT

A three-member stapes cluster is running:
  node1  https://127.0.0.1:$PORT   socket $DEMO_DIR/node1/state/unix.socket
  node2  https://127.0.0.2:$PORT   socket $DEMO_DIR/node2/state/unix.socket
  node3  https://127.0.0.3:$PORT   socket $DEMO_DIR/node3/state/unix.socket

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
