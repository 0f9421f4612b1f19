package latency_test

import (
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/hoptrace/hoptrace/tracer/latency"
	"github.com/hoptrace/hoptrace/tracer/selection"
)

// With Sample N about one datagram in N is measured, the same ones at every
// hop (each pair along the path has the same count), the counts are scaled
// by N, and the text report, the JSON field and the metrics say so.
func TestSampleOneInN(t *testing.T) {
	const sample, bursts, burst = 8, 8, 100
	topo, a, b, dst, got := udpPair(t)
	metrics := latency.NewMetrics()
	s := startLatency(t, latency.Config{
		Selection: selection.Selection{Netns: []uint32{a.Inode}},
		Interval:  200 * time.Millisecond,
		Sample:    sample,
		Metrics:   metrics,
	})
	for i := 0; i < bursts; i++ {
		sendBurst(t, a, dst, burst, 100, got, 5*time.Second)
	}
	time.Sleep(300 * time.Millisecond)
	rep := s.stop()
	const n = bursts * burst

	if rep.Sample != sample {
		t.Errorf("report's sample %d, want %d", rep.Sample, sample)
	}
	// Binomial(800, 1/8): mean 100, standard deviation 9.4.
	if rep.Kernel.Packets < n/sample/2 || rep.Kernel.Packets > n/sample*2 {
		t.Errorf("%d packets tracked of %d sent, want about %d (one in %d)", rep.Kernel.Packets, n, n/sample, sample)
	}
	hops := deviceHops(topo, a, b)
	var first uint64
	for i := 0; i+1 < len(hops); i++ {
		p := findPair(&rep, hops[i], hops[i+1])
		if p == nil {
			logReport(t, &rep)
			t.Fatalf("pair %v → %v missing", hops[i], hops[i+1])
		}
		if i == 0 {
			first = p.Count
		}
		if p.Count != first || p.Count%sample != 0 || p.Hist.Total() != p.Count {
			logReport(t, &rep)
			t.Errorf("%s: count %d (buckets %d), want the first pair's %d, a multiple of %d", p.Label, p.Count, p.Hist.Total(), first, sample)
		}
	}
	t.Logf("%d of %d datagrams measured, scaled count %d per pair", rep.Kernel.Packets, n, first)
	if first < n/2 || first > 2*n {
		t.Errorf("scaled count %d, want about %d datagrams", first, n)
	}

	var text strings.Builder
	w, _ := latency.NewWriter(&text, "text")
	if err := w.Write(&rep); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(text.String(), "sampled: 1 packet in 8, counts ×8") {
		t.Errorf("text report does not say it is sampled:\n%s", text.String())
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(metrics)
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, mf := range mfs {
		if mf.GetName() == latency.MetricSample {
			found = true
			if v := mf.GetMetric()[0].GetGauge().GetValue(); v != sample {
				t.Errorf("%s = %v, want %d", latency.MetricSample, v, sample)
			}
		}
	}
	if !found {
		t.Errorf("no %s metric", latency.MetricSample)
	}
}
