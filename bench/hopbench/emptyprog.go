package main

import (
	"errors"
	"fmt"
	"io"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/rlimit"
)

// emptyHooks are the tracepoints `hoptrace trace` attaches to by default.
var emptyHooks = map[string]string{ // tracepoint -> program name
	"net_dev_queue":           "e_net_dev_queue",
	"netif_receive_skb":       "e_netif_receive",
	"kfree_skb":               "e_kfree_skb",
	"consume_skb":             "e_consume_skb",
	"skb_copy_datagram_iovec": "e_copy_datagram",
}

// endHooks are the end tracepoints among them: the ones hoptrace's tcx
// engine attaches too, as frees and socket reads have no device hook.
var endHooks = []string{"kfree_skb", "consume_skb", "skb_copy_datagram_iovec"}

// attachEmpty attaches a program that returns at once to each of hoptrace
// trace's tracepoints: the floor any tp_btf tracer on these hooks pays (the
// trampoline, plus the statistics' clock reads), against which hoptrace's
// own program bodies can be judged.
func attachEmpty() (io.Closer, error) {
	var tps []string
	for tp := range emptyHooks {
		tps = append(tps, tp)
	}
	return attachEmptyOn(tps)
}

// attachEmptyOn attaches the empty program to each of these tracepoints.
func attachEmptyOn(tps []string) (io.Closer, error) {
	if err := rlimit.RemoveMemlock(); err != nil {
		return nil, err
	}
	var c closers
	for _, tp := range tps {
		prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
			Name:         emptyHooks[tp],
			Type:         ebpf.Tracing,
			AttachType:   ebpf.AttachTraceRawTp,
			AttachTo:     tp,
			License:      "GPL",
			Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 0), asm.Return()},
		})
		if err != nil {
			c.Close()
			return nil, fmt.Errorf("empty program for %s: %w", tp, err)
		}
		c = append(c, prog)
		l, err := link.AttachTracing(link.TracingOptions{Program: prog, AttachType: ebpf.AttachTraceRawTp})
		if err != nil {
			c.Close()
			return nil, fmt.Errorf("attach empty program to %s: %w", tp, err)
		}
		c = append(c, l)
	}
	return c, nil
}

// attachIdleFloor is the floor of hoptrace's tcx engine on traffic nobody
// selected: what it attaches, doing nothing. The count-only tcx program on
// the four veth ends the measured packets cross, and the empty program on
// the three end tracepoints, which fire for every skb the host frees.
func attachIdleFloor(nt *Net) (io.Closer, error) {
	tcx, err := attachTCXFloor4(nt)
	if err != nil {
		return nil, err
	}
	ends, err := attachEmptyOn(endHooks)
	if err != nil {
		tcx.Close()
		return nil, err
	}
	return closers{tcx, ends}, nil
}

type closers []io.Closer

func (c closers) Close() error {
	var errs []error
	for i := len(c) - 1; i >= 0; i-- {
		errs = append(errs, c[i].Close())
	}
	return errors.Join(errs...)
}
