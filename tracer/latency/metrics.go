package latency

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/hoptrace/hoptrace/tracer/benign"
	"github.com/hoptrace/hoptrace/tracer/loader"
)

// Metric names (see docs/latency.md).
const (
	MetricHopLatency     = "hoptrace_hop_latency_seconds"
	MetricDrops          = "hoptrace_drops_total"
	MetricPackets        = "hoptrace_packets_total"
	MetricHistUpdates    = "hoptrace_hop_pairs_recorded_total"
	MetricHistFull       = "hoptrace_hop_pairs_unrecorded_total"
	MetricHistNoMem      = "hoptrace_hop_pairs_alloc_failed_total"
	MetricLost           = "hoptrace_events_lost_total"
	MetricExpired        = "hoptrace_tracking_expired_total"
	MetricTrackEntries   = "hoptrace_tracking_entries"
	MetricTrackCapacity  = "hoptrace_tracking_capacity"
	MetricTrackEvicted   = "hoptrace_tracking_evicted_total"
	MetricPairsEvicted   = "hoptrace_hop_pairs_evicted_total"
	MetricSample         = "hoptrace_latency_sample_one_in"
	metricBucketMinPower = 8  // 256 ns
	metricBucketMaxPower = 34 // ~17 s
)

var pairLabels = []string{
	"from_container", "from_netns", "from_interface", "from_direction", "from_step",
	"to_container", "to_netns", "to_interface", "to_direction", "to_step",
}

// Metrics exposes the session's cumulative histograms and counters to
// Prometheus. Histograms are built at scrape time from the kernel buckets
// (const histograms); their bucket bounds are powers of two nanoseconds
// from 256 ns to 2^34 ns (~17 s), which are kernel bucket boundaries, so
// no count is approximated.
type Metrics struct {
	mu       sync.Mutex
	pairs    []metricPair
	drops    map[dropKey]uint64
	stats    loader.Stats
	expired  uint64
	entries  int
	capacity int
	evicted  uint64
	sample   uint32 // one packet in sample measured (1: all)

	hist, dropsDesc, packets, updates, full, nomem, lost, exp, ents, capDesc, trackEvict, evict, sampleDesc *prometheus.Desc
}

type dropKey struct{ container, netns, iface, reason string }

type metricPair struct {
	labels  []string
	count   uint64
	sum     float64
	buckets map[float64]uint64
}

// NewMetrics creates the collector.
func NewMetrics() *Metrics {
	return &Metrics{
		hist:       prometheus.NewDesc(MetricHopLatency, "Time from one hop to the next (pairs of network namespace, interface and tracepoint).", pairLabels, nil),
		dropsDesc:  prometheus.NewDesc(MetricDrops, "Packets dropped (kfree_skb) after a traced hop, by where and why.", []string{"container", "netns", "interface", "reason"}, nil),
		packets:    prometheus.NewDesc(MetricPackets, "Packets the kernel started tracking.", nil, nil),
		updates:    prometheus.NewDesc(MetricHistUpdates, "Hop-to-hop times added to the kernel histograms.", nil, nil),
		full:       prometheus.NewDesc(MetricHistFull, "Hop-to-hop times not recorded because the histogram map was full.", nil, nil),
		nomem:      prometheus.NewDesc(MetricHistNoMem, "Hop-to-hop times not recorded because the kernel could not allocate a new histogram (memory cgroup limit).", nil, nil),
		lost:       prometheus.NewDesc(MetricLost, "Events lost because the ring buffer was full.", nil, nil),
		exp:        prometheus.NewDesc(MetricExpired, "In-flight tracking entries expired: packets that never reached a next hop.", nil, nil),
		ents:       prometheus.NewDesc(MetricTrackEntries, "Entries in the kernel's in-flight packet table.", nil, nil),
		capDesc:    prometheus.NewDesc(MetricTrackCapacity, "Size of the kernel's in-flight packet table.", nil, nil),
		trackEvict: prometheus.NewDesc(MetricTrackEvicted, "Packets in flight pushed out of the in-flight table by a new packet (its set was full of live entries): their next hop was timed as a new packet's first.", nil, nil),
		evict:      prometheus.NewDesc(MetricPairsEvicted, "Idle hop-pair histograms removed from the kernel map.", nil, nil),
		sampleDesc: prometheus.NewDesc(MetricSample, "One packet in this many is measured (1: every packet); hop latency counts and drops are scaled by it.", nil, nil),
		sample:     1,
	}
}

// Describe implements prometheus.Collector.
func (m *Metrics) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{m.hist, m.dropsDesc, m.packets, m.updates, m.full, m.nomem, m.lost, m.exp, m.ents, m.capDesc, m.trackEvict, m.evict, m.sampleDesc} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (m *Metrics) Collect(ch chan<- prometheus.Metric) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, p := range m.pairs {
		if h, err := prometheus.NewConstHistogram(m.hist, p.count, p.sum, p.buckets, p.labels...); err == nil {
			ch <- h
		}
	}
	for k, n := range m.drops {
		ch <- prometheus.MustNewConstMetric(m.dropsDesc, prometheus.CounterValue, float64(n), k.container, k.netns, k.iface, k.reason)
	}
	ch <- prometheus.MustNewConstMetric(m.packets, prometheus.CounterValue, float64(m.stats.Packets))
	ch <- prometheus.MustNewConstMetric(m.updates, prometheus.CounterValue, float64(m.stats.HistUpdates))
	ch <- prometheus.MustNewConstMetric(m.full, prometheus.CounterValue, float64(m.stats.HistFull))
	ch <- prometheus.MustNewConstMetric(m.nomem, prometheus.CounterValue, float64(m.stats.HistNoMem))
	ch <- prometheus.MustNewConstMetric(m.lost, prometheus.CounterValue, float64(m.stats.Lost))
	ch <- prometheus.MustNewConstMetric(m.exp, prometheus.CounterValue, float64(m.expired))
	ch <- prometheus.MustNewConstMetric(m.ents, prometheus.GaugeValue, float64(m.entries))
	ch <- prometheus.MustNewConstMetric(m.capDesc, prometheus.GaugeValue, float64(m.capacity))
	ch <- prometheus.MustNewConstMetric(m.trackEvict, prometheus.CounterValue, float64(m.stats.Evicted))
	ch <- prometheus.MustNewConstMetric(m.evict, prometheus.CounterValue, float64(m.evicted))
	ch <- prometheus.MustNewConstMetric(m.sampleDesc, prometheus.GaugeValue, float64(m.sample))
}

