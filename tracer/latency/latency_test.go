package latency

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/hoptrace/hoptrace/internal/privtest"
	"github.com/hoptrace/hoptrace/tracer/event"
	"github.com/hoptrace/hoptrace/tracer/loader"
	"github.com/hoptrace/hoptrace/tracer/resolve"
)

func TestBucketLayout(t *testing.T) {
	if NumBuckets != 608 {
		t.Fatalf("NumBuckets = %d, want 608 (HIST_BUCKETS)", NumBuckets)
	}
	for i := 0; i < NumBuckets; i++ {
		lo, up := BucketLower(i), BucketUpper(i)
		if got := Bucket(lo); got != i {
			t.Fatalf("Bucket(lower(%d)=%d) = %d", i, lo, got)
		}
		if got := Bucket(up - 1); got != i {
			t.Fatalf("Bucket(upper(%d)-1=%d) = %d", i, up-1, got)
		}
		if i+1 < NumBuckets && BucketLower(i+1) != up {
			t.Fatalf("bucket %d ends at %d, bucket %d starts at %d", i, up, i+1, BucketLower(i+1))
		}
		if i >= 2*SubCount {
			// the documented bound: width <= lower/16
			if BucketWidth(i)*SubCount > lo {
				t.Fatalf("bucket %d: width %d > lower %d / %d", i, BucketWidth(i), lo, SubCount)
			}
		}
	}
	if Bucket(math.MaxUint64) != NumBuckets-1 || Bucket(1<<41) != NumBuckets-1 || Bucket(1<<41-1) != NumBuckets-1 {
		t.Fatal("values past 2^41 must land in the last bucket")
	}
	if BucketLower(NumBuckets-1) != 31<<36 {
		t.Fatalf("last bucket starts at %d", BucketLower(NumBuckets-1))
	}
}

// boundaryValues are the values where a bucket function can go wrong.
func boundaryValues() []uint64 {
	var vs []uint64
	for v := uint64(0); v < 100; v++ {
		vs = append(vs, v)
	}
	for i := 0; i < NumBuckets; i++ {
		lo := BucketLower(i)
		vs = append(vs, lo, lo+1, BucketUpper(i)-1, BucketUpper(i))
		if lo > 0 {
			vs = append(vs, lo-1)
		}
	}
	for p := 0; p < 64; p++ {
		v := uint64(1) << p
		vs = append(vs, v-1, v, v+1)
	}
	vs = append(vs, math.MaxUint64, math.MaxUint64-1)
	r := rand.New(rand.NewPCG(1, 2))
	for i := 0; i < 5000; i++ {
		vs = append(vs, r.Uint64()>>r.IntN(64))
	}
	return vs
}

// TestBucketMatchesC compiles hist_bucket() from bpf/hoptrace.bpf.c with the
// compiler make generate uses (clang-19, with libc6-dev's headers) and
// compares it with Bucket on every boundary.
func TestBucketMatchesC(t *testing.T) {
	privtest.SameOnEveryKernel(t, "it compiles the C bucket function with clang and runs it in userspace")
	cc := privtest.Tool(t, "clang-19", "clang-19")
	src, err := os.ReadFile("../../bpf/hoptrace.bpf.c")
	if err != nil {
		t.Fatal(err)
	}
	hdr, err := os.ReadFile("../../bpf/hoptrace.h")
	if err != nil {
		t.Fatal(err)
	}
	fn := func(name string) string {
		re := regexp.MustCompile(`(?ms)^static __always_inline __u32 ` + name + `\(.*?^}\n`)
		m := re.Find(src)
		if m == nil {
			t.Fatalf("%s not found in bpf/hoptrace.bpf.c", name)
		}
		return string(m)
	}
	var defs strings.Builder
	for _, l := range strings.Split(string(hdr), "\n") {
		if strings.HasPrefix(l, "#define HIST_") {
			defs.WriteString(l + "\n")
		}
	}
	prog := `#include <stdio.h>
#include <stdint.h>
typedef uint32_t __u32;
typedef uint64_t __u64;
#define __always_inline inline __attribute__((always_inline))
` + defs.String() + fn("log2_u64") + fn("hist_bucket") + `
int main(void) {
	unsigned long long v;
	printf("%d\n", HIST_BUCKETS);
	while (scanf("%llu", &v) == 1)
		printf("%u\n", hist_bucket((__u64)v));
	return 0;
}
`
	dir := t.TempDir()
	cfile := filepath.Join(dir, "bucket.c")
	bin := filepath.Join(dir, "bucket")
	if err := os.WriteFile(cfile, []byte(prog), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(cc, "-O2", "-o", bin, cfile).CombinedOutput(); err != nil {
		t.Fatalf("compile hist_bucket: %v\n%s", err, out)
	}
	vals := boundaryValues()
	var in bytes.Buffer
	for _, v := range vals {
		fmt.Fprintln(&in, v)
	}
	cmd := exec.Command(bin)
	cmd.Stdin = &in
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("run: %v", err)
	}
	sc := bufio.NewScanner(bytes.NewReader(out))
	sc.Scan()
	if n, _ := strconv.Atoi(sc.Text()); n != NumBuckets {
		t.Fatalf("C HIST_BUCKETS = %d, Go NumBuckets = %d", n, NumBuckets)
	}
	i := 0
	for sc.Scan() {
		c, _ := strconv.Atoi(sc.Text())
		if g := Bucket(vals[i]); g != c {
			t.Errorf("value %d: C bucket %d, Go bucket %d", vals[i], c, g)
		}
		i++
	}
	if i != len(vals) {
		t.Fatalf("C answered %d of %d values", i, len(vals))
	}
	t.Logf("%d values agree", i)
}

