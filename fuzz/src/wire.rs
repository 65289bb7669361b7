//! The `wire_parsers` fuzz body: every wire parser of `dataplane::wire` on arbitrary bytes.
//!
//! Two passes over each input:
//! - flat: the whole input is handed to every parser (`new_checked`, every getter, the option
//!   iterators, `Repr::parse`), so each parser sees every byte pattern the fuzzer invents;
//! - layered: the input is read as an Ethernet frame and walked down as the pipeline would
//!   (Ethernet -> ARP | IPv4 | IPv6 -> extension headers -> transport -> VXLAN/Geneve -> inner
//!   Ethernet, at most [`MAX_TUNNEL_DEPTH`] tunnels deep), so seeds made of real frames reach
//!   the parsers of inner layers with realistic bytes.
//!
//! Properties asserted (a failed assertion is a crash the fuzzer reports):
//! - no parser or getter panics on any input (the contract of `new_checked`);
//! - round trip: when a `Repr` parses, emitting it into a zeroed buffer of `buffer_len()` bytes
//!   and parsing that buffer again gives an equal `Repr`;
//! - incremental checksums: on an IPv4 header whose checksum verifies, the RFC 1624 setters
//!   (TTL decrement, address rewrites) leave a checksum that still verifies.

use std::hint::black_box;

use std::net::{Ipv4Addr, Ipv6Addr};

use dataplane::wire::ethernet::{self, EtherType, EthernetFrame};
use dataplane::wire::geneve::{self, GenevePacket};
use dataplane::wire::icmpv4::{self, Icmpv4Packet};
use dataplane::wire::icmpv6::{self, Icmpv6Packet};
use dataplane::wire::ipv4::{self, Ipv4Packet};
use dataplane::wire::ipv6::{self, Ipv6Packet};
use dataplane::wire::tcp::{self, TcpPacket};
use dataplane::wire::udp::{self, UdpPacket};
use dataplane::wire::vxlan::{self, VxlanPacket};
use dataplane::wire::{arp, checksum, Error};

/// Tunnels unwrapped by the layered pass before it stops (the pipeline decaps once; two levels
/// let the fuzzer reach a tunnel inside a tunnel, which the pipeline must refuse).
pub const MAX_TUNNEL_DEPTH: usize = 2;

/// Runs every parser on `data`; panics only when a property above is broken.
pub fn wire_parsers(data: &[u8]) {
    flat(data);
    layered_ethernet(data, 0);
}

/// Addresses for the pseudo-header checksums of the flat pass (any pair will do).
const FLAT_V4: (Ipv4Addr, Ipv4Addr) = (Ipv4Addr::new(10, 1, 0, 11), Ipv4Addr::new(10, 2, 0, 21));
const FLAT_V6: (Ipv6Addr, Ipv6Addr) = (
    Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 1, 11),
    Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 2, 21),
);

/// The IP addresses a transport header travels between (its checksum covers them).
#[derive(Clone, Copy, Debug)]
enum Addrs {
    V4(Ipv4Addr, Ipv4Addr),
    V6(Ipv6Addr, Ipv6Addr),
}

/// Every parser on the same bytes.
fn flat(data: &[u8]) {
    ethernet_layer(data);
    arp_layer(data);
    ipv4_layer(data);
    ipv6_layer(data);
    for addrs in [
        Addrs::V4(FLAT_V4.0, FLAT_V4.1),
        Addrs::V6(FLAT_V6.0, FLAT_V6.1),
    ] {
        tcp_layer(data, addrs);
        udp_layer(data, addrs);
    }
    icmpv4_layer(data);
    icmpv6_layer(data, FLAT_V6.0, FLAT_V6.1);
    vxlan_layer(data);
    geneve_layer(data);
    checksum_layer(data);
}

