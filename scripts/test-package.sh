#!/usr/bin/env bash
# Builds the Debian package from the debug binaries (`cargo build --bins`) and checks it on
# this machine: contents, lintian, install, the daemon started through stapesd.service
# when systemd runs (otherwise the unit verified and its command line run directly),
# the group-owned socket used by a non-root member of stapes-admin and refused to a
# non-member, an upgrade keeping state and a changed conffile, remove keeping
# /var/lib/stapes, purge removing it.
#
# It installs and purges the package and nothing else: it refuses to run where stapes is
# already installed or /var/lib/stapes exists, removes the group if it made it, and
# cleans up also when a check fails. Needs root, lintian, dpkg-dev and the package's
# dependencies (scripts/install-test-deps.sh); skips with a message when something is
# missing, and fails instead under CI=true.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/sbin:/sbin"

say() { echo "test-package: $*"; }
fail() {
    echo "test-package: FAILED: $*" >&2
    exit 1
}
skip() {
    [ "${CI:-}" = true ] && fail "cannot run under CI=true: $*"
    say "skipped: $*"
    exit 0
}

[ "$(id -u)" -eq 0 ] || skip "needs root (it installs and purges the package)"
for tool in dpkg-deb dpkg-shlibdeps objcopy lintian setpriv systemd-sysusers systemd-analyze; do
    command -v "$tool" >/dev/null || skip "$tool is missing (scripts/install-test-deps.sh installs it)"
done
dpkg-query -W -f='${Status}' lxc 2>/dev/null | grep -q 'ok installed' ||
    skip "lxc, a dependency of the package, is not installed (scripts/install-test-deps.sh)"
if dpkg-query -W -f='${Status}' stapes 2>/dev/null | grep -qv 'not-installed'; then
    skip "a stapes package is installed here; this test would purge it"
fi
[ -e /var/lib/stapes ] && skip "/var/lib/stapes exists; this test would purge it"
[ -e /etc/default/stapes ] && skip "/etc/default/stapes exists; this test would purge it"

group_made=
getent group stapes-admin >/dev/null || group_made=yes
work=$(mktemp -d /tmp/stapes-package-test.XXXXXX)
chmod 0711 "$work"
# The installed programs get the package's defaults, and the client keeps its files here.
unset STAPES_DIR STAPES_SOCKET STAPES_DRAIN
export STAPES_CONF=$work/root-conf
pid=
installed=

# dpkg, waiting (at most 2 minutes) while another package manager holds its lock.
run_dpkg() {
    local out
    for _ in $(seq 1 120); do
        if out=$(dpkg "$@" 2>&1); then
            printf '%s\n' "$out"
            return 0
        fi
        grep -q 'locked by another process' <<<"$out" || break
        sleep 1
    done
    printf '%s\n' "$out"
    return 1
}

cleanup() {
    status=$?
    set +e
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
        kill -KILL "$pid"
        wait "$pid" 2>/dev/null
    fi
    if [ -n "$installed" ]; then
        [ -d /run/systemd/system ] && systemctl stop stapesd.service 2>/dev/null
        run_dpkg --purge stapes >/dev/null
    fi
    [ -n "$group_made" ] && getent group stapes-admin >/dev/null && groupdel stapes-admin
    if [ "$status" -ne 0 ] && [ -f "$work/stapesd.log" ]; then
        echo "--- stapesd log:" >&2
        tail -n 40 "$work/stapesd.log" >&2
    fi
    rm -rf "$work"
    exit "$status"
}
trap cleanup EXIT

say "building the packages (revisions 1 and 2, for the upgrade)"
deb1=$(scripts/package.sh --profile debug --revision 1 --out "$work/deb" 2>"$work/build.log") ||
    fail "package.sh: $(tail -n 20 "$work/build.log")"
deb2=$(scripts/package.sh --profile debug --revision 2 --out "$work/deb" 2>"$work/build.log") ||
    fail "package.sh: $(tail -n 20 "$work/build.log")"

