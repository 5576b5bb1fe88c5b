#!/usr/bin/env bash
# bench-failover.sh: how long `stapes info REMOTE:` and `incus info REMOTE:` take when
# the first address of the remote is sick. A benchmark, not a test: run it by hand on
# an otherwise idle machine (as root for the blackhole mode). See docs/performance.md,
# "Failover: a sick first address".
#
# It builds stapes (release), starts a three-member stapes cluster on 127.0.0.1-3:PORT
# in a temporary directory (formed like scripts/demo.sh), trusts one client
# certificate (used by both clients: the same client.crt/key in both config dirs) and
# times N invocations per mode and client:
#
#   healthy    baseline: stapes remote = the three members; incus remote = node2
#   refuse     first candidate 127.0.0.1:PORT+1, where nothing listens
#   blackhole  first candidate 127.0.0.4:PORT, whose SYNs are dropped by an nftables
#              rule in a table this script creates and deletes (needs root and nft;
#              skipped otherwise)
#   hang       first candidate node1 (127.0.0.1:PORT) stopped with SIGSTOP
#              (SIGCONT after the mode)
#
# stapes' remote is "sick,node1,node2,node3" (in hang mode "node1,node2,node3" with
# node1 the sick one). Its remembered state (remote-state/) is removed before every
# "stapes" run, so each run faces the sick address first; "stapes-mem" runs keep it
# (the realistic second and later runs). Incus 6.0 has one address per remote, so
# incus gets the sick address as its URL, each run bounded by `timeout INCUS_TIMEOUT`.
#
# Per mode and client it prints p50, p99 (nearest rank; with N=20 the p99 is the
# maximum), failures, and PASS/MISS for the target: stapes p99 < 0.5 s and zero
# failures in every sick mode.
#
# Environment (all optional):
#   N=20               invocations per mode and client
#   N_INCUS=$N         invocations of incus per mode (its sick runs take seconds each)
#   MODES="healthy refuse blackhole hang"
#   PORT=8453          the members' https port on 127.0.0.1-3 (loopback only)
#   INCUS_TIMEOUT=30   bound on one incus invocation (seconds)
#   SKIP_BUILD=1       don't build; use $CARGO_TARGET_DIR/release or target/release
#   KEEP_DIR=1         keep the temporary directory (logs, raw timings)
#   STRICT=1           exit 1 if a target is missed
set -euo pipefail
export LC_ALL=C

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
N=${N:-20}
N_INCUS=${N_INCUS:-$N}
MODES=${MODES:-healthy refuse blackhole hang}
PORT=${PORT:-8453}
INCUS_TIMEOUT=${INCUS_TIMEOUT:-30}
SKIP_BUILD=${SKIP_BUILD:-0}
KEEP_DIR=${KEEP_DIR:-0}
STRICT=${STRICT:-0}
NFT_TABLE=stapes_bench_failover
READY_TIMEOUT=30 # seconds, for a member to answer / the cluster to converge

die() { echo "bench-failover: $*" >&2; exit 1; }
now_ns() { date +%s%N; }

for t in curl python3 openssl timeout awk; do
  command -v "$t" >/dev/null || die "$t is needed"
done
INCUS=$(command -v incus || true)
[[ -n $INCUS ]] || echo "bench-failover: no incus client; only stapes is measured" >&2

TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
if [[ $SKIP_BUILD != 1 ]]; then
  (cd "$ROOT" && cargo build --release --bins) || die "build failed"
fi
BIN=$TARGET/release
[[ -x $BIN/stapesd && -x $BIN/stapes ]] || die "no binaries in $BIN"

DIR=$(mktemp -d /tmp/stapes-bench-failover.XXXXXX)
PIDS=()
STOPPED=""
NFT_ADDED=0

