// Package latency turns the kernel's per-hop-pair latency histograms into
// percentiles, per-path totals, text and JSON reports and Prometheus metrics.
//
// In latency mode the BPF programs send no events. For every packet they
// remember the last hop (network namespace, ifindex, hook) and when it was
// seen; at the next hop they add the time in between to a histogram keyed by
// the pair (previous hop, this hop). Userspace never resets those
// histograms: it snapshots them each interval and subtracts the previous
// snapshot, so no update is ever lost to a read-and-clear race.
//
// # Buckets
//
// The histograms are log-linear (HDR-like). Values below 2^SubBits ns have a
// bucket each; every power of two above is split into 2^SubBits equal
// sub-buckets. With SubBits = 4 a bucket [L, L+w) has w <= L/16, so
// reporting its midpoint is off from any value inside it by at most w/2 <=
// L/32: a relative error below 3.125% (values under 32 ns are exact). The
// Go functions here mirror hist_bucket() in bpf/hoptrace.bpf.c exactly; a
// test compiles the C function and compares the two at every boundary.
package latency

import "math/bits"

// Bucket layout, mirrored from bpf/hoptrace.h.
const (
	SubBits    = 4                                 // HIST_SUB_BITS
	SubCount   = 1 << SubBits                      // HIST_SUB_COUNT: sub-buckets per power of two
	MaxPow     = 40                                // HIST_MAX_POW: 2^40 ns (~18 min); longer values share the last bucket
	NumBuckets = (MaxPow - SubBits + 2) * SubCount // HIST_BUCKETS = 608
)

// MaxRelativeError bounds |reported - true| / true for a value reported as
// its bucket's midpoint: half a sub-bucket of the smallest value in it.
const MaxRelativeError = 1.0 / (2 * SubCount)

// Bucket returns the histogram bucket of a value in nanoseconds, exactly as
// the kernel computes it.
func Bucket(v uint64) int {
	if v < SubCount {
		return int(v)
	}
	p := 63 - bits.LeadingZeros64(v) // floor(log2 v)
	if p > MaxPow {
		return NumBuckets - 1
	}
	sub := int(v>>(p-SubBits)) & (SubCount - 1)
	return (p-SubBits+1)*SubCount + sub
}

// BucketLower is the smallest value that falls in bucket i.
func BucketLower(i int) uint64 {
	if i < SubCount {
		return uint64(i)
	}
	g := i / SubCount // >= 1; power p = g + SubBits - 1
	sub := uint64(i % SubCount)
	return (SubCount + sub) << (g - 1)
}

// BucketWidth is the number of distinct values in bucket i. The last bucket
// also holds everything above 2^(MaxPow+1); its width is that of its range
// below that bound.
func BucketWidth(i int) uint64 {
	if i < SubCount {
		return 1
	}
	return 1 << (i/SubCount - 1)
}

// BucketUpper is the first value above bucket i (exclusive bound). For the
// last bucket it is 2^(MaxPow+1), although larger values land there too.
func BucketUpper(i int) uint64 { return BucketLower(i) + BucketWidth(i) }

// BucketMid is the value reported for bucket i: its midpoint, or the exact
// value for buckets one value wide.
func BucketMid(i int) uint64 {
	w := BucketWidth(i)
	return BucketLower(i) + w/2
}
