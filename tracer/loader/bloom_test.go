package loader

import (
	"testing"

	"github.com/hoptrace/hoptrace/tracer/bpfobj"
)

// Two selected devices whose folds collide share a bit: deselecting one
// keeps the bit of the other, which is still selected; selecting twice is
// one change; the last removal clears the bit.
func TestBloomKeepsACollidingKeysBit(t *testing.T) {
	a := bpfobj.HoptraceDevKey{Netns: 4026531840, Ifindex: 7}
	// a second key with a's fold: b.Netns ^ (b.Ifindex * C) == fold(a)
	bk := bpfobj.HoptraceDevKey{Ifindex: 9}
	bk.Netns = devFold(a.Netns, a.Ifindex) ^ (bk.Ifindex * 0x85EBCA77)
	if devFold(bk.Netns, bk.Ifindex) != devFold(a.Netns, a.Ifindex) || bk == a {
		t.Fatal("the test's keys do not collide")
	}
	fold := devFold(a.Netns, a.Ifindex)
	i := bloomIndex(fold)
	isSet := func(b *bloom) bool {
		v := b.bits()
		return v[int(bloomDev)*bloomWords+int(i/64)]&(1<<(i%64)) != 0
	}
	var b bloom
	if !b.change(bloomDev, a, fold, true) || !b.change(bloomDev, bk, fold, true) {
		t.Fatal("selecting two devices changed nothing")
	}
	if b.change(bloomDev, a, fold, true) {
		t.Error("selecting a device twice counted as a change")
	}
	b.change(bloomDev, a, fold, false)
	if !isSet(&b) {
		t.Error("removing one of two colliding devices cleared the other's bit")
	}
	b.change(bloomDev, bk, fold, false)
	if isSet(&b) {
		t.Error("the bit stayed after both devices were deselected")
	}
}
