//! Route stage: where the frame goes, and the header work that takes it there.
//!
//! In order: a local endpoint (MACs rewritten, TTL/hop limit decremented, sent on the pod's
//! interface); this node itself (out of the host interface to the kernel's side, as Cilium
//! hands it to `cilium_host`; without one, `Pass`); a pod on another node, found through the
//! ipcache's tunnel endpoint or the nodes' pod CIDRs, or, from a pod, another node's own
//! address (VXLAN or Geneve with the source identity in the VNI, or native routing through the
//! uplink); anything else from a pod leaves through the uplink when the kernel has a default
//! route there (masqueraded to the node's address, `masquerade::egress`), else goes to the
//! kernel. The host interface carries only pod traffic: the host's frames to anything but a pod
//! are dropped (`no_route`), never sent to the world. A frame DNATed here to a backend on
//! another node in SNAT mode leaves with the node's address (`service_snat`), and its reply,
//! which then arrives on the uplink, goes back out to the client.
//!
//! Next hops on the underlay are the kernel's (`tables::next_hops`, resolved by the daemon from
//! the node's routes and neighbour table): a peer without one is dropped as `no_next_hop`.
//!
//! DSR: a frame DNATed to a DSR backend on another node carries the frontend in a Geneve option
//! (Geneve tunnels) or in an IPv4 option (native routing and VXLAN, where the option rides in
//! the inner header). Both grow the frame at the front; the payload never moves.
//!
//! MTU: a frame leaving through the uplink must fit its path: its IP packet may be at most
//! `Encap::pod_mtu` of the uplink's MTU for a remote pod (the overhead of the encapsulation,
//! DSR option included, taken off: the same number the agent gives pods as their MTU), the
//! uplink's MTU for the world. The check comes before any header work, so a frame that does not
//! fit is still as the pod sent it, and a pod gets an ICMP "fragmentation needed" / "packet too
//! big" back instead (`icmp_error`); what gets no error is dropped as `FrameTooLong`.

use std::net::{IpAddr, Ipv4Addr};

use super::batch::{any, Batch, Ctx, Ingress};
use super::meta::{CtMark, FrontendAddr, PacketMeta, Verdict};
use super::{icmp_error, masquerade, service_snat, DropReason, Stage};
use crate::frame::Frame;
use crate::tables::nodes::Encap;
use crate::types::{Identity, MacAddr};
use crate::wire::ethernet::{self, EtherType, EthernetFrame};
use crate::wire::geneve::{self, GenevePacket};
use crate::wire::ipv4::{self, DsrOption, Ipv4Packet, Protocol};
use crate::wire::ipv6::Ipv6Packet;
use crate::wire::udp::{self, UdpPacket};
use crate::wire::vxlan::{self, VxlanPacket};

pub(crate) fn run<B: AsRef<[u8]> + AsMut<[u8]>>(batch: &mut Batch<'_, B>, ctx: &mut Ctx<'_>) {
    masquerade::prefetch_translated(batch.meta_mut(), ctx);
    batch.for_each(ctx, Stage::Route, any, |f, m, ctx| {
        m.verdict = route(f, m, ctx)?;
        Ok(())
    });
}

fn route<B: AsRef<[u8]> + AsMut<[u8]>>(
    f: &mut Frame<B>,
    m: &mut PacketMeta,
    ctx: &mut Ctx<'_>,
) -> Result<Verdict, DropReason> {
    let t = ctx.t;
    if let Some(ep) = m.dst_slot.and_then(|s| t.endpoints.by_slot(s)) {
        decrement_ttl(f, m)?;
        set_macs(f, t.node.router_mac, ep.spec.mac);
        return Ok(Verdict::Tx {
            ifindex: ep.spec.ifindex,
        });
    }
    if t.node.is_local_addr(m.tuple.dst) {
        return to_host(f, m, ctx);
    }
    let peer = m
        .tunnel_endpoint
        .or_else(|| t.nodes.by_pod_ip(m.tuple.dst).map(|n| n.underlay))
        .or_else(|| remote_node_address(m, ctx));
    if let Some(peer) = peer {
        service_snat::to_remote_backend(f, m, ctx)?;
        return to_remote_node(f, m, ctx, peer);
    }
    match ctx.ingress {
        // From the uplink, only the reply of a flow this node forwarded (a service's SNAT
        // mode) goes back out; anything else is not ours: the node's own traffic.
        Ingress::Uplink if m.ct != CtMark::Reply => return Ok(Verdict::Pass),
        Ingress::Host => return Err(DropReason::NoRoute),
        _ => {}
    }
    match (t.node.uplink_ifindex, t.next_hops.default_for(m.tuple.dst)) {
        (Some(uplink), Some(gw)) => {
            if ip_len(m) > usize::from(t.node.uplink_mtu) {
                return icmp_error::too_big(f, m, ctx, t.node.uplink_mtu);
            }
            decrement_ttl(f, m)?;
            masquerade::egress(f, m, ctx)?;
            set_macs(f, t.node.uplink_mac, gw);
            Ok(Verdict::Tx { ifindex: uplink })
        }
        _ => Ok(Verdict::Pass),
    }
}

