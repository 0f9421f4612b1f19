#!/bin/bash
# vmrun.sh KERNEL_IMAGE -- COMMAND [ARGS...]
#
# Boots KERNEL_IMAGE (an x86-64 bzImage, e.g. a Debian vmlinuz) in a throw-away
# QEMU VM (1 vCPU), runs COMMAND inside it as root, streams its stdout/stderr
# back to this process's stdout/stderr, exits with COMMAND's exit code and
# powers the VM off.
#
# Guest environment:
#   /          = overlayfs: the host's / shared read-only over virtio-9p, with a
#                tmpfs upper layer (guest writes succeed but are discarded)
#   $VMRUN_RW  = colon-separated host directories shared READ-WRITE at the same
#                path. Default: when COMMAND is a binary inside a go-build*
#                work directory (the `go test -exec` case), that directory, so
#                -coverprofile and similar outputs reach the host; else none.
#   cwd, environment (exported variables) and argv are copied from the caller,
#   plus HOPTRACE_VM=1 and HOPTRACE_VM_KERNEL=<kernel version> (tests that need
#   something the VM lacks, such as a Docker daemon, skip on HOPTRACE_VM);
#   stdin is /dev/null. /sys/fs/bpf, tracefs, debugfs, cgroup2 are mounted.
#   Kernel modules are auto-loaded from MODULES_DIR (see below) via busybox
#   modprobe, e.g. veth for `ip link add type veth`.
#
# Modules: KERNEL_IMAGE's modules are looked up in $VMRUN_MODULES, else
# the image's own directory if it is modules/<version>, <dir of image>/../lib/
# modules/<version> or ../usr/lib/modules/<version> (the layouts `dpkg-deb -x`
# produces), else /lib/modules/<version>. modules.dep is generated with busybox depmod on
# first use. The initramfs (busybox + the virtio/9p/overlay modules) is cached
# in $VMRUN_CACHE.
#
# Environment knobs:
#   VMRUN_ACCEL    kvm or tcg. Default: kvm when /dev/kvm is read-writable and
#                  not PVM-backed (PVM only runs PVM-enabled guests), else tcg
#                  (software emulation, ~10x slower for CPU work).
#   VMRUN_MEM      guest RAM in MiB (default 1024, capped at 2048)
#   VMRUN_TIMEOUT  seconds before the VM is killed (default 1200)
#   VMRUN_RW       see above ("" explicitly = nothing read-write)
#   VMRUN_VERBOSE  1 = copy the guest kernel console to stderr after the run
#   VMRUN_CACHE    cache dir (default /var/tmp/vmtest/cache)
#   VMRUN_PVH      1 (default) = boot the vmlinux extracted from the bzImage
#                  via its PVH note (faster); 0 = boot the bzImage as is
#   VMRUN_APPEND   extra kernel command line (e.g. "loglevel=7")
#
# Exit status: COMMAND's status; 125 if the VM failed before reporting one
# (the guest console log is then printed to stderr); 124 on timeout.
set -euo pipefail

die() { echo "vmrun: $*" >&2; exit 125; }

[ $# -ge 3 ] && [ "$2" = "--" ] || die "usage: $0 KERNEL_IMAGE -- COMMAND [ARGS...]"
KERNEL=$(readlink -f "$1"); shift 2
[ -f "$KERNEL" ] || die "kernel image $KERNEL not found"

if [ -z "${VMRUN_ACCEL:-}" ]; then
	VMRUN_ACCEL=tcg
	[ -r /dev/kvm ] && [ -w /dev/kvm ] && [ ! -d /sys/module/kvm_pvm ] && VMRUN_ACCEL=kvm
fi
ACCEL=$VMRUN_ACCEL
MEM=${VMRUN_MEM:-1024}; [ "$MEM" -le 2048 ] || MEM=2048
TIMEOUT=${VMRUN_TIMEOUT:-1200}
CACHE=${VMRUN_CACHE:-/var/tmp/vmtest/cache}
BUSYBOX=${VMRUN_BUSYBOX:-/bin/busybox}   # must be static (Debian: busybox-static)
command -v qemu-system-x86_64 >/dev/null || die "qemu-system-x86_64 missing (apt-get install qemu-system-x86)"
[ -x "$BUSYBOX" ] || die "static busybox missing at $BUSYBOX (apt-get install busybox-static)"
mkdir -p "$CACHE"
case "$CACHE" in *[[:space:],]*) die "VMRUN_CACHE must not contain whitespace or commas" ;; esac
if [ "$ACCEL" = kvm ] && [ -d /sys/module/kvm_pvm ]; then
	die "/dev/kvm is backed by kvm_pvm (PVM): it only runs PVM-enabled guest kernels; use VMRUN_ACCEL=tcg"
