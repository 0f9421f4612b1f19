package latency

import (
	"math"

	"github.com/hoptrace/hoptrace/tracer/bpfobj"
)

// Hist is one latency histogram: the kernel's struct hist. Counts are
// cumulative in the kernel; an interval's histogram is the difference of two
// snapshots (Diff).
type Hist struct {
	Count   uint64
	SumNs   uint64
	MaxNs   uint64
	Buckets [NumBuckets]uint64
}

// FromKernel sets h to a histogram read from the hists map: the sum of
// its per-CPU copies, with the largest of their maxima.
func FromKernel(h *Hist, perCPU []bpfobj.HoptraceHist) {
	*h = Hist{}
	for i := range perCPU {
		k := &perCPU[i]
		h.Count += k.Count
		h.SumNs += k.SumNs
		h.MaxNs = max(h.MaxNs, k.MaxNs)
		for b, c := range k.Buckets {
			h.Buckets[b] += c
		}
	}
}

// Scale multiplies the counts and the sum by n (n > 1), for a histogram of
// one packet in n: an estimate of every packet's. The maximum stays the
// largest value seen.
func (h *Hist) Scale(n uint32) {
	if n <= 1 {
		return
	}
	f := uint64(n)
	h.Count *= f
	h.SumNs *= f
	for i := range h.Buckets {
		h.Buckets[i] *= f
	}
}

// Add records one value (tests and userspace-built histograms).
func (h *Hist) Add(v uint64) {
	h.Count++
	h.SumNs += v
	if v > h.MaxNs {
		h.MaxNs = v
	}
	h.Buckets[Bucket(v)]++
}

// Merge adds o into h: the histogram of both sets of values.
func (h *Hist) Merge(o *Hist) {
	h.Count += o.Count
	h.SumNs += o.SumNs
	if o.MaxNs > h.MaxNs {
		h.MaxNs = o.MaxNs
	}
	for i := range h.Buckets {
		h.Buckets[i] += o.Buckets[i]
	}
}

// Diff sets h to cur - prev: the values recorded between two snapshots of
// one kernel histogram.
//
// If cur holds fewer values than prev, the kernel entry was deleted and
// created again in between (idle pairs are evicted), so cur alone is the
// interval. The maximum of an interval is not recorded by the kernel: when
// the cumulative maximum grew, the new maximum fell in this interval and is
// exact; otherwise the interval's maximum is estimated as the top of its
// highest non-empty bucket, capped at the cumulative maximum.
func (h *Hist) Diff(cur, prev *Hist) {
	if prev == nil || cur.Count < prev.Count {
		*h = *cur
		return
	}
	h.Count = cur.Count - prev.Count
	h.SumNs = cur.SumNs - prev.SumNs
	top := -1
	for i := range h.Buckets {
		c, p := cur.Buckets[i], prev.Buckets[i]
		if c >= p {
			h.Buckets[i] = c - p
		} else {
			h.Buckets[i] = 0 // a torn read of a bucket being updated
		}
		if h.Buckets[i] != 0 {
			top = i
		}
	}
	switch {
	case h.Count == 0 || top < 0:
		h.MaxNs = 0
	case cur.MaxNs > prev.MaxNs:
		h.MaxNs = cur.MaxNs
	default:
		h.MaxNs = min(BucketUpper(top)-1, cur.MaxNs)
	}
}

// Total is the number of values in the buckets; it can differ from Count by
// the few updates in flight while a snapshot was read.
func (h *Hist) Total() uint64 {
	var n uint64
	for _, c := range h.Buckets {
		n += c
	}
	return n
}

// Mean is the average value in ns, 0 when empty.
func (h *Hist) Mean() float64 {
	if h.Count == 0 {
		return 0
	}
	return float64(h.SumNs) / float64(h.Count)
}

// Percentile returns the q-quantile (0 < q <= 1) in ns by nearest rank: the
// midpoint of the bucket holding the ceil(q*n)-th smallest value, never
// above the recorded maximum. It is within MaxRelativeError of the exact
// nearest-rank quantile of the recorded values.
func (h *Hist) Percentile(q float64) uint64 {
	var out [1]uint64
	h.Percentiles([]float64{q}, out[:])
	return out[0]
}

// Percentiles computes several quantiles in one pass. qs must be in
// ascending order; out must be as long as qs. It does not allocate.
func (h *Hist) Percentiles(qs []float64, out []uint64) {
	n := h.Total()
	if n == 0 {
		for i := range out[:len(qs)] {
			out[i] = 0
		}
		return
	}
	j := 0
	var cum uint64
	for i := 0; i < NumBuckets && j < len(qs); i++ {
		c := h.Buckets[i]
		if c == 0 {
			continue
		}
		cum += c
		for j < len(qs) && cum >= rank(qs[j], n) {
			v := BucketMid(i)
			if h.MaxNs != 0 && v > h.MaxNs && BucketLower(i) <= h.MaxNs {
				v = h.MaxNs
			}
			out[j] = v
			j++
		}
	}
	for ; j < len(qs); j++ {
		out[j] = h.MaxNs
	}
}

// rank is the 1-based nearest rank of quantile q among n values.
func rank(q float64, n uint64) uint64 {
	if q <= 0 {
		return 1
	}
	if q >= 1 {
		return n
	}
	// The epsilon keeps float noise (0.9*10 = 9.000000000000002) from
	// moving the rank up by one.
	r := uint64(math.Ceil(q*float64(n) - 1e-9))
	if r < 1 {
		r = 1
	}
	if r > n {
		r = n
	}
	return r
}

// Summary is what a report shows of one histogram.
type Summary struct {
	Count  uint64  `json:"count"`
	MeanNs float64 `json:"mean_ns"`
	P50Ns  uint64  `json:"p50_ns"`
	P90Ns  uint64  `json:"p90_ns"`
	P99Ns  uint64  `json:"p99_ns"`
	MaxNs  uint64  `json:"max_ns"`
	SumNs  uint64  `json:"sum_ns"`
}

var summaryQuantiles = []float64{0.5, 0.9, 0.99}

// Summarize computes count, mean, p50, p90, p99 and max.
func (h *Hist) Summarize() Summary {
	var p [3]uint64
	h.Percentiles(summaryQuantiles, p[:])
	return Summary{Count: h.Count, MeanNs: h.Mean(), P50Ns: p[0], P90Ns: p[1], P99Ns: p[2], MaxNs: h.MaxNs, SumNs: h.SumNs}
}
