// Package output renders paths and events for people (aligned text blocks)
// and for scripts (one JSON object per line).
package output

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"strconv"
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

// writeBuffer is how much output is buffered before a write: a busy trace
// writes tens of MB/s of JSON, and the trace flushes at every poll anyway.
const writeBuffer = 256 << 10

// NewWriter returns a Writer on w.
func NewWriter(w io.Writer, f Format) *Writer {
	bw := bufio.NewWriterSize(w, writeBuffer)
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
	w.buf = appendPathText(w.buf[:0], p)
	_, err := w.w.Write(w.buf)
	return err
}

// FormatPath renders a path as a text block:
//
//	12:01:02.123456  ICMP 10.77.0.2 > 10.77.0.3 echo request id=7 seq=1 len=84
//	   +0.000us            ns-a   eth0     veth    egress
//	   +8.913us  (+8.913)  host   veth-a   veth    ingress   port of br0
//	  ...
//	  => delivered: consumed by icmp_rcv in ns-b
func FormatPath(p *path.Path) string { return string(appendPathText(nil, p)) }

// hopColumns is the number of aligned columns of a hop row (the note,
// last, is not padded).
const hopColumns = 6

// appendPathText appends FormatPath(p) to b, building the rows in place.
func appendPathText(b []byte, p *path.Path) []byte {
	b = p.Time.AppendFormat(b, "15:04:05.000000")
	b = append(b, "  "...)
	b = append(b, p.Summary...)
	b = append(b, '\n')
	if len(p.Hops) > 0 {
		var widths [hopColumns]int
		for i := range p.Hops {
			cols := hopCellsOf(&p.Hops[i], i)
			for c := range widths {
				if n := cols.width(c); n > widths[c] {
					widths[c] = n
				}
			}
		}
		for i := range p.Hops {
			b = appendHopRow(b, &p.Hops[i], i, &widths)
		}
	}
	b = append(b, "  => "...)
	b = append(b, p.Verdict...)
	if p.DropReason != "" && p.Verdict == path.Dropped {
		b = append(b, " ("...)
		b = append(b, p.DropReason...)
		b = append(b, ')')
	}
	b = append(b, ": "...)
	b = append(b, p.End...)
	return append(b, '\n')
}

// hopCells are a hop row's cells but for the note: the times as numbers,
// the others as they are printed.
type hopCells struct {
	since, delta uint64
	first        bool
	text         [4]string // where, ifname, kind, direction
}

func hopCellsOf(h *path.Hop, i int) hopCells {
	where := h.Netns
	if h.Container != "" {
		where = h.Container
	}
	return hopCells{since: h.SinceNs, delta: h.DeltaNs, first: i == 0,
		text: [4]string{where, h.Ifname, string(h.Kind), string(h.Direction)}}
}

// width is the printed width of column c.
func (h hopCells) width(c int) int {
	var buf [32]byte
	switch c {
	case 0: // "+1.234us"
		return len(appendMicros(buf[:0], h.since)) + 3
	case 1: // "(+1.234)", empty on the first hop
		if h.first {
			return 0
		}
		return len(appendMicros(buf[:0], h.delta)) + 3
	}
	return len(h.text[c-2])
}

// appendHopRow appends one hop row: the time column right-aligned, the
// others left-aligned, two spaces apart, trailing spaces trimmed.
func appendHopRow(b []byte, h *path.Hop, i int, widths *[hopColumns]int) []byte {
	cells := hopCellsOf(h, i)
	start := len(b)
	b = append(b, "  "...)
	for range widths[0] - cells.width(0) {
		b = append(b, ' ')
	}
	b = append(b, '+')
	b = appendMicros(b, cells.since)
	b = append(b, "us  "...)
	n := len(b)
	if !cells.first {
		b = append(b, "(+"...)
		b = appendMicros(b, cells.delta)
		b = append(b, ')')
	}
	b = pad(b, widths[1]-(len(b)-n))
	for c := 2; c < hopColumns; c++ {
		b = append(b, cells.text[c-2]...)
		b = pad(b, widths[c]-len(cells.text[c-2]))
	}
	b = appendNote(b, h)
	// the row's trailing spaces go (an empty note, short last cells)
	end := len(b)
	for end > start && b[end-1] == ' ' {
		end--
	}
	return append(b[:end], '\n')
}

// pad appends n spaces and the two between columns.
func pad(b []byte, n int) []byte {
	for range n + 2 {
		b = append(b, ' ')
	}
	return b
}

// appendNote appends the note column: the hop's note, marked inferred or
// clone, after the NAT it saw.
func appendNote(b []byte, h *path.Hop) []byte {
	if !h.Inferred && !h.Clone && h.NAT == "" {
		return append(b, h.Note...)
	}
	note := h.Note
	var buf [128]byte
	nb := append(buf[:0], note...)
	if h.Inferred {
		nb = bytes.TrimSpace(append(nb, " (inferred)"...))
	}
	if h.Clone {
		nb = bytes.TrimSpace(append(nb, " [clone]"...))
	}
	if h.NAT != "" {
		var nat [128]byte
		x := append(nat[:0], "* "...)
		x = append(x, h.NAT...)
		x = append(x, "  "...)
		x = append(x, nb...)
		nb = bytes.TrimSpace(x)
	}
	return append(b, nb...)
}

// appendMicros appends nanoseconds as microseconds with three decimals.
func appendMicros(b []byte, ns uint64) []byte {
	return strconv.AppendFloat(b, float64(ns)/1000, 'f', 3, 64)
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
	Capped   uint64            `json:"capped_events"`
	Dropped  uint64            `json:"dropped"`
	Verdicts map[string]uint64 `json:"verdicts"`
}

// String renders the summary line for people.
func (s Summary) String() string {
	line := fmt.Sprintf("%d packets, %d hops, %d events, %d lost events (ring buffer full), %d dropped packets",
		s.Packets, s.Hops, s.Events, s.Lost, s.Dropped)
	if s.Late > 0 {
		line += fmt.Sprintf(", %d late events (their path was already printed)", s.Late)
	}
	if s.Capped > 0 {
		line += fmt.Sprintf(", %d events past a path's limit of 256 left out", s.Capped)
	}
	return line
}
