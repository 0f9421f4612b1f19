package main

import (
	"io"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/hoptrace/hoptrace/internal/privtest"
	"github.com/hoptrace/hoptrace/internal/testnet"
)

// The state floor does the work it stands for: every segment of a
// request/response exchange between the pair is timed at each hop after its
// first (its own eth0, then the host veth, the peer's host veth and the
// peer's eth0) and where it is delivered; and its Close leaves no program or
// link behind.
func TestStateFloorTimesEveryHop(t *testing.T) {
	privtest.RequireTCX(t, "the state floor is a bench condition for tcx hosts")
	nt := testnet.New(t, testnet.Options{Hosts: 2})
	disableIPv6(nt)
	f, err := newStateFloor(nt)
	if err != nil {
		t.Fatal(err)
	}
	var progs []ebpf.ProgramID
	for _, p := range []*ebpf.Program{f.objs.SfTcxEgress, f.objs.SfTcxIngress, f.objs.SfConsumeSkb, f.objs.SfKfreeSkb, f.objs.SfCopyDatagram} {
		info, err := p.Info()
		if err != nil {
			t.Fatal(err)
		}
		id, _ := info.ID()
		progs = append(progs, id)
	}
	links := privtest.TCXLinksOf(t, progs)
	if len(links) != 8 {
		t.Errorf("%d tcx links, want 8 (ingress and egress on four ends)", len(links))
	}

	dst := netip.AddrPortFrom(nt.Hosts[1].Addr.Addr(), 5201)
	var ln net.Listener
	if err := nt.Hosts[1].Do(func() (err error) {
		ln, err = net.Listen("tcp4", dst.String())
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	echoed := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			echoed <- err
			return
		}
		defer c.Close()
		// read and write, not io.Copy: that splices, and a spliced
		// segment is not copied to a user buffer
		b := make([]byte, 64)
		for {
			n, err := c.Read(b)
			if err == io.EOF {
				echoed <- nil
				return
			}
			if err == nil {
				_, err = c.Write(b[:n])
			}
			if err != nil {
				echoed <- err
				return
			}
		}
	}()
	var c net.Conn
	if err := nt.Hosts[0].Do(func() (err error) {
		c, err = net.DialTimeout("tcp4", dst.String(), 2*time.Second)
		return err
	}); err != nil {
		t.Fatal(err)
	}

	const n = 200
	buf := make([]byte, 1)
	for i := 0; i < n; i++ {
		c.SetDeadline(time.Now().Add(2 * time.Second))
		if _, err := c.Write([]byte{byte(i)}); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(c, buf); err != nil {
			t.Fatalf("exchange %d: %v", i, err)
		}
	}
	c.Close()
	if err := <-echoed; err != nil {
		t.Fatal(err)
	}
	got, err := f.Counts()
	if err != nil {
		t.Fatal(err)
	}
	// Each of the 2n data segments crosses two egress and two ingress ends
	// after its first hop and is delivered to a socket; the handshake, ACKs
	// and ARP add a few.
	if got[stateFloorSfSlotSF_EGRESS] < 2*n || got[stateFloorSfSlotSF_INGRESS] < 4*n || got[stateFloorSfSlotSF_END] < 2*n {
		t.Errorf("hop intervals per slot %v after %d exchanges, want at least %d egress, %d ingress, %d ends",
			got, n, 2*n, 4*n, 2*n)
	}

	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if left := privtest.WaitLinksGone(links, 5*time.Second); len(left) > 0 {
		t.Errorf("tcx links %v left after Close", left)
	}
	if left := privtest.WaitGone(progs, 5*time.Second); len(left) > 0 {
		t.Errorf("programs %v left after Close", left)
	}
}
