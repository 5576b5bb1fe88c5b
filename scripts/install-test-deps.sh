#!/usr/bin/env bash
# Installs what the test suite needs on Debian bookworm: the official incus client from
# bookworm-backports (added beside the machine's Debian source), pebble and dnsmasq for
# the ACME tests, haproxy for the load-balancer tests, nftables for the blackholed-member
# test, keepalived and bird2 (with iproute2) for the VRRP and ECMP tests in network
# namespaces, and curl.
set -euo pipefail

if [ "$(id -u)" -ne 0 ]; then
    SUDO=sudo
else
    SUDO=
fi

# The test OpenID provider (crates/testkit/oidc) runs on node, with its packages from
# the npm registry as pinned by package-lock.json (oidc-provider 9 wants node 20 or later).
if ! command -v node >/dev/null 2>&1; then
    $SUDO apt-get update -qq
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm
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
command -v incus >/dev/null 2>&1 || need+=(incus-client)
command -v curl >/dev/null 2>&1 || need+=(curl)
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
