package verify

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
)

// WriteJSON writes the report as one indented JSON object.
func (r *Report) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(r)
}

func (r *Report) targetText() string {
	switch r.Target.Kind {
	case TargetGateway:
		return fmt.Sprintf("gateway %s", r.Target.IP)
	case TargetContainer:
		return fmt.Sprintf("%s (%s)", r.Target.Name, r.Target.IP)
	}
	return r.Target.IP
}

func (r *Report) probeText() string {
	switch r.Proto {
	case "icmp":
		return "ICMP echo"
	default:
		return fmt.Sprintf("%s port %d", strings.ToUpper(r.Proto), r.Port)
	}
}

func mark(ok bool) string {
	if ok {
		return "✓"
	}
	return "✗"
}

func micros(ns uint64) string { return fmt.Sprintf("%.3f", float64(ns)/1000) }

// WriteText writes the report for people: the checks, the expected path,
// each probe's hops against it, the delivery outcome and the verdict.
func (r *Report) WriteText(w io.Writer) error {
	var b strings.Builder
	if r.Verdict == Skip {
		fmt.Fprintf(&b, "SKIP %s: %s\n", r.Container, r.Note)
		_, err := io.WriteString(w, b.String())
		return err
	}
	fmt.Fprintf(&b, "verify %s %s → %s over %s (bridge %s), %s\n\n", r.Container, r.Source, r.targetText(), r.Network, r.Bridge, r.probeText())

	b.WriteString("configuration\n")
	tw := tabwriter.NewWriter(&b, 0, 0, 2, ' ', 0)
	for _, k := range r.Checks {
		m := mark(k.OK)
		detail := k.Detail
		if k.Consequence {
			detail += " (a consequence)"
		}
		if detail == "" {
			detail = k.Fact
		}
		fmt.Fprintf(tw, "  %s\t%s\t%s\n", m, k.Hop, detail)
	}
	tw.Flush()

	b.WriteString("\nexpected path\n")
	tw = tabwriter.NewWriter(&b, 0, 0, 2, ' ', 0)
	for i, h := range r.Expected {
		fmt.Fprintf(tw, "  %d\t%s\t%s\t%s\t%s\t%s\n", i+1, h.Netns, h.Ifname, h.Kind, h.Direction, h.Note)
	}
	tw.Flush()

	b.WriteString("\nprobes\n")
	if len(r.Probes) == 0 {
		reason := r.ProbesSkipped
		if reason == "" {
			reason = "none sent"
		}
		fmt.Fprintf(&b, "  not sent: %s\n", reason)
	}
	for _, pr := range r.Probes {
		fmt.Fprintf(&b, "  #%d %s\n", pr.Seq, pr.Summary)
		tw = tabwriter.NewWriter(&b, 0, 0, 2, ' ', 0)
		for i, h := range pr.Hops {
			delta := ""
			if i > 0 {
				delta = "(+" + micros(h.DeltaNs) + ")"
			}
			where := h.Netns
			if h.Container != "" {
				where = h.Container
			}
			exp := "  "
			if h.Expected >= 0 {
				exp = fmt.Sprintf("%d ", h.Expected+1)
			}
			note := h.Note
			if h.Inferred {
				note = strings.TrimSpace(note + " (inferred)")
			}
			if h.NAT != "" {
				note = strings.TrimSpace("* " + h.NAT + "  " + note)
			}
			fmt.Fprintf(tw, "    %s %s\t+%sus\t%s\t%s\t%s\t%s\t%s\t%s\n", mark(h.OK), exp, micros(h.SinceNs), delta, where, h.Ifname, h.Kind, h.Direction, note)
		}
		tw.Flush()
		switch {
		case pr.Path != nil:
			fmt.Fprintf(&b, "    => %s: %s\n", pr.Path.Verdict, pr.Path.End)
		default:
			b.WriteString("    => not seen by the tracer\n")
		}
		if pr.Failure != nil {
			fmt.Fprintf(&b, "    ✗ at %s: %s\n", pr.Failure.Hop, pr.Failure.Reason)
		} else if pr.PathOK {
			fmt.Fprintf(&b, "    ✓ all %d expected hops, outcome %s\n", pr.Matched, pr.Outcome)
		}
		if pr.Response != "" {
			fmt.Fprintf(&b, "    response: %s\n", pr.Response)
		}
		if pr.SendError != "" {
			fmt.Fprintf(&b, "    send error: %s\n", pr.SendError)
		}
		if pr.Reply != nil && len(pr.Reply.Hops) > 0 {
			var hs []string
			for _, h := range pr.Reply.Hops {
				where := h.Netns
				if h.Container != "" {
					where = h.Container
				}
				hs = append(hs, where+" "+h.Ifname)
			}
			last := pr.Reply.Hops[len(pr.Reply.Hops)-1]
			fmt.Fprintf(&b, "    reply: %s (%sus)\n", strings.Join(hs, " → "), micros(last.SinceNs))
		}
	}

	if r.Delivery != nil {
		fmt.Fprintf(&b, "\ndelivery: %s", r.Delivery.Outcome)
		if r.Delivery.Reason != "" {
			fmt.Fprintf(&b, " (%s)", r.Delivery.Reason)
		}
		fmt.Fprintf(&b, ": %s\n", r.Delivery.Detail)
		if r.Verdict == Pass && r.Delivery.Outcome != OutcomeAccepted {
			b.WriteString("          the path is fine: this is the target's answer, not a path failure\n")
		}
	}
	fmt.Fprintf(&b, "\n%s\n", r.Summary)
	_, err := io.WriteString(w, trimLines(b.String()))
	return err
}

// trimLines drops the padding tabwriter leaves after an empty last column.
func trimLines(s string) string {
	lines := strings.Split(s, "\n")
	for i, l := range lines {
		lines[i] = strings.TrimRight(l, " ")
	}
	return strings.Join(lines, "\n")
}

// Line is the one-line form used by verify --all.
func (r *Report) Line() string {
	switch r.Verdict {
	case Skip:
		return fmt.Sprintf("SKIP  %s: %s", r.Container, r.Note)
	case Pass:
		s := fmt.Sprintf("PASS  %s  %s → %s via %s", r.Container, r.Source, r.targetText(), r.Bridge)
		ok := 0
		var worst uint64
		for _, pr := range r.Probes {
			if pr.PathOK {
				ok++
			}
			if n := len(pr.Hops); n > 0 && pr.Hops[n-1].SinceNs > worst {
				worst = pr.Hops[n-1].SinceNs
			}
		}
		s += fmt.Sprintf("  %d/%d probes, slowest %sus", ok, len(r.Probes), micros(worst))
		if r.Delivery != nil && r.Delivery.Outcome != OutcomeAccepted {
			s += "  delivery: " + r.Delivery.Outcome
		}
		return s
	}
	return fmt.Sprintf("FAIL  %s  %s", r.Container, strings.TrimPrefix(r.Summary, "FAIL "))
}
