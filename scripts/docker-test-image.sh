#!/usr/bin/env bash
# Builds the image the Docker tests run, hoptrace-test/busybox:latest, from
# the host's static busybox with `docker import` (no registry needed).
# Idempotent: does nothing when the image already exists.
set -euo pipefail

IMAGE="${HOPTRACE_TEST_IMAGE:-hoptrace-test/busybox:latest}"
BUSYBOX="${BUSYBOX:-/bin/busybox}"

if docker image inspect "$IMAGE" >/dev/null 2>&1; then
	exit 0
fi

if [ ! -x "$BUSYBOX" ]; then
	echo "docker-test-image: $BUSYBOX not found (apt-get install -y busybox-static)" >&2
	exit 1
fi

root="$(mktemp -d)"
trap 'rm -rf "$root"' EXIT
mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,etc,proc,sys,dev,tmp,root,var/run}
chmod 1777 "$root/tmp"
cp "$BUSYBOX" "$root/bin/busybox"
chroot "$root" /bin/busybox --install -s
echo 'root:x:0:0:root:/root:/bin/sh' >"$root/etc/passwd"
echo 'root:x:0:' >"$root/etc/group"

tar -C "$root" -c . | docker import \
	--change 'CMD ["/bin/sh"]' \
	--change 'ENV PATH=/usr/sbin:/usr/bin:/sbin:/bin' \
	- "$IMAGE" >/dev/null
echo "docker-test-image: built $IMAGE"
