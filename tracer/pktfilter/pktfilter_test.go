package pktfilter

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/cilium/ebpf/asm"
	"golang.org/x/net/bpf"
)

func TestShorthand(t *testing.T) {
	for _, tc := range []struct {
		proto, host string
		port        int
		want, err   string
	}{
		{"", "", 0, "", ""},
		{"icmp", "10.0.0.1", 0, "icmp and host 10.0.0.1", ""},
		{"UDP", "", 53, "udp and port 53", ""},
		{"icmpv6", "fd00::1", 0, "icmp6 and host fd00::1", ""},
		{"", "10.1.2.3/16", 0, "net 10.1.0.0/16", ""},
		{"", "::ffff:10.0.0.1", 80, "host 10.0.0.1 and port 80", ""},
		{"ipv4", "", 0, "ip", ""},
		{"sctpx", "", 0, "", "unknown protocol"},
		{"", "10.0.0.300", 0, "", "bad --host"},
		{"", "10.0.0.0/33", 0, "", "bad --host"},
		{"", "", 70000, "", "bad --port"},
		{"icmp", "", 80, "", "--port needs tcp or udp"},
	} {
		got, err := Shorthand(tc.proto, tc.host, tc.port)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("Shorthand(%q, %q, %d): error %v, want %q", tc.proto, tc.host, tc.port, err, tc.err)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("Shorthand(%q, %q, %d) = %q, %v; want %q", tc.proto, tc.host, tc.port, got, err, tc.want)
		}
	}
}

func TestJoin(t *testing.T) {
	for _, tc := range []struct {
		in   []string
		want string
	}{
		{nil, ""},
		{[]string{"", "  "}, ""},
		{[]string{"tcp port 80 or udp", ""}, "tcp port 80 or udp"},
		{[]string{"tcp port 80 or udp", "host 10.0.0.1"}, "(tcp port 80 or udp) and (host 10.0.0.1)"},
	} {
		if got := Join(tc.in...); got != tc.want {
			t.Errorf("Join(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

func TestParseDDD(t *testing.T) {
	prog, err := parseDDD("3\n40 0 0 12\n21 0 1 2048\n6 0 0 262144\n")
	if err != nil {
		t.Fatal(err)
	}
	want := []bpf.RawInstruction{{Op: 40, K: 12}, {Op: 21, Jf: 1, K: 2048}, {Op: 6, K: 262144}}
	if len(prog) != len(want) {
		t.Fatalf("%d instructions, want %d", len(prog), len(want))
	}
	for i := range want {
		if prog[i] != want[i] {
			t.Errorf("instruction %d = %+v, want %+v", i, prog[i], want[i])
		}
	}
	for _, bad := range []string{"", "2\n6 0 0 0\n", "1\n6 0 0\n", "1\n6 0 300 0\n", "x\n6 0 0 0\n"} {
		if _, err := parseDDD(bad); err == nil {
			t.Errorf("parseDDD(%q): no error", bad)
		}
	}
}

// Translate refuses what it cannot run exactly, and keeps the failure exit
// only when something jumps to it (the verifier refuses dead code).
func TestTranslate(t *testing.T) {
	if _, err := Translate(nil); err == nil {
		t.Error("empty program translated")
	}
	backward := []bpf.RawInstruction{{Op: 0x05, K: 0xfffffffe}, {Op: 6, K: 1}}
	if _, err := Translate(backward); !errors.Is(err, errBackward) {
		t.Errorf("backward jump: %v, want errBackward", err)
	}
	// ld #proto (a Linux ancillary load): SKF_AD_OFF + SKF_AD_PROTOCOL
	ancillary := []bpf.RawInstruction{{Op: 0x28, K: 0xfffff000}, {Op: 6, K: 1}}
	if _, err := Translate(ancillary); err == nil || !strings.Contains(err.Error(), "ancillary") {
		t.Errorf("ancillary load: %v", err)
	}
	noRet := []bpf.RawInstruction{{Op: 0x28, K: 12}}
	if _, err := Translate(noRet); err == nil {
		t.Error("program without a return translated")
	}
	// len >= 100: no packet load, so no failure exit
	insns, err := Translate([]bpf.RawInstruction{{Op: 0x80}, {Op: 0x35, Jf: 1, K: 100}, {Op: 6, K: 262144}, {Op: 6}})
	if err != nil {
		t.Fatal(err)
	}
	for _, ins := range insns {
		if ins.Symbol() == labelFail {
			t.Errorf("failure exit emitted without a jump to it:\n%v", insns)
		}
	}
	// an unreachable instruction (after ret) is left out
	insns, err = Translate([]bpf.RawInstruction{{Op: 6, K: 1}, {Op: 0x28, K: 12}, {Op: 6}})
	if err != nil {
		t.Fatal(err)
	}
	for _, ins := range insns {
		if ins.OpCode.JumpOp() == asm.Call {
			t.Errorf("unreachable load translated:\n%v", insns)
		}
	}
}

func requireTcpdump(t *testing.T) {
	t.Helper()
	if _, err := tcpdumpPath(); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal(err)
		}
		t.Skip("SKIPPED: tcpdump is not installed")
	}
}

// Compile gives libpcap's program (what tcpdump -ddd prints) and its translation.
func TestCompile(t *testing.T) {
	requireTcpdump(t)
	ctx := context.Background()
	p, err := Compile(ctx, "  ")
	if p != nil || err != nil {
		t.Fatalf("empty expression: %v, %v; want no program", p, err)
	}
	p, err = Compile(ctx, "tcp port 80 and tcp[tcpflags] & tcp-syn != 0")
	if err != nil {
		t.Fatal(err)
	}
	bin, _ := tcpdumpPath()
	out, err := exec.Command(bin, "-ddd", "-y", "EN10MB", "tcp port 80 and tcp[tcpflags] & tcp-syn != 0").Output()
	if err != nil {
		t.Fatal(err)
	}
	want, _ := parseDDD(string(out))
	if len(p.Classic) != len(want) || len(p.Insns) <= len(want) {
		t.Errorf("%d classic instructions (tcpdump: %d), %d translated", len(p.Classic), len(want), len(p.Insns))
	}
	for _, tc := range []struct{ expr, msg string }{
		{"icmp and", "can't parse filter expression: syntax error"},
		{"port 70000", "illegal port number"},
		{"ip6 protochain 6", "protochain is not supported"},
	} {
		_, err := Compile(ctx, tc.expr)
		var bad *BadExpressionError
		if !errors.As(err, &bad) || !strings.Contains(err.Error(), tc.msg) || strings.Contains(err.Error(), "\n") {
			t.Errorf("Compile(%q): %v; want one line with %q", tc.expr, err, tc.msg)
		}
	}
}
