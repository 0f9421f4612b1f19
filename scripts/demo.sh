#!/usr/bin/env bash
# The quick-start demo: installs what is missing, starts dockerd, starts a
# busybox container on docker0 and traces its pings to the docker0 gateway,
# hop by hop, with names. Everything it creates is removed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
	echo "demo: run as root (sudo make demo): tracing loads BPF programs" >&2
	exit 1
fi
scripts/install-deps.sh
scripts/start-dockerd.sh
scripts/docker-test-image.sh
go build -o bin/hoptrace ./cmd/hoptrace

name=hoptrace-demo
docker rm -f "$name" >/dev/null 2>&1 || true
trap 'docker rm -f "$name" >/dev/null 2>&1 || true' EXIT
docker run -d --name "$name" hoptrace-test/busybox:latest sleep 600 >/dev/null
gateway=$(docker inspect -f '{{.NetworkSettings.Gateway}}' "$name")

echo "== hoptrace inspect $name"
bin/hoptrace inspect "$name" || true
echo
echo "== hoptrace trace --container $name --proto icmp --count 4   (the container pings its gateway $gateway twice)"
( sleep 1.5; docker exec "$name" ping -c 2 -W 1 "$gateway" >/dev/null || true ) &
pinger=$!
bin/hoptrace trace --container "$name" --proto icmp --count 4 --duration 15s
wait "$pinger"