cleanup() {
  local pid i
  if [[ $NFT_ADDED == 1 ]]; then
    nft delete table inet "$NFT_TABLE" 2>/dev/null || true
    NFT_ADDED=0
  fi
  if [[ -n $STOPPED ]]; then kill -CONT "$STOPPED" 2>/dev/null || true; STOPPED=""; fi
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do
    for ((i = 0; i < 100; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  done
  if [[ $KEEP_DIR == 1 ]]; then echo "kept $DIR"; else rm -rf "$DIR"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

for a in 127.0.0.1 127.0.0.2 127.0.0.3 127.0.0.4; do
  for p in "$PORT" $((PORT + 1)); do
    if (exec 3<>"/dev/tcp/$a/$p") 2>/dev/null; then die "$a:$p is in use; pick another PORT"; fi
  done
done

api() {
  local n=$1 method=$2 path=$3 body=${4:-}
  curl -sS --max-time 10 --fail-with-body --unix-socket "$DIR/node$n/state/unix.socket" \
    -X "$method" "http://stapes$path" ${body:+-H 'Content-Type: application/json' -d "$body"}
}

# --- the cluster (as scripts/demo.sh) ------------------------------------------------
for n in 1 2 3; do
  mkdir -p "$DIR/node$n"
  "$BIN/stapesd" --state-dir "$DIR/node$n/state" >"$DIR/node$n/stapesd.log" 2>&1 </dev/null &
  PIDS+=($!)
done
for n in 1 2 3; do
  ok=0
  for ((i = 0; i < READY_TIMEOUT * 20; i++)); do
    if api "$n" GET /internal/ready >/dev/null 2>&1; then ok=1; break; fi
    sleep 0.05
  done
  [[ $ok == 1 ]] || die "node$n not ready; see $DIR/node$n/stapesd.log"
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

# --- one client certificate, trusted, in both config dirs ----------------------------
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:secp384r1 -sha384 -nodes \
  -keyout "$DIR/client.key" -out "$DIR/client.crt" -days 30 -subj /CN=stapes-bench-failover 2>/dev/null
body=$(python3 -c 'import json,sys; print(json.dumps({"type":"client","name":"bench-failover","certificate":open(sys.argv[1]).read()}))' "$DIR/client.crt")
api 1 POST /1.0/certificates "$body" >/dev/null || die "POST /1.0/certificates failed"

SCONF=$DIR/stapes-conf
ICONF=$DIR/incus-conf
for d in "$SCONF" "$ICONF"; do
  mkdir -p "$d/servercerts"
  cp "$DIR/client.crt" "$DIR/client.key" "$d/"
  chmod 600 "$d/client.key"
done
# The cluster certificate (the same on every member), pinned by both clients.
openssl s_client -connect "127.0.0.2:$PORT" -servername 127.0.0.2 </dev/null 2>/dev/null |
  openssl x509 -outform PEM >"$DIR/server.crt" || die "could not read the server certificate"
cp "$DIR/server.crt" "$SCONF/servercerts/c.crt"
cp "$DIR/server.crt" "$ICONF/servercerts/c.crt"

NODES="https://127.0.0.1:$PORT,https://127.0.0.2:$PORT,https://127.0.0.3:$PORT"
# set_remote CONF ADDRS: write CONF/config.yml with remote "c" at ADDRS (comma-separated).
set_remote() {
  cat >"$1/config.yml" <<YML
default-remote: local
remotes:
  c:
    addr: $2
    auth_type: tls
    project: default
    protocol: incus
    public: false
YML
  rm -rf "$1/remote-state"
}

run_stapes() { STAPES_CONF=$SCONF HOME=$SCONF timeout 60 "$BIN/stapes" info c: >/dev/null 2>>"$DIR/stapes.err"; }
run_incus() { INCUS_CONF=$ICONF HOME=$ICONF timeout "$INCUS_TIMEOUT" "$INCUS" info c: >/dev/null 2>>"$DIR/incus.err"; }

# Every member must know the client before we measure: each member answers stapes
# through a single-address remote.
for n in 1 2 3; do
  set_remote "$SCONF" "https://127.0.0.$n:$PORT"
  ok=0
  for ((i = 0; i < READY_TIMEOUT * 5; i++)); do
    if run_stapes; then ok=1; break; fi
    sleep 0.2
  done
  [[ $ok == 1 ]] || die "node$n does not trust the client; see $DIR/stapes.err"
done
: >"$DIR/stapes.err"

# measure MODE CLIENT COUNT CLEAR: COUNT timed runs of CLIENT; one line per run
# ("seconds rc") in $DIR/MODE.CLIENT.
measure() {
  local mode=$1 client=$2 count=$3 clear=$4 i t0 t1 rc out=$DIR/$1.$2
  : >"$out"
  for ((i = 0; i < count; i++)); do
    [[ $clear == 1 ]] && rm -rf "$SCONF/remote-state"
    t0=$(now_ns)
    rc=0
    case $client in
      incus) run_incus || rc=$? ;;
      *) run_stapes || rc=$? ;;
    esac
    t1=$(now_ns)
    echo "$(( (t1 - t0) / 1000 )) $rc" | awk '{printf "%.4f %d\n", $1 / 1e6, $2}' >>"$out"
  done
}

RESULTS=()
MISSES=0
# report MODE CLIENT: the summary line (p50, p99 nearest rank, failures, target).
report() {
  local mode=$1 client=$2 f=$DIR/$1.$2 line verdict=""
  [[ -s $f ]] || return 0
  line=$(sort -n -k1,1 "$f" | awk '
    { t[NR] = $1; if ($2 != 0) fail++ }
    END {
      n = NR; i50 = int((50 * n + 99) / 100); i99 = int((99 * n + 99) / 100)
      if (i50 < 1) i50 = 1; if (i99 < 1) i99 = 1
      printf "n=%-3d p50=%7.3f s  p99=%7.3f s  max=%7.3f s  failures=%d", n, t[i50], t[i99], t[n], fail + 0
    }')
  if [[ $client == stapes ]]; then
    local p99 fails
    p99=$(echo "$line" | sed -E 's/.*p99= *([0-9.]+).*/\1/')
    fails=$(echo "$line" | sed -E 's/.*failures=([0-9]+).*/\1/')
    if awk -v p="$p99" -v f="$fails" 'BEGIN { exit !(p < 0.5 && f == 0) }'; then
      verdict="PASS (p99 < 0.5 s, 0 failures)"
    else
      verdict="MISS (p99 < 0.5 s, 0 failures)"
      [[ $mode == healthy ]] || MISSES=$((MISSES + 1))
    fi
  fi
  RESULTS+=("$(printf '%-9s %-10s %s  %s' "$mode" "$client" "$line" "$verdict")")
  echo "${RESULTS[-1]}"
}

run_mode() {
  local mode=$1 sick=$2
  set_remote "$SCONF" "$sick${3:+,$3}"
  measure "$mode" stapes "$N" 1
  report "$mode" stapes
  set_remote "$SCONF" "$sick${3:+,$3}"
  measure "$mode" stapes-mem "$N" 0
  report "$mode" stapes-mem
  if [[ -n $INCUS ]]; then
    set_remote "$ICONF" "$sick"
    measure "$mode" incus "$N_INCUS" 0
    report "$mode" incus
  fi
}

echo "stapes $("$BIN/stapes" --version 2>/dev/null || echo '?'), $("$INCUS" version 2>/dev/null | head -1 || true)"
echo "N=$N N_INCUS=$N_INCUS PORT=$PORT, $(nproc) CPUs, $(uname -r)"
for mode in $MODES; do
  case $mode in
    healthy)
      # stapes: the three members; incus: node2 (a healthy one).
      set_remote "$SCONF" "$NODES"
      measure healthy stapes "$N" 1; report healthy stapes
      measure healthy stapes-mem "$N" 0; report healthy stapes-mem
      if [[ -n $INCUS ]]; then
        set_remote "$ICONF" "https://127.0.0.2:$PORT"
        measure healthy incus "$N_INCUS" 0; report healthy incus
      fi
      ;;
    refuse)
      run_mode refuse "https://127.0.0.1:$((PORT + 1))" "$NODES"
      ;;
    blackhole)
      if [[ $(id -u) != 0 ]] || ! command -v nft >/dev/null; then
        echo "blackhole: skipped (needs root and nft)"
        continue
      fi
      NFT_ADDED=1
      nft add table inet "$NFT_TABLE"
      nft add chain inet "$NFT_TABLE" out '{ type filter hook output priority 0; policy accept; }'
      nft add rule inet "$NFT_TABLE" out ip daddr 127.0.0.4 tcp dport "$PORT" drop
      run_mode blackhole "https://127.0.0.4:$PORT" "$NODES"
      nft delete table inet "$NFT_TABLE"
      NFT_ADDED=0
      ;;
    hang)
      STOPPED=${PIDS[0]}
      kill -STOP "$STOPPED"
      run_mode hang "https://127.0.0.1:$PORT" "https://127.0.0.2:$PORT,https://127.0.0.3:$PORT"
      kill -CONT "$STOPPED"
      STOPPED=""
      ;;
    *) die "unknown mode $mode" ;;
  esac
done

echo
echo "summary (stapes: remote-state cleared before each run; stapes-mem: kept)"
printf '%s\n' "${RESULTS[@]}"
if ((MISSES == 0)); then echo "TARGET: PASS (stapes p99 < 0.5 s, 0 failures, every sick mode)"; else echo "TARGET: MISS ($MISSES sick-mode stapes rows)"; fi
if [[ $STRICT == 1 ]] && ((MISSES > 0)); then exit 1; fi
exit 0
