//! "Too big" ICMP errors for the route stage: a pod's packet that does not fit its path is
//! answered with ICMPv4 "destination unreachable / fragmentation needed" (type 3 code 4, RFC
//! 1191) or ICMPv6 "packet too big" (type 2, RFC 4443), carrying the path's MTU, so that the
//! pod's stack lowers its path MTU instead of retransmitting into a black hole.
//!
//! # Contract
//! - The error is built in place, in the frame that triggered it: new Ethernet + IP + ICMP
//!   headers are pushed in front of the original IP header (the frame's headroom holds them;
//!   they replace the original Ethernet header) and the quote is the original IP packet cut to
//!   fit the error's size limit: 576 bytes for ICMPv4 (RFC 1812 section 4.3.2.3), 1280 for
//!   ICMPv6 (RFC 4443 section 2.4 (c)). Nothing is allocated, nothing is copied but headers.
//! - The quote is the packet as the pod sent it: a DNAT to a service backend (or the reverse
//!   NAT of a backend's reply) done by earlier stages is undone first, so the pod's stack finds
//!   its socket from the quote. The route stage checks the fit before it decrements the TTL.
//! - Errors go only to pods, and never about: a frame from the uplink or an unknown interface;
//!   an ICMP error (RFC 1122 section 3.2.2, RFC 4443 section 2.4 (e)); IPv4 without Don't
//!   Fragment, which a router would fragment (the dataplane does not fragment: such a frame
//!   is dropped as `FrameTooLong`).
//! - Source: the pod's gateway address of the packet's family; without one the frame is
//!   dropped as `TooBigNoGateway`. Destination: the sending pod. TTL / hop limit 64.
//! - No rate limit: an error only ever goes back to the pod that sent the trigger, out of the
//!   interface it came from, and is smaller than the trigger.

use std::net::IpAddr;

use super::batch::{Ctx, Ingress};
use super::meta::{CtMark, IcmpClass, PacketMeta, Verdict};
use super::{nat, DropReason};
use crate::frame::Frame;
use crate::types::MacAddr;
use crate::wire::ethernet::{self, EtherType, EthernetFrame};
use crate::wire::icmpv4::{self, DstUnreachable, Icmpv4Packet, Repr as Icmpv4Repr};
use crate::wire::icmpv6::{self, Icmpv6Packet, Repr as Icmpv6Repr};
use crate::wire::ipv4::{self, Ipv4Packet, OptionBytes, Protocol};
use crate::wire::ipv6::{self, Ipv6Packet};

/// Largest ICMPv4 error, IP header included (RFC 1812 section 4.3.2.3).
pub(crate) const IPV4_ERROR_MAX_LEN: usize = 576;
/// Largest ICMPv6 error, IP header included (RFC 4443 section 2.4 (c)).
pub(crate) const IPV6_ERROR_MAX_LEN: usize = 1280;

/// Answers frame `f` from a pod, whose IP packet is longer than `mtu`, with the ICMP error
/// that tells the pod the path's MTU; the verdict sends it back out of the pod's interface.
/// `Err` is the reason to drop the frame instead (see the module doc for when).
pub(crate) fn too_big<B: AsRef<[u8]> + AsMut<[u8]>>(
    f: &mut Frame<B>,
    m: &mut PacketMeta,
    ctx: &mut Ctx<'_>,
    mtu: u16,
) -> Result<Verdict, DropReason> {
    let t = ctx.t;
    let Ingress::Pod(_) = ctx.ingress else {
        return Err(DropReason::FrameTooLong);
    };
    if m.icmp == IcmpClass::Error {
        return Err(DropReason::FrameTooLong);
    }
    let pod = m
        .src_slot
        .and_then(|s| t.endpoints.by_slot(s))
        .ok_or(DropReason::FrameTooLong)?;
    let (l3, l4) = (usize::from(m.l3), usize::from(m.l4));
    let (src, dst) = match m.tuple.src {
        IpAddr::V4(_) => {
            let hdr = f.data().get(l3..l4).ok_or(DropReason::FrameTooLong)?;
            if !Ipv4Packet::new_unchecked(hdr).dont_frag() {
                return Err(DropReason::FrameTooLong); // A router would fragment it; we do not.
            }
            let gateway = t.node.gateway_ipv4.ok_or(DropReason::TooBigNoGateway)?;
            let pod_ip = pod.spec.ipv4.ok_or(DropReason::FrameTooLong)?;
            (IpAddr::V4(gateway), IpAddr::V4(pod_ip))
        }
        IpAddr::V6(_) => {
            let gateway = t.node.gateway_ipv6.ok_or(DropReason::TooBigNoGateway)?;
            let pod_ip = pod.spec.ipv6.ok_or(DropReason::FrameTooLong)?;
            (IpAddr::V6(gateway), IpAddr::V6(pod_ip))
        }
    };
    undo_nat(f, m);
    let error = TooBig {
        router_mac: t.node.router_mac,
        pod_mac: pod.spec.mac,
        src,
        dst,
        mtu,
    };
    emit_too_big(f, l3, usize::from(m.l4_end), &error)?;
    ctx.c.icmp_too_big_sent += 1;
    Ok(Verdict::Tx {
        ifindex: ctx.ingress_ifindex,
    })
}

