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
#                 github.com/cilium/ebpf (other than its asm package, an
#                 instruction encoder) or vishvananda/netlink|netns, except
#                 Docker-only ones (testdocker without privtest/testnet).
#                 Inside the VM HOPTRACE_VM=1 is set: Docker tests skip, and
#                 so do the tests marked privtest.SameOnEveryKernel.
#   MATRIX_JOBS   VMs running at the same time (default 2; every VM has one
#                 vCPU). Each (package, kernel) pair is a job of its own, so
#                 the VMs stay busy until the last job, whatever the kernels'
#                 durations.
#   MATRIX_OUT    directory for the go test -json logs (default: a temp dir)
#   GO            go command (default go)
#   GOTEST_FLAGS  extra go test flags (e.g. -run TestX or -v)
#   HOPTRACE_BIN  set by this script for the tests: the hoptrace binary,
#                 built once on the host (tracer/e2e, tracer/verify and
#                 cmd/hoptrace run it)
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
		{ line = $0
		  gsub(/ github\.com\/cilium\/ebpf\/asm /, " ", line)   # an instruction encoder: userspace only
		  $0 = line
		  kern = / github\.com\/hoptrace\/hoptrace\/internal\/(privtest|testnet) / || / github\.com\/cilium\/ebpf[ \/]/ || / github\.com\/vishvananda\/net(link|ns)[ \/]/
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
# The command-line tests (tracer/e2e, tracer/verify, cmd/hoptrace) run this
# binary instead of building their own inside every VM (minutes under
# emulation). The directory is world-readable: one test runs the binary as
# nobody. It lives beside the kernels, not in /tmp, which other work on a
# shared machine may clean.
mkdir -p "${VMTEST_KERNELS:-/var/tmp/vmtest/kernels}"
BIN_DIR=$(mktemp -d "${VMTEST_KERNELS:-/var/tmp/vmtest/kernels}/.bin.XXXXXX")
trap 'rm -rf "$BIN_DIR"' EXIT
chmod 755 "$BIN_DIR"
$GO build -o "$BIN_DIR/hoptrace" ./cmd/hoptrace
export HOPTRACE_BIN=$BIN_DIR/hoptrace

# resolve INDEX KERNEL: writes $OUT/INDEX.img (the image to boot, empty for
# the host) and the label and release into $OUT/INDEX.meta; fails when the
# kernel cannot be fetched (the meta file then says so).
resolve() {
	local idx=$1 k=$2 img="" rel
	case "$k" in
	host)
		rel=$(uname -r) ;;
	*/*)
		img=$k ;;
	*)
		img=$("$here/fetch-kernel.sh" "$k") || { printf 'label=%s\nrelease=?\nseconds=0\nerror=fetch failed\n' "$k" > "$OUT/$idx.meta"; : > "$OUT/$idx.json"; return 1; } ;;
	esac
	if [ -n "$img" ]; then
		rel=$(basename "$img"); rel=${rel#vmlinuz-}
		[ "$rel" != vmlinuz ] || rel=$(basename "$(dirname "$img")")
	fi
	printf '%s' "$img" > "$OUT/$idx.img"
	printf 'label=%s\nrelease=%s\n' "$k" "$rel" > "$OUT/$idx.meta"
}

# run_tests LOG IMAGE PACKAGE...: go test -json of the packages into LOG
# (stderr into LOG's .stderr, "seconds exit" into its .rc), in a VM booting
# IMAGE, or on the host when IMAGE is empty.
run_tests() {
	local log=$1 img=$2 exec=() start rc
	shift 2
	[ -z "$img" ] || exec=(-exec "$here/vmrun.sh $img --")
	start=$(date +%s)
	set +e
	# shellcheck disable=SC2086
	$GO test -json -count=1 -p 1 -timeout 10m "${exec[@]}" ${GOTEST_FLAGS:-} "$@" > "$log" 2> "${log%.json}.stderr"
	rc=$?
	set -e
	echo "$(($(date +%s) - start)) $rc" > "${log%.json}.rc"
	[ -z "$img" ] || echo "matrix: $* on $(basename "$img"): $(($(date +%s) - start))s, go test exit $rc" >&2
}

# finish INDEX: joins the kernel's job logs (INDEX.job1, INDEX.job2, ...) into
# INDEX.json and INDEX.stderr and completes INDEX.meta: seconds = the sum of
# its jobs' (the time the kernel's tests took, whatever ran beside them),
# exit = the first non-zero one.
finish() {
	local idx=$1 secs=0 rc=0 s r j=1 job
	: > "$OUT/$idx.json"; : > "$OUT/$idx.stderr"
	while job=$OUT/$idx.job$j; [ -e "$job.json" ]; do
		s=0 r=1   # a job that left no status failed
		[ ! -s "$job.rc" ] || read -r s r < "$job.rc"
		secs=$((secs + s)); [ "$rc" != 0 ] || rc=$r
		cat "$job.json" >> "$OUT/$idx.json"
		cat "$job.stderr" >> "$OUT/$idx.stderr" 2>/dev/null || true
		j=$((j + 1))
	done
	printf 'seconds=%s\nexit=%s\n' "$secs" "$rc" >> "$OUT/$idx.meta"
	echo "matrix: $(sed -n 's/^label=//p' "$OUT/$idx.meta") done: ${secs}s of tests, go test exit $rc" >&2
}

t0=$(date +%s)
i=0
vms=()
for k in "$@"; do
	i=$((i + 1))
	resolve "$i" "$k" || continue
	if [ "$k" = host ]; then
		# alone, before the VMs: timing-sensitive tests run on the real CPUs
		# shellcheck disable=SC2086
		run_tests "$OUT/$i.job1.json" "" $KERNEL_PKGS
		finish "$i"
		continue
	fi
	vms+=("$i")
done
# The VM jobs, package by package, each package on every kernel in turn,
# MATRIX_JOBS at a time: a kernel whose tests take longer no longer holds
# the others back, and two VMs run until the last job.
n=0
for pkg in $KERNEL_PKGS; do
	n=$((n + 1))
	for idx in ${vms[@]+"${vms[@]}"}; do
		run_tests "$OUT/$idx.job$n.json" "$(cat "$OUT/$idx.img")" "$pkg" &
		while [ "$(jobs -rp | wc -l)" -ge "$JOBS" ]; do wait -n || true; done
	done
done
wait
for idx in ${vms[@]+"${vms[@]}"}; do finish "$idx"; done
echo "matrix: total $(($(date +%s) - t0))s" >&2
metas=()
for j in $(seq 1 "$i"); do metas+=("$OUT/$j.meta"); done
$GO build -o "$OUT/summarize" "$here/summarize"
"$OUT/summarize" "${metas[@]}"
