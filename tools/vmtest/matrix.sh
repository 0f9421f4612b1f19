#!/bin/bash
# matrix.sh [KERNEL...] : run hoptrace's privileged (non-Docker) test
# packages on each kernel and print a per-kernel summary. Run as root from the
# module root (make test-kernels does both).
#
# KERNEL is one of
#   host                      plain `go test` on the running kernel
#   linux-image-...           a Debian kernel package: fetched once with
#                             fetch-kernel.sh, booted with vmrun.sh
#   /path/to/vmlinuz          a kernel image, booted with vmrun.sh
#
# Environment:
#   KERNEL_PKGS   packages to test. Default: those whose tests import
#                 internal/privtest, internal/testnet,
#                 github.com/cilium/ebpf or vishvananda/netlink|netns, except
#                 Docker-only ones (testdocker without privtest/testnet).
#                 Inside the VM HOPTRACE_VM=1 is set: Docker tests skip.
#   MATRIX_JOBS   kernels run in VMs at the same time (default 2; every VM
#                 has one vCPU)
#   MATRIX_OUT    directory for the go test -json logs (default: a temp dir)
#   GO            go command (default go)
#   GOTEST_FLAGS  extra go test flags (e.g. -run TestX or -v)
#   HOPTRACE_BIN  set by this script for the tests: the hoptrace binary,
#                 built once on the host (tracer/e2e runs it)
# Exit status: 0 when every kernel passed, 1 otherwise.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
GO=${GO:-go}
JOBS=${MATRIX_JOBS:-2}
[ $# -gt 0 ] || set -- host
[ "$(id -u)" = 0 ] || echo "matrix: warning: not root; privileged tests will skip on the host row" >&2

if [ -z "${KERNEL_PKGS:-}" ]; then
	# A package needs a kernel when its tests use the privileged-test helpers,
	# BPF or netlink/netns; Docker-only packages (testdocker without
	# privtest/testnet) are left to `make test` on a host with dockerd.
	KERNEL_PKGS=$($GO list -e -f '{{.ImportPath}} {{join .TestImports " "}} {{join .XTestImports " "}} ' ./... | awk '
		{ kern = / github\.com\/hoptrace\/hoptrace\/internal\/(privtest|testnet) / || / github\.com\/cilium\/ebpf[ \/]/ || / github\.com\/vishvananda\/net(link|ns)[ \/]/
		  helper = / github\.com\/hoptrace\/hoptrace\/internal\/(privtest|testnet) /
		  docker = / github\.com\/hoptrace\/hoptrace\/internal\/testdocker /
		  if (kern && (helper || !docker)) print $1 }' | tr '\n' ' ')
fi
[ -n "$KERNEL_PKGS" ] || { echo "matrix: no packages to test" >&2; exit 1; }
OUT=${MATRIX_OUT:-$(mktemp -d /tmp/hoptrace-matrix.XXXXXX)}
mkdir -p "$OUT"
echo "matrix: packages: $KERNEL_PKGS" >&2
echo "matrix: logs in $OUT" >&2

# Compile every test binary once, up front, so the VM runs do not compete
# for the build (the -exec command is `true`: nothing runs).
# shellcheck disable=SC2086
$GO test -count=1 -exec true $KERNEL_PKGS >/dev/null 2>&1 || true   # failures show up per package below
# The command-line tests (tracer/e2e) run this binary instead of building
# their own inside every VM (minutes under emulation). The directory is
# world-readable: one test runs the binary as nobody. It lives beside the
# kernels, not in /tmp, which other work on a shared machine may clean.
mkdir -p "${VMTEST_KERNELS:-/var/tmp/vmtest/kernels}"
BIN_DIR=$(mktemp -d "${VMTEST_KERNELS:-/var/tmp/vmtest/kernels}/.bin.XXXXXX")
trap 'rm -rf "$BIN_DIR"' EXIT
chmod 755 "$BIN_DIR"
$GO build -o "$BIN_DIR/hoptrace" ./cmd/hoptrace
export HOPTRACE_BIN=$BIN_DIR/hoptrace

# run_one INDEX KERNEL: writes $OUT/INDEX.json (go test -json) and $OUT/INDEX.meta.
run_one() {
	local idx=$1 k=$2 img rel exec=() start rc
	local log="$OUT/$idx.json" meta="$OUT/$idx.meta"
	case "$k" in
	host)
		rel=$(uname -r) ;;
	*/*)
		img=$k ;;
	*)
		img=$("$here/fetch-kernel.sh" "$k") || { printf 'label=%s\nrelease=?\nseconds=0\nerror=fetch failed\n' "$k" > "$meta"; : > "$log"; return; } ;;
	esac
	if [ -n "${img:-}" ]; then
		rel=$(basename "$img"); rel=${rel#vmlinuz-}
		[ "$rel" != vmlinuz ] || rel=$(basename "$(dirname "$img")")
		exec=(-exec "$here/vmrun.sh $img --")
	fi
	start=$(date +%s)
	set +e
	# shellcheck disable=SC2086
	$GO test -json -count=1 -p 1 -timeout 10m "${exec[@]}" ${GOTEST_FLAGS:-} $KERNEL_PKGS > "$log" 2> "$OUT/$idx.stderr"
	rc=$?
	set -e
	printf 'label=%s\nrelease=%s\nseconds=%s\nexit=%s\n' "$k" "$rel" "$(($(date +%s) - start))" "$rc" > "$meta"
	echo "matrix: $k ($rel) done in $(($(date +%s) - start))s, go test exit $rc" >&2
}

t0=$(date +%s)
i=0
pids=()
for k in "$@"; do
	i=$((i + 1))
	if [ "$k" = host ]; then
		run_one "$i" "$k"   # alone: timing-sensitive tests run on the real CPUs
		continue
	fi
	run_one "$i" "$k" &
	pids+=($!)
	while [ "$(jobs -rp | wc -l)" -ge "$JOBS" ]; do wait -n || true; done
done
for p in "${pids[@]}"; do wait "$p" || true; done
echo "matrix: total $(($(date +%s) - t0))s" >&2

metas=()
for j in $(seq 1 "$i"); do metas+=("$OUT/$j.meta"); done
$GO build -o "$OUT/summarize" "$here/summarize"
"$OUT/summarize" "${metas[@]}"
