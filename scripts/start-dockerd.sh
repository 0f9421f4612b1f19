#!/usr/bin/env bash
# Starts dockerd in the background when no daemon answers, and waits (at
# most ~30 s) until it is ready. Idempotent: does nothing when `docker info`
# already works. Logs go to ${DOCKERD_LOG:-/var/log/hoptrace-dockerd.log}.
set -euo pipefail

if docker info >/dev/null 2>&1; then
	exit 0
fi
if ! command -v dockerd >/dev/null; then
	echo "start-dockerd: dockerd not installed (apt-get install -y docker.io)" >&2
	exit 1
fi

log="${DOCKERD_LOG:-/var/log/hoptrace-dockerd.log}"
if ! pgrep -x dockerd >/dev/null; then
	# containerd is started by dockerd itself when it is not running.
	nohup dockerd >>"$log" 2>&1 </dev/null &
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
