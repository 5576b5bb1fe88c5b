#!/usr/bin/env bash
# Builds stapes and starts a three-member demo cluster on 127.0.0.1, 127.0.0.2 and
# 127.0.0.3 (port 8443), one state directory each under $DEMO_DIR, formed with the
# `stapes` client itself. Then it makes a storage pool on every member, builds a small
# busybox image offline (Debian's busybox-static), imports it, and launches one system
# container on each member (LXC: this needs root; without it the cluster still runs and
# the script says why it made no containers). It ends with an `incus exec` into a
# container through a member that does not hold it.
#
#   scripts/demo.sh        start a fresh demo; a demo that is running is stopped first,
#                          and every start wipes the previous demo's state
#   scripts/demo.sh stop   stop it: SIGTERM, then up to STOP_TIMEOUT seconds (15) for
#                          each member to exit, then SIGKILL; the demo's containers
#                          are deleted first
#
# Overrides: DEMO_DIR (/tmp/stapes-demo), PORT (8443), DEMO_ADDRESSES (the three member
# IPs), STAPES_BIN_DIR (use these binaries instead of building), STOP_TIMEOUT,
# DEMO_CONTAINERS (1; 0 leaves out the pool, the image and the containers).
set -euo pipefail
cd "$(dirname "$0")/.."
DEMO_DIR=${DEMO_DIR:-/tmp/stapes-demo}
PORT=${PORT:-8443}
STOP_TIMEOUT=${STOP_TIMEOUT:-15}
DEMO_CONTAINERS=${DEMO_CONTAINERS:-1}
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

