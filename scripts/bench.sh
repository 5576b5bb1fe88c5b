#!/usr/bin/env bash
# bench.sh: stapesd against the real Incus daemon, side by side on loopback.
#
# A benchmark, not a test: run it by hand, as root, on an otherwise idle machine.
# It installs what it lacks (Incus from bookworm-backports, oha, jq, curl, openssl),
# builds stapesd in release mode, starts one standalone stapesd and one standalone
# incusd in a temporary directory, trusts one client certificate on both, then
# measures each case with oha in interleaved rounds and prints medians, RSS,
# start-to-ready times and the targets as PASS/MISS lines. See docs/performance.md.
#
# usage: scripts/bench.sh                 (as root)
#        MODE=cluster scripts/bench.sh    three-member clusters, side by side
#
# MODE=cluster starts a 3-member stapes cluster (127.0.0.1-3, CLUSTER_STAPES_PORT)
# and a 3-member Incus cluster (127.0.0.1-3, CLUSTER_INCUS_PORT), formed over the
# unix sockets (stapes: PATCH /1.0 + PUT /1.0/cluster + join tokens, as in
# scripts/demo.sh; Incus: incus admin init --preseed, as in the lab recipe), and
# measures formation and join time, RSS per member, the members list and
# ?target= forwarding through node1 over TLS, and leader-loss recovery.
#
# Environment (all optional):
#   DURATION=8         seconds per oha run
#   ROUNDS=3           interleaved rounds; every figure is the median over them
#   STARTS=3           restarts per daemon for start-to-ready
#   FORMS=1            MODE=cluster: cluster formations per side (each from empty
#                      state dirs); formation, join and RSS are medians over them
#   CASES="tls unix"   which load cases to run, in order (also: tls_handshake)
#                      MODE=cluster: CASES="members fwd direct" (the default there)
#   MODE=single        single (one standalone daemon each) or cluster
#   CLUSTER_STAPES_PORT=8444  CLUSTER_INCUS_PORT=8443   (MODE=cluster, on 127.0.0.1-3)
#   STAPESD=path       use this stapesd binary (then SKIP_BUILD defaults to 1)
#   STAPESD_ARGS="..." extra stapesd arguments, e.g. "--log-level warn"
#   SKIP_BUILD=1       don't run cargo build (uses $CARGO_TARGET_DIR or target/)
#   SKIP_INSTALL=1     don't install anything
#   INCUSD=path        incusd binary (default /usr/libexec/incus/incusd)
#   OHA=path           oha binary (default: PATH, then ~/.cargo/bin/oha)
#   STAPES_HTTPS=127.0.0.1:8443  INCUS_HTTPS=127.0.0.2:8443   (loopback only)
#   RESULTS_DIR=dir    keep raw oha JSON, logs and summary.txt there
#   KEEP_DIR=1         keep the temporary directory (state dirs, daemon logs)
#   STRICT=1           exit 1 if any target is missed
#
# Adding a case: write `case_NAME SIDE CONC OUT` (run oha once against SIDE,
# stapes or incus, at concurrency CONC, JSON to OUT), register it in
# register_cases with `add_case NAME "label" CONC...`, and list NAME in CASES.
# Targets are lines in check_targets. Each side is described by the arrays
# SOCK/HTTPS/PID and started by start_SIDE; a multi-member side (cluster, with
# ?target= forwarding) adds its own start function and case functions.
set -euo pipefail
export LC_ALL=C

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

DURATION=${DURATION:-8}
ROUNDS=${ROUNDS:-3}
STARTS=${STARTS:-3}
FORMS=${FORMS:-1}
MODE=${MODE:-single}
if [[ $MODE == cluster ]]; then CASES=${CASES:-members fwd direct}; else CASES=${CASES:-tls unix}; fi
CLUSTER_STAPES_PORT=${CLUSTER_STAPES_PORT:-8444}
CLUSTER_INCUS_PORT=${CLUSTER_INCUS_PORT:-8443}
STAPESD=${STAPESD:-}
STAPESD_ARGS=${STAPESD_ARGS:-}
if [[ -n $STAPESD ]]; then SKIP_BUILD=${SKIP_BUILD:-1}; else SKIP_BUILD=${SKIP_BUILD:-0}; fi
SKIP_INSTALL=${SKIP_INSTALL:-0}
INCUSD=${INCUSD:-/usr/libexec/incus/incusd}
OHA=${OHA:-}
STAPES_HTTPS=${STAPES_HTTPS:-127.0.0.1:8443}
INCUS_HTTPS=${INCUS_HTTPS:-127.0.0.2:8443}
RESULTS_DIR=${RESULTS_DIR:-}
KEEP_DIR=${KEEP_DIR:-0}
STRICT=${STRICT:-0}
READY_TIMEOUT=30 # seconds, for a daemon to answer after start
STOP_TIMEOUT=30  # seconds, after TERM before KILL
JOIN_TIMEOUT=60  # seconds, for one bootstrap or join call (cluster mode)
RECOVER_TIMEOUT=60 # seconds, for a write to succeed after the leader is killed

SIDES=(stapes incus)
declare -A PID=() EXE=() SOCK=() HTTPS=() M=()
DIR=""
OUT=""
READY_MS=""
BUSY_BEFORE=""
CERT_B64=""
TLS_CURL=()
TLS_ARGS=()
OHA_FMT=()

log() { printf '[bench %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() {
  log "error: $*"
  exit 1
}

# ---- process bookkeeping ---------------------------------------------------

# is_alive PID: the process exists and is not a zombie.
is_alive() {
  local st
  st=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  st=${st##*) }
  [[ ${st%% *} != Z ]]
}

# is_ours SIDE: PID[SIDE] is still the process this script started for SIDE:
# a child of this shell and, once it has answered, still the same executable.
is_ours() {
  local pid=${PID[$1]:-} ppid exe
  [[ -n $pid ]] || return 1
  ppid=$(awk '/^PPid:/{print $2}' "/proc/$pid/status" 2>/dev/null) || return 1
  [[ $ppid == "$$" ]] || return 1
  [[ -z ${EXE[$1]:-} ]] && return 0
  exe=$(readlink -f "/proc/$pid/exe" 2>/dev/null) || return 1
  [[ $exe == "${EXE[$1]}" ]]
}

# spawn SIDE LOG [VAR=VALUE...] -- EXE ARGS...: start a daemon in its own
# session (so ^C reaches only this script, which then stops it by PID).
spawn() {
  local side=$1 log=$2
  shift 2
  local envs=()
  while [[ $1 != -- ]]; do
    envs+=("$1")
    shift
  done
  shift
  unset 'EXE[$side]'
  setsid env "${envs[@]}" "$@" >>"$log" 2>&1 </dev/null &
  PID[$side]=$!
}

# stop_daemon SIDE: TERM, wait (bounded), KILL if needed; only our own PID.
stop_daemon() {
  local side=$1 pid=${PID[$1]:-} i
  [[ -n $pid ]] || return 0
  if is_ours "$side"; then
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < STOP_TIMEOUT * 20; i++)); do
      is_alive "$pid" || break
      sleep 0.05
    done
    if is_alive "$pid"; then
      log "$side (pid $pid) still running after ${STOP_TIMEOUT}s, sending KILL"
      kill -KILL "$pid" 2>/dev/null || true
    fi
  fi
  wait "$pid" 2>/dev/null || true
  unset 'PID[$side]'
}

