package e2e

import (
	"fmt"
	"io"
	"math/rand/v2"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/hoptrace/hoptrace/internal/testdocker"
	"github.com/hoptrace/hoptrace/internal/testnet"
	"github.com/hoptrace/hoptrace/tracer/path"
)

// webServer runs busybox httpd on port 80 in a container publishing it on
// a random host port; it returns the container and the host port.
func webServer(t *testing.T, opts ...string) (dockerBox, int) {
	t.Helper()
	port := 20000 + rand.IntN(20000)
	c := testdocker.RunCmd(t, "ht-web", append([]string{"-p", fmt.Sprintf("%d:80", port)}, opts...),
		"sh", "-c", "mkdir -p /www && echo hello-hoptrace > /www/index.html && exec httpd -f -p 80 -h /www")
	return box(t, c, ""), port
}

// httpGet fetches / from inside the outside namespace over one connection.
func httpGet(t *testing.T, h *testnet.Host, dst netip.AddrPort) string {
	t.Helper()
	conn, err := h.DialTCP(dst, 3*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(3 * time.Second))
	fmt.Fprintf(conn, "GET / HTTP/1.0\r\nHost: x\r\n\r\n")
	b, err := io.ReadAll(conn)
	if err != nil {
		t.Fatalf("read reply: %v", err)
	}
	return string(b)
}

func dumpPaths(t *testing.T, paths []path.Path) {
	t.Helper()
	for _, p := range paths {
		var rows []string
		for _, h := range p.Hops {
			row := fmt.Sprintf("%s/%s/%s/%s", where(h), h.Ifname, h.Kind, h.Direction)
			if h.NAT != "" {
				row += "[" + h.NAT + "]"
			}
			rows = append(rows, row)
		}
		t.Logf("#%d %s\n    %s\n    => %s: %s", p.ID, p.Summary, strings.Join(rows, " "), p.Verdict, p.End)
	}
}

func where(h path.Hop) string {
	if h.Container != "" {
		return h.Container
	}
	return h.Netns
}

// hasHop reports whether the path has a hop matching owner/ifname/kind/direction.
func hasHop(p path.Path, want string) bool {
	for _, h := range p.Hops {
		if fmt.Sprintf("%s/%s/%s/%s", where(h), h.Ifname, h.Kind, h.Direction) == want {
			return true
		}
	}
	return false
}

func natRows(p path.Path) []string {
	var out []string
	for _, h := range p.Hops {
		if h.NAT != "" {
			out = append(out, h.Ifname+": "+h.NAT)
		}
	}
	return out
}

// A published port reached from a namespace behind a host veth: every
// segment of a clean HTTP request, both ways, is one packet from the
// client's eth0 to the container's eth0 (and back), DNAT (SNAT back) shown
// on the hop where it is first seen, the host's routing as a hop, and no
// drop.
func TestPublishedPortThroughDNAT(t *testing.T) {
	testdocker.RequireDocker(t)
	out := testnet.NewOutside(t)
	web, port := webServer(t)
	r := startCLI(t, "trace", "--container", web.name, "--output", "json")
	waitAttached(t, r)
	hostAddr := out.HostAddr.Addr().String()
	body := httpGet(t, &out.Host, netip.AddrPortFrom(out.HostAddr.Addr(), uint16(port)))
	if !strings.Contains(body, "hello-hoptrace") {
		t.Fatalf("HTTP reply %q", body)
	}
	time.Sleep(1500 * time.Millisecond)
	paths := stopJSON(t, r)

	dnat := fmt.Sprintf("DNAT %s:%d -> %s:80", hostAddr, port, web.ip)
	var requests, replies int
	flags := map[string]bool{}
	for _, p := range paths {
		if p.Proto != "TCP" {
			continue
		}
		switch {
		case p.Src == out.Addr.Addr().String() && p.Dst == hostAddr && int(p.Dport) == port:
			requests++
			for _, f := range []string{"[S]", "[P.]", "[F.]"} {
				if strings.Contains(p.Summary, f) {
					flags[f] = true
				}
			}
			for _, want := range []string{out.Name + "/eth0/veth/egress", "host/" + out.HostVeth + "/veth/ingress",
				"host//routed/forward", "host/docker0/bridge/egress", web.name + "/eth0/veth/ingress"} {
				if !hasHop(p, want) {
					t.Errorf("request %s: no hop %s in one id: %s", p.Summary, want, hopNames(p))
				}
			}
			if rows := natRows(p); len(rows) != 1 || rows[0] != "docker0: "+dnat {
				t.Errorf("request %s: nat rows %q, want [docker0: %s]", p.Summary, rows, dnat)
			}
		case p.Src == web.ip && int(p.Sport) == 80 && p.Dst == out.Addr.Addr().String():
			replies++
			for _, want := range []string{web.name + "/eth0/veth/egress", "host/docker0/bridge/local",
				"host//routed/forward", "host/" + out.HostVeth + "/veth/egress", out.Name + "/eth0/veth/ingress"} {
				if !hasHop(p, want) {
					t.Errorf("reply %s: no hop %s in one id: %s", p.Summary, want, hopNames(p))
				}
			}
			snat := fmt.Sprintf("%s: SNAT %s:80 -> %s:%d", out.HostVeth, web.ip, hostAddr, port)
			if rows := natRows(p); len(rows) != 1 || rows[0] != snat {
				t.Errorf("reply %s: nat rows %q, want [%s]", p.Summary, rows, snat)
			}
		default:
			continue
		}
		if p.Verdict != path.Delivered {
			t.Errorf("%s: %s (%s), want delivered", p.Summary, p.Verdict, p.End)
		}
	}
	if requests < 4 || replies < 4 || !flags["[S]"] || !flags["[P.]"] || !flags["[F.]"] {
		dumpPaths(t, paths)
		t.Fatalf("%d request and %d reply segments (flags %v): want SYN, data and FIN each way", requests, replies, flags)
	}
	if t.Failed() {
		dumpPaths(t, paths)
	}
}

