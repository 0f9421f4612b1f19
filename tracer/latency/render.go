package latency

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"unicode/utf8"
)

// Writer prints reports as text tables or JSON (one object per line).
type Writer struct {
	out  io.Writer
	json bool
	// Detail adds the mean column, the tracepoint names and every pair on
	// no path (otherwise the 10 busiest are shown).
	Detail bool
}

// NewWriter writes reports to out; format is "text" or "json".
func NewWriter(out io.Writer, format string) (*Writer, error) {
	switch format {
	case "", "text":
		return &Writer{out: out}, nil
	case "json":
		return &Writer{out: out, json: true}, nil
	}
	return nil, fmt.Errorf("unknown output format %q: use text or json", format)
}

// Write prints one report.
func (w *Writer) Write(r *Report) error {
	if w.json {
		b, err := json.Marshal(r)
		if err != nil {
			return err
		}
		b = append(b, '\n')
		_, err = w.out.Write(b)
		return err
	}
	return w.text(r)
}

const otherPairsShown = 10

func (w *Writer) text(r *Report) error {
	var b strings.Builder
	title := r.Time.Format("15:04:05")
	if r.Final {
		title = "summary"
	}
	fmt.Fprintf(&b, "── %s (%.2fs) ── %d path(s), %d pair(s) ── tracking %d/%d (%.1f%%), %d expired",
		title, r.Interval, len(r.Paths), len(r.Pairs), r.Tracking.Entries, r.Tracking.Capacity, 100*r.Tracking.Fill, r.Tracking.Expired)
	if r.Kernel.HistFull > 0 {
		fmt.Fprintf(&b, " ── %d pair(s) unrecorded: histogram map full", r.Kernel.HistFull)
	}
	if r.Kernel.HistNoMem > 0 {
		fmt.Fprintf(&b, " ── %d pair(s) unrecorded: no kernel memory for a new histogram", r.Kernel.HistNoMem)
	}
	if r.Sample > 1 {
		fmt.Fprintf(&b, " ── sampled: 1 packet in %d, counts ×%d", r.Sample, r.Sample)
	}
	b.WriteString("\n")
	if len(r.Pairs) == 0 {
		b.WriteString("  no packets\n")
		_, err := io.WriteString(w.out, b.String())
		return err
	}
	type line struct {
		label string
		cols  []string
	}
	var lines []line
	row := func(p *PairStat, share bool) {
		label := "  " + p.Label
		if w.Detail {
			label += "  [" + string(p.From.Hook) + " → " + string(p.To.Hook) + "]"
		}
		sh := "-"
		if share {
			sh = fmt.Sprintf("%.1f%%", 100*p.Share)
		}
		cols := []string{fmt.Sprint(p.Count)}
		if w.Detail {
			cols = append(cols, FormatNs(uint64(p.MeanNs+0.5)))
		}
		cols = append(cols, FormatNs(p.P50Ns), FormatNs(p.P90Ns), FormatNs(p.P99Ns), FormatNs(p.MaxNs), sh)
		lines = append(lines, line{label, cols})
	}
	header := []string{"COUNT", "P50", "P90", "P99", "MAX", "SHARE"}
	if w.Detail {
		header = []string{"COUNT", "MEAN", "P50", "P90", "P99", "MAX", "SHARE"}
	}
	lines = append(lines, line{"PAIR", header})
	onPath := make([]bool, len(r.Pairs))
	for pi := range r.Paths {
		p := &r.Paths[pi]
		lines = append(lines, line{label: fmt.Sprintf("PATH %d  %s: %d packets, total mean %s, max ≤ %s", pi+1, p.Label, p.Count,
			FormatNs(uint64(p.MeanTotalNs+0.5)), FormatNs(p.MaxTotalNs))})
		for _, i := range p.Pairs {
			onPath[i] = true
			row(&r.Pairs[i], r.Pairs[i].Path == pi)
		}
	}
	var others []int
	for i := range r.Pairs {
		if !onPath[i] {
			others = append(others, i)
		}
	}
	if len(others) > 0 {
		lines = append(lines, line{label: "OTHER PAIRS"})
		shown := others
		if !w.Detail && len(shown) > otherPairsShown {
			shown = shown[:otherPairsShown]
		}
		for _, i := range shown {
			row(&r.Pairs[i], false)
		}
		if len(shown) < len(others) {
			lines = append(lines, line{label: fmt.Sprintf("  … %d more (--detail shows all)", len(others)-len(shown))})
		}
	}
	// Column widths; section lines (no columns) do not widen the label column.
	lw := 0
	cw := make([]int, len(header))
	for _, l := range lines {
		if l.cols == nil {
			continue
		}
		lw = max(lw, utf8.RuneCountInString(l.label))
		for i, c := range l.cols {
			cw[i] = max(cw[i], utf8.RuneCountInString(c))
		}
	}
	for _, l := range lines {
		b.WriteString(l.label)
		if l.cols != nil {
			b.WriteString(strings.Repeat(" ", lw-utf8.RuneCountInString(l.label)))
			for i, c := range l.cols {
				b.WriteString("  ")
				b.WriteString(strings.Repeat(" ", cw[i]-utf8.RuneCountInString(c)))
				b.WriteString(c)
			}
		}
		b.WriteString("\n")
	}
	_, err := io.WriteString(w.out, b.String())
	return err
}

// FormatNs prints a duration in ns with three significant digits:
// 850ns, 1.23µs, 45.6µs, 12.3ms, 1.20s.
func FormatNs(ns uint64) string {
	v := float64(ns)
	switch {
	case ns < 1000:
		return fmt.Sprintf("%dns", ns)
	case ns < 1e6:
		return sig3(v/1e3) + "µs"
	case ns < 1e9:
		return sig3(v/1e6) + "ms"
	}
	return sig3(v/1e9) + "s"
}

func sig3(v float64) string {
	switch {
	case v < 10:
		return fmt.Sprintf("%.2f", v)
	case v < 100:
		return fmt.Sprintf("%.1f", v)
	}
	return fmt.Sprintf("%.0f", v)
}