/// Ethernet, then whatever its EtherType announces.
fn layered_ethernet(data: &[u8], depth: usize) {
    let Some(payload_type) = ethernet_layer(data) else {
        return;
    };
    let Ok(frame) = EthernetFrame::new_checked(data) else {
        return;
    };
    let payload = frame.payload();
    match payload_type {
        EtherType::Arp => arp_layer(payload),
        EtherType::Ipv4 => {
            if let Some((protocol, l4)) = ipv4_layer(payload) {
                let Ok(ip) = Ipv4Packet::new_checked(payload) else {
                    return;
                };
                layered_transport(protocol, l4, Addrs::V4(ip.src_addr(), ip.dst_addr()), depth);
            }
        }
        EtherType::Ipv6 => {
            if let Some((protocol, l4)) = ipv6_layer(payload) {
                let Ok(ip) = Ipv6Packet::new_checked(payload) else {
                    return;
                };
                layered_transport(protocol, l4, Addrs::V6(ip.src_addr(), ip.dst_addr()), depth);
            }
        }
        _ => {}
    }
}

/// The transport header, and for UDP to a tunnel port the tunnel and the frame inside it.
fn layered_transport(protocol: ipv4::Protocol, l4: &[u8], addrs: Addrs, depth: usize) {
    match (protocol, addrs) {
        (ipv4::Protocol::Tcp, _) => tcp_layer(l4, addrs),
        (ipv4::Protocol::Icmp, Addrs::V4(..)) => icmpv4_layer(l4),
        (ipv4::Protocol::Icmpv6, Addrs::V6(src, dst)) => icmpv6_layer(l4, src, dst),
        (ipv4::Protocol::Udp, _) => {
            let Some((dst_port, datagram)) = udp_layer(l4, addrs) else {
                return;
            };
            if depth >= MAX_TUNNEL_DEPTH {
                return;
            }
            let inner = match dst_port {
                vxlan::UDP_PORT => vxlan_layer(datagram),
                geneve::UDP_PORT => geneve_layer(datagram),
                _ => None,
            };
            if let Some(inner) = inner {
                layered_ethernet(inner, depth + 1);
            }
        }
        _ => {}
    }
}

/// Parses an Ethernet header; returns the payload's EtherType when the view is valid.
fn ethernet_layer(data: &[u8]) -> Option<EtherType> {
    let frame = EthernetFrame::new_checked(data).ok()?;
    black_box((
        frame.dst_addr(),
        frame.src_addr(),
        frame.ethertype(),
        frame.vlan(),
        frame.inner_ethertype(),
        frame.header_len(),
        frame.payload().len(),
    ));
    if let Some(tag) = frame.vlan() {
        assert_eq!(
            ethernet::VlanTag::from_tci(tag.tci()),
            tag,
            "VLAN TCI round trip"
        );
    }
    if let Ok(repr) = ethernet::Repr::parse(&frame) {
        assert_eq!(repr.header_len(), frame.header_len());
        let mut buf = vec![0u8; repr.buffer_len()];
        repr.emit(&mut EthernetFrame::new_unchecked(&mut buf[..]));
        let again = EthernetFrame::new_checked(&buf[..]).and_then(|f| ethernet::Repr::parse(&f));
        assert_eq!(again, Ok(repr), "ethernet Repr round trip");
    }
    Some(frame.inner_ethertype())
}

fn arp_layer(data: &[u8]) {
    let Ok(packet) = arp::ArpPacket::new_checked(data) else {
        return;
    };
    black_box((
        packet.hardware_type(),
        packet.protocol_type(),
        packet.hardware_len(),
        packet.protocol_len(),
        packet.operation(),
        packet.source_hardware_addr(),
        packet.source_protocol_addr(),
        packet.target_hardware_addr(),
        packet.target_protocol_addr(),
    ));
    let Ok(repr) = arp::Repr::parse(&packet) else {
        return;
    };
    black_box((
        repr.operation(),
        repr.source_hardware_addr(),
        repr.source_protocol_addr(),
        repr.target_hardware_addr(),
        repr.target_protocol_addr(),
        repr.reply(dataplane::MacAddr([2, 0, 0, 0, 0, 1])),
    ));
    let mut buf = vec![0u8; repr.buffer_len()];
    repr.emit(&mut arp::ArpPacket::new_unchecked(&mut buf[..]));
    let again = arp::ArpPacket::new_checked(&buf[..]).and_then(|p| arp::Repr::parse(&p));
    assert_eq!(again, Ok(repr), "ARP Repr round trip");
}

