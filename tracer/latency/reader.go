package latency

import (
	"errors"
	"fmt"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/hoptrace/hoptrace/tracer/bpfobj"
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

// Track is one entry of the in-flight map (struct pkt_track).
type Track = bpfobj.HoptracePktTrack

// Sweeper keeps the kernel's in-flight packet map from filling up.
//
// The kernel forgets a packet when its skb is freed (kfree_skb,
// consume_skb). Packets freed where no tracepoint fires, or lost from sight
// otherwise, stay in the map until LRU pressure pushes them out, and by
// then the map is full and every new packet evicts one in flight. Each
// Sweep deletes the entries whose last hop is older than Timeout and counts
// them as expired: packets that never reached a next hop. Timeout should be
// no shorter than the tracer's StaleAfter (1s by default): a hop later than
// that is a new packet to the kernel anyway.
type Sweeper struct {
	m        *ebpf.Map
	Timeout  time.Duration
	capacity int

	expired   uint64
	expiredAt map[HopKey]uint64
	batch     bool
	keys      []uint64
	vals      []Track
	stale     []uint64
}

// NewSweeper sweeps the in-flight map (loader.Tracer.InFlight()).
func NewSweeper(m *ebpf.Map, timeout time.Duration) *Sweeper {
	if timeout <= 0 {
		timeout = time.Second
	}
	return &Sweeper{m: m, Timeout: timeout, capacity: int(m.MaxEntries()), expiredAt: map[HopKey]uint64{}, batch: true}
}

// Capacity is the map's size.
func (s *Sweeper) Capacity() int { return s.capacity }

// Expired is the number of entries expired since the start.
func (s *Sweeper) Expired() uint64 { return s.expired }

// ExpiredAt counts expired entries by the last hop they were seen at.
func (s *Sweeper) ExpiredAt() map[HopKey]uint64 { return s.expiredAt }

// SweepResult is one sweep's outcome.
type SweepResult struct {
	Entries int    // entries left in the map
	Expired uint64 // entries deleted by this sweep
}

// Sweep reads the whole map, deletes stale entries and reports the fill level.
func (s *Sweeper) Sweep() (SweepResult, error) {
	var res SweepResult
	now := MonotonicNow()
	limit := uint64(s.Timeout.Nanoseconds())
	s.stale = s.stale[:0]
	n := 0
	err := s.each(func(k uint64, t *Track) {
		n++
		if t.LastTs < now && now-t.LastTs > limit {
			s.stale = append(s.stale, k)
		}
	})
	if err != nil {
		return res, err
	}
	var t Track
	for _, k := range s.stale {
		// Look again just before deleting: a packet that moved on since
		// the read keeps its entry.
		if err := s.m.Lookup(&k, &t); err != nil {
			n--
			continue
		}
		if t.LastTs >= now || now-t.LastTs <= limit {
			continue
		}
		if err := s.m.Delete(&k); err != nil {
			if errors.Is(err, ebpf.ErrKeyNotExist) {
				n--
				continue
			}
			return res, fmt.Errorf("expire in-flight entry: %w", err)
		}
		n--
		res.Expired++
		s.expiredAt[t.Last]++
	}
	s.expired += res.Expired
	res.Entries = max(n, 0)
	return res, nil
}

// each calls fn for every entry, in batches where the kernel supports it.
func (s *Sweeper) each(fn func(uint64, *Track)) error {
	if s.batch {
		const chunk = 4096
		if s.keys == nil {
			s.keys = make([]uint64, chunk)
			s.vals = make([]Track, chunk)
		}
		var cursor ebpf.MapBatchCursor
		first := true
		for {
			n, err := s.m.BatchLookup(&cursor, s.keys, s.vals, nil)
			for i := 0; i < n; i++ {
				fn(s.keys[i], &s.vals[i])
			}
			if errors.Is(err, ebpf.ErrKeyNotExist) {
				return nil
			}
			if err != nil {
				if first && n == 0 {
					s.batch = false // not supported here: iterate one by one
					break
				}
				return fmt.Errorf("read in-flight map: %w", err)
			}
			first = false
		}
	}
	var (
		k uint64
		t Track
	)
	it := s.m.Iterate()
	for it.Next(&k, &t) {
		fn(k, &t)
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("read in-flight map: %w", err)
	}
	return nil
}

// MonotonicNow is CLOCK_MONOTONIC in ns, the clock of bpf_ktime_get_ns.
func MonotonicNow() uint64 {
	var ts unix.Timespec
	_ = unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	return uint64(ts.Nano())
}
