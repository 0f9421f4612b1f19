package loader_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"runtime"
	"testing"
	"time"

	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/ringbuf"
	"golang.org/x/sys/unix"

	"github.com/hoptrace/hoptrace/internal/privtest"
	"github.com/hoptrace/hoptrace/tracer/event"
	"github.com/hoptrace/hoptrace/tracer/loader"
	"github.com/hoptrace/hoptrace/tracer/pktfilter"
)

// A UDP datagram over loopback is seen leaving lo and arriving on lo under one
// packet identity; Close leaves no program. (UDP's linear-copy receive path
// has no tracepoint: its delivery is silent.)
func TestLoopbackUDPOneIdentity(t *testing.T) {
	privtest.RequireRoot(t)
	tr, err := loader.Load(loader.Options{})
	if err != nil {
		t.Fatalf("load: %v", err)
	}
	closed := false
	defer func() {
		if !closed {
			tr.Close()
		}
	}()
	progs := privtest.ProgramsOf(t, os.Getpid())
	if len(progs) != len(loader.HopHooks)+len(loader.EndHooks) {
		t.Fatalf("%d hoptrace programs loaded, want %d", len(progs), len(loader.HopHooks)+len(loader.EndHooks))
	}

	rd, err := ringbuf.NewReader(tr.Events())
	if err != nil {
		t.Fatalf("ringbuf reader: %v", err)
	}
	defer rd.Close()

	srv, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	cli, err := net.DialUDP("udp4", nil, srv.LocalAddr().(*net.UDPAddr))
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	if _, err := cli.Write([]byte("hoptrace")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 64)
	srv.SetReadDeadline(time.Now().Add(2 * time.Second))
	if _, _, err := srv.ReadFrom(buf); err != nil {
		t.Fatal(err)
	}
	sport := uint16(cli.LocalAddr().(*net.UDPAddr).Port)
	dport := uint16(srv.LocalAddr().(*net.UDPAddr).Port)

	hooks := map[event.Hook]uint64{}
	readEvents(t, rd, 3*time.Second, func(e *event.Event) bool {
		if e.Meta.L4Proto != event.ProtoUDP || e.Meta.Sport != sport || e.Meta.Dport != dport {
			return false
		}
		hooks[event.Hook(e.Hook)] = e.PktId
		if event.Ifname(e) != "lo" {
			t.Errorf("%s on %q, want lo", event.HookName(event.Hook(e.Hook)), event.Ifname(e))
		}
		return len(hooks) >= 2
	})
	for _, h := range []event.Hook{event.HookNetDevQueue, event.HookNetifReceiveSkb} {
		if _, ok := hooks[h]; !ok {
			t.Errorf("no %s event for the datagram (saw %v)", event.HookName(h), hooks)
		}
	}
	if id := hooks[event.HookNetDevQueue]; id == 0 || hooks[event.HookNetifReceiveSkb] != id {
		t.Errorf("packet ids differ across hops: %v", hooks)
	}

	if err := tr.Close(); err != nil {
		t.Fatalf("close: %v", err)
	}
	closed = true
	if left := privtest.WaitGone(progs, 5*time.Second); len(left) != 0 {
		t.Fatalf("programs %v still loaded 5s after Close", left)
	}
}