func histOf(vs []uint64) *Hist {
	h := new(Hist)
	for _, v := range vs {
		h.Add(v)
	}
	return h
}

func exactQuantile(sorted []uint64, q float64) uint64 {
	return sorted[rank(q, uint64(len(sorted)))-1]
}

func TestPercentileErrorBound(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	gens := map[string]func() uint64{
		"uniform-us":   func() uint64 { return 1000 + r.Uint64N(100000) },
		"lognormal":    func() uint64 { return uint64(math.Exp(8 + 2*r.NormFloat64())) },
		"small":        func() uint64 { return r.Uint64N(40) },
		"bimodal":      func() uint64 { return []uint64{800, 150_000_000}[r.IntN(2)] + r.Uint64N(100) },
		"single-value": func() uint64 { return 123456 },
	}
	qs := []float64{0.01, 0.1, 0.5, 0.9, 0.99, 0.999, 1}
	for name, gen := range gens {
		for _, n := range []int{1, 2, 7, 100, 10000} {
			vs := make([]uint64, n)
			for i := range vs {
				vs[i] = gen()
			}
			h := histOf(vs)
			slices.Sort(vs)
			for _, q := range qs {
				want := exactQuantile(vs, q)
				got := h.Percentile(q)
				err := math.Abs(float64(got)-float64(want)) / math.Max(float64(want), 1)
				if want < 2*SubCount && got != want {
					t.Errorf("%s n=%d q=%g: got %d, want exactly %d", name, n, q, got, want)
				}
				if err > MaxRelativeError+1e-12 {
					t.Errorf("%s n=%d q=%g: got %d, want %d (error %.4f > %.4f)", name, n, q, got, want, err, MaxRelativeError)
				}
			}
			if h.Percentile(1) != vs[len(vs)-1] && math.Abs(float64(h.Percentile(1))-float64(vs[len(vs)-1]))/float64(vs[len(vs)-1]) > MaxRelativeError {
				t.Errorf("%s: p100 %d far from max %d", name, h.Percentile(1), vs[len(vs)-1])
			}
		}
	}
	var empty Hist
	if empty.Percentile(0.5) != 0 || empty.Summarize().Count != 0 {
		t.Error("empty histogram must report zeros")
	}
}

func TestPercentilesOnePass(t *testing.T) {
	h := histOf([]uint64{100, 200, 300, 400, 500, 600, 700, 800, 900, 1000})
	qs := []float64{0.1, 0.5, 0.9, 0.99}
	out := make([]uint64, len(qs))
	h.Percentiles(qs, out)
	for i, q := range qs {
		if out[i] != h.Percentile(q) {
			t.Errorf("q=%g: one pass %d, alone %d", q, out[i], h.Percentile(q))
		}
	}
	// nearest rank: p50 of 10 values is the 5th (500), p90 the 9th (900)
	if b := Bucket(out[1]); b != Bucket(500) {
		t.Errorf("p50 = %d, not in 500's bucket", out[1])
	}
	if b := Bucket(out[2]); b != Bucket(900) {
		t.Errorf("p90 = %d, not in 900's bucket", out[2])
	}
	if out[3] != 1000 && Bucket(out[3]) != Bucket(1000) {
		t.Errorf("p99 = %d", out[3])
	}
	if got := h.Percentile(1); got > h.MaxNs {
		t.Errorf("p100 %d above max %d", got, h.MaxNs)
	}
}

