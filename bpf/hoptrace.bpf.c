// SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause
/*
 * hoptrace: follow packets across veth pairs and bridges.
 *
 * Every program here is a tp_btf program on a networking tracepoint: they see
 * all network namespaces at once, need no per-interface attachment, and exist
 * on every kernel hoptrace supports. None of them changes a packet or its fate.
 *
 * Packet identity: the skb address is stable along one unicast path, but the
 * kernel reuses addresses within microseconds and many frees are silent. So an
 * identity is (skb address -> packet id) confirmed by a fingerprint of the
 * packet's headers; a clone (flooding, raw socket delivery) is found through
 * its shared data head with the same fingerprint.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_endian.h>

#include "hoptrace.h"

char __license[] SEC("license") = "Dual BSD/GPL";

#define ETH_P_IP 0x0800
#define ETH_P_IPV6 0x86DD
#define ETH_P_ARP 0x0806
#define ETH_P_8021Q 0x8100
#define ETH_P_8021AD 0x88A8
#define ARPHRD_ETHER 1
#define ARPHRD_LOOPBACK 772
#define IPPROTO_ICMP_ 1
#define IPPROTO_TCP_ 6
#define IPPROTO_UDP_ 17
#define IPPROTO_ICMPV6_ 58
#define MAC_HEADER_UNSET ((__u16)~0U)

enum run_mode {
	MODE_EVENTS = 0,  /* every observation goes to the ring buffer */
	MODE_LATENCY = 1, /* hop-to-hop deltas go to in-kernel histograms */
};

enum filter_flag {
	FILTER_NETNS = 1, /* a packet seen in one of filter_netns */
	FILTER_DEV = 2,   /* a packet seen on one of filter_dev */
	FILTER_ADDR = 4,  /* a packet from or to one of filter_addr */
};

/* Set by the loader before the programs are loaded. */
volatile const __u32 mode = MODE_EVENTS;
volatile const __u32 filter_flags = 0;
volatile const __u64 stale_ns = 1000000000ULL;  /* a hop this much later is a new packet */
volatile const __u64 wakeup_bytes = 1 << 20;     /* wake the reader past this much data */
volatile const __u32 expr_filter = 0; /* a filter expression's program replaces pcap_filter's body */
volatile const __u32 snap_len = 0;    /* a packet capture: bytes of each frame after each event */

struct pkt_track {
	__u64 pkt_id;
	__u64 fp;
	__u64 head;
	__u64 last_ts;
	struct hop_key last;
};

struct addr_key {
	__u32 family; /* 4 or 6 */
	__u8 addr[16];
};

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 8 << 20);
} events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, __u64);
	__type(value, struct pkt_track);
} by_skb SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, __u64);
	__type(value, struct pkt_track);
} by_head SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u32);
	__type(value, __u8);
} filter_netns SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, struct dev_key);
	__type(value, __u8);
} filter_dev SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, struct addr_key);
	__type(value, __u8);
} filter_addr SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, STAT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, struct hop_pair);
	__type(value, struct hist);
} hists SEC(".maps");

/* One zeroed histogram, the template for new hists entries (too big for the stack). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct hist);
} hist_zero SEC(".maps");

/*
 * Packet ids: a per-CPU sequence number combined with the CPU number,
 * seq * nr_cpus + cpu + 1, so ids are unique across CPUs, never 0 ("none"),
 * and need no atomic fetch-and-add (a fetch whose result is used needs 5.12).
 * nr_cpus is the number of possible CPUs, set by the loader.
 */
volatile const __u32 nr_cpus = 1;

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} pkt_seq SEC(".maps");

/* Force the generated Go types for the structures userspace decodes. */
const struct event *unused_event __attribute__((unused));
const enum hook *unused_hook __attribute__((unused));
const enum event_flag *unused_flag __attribute__((unused));
const enum stat_counter *unused_stat __attribute__((unused));
const struct hop_pair *unused_pair __attribute__((unused));
const struct hist *unused_hist __attribute__((unused));
const struct frame_snap *unused_snap __attribute__((unused));
const enum run_mode *unused_mode __attribute__((unused));
const enum filter_flag *unused_filter __attribute__((unused));

