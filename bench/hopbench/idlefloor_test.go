package main

import (
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"

	"github.com/hoptrace/hoptrace/internal/privtest"
	"github.com/hoptrace/hoptrace/internal/testnet"
)

// The unselected-traffic floor attaches what it stands for: the count-only
// tcx program at ingress and egress of the four veth ends, counting each
// datagram between the pair at every end, and an empty program on each of
// the three end tracepoints; its Close leaves no program or link behind.
func TestIdleFloorAttachesTheTCXEngineHooks(t *testing.T) {
	privtest.RequireTCX(t, "the unselected-traffic floor is a bench condition for tcx hosts")
	nt := testnet.New(t, testnet.Options{Hosts: 2})
	c, err := attachIdleFloor(nt)
	if err != nil {
		t.Fatal(err)
	}
	closed := false
	defer func() {
		if !closed {
			c.Close()
		}
	}()

	// what it holds: programs by name, the counter map
	var progs []ebpf.ProgramID
	names := map[string]ebpf.ProgramID{}
	var counter *ebpf.Map
	var walk func(closers)
	walk = func(cs closers) {
		for _, x := range cs {
			switch v := x.(type) {
			case closers:
				walk(v)
			case *ebpf.Program:
				info, err := v.Info()
				if err != nil {
					t.Fatal(err)
				}
				id, _ := info.ID()
				progs = append(progs, id)
				names[info.Name] = id
			case *ebpf.Map:
				counter = v
			}
		}
	}
	walk(c.(closers))
	for _, n := range []string{"f_tcx_count", "e_kfree_skb", "e_consume_skb", "e_copy_datagram"} {
		if _, ok := names[n]; !ok {
			t.Errorf("no program %s among %v", n, names)
		}
	}
	if _, ok := names["e_net_dev_queue"]; ok {
		t.Errorf("a hop tracepoint is attached: the tcx engine has none")
	}
	tcxLinks := privtest.TCXLinksOf(t, progs)
	if len(tcxLinks) != 8 {
		t.Errorf("%d tcx links, want 8 (ingress and egress on four ends)", len(tcxLinks))
	}
	// tp_btf programs attached through BPF_RAW_TRACEPOINT_OPEN
	tracing := privtest.LinksOf(t, link.RawTracepointType, []ebpf.ProgramID{names["e_kfree_skb"], names["e_consume_skb"], names["e_copy_datagram"]})
	if len(tracing) != 3 {
		t.Errorf("%d tracing links, want 3 (the end tracepoints)", len(tracing))
	}
	if counter == nil {
		t.Fatal("no counter map")
	}

	const n = 100
	dst := netip.AddrPortFrom(nt.Hosts[1].Addr.Addr(), 5202)
	var rx net.PacketConn
	if err := nt.Hosts[1].Do(func() (err error) {
		rx, err = net.ListenPacket("udp4", dst.String())
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer rx.Close()
	var tx net.Conn
	if err := nt.Hosts[0].Do(func() (err error) {
		tx, err = net.Dial("udp4", dst.String())
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer tx.Close()
	buf := make([]byte, 64)
	for i := 0; i < n; i++ {
		if _, err := tx.Write([]byte{byte(i)}); err != nil {
			t.Fatal(err)
		}
		rx.SetReadDeadline(time.Now().Add(2 * time.Second))
		if _, _, err := rx.ReadFrom(buf); err != nil {
			t.Fatalf("datagram %d: %v", i, err)
		}
	}
	var perCPU []uint64
	if err := counter.Lookup(uint32(0), &perCPU); err != nil {
		t.Fatal(err)
	}
	var runs uint64
	for _, v := range perCPU {
		runs += v
	}
	// each datagram crosses four ends: eth0 egress, host veth ingress,
	// the peer's host veth egress, the peer's eth0 ingress
	if runs < 4*n {
		t.Errorf("count-only program ran %d times for %d datagrams, want at least %d", runs, n, 4*n)
	}

	closed = true
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if left := privtest.WaitLinksGone(append(tcxLinks, tracing...), 5*time.Second); len(left) > 0 {
		t.Errorf("links %v left after Close", left)
	}
	if left := privtest.WaitGone(progs, 5*time.Second); len(left) > 0 {
		t.Errorf("programs %v left after Close", left)
	}
}
