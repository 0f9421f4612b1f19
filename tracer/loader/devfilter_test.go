package loader

import (
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/ringbuf"

	"github.com/hoptrace/hoptrace/internal/privtest"
	"github.com/hoptrace/hoptrace/internal/testnet"
	"github.com/hoptrace/hoptrace/tracer/event"
)

// A selected device starts a path at the tcx program and another device
// does not: the device's Bloom bit, which the loader computes (devFold) and
// the program tests (dev_fold), agree, and a clear bit turns the packet
// away. A test run of the egress program on each device.
func TestDeviceSelectionAtTCX(t *testing.T) {
	privtest.RequireTCX(t, "")
	topo := testnet.New(t, testnet.Options{Hosts: 2})
	sel, other := topo.Hosts[0].HostVethIndex, topo.Hosts[1].HostVethIndex
	tr, err := Load(Options{Engine: EngineTCX, Mode: ModeEvents, FilterKinds: FilterDev})
	if err != nil {
		t.Fatalf("load: %v", err)
	}
	defer tr.Close()
	if err := tr.SelectDevice(topo.HostInode(), sel, true); err != nil {
		t.Fatal(err)
	}
	rd, err := ringbuf.NewReader(tr.Events())
	if err != nil {
		t.Fatal(err)
	}
	defer rd.Close()
	// hops reports how many tcx hops a test run on ifindex produced.
	hops := func(ifindex int) int {
		t.Helper()
		ro := ebpf.RunOptions{Data: udpFrame(), Context: skbCtx{Ifindex: uint32(ifindex)}}
		if _, err := tr.tcx.egress.Run(&ro); err != nil {
			t.Fatalf("test run: %v", err)
		}
		n := 0
		rd.SetDeadline(time.Now().Add(200 * time.Millisecond))
		for {
			rec, err := rd.Read()
			if err != nil {
				return n
			}
			var e event.Event
			if err := event.Decode(rec.RawSample, &e); err != nil {
				t.Fatal(err)
			}
			if e.Hook == uint8(event.HookNetDevQueue) && e.Ifindex == uint32(ifindex) && e.Flags&event.FlagNew != 0 {
				n++
			}
		}
	}
	if n := hops(sel); n != 1 {
		t.Errorf("selected device %d: %d new packets at tcx egress, want 1", sel, n)
	}
	if n := hops(other); n != 0 {
		t.Errorf("unselected device %d: %d new packets at tcx egress, want 0", other, n)
	}
	if err := tr.SelectDevice(topo.HostInode(), sel, false); err != nil {
		t.Fatal(err)
	}
	if n := hops(sel); n != 0 {
		t.Errorf("device %d after its selection ended: %d new packets, want 0", sel, n)
	}
}
