package loader_test

import (
	"testing"

	"github.com/hoptrace/hoptrace/tracer/loader"
)

// The clone table is direct-mapped with a mask: its size must be a power of
// two with room for every in-flight entry.
func TestHeadSlots(t *testing.T) {
	for track, want := range map[int]int{1: 1, 2: 2, 3: 4, 3000: 4096, 65536: 65536, 65537: 131072} {
		if got := loader.HeadSlots(track); got != want {
			t.Errorf("HeadSlots(%d) = %d, want %d", track, got, want)
		}
	}
}
