package e2e

import (
	"fmt"
	"io"
	"math/rand/v2"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/hoptrace/hoptrace/tracer/internal/testdocker"
	"github.com/hoptrace/hoptrace/tracer/internal/testnet"
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

func TestPublishedPortExplore(t *testing.T) {
	testdocker.RequireDocker(t)
	out := testnet.NewOutside(t)
	web, port := webServer(t)
	time.Sleep(300 * time.Millisecond)
	r := startCLI(t, "trace", "--container", web.name, "--output", "json")
	waitAttached(t, r)
	body := httpGet(t, &out.Host, netip.AddrPortFrom(out.HostAddr.Addr(), uint16(port)))
	if !strings.Contains(body, "hello-hoptrace") {
		t.Fatalf("reply %q", body)
	}
	time.Sleep(1500 * time.Millisecond)
	paths := stopJSON(t, r)
	dumpPaths(t, paths)
	t.Log(r.stderrText())
}
