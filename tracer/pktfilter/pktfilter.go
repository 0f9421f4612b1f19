// Package pktfilter compiles tcpdump's filter language (pcap-filter(7)) into
// a program the kernel runs on each frame where hoptrace would start
// tracking a packet.
//
// The expression is compiled by libpcap itself, so its meaning is exactly
// tcpdump's: hoptrace runs `tcpdump -ddd -y EN10MB EXPR`, which prints
// libpcap's classic BPF program for Ethernet frames without opening any
// device, and translates that program to eBPF (see Translate). tcpdump is
// needed at run time only when an expression is given; building hoptrace
// needs neither cgo nor libpcap.
//
// --proto, --host and --port are shorthands for parts of an expression
// (Shorthand) and compile the same way.
package pktfilter

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os/exec"
	"strconv"
	"strings"

	"github.com/cilium/ebpf/asm"
	"golang.org/x/net/bpf"
)

// Protocols lists the names --proto accepts.
const Protocols = "icmp, icmp6, tcp, udp, arp, ip, ip6"

// Shorthand turns --proto, --host and --port into the expression they stand
// for ("icmp and host 10.0.0.1 and port 53"); empty parts are left out.
func Shorthand(proto, host string, port int) (string, error) {
	var parts []string
	p := strings.ToLower(strings.TrimSpace(proto))
	switch p {
	case "":
	case "icmp", "icmp6", "tcp", "udp", "arp", "ip", "ip6":
		parts = append(parts, p)
	case "icmpv6":
		p = "icmp6"
		parts = append(parts, p)
	case "ipv4":
		p = "ip"
		parts = append(parts, p)
	case "ipv6":
		p = "ip6"
		parts = append(parts, p)
	default:
		return "", fmt.Errorf("unknown protocol %q (want one of %s)", proto, Protocols)
	}
	if host = strings.TrimSpace(host); host != "" {
		if strings.Contains(host, "/") {
			p, err := netip.ParsePrefix(host)
			if err != nil {
				return "", fmt.Errorf("bad --host %q: not an address or prefix", host)
			}
			parts = append(parts, "net "+p.Masked().String())
		} else {
			a, err := netip.ParseAddr(host)
			if err != nil {
				return "", fmt.Errorf("bad --host %q: not an address or prefix", host)
			}
			parts = append(parts, "host "+a.Unmap().String())
		}
	}
	if port < 0 || port > 65535 {
		return "", fmt.Errorf("bad --port %d: want 1-65535", port)
	}
	if port > 0 {
		if p != "" && p != "tcp" && p != "udp" && p != "ip" && p != "ip6" {
			return "", fmt.Errorf("--port needs tcp or udp, not %s", p)
		}
		parts = append(parts, "port "+strconv.Itoa(port))
	}
	return strings.Join(parts, " and "), nil
}

// Join combines expressions with "and", each in parentheses when there is
// more than one; empty ones are left out.
func Join(exprs ...string) string {
	var parts []string
	for _, e := range exprs {
		if e = strings.TrimSpace(e); e != "" {
			parts = append(parts, e)
		}
	}
	if len(parts) == 1 {
		return parts[0]
	}
	for i, p := range parts {
		parts[i] = "(" + p + ")"
	}
	return strings.Join(parts, " and ")
}

// Program is a compiled filter expression.
type Program struct {
	Expr    string               // the expression, as given
	Classic []bpf.RawInstruction // libpcap's program
	Insns   asm.Instructions     // its translation, the body of the BPF stub
}

// Instructions is the program for loader.Options.Filter; nil for no program.
func (p *Program) Instructions() asm.Instructions {
	if p == nil {
		return nil
	}
	return p.Insns
}

// ErrNoCompiler means tcpdump, whose libpcap compiles expressions, is not installed.
var ErrNoCompiler = errors.New("filter expressions are compiled by libpcap through tcpdump, which is not installed (apt-get install tcpdump)")

// BadExpressionError is an expression libpcap refused, or one hoptrace
// cannot run in the kernel.
type BadExpressionError struct {
	Expr string
	Msg  string
}

func (e *BadExpressionError) Error() string {
	return fmt.Sprintf("filter expression %q: %s", e.Expr, e.Msg)
}

// Compile compiles an expression for Ethernet frames. An empty expression
// gives a nil Program: no filter.
func Compile(ctx context.Context, expr string) (*Program, error) {
	expr = strings.TrimSpace(expr)
	if expr == "" {
		return nil, nil
	}
	classic, err := Classic(ctx, expr)
	if err != nil {
		return nil, err
	}
	insns, err := Translate(classic)
	if err != nil {
		return nil, &BadExpressionError{Expr: expr, Msg: err.Error()}
	}
	return &Program{Expr: expr, Classic: classic, Insns: insns}, nil
}

// tcpdumpPath finds tcpdump on PATH or where Debian puts it (sudo resets PATH).
func tcpdumpPath() (string, error) {
	if p, err := exec.LookPath("tcpdump"); err == nil {
		return p, nil
	}
	for _, p := range []string{"/usr/bin/tcpdump", "/usr/sbin/tcpdump", "/usr/local/bin/tcpdump", "/usr/local/sbin/tcpdump"} {
		if p, err := exec.LookPath(p); err == nil {
			return p, nil
		}
	}
	return "", ErrNoCompiler
}

// Classic returns libpcap's classic BPF program for an expression on
// Ethernet frames (DLT_EN10MB), as tcpdump -ddd prints it.
func Classic(ctx context.Context, expr string) ([]bpf.RawInstruction, error) {
	bin, err := tcpdumpPath()
	if err != nil {
		return nil, err
	}
	var stdout, stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, bin, "-ddd", "-y", "EN10MB", "--", expr)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return nil, &BadExpressionError{Expr: expr, Msg: compilerMessage(stderr.String())}
		}
		return nil, fmt.Errorf("run %s: %w", bin, err)
	}
	prog, err := parseDDD(stdout.String())
	if err != nil {
		return nil, fmt.Errorf("read %s -ddd output: %w", bin, err)
	}
	return prog, nil
}

// compilerMessage keeps libpcap's words from tcpdump's error output.
func compilerMessage(stderr string) string {
	for _, line := range strings.Split(stderr, "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "Usage:") {
			continue
		}
		return strings.TrimPrefix(line, "tcpdump: ")
	}
	return "refused by libpcap"
}

// parseDDD reads tcpdump -ddd's output: a count, then "code jt jf k" lines.
func parseDDD(out string) ([]bpf.RawInstruction, error) {
	lines := strings.Split(strings.TrimSpace(out), "\n")
	n, err := strconv.Atoi(strings.TrimSpace(lines[0]))
	if err != nil || n <= 0 || n != len(lines)-1 {
		return nil, fmt.Errorf("bad instruction count %q for %d lines", lines[0], len(lines)-1)
	}
	prog := make([]bpf.RawInstruction, 0, n)
	for _, l := range lines[1:] {
		f := strings.Fields(l)
		if len(f) != 4 {
			return nil, fmt.Errorf("bad instruction %q", l)
		}
		var v [4]uint64
		for i, s := range f {
			bits := []int{16, 8, 8, 32}[i]
			if v[i], err = strconv.ParseUint(s, 10, bits); err != nil {
				return nil, fmt.Errorf("bad instruction %q: %w", l, err)
			}
		}
		prog = append(prog, bpf.RawInstruction{Op: uint16(v[0]), Jt: uint8(v[1]), Jf: uint8(v[2]), K: uint32(v[3])})
	}
	return prog, nil
}
