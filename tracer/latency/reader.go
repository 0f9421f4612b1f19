package latency

import (
	"errors"
	"fmt"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/hoptrace/hoptrace/tracer/bpfobj"
	"github.com/hoptrace/hoptrace/tracer/loader"
)

// Reader turns the kernel's cumulative histograms into per-interval ones.
//
// It never clears a kernel histogram that is in use: each Read takes a
// snapshot and subtracts the previous one, so updates made while the map is
// read land in this interval or the next, never nowhere. Histograms that
// have not changed for IdleAfter reads are deleted from the kernel map so
// that pairs that no longer carry traffic (containers gone) do not fill it;
// the few updates that can race with such a delete are counted as evicted
// pairs, not lost silently.
type Reader struct {
	m *ebpf.Map
	// IdleAfter is the number of reads without change after which a pair's
	// kernel histogram is deleted; 0 never deletes.
	IdleAfter int

	prev    map[Pair]*Hist
	idle    map[Pair]int
	evicted uint64
	spare   map[Pair]*Hist
}

// NewReader reads the hists map of a tracer loaded in latency mode.
func NewReader(m *ebpf.Map) *Reader {
	return &Reader{m: m, IdleAfter: 60, prev: map[Pair]*Hist{}, idle: map[Pair]int{}}
}

// Evicted is the number of idle histograms deleted so far.
func (r *Reader) Evicted() uint64 { return r.evicted }

// Snapshot reads every histogram in the map, a per-CPU hash: each pair's
// histogram is the sum of its CPUs' copies.
func Snapshot(m *ebpf.Map, into map[Pair]*Hist) (map[Pair]*Hist, error) {
	if into == nil {
		into = map[Pair]*Hist{}
	}
	var (
		key Pair
		val []bpfobj.HoptraceHist
	)
	it := m.Iterate()
	for it.Next(&key, &val) {
		h := into[key]
		if h == nil {
			h = new(Hist)
			into[key] = h
		}
		FromKernel(h, val)
	}
	if err := it.Err(); err != nil {
		return into, fmt.Errorf("read latency histograms: %w", err)
	}
	return into, nil
}

// Read returns the histograms of the values recorded since the previous
// Read (the first Read: since the map was created). Pairs with no new
// values are left out. The returned map and histograms are valid until the
// next Read.
func (r *Reader) Read() (map[Pair]*Hist, error) {
	cur := r.spare
	for k := range cur {
		delete(cur, k)
	}
	cur, err := Snapshot(r.m, cur)
	if err != nil {
		return nil, err
	}
	out := make(map[Pair]*Hist, len(cur))
	for k, c := range cur {
		p := r.prev[k]
		if p != nil && p.Count == c.Count {
			r.idle[k]++
			if r.IdleAfter > 0 && r.idle[k] >= r.IdleAfter {
				if err := r.m.Delete(&k); err == nil || errors.Is(err, ebpf.ErrKeyNotExist) {
					delete(cur, k)
					delete(r.idle, k)
					r.evicted++
				}
			}
			continue
		}
		r.idle[k] = 0
		d := new(Hist)
		d.Diff(c, p)
		if d.Count > 0 {
			out[k] = d
		}
	}
	for k := range r.idle {
		if _, ok := cur[k]; !ok {
			delete(r.idle, k)
		}
	}
	r.spare, r.prev = r.prev, cur
	return out, nil
}

// Track is one entry of the in-flight table (struct pkt_track).
type Track = bpfobj.HoptracePktTrack

// Sweeper keeps the kernel's in-flight table from filling up.
//
// The kernel forgets a packet when its skb is freed (kfree_skb,
// consume_skb). Packets freed where no tracepoint fires, or lost from sight
// otherwise, keep their entries until a new packet takes the way (the
// programs prefer free ways, then entries older than the tracer's
// StaleAfter), and a table full of them makes every new packet push out one
// in flight. Each Sweep frees the entries whose last hop is older than
// Timeout and counts them as expired: packets that never reached a next
// hop. Timeout should be no shorter than StaleAfter (1s by default): a hop
// later than that is a new packet to the kernel anyway.
type Sweeper struct {
	table   *loader.InFlight
	Timeout time.Duration

	expired   uint64
	expiredAt map[HopKey]uint64
}

// NewSweeper sweeps an in-flight table (loader.Tracer.InFlight()).
func NewSweeper(table *loader.InFlight, timeout time.Duration) *Sweeper {
	if timeout <= 0 {
		timeout = time.Second
	}
	return &Sweeper{table: table, Timeout: timeout, expiredAt: map[HopKey]uint64{}}
}

// Capacity is the table's size.
func (s *Sweeper) Capacity() int {
	if s.table == nil {
		return 0
	}
	return s.table.Capacity()
}

// Expired is the number of entries expired since the start.
func (s *Sweeper) Expired() uint64 { return s.expired }

// ExpiredAt counts expired entries by the last hop they were seen at.
func (s *Sweeper) ExpiredAt() map[HopKey]uint64 { return s.expiredAt }

// SweepResult is one sweep's outcome.
type SweepResult struct {
	Entries int    // entries left in the table
	Expired uint64 // entries freed by this sweep
}

// Sweep reads the whole table, frees stale entries and reports the fill level.
func (s *Sweeper) Sweep() (SweepResult, error) {
	var res SweepResult
	if s.table == nil {
		return res, errors.New("sweep: no in-flight table")
	}
	res.Entries = s.table.Sweep(MonotonicNow(), uint64(s.Timeout.Nanoseconds()), func(last HopKey) {
		res.Expired++
		s.expiredAt[last]++
	})
	s.expired += res.Expired
	return res, nil
}

// MonotonicNow is CLOCK_MONOTONIC in ns, the clock of bpf_ktime_get_ns.
func MonotonicNow() uint64 {
	var ts unix.Timespec
	_ = unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	return uint64(ts.Nano())
}
