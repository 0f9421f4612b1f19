package main

//go:generate go tool bpf2go -cc clang-19 -target bpfel -type sf_hist -type sf_slot stateFloor ../../bpf/statefloor.bpf.c -- -I../../bpf -O2 -g -Wall -Werror -ffile-prefix-map=$PWD=.

import (
	"fmt"
	"io"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/rlimit"
)

// stateFloor is the per-packet-state floor attached (bpf/statefloor.bpf.c):
// tcx programs on all four veth ends of the measured pair and end programs
// on consume_skb, kfree_skb and skb_copy_datagram_iovec, doing the least any per-hop latency tracer
// must do per packet. One Close detaches and frees everything.
type stateFloor struct {
	objs  stateFloorObjects
	links closers
}

// attachStateFloor is the "state_floor" condition.
func attachStateFloor(nt *Net) (io.Closer, error) { return newStateFloor(nt) }

func newStateFloor(nt *Net) (*stateFloor, error) {
	if err := rlimit.RemoveMemlock(); err != nil {
		return nil, err
	}
	f := &stateFloor{}
	if err := loadStateFloorObjects(&f.objs, nil); err != nil {
		return nil, fmt.Errorf("state floor: load: %w", err)
	}
	tcx, err := attachTCXEnds(nt, f.objs.SfTcxEgress, f.objs.SfTcxIngress, true)
	if err != nil {
		f.objs.Close()
		return nil, fmt.Errorf("state floor: %w", err)
	}
	f.links = tcx
	for _, p := range []*ebpf.Program{f.objs.SfConsumeSkb, f.objs.SfKfreeSkb, f.objs.SfCopyDatagram} {
		l, err := link.AttachTracing(link.TracingOptions{Program: p, AttachType: ebpf.AttachTraceRawTp})
		if err != nil {
			f.Close()
			return nil, fmt.Errorf("state floor: attach %s: %w", p, err)
		}
		f.links = append(f.links, l)
	}
	return f, nil
}

// Counts are the hop intervals recorded per slot, summed over the CPUs.
func (f *stateFloor) Counts() (map[stateFloorSfSlot]uint64, error) {
	out := map[stateFloorSfSlot]uint64{}
	for slot := stateFloorSfSlot(0); slot < stateFloorSfSlotSF_SLOTS; slot++ {
		var per []stateFloorSfHist
		if err := f.objs.SfHists.Lookup(uint32(slot), &per); err != nil {
			return nil, fmt.Errorf("state floor: histogram %d: %w", slot, err)
		}
		for _, h := range per {
			out[slot] += h.Count
		}
	}
	return out, nil
}

func (f *stateFloor) Close() error {
	err := f.links.Close()
	f.links = nil
	if cerr := f.objs.Close(); err == nil {
		err = cerr
	}
	return err
}
