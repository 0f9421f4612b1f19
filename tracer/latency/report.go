package latency

import (
	"sort"
	"time"
)

// PairStat is one hop pair's latency over a report's interval.
type PairStat struct {
	From  Hop    `json:"from"`
	To    Hop    `json:"to"`
	Label string `json:"label"`
	Summary
	// Path is the index in Report.Paths of the path the pair belongs to,
	// -1 when it is on none; Share its mean's fraction of that path's mean
	// total (0..1), 0 when on no path.
	Path  int     `json:"path"`
	Share float64 `json:"share"`
	// DropReason names the drop of a kfree_skb end pair when the kernel
	// recorded one.
	DropReason string `json:"drop_reason,omitempty"`

	Key  Pair  `json:"-"`
	Hist *Hist `json:"-"`
}

// PathStat is a chain of hop pairs from a first hop (where packets were
// first seen) to a last one: the route most packets took, following at each
// hop the most used next hop.
//
// Per-pair histograms say nothing about how the delays of one packet add
// up, so a path's total is given as the sum of its pairs' means (the mean
// total, exact when every packet took this path) and the sum of their
// maxima (a bound on the largest total); its percentiles are unknown.
type PathStat struct {
	Label       string  `json:"label"` // "web:eth0 egress → db socket"
	First       Hop     `json:"first"`
	Last        Hop     `json:"last"`
	Pairs       []int   `json:"pairs"` // indexes into Report.Pairs, in path order
	Count       uint64  `json:"count"` // packets on the first pair
	MeanTotalNs float64 `json:"mean_total_ns"`
	MaxTotalNs  uint64  `json:"max_total_ns"` // upper bound: sum of the pairs' maxima
}

// Tracking is the state of the kernel's in-flight packet map.
type Tracking struct {
	Entries  int     `json:"entries"`
	Capacity int     `json:"capacity"`
	Fill     float64 `json:"fill"`          // Entries / Capacity
	Expired  uint64  `json:"expired"`       // entries swept this interval: packets that never reached a next hop
	Total    uint64  `json:"expired_total"` // since start
}

// Kernel holds the kernel's counters over the interval.
type Kernel struct {
	Packets      uint64 `json:"packets"`       // packet identities created
	HistUpdates  uint64 `json:"hist_updates"`  // hop pairs recorded
	HistFull     uint64 `json:"hist_full"`     // hop pairs not recorded: histogram map full
	HistNoMem    uint64 `json:"hist_nomem"`    // hop pairs not recorded: no kernel memory for a new histogram
	Lost         uint64 `json:"lost"`          // events lost (ring buffer full; 0 in latency mode)
	PairsEvicted uint64 `json:"pairs_evicted"` // idle histograms removed to make room
}

// Report is one interval (or, with Final, the whole run).
type Report struct {
	Time     time.Time  `json:"time"`
	Interval float64    `json:"interval_s"`
	Final    bool       `json:"final"`
	Pairs    []PairStat `json:"pairs"`
	Paths    []PathStat `json:"paths"`
	Tracking Tracking   `json:"tracking"`
	Kernel   Kernel     `json:"kernel"`
	// Sample: one packet in Sample was measured and the counts are scaled
	// by it; absent when every packet is measured.
	Sample uint32 `json:"sample,omitempty"`
}

// BuildReport summarizes histograms: names every pair, groups pairs into
// paths, computes shares, and orders pairs by path then by count.
func BuildReport(hists map[Pair]*Hist, names Names, drops DropNamer) Report {
	var r Report
	hops := map[HopKey]Hop{}
	hop := func(k HopKey) Hop {
		h, ok := hops[k]
		if !ok {
			h = describeEnd(names, drops, k)
			hops[k] = h
		}
		return h
	}
	pairs := make([]PairStat, 0, len(hists))
	for k, h := range hists {
		if h.Count == 0 {
			continue
		}
		from, to := hop(k.From), hop(k.To)
		ps := PairStat{From: from, To: to, Label: PairLabel(&from, &to), Summary: h.Summarize(), Path: -1, Key: k, Hist: h}
		if ps.DropReason = DropName(drops, k.To); ps.DropReason != "" {
			ps.Label += " (" + ps.DropReason + ")"
		}
		pairs = append(pairs, ps)
	}
	// A stable order before grouping: by count, then key.
	sort.Slice(pairs, func(i, j int) bool {
		if pairs[i].Count != pairs[j].Count {
			return pairs[i].Count > pairs[j].Count
		}
		return pairLess(pairs[i].Key, pairs[j].Key)
	})
	paths := buildPaths(pairs)
	// Reorder: path by path, then pairs on no path by count.
	order := make([]int, 0, len(pairs))
	placed := make([]bool, len(pairs))
	for _, p := range paths {
		for _, i := range p.Pairs {
			if !placed[i] {
				placed[i] = true
				order = append(order, i)
			}
		}
	}
	for i := range pairs {
		if !placed[i] {
			order = append(order, i)
		}
	}
	newIndex := make([]int, len(pairs))
	r.Pairs = make([]PairStat, len(pairs))
	for ni, oi := range order {
		newIndex[oi] = ni
		r.Pairs[ni] = pairs[oi]
	}
	for pi := range paths {
		for j, i := range paths[pi].Pairs {
			paths[pi].Pairs[j] = newIndex[i]
		}
	}
	r.Paths = paths
	if r.Pairs == nil {
		r.Pairs = []PairStat{}
	}
	if r.Paths == nil {
		r.Paths = []PathStat{}
	}
	return r
}

