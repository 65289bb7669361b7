// SPDX-License-Identifier: (Apache-2.0 OR GPL-2.0)
/*
 * xdp_redirect: hand the frames the Flagella dataplane owns to its AF_XDP socket, pass the rest
 * to the kernel.
 *
 * One decision per frame:
 *   shorter than Ethernet -> never owned (passed to the kernel, which drops it)
 *   IPv4, IPv6            -> pod interfaces (config.uplink_filter == 0): owned
 *                            the uplink (config.uplink_filter == 1): owned only when
 *                              (a) IPv4 to config.underlay_ipv4, UDP, destination port
 *                                  config.vxlan_port or config.geneve_port, not a non-first
 *                                  fragment (tunnel traffic from other nodes), or
 *                              (a') IPv4 to config.underlay_ipv4, TCP or UDP, destination
 *                                  port in config.masq_port_first..=masq_port_last, not a
 *                                  non-first fragment (replies to masqueraded pod flows), or
 *                              (a'') IPv4 to config.underlay_ipv4, an ICMP destination
 *                                  unreachable / time exceeded quoting TCP or UDP from
 *                                  config.underlay_ipv4 and a masquerade source port (a
 *                                  router's error about a masqueraded flow), or
 *                              (b) IPv4, TCP or UDP, not a non-first fragment, and
 *                                  (destination, protocol, destination port) is in
 *                                  owned_ports (NodePort frontends: the node's address, but
 *                                  only those ports), or
 *                              (c) the destination is in owned_v4 / owned_v6 (destinations the
 *                                  dataplane owns: local pods, external IPs);
 *                            everything else (the host's own SSH, etcd, pings, ...) is the
 *                            kernel's, so the host's network never depends on the dataplane
 *   ARP                   -> owned only if config.redirect_arp
 *   any other EtherType   -> owned only if config.redirect_non_ip
 * On the uplink, an IP frame too short (or with an IHL too small) for the headers the decision
 * needs is passed to the kernel and counted as truncated.
 *
 * An owned frame goes to the AF_XDP socket registered for its receive queue
 * (xsks_map[rx_queue_index]); when that slot is empty bpf_redirect_map returns its fallback:
 * XDP_PASS (a queue without a socket keeps working through the kernel), or XDP_DROP when
 * config.drop_no_socket is set (the program pinned in bpffs outlives the dataplane process, and
 * a pod's frame must never reach the node's kernel unpoliced between two processes).
 *
 * Rust twins of the shared structs and constants: xdp-redirect/src/lib.rs (RawRedirectConfig,
 * RedirectCounters, OWNED_MAX_ENTRIES, XSKMAP_MAX_ENTRIES) and src/owned_port.rs (OwnedPort,
 * OWNED_PORTS_MAX_ENTRIES); tests there check the structs' sizes and field offsets against the
 * generated skeleton types.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

/* Queues per interface the XSKMAP can hold. Rust twin: XSKMAP_MAX_ENTRIES in lib.rs. */
#define XSKMAP_MAX_ENTRIES 64

/* Prefixes per family in owned_v4 / owned_v6. Rust twin: OWNED_MAX_ENTRIES in lib.rs. */
#define OWNED_MAX_ENTRIES 65536

/* (address, protocol, port) entries in owned_ports. Rust twin: OWNED_PORTS_MAX_ENTRIES in
 * owned_port.rs. */
#define OWNED_PORTS_MAX_ENTRIES 16384

/* The fragment offset bits of iphdr.frag_off (linux/ip.h has them only in the kernel's copy). */
#define IP_FRAG_OFFSET 0x1fff

/* What the dataplane owns. Rust twin: RawRedirectConfig in lib.rs. */
struct xdp_redirect_config {
	__u32 redirect_arp;    /* 0: ARP goes to the kernel; 1: to the dataplane */
	__u32 redirect_non_ip; /* 0: other EtherTypes go to the kernel; 1: to the dataplane */
	__u32 uplink_filter;   /* 0: all IPv4/IPv6 is owned; 1: only tunnel traffic and owned_v4/v6 */
	__be32 underlay_ipv4;  /* network byte order; 0: none (no tunnel traffic is owned) */
	__be16 vxlan_port;     /* UDP destination ports of tunnel traffic, network byte order; */
	__be16 geneve_port;    /* 0: that encapsulation is not owned */
	__u16 masq_port_first; /* masquerade source ports, host byte order, inclusive; */
	__u16 masq_port_last;  /* first 0: no masquerade (no reply is owned) */
	__u32 drop_no_socket;  /* 0: an owned frame with no socket on its queue is passed to the
				* kernel; 1: dropped (a pinned program while no dataplane runs) */
};

