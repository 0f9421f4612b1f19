package e2e

import (
	"fmt"
	"math/rand/v2"
	osexec "os/exec"
	"strings"
	"testing"
	"time"

	"github.com/hoptrace/hoptrace/internal/privtest"
	"github.com/hoptrace/hoptrace/internal/testdocker"
	"github.com/hoptrace/hoptrace/tracer/path"
)

// hairpinSide is a container of the second daemon with what its hops show.
type hairpinSide struct{ name, ip, veth string }

// natParts lists a path's NAT rewrites in order, whatever hop each was
// first seen on (a bridged DNAT shows on the bridge device when the
// neighbour is not resolved yet, else on the port it leaves by).
func natParts(p path.Path) []string {
	var out []string
	for _, h := range p.Hops {
		if h.NAT != "" {
			out = append(out, strings.Split(h.NAT, "; ")...)
		}
	}
	return out
}

// Hairpin NAT with userland-proxy off, on a second dockerd confined to a
// namespace of the test's own (its docker0, its nat rules): a container
// reaching a published port through the host's address, DNATed back into
// the same bridge by br_netfilter and un-NATed on the way back; and the
// server reaching its own published port, DNAT + MASQUERADE out of the port
// it came in on. Each TCP segment, both ways, is one packet from eth0 to
// eth0 with its rewrites on the hops, and none is dropped.
func TestHairpinNATWithoutUserlandProxy(t *testing.T) {
	d := testdocker.StartDaemon(t, "--userland-proxy=false")
	privtest.Tool(t, "nft", "nftables")
	t.Setenv("DOCKER_HOST", d.Host) // the docker CLI, and hoptrace's resolver
	port := 20000 + rand.IntN(20000)
	webC := testdocker.RunCmd(t, "ht-hpweb", []string{"-p", fmt.Sprintf("%d:80", port)},
		"sh", "-c", "mkdir -p /www && echo hello-hoptrace > /www/index.html && exec httpd -f -p 80 -h /www")
	cliC := testdocker.Run(t, "ht-hpcli")
	side := func(c testdocker.Container) hairpinSide {
		return hairpinSide{c.Name, testdocker.String(testdocker.Inspect(t, c.ID), "NetworkSettings", "IPAddress"), d.HostVeth(t, c.Name)}
	}
	web, cli := side(webC), side(cliC)
	if rules, err := inNetns(d, "nft", "list", "table", "ip", "nat"); err != nil || !strings.Contains(rules, fmt.Sprintf("tcp dport %d", port)) {
		t.Fatalf("no DNAT rule for port %d in %s: %v\n%s", port, d.Netns, err, rules)
	}
	hostAddr := d.HostAddr.String()
	gw := d.Gateway.Addr().String()

	r := startCLI(t, "trace", "--container", web.name, "--output", "json")
	waitAttached(t, r)
	// The client keeps its side open until the reply is in: the server
	// closes first, as a browser's server does.
	get := fmt.Sprintf(`(printf 'GET / HTTP/1.0\r\n\r\n'; sleep 1) | nc -w 3 %s %d`, hostAddr, port)
	for _, from := range []string{cli.name, web.name} {
		if body := testdocker.Exec(t, from, "sh", "-c", get); !strings.Contains(body, "hello-hoptrace") {
			t.Fatalf("HTTP from %s to %s:%d: %q", from, hostAddr, port, body)
		}
	}
	time.Sleep(1500 * time.Millisecond)
	paths := stopJSON(t, r)

	ns := d.Netns
	dnat := fmt.Sprintf("DNAT %s:%d -> %s:80", hostAddr, port, web.ip)
	type want struct {
		hops []string
		nat  func(p path.Path) []string
	}
	check := func(kind string, p path.Path, w want) {
		t.Helper()
		for _, h := range w.hops {
			if !hasHop(p, h) {
				t.Errorf("%s %s: no hop %s in one id: %s", kind, p.Summary, h, hopNames(p))
			}
		}
		if got, wantNAT := natParts(p), w.nat(p); strings.Join(got, "|") != strings.Join(wantNAT, "|") {
			t.Errorf("%s %s: NAT %q, want %q", kind, p.Summary, got, wantNAT)
		}
		for _, h := range p.Hops {
			if h.Kind == "bridge" && h.Direction == "forward" && strings.HasSuffix(h.Note, "-> docker0") {
				t.Errorf("%s %s: a forward into the bridge device itself: %s", kind, p.Summary, h.Note)
			}
		}
		if p.Verdict != path.Delivered {
			t.Errorf("%s %s: %s (%s), want delivered", kind, p.Summary, p.Verdict, p.End)
		}
	}
	count := map[string]int{}
	flags := map[string]bool{}
	for _, p := range paths {
		if p.Proto != "TCP" {
			continue
		}
		var kind string
		switch {
		case p.Src == cli.ip && p.Dst == hostAddr && int(p.Dport) == port:
			kind = "cli request"
			check(kind, p, want{[]string{cli.name + "/eth0/veth/egress", ns + "/" + cli.veth + "/veth/ingress",
				ns + "/docker0/bridge/forward", ns + "/" + web.veth + "/veth/egress", web.name + "/eth0/veth/ingress"},
				func(path.Path) []string { return []string{dnat} }})
		case p.Src == web.ip && int(p.Sport) == 80 && p.Dst == cli.ip:
			kind = "cli reply"
			check(kind, p, want{[]string{web.name + "/eth0/veth/egress", ns + "/" + web.veth + "/veth/ingress",
				ns + "/docker0/bridge/forward", ns + "/" + cli.veth + "/veth/egress", cli.name + "/eth0/veth/ingress"},
				func(path.Path) []string { return []string{fmt.Sprintf("SNAT %s:80 -> %s:%d", web.ip, hostAddr, port)} }})
		case p.Src == web.ip && p.Dst == hostAddr && int(p.Dport) == port:
			// back out of the port it came in on, MASQUERADEd to the gateway
			kind = "self request"
			check(kind, p, want{[]string{web.name + "/eth0/veth/egress", ns + "/" + web.veth + "/veth/ingress",
				ns + "/" + web.veth + "/veth/egress", web.name + "/eth0/veth/ingress"},
				func(p path.Path) []string {
					return []string{dnat, fmt.Sprintf("SNAT %s:%d -> %s:%d", web.ip, p.Sport, gw, p.Sport)}
				}})
		case p.Src == web.ip && int(p.Sport) == 80 && p.Dst == gw:
			kind = "self reply"
			check(kind, p, want{[]string{web.name + "/eth0/veth/egress", ns + "/" + web.veth + "/veth/ingress",
				ns + "/" + web.veth + "/veth/egress", web.name + "/eth0/veth/ingress"},
				func(p path.Path) []string {
					return []string{fmt.Sprintf("DNAT %s:%d -> %s:%d", gw, p.Dport, web.ip, p.Dport),
						fmt.Sprintf("SNAT %s:80 -> %s:%d", web.ip, hostAddr, port)}
				}})
		default:
			continue
		}
		count[kind]++
		for _, f := range []string{"[S]", "[S.]", "[P.]", "[F.]"} {
			if strings.Contains(p.Summary, f) {
				flags[kind+" "+f] = true
			}
		}
	}
	for _, kind := range []string{"cli request", "cli reply", "self request", "self reply"} {
		syn := "[S]"
		if strings.HasSuffix(kind, "reply") {
			syn = "[S.]"
		}
		if count[kind] < 4 || !flags[kind+" "+syn] || !flags[kind+" [P.]"] || !flags[kind+" [F.]"] {
			t.Errorf("%s: %d segments (flags %v): want SYN, data and FIN", kind, count[kind], flags)
		}
	}
	if t.Failed() {
		dumpPaths(t, paths)
	}
	// (the daemon namespace's IPv6 router solicitations are dropped in the
	// containers, whose IPv6 Docker disables: not the request's packets)
	for _, p := range paths {
		if p.Proto == "TCP" && p.Verdict == path.Dropped {
			dumpPaths(t, []path.Path{p})
			t.Errorf("a segment of a clean request was dropped: %s", p.Summary)
		}
	}
}

// inNetns runs a command in the daemon's network namespace.
func inNetns(d *testdocker.Daemon, args ...string) (string, error) {
	out, err := osexec.Command("ip", append([]string{"netns", "exec", d.Netns}, args...)...).CombinedOutput()
	return string(out), err
}