static __always_inline void stat_inc(__u32 idx)
{
	__u64 *v = bpf_map_lookup_elem(&stats, &idx);
	if (v)
		*v += 1;
}

/* ---- header parsing ---- */

struct vlan_tag {
	__be16 tci;
	__be16 proto;
};

struct arp_ipv4 {
	__be16 htype;
	__be16 ptype;
	__u8 hlen;
	__u8 plen;
	__be16 op;
	__u8 sha[6];
	__u8 sip[4];
	__u8 tha[6];
	__u8 tip[4];
} __attribute__((packed));

struct icmp_echo {
	__u8 type;
	__u8 code;
	__be16 csum;
	__be16 id;
	__be16 seq;
};

/* Offset of the layer-3 header from skb->head and its ethertype, or 0. */
static __always_inline __u32 l3_offset(struct sk_buff *skb, struct net_device *dev, unsigned char *head,
				       __u16 *eth_proto)
{
	__u16 mac = skb->mac_header;
	__be16 skb_proto = skb->protocol;
	bool ether = !dev || dev->type == ARPHRD_ETHER;

	/*
	 * Prefer the Ethernet header: the network header offset is stale at
	 * netif_receive_skb for packets from a NIC. Trust it only when its
	 * ethertype agrees with skb->protocol.
	 */
	if (mac != MAC_HEADER_UNSET && ether) {
		__be16 proto;
		__u32 off = mac + 12;
		if (bpf_probe_read_kernel(&proto, sizeof(proto), head + off) == 0) {
			off += 2;
			if (proto == bpf_htons(ETH_P_8021Q) || proto == bpf_htons(ETH_P_8021AD)) {
				struct vlan_tag tag;
				if (bpf_probe_read_kernel(&tag, sizeof(tag), head + off) == 0) {
					proto = tag.proto;
					off += sizeof(tag);
				}
			}
			if (proto == skb_proto || skb_proto == bpf_htons(ETH_P_8021Q)) {
				*eth_proto = bpf_ntohs(proto);
				return off;
			}
		}
	}
	__u16 nh = skb->network_header;
	if (nh == 0 || nh == MAC_HEADER_UNSET)
		return 0;
	*eth_proto = bpf_ntohs(skb_proto);
	return nh;
}

static __always_inline void parse_l4(unsigned char *l4, __u8 proto, struct pkt_meta *m)
{
	m->l4_proto = proto;
	if (proto == IPPROTO_TCP_) {
		struct tcphdr th;
		if (bpf_probe_read_kernel(&th, sizeof(th), l4))
			return;
		m->sport = bpf_ntohs(th.source);
		m->dport = bpf_ntohs(th.dest);
		m->tcp_seq = bpf_ntohl(th.seq);
		m->tcp_ack = bpf_ntohl(th.ack_seq);
		/* flags live in byte 13 of the TCP header */
		m->tcp_flags = ((__u8 *)&th)[13];
	} else if (proto == IPPROTO_UDP_) {
		struct udphdr uh;
		if (bpf_probe_read_kernel(&uh, sizeof(uh), l4))
			return;
		m->sport = bpf_ntohs(uh.source);
		m->dport = bpf_ntohs(uh.dest);
	} else if (proto == IPPROTO_ICMP_ || proto == IPPROTO_ICMPV6_) {
		struct icmp_echo ih;
		if (bpf_probe_read_kernel(&ih, sizeof(ih), l4))
			return;
		m->icmp_type = ih.type;
		m->icmp_code = ih.code;
		m->icmp_id = bpf_ntohs(ih.id);
		m->icmp_seq = bpf_ntohs(ih.seq);
	}
}