/// Parses an IPv4 header; returns the protocol and the payload when the view is valid and the
/// packet is not a non-first fragment (whose payload holds no transport header).
fn ipv4_layer(data: &[u8]) -> Option<(ipv4::Protocol, &[u8])> {
    let packet = Ipv4Packet::new_checked(data).ok()?;
    black_box((
        packet.version(),
        packet.ihl(),
        packet.header_len(),
        packet.dscp(),
        packet.ecn(),
        packet.total_len(),
        packet.ident(),
        packet.dont_frag(),
        packet.more_frags(),
        packet.frag_offset(),
        packet.is_fragment(),
        packet.is_first_fragment(),
        packet.ttl(),
        packet.protocol(),
        packet.checksum(),
        packet.src_addr(),
        packet.dst_addr(),
        packet.verify_checksum(),
        packet.payload().len(),
    ));
    ipv4_options(&packet);
    if let Ok(repr) = ipv4::Repr::parse(&packet) {
        black_box((repr.is_fragment(), repr.header_len()));
        assert_eq!(repr.header_len(), packet.header_len());
        let mut buf = vec![0u8; repr.buffer_len()];
        repr.emit(&mut Ipv4Packet::new_unchecked(&mut buf[..]));
        let again = Ipv4Packet::new_checked(&buf[..]).and_then(|p| ipv4::Repr::parse(&p));
        assert_eq!(again, Ok(repr), "IPv4 Repr round trip");
    }
    ipv4_incremental_checksums(data);
    if packet.frag_offset() != 0 {
        return None;
    }
    // The view's payload borrows the view; slice the input with the same (checked) bounds.
    let payload = data.get(packet.header_len()..usize::from(packet.total_len()))?;
    assert_eq!(payload, packet.payload());
    Some((packet.protocol(), payload))
}

/// The options iterator, the DSR finder and the option list type agree with each other.
fn ipv4_options<T: AsRef<[u8]>>(packet: &Ipv4Packet<T>) {
    let mut malformed = false;
    let mut first_dsr = None;
    for option in packet.iter_options() {
        match option {
            Ok(option) => {
                black_box((option.kind(), option.data(), option.is_copied()));
                assert!(option.offset() + option.as_bytes().len() <= packet.header_len());
                if option.kind() == ipv4::DSR_OPTION_KIND && first_dsr.is_none() {
                    first_dsr = Some((
                        ipv4::DsrOption::parse_ipv4(option.as_bytes()),
                        option.offset(),
                    ));
                }
            }
            Err(_) => malformed = true,
        }
    }
    match ipv4::find_dsr_option(packet) {
        Ok(Some((dsr, offset))) => {
            assert_eq!(
                first_dsr,
                Some((Ok(dsr), offset)),
                "find_dsr_option disagrees"
            );
            assert_eq!(ipv4::DsrOption::parse_ipv4(&dsr.to_ipv4_bytes()), Ok(dsr));
        }
        Ok(None) => assert!(first_dsr.is_none() && !malformed || packet.options().is_empty()),
        Err(_) => assert!(malformed || matches!(first_dsr, Some((Err(_), _)))),
    }
    let listed = ipv4::OptionBytes::new(packet.options());
    assert_eq!(
        listed.is_err(),
        malformed,
        "OptionBytes::new and the iterator disagree"
    );
}

