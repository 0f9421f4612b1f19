// Package path stitches hop events into packet paths: it groups events by
// packet identity, waits until a packet's path has ended (or gone quiet),
// orders its hops, names them, infers the bridge hops the kernel does not
// report, and decides how the path ended.
package path

import (
	"sort"

	"github.com/hoptrace/hoptrace/tracer/event"
)

// Packet is the raw material of one path: every event with one packet id.
type Packet struct {
	ID     uint64
	Events []event.Event // sorted by time once the packet is finished
	first  uint64
	last   uint64
	ended  bool // an end event (drop, consume, copy to a socket) arrived
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
	Idle   uint64 // ns of silence after which a path without an end is over

	pending map[uint64]*Packet
	// done remembers recently finished ids so that late events (TCP data is
	// consumed up to a second after delivery) do not open a new packet.
	done      map[uint64]uint64 // id -> time finished
	lastPrune uint64
	late      uint64
	capped    uint64
	maxEvent  int
	watermark uint64
}

// NewAssembler returns an Assembler with the given timings in nanoseconds.
func NewAssembler(linger, idle uint64) *Assembler {
	return &Assembler{
		Linger:   linger,
		Idle:     idle,
		pending:  make(map[uint64]*Packet),
		done:     make(map[uint64]uint64),
		maxEvent: 256,
	}
}

// Add takes one event.
func (a *Assembler) Add(e *event.Event) {
	if e.PktId == 0 {
		return
	}
	if _, ok := a.done[e.PktId]; ok {
		a.late++
		return
	}
	p := a.pending[e.PktId]
	if p == nil {
		p = &Packet{ID: e.PktId, first: e.TsNs, last: e.TsNs, Events: make([]event.Event, 0, 8)}
		a.pending[e.PktId] = p
	}
	if e.TsNs > a.watermark {
		a.watermark = e.TsNs
	}
	if len(p.Events) >= a.maxEvent {
		a.capped++
		return // a looping packet: keep the first events only
	}
	p.Events = append(p.Events, *e)
	if e.TsNs < p.first {
		p.first = e.TsNs
	}
	if e.TsNs > p.last {
		p.last = e.TsNs
	}
	if event.IsEnd(event.Hook(e.Hook)) {
		p.ended = true
	}
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

// Flush returns the packets whose paths are over at the watermark (all of
// them when force is set), oldest first, each with its events sorted.
func (a *Assembler) Flush(force bool) []*Packet {
	var out []*Packet
	now := a.watermark
	for id, p := range a.pending {
		quiet := now - p.last
		if now < p.last {
			quiet = 0
		}
		if force || (p.ended && quiet >= a.Linger) || quiet >= a.Idle {
			delete(a.pending, id)
			a.done[id] = now
			sortEvents(p.Events)
			out = append(out, p)
		}
	}
	// Forget finished ids after a few seconds (late events come within
	// ~1s); pruning once a second keeps Flush cheap at high packet rates.
	if now-a.lastPrune > 1_000_000_000 {
		a.lastPrune = now
		for id, t := range a.done {
			if now-t > 5_000_000_000 && now > t {
				delete(a.done, id)
			}
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].first < out[j].first })
	return out
}

func sortEvents(evs []event.Event) {
	sort.SliceStable(evs, func(i, j int) bool { return evs[i].TsNs < evs[j].TsNs })
}
