package nftrace

import (
	"sync"
	"time"
)

// keep is how long a verdict is kept for a path to claim it.
const keep = 10 * time.Second

// verdictRec is one verdict a traced packet was given.
type verdictRec struct {
	ts uint64 // CLOCK_MONOTONIC ns when the event was read
	ev Event
}

// store keeps, per packet key, the drop verdicts of the last seconds.
type store struct {
	mu    sync.Mutex
	drops map[Key][]verdictRec
}

func newStore() *store { return &store{drops: map[Key][]verdictRec{}} }

// add records ev if it is a drop: a rule whose verdict is drop, or a
// chain's drop policy.
func (s *store) add(k Key, ts uint64, ev Event) {
	drop := (ev.Type == traceTypeRule || ev.Type == traceTypePolicy) && isDrop(ev.Verdict)
	if !drop {
		return
	}
	ev.NetworkHdr, ev.TransportHd = nil, nil
	s.mu.Lock()
	s.drops[k] = append(s.drops[k], verdictRec{ts: ts, ev: ev})
	s.mu.Unlock()
}

// lookup returns the drop verdict recorded for k closest in time to ts
// (a CLOCK_MONOTONIC ns time of the drop), within window.
func (s *store) lookup(k Key, ts uint64, window time.Duration) (Event, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var best Event
	bestD := uint64(window)
	found := false
	for _, r := range s.drops[k] {
		d := r.ts - ts
		if r.ts < ts {
			d = ts - r.ts
		}
		if d <= bestD {
			best, bestD, found = r.ev, d, true
		}
	}
	return best, found
}

// prune forgets verdicts older than keep.
func (s *store) prune(now uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for k, rs := range s.drops {
		i := 0
		for _, r := range rs {
			if now-r.ts < uint64(keep) {
				rs[i] = r
				i++
			}
		}
		if i == 0 {
			delete(s.drops, k)
		} else {
			s.drops[k] = rs[:i]
		}
	}
}
