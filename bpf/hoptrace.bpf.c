// SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause
/*
 * hoptrace: follow packets across veth pairs and bridges.
 *
 * Two engines feed the same observe(). The tracepoint engine: tp_btf programs
 * on networking tracepoints, which see all network namespaces at once, need no
 * per-interface attachment and exist on every kernel hoptrace supports. The
 * tcx engine (Linux 6.6+): tcx ingress/egress programs on the devices a path
 * can cross stand in for the net_dev_queue and netif_receive_skb hops, so
 * traffic on other hooks pays nothing; the end tracepoints stay. None of them
 * changes a packet or its fate.
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
#include "ptrhash.h"

char __license[] SEC("license") = "Dual BSD/GPL";

#define ETH_P_IP 0x0800
#define ETH_P_IPV6 0x86DD
#define ETH_P_ARP 0x0806
#define ETH_P_8021Q 0x8100
#define ETH_P_8021AD 0x88A8
#define ENOMEM_ 12 /* errno.h: not in vmlinux.h */
#define ARPHRD_ETHER 1
#define ARPHRD_LOOPBACK 772
#define IPPROTO_ICMP_ 1
#define IPPROTO_TCP_ 6
#define IPPROTO_UDP_ 17
#define IPPROTO_ICMPV6_ 58
#define MAC_HEADER_UNSET ((__u16)~0U)
#define WRITE_ONCE(x, v) (*(volatile typeof(x) *)&(x) = (v))

enum run_mode {
	MODE_EVENTS = 0,  /* every observation goes to the ring buffer */
	MODE_LATENCY = 1, /* hop-to-hop deltas go to in-kernel histograms */
};

enum filter_flag {
	FILTER_NETNS = 1, /* a packet seen in one of filter_netns */
	FILTER_DEV = 2,   /* a packet seen on one of filter_dev */
	FILTER_ADDR = 4,  /* a packet from or to one of filter_addr */
	FILTER_PORT = 8,  /* a packet to one of filter_port (published ports, before DNAT) */
};

/* Set by the loader before the programs are loaded. */
volatile const __u32 mode = MODE_EVENTS;
volatile const __u32 filter_flags = 0;
volatile const __u64 stale_ns = 1000000000ULL;  /* a hop this much later is a new packet */
volatile const __u64 wakeup_bytes = 1 << 20;     /* wake the reader past this much data */
/*
 * Latency mode: kfree_skb calls that are no drop (an echo reply a raw socket
 * took, multicast of a group nobody joined, a late TCP segment, ...). The
 * rules are tracer/benign's; the loader compiles them for this kernel
 * (kallsyms, BTF) into benign_count entries: a free at
 * [benign_start, benign_end) (0, ~0: anywhere) with one of benign_reason's
 * two values (any when benign_any_reason) of a packet benign_packet_of says
 * is no drop: it counts as consumed.
 */
#define BENIGN_MAX 24

enum benign_packet {
	BENIGN_ANY_PACKET = 0,
	BENIGN_ECHO_REPLY = 1,      /* ICMP or ICMPv6 echo reply */
	BENIGN_IPV4_MULTICAST = 2,  /* to 224.0.0.0/4 */
	BENIGN_IPV6_MULTICAST = 3,  /* to ff00::/8 */
	BENIGN_TCP_NO_SYN = 4,      /* a TCP segment without SYN */
};

volatile const __u32 benign_count = 0;
volatile const __u64 benign_start[BENIGN_MAX] = {};
volatile const __u64 benign_end[BENIGN_MAX] = {};
volatile const __u32 benign_reason[BENIGN_MAX][2] = {};
volatile const __u8 benign_any_reason[BENIGN_MAX] = {};
volatile const enum benign_packet benign_packet_of[BENIGN_MAX] = {};
volatile const __u32 expr_filter = 0; /* a filter expression's program replaces pcap_filter's body */
volatile const __u32 snap_len = 0;    /* a packet capture: bytes of each frame after each event */
volatile const __u32 tcx_probe_parse = 0; /* tcx hops parse as the tracepoints do (tests compare the two) */

/*
 * A packet in flight. by_skb holds one per skb address and is the packet's
 * live state (last hop, current headers). by_head holds one per packet, made
 * at its first hop in the slot of its data head, for clones: it names its
 * owner skb, whose by_skb entry has the state a clone continues from, so a
 * hop updates one entry, not two; its own fields are the first hop's, the
 * fallback when the owner's entry is gone.
 */
struct pkt_track {
	__u64 pkt_id;
	__u64 fp;
	__u64 head;
	__u64 last_ts;
	struct hop_key last;
	__u32 owns_head; /* by_skb: this skb made the packet's by_head entry */
			 /* by_head: head is the slot's key, 0 when free */
	__u64 nat_fp;    /* fingerprint of the headers NAT leaves alone */
	__u64 skb;       /* by_head: the skb that created the entry (its owner) */
};

struct addr_key {
	__u32 family; /* 4 or 6 */
	__u8 addr[16];
};

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 8 << 20);
} events SEC(".maps");

/*
 * The in-flight table, by skb address: set-associative, TRACK_WAYS entries
 * per set, a set chosen by a hash of the address and its keys (the
 * addresses, 0 for a free way) kept together in one cache line. A lookup
 * is an array load and up to four compares; an insert and a delete are
 * plain stores, with no lock, no free list and no allocation (an LRU hash
 * here, insert and delete under its locks, took a third of latency mode's
 * BPF time on a two-CPU host). An insert takes the way of its own address
 * (a stale entry of an earlier skb at that address), else a free one, else
 * one whose last hop is older than stale_ns (matching nothing any more),
 * else the oldest, counted as STAT_EVICTED: a packet in flight whose next
 * hop will then be a new packet's first. The entry is written key last,
 * so a reader on another CPU that finds the key finds the rest; two CPUs
 * inserting into one set at the same instant may take the same way, and
 * one of the two packets is then lost from sight, like an evicted one.
 * Userspace (tracer/loader/inflight.go) maps the table to count its
 * entries and expire stale ones, by compare-and-swap on a key. set_mask is
 * the set count less one (a power of two), set by the loader.
 */
#define TRACK_WAYS 4

struct track_set {
	__u64 skb[TRACK_WAYS];
	struct pkt_track t[TRACK_WAYS];
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_MMAPABLE);
	__uint(max_entries, 16384);
	__type(key, __u32);
	__type(value, struct track_set);
} by_skb SEC(".maps");

volatile const __u32 set_mask = 16383;

/*
 * The clone table: direct-mapped, one slot per hash of a data head, the
 * head itself stored in the slot and compared on every lookup. A new packet
 * writes its slot with plain stores, and its owner's end clears it with one:
 * no hash-table insert, no LRU free list, no delete (an LRU hash here cost a
 * fifth of latency mode's BPF time). Two packets in flight whose heads share
 * a slot overwrite each other: the older one's clones, if any are made and
 * seen after that, are then untracked skbs, as if the table were full.
 * With the default 65536 slots and a thousand packets in flight that is one
 * packet in 65, and only a packet that gets cloned later (a bridge flooding
 * a broadcast, a packet socket's or a raw socket's copy) can tell. Readers
 * check what they find (the owner's entry must carry the same packet id,
 * the headers the same fingerprint), so a slot caught being rewritten by
 * another CPU is no match. head_mask is the slot count less one (a power
 * of two), set by the loader.
 */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 65536);
	__type(key, __u32);
	__type(value, struct pkt_track);
} by_head SEC(".maps");

volatile const __u32 head_mask = 65535;

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

struct port_key {
	__u16 port; /* host byte order */
	__u8 proto; /* IPPROTO_TCP / IPPROTO_UDP */
	__u8 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, struct port_key);
	__type(value, __u8);
} filter_port SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, STAT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} stats SEC(".maps");

/*
 * Latency histograms, one per CPU per pair: each CPU adds to its own copy
 * with plain stores (no locked instruction, no cache line shared by the
 * CPUs); userspace sums the copies and takes the largest max_ns. Allocated
 * when a pair first occurs (BPF_F_NO_PREALLOC): preallocating max_entries
 * histograms on every possible CPU would take ~5 KB x entries x CPUs.
 */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
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
const struct track_set *unused_track_set __attribute__((unused));
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