/// RFC 1624 updates keep a valid header checksum valid.
fn ipv4_incremental_checksums(data: &[u8]) {
    let Ok(packet) = Ipv4Packet::new_checked(data) else {
        return;
    };
    if !packet.verify_checksum() {
        return;
    }
    let mut copy = data.to_vec();
    let mut packet = Ipv4Packet::new_unchecked(&mut copy[..]);
    let ttl = packet.ttl();
    match packet.decrement_ttl_incremental() {
        Some(new) => assert_eq!(new, ttl - 1),
        None => assert!(ttl <= 1),
    }
    assert!(packet.verify_checksum(), "TTL decrement broke the checksum");
    let (src, dst) = (packet.src_addr(), packet.dst_addr());
    packet.set_src_addr_incremental(dst);
    packet.set_dst_addr_incremental(src);
    assert!(
        packet.verify_checksum(),
        "address rewrite broke the checksum"
    );
}

/// Parses an IPv6 header and walks its extension headers; returns the upper-layer protocol
/// and bytes when they start a transport header.
fn ipv6_layer(data: &[u8]) -> Option<(ipv6::Protocol, &[u8])> {
    let packet = Ipv6Packet::new_checked(data).ok()?;
    black_box((
        packet.version(),
        packet.traffic_class(),
        packet.flow_label(),
        packet.payload_len(),
        packet.next_header(),
        packet.hop_limit(),
        packet.src_addr(),
        packet.dst_addr(),
    ));
    if let Ok(repr) = ipv6::Repr::parse(&packet) {
        let mut buf = vec![0u8; repr.buffer_len()];
        repr.emit(&mut Ipv6Packet::new_unchecked(&mut buf[..]));
        let again = Ipv6Packet::new_checked(&buf[..]).and_then(|p| ipv6::Repr::parse(&p));
        assert_eq!(again, Ok(repr), "IPv6 Repr round trip");
    }
    let payload =
        data.get(ipv6::HEADER_LEN..ipv6::HEADER_LEN + usize::from(packet.payload_len()))?;
    assert_eq!(payload, packet.payload());
    // The walk on its own, from every next-header value the fuzzer can pick: the first payload
    // byte chooses it, so protocol numbers the packet does not announce are reached too.
    if let Some(&first) = payload.first() {
        walk(ipv6::Protocol::from(first), payload);
    }
    let upper = walk(packet.next_header(), payload)?;
    if upper.fragment.is_some_and(|f| !f.is_first()) {
        return None;
    }
    Some((upper.protocol, payload.get(upper.offset..)?))
}

/// One extension-header walk, with its output checked against the input.
fn walk(next_header: ipv6::Protocol, bytes: &[u8]) -> Option<ipv6::UpperLayer> {
    match ipv6::walk_extension_headers(next_header, bytes) {
        Ok(upper) => {
            assert!(upper.offset <= bytes.len(), "walk past the payload");
            if let Some(fragment) = upper.fragment {
                black_box((fragment.is_first(), fragment.more_frags, fragment.ident));
                assert_eq!(fragment.offset % 8, 0);
            }
            Some(upper)
        }
        Err(Error::Truncated | Error::Malformed | Error::Unsupported) => None,
        Err(Error::Checksum) => panic!("the extension-header walk verifies no checksum"),
    }
}

/// The checksum helpers: incremental updates agree with a full recompute.
fn checksum_layer(data: &[u8]) {
    let full = checksum::checksum(data);
    black_box(checksum::verify(data));
    // Rewrite the first 16-bit word (if any) and compare RFC 1624 with a recompute.
    let Some(&[a, b]) = data.first_chunk::<2>() else {
        return;
    };
    let mut copy = data.to_vec();
    let new = [b ^ 0x5a, a.wrapping_add(1)];
    copy[..2].copy_from_slice(&new);
    let recomputed = checksum::checksum(&copy);
    let updated = checksum::update16(full, u16::from_be_bytes([a, b]), u16::from_be_bytes(new));
    assert!(
        same_ones_complement(updated, recomputed),
        "RFC 1624 update {updated:#06x} != recompute {recomputed:#06x}"
    );
}

