#!/bin/bash
# fetch-kernel.sh PACKAGE... : download Debian kernel package(s) with
# `apt-get download` and unpack them with `dpkg-deb -x` (nothing is installed
# on the host) into $VMTEST_KERNELS/<kernel version>/, then print the path of
# the vmlinuz for vmrun.sh. Idempotent: a package set fetched before is not
# downloaded again (delete its directory to force it).
#   bookworm:  fetch-kernel.sh linux-image-6.12.117+deb12-amd64-unsigned
#              fetch-kernel.sh linux-image-6.1.0-56-amd64-unsigned
#   trixie-style split packages need linux-binary-V and linux-modules-V.
# The packages must be in the configured apt sources (apt-get update first).
set -euo pipefail
[ $# -ge 1 ] || { echo "usage: $0 PACKAGE..." >&2; exit 2; }
DEST=${VMTEST_KERNELS:-/var/tmp/vmtest/kernels}
mkdir -p "$DEST/.fetched"
marker="$DEST/.fetched/$(IFS=,; echo "$*")"
if [ -s "$marker" ] && [ -f "$(cat "$marker")" ]; then
	cat "$marker"
	exit 0
fi
exec 9>>"$DEST/.lock"
flock 9   # concurrent fetches of the same package unpack once
if [ -s "$marker" ] && [ -f "$(cat "$marker")" ]; then
	cat "$marker"
	exit 0
fi
tmp=$(mktemp -d "$DEST/.tmp.XXXXXX"); trap 'rm -rf "$tmp"' EXIT
chmod 755 "$tmp"   # apt's _apt user downloads into it when it can
(cd "$tmp" && apt-get download "$@" >/dev/null 2>"$tmp/apt.err") || { cat "$tmp/apt.err" >&2; exit 1; }
stage="$tmp/root"; mkdir -p "$stage"
for f in "$tmp"/*.deb; do dpkg-deb -x "$f" "$stage"; done
img=$(find "$stage" \( -path '*/boot/vmlinuz-*' -o -path '*/modules/*/vmlinuz' \) | head -n1)
[ -n "$img" ] || { echo "no vmlinuz in $*" >&2; exit 1; }
ver=$(find "$stage" -maxdepth 4 -type d -path '*/lib/modules/*' | head -n1 | xargs basename)
rm -rf "${DEST:?}/$ver"
mkdir -p "$DEST/$ver"; cp -a "$stage/." "$DEST/$ver/"
echo "$DEST/$ver/${img#"$stage"/}" > "$marker"
cat "$marker"
