//! Parse stage: validate headers once and fill the packet metadata.
//!
//! Every header boundary is checked through the wire views' `new_checked`; a frame cut short
//! or malformed at any boundary is dropped with the reason naming that header. ARP requests from
//! pods are answered here (the dataplane is the pods' gateway): the frame is rewritten in place
//! into the reply and sent back out of the interface it came from.

use std::net::IpAddr;

use super::meta::{Family, IcmpClass, PacketMeta, Tuple, Verdict};
use super::{Ctx, DropReason, Ingress, Stage};
use crate::frame::Frame;
use crate::tables::LocalNode;
use crate::wire::arp::{ArpPacket, Repr as ArpRepr};
use crate::wire::ethernet::{EtherType, EthernetFrame};
use crate::wire::icmpv4::Icmpv4Packet;
use crate::wire::icmpv6::{
    Icmpv6Packet, Message as Icmpv6Message, NeighborFlags, Repr as Icmpv6Repr,
};
use crate::wire::ipv4::{self, Ipv4Packet, Protocol};
use crate::wire::ipv6::{self, Ipv6Packet};
use crate::wire::tcp::TcpPacket;
use crate::wire::udp::UdpPacket;
use crate::wire::Error;

/// Bytes of each frame's front the parse stage prefetches: Ethernet with a VLAN tag, IPv6 and
/// TCP fit in two cache lines; tunnelled frames' inner headers are read later, by decap.
const HEADER_PREFETCH_BYTES: usize = 128;

pub(crate) fn run<B: AsRef<[u8]> + AsMut<[u8]>>(
    frames: &mut [Frame<B>],
    meta: &mut [PacketMeta],
    ctx: &mut Ctx<'_>,
) {
    // A received frame was written by another core (the kernel's copy into the UMEM runs on
    // the sender's core), so its first read is a cross-core cache miss; asking for the whole
    // batch's headers up front overlaps those misses instead of paying them one by one.
    for f in frames.iter() {
        crate::tables::prefetch_bytes(f.data(), HEADER_PREFETCH_BYTES);
    }
    for (f, m) in frames.iter_mut().zip(meta.iter_mut()) {
        *m = PacketMeta::EMPTY;
        ctx.c.rx_packets += 1;
        ctx.c.rx_bytes += f.len() as u64;
        ctx.c.stage_in[Stage::Parse as usize] += 1;
        if ctx.ingress == Ingress::Unknown {
            ctx.drop(m, Stage::Parse, DropReason::UnknownInterface);
            continue;
        }
        if let Err(reason) = parse_frame(f.data(), m) {
            ctx.drop(m, Stage::Parse, reason);
            continue;
        }
        match (m.family, ctx.ingress) {
            (Family::Arp, Ingress::Pod(_)) => answer_arp(f, m, ctx),
            (Family::Ipv6, Ingress::Pod(_)) if is_neighbor_solicitation(m) => {
                answer_neighbor_solicitation(f, m, ctx)
            }
            (Family::Other, Ingress::Pod(_)) => {
                ctx.drop(m, Stage::Parse, DropReason::UnsupportedEtherType)
            }
            // The kernel owns the uplink's ARP and anything that is not IP.
            (Family::Arp | Family::Other, _) => m.verdict = Verdict::Pass,
            _ => {}
        }
    }
}

/// Parses Ethernet, IP and the transport header of `data` into `m`.
pub(crate) fn parse_frame(data: &[u8], m: &mut PacketMeta) -> Result<(), DropReason> {
    let eth = EthernetFrame::new_checked(data).map_err(|_| DropReason::EthernetTruncated)?;
    let l3 = eth.header_len();
    m.l3 = l3 as u16;
    let payload = data.get(l3..).unwrap_or_default();
    match eth.inner_ethertype() {
        EtherType::Ipv4 => parse_ipv4(payload, m),
        EtherType::Ipv6 => parse_ipv6(payload, m),
        EtherType::Arp => {
            m.family = Family::Arp;
            Ok(())
        }
        _ => {
            m.family = Family::Other;
            Ok(())
        }
    }
}