/*
 * Header parsing reads the frame's first PARSE_BYTES once (one probe read
 * into a per-CPU buffer) and takes every header from there; a header past
 * those bytes (long IPv6 extension chains) is read on its own, as before.
 * A probe read is a helper call with its own fault handling: one per hop
 * instead of one per header.
 */
#define PARSE_BYTES 192

struct hdr_buf {
	__u8 b[PARSE_BYTES];
	__u8 spill[64]; /* a header past b, read on its own */
};

/*
 * An observation's working memory, per CPU and per nesting level: a program
 * in process context (a socket read's end) can be interrupted on its CPU by
 * one in softirq (a device hop), which must not overwrite its headers. The
 * stack is no place for them: it is shared with the filter expression's
 * program, and the kernel bounds both frames together at 512 bytes.
 */
#define NEST_LEVELS 3 /* process, softirq, hard interrupt */

struct obs_scratch {
	struct hdr_buf hb;
	struct pkt_meta meta;
	struct pkt_track fresh; /* a new by_skb/by_head entry */
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, NEST_LEVELS);
	__type(key, __u32);
	__type(value, struct obs_scratch);
} obs_scratch SEC(".maps");

/* How deep observations are nested on this CPU now. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} obs_nest SEC(".maps");

/*
 * The size bytes at src + off: in the buffer when they are among its n bytes
 * read from src, else read into its spill area (valid until the next call);
 * NULL when unreadable. Headers are read where they lie, not copied to the
 * stack: the stack is shared with the filter expression's program.
 */
static __always_inline const __u8 *hdr_at(struct hdr_buf *hb, __u32 n, __u32 off, __u32 size,
					  const unsigned char *src)
{
	if (off + size <= n) {
		__u64 o = off, max = PARSE_BYTES - size;
		/* o = min(o, max), a no-op (n is at most PARSE_BYTES) that shows the verifier the bound */
		asm volatile("if %[o] <= %[max] goto +1\n\t%[o] = %[max]" : [o] "+r"(o) : [max] "r"(max));
		return hb->b + o;
	}
	if (bpf_probe_read_kernel(hb->spill, size, src + off))
		return NULL;
	return hb->spill;
}

/* Up to PARSE_BYTES of the buffer at head + start (never past the data buffer's end): the count read. */
static __always_inline __u32 hdr_fill(struct hdr_buf *hb, unsigned char *head, __u32 start, __u32 end)
{
	__u64 n = end > start ? end - start : 0;
	__u64 max = PARSE_BYTES;
	/* n = min(n, max) in the register the helper gets, so the verifier sees the bound */
	asm volatile("if %[n] <= %[max] goto +1\n\t%[n] = %[max]" : [n] "+r"(n) : [max] "r"(max));
	if (n == 0 || bpf_probe_read_kernel(hb->b, n, head + start))
		return 0;
	return n;
}

/*
 * Where the layer-3 header starts, relative to *start (which may move to the
 * network header), and its ethertype; 0 when there is none.
 */
static __always_inline __u32 l3_offset(struct sk_buff *skb, bool ether, unsigned char *head, struct hdr_buf *hb,
				       __u32 *n, __u32 *start, __u16 *eth_proto)
{
	__u16 mac = skb->mac_header;
	__u16 nh = skb->network_header;
	__be16 skb_proto = skb->protocol;
	__u32 end = skb->end;

	/*
	 * Prefer the Ethernet header: the network header offset is stale at
	 * netif_receive_skb for packets from a NIC. Trust it only when its
	 * ethertype agrees with skb->protocol.
	 */
	if (mac != MAC_HEADER_UNSET && ether) {
		*start = mac;
		*n = hdr_fill(hb, head, mac, end);
		__u32 off = 12;
		const __be16 *p = (const __be16 *)hdr_at(hb, *n, off, sizeof(*p), head + mac);
		if (p) {
			__be16 proto = *p;
			off += 2;
			if (proto == bpf_htons(ETH_P_8021Q) || proto == bpf_htons(ETH_P_8021AD)) {
				const struct vlan_tag *tag = (const void *)hdr_at(hb, *n, off, sizeof(*tag), head + mac);
				if (tag) {
					proto = tag->proto;
					off += sizeof(*tag);
				}
			}
			if (proto == skb_proto || skb_proto == bpf_htons(ETH_P_8021Q)) {
				*eth_proto = bpf_ntohs(proto);
				return off;
			}
		}
		if (nh == 0 || nh == MAC_HEADER_UNSET)
			return 0;
		*eth_proto = bpf_ntohs(skb_proto);
		/* the network header within the bytes already read */
		if (nh >= mac && nh - mac < PARSE_BYTES / 2)
			return nh - mac;
	} else if (nh == 0 || nh == MAC_HEADER_UNSET) {
		return 0;
	}
	*eth_proto = bpf_ntohs(skb_proto);
	*start = nh;
	*n = hdr_fill(hb, head, nh, end);
	return 0;
}

/*
 * The fields each header gives, wherever it was read from: parse() (the
 * scratch buffer) and tcx_parse() (the packet) both fill pkt_meta through
 * these, so a packet's tcx hops and tracepoint hops fingerprint alike.
 */
static __always_inline void meta_tcp(struct pkt_meta *m, const struct tcphdr *th)
{
	m->sport = bpf_ntohs(th->source);
	m->dport = bpf_ntohs(th->dest);
	m->tcp_seq = bpf_ntohl(th->seq);
	m->tcp_ack = bpf_ntohl(th->ack_seq);
	/* flags live in byte 13 of the TCP header */
	m->tcp_flags = ((const __u8 *)th)[13];
}

static __always_inline void meta_udp(struct pkt_meta *m, const struct udphdr *uh)
{
	m->sport = bpf_ntohs(uh->source);
	m->dport = bpf_ntohs(uh->dest);
}

static __always_inline void meta_icmp(struct pkt_meta *m, const struct icmp_echo *ih)
{
	m->icmp_type = ih->type;
	m->icmp_code = ih->code;
	m->icmp_id = bpf_ntohs(ih->id);
	m->icmp_seq = bpf_ntohs(ih->seq);
}

static __always_inline void meta_ipv4(struct pkt_meta *m, const struct iphdr *ip)
{
	__builtin_memcpy(m->saddr, &ip->saddr, 4);
	__builtin_memcpy(m->daddr, &ip->daddr, 4);
	m->ip_len = bpf_ntohs(ip->tot_len);
	m->ip_id = bpf_ntohs(ip->id);
	m->l4_proto = ip->protocol;
}

static __always_inline void meta_ipv6(struct pkt_meta *m, const struct ipv6hdr *ip6)
{
	__builtin_memcpy(m->saddr, &ip6->saddr, 16);
	__builtin_memcpy(m->daddr, &ip6->daddr, 16);
	m->ip_len = bpf_ntohs(ip6->payload_len) + 40;
	/* the low flow-label bits stand in for IPv4's id in the fingerprint */
	m->ip_id = bpf_ntohs(*(const __be16 *)&ip6->flow_lbl[1]);
}

static __always_inline void meta_arp(struct pkt_meta *m, const struct arp_ipv4 *arp)
{
	m->arp_op = bpf_ntohs(arp->op);
	if (arp->ptype == bpf_htons(ETH_P_IP) && arp->plen == 4) {
		__builtin_memcpy(m->saddr, arp->sip, 4);
		__builtin_memcpy(m->daddr, arp->tip, 4);
	}
}