static __always_inline void parse(struct sk_buff *skb, struct net_device *dev, struct pkt_meta *m)
{
	unsigned char *head = skb->head;
	__u16 eth_proto = 0;
	__u32 off = l3_offset(skb, dev, head, &eth_proto);

	m->eth_proto = eth_proto;
	if (!off)
		return;
	if (eth_proto == ETH_P_IP) {
		struct iphdr ip;
		if (bpf_probe_read_kernel(&ip, sizeof(ip), head + off))
			return;
		__builtin_memcpy(m->saddr, &ip.saddr, 4);
		__builtin_memcpy(m->daddr, &ip.daddr, 4);
		m->ip_len = bpf_ntohs(ip.tot_len);
		m->ip_id = bpf_ntohs(ip.id);
		m->l4_proto = ip.protocol;
		/* only the first fragment carries the layer-4 header */
		if (ip.frag_off & bpf_htons(0x1fff))
			return;
		parse_l4(head + off + (ip.ihl & 0xf) * 4, ip.protocol, m);
	} else if (eth_proto == ETH_P_IPV6) {
		struct ipv6hdr ip6;
		if (bpf_probe_read_kernel(&ip6, sizeof(ip6), head + off))
			return;
		__builtin_memcpy(m->saddr, &ip6.saddr, 16);
		__builtin_memcpy(m->daddr, &ip6.daddr, 16);
		m->ip_len = bpf_ntohs(ip6.payload_len) + 40;
		/* the low flow-label bits stand in for IPv4's id in the fingerprint */
		m->ip_id = bpf_ntohs(*(__be16 *)&ip6.flow_lbl[1]);
		__u8 next = ip6.nexthdr;
		__u32 l4 = off + sizeof(ip6);
		/* skip a few extension headers (MLD reports carry hop-by-hop options) */
#pragma unroll
		for (int i = 0; i < 3; i++) {
			struct {
				__u8 next;
				__u8 len;
			} ext;
			if (next != 0 && next != 43 && next != 60)
				break;
			if (bpf_probe_read_kernel(&ext, sizeof(ext), head + l4))
				return;
			next = ext.next;
			l4 += (ext.len + 1) * 8;
		}
		parse_l4(head + l4, next, m);
	} else if (eth_proto == ETH_P_ARP) {
		struct arp_ipv4 arp;
		if (bpf_probe_read_kernel(&arp, sizeof(arp), head + off))
			return;
		m->arp_op = bpf_ntohs(arp.op);
		if (arp.ptype == bpf_htons(ETH_P_IP) && arp.plen == 4) {
			__builtin_memcpy(m->saddr, arp.sip, 4);
			__builtin_memcpy(m->daddr, arp.tip, 4);
		}
	}
}

/* FNV-1a style mix over the parsed headers: equal headers, equal packets. */
static __always_inline __u64 fingerprint(const struct pkt_meta *m)
{
	const __u32 *w = (const __u32 *)m;
	__u64 h = 0xcbf29ce484222325ULL;
#pragma unroll
	for (int i = 0; i < (int)(sizeof(*m) / 4); i++) {
		h ^= w[i];
		h *= 0x100000001b3ULL;
	}
	return h ? h : 1;
}

/* ---- filtering ---- */

static __always_inline bool addr_selected(__u32 family, const __u8 *addr)
{
	struct addr_key k = {.family = family};
	if (family == 4)
		__builtin_memcpy(k.addr, addr, 4);
	else
		__builtin_memcpy(k.addr, addr, 16);
	return bpf_map_lookup_elem(&filter_addr, &k) != NULL;
}

/* Whether a packet not yet tracked should start being tracked here. */
static __always_inline bool selected(__u32 netns, __u32 ifindex, const struct pkt_meta *m)
{
	if (!filter_flags)
		return true;
	if ((filter_flags & FILTER_NETNS) && bpf_map_lookup_elem(&filter_netns, &netns))
		return true;
	if (filter_flags & FILTER_DEV) {
		struct dev_key k = {.netns = netns, .ifindex = ifindex};
		if (bpf_map_lookup_elem(&filter_dev, &k))
			return true;
	}
	if (filter_flags & FILTER_ADDR) {
		__u32 family = 0;
		if (m->eth_proto == ETH_P_IP || m->eth_proto == ETH_P_ARP)
			family = 4;
		else if (m->eth_proto == ETH_P_IPV6)
			family = 6;
		if (family && (addr_selected(family, m->saddr) || addr_selected(family, m->daddr)))
			return true;
	}
	return false;
}