/// A pod on another node: tunnel or native routing, per the node's encapsulation mode.
fn to_remote_node<B: AsRef<[u8]> + AsMut<[u8]>>(
    f: &mut Frame<B>,
    m: &mut PacketMeta,
    ctx: &mut Ctx<'_>,
    peer: IpAddr,
) -> Result<Verdict, DropReason> {
    let t = ctx.t;
    let uplink = t.node.uplink_ifindex.ok_or(DropReason::NoRoute)?;
    let node = t.nodes.by_underlay(peer);
    let encap = node.map_or(t.node.default_encap, |n| n.encap);
    let path_mtu = encap.pod_mtu(t.node.uplink_mtu);
    if ip_len(m) > usize::from(path_mtu) {
        return icmp_error::too_big(f, m, ctx, path_mtu);
    }
    // The kernel's next hop for this peer (its own MAC on-link, a router's otherwise); a
    // peer not resolved yet is dropped, never sent to a guessed MAC.
    let next_hop = t.next_hops.peer(peer).ok_or(DropReason::NoNextHop)?;
    decrement_ttl(f, m)?;
    let dsr = m.frontend.filter(|_| m.dsr_out);
    if dsr.is_some() && encap != Encap::Geneve {
        insert_dsr_option(f, m)?;
        ctx.c.dsr_option_written += 1;
    }
    if encap == Encap::Native {
        set_macs(f, t.node.uplink_mac, next_hop);
        return Ok(Verdict::Tx { ifindex: uplink });
    }
    let (IpAddr::V4(peer), Some(local)) = (peer, t.node.underlay_ipv4) else {
        return Err(DropReason::NoRoute); // Tunnels run over an IPv4 underlay.
    };
    let geneve_dsr = if encap == Encap::Geneve { dsr } else { None };
    let outer = OuterHeader {
        src_mac: t.node.uplink_mac,
        dst_mac: next_hop,
        src: local,
        dst: peer,
        mtu: t.node.uplink_mtu,
        entropy: m.ct_hash,
        vni: vni_of(m.src_identity),
        port: t.node.tunnel_ports.of(encap).ok_or(DropReason::NoRoute)?,
    };
    encapsulate(f, &outer, encap, geneve_dsr)?;
    if geneve_dsr.is_some() {
        ctx.c.dsr_option_written += 1;
    }
    ctx.c.encapsulated += 1;
    Ok(Verdict::Tx { ifindex: uplink })
}

/// This node's own addresses: out of the host interface, to the kernel's side (the host's
/// stack answers from there, back through the same interface). Without a host interface, a
/// `Pass` (which AF_XDP cannot honour: counted `pass_dropped`). A frame that came from the host
/// never goes back to it.
fn to_host<B: AsRef<[u8]> + AsMut<[u8]>>(
    f: &mut Frame<B>,
    m: &mut PacketMeta,
    ctx: &mut Ctx<'_>,
) -> Result<Verdict, DropReason> {
    let Some(host) = ctx.t.node.host_link else {
        return Ok(Verdict::Pass);
    };
    if ctx.ingress == Ingress::Host {
        return Err(DropReason::NoRoute);
    }
    decrement_ttl(f, m)?;
    set_macs(f, ctx.t.node.router_mac, host.kernel_mac);
    Ok(Verdict::Tx {
        ifindex: host.ifindex,
    })
}

