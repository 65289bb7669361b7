// SPDX-License-Identifier: (Apache-2.0 OR GPL-2.0)
/*
 * xdp_redirect: hand the frames the Flagella dataplane owns to its AF_XDP socket, pass the rest
 * to the kernel.
 *
 * One decision per frame, from the Ethernet header only:
 *   IPv4, IPv6            -> owned by the dataplane
 *   ARP                   -> owned only if config.redirect_arp
 *   any other EtherType   -> owned only if config.redirect_non_ip
 *   shorter than Ethernet -> never owned (passed to the kernel, which drops it)
 * An owned frame goes to the AF_XDP socket registered for its receive queue
 * (xsks_map[rx_queue_index]); when that slot is empty bpf_redirect_map returns its fallback,
 * XDP_PASS, so a queue without a socket keeps working through the kernel.
 *
 * Rust twins of the shared structs: xdp-redirect/src/lib.rs (RedirectConfig, RedirectCounters);
 * a test there checks their sizes and field offsets against the generated skeleton types.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

/* Queues per interface the XSKMAP can hold. Rust twin: XSKMAP_MAX_ENTRIES in lib.rs. */
#define XSKMAP_MAX_ENTRIES 64

/* What the dataplane owns besides IP. Rust twin: RedirectConfig in lib.rs. */
struct xdp_redirect_config {
	__u32 redirect_arp;    /* 0: ARP goes to the kernel; 1: to the dataplane */
	__u32 redirect_non_ip; /* 0: other EtherTypes go to the kernel; 1: to the dataplane */
};

/* Where frames went, per CPU. Rust twin: RedirectCounters in lib.rs. */
struct xdp_redirect_counters {
	__u64 redirected; /* owned, and a socket took it */
	__u64 no_socket;  /* owned, but no socket on this queue: passed to the kernel */
	__u64 not_owned;  /* the configuration gives it to the kernel */
	__u64 truncated;  /* shorter than an Ethernet header: passed to the kernel */
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
 * Both fields are loaded before any branch, on purpose. Written as "ARP ? cfg->redirect_arp :
 * cfg->redirect_non_ip", clang emits one load from cfg + (0 or 4), an offset that depends on
 * the path; without CAP_PERFMON the verifier keeps its Spectre v1 mitigations and refuses that
 * pointer arithmetic ("tried to add from different maps, paths or scalars ... prohibited for
 * !root"), so the program would not load under the systemd unit's CAP_BPF + CAP_NET_ADMIN.
 * The empty asm keeps the two loads where they are.
 */
static __always_inline int owned_by_dataplane(__be16 proto, const struct xdp_redirect_config *cfg)
{
	__u32 arp = cfg->redirect_arp;
	__u32 non_ip = cfg->redirect_non_ip;
	asm volatile("" : "+r"(arp), "+r"(non_ip));

	if (proto == bpf_htons(ETH_P_IP) || proto == bpf_htons(ETH_P_IPV6))
		return 1;
	if (proto == bpf_htons(ETH_P_ARP))
		return arp != 0;
	return non_ip != 0;
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

	if ((const void *)(eth + 1) > data_end) {
		cnt->truncated++;
		return XDP_PASS;
	}
	if (!owned_by_dataplane(eth->h_proto, cfg)) {
		cnt->not_owned++;
		return XDP_PASS;
	}
	/* Per-CPU values: plain increments are enough, no other CPU writes this copy. */
	int action = bpf_redirect_map(&xsks_map, ctx->rx_queue_index, XDP_PASS);
	if (action == XDP_REDIRECT)
		cnt->redirected++;
	else
		cnt->no_socket++;
	return action;
}

/*
 * Dual-licensed (SPDX line above). The kernel recognises only GPL-family strings as
 * GPL-compatible, and GPL-only helpers (bpf_printk, handy while debugging) need one.
 */
char LICENSE[] SEC("license") = "GPL";