/*
 * The frame as the device holds it, from its Ethernet header: the address of
 * its first byte (0 if the device has no Ethernet header or none is set), the
 * bytes readable there (the linear part) and its length on the wire.
 */
static __always_inline __u64 frame_at(struct sk_buff *skb, struct net_device *dev, __u32 *linear, __u32 *wire)
{
	__u16 mac = skb->mac_header;
	if (mac == MAC_HEADER_UNSET || !dev || (dev->type != ARPHRD_ETHER && dev->type != ARPHRD_LOOPBACK))
		return 0;
	unsigned char *head = skb->head;
	__u32 data = skb->data - head;
	__u32 tail = skb->tail;
	if (data < mac || tail < mac)
		return 0;
	*wire = skb->len + (data - mac);
	*linear = tail - mac < *wire ? tail - mac : *wire;
	return (__u64)head + mac;
}

/*
 * The filter expression (tcpdump's language, compiled by libpcap to classic
 * BPF and translated by tracer/pktfilter) replaces this body at load time.
 * Arguments: the frame's address, the bytes readable there, its wire length.
 * Nonzero: the frame matches. The placeholder only keeps every argument live.
 */
static __noinline __u32 pcap_filter(__u64 frame, __u64 linear, __u64 wire)
{
	return frame != linear && linear != wire;
}

/* Whether the frame matches the filter expression (called only with one). */
static __always_inline bool expr_matches(struct sk_buff *skb, struct net_device *dev)
{
	__u32 linear = 0, wire = 0;
	__u64 frame = frame_at(skb, dev, &linear, &wire);
	return frame && pcap_filter(frame, linear, wire);
}

/* Copies the frame's first snap_len bytes after an event (packet capture). */
static __always_inline void snapshot(struct frame_snap *s, struct sk_buff *skb, struct net_device *dev)
{
	__u32 linear = 0, wire = 0;
	__u64 frame = frame_at(skb, dev, &linear, &wire);
	s->l3 = 0;
	s->pad = 0;
	if (!frame) {
		/* no link-layer header: from the network header on */
		unsigned char *head = skb->head;
		__u32 data = skb->data - head;
		__u32 tail = skb->tail;
		__u16 nh = skb->network_header;
		if (nh != 0 && nh != MAC_HEADER_UNSET && tail >= nh && data <= nh + skb->len) {
			wire = skb->len + data - nh;
			linear = tail - nh < wire ? tail - nh : wire;
			frame = (__u64)head + nh;
			s->l3 = 1;
		}
	}
	__u64 n = frame ? linear : 0;
	__u64 max = snap_len;
	/* n = min(n, max) in the register the helper gets, so the verifier sees the bound */
	asm volatile("if %[n] <= %[max] goto +1\n\t%[n] = %[max]" : [n] "+r"(n) : [max] "r"(max));
	s->len = wire;
	s->caplen = n;
	if (n)
		bpf_probe_read_kernel((void *)(s + 1), n, (void *)frame);
}

/* ---- latency histograms ---- */

static __always_inline __u32 log2_u64(__u64 v)
{
	__u32 r = 0;
	if (v >> 32) { v >>= 32; r += 32; }
	if (v >> 16) { v >>= 16; r += 16; }
	if (v >> 8) { v >>= 8; r += 8; }
	if (v >> 4) { v >>= 4; r += 4; }
	if (v >> 2) { v >>= 2; r += 2; }
	if (v >> 1) { r += 1; }
	return r;
}