/// A pod's frame for another node's own address goes to that node, as pod traffic to it does
/// (its `remote-node` identity came from the ipcache).
fn remote_node_address(m: &PacketMeta, ctx: &Ctx<'_>) -> Option<IpAddr> {
    if !matches!(ctx.ingress, Ingress::Pod(_)) {
        return None;
    }
    ctx.t.nodes.by_underlay(m.tuple.dst).map(|n| n.underlay)
}

/// Length of the frame's IP packet (what an MTU limits).
fn ip_len(m: &PacketMeta) -> usize {
    usize::from(m.l4_end).saturating_sub(usize::from(m.l3))
}

/// The VNI carries the source identity; identities outside 24 bits (node-local CIDR
/// identities) never name a pod, so they travel as `world`.
fn vni_of(identity: Identity) -> u32 {
    if identity.0 > 0x00ff_ffff {
        Identity::WORLD.0
    } else {
        identity.0
    }
}

fn set_macs<B: AsRef<[u8]> + AsMut<[u8]>>(f: &mut Frame<B>, src: MacAddr, dst: MacAddr) {
    let mut eth = EthernetFrame::new_unchecked(f.data_mut());
    eth.set_src_addr(src);
    eth.set_dst_addr(dst);
}

/// Routed packets lose one TTL / hop limit; one that would reach zero is dropped.
fn decrement_ttl<B: AsRef<[u8]> + AsMut<[u8]>>(
    f: &mut Frame<B>,
    m: &PacketMeta,
) -> Result<(), DropReason> {
    let (l3, l4) = (usize::from(m.l3), usize::from(m.l4));
    let hdr = f.data_mut().get_mut(l3..l4).ok_or(DropReason::NoRoute)?;
    let left = match m.tuple.dst {
        IpAddr::V4(_) => Ipv4Packet::new_unchecked(hdr).decrement_ttl_incremental(),
        IpAddr::V6(_) => Ipv6Packet::new_unchecked(hdr).decrement_hop_limit(),
    };
    left.map(|_| ()).ok_or(DropReason::TtlExceeded)
}

/// Inserts the DSR IPv4 option (frontend VIP:port) at the end of the IPv4 header: the
/// Ethernet and IP headers move forward into the headroom, the payload stays put. IPv4
/// options are not covered by the TCP/UDP checksum, so only the IP header checksum changes.
/// The caller checked the fit: `Encap::overhead` counts the option.
fn insert_dsr_option<B: AsRef<[u8]> + AsMut<[u8]>>(
    f: &mut Frame<B>,
    m: &mut PacketMeta,
) -> Result<(), DropReason> {
    let Some(FrontendAddr {
        addr: IpAddr::V4(addr),
        port,
    }) = m.frontend
    else {
        return Ok(()); // IPv6 frontends: no DSR option (see docs/architecture.md).
    };
    let (l3, l4) = (usize::from(m.l3), usize::from(m.l4));
    let header_len = l4 - l3;
    if header_len + ipv4::DSR_OPTION_LEN > ipv4::MAX_HEADER_LEN {
        return Err(DropReason::Ipv4BadOptions);
    }
    let ip_len = usize::from(m.l4_end) - l3;
    let gap = f
        .insert_gap(l4, ipv4::DSR_OPTION_LEN)
        .ok_or(DropReason::HeadroomExhausted)?;
    DsrOption { addr, port }.emit_ipv4(gap);
    let hdr = f
        .data_mut()
        .get_mut(l3..l4 + ipv4::DSR_OPTION_LEN)
        .ok_or(DropReason::NoRoute)?;
    let mut ip = Ipv4Packet::new_unchecked(hdr);
    ip.set_header_len(header_len + ipv4::DSR_OPTION_LEN);
    ip.set_total_len((ip_len + ipv4::DSR_OPTION_LEN) as u16);
    ip.fill_checksum();
    m.l4 += ipv4::DSR_OPTION_LEN as u16;
    m.l4_end += ipv4::DSR_OPTION_LEN as u16;
    Ok(())
}

/// The outer headers of a tunnel packet.
struct OuterHeader {
    src_mac: MacAddr,
    dst_mac: MacAddr,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    mtu: u16,
    /// Flow hash: spreads flows over UDP source ports (RFC 7348 section 5).
    entropy: u64,
    vni: u32,
    /// The tunnel's UDP destination port.
    port: u16,
}

