// Package path stitches hop events into packet paths: it groups events by
// packet identity, waits until a packet's path has ended (or gone quiet),
// orders its hops, names them, infers the bridge hops the kernel does not
// report, and decides how the path ended.
package path

import (
	"cmp"
	"slices"

	"github.com/hoptrace/hoptrace/tracer/event"
)

// Packet is the raw material of one path: every event with one packet id.
type Packet struct {
	ID     uint64
	Events []event.Event // sorted by time once the packet is finished
	first  uint64
	last   uint64
	ended  bool // an end event (drop, consume, copy to a socket) arrived
	// own is the room for the first events the Assembler gave the packet
	// (nil for a packet it did not open): Release hands it back.
	own []event.Event
}

// First returns the earliest event's time.
func (p *Packet) First() uint64 { return p.first }

// Assembler groups events into packets and releases a packet once its path
// is over: shortly (Linger) after an end event, or after Idle without any
// event. Events are taken in any order: the ring buffer is ordered per CPU
// only, and a packet's events span CPUs.
//
// Time is event time: Linger and Idle run against a watermark, the newest
// event time read (or the clock, once the reader has caught up, see
// Advance), so a reader that lags behind the kernel does not cut paths.
type Assembler struct {
	Linger uint64 // ns to wait after an end event for clones' events
	Idle   uint64 // ns of silence after which a path without an end is over (less above openSoftMax open packets)

	// pending maps the id of each open packet to its slot. Flush walks the
	// slots, a dense array holding what it decides by, instead of the map
	// and every packet behind it.
	pending map[uint64]int32
	slots   []slot
	free    []int32
	// done remembers recently finished ids so that late events (TCP data is
	// consumed up to a second after delivery) do not open a new packet: the
	// ids finished in this generation and in the one before; a generation
	// lasts doneGeneration of event time, so an id is remembered for 3 to
	// 6 s, and forgetting costs no walk over the set.
	done, doneOld idSet
	doneSince     uint64
	late          uint64
	capped        uint64
	maxEvent      int
	watermark     uint64
	// recent is the slot the last event went to (-1: none): a packet's
	// events come in runs, so many events skip the map.
	recent int32
	slab   []packetAlloc
	// spare holds released packets for reuse (see Release): at full rate
	// packets are opened and finished by the tens of thousands a second,
	// and reusing them keeps the garbage collector out of the hot path.
	spare []*Packet
}

// slot is one open packet as Flush sees it.
type slot struct {
	last  uint64 // newest event time
	p     *Packet
	ended bool
}

// packetAlloc is a packet with room for its first events. They are
// allocated packetSlab at a time.
type packetAlloc struct {
	p   Packet
	buf [8]event.Event
}

const packetSlab = 32

// maxSpare bounds the released packets kept for reuse (about 1.2 kB each):
// enough for the packets finished between two flushes at full rate, while
// the memory of a burst's high-water mark goes back to the heap.
const maxSpare = 4096

// NewAssembler returns an Assembler with the given timings in nanoseconds.
func NewAssembler(linger, idle uint64) *Assembler {
	return &Assembler{
		Linger:   linger,
		Idle:     idle,
		pending:  make(map[uint64]int32),
		done:     make(idSet),
		doneOld:  make(idSet),
		maxEvent: 256,
		recent:   -1,
	}
}

// open starts a packet for e's id and returns its slot.
func (a *Assembler) open(e *event.Event) int32 {
	var p *Packet
	if n := len(a.spare); n > 0 {
		p = a.spare[n-1]
		a.spare[n-1] = nil
		a.spare = a.spare[:n-1]
	} else {
		if len(a.slab) == 0 {
			a.slab = make([]packetAlloc, packetSlab)
		}
		pa := &a.slab[0]
		a.slab = a.slab[1:]
		p = &pa.p
		p.own = pa.buf[:0:len(pa.buf)]
	}
	p.ID, p.first, p.last = e.PktId, e.TsNs, e.TsNs
	p.Events = p.own[:0]
	var i int32
	if n := len(a.free); n > 0 {
		i = a.free[n-1]
		a.free = a.free[:n-1]
	} else {
		i = int32(len(a.slots))
		a.slots = append(a.slots, slot{})
	}
	a.slots[i] = slot{last: e.TsNs, p: p}
	a.pending[e.PktId] = i
	return i
}

// Add takes one event.
func (a *Assembler) Add(e *event.Event) {
	if e.PktId == 0 {
		return
	}
	i := a.recent
	if i < 0 || a.slots[i].p.ID != e.PktId {
		// An id is pending or done, never both (Flush moves it). The event
		// that created an id (FlagNew) cannot be late.
		var ok bool
		if i, ok = a.pending[e.PktId]; !ok {
			if e.Flags&event.FlagNew == 0 && a.finished(e.PktId) {
				a.late++
				return
			}
			i = a.open(e)
		}
		a.recent = i
	}
	if e.TsNs > a.watermark {
		a.watermark = e.TsNs
	}
	s := &a.slots[i]
	p := s.p
	if len(p.Events) >= a.maxEvent {
		a.capped++
		return // a looping packet: keep the first events only
	}
	p.Events = append(p.Events, *e)
	if e.TsNs < p.first {
		p.first = e.TsNs
	}
	if e.TsNs > p.last {
		p.last, s.last = e.TsNs, e.TsNs
	}
	if event.IsEnd(event.Hook(e.Hook)) {
		p.ended, s.ended = true, true
	}
}