/* Bucket index; the Go side mirrors this in tracer/latency. */
static __always_inline __u32 hist_bucket(__u64 v)
{
	if (v < HIST_SUB_COUNT)
		return v;
	__u32 p = log2_u64(v);
	if (p > HIST_MAX_POW)
		return HIST_BUCKETS - 1;
	__u32 sub = (v >> (p - HIST_SUB_BITS)) & (HIST_SUB_COUNT - 1);
	return (p - HIST_SUB_BITS + 1) * HIST_SUB_COUNT + sub;
}

static __always_inline void hist_add(const struct hop_key *from, const struct hop_key *to, __u64 delta)
{
	struct hop_pair pair = {.from = *from, .to = *to};
	struct hist *h = bpf_map_lookup_elem(&hists, &pair);
	if (!h) {
		__u32 zero = 0;
		struct hist *z = bpf_map_lookup_elem(&hist_zero, &zero);
		if (!z)
			return;
		bpf_map_update_elem(&hists, &pair, z, BPF_NOEXIST);
		h = bpf_map_lookup_elem(&hists, &pair);
		if (!h) {
			stat_inc(STAT_HIST_FULL);
			return;
		}
	}
	__u32 b = hist_bucket(delta);
	if (b >= HIST_BUCKETS)
		b = HIST_BUCKETS - 1;
	__sync_fetch_and_add(&h->count, 1);
	__sync_fetch_and_add(&h->sum_ns, delta);
	__sync_fetch_and_add(&h->buckets[b], 1);
	if (delta > h->max_ns)
		h->max_ns = delta; /* racy by design: a lost max under contention is harmless */
	stat_inc(STAT_HIST_UPDATES);
}

/* ---- the observation ---- */

/*
 * A new packet id, or 0 when the sequence map cannot be read (never). The
 * read-increment-write is not atomic: only a program nested on the same CPU
 * (a hooked tracepoint in a hard interrupt landing between the two
 * instructions) could take the same number, and it costs less than a locked
 * instruction on every new packet.
 */
static __always_inline __u64 new_pkt_id(void)
{
	__u32 zero = 0;
	__u64 *seq = bpf_map_lookup_elem(&pkt_seq, &zero);
	if (!seq)
		return 0;
	__u64 n = *seq;
	*seq = n + 1;
	return n * nr_cpus + bpf_get_smp_processor_id() + 1;
}

static __always_inline bool is_end(__u8 hook)
{
	return hook == HOOK_KFREE_SKB || hook == HOOK_CONSUME_SKB || hook == HOOK_COPY_DATAGRAM;
}

static __always_inline __u32 sock_netns(struct sk_buff *skb)
{
	struct sock *sk = skb->sk;
	if (!sk)
		return 0;
	return sk->__sk_common.skc_net.net->ns.inum;
}