unmount_under() {
  local m
  awk -v d="$1/" 'index($2, d) == 1 {print $2}' /proc/mounts | sort -r | while read -r m; do
    umount -l "$m" 2>/dev/null || true
  done
}

cleanup() {
  local rc=$? side f
  trap - EXIT INT TERM
  for side in "${!PID[@]}"; do stop_daemon "$side"; done
  if [[ -n $DIR && -d $DIR ]]; then
    if [[ $rc != 0 && $KEEP_DIR != 1 ]]; then
      for f in "$DIR"/logs/*; do
        [[ -s $f ]] || continue
        log "last lines of ${f##*/}:"
        tail -n 15 "$f" >&2
      done
    fi
    unmount_under "$DIR"
    if [[ $KEEP_DIR == 1 ]]; then
      log "kept $DIR"
    else
      rm -rf -- "$DIR"
    fi
  fi
  exit "$rc"
}

# ---- small helpers ---------------------------------------------------------

now_us() { echo "${EPOCHREALTIME/[.,]/}"; }

# median of the numbers on stdin (mean of the middle two for an even count)
median() {
  sort -g | awk '{v[NR] = $1} END {
    if (NR == 0) { print "nan"; exit }
    if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

# ratio A B -> A/B with 2 decimals, "n/a" if B is 0 or not a number
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b + 0 > 0) printf "%.2f", a / b; else printf "n/a" }'; }

# cpu_busy SECS: percent of the whole machine's CPU time that was not idle over SECS
cpu_busy() {
  local a b
  a=$(awk '/^cpu /{print $2 + $3 + $4 + $7 + $8 + $9, $5 + $6}' /proc/stat)
  sleep "$1"
  b=$(awk '/^cpu /{print $2 + $3 + $4 + $7 + $8 + $9, $5 + $6}' /proc/stat)
  awk -v a="$a" -v b="$b" 'BEGIN { split(a, x, " "); split(b, y, " ")
    busy = y[1] - x[1]; all = busy + y[2] - x[2]; v = all > 0 ? 100 * busy / all : 0; printf "%.0f", v }'
}

