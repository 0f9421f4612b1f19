package loader_test

import (
	"net"
	"slices"
	"testing"
	"time"

	"github.com/hoptrace/hoptrace/internal/privtest"
	"github.com/hoptrace/hoptrace/tracer/event"
	"github.com/hoptrace/hoptrace/tracer/loader"
)

// An entry older than StaleAfter matches nothing, at a hop or at an end, and
// the programs know so without a lookup while nothing is tracked: after a
// quiet spell the next packet is still tracked from its first hop (and found
// again at its next hops and its end); a segment read by its application
// later than StaleAfter after its last hop, while other packets are tracked,
// has no end event (its path is over by then); one read at once has its end.
func TestEndsOlderThanStaleAfter(t *testing.T) {
	privtest.RequireRoot(t)
	const stale = 100 * time.Millisecond
	tr, rd := loadReading(t, loader.Options{StaleAfter: stale})
	defer tr.Close()
	defer rd.Close()

	ln, err := net.ListenTCP("tcp4", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	time.Sleep(3 * stale) // quiet: nothing tracked since the load
	cli, err := net.DialTCP("tcp4", nil, ln.Addr().(*net.TCPAddr))
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	srv, err := ln.AcceptTCP()
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	buf := make([]byte, 8)
	// "a" is read at once; "b" sits in the receive queue for 4x StaleAfter.
	if _, err := cli.Write([]byte("a")); err != nil {
		t.Fatal(err)
	}
	srv.SetReadDeadline(time.Now().Add(2 * time.Second))
	if _, err := srv.Read(buf); err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Write([]byte("b")); err != nil {
		t.Fatal(err)
	}
	// Other traffic keeps the programs out of their quiet state meanwhile:
	// b's entry is found at its end, and refused for its age.
	keepBusy(t, 4*stale)
	if _, err := srv.Read(buf); err != nil {
		t.Fatal(err)
	}

	sport := uint16(cli.LocalAddr().(*net.TCPAddr).Port)
	dport := uint16(ln.Addr().(*net.TCPAddr).Port)
	type seg struct {
		seq   uint32
		hooks []event.Hook
	}
	segs := map[uint64]*seg{} // data segments to the server, by packet id
	readEvents(t, rd, 2*time.Second, func(e *event.Event) bool {
		m := e.Meta
		if m.L4Proto != event.ProtoTCP || m.Sport != sport || m.Dport != dport || m.TcpFlags&0x08 == 0 {
			return false
		}
		s := segs[e.PktId]
		if s == nil {
			s = &seg{seq: m.TcpSeq}
			segs[e.PktId] = s
		}
		s.hooks = append(s.hooks, event.Hook(e.Hook))
		return false
	})
	var got []*seg
	for _, s := range segs {
		got = append(got, s)
	}
	slices.SortFunc(got, func(a, b *seg) int { return int(int32(a.seq - b.seq)) })
	if len(got) != 2 {
		t.Fatalf("%d data segments traced, want 2 (a and b): %v", len(got), segs)
	}
	for i, name := range []string{"a", "b"} {
		s := got[i]
		if !slices.Contains(s.hooks, event.HookNetDevQueue) || !slices.Contains(s.hooks, event.HookNetifReceiveSkb) {
			t.Errorf("segment %s: hooks %v, want its hops on lo", name, s.hooks)
		}
	}
	if !slices.Contains(got[0].hooks, event.HookCopyDatagram) {
		t.Errorf("segment a, read at once: hooks %v, want its %s end", got[0].hooks, event.HookName(event.HookCopyDatagram))
	}
	if slices.Contains(got[1].hooks, event.HookCopyDatagram) {
		t.Errorf("segment b, read %v after its last hop: hooks %v, want no end (older than StaleAfter %v)", 4*stale, got[1].hooks, stale)
	}
}

// keepBusy sends a UDP datagram over loopback every 5 ms for d.
func keepBusy(t *testing.T, d time.Duration) {
	t.Helper()
	pc, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	for end := time.Now().Add(d); time.Now().Before(end); time.Sleep(5 * time.Millisecond) {
		if _, err := pc.WriteTo([]byte("busy"), pc.LocalAddr()); err != nil {
			t.Fatal(err)
		}
	}
}

// The quiet state is entered StaleAfter + StaleAfter/8 after the last
// tracked packet, never sooner, and left by the next one, which is tracked
// from its first hop.
func TestQuietState(t *testing.T) {
	privtest.RequireRoot(t)
	const stale = 100 * time.Millisecond
	// Only the test's datagrams are selected: the host's other traffic
	// would keep the programs out of the quiet state.
	tr, rd := loadReading(t, loader.Options{StaleAfter: stale, FilterKinds: loader.FilterPort})
	if !tr.Quiet() {
		t.Fatal("not quiet after the load: nothing was tracked yet")
	}
	pc, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	port := uint16(pc.LocalAddr().(*net.UDPAddr).Port)
	if err := tr.SelectPort(17, port, true); err != nil {
		t.Fatal(err)
	}
	for round := range 2 {
		sent := time.Now()
		if _, err := pc.WriteTo([]byte("q"), pc.LocalAddr()); err != nil {
			t.Fatal(err)
		}
		if tr.Quiet() {
			t.Fatalf("round %d: quiet right after a tracked datagram", round)
		}
		var hooks []event.Hook
		readEvents(t, rd, time.Second, func(e *event.Event) bool {
			if e.Meta.L4Proto == event.ProtoUDP && e.Meta.Dport == port {
				hooks = append(hooks, event.Hook(e.Hook))
			}
			return slices.Contains(hooks, event.HookNetifReceiveSkb)
		})
		if !slices.Contains(hooks, event.HookNetDevQueue) || !slices.Contains(hooks, event.HookNetifReceiveSkb) {
			t.Fatalf("round %d: datagram hooks %v, want its hops on lo from the first", round, hooks)
		}
		for !tr.Quiet() {
			if time.Since(sent) > 2*time.Second {
				t.Fatalf("round %d: not quiet %v after the last tracked packet", round, time.Since(sent))
			}
			time.Sleep(time.Millisecond)
		}
		if d := time.Since(sent); d < stale+stale/8 {
			t.Fatalf("round %d: quiet %v after the last tracked packet, want at least %v", round, d, stale+stale/8)
		}
	}
}