/* The layer-4 header at off (bytes of the buffer, or read from src + off). */
static __always_inline void parse_l4(struct hdr_buf *hb, __u32 n, __u32 off, const unsigned char *src, __u8 proto,
				     struct pkt_meta *m)
{
	m->l4_proto = proto;
	if (proto == IPPROTO_TCP_) {
		const struct tcphdr *th = (const void *)hdr_at(hb, n, off, sizeof(*th), src);
		if (th)
			meta_tcp(m, th);
	} else if (proto == IPPROTO_UDP_) {
		const struct udphdr *uh = (const void *)hdr_at(hb, n, off, sizeof(*uh), src);
		if (uh)
			meta_udp(m, uh);
	} else if (proto == IPPROTO_ICMP_ || proto == IPPROTO_ICMPV6_) {
		const struct icmp_echo *ih = (const void *)hdr_at(hb, n, off, sizeof(*ih), src);
		if (ih)
			meta_icmp(m, ih);
	}
}

/* ether: the device is an Ethernet device (or unknown) */
static __always_inline void parse(struct sk_buff *skb, bool ether, struct hdr_buf *hb, struct pkt_meta *m)
{
	unsigned char *head = skb->head;
	__u16 eth_proto = 0;
	__u32 n = 0, start = 0;
	__u32 off = l3_offset(skb, ether, head, hb, &n, &start, &eth_proto);
	const unsigned char *src = head + start;

	m->eth_proto = eth_proto;
	if (!eth_proto)
		return;
	if (eth_proto == ETH_P_IP) {
		const struct iphdr *ip = (const void *)hdr_at(hb, n, off, sizeof(*ip), src);
		if (!ip)
			return;
		meta_ipv4(m, ip);
		__u8 proto = ip->protocol;
		/* only the first fragment carries the layer-4 header */
		if (ip->frag_off & bpf_htons(0x1fff))
			return;
		parse_l4(hb, n, off + (ip->ihl & 0xf) * 4, src, proto, m);
	} else if (eth_proto == ETH_P_IPV6) {
		const struct ipv6hdr *ip6 = (const void *)hdr_at(hb, n, off, sizeof(*ip6), src);
		if (!ip6)
			return;
		meta_ipv6(m, ip6);
		__u8 next = ip6->nexthdr;
		__u32 l4 = off + sizeof(*ip6);
		/* skip a few extension headers (MLD reports carry hop-by-hop options) */
#pragma unroll
		for (int i = 0; i < 3; i++) {
			if (next != 0 && next != 43 && next != 60)
				break;
			const __u8 *ext = hdr_at(hb, n, l4, 2, src); /* next header, length */
			if (!ext)
				return;
			next = ext[0];
			l4 += (ext[1] + 1) * 8;
		}
		parse_l4(hb, n, l4, src, next, m);
	} else if (eth_proto == ETH_P_ARP) {
		const struct arp_ipv4 *arp = (const void *)hdr_at(hb, n, off, sizeof(*arp), src);
		if (!arp)
			return;
		meta_arp(m, arp);
	}
}

/*
 * parse() at a tcx hook, from the packet itself: direct packet access (loads
 * checked against the linear data's end) instead of a probe read into the
 * scratch buffer. It fills the same fields parse() would, or says false when
 * it cannot be sure of that (a header past the linear data, stacked VLAN
 * tags, an ethertype that disagrees with skb->protocol, a frame not at its
 * Ethernet header): parse() then decides, from a zeroed meta. The
 * fingerprints of a packet's tcx hops and its tracepoint hops must agree, so
 * any change here is a change to parse() too.
 */
struct ethhdr_ {
	__u8 dst[6];
	__u8 src[6];
	__be16 proto;
};

static __always_inline bool tcx_parse_l4(void *l4, void *end, __u8 proto, struct pkt_meta *m)
{
	m->l4_proto = proto;
	if (proto == IPPROTO_TCP_) {
		struct tcphdr *th = l4;
		if ((void *)(th + 1) > end)
			return false;
		meta_tcp(m, th);
	} else if (proto == IPPROTO_UDP_) {
		struct udphdr *uh = l4;
		if ((void *)(uh + 1) > end)
			return false;
		meta_udp(m, uh);
	} else if (proto == IPPROTO_ICMP_ || proto == IPPROTO_ICMPV6_) {
		struct icmp_echo *ih = l4;
		if ((void *)(ih + 1) > end)
			return false;
		meta_icmp(m, ih);
	}
	return true;
}

/*
 * A tcx hook's frame past its Ethernet header and at most one VLAN tag: the
 * layer-3 header, its ethertype in *proto; NULL where parse() would read
 * the frame otherwise (a frame too short, stacked tags, an ethertype that
 * disagrees with skb->protocol).
 */
static __always_inline void *tcx_l3(struct __sk_buff *ctx, void *end, __be16 *proto)
{
	struct ethhdr_ *eth = (void *)(long)ctx->data;
	if ((void *)(eth + 1) > end)
		return NULL;
	__be16 p = eth->proto;
	void *l3 = eth + 1;
	if (p == bpf_htons(ETH_P_8021Q) || p == bpf_htons(ETH_P_8021AD)) {
		struct vlan_tag *tag = l3;
		if ((void *)(tag + 1) > end)
			return NULL;
		p = tag->proto;
		l3 = tag + 1;
	}
	if (p == bpf_htons(ETH_P_8021Q) || p == bpf_htons(ETH_P_8021AD) ||
	    (p != ctx->protocol && ctx->protocol != bpf_htons(ETH_P_8021Q)))
		return NULL;
	*proto = p;
	return l3;
}

static __always_inline bool tcx_parse(struct __sk_buff *ctx, struct sk_buff *skb, struct pkt_meta *m)
{
	void *end = (void *)(long)ctx->data_end;
	__u16 mac = skb->mac_header;
	/* parse() starts at the MAC header: so must this */
	if (mac == MAC_HEADER_UNSET || (__u64)skb->data != (__u64)skb->head + mac)
		return false;
	__be16 proto;
	void *l3 = tcx_l3(ctx, end, &proto);
	if (!l3)
		return false;
	m->eth_proto = bpf_ntohs(proto);
	if (proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = l3;
		if ((void *)(ip + 1) > end)
			return false;
		meta_ipv4(m, ip);
		if (ip->frag_off & bpf_htons(0x1fff))
			return true;
		return tcx_parse_l4((void *)ip + (ip->ihl & 0xf) * 4, end, ip->protocol, m);
	}
	if (proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = l3;
		if ((void *)(ip6 + 1) > end)
			return false;
		meta_ipv6(m, ip6);
		__u8 next = ip6->nexthdr;
		void *l4 = ip6 + 1;
#pragma unroll
		for (int i = 0; i < 3; i++) {
			if (next != 0 && next != 43 && next != 60)
				break;
			__u8 *ext = l4;
			if ((void *)(ext + 2) > end)
				return false;
			next = ext[0];
			l4 += (ext[1] + 1) * 8;
		}
		return tcx_parse_l4(l4, end, next, m);
	}
	if (proto == bpf_htons(ETH_P_ARP)) {
		struct arp_ipv4 *arp = l3;
		if ((void *)(arp + 1) > end)
			return false;
		meta_arp(m, arp);
	}
	return true;
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

/*
 * The headers NAT does not rewrite, mixed: what nat_fingerprint() and the
 * sampling decision read, from parsed headers or from the packet itself.
 */
static __always_inline __u64 nat_mix(__u16 eth_proto, __u16 ip_len, __u16 ip_id, __u8 l4_proto, __u8 tcp_flags,
				     __u32 tcp_seq, __u32 tcp_ack, __u16 icmp_seq, __u8 icmp_type, __u8 icmp_code)
{
	__u64 h = 0xcbf29ce484222325ULL;
	__u64 w[3] = {
		(__u64)eth_proto << 48 | (__u64)ip_len << 32 | (__u32)ip_id << 16 | l4_proto << 8 | tcp_flags,
		(__u64)tcp_seq << 32 | tcp_ack,
		(__u64)icmp_seq << 16 | icmp_type << 8 | icmp_code,
	};
#pragma unroll
	for (int i = 0; i < 3; i++) {
		h ^= w[i];
		h *= 0x100000001b3ULL;
	}
	return h ? h : 1;
}

/*
 * The headers NAT does not rewrite: a packet whose addresses or ports changed
 * between two hooks of the same skb keeps this one (ICMP's echo id is left
 * out, NAT may rewrite it like a port).
 */
static __always_inline __u64 nat_fingerprint(const struct pkt_meta *m)
{
	if (m->eth_proto != ETH_P_IP && m->eth_proto != ETH_P_IPV6)
		return 0;
	return nat_mix(m->eth_proto, m->ip_len, m->ip_id, m->l4_proto, m->tcp_flags, m->tcp_seq, m->tcp_ack,
		       m->icmp_seq, m->icmp_type, m->icmp_code);
}

/*
 * Latency sampling: one packet in sample_n is measured, chosen at its first
 * hop by its NAT-invariant headers, so every later hop (and every device's
 * program) takes the same decision without a table. 0 or 1: every packet.
 */
volatile const __u32 sample_n = 0;

static __always_inline bool sampled(__u64 key)
{
	if (sample_n <= 1)
		return true;
	/* the FNV product's low bits follow the inputs' low bits: finish the mix */
	key ^= key >> 33;
	key *= 0xff51afd7ed558ccdULL;
	key ^= key >> 33;
	return key % sample_n == 0;
}

/* ---- filtering ---- */

/*
 * A one-hash Bloom filter over the selected namespaces and addresses, kept
 * by the loader next to filter_netns and filter_addr: a clear bit says "not
 * selected" with an inlined array access instead of a hash lookup, which is
 * what most packets on a device get. tracer/loader/bloom.go mirrors the hash.
 */
#define BLOOM_BITS 4096
#define BLOOM_SHIFT 20 /* 32 - log2(BLOOM_BITS) */

struct filter_bloom {
	__u64 netns[BLOOM_BITS / 64];
	__u64 addr[BLOOM_BITS / 64];
	__u64 dev[BLOOM_BITS / 64];
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct filter_bloom);
} filter_bloom SEC(".maps");

