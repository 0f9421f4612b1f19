package resolve

import (
	"context"
	"testing"
	"time"

	"github.com/hoptrace/hoptrace/internal/testnet"
)

// Name lookups are on the trace's hot path: Describe asks for the link of
// every hop (and its bridge master) and the namespace of every event. These
// benchmarks use a live Resolver over a throwaway bridge with two namespaces
// (root only; skipped otherwise).

type benchKey struct {
	netns   uint32
	ifindex int
}

func benchResolver(b *testing.B) (*Resolver, []benchKey) {
	b.Helper()
	topo := testnet.New(b, testnet.Options{Hosts: 2})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	r, err := New(ctx, Options{})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { r.Close() })
	var keys []benchKey
	for _, h := range topo.Hosts {
		keys = append(keys, benchKey{h.Inode, h.Ifindex}, benchKey{topo.HostInode(), h.HostVethIndex})
	}
	deadline := time.Now().Add(10 * time.Second)
	for _, k := range keys {
		for {
			if _, ok := r.Link(k.netns, k.ifindex); ok {
				break
			}
			if time.Now().After(deadline) {
				b.Fatalf("link %d in netns %d never resolved", k.ifindex, k.netns)
			}
			r.Refresh()
			time.Sleep(20 * time.Millisecond)
		}
	}
	return r, keys
}

// BenchmarkLinkHops looks up the links of a packet's hops in turn: eth0 in each
// namespace and the bridge ports in the host.
func BenchmarkLinkHops(b *testing.B) {
	r, keys := benchResolver(b)
	i := 0
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		k := keys[i%len(keys)]
		if _, ok := r.Link(k.netns, k.ifindex); !ok {
			b.Fatal("link not found")
		}
		i++
	}
}

// BenchmarkLinkMiss looks up an ifindex no namespace has.
func BenchmarkLinkMiss(b *testing.B) {
	r, keys := benchResolver(b)
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		if _, ok := r.Link(keys[0].netns, 1<<30); ok {
			b.Fatal("found a link that does not exist")
		}
	}
}

// BenchmarkNamespace looks up a namespace by inode.
func BenchmarkNamespace(b *testing.B) {
	r, keys := benchResolver(b)
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		if _, ok := r.Namespace(keys[0].netns); !ok {
			b.Fatal("namespace not found")
		}
	}
}
