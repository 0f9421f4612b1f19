package path

import (
	"cmp"
	"math/rand/v2"
	"slices"
	"sort"
	"testing"

	"github.com/hoptrace/hoptrace/tracer/event"
)

// refAssembler is the plain statement of what Assembler does: a map of
// packets, every one looked at on each Flush, a map of finished ids, stable
// sorts. Assembler must give the same packets, events and order.
type refAssembler struct {
	linger, idle uint64
	pending      map[uint64]*Packet
	done         map[uint64]bool
	late, capped uint64
	watermark    uint64
}

func (a *refAssembler) add(e *event.Event) {
	if e.PktId == 0 {
		return
	}
	if a.done[e.PktId] {
		a.late++
		return
	}
	p := a.pending[e.PktId]
	if p == nil {
		p = &Packet{ID: e.PktId, first: e.TsNs, last: e.TsNs}
		a.pending[e.PktId] = p
	}
	a.watermark = max(a.watermark, e.TsNs)
	if len(p.Events) >= 256 {
		a.capped++
		return
	}
	p.Events = append(p.Events, *e)
	p.first, p.last = min(p.first, e.TsNs), max(p.last, e.TsNs)
	if event.IsEnd(event.Hook(e.Hook)) {
		p.ended = true
	}
}

func (a *refAssembler) flush(force bool) []*Packet {
	var out []*Packet
	now := a.watermark
	idle := a.idle
	if open := uint64(len(a.pending)); open > openSoftMax {
		idle = max(a.idle*openSoftMax/open, a.linger)
	}
	for id, p := range a.pending {
		quiet := uint64(0)
		if now > p.last {
			quiet = now - p.last
		}
		if force || (p.ended && quiet >= a.linger) || quiet >= idle {
			delete(a.pending, id)
			a.done[id] = true
			sort.SliceStable(p.Events, func(i, j int) bool { return p.Events[i].TsNs < p.Events[j].TsNs })
			out = append(out, p)
		}
	}
	// Ties in first time: order by id, in both, to compare.
	sort.Slice(out, func(i, j int) bool {
		if out[i].first != out[j].first {
			return out[i].first < out[j].first
		}
		return out[i].ID < out[j].ID
	})
	return out
}

func byFirstThenID(ps []*Packet) {
	slices.SortStableFunc(ps, func(x, y *Packet) int {
		if c := cmp.Compare(x.first, y.first); c != 0 {
			return c
		}
		return cmp.Compare(x.ID, y.ID)
	})
}

// TestAssemblerMatchesReference feeds both assemblers random streams:
// packets overlapping in time, events out of order across "CPUs", equal
// time stamps, late events after a packet finished, packets that never end,
// loops over the event cap, bursts that grow and shrink the open set.
func TestAssemblerMatchesReference(t *testing.T) {
	compacted := false
	for seed := uint64(1); seed <= 12; seed++ {
		rng := rand.New(rand.NewPCG(seed, 7))
		const linger, idle = 50_000, 300_000
		a := NewAssembler(linger, idle)
		ref := &refAssembler{linger: linger, idle: idle, pending: map[uint64]*Packet{}, done: map[uint64]bool{}}
		var (
			nextID uint64 = 1
			now    uint64 = 1_000_000
			open   []uint64
			seq    uint64
		)
		for step := 0; step < 4000; step++ {
			now += uint64(rng.IntN(3000))
			var e event.Event
			switch r := rng.IntN(100); {
			case r < 25 || len(open) == 0: // a new packet
				e = event.Event{PktId: nextID, Flags: event.FlagNew, Hook: uint8(event.HookNetDevQueue)}
				open = append(open, nextID)
				nextID++
				if rng.IntN(8) == 0 { // a burst of new packets, seen later
					for range rng.IntN(200) {
						open = append(open, nextID)
						nextID++
					}
				}
				if rng.IntN(300) == 0 { // a burst that fills the slots
					for range 1500 {
						x := event.Event{PktId: nextID, Flags: event.FlagNew, TsNs: now, Location: seq}
						seq++
						nextID++
						a.Add(&x)
						ref.add(&x)
					}
				}
			case r < 30: // a late event for an id given out already, perhaps finished
				e = event.Event{PktId: 1 + rng.Uint64N(nextID-1), Hook: uint8(event.HookConsumeSkb)}
			default:
				id := open[rng.IntN(len(open))]
				hooks := []event.Hook{event.HookNetifReceiveSkb, event.HookNetDevQueue, event.HookConsumeSkb, event.HookKfreeSkb, event.HookCopyDatagram}
				e = event.Event{PktId: id, Hook: uint8(hooks[rng.IntN(len(hooks))])}
				if rng.IntN(5) == 0 { // a loop: many events
					for range rng.IntN(300) {
						x := e
						x.TsNs, x.Location = now-uint64(rng.IntN(2000)), seq
						seq++
						a.Add(&x)
						ref.add(&x)
					}
				}
			}
			// Out of order across CPUs, and equal times.
			e.TsNs = now - uint64(rng.IntN(5000))
			if rng.IntN(10) == 0 {
				e.TsNs = now
			}
			e.Location = seq // tells equal-time events apart
			seq++
			a.Add(&e)
			ref.add(&e)
			if rng.IntN(20) == 0 {
				force := rng.IntN(50) == 0
				if rng.IntN(3) == 0 {
					a.Advance(now + uint64(rng.IntN(400_000)))
					ref.watermark = max(ref.watermark, a.Watermark())
				}
				before := len(a.slots)
				got, want := a.Flush(force), ref.flush(force)
				compacted = compacted || (len(a.slots) < before && len(a.slots) > 0)
				byFirstThenID(got)
				comparePackets(t, seed, step, got, want)
				open = slices.DeleteFunc(open, func(id uint64) bool { return ref.done[id] })
			}
		}
		if a.Late() != ref.late || a.Capped() != ref.capped || a.Pending() != len(ref.pending) {
			t.Errorf("seed %d: late %d capped %d pending %d, reference %d %d %d", seed, a.Late(), a.Capped(), a.Pending(), ref.late, ref.capped, len(ref.pending))
		}
	}
	if !compacted {
		t.Error("no stream made the assembler compact its slots")
	}
}