static __always_inline bool bloom_has(const __u64 *bits, __u32 v)
{
	__u32 i = (v * 0x9E3779B1u) >> BLOOM_SHIFT;
	return bits[i >> 6] & (1ULL << (i & 63));
}

/* An address's bloom key: IPv4 as loaded from the packet, IPv6 folded. */
static __always_inline __u32 addr_fold(__u32 family, const __u32 *w)
{
	return family == 4 ? w[0] : w[0] ^ w[1] ^ w[2] ^ w[3];
}

/* A selected address (4 or 16 bytes at addr): the Bloom filter's bit first. */
static __always_inline bool addr_selected(__u32 family, const __u8 *addr)
{
	__u32 zero = 0;
	const struct filter_bloom *b = bpf_map_lookup_elem(&filter_bloom, &zero);
	if (b && !bloom_has(b->addr, addr_fold(family, (const __u32 *)addr)))
		return false;
	struct addr_key k = {.family = family};
	if (family == 4)
		__builtin_memcpy(k.addr, addr, 4);
	else
		__builtin_memcpy(k.addr, addr, 16);
	return bpf_map_lookup_elem(&filter_addr, &k) != NULL;
}

/* A device's bloom key: its namespace and index mixed into 32 bits. */
static __always_inline __u32 dev_fold(__u32 netns, __u32 ifindex)
{
	return netns ^ (ifindex * 0x85EBCA77u);
}

/*
 * A selected device (a selected container's host veth): the Bloom filter's
 * bit first. Every packet of every other container asks this at each of
 * its devices, so a clear bit spares it the hash lookup.
 */
static __always_inline bool dev_selected(__u32 netns, __u32 ifindex)
{
	__u32 zero = 0;
	const struct filter_bloom *b = bpf_map_lookup_elem(&filter_bloom, &zero);
	if (b && !bloom_has(b->dev, dev_fold(netns, ifindex)))
		return false;
	struct dev_key k = {.netns = netns, .ifindex = ifindex};
	return bpf_map_lookup_elem(&filter_dev, &k) != NULL;
}

/* A selected namespace: the Bloom filter's bit first, the hash only when it is set. */
static __always_inline bool netns_selected(__u32 netns)
{
	__u32 zero = 0;
	const struct filter_bloom *b = bpf_map_lookup_elem(&filter_bloom, &zero);
	if (b && !bloom_has(b->netns, netns))
		return false;
	return bpf_map_lookup_elem(&filter_netns, &netns) != NULL;
}

/* Whether a packet not yet tracked should start being tracked here. */
static __always_inline bool selected(__u32 netns, __u32 ifindex, const struct pkt_meta *m)
{
	if (!filter_flags)
		return true;
	if ((filter_flags & FILTER_NETNS) && netns_selected(netns))
		return true;
	if ((filter_flags & FILTER_DEV) && dev_selected(netns, ifindex))
		return true;
	if (filter_flags & FILTER_ADDR) {
		__u32 family = 0;
		if (m->eth_proto == ETH_P_IP || m->eth_proto == ETH_P_ARP)
			family = 4;
		else if (m->eth_proto == ETH_P_IPV6)
			family = 6;
		if (family && (addr_selected(family, m->saddr) || addr_selected(family, m->daddr)))
			return true;
	}
	if ((filter_flags & FILTER_PORT) && (m->l4_proto == IPPROTO_TCP_ || m->l4_proto == IPPROTO_UDP_)) {
		struct port_key k = {.port = m->dport, .proto = m->l4_proto};
		if (bpf_map_lookup_elem(&filter_port, &k))
			return true;
	}
	return false;
}

/*
 * The frame as the device holds it, from its Ethernet header: the address of
 * its first byte (0 if the device, of ARPHRD type dev_type, 0 for none, has no
 * Ethernet header or none is set), the bytes readable there (the linear part)
 * and its length on the wire.
 */
static __always_inline __u64 frame_at(struct sk_buff *skb, __u16 dev_type, __u32 *linear, __u32 *wire)
{
	__u16 mac = skb->mac_header;
	if (mac == MAC_HEADER_UNSET || (dev_type != ARPHRD_ETHER && dev_type != ARPHRD_LOOPBACK))
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
static __always_inline bool expr_matches(struct sk_buff *skb, __u16 dev_type)
{
	__u32 linear = 0, wire = 0;
	__u64 frame = frame_at(skb, dev_type, &linear, &wire);
	return frame && pcap_filter(frame, linear, wire);
}

/* Copies the frame's first snap_len bytes after an event (packet capture). */
static __always_inline void snapshot(struct frame_snap *s, struct sk_buff *skb, __u16 dev_type)
{
	__u32 linear = 0, wire = 0;
	__u64 frame = frame_at(skb, dev_type, &linear, &wire);
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

static __always_inline bool benign_packet_is(enum benign_packet p, const struct pkt_meta *m)
{
	switch (p) {
	case BENIGN_ANY_PACKET:
		return true;
	case BENIGN_ECHO_REPLY:
		return (m->l4_proto == IPPROTO_ICMP_ && m->icmp_type == 0) ||
		       (m->l4_proto == IPPROTO_ICMPV6_ && m->icmp_type == 129);
	case BENIGN_IPV4_MULTICAST:
		return m->eth_proto == ETH_P_IP && (m->daddr[0] & 0xf0) == 0xe0;
	case BENIGN_IPV6_MULTICAST:
		return m->eth_proto == ETH_P_IPV6 && m->daddr[0] == 0xff;
	case BENIGN_TCP_NO_SYN:
		return m->l4_proto == IPPROTO_TCP_ && !(m->tcp_flags & 0x02);
	}
	return false;
}

/* A drop that is no failure (see benign_count). */
static __always_inline bool benign_drop(__u64 location, __u32 reason, const struct pkt_meta *m)
{
	for (__u32 i = 0; i < BENIGN_MAX; i++) {
		if (i >= benign_count)
			break;
		if (location < benign_start[i] || location >= benign_end[i])
			continue;
		if (!benign_any_reason[i] && reason != benign_reason[i][0] && reason != benign_reason[i][1])
			continue;
		if (benign_packet_is(benign_packet_of[i], m))
			return true;
	}
	return false;
}

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
		long err = bpf_map_update_elem(&hists, &pair, z, BPF_NOEXIST);
		h = bpf_map_lookup_elem(&hists, &pair);
		if (!h) {
			/* -E2BIG: max_entries reached; -ENOMEM: the per-CPU
			 * copies could not be allocated (memory cgroup limit) */
			stat_inc(err == -ENOMEM_ ? STAT_HIST_NOMEM : STAT_HIST_FULL);
			return;
		}
	}
	__u32 b = hist_bucket(delta);
	if (b >= HIST_BUCKETS)
		b = HIST_BUCKETS - 1;
	/* this CPU's copy: only a program nested on this CPU (a hooked
	 * tracepoint in a hard interrupt) could interleave, and lose one count */
	h->count += 1;
	h->sum_ns += delta;
	h->buckets[b] += 1;
	if (delta > h->max_ns)
		h->max_ns = delta;
	stat_inc(STAT_HIST_UPDATES);
}

