#!/usr/bin/env bash
# Builds the Debian package of stapes from this checkout, with dpkg-deb from a staged
# tree (no debian/ source package): the two binaries, stapesd.service, the stapes-admin
# group (sysusers.d), /etc/default/stapes, man pages and shell completions generated
# from the binaries, and the maintainer scripts in packaging/deb.
#
#   scripts/package.sh [--profile release|debug] [--revision N] [--out DIR]
#
# --profile debug packages the binaries of `cargo build --bins` (what CI has already
# built) instead of a release build. Prints the path of the .deb.
set -euo pipefail
cd "$(dirname "$0")/.."

profile=release
revision=1
out=target/deb
while [ $# -gt 0 ]; do
    case "$1" in
    --profile) profile=$2; shift 2 ;;
    --revision) revision=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    *) echo "usage: $0 [--profile release|debug] [--revision N] [--out DIR]" >&2; exit 2 ;;
    esac
done
case "$profile" in
release) bindir=target/release ;;
debug | dev) profile=dev; bindir=target/debug ;;
*) echo "unknown profile $profile (release or debug)" >&2; exit 2 ;;
esac
for tool in dpkg-deb dpkg-shlibdeps objcopy; do
    command -v "$tool" >/dev/null || { echo "$tool is missing: apt-get install dpkg-dev binutils" >&2; exit 1; }
done

# Cargo checks freshness: nothing is rebuilt when the binaries are up to date. The debug
# build is the one scripts/test.sh makes (same packages, so the same features); a release
# build selects the two binaries alone.
if [ "$profile" = dev ]; then
    cargo build --workspace --bins --locked >&2
else
    cargo build --release --locked -p stapesd -p stapes >&2
fi

version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n1)
arch=$(dpkg --print-architecture)
full_version="$version-$revision"
maintainer=${STAPES_DEB_MAINTAINER:-"stapes maintainers <maintainers@stapes.invalid>"}
# Reproducible dates: the commit's, when there is one.
epoch=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || date +%s)}
export SOURCE_DATE_EPOCH=$epoch

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
root=$work/root
pkg=packaging/deb
install -d "$root/DEBIAN" "$root/usr/bin" "$root/lib/systemd/system" "$root/usr/lib/sysusers.d" \
    "$root/etc/default" "$root/usr/share/man/man1" "$root/usr/share/doc/stapes" \
    "$root/usr/share/bash-completion/completions" "$root/usr/share/zsh/vendor-completions" \
    "$root/usr/share/fish/vendor_completions.d"

for bin in stapesd stapes; do
    # As dh_strip does: no symbols or debug sections in the package.
    objcopy --strip-unneeded --remove-section=.comment --remove-section=.note \
        "$bindir/$bin" "$root/usr/bin/$bin"
    chmod 0755 "$root/usr/bin/$bin"
done

# Generated from the CLI definitions, so they match the binaries being packaged.
"$bindir/stapes" manpage "$work/man"
"$bindir/stapesd" manpage "$work/man"
for page in "$work"/man/*.1; do
    gzip -9n <"$page" >"$root/usr/share/man/man1/$(basename "$page").gz"
done
for bin in stapes stapesd; do
    "$bindir/$bin" completion bash >"$root/usr/share/bash-completion/completions/$bin"
    "$bindir/$bin" completion zsh >"$root/usr/share/zsh/vendor-completions/_$bin"
    "$bindir/$bin" completion fish >"$root/usr/share/fish/vendor_completions.d/$bin.fish"
done

install -m 0644 "$pkg/stapesd.service" "$root/lib/systemd/system/stapesd.service"
install -m 0644 "$pkg/sysusers.conf" "$root/usr/lib/sysusers.d/stapes.conf"
install -m 0644 "$pkg/default" "$root/etc/default/stapes"
install -m 0644 "$pkg/copyright" "$root/usr/share/doc/stapes/copyright"
install -m 0644 docs/install.md "$root/usr/share/doc/stapes/install.md"
install -d "$root/usr/share/lintian/overrides"
install -m 0644 "$pkg/lintian-overrides" "$root/usr/share/lintian/overrides/stapes"
for script in postinst prerm postrm; do
    install -m 0755 "$pkg/$script" "$root/DEBIAN/$script"
done
echo /etc/default/stapes >"$root/DEBIAN/conffiles"

{
    echo "stapes ($full_version) unstable; urgency=medium"
    echo
    echo "  * Built from the stapes source tree at $(git rev-parse --short HEAD 2>/dev/null || echo 'an unknown commit')."
    echo
    echo " -- $maintainer  $(date -R -u -d "@$epoch")"
} | gzip -9n >"$root/usr/share/doc/stapes/changelog.Debian.gz"

# Library dependencies of the binaries, as dpkg-shlibdeps finds them.
mkdir -p "$work/src/debian"
printf 'Source: stapes\n\nPackage: stapes\nArchitecture: any\n' >"$work/src/debian/control"
shlibs=$(cd "$work/src" && dpkg-shlibdeps -O "$root/usr/bin/stapesd" "$root/usr/bin/stapes" |
    sed -n 's/^shlibs:Depends=//p')

cat >"$root/DEBIAN/control" <<CONTROL
Package: stapes
Version: $full_version
Architecture: $arch
Maintainer: $maintainer
Installed-Size: $(du -sk --exclude=DEBIAN "$root" | cut -f1)
Depends: $shlibs, systemd | systemd-standalone-sysusers | systemd-sysusers, lxc
Recommends: lxcfs
Section: admin
Priority: optional
Description: Incus API cluster daemon and client
 stapes is a clustered daemon (stapesd) and command-line client (stapes) that
 speak the Incus REST API: any member of a cluster serves the whole API, over
 HTTPS and a local unix socket, and the official incus client works against it.
 Members replicate their state with Raft.
 .
 This package installs stapesd.service (not enabled), the stapes-admin group
 whose members may use the unix socket, and the stapes client.
CONTROL

(cd "$root" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | sort -z | xargs -0 md5sum) \
    >"$root/DEBIAN/md5sums"
find "$root" -exec touch -h -d "@$epoch" {} +

mkdir -p "$out"
deb="$out/stapes_${full_version}_$arch.deb"
# A debug build is for tests: compressed fast rather than small.
compress=(-Zxz)
[ "$profile" = dev ] && compress=(-Zgzip -z1)
dpkg-deb --root-owner-group "${compress[@]}" --build "$root" "$deb" >&2
echo "$deb"
