// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * The benchmark's per-packet-state floor (bench/hopbench, condition
 * "state_floor"): the least work any tracer that measures the time between
 * a packet's hops must do, with none of hoptrace's selection, header parsing,
 * identity checks or clone handling.
 *
 * At each tcx hop: the skb's address looked up in an in-flight table; found,
 * the time since its last hop goes to a per-CPU histogram and the entry takes
 * the new time; not found, it is inserted. Where a packet ends (consume_skb,
 * kfree_skb, and skb_copy_datagram_iovec, its delivery to a TCP socket: TCP
 * frees its skbs where no tracepoint fires): the same lookup; found, one more
 * histogram update and the entry deleted. These are hoptrace's end hooks. The
 * table is the kind hoptrace uses: set-associative, four ways to a set, an
 * insert taking a free way or else the oldest, so a packet freed where no
 * hook fires does not fill it for good; keys and times share one cache line.
 *
 * The histogram is a per-CPU array indexed by hook, not hoptrace's per-CPU
 * hash keyed by hop pair: cheaper, and so still a floor.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

#include "ptrhash.h"

char __license[] SEC("license") = "Dual BSD/GPL";

#define SF_BUCKETS 64

enum sf_slot {
	SF_EGRESS = 0,
	SF_INGRESS = 1,
	SF_END = 2,
	SF_SLOTS = 3,
};

struct sf_hist {
	__u64 count;
	__u64 sum_ns;
	__u64 buckets[SF_BUCKETS];
};

#define SF_WAYS 4
#define SF_SETS 16384 /* a power of two: 65536 entries */

struct sf_set {
	__u64 skb[SF_WAYS];
	__u64 ts[SF_WAYS];
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, SF_SETS);
	__type(key, __u32);
	__type(value, struct sf_set);
} sf_inflight SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, SF_SLOTS);
	__type(key, __u32);
	__type(value, struct sf_hist);
} sf_hists SEC(".maps");

const struct sf_hist *unused_sf_hist __attribute__((unused));
const enum sf_slot *unused_sf_slot __attribute__((unused));

static __always_inline void sf_add(__u32 slot, __u64 delta)
{
	struct sf_hist *h = bpf_map_lookup_elem(&sf_hists, &slot);
	if (!h)
		return;
	__u32 b = 63 - __builtin_clzll(delta | 1);
	/* clang knows b < 64 and would drop the check; the verifier does not */
	asm volatile("" : "+r"(b));
	if (b >= SF_BUCKETS)
		b = SF_BUCKETS - 1;
	h->count += 1;
	h->sum_ns += delta;
	h->buckets[b] += 1;
}

static __always_inline struct sf_set *sf_set_of(struct sk_buff *skb)
{
	__u32 i = ptr_hash((__u64)skb) & (SF_SETS - 1);
	return bpf_map_lookup_elem(&sf_inflight, &i);
}

/* The way holding skb, or SF_WAYS. */
static __always_inline __u32 sf_way(const struct sf_set *s, struct sk_buff *skb)
{
	__u64 key = (__u64)skb;
#pragma unroll
	for (__u32 w = 0; w < SF_WAYS; w++)
		if (s->skb[w] == key)
			return w;
	return SF_WAYS;
}

static __always_inline void sf_hop(struct sk_buff *skb, __u32 slot)
{
	struct sf_set *s = sf_set_of(skb);
	if (!s)
		return;
	__u64 now = bpf_ktime_get_ns();
	__u32 w = sf_way(s, skb);
	if (w < SF_WAYS) {
		sf_add(slot, now - s->ts[w]);
		s->ts[w] = now;
		return;
	}
	/* a free way, else the oldest */
	__u32 pick = 0;
	__u64 oldest = ~0ULL;
#pragma unroll
	for (__u32 k = 0; k < SF_WAYS; k++) {
		__u64 ts = s->skb[k] ? s->ts[k] : 0;
		if (ts < oldest) {
			oldest = ts;
			pick = k;
		}
	}
	pick &= SF_WAYS - 1;
	s->ts[pick] = now;
	s->skb[pick] = (__u64)skb;
}

static __always_inline void sf_end(struct sk_buff *skb)
{
	struct sf_set *s = sf_set_of(skb);
	if (!s)
		return;
	__u32 w = sf_way(s, skb);
	if (w >= SF_WAYS)
		return;
	sf_add(SF_END, bpf_ktime_get_ns() - s->ts[w]);
	s->skb[w] = 0;
}

extern void *bpf_cast_to_kern_ctx(void *obj) __ksym;

SEC("tcx/egress")
int sf_tcx_egress(struct __sk_buff *ctx)
{
	sf_hop(bpf_cast_to_kern_ctx(ctx), SF_EGRESS);
	return TCX_NEXT;
}

SEC("tcx/ingress")
int sf_tcx_ingress(struct __sk_buff *ctx)
{
	sf_hop(bpf_cast_to_kern_ctx(ctx), SF_INGRESS);
	return TCX_NEXT;
}

SEC("tp_btf/consume_skb")
int BPF_PROG(sf_consume_skb, struct sk_buff *skb)
{
	sf_end(skb);
	return 0;
}

SEC("tp_btf/kfree_skb")
int BPF_PROG(sf_kfree_skb, struct sk_buff *skb)
{
	sf_end(skb);
	return 0;
}

SEC("tp_btf/skb_copy_datagram_iovec")
int BPF_PROG(sf_copy_datagram, const struct sk_buff *skb, int len)
{
	sf_end((struct sk_buff *)skb);
	return 0;
}