/* Where frames went, per CPU. Rust twin: RedirectCounters in lib.rs. */
struct xdp_redirect_counters {
	__u64 redirected; /* owned, and a socket took it */
	__u64 no_socket;  /* owned, but no socket on this queue: passed to the kernel */
	__u64 not_owned;  /* the configuration or the owned maps give it to the kernel */
	__u64 truncated;  /* too short (or malformed) for the headers the decision needs: passed */
	__u64 no_socket_dropped; /* owned, no socket on this queue, drop_no_socket set: dropped */
};

/* Keys of the owned-destination tries (BPF_MAP_TYPE_LPM_TRIE: prefix length, then the address
 * in network byte order). */
struct owned_v4_key {
	__u32 prefixlen;
	__u8 addr[4];
};

struct owned_v6_key {
	__u32 prefixlen;
	__u8 addr[16];
};

/* Key of owned_ports: an exact IPv4 destination, IP protocol and destination port. Rust twin:
 * OwnedPort::key in owned_port.rs. */
struct owned_port_key {
	__be32 addr;    /* network byte order */
	__u8 protocol;  /* IPPROTO_TCP or IPPROTO_UDP */
	__u8 pad;       /* always 0 */
	__be16 port;    /* network byte order */
};

struct {
	__uint(type, BPF_MAP_TYPE_XSKMAP);
	__uint(max_entries, XSKMAP_MAX_ENTRIES);
	__type(key, __u32);   /* rx_queue_index */
	__type(value, __u32); /* AF_XDP socket fd (as written from user space) */
} xsks_map SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct xdp_redirect_config);
} config_map SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct xdp_redirect_counters);
} counters_map SEC(".maps");

/*
 * Destinations the dataplane owns on the uplink (only read when uplink_filter is 1): local pod
 * addresses and external IPs of services (masquerade replies are owned by port, through the
 * config; NodePorts by port, through owned_ports). The
 * value is 1 (reserved: it may say why the destination is owned one day). LPM tries must be
 * created without preallocation.
 */
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, OWNED_MAX_ENTRIES);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct owned_v4_key);
	__type(value, __u32);
} owned_v4 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, OWNED_MAX_ENTRIES);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct owned_v6_key);
	__type(value, __u32);
} owned_v6 SEC(".maps");

/*
 * Transport ports the dataplane owns on an address that otherwise stays the host's: NodePort
 * frontends on the node's own address (only read when uplink_filter is 1). An exact hash, not
 * a trie: a port is never a prefix. The value is 1 (reserved, as in owned_v4).
 */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, OWNED_PORTS_MAX_ENTRIES);
	__type(key, struct owned_port_key);
	__type(value, __u32);
} owned_ports SEC(".maps");

enum decision {
	NOT_OWNED,
	OWNED,
	TRUNCATED,
};

/*
 * The config, read into registers at fixed offsets before any branch, on purpose. Reading a
 * field only on the path that needs it lets clang merge two such reads into one load from
 * cfg + (an offset that depends on the path); without CAP_PERFMON the verifier keeps its
 * Spectre v1 mitigations and refuses that pointer arithmetic ("tried to add from different
 * maps, paths or scalars ... prohibited for !root"), so the program would not load under the
 * systemd unit's CAP_BPF + CAP_NET_ADMIN. The empty asm statements keep the loads where they are.
 */
struct config_regs {
	__u32 redirect_arp;
	__u32 redirect_non_ip;
	__u32 uplink_filter;
	__u32 underlay_ipv4;
	__u32 vxlan_port;
	__u32 geneve_port;
	__u32 masq_port_first;
	__u32 masq_port_last;
	__u32 drop_no_socket;
};

static __always_inline struct config_regs read_config(const struct xdp_redirect_config *cfg)
{
	struct config_regs c = {
		.redirect_arp = cfg->redirect_arp,
		.redirect_non_ip = cfg->redirect_non_ip,
		.uplink_filter = cfg->uplink_filter,
		.underlay_ipv4 = cfg->underlay_ipv4,
		.vxlan_port = cfg->vxlan_port,
		.geneve_port = cfg->geneve_port,
		.masq_port_first = cfg->masq_port_first,
		.masq_port_last = cfg->masq_port_last,
		.drop_no_socket = cfg->drop_no_socket,
	};
	asm volatile("" : "+r"(c.redirect_arp), "+r"(c.redirect_non_ip), "+r"(c.uplink_filter));
	asm volatile("" : "+r"(c.underlay_ipv4), "+r"(c.vxlan_port), "+r"(c.geneve_port));
	asm volatile("" : "+r"(c.masq_port_first), "+r"(c.masq_port_last), "+r"(c.drop_no_socket));
	return c;
}