/// Puts back what the service and conntrack stages rewrote, so that the quote is the packet
/// the pod sent: the frontend as destination of a DNATed packet, the backend's own address and
/// port as source of a reverse-NATed reply (the conntrack key holds them as the packet came).
fn undo_nat<B: AsRef<[u8]> + AsMut<[u8]>>(f: &mut Frame<B>, m: &mut PacketMeta) {
    if let (Some(fe), false) = (m.frontend, m.dsr_in) {
        nat::rewrite_dst(f, m, fe.addr, fe.port);
    }
    if let (CtMark::Reply, Some(key)) = (m.ct, m.ct_key) {
        let (addr, port) = key.src();
        if (addr, port) != (m.tuple.src, m.tuple.sport) {
            nat::rewrite_src(f, m, addr, port);
        }
    }
}

/// What a too-big error says, and between whom.
#[derive(Clone, Copy, Debug)]
pub(crate) struct TooBig {
    pub router_mac: MacAddr,
    pub pod_mac: MacAddr,
    /// The error's source (the pod's gateway) and destination (the sender); one family.
    pub src: IpAddr,
    pub dst: IpAddr,
    /// The next-hop MTU reported.
    pub mtu: u16,
}

/// Rewrites `f`, whose IP packet is `f.data()[l3..ip_end]`, into the too-big error `e`: the
/// Ethernet + IP + ICMP headers take the place of the Ethernet header and some headroom, and
/// the original IP packet, cut to the error's size limit, stays where it is as the quote.
/// On `Err` the frame is unchanged.
pub(crate) fn emit_too_big<B: AsRef<[u8]> + AsMut<[u8]>>(
    f: &mut Frame<B>,
    l3: usize,
    ip_end: usize,
    e: &TooBig,
) -> Result<(), DropReason> {
    let (ip_hdr_len, icmp_hdr_len, max_len, ethertype) = match (e.src, e.dst) {
        (IpAddr::V4(_), IpAddr::V4(_)) => (
            ipv4::HEADER_LEN,
            icmpv4::HEADER_LEN,
            IPV4_ERROR_MAX_LEN,
            EtherType::Ipv4,
        ),
        (IpAddr::V6(_), IpAddr::V6(_)) => (
            ipv6::HEADER_LEN,
            icmpv6::HEADER_LEN,
            IPV6_ERROR_MAX_LEN,
            EtherType::Ipv6,
        ),
        _ => return Err(DropReason::FrameTooLong),
    };
    let original_len = match ip_end.checked_sub(l3) {
        Some(n) if ip_end <= f.len() => n,
        _ => return Err(DropReason::FrameTooLong),
    };
    let icmp_at = ethernet::HEADER_LEN + ip_hdr_len;
    let quote_at = icmp_at + icmp_hdr_len;
    let quote_len = original_len.min(max_len - ip_hdr_len - icmp_hdr_len);
    // Move the window's start so that the original IP header lands at `quote_at`.
    if quote_at >= l3 {
        f.push_front(quote_at - l3)
            .ok_or(DropReason::HeadroomExhausted)?;
    } else if !f.pull_front(l3 - quote_at) {
        return Err(DropReason::FrameTooLong);
    }
    // Shrinks the frame (the quote ends at or before `ip_end`), which cannot fail.
    f.set_len(quote_at + quote_len);
    let data = f.data_mut();
    let (eth_hdr, rest) = data.split_at_mut(ethernet::HEADER_LEN);
    let (ip_hdr, icmp) = rest.split_at_mut(ip_hdr_len);
    let mut eth = EthernetFrame::new_unchecked(eth_hdr);
    eth.set_dst_addr(e.pod_mac);
    eth.set_src_addr(e.router_mac);
    eth.set_ethertype(ethertype);
    match (e.src, e.dst) {
        (IpAddr::V4(src), IpAddr::V4(dst)) => {
            let repr = ipv4::Repr {
                src_addr: src,
                dst_addr: dst,
                protocol: Protocol::Icmp,
                payload_len: icmp.len(),
                ttl: ipv4::DEFAULT_TTL,
                dscp: 0,
                ecn: 0,
                ident: 0,
                dont_frag: false,
                more_frags: false,
                frag_offset: 0,
                options: OptionBytes::EMPTY,
            };
            repr.emit(&mut Ipv4Packet::new_unchecked(ip_hdr));
            Icmpv4Repr::DstUnreachable {
                reason: DstUnreachable::FragRequired,
                next_hop_mtu: e.mtu,
                quoted_len: quote_len,
            }
            .emit(&mut Icmpv4Packet::new_unchecked(icmp));
        }
        (IpAddr::V6(src), IpAddr::V6(dst)) => {
            let repr = ipv6::Repr::new(src, dst, Protocol::Icmpv6, icmp.len());
            repr.emit(&mut Ipv6Packet::new_unchecked(ip_hdr));
            Icmpv6Repr::PktTooBig {
                mtu: u32::from(e.mtu),
                quoted_len: quote_len,
            }
            .emit(&mut Icmpv6Packet::new_unchecked(icmp), src, dst);
        }
        _ => {} // Refused above.
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::DEFAULT_HEADROOM;
    use crate::testutil::{PacketBuilder, TCP_ACK};
    use proptest::prelude::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    const ROUTER: MacAddr = MacAddr([0x02, 0, 0, 0, 0xff, 1]);
    const POD: MacAddr = MacAddr([0x02, 0, 0, 0, 0, 1]);

    fn v4(a: [u8; 4]) -> IpAddr {
        IpAddr::V4(Ipv4Addr::from(a))
    }

    fn v6(last: u16) -> IpAddr {
        IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, last))
    }

    /// A TCP packet from the pod with `payload` bytes of payload, in a frame with `headroom`.
    fn packet(v6_family: bool, payload: usize, headroom: usize) -> (Vec<u8>, Frame<Vec<u8>>) {
        let (src, dst) = if v6_family {
            (v6(11), v6(21))
        } else {
            (v4([10, 1, 0, 11]), v4([10, 2, 0, 21]))
        };
        let bytes = PacketBuilder::tcp(src, 40000, dst, 80, TCP_ACK)
            .macs(POD, ROUTER)
            .payload(&vec![0xab; payload])
            .build();
        let frame = Frame::from_packet(&bytes, headroom, 0);
        (bytes, frame)
    }

    fn error_for(v6_family: bool, mtu: u16) -> TooBig {
        let (src, dst) = if v6_family {
            (v6(1), v6(11))
        } else {
            (v4([10, 1, 0, 1]), v4([10, 1, 0, 11]))
        };
        TooBig {
            router_mac: ROUTER,
            pod_mac: POD,
            src,
            dst,
            mtu,
        }
    }

    /// Checks everything a receiver checks, and returns the quote.
    fn parse_error(out: &[u8], v6_family: bool, mtu: u16) -> Vec<u8> {
        let eth = EthernetFrame::new_checked(out).unwrap();
        assert_eq!((eth.dst_addr(), eth.src_addr()), (POD, ROUTER));
        if v6_family {
            assert_eq!(eth.ethertype(), EtherType::Ipv6);
            let ip = Ipv6Packet::new_checked(eth.payload()).unwrap();
            let r = ipv6::Repr::parse(&ip).unwrap();
            assert_eq!(
                (r.src_addr, r.dst_addr),
                (
                    Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1),
                    Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 11)
                )
            );
            assert_eq!((r.next_header, r.hop_limit), (Protocol::Icmpv6, 64));
            assert_eq!(r.buffer_len(), eth.payload().len());
            let icmp = Icmpv6Packet::new_checked(ip.payload()).unwrap();
            assert!(icmp.verify_checksum(r.src_addr, r.dst_addr));
            match Icmpv6Repr::parse(&icmp).unwrap() {
                Icmpv6Repr::PktTooBig { mtu: got, .. } => assert_eq!(got, u32::from(mtu)),
                other => panic!("{other:?}"),
            }
            icmp.quoted().to_vec()
        } else {
            assert_eq!(eth.ethertype(), EtherType::Ipv4);
            let ip = Ipv4Packet::new_checked(eth.payload()).unwrap();
            let r = ipv4::Repr::parse(&ip).unwrap(); // Verifies the header checksum.
            assert_eq!(
                (r.src_addr, r.dst_addr),
                (Ipv4Addr::new(10, 1, 0, 1), Ipv4Addr::new(10, 1, 0, 11))
            );
            assert_eq!((r.protocol, r.ttl), (Protocol::Icmp, 64));
            assert_eq!(r.buffer_len(), eth.payload().len());
            let icmp = Icmpv4Packet::new_checked(ip.payload()).unwrap();
            assert!(icmp.verify_checksum());
            match Icmpv4Repr::parse(&icmp).unwrap() {
                Icmpv4Repr::DstUnreachable {
                    reason,
                    next_hop_mtu,
                    ..
                } => assert_eq!((reason, next_hop_mtu), (DstUnreachable::FragRequired, mtu)),
                other => panic!("{other:?}"),
            }
            icmp.quoted().to_vec()
        }
    }

    #[test]
    fn full_size_ipv4_quotes_up_to_576_bytes() {
        let (orig, mut f) = packet(false, 1460, DEFAULT_HEADROOM);
        emit_too_big(&mut f, 14, orig.len(), &error_for(false, 1442)).unwrap();
        assert_eq!(f.len(), 14 + 576);
        let quote = parse_error(f.data(), false, 1442);
        assert_eq!(quote.len(), 576 - 28);
        assert_eq!(quote[..], orig[14..14 + quote.len()]);
    }

    #[test]
    fn full_size_ipv6_quotes_up_to_1280_bytes() {
        let (orig, mut f) = packet(true, 1440, DEFAULT_HEADROOM);
        emit_too_big(&mut f, 14, orig.len(), &error_for(true, 1442)).unwrap();
        assert_eq!(f.len(), 14 + 1280);
        let quote = parse_error(f.data(), true, 1442);
        assert_eq!(quote[..], orig[14..14 + 1232]);
    }

    #[test]
    fn short_headroom_or_mixed_families_change_nothing() {
        let (orig, mut f) = packet(false, 1460, 27);
        assert_eq!(
            emit_too_big(&mut f, 14, orig.len(), &error_for(false, 1442)),
            Err(DropReason::HeadroomExhausted)
        );
        assert_eq!(f.data(), &orig[..]);
        let mixed = TooBig {
            dst: v6(11),
            ..error_for(false, 1442)
        };
        assert_eq!(
            emit_too_big(&mut f, 14, orig.len(), &mixed),
            Err(DropReason::FrameTooLong)
        );
        assert_eq!(
            emit_too_big(&mut f, 14, orig.len() + 1, &error_for(false, 1442)),
            Err(DropReason::FrameTooLong)
        );
        assert_eq!(f.data(), &orig[..]);
    }

    proptest! {
        /// Whatever the packet's size: the error fits its limit, its checksums verify, and the
        /// quote is a prefix of the original IP packet (all of it when it is short enough).
        #[test]
        fn error_is_bounded_and_quotes_a_prefix(
            v6_family in any::<bool>(),
            payload in 0usize..9000,
            mtu in 1280u16..9000,
        ) {
            let (orig, mut f) = packet(v6_family, payload, DEFAULT_HEADROOM);
            emit_too_big(&mut f, 14, orig.len(), &error_for(v6_family, mtu)).unwrap();
            let (limit, headers) = if v6_family {
                (IPV6_ERROR_MAX_LEN, 40 + 8)
            } else {
                (IPV4_ERROR_MAX_LEN, 20 + 8)
            };
            prop_assert!(f.len() - 14 <= limit);
            let quote = parse_error(f.data(), v6_family, mtu);
            let ip = &orig[14..];
            prop_assert_eq!(quote.len(), ip.len().min(limit - headers));
            prop_assert_eq!(&quote[..], &ip[..quote.len()]);
        }
    }
}
