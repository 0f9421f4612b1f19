package pktfilter

import (
	"strings"
	"testing"

	"github.com/hoptrace/hoptrace/tracer/event"
)

func meta(eth uint16, l4 uint8, src, dst [4]byte, sport, dport uint16) *event.Meta {
	m := &event.Meta{EthProto: eth, L4Proto: l4, Sport: sport, Dport: dport}
	copy(m.Saddr[:], src[:])
	copy(m.Daddr[:], dst[:])
	return m
}

func TestMatch(t *testing.T) {
	a, b := [4]byte{10, 0, 0, 2}, [4]byte{10, 0, 0, 3}
	udp := meta(event.EthIPv4, event.ProtoUDP, a, b, 4000, 53)
	icmp := meta(event.EthIPv4, event.ProtoICMP, a, b, 0, 0)
	arp := meta(event.EthARP, 0, a, b, 0, 0)
	arp.ArpOp = 1
	for _, tc := range []struct {
		proto, host string
		port        int
		m           *event.Meta
		want        bool
	}{
		{"", "", 0, udp, true},
		{"udp", "", 0, udp, true},
		{"tcp", "", 0, udp, false},
		{"icmp", "", 0, icmp, true},
		{"icmp", "", 0, udp, false},
		{"arp", "10.0.0.3", 0, arp, true},
		{"", "10.0.0.2", 0, udp, true},
		{"", "10.0.0.9", 0, udp, false},
		{"", "10.0.0.0/24", 0, icmp, true},
		{"", "10.1.0.0/16", 0, icmp, false},
		{"", "", 53, udp, true},
		{"udp", "", 54, udp, false},
		{"", "", 53, icmp, false},
	} {
		f, err := New(tc.proto, tc.host, tc.port)
		if err != nil {
			t.Fatalf("New(%q,%q,%d): %v", tc.proto, tc.host, tc.port, err)
		}
		if got := f.Match(tc.m); got != tc.want {
			t.Errorf("proto=%q host=%q port=%d on %s: %v, want %v", tc.proto, tc.host, tc.port, event.Summary(tc.m), got, tc.want)
		}
	}
}

func TestBadFilters(t *testing.T) {
	for _, tc := range []struct {
		proto, host string
		port        int
		msg         string
	}{
		{"sctpx", "", 0, "unknown protocol"},
		{"", "10.0.0.300", 0, "bad --host"},
		{"", "10.0.0.0/40", 0, "bad --host"},
		{"", "", 70000, "bad --port"},
		{"icmp", "", 80, "--port needs tcp or udp"},
	} {
		_, err := New(tc.proto, tc.host, tc.port)
		if err == nil || !strings.Contains(err.Error(), tc.msg) {
			t.Errorf("New(%q,%q,%d) = %v, want error containing %q", tc.proto, tc.host, tc.port, err, tc.msg)
		}
	}
}