// A filter expression's program, injected into the stub, decides which
// packets are tracked; with a snapshot length every event carries the
// frame's first bytes (on lo: a blank Ethernet header, then IPv4).
func TestFilterAndSnapshot(t *testing.T) {
	privtest.RequireRoot(t)
	srv, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	other, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	dport := srv.LocalAddr().(*net.UDPAddr).Port
	_, rd := loadReading(t, loader.Options{Filter: compileFilter(t, fmt.Sprintf("udp dst port %d", dport)), SnapLen: 64})
	for _, dst := range []*net.UDPConn{other, srv, other} {
		c, err := net.DialUDP("udp4", nil, dst.LocalAddr().(*net.UDPAddr))
		if err != nil {
			t.Fatal(err)
		}
		c.Write([]byte("hoptrace"))
		c.Close()
	}
	matched, unmatched := 0, 0
	deadline := time.Now().Add(2 * time.Second)
	for time.Now().Before(deadline) {
		rd.SetDeadline(time.Now().Add(100 * time.Millisecond))
		rec, err := rd.Read()
		if errors.Is(err, os.ErrDeadlineExceeded) {
			continue
		}
		if err != nil {
			t.Fatalf("read: %v", err)
		}
		var e event.Event
		if err := event.Decode(rec.RawSample, &e); err != nil {
			t.Fatal(err)
		}
		if e.Meta.L4Proto != event.ProtoUDP || !net.IP(e.Meta.Daddr[:4]).IsLoopback() {
			continue
		}
		if int(e.Meta.Dport) != dport {
			unmatched++
			continue
		}
		matched++
		snap, data, ok := event.Snapshot(rec.RawSample)
		if event.IsEnd(event.Hook(e.Hook)) {
			continue
		}
		// 14 (Ethernet) + 20 (IPv4) + 8 (UDP) + 8 bytes of payload
		if !ok || snap.Len != 50 || snap.Caplen != 50 || snap.L3 != 0 || len(data) != 50 || data[12] != 0x08 || data[13] != 0x00 || string(data[42:]) != "hoptrace" {
			t.Errorf("%s: snapshot %+v %x", event.HookName(event.Hook(e.Hook)), snap, data)
		}
	}
	if matched < 2 || unmatched != 0 {
		t.Errorf("%d events of the datagram to port %d (want its hops), %d of the others (want 0)", matched, dport, unmatched)
	}
}

// A datagram a UDP socket never read is freed when the socket is destroyed,
// and the kernel holds it with skb->dev in use as UDP's receive scratch (its
// truesize, length and two flags packed where the device pointer was), not a
// device. Its end, under the identity of its hops, carries no device. The
// filter expression gives the programs a subprogram: on Linux before the fix
// "bpf: ensure main program has an extable" (5.10) a load from that scratch
// value faulted and the kernel's exception-table search then panicked
// (docs/kernels.md).
func TestQueuedDatagramFreedOnClose(t *testing.T) {
	privtest.RequireRoot(t)
	sink, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	closed := false
	defer func() {
		if !closed {
			sink.Close()
		}
	}()
	dport := uint16(sink.LocalAddr().(*net.UDPAddr).Port)
	_, rd := loadReading(t, loader.Options{Filter: compileFilter(t, fmt.Sprintf("udp dst port %d", dport))})
	c, err := net.DialUDP("udp4", nil, sink.LocalAddr().(*net.UDPAddr))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Write([]byte("hoptrace")); err != nil {
		t.Fatal(err)
	}
	c.Close()
	ours := func(e *event.Event) bool {
		return e.Meta.L4Proto == event.ProtoUDP && e.Meta.Dport == dport && net.IP(e.Meta.Daddr[:4]).IsLoopback()
	}
	var id uint64
	readEvents(t, rd, 5*time.Second, func(e *event.Event) bool {
		if ours(e) && event.Hook(e.Hook) == event.HookNetifReceiveSkb {
			id = e.PktId
		}
		return id != 0
	})
	if id == 0 {
		t.Fatal("no netif_receive_skb event for the datagram")
	}
	// the datagram waits in the socket's queue, unread; the socket's
	// destruction (after an RCU grace period) frees it
	sink.Close()
	closed = true
	var end *event.Event
	readEvents(t, rd, 10*time.Second, func(e *event.Event) bool {
		if ours(e) && event.IsEnd(event.Hook(e.Hook)) {
			end = e
		}
		return end != nil
	})
	if end == nil {
		t.Fatal("no end event for the datagram freed with its socket")
	}
	if end.PktId != id || end.Ifindex != 0 || event.Ifname(end) != "" {
		t.Errorf("%s of the queued datagram: packet %d on ifindex %d %q, want packet %d with no device",
			event.HookName(event.Hook(end.Hook)), end.PktId, end.Ifindex, event.Ifname(end), id)
	}
}

// compileFilter compiles a filter expression for loader.Options.Filter; the
// test skips without tcpdump, except under CI=true.
func compileFilter(t *testing.T, expr string) asm.Instructions {
	t.Helper()
	prog, err := pktfilter.Compile(context.Background(), expr)
	if err != nil {
		if errors.Is(err, pktfilter.ErrNoCompiler) && os.Getenv("CI") != "true" {
			t.Skip("SKIPPED: tcpdump is not installed")
		}
		t.Fatal(err)
	}
	return prog.Insns
}