/// Prepends Ethernet + IPv4 + UDP + VXLAN/Geneve headers to the frame, without moving it.
fn encapsulate<B: AsRef<[u8]> + AsMut<[u8]>>(
    f: &mut Frame<B>,
    o: &OuterHeader,
    encap: Encap,
    dsr: Option<FrontendAddr>,
) -> Result<(), DropReason> {
    let tunnel_len = match encap {
        Encap::Geneve if dsr.is_some() => geneve::HEADER_LEN + geneve::DSR_OPTION_LEN,
        Encap::Geneve => geneve::HEADER_LEN,
        _ => vxlan::HEADER_LEN,
    };
    let udp_len = udp::HEADER_LEN + tunnel_len + f.len();
    let ip_len = ipv4::HEADER_LEN + udp_len;
    // The caller's fit check covers an inner frame with a plain Ethernet header; this one also
    // catches a VLAN-tagged or padded one.
    if ip_len > usize::from(o.mtu) {
        return Err(DropReason::FrameTooLong);
    }
    let outer_len = ethernet::HEADER_LEN + ip_len - f.len();
    let hdr = f
        .push_front(outer_len)
        .ok_or(DropReason::HeadroomExhausted)?;
    let (eth_hdr, rest) = hdr.split_at_mut(ethernet::HEADER_LEN);
    let (ip_hdr, rest) = rest.split_at_mut(ipv4::HEADER_LEN);
    let (udp_hdr, tunnel_hdr) = rest.split_at_mut(udp::HEADER_LEN);

    let mut eth = EthernetFrame::new_unchecked(eth_hdr);
    eth.set_dst_addr(o.dst_mac);
    eth.set_src_addr(o.src_mac);
    eth.set_ethertype(EtherType::Ipv4);

    let mut ip = Ipv4Packet::new_unchecked(ip_hdr);
    ip.set_version(4);
    ip.set_header_len(ipv4::HEADER_LEN);
    ip.set_dscp(0);
    ip.set_ecn(0);
    ip.set_total_len(ip_len as u16);
    ip.set_ident(0);
    ip.clear_flags();
    ip.set_dont_frag(true);
    ip.set_frag_offset(0);
    ip.set_ttl(ipv4::DEFAULT_TTL);
    ip.set_protocol(Protocol::Udp);
    ip.set_src_addr(o.src);
    ip.set_dst_addr(o.dst);
    ip.fill_checksum();

    // RFC 7348: source port from a hash of the inner flow, in the dynamic range.
    let sport = 49152 + (o.entropy % 16384) as u16;
    let mut u = UdpPacket::new_unchecked(udp_hdr);
    u.set_src_port(sport);
    u.set_dst_port(o.port);
    u.set_len(udp_len as u16);
    u.set_checksum(0); // Zero is allowed for IPv4 tunnels (RFC 7348 section 5, RFC 8926 3.3).

    match encap {
        Encap::Geneve => write_geneve(tunnel_hdr, o.vni, dsr),
        _ => {
            write_vxlan(tunnel_hdr, o.vni);
            Ok(())
        }
    }
}

fn write_vxlan(hdr: &mut [u8], vni: u32) {
    vxlan::Repr { vni }.emit(&mut VxlanPacket::new_unchecked(hdr));
}

fn write_geneve(hdr: &mut [u8], vni: u32, dsr: Option<FrontendAddr>) -> Result<(), DropReason> {
    let options_len = if dsr.is_some() {
        geneve::DSR_OPTION_LEN
    } else {
        0
    };
    let repr = geneve::Repr {
        vni,
        protocol: geneve::PROTOCOL_ETHERNET,
        options_len,
        oam: false,
        critical: false,
    };
    let (fixed, options) = hdr.split_at_mut(geneve::HEADER_LEN);
    repr.emit(&mut GenevePacket::new_unchecked(fixed));
    if let Some(FrontendAddr {
        addr: IpAddr::V4(addr),
        port,
    }) = dsr
    {
        // The option area was sized for exactly this option, so writing cannot fail.
        geneve::DsrOption { addr, port }
            .emit_geneve(options, 0)
            .map_err(|_| DropReason::HeadroomExhausted)?;
    }
    Ok(())
}
