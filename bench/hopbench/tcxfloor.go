package main

import (
	"fmt"
	"io"
	"net"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/rlimit"
)

// attachTCXFloor attaches a count-only tcx program (one per-CPU counter
// increment, then TCX_NEXT) at ingress and egress of the measured pair's
// host veths: the floor of any per-device tracer, hoptrace's tcx engine
// included.
func attachTCXFloor(nt *Net) (io.Closer, error) { return attachCountOnly(nt, false) }

// attachTCXFloor4 is attachTCXFloor on both ends of both veth pairs (the
// namespaces' eth0 too): the four devices a packet between the two
// crosses, each of which carries hoptrace's tcx programs.
func attachTCXFloor4(nt *Net) (io.Closer, error) { return attachCountOnly(nt, true) }

func attachCountOnly(nt *Net, bothEnds bool) (io.Closer, error) {
	if err := rlimit.RemoveMemlock(); err != nil {
		return nil, err
	}
	var c closers
	counter, err := ebpf.NewMap(&ebpf.MapSpec{Name: "f_count", Type: ebpf.PerCPUArray, KeySize: 4, ValueSize: 8, MaxEntries: 1})
	if err != nil {
		return nil, fmt.Errorf("tcx floor counter: %w", err)
	}
	c = append(c, counter)
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Name:    "f_tcx_count",
		Type:    ebpf.SchedCLS,
		License: "GPL",
		Instructions: asm.Instructions{
			asm.StoreImm(asm.RFP, -4, 0, asm.Word),
			asm.Mov.Reg(asm.R2, asm.RFP),
			asm.Add.Imm(asm.R2, -4),
			asm.LoadMapPtr(asm.R1, counter.FD()),
			asm.FnMapLookupElem.Call(),
			asm.JEq.Imm(asm.R0, 0, "out"),
			asm.LoadMem(asm.R1, asm.R0, 0, asm.DWord),
			asm.Add.Imm(asm.R1, 1),
			asm.StoreMem(asm.R0, 0, asm.R1, asm.DWord),
			asm.Mov.Imm(asm.R0, -1).WithSymbol("out"), // TCX_NEXT
			asm.Return(),
		},
	})
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("tcx floor program: %w", err)
	}
	c = append(c, prog)
	links, err := attachTCXEnds(nt, prog, prog, bothEnds)
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("tcx floor: %w", err)
	}
	return append(c, links...), nil
}

// attachTCXEnds attaches egress and ingress at both directions of the
// measured pair's host veths and, with bothEnds, of their eth0 inside the
// namespaces too. On error, what it attached is detached.
func attachTCXEnds(nt *Net, egress, ingress *ebpf.Program, bothEnds bool) (closers, error) {
	var c closers
	attach := func(ifindex int, where string) error {
		for _, a := range []struct {
			at   ebpf.AttachType
			prog *ebpf.Program
		}{{ebpf.AttachTCXIngress, ingress}, {ebpf.AttachTCXEgress, egress}} {
			l, err := link.AttachTCX(link.TCXOptions{Program: a.prog, Attach: a.at, Interface: ifindex})
			if err != nil {
				return fmt.Errorf("attach to %s: %w", where, err)
			}
			c = append(c, l)
		}
		return nil
	}
	for _, h := range nt.Hosts[:2] {
		ifi, err := net.InterfaceByName(h.HostVeth)
		if err == nil {
			err = attach(ifi.Index, h.HostVeth)
		}
		if err == nil && bothEnds {
			err = h.Do(func() error { return attach(h.Ifindex, h.IfName+" in "+h.Name) })
		}
		if err != nil {
			c.Close()
			return nil, err
		}
	}
	return c, nil
}
