#!/usr/bin/env bash
# Installs the Debian packages hoptrace's build, tests, demo and benchmarks
# use. Idempotent: packages already present are not reinstalled, and apt's
# lists are refreshed only when something is missing.
set -euo pipefail

packages=(
	clang-19 llvm-19 libbpf-dev bpftool   # make generate
	libc6-dev                             # TestBucketMatchesC builds hist_bucket() with clang-19
	docker.io busybox-static              # Docker tests and the demo image
	util-linux                            # unshare, nsenter: the hairpin test's second dockerd
	iproute2 iptables nftables ethtool    # test topologies, drop rules, GRO on veths
	iperf3 tcpdump                        # benchmarks; tcpdump compiles filter expressions
	tshark                                # pcapng (-w) tests read the capture with it
	graphviz                              # topology -o dot is rendered in tests
	zsh                                   # the zsh completion script is syntax-checked
	qemu-system-x86 xz-utils zstd binutils # make test-kernels
)
missing=()
for p in "${packages[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
	exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
	echo "install-deps: missing packages (${missing[*]}); run as root" >&2
	exit 1
fi
echo "install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
# tshark's wireshark-common asks whether to install dumpcap setuid: no.
echo "wireshark-common wireshark-common/install-setuid boolean false" | debconf-set-selections
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
