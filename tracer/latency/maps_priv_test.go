package latency_test

import (
	"os"
	"testing"
	"time"
	"unsafe"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/hoptrace/hoptrace/internal/privtest"
	"github.com/hoptrace/hoptrace/tracer/bpfobj"
	"github.com/hoptrace/hoptrace/tracer/event"
	"github.com/hoptrace/hoptrace/tracer/latency"
	"github.com/hoptrace/hoptrace/tracer/loader"
)

// trackTable is a table shaped like by_skb (the loader's in-flight table):
// sets of ways, mapped.
func trackTable(t testing.TB, sets int) (*ebpf.Map, *loader.InFlight) {
	t.Helper()
	m, err := ebpf.NewMap(&ebpf.MapSpec{
		Type: ebpf.Array, KeySize: 4, ValueSize: uint32(sizeOf(bpfobj.HoptraceTrackSet{})), MaxEntries: uint32(sets),
		Flags: unix.BPF_F_MMAPABLE,
	})
	if err != nil {
		t.Fatalf("create map: %v", err)
	}
	t.Cleanup(func() { m.Close() })
	table, err := loader.MapInFlight(m)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { table.Close() })
	return m, table
}

// TestSweeperExpiresOldEntries fills an in-flight table with entries half
// of which are older than the timeout, leaving some ways free, and checks
// that one sweep frees exactly those, counts them by last hop, and is
// quick on a full-size table.
func TestSweeperExpiresOldEntries(t *testing.T) {
	privtest.RequireRoot(t)
	const sets = 16384
	m, table := trackTable(t, sets)
	if table.Capacity() != 4*sets {
		t.Fatalf("capacity %d, want %d", table.Capacity(), 4*sets)
	}
	now := latency.MonotonicNow()
	old := latency.HopKey{Netns: 1, Ifindex: 7, Hook: uint8(event.HookNetDevQueue)}
	fresh := latency.HopKey{Netns: 1, Ifindex: 8, Hook: uint8(event.HookNetifRx)}
	n := 0
	for i := 0; i < sets; i++ {
		var set bpfobj.HoptraceTrackSet
		for w := 0; w < 3; w++ { // the fourth way stays free
			n++
			set.Skb[w] = uint64(0xffff888000000000) + uint64(n)*256
			set.T[w] = latency.Track{PktId: uint64(n), LastTs: 1, Last: old}
			if n%2 == 1 {
				set.T[w].LastTs = now
				set.T[w].Last = fresh
			}
		}
		if err := m.Put(uint32(i), set); err != nil {
			t.Fatal(err)
		}
	}
	// Old entries date from boot, fresh ones from now; half the uptime as
	// the timeout keeps the fresh half fresh however slow the sweep (a VM
	// may have booted seconds ago).
	sw := latency.NewSweeper(table, time.Duration(now/2))
	start := time.Now()
	res, err := sw.Sweep()
	if err != nil {
		t.Fatal(err)
	}
	took := time.Since(start)
	t.Logf("swept %d of %d entries in %s", res.Expired, n, took)
	fresher := (n + 1) / 2
	if res.Expired != uint64(n-fresher) || res.Entries != fresher || sw.Expired() != uint64(n-fresher) {
		t.Errorf("expired %d, left %d; want %d expired, %d left", res.Expired, res.Entries, n-fresher, fresher)
	}
	if sw.ExpiredAt()[old] != uint64(n-fresher) || sw.ExpiredAt()[fresh] != 0 {
		t.Errorf("expired by hop: %v", sw.ExpiredAt())
	}
	if took > 5*time.Second && os.Getenv("HOPTRACE_VM") == "" {
		t.Errorf("a sweep of %d entries took %s", n, took)
	}
	// The freed ways are free in the kernel's copy too; the fresh stay.
	var set bpfobj.HoptraceTrackSet
	if err := m.Lookup(uint32(0), &set); err != nil {
		t.Fatal(err)
	}
	if set.Skb[0] == 0 || set.Skb[1] != 0 || set.Skb[2] == 0 || set.Skb[3] != 0 {
		t.Errorf("set 0 after the sweep: keys %#x, want the 1st and 3rd kept", set.Skb)
	}
	if got, ok := table.Find(set.Skb[2]); !ok || got.PktId != 3 {
		t.Errorf("Find(%#x) = %+v, %v", set.Skb[2], got, ok)
	}
	res, err = sw.Sweep()
	if err != nil || res.Expired != 0 || res.Entries != fresher {
		t.Errorf("second sweep: %+v, %v", res, err)
	}
}