/* ---- the observation ---- */

/*
 * When a packet was last tracked at a hop, and whether nothing was tracked
 * for long enough that no entry can match (an entry older than stale_ns
 * matches nothing, at a hop or at an end): an untracked skb is then known as
 * one without a lookup and without a clock read. This is what the traffic
 * of containers nobody selected pays while the selected ones are idle.
 *
 * One word: bit 0 set is "quiet", the other bits the last tracked time (ns).
 * The programs store the time, at most every stale_ns / 8 (a store to a line
 * all CPUs read, a few times a second), and so leave the quiet state; the
 * loader (tracer/loader/quiet.go) reads the word through its mapping and
 * sets the bit with a compare-and-swap once the time is stale_ns + stale_ns /
 * 8 old, so a store made meanwhile wins. A clock read costs more than the
 * rest of an untracked packet's run at a device.
 */
struct activity {
	__u64 word;
};

#define ACTIVITY_QUIET 1ULL

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_MMAPABLE);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct activity);
} activity SEC(".maps");

static __always_inline void note_activity(__u64 now)
{
	__u32 zero = 0;
	struct activity *a = bpf_map_lookup_elem(&activity, &zero);
	if (!a)
		return;
	__u64 w = a->word;
	if ((w & ACTIVITY_QUIET) || (__s64)(now - w) > (__s64)(stale_ns / 8))
		a->word = now & ~ACTIVITY_QUIET;
}

/* Whether no entry can match. */
static __always_inline bool quiet(void)
{
	__u32 zero = 0;
	struct activity *a = bpf_map_lookup_elem(&activity, &zero);
	return a && (a->word & ACTIVITY_QUIET);
}

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

/* The in-flight table's set for an skb address. */
static __always_inline struct track_set *track_set_of(__u64 addr)
{
	__u32 i = ptr_hash(addr) & set_mask;
	return bpf_map_lookup_elem(&by_skb, &i);
}

/* An skb's in-flight entry, NULL when it has none. */
static __always_inline struct pkt_track *track_find(__u64 addr)
{
	struct track_set *s = track_set_of(addr);
	if (!s)
		return NULL;
	if (s->skb[0] == addr)
		return &s->t[0];
	if (s->skb[1] == addr)
		return &s->t[1];
	if (s->skb[2] == addr)
		return &s->t[2];
	if (s->skb[3] == addr)
		return &s->t[3];
	return NULL;
}

/* A new in-flight entry for an skb (see by_skb for the way it takes). */
static __always_inline void track_put(__u64 addr, const struct pkt_track *f, __u64 now)
{
	struct track_set *s = track_set_of(addr);
	if (!s)
		return;
	__u32 w = TRACK_WAYS, stale = TRACK_WAYS, oldest = 0;
	__u64 oldest_ts = ~0ULL;
#pragma unroll
	for (__u32 k = 0; k < TRACK_WAYS; k++) {
		__u64 key = s->skb[k];
		if (key == addr) {
			w = k;
			break;
		}
		if (key == 0) {
			if (w == TRACK_WAYS)
				w = k;
			continue;
		}
		__u64 ts = s->t[k].last_ts;
		if (stale == TRACK_WAYS && (__s64)(now - ts) >= (__s64)stale_ns)
			stale = k;
		if (ts < oldest_ts) {
			oldest_ts = ts;
			oldest = k;
		}
	}
	if (w == TRACK_WAYS)
		w = stale;
	if (w == TRACK_WAYS) {
		w = oldest;
		stat_inc(STAT_EVICTED);
	}
	/* a bound the verifier can see */
	w &= TRACK_WAYS - 1;
	WRITE_ONCE(s->skb[w], 0);
	barrier();
	s->t[w] = *f;
	barrier();
	WRITE_ONCE(s->skb[w], addr);
}

/* The skb is gone: its in-flight entry, if it has one, is freed. */
static __always_inline void track_drop(__u64 addr)
{
	struct track_set *s = track_set_of(addr);
	if (!s)
		return;
#pragma unroll
	for (__u32 k = 0; k < TRACK_WAYS; k++)
		if (s->skb[k] == addr)
			WRITE_ONCE(s->skb[k], 0);
}

/* The clone table's slot for a data head. */
static __always_inline struct pkt_track *head_slot(__u64 head)
{
	__u32 i = ptr_hash(head) & head_mask;
	return bpf_map_lookup_elem(&by_head, &i);
}

/* The clone table's entry for a data head, NULL when its slot holds another. */
static __always_inline struct pkt_track *head_find(__u64 head)
{
	struct pkt_track *s = head_slot(head);
	return s && s->head == head ? s : NULL;
}

/*
 * An skb's entries: *t by its address, else, for a cloned skb, *h by its
 * data head (a clone of a tracked packet). Only a cloned skb can be such a
 * clone (skb->cloned is sticky: an original whose clones are gone keeps it),
 * so an untracked skb costs one lookup, two when cloned. Returns whether
 * either was found: the verifier refuses the caller's t | h.
 */
static __always_inline bool skb_find(struct sk_buff *skb, struct pkt_track **t, struct pkt_track **h)
{
	*h = NULL;
	*t = track_find((__u64)skb);
	if (*t)
		return true;
	if (!BPF_CORE_READ_BITFIELD(skb, cloned))
		return false;
	*h = head_find((__u64)skb->head);
	return *h != NULL;
}

/* A new packet's clone entry: the key last, so a reader that sees it sees the rest. */
static __always_inline void head_put(const struct pkt_track *t)
{
	struct pkt_track *s = head_slot(t->head);
	if (!s)
		return;
	WRITE_ONCE(s->head, 0);
	s->pkt_id = t->pkt_id;
	s->fp = t->fp;
	s->last_ts = t->last_ts;
	s->last = t->last;
	s->owns_head = t->owns_head;
	s->nat_fp = t->nat_fp;
	s->skb = t->skb;
	barrier();
	WRITE_ONCE(s->head, t->head);
}

/* The owner's end: its clone entry freed, unless another packet took the slot. */
static __always_inline void head_drop(__u64 head, __u64 owner)
{
	struct pkt_track *s = head_slot(head);
	if (s && s->head == head && s->skb == owner)
		WRITE_ONCE(s->head, 0);
}

static __always_inline bool is_end(__u8 hook)
{
	return hook == HOOK_KFREE_SKB || hook == HOOK_CONSUME_SKB || hook == HOOK_COPY_DATAGRAM;
}

/* Whether an untracked skb may start a path here: at a hop, or dropped before its first selected hop. */
static __always_inline bool can_start(__u8 hook)
{
	return !is_end(hook) || hook == HOOK_KFREE_SKB;
}

/*
 * Whether a pointer field holds a kernel address, not a value the kernel
 * packs into the same union (or NULL). The programs never load through
 * anything else: a load from such a value faults, and on kernels without
 * "bpf: ensure main program has an extable" (Debian's 5.10) the fault in a
 * program with a subprogram (a filter expression's pcap_filter) can find
 * the main program's kallsyms entry, whose exception table is NULL, and the
 * kernel panics in the table search.
 */
#define KERNEL_ADDR_MIN 0xffff000000000000ULL
#define kernel_addr(p)                                                                             \
	({                                                                                         \
		__u64 a_ = (__u64)(p);                                                             \
		/* opaque to the compiler, so the caller's NULL check, which the     */           \
		/* verifier needs on the pointer itself, is not folded into this test */           \
		barrier_var(a_);                                                                   \
		a_ >= KERNEL_ADDR_MIN;                                                             \
	})