static __always_inline int observe(void *ctx, struct sk_buff *skb, struct net_device *dev, __u8 hook,
				   __u64 location, __u32 reason)
{
	__u64 skb_addr = (__u64)skb;
	bool end = is_end(hook);

	/* Cheapest rejection first: most skbs freed on a host are not ours. */
	struct pkt_track *t = bpf_map_lookup_elem(&by_skb, &skb_addr);
	__u64 head = (__u64)skb->head;
	struct pkt_track *h = NULL;
	bool untracked = false; /* a scalar: the verifier refuses ORing the two pointers */
	if (!t) {
		h = bpf_map_lookup_elem(&by_head, &head);
		if (!h) {
			if (end)
				return 0;
			untracked = true;
		}
	}

	__u64 now = bpf_ktime_get_ns();
	struct pkt_meta meta = {};
	struct hop_key cur = {.hook = hook};
	__u8 flags = 0;
	if (dev) {
		cur.netns = dev->nd_net.net->ns.inum;
		cur.ifindex = dev->ifindex;
	} else {
		cur.netns = sock_netns(skb);
		if (cur.netns)
			flags |= EVENT_F_SOCK_NS;
	}
	/* namespace/device filters need no header parsing to say no */
	if (untracked && filter_flags && !(filter_flags & FILTER_ADDR) && !selected(cur.netns, cur.ifindex, &meta))
		return 0;
	/* so does a filter expression: an untracked packet it rejects costs one run */
	if (untracked && expr_filter && !expr_matches(skb, dev))
		return 0;

	parse(skb, dev, &meta);
	__u64 fp = fingerprint(&meta);
	__u64 pkt_id = 0;
	struct pkt_track fresh = {};
	struct hop_key prev = {};
	__u64 prev_ts = 0;

	if (t && t->fp == fp && (end || now - t->last_ts < stale_ns)) {
		pkt_id = t->pkt_id;
		prev = t->last;
		prev_ts = t->last_ts;
		if (!end) {
			t->last = cur;
			t->last_ts = now;
		}
	} else {
		if (t)
			stat_inc(STAT_REUSED);
		if (t) /* a stale entry: by_head was not looked up yet */
			h = bpf_map_lookup_elem(&by_head, &head);
		if (h && h->fp == fp && (end || now - h->last_ts < stale_ns)) {
			/* a clone sharing the data of a tracked packet */
			pkt_id = h->pkt_id;
			prev = h->last;
			prev_ts = h->last_ts;
			flags |= EVENT_F_CLONE;
		} else {
			if (end || !selected(cur.netns, cur.ifindex, &meta) ||
			    (!untracked && expr_filter && !expr_matches(skb, dev)))
				return 0;
			pkt_id = new_pkt_id();
			if (!pkt_id)
				return 0;
			flags |= EVENT_F_NEW;
			stat_inc(STAT_PACKETS);
		}
		fresh.pkt_id = pkt_id;
		fresh.fp = fp;
		fresh.head = head;
		fresh.last = cur;
		fresh.last_ts = now;
		if (!end) {
			bpf_map_update_elem(&by_skb, &skb_addr, &fresh, BPF_ANY);
			if (flags & EVENT_F_NEW)
				bpf_map_update_elem(&by_head, &head, &fresh, BPF_ANY);
		}
	}

	if (BPF_CORE_READ_BITFIELD(skb, cloned))
		flags |= EVENT_F_CLONED;

	if (mode == MODE_LATENCY) {
		if (prev_ts && now >= prev_ts) {
			struct hop_key to = cur;
			if (hook == HOOK_KFREE_SKB) {
				to.drop_reason[0] = reason;
				to.drop_reason[1] = reason >> 8;
				to.drop_reason[2] = reason >> 16;
			}
			hist_add(&prev, &to, now - prev_ts);
		}
	} else {
		__u64 size = sizeof(struct event) + (snap_len ? sizeof(struct frame_snap) + snap_len : 0);
		struct event *e = bpf_ringbuf_reserve(&events, size, 0);
		if (!e) {
			stat_inc(STAT_LOST);
		} else {
			e->ts_ns = now;
			e->pkt_id = pkt_id;
			e->skb = skb_addr;
			e->location = location;
			e->netns = cur.netns;
			e->ifindex = cur.ifindex;
			e->iif = skb->skb_iif;
			e->len = skb->len;
			e->drop_reason = reason;
			e->cpu = bpf_get_smp_processor_id();
			e->hook = hook;
			e->flags = flags;
			e->pkt_type = BPF_CORE_READ_BITFIELD(skb, pkt_type);
			__builtin_memset(e->pad, 0, sizeof(e->pad));
			if (dev)
				bpf_probe_read_kernel_str(e->ifname, sizeof(e->ifname), dev->name);
			else
				__builtin_memset(e->ifname, 0, sizeof(e->ifname));
			e->meta = meta;
			if (snap_len) {
				struct frame_snap *s = (void *)(e + 1);
				if (end)
					s->caplen = s->len = s->l3 = s->pad = 0;
				else
					snapshot(s, skb, dev);
			}
			/*
			 * The reader polls every few milliseconds; a wake-up is only
			 * for a burst that could fill the ring before then. Wake once,
			 * when this record crosses the threshold: forcing a wake-up on
			 * every record while the reader lags costs microseconds each.
			 */
			__u64 avail = bpf_ringbuf_query(&events, BPF_RB_AVAIL_DATA);
			__u64 rec = (size + 8 + 7) & ~7ULL; /* record and its header */
			__u64 wake = avail >= wakeup_bytes && avail < wakeup_bytes + rec ? BPF_RB_FORCE_WAKEUP
											  : BPF_RB_NO_WAKEUP;
			bpf_ringbuf_submit(e, wake);
		}
	}

	/* The skb is gone: forget its address; its head too unless a clone still holds it. */
	if (hook == HOOK_KFREE_SKB || hook == HOOK_CONSUME_SKB) {
		bpf_map_delete_elem(&by_skb, &skb_addr);
		if (!(flags & EVENT_F_CLONED))
			bpf_map_delete_elem(&by_head, &head);
	}
	return 0;
}