func TestMergeDiff(t *testing.T) {
	r := rand.New(rand.NewPCG(5, 6))
	var a, b []uint64
	for i := 0; i < 3000; i++ {
		a = append(a, r.Uint64N(1e6))
		b = append(b, r.Uint64N(1e8))
	}
	ha, hb := histOf(a), histOf(b)
	all := histOf(append(append([]uint64{}, a...), b...))
	m := *ha
	m.Merge(hb)
	if m != *all {
		t.Fatal("merge of two histograms differs from the histogram of both sets")
	}
	// Diff of cumulative snapshots gives back the second set.
	var d Hist
	d.Diff(all, ha)
	if d.Count != hb.Count || d.SumNs != hb.SumNs || d.Buckets != hb.Buckets {
		t.Fatal("diff does not give back the values added between snapshots")
	}
	if hb.MaxNs > ha.MaxNs && d.MaxNs != hb.MaxNs {
		t.Errorf("diff max %d, want %d (the cumulative max grew)", d.MaxNs, hb.MaxNs)
	}
	// When the max did not grow, the estimate covers the interval's values
	// and stays within the cumulative max.
	small := histOf([]uint64{10, 20, 5000})
	cum := *ha
	cum.Merge(small)
	d.Diff(&cum, ha)
	if d.MaxNs < 5000 || d.MaxNs > cum.MaxNs || Bucket(d.MaxNs) != Bucket(5000) {
		t.Errorf("estimated interval max %d for values up to 5000", d.MaxNs)
	}
	// A recreated kernel entry (fewer values than before) is taken whole.
	d.Diff(small, ha)
	if d != *small {
		t.Error("diff against a larger previous snapshot must return the current one")
	}
	d.Diff(ha, nil)
	if d != *ha {
		t.Error("diff against nothing must return the current one")
	}
	d.Diff(ha, ha)
	if d.Count != 0 || d.MaxNs != 0 || d.Total() != 0 {
		t.Error("diff of equal snapshots must be empty")
	}
}

const (
	nsHost = 1000
	nsWeb  = 2000
	nsDB   = 3000
)

func testNames() *resolve.Static {
	return resolve.NewStatic(nsHost, []resolve.Namespace{
		{Inode: nsHost, Label: "host"},
		{Inode: nsWeb, Label: "abc123", Owner: "web"},
		{Inode: nsDB, Label: "def456", Owner: "db"},
	},
		resolve.Link{Netns: nsHost, Name: "docker0", Kind: "bridge", Index: 3},
		resolve.Link{Netns: nsHost, Name: "veth1a2b", Kind: "veth", Index: 10, MasterIndex: 3, MasterName: "docker0"},
		resolve.Link{Netns: nsHost, Name: "veth9c3d", Kind: "veth", Index: 11, MasterIndex: 3, MasterName: "docker0"},
		resolve.Link{Netns: nsWeb, Name: "eth0", Kind: "veth", Index: 2},
		resolve.Link{Netns: nsDB, Name: "eth0", Kind: "veth", Index: 2},
	)
}

func hk(ns, ifindex uint32, h event.Hook) HopKey {
	return HopKey{Netns: ns, Ifindex: ifindex, Hook: uint8(h)}
}

// webToDB is the hop sequence of a packet from web to db across docker0.
var webToDB = []HopKey{
	hk(nsWeb, 2, event.HookNetDevQueue),
	hk(nsWeb, 2, event.HookNetDevStartXmit),
	hk(nsHost, 10, event.HookNetifRx),
	hk(nsHost, 10, event.HookNetifReceiveSkb),
	hk(nsHost, 11, event.HookNetDevQueue),
	hk(nsHost, 11, event.HookNetDevStartXmit),
	hk(nsDB, 2, event.HookNetifRx),
	hk(nsDB, 2, event.HookNetifReceiveSkb),
	hk(nsDB, 0, event.HookCopyDatagram),
}

func chainHists(seq []HopKey, count int, delay func(i int) uint64) map[Pair]*Hist {
	out := map[Pair]*Hist{}
	for i := 0; i+1 < len(seq); i++ {
		h := new(Hist)
		for n := 0; n < count; n++ {
			h.Add(delay(i))
		}
		out[Pair{From: seq[i], To: seq[i+1]}] = h
	}
	return out
}