say "contents (dpkg -c)"
dpkg -c "$deb1" | awk '{print $1, $2, $NF}' >"$work/contents"
for want in \
    '-rwxr-xr-x root/root ./usr/bin/stapesd' \
    '-rwxr-xr-x root/root ./usr/bin/stapes' \
    '-rw-r--r-- root/root ./lib/systemd/system/stapesd.service' \
    '-rw-r--r-- root/root ./usr/lib/sysusers.d/stapes.conf' \
    '-rw-r--r-- root/root ./etc/default/stapes' \
    '-rw-r--r-- root/root ./usr/share/man/man1/stapesd.1.gz' \
    '-rw-r--r-- root/root ./usr/share/man/man1/stapes.1.gz' \
    '-rw-r--r-- root/root ./usr/share/man/man1/stapes-cluster-add.1.gz' \
    '-rw-r--r-- root/root ./usr/share/bash-completion/completions/stapes' \
    '-rw-r--r-- root/root ./usr/share/zsh/vendor-completions/_stapes' \
    '-rw-r--r-- root/root ./usr/share/fish/vendor_completions.d/stapes.fish' \
    '-rw-r--r-- root/root ./usr/share/doc/stapes/install.md' \
    '-rw-r--r-- root/root ./usr/share/doc/stapes/copyright'; do
    grep -qxF -- "$want" "$work/contents" || fail "the package lacks: $want"
done
grep -q '/var/lib/stapes' "$work/contents" && fail "the package ships /var/lib/stapes (state belongs to the member)"
dpkg-deb -f "$deb1" Depends | grep -qw lxc || fail "Depends lacks lxc: $(dpkg-deb -f "$deb1" Depends)"
[ "$(dpkg-deb -f "$deb1" Version)" = "$(dpkg-deb -f "$deb2" Version | sed 's/-2$/-1/')" ] ||
    fail "unexpected versions"

say "lintian"
lintian_status=0
lintian --fail-on error "$deb1" >"$work/lintian" 2>&1 || lintian_status=$?
grep -v 'running with root privileges' "$work/lintian" || true
[ "$lintian_status" -eq 0 ] || fail "lintian reports errors"

say "install (dpkg -i)"
installed=yes
run_dpkg -i "$deb1" >"$work/dpkg.log" || fail "dpkg -i: $(cat "$work/dpkg.log")"
grep -q 'systemctl enable --now stapesd' "$work/dpkg.log" || fail "no first-install message"
getent group stapes-admin >/dev/null || fail "the stapes-admin group was not created"
[ "$(stat -c %a /var/lib/stapes)" = 711 ] || fail "/var/lib/stapes is $(stat -c %a /var/lib/stapes), not 711"
[ -L /etc/systemd/system/multi-user.target.wants/stapesd.service ] && fail "the package enabled stapesd.service"
verify=(systemd-analyze verify)
command -v man >/dev/null || verify+=(--man=no)
"${verify[@]}" /lib/systemd/system/stapesd.service || fail "systemd-analyze verify"
# stapes-admin survives as a group; the test owns the state under its own names only.
gid=$(getent group stapes-admin | cut -d: -f3)
socket=/var/lib/stapes/unix.socket

start() {
    if [ -d /run/systemd/system ]; then
        systemctl start stapesd.service || fail "systemctl start stapesd"
    else
        # What systemd would run: ExecStart with /etc/default/stapes in the environment.
        local exec_start
        exec_start=$(sed -n 's/^ExecStart=//p' /lib/systemd/system/stapesd.service)
        say "systemd is not running here: unit verified, starting its command line directly: $exec_start"
        setsid sh -c "set -a; . /etc/default/stapes; set +a; exec $exec_start" \
            </dev/null >>"$work/stapesd.log" 2>&1 &
        pid=$!
    fi
    for _ in $(seq 1 120); do
        stapes query /1.0 >/dev/null 2>&1 && return 0
        [ -n "$pid" ] && ! kill -0 "$pid" 2>/dev/null && fail "stapesd exited"
        sleep 0.25
    done
    fail "stapesd did not answer on $socket within 30 s"
}

