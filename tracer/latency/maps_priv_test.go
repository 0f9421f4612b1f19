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
)

// trackMap is a map shaped like by_skb (the loader's in-flight map).
func trackMap(t testing.TB, entries int) *ebpf.Map {
	t.Helper()
	m, err := ebpf.NewMap(&ebpf.MapSpec{
		Type: ebpf.LRUHash, KeySize: 8, ValueSize: uint32(sizeOf(latency.Track{})), MaxEntries: uint32(entries),
	})
	if err != nil {
		t.Fatalf("create map: %v", err)
	}
	t.Cleanup(func() { m.Close() })
	return m
}

// TestSweeperExpiresOldEntries fills an in-flight map with entries half of
// which are older than the timeout and checks that one sweep deletes
// exactly those, counts them by last hop, and is quick on a full-size map.
func TestSweeperExpiresOldEntries(t *testing.T) {
	privtest.RequireRoot(t)
	const n = 65536
	m := trackMap(t, 2*n) // room to spare: a full LRU map evicts on insert
	now := latency.MonotonicNow()
	old := latency.HopKey{Netns: 1, Ifindex: 7, Hook: uint8(event.HookNetDevQueue)}
	fresh := latency.HopKey{Netns: 1, Ifindex: 8, Hook: uint8(event.HookNetifRx)}
	keys := make([]uint64, n)
	vals := make([]latency.Track, n)
	for i := range keys {
		keys[i] = uint64(0xffff888000000000) + uint64(i)*256
		vals[i] = latency.Track{PktId: uint64(i + 1), LastTs: 1, Last: old}
		if i%2 == 1 {
			vals[i].LastTs = now
			vals[i].Last = fresh
		}
	}
	if _, err := m.BatchUpdate(keys, vals, nil); err != nil {
		for i := range keys {
			if err := m.Put(keys[i], vals[i]); err != nil {
				t.Fatal(err)
			}
		}
	}
	// Old entries date from boot, fresh ones from now; half the uptime as
	// the timeout keeps the fresh half fresh however slow the sweep (a VM
	// may have booted seconds ago).
	sw := latency.NewSweeper(m, time.Duration(now/2))
	start := time.Now()
	res, err := sw.Sweep()
	if err != nil {
		t.Fatal(err)
	}
	took := time.Since(start)
	t.Logf("swept %d of %d entries in %s", res.Expired, n, took)
	if res.Expired != n/2 || res.Entries != n/2 || sw.Expired() != n/2 {
		t.Errorf("expired %d, left %d; want %d each", res.Expired, res.Entries, n/2)
	}
	if sw.ExpiredAt()[old] != n/2 || sw.ExpiredAt()[fresh] != 0 {
		t.Errorf("expired by hop: %v", sw.ExpiredAt())
	}
	if took > 5*time.Second && os.Getenv("HOPTRACE_VM") == "" {
		t.Errorf("a sweep of %d entries took %s", n, took)
	}
	res, err = sw.Sweep()
	if err != nil || res.Expired != 0 || res.Entries != n/2 {
		t.Errorf("second sweep: %+v, %v", res, err)
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