func TestReportPathsAndLabels(t *testing.T) {
	names := testNames()
	hists := chainHists(webToDB, 100, func(i int) uint64 { return uint64(1000 * (i + 1)) })
	// the reply, fewer packets
	reply := []HopKey{
		hk(nsDB, 2, event.HookNetDevQueue),
		hk(nsDB, 2, event.HookNetDevStartXmit),
		hk(nsHost, 11, event.HookNetifRx),
		hk(nsHost, 11, event.HookNetifReceiveSkb),
		hk(nsHost, 10, event.HookNetDevQueue),
	}
	for k, h := range chainHists(reply, 10, func(int) uint64 { return 2000 }) {
		hists[k] = h
	}
	// an off-path drop
	drop := new(Hist)
	drop.Add(500)
	hists[Pair{From: webToDB[3], To: hk(nsHost, 10, event.HookKfreeSkb)}] = drop

	// a stray pair into the first hop (an skb address reused) hides nothing
	stray := new(Hist)
	stray.Add(9000)
	hists[Pair{From: hk(nsDB, 2, event.HookNetifRx), To: webToDB[0]}] = stray

	r := BuildReport(hists, names, nil)
	if len(r.Paths) != 2 {
		t.Fatalf("%d paths, want 2: %+v", len(r.Paths), r.Paths)
	}
	p := r.Paths[0]
	if p.Label != "web:eth0 egress → db socket" {
		t.Errorf("path label %q", p.Label)
	}
	if len(p.Pairs) != len(webToDB)-1 || p.Count != 100 {
		t.Fatalf("path 0: %d pairs, count %d", len(p.Pairs), p.Count)
	}
	var share float64
	var mean float64
	for j, i := range p.Pairs {
		ps := r.Pairs[i]
		if ps.Key.From != webToDB[j] || ps.Key.To != webToDB[j+1] {
			t.Errorf("path pair %d out of order: %s", j, ps.Label)
		}
		share += ps.Share
		mean += ps.MeanNs
	}
	if math.Abs(share-1) > 1e-9 || math.Abs(mean-p.MeanTotalNs) > 1e-6 {
		t.Errorf("shares sum to %g, means to %g (total %g)", share, mean, p.MeanTotalNs)
	}
	want := []string{
		"web:eth0 egress → xmit",
		"web:eth0 xmit → host:veth1a2b backlog",
		"host:veth1a2b backlog → ingress",
		"host:veth1a2b ingress → docker0 → veth9c3d egress",
		"host:veth9c3d egress → xmit",
		"host:veth9c3d xmit → db:eth0 backlog",
		"db:eth0 backlog → ingress",
		"db:eth0 ingress → socket",
	}
	for j, i := range p.Pairs {
		if r.Pairs[i].Label != want[j] {
			t.Errorf("pair %d label %q, want %q", j, r.Pairs[i].Label, want[j])
		}
	}
	if r.Paths[1].Label != "db:eth0 egress → host:veth1a2b egress" {
		t.Errorf("reply path label %q", r.Paths[1].Label)
	}
	for _, ps := range r.Pairs[len(r.Pairs)-2:] {
		if ps.Path != -1 || (ps.To.Step != StepDrop && ps.Key.To != webToDB[0]) {
			t.Errorf("the drop and the stray pair must come last, on no path: %s", ps.Label)
		}
	}
	// JSON and text render.
	var buf bytes.Buffer
	w, _ := NewWriter(&buf, "json")
	if err := w.Write(&r); err != nil {
		t.Fatal(err)
	}
	var back map[string]any
	if err := json.Unmarshal(buf.Bytes(), &back); err != nil {
		t.Fatalf("JSON output: %v", err)
	}
	buf.Reset()
	w, _ = NewWriter(&buf, "text")
	if err := w.Write(&r); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(buf.String(), "host:veth1a2b ingress → docker0 → veth9c3d egress") {
		t.Errorf("text output lacks the bridge pair:\n%s", buf.String())
	}
	t.Logf("\n%s", buf.String())
}

func TestPromBuckets(t *testing.T) {
	h := histOf([]uint64{100, 255, 256, 257, 1000, 1 << 20, 1 << 40})
	b := PromBuckets(h)
	if len(b) != metricBucketMaxPower-metricBucketMinPower+1 {
		t.Fatalf("%d buckets", len(b))
	}
	if got := b[256e-9]; got != 2 {
		t.Errorf("le=256ns: %d, want 2 (100 and 255; 256 counts in the next bucket)", got)
	}
	if got := b[float64(1<<10)/1e9]; got != 5 {
		t.Errorf("le=1024ns: %d, want 5", got)
	}
	if got := b[float64(uint64(1)<<34)/1e9]; got != 6 {
		t.Errorf("le=2^34ns: %d, want 6", got)
	}
}

func TestFormatNs(t *testing.T) {
	for ns, want := range map[uint64]string{850: "850ns", 1234: "1.23µs", 45600: "45.6µs", 123456: "123µs", 12_300_000: "12.3ms", 1_200_000_000: "1.20s"} {
		if got := FormatNs(ns); got != want {
			t.Errorf("FormatNs(%d) = %q, want %q", ns, got, want)
		}
	}
}