fn parse_ipv4(data: &[u8], m: &mut PacketMeta) -> Result<(), DropReason> {
    let ip = Ipv4Packet::new_checked(data).map_err(|e| match e {
        Error::Truncated => DropReason::Ipv4Truncated,
        _ => DropReason::Ipv4Malformed,
    })?;
    if !ip.verify_checksum() {
        return Err(DropReason::Ipv4BadChecksum);
    }
    if ip.is_fragment() {
        return Err(DropReason::FragmentUnsupported);
    }
    if ip.header_len() > ipv4::HEADER_LEN {
        match ipv4::find_dsr_option(&ip) {
            Ok(Some((_, offset))) => m.dsr_option_offset = offset as u8,
            Ok(None) => {}
            Err(_) => return Err(DropReason::Ipv4BadOptions),
        }
    }
    m.family = Family::Ipv4;
    let hl = ip.header_len();
    m.l4 = m.l3 + hl as u16;
    m.l4_end = m.l3 + ip.total_len();
    let (src, dst) = (IpAddr::V4(ip.src_addr()), IpAddr::V4(ip.dst_addr()));
    parse_l4(ip.protocol(), ip.payload(), src, dst, m)
}

fn parse_ipv6(data: &[u8], m: &mut PacketMeta) -> Result<(), DropReason> {
    let ip = Ipv6Packet::new_checked(data).map_err(|_| DropReason::Ipv6Truncated)?;
    let payload = ip.payload();
    let walk = ipv6::walk_extension_headers(ip.next_header(), payload)
        .map_err(|_| DropReason::Ipv6BadExtensionHeaders)?;
    if walk.fragment.is_some() {
        return Err(DropReason::FragmentUnsupported);
    }
    m.family = Family::Ipv6;
    m.l4 = m.l3 + (ipv6::HEADER_LEN + walk.offset) as u16;
    m.l4_end = m.l3 + (ipv6::HEADER_LEN + payload.len()) as u16;
    let (src, dst) = (IpAddr::V6(ip.src_addr()), IpAddr::V6(ip.dst_addr()));
    let upper = payload.get(walk.offset..).unwrap_or_default();
    parse_l4(walk.protocol, upper, src, dst, m)
}

/// Fills the tuple from the transport header (`seg` is bounded by the IP length).
fn parse_l4(
    proto: Protocol,
    seg: &[u8],
    src: IpAddr,
    dst: IpAddr,
    m: &mut PacketMeta,
) -> Result<(), DropReason> {
    let l4_err = |e: Error| match e {
        Error::Truncated => DropReason::L4Truncated,
        _ => DropReason::L4Malformed,
    };
    let mut t = Tuple {
        src,
        dst,
        sport: 0,
        dport: 0,
        proto: proto.into(),
    };
    match proto {
        Protocol::Tcp => {
            let tcp = TcpPacket::new_checked(seg).map_err(l4_err)?;
            (t.sport, t.dport) = (tcp.src_port(), tcp.dst_port());
            m.tcp_flags = tcp.flags().bits();
        }
        Protocol::Udp => {
            let udp = UdpPacket::new_checked(seg).map_err(l4_err)?;
            (t.sport, t.dport) = (udp.src_port(), udp.dst_port());
        }
        Protocol::Icmp => {
            let icmp = Icmpv4Packet::new_checked(seg).map_err(l4_err)?;
            classify_icmp(
                icmp.msg_type().into(),
                icmp_echo_ident(seg),
                icmp.is_error(),
                m,
                &mut t,
            );
            if m.icmp == IcmpClass::Error {
                m.inner = parse_quoted(icmp.quoted(), false).ok_or(DropReason::L4Malformed)?;
            }
        }
        Protocol::Icmpv6 => {
            let icmp = Icmpv6Packet::new_checked(seg).map_err(l4_err)?;
            classify_icmp(
                icmp.msg_type().into(),
                icmp_echo_ident(seg),
                icmp.is_error(),
                m,
                &mut t,
            );
            if m.icmp == IcmpClass::Error {
                m.inner = parse_quoted(icmp.quoted(), true).ok_or(DropReason::L4Malformed)?;
            }
        }
        _ => {}
    }
    m.tuple = t;
    Ok(())
}