/*
 * The first byte after the IPv4 options, reached in constant 4-byte steps. Adding ihl * 4 to
 * the packet pointer in one go is what the verifier refuses without CAP_PERFMON ("pointer
 * arithmetic with it prohibited for !root": a variable offset on a packet pointer), so the
 * program steps over the option words one by one; the empty asm keeps clang from folding the
 * steps back into that one variable addition.
 *
 * Nested, not a loop or a flat chain of ifs: once ihl is known to be small, no further
 * comparison is made. Without CAP_PERFMON the verifier also walks the mispredicted side of
 * every branch whose outcome it already knows (Spectre v1), and a chain of such branches
 * multiplies those walks past its 1M-instruction limit.
 */
#define OPTION_WORD(words, more)                                                              \
	if (ihl > (words)) {                                                                  \
		end += 4;                                                                     \
		asm volatile("" : "+r"(end));                                                 \
		more                                                                          \
	}

static __always_inline const void *after_options(const struct iphdr *ip)
{
	const __u8 *end = (const void *)(ip + 1);
	__u32 ihl = ip->ihl;
	/* ihl 5 (no options) to 15 (40 bytes of options): one level per option word. */
	OPTION_WORD(5, OPTION_WORD(6, OPTION_WORD(7, OPTION_WORD(8, OPTION_WORD(9,
	OPTION_WORD(10, OPTION_WORD(11, OPTION_WORD(12, OPTION_WORD(13, OPTION_WORD(14,
	))))))))))
	return end;
}

static __always_inline int is_masquerade_port(__be16 port, const struct config_regs *c)
{
	__u32 host_port = bpf_ntohs(port);
	return c->masq_port_first != 0 && host_port >= c->masq_port_first &&
	       host_port <= c->masq_port_last;
}

/*
 * An ICMPv4 error (destination unreachable, time exceeded) quoting a TCP/UDP packet that left
 * from this node's address on a masquerade port: a router's answer about a masqueraded flow.
 * The quote must start with a 20-byte IPv4 header (no options: a packet the dataplane sent).
 */
static __always_inline enum decision icmp_about_masquerade(const __u8 *icmp,
							    const void *data_end,
							    const struct config_regs *c)
{
	/* ICMP header (8) + quoted IPv4 header (20) + quoted ports (4). */
	if ((const void *)(icmp + 32) > data_end)
		return NOT_OWNED; /* too short to quote anything we sent: the kernel's */
	if (icmp[0] != 3 && icmp[0] != 11)
		return NOT_OWNED;
	const struct iphdr *quoted = (const void *)(icmp + 8);
	if (quoted->version != 4 || quoted->ihl != 5 || quoted->saddr != c->underlay_ipv4)
		return NOT_OWNED;
	if (quoted->protocol != IPPROTO_TCP && quoted->protocol != IPPROTO_UDP)
		return NOT_OWNED;
	const __be16 *ports = (const void *)(quoted + 1);
	return is_masquerade_port(ports[0], c) ? OWNED : NOT_OWNED;
}

/*
 * Traffic for this node's address that the dataplane owns: UDP to one of the tunnel ports
 * (tunnel traffic), TCP/UDP to a masquerade port (replies to pods' flows to the world), or an
 * ICMP error about a packet that left from a masquerade port. TCP and UDP both keep the
 * destination port at offset 2, so one bounds check serves both.
 */
static __always_inline enum decision owned_on_underlay(const struct iphdr *ip,
							const void *data_end,
							const struct config_regs *c)
{
	if (ip->protocol != IPPROTO_UDP && ip->protocol != IPPROTO_TCP &&
	    ip->protocol != IPPROTO_ICMP)
		return NOT_OWNED;
	if (ip->frag_off & bpf_htons(IP_FRAG_OFFSET))
		return NOT_OWNED; /* a non-first fragment carries no ports */
	const __be16 *ports = after_options(ip);
	if (ip->protocol == IPPROTO_ICMP)
		return c->masq_port_first ? icmp_about_masquerade((const void *)ports, data_end, c)
					  : NOT_OWNED;
	if ((const void *)(ports + 2) > data_end)
		return TRUNCATED;
	__u16 port = ports[1];
	if (ip->protocol == IPPROTO_UDP && port != 0 &&
	    (port == c->vxlan_port || port == c->geneve_port))
		return OWNED;
	return is_masquerade_port(port, c) ? OWNED : NOT_OWNED;
}

/*
 * TCP or UDP to an owned (address, protocol, destination port): NodePort frontends, on any
 * address (the node's own, usually). Kept apart from owned_on_underlay, which only looks at
 * frames to the underlay address.
 */