is_loopback() {
  local host=${1%:*}
  [[ ${1##*:} =~ ^[0-9]+$ ]] && [[ $host == 127.* || $host == "[::1]" ]]
}

port_busy() {
  local host=${1%:*} port=${1##*:}
  host=${host#[}
  host=${host%]}
  # shellcheck disable=SC2016 # expanded by the inner bash
  timeout 1 bash -c 'exec 3<>"/dev/tcp/$0/$1"' "$host" "$port" 2>/dev/null
}

# api SIDE METHOD PATH [BODY]: one request over SIDE's unix socket; body to
# $DIR/resp.json, prints the HTTP status.
api() {
  local args=(-sS --max-time 10 --unix-socket "${SOCK[$1]}" -X "$2" -o "$DIR/resp.json" -w '%{http_code}')
  if [[ $# -ge 4 ]]; then args+=(-H 'Content-Type: application/json' --data-binary "$4"); fi
  curl "${args[@]}" "http://x$3" || true
}

# ---- dependencies and build ------------------------------------------------

find_oha() {
  if [[ -n $OHA ]]; then
    [[ -x $OHA ]]
    return
  fi
  OHA=$(command -v oha || true)
  [[ -n $OHA ]] && return 0
  OHA=${CARGO_HOME:-$HOME/.cargo}/bin/oha
  [[ -x $OHA ]] || {
    OHA=""
    return 1
  }
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
  export PATH="$PATH:${CARGO_HOME:-$HOME/.cargo}/bin"
  if [[ $SKIP_INSTALL == 1 ]]; then return 0; fi
  # oha first: it takes minutes to build.
  if ! find_oha; then
    log "installing oha (cargo install oha --locked; this takes a few minutes)"
    cargo install oha --locked
  fi
  local pkgs=() t
  for t in jq curl openssl; do
    if ! command -v "$t" >/dev/null; then pkgs+=("$t"); fi
  done
  if [[ ! -x $INCUSD ]] || ! command -v incus >/dev/null; then
    # shellcheck disable=SC1091
    if [[ $(. /etc/os-release && echo "${VERSION_CODENAME:-}") != bookworm ]]; then
      die "Incus is missing and this is not Debian bookworm: install incus and incus-client, or set INCUSD"
    fi
    ensure_backports
    apt-get update
    apt-get install -y -t bookworm-backports incus incus-client
  fi
  if [[ ${#pkgs[@]} -gt 0 ]]; then
    apt-get update
    apt-get install -y "${pkgs[@]}"
  fi
}

check_tools() {
  local t
  for t in jq curl openssl setsid timeout awk; do
    command -v "$t" >/dev/null || die "$t not found"
  done
  [[ -x $INCUSD ]] || die "incusd not found at $INCUSD"
  find_oha || die "oha not found (cargo install oha --locked)"
  # oha >= 1.5 spells it --output-format json; older ones -j
  if "$OHA" --help | grep -q -- '--output-format'; then OHA_FMT=(--output-format json); else OHA_FMT=(-j); fi
  "$OHA" --help | grep -q -- '--unix-socket' || die "this oha has no --unix-socket; cargo install oha --locked"
}

build_stapesd() {
  local tdir=${CARGO_TARGET_DIR:-$ROOT/target}
  [[ $tdir == /* ]] || tdir=$ROOT/$tdir
  if [[ $SKIP_BUILD != 1 ]]; then
    log "building stapesd (release)"
    (cd "$ROOT" && cargo build --release -p stapesd)
  fi
  STAPESD=${STAPESD:-$tdir/release/stapesd}
  [[ -x $STAPESD ]] || die "stapesd not found at $STAPESD"
  case $STAPESD in
    */debug/*) log "warning: $STAPESD looks like a debug build; figures are not representative" ;;
  esac
}

# ---- the two daemons -------------------------------------------------------

start_stapes() {
  local extra=()
  read -ra extra <<<"$STAPESD_ARGS"
  mkdir -p "$DIR/stapes"
  spawn stapes "$DIR/logs/stapesd.log" -- "$STAPESD" --state-dir "$DIR/stapes" "${extra[@]}"
}

start_incus() {
  mkdir -p "$DIR/incus"
  spawn incus "$DIR/logs/incusd.out" INCUS_DIR="$DIR/incus" -- \
    "$INCUSD" --group root --logfile "$DIR/logs/incusd.log"
}

# wait_ready SIDE T0_US: poll GET /1.0 over the unix socket every 10 ms until
# it answers 200; sets READY_MS to the milliseconds since T0_US.
wait_ready() {
  local side=$1 t0=$2 code i deadline
  deadline=$((t0 + READY_TIMEOUT * 1000000))
  for ((i = 0; i < READY_TIMEOUT * 100; i++)); do
    code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 1 --unix-socket "${SOCK[$side]}" http://x/1.0 2>/dev/null) || true
    if [[ $code == 200 ]]; then
      READY_MS=$(awk -v a="$t0" -v b="$(now_us)" 'BEGIN { printf "%.1f", (b - a) / 1000 }')
      EXE[$side]=$(readlink -f "/proc/${PID[$side]}/exe")
      return 0
    fi
    is_alive "${PID[$side]}" || die "$side exited during startup"
    (($(now_us) < deadline)) || break
    sleep 0.01
  done
  die "$side did not answer GET /1.0 on ${SOCK[$side]} within ${READY_TIMEOUT}s"
}

# start_timed SIDE: start SIDE and set READY_MS to its start-to-ready time.
# (Not in a $(...) subshell: the daemon must be a child of this shell.)
start_timed() {
  local t0
  t0=$(now_us)
  "start_$1"
  wait_ready "$1" "$t0"
}

# configure SIDE: listen on HTTPS (loopback), trust the client certificate,
# check the certificate is seen as trusted.
configure() {
  local side=$1 code
  code=$(api "$side" PATCH /1.0 "{\"config\":{\"core.https_address\":\"${HTTPS[$side]}\"}}")
  [[ $code == 2* ]] || die "$side: PATCH /1.0 core.https_address -> $code $(cat "$DIR/resp.json")"
  trust_cert "$side" "$side" "${HTTPS[$side]}"
}

# trust_cert KEY SIDE ADDR: trust the client certificate through KEY's unix
# socket, check https://ADDR/1.0 sees it as trusted; body sizes into M[SIDE|...].
trust_cert() {
  local key=$1 side=$2 addr=$3 code i pem size
  # Incus wants base64 DER (what the incus CLI sends); fall back to PEM.
  code=$(api "$key" POST /1.0/certificates "$(jq -cn --arg c "$CERT_B64" '{type: "client", name: "bench", certificate: $c}')")
  if [[ $code != 2* ]]; then
    pem=$(jq -cn --rawfile c "$DIR/client.crt" '{type: "client", name: "bench", certificate: $c}')
    code=$(api "$key" POST /1.0/certificates "$pem")
  fi
  [[ $code == 2* ]] || die "$key: POST /1.0/certificates -> $code $(cat "$DIR/resp.json")"

  local deadline=$(($(now_us) + 10000000))
  for ((i = 0; i < 1000; i++)); do
    (($(now_us) < deadline)) || break
    code=$(curl -sk --max-time 1 "${TLS_CURL[@]}" -o "$DIR/resp.json" -w '%{http_code}' "https://$addr/1.0" 2>/dev/null) || true
    [[ $code == 200 ]] && break
    sleep 0.01
  done
  [[ $code == 200 ]] || die "$key: https://$addr/1.0 -> $code"
  [[ $(jq -r '.metadata.auth // empty' "$DIR/resp.json") == trusted ]] ||
    die "$key: client certificate not trusted over TLS: $(head -c 300 "$DIR/resp.json")"
  size=$(wc -c <"$DIR/resp.json")
  M[$side|body_tls]=$size
  code=$(api "$key" GET /1.0)
  M[$side|body_unix]=$(wc -c <"$DIR/resp.json")
  [[ $code == 200 ]] || die "$key: GET /1.0 over the unix socket -> $code"
}

# ---- cases -----------------------------------------------------------------
# case_NAME SIDE CONC OUT: one oha run against SIDE at concurrency CONC, JSON to OUT.

oha_run() {
  local out=$1
  shift
  "$OHA" --no-tui -z "${DURATION}s" "${OHA_FMT[@]}" "$@" >"$out" 2>>"$DIR/logs/oha.err" ||
    die "oha failed ($*); see $DIR/logs/oha.err"
}

case_tls() { oha_run "$3" -c "$2" "${TLS_ARGS[@]}" "https://${HTTPS[$1]}/1.0"; }
case_tls_handshake() { oha_run "$3" -c "$2" --disable-keepalive "${TLS_ARGS[@]}" "https://${HTTPS[$1]}/1.0"; }
case_unix() { oha_run "$3" -c "$2" --unix-socket "${SOCK[$1]}" http://unix.socket/1.0; }
# cluster mode: HTTPS[SIDE] is node1's address
case_members() { oha_run "$3" -c "$2" "${TLS_ARGS[@]}" "https://${HTTPS[$1]}/1.0/cluster/members"; }
case_fwd() { oha_run "$3" -c "$2" "${TLS_ARGS[@]}" "https://${HTTPS[$1]}/1.0?target=node2"; }
case_direct() { case_tls "$@"; }

declare -A CASE_LABEL=()
RUNS=() # "name conc", in run order

add_case() {
  local name=$1 label=$2 c
  shift 2
  CASE_LABEL[$name]=$label
  for c in "$@"; do RUNS+=("$name $c"); done
}

register_cases() {
  local name
  for name in $CASES; do
    case $name in
      tls) add_case tls "GET /1.0 TLS keep-alive" 1 32 ;;
      unix) add_case unix "GET /1.0 unix socket" 1 32 ;;
      tls_handshake) add_case tls_handshake "GET /1.0 TLS, new handshake each" 1 ;;
      members) add_case members "GET /1.0/cluster/members (node1)" 1 32 ;;
      fwd) add_case fwd "GET /1.0?target=node2 via node1" 1 32 ;;
      direct) add_case direct "GET /1.0 direct on node1" 1 ;;
      *) die "unknown case '$name' (known: tls unix tls_handshake; cluster: members fwd direct)" ;;
    esac
  done
}

# run_rounds: every case x concurrency x side, ROUNDS times; the side order
# alternates between rounds so neither daemon always runs first.
run_rounds() {
  local r run name c side order f
  for ((r = 1; r <= ROUNDS; r++)); do
    if ((r % 2)); then order=(stapes incus); else order=(incus stapes); fi
    for run in "${RUNS[@]}"; do
      read -r name c <<<"$run"
      for side in "${order[@]}"; do
        f="$OUT/${side}_${name}_c${c}_r${r}.json"
        "case_$name" "$side" "$c" "$f"
        log "$(jq -r --arg s "$side" --arg n "$name" --arg c "$c" --arg r "$r/$ROUNDS" '
          (.statusCodeDistribution["200"] // 0) as $ok
          | ([.statusCodeDistribution[]] | add // 0) as $all
          | "round \($r) \($n) c=\($c) \($s): \(.summary.requestsPerSec | floor) req/s, p50 \(.latencyPercentiles.p50 * 1e6 | floor / 1e3) ms, 200s \($ok)/\($all)"
            + (if $ok < $all then "  WARNING: non-200 answers \(.statusCodeDistribution)" else "" end)' "$f")"
      done
    done
  done
}

# summarize: medians per side x case x conc into M[side|name|conc|rps|p50|p99] (ms for latencies)
summarize() {
  local run name c side files r
  for run in "${RUNS[@]}"; do
    read -r name c <<<"$run"
    for side in "${SIDES[@]}"; do
      files=()
      for ((r = 1; r <= ROUNDS; r++)); do files+=("$OUT/${side}_${name}_c${c}_r${r}.json"); done
      M[$side|$name|$c|rps]=$(jq -r '.summary.requestsPerSec' "${files[@]}" | median)
      M[$side|$name|$c|range]=$(jq -r '.summary.requestsPerSec' "${files[@]}" | sort -g | awk 'NR == 1 {lo = $1} {hi = $1} END {printf "%.0f-%.0f", lo, hi}')
      M[$side|$name|$c|p50]=$(jq -r '.latencyPercentiles.p50 * 1000' "${files[@]}" | median)
      M[$side|$name|$c|p99]=$(jq -r '.latencyPercentiles.p99 * 1000' "${files[@]}" | median)
      M[$side|$name|$c|non200]=$(jq -s '[.[] | ([.statusCodeDistribution[]] | add // 0) - (.statusCodeDistribution["200"] // 0)] | add' "${files[@]}")
    done
  done
}

# ---- memory and startup ----------------------------------------------------

measure_rss() {
  local side
  for side in "${SIDES[@]}"; do
    M[$side|rss_kb]=$(awk '/^VmRSS:/{print $2}' "/proc/${PID[$side]}/status")
    M[$side|hwm_kb]=$(awk '/^VmHWM:/{print $2}' "/proc/${PID[$side]}/status")
  done
}

# measure_restarts: STARTS restarts of each daemon (same state dir), interleaved.
measure_restarts() {
  local r side order
  for side in "${SIDES[@]}"; do : >"$OUT/${side}_ready_ms.txt"; done
  for ((r = 1; r <= STARTS; r++)); do
    if ((r % 2)); then order=(stapes incus); else order=(incus stapes); fi
    for side in "${order[@]}"; do
      stop_daemon "$side"
      start_timed "$side"
      echo "$READY_MS" >>"$OUT/${side}_ready_ms.txt"
      log "restart $r/$STARTS $side (pid ${PID[$side]}): GET /1.0 answered after $READY_MS ms"
    done
  done
  for side in "${SIDES[@]}"; do M[$side|ready_ms]=$(median <"$OUT/${side}_ready_ms.txt"); done
}

# ---- report ----------------------------------------------------------------

report() {
  echo "== stapes vs Incus: $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, kernel $(uname -r)"
  echo "   oha $("$OHA" --version | awk '{print $2}'), ${DURATION}s per run, median of $ROUNDS interleaved rounds"
  echo "   CPU busy just before the load, both daemons idle (2 s sample): ${BUSY_BEFORE}%"
  if [[ $MODE == cluster ]]; then
    echo "   MODE=cluster: two 3-member clusters on 127.0.0.1-3; all load through node1 over TLS with the client cert"
  fi
  echo "   stapesd: $STAPESD${STAPESD_ARGS:+ $STAPESD_ARGS} on ${HTTPS[stapes]} (GET /1.0 body ${M[stapes|body_tls]} B TLS, ${M[stapes|body_unix]} B unix)"
  echo "   incusd:  $INCUSD $("$INCUSD" --version 2>/dev/null || echo '?') on ${HTTPS[incus]} (GET /1.0 body ${M[incus|body_tls]} B TLS, ${M[incus|body_unix]} B unix)"
  echo
  report_loads
  echo
  if [[ $MODE == cluster ]]; then report_cluster_figures; else report_single_figures; fi
  echo "   ratio = stapes / incus; latencies in ms; RSS is VmRSS of the daemon process"
  report_non200
}

# report_loads: the per-case table (medians) and the per-round req/s ranges
report_loads() {
  local run name c s i
  printf '%-34s %4s %12s %12s %7s %19s %19s\n' case conc "stapes req/s" "incus req/s" ratio "stapes p50/p99" "incus p50/p99"
  for run in "${RUNS[@]}"; do
    read -r name c <<<"$run"
    s="stapes|$name|$c"
    i="incus|$name|$c"
    printf '%-34s %4s %12.0f %12.0f %6sx %19s %19s\n' "${CASE_LABEL[$name]}" "$c" \
      "${M[$s|rps]}" "${M[$i|rps]}" "$(ratio "${M[$s|rps]}" "${M[$i|rps]}")" \
      "$(printf '%.3f/%.3f ms' "${M[$s|p50]}" "${M[$s|p99]}")" \
      "$(printf '%.3f/%.3f ms' "${M[$i|p50]}" "${M[$i|p99]}")"
  done
  echo
  printf '%-34s %4s %12s %12s\n' "req/s, lowest-highest round" conc stapes incus
  for run in "${RUNS[@]}"; do
    read -r name c <<<"$run"
    printf '%-34s %4s %12s %12s\n' "${CASE_LABEL[$name]}" "$c" "${M[stapes|$name|$c|range]}" "${M[incus|$name|$c|range]}"
  done
}

report_single_figures() {
  local label
  printf '%-34s %12s %12s %7s\n' "" stapes incus ratio
  printf '%-34s %12.1f %12.1f %7s\n' "RSS after load (MB)" \
    "$(awk -v k="${M[stapes|rss_kb]}" 'BEGIN{print k/1024}')" "$(awk -v k="${M[incus|rss_kb]}" 'BEGIN{print k/1024}')" \
    "$(ratio "${M[stapes|rss_kb]}" "${M[incus|rss_kb]}")"
  printf '%-34s %12.1f %12.1f %7s\n' "peak RSS, VmHWM (MB)" \
    "$(awk -v k="${M[stapes|hwm_kb]}" 'BEGIN{print k/1024}')" "$(awk -v k="${M[incus|hwm_kb]}" 'BEGIN{print k/1024}')" \
    "$(ratio "${M[stapes|hwm_kb]}" "${M[incus|hwm_kb]}")"
  label="start-to-ready, median of $STARTS (ms)"
  printf '%-34s %12.1f %12.1f %7s\n' "$label" "${M[stapes|ready_ms]}" "${M[incus|ready_ms]}" \
    "$(ratio "${M[stapes|ready_ms]}" "${M[incus|ready_ms]}")"
  printf '%-34s %12.1f %12.1f\n' "first start, empty state dir (ms)" "${M[stapes|first_ms]}" "${M[incus|first_ms]}"
}

report_non200() {
  local run name c s
  for run in "${RUNS[@]}"; do
    read -r name c <<<"$run"
    for s in "${SIDES[@]}"; do
      if [[ ${M[$s|$name|$c|non200]} != 0 ]]; then
        echo "   WARNING: $s $name c=$c had ${M[$s|$name|$c|non200]} non-200 answers"
      fi
    done
  done
}

# target_rps NAME CONC FACTOR: stapes req/s >= FACTOR x incus req/s
target_rps() {
  local s=${M[stapes|$1|$2|rps]:-} i=${M[incus|$1|$2|rps]:-} verdict
  [[ -n $s && -n $i ]] || return 0 # case not run
  verdict=MISS
  if awk -v s="$s" -v i="$i" -v f="$3" 'BEGIN { exit !(s >= f * i) }'; then verdict=PASS; fi
  printf '%s  %s c=%s: stapes %.0f req/s >= %s x incus %.0f req/s (%sx)\n' \
    "$verdict" "${CASE_LABEL[$1]}" "$2" "$s" "$3" "$i" "$(ratio "$s" "$i")"
}

# target_rss FRACTION: stapes RSS <= FRACTION x incus RSS
target_rss() {
  local s=${M[stapes|rss_kb]} i=${M[incus|rss_kb]} verdict
  verdict=MISS
  if awk -v s="$s" -v i="$i" -v f="$1" 'BEGIN { exit !(s <= f * i) }'; then verdict=PASS; fi
  printf '%s  RSS after load: stapes %.1f MB <= %s x incus %.1f MB (%s)\n' \
    "$verdict" "$(awk -v k="$s" 'BEGIN{print k/1024}')" "$1" "$(awk -v k="$i" 'BEGIN{print k/1024}')" "$(ratio "$s" "$i")"
}

check_targets() {
  echo
  echo "== targets"
  target_rps tls 1 5
  target_rps unix 1 5
  target_rss 0.25
}

# ---- cluster mode ----------------------------------------------------------
# Members are keyed SIDEn (stapes1..3, incus1..3) in PID/SOCK/EXE; member n
# listens on 127.0.0.n. HTTPS[SIDE] is node1's address, used by the cases.

cl_addr() { # SIDE N -> 127.0.0.N:PORT
  if [[ $1 == stapes ]]; then echo "127.0.0.$2:$CLUSTER_STAPES_PORT"; else echo "127.0.0.$2:$CLUSTER_INCUS_PORT"; fi
}

ms_since() { awk -v a="$1" -v b="$(now_us)" 'BEGIN { printf "%.1f", (b - a) / 1000 }'; }

start_member() { # SIDE N
  local side=$1 n=$2 key=$1$2 d="$DIR/$1$2" extra=()
  mkdir -p "$d"
  SOCK[$key]=$d/unix.socket
  if [[ $side == stapes ]]; then
    read -ra extra <<<"$STAPESD_ARGS"
    spawn "$key" "$DIR/logs/$key.log" -- "$STAPESD" --state-dir "$d" "${extra[@]}"
  else
    spawn "$key" "$DIR/logs/$key.out" INCUS_DIR="$d" INCUS_CONF="$DIR/incus-conf" -- \
      "$INCUSD" --group root --logfile "$DIR/logs/$key.log"
  fi
}

# incus_cli N ARGS...: the incus client on member N's unix socket, bounded
incus_cli() {
  local n=$1
  shift
  INCUS_DIR="$DIR/incus$n" INCUS_CONF="$DIR/incus-conf" timeout "$JOIN_TIMEOUT" incus "$@"
}

# bootstrap_SIDE / join_SIDE N: the cluster calls of one side. join_SIDE sets
# JOIN_MS to the duration of the join call itself (the token is issued before).
bootstrap_stapes() {
  local code
  code=$(api stapes1 PATCH /1.0 "{\"config\":{\"core.https_address\":\"$(cl_addr stapes 1)\"}}")
  [[ $code == 2* ]] || die "stapes1: PATCH /1.0 core.https_address -> $code $(cat "$DIR/resp.json")"
  code=$(api stapes1 PUT /1.0/cluster '{"server_name":"node1","enabled":true}')
  [[ $code == 2* ]] || die "stapes1: PUT /1.0/cluster (bootstrap) -> $code $(cat "$DIR/resp.json")"
}

join_stapes() {
  local n=$1 code token body t1
  code=$(api stapes1 POST /1.0/cluster/members "{\"server_name\":\"node$n\"}")
  [[ $code == 2* ]] || die "stapes1: POST /1.0/cluster/members node$n -> $code $(cat "$DIR/resp.json")"
  token=$(jq -r '.metadata.metadata | {server_name: .serverName, fingerprint, addresses, secret,
    expires_at: (.expiresAt // "0001-01-01T00:00:00Z")} | tojson | @base64' "$DIR/resp.json")
  body=$(jq -cn --arg n "node$n" --arg a "$(cl_addr stapes "$n")" --arg t "$token" \
    '{server_name: $n, enabled: true, server_address: $a, cluster_token: $t}')
  t1=$(now_us)
  code=$(curl -sS --max-time "$JOIN_TIMEOUT" --unix-socket "${SOCK[stapes$n]}" -X PUT -o "$DIR/resp.json" \
    -w '%{http_code}' -H 'Content-Type: application/json' --data-binary "$body" http://x/1.0/cluster || true)
  JOIN_MS=$(ms_since "$t1")
  [[ $code == 202 ]] || die "stapes$n: PUT /1.0/cluster (join) -> $code $(cat "$DIR/resp.json")"
}

bootstrap_incus() {
  cat >"$DIR/incus1/preseed.yaml" <<EOF
config:
  core.https_address: $(cl_addr incus 1)
cluster:
  server_name: node1
  enabled: true
storage_pools:
- name: default
  driver: dir
profiles:
- name: default
  devices:
    root:
      path: /
      pool: default
      type: disk
EOF
  incus_cli 1 admin init --preseed <"$DIR/incus1/preseed.yaml" >>"$DIR/logs/incus-cli.log" 2>&1 ||
    die "incus1: admin init --preseed (bootstrap) failed; see $DIR/logs/incus-cli.log"
}

join_incus() {
  local n=$1 token t1
  token=$(incus_cli 1 cluster add "node$n" --quiet 2>>"$DIR/logs/incus-cli.log" | tail -n1) ||
    die "incus1: cluster add node$n failed"
  cat >"$DIR/incus$n/preseed.yaml" <<EOF
cluster:
  enabled: true
  server_name: node$n
  server_address: $(cl_addr incus "$n")
  cluster_token: $token
  member_config:
  - entity: storage-pool
    name: default
    key: source
    value: ""
EOF
  t1=$(now_us)
  incus_cli "$n" admin init --preseed <"$DIR/incus$n/preseed.yaml" >>"$DIR/logs/incus-cli.log" 2>&1 ||
    die "incus$n: admin init --preseed (join) failed; see $DIR/logs/incus-cli.log"
  JOIN_MS=$(ms_since "$t1")
}

# form_cluster SIDE: start 3 members at once, wait for each to answer, bootstrap
# node1, join node2 and node3. The clock runs from just before the first spawn
# until the third join returns.
form_cluster() {
  local side=$1 t0 n joins=()
  t0=$(now_us)
  for n in 1 2 3; do start_member "$side" "$n"; done
  for n in 1 2 3; do wait_ready "$side$n" "$t0"; done
  M[$side|up_ms]=$READY_MS
  "bootstrap_$side"
  for n in 2 3; do
    "join_$side" "$n"
    joins+=("$JOIN_MS")
  done
  M[$side|form_ms]=$(ms_since "$t0")
  log "$side cluster formed in ${M[$side|form_ms]} ms (all 3 answering after ${M[$side|up_ms]} ms; joins ${joins[*]} ms)"
  echo "${M[$side|form_ms]}" >>"$OUT/${side}_form_ms.txt"
  echo "${M[$side|up_ms]}" >>"$OUT/${side}_up_ms.txt"
  printf '%s\n' "${joins[@]}" >>"$OUT/${side}_join_ms.txt"
}

# stop_cluster SIDE: stop its members (by PID), remove their state dirs
stop_cluster() {
  local side=$1 n
  for n in 1 2 3; do stop_daemon "$side$n"; done
  for n in 1 2 3; do
    unmount_under "$DIR/$side$n"
    rm -rf -- "${DIR:?}/$side$n"
  done
}

# cluster_medians SIDE: formation, join, RSS medians over the FORMS formations
cluster_medians() {
  local side=$1 f
  M[$side|form_ms]=$(median <"$OUT/${side}_form_ms.txt")
  M[$side|up_ms]=$(median <"$OUT/${side}_up_ms.txt")
  M[$side|join_ms]=$(median <"$OUT/${side}_join_ms.txt")
  M[$side|rss_kb]=$(median <"$OUT/${side}_rss_kb.txt")
  for f in form_ms join_ms rss_kb; do
    M[$side|$f|range]=$(sort -g "$OUT/${side}_$f.txt" | awk -v mb="$([[ $f == rss_kb ]] && echo 1)" '
      { v = mb ? $1 / 1024 : $1 } NR == 1 { lo = v } { hi = v } END { printf "%.1f-%.1f", lo, hi }')
  done
}

# check_cluster SIDE: 3 members listed through node1, ?target=node2 answered by node2
check_cluster() {
  local side=$1 code names
  code=$(curl -sk --max-time 10 "${TLS_CURL[@]}" -o "$DIR/resp.json" -w '%{http_code}' \
    "https://${HTTPS[$side]}/1.0/cluster/members?recursion=1" 2>/dev/null) || true
  [[ $code == 200 ]] || die "$side: GET /1.0/cluster/members over TLS -> $code $(head -c 300 "$DIR/resp.json")"
  names=$(jq -r '[.metadata[] | "\(.server_name)=\(.status)"] | sort | join(" ")' "$DIR/resp.json")
  log "$side members: $names"
  M[$side|members_body]=$(curl -sk --max-time 10 "${TLS_CURL[@]}" "https://${HTTPS[$side]}/1.0/cluster/members" | wc -c)
  code=$(curl -sk --max-time 10 "${TLS_CURL[@]}" -o "$DIR/resp.json" -w '%{http_code}' \
    "https://${HTTPS[$side]}/1.0?target=node2" 2>/dev/null) || true
  [[ $code == 200 ]] || die "$side: GET /1.0?target=node2 -> $code $(head -c 300 "$DIR/resp.json")"
  [[ $(jq -r '.metadata.environment.server_name // empty' "$DIR/resp.json") == node2 ]] ||
    die "$side: GET /1.0?target=node2 was not answered by node2"
  M[$side|fwd_body]=$(wc -c <"$DIR/resp.json")
}

measure_member_rss() { # SIDE
  local side=$1 n v=()
  for n in 1 2 3; do v+=("$(awk '/^VmRSS:/{print $2}' "/proc/${PID[$side$n]}/status")"); done
  printf '%s\n' "${v[@]}" >>"$OUT/${side}_rss_kb.txt"
  log "$side RSS per member after forming: $(printf '%s\n' "${v[@]}" | awk '{printf "%s%.1f", (NR > 1 ? " " : ""), $1 / 1024}') MB"
}

# leader_loss SIDE: SIGKILL the database-leader, then time until a PATCH /1.0
# through a surviving member's unix socket succeeds (each try bounded to 5 s).
leader_loss() {
  local side=$1 leader n s survivor t0 i code deadline
  code=$(api "${side}1" GET '/1.0/cluster/members?recursion=1')
  [[ $code == 200 ]] || die "$side: GET /1.0/cluster/members?recursion=1 -> $code"
  leader=$(jq -r '[.metadata[] | select(.roles | index("database-leader")) | .server_name][0] // empty' "$DIR/resp.json")
  [[ $leader =~ ^node[123]$ ]] || die "$side: no database-leader in $(head -c 300 "$DIR/resp.json")"
  n=${leader#node}
  for s in 1 2 3; do
    if [[ $s != "$n" ]]; then
      survivor=$side$s
      break
    fi
  done
  is_ours "$side$n" || die "$side$n (pid ${PID[$side$n]:-}) is not the process this script started"
  M[$side|leader]=$leader
  M[$side|survivor]=node${survivor#"$side"}
  # (stderr of this block is dropped: bash reports the KILLed job there)
  {
    t0=$(now_us)
    kill -KILL "${PID[$side$n]}"
    deadline=$((t0 + RECOVER_TIMEOUT * 1000000))
    code=""
    for ((i = 1; i <= RECOVER_TIMEOUT * 100; i++)); do
      code=$(curl -s --max-time 5 --unix-socket "${SOCK[$survivor]}" -X PATCH -o "$DIR/resp.json" -w '%{http_code}' \
        -H 'Content-Type: application/json' --data-binary "{\"config\":{\"core.remote_token_expiry\":\"$((i + 1))H\"}}" \
        http://x/1.0 2>/dev/null) || true
      [[ $code == 2* ]] && break
      (($(now_us) < deadline)) || break
      sleep 0.01
    done
    M[$side|recover_ms]=$(ms_since "$t0")
    M[$side|recover_tries]=$i
    wait "${PID[$side$n]}" || true
  } 2>/dev/null
  unset "PID[$side$n]"
  [[ $code == 2* ]] || die "$side: no successful write through $survivor within ${RECOVER_TIMEOUT}s after killing $leader (last: $code $(head -c 200 "$DIR/resp.json"))"
  log "$side: killed leader $leader; a write through ${M[$side|survivor]} succeeded after ${M[$side|recover_ms]} ms ($i tries)"
}

mb() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }

report_cluster_figures() {
  local s
  printf '%-34s %12s %12s %7s\n' "median of $FORMS formation(s)" stapes incus ratio
  printf '%-34s %12.1f %12.1f %7s\n' "form 3-member cluster (ms)" "${M[stapes|form_ms]}" "${M[incus|form_ms]}" \
    "$(ratio "${M[stapes|form_ms]}" "${M[incus|form_ms]}")"
  printf '%-34s %12.1f %12.1f %7s\n' "  of which: 3 daemons answer (ms)" "${M[stapes|up_ms]}" "${M[incus|up_ms]}" \
    "$(ratio "${M[stapes|up_ms]}" "${M[incus|up_ms]}")"
  printf '%-34s %12.1f %12.1f %7s\n' "join one member (ms)" "${M[stapes|join_ms]}" "${M[incus|join_ms]}" \
    "$(ratio "${M[stapes|join_ms]}" "${M[incus|join_ms]}")"
  printf '%-34s %12s %12s %7s\n' "RSS per member after forming (MB)" "$(mb "${M[stapes|rss_kb]}")" "$(mb "${M[incus|rss_kb]}")" \
    "$(ratio "${M[stapes|rss_kb]}" "${M[incus|rss_kb]}")"
  printf '%-34s %12s %12s\n' "  range: formation (ms)" "${M[stapes|form_ms|range]}" "${M[incus|form_ms|range]}"
  printf '%-34s %12s %12s\n' "  range: joins (ms)" "${M[stapes|join_ms|range]}" "${M[incus|join_ms|range]}"
  printf '%-34s %12s %12s\n' "  range: RSS, all members (MB)" "${M[stapes|rss_kb|range]}" "${M[incus|rss_kb|range]}"
  for s in stapes incus; do
    M[$s|fwd_over]=$(awk -v f="${M[$s|fwd|1|p50]:-nan}" -v d="${M[$s|direct|1|p50]:-nan}" 'BEGIN { printf "%.3f", f - d }')
  done
  printf '%-34s %12s %12s %7s\n' "forwarding overhead, p50 c=1 (ms)" "${M[stapes|fwd_over]}" "${M[incus|fwd_over]}" \
    "$(ratio "${M[stapes|fwd_over]}" "${M[incus|fwd_over]}")"
  printf '%-34s %12.1f %12.1f %7s\n' "leader SIGKILL -> write OK (ms)" "${M[stapes|recover_ms]}" "${M[incus|recover_ms]}" \
    "$(ratio "${M[stapes|recover_ms]}" "${M[incus|recover_ms]}")"
  printf '%-34s %12s %12s\n' "  leader killed -> write via" "${M[stapes|leader]}->${M[stapes|survivor]}" "${M[incus|leader]}->${M[incus|survivor]}"
  echo "   forwarding overhead = p50 of GET /1.0?target=node2 minus p50 of GET /1.0 on node1, both c=1"
  echo "   response bodies via node1: /1.0/cluster/members stapes ${M[stapes|members_body]} B, incus ${M[incus|members_body]} B;" \
    "/1.0?target=node2 stapes ${M[stapes|fwd_body]} B, incus ${M[incus|fwd_body]} B"
}

# target_max LABEL VALUE LIMIT UNIT [INCUS]: VALUE < LIMIT
target_max() {
  local verdict=MISS
  if awk -v v="$2" -v l="$3" 'BEGIN { exit !(v + 0 == v && v < l) }'; then verdict=PASS; fi
  printf '%s  %s: stapes %s %s < %s %s%s\n' "$verdict" "$1" "$2" "$4" "$3" "$4" "${5:+ (incus $5 $4)}"
}

check_cluster_targets() {
  echo
  echo "== targets (cluster)"
  target_max "form a 3-member cluster" "$(awk -v v="${M[stapes|form_ms]}" 'BEGIN{printf "%.3f", v / 1000}')" 1.5 s \
    "$(awk -v v="${M[incus|form_ms]}" 'BEGIN{printf "%.3f", v / 1000}')"
  target_max "RSS per member after forming (median)" "$(mb "${M[stapes|rss_kb]}")" 25 MB "$(mb "${M[incus|rss_kb]}")"
  target_rps members 1 10
  if [[ -n ${M[stapes|fwd|1|p50]:-} ]]; then
    target_max "forwarded GET /1.0?target=node2 p50 c=1" "$(printf '%.3f' "${M[stapes|fwd|1|p50]}")" 0.5 ms \
      "$(printf '%.3f' "${M[incus|fwd|1|p50]}")"
  fi
  target_rps fwd 1 20
  target_max "leader SIGKILL -> write OK" "$(awk -v v="${M[stapes|recover_ms]}" 'BEGIN{printf "%.3f", v / 1000}')" 2 s \
    "$(awk -v v="${M[incus|recover_ms]}" 'BEGIN{printf "%.3f", v / 1000}')"
}

main_cluster() {
  local side n a
  for side in stapes incus; do
    for n in 1 2 3; do
      a=$(cl_addr "$side" "$n")
      if port_busy "$a"; then die "$a is already in use"; fi
    done
  done
  HTTPS=([stapes]="$(cl_addr stapes 1)" [incus]="$(cl_addr incus 1)")
  mkdir -p "$DIR/incus-conf"

  local f order
  for side in stapes incus; do
    : >"$OUT/${side}_form_ms.txt"
    : >"$OUT/${side}_up_ms.txt"
    : >"$OUT/${side}_join_ms.txt"
    : >"$OUT/${side}_rss_kb.txt"
  done
  for ((f = 1; f <= FORMS; f++)); do
    if ((f > 1)); then for side in stapes incus; do stop_cluster "$side"; done; fi
    if ((f % 2)); then order=(stapes incus); else order=(incus stapes); fi
    for side in "${order[@]}"; do
      log "formation $f/$FORMS: $side"
      form_cluster "$side"
    done
    # RSS once both are formed, so both sides are read at the same point
    for side in stapes incus; do measure_member_rss "$side"; done
  done
  for side in stapes incus; do cluster_medians "$side"; done
  for side in stapes incus; do
    trust_cert "${side}1" "$side" "${HTTPS[$side]}"
    check_cluster "$side"
  done

  BUSY_BEFORE=$(cpu_busy 2)
  if ((BUSY_BEFORE > 10)); then
    log "warning: the machine is ${BUSY_BEFORE}% busy with both clusters idle; figures will be noisy"
  fi
  log "load: ${#RUNS[@]} runs x ${#SIDES[@]} sides x $ROUNDS rounds x ${DURATION}s"
  run_rounds
  summarize
  for side in stapes incus; do leader_loss "$side"; done

  {
    report
    check_cluster_targets
  } | tee "$OUT/summary.txt"
}

# ---- main ------------------------------------------------------------------

main() {
  [[ $(id -u) == 0 ]] || die "run as root (incusd needs it)"
  [[ -n ${EPOCHREALTIME:-} ]] || die "needs bash >= 5"
  local v
  for v in DURATION ROUNDS STARTS FORMS; do
    [[ ${!v} =~ ^[1-9][0-9]*$ ]] || die "$v must be a positive integer"
  done
  [[ $MODE == single || $MODE == cluster ]] || die "MODE must be single or cluster"
  is_loopback "$STAPES_HTTPS" || die "STAPES_HTTPS must be a loopback host:port"
  is_loopback "$INCUS_HTTPS" || die "INCUS_HTTPS must be a loopback host:port"
  [[ $STAPES_HTTPS != "$INCUS_HTTPS" ]] || die "STAPES_HTTPS and INCUS_HTTPS must differ"
  for v in CLUSTER_STAPES_PORT CLUSTER_INCUS_PORT; do
    [[ ${!v} =~ ^[1-9][0-9]*$ ]] || die "$v must be a port number"
  done
  [[ $CLUSTER_STAPES_PORT != "$CLUSTER_INCUS_PORT" ]] || die "CLUSTER_STAPES_PORT and CLUSTER_INCUS_PORT must differ"

  ensure_tools
  check_tools
  build_stapesd
  register_cases

  if [[ $MODE == single ]]; then
    for v in "$STAPES_HTTPS" "$INCUS_HTTPS"; do
      if port_busy "$v"; then die "$v is already in use"; fi
    done
  fi

  trap cleanup EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
  DIR=$(mktemp -d /tmp/stapes-bench.XXXXXX)
  OUT=${RESULTS_DIR:-$DIR/results}
  mkdir -p "$OUT" "$DIR/logs"
  SOCK=([stapes]="$DIR/stapes/unix.socket" [incus]="$DIR/incus/unix.socket")
  HTTPS=([stapes]="$STAPES_HTTPS" [incus]="$INCUS_HTTPS")

  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:secp384r1 -sha384 -nodes \
    -keyout "$DIR/client.key" -out "$DIR/client.crt" -days 30 -subj /CN=stapes-bench 2>/dev/null
  CERT_B64=$(openssl x509 -in "$DIR/client.crt" -outform DER | base64 -w0)
  TLS_CURL=(--cert "$DIR/client.crt" --key "$DIR/client.key")
  TLS_ARGS=(--insecure --cert "$DIR/client.crt" --key "$DIR/client.key")

  if [[ $MODE == cluster ]]; then
    main_cluster
    finish
    return
  fi

  local side
  for side in "${SIDES[@]}"; do
    start_timed "$side"
    M[$side|first_ms]=$READY_MS
    log "$side up (pid ${PID[$side]}, ${EXE[$side]}) after ${M[$side|first_ms]} ms"
    configure "$side"
  done

  BUSY_BEFORE=$(cpu_busy 2)
  if ((BUSY_BEFORE > 10)); then
    log "warning: the machine is ${BUSY_BEFORE}% busy with both daemons idle; figures will be noisy"
  fi
  log "load: ${#RUNS[@]} runs x ${#SIDES[@]} sides x $ROUNDS rounds x ${DURATION}s"
  run_rounds
  summarize
  measure_rss
  measure_restarts

  {
    report
    check_targets
  } | tee "$OUT/summary.txt"
  finish
}

finish() {
  if [[ -n $RESULTS_DIR ]]; then
    cp "$DIR"/logs/* "$OUT/" 2>/dev/null || true
    log "raw oha JSON and summary.txt in $OUT"
  fi
  if [[ $STRICT == 1 ]] && grep -q '^MISS' "$OUT/summary.txt"; then exit 1; fi
}

main "$@"
