//! Service stage: load balancing to a Maglev-chosen backend (DNAT), and the DSR option on the
//! backend's node.
//!
//! - A frame addressed to a service frontend (VIP, port, protocol) is DNATed to the backend
//!   that Maglev picks for its flow hash; the hash and the seed are the same on every node, so
//!   every node picks the same backend for a flow. The original frontend is remembered for the
//!   conntrack entry (reverse NAT of replies) and, for a DSR service whose backend is on another
//!   node, for the DSR option the route stage writes.
//! - A frame that carries a DSR IPv4 option arrives on the backend's node: the option is
//!   removed (the pod sees a plain packet) and its frontend is remembered so that the backend's
//!   replies leave with the VIP as their source, straight to the client. A Geneve DSR option
//!   was already taken by the decap stage.
//!
//! Checksums are updated incrementally (RFC 1624) for every rewrite.

use std::net::IpAddr;

use super::meta::{FrontendAddr, PacketMeta, Verdict};
use super::{identity, Ctx, DropReason, Stage};
use crate::frame::Frame;
use crate::tables::services::{flow_hash, LbMode};
use crate::wire::ipv4::{self, Ipv4Packet, Protocol};
use crate::wire::ipv6::Ipv6Packet;
use crate::wire::{tcp::TcpPacket, udp::UdpPacket};

pub(crate) fn run<B: AsRef<[u8]> + AsMut<[u8]>>(
    frames: &mut [Frame<B>],
    meta: &mut [PacketMeta],
    ctx: &mut Ctx<'_>,
) {
    for (f, m) in frames.iter_mut().zip(meta.iter_mut()) {
        if m.verdict != Verdict::Pending || m.l4 == 0 {
            continue;
        }
        ctx.c.stage_in[Stage::Service as usize] += 1;
        if m.dsr_option_offset != 0 {
            if let Err(reason) = consume_dsr_option(f, m) {
                ctx.drop(m, Stage::Service, reason);
                continue;
            }
            ctx.c.dsr_option_consumed += 1;
        }
        if m.frontend.is_some() {
            continue; // DSR traffic on the backend's node: already addressed to the backend.
        }
        let t = m.tuple;
        if !matches!(Protocol::from(t.proto), Protocol::Tcp | Protocol::Udp) {
            continue;
        }
        let Some(svc) = ctx.t.services.lookup(t.dst, t.dport, t.proto) else {
            continue;
        };
        let hash = flow_hash(
            t.src,
            t.dst,
            t.sport,
            t.dport,
            t.proto,
            ctx.t.services.seed(),
        );
        let Some(backend) = svc.select(hash) else {
            ctx.drop(m, Stage::Service, DropReason::NoServiceBackend);
            continue;
        };
        let (addr, port, mode) = (backend.addr, backend.port, svc.mode());
        if !rewrite_dst(f, m, addr, port) {
            ctx.drop(m, Stage::Service, DropReason::L4Malformed);
            continue;
        }
        m.frontend = Some(FrontendAddr {
            addr: t.dst,
            port: t.dport,
        });
        ctx.c.dnat += 1;
        identity::resolve_destination(m, ctx);
        m.dsr_out = mode == LbMode::Dsr && m.dst_ep.is_none() && addr.is_ipv4();
    }
}

/// Removes the DSR IPv4 option found by the parse stage and remembers its frontend.
fn consume_dsr_option<B: AsRef<[u8]> + AsMut<[u8]>>(
    f: &mut Frame<B>,
    m: &mut PacketMeta,
) -> Result<(), DropReason> {
    use crate::wire::ipv4::DsrOption;
    let l3 = usize::from(m.l3);
    let at = l3 + usize::from(m.dsr_option_offset);
    let option = f
        .data()
        .get(at..at + ipv4::DSR_OPTION_LEN)
        .and_then(|b| DsrOption::parse_ipv4(b).ok())
        .ok_or(DropReason::DsrOptionMalformed)?;
    if !f.remove_range(at, ipv4::DSR_OPTION_LEN) {
        return Err(DropReason::DsrOptionMalformed);
    }
    let mut ip = Ipv4Packet::new_unchecked(f.data_mut().get_mut(l3..).unwrap_or_default());
    let ihl = ip.header_len() - ipv4::DSR_OPTION_LEN;
    ip.set_header_len(ihl);
    let total = ip.total_len() - ipv4::DSR_OPTION_LEN as u16;
    ip.set_total_len(total);
    ip.fill_checksum();
    m.l4 -= ipv4::DSR_OPTION_LEN as u16;
    m.l4_end -= ipv4::DSR_OPTION_LEN as u16;
    m.dsr_option_offset = 0;
    m.frontend = Some(FrontendAddr {
        addr: IpAddr::V4(option.addr),
        port: option.port,
    });
    m.dsr_in = true;
    Ok(())
}

/// DNAT: destination address and port to `addr:port`, checksums updated incrementally.
/// Returns false when the families differ (validated away by the service table) .
pub(crate) fn rewrite_dst<B: AsRef<[u8]> + AsMut<[u8]>>(
    f: &mut Frame<B>,
    m: &mut PacketMeta,
    addr: IpAddr,
    port: u16,
) -> bool {
    let old = m.tuple.dst;
    if !rewrite_addr(f, m, old, addr, false) {
        return false;
    }
    rewrite_port(f, m, port, false);
    m.tuple.dst = addr;
    m.tuple.dport = port;
    true
}

/// Reverse NAT of a reply: source address and port back to the frontend's.
pub(crate) fn reverse_nat<B: AsRef<[u8]> + AsMut<[u8]>>(
    f: &mut Frame<B>,
    m: &mut PacketMeta,
    addr: IpAddr,
    port: u16,
) {
    let old = m.tuple.src;
    if rewrite_addr(f, m, old, addr, true) {
        rewrite_port(f, m, port, true);
        m.tuple.src = addr;
        m.tuple.sport = port;
    }
}