# The containers LXC holds for member N (one directory each under its LXC path).
containers_of() {
    local dir=$DEMO_DIR/node$1/state/lxc c
    [ -d "$dir" ] || return 0
    for c in "$dir"/*/; do
        [ -d "$c" ] && basename "$c"
    done
    return 0
}

# Containers outlive their daemon: delete them through their member while it runs
# (bounded, as a member may be hung), and stop whatever is left through LXC itself.
remove_containers() {
    local n c
    for n in 1 2 3; do
        member_pid "$n" >/dev/null || continue
        for c in $(containers_of "$n"); do
            timeout 60 env STAPES_CONF="$DEMO_DIR/client" \
                STAPES_SOCKET="$DEMO_DIR/node$n/state/unix.socket" \
                "$BIN/stapes" delete --force "$c" >/dev/null 2>&1 || true
        done
    done
}

stop_leftover_containers() {
    local n c
    command -v lxc-stop >/dev/null || return 0
    for n in 1 2 3; do
        for c in $(containers_of "$n"); do
            timeout 30 lxc-stop -k -P "$DEMO_DIR/node$n/state/lxc" -n "$c" >/dev/null 2>&1 || true
        done
    done
}

stop() {
    local n pid pids=() names=() i waited
    remove_containers
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
    stop_leftover_containers
}

if [ -n "${1:-}" ] && [ "$1" != "stop" ]; then
    echo "usage: scripts/demo.sh [stop]" >&2
    exit 2
fi
if [ -n "${STAPES_BIN_DIR:-}" ]; then
    BIN=$STAPES_BIN_DIR
elif [ "${1:-}" = "stop" ]; then
    BIN=$PWD/target/release
else
    cargo build --release --bins
    BIN=$PWD/target/release
fi
if [ "${1:-}" = "stop" ]; then
    stop
    exit 0
fi

if running; then
    echo "A demo is running: stopping it and starting a fresh one (its state is wiped)."
    stop
else
    stop_leftover_containers
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

[ "$DEMO_CONTAINERS" = 1 ] || exit 0

# A statically linked busybox: the whole userland of the demo's image.
static_busybox() {
    local b
    for b in /bin/busybox /usr/bin/busybox; do
        [ -x "$b" ] || continue
        # ldd fails on a static binary, saying so.
        if [[ "$(LC_ALL=C ldd "$b" 2>&1 || true)" == *"not a dynamic executable"* ]]; then
            echo "$b"
            return 0
        fi
    done
    return 1
}

# A unified image tarball in $1 (metadata.yaml and rootfs/), made offline: busybox as
# /sbin/init, an inittab that keeps one process running.
make_image() {
    local out=$1 busybox=$2 tree root applet
    tree=$(mktemp -d "$DEMO_DIR/image.XXXXXX")
    root=$tree/rootfs
    mkdir -p "$root"/{bin,sbin,etc,proc,sys,dev,tmp,root,run,var/log}
    chmod 1777 "$root/tmp"
    cp "$busybox" "$root/bin/busybox"
    for applet in sh ash cat echo ls ps mount hostname uname sleep id pwd true; do
        ln -s /bin/busybox "$root/bin/$applet"
    done
    ln -s /bin/busybox "$root/sbin/init"
    echo 'root:x:0:0:root:/root:/bin/sh' >"$root/etc/passwd"
    echo 'root:x:0:' >"$root/etc/group"
    printf '::sysinit:/bin/mount -t tmpfs tmpfs /tmp\n::respawn:/bin/sleep 3600\n' >"$root/etc/inittab"
    cat >"$tree/metadata.yaml" <<YAML
architecture: $(uname -m)
creation_date: $(date +%s)
properties:
  description: busybox (stapes demo)
  os: busybox
  release: demo
templates: {}
YAML
    tar -C "$tree" --numeric-owner -czf "$out" metadata.yaml rootfs
    rm -rf "$tree"
}

echo
if ! busybox=$(static_busybox); then
    echo "No container: the demo's image needs a statically linked busybox (apt install busybox-static)."
    exit 0
fi
# Where containers live: pool1 on every member, then the default profile's root disk on it.
for n in 1 2 3; do
    stapes 1 storage create pool1 dir --target "node$n" >/dev/null
done
stapes 1 storage create pool1 dir >/dev/null
stapes 1 profile device add default root disk path=/ pool=pool1 >/dev/null
make_image "$DEMO_DIR/busybox.tar.gz" "$busybox"
stapes 1 image import "$DEMO_DIR/busybox.tar.gz" --alias busybox >/dev/null
echo "Storage pool pool1 on every member; image busybox ($DEMO_DIR/busybox.tar.gz) imported through node1."
if [ "$(id -u)" != 0 ]; then
    echo "No container: LXC system containers need root, and this script runs as $(id -un). Run it as root to launch one on each member."
    exit 0
fi
for n in 1 2 3; do
    # The network warning (the image has no NIC) is expected here.
    if ! stapes 1 launch busybox "c$n" --target "node$n" >/dev/null 2>"$DEMO_DIR/launch-c$n.err"; then
        echo "Launching c$n on node$n through node1 failed:" >&2
        cat "$DEMO_DIR/launch-c$n.err" >&2
        exit 1
    fi
done
echo "Launched c1, c2, c3 through node1, one on each member:"
echo
stapes 2 list
echo

# The last word: a command in c2 (on node2) through node1.
echo "Into c2, which runs on node2, through node1:"
export INCUS_SOCKET=$DEMO_DIR/node1/state/unix.socket
if command -v incus >/dev/null; then
    echo "  \$ INCUS_SOCKET=$INCUS_SOCKET incus exec c2 -- uname -n"
    # A configuration of the demo's own; made first, so the client's first-run hint
    # does not land in the output.
    export INCUS_CONF=$DEMO_DIR/incus-client
    incus remote list >/dev/null 2>&1 || true
    exec_cmd=(incus exec c2 -- uname -n)
else
    echo "  \$ STAPES_SOCKET=$INCUS_SOCKET $BIN/stapes exec c2 -- uname -n"
    echo "  (the official client is not installed: apt install incus-client)"
    exec_cmd=(stapes 1 exec c2 -- uname -n)
fi
if out=$("${exec_cmd[@]}" 2>&1); then
    echo "$out"
elif grep -q 'not supported by this server yet' <<<"$out"; then
    echo "  (this build of stapesd does not serve exec yet: $out)"
else
    echo "$out" >&2
    echo "exec into c2 through node1 failed" >&2
    exit 1
fi
