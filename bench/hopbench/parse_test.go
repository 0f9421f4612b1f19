package main

import (
	"math"
	"slices"
	"strings"
	"testing"
)

func TestParseSummaryHoptrace(t *testing.T) {
	s := ParseSummary("hoptrace: warning: something\nhoptrace: 41845 packets, 209215 hops, 211427 events, 12 lost events (ring buffer full), 10 dropped packets")
	if !s.Found || s.Packets != 41845 || s.Events != 211427 || s.Lost != 12 || s.Produced != 211439 {
		t.Fatalf("got %+v", s)
	}
}

func TestParseSummaryTcpdump(t *testing.T) {
	s := ParseSummary("listening on any, link-type LINUX_SLL2\n54400 packets captured\n54500 packets received by filter\n7 packets dropped by kernel")
	if !s.Found || s.Packets != 54400 || s.Dropped != 7 {
		t.Fatalf("got %+v", s)
	}
}

func TestParseGoBench(t *testing.T) {
	out := `goos: linux
pkg: github.com/hoptrace/hoptrace/tracer/path
BenchmarkDecodeStitch 	 1000000	      1440 ns/op	    694556 events/s	     251 B/op	       0 allocs/op
BenchmarkDescribe-1 	  136654	      8045 ns/op	    4480 B/op	      37 allocs/op
PASS`
	got := parseGoBench(out)
	if len(got) != 2 {
		t.Fatalf("got %d results", len(got))
	}
	if got[0].Package != "github.com/hoptrace/hoptrace/tracer/path" || got[0].Metrics["events/s"] != 694556 || got[0].Metrics["ns/op"] != 1440 {
		t.Errorf("first: %+v", got[0])
	}
	if got[1].Metrics["allocs/op"] != 37 {
		t.Errorf("second: %+v", got[1])
	}
}

func TestPairedRatios(t *testing.T) {
	r := &Results{Samples: []Sample{
		{Round: 1, Condition: "baseline", Workload: "udp64", Metrics: map[string]float64{"rx_pps": 100}},
		{Round: 1, Condition: "trace", Workload: "udp64", Metrics: map[string]float64{"rx_pps": 50}},
		{Round: 2, Condition: "baseline", Workload: "udp64", Metrics: map[string]float64{"rx_pps": 200}},
		{Round: 2, Condition: "trace", Workload: "udp64", Metrics: map[string]float64{"rx_pps": 180}},
		{Round: 3, Condition: "trace", Workload: "udp64", Metrics: map[string]float64{"rx_pps": 1}}, // no baseline: ignored
	}}
	st, ok := summarize(r.paired("trace", "udp64", "rx_pps", ratio))
	if !ok || math.Abs(st.med-0.7) > 1e-9 || st.lo != 0.5 || st.hi != 0.9 {
		t.Fatalf("got %+v", st)
	}
}

// A target line names the count-only floor on the same four veth ends,
// and says when that floor alone misses the target.
func TestTargetsNameTheFloor(t *testing.T) {
	var samples []Sample
	add := func(cond string, pps float64) {
		samples = append(samples, Sample{Round: 1, Condition: cond, Workload: "udp64", Metrics: map[string]float64{"rx_pps": pps}})
	}
	add("baseline", 1000)
	add("trace_idle", 930)
	add("tcx_floor4", 970)
	lines := (&Results{Samples: samples}).Targets()
	want := "unselected traffic under trace, UDP 64 B packets/s received (iperf3 -u -l 64 -b 1G) ≥ 0.98x baseline: **NOT met** (0.930x, range 0.930–0.930; count-only tcx on the same four veth ends: 0.970x, itself short of the target)"
	if !slices.Contains(lines, want) {
		t.Errorf("targets %q\nwant the line %q", lines, want)
	}
	samples[2].Metrics["rx_pps"] = 990
	lines = (&Results{Samples: samples}).Targets()
	if !slices.Contains(lines, strings.Replace(want, "0.970x, itself short of the target", "0.990x", 1)) {
		t.Errorf("with the floor above the target: %q", lines)
	}

	// latency mode times every hop: its line names the state floor when
	// that was measured, the count-only floor when not
	add("latency", 600)
	latency := "latency mode, UDP 64 B packets/s received (iperf3 -u -l 64 -b 1G) ≥ 0.95x baseline: **NOT met** (0.600x, range 0.600–0.600; "
	lines = (&Results{Samples: samples}).Targets()
	if !slices.Contains(lines, latency+"count-only tcx on the same four veth ends: 0.990x)") {
		t.Errorf("latency without the state floor: %q", lines)
	}
	add("state_floor", 800)
	lines = (&Results{Samples: samples}).Targets()
	if !slices.Contains(lines, latency+"the per-packet-state floor on the same ends: 0.800x, itself short of the target)") {
		t.Errorf("latency with the state floor: %q", lines)
	}

	// unselected traffic meets the end tracepoints too: its line names the
	// unselected-traffic floor when that was measured
	add("idle_floor", 960)
	lines = (&Results{Samples: samples}).Targets()
	if !slices.Contains(lines, strings.Replace(want, "count-only tcx on the same four veth ends: 0.970x", "the unselected-traffic floor on the same hooks: 0.960x", 1)) {
		t.Errorf("unselected traffic with its floor: %q", lines)
	}
}

