#!/usr/bin/env bash
# Installs what the test suite needs on Debian bookworm: the official incus client from
# bookworm-backports (added beside the machine's Debian source), pebble and dnsmasq for
# the ACME tests, haproxy for the load-balancer tests, nftables for the blackholed-member
# test, and curl.
set -euo pipefail

if [ "$(id -u)" -ne 0 ]; then
    SUDO=sudo
else
    SUDO=
fi

need=()
command -v incus >/dev/null 2>&1 || need+=(incus-client)
command -v curl >/dev/null 2>&1 || need+=(curl)
command -v pebble >/dev/null 2>&1 || need+=(pebble)
# dnsmasq lives in /usr/sbin, which is not on every user's PATH
command -v dnsmasq >/dev/null 2>&1 || [ -x /usr/sbin/dnsmasq ] || need+=(dnsmasq-base)
command -v haproxy >/dev/null 2>&1 || [ -x /usr/sbin/haproxy ] || need+=(haproxy)
command -v nft >/dev/null 2>&1 || [ -x /usr/sbin/nft ] || need+=(nftables)
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
