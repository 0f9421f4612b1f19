#!/usr/bin/env bash
# Starts dockerd in the background when no daemon answers, and waits (at
# most ~30 s) until it is ready. Idempotent: does nothing when `docker info`
# already works. Logs go to ${DOCKERD_LOG:-/var/log/hoptrace-dockerd.log}.
# DOCKERD_ARGS adds daemon options (e.g. -H unix:///tmp/d.sock --data-root
# /tmp/d to run a separate daemon; set DOCKER_HOST to match).
set -euo pipefail

if docker info >/dev/null 2>&1; then
	exit 0
fi
if ! command -v dockerd >/dev/null; then
	echo "start-dockerd: dockerd not installed (apt-get install -y docker.io)" >&2
	exit 1
fi

log="${DOCKERD_LOG:-/var/log/hoptrace-dockerd.log}"
if [ -n "${DOCKERD_ARGS:-}" ] || ! pgrep -x dockerd >/dev/null; then
	# dockerd starts its own containerd when none is running.
	# shellcheck disable=SC2086
	nohup dockerd ${DOCKERD_ARGS:-} >>"$log" 2>&1 </dev/null &
	echo "start-dockerd: started dockerd (pid $!), log in $log"
fi

for _ in $(seq 1 60); do
	if docker info >/dev/null 2>&1; then
		exit 0
	fi
	sleep 0.5
done
echo "start-dockerd: dockerd did not become ready within 30 s; last log lines:" >&2
tail -n 20 "$log" >&2 || true
exit 1
