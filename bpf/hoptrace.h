/* SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause */
/*
 * Structures shared between the BPF programs and Go userspace. bpf2go
 * generates the Go types from these definitions (-type), so this header is
 * the single source of truth for the wire format of every event.
 */
#ifndef HOPTRACE_H
#define HOPTRACE_H

/* Where in the kernel an event was observed. */
enum hook {
	HOOK_NONE = 0,
	HOOK_NET_DEV_QUEUE = 1,      /* egress: enqueued to the device (before the qdisc) */
	HOOK_NET_DEV_START_XMIT = 2, /* egress: handed to the driver (after the qdisc) */
	HOOK_NET_DEV_XMIT = 3,       /* egress: driver returned */
	HOOK_NETIF_RX = 4,           /* ingress: queued to the per-CPU backlog (veth peer) */
	HOOK_GRO_RECEIVE = 5,        /* ingress: entered GRO (veth with GRO/XDP) */
	HOOK_NETIF_RECEIVE_SKB = 6,  /* ingress: taken by the stack on this device */
	HOOK_KFREE_SKB = 7,          /* end: dropped (with a reason from 5.17) */
	HOOK_CONSUME_SKB = 8,        /* end: consumed (freed after normal processing) */
	HOOK_COPY_DATAGRAM = 9,      /* end: copied to a socket's reader */
	HOOK_MAX = 10,
};

/* Event flags. */
enum event_flag {
	EVENT_F_NEW = 1,    /* first sighting: a new packet identity was created */
	EVENT_F_CLONE = 2,  /* identity found through the shared data head (a clone) */
	EVENT_F_CLONED = 4, /* skb->cloned was set */
	EVENT_F_SOCK_NS = 8, /* no device: the netns came from the socket */
	EVENT_F_NAT = 16,    /* same skb, headers rewritten by NAT (addresses/ports only) */
};

/* Parsed packet headers, enough to name a packet and to fingerprint it. */
struct pkt_meta {
	__u8 saddr[16]; /* IPv4 in the first 4 bytes */
	__u8 daddr[16];
	__u16 eth_proto; /* host byte order: 0x0800, 0x86dd, 0x0806, ... */
	__u16 sport;     /* host byte order, 0 where the protocol has none */
	__u16 dport;
	__u16 ip_len;    /* IPv4 total length / IPv6 payload length + 40 */
	__u32 tcp_seq;
	__u32 tcp_ack;
	__u16 ip_id;
	__u16 icmp_id;
	__u16 icmp_seq;
	__u8 l4_proto;
	__u8 tcp_flags;
	__u8 icmp_type;
	__u8 icmp_code;
	__u16 arp_op;
};

/* One observation of one packet at one hook. */
struct event {
	__u64 ts_ns;    /* bpf_ktime_get_ns() */
	__u64 pkt_id;   /* packet identity, stable across hops and clones */
	__u64 skb;      /* skb address (clones differ) */
	__u64 location; /* kfree_skb / consume_skb caller, 0 elsewhere */
	__u32 netns;    /* network namespace inode of the device */
	__u32 ifindex;  /* device ifindex in that namespace, 0 if none */
	__u32 iif;      /* skb->skb_iif */
	__u32 len;      /* skb->len */
	__u32 drop_reason;
	__u16 cpu;
	__u8 hook;      /* enum hook */
	__u8 flags;     /* enum event_flag */
	__u8 pkt_type;
	__u8 pad[7];
	char ifname[16];
	struct pkt_meta meta;
};

/*
 * With a packet capture (snap_len > 0), every event record is followed by
 * this header and snap_len bytes: the frame's first bytes as the kernel held
 * them at that hook (the headers; never more than snap_len).
 */
struct frame_snap {
	__u32 len;    /* the frame's length from its first byte (wire length) */
	__u16 caplen; /* bytes captured, at most snap_len */
	__u8 l3;      /* 1: starts at the network header (no link-layer header) */
	__u8 pad;
};

/* Key of a device: ifindex values repeat across namespaces. */
struct dev_key {
	__u32 netns;
	__u32 ifindex;
};

/* Counters in the stats per-CPU array. */
enum stat_counter {
	STAT_UNUSED = 0,      /* formerly events written; userspace counts what it reads */
	STAT_LOST = 1,        /* events lost: ring buffer full */
	STAT_PACKETS = 2,     /* packet identities created */
	STAT_REUSED = 3,      /* skb addresses reused by a different packet */
	STAT_HIST_UPDATES = 4, /* hop pairs added to latency histograms */
	STAT_HIST_FULL = 5,   /* hop pairs not recorded: histogram map full */
	STAT_HIST_NOMEM = 6,  /* hop pairs not recorded: no kernel memory for a new histogram */
	STAT_EVICTED = 7,     /* packets in flight pushed out of the in-flight table by a new one */
	STAT_MAX = 8,
};

/* Latency mode: a hop is (device, hook); a pair of hops keys a histogram. */
struct hop_key {
	__u32 netns;
	__u32 ifindex;
	__u8 hook;
	/* kfree_skb end hops in latency mode: the drop reason's low 24 bits,
	 * so drops are counted by reason; zero everywhere else. */
	__u8 drop_reason[3];
};

struct hop_pair {
	struct hop_key from;
	struct hop_key to;
};

/*
 * Log-linear latency buckets: values below 2^HIST_SUB_BITS ns have a bucket
 * each; above, every power of two is split into 2^HIST_SUB_BITS sub-buckets
 * (6.25% wide with 4 bits), which keeps percentiles within a few percent.
 */
#define HIST_SUB_BITS 4
#define HIST_SUB_COUNT (1 << HIST_SUB_BITS)
#define HIST_MAX_POW 40 /* 2^40 ns ~ 18 minutes: anything longer lands in the last bucket */
#define HIST_BUCKETS ((HIST_MAX_POW - HIST_SUB_BITS + 2) * HIST_SUB_COUNT)

struct hist {
	__u64 count;
	__u64 sum_ns;
	__u64 max_ns;
	__u64 buckets[HIST_BUCKETS];
};

#endif /* HOPTRACE_H */