/// The identifier of an ICMP echo (bytes 4..6 of the message; checked by the caller's view).
fn icmp_echo_ident(seg: &[u8]) -> u16 {
    seg.get(4..6)
        .map(|b| u16::from_be_bytes([b[0], b[1]]))
        .unwrap_or(0)
}

/// Echo: identifier in both ports (so the reply matches the request in conntrack). Other
/// messages: the type in `dport`, which is what a policy on ICMP types keys on.
fn classify_icmp(msg_type: u8, ident: u16, is_error: bool, m: &mut PacketMeta, t: &mut Tuple) {
    const ECHO_TYPES: [u8; 4] = [0, 8, 128, 129];
    if is_error {
        m.icmp = IcmpClass::Error;
        t.dport = u16::from(msg_type);
    } else if ECHO_TYPES.contains(&msg_type) {
        m.icmp = IcmpClass::Echo;
        (t.sport, t.dport) = (ident, ident);
    } else {
        m.icmp = IcmpClass::Other;
        t.dport = u16::from(msg_type);
    }
}

/// The tuple of the packet quoted by an ICMP error: its IP header and first 8 transport bytes.
fn parse_quoted(quoted: &[u8], v6: bool) -> Option<Tuple> {
    let (src, dst, proto, rest) = if v6 {
        let ip = Ipv6Packet::new_unchecked(quoted);
        let hdr = quoted.get(..ipv6::HEADER_LEN)?;
        let _ = hdr;
        (
            IpAddr::V6(ip.src_addr()),
            IpAddr::V6(ip.dst_addr()),
            ip.next_header(),
            quoted.get(ipv6::HEADER_LEN..)?,
        )
    } else {
        let ip = Ipv4Packet::new_unchecked(quoted);
        let hl = usize::from(*quoted.first()? & 0x0f) * 4;
        if hl < ipv4::HEADER_LEN || quoted.len() < hl {
            return None;
        }
        (
            IpAddr::V4(ip.src_addr()),
            IpAddr::V4(ip.dst_addr()),
            ip.protocol(),
            quoted.get(hl..)?,
        )
    };
    let mut t = Tuple {
        src,
        dst,
        sport: 0,
        dport: 0,
        proto: proto.into(),
    };
    match proto {
        Protocol::Tcp | Protocol::Udp => {
            let p = rest.get(..4)?;
            t.sport = u16::from_be_bytes([p[0], p[1]]);
            t.dport = u16::from_be_bytes([p[2], p[3]]);
        }
        Protocol::Icmp | Protocol::Icmpv6 => {
            let id = icmp_echo_ident(rest);
            (t.sport, t.dport) = (id, id);
        }
        _ => {}
    }
    Some(t)
}

/// Answers an ARP request from a pod with the router MAC, in place, back out of the pod's
/// interface. A pod resolves only its gateway (it has a /32 and a default route), but any
/// address other than its own gets the router MAC, as Cilium's ARP responder does.
fn answer_arp<B: AsRef<[u8]> + AsMut<[u8]>>(
    f: &mut Frame<B>,
    m: &mut PacketMeta,
    ctx: &mut Ctx<'_>,
) {
    let l3 = usize::from(m.l3);
    let request = ArpPacket::new_checked(f.data().get(l3..).unwrap_or_default())
        .and_then(|p| ArpRepr::parse(&p));
    let Ok(request) = request else {
        ctx.drop(m, Stage::Parse, DropReason::ArpMalformed);
        return;
    };
    let node: &LocalNode = &ctx.t.node;
    let own_address = request.target_protocol_addr() == request.source_protocol_addr();
    let Some(reply) = request.reply(node.router_mac).filter(|_| !own_address) else {
        ctx.drop(m, Stage::Parse, DropReason::ArpIgnored);
        return;
    };
    let data = f.data_mut();
    let mut eth = EthernetFrame::new_unchecked(&mut data[..]);
    eth.set_dst_addr(request.source_hardware_addr());
    eth.set_src_addr(node.router_mac);
    if let Some(arp) = data.get_mut(l3..) {
        reply.emit(&mut ArpPacket::new_unchecked(arp));
    }
    ctx.c.arp_replies += 1;
    m.verdict = Verdict::Tx {
        ifindex: ctx.ingress_ifindex,
    };
}