// PromBuckets converts a histogram to Prometheus cumulative buckets with
// upper bounds 2^k ns (in seconds) for k in [8, 34]. A value exactly equal
// to a bound is counted in the next bucket (the kernel buckets start at
// those bounds).
func PromBuckets(h *Hist) map[float64]uint64 {
	out := make(map[float64]uint64, metricBucketMaxPower-metricBucketMinPower+1)
	var cum uint64
	i := 0
	for p := metricBucketMinPower; p <= metricBucketMaxPower; p++ {
		bound := uint64(1) << p
		for ; i < NumBuckets && BucketLower(i) < bound; i++ {
			cum += h.Buckets[i]
		}
		out[float64(bound)/1e9] = cum
	}
	return out
}

func (m *Metrics) update(names Names, drops DropNamer, totals map[Pair]*Hist, st loader.Stats, sw *Sweeper, evicted uint64, entries int, sample uint32) {
	pairs := make([]metricPair, 0, len(totals))
	dropCounts := map[dropKey]uint64{}
	hops := map[HopKey]Hop{}
	hop := func(k HopKey) Hop {
		h, ok := hops[k]
		if !ok {
			h = describeEnd(names, drops, k)
			hops[k] = h
		}
		return h
	}
	// Pairs whose labels are equal (drops at one place for different
	// reasons) are one series: the reasons are counted in the drops metric.
	bySeries := map[string]int{}
	for k, h := range totals {
		from, to := hop(k.From), hop(k.To)
		labels := []string{from.Container, from.Netns, from.Interface, string(from.Direction), from.Step,
			to.Container, to.Netns, to.Interface, string(to.Direction), to.Step}
		series := strings.Join(labels, "\x00")
		if i, ok := bySeries[series]; ok {
			mp := &pairs[i]
			mp.count += h.Total()
			mp.sum += float64(h.SumNs) / 1e9
			for bound, c := range PromBuckets(h) {
				mp.buckets[bound] += c
			}
		} else {
			bySeries[series] = len(pairs)
			pairs = append(pairs, metricPair{
				labels:  labels,
				count:   h.Total(),
				sum:     float64(h.SumNs) / 1e9,
				buckets: PromBuckets(h),
			})
		}
		if to.Step == StepDrop { // a discard (a benign reason) is no drop
			at := to
			if at.NetnsInode == 0 {
				at = from // no device, no socket: where the packet last was
			} else if at.Interface == "" {
				at.Interface = from.Interface
			}
			reason := DropName(drops, k.To)
			if reason == "" {
				reason = "unknown"
			}
			dropCounts[dropKey{at.Container, at.Netns, at.Interface, reason}] += h.Count
		}
	}
	m.mu.Lock()
	m.pairs = pairs
	m.drops = dropCounts
	m.stats = st
	m.expired = sw.Expired()
	m.entries = entries
	m.capacity = sw.Capacity()
	m.evicted = evicted
	m.sample = sample
	m.mu.Unlock()
}

// Serve exposes the metrics over HTTP at addr (host:port). An empty host
// binds to loopback: metrics leave the machine only when asked to. It
// returns the address bound and stops serving when ctx ends.
func (m *Metrics) Serve(ctx context.Context, addr string) (net.Addr, <-chan error, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, nil, fmt.Errorf("metrics address %q: %w", addr, err)
	}
	if host == "" {
		host = "127.0.0.1"
	}
	ln, err := net.Listen("tcp", net.JoinHostPort(host, port))
	if err != nil {
		return nil, nil, fmt.Errorf("metrics endpoint: %w", err)
	}
	reg := prometheus.NewRegistry()
	if err := reg.Register(m); err != nil {
		ln.Close()
		return nil, nil, fmt.Errorf("register metrics: %w", err)
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	errc := make(chan error, 1)
	go func() {
		err := srv.Serve(ln)
		if errors.Is(err, http.ErrServerClosed) {
			err = nil
		}
		errc <- err
	}()
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		srv.Shutdown(sctx)
	}()
	return ln.Addr(), errc, nil
}

// BenignDropReason reports drop reasons that are no failure of the packet:
// their kfree_skb is a discard (StepDiscard), kept out of the drops counter.
// They are tracer/benign's rules that hold for a reason anywhere
// (benign.Rule.Discard): QUEUE_PURGE frees what a closing socket still held
// (delivered, or TCP's copy kept for retransmission); OTHERHOST a bridge's
// flood copy reaching a namespace whose MAC it was not for (ip_rcv: not for
// this host), while the packet went on to its real destination, as trace
// shows it. The other benign frees (an echo reply a raw socket took,
// multicast not joined, a late TCP segment, ...) depend on where the kernel
// freed the packet and what it was: the kernel programs count them as
// consumed already.
func BenignDropReason(reason string) bool { return benign.IsDiscard(reason) }
