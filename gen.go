// Package hoptrace traces packets across veth pairs and Linux bridges.
//
// The BPF programs live in bpf/; `go generate` (or `make generate`) compiles
// them with clang and writes the Go bindings to tracer/bpfobj. Both the object
// and the bindings are committed so that `go install` needs no clang.
package hoptrace

//go:generate go tool bpf2go -cc clang-19 -target bpfel -go-package bpfobj -output-dir tracer/bpfobj -type event -type pkt_meta -type hook -type event_flag -type stat_counter -type hop_key -type hop_pair -type hist -type dev_key -type run_mode -type filter_flag -type frame_snap Hoptrace bpf/hoptrace.bpf.c -- -I./bpf -O2 -g -Wall -Werror -ffile-prefix-map=$PWD=.