func comparePackets(t *testing.T, seed uint64, step int, got, want []*Packet) {
	t.Helper()
	if len(got) != len(want) {
		var gi, wi []uint64
		for _, p := range got {
			gi = append(gi, p.ID)
		}
		for _, p := range want {
			wi = append(wi, p.ID)
		}
		t.Fatalf("seed %d step %d: %d packets %v, reference %d %v", seed, step, len(got), gi, len(want), wi)
	}
	for i := range got {
		g, w := got[i], want[i]
		if g.ID != w.ID || g.first != w.first || g.last != w.last || g.ended != w.ended || !slices.Equal(g.Events, w.Events) {
			t.Fatalf("seed %d step %d: packet %d differs: id %d first %d last %d ended %v %d events, reference id %d first %d last %d ended %v %d events",
				seed, step, i, g.ID, g.first, g.last, g.ended, len(g.Events), w.ID, w.first, w.last, w.ended, len(w.Events))
		}
	}
}

// TestSortEventsStable checks the insertion sort against a stable sort,
// short and long, nearly sorted and shuffled.
func TestSortEventsStable(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 3))
	for _, n := range []int{0, 1, 2, 5, 8, 31, 32, 33, 100, 256} {
		for trial := 0; trial < 20; trial++ {
			evs := make([]event.Event, n)
			for i := range evs {
				evs[i].TsNs = uint64(i * 10)
				if trial%2 == 1 || rng.IntN(4) == 0 {
					evs[i].TsNs = uint64(rng.IntN(n*3 + 1)) // shuffled, with ties
				}
				evs[i].Location = uint64(i)
			}
			want := slices.Clone(evs)
			sort.SliceStable(want, func(i, j int) bool { return want[i].TsNs < want[j].TsNs })
			sortEvents(evs)
			if !slices.Equal(evs, want) {
				t.Fatalf("n=%d trial %d: not the stable order", n, trial)
			}
		}
	}
}

// TestFinishedIDsRemembered: an id is late for at least doneGeneration after
// it finished, and forgotten after two generations.
func TestFinishedIDsRemembered(t *testing.T) {
	a := NewAssembler(1000, 10_000)
	e := event.Event{PktId: 7, TsNs: 1_000_000, Hook: uint8(event.HookConsumeSkb)}
	a.Add(&e)
	a.Advance(e.TsNs + 2000)
	if got := a.Flush(false); len(got) != 1 {
		t.Fatalf("flushed %d packets, want 1", len(got))
	}
	for _, dt := range []uint64{1_000_000_000, doneGeneration - 1} {
		a.Advance(e.TsNs + dt)
		a.Flush(false)
		late := e
		late.TsNs += dt
		a.Add(&late)
		if a.Pending() != 0 {
			t.Fatalf("late event %d ns after the end opened a packet", dt)
		}
	}
	if a.Late() != 2 {
		t.Fatalf("late = %d, want 2", a.Late())
	}
	a.Advance(e.TsNs + 2*doneGeneration + 2000)
	a.Flush(false)
	a.Advance(e.TsNs + 3*doneGeneration + 4000)
	a.Flush(false)
	again := e
	again.TsNs = a.Watermark()
	a.Add(&again)
	if a.Pending() != 1 {
		t.Errorf("id still remembered after two generations")
	}
}

// Packets that end unseen wait out Idle; above openSoftMax of them they wait
// less, in proportion, so that the open ones stay about openSoftMax.
func TestManyOpenPacketsWaitLess(t *testing.T) {
	const ms = 1_000_000
	for _, c := range []struct {
		open     int
		quiet    uint64
		finished bool
	}{
		{open: openSoftMax / 2, quiet: 200 * ms, finished: false},     // Idle 300 ms as ever
		{open: openSoftMax / 2, quiet: 300 * ms, finished: true},      // Idle reached
		{open: openSoftMax * 5 / 2, quiet: 130 * ms, finished: true},  // 300 ms * 2/5 = 120 ms
		{open: openSoftMax * 5 / 2, quiet: 110 * ms, finished: false}, // not yet
		{open: openSoftMax * 8, quiet: 60 * ms, finished: true},       // 37.5 ms, but never below Linger...
		{open: openSoftMax * 8, quiet: 40 * ms, finished: false},      // ...50 ms
	} {
		a := NewAssembler(50*ms, 300*ms)
		for i := 0; i < c.open; i++ {
			e := event.Event{PktId: uint64(i + 1), TsNs: 1000, Hook: uint8(event.HookNetDevQueue)}
			a.Add(&e)
		}
		a.Advance(1000 + c.quiet)
		got := len(a.Flush(false))
		if want := map[bool]int{true: c.open, false: 0}[c.finished]; got != want {
			t.Errorf("%d open, quiet %d ms: %d finished, want %d", c.open, c.quiet/ms, got, want)
		}
	}
}