// A container reaching the outside namespace through MASQUERADE: the echo
// request is one packet from the container's eth0 to the outside's eth0,
// with the SNAT on the host veth it leaves through; the reply comes back
// to the container.
func TestMasqueradeKeepsTheIdentity(t *testing.T) {
	testdocker.RequireDocker(t)
	out := testnet.NewOutside(t)
	web := box(t, testdocker.Run(t, "ht-masq"), "")
	r := startCLI(t, "trace", "--container", web.name, "--output", "json")
	waitAttached(t, r)
	testdocker.Exec(t, web.name, "ping", "-c", "1", "-W", "2", out.Addr.Addr().String())
	time.Sleep(800 * time.Millisecond)
	paths := stopJSON(t, r)
	outAddr, hostAddr := out.Addr.Addr().String(), out.HostAddr.Addr().String()
	req, ok := findPath(paths, func(p path.Path) bool {
		return p.Proto == "ICMP" && p.Src == web.ip && p.Dst == outAddr && strings.Contains(p.Summary, "request")
	})
	if !ok {
		dumpPaths(t, paths)
		t.Fatalf("no echo request %s -> %s", web.ip, outAddr)
	}
	for _, want := range []string{web.name + "/eth0/veth/egress", "host/" + web.hostVeth + "/veth/ingress",
		"host/docker0/bridge/local", "host//routed/forward", "host/" + out.HostVeth + "/veth/egress", out.Name + "/eth0/veth/ingress"} {
		if !hasHop(req, want) {
			t.Errorf("echo request: no hop %s in one id: %s", want, hopNames(req))
		}
	}
	if rows := natRows(req); len(rows) != 1 || rows[0] != out.HostVeth+": SNAT "+web.ip+" -> "+hostAddr {
		t.Errorf("echo request nat rows %q, want [%s: SNAT %s -> %s]", rows, out.HostVeth, web.ip, hostAddr)
	}
	if req.Verdict != path.Delivered {
		t.Errorf("echo request: %s (%s)", req.Verdict, req.End)
	}
	for _, p := range paths {
		if p.Proto == "ICMP" && p.Src == outAddr && p.Dst == hostAddr && strings.Contains(p.Summary, "request") {
			t.Errorf("the request shows as a second packet after MASQUERADE: %s", p.Summary)
		}
	}
	rep, ok := findPath(paths, func(p path.Path) bool {
		return p.Proto == "ICMP" && p.Dst == web.ip && strings.Contains(p.Summary, "reply")
	})
	if !ok {
		dumpPaths(t, paths)
		t.Fatalf("no echo reply back to %s", web.ip)
	}
	if !hasHop(rep, web.name+"/eth0/veth/ingress") || rep.Verdict != path.Delivered {
		t.Errorf("echo reply: %s => %s (%s)", hopNames(rep), rep.Verdict, rep.End)
	}
}
