//! Identity stage: who sent the frame and who receives it.
//!
//! - From a pod: the frame must carry its endpoint's MAC and IP (anti-spoofing, Cilium's
//!   DROP_INVALID_SMAC / DROP_INVALID_SIP); the source identity is the endpoint's. IPv6 from
//!   the pod's link-local or unspecified address (neighbor discovery, MLD) is dropped under its
//!   own reason, not counted as spoofing.
//! - From the host interface: `host` when the source is one of the node's own addresses;
//!   anything else the kernel sends there is something it forwards from elsewhere, which the
//!   dataplane cannot vouch for: `world` (never a pod's identity, which an address alone must
//!   not earn). Link-scoped IPv6 sources (the kernel's own neighbor discovery, MLD) are dropped
//!   as from a pod. The host's side is a veth: its L4 checksums are completed as pods' are.
//! - From a tunnel: the VNI already gave the source identity (decap stage).
//! - From the uplink otherwise: the ipcache gives it (`world` when no prefix matches). A reply
//!   to a masqueraded flow gets the pod's address back first (`masquerade::reverse`), so that
//!   the destination resolved below is the pod.
//!
//! The destination is a local endpoint (by IP) or resolved through the ipcache, which also
//! names the tunnel endpoint of a remote pod (`resolve::destination`). Frames from pods get
//! their L4 checksum completed (`l4_checksum::complete`) when the pipeline is configured to:
//! here, because this is the first stage that knows the frame comes from its pod's endpoint,
//! and the last before any stage patches checksums incrementally.

use std::net::{IpAddr, Ipv6Addr};

use super::batch::{Batch, Ctx, Ingress};
use super::meta::{Family, PacketMeta};
use super::{l4_checksum, masquerade, resolve, DropReason, Stage};
use crate::tables::endpoints::Endpoint;
use crate::tables::LocalNode;
use crate::types::Identity;
use crate::wire::ethernet::EthernetFrame;

pub(crate) fn run<B: AsRef<[u8]> + AsMut<[u8]>>(batch: &mut Batch<'_, B>, ctx: &mut Ctx<'_>) {
    let sender = match ctx.ingress {
        // The slot comes with the endpoint: policy reaches the sender without a hash probe.
        Ingress::Pod(_) => ctx.t.endpoints.slot_by_ifindex(ctx.ingress_ifindex),
        _ => None,
    };
    let is_ip = |m: &PacketMeta| matches!(m.family, Family::Ipv4 | Family::Ipv6);
    batch.for_each(ctx, Stage::Identity, is_ip, |f, m, ctx| {
        if let Some((slot, ep)) = sender {
            check_sender(f.data(), m, ep)?;
            m.src_identity = ep.identity();
            m.src_ep = Some(ep.id());
            m.src_slot = Some(slot);
            if ctx.complete_l4_checksums && l4_checksum::complete(f, m) {
                ctx.c.l4_checksum_completed += 1;
            }
        } else if ctx.ingress == Ingress::Host {
            m.src_identity = host_source_identity(&ctx.t.node, m.tuple.src)?;
            // The host's side is a veth too: its frames carry partial checksums as pods' do.
            if ctx.complete_l4_checksums && l4_checksum::complete(f, m) {
                ctx.c.l4_checksum_completed += 1;
            }
        } else if !m.from_tunnel {
            m.src_identity = ctx.t.ipcache.identity_of(m.tuple.src);
        }
        if ctx.ingress == Ingress::Uplink {
            // A reply to a SNATed flow (natively or out of a tunnel): to its original source.
            masquerade::reverse(f, m, ctx)?;
        }
        resolve::destination(m, ctx.t);
        Ok(())
    });
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

/// Who sent a frame that came from the host interface (see the module doc).
fn host_source_identity(node: &LocalNode, src: IpAddr) -> Result<Identity, DropReason> {
    match src {
        IpAddr::V6(a) if is_link_scoped(a) => Err(DropReason::Ipv6LinkScopedSource),
        _ if node.is_local_addr(src) => Ok(Identity::HOST),
        _ => Ok(Identity::WORLD),
    }
}

/// The unspecified address `::` or a link-local unicast address (`fe80::/10`, RFC 4291
/// section 2.5.6): valid only on the link, never forwarded.
fn is_link_scoped(a: Ipv6Addr) -> bool {
    a.is_unspecified() || a.is_unicast_link_local()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_host_is_host_only_from_its_own_addresses() {
        let node = LocalNode {
            underlay_ipv4: Some("192.0.2.1".parse().unwrap()),
            gateway_ipv4: Some("10.1.0.1".parse().unwrap()),
            gateway_ipv6: Some("fd00:1::1".parse().unwrap()),
            ..LocalNode::default()
        };
        for own in ["192.0.2.1", "10.1.0.1", "fd00:1::1"] {
            assert_eq!(
                host_source_identity(&node, own.parse().unwrap()),
                Ok(Identity::HOST),
                "{own}"
            );
        }
        // Forwarded by the kernel from elsewhere, even from a pod's or a node's address.
        for other in ["10.1.0.7", "192.0.2.2", "8.8.8.8", "fd00:1::7"] {
            assert_eq!(
                host_source_identity(&node, other.parse().unwrap()),
                Ok(Identity::WORLD),
                "{other}"
            );
        }
        assert_eq!(
            host_source_identity(&node, "fe80::1".parse().unwrap()),
            Err(DropReason::Ipv6LinkScopedSource)
        );
    }

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