// The 300k events/s target is judged by the measurements near that rate;
// faster ones are reported beside it.
func TestLossTargetNearItsRate(t *testing.T) {
	s := func(round int, work string, rate, lost float64) Sample {
		return Sample{Round: round, Condition: "trace", Workload: work, Metrics: map[string]float64{"events_per_s": rate, "events_lost": lost}}
	}
	line := func(r *Results) string {
		for _, l := range r.Targets() {
			if strings.HasPrefix(l, "trace mode, zero lost events") {
				return l
			}
		}
		return ""
	}
	r := &Results{Samples: []Sample{s(1, "udp64_300kev", 300e3, 0), s(1, "udp64", 860e3, 4e5), s(1, "tcp_rr", 970e3, 0)}}
	want := "trace mode, zero lost events at 300k events/s: **met** (1 measurements at 300k to 360k events/s, none lost an event); faster than 360k events/s, 1 of 2 measurements lost events (the slowest of them at 860k events/s), the fastest without a loss made 970k events/s"
	if got := line(r); got != want {
		t.Errorf("got  %s\nwant %s", got, want)
	}
	r.Samples = append(r.Samples, s(2, "udp64", 320e3, 5))
	if got := line(r); !strings.Contains(got, "**NOT met** (1 of 2 measurements at 285k to 360k events/s lost events, up to 5)") {
		t.Errorf("a loss at 320k events/s: %s", got)
	}
}

// Every condition takes every position once in len(conds) rounds.
func TestRoundOrderRotates(t *testing.T) {
	conds := []string{"baseline", "a", "b", "c"}
	first := map[string]int{}
	for round := 1; round <= len(conds); round++ {
		got := roundOrder(conds, round)
		if len(got) != len(conds) {
			t.Fatalf("round %d: %v", round, got)
		}
		first[got[0]]++
		for i, c := range got {
			if want := conds[(i+round-1)%len(conds)]; c != want {
				t.Fatalf("round %d: %v", round, got)
			}
		}
	}
	if len(first) != len(conds) {
		t.Errorf("first conditions over %d rounds: %v", len(conds), first)
	}
	if got := roundOrder(conds, 1); !slices.Equal(got, conds) {
		t.Errorf("round 1: %v, want the given order", got)
	}
}

// A run without the latency condition says why: left out of the run's
// conditions, or missing from the hoptrace build.
func TestLatencyNotMeasuredSaysWhy(t *testing.T) {
	r := &Results{Samples: []Sample{{Round: 1, Condition: "baseline", Workload: "udp64", Metrics: map[string]float64{"rx_pps": 1000}}}}
	if want := "latency mode: **not measured** (not among this run's conditions)"; !slices.Contains(r.Targets(), want) {
		t.Errorf("targets %q\nwant the line %q", r.Targets(), want)
	}
	r.NoLatency = true
	if want := "latency mode: **not measured** (`hoptrace latency` not available in this build)"; !slices.Contains(r.Targets(), want) {
		t.Errorf("targets %q\nwant the line %q", r.Targets(), want)
	}
}
