package path

import (
	"testing"

	"github.com/hoptrace/hoptrace/tracer/event"
	"github.com/hoptrace/hoptrace/tracer/kernel"
)

// On a kernel without drop reasons (before 5.17: kfree_skb passes none,
// BTF has no enum skb_drop_reason, so the names are empty) a drop is told
// by the dropping function, and says there is no reason.
func TestDropWithoutReasonNamesTheFunction(t *testing.T) {
	drop := ev(1, 40_000, event.HookKfreeSkb, nsB, 2)
	drop.Location = locNft
	a := NewAssembler(1000, 1_000_000)
	for _, e := range []event.Event{ev(1, 0, event.HookNetDevQueue, nsA, 2), ev(1, 30_000, event.HookNetifReceiveSkb, nsB, 2), drop} {
		a.Add(&e)
	}
	ps := a.Flush(true)
	if len(ps) != 1 {
		t.Fatalf("%d packets, want 1", len(ps))
	}
	d := describer()
	d.Drops = kernel.DropReasons{} // what LoadDropReasons returns on 5.10
	p := d.Describe(ps[0])
	want := "dropped in web eth0: no reason on this kernel at nft_do_chain"
	if p.Verdict != Dropped || p.DropReason != "" || p.DropLocation != "nft_do_chain" || p.End != want {
		t.Errorf("verdict %q reason %q location %q end %q; want dropped, no reason, nft_do_chain, %q", p.Verdict, p.DropReason, p.DropLocation, p.End, want)
	}
}
