//! Header parsing: one pass over a frame's Ethernet, IP and transport headers into its
//! `PacketMeta` (family, offsets, 5-tuple, TCP flags, ICMP class and quoted flow, DSR option).
//! The parse stage runs it on every received frame; the decap stage runs it again on the frame
//! inside a tunnel.
//!
//! # Contract
//! Every header boundary is checked through the wire views' `new_checked`; a frame cut short or
//! malformed at any boundary is refused with the drop reason naming that header, and nothing
//! here panics or allocates. Only the fields it fills are written: the caller starts from
//! `PacketMeta::EMPTY` (or a copy of it).

use std::net::IpAddr;

use super::meta::{Family, IcmpClass, PacketMeta, Tuple};
use super::DropReason;
use crate::tables::conntrack::TcpSegment;
use crate::wire::ethernet::{EtherType, EthernetFrame};
use crate::wire::icmpv4::Icmpv4Packet;
use crate::wire::icmpv6::Icmpv6Packet;
use crate::wire::ipv4::{self, Ipv4Packet, Protocol};
use crate::wire::ipv6::{self, Ipv6Packet};
use crate::wire::tcp::{self, TcpPacket};
use crate::wire::udp::UdpPacket;
use crate::wire::Error;

/// Parses Ethernet, IP and the transport header of `data` into `m`.
pub(crate) fn parse(data: &[u8], m: &mut PacketMeta) -> Result<(), DropReason> {
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
            m.tcp = tcp_segment(&tcp);
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
/// What conntrack reads of a TCP header: flags, numbers, window, payload length, and the
/// window scale option of a SYN (the options are walked only then: a SYN is a flow's first
/// packet, or its answer).
fn tcp_segment(tcp: &TcpPacket<&[u8]>) -> TcpSegment {
    let flags = tcp.flags();
    let wscale = if flags.contains(tcp::TcpFlags::SYN) {
        tcp::window_scale(tcp.options())
    } else {
        None
    };
    TcpSegment {
        flags: flags.bits(),
        wscale,
        window: tcp.window_len(),
        seq: tcp.seq_number(),
        ack: tcp.ack_number(),
        len: u16::try_from(tcp.payload().len()).unwrap_or(u16::MAX),
    }
}

fn icmp_echo_ident(seg: &[u8]) -> u16 {
    seg.get(4..6)
        .map(|b| u16::from_be_bytes([b[0], b[1]]))
        .unwrap_or(0)
}

/// Echo: identifier in both ports (so the reply matches the request in conntrack). Other
/// messages: the type in `dport`. Every message's type in `icmp_type`, which is what a policy on
/// ICMP types keys on (`PacketMeta::policy_port`).
fn classify_icmp(msg_type: u8, ident: u16, is_error: bool, m: &mut PacketMeta, t: &mut Tuple) {
    const ECHO_TYPES: [u8; 4] = [0, 8, 128, 129];
    m.icmp_type = msg_type;
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