/// 0x0000 and 0xffff are the two representations of zero in ones' complement.
fn same_ones_complement(a: u16, b: u16) -> bool {
    a == b || (a == 0 || a == 0xffff) && (b == 0 || b == 0xffff)
}

/// A TCP segment (the whole of `data`): getters, round trip, and RFC 1624 NAT updates.
fn tcp_layer(data: &[u8], addrs: Addrs) {
    let Ok(packet) = TcpPacket::new_checked(data) else {
        return;
    };
    black_box((
        packet.src_port(),
        packet.dst_port(),
        packet.seq_number(),
        packet.ack_number(),
        packet.header_len(),
        packet.flags(),
        packet.flags().to_string(),
        packet.window_len(),
        packet.checksum(),
        packet.urgent_at(),
        packet.options(),
        packet.payload().len(),
        packet.segment_len(),
    ));
    let valid = match addrs {
        Addrs::V4(src, dst) => packet.verify_checksum_v4(src, dst),
        Addrs::V6(src, dst) => packet.verify_checksum_v6(src, dst),
    };
    if let Ok(repr) = tcp::Repr::parse(&packet) {
        assert_eq!(repr.header_len(), usize::from(packet.header_len()));
        assert_eq!(repr.buffer_len(), data.len(), "TCP Repr covers the segment");
        let mut buf = data.to_vec();
        buf[..repr.header_len()].fill(0);
        let mut out = TcpPacket::new_unchecked(&mut buf[..]);
        match addrs {
            Addrs::V4(src, dst) => repr.emit_v4(&mut out, src, dst),
            Addrs::V6(src, dst) => repr.emit_v6(&mut out, src, dst),
        }
        let again = TcpPacket::new_checked(&buf[..]).and_then(|p| tcp::Repr::parse(&p));
        assert_eq!(again, Ok(repr), "TCP Repr round trip");
        assert!(
            verifies_tcp(&buf, addrs),
            "an emitted TCP checksum must verify"
        );
    }
    if valid {
        let mut buf = data.to_vec();
        let mut p = TcpPacket::new_unchecked(&mut buf[..]);
        let (sport, dport) = (p.src_port(), p.dst_port());
        p.set_src_port_incremental(dport);
        p.set_dst_port_incremental(sport.wrapping_add(1));
        let moved = match addrs {
            Addrs::V4(src, dst) => {
                p.update_checksum_for_addr_v4(src, dst);
                p.update_checksum_for_addr_v4(dst, src);
                Addrs::V4(dst, src)
            }
            Addrs::V6(src, dst) => {
                p.update_checksum_for_addr_v6(src, dst);
                p.update_checksum_for_addr_v6(dst, src);
                Addrs::V6(dst, src)
            }
        };
        // Swapping the addresses leaves the pseudo-header sum as it was.
        assert!(
            verifies_tcp(&buf, moved),
            "TCP incremental update broke the checksum"
        );
    }
}

fn verifies_tcp(segment: &[u8], addrs: Addrs) -> bool {
    let packet = TcpPacket::new_unchecked(segment);
    match addrs {
        Addrs::V4(src, dst) => packet.verify_checksum_v4(src, dst),
        Addrs::V6(src, dst) => packet.verify_checksum_v6(src, dst),
    }
}

