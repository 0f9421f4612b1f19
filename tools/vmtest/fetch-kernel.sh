#!/bin/bash
# fetch-kernel.sh PACKAGE... : download Debian kernel package(s) with
# `apt-get download` and unpack them with `dpkg-deb -x` (nothing is installed
# on the host) into $VMTEST_KERNELS/<kernel version>/, then print the path of
# the vmlinuz for vmrun.sh. Idempotent: a package set fetched before is not
# downloaded again (delete its directory to force it).
#   bookworm:  fetch-kernel.sh linux-image-6.12.117+deb12-amd64-unsigned
#              fetch-kernel.sh linux-image-6.1.0-56-amd64-unsigned
#   bullseye:  fetch-kernel.sh linux-image-5.10.0-30-amd64-unsigned
#   trixie-style split packages need linux-binary-V and linux-modules-V.
#
# Packages in the host's apt sources are fetched with the host's apt
# configuration (apt-get update first). Others are looked up in the suites of
# $VMTEST_SUITES (default: bullseye bullseye-security) through an apt
# configuration of this script's own under $VMTEST_KERNELS/.apt: its own
# sources list (the host's Debian mirror, found in /etc/apt/sources.list*,
# with those suites), lists and cache. The host's /etc/apt and its lists are
# never changed, and only the named packages are downloaded.
set -euo pipefail
[ $# -ge 1 ] || { echo "usage: $0 PACKAGE..." >&2; exit 2; }
DEST=${VMTEST_KERNELS:-/var/tmp/vmtest/kernels}
SUITES=${VMTEST_SUITES:-bullseye bullseye-security}
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

# host_mirrors: "MAIN SECURITY" archive URIs of the host's Debian sources
# (one-line .list and deb822 .sources), else deb.debian.org.
host_mirrors() {
	local main="" sec="" f
	while read -r uri suite; do
		case "$suite" in
		*-security) [ -n "$sec" ] || sec=$uri ;;
		*-updates | *-backports | *-proposed-updates) ;;
		*) [ -n "$main" ] || main=$uri ;;
		esac
	done < <(for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
		[ -f "$f" ] || continue
		case "$f" in
		*.sources)
			# deb822 stanzas: every URI with every suite of a "Types: deb" stanza
			awk 'function flush() { if (deb) for (i in u) for (j in s) print u[i], s[j]; delete u; delete s; deb = 0 }
				/^[ \t]*$/ { flush(); next }
				/^Types:/ { deb = ($0 ~ /(^|[ \t])deb([ \t]|$)/) }
				/^URIs:/ { n = split($0, a, /[ \t]+/); for (i = 2; i <= n; i++) u[i] = a[i] }
				/^Suites:/ { n = split($0, a, /[ \t]+/); for (i = 2; i <= n; i++) s[i] = a[i] }
				/^Enabled:[ \t]*no/ { deb = 0 }
				END { flush() }' "$f" ;;
		*)
			sed -E -n 's/^[[:space:]]*deb[[:space:]]+(\[[^]]*\][[:space:]]+)?([^[:space:]]+)[[:space:]]+([^[:space:]]+).*/\2 \3/p' "$f" ;;
		esac
	done | grep -E '^[a-z]+://[^ ]*/debian(-security)?/? ' || true)
	main=${main%/}
	[ -n "$main" ] || main=http://deb.debian.org/debian
	sec=${sec%/}
	[ -n "$sec" ] || sec=${main%/debian}/debian-security
	echo "$main $sec"
}

# own_apt: sets APT_OPTS to an apt configuration of this script's own for
# $SUITES and refreshes its lists when they are a day old.
own_apt() {
	local dir="$DEST/.apt" main sec s uri
	read -r main sec < <(host_mirrors)
	mkdir -p "$dir/lists/partial" "$dir/cache/archives/partial" "$dir/parts"
	for s in $SUITES; do
		uri=$main
		case "$s" in *-security) uri=$sec ;; esac
		echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $uri $s main"
	done > "$dir/sources.list.new"
	: >> "$dir/status"
	APT_OPTS=(-o "Dir::Etc::SourceList=$dir/sources.list" -o "Dir::Etc::SourceParts=$dir/parts"
		-o "Dir::Etc::Preferences=$dir/preferences" -o "Dir::Etc::PreferencesParts=$dir/parts"
		-o "Dir::State::Lists=$dir/lists" -o "Dir::Cache=$dir/cache" -o "Dir::State::Status=$dir/status"
		-o "APT::Sandbox::User=root"
		-o "Acquire::IndexTargets::deb::DEP-11::DefaultEnabled=false"
		-o "Acquire::IndexTargets::deb::DEP-11-icons::DefaultEnabled=false"
		-o "Acquire::IndexTargets::deb::DEP-11-icons-small::DefaultEnabled=false"
		-o "Acquire::IndexTargets::deb::Contents-deb::DefaultEnabled=false")
	if ! cmp -s "$dir/sources.list.new" "$dir/sources.list" || [ -z "$(find "$dir/lists" -maxdepth 1 -name '*_Packages*' -mmin -1440 -print -quit)" ]; then
		mv "$dir/sources.list.new" "$dir/sources.list"
		echo "fetch-kernel: apt-get update for $SUITES from $main (own apt configuration in $dir)" >&2
		apt-get "${APT_OPTS[@]}" update -qq >&2 || { echo "fetch-kernel: apt-get update of $SUITES failed" >&2; exit 1; }
	else
		rm -f "$dir/sources.list.new"
	fi
}

tmp=$(mktemp -d "$DEST/.tmp.XXXXXX"); trap 'rm -rf "$tmp"' EXIT
chmod 755 "$tmp"   # apt's _apt user downloads into it when it can
APT_OPTS=()
if ! apt-cache show --no-all-versions "$@" >/dev/null 2>&1; then
	own_apt
	apt-cache "${APT_OPTS[@]}" show --no-all-versions "$@" >/dev/null 2>"$tmp/apt.err" ||
		{ cat "$tmp/apt.err" >&2; echo "fetch-kernel: $* neither in the host's apt sources nor in $SUITES" >&2; exit 1; }
fi
(cd "$tmp" && apt-get "${APT_OPTS[@]}" download "$@" >/dev/null 2>"$tmp/apt.err") || { cat "$tmp/apt.err" >&2; exit 1; }
stage="$tmp/root"; mkdir -p "$stage"
for f in "$tmp"/*.deb; do dpkg-deb -x "$f" "$stage"; done
img=$(find "$stage" \( -path '*/boot/vmlinuz-*' -o -path '*/modules/*/vmlinuz' \) | head -n1)
[ -n "$img" ] || { echo "no vmlinuz in $*" >&2; exit 1; }
ver=$(find "$stage" -maxdepth 4 -type d -path '*/lib/modules/*' | head -n1 | xargs basename)
rm -rf "${DEST:?}/$ver"
mkdir -p "$DEST/$ver"; cp -a "$stage/." "$DEST/$ver/"
echo "$DEST/$ver/${img#"$stage"/}" > "$marker"
cat "$marker"