fi
exec 9>>"$CACHE/.lock"
flock 9   # serialises depmod / initramfs / vmlinux preparation between concurrent runs

# --- kernel version from the bzImage setup header ("HdrS" at 0x202, version string pointer at 0x20e)
if [ "$(dd if="$KERNEL" bs=1 skip=$((0x202)) count=4 2>/dev/null)" = "HdrS" ]; then
	off=$(od -An -tu2 -j $((0x20e)) -N2 "$KERNEL" | tr -d ' ')
	KVER=$(dd if="$KERNEL" bs=1 skip=$((off + 0x200)) count=200 2>/dev/null | tr '\0' '\n' | head -n1 | cut -d' ' -f1)
else
	die "$KERNEL is not an x86 bzImage"
fi
[ -n "$KVER" ] || die "cannot read kernel version from $KERNEL"

# --- modules
MODDIR=${VMRUN_MODULES:-}
if [ -z "$MODDIR" ]; then
	kdir=$(dirname "$KERNEL")
	# dpkg-deb -x layouts: boot/vmlinuz-V + lib/modules/V (Debian 12), or
	# usr/lib/modules/V/vmlinuz (Debian 13 linux-binary-V + linux-modules-V)
	for d in "$kdir" "$kdir/../lib/modules/$KVER" "$kdir/../usr/lib/modules/$KVER" "/lib/modules/$KVER"; do
		[ -d "$d/kernel" ] && [ "$(basename "$(readlink -f "$d")")" = "$KVER" ] && { MODDIR=$(readlink -f "$d"); break; }
	done
fi
case "$MODDIR" in *[[:space:]]*) die "modules directory must not contain whitespace: $MODDIR" ;; esac
if [ -n "$MODDIR" ] && [ ! -s "$MODDIR/modules.dep" ]; then
	echo "vmrun: generating $MODDIR/modules.dep (one-time)" >&2
	base=${MODDIR%/lib/modules/$KVER}
	[ "$base" != "$MODDIR" ] || die "cannot derive depmod base from $MODDIR"
	"$BUSYBOX" depmod -b "$base" "$KVER"
fi

# --- initramfs (cached per kernel version + this script's content)
SELF_HASH=$(sha256sum "${BASH_SOURCE[0]}" | cut -c1-12)
INITRD="$CACHE/initramfs-$KVER-$SELF_HASH.cpio.gz"
build_initramfs() {
	local tmp; tmp=$(mktemp -d "$CACHE/initramfs.XXXXXX")
	mkdir -p "$tmp"/{bin,proc,sys,dev,lower,rw,newroot,vmrun,modules}
	cp "$BUSYBOX" "$tmp/bin/busybox"
	: > "$tmp/modules/load.list"
	if [ -n "$MODDIR" ]; then
		# dependency-ordered closure of the modules the boot needs (built-ins are skipped)
		declare -A seen=()
		add() { # $1 = module name
			local rel line dep
			line=$(grep -E "(^|/)$1\.ko(\.xz|\.zst|\.gz)?:" "$MODDIR/modules.dep" | head -n1) || return 0
			rel=${line%%:*}
			[ -z "${seen[$rel]:-}" ] || return 0
			seen[$rel]=1
			for dep in ${line#*:}; do add "$(basename "${dep%%.ko*}")"; done
			local out="$tmp/modules/$(basename "${rel%%.ko*}").ko"
			case "$rel" in
			*.xz) xz -dc "$MODDIR/$rel" > "$out" ;;
			*.zst) zstd -dcq "$MODDIR/$rel" > "$out" ;;
			*.gz) gzip -dc "$MODDIR/$rel" > "$out" ;;
			*) cp "$MODDIR/$rel" "$out" ;;
			esac
			basename "$out" >> "$tmp/modules/load.list"
		}
		for m in virtio virtio_ring virtio_pci virtio_console 9pnet_virtio 9p overlay; do add "$m"; done
	fi
	cat > "$tmp/init" <<'STAGE1'
