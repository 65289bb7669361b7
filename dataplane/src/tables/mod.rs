//! The state the fast path reads.
//!
//! Every table has an insert/delete API for the control socket and a lookup API for the
//! pipeline. Lookups never allocate and never lock; the daemon publishes whole [`Tables`]
//! snapshots (read-copy-update) so a worker never sees half an update. Conntrack is the
//! exception: it is written by the fast path, so each worker owns its own (see
//! `docs/architecture.md`, "Threading").

pub mod conntrack;
pub mod endpoints;
pub mod handle;
pub mod ipcache;
pub mod lpm;
pub mod maglev;
pub mod next_hops;
pub mod nodes;
pub mod policy;
pub mod services;
pub mod snat;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use crate::types::MacAddr;

pub use handle::TablesHandle;

/// Starts loading the cache lines of `value` (all of them, for a value wider than one line)
/// without reading it: for batch stages that know early what they will read late. A no-op off
/// x86_64.
#[inline]
pub(crate) fn prefetch<T>(value: &T) {
    #[cfg(target_arch = "x86_64")]
    {
        use core::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        let start: *const i8 = (value as *const T).cast();
        // From the line holding the first byte to the line holding the last one.
        let mut line = start.wrapping_sub(start as usize & 63);
        let end = start.wrapping_add(std::mem::size_of::<T>().max(1));
        while line < end {
            // SAFETY: a prefetch is a hint that never faults and changes no program state (even
            // for the bytes of a line outside `value`). SSE is part of the x86_64 baseline, so
            // the `sse` target feature the intrinsic requires is always present.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(line) };
            line = line.wrapping_add(64);
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = value;
}

/// Starts loading the cache lines that hold the first `max` bytes of `bytes` (a frame's
/// headers). Same hint semantics as [`prefetch`].
#[inline]
pub(crate) fn prefetch_bytes(bytes: &[u8], max: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        use core::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        let start = bytes.as_ptr().cast::<i8>();
        let mut line = start.wrapping_sub(start as usize & 63);
        let end = start.wrapping_add(bytes.len().min(max).max(1));
        while line < end {
            // SAFETY: as in `prefetch`: a hint, never a fault, no state change.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(line) };
            line = line.wrapping_add(64);
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (bytes, max);
}

/// This node's own network facts: what the pods see as their gateway and how the node reaches
/// the underlay. Set by the control process; read by every stage.
#[derive(Clone, Debug)]
pub struct LocalNode {
    /// Node name, as in the nodes table.
    pub name: String,
    /// Underlay address: the outer source of tunnel packets, the destination of decap.
    pub underlay_ipv4: Option<Ipv4Addr>,
    /// The MAC address pods resolve their gateway to (the router MAC).
    pub router_mac: MacAddr,
    /// The pods' gateway addresses (answered by ARP; the next hop of their default route).
    pub gateway_ipv4: Option<Ipv4Addr>,
    pub gateway_ipv6: Option<Ipv6Addr>,
    /// The uplink interface (underlay), if any.
    pub uplink_ifindex: Option<u32>,
    /// The uplink's own MAC (outer source MAC).
    pub uplink_mac: MacAddr,
    /// MTU of the uplink: an encapsulated frame's outer IP packet must fit.
    pub uplink_mtu: u16,
    /// Encapsulation used for nodes reached through the ipcache's tunnel endpoint only.
    pub default_encap: nodes::Encap,
    /// The UDP ports of the tunnels, the same on every node of a cluster.
    pub tunnel_ports: TunnelPorts,
    /// The host interface (Cilium's `cilium_host`/`cilium_net`), when the daemon has one:
    /// frames for the node's own addresses go out of it. The daemon's own fact, kept across
    /// `local_node.set` as the tunnel ports are.
    pub host_link: Option<HostLink>,
    /// Every other address of the node's own stack (its other interfaces, the host
    /// interface's), learnt from the kernel by the daemon (`daemon::host_link`): frames for them
    /// are the host's too. Kept across `local_node.set`, as `host_link`. A handful of addresses:
    /// the fast path scans them.
    pub host_addresses: Vec<IpAddr>,
}

/// The veth pair between the dataplane and the node's own network stack: the dataplane sends
/// into `ifindex` (its side, e.g. `flg_net`) frames addressed to `kernel_mac` (the kernel's
/// side, e.g. `flg_host`, which holds the pods' gateway addresses and routes to the pods).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostLink {
    /// The dataplane's side: where frames for the host are transmitted, and where the host's
    /// frames to pods arrive.
    pub ifindex: u32,
    /// The kernel side's MAC: the destination MAC of frames for the host.
    pub kernel_mac: MacAddr,
}

/// The UDP destination ports of VXLAN and Geneve: what the node sends to and decapsulates.
/// Defaults: the IANA ports (4789, 6081), as Cilium's `tunnel-port` defaults.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TunnelPorts {
    pub vxlan: u16,
    pub geneve: u16,
}

impl Default for TunnelPorts {
    fn default() -> Self {
        TunnelPorts {
            vxlan: crate::wire::vxlan::UDP_PORT,
            geneve: crate::wire::geneve::UDP_PORT,
        }
    }
}

impl TunnelPorts {
    /// True for either tunnel's port.
    #[inline]
    pub fn is_tunnel(self, port: u16) -> bool {
        port == self.vxlan || port == self.geneve
    }

    /// The destination port of `encap`'s tunnel (`None` for native routing).
    #[inline]
    pub fn of(self, encap: nodes::Encap) -> Option<u16> {
        match encap {
            nodes::Encap::Vxlan => Some(self.vxlan),
            nodes::Encap::Geneve => Some(self.geneve),
            nodes::Encap::Native => None,
        }
    }
}

impl LocalNode {
    /// True when `addr` is one of this node's own addresses (traffic to the host): the
    /// underlay address, the pods' gateways, any address the kernel holds.
    pub fn is_local_addr(&self, addr: IpAddr) -> bool {
        let known = match addr {
            IpAddr::V4(a) => self.underlay_ipv4 == Some(a) || self.gateway_ipv4 == Some(a),
            IpAddr::V6(a) => self.gateway_ipv6 == Some(a),
        };
        known || self.host_addresses.contains(&addr)
    }
}

impl Default for LocalNode {
    fn default() -> Self {
        LocalNode {
            name: String::new(),
            underlay_ipv4: None,
            router_mac: MacAddr([0x02, 0, 0, 0, 0, 1]),
            gateway_ipv4: None,
            gateway_ipv6: None,
            uplink_ifindex: None,
            uplink_mac: MacAddr::ZERO,
            uplink_mtu: 1500,
            default_encap: nodes::Encap::Vxlan,
            tunnel_ports: TunnelPorts::default(),
            host_link: None,
            host_addresses: Vec::new(),
        }
    }
}

/// Everything the stages read, published as one immutable snapshot.
///
/// Each table sits behind its own `Arc`, so the control path builds the next version by
/// cloning the `Tables` (six pointer copies) and then `Arc::make_mut` on only the tables a
/// request changes; workers keep reading the old version until the new one is swapped in.
#[derive(Clone, Debug)]
pub struct Tables {
    pub node: Arc<LocalNode>,
    pub ipcache: Arc<ipcache::IpCache>,
    pub endpoints: Arc<endpoints::Endpoints>,
    pub services: Arc<services::Services>,
    pub nodes: Arc<nodes::Nodes>,
    /// The kernel's next hops on the underlay; written only by the next-hop resolver.
    pub next_hops: Arc<next_hops::NextHops>,
}

impl Tables {
    /// Tables with no endpoints, prefixes, services or nodes.
    pub fn empty(node: LocalNode, services: services::Services) -> Self {
        Tables {
            node: Arc::new(node),
            ipcache: Arc::default(),
            endpoints: Arc::default(),
            services: Arc::new(services),
            nodes: Arc::default(),
            next_hops: Arc::default(),
        }
    }
}