/// A UDP datagram at the start of `data`; returns its destination port and the bytes after the
/// header (bounded by the length field).
fn udp_layer(data: &[u8], addrs: Addrs) -> Option<(u16, &[u8])> {
    let packet = UdpPacket::new_checked(data).ok()?;
    black_box((
        packet.src_port(),
        packet.dst_port(),
        packet.len(),
        packet.is_empty(),
        packet.checksum(),
    ));
    let datagram_len = usize::from(packet.len());
    let payload = data.get(udp::HEADER_LEN..datagram_len)?;
    assert_eq!(payload, packet.payload());
    let valid = verifies_udp(data, addrs);
    if let Ok(repr) = udp::Repr::parse(&packet) {
        assert_eq!(repr.buffer_len(), datagram_len);
        let mut buf = vec![0u8; repr.buffer_len()];
        buf[udp::HEADER_LEN..].copy_from_slice(payload);
        let mut out = UdpPacket::new_unchecked(&mut buf[..]);
        match addrs {
            Addrs::V4(src, dst) => repr.emit_v4(&mut out, src, dst),
            Addrs::V6(src, dst) => repr.emit_v6(&mut out, src, dst),
        }
        let again = UdpPacket::new_checked(&buf[..]).and_then(|p| udp::Repr::parse(&p));
        assert_eq!(again, Ok(repr), "UDP Repr round trip");
        assert!(
            verifies_udp(&buf, addrs),
            "an emitted UDP checksum must verify"
        );
        assert_ne!(
            UdpPacket::new_unchecked(&buf[..]).checksum(),
            0,
            "RFC 768: 0 is sent as 0xffff"
        );
    }
    if valid {
        let mut buf = data.to_vec();
        let mut p = UdpPacket::new_unchecked(&mut buf[..]);
        let (sport, dport) = (p.src_port(), p.dst_port());
        p.set_src_port_incremental(dport);
        p.set_dst_port_incremental(sport ^ 0x8000);
        match addrs {
            Addrs::V4(src, dst) => {
                let other = Ipv4Addr::from(u32::from(src).wrapping_add(1));
                p.update_checksum_for_addr_v4(src, other);
                assert!(
                    verifies_udp(&buf, Addrs::V4(other, dst)),
                    "UDP incremental update broke the checksum"
                );
            }
            Addrs::V6(src, dst) => {
                let other = Ipv6Addr::from(u128::from(src).wrapping_add(1));
                p.update_checksum_for_addr_v6(src, other);
                assert!(
                    verifies_udp(&buf, Addrs::V6(other, dst)),
                    "UDP incremental update broke the checksum"
                );
            }
        }
    }
    Some((packet.dst_port(), payload))
}

fn verifies_udp(datagram: &[u8], addrs: Addrs) -> bool {
    let packet = UdpPacket::new_unchecked(datagram);
    match addrs {
        Addrs::V4(src, dst) => packet.verify_checksum_v4(src, dst),
        Addrs::V6(src, dst) => packet.verify_checksum_v6(src, dst),
    }
}

/// An ICMPv4 message (the whole of `data`).
fn icmpv4_layer(data: &[u8]) {
    let Ok(packet) = Icmpv4Packet::new_checked(data) else {
        return;
    };
    black_box((
        packet.msg_type(),
        packet.msg_type().is_error(),
        packet.msg_code(),
        packet.is_error(),
        packet.checksum(),
        packet.echo_ident(),
        packet.echo_seq_no(),
        packet.next_hop_mtu(),
        packet.pointer(),
        packet.rest_of_header(),
        packet.payload().len(),
        packet.quoted().len(),
    ));
    if packet.is_error() {
        // What the pipeline does with an error: read the quoted header.
        ipv4_layer(packet.quoted());
    }
    if let Ok(repr) = icmpv4::Repr::parse(&packet) {
        assert_eq!(repr.is_error(), packet.is_error());
        assert_eq!(
            repr.buffer_len(),
            data.len(),
            "ICMPv4 Repr covers the message"
        );
        let mut buf = data.to_vec();
        buf[..icmpv4::HEADER_LEN].fill(0);
        repr.emit(&mut Icmpv4Packet::new_unchecked(&mut buf[..]));
        let out = Icmpv4Packet::new_unchecked(&buf[..]);
        assert!(
            out.verify_checksum(),
            "an emitted ICMPv4 checksum must verify"
        );
        assert_eq!(
            icmpv4::Repr::parse(&out),
            Ok(repr),
            "ICMPv4 Repr round trip"
        );
    }
    if packet.verify_checksum() {
        let mut buf = data.to_vec();
        let mut p = Icmpv4Packet::new_unchecked(&mut buf[..]);
        p.set_echo_ident_incremental(p.echo_ident() ^ 0x1234);
        // Rewrite a few quoted bytes at an offset the input picks (odd offsets included).
        let offset = usize::from(data[1]) % (p.payload().len() + 1);
        let bytes = [data[0], 0xa5, 0x5a];
        let end = (offset + bytes.len()).min(p.payload().len());
        let result = p.rewrite_payload_incremental(offset, &bytes[..end - offset]);
        assert!(
            result.is_ok(),
            "an in-bounds rewrite must succeed: {result:?}"
        );
        assert!(
            p.verify_checksum(),
            "ICMPv4 incremental update broke the checksum"
        );
        assert!(p
            .rewrite_payload_incremental(p.payload().len(), &[1])
            .is_err());
    }
}