#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
KMSG=/dev/kmsg
mark() { echo "<6>vmrun: $*" > $KMSG; }
mark stage1 start
fail() { echo "vmrun-init: $*" >&2; [ -w /vmrun ] && echo "$*" > /vmrun/init-error; sync; reboot -f; }
while read -r m; do insmod "/modules/$m" 2>/dev/null || grep -q "^${m%.ko} " /proc/modules || fail "insmod $m"; done < /modules/load.list
mark modules loaded
RUNDIR= MODDIR=
for a in $(cat /proc/cmdline); do
	case "$a" in vmrun.dir=*) RUNDIR=${a#vmrun.dir=} ;; vmrun.mod=*) MODDIR=${a#vmrun.mod=} ;; esac
done
O=trans=virtio,version=9p2000.L,msize=262144
mount -t 9p -o $O vmrun /vmrun || fail "mount run dir"
mount -t 9p -o $O,ro,cache=loose hostroot /lower || fail "mount host root"
mount -t tmpfs -o mode=0755 tmpfs /rw && mkdir /rw/upper /rw/work
mount -t overlay -o lowerdir=/lower,upperdir=/rw/upper,workdir=/rw/work overlay /newroot || fail "mount overlay"
while read -r tag path; do
	[ -n "$tag" ] || continue
	mkdir -p "/newroot$path" && mount -t 9p -o $O "$tag" "/newroot$path" || fail "mount $tag at $path"
done < /vmrun/rw.list
mark root mounted
mount -t tmpfs -o mode=0755 tmpfs /newroot/run
mkdir -p /newroot/run/vmrun
cp /bin/busybox /newroot/run/vmrun/busybox
ln -s busybox /newroot/run/vmrun/modprobe
if [ -n "$MODDIR" ]; then
	mkdir -p "/newroot/lib/modules/$(uname -r)" && mount --bind "/newroot$MODDIR" "/newroot/lib/modules/$(uname -r)"
	echo /run/vmrun/modprobe > /proc/sys/kernel/modprobe
fi
hostname vmrun
ip link set lo up
cp /vmrun/stage2.sh /newroot/run/vmrun/stage2.sh
mount --move /vmrun "/newroot$RUNDIR" || fail "move run dir"
R=/newroot
for d in proc sys dev; do mount --move /$d $R/$d; done
KMSG=$R/dev/kmsg
mkdir -p $R/dev/pts $R/dev/shm
mount -t devpts -o newinstance,ptmxmode=0666 devpts $R/dev/pts
mount -t tmpfs tmpfs $R/dev/shm
ln -sf /proc/self/fd $R/dev/fd; ln -sf fd/0 $R/dev/stdin; ln -sf fd/1 $R/dev/stdout; ln -sf fd/2 $R/dev/stderr
mount -t bpf bpf $R/sys/fs/bpf
mount -t tracefs tracefs $R/sys/kernel/tracing
mount -t debugfs debugfs $R/sys/kernel/debug
mount -t cgroup2 cgroup2 $R/sys/fs/cgroup
OUT=/dev/console ERR=/dev/console
for p in $R/sys/class/virtio-ports/*; do
	case "$(cat "$p/name" 2>/dev/null)" in
	vmrun.stdout) OUT=/dev/${p##*/} ;;
	vmrun.stderr) ERR=/dev/${p##*/} ;;
	esac
done
echo "__vmrun_out=$OUT __vmrun_err=$ERR" > $R/run/vmrun/ports.sh
mark switching root
exec switch_root /newroot /bin/bash /run/vmrun/stage2.sh "$RUNDIR"
STAGE1
	chmod +x "$tmp/init"
	(cd "$tmp" && find . | "$BUSYBOX" cpio -o -H newc 2>/dev/null | gzip -1) > "$tmp.cpio.gz"
	mv "$tmp.cpio.gz" "$INITRD"
	rm -rf "$tmp"
}
[ -s "$INITRD" ] || { rm -f "$CACHE/initramfs-$KVER-"*.cpio.gz; build_initramfs; }

