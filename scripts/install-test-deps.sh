#!/usr/bin/env bash
# Installs what the test suite needs on Debian bookworm: the rustfmt and clippy
# components (with rustup), a C compiler (build-essential), Node.js 20 or later for the
# test OpenID provider, the official incus client and daemon (incus-base, containers
# only) from bookworm-backports (added beside the machine's Debian source), pebble and
# dnsmasq for the ACME tests, haproxy for the load-balancer tests, nftables for the
# blackholed-member test, keepalived and bird2 (with iproute2) for the VRRP and ECMP
# tests in network namespaces, curl, cargo-deny, Debian's lxc tools and busybox-static
# for the LXC driver's tests (the test containers' root file systems are built from it,
# offline), sshfs for `incus file mount`, and lintian, dpkg-dev and systemd for the
# package test.
set -euo pipefail
# A node installed from npm lands in /usr/local/bin, which must come first.
export PATH="/usr/local/bin:$PATH"

if [ "$(id -u)" -ne 0 ]; then
    SUDO=sudo
else
    SUDO=
fi

# cargo fmt and cargo clippy: components of the toolchain (for the user running this).
if ! cargo fmt --version >/dev/null 2>&1 || ! cargo clippy --version >/dev/null 2>&1; then
    if command -v rustup >/dev/null 2>&1; then
        rustup component add rustfmt clippy
    else
        echo "cargo fmt and cargo clippy are needed: install the rustfmt and clippy components of your Rust toolchain" >&2
        exit 1
    fi
fi

# The test OpenID provider (crates/testkit/oidc) runs on node, with its packages from
# the npm registry as pinned by package-lock.json. oidc-provider 9 needs Node.js 20 or
# later, and Debian bookworm's is 18: then Node.js itself comes from the npm registry,
# where it is published as the `node` package (installed globally: /usr/local/bin).
node_major() {
    local v
    v=$(node --version 2>/dev/null) || { echo 0; return; }
    v=${v#v}
    echo "${v%%.*}"
}
if [ "$(node_major)" -lt 20 ]; then
    if ! command -v npm >/dev/null 2>&1; then
        $SUDO apt-get update -qq
        $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm
    fi
    if [ "$(node_major)" -lt 20 ]; then
        $SUDO npm install --global --no-audit --no-fund node@22
        hash -r
    fi
    if [ "$(node_major)" -lt 20 ]; then
        echo "The test OpenID provider needs Node.js 20 or later; found $(node --version 2>/dev/null || echo none) at $(command -v node || echo nowhere): put a newer node first on PATH" >&2
        exit 1
    fi
fi
oidc_dir="$(cd "$(dirname "$0")/.." && pwd)/crates/testkit/oidc"
if [ ! -f "$oidc_dir/node_modules/oidc-provider/package.json" ] ||
    [ "$oidc_dir/package-lock.json" -nt "$oidc_dir/node_modules/.package-lock.json" ]; then
    (cd "$oidc_dir" && npm ci --no-audit --no-fund)
fi

# cargo-deny checks deny.toml (bans, licenses, sources) in scripts/test.sh. Built from
# crates.io when missing: about 5-10 minutes of CI on 2 cores, once per machine.
if ! cargo deny --version >/dev/null 2>&1; then
    cargo install cargo-deny --version 0.20.2 --locked
fi

# The LXC driver's tests: lxc's tools alone (no lxc-net, dnsmasq or templates), a
# static busybox that runs in a root file system without a C library, and lxcfs (the
# test runs its own, in a temporary directory, to see the limits inside a container).
lxc_need=()
command -v lxc-attach >/dev/null 2>&1 || lxc_need+=(lxc)
command -v lxcfs >/dev/null 2>&1 || lxc_need+=(lxcfs)
dpkg-query -W -f='${Status}' busybox-static 2>/dev/null | grep -q "ok installed" || lxc_need+=(busybox-static)
if [ ${#lxc_need[@]} -gt 0 ]; then
    $SUDO apt-get update -qq
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${lxc_need[@]}"
fi

# The package test (scripts/test-package.sh), from bookworm itself: lintian, dpkg-dev
# (dpkg-shlibdeps), lxc (a dependency of the package), and systemd for systemd-analyze
# and systemd-sysusers (installed, not started); squashfs-tools-ng for the image tests.
base=()
command -v lintian >/dev/null 2>&1 || base+=(lintian)
command -v dpkg-shlibdeps >/dev/null 2>&1 || base+=(dpkg-dev)
command -v lxc-start >/dev/null 2>&1 || base+=(lxc)
command -v systemd-analyze >/dev/null 2>&1 || base+=(systemd)
# Images: sqfs2tar reads squashfs images (as Incus does); tar2sqfs makes them in tests.
command -v sqfs2tar >/dev/null 2>&1 || base+=(squashfs-tools-ng)
if [ ${#base[@]} -gt 0 ]; then
    $SUDO apt-get update -qq
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${base[@]}"
fi

need=()
# The build compiles C (aws-lc-rs): a C compiler and the usual tools, no cmake.
command -v cc >/dev/null 2>&1 || need+=(build-essential)
command -v incus >/dev/null 2>&1 || need+=(incus-client)
# The CLI's tests against a real Incus daemon (crates/stapes/tests/against_incus.rs).
[ -x /usr/libexec/incus/incusd ] || need+=(incus-base)
command -v curl >/dev/null 2>&1 || need+=(curl)
# `incus file mount` runs sshfs over the instance's SFTP connection.
command -v sshfs >/dev/null 2>&1 || need+=(sshfs)
command -v pebble >/dev/null 2>&1 || need+=(pebble)
# dnsmasq lives in /usr/sbin, which is not on every user's PATH
command -v dnsmasq >/dev/null 2>&1 || [ -x /usr/sbin/dnsmasq ] || need+=(dnsmasq-base)
command -v haproxy >/dev/null 2>&1 || [ -x /usr/sbin/haproxy ] || need+=(haproxy)
command -v nft >/dev/null 2>&1 || [ -x /usr/sbin/nft ] || need+=(nftables)
command -v ip >/dev/null 2>&1 || [ -x /usr/sbin/ip ] || [ -x /sbin/ip ] || need+=(iproute2)
command -v keepalived >/dev/null 2>&1 || [ -x /usr/sbin/keepalived ] || need+=(keepalived)
command -v bird >/dev/null 2>&1 || [ -x /usr/sbin/bird ] || need+=(bird2)
[ ${#need[@]} -eq 0 ] && exit 0

if ! grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
    $SUDO tee /etc/apt/sources.list.d/stapes-backports.sources >/dev/null <<'SRC'
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
fi
$SUDO apt-get update -qq
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -t bookworm-backports "${need[@]}"
