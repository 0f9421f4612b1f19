package loader

import (
	"runtime"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/ringbuf"
	"golang.org/x/sys/unix"

	"github.com/hoptrace/hoptrace/internal/privtest"
	"github.com/hoptrace/hoptrace/internal/testnet"
	"github.com/hoptrace/hoptrace/tracer/bpfobj"
	"github.com/hoptrace/hoptrace/tracer/event"
	"github.com/hoptrace/hoptrace/tracer/kernel"
)

// The marks decide whether an skb is looked up at all. A live in-flight
// entry planted at the address a test run's skb will take (the slab hands
// a freed skb back to the next allocation on its CPU) is found while that
// address's slot is young: the program takes it for an earlier packet's
// entry whose headers differ and counts a reused address. Once the epoch
// has moved mark_ttl on, the same planted entry is never looked up: the
// packet is new without a lookup, and nothing is counted. Each half fails
// when its part of the marks is missing: a slot left unstamped by an
// insert fails the first, a check that never rejects fails the second.
func TestMarksGateTheLookups(t *testing.T) {
	privtest.RequireRoot(t)
	if !kernel.ProbeTCX().Available {
		t.Skip("SKIP: no tcx on this kernel")
	}
	topo := testnet.New(t, testnet.Options{Hosts: 1})
	host := topo.Hosts[0]
	tr, err := Load(Options{Engine: EngineTCX, Mode: ModeEvents, FilterKinds: FilterDev})
	if err != nil {
		t.Fatalf("load: %v", err)
	}
	defer tr.Close()
	if err := tr.SelectDevice(topo.HostInode(), host.HostVethIndex, true); err != nil {
		t.Fatal(err)
	}
	rd, err := ringbuf.NewReader(tr.Events())
	if err != nil {
		t.Fatal(err)
	}
	defer rd.Close()

	// One CPU, so that the next run's skb is the one this run freed.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	var cpus unix.CPUSet
	cpus.Set(0)
	if err := unix.SchedSetaffinity(0, &cpus); err != nil {
		t.Fatal(err)
	}

	frame := udpFrame()
	ctx := skbCtx{Ifindex: uint32(host.HostVethIndex)}
	// run is one test run of the egress program: the skb address of its
	// hop, and whether it was a new packet.
	run := func() (skb uint64, isNew bool) {
		t.Helper()
		if _, err := tr.tcx.egress.Run(&ebpf.RunOptions{Data: frame, Context: ctx}); err != nil {
			t.Fatalf("test run: %v", err)
		}
		rd.SetDeadline(time.Now().Add(time.Second))
		for {
			rec, err := rd.Read()
			if err != nil {
				t.Fatalf("no hop event from the test run: %v", err)
			}
			var e event.Event
			if err := event.Decode(rec.RawSample, &e); err != nil {
				t.Fatal(err)
			}
			if e.Hook == uint8(event.HookNetDevQueue) {
				// the run's free follows: drain it
				rd.SetDeadline(time.Now().Add(50 * time.Millisecond))
				for {
					if _, err := rd.Read(); err != nil {
						break
					}
				}
				return e.Skb, e.Flags&event.FlagNew != 0
			}
		}
	}
	reused := func() uint64 {
		t.Helper()
		st, err := tr.Stats()
		if err != nil {
			t.Fatal(err)
		}
		return st.Reused
	}
	// plant writes a live entry at addr, of a packet with other headers.
	plant := func(addr uint64) {
		t.Helper()
		v := bpfobj.HoptracePktTrack{PktId: 1 << 60, Fp: 1, LastTs: monotonicNs()}
		if err := tr.InFlight().Put(addr, v); err != nil {
			t.Fatal(err)
		}
	}

	// attempt plants an entry where the last skb was and runs again: ok
	// when the run's skb took that address, and then whether it counted
	// the entry as reused.
	attempt := func(age bool) (ok, counted bool) {
		prev, _ := run()
		plant(prev)
		if age {
			for range markTTL(time.Second) {
				tr.quiet.advance()
			}
		}
		before := reused()
		skb, isNew := run()
		if skb != prev {
			_ = tr.InFlight().Delete(prev)
			return false, false
		}
		if !isNew {
			t.Fatalf("the planted entry (other headers) continued a packet")
		}
		return true, reused() > before
	}
	for _, c := range []struct {
		name string
		age  bool
		want bool
	}{
		{"young slot: looked up", false, true},
		{"old slot: not looked up", true, false},
	} {
		var done bool
		for range 50 {
			ok, counted := attempt(c.age)
			if !ok {
				continue
			}
			done = true
			if counted != c.want {
				t.Errorf("%s: reused address counted %v, want %v", c.name, counted, c.want)
			}
			break
		}
		if !done {
			t.Fatalf("%s: no test run's skb took the previous one's address in 50 tries", c.name)
		}
	}
}
