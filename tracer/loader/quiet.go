package loader

import (
	"fmt"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// activityQuiet is bit 0 of the activity word (ACTIVITY_QUIET in
// bpf/hoptrace.bpf.c): set, no in-flight entry can match.
const activityQuiet = 1

// quietKeeper keeps the programs' two ways of knowing an skb untracked
// without a lookup (see bpf/hoptrace.bpf.c, struct activity and marks).
//
// The quiet state: the activity map's word holds when a packet was last
// tracked, which the programs store, and the quiet bit, which only this
// sets, once that time is staleAfter + staleAfter/8 old (the programs store
// it at most every staleAfter/8, and an entry older than staleAfter matches
// nothing). The compare-and-swap loses to a store made since the word was
// read. The programs then reject an untracked skb without a lookup or a
// clock read, and leave the state themselves at the next tracked packet.
//
// The epoch: the programs stamp a slot of the marks map with it whenever
// an entry hashing there is written or matched, and take a slot mark_ttl
// epochs old for one whose entries match nothing. This adds one to it, at
// most once per period (a late tick never brings two increments closer),
// so mark_ttl periods (markTTL) always span more than staleAfter.
type quietKeeper struct {
	mem    []byte // the map's mapping: the word is its first 8 bytes, the epoch the next 4
	period time.Duration
	stop   chan struct{}
	done   chan struct{}
}

// quietPeriod is how often the keeper looks at the word and moves the
// epoch: staleAfter/8, within 2 ms to 100 ms.
func quietPeriod(staleAfter time.Duration) time.Duration {
	return min(max(staleAfter/8, 2*time.Millisecond), 100*time.Millisecond)
}

// markTTL is mark_ttl: the epochs after which a slot's entries are all
// stale. An entry matched at epoch e stamps e, or e-1 when its store raced
// an increment made by then; by the time it is staleAfter old at most
// ceil(staleAfter/period) more increments happened.
func markTTL(staleAfter time.Duration) uint32 {
	p := quietPeriod(staleAfter)
	return uint32((staleAfter+p-1)/p) + 2
}

// startQuietKeeper maps the activity map, starts quiet (nothing is tracked
// before the programs run) at an epoch that makes every slot old, and
// checks the word every half quietPeriod, moving the epoch when a
// whole one has passed since it last did.
func startQuietKeeper(m *ebpf.Map, staleAfter time.Duration) (*quietKeeper, error) {
	mem, err := unix.Mmap(m.FD(), 0, unix.Getpagesize(), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return nil, fmt.Errorf("map the activity word: %w", err)
	}
	period := quietPeriod(staleAfter)
	q := &quietKeeper{mem: mem, period: period, stop: make(chan struct{}), done: make(chan struct{})}
	atomic.StoreUint32(q.epoch(), markTTL(staleAfter))
	atomic.StoreUint64(q.word(), activityQuiet)
	quietAfter := uint64((staleAfter + staleAfter/8).Nanoseconds())
	go func() {
		defer close(q.done)
		tick := time.NewTicker(period / 2) // an increment every period to 1.5 periods
		defer tick.Stop()
		last := time.Now()
		for {
			select {
			case <-q.stop:
				return
			case <-tick.C:
				if now := time.Now(); now.Sub(last) >= period {
					q.advance()
					last = now
				}
				q.check(quietAfter)
			}
		}
	}()
	return q, nil
}

// advance moves the epoch on by one.
func (q *quietKeeper) advance() { atomic.AddUint32(q.epoch(), 1) }

func (q *quietKeeper) word() *uint64 { return (*uint64)(unsafe.Pointer(&q.mem[0])) }

func (q *quietKeeper) epoch() *uint32 { return (*uint32)(unsafe.Pointer(&q.mem[8])) }

// currentEpoch is the epoch the programs read.
func (q *quietKeeper) currentEpoch() uint32 { return atomic.LoadUint32(q.epoch()) }

// check sets the quiet bit when the last tracked time is quietAfter old.
func (q *quietKeeper) check(quietAfter uint64) {
	w := atomic.LoadUint64(q.word())
	if w&activityQuiet != 0 {
		return
	}
	if now := monotonicNs(); now >= w && now-w >= quietAfter {
		atomic.CompareAndSwapUint64(q.word(), w, w|activityQuiet)
	}
}

// isQuiet reports whether the programs are in their quiet state.
func (q *quietKeeper) isQuiet() bool { return atomic.LoadUint64(q.word())&activityQuiet != 0 }

// close stops the goroutine and unmaps the word. Safe to call twice.
func (q *quietKeeper) close() error {
	if q.mem == nil {
		return nil
	}
	close(q.stop)
	<-q.done
	err := unix.Munmap(q.mem)
	q.mem = nil
	if err != nil {
		return fmt.Errorf("unmap the activity word: %w", err)
	}
	return nil
}

// monotonicNs is bpf_ktime_get_ns()'s clock.
func monotonicNs() uint64 {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		return 0 // never on Linux; 0 only delays the quiet state
	}
	return uint64(ts.Nano())
}