// A map of another shape is refused, not misread.
func TestMapInFlightRefusesOtherMaps(t *testing.T) {
	privtest.RequireRoot(t)
	m, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.LRUHash, KeySize: 8, ValueSize: uint32(sizeOf(latency.Track{})), MaxEntries: 16})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if table, err := loader.MapInFlight(m); err == nil {
		table.Close()
		t.Fatal("an LRU hash was mapped as the in-flight table")
	}
}

// TestReaderDiffsAndEvictsIdle drives a per-CPU histogram map by hand (the
// kernel's hists): each Read returns the sum over CPUs of what was added
// since the last one, with the largest CPU's maximum, and a pair that stays
// idle is deleted from the map after IdleAfter reads and comes back whole.
func TestReaderDiffsAndEvictsIdle(t *testing.T) {
	privtest.RequireRoot(t)
	m, err := ebpf.NewMap(&ebpf.MapSpec{
		Type: ebpf.PerCPUHash, KeySize: uint32(sizeOf(latency.Pair{})), ValueSize: uint32(sizeOf(bpfobj.HoptraceHist{})),
		MaxEntries: 16, Flags: unix.BPF_F_NO_PREALLOC,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	ncpu, err := ebpf.PossibleCPU()
	if err != nil {
		t.Fatal(err)
	}
	k := latency.Pair{From: latency.HopKey{Netns: 1, Ifindex: 2, Hook: 1}, To: latency.HopKey{Netns: 1, Ifindex: 2, Hook: 2}}
	kh := make([]bpfobj.HoptraceHist, ncpu)
	// add records v on the last CPU's copy and 2v on the first's (the same one with one CPU)
	add := func(v uint64) {
		for _, c := range []struct {
			cpu int
			v   uint64
		}{{ncpu - 1, v}, {0, 2 * v}} {
			h := &kh[c.cpu]
			h.Count++
			h.SumNs += c.v
			h.MaxNs = max(h.MaxNs, c.v)
			h.Buckets[latency.Bucket(c.v)]++
		}
		if err := m.Put(&k, kh); err != nil {
			t.Fatal(err)
		}
	}
	rd := latency.NewReader(m)
	rd.IdleAfter = 3
	add(1000)
	add(2000)
	got, err := rd.Read()
	if err != nil || got[k] == nil || got[k].Count != 4 || got[k].SumNs != 9000 || got[k].MaxNs != 4000 {
		t.Fatalf("first read: %+v, %v", got[k], err)
	}
	add(50000)
	got, _ = rd.Read()
	if h := got[k]; h == nil || h.Count != 2 || h.SumNs != 150000 || h.MaxNs != 100000 ||
		h.Buckets[latency.Bucket(50000)] != 1 || h.Buckets[latency.Bucket(100000)] != 1 {
		t.Fatalf("second read: %+v", got[k])
	}
	for i := 0; i < 3; i++ {
		got, _ = rd.Read()
		if len(got) != 0 {
			t.Fatalf("idle read %d returned %d pairs", i, len(got))
		}
	}
	var tmp []bpfobj.HoptraceHist
	if err := m.Lookup(&k, &tmp); err == nil {
		t.Fatal("idle pair still in the map")
	}
	if rd.Evicted() != 1 {
		t.Errorf("evicted %d, want 1", rd.Evicted())
	}
	// The kernel creates the entry again from zero.
	clear(kh)
	add(700)
	got, _ = rd.Read()
	if h := got[k]; h == nil || h.Count != 2 || h.SumNs != 2100 {
		t.Fatalf("after eviction: %+v", got[k])
	}
}

func sizeOf[T any](v T) int { return int(unsafe.Sizeof(v)) }