# --- boot an uncompressed vmlinux through its PVH entry point when possible:
# decompressing the bzImage under TCG costs ~2.5 s for an xz kernel (6.1).
BOOT_IMAGE=$KERNEL
extract_vmlinux() { # $1 = output
	local sects off len start magic dec strip=4
	sects=$(od -An -tu1 -j $((0x1f1)) -N1 "$KERNEL" | tr -d ' '); [ "$sects" != 0 ] || sects=4
	off=$(od -An -tu4 -j $((0x248)) -N4 "$KERNEL" | tr -d ' ')
	len=$(od -An -tu4 -j $((0x24c)) -N4 "$KERNEL" | tr -d ' ')
	start=$(((sects + 1) * 512 + off))
	magic=$(od -An -tx1 -j "$start" -N4 "$KERNEL" | tr -d ' ')
	case "$magic" in
	1f8b*) dec="gzip -dc" strip=0 ;;
	fd377a58) dec="xz -dc" ;;
	28b52ffd) dec="zstd -dcq" ;;
	02214c18) dec="lz4 -dc" ;;
	*) return 1 ;;
	esac
	local tmp; tmp=$(mktemp "$1.XXXXXX")
	tail -c +$((start + 1)) "$KERNEL" | head -c $((len - strip)) | $dec > "$tmp" 2>/dev/null || true
	[ "$(head -c 4 "$tmp" | od -An -tx1 | tr -d ' ')" = 7f454c46 ] &&
		readelf -n "$tmp" 2>/dev/null | grep -q 'note type: (0x00000012)' || { rm -f "$tmp"; return 1; }
	mv "$tmp" "$1"
}
if [ "${VMRUN_PVH:-1}" = 1 ] && command -v readelf >/dev/null; then
	VMLINUX="$CACHE/vmlinux-$KVER-$(stat -c %s-%Y "$KERNEL")"
	if [ -s "$VMLINUX" ] || { rm -f "$CACHE/vmlinux-$KVER-"*; extract_vmlinux "$VMLINUX"; }; then
		BOOT_IMAGE=$VMLINUX
	fi
fi
flock -u 9; exec 9>&-

# --- per-run directory, shared read-write with the guest
RUNDIR=$(mktemp -d "$CACHE/run.XXXXXX")
QEMU_PID= CAT_OUT= CAT_ERR=
cleanup() {
	local p
	for p in $QEMU_PID $CAT_OUT $CAT_ERR; do kill "$p" 2>/dev/null || true; done
	rm -rf "$RUNDIR"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

__vmrun_cmd=("$@")
declare -p __vmrun_cmd > "$RUNDIR/cmd.sh"
pwd > "$RUNDIR/cwd"
for v in $(compgen -e); do
	case "$v" in BASH*|SHELLOPTS|SHLVL|PWD|OLDPWD|_|HOSTNAME|EUID|UID|PPID|TERM) continue ;; esac
	printf 'export %s=%q\n' "$v" "${!v}"
done > "$RUNDIR/env.sh"
printf 'export HOPTRACE_VM=1 HOPTRACE_VM_KERNEL=%q\n' "$KVER" >> "$RUNDIR/env.sh"
cat > "$RUNDIR/stage2.sh" <<'STAGE2'
#!/bin/bash
# PID 1 inside the VM, on the overlay root. Only bash builtins before the command:
# every exec of a host binary goes through 9p and costs tens of ms under TCG.
__vmrun_dir=$1
source "$__vmrun_dir/env.sh"   # the caller's exported variables
source /run/vmrun/ports.sh     # __vmrun_out / __vmrun_err: virtio-serial ports
source "$__vmrun_dir/cmd.sh"   # __vmrun_cmd: argv
cd "$(<"$__vmrun_dir/cwd")" || { echo "cd failed" > "$__vmrun_dir/init-error"; exec /run/vmrun/busybox reboot -f; }
echo "<6>vmrun: starting command" > /dev/kmsg
: > "$__vmrun_dir/started"
"${__vmrun_cmd[@]}" </dev/null >"$__vmrun_out" 2>"$__vmrun_err"
echo $? > "$__vmrun_dir/exitcode"
exec /run/vmrun/busybox reboot -f
STAGE2

