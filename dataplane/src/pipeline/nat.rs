//! NAT rewriting shared by the stages: DNAT to a service backend (service stage), the reverse
//! NAT of a backend's replies and ICMP errors back to the frontend (conntrack stage), and undoing
//! either before a packet is quoted in an ICMP error (`icmp_error`).
//!
//! # Contract
//! - Every rewrite fixes its checksums incrementally (RFC 1624): the IPv4 header checksum, the
//!   TCP/UDP checksum (pseudo-header and port), and for an ICMP error the quoted header's
//!   checksum and the ICMP checksum. Nothing is recomputed from scratch, nothing allocated.
//! - The metadata follows the bytes: after a rewrite `m.tuple` (and `m.inner` for an ICMP
//!   error) holds the new addresses and ports, so later stages read the packet as it now is.
//! - A rewrite that cannot apply (mixed families, a frame cut short) reports it (`false`) and
//!   leaves the frame as it was where it says so; the caller decides the packet's fate.
//!
//! No stage owns this module: it holds no state and reads no table.

use std::net::{IpAddr, Ipv4Addr};

use super::meta::PacketMeta;
use crate::frame::Frame;
use crate::wire::ipv4::{self, Ipv4Packet, Protocol};
use crate::wire::ipv6::Ipv6Packet;
use crate::wire::{tcp::TcpPacket, udp::UdpPacket};

/// DNAT: destination address and port to `addr:port`, checksums updated incrementally.
/// Returns false when the families differ (validated away by the service table).
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

/// SNAT: source address and port to `addr:port` (the reverse NAT of a reply, back to the
/// frontend; or, undoing it, back to the backend), checksums updated incrementally.
pub(crate) fn rewrite_src<B: AsRef<[u8]> + AsMut<[u8]>>(
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
    let (IpAddr::V4(frontend), IpAddr::V4(backend)) = (addr, m.inner.dst) else {
        return false;
    };
    let quoted = QuotedRewrite {
        end: QuotedEnd::Destination,
        old: backend,
        new: frontend,
        port,
    };
    if !quoted.apply(f.data_mut(), m) {
        return false;
    }
    let (l3, l4) = (usize::from(m.l3), usize::from(m.l4));
    let Some(hdr) = f.data_mut().get_mut(l3..l4) else {
        return false;
    };
    Ipv4Packet::new_unchecked(hdr).set_src_addr_incremental(frontend);
    m.tuple.src = addr;
    m.inner.dst = addr;
    m.inner.dport = port;
    true
}

/// The reverse of a masquerade (SNAT) in an ICMPv4 error about a translated flow: a router on
/// the way answered the node's address about a packet that left as `node:nat_port`; the outer
/// destination becomes the original source `addr`, and so do the quoted packet's source address
/// and port (with the quoted IP header's checksum). As [`reverse_nat_icmp_error`]: the ICMP
/// checksum is patched for every quoted byte changed, the quoted transport checksum is left
/// alone. Returns false (nothing changed) for IPv6 or a quote too short to rewrite.
pub(crate) fn unsnat_icmp_error<B: AsRef<[u8]> + AsMut<[u8]>>(
    f: &mut Frame<B>,
    m: &mut PacketMeta,
    addr: IpAddr,
    port: u16,
) -> bool {
    let (IpAddr::V4(original), IpAddr::V4(nat)) = (addr, m.inner.src) else {
        return false;
    };
    let quoted = QuotedRewrite {
        end: QuotedEnd::Source,
        old: nat,
        new: original,
        port,
    };
    if !quoted.apply(f.data_mut(), m) {
        return false;
    }
    let (l3, l4) = (usize::from(m.l3), usize::from(m.l4));
    let Some(hdr) = f.data_mut().get_mut(l3..l4) else {
        return false;
    };
    Ipv4Packet::new_unchecked(hdr).set_dst_addr_incremental(original);
    m.tuple.dst = addr;
    m.inner.src = addr;
    m.inner.sport = port;
    true
}

/// Which end of the packet quoted in an ICMPv4 error a rewrite changes.
#[derive(Clone, Copy)]
enum QuotedEnd {
    Source,
    Destination,
}

/// One end of a quoted packet, rewritten from `old` to `new:port`: the one definition of the
/// quote's offsets and checksums for both ICMP error translations above.
struct QuotedRewrite {
    end: QuotedEnd,
    old: Ipv4Addr,
    new: Ipv4Addr,
    port: u16,
}

impl QuotedRewrite {
    /// Rewrites the address, the quoted IP header's checksum and the port in the ICMPv4
    /// message at `m`'s L4, patching the ICMP checksum for every byte changed; false when the
    /// quote is too short to rewrite.
    fn apply(&self, data: &mut [u8], m: &PacketMeta) -> bool {
        use crate::wire::icmpv4::Icmpv4Packet;
        let (l4, end) = (usize::from(m.l4), usize::from(m.l4_end));
        let Some(msg) = data.get_mut(l4..end) else {
            return false;
        };
        let mut icmp = Icmpv4Packet::new_unchecked(msg);
        let quoted = icmp.quoted();
        let ihl = usize::from(quoted.first().copied().unwrap_or(0) & 0x0f) * 4;
        if ihl < ipv4::HEADER_LEN || quoted.len() < ihl + 4 {
            return false;
        }
        let (addr_at, port_at) = match self.end {
            QuotedEnd::Source => (12, ihl),
            QuotedEnd::Destination => (16, ihl + 2),
        };
        let inner_check = u16::from_be_bytes([quoted[10], quoted[11]]);
        let inner_check =
            crate::wire::checksum::update32(inner_check, u32::from(self.old), u32::from(self.new));
        let rewrites: [(usize, &[u8]); 3] = [
            (addr_at, &self.new.octets()),
            (10, &inner_check.to_be_bytes()),
            (port_at, &self.port.to_be_bytes()),
        ];
        for (offset, bytes) in rewrites {
            if icmp.rewrite_payload_incremental(offset, bytes).is_err() {
                return false;
            }
        }
        true
    }
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
