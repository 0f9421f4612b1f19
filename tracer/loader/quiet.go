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

// quietKeeper puts the programs into their quiet state: the activity map's
// word holds when a packet was last tracked, which the programs store, and
// the quiet bit, which only this sets, once that time is staleAfter +
// staleAfter/8 old (the programs store it at most every staleAfter/8, and
// an entry older than staleAfter matches nothing). The compare-and-swap
// loses to a store made since the word was read. The programs then reject
// an untracked skb without a lookup or a clock read, and leave the state
// themselves at the next tracked packet.
type quietKeeper struct {
	mem  []byte // the map's mapping: the word is its first 8 bytes
	stop chan struct{}
	done chan struct{}
}

// startQuietKeeper maps the activity map, starts quiet (nothing is tracked
// before the programs run) and checks the word every staleAfter/8, within
// 2 ms to 100 ms.
func startQuietKeeper(m *ebpf.Map, staleAfter time.Duration) (*quietKeeper, error) {
	mem, err := unix.Mmap(m.FD(), 0, unix.Getpagesize(), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return nil, fmt.Errorf("map the activity word: %w", err)
	}
	q := &quietKeeper{mem: mem, stop: make(chan struct{}), done: make(chan struct{})}
	atomic.StoreUint64(q.word(), activityQuiet)
	period := min(max(staleAfter/8, 2*time.Millisecond), 100*time.Millisecond)
	quietAfter := uint64((staleAfter + staleAfter/8).Nanoseconds())
	go func() {
		defer close(q.done)
		tick := time.NewTicker(period)
		defer tick.Stop()
		for {
			select {
			case <-q.stop:
				return
			case <-tick.C:
				q.check(quietAfter)
			}
		}
	}()
	return q, nil
}

func (q *quietKeeper) word() *uint64 { return (*uint64)(unsafe.Pointer(&q.mem[0])) }

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
