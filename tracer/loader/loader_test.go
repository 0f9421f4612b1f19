package loader_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"testing"
	"time"

	"github.com/cilium/ebpf/ringbuf"

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
	deadline := time.Now().Add(3 * time.Second)
	for time.Now().Before(deadline) && len(hooks) < 2 {
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
		if e.Meta.L4Proto != event.ProtoUDP || e.Meta.Sport != sport || e.Meta.Dport != dport {
			continue
		}
		hooks[event.Hook(e.Hook)] = e.PktId
		if event.Ifname(&e) != "lo" {
			t.Errorf("%s on %q, want lo", event.HookName(event.Hook(e.Hook)), event.Ifname(&e))
		}
	}
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
	prog, err := pktfilter.Compile(context.Background(), fmt.Sprintf("udp dst port %d", dport))
	if err != nil {
		if errors.Is(err, pktfilter.ErrNoCompiler) && os.Getenv("CI") != "true" {
			t.Skip("SKIPPED: tcpdump is not installed")
		}
		t.Fatal(err)
	}
	tr, err := loader.Load(loader.Options{Filter: prog.Insns, SnapLen: 64})
	if err != nil {
		t.Fatalf("load: %v", err)
	}
	defer tr.Close()
	rd, err := ringbuf.NewReader(tr.Events())
	if err != nil {
		t.Fatal(err)
	}
	defer rd.Close()
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
