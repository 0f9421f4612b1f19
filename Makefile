# hoptrace build, test and demo targets. Run as root for test/demo/bench.
GO ?= go
BIN := bin/hoptrace
GOFLAGS_TEST ?= -count=1

.PHONY: all build generate check-generated test test-unit test-kernels demo bench clean

all: build

build:
	$(GO) build -o $(BIN) ./cmd/hoptrace

# Regenerates bpf/vmlinux.h-based objects and Go bindings (needs clang-19, libbpf-dev).
generate:
	$(GO) generate ./...

# Fails when the committed BPF objects or bindings differ from a fresh generate.
check-generated: generate
	git diff --exit-code -- tracer/bpfobj

# Everything: unit tests and the privileged suite (root, dockerd for the Docker tests).
test:
	$(GO) test $(GOFLAGS_TEST) -p 1 ./...

# Tests that need no privileges.
test-unit:
	HOPTRACE_UNPRIVILEGED=1 $(GO) test $(GOFLAGS_TEST) ./...

clean:
	rm -rf bin