static __always_inline __u32 sock_netns(struct sk_buff *skb)
{
	struct sock *sk = skb->sk;
	/* skb->sk shares a union with ip_defrag_offset: a queued IPv4 fragment
	 * freed on its queue's expiry holds its offset there */
	if (!sk || !kernel_addr(sk))
		return 0;
	return sk->__sk_common.skc_net.net->ns.inum;
}

/*
 * skb->len as the tracepoints see it: tcx ingress runs with the link-layer
 * header pushed back (skb->data at the MAC header), netif_receive_skb after
 * it was pulled.
 */
static __always_inline __u32 skb_len(struct sk_buff *skb, __u8 hook)
{
	__u32 len = skb->len;
	if (hook != HOOK_NETIF_RECEIVE_SKB || skb->mac_header == MAC_HEADER_UNSET)
		return len;
	unsigned char *head = skb->head;
	__u32 data = skb->data - head;
	if (data == skb->mac_header && len >= skb->mac_len)
		len -= skb->mac_len;
	return len;
}

/*
 * skb->dev shares a union with dev_scratch, which UDP uses while an skb waits
 * on a socket's queue (and the queued skb has no skb->sk: UDP passes the
 * socket along itself): at the end hooks the device is trusted only when the
 * value is a kernel address (dev_scratch packs a truesize, a length and two
 * flags, never one). Otherwise the namespace comes from the socket, with no
 * device. (A socket alone does not say where a packet was: an skb keeps its
 * sending socket across a veth into another namespace.) Every end hook, with
 * or without the drop reason, takes its device from here.
 */
static __always_inline struct net_device *end_dev(struct sk_buff *skb)
{
	struct net_device *dev = skb->dev;
	return dev && kernel_addr(dev) ? dev : NULL;
}

/* Where observe() takes the device from. */
enum dev_source {
	DEV_ARG = 0, /* the dev argument */
	DEV_END = 1, /* end_dev(skb), read only once the skb is known to be ours */
};

/*
 * The device's namespace, index and type. A hop's device is the kernel's
 * (direct loads). At an end hook skb->dev may be whatever the kernel left in
 * the union it shares: a kernel address passes end_dev() and still need not
 * be a device (an skb taken off an rbtree, a TCP out-of-order queue or an
 * IPv4 fragment queue, keeps its rb_node's left child there). Probe reads,
 * which fail instead of faulting, read it: a faulting load in these programs
 * can panic 5.10 (see kernel_addr()).
 */
static __always_inline __u16 dev_read(struct net_device *dev, enum dev_source dev_src, struct hop_key *cur)
{
	if (dev_src == DEV_ARG) {
		cur->netns = dev->nd_net.net->ns.inum;
		cur->ifindex = dev->ifindex;
		return dev->type;
	}
	/* straight into cur: the stack is shared with the filter expression's program */
	struct net *net = NULL;
	__u16 type = 0;
	bpf_core_read(&net, sizeof(net), &dev->nd_net.net);
	if (bpf_core_read(&cur->netns, sizeof(cur->netns), &net->ns.inum))
		cur->netns = 0;
	if (bpf_core_read(&cur->ifindex, sizeof(cur->ifindex), &dev->ifindex))
		cur->ifindex = 0;
	bpf_core_read(&type, sizeof(type), &dev->type);
	return type;
}

/*
 * One observation of an skb its caller looked up (skb_find(): t, h and
 * tracked), or knows no entry can match (the quiet state: both NULL, not
 * tracked). tcx: a tcx hop's context (its headers are read from the
 * packet), NULL at a tracepoint.
 */
static __always_inline int observe_in(void *ctx, struct __sk_buff *tcx, struct sk_buff *skb,
				      struct net_device *dev, __u8 hook, __u64 location, __u32 reason, enum dev_source dev_src,
				      struct pkt_track *t, struct pkt_track *h, bool tracked,
				      struct obs_scratch *sc)
{
	__u64 skb_addr = (__u64)skb;
	bool end = is_end(hook);
	bool may_start = can_start(hook);

	__u64 head = (__u64)skb->head;
	if (dev_src == DEV_END)
		dev = end_dev(skb);

	struct pkt_meta *meta = &sc->meta;
	__builtin_memset(meta, 0, sizeof(*meta));
	struct hop_key cur = {.hook = hook};
	__u8 flags = 0;
	bool ether = true;
	__u16 dev_type = 0; /* ARPHRD_*; 0: no device */
	if (dev) {
		dev_type = dev_read(dev, dev_src, &cur);
		ether = dev_type == ARPHRD_ETHER;
	} else {
		cur.netns = sock_netns(skb);
		if (cur.netns)
			flags |= EVENT_F_SOCK_NS;
	}
	/* namespace/device filters need no header parsing to say no */
	if (!tracked && filter_flags && !(filter_flags & (FILTER_ADDR | FILTER_PORT)) &&
	    !selected(cur.netns, cur.ifindex, meta))
		return 0;
	/* so does a filter expression: an untracked packet it rejects costs one run */
	if (!tracked && expr_filter && !expr_matches(skb, dev_type))
		return 0;

	/* the clock is read once the skb is known to matter: it costs more than the rejections above */
	__u64 now = bpf_ktime_get_ns();
	if (!tcx || tcx_probe_parse || dev_type != ARPHRD_ETHER || !tcx_parse(tcx, skb, meta)) {
		if (tcx)
			__builtin_memset(meta, 0, sizeof(*meta));
		parse(skb, ether, &sc->hb, meta);
	}
	__u64 fp = fingerprint(meta);
	__u64 nat_fp = nat_fingerprint(meta);
	__u64 pkt_id = 0;
	struct hop_key prev = {};
	__u64 prev_ts = 0;

	/* GRO merges segments into this skb between napi_gro_receive and
	 * netif_receive_skb: its length and flags change, it is the same packet. */
	bool owner_end = false; /* an end of the skb that may own a by_head entry */
	bool gro_merged = t && hook == HOOK_NETIF_RECEIVE_SKB && t->last.hook == HOOK_GRO_RECEIVE;
	if (t && now - t->last_ts < stale_ns && (t->fp == fp || (nat_fp && t->nat_fp == nat_fp) || gro_merged)) {
		pkt_id = t->pkt_id;
		prev = t->last;
		prev_ts = t->last_ts;
		if (t->fp != fp) {
			/* the same skb, only addresses or ports changed: NAT */
			if (!gro_merged)
				flags |= EVENT_F_NAT;
			t->fp = fp;
			t->nat_fp = nat_fp;
		}
		if (!end) {
			t->last = cur;
			t->last_ts = now;
			note_activity(now);
		}
		/* a clone made from here on finds this entry through by_head */
		if (end && t->owns_head)
			owner_end = true;
	} else {
		owner_end = end; /* whatever owned this address before: look */
		if (t)
			stat_inc(STAT_REUSED);
		if (t) /* a stale entry: by_head was not looked up yet */
			h = head_find(head);
		/* the packet's live state: its owner skb's entry, while it is that packet's */
		struct pkt_track *src = h;
		if (h) {
			__u64 owner = h->skb;
			struct pkt_track *o = track_find(owner);
			if (o && o->pkt_id == h->pkt_id)
				src = o;
		}
		if (src && src->fp == fp && now - src->last_ts < stale_ns) {
			/* a clone sharing the data of a tracked packet */
			pkt_id = src->pkt_id;
			prev = src->last;
			prev_ts = src->last_ts;
			flags |= EVENT_F_CLONE;
		} else {
			if (!may_start || !selected(cur.netns, cur.ifindex, meta) ||
			    (tracked && expr_filter && !expr_matches(skb, dev_type)) || !sampled(nat_fp ? nat_fp : fp))
				return 0;
			pkt_id = new_pkt_id();
			if (!pkt_id)
				return 0;
			flags |= EVENT_F_NEW;
			stat_inc(STAT_PACKETS);
		}
		struct pkt_track *fresh = &sc->fresh;
		fresh->pkt_id = pkt_id;
		fresh->fp = fp;
		fresh->head = head;
		fresh->last = cur;
		fresh->last_ts = now;
		fresh->nat_fp = nat_fp;
		fresh->skb = skb_addr;
		fresh->owns_head = !!(flags & EVENT_F_NEW);
		if (!end) {
			note_activity(now);
			track_put(skb_addr, fresh, now);
			if (flags & EVENT_F_NEW)
				head_put(fresh);
		}
	}