/// Reverse NAT of an ICMPv4 error sent by a backend about a flow that was DNATed to it: the
/// outer source becomes the frontend, and so do the destination address and port of the quoted
/// packet (with the quoted IP header's checksum). Every change to the quoted bytes patches the
/// ICMP checksum incrementally. The quoted transport checksum is left alone: it covers bytes
/// the quote does not hold, and receivers do not check it. Returns false (nothing changed)
/// for IPv6 or a quote too short to rewrite.
pub(crate) fn reverse_nat_icmp_error<B: AsRef<[u8]> + AsMut<[u8]>>(
    f: &mut Frame<B>,
    m: &mut PacketMeta,
    addr: IpAddr,
    port: u16,
) -> bool {
    use crate::wire::icmpv4::Icmpv4Packet;
    let (IpAddr::V4(frontend), IpAddr::V4(backend)) = (addr, m.inner.dst) else {
        return false;
    };
    let (l3, l4, end) = (usize::from(m.l3), usize::from(m.l4), usize::from(m.l4_end));
    let data = f.data_mut();
    let Some(msg) = data.get_mut(l4..end) else {
        return false;
    };
    let mut icmp = Icmpv4Packet::new_unchecked(msg);
    let quoted = icmp.quoted();
    let ihl = usize::from(quoted.first().copied().unwrap_or(0) & 0x0f) * 4;
    if ihl < ipv4::HEADER_LEN || quoted.len() < ihl + 4 {
        return false;
    }
    let inner_check = u16::from_be_bytes([quoted[10], quoted[11]]);
    let inner_check =
        crate::wire::checksum::update32(inner_check, u32::from(backend), u32::from(frontend));
    let rewrites: [(usize, &[u8]); 3] = [
        (16, &frontend.octets()),
        (10, &inner_check.to_be_bytes()),
        (ihl + 2, &port.to_be_bytes()),
    ];
    for (offset, bytes) in rewrites {
        if icmp.rewrite_payload_incremental(offset, bytes).is_err() {
            return false;
        }
    }
    let Some(hdr) = data.get_mut(l3..l4) else {
        return false;
    };
    Ipv4Packet::new_unchecked(hdr).set_src_addr_incremental(frontend);
    m.tuple.src = addr;
    m.inner.dst = addr;
    m.inner.dport = port;
    true
}

/// Rewrites the source (`src = true`) or destination IP address, fixing the IPv4 header
/// checksum and the TCP/UDP pseudo-header checksum.
fn rewrite_addr<B: AsRef<[u8]> + AsMut<[u8]>>(
    f: &mut Frame<B>,
    m: &PacketMeta,
    old: IpAddr,
    new: IpAddr,
    src: bool,
) -> bool {
    let (l3, l4, end) = (usize::from(m.l3), usize::from(m.l4), usize::from(m.l4_end));
    let data = f.data_mut();
    match (old, new) {
        (IpAddr::V4(o), IpAddr::V4(n)) => {
            let Some(hdr) = data.get_mut(l3..l4) else {
                return false;
            };
            let mut ip = Ipv4Packet::new_unchecked(hdr);
            if src {
                ip.set_src_addr_incremental(n);
            } else {
                ip.set_dst_addr_incremental(n);
            }
            update_l4(
                data.get_mut(l4..end),
                m.tuple.proto,
                |seg, proto| match proto {
                    Protocol::Tcp => {
                        TcpPacket::new_unchecked(seg).update_checksum_for_addr_v4(o, n)
                    }
                    _ => UdpPacket::new_unchecked(seg).update_checksum_for_addr_v4(o, n),
                },
            );
            true
        }
        (IpAddr::V6(o), IpAddr::V6(n)) => {
            let Some(hdr) = data.get_mut(l3..l4) else {
                return false;
            };
            let mut ip = Ipv6Packet::new_unchecked(hdr);
            if src {
                ip.set_src_addr(n);
            } else {
                ip.set_dst_addr(n);
            }
            update_l4(
                data.get_mut(l4..end),
                m.tuple.proto,
                |seg, proto| match proto {
                    Protocol::Tcp => {
                        TcpPacket::new_unchecked(seg).update_checksum_for_addr_v6(o, n)
                    }
                    _ => UdpPacket::new_unchecked(seg).update_checksum_for_addr_v6(o, n),
                },
            );
            true
        }
        _ => false,
    }
}

/// Applies `f` to the TCP or UDP segment, if the frame has one.
fn update_l4(seg: Option<&mut [u8]>, proto: u8, f: impl FnOnce(&mut [u8], Protocol)) {
    let proto = Protocol::from(proto);
    if let (Some(seg), Protocol::Tcp | Protocol::Udp) = (seg, proto) {
        f(seg, proto);
    }
}

fn rewrite_port<B: AsRef<[u8]> + AsMut<[u8]>>(
    f: &mut Frame<B>,
    m: &PacketMeta,
    port: u16,
    src: bool,
) {
    let (l4, end) = (usize::from(m.l4), usize::from(m.l4_end));
    update_l4(
        f.data_mut().get_mut(l4..end),
        m.tuple.proto,
        |seg, proto| match (proto, src) {
            (Protocol::Tcp, true) => TcpPacket::new_unchecked(seg).set_src_port_incremental(port),
            (Protocol::Tcp, false) => TcpPacket::new_unchecked(seg).set_dst_port_incremental(port),
            (_, true) => UdpPacket::new_unchecked(seg).set_src_port_incremental(port),
            (_, false) => UdpPacket::new_unchecked(seg).set_dst_port_incremental(port),
        },
    );
}