stop() {
    if [ -d /run/systemd/system ]; then
        systemctl stop stapesd.service || fail "systemctl stop stapesd"
        return 0
    fi
    kill -TERM "$pid"
    # The drain from /etc/default/stapes, then requests in flight: bounded well below.
    for _ in $(seq 1 240); do
        if ! kill -0 "$pid" 2>/dev/null; then
            wait "$pid" || fail "stapesd exited with status $? on SIGTERM"
            pid=
            return 0
        fi
        sleep 0.25
    done
    fail "stapesd did not stop within 60 s of SIGTERM"
}

# Runs the installed client as an unprivileged user (nobody) with its own config dir.
as_nobody() {
    local home=$work/home-$1
    shift
    mkdir -p "$home"
    chown 65534:65534 "$home"
    setpriv --reuid=65534 --regid=65534 "$@" env -i PATH=/usr/bin:/bin HOME="$home" STAPES_CONF="$home" \
        stapes query /1.0
}

say "start"
start
[ "$(stat -c '%G %a' "$socket")" = "stapes-admin 660" ] ||
    fail "the socket is $(stat -c '%U:%G %a' "$socket"), not root:stapes-admin 660"
say "the socket: a member of stapes-admin may use it, others may not"
out=$(as_nobody member --groups="$gid" 2>&1) || fail "a member of stapes-admin was refused: $out"
grep -q '"auth": "trusted"' <<<"$out" || fail "a member of stapes-admin is not trusted: $out"
if out=$(as_nobody other --clear-groups 2>&1); then
    fail "a user outside stapes-admin used the socket: $out"
fi
grep -qi 'permissions to talk to the stapes daemon' <<<"$out" || fail "a non-member got an unexpected error: $out"

stapes config set core.remote_token_expiry=7d >/dev/null || fail "config set"
stop

say "upgrade (revision 2), with a changed /etc/default/stapes"
echo 'STAPES_OPTS="--log-format json"' >>/etc/default/stapes
run_dpkg -i "$deb2" >"$work/dpkg.log" || fail "upgrade: $(cat "$work/dpkg.log")"
[ "$(dpkg-query -W -f='${Version}' stapes)" = "$(dpkg-deb -f "$deb2" Version)" ] || fail "not upgraded"
grep -q -- '--log-format json' /etc/default/stapes || fail "the upgrade replaced a changed /etc/default/stapes"
start
if [ -n "$pid" ]; then
    tail -n 1 "$work/stapesd.log" | grep -q '^{' || fail "STAPES_OPTS from /etc/default/stapes was not used"
fi
[ "$(stapes config get core.remote_token_expiry)" = 7d ] || fail "the state did not survive the upgrade"
stop

say "remove keeps /var/lib/stapes"
crt=$(sha256sum </var/lib/stapes/server.crt)
# What an administrator does; purge must remove the link.
systemctl --quiet enable stapesd.service || fail "systemctl enable"
[ -L /etc/systemd/system/multi-user.target.wants/stapesd.service ] || fail "systemctl enable made no link"
run_dpkg -r stapes >"$work/dpkg.log" || fail "dpkg -r: $(cat "$work/dpkg.log")"
[ ! -e /usr/bin/stapesd ] || fail "/usr/bin/stapesd is still there after remove"
[ -f /var/lib/stapes/server.crt ] && [ -d /var/lib/stapes/database ] ||
    fail "remove did not keep /var/lib/stapes: $(ls -la /var/lib/stapes 2>&1)"
[ "$(sha256sum </var/lib/stapes/server.crt)" = "$crt" ] ||
    fail "the member's certificate changed"

say "purge removes /var/lib/stapes, /etc/default/stapes and the unit's links"
run_dpkg -P stapes >"$work/dpkg.log" || fail "dpkg -P: $(cat "$work/dpkg.log")"
installed=
for gone in /var/lib/stapes /etc/default/stapes /etc/systemd/system/multi-user.target.wants/stapesd.service; do
    [ ! -e "$gone" ] && [ ! -L "$gone" ] || fail "$gone is still there after purge"
done
say "ok"
