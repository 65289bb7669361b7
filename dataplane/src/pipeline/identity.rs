//! Identity stage: who sent the frame and who receives it.
//!
//! - From a pod: the frame must carry its endpoint's MAC and IP (anti-spoofing, Cilium's
//!   DROP_INVALID_SMAC / DROP_INVALID_SIP); the source identity is the endpoint's. IPv6 from
//!   the pod's link-local or unspecified address (neighbor discovery, MLD) is dropped under its
//!   own reason, not counted as spoofing.
//! - From a tunnel: the VNI already gave the source identity (decap stage).
//! - From the uplink otherwise: the ipcache gives it (`world` when no prefix matches).
//!
//! The destination is a local endpoint (by IP) or resolved through the ipcache, which also
//! names the tunnel endpoint of a remote pod. Frames from pods get their L4 checksum completed
//! here when the pipeline is configured to (before any incremental rewrite).

use std::net::{IpAddr, Ipv6Addr};

use super::meta::{Family, PacketMeta, Verdict};
use super::{Ctx, DropReason, Ingress, Stage};
use crate::frame::Frame;
use crate::tables::endpoints::Endpoint;
use crate::wire::ethernet::EthernetFrame;
use crate::wire::ipv4::Protocol;
use crate::wire::{tcp::TcpPacket, udp::UdpPacket};

pub(crate) fn run<B: AsRef<[u8]> + AsMut<[u8]>>(
    frames: &mut [Frame<B>],
    meta: &mut [PacketMeta],
    ctx: &mut Ctx<'_>,
) {
    let sender = match ctx.ingress {
        // The slot comes with the endpoint: policy reaches the sender without a hash probe.
        Ingress::Pod(_) => ctx.t.endpoints.slot_by_ifindex(ctx.ingress_ifindex),
        _ => None,
    };
    for (f, m) in frames.iter_mut().zip(meta.iter_mut()) {
        if m.verdict != Verdict::Pending || !matches!(m.family, Family::Ipv4 | Family::Ipv6) {
            continue;
        }
        ctx.c.stage_in[Stage::Identity as usize] += 1;
        if let Some((slot, ep)) = sender {
            if let Err(reason) = check_sender(f.data(), m, ep) {
                ctx.drop(m, Stage::Identity, reason);
                continue;
            }
            m.src_identity = ep.identity();
            m.src_ep = Some(ep.id());
            m.src_slot = Some(slot);
            if ctx.complete_l4_checksums && complete_l4_checksum(f, m) {
                ctx.c.l4_checksum_completed += 1;
            }
        } else if !m.from_tunnel {
            m.src_identity = ctx.t.ipcache.identity_of(m.tuple.src);
        }
        resolve_destination(m, ctx);
    }
}

/// Anti-spoofing: a pod sends only from its own MAC and IP.
fn check_sender(data: &[u8], m: &PacketMeta, ep: &Endpoint) -> Result<(), DropReason> {
    if EthernetFrame::new_unchecked(data).src_addr() != ep.spec.mac {
        return Err(DropReason::InvalidSourceMac);
    }
    match m.tuple.src {
        IpAddr::V4(a) if ep.spec.ipv4 == Some(a) => Ok(()),
        IpAddr::V6(a) if ep.spec.ipv6 == Some(a) => Ok(()),
        // Every IPv6 interface sends neighbor discovery and MLD from these on its own: counting
        // them as spoofing would bury real spoofing under noise.
        IpAddr::V6(a) if is_link_scoped(a) => Err(DropReason::Ipv6LinkScopedSource),
        _ => Err(DropReason::InvalidSourceIp),
    }
}

/// The unspecified address `::` or a link-local unicast address (`fe80::/10`, RFC 4291
/// section 2.5.6): valid only on the link, never forwarded.
fn is_link_scoped(a: Ipv6Addr) -> bool {
    a.is_unspecified() || a.is_unicast_link_local()
}

/// Sets the destination endpoint, identity and tunnel endpoint from the destination address.
pub(crate) fn resolve_destination(m: &mut PacketMeta, ctx: &Ctx<'_>) {
    if let Some((slot, ep)) = ctx.t.endpoints.slot_by_ip(m.tuple.dst) {
        m.dst_ep = Some(ep.id());
        m.dst_slot = Some(slot);
        m.dst_identity = ep.identity();
        m.tunnel_endpoint = None;
        return;
    }
    m.dst_ep = None;
    m.dst_slot = None;
    match ctx.t.ipcache.lookup(m.tuple.dst) {
        Some(e) => {
            m.dst_identity = e.identity;
            m.tunnel_endpoint = e.tunnel_endpoint;
        }
        None => {
            m.dst_identity = crate::types::Identity::WORLD;
            m.tunnel_endpoint = None;
        }
    }
}

/// Recomputes the TCP/UDP checksum of a frame whose field holds only the pseudo-header sum.
/// Returns true when it wrote one. A UDP/IPv4 field of zero ("no checksum") is left alone.
fn complete_l4_checksum<B: AsRef<[u8]> + AsMut<[u8]>>(f: &mut Frame<B>, m: &PacketMeta) -> bool {
    let (l4, end) = (usize::from(m.l4), usize::from(m.l4_end));
    let (src, dst) = (m.tuple.src, m.tuple.dst);
    let Some(seg) = f.data_mut().get_mut(l4..end) else {
        return false;
    };
    match Protocol::from(m.tuple.proto) {
        Protocol::Tcp => {
            let mut p = TcpPacket::new_unchecked(seg);
            match (src, dst) {
                (IpAddr::V4(s), IpAddr::V4(d)) => p.fill_checksum_v4(s, d),
                (IpAddr::V6(s), IpAddr::V6(d)) => p.fill_checksum_v6(s, d),
                _ => return false,
            }
            true
        }
        Protocol::Udp => {
            let mut p = UdpPacket::new_unchecked(seg);
            match (src, dst) {
                (IpAddr::V4(_), _) if p.checksum() == 0 => return false,
                (IpAddr::V4(s), IpAddr::V4(d)) => p.fill_checksum_v4(s, d),
                (IpAddr::V6(s), IpAddr::V6(d)) => p.fill_checksum_v6(s, d),
                _ => return false,
            }
            true
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_scoped_sources() {
        let scoped = ["::", "fe80::1", "febf:ffff::1"];
        let routed = ["fd00::1:11", "2001:db8::1", "fec0::1", "::1", "ff02::2"];
        for a in scoped {
            assert!(is_link_scoped(a.parse().unwrap()), "{a}");
        }
        for a in routed {
            assert!(!is_link_scoped(a.parse().unwrap()), "{a}");
        }
    }
}