	if (BPF_CORE_READ_BITFIELD(skb, cloned))
		flags |= EVENT_F_CLONED;

	if (mode == MODE_LATENCY) {
		if (prev_ts && now >= prev_ts) {
			struct hop_key to = cur;
			if (hook == HOOK_KFREE_SKB && benign_drop(location, reason, meta)) {
				/* the reply was delivered to a raw socket's clone */
				to.hook = HOOK_CONSUME_SKB;
			} else if (hook == HOOK_KFREE_SKB) {
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
			e->len = skb_len(skb, hook);
			e->drop_reason = reason;
			e->cpu = bpf_get_smp_processor_id();
			e->hook = hook;
			e->flags = flags;
			e->pkt_type = BPF_CORE_READ_BITFIELD(skb, pkt_type);
			__builtin_memset(e->pad, 0, sizeof(e->pad));
			if (dev && dev_src == DEV_ARG)
				/* the kernel's device: its name array, zero-padded, by direct loads */
				__builtin_memcpy(e->ifname, dev->name, sizeof(e->ifname));
			else if (dev)
				bpf_probe_read_kernel_str(e->ifname, sizeof(e->ifname), dev->name);
			else
				__builtin_memset(e->ifname, 0, sizeof(e->ifname));
			e->meta = *meta;
			if (snap_len) {
				struct frame_snap *s = (void *)(e + 1);
				if (end)
					s->caplen = s->len = s->l3 = s->pad = 0;
				else
					snapshot(s, skb, dev_type);
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

	/*
	 * The skb is gone: forget its address, and its head when it owned the
	 * clone entry. Clones made before keep their own entries; a later skb
	 * on the same data (a TCP retransmission of a dropped segment) is a new
	 * packet.
	 */
	if (hook == HOOK_KFREE_SKB || hook == HOOK_CONSUME_SKB) {
		track_drop(skb_addr);
		if (owner_end)
			head_drop(head, skb_addr);
	}
	return 0;
}

/*
 * observe_in() with this nesting level's working memory. An observation
 * interrupted on its CPU by another keeps its own; one nested deeper than
 * NEST_LEVELS (never seen: it would need a program in a hard interrupt
 * interrupted again) is not made.
 */
static __always_inline int observe_found(void *ctx, struct __sk_buff *tcx, struct sk_buff *skb,
					 struct net_device *dev, __u8 hook, __u64 location, __u32 reason, enum dev_source dev_src,
					 struct pkt_track *t, struct pkt_track *h, bool tracked)
{
	__u32 zero = 0;
	__u32 *nest = bpf_map_lookup_elem(&obs_nest, &zero);
	if (!nest)
		return 0;
	__u32 level = *nest;
	if (level >= NEST_LEVELS)
		return 0;
	struct obs_scratch *sc = bpf_map_lookup_elem(&obs_scratch, &level);
	if (!sc)
		return 0;
	*nest = level + 1;
	int r = observe_in(ctx, tcx, skb, dev, hook, location, reason, dev_src, t, h, tracked, sc);
	*nest = level;
	return r;
}

/*
 * A tracepoint's observation. In the quiet state no entry can match and an
 * end that cannot start a path is over after one array load. Otherwise the
 * skb is looked up here, before observe_found() takes its nesting level and
 * working memory: an untracked consume or copy (most skbs freed on a host
 * are not ours) costs its one or two lookups and nothing more.
 */
static __always_inline int observe(void *ctx, struct sk_buff *skb, struct net_device *dev, __u8 hook,
				   __u64 location, __u32 reason, enum dev_source dev_src)
{
	bool q = quiet();
	bool may_start = can_start(hook);
	if (q && !may_start)
		return 0;
	struct pkt_track *t = NULL;
	struct pkt_track *h = NULL;
	bool tracked = false;
	if (!q) {
		tracked = skb_find(skb, &t, &h);
		if (!tracked && !may_start)
			return 0;
	}
	return observe_found(ctx, NULL, skb, dev, hook, location, reason, dev_src, t, h, tracked);
}

SEC("tp_btf/net_dev_queue")
int BPF_PROG(on_net_dev_queue, struct sk_buff *skb)
{
	return observe(ctx, skb, skb->dev, HOOK_NET_DEV_QUEUE, 0, 0, DEV_ARG);
}

SEC("tp_btf/net_dev_start_xmit")
int BPF_PROG(on_net_dev_start_xmit, struct sk_buff *skb, struct net_device *dev)
{
	return observe(ctx, skb, dev, HOOK_NET_DEV_START_XMIT, 0, 0, DEV_ARG);
}

SEC("tp_btf/net_dev_xmit")
int BPF_PROG(on_net_dev_xmit, struct sk_buff *skb, int rc, struct net_device *dev)
{
	return observe(ctx, skb, dev, HOOK_NET_DEV_XMIT, 0, 0, DEV_ARG);
}

SEC("tp_btf/netif_rx")
int BPF_PROG(on_netif_rx, struct sk_buff *skb)
{
	return observe(ctx, skb, skb->dev, HOOK_NETIF_RX, 0, 0, DEV_ARG);
}

SEC("tp_btf/napi_gro_receive_entry")
int BPF_PROG(on_napi_gro_receive_entry, struct sk_buff *skb)
{
	return observe(ctx, skb, skb->dev, HOOK_GRO_RECEIVE, 0, 0, DEV_ARG);
}

SEC("tp_btf/netif_receive_skb")
int BPF_PROG(on_netif_receive_skb, struct sk_buff *skb)
{
	return observe(ctx, skb, skb->dev, HOOK_NETIF_RECEIVE_SKB, 0, 0, DEV_ARG);
}

/* kfree_skb gained its reason argument in 5.17; the loader picks one of these. */
SEC("tp_btf/kfree_skb")
int BPF_PROG(on_kfree_skb, struct sk_buff *skb, void *location, enum skb_drop_reason reason)
{
	return observe(ctx, skb, NULL, HOOK_KFREE_SKB, (__u64)location, reason, DEV_END);
}

SEC("tp_btf/kfree_skb")
int BPF_PROG(on_kfree_skb_noreason, struct sk_buff *skb, void *location)
{
	return observe(ctx, skb, NULL, HOOK_KFREE_SKB, (__u64)location, 0, DEV_END);
}

/* consume_skb gained its location argument in 6.3; the loader picks one of these. */
SEC("tp_btf/consume_skb")
int BPF_PROG(on_consume_skb, struct sk_buff *skb, void *location)
{
	return observe(ctx, skb, NULL, HOOK_CONSUME_SKB, (__u64)location, 0, DEV_END);
}

SEC("tp_btf/consume_skb")
int BPF_PROG(on_consume_skb_noloc, struct sk_buff *skb)
{
	return observe(ctx, skb, NULL, HOOK_CONSUME_SKB, 0, 0, DEV_END);
}

SEC("tp_btf/skb_copy_datagram_iovec")
int BPF_PROG(on_skb_copy_datagram_iovec, struct sk_buff *skb, int len)
{
	return observe(ctx, skb, NULL, HOOK_COPY_DATAGRAM, 0, 0, DEV_END);
}

/* ---- the tcx engine ---- */

extern void *bpf_cast_to_kern_ctx(void *obj) __ksym;

/*
 * Whether the selection may take this untracked packet, read from the packet
 * itself (direct packet access, no probe reads). True when unsure: observe()
 * decides; this only rejects what observe() would reject.
 */
/* Whether a TCP or UDP packet goes to a selected (published) port; true when unsure. */
static __always_inline bool tcx_port_maybe(void *l4, __u8 proto, void *end)
{
	if (proto != IPPROTO_TCP_ && proto != IPPROTO_UDP_)
		return false;
	__be16 *ports = l4;
	if ((void *)(ports + 2) > end)
		return true;
	struct port_key k = {.port = bpf_ntohs(ports[1]), .proto = proto};
	return bpf_map_lookup_elem(&filter_port, &k) != NULL;
}

static __always_inline bool tcx_addr_selected(struct __sk_buff *ctx)
{
	void *end = (void *)(long)ctx->data_end;
	__be16 proto;
	void *l3 = tcx_l3(ctx, end, &proto);
	/* a short frame, stacked tags, or headers parse() would read elsewhere: let observe() decide */
	if (!l3)
		return true;
	if (proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = l3;
		if ((void *)(ip + 1) > end)
			return true;
		if (addr_selected(4, (__u8 *)&ip->saddr) || addr_selected(4, (__u8 *)&ip->daddr))
			return true;
		if (!(filter_flags & FILTER_PORT) || (ip->frag_off & bpf_htons(0x1fff)))
			return false;
		return tcx_port_maybe((void *)ip + (ip->ihl & 0xf) * 4, ip->protocol, end);
	}
	if (proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = l3;
		if ((void *)(ip6 + 1) > end)
			return true;
		if (addr_selected(6, (__u8 *)&ip6->saddr) || addr_selected(6, (__u8 *)&ip6->daddr))
			return true;
		if (!(filter_flags & FILTER_PORT))
			return false;
		if (ip6->nexthdr != IPPROTO_TCP_ && ip6->nexthdr != IPPROTO_UDP_)
			return true; /* extension headers: observe() walks them */
		return tcx_port_maybe(ip6 + 1, ip6->nexthdr, end);
	}
	if (proto == bpf_htons(ETH_P_ARP)) {
		struct arp_ipv4 *arp = l3;
		if ((void *)(arp + 1) > end)
			return true;
		if (arp->ptype != bpf_htons(ETH_P_IP) || arp->plen != 4)
			return false;
		return addr_selected(4, arp->sip) || addr_selected(4, arp->tip);
	}
	return false;
}

/*
 * Whether the selection takes an untracked packet at this device, decided
 * without header parsing (Bloom bits, hash lookups, direct packet access).
 */
static __always_inline bool tcx_selected(struct __sk_buff *ctx, struct net_device *dev)
{
	if (!filter_flags)
		return true;
	__u32 netns = dev->nd_net.net->ns.inum;
	if ((filter_flags & FILTER_NETNS) && netns_selected(netns))
		return true;
	if ((filter_flags & FILTER_DEV) && dev_selected(netns, dev->ifindex))
		return true;
	if (filter_flags & (FILTER_ADDR | FILTER_PORT)) {
		if (dev->type != ARPHRD_ETHER)
			return true;
		return tcx_addr_selected(ctx);
	}
	return false;
}

/*
 * The sampling key of an untracked packet, read from the packet itself:
 * nat_fingerprint() of what parse() would find. 0 when unsure (VLAN tags,
 * IPv6 extension headers, a short packet): observe() decides from the
 * parsed headers.
 */
static __always_inline __u64 tcx_sample_key(struct __sk_buff *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct ethhdr_ *eth = data;
	if ((void *)(eth + 1) > end || eth->proto != ctx->protocol)
		return 0;
	__u16 eth_proto = bpf_ntohs(eth->proto);
	__u16 ip_len, ip_id;
	__u8 proto;
	void *l4;
	if (eth_proto == ETH_P_IP) {
		struct iphdr *ip = (void *)(eth + 1);
		if ((void *)(ip + 1) > end)
			return 0;
		ip_len = bpf_ntohs(ip->tot_len);
		ip_id = bpf_ntohs(ip->id);
		proto = ip->protocol;
		if (ip->frag_off & bpf_htons(0x1fff))
			return nat_mix(eth_proto, ip_len, ip_id, proto, 0, 0, 0, 0, 0, 0);
		l4 = (void *)ip + (ip->ihl & 0xf) * 4;
	} else if (eth_proto == ETH_P_IPV6) {
		struct ipv6hdr *ip6 = (void *)(eth + 1);
		if ((void *)(ip6 + 1) > end)
			return 0;
		ip_len = bpf_ntohs(ip6->payload_len) + 40;
		ip_id = bpf_ntohs(*(__be16 *)&ip6->flow_lbl[1]);
		proto = ip6->nexthdr;
		if (proto == 0 || proto == 43 || proto == 60)
			return 0;
		l4 = ip6 + 1;
	} else {
		return 0;
	}
	if (proto == IPPROTO_TCP_) {
		struct tcphdr *th = l4;
		if ((void *)(th + 1) > end)
			return 0;
		return nat_mix(eth_proto, ip_len, ip_id, proto, ((__u8 *)th)[13], bpf_ntohl(th->seq),
			       bpf_ntohl(th->ack_seq), 0, 0, 0);
	}
	if (proto == IPPROTO_ICMP_ || proto == IPPROTO_ICMPV6_) {
		struct icmp_echo *ih = l4;
		if ((void *)(ih + 1) > end)
			return 0;
		return nat_mix(eth_proto, ip_len, ip_id, proto, 0, 0, 0, bpf_ntohs(ih->seq), ih->type, ih->code);
	}
	if (proto == IPPROTO_UDP_ && l4 + sizeof(struct udphdr) > end)
		return 0; /* parse() would leave the ports out: let it decide */
	return nat_mix(eth_proto, ip_len, ip_id, proto, 0, 0, 0, 0, 0, 0);
}

/* Whether sampling turns this packet away, decided from the packet (a key of 0 is unsure: observe() decides). */
static __always_inline bool tcx_unsampled(struct __sk_buff *ctx)
{
	if (sample_n <= 1)
		return false;
	__u64 key = tcx_sample_key(ctx);
	return key && !sampled(key);
}

/*
 * A tcx hop. The cheap rejection at a device: a packet neither tracked (by
 * address, or by head for a clone) nor selected here costs one or two
 * lookups (none in the quiet state), no header parsing and no clock read; a
 * tracked one goes on to observe() with its entries already found.
 */
static __always_inline void tcx_observe(struct __sk_buff *ctx, __u8 hook)
{
	struct sk_buff *skb = bpf_cast_to_kern_ctx(ctx);
	struct net_device *dev = skb->dev;
	if (!dev)
		return;
	/*
	 * Not sampled: decided from the packet before any lookup. A tracked
	 * packet keeps its sampling key at every hop (NAT leaves it alone, and
	 * a packet whose key changed would not match its entry either), except
	 * an skb GRO merged segments into after it was tracked (a --detail
	 * hop): its length changed, and a merged skb carries a GSO size.
	 * sample_n comes first: without sampling the verifier then drops the
	 * GSO size's load, from the shared info at the data buffer's end.
	 */
	if (sample_n > 1 && !ctx->gso_size && tcx_unsampled(ctx))
		return;
	struct pkt_track *t = NULL;
	struct pkt_track *h = NULL;
	bool tracked = false;
	if (!quiet()) /* nothing tracked lately: no entry can match */
		tracked = skb_find(skb, &t, &h);
	if (!tracked) {
		if (!tcx_selected(ctx, dev))
			return;
		/* a GSO packet's key, now that it is known untracked */
		if (sample_n > 1 && ctx->gso_size && tcx_unsampled(ctx))
			return;
	}
	observe_found(ctx, ctx, skb, dev, hook, 0, 0, DEV_ARG, t, h, tracked);
}

/* tcx egress fires just before net_dev_queue: it is that hop. */
SEC("tcx/egress")
int on_tcx_egress(struct __sk_buff *ctx)
{
	tcx_observe(ctx, HOOK_NET_DEV_QUEUE);
	return TCX_NEXT;
}

/* tcx ingress fires just after netif_receive_skb: it is that hop. */
SEC("tcx/ingress")
int on_tcx_ingress(struct __sk_buff *ctx)
{
	tcx_observe(ctx, HOOK_NETIF_RECEIVE_SKB);
	return TCX_NEXT;
}