/// An ICMPv6 message (the whole of `data`) between `src` and `dst`.
fn icmpv6_layer(data: &[u8], src: Ipv6Addr, dst: Ipv6Addr) {
    let Ok(packet) = Icmpv6Packet::new_checked(data) else {
        return;
    };
    let _ = black_box((
        packet.msg_type(),
        packet.msg_type().is_ndisc(),
        packet.msg_code(),
        packet.is_error(),
        packet.checksum(),
        packet.header_len(),
        packet.echo_ident(),
        packet.echo_seq_no(),
        packet.mtu(),
        packet.pointer(),
        packet.neighbor_flags(),
        packet.rest_of_header(),
        packet.target_addr(),
        packet.payload().len(),
        packet.source_lladdr(),
        packet.target_lladdr(),
    ));
    // `flatten` stops at the first malformed option, as the iterator itself does.
    for option in packet.ndisc_options().flatten() {
        black_box((option.type_, option.data));
        assert_eq!(
            (option.data.len() + 2) % 8,
            0,
            "NDP options are 8-byte units"
        );
    }
    if packet.is_error() {
        ipv6_layer(packet.quoted());
    }
    if let Ok(repr) = icmpv6::Repr::parse(&packet) {
        assert_eq!(repr.is_error(), packet.is_error());
        assert_eq!(repr.header_len(), packet.header_len());
        let mut buf = if repr.message().is_ndisc() {
            // The Repr keeps only the link-layer address option: a fresh buffer.
            vec![0u8; repr.buffer_len()]
        } else {
            assert_eq!(
                repr.buffer_len(),
                data.len(),
                "ICMPv6 Repr covers the message"
            );
            let mut buf = data.to_vec();
            buf[..icmpv6::HEADER_LEN].fill(0);
            buf
        };
        repr.emit(&mut Icmpv6Packet::new_unchecked(&mut buf[..]), src, dst);
        let out = Icmpv6Packet::new_unchecked(&buf[..]);
        assert!(
            out.verify_checksum(src, dst),
            "an emitted ICMPv6 checksum must verify"
        );
        let again = Icmpv6Packet::new_checked(&buf[..]).and_then(|p| icmpv6::Repr::parse(&p));
        assert_eq!(again, Ok(repr), "ICMPv6 Repr round trip");
    }
    if packet.verify_checksum(src, dst) {
        let mut buf = data.to_vec();
        let mut p = Icmpv6Packet::new_unchecked(&mut buf[..]);
        p.set_echo_ident_incremental(p.echo_ident() ^ 0x4321);
        let offset = usize::from(data[1]) % (p.payload().len() + 1);
        let bytes = [data[0], 0x5a];
        let end = (offset + bytes.len()).min(p.payload().len());
        let result = p.rewrite_payload_incremental(offset, &bytes[..end - offset]);
        assert!(
            result.is_ok(),
            "an in-bounds rewrite must succeed: {result:?}"
        );
        let other = Ipv6Addr::from(u128::from(src) ^ 0xffff);
        p.update_checksum_for_addr(src, other);
        assert!(
            p.verify_checksum(other, dst),
            "ICMPv6 incremental update broke the checksum"
        );
    }
}

