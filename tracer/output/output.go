// Package output renders paths and events for people (aligned text blocks)
// and for scripts (one JSON object per line).
package output

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/hoptrace/hoptrace/tracer/path"
)

// Format is an output format.
type Format string

const (
	Text Format = "text"
	JSON Format = "json"
)

// ParseFormat validates a --output value.
func ParseFormat(s string) (Format, error) {
	switch Format(s) {
	case Text, JSON:
		return Format(s), nil
	}
	return "", fmt.Errorf("unknown output format %q (want text or json)", s)
}

// Writer writes paths and hop events in one format. It buffers; call Flush.
type Writer struct {
	w      *bufio.Writer
	format Format
	enc    *json.Encoder
	buf    []byte // reused for each JSON path
}

// NewWriter returns a Writer on w.
func NewWriter(w io.Writer, f Format) *Writer {
	bw := bufio.NewWriterSize(w, 64*1024)
	return &Writer{w: bw, format: f, enc: json.NewEncoder(bw)}
}

// Flush writes out buffered output.
func (w *Writer) Flush() error { return w.w.Flush() }

// Path writes one packet's path.
func (w *Writer) Path(p *path.Path) error {
	if w.format == JSON {
		w.buf = appendPathJSON(w.buf[:0], p)
		w.buf = append(w.buf, '\n')
		_, err := w.w.Write(w.buf)
		return err
	}
	_, err := io.WriteString(w.w, FormatPath(p))
	return err
}

// FormatPath renders a path as a text block:
//
//	12:01:02.123456  ICMP 10.77.0.2 > 10.77.0.3 echo request id=7 seq=1 len=84
//	   +0.000us            ns-a   eth0     veth    egress
//	   +8.913us  (+8.913)  host   veth-a   veth    ingress   port of br0
//	  ...
//	  => delivered: consumed by icmp_rcv in ns-b
func FormatPath(p *path.Path) string {
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
		rows = append(rows, []string{"+" + micros(h.SinceNs) + "us", delta, where, h.Ifname, string(h.Kind), string(h.Direction), note})
	}
	writeTable(&b, "  ", rows)
	verdict := p.Verdict
	if p.DropReason != "" && p.Verdict == path.Dropped {
		verdict += " (" + p.DropReason + ")"
	}
	fmt.Fprintf(&b, "  => %s: %s\n", verdict, p.End)
	return b.String()
}

// micros renders nanoseconds as microseconds with three decimals.
func micros(ns uint64) string {
	return fmt.Sprintf("%.3f", float64(ns)/1000)
}

// writeTable left-aligns columns (the last column is not padded).
func writeTable(b *strings.Builder, indent string, rows [][]string) {
	if len(rows) == 0 {
		return
	}
	widths := make([]int, len(rows[0]))
	for _, r := range rows {
		for i, c := range r {
			if len(c) > widths[i] {
				widths[i] = len(c)
			}
		}
	}
	for _, r := range rows {
		var row strings.Builder
		row.WriteString(indent)
		for i, c := range r {
			switch {
			case i == len(r)-1:
				row.WriteString(c)
			case i == 0: // right-align the time column
				row.WriteString(strings.Repeat(" ", widths[i]-len(c)) + c + "  ")
			default:
				row.WriteString(c + strings.Repeat(" ", widths[i]-len(c)) + "  ")
			}
		}
		b.WriteString(strings.TrimRight(row.String(), " "))
		b.WriteString("\n")
	}
}

// HopEvent is one observation in --events mode.
type HopEvent struct {
	Time       time.Time `json:"time"`
	PacketID   uint64    `json:"packet_id"`
	Hook       string    `json:"hook"`
	Direction  string    `json:"direction"`
	Netns      string    `json:"netns"`
	NetnsInode uint32    `json:"netns_inode"`
	Container  string    `json:"container"`
	Ifindex    int       `json:"ifindex"`
	Ifname     string    `json:"ifname"`
	Kind       string    `json:"kind"`
	Bridge     string    `json:"bridge"`
	Skb        string    `json:"skb"`
	Len        uint32    `json:"len"`
	CPU        uint16    `json:"cpu"`
	TsNs       uint64    `json:"ts_ns"`
	Summary    string    `json:"summary"`
	DropReason string    `json:"drop_reason,omitempty"`
	Location   string    `json:"location,omitempty"`
	New        bool      `json:"new,omitempty"`
	Clone      bool      `json:"clone,omitempty"`
}

// Event writes one hop event.
func (w *Writer) Event(e *HopEvent) error {
	if w.format == JSON {
		return w.enc.Encode(e)
	}
	where := e.Netns
	if e.Container != "" {
		where = e.Container
	}
	extra := ""
	if e.DropReason != "" {
		extra = " reason=" + e.DropReason
	}
	if e.Location != "" {
		extra += " at=" + e.Location
	}
	if e.Clone {
		extra += " clone"
	}
	_, err := fmt.Fprintf(w.w, "%s  #%-6d %-18s %-12s %-16s %-8s %-8s %s%s\n",
		e.Time.Format("15:04:05.000000"), e.PacketID, e.Hook, where, e.Ifname, e.Kind, e.Direction, e.Summary, extra)
	return err
}

// Summary is the closing line of a trace.
type Summary struct {
	Packets  uint64            `json:"packets"`
	Hops     uint64            `json:"hops"`
	Events   uint64            `json:"events"`
	Lost     uint64            `json:"lost_events"`
	Late     uint64            `json:"late_events"`
	Dropped  uint64            `json:"dropped"`
	Verdicts map[string]uint64 `json:"verdicts"`
}

// String renders the summary line for people.
func (s Summary) String() string {
	return fmt.Sprintf("%d packets, %d hops, %d events, %d lost events (ring buffer full), %d dropped packets",
		s.Packets, s.Hops, s.Events, s.Lost, s.Dropped)
}