# read-write shares
if [ -z "${VMRUN_RW+x}" ]; then
	VMRUN_RW=
	case "$1" in */go-build*/*) [ -d "$(dirname "$1")" ] && VMRUN_RW=$(cd "$(dirname "$1")" && pwd -P) ;; esac
fi
RWARGS=()
i=0
: > "$RUNDIR/rw.list"
IFS=: read -r -a rwdirs <<< "$VMRUN_RW"
for d in "${rwdirs[@]}"; do
	[ -n "$d" ] || continue
	d=$(readlink -f "$d"); [ -d "$d" ] || die "VMRUN_RW: $d is not a directory"
	case "$d" in *,*) die "VMRUN_RW: commas are not supported in $d" ;; esac
	RWARGS+=(-fsdev "local,id=rw$i,path=$d,security_model=none,multidevs=remap"
		-device "virtio-9p-pci,fsdev=rw$i,mount_tag=vmrun_rw$i")
	printf 'vmrun_rw%d %s\n' "$i" "$d" >> "$RUNDIR/rw.list"
	i=$((i + 1))
done

case "$ACCEL" in
tcg) ACCELARGS=(-accel tcg -cpu max) ;;
kvm) ACCELARGS=(-accel kvm -cpu host) ;;
*) die "VMRUN_ACCEL must be tcg or kvm" ;;
esac

APPEND="console=ttyS0 quiet panic=-1 vmrun.dir=$RUNDIR${MODDIR:+ vmrun.mod=$MODDIR} ${VMRUN_APPEND:-}"

# The guest's stdout/stderr arrive on two virtio-serial ports whose QEMU
# backends are FIFOs; `cat` copies them to our own stdout/stderr (inheriting
# the file descriptors keeps offsets right when they are regular files).
# fds 3/4 hold each FIFO open read-write so no open() ever blocks.
mkfifo "$RUNDIR/stdout.fifo" "$RUNDIR/stderr.fifo"
exec 3<>"$RUNDIR/stdout.fifo" 4<>"$RUNDIR/stderr.fifo"
cat "$RUNDIR/stdout.fifo" 3>&- 4>&- &
CAT_OUT=$!
cat "$RUNDIR/stderr.fifo" >&2 3>&- 4>&- &
CAT_ERR=$!

START=$(date +%s.%N)
set +e
timeout -k 5 "$TIMEOUT" qemu-system-x86_64 \
	"${ACCELARGS[@]}" -smp 1 -m "$MEM" \
	-nodefaults -no-user-config -display none -no-reboot \
	-kernel "$BOOT_IMAGE" -initrd "$INITRD" -append "$APPEND" \
	-serial "file:$RUNDIR/console.log" \
	-device virtio-serial-pci \
	-chardev "file,id=vmout,path=$RUNDIR/stdout.fifo" \
	-device virtserialport,chardev=vmout,name=vmrun.stdout \
	-chardev "file,id=vmerr,path=$RUNDIR/stderr.fifo" \
	-device virtserialport,chardev=vmerr,name=vmrun.stderr \
	-fsdev "local,id=hostroot,path=/,security_model=none,readonly=on,multidevs=remap" \
	-device virtio-9p-pci,fsdev=hostroot,mount_tag=hostroot \
	-fsdev "local,id=vmrun,path=$RUNDIR,security_model=none" \
	-device virtio-9p-pci,fsdev=vmrun,mount_tag=vmrun \
	"${RWARGS[@]}" </dev/null >"$RUNDIR/qemu.err" 2>&1 3>&- 4>&- &
QEMU_PID=$!
wait "$QEMU_PID"
qrc=$?
QEMU_PID=
exec 3>&- 4>&-   # with QEMU gone this lets both cats reach EOF after draining
wait "$CAT_OUT" "$CAT_ERR"
CAT_OUT= CAT_ERR=
set -e
END=$(date +%s.%N)

if [ "${VMRUN_VERBOSE:-0}" = 1 ]; then
	echo "--- vmrun: guest console ($KVER) ---" >&2
	cat "$RUNDIR/console.log" >&2 || true
	# the host-side mtime of "started" (written through 9p just before the
	# command is exec'd) avoids the guest's coarse RTC-based wall clock
	[ ! -f "$RUNDIR/started" ] || awk -v s="$START" -v c="$(stat -c %.9Y "$RUNDIR/started")" -v e="$END" \
		'BEGIN { printf "--- vmrun: boot-to-command %.2fs, total %.2fs ---\n", c - s, e - s }' >&2
fi
if [ -f "$RUNDIR/exitcode" ]; then
	exit "$(cat "$RUNDIR/exitcode")"
fi
if [ "$qrc" = 124 ]; then
	echo "vmrun: timed out after ${TIMEOUT}s" >&2
else
	echo "vmrun: VM ended without an exit code (qemu status $qrc)" >&2
fi
[ ! -s "$RUNDIR/init-error" ] || echo "vmrun: guest init: $(cat "$RUNDIR/init-error")" >&2
[ ! -s "$RUNDIR/qemu.err" ] || { echo "--- qemu stderr ---" >&2; cat "$RUNDIR/qemu.err" >&2; }
echo "--- guest console (last 40 lines) ---" >&2
tail -n 40 "$RUNDIR/console.log" >&2 || true
[ "$qrc" = 124 ] && exit 124
exit 125