static __always_inline enum decision owned_port(const struct iphdr *ip, const void *data_end)
{
	if (ip->protocol != IPPROTO_UDP && ip->protocol != IPPROTO_TCP)
		return NOT_OWNED;
	if (ip->frag_off & bpf_htons(IP_FRAG_OFFSET))
		return NOT_OWNED; /* a non-first fragment carries no ports */
	const __be16 *ports = after_options(ip);
	if ((const void *)(ports + 2) > data_end)
		return TRUNCATED;
	struct owned_port_key key = {
		.addr = ip->daddr,
		.protocol = ip->protocol,
		.pad = 0,
		.port = ports[1],
	};
	return bpf_map_lookup_elem(&owned_ports, &key) ? OWNED : NOT_OWNED;
}

static __always_inline enum decision uplink_ipv4(const void *l3, const void *data_end,
						 const struct config_regs *c)
{
	const struct iphdr *ip = l3;
	if ((const void *)(ip + 1) > data_end || ip->ihl < 5)
		return TRUNCATED;
	if (c->underlay_ipv4 != 0 && ip->daddr == c->underlay_ipv4) {
		enum decision mine = owned_on_underlay(ip, data_end, c);
		if (mine != NOT_OWNED)
			return mine;
	}
	enum decision port = owned_port(ip, data_end);
	if (port != NOT_OWNED)
		return port;

	struct owned_v4_key key = { .prefixlen = 32 };
	__builtin_memcpy(key.addr, &ip->daddr, sizeof(key.addr));
	return bpf_map_lookup_elem(&owned_v4, &key) ? OWNED : NOT_OWNED;
}

static __always_inline enum decision uplink_ipv6(const void *l3, const void *data_end)
{
	const struct ipv6hdr *ip6 = l3;
	if ((const void *)(ip6 + 1) > data_end)
		return TRUNCATED;

	struct owned_v6_key key = { .prefixlen = 128 };
	__builtin_memcpy(key.addr, &ip6->daddr, sizeof(key.addr));
	return bpf_map_lookup_elem(&owned_v6, &key) ? OWNED : NOT_OWNED;
}

static __always_inline enum decision decide(const struct ethhdr *eth, const void *data_end,
					    const struct config_regs *c)
{
	const void *l3 = eth + 1;
	if (eth->h_proto == bpf_htons(ETH_P_IP))
		return c->uplink_filter ? uplink_ipv4(l3, data_end, c) : OWNED;
	if (eth->h_proto == bpf_htons(ETH_P_IPV6))
		return c->uplink_filter ? uplink_ipv6(l3, data_end) : OWNED;
	if (eth->h_proto == bpf_htons(ETH_P_ARP))
		return c->redirect_arp ? OWNED : NOT_OWNED;
	return c->redirect_non_ip ? OWNED : NOT_OWNED;
}

SEC("xdp")
int xdp_redirect_prog(struct xdp_md *ctx)
{
	const void *data = (const void *)(long)ctx->data;
	const void *data_end = (const void *)(long)ctx->data_end;
	const struct ethhdr *eth = data;
	__u32 zero = 0;

	const struct xdp_redirect_config *cfg = bpf_map_lookup_elem(&config_map, &zero);
	struct xdp_redirect_counters *cnt = bpf_map_lookup_elem(&counters_map, &zero);
	if (!cfg || !cnt) /* cannot happen for one-entry arrays; the verifier wants the check */
		return XDP_PASS;
	struct config_regs c = read_config(cfg);

	if ((const void *)(eth + 1) > data_end) {
		cnt->truncated++;
		return XDP_PASS;
	}
	/* Per-CPU values: plain increments are enough, no other CPU writes this copy. */
	switch (decide(eth, data_end, &c)) {
	case OWNED:
		break;
	case TRUNCATED:
		cnt->truncated++;
		return XDP_PASS;
	default:
		cnt->not_owned++;
		return XDP_PASS;
	}
	/* The fallback when the queue has no socket: the kernel, or (drop_no_socket: a pinned
	 * program between two dataplane processes) nowhere, so that no pod frame reaches the
	 * node's kernel unpoliced. */
	__u64 fallback = c.drop_no_socket ? XDP_DROP : XDP_PASS;
	int action = bpf_redirect_map(&xsks_map, ctx->rx_queue_index, fallback);
	if (action == XDP_REDIRECT)
		cnt->redirected++;
	else if (action == XDP_DROP)
		cnt->no_socket_dropped++;
	else
		cnt->no_socket++;
	return action;
}

/*
 * Dual-licensed (SPDX line above). The kernel recognises only GPL-family strings as
 * GPL-compatible, and GPL-only helpers (bpf_printk, handy while debugging) need one.
 */
char LICENSE[] SEC("license") = "GPL";