/// A VXLAN header; returns the inner frame.
fn vxlan_layer(data: &[u8]) -> Option<&[u8]> {
    let packet = VxlanPacket::new_checked(data).ok()?;
    black_box((packet.flags(), packet.vni()));
    assert!(packet.vni() <= vxlan::MAX_VNI);
    if let Ok(repr) = vxlan::Repr::parse(&packet) {
        let mut buf = vec![0u8; repr.buffer_len()];
        repr.emit(&mut VxlanPacket::new_unchecked(&mut buf[..]));
        let again = VxlanPacket::new_checked(&buf[..]).and_then(|p| vxlan::Repr::parse(&p));
        assert_eq!(again, Ok(repr), "VXLAN Repr round trip");
    }
    data.get(vxlan::HEADER_LEN..)
}

/// A Geneve header and its options; returns the inner frame.
fn geneve_layer(data: &[u8]) -> Option<&[u8]> {
    let packet = GenevePacket::new_checked(data).ok()?;
    let _ = black_box((
        packet.version(),
        packet.options_len(),
        packet.header_len(),
        packet.oam(),
        packet.critical(),
        packet.protocol(),
        packet.vni(),
        packet.has_unknown_critical_option(|class, type_| {
            class == geneve::DSR_OPTION_CLASS
                && type_ & !geneve::OPTION_TYPE_CRITICAL == geneve::DSR_OPTION_TYPE
        }),
    ));
    let mut options_ok = true;
    let mut first_dsr = None;
    for option in packet.iter_options() {
        match option {
            Ok(option) => {
                black_box((option.is_critical(), option.class, option.type_));
                assert_eq!(option.wire_len() % 4, 0);
                if first_dsr.is_none() && geneve::DsrOption::matches_geneve(&option) {
                    first_dsr = Some(geneve::DsrOption::parse_geneve(&option));
                }
            }
            Err(_) => options_ok = false,
        }
    }
    let found = geneve::find_dsr_option(&packet);
    match (&found, options_ok) {
        (Ok(Some(dsr)), true) => assert_eq!(first_dsr, Some(Ok(*dsr))),
        (Ok(None), true) => assert!(first_dsr.is_none()),
        (Err(_), true) => assert!(matches!(first_dsr, Some(Err(_)))),
        (Ok(_), false) => panic!("find_dsr_option accepted a malformed option list"),
        (Err(_), false) => {}
    }
    if let Ok(repr) = geneve::Repr::parse(&packet) {
        assert!(options_ok, "Repr::parse accepted a malformed option list");
        // Rebuild header and options with the writers, then compare what a reader sees.
        let mut buf = vec![0u8; repr.buffer_len()];
        repr.emit(&mut GenevePacket::new_unchecked(&mut buf[..]));
        let mut out = GenevePacket::new_unchecked(&mut buf[..]);
        let mut offset = 0;
        for option in packet.iter_options().flatten() {
            offset = out
                .write_option(offset, option.class, option.type_, option.data)
                .expect("a parsed option fits where it came from");
        }
        assert_eq!(offset, repr.options_len);
        let again = GenevePacket::new_checked(&buf[..]);
        let again = again.as_ref().map_err(|e| *e);
        assert_eq!(
            again.and_then(geneve::Repr::parse),
            Ok(repr),
            "Geneve Repr round trip"
        );
        let rebuilt = GenevePacket::new_unchecked(&buf[..]);
        assert!(
            rebuilt.iter_options().eq(packet.iter_options()),
            "Geneve options round trip"
        );
        assert_eq!(geneve::find_dsr_option(&rebuilt), found);
        if let Ok(Some(dsr)) = found {
            let mut area = [0u8; geneve::DSR_OPTION_LEN];
            assert_eq!(dsr.emit_geneve(&mut area, 0), Ok(area.len()));
        }
    }
    data.get(packet.header_len()..)
}