// DropNamer names kernel drop reasons.
type DropNamer interface {
	Name(reason uint32) string
}

// buildPaths chains pairs into paths and sets each pair's Path and Share.
//
// A path starts at a hop where most packets leaving it were first seen
// (fewer than half arrived from another hop: a container's eth0 egress, an
// interface of the selection) and
// follows, hop by hop, the most used of the pairs leaving the current hop;
// when that is an end pair (socket, consume, drop) the path ends there, if
// at least half the packets arriving at the hop ended that way. A
// pair on several paths (two senders through one bridge port) is counted
// in the first path only for its Path/Share fields.
func buildPaths(pairs []PairStat) []PathStat {
	out := map[HopKey][]int{} // pairs leaving a hop, most used first (pairs is sorted by count)
	in := map[HopKey]uint64{} // packets arriving at a hop from another
	for i := range pairs {
		k := pairs[i].Key
		out[k.From] = append(out[k.From], i)
		if !IsEndKey(k.To) {
			in[k.To] += pairs[i].Count
		}
	}
	hopOut := func(k HopKey) uint64 { // packets leaving a hop for another hop
		var n uint64
		for _, i := range out[k] {
			if !IsEndKey(pairs[i].Key.To) {
				n += pairs[i].Count
			}
		}
		return n
	}
	// A source is a hop where most packets leaving it were first seen: a
	// stray pair into it (an skb address reused within the stale limit)
	// does not hide a path.
	var sources []HopKey
	for k := range out {
		if IsEndKey(k) {
			continue
		}
		if o := hopOut(k); o > 0 && 2*in[k] < o {
			sources = append(sources, k)
		}
	}
	sort.Slice(sources, func(i, j int) bool {
		a, b := hopOut(sources[i])-in[sources[i]], hopOut(sources[j])-in[sources[j]]
		if a != b {
			return a > b
		}
		return hopLess(sources[i], sources[j])
	})
	var paths []PathStat
	for _, src := range sources {
		var chain []int
		seen := map[HopKey]bool{src: true}
		cur := src
		for {
			idx := out[cur]
			if len(idx) == 0 {
				break
			}
			next := idx[0] // the most used pair leaving cur
			to := pairs[next].Key.To
			if IsEndKey(to) && len(chain) > 0 && 2*pairs[next].Count < pairs[chain[len(chain)-1]].Count {
				// most packets arriving here were not seen to end here: the
				// path ends at the hop, not at a minority's end
				break
			}
			chain = append(chain, next)
			if IsEndKey(to) || seen[to] {
				break
			}
			seen[to] = true
			cur = to
		}
		if len(chain) == 0 {
			continue
		}
		p := PathStat{Pairs: chain, Count: pairs[chain[0]].Count}
		for _, i := range chain {
			p.MeanTotalNs += pairs[i].MeanNs
			p.MaxTotalNs += pairs[i].MaxNs
		}
		p.First = pairs[chain[0]].From
		p.Last = pairs[chain[len(chain)-1]].To
		last := p.Last.Label
		if p.Last.NetnsInode == 0 {
			// an end with no namespace of its own: name it after the hop before
			before := pairs[chain[len(chain)-1]].From
			last = before.Who()
			if before.Interface != "" {
				last += ":" + before.Interface
			}
			last += " " + p.Last.Step
		}
		p.Label = p.First.Label + " → " + last
		pi := len(paths)
		for _, i := range chain {
			if pairs[i].Path >= 0 {
				continue
			}
			pairs[i].Path = pi
			if p.MeanTotalNs > 0 {
				pairs[i].Share = pairs[i].MeanNs / p.MeanTotalNs
			}
		}
		paths = append(paths, p)
	}
	return paths
}

func hopLess(a, b HopKey) bool {
	if a.Netns != b.Netns {
		return a.Netns < b.Netns
	}
	if a.Ifindex != b.Ifindex {
		return a.Ifindex < b.Ifindex
	}
	if a.Hook != b.Hook {
		return a.Hook < b.Hook
	}
	return DropReason(a) < DropReason(b)
}

func pairLess(a, b Pair) bool {
	if a.From != b.From {
		return hopLess(a.From, b.From)
	}
	return hopLess(a.To, b.To)
}

func itoa(v uint32) string {
	var b [10]byte
	i := len(b)
	for {
		i--
		b[i] = byte('0' + v%10)
		v /= 10
		if v == 0 {
			break
		}
	}
	return string(b[i:])
}