SEC("tp_btf/net_dev_queue")
int BPF_PROG(on_net_dev_queue, struct sk_buff *skb)
{
	return observe(ctx, skb, skb->dev, HOOK_NET_DEV_QUEUE, 0, 0);
}

SEC("tp_btf/net_dev_start_xmit")
int BPF_PROG(on_net_dev_start_xmit, struct sk_buff *skb, struct net_device *dev)
{
	return observe(ctx, skb, dev, HOOK_NET_DEV_START_XMIT, 0, 0);
}

SEC("tp_btf/net_dev_xmit")
int BPF_PROG(on_net_dev_xmit, struct sk_buff *skb, int rc, struct net_device *dev)
{
	return observe(ctx, skb, dev, HOOK_NET_DEV_XMIT, 0, 0);
}

SEC("tp_btf/netif_rx")
int BPF_PROG(on_netif_rx, struct sk_buff *skb)
{
	return observe(ctx, skb, skb->dev, HOOK_NETIF_RX, 0, 0);
}

SEC("tp_btf/napi_gro_receive_entry")
int BPF_PROG(on_napi_gro_receive_entry, struct sk_buff *skb)
{
	return observe(ctx, skb, skb->dev, HOOK_GRO_RECEIVE, 0, 0);
}

SEC("tp_btf/netif_receive_skb")
int BPF_PROG(on_netif_receive_skb, struct sk_buff *skb)
{
	return observe(ctx, skb, skb->dev, HOOK_NETIF_RECEIVE_SKB, 0, 0);
}

/* kfree_skb gained its reason argument in 5.17; the loader picks one of these. */
SEC("tp_btf/kfree_skb")
int BPF_PROG(on_kfree_skb, struct sk_buff *skb, void *location, enum skb_drop_reason reason)
{
	return observe(ctx, skb, skb->dev, HOOK_KFREE_SKB, (__u64)location, reason);
}

SEC("tp_btf/kfree_skb")
int BPF_PROG(on_kfree_skb_noreason, struct sk_buff *skb, void *location)
{
	return observe(ctx, skb, skb->dev, HOOK_KFREE_SKB, (__u64)location, 0);
}

/* consume_skb gained its location argument in 6.3; the loader picks one of these. */
SEC("tp_btf/consume_skb")
int BPF_PROG(on_consume_skb, struct sk_buff *skb, void *location)
{
	return observe(ctx, skb, skb->dev, HOOK_CONSUME_SKB, (__u64)location, 0);
}

SEC("tp_btf/consume_skb")
int BPF_PROG(on_consume_skb_noloc, struct sk_buff *skb)
{
	return observe(ctx, skb, skb->dev, HOOK_CONSUME_SKB, 0, 0);
}

SEC("tp_btf/skb_copy_datagram_iovec")
int BPF_PROG(on_skb_copy_datagram_iovec, struct sk_buff *skb, int len)
{
	return observe(ctx, skb, skb->dev, HOOK_COPY_DATAGRAM, 0, 0);
}
