//! Parse stage: validate headers once and fill the packet metadata (`headers::parse`).
//!
//! Every header boundary is checked through the wire views' `new_checked`; a frame cut short
//! or malformed at any boundary is dropped with the reason naming that header. Frames from an
//! interface nothing is configured for are dropped here. ARP requests and IPv6 neighbor
//! solicitations from pods are answered here (the dataplane is the pods' gateway): the frame is
//! rewritten in place into the reply and sent back out of the interface it came from; so are
//! the host's, on the host interface, for the pods it routes there. On the uplink, ARP and
//! anything that is not IP go to the kernel.

use std::net::IpAddr;

use super::batch::{any, Batch, Ctx, Ingress};
use super::meta::{Family, IcmpClass, PacketMeta, Verdict};
use super::{headers, DropReason, Stage};
use crate::frame::Frame;
use crate::tables::LocalNode;
use crate::wire::arp::{ArpPacket, Repr as ArpRepr};
use crate::wire::ethernet::EthernetFrame;
use crate::wire::icmpv6::{
    Icmpv6Packet, Message as Icmpv6Message, NeighborFlags, Repr as Icmpv6Repr,
};
use crate::wire::ipv4::Protocol;
use crate::wire::ipv6::{self, Ipv6Packet};

pub(crate) fn run<B: AsRef<[u8]> + AsMut<[u8]>>(batch: &mut Batch<'_, B>, ctx: &mut Ctx<'_>) {
    batch.for_each(ctx, Stage::Parse, any, |f, m, ctx| {
        if ctx.ingress == Ingress::Unknown {
            return Err(DropReason::UnknownInterface);
        }
        headers::parse(f.data(), m)?;
        match (m.family, ctx.ingress) {
            // The host resolves the pods it routes to the host interface as pods resolve their
            // gateway: every address gets the router MAC.
            (Family::Arp, Ingress::Pod(_) | Ingress::Host) => answer_arp(f, m, ctx),
            (Family::Ipv6, Ingress::Pod(_) | Ingress::Host) if is_neighbor_solicitation(m) => {
                answer_neighbor_solicitation(f, m, ctx)
            }
            (Family::Other, Ingress::Pod(_) | Ingress::Host) => {
                Err(DropReason::UnsupportedEtherType)
            }
            // The kernel owns the uplink's ARP and anything that is not IP.
            (Family::Arp | Family::Other, _) => {
                m.verdict = Verdict::Pass;
                Ok(())
            }
            _ => Ok(()),
        }
    });
}

/// Answers an ARP request from a pod with the router MAC, in place, back out of the pod's
/// interface. A pod resolves only its gateway (it has a /32 and a default route), but any
/// address other than its own gets the router MAC, as Cilium's ARP responder does.
fn answer_arp<B: AsRef<[u8]> + AsMut<[u8]>>(
    f: &mut Frame<B>,
    m: &mut PacketMeta,
    ctx: &mut Ctx<'_>,
) -> Result<(), DropReason> {
    let l3 = usize::from(m.l3);
    let request = ArpPacket::new_checked(f.data().get(l3..).unwrap_or_default())
        .and_then(|p| ArpRepr::parse(&p));
    let Ok(request) = request else {
        return Err(DropReason::ArpMalformed);
    };
    let node: &LocalNode = &ctx.t.node;
    let own_address = request.target_protocol_addr() == request.source_protocol_addr();
    let Some(reply) = request.reply(node.router_mac).filter(|_| !own_address) else {
        return Err(DropReason::ArpIgnored);
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
    Ok(())
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
) -> Result<(), DropReason> {
    let (IpAddr::V6(src), l3) = (m.tuple.src, usize::from(m.l3)) else {
        return Ok(());
    };
    let hop_limit = f.data().get(l3 + 7).copied().unwrap_or(0);
    let seg = f
        .data()
        .get(usize::from(m.l4)..usize::from(m.l4_end))
        .unwrap_or_default();
    let request = Icmpv6Packet::new_checked(seg).and_then(|p| Icmpv6Repr::parse(&p));
    let Ok(Icmpv6Repr::NeighborSolicit { target, .. }) = request else {
        return Err(DropReason::L4Malformed);
    };
    if hop_limit != 255 || src.is_unspecified() || target == src {
        return Err(DropReason::NdpIgnored);
    }
    let router_mac = ctx.t.node.router_mac;
    let answer = Icmpv6Repr::NeighborAdvert {
        flags: NeighborFlags::ROUTER | NeighborFlags::SOLICITED | NeighborFlags::OVERRIDE,
        target,
        lladdr: Some(router_mac),
    };
    let icmp_len = answer.buffer_len();
    if !f.set_len(l3 + ipv6::HEADER_LEN + icmp_len) {
        return Err(DropReason::HeadroomExhausted);
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
    Ok(())
}