func BenchmarkMerge(b *testing.B) {
	r := rand.New(rand.NewPCG(7, 8))
	var x, y Hist
	for i := 0; i < 10000; i++ {
		x.Add(r.Uint64N(1e7))
		y.Add(r.Uint64N(1e9))
	}
	b.ReportAllocs()
	for b.Loop() {
		x.Merge(&y)
	}
}

func BenchmarkDiff(b *testing.B) {
	r := rand.New(rand.NewPCG(7, 8))
	var prev Hist
	for i := 0; i < 10000; i++ {
		prev.Add(r.Uint64N(1e7))
	}
	cur := prev
	for i := 0; i < 1000; i++ {
		cur.Add(r.Uint64N(1e7))
	}
	var d Hist
	b.ReportAllocs()
	for b.Loop() {
		d.Diff(&cur, &prev)
	}
}

func BenchmarkPercentiles(b *testing.B) {
	r := rand.New(rand.NewPCG(9, 10))
	var h Hist
	for i := 0; i < 100000; i++ {
		h.Add(uint64(math.Exp(8 + 2*r.NormFloat64())))
	}
	qs := []float64{0.5, 0.9, 0.99}
	out := make([]uint64, len(qs))
	b.ReportAllocs()
	for b.Loop() {
		h.Percentiles(qs, out)
	}
}

func BenchmarkSummarize(b *testing.B) {
	r := rand.New(rand.NewPCG(9, 10))
	var h Hist
	for i := 0; i < 100000; i++ {
		h.Add(uint64(math.Exp(8 + 2*r.NormFloat64())))
	}
	b.ReportAllocs()
	for b.Loop() {
		_ = h.Summarize()
	}
}

func BenchmarkBucket(b *testing.B) {
	b.ReportAllocs()
	v := uint64(12345)
	for b.Loop() {
		v += uint64(Bucket(v)) + 7
	}
}

// A pair unrecorded because the map is full and one unrecorded for want of
// kernel memory are told apart in the text header, the JSON and the metrics.
func TestUnrecordedCauses(t *testing.T) {
	k := kernelDelta(loader.Stats{HistFull: 5, HistNoMem: 9}, loader.Stats{HistFull: 2, HistNoMem: 1}, 0)
	if k.HistFull != 3 || k.HistNoMem != 8 {
		t.Fatalf("interval counts: full %d, no memory %d; want 3 and 8", k.HistFull, k.HistNoMem)
	}
	r := BuildReport(map[Pair]*Hist{}, testNames(), nil)
	r.Kernel = k
	var buf bytes.Buffer
	w, _ := NewWriter(&buf, "text")
	if err := w.Write(&r); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"3 pair(s) unrecorded: histogram map full", "8 pair(s) unrecorded: no kernel memory for a new histogram"} {
		if !strings.Contains(buf.String(), want) {
			t.Errorf("text header lacks %q:\n%s", want, buf.String())
		}
	}
	buf.Reset()
	w, _ = NewWriter(&buf, "json")
	if err := w.Write(&r); err != nil {
		t.Fatal(err)
	}
	var back struct {
		Kernel map[string]uint64 `json:"kernel"`
	}
	if err := json.Unmarshal(buf.Bytes(), &back); err != nil {
		t.Fatal(err)
	}
	if back.Kernel["hist_full"] != 3 || back.Kernel["hist_nomem"] != 8 {
		t.Errorf("JSON kernel counters %v, want hist_full 3 and hist_nomem 8", back.Kernel)
	}
	m := NewMetrics()
	m.update(testNames(), nil, map[Pair]*Hist{}, loader.Stats{HistFull: 5, HistNoMem: 9}, &Sweeper{}, 0, 0, 1)
	got := map[string]float64{}
	ch := make(chan prometheus.Metric, 64)
	m.Collect(ch)
	close(ch)
	for pm := range ch {
		var d dto.Metric
		if err := pm.Write(&d); err != nil {
			t.Fatal(err)
		}
		for _, n := range []string{MetricHistFull, MetricHistNoMem} {
			if d.Counter != nil && strings.Contains(pm.Desc().String(), `"`+n+`"`) {
				got[n] = d.Counter.GetValue()
			}
		}
	}
	if got[MetricHistFull] != 5 || got[MetricHistNoMem] != 9 {
		t.Errorf("metrics %v, want %s 5 and %s 9", got, MetricHistFull, MetricHistNoMem)
	}
}
