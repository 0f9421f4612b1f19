# hoptrace build, test and demo targets. Run as root for test/demo/bench.
# sudo resets PATH; the Go toolchain usually lives here.
export PATH := $(PATH):/usr/local/go/bin
GO ?= go
BIN := bin/hoptrace
GOFLAGS_TEST ?= -count=1
# hoptrace --version: the nearest tag (or the commit) and the commit.
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null)
COMMIT ?= $(shell git rev-parse HEAD 2>/dev/null)
LDFLAGS := -X main.buildVersion=$(VERSION) -X main.buildCommit=$(COMMIT)

.PHONY: all build generate check-generated setup test test-kernels demo bench bench-scale clean

all: build

build:
	$(GO) build -ldflags "$(LDFLAGS)" -o $(BIN) ./cmd/hoptrace

# Regenerates bpf/vmlinux.h-based objects and Go bindings (needs clang-19, libbpf-dev).
generate:
	$(GO) generate ./...

# Fails when the committed BPF objects or bindings differ from a fresh generate.
check-generated: generate
	git diff --exit-code -- tracer/bpfobj bench/hopbench/statefloor_bpfel.go bench/hopbench/statefloor_bpfel.o
	@test -z "$$(git status --porcelain -- tracer/bpfobj bench/hopbench/statefloor_bpfel.go bench/hopbench/statefloor_bpfel.o)" || { echo "generated files not committed"; exit 1; }

# Installs missing Debian packages, starts dockerd, builds the test image.
setup:
	scripts/install-deps.sh
	scripts/start-dockerd.sh
	scripts/docker-test-image.sh

# Everything: unit tests and the privileged suite (root, dockerd for the Docker tests).
test: setup
	$(GO) test $(GOFLAGS_TEST) -p 1 ./...

# The Debian kernels the matrix boots in QEMU (package names, fetched once
# into /var/tmp/vmtest/kernels).
VM_KERNELS ?= linux-image-5.10.0-30-amd64-unsigned linux-image-6.1.0-56-amd64-unsigned linux-image-6.12.117+deb12-amd64-unsigned
# Kernels for test-kernels: "host" (the running kernel, plain go test), Debian
# kernel package names, or paths to a vmlinuz. See docs/kernels.md. CI runs
# KERNELS='$(VM_KERNELS)': its `make test` has just run the host row.
KERNELS ?= host $(VM_KERNELS)

# The privileged non-Docker packages on every kernel in KERNELS, each Debian
# kernel booted in QEMU (root; qemu-system-x86 busybox-static xz-utils zstd
# binutils), then a per-kernel summary. In the VMs the tests marked
# privtest.SameOnEveryKernel skip (docs/kernels.md, "What the VMs run").
test-kernels:
	GO="$(GO)" tools/vmtest/matrix.sh $(KERNELS)

# A busybox container on docker0 pings its gateway while hoptrace traces it.
demo:
	scripts/demo.sh

# Overhead (baseline vs tcpdump vs hoptrace trace vs hoptrace latency, alternating
# rounds), scale (50/200/500 veth pairs) and userspace hot path benchmarks.
# Root; builds its own namespaces and removes them. Writes BENCHMARKS.md.
BENCH_FLAGS ?= -rounds 7 -duration 2s -scale 50,200,500
bench: build
	$(GO) build -o bin/hopbench ./bench/hopbench
	bin/hopbench $(BENCH_FLAGS) -hoptrace $(BIN) -go $(GO) -out BENCHMARKS.md -json bench/results.json

# The scale benchmark alone (report on stdout).
bench-scale: build
	$(GO) build -o bin/hopbench ./bench/hopbench
	bin/hopbench -only scale -scale 50,200,500 -hoptrace $(BIN)

clean:
	rm -rf bin