// Release hands back a packet returned by Flush once the caller is done
// with it (its path described and written): the Assembler reuses its
// memory for a later packet, so neither p nor its Events may be used after.
// Releasing is optional; a packet not released is garbage collected.
func (a *Assembler) Release(p *Packet) {
	if p == nil || p.own == nil || len(a.spare) >= maxSpare {
		return
	}
	own := p.own
	*p = Packet{own: own}
	a.spare = append(a.spare, p)
}

// Late counts events that arrived for packets already finished.
func (a *Assembler) Late() uint64 { return a.late }

// Capped counts events left out of packets that had too many (a loop).
func (a *Assembler) Capped() uint64 { return a.capped }

// Advance moves the watermark to now (monotonic ns) when that is later:
// call it when every event up to now has been read (the ring buffer was
// empty), so that quiet paths finish without waiting for newer events.
func (a *Assembler) Advance(now uint64) {
	if now > a.watermark {
		a.watermark = now
	}
}

// Watermark is the event time paths are finished against.
func (a *Assembler) Watermark() uint64 { return a.watermark }

// Pending is the number of packets still open.
func (a *Assembler) Pending() int { return len(a.pending) }

// openSoftMax is how many packets may wait out Idle. A packet that ends
// unseen (a UDP datagram freed without a tracepoint, a lost end event)
// waits Idle for nothing, and at tens of thousands of such packets a
// second the waiting ones fill the heap: the collector then works without
// pause, the reader falls behind, more events are lost and more packets
// wait. Above openSoftMax open packets a path without an end is over
// after Idle * openSoftMax / open (not less than Linger), which keeps
// about openSoftMax open (some 11 MB).
const openSoftMax = 8192

// idleNow is how long a path without an end waits at the current number of
// open packets.
func (a *Assembler) idleNow() uint64 {
	open := uint64(len(a.pending))
	if open <= openSoftMax {
		return a.Idle
	}
	return max(a.Idle*openSoftMax/open, a.Linger)
}

// Flush returns the packets whose paths are over at the watermark (all of
// them when force is set), oldest first, each with its events sorted.
func (a *Assembler) Flush(force bool) []*Packet {
	var out []*Packet
	now := a.watermark
	idle := a.idleNow()
	a.recent = -1
	for i := range a.slots {
		s := &a.slots[i]
		if s.p == nil {
			continue
		}
		quiet := now - s.last
		if now < s.last {
			quiet = 0
		}
		if force || (s.ended && quiet >= a.Linger) || quiet >= idle {
			p := s.p
			delete(a.pending, p.ID)
			a.done.add(p.ID)
			sortEvents(p.Events)
			out = append(out, p)
			*s = slot{}
			a.free = append(a.free, int32(i))
		}
	}
	a.compact()
	if now-a.doneSince >= doneGeneration && now > a.doneSince {
		clear(a.doneOld)
		a.done, a.doneOld = a.doneOld, a.done
		a.doneSince = now
	}
	slices.SortFunc(out, func(x, y *Packet) int { return cmp.Compare(x.first, y.first) })
	return out
}

// compact shrinks the slots once most are free (after a burst), so that
// Flush does not keep walking the burst's high-water mark.
func (a *Assembler) compact() {
	if len(a.pending) == 0 {
		a.slots, a.free = a.slots[:0], a.free[:0]
		return
	}
	if len(a.slots) < 1024 || len(a.free) < len(a.slots)*3/4 {
		return
	}
	live := make([]slot, 0, 2*len(a.pending))
	for _, s := range a.slots {
		if s.p != nil {
			a.pending[s.p.ID] = int32(len(live))
			live = append(live, s)
		}
	}
	a.slots, a.free = live, a.free[:0]
}

// doneGeneration is how long (ns of event time) a generation of finished
// ids lasts.
const doneGeneration = 3_000_000_000

// finished reports whether id belongs to a packet finished recently.
func (a *Assembler) finished(id uint64) bool {
	return a.done.has(id) || a.doneOld.has(id)
}

// idSet is a set of packet ids, 64 consecutive ids to an entry: the kernel
// numbers packets densely (a sequence per CPU, interleaved), so a set of
// the hundreds of thousands of ids finished in a few seconds takes a
// fraction of the entries, and of the cache misses, of one entry per id.
type idSet map[uint64]uint64

func (s idSet) add(id uint64) { s[id>>6] |= 1 << (id & 63) }

func (s idSet) has(id uint64) bool { return s[id>>6]&(1<<(id&63)) != 0 }

// sortEvents orders a packet's events by time, equal times in arrival
// order. They mostly arrive in order already (a packet's events are out of
// order only across CPUs), so an insertion sort moves little; a long
// disordered packet (a loop) takes the library's stable sort.
func sortEvents(evs []event.Event) {
	for i := 1; i < len(evs); i++ {
		if evs[i].TsNs >= evs[i-1].TsNs {
			continue
		}
		if len(evs) > 32 {
			slices.SortStableFunc(evs, func(x, y event.Event) int { return cmp.Compare(x.TsNs, y.TsNs) })
			return
		}
		e := evs[i]
		j := i
		for ; j > 0 && evs[j-1].TsNs > e.TsNs; j-- {
			evs[j] = evs[j-1]
		}
		evs[j] = e
	}
}
