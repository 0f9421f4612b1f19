package output

import (
	"bytes"
	"fmt"
	"io"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/hoptrace/hoptrace/tracer/event"
	"github.com/hoptrace/hoptrace/tracer/path"
	"github.com/hoptrace/hoptrace/tracer/resolve"
)

// formatPathRows is FormatPath as it was written, with a table of strings:
// the text output built in place must match it byte for byte.
func formatPathRows(p *path.Path) string {
	micros := func(ns uint64) string { return fmt.Sprintf("%.3f", float64(ns)/1000) }
	var b strings.Builder
	fmt.Fprintf(&b, "%s  %s\n", p.Time.Format("15:04:05.000000"), p.Summary)
	rows := make([][]string, 0, len(p.Hops))
	for i, h := range p.Hops {
		delta := ""
		if i > 0 {
			delta = "(+" + micros(h.DeltaNs) + ")"
		}
		where := h.Netns
		if h.Container != "" {
			where = h.Container
		}
		note := h.Note
		if h.Inferred {
			note = strings.TrimSpace(note + " (inferred)")
		}
		if h.Clone {
			note = strings.TrimSpace(note + " [clone]")
		}
		if h.NAT != "" {
			note = strings.TrimSpace("* " + h.NAT + "  " + note)
		}
		rows = append(rows, []string{"+" + micros(h.SinceNs) + "us", delta, where, h.Ifname, string(h.Kind), string(h.Direction), note})
	}
	if len(rows) > 0 {
		widths := make([]int, len(rows[0]))
		for _, r := range rows {
			for i, c := range r {
				widths[i] = max(widths[i], len(c))
			}
		}
		for _, r := range rows {
			var row strings.Builder
			row.WriteString("  ")
			for i, c := range r {
				switch {
				case i == len(r)-1:
					row.WriteString(c)
				case i == 0:
					row.WriteString(strings.Repeat(" ", widths[i]-len(c)) + c + "  ")
				default:
					row.WriteString(c + strings.Repeat(" ", widths[i]-len(c)) + "  ")
				}
			}
			b.WriteString(strings.TrimRight(row.String(), " "))
			b.WriteString("\n")
		}
	}
	verdict := p.Verdict
	if p.DropReason != "" && p.Verdict == path.Dropped {
		verdict += " (" + p.DropReason + ")"
	}
	fmt.Fprintf(&b, "  => %s: %s\n", verdict, p.End)
	return b.String()
}

func TestPathTextMatchesTable(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	pick := func(xs ...string) string { return xs[rng.IntN(len(xs))] }
	var w bytes.Buffer
	tw := NewWriter(&w, Text)
	var want strings.Builder
	for i := 0; i < 3000; i++ {
		p := path.Path{
			ID: uint64(i), Time: time.Date(2026, 12, 2, 4, 5, 6, rng.IntN(1e9), time.UTC),
			Summary:    pick("UDP 10.77.0.2:40000 > 10.77.0.3:5201 len=92", "", "ICMP a > b"),
			Verdict:    pick(path.Delivered, path.Dropped, path.Forwarded, path.Unfinished),
			DropReason: pick("", "NETFILTER_DROP"), End: pick("delivered to a socket in ns-b", "", "lost from sight"),
		}
		for j := rng.IntN(7); j > 0; j-- {
			p.Hops = append(p.Hops, path.Hop{
				Netns: pick("ns-a", "host", "netns:4026532200", ""), Container: pick("", "", "web"),
				Ifname: pick("eth0", "veth-a", "br0", "", "a-very-long-nam"), Kind: resolve.Kind(pick("veth", "bridge", "unknown", "")),
				Direction: event.Direction(pick("egress", "ingress", "forward", "local")),
				SinceNs:   uint64(rng.IntN(3)) * uint64(rng.Int64N(1e12)), DeltaNs: uint64(rng.Int64N(1e7)),
				Note:     pick("", "port of br0", "veth-a -> veth-b", " padded ", "up to the host stack"),
				Inferred: rng.IntN(3) == 0, Clone: rng.IntN(4) == 0, NAT: pick("", "", "DNAT 10.213.9.1:18080 -> 172.17.0.2:80"),
			})
		}
		exp := formatPathRows(&p)
		if got := FormatPath(&p); got != exp {
			t.Fatalf("path %+v:\ngot\n%s\nwant\n%s", p, got, exp)
		}
		if err := tw.Path(&p); err != nil {
			t.Fatal(err)
		}
		want.WriteString(exp)
	}
	if err := tw.Flush(); err != nil {
		t.Fatal(err)
	}
	if w.String() != want.String() {
		t.Fatal("the writer's text differs from FormatPath's")
	}
}

// BenchmarkFormatPathRows is the text output as it was built (a table of
// strings), for comparison with BenchmarkPathText.
func BenchmarkFormatPathRows(b *testing.B) {
	p := benchPath()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := io.WriteString(io.Discard, formatPathRows(p)); err != nil {
			b.Fatal(err)
		}
	}
}