/// ICMPv6 type 135 (the parse stage keeps the type of non-echo ICMP in `dport`).
fn is_neighbor_solicitation(m: &PacketMeta) -> bool {
    m.icmp == IcmpClass::Other
        && m.tuple.proto == u8::from(Protocol::Icmpv6)
        && m.tuple.dport == u16::from(u8::from(Icmpv6Message::NeighborSolicit))
}

/// Answers a pod's IPv6 Neighbor Solicitation with the router MAC, in place, back out of the
/// pod's interface: IPv6's twin of [`answer_arp`], so a pod resolves its gateway. Duplicate
/// address detection (unspecified source) and solicitations for the pod's own address get no
/// answer; RFC 4861 section 7.1.1 says to discard NS whose hop limit is not 255.
fn answer_neighbor_solicitation<B: AsRef<[u8]> + AsMut<[u8]>>(
    f: &mut Frame<B>,
    m: &mut PacketMeta,
    ctx: &mut Ctx<'_>,
) {
    let (IpAddr::V6(src), l3) = (m.tuple.src, usize::from(m.l3)) else {
        return;
    };
    let hop_limit = f.data().get(l3 + 7).copied().unwrap_or(0);
    let seg = f
        .data()
        .get(usize::from(m.l4)..usize::from(m.l4_end))
        .unwrap_or_default();
    let request = Icmpv6Packet::new_checked(seg).and_then(|p| Icmpv6Repr::parse(&p));
    let Ok(Icmpv6Repr::NeighborSolicit { target, .. }) = request else {
        ctx.drop(m, Stage::Parse, DropReason::L4Malformed);
        return;
    };
    if hop_limit != 255 || src.is_unspecified() || target == src {
        ctx.drop(m, Stage::Parse, DropReason::NdpIgnored);
        return;
    }
    let router_mac = ctx.t.node.router_mac;
    let answer = Icmpv6Repr::NeighborAdvert {
        flags: NeighborFlags::ROUTER | NeighborFlags::SOLICITED | NeighborFlags::OVERRIDE,
        target,
        lladdr: Some(router_mac),
    };
    let icmp_len = answer.buffer_len();
    if !f.set_len(l3 + ipv6::HEADER_LEN + icmp_len) {
        ctx.drop(m, Stage::Parse, DropReason::HeadroomExhausted);
        return;
    }
    let requester = EthernetFrame::new_unchecked(f.data()).src_addr();
    let data = f.data_mut();
    let mut eth = EthernetFrame::new_unchecked(&mut data[..]);
    eth.set_dst_addr(requester);
    eth.set_src_addr(router_mac);
    let ip = ipv6::Repr {
        src_addr: target,
        dst_addr: src,
        next_header: Protocol::Icmpv6,
        payload_len: icmp_len,
        hop_limit: 255,
        traffic_class: 0,
        flow_label: 0,
    };
    if let Some(hdr) = data.get_mut(l3..) {
        ip.emit(&mut Ipv6Packet::new_unchecked(hdr));
    }
    if let Some(icmp) = data.get_mut(l3 + ipv6::HEADER_LEN..) {
        answer.emit(&mut Icmpv6Packet::new_unchecked(icmp), target, src);
    }
    ctx.c.ndp_replies += 1;
    m.verdict = Verdict::Tx {
        ifindex: ctx.ingress_ifindex,
    };
}