// loadReading loads a tracer and opens a reader of its ring buffer, both
// closed when the test ends.
func loadReading(t *testing.T, opts loader.Options) (*loader.Tracer, *ringbuf.Reader) {
	t.Helper()
	tr, err := loader.Load(opts)
	if err != nil {
		t.Fatalf("load: %v", err)
	}
	t.Cleanup(func() { tr.Close() })
	rd, err := ringbuf.NewReader(tr.Events())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rd.Close() })
	return tr, rd
}

// pinToCPU locks the calling goroutine to its thread and that thread to one
// CPU; the thread ends with the goroutine (it is never unlocked).
func pinToCPU(cpu int) error {
	runtime.LockOSThread()
	var set unix.CPUSet
	set.Set(cpu)
	return unix.SchedSetaffinity(0, &set)
}

// The in-flight maps keep one LRU list per CPU (BPF_F_NO_COMMON_LRU), but
// their entries are shared: a TCP segment sent over loopback from a thread
// on CPU 0, whose hops run there, and read by a thread on CPU 1 keeps its
// identity at the socket read on CPU 1, and its free deletes the entry
// made on the other CPU.
func TestIdentityAcrossCPUs(t *testing.T) {
	privtest.RequireRoot(t)
	if runtime.NumCPU() < 2 {
		t.Skip("SKIP: one CPU")
	}
	tr, rd := loadReading(t, loader.Options{})
	ln, err := net.ListenTCP("tcp4", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	port := uint16(ln.Addr().(*net.TCPAddr).Port)
	const writes, size = 200, 1000
	recvd := make(chan error, 1)
	go func() {
		if err := pinToCPU(1); err != nil {
			recvd <- err
			return
		}
		c, err := ln.Accept()
		if err != nil {
			recvd <- err
			return
		}
		defer c.Close()
		_, err = io.CopyN(io.Discard, c, writes*size)
		recvd <- err
	}()
	sent := make(chan error, 1)
	go func() {
		if err := pinToCPU(0); err != nil {
			sent <- err
			return
		}
		c, err := net.DialTCP("tcp4", nil, ln.Addr().(*net.TCPAddr))
		if err != nil {
			sent <- err
			return
		}
		defer c.Close()
		c.SetNoDelay(true)
		buf := make([]byte, size)
		for i := 0; i < writes; i++ {
			if _, err := c.Write(buf); err != nil {
				sent <- err
				return
			}
			time.Sleep(200 * time.Microsecond) // one segment per write
		}
		sent <- nil
	}()
	for _, ch := range []chan error{sent, recvd} {
		if err := <-ch; err != nil {
			t.Fatal(err)
		}
	}

	type life struct {
		bornCPU, readCPU, freeCPU int
		skb                       uint64
	}
	pkts := map[uint64]*life{}
	readEvents(t, rd, 2*time.Second, func(e *event.Event) bool {
		if e.Meta.L4Proto != event.ProtoTCP || e.Meta.Dport != port || e.Meta.IpLen <= 52 {
			return false // data segments to the listener only
		}
		p := pkts[e.PktId]
		if p == nil {
			p = &life{bornCPU: -1, readCPU: -1, freeCPU: -1}
			pkts[e.PktId] = p
		}
		switch {
		case e.Flags&event.FlagNew != 0:
			p.bornCPU, p.skb = int(e.Cpu), e.Skb
		case event.Hook(e.Hook) == event.HookCopyDatagram:
			p.readCPU = int(e.Cpu)
		case event.Hook(e.Hook) == event.HookConsumeSkb || event.Hook(e.Hook) == event.HookKfreeSkb:
			p.freeCPU = int(e.Cpu)
		}
		return false
	})
	crossRead, crossFree := 0, 0
	for id, p := range pkts {
		if p.bornCPU < 0 {
			continue
		}
		if p.readCPU >= 0 && p.readCPU != p.bornCPU {
			crossRead++
		}
		if p.freeCPU >= 0 && p.freeCPU != p.bornCPU {
			crossFree++
			table, err := tr.InFlight()
			if err != nil {
				t.Fatal(err)
			}
			if tr2, ok := table.Find(p.skb); ok && tr2.PktId == id {
				t.Errorf("packet %d freed on CPU %d, born on CPU %d: still in the in-flight map", id, p.freeCPU, p.bornCPU)
			}
		}
	}
	t.Logf("%d data segments: %d read on another CPU than their first hop's, %d freed on another", len(pkts), crossRead, crossFree)
	if crossRead < writes/4 {
		t.Errorf("%d of %d segments kept their identity at a read on another CPU, want most", crossRead, writes)
	}
}
