//! IPv6 headers (RFC 8200) and the walk over extension headers to the upper layer.
//!
//! Contract:
//! - [`Ipv6Packet::check_len`] guarantees `40 + payload_len <= buffer length` (a longer buffer
//!   is Ethernet padding); [`Ipv6Packet::new_checked`] also requires version 6. After either
//!   succeeds no getter can panic. [`Ipv6Packet::payload`] is bounded by `payload_len`.
//!   Jumbograms (RFC 2675, payload length 0 plus a Hop-by-Hop option) are not supported: a
//!   zero payload length means an empty payload.
//! - Setters do not re-validate; [`Ipv6Packet::payload`] uses checked slicing, so a view whose
//!   payload length was edited to lie returns an empty slice instead of panicking.
//! - [`walk_extension_headers`] skips Hop-by-Hop (0, first only), Routing (43), Fragment (44),
//!   Authentication (51) and Destination Options (60) headers and stops at the first other
//!   number (TCP, UDP, ICMPv6, ESP, No Next Header 59, ...). It reads at most
//!   [`MAX_EXTENSION_HEADERS`] headers (more is [`Error::Unsupported`], bounding the work an
//!   attacker can ask for), reports [`Error::Truncated`] when a header runs past the payload,
//!   and stops right after the Fragment header of a non-first fragment, whose remaining bytes
//!   are fragment data, not headers.
//! - [`Protocol`] is [`crate::wire::ip::Protocol`], re-exported here.

use std::net::Ipv6Addr;

use crate::wire::bytes::{get_ipv6, get_u16, get_u32, set_u16, set_u32};
pub use crate::wire::ip::Protocol;
use crate::wire::{Error, Result};

mod field {
    use crate::wire::Field;

    pub const VER_TC_FLOW: Field = 0..4;
    pub const LENGTH: Field = 4..6;
    pub const NXT_HDR: usize = 6;
    pub const HOP_LIMIT: usize = 7;
    pub const SRC_ADDR: Field = 8..24;
    pub const DST_ADDR: Field = 24..40;
}

/// Length of the fixed IPv6 header.
pub const HEADER_LEN: usize = field::DST_ADDR.end;
/// Hop limit used by [`Repr::new`], as Linux does by default.
pub const DEFAULT_HOP_LIMIT: u8 = 64;
/// Most extension headers [`walk_extension_headers`] reads before giving up.
pub const MAX_EXTENSION_HEADERS: usize = 8;

/// Next-header numbers of the extension headers the walk knows.
pub mod ext {
    pub const HOP_BY_HOP: u8 = 0;
    pub const ROUTING: u8 = 43;
    pub const FRAGMENT: u8 = 44;
    pub const AUTHENTICATION: u8 = 51;
    pub const NO_NEXT_HEADER: u8 = 59;
    pub const DESTINATION_OPTIONS: u8 = 60;
}

/// Length of a Fragment header.
pub const FRAGMENT_HEADER_LEN: usize = 8;

/// A zero-copy view of an IPv6 packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ipv6Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Ipv6Packet<T> {
    /// Wraps a buffer without checking it; getters may panic on a short buffer.
    #[inline]
    pub fn new_unchecked(buffer: T) -> Ipv6Packet<T> {
        Ipv6Packet { buffer }
    }

    /// Wraps a buffer after [`check_len`](Self::check_len) and a version check (`Malformed`
    /// unless 6).
    #[inline]
    pub fn new_checked(buffer: T) -> Result<Ipv6Packet<T>> {
        let packet = Self::new_unchecked(buffer);
        packet.check_len()?;
        if packet.version() != 6 {
            return Err(Error::Malformed);
        }
        Ok(packet)
    }

    /// `Truncated` when the buffer is shorter than 40 bytes or than 40 + payload length.
    #[inline]
    pub fn check_len(&self) -> Result<()> {
        let len = self.buffer.as_ref().len();
        if len < HEADER_LEN || HEADER_LEN + usize::from(self.payload_len()) > len {
            return Err(Error::Truncated);
        }
        Ok(())
    }

    #[inline]
    pub fn into_inner(self) -> T {
        self.buffer
    }

    #[inline]
    pub fn version(&self) -> u8 {
        self.buffer.as_ref()[field::VER_TC_FLOW.start] >> 4
    }

    /// The traffic class (DSCP and ECN).
    #[inline]
    pub fn traffic_class(&self) -> u8 {
        (self.ver_tc_flow() >> 20) as u8
    }

    /// The 20-bit flow label.
    #[inline]
    pub fn flow_label(&self) -> u32 {
        self.ver_tc_flow() & 0x000f_ffff
    }

    /// Bytes after the fixed header, extension headers included.
    #[inline]
    pub fn payload_len(&self) -> u16 {
        get_u16(self.buffer.as_ref(), field::LENGTH)
    }

    /// The header after the fixed header: an extension header or the upper layer.
    #[inline]
    pub fn next_header(&self) -> Protocol {
        Protocol::from(self.buffer.as_ref()[field::NXT_HDR])
    }

    #[inline]
    pub fn hop_limit(&self) -> u8 {
        self.buffer.as_ref()[field::HOP_LIMIT]
    }

    #[inline]
    pub fn src_addr(&self) -> Ipv6Addr {
        get_ipv6(self.buffer.as_ref(), field::SRC_ADDR)
    }

    #[inline]
    pub fn dst_addr(&self) -> Ipv6Addr {
        get_ipv6(self.buffer.as_ref(), field::DST_ADDR)
    }

    /// Bytes 40..40 + payload length (Ethernet padding excluded).
    #[inline]
    pub fn payload(&self) -> &[u8] {
        let end = HEADER_LEN + usize::from(self.payload_len());
        self.buffer.as_ref().get(HEADER_LEN..end).unwrap_or(&[])
    }

    /// Walks the extension headers of [`payload`](Self::payload); see
    /// [`walk_extension_headers`]. The returned offset is relative to the payload.
    #[inline]
    pub fn upper_layer(&self) -> Result<UpperLayer> {
        walk_extension_headers(self.next_header(), self.payload())
    }

    #[inline]
    fn ver_tc_flow(&self) -> u32 {
        get_u32(self.buffer.as_ref(), field::VER_TC_FLOW)
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Ipv6Packet<T> {
    #[inline]
    pub fn set_version(&mut self, version: u8) {
        let word = (self.ver_tc_flow() & 0x0fff_ffff) | (u32::from(version & 0x0f) << 28);
        self.set_ver_tc_flow(word);
    }

    #[inline]
    pub fn set_traffic_class(&mut self, class: u8) {
        let word = (self.ver_tc_flow() & 0xf00f_ffff) | (u32::from(class) << 20);
        self.set_ver_tc_flow(word);
    }

    /// Sets the flow label (bits above 20 are dropped).
    #[inline]
    pub fn set_flow_label(&mut self, label: u32) {
        let word = (self.ver_tc_flow() & 0xfff0_0000) | (label & 0x000f_ffff);
        self.set_ver_tc_flow(word);
    }

    #[inline]
    pub fn set_payload_len(&mut self, len: u16) {
        set_u16(self.buffer.as_mut(), field::LENGTH, len);
    }

    #[inline]
    pub fn set_next_header(&mut self, next_header: Protocol) {
        self.buffer.as_mut()[field::NXT_HDR] = u8::from(next_header);
    }

    #[inline]
    pub fn set_hop_limit(&mut self, hop_limit: u8) {
        self.buffer.as_mut()[field::HOP_LIMIT] = hop_limit;
    }

    #[inline]
    pub fn set_src_addr(&mut self, addr: Ipv6Addr) {
        self.buffer.as_mut()[field::SRC_ADDR].copy_from_slice(&addr.octets());
    }

    #[inline]
    pub fn set_dst_addr(&mut self, addr: Ipv6Addr) {
        self.buffer.as_mut()[field::DST_ADDR].copy_from_slice(&addr.octets());
    }

    /// Decrements the hop limit, returning the new value (IPv6 has no header checksum).
    ///
    /// Returns `None` and leaves the packet untouched when the hop limit is 0 or 1: such a
    /// packet must not be forwarded (RFC 8200 section 3; Cilium drops it as TTL exceeded).
    #[inline]
    pub fn decrement_hop_limit(&mut self) -> Option<u8> {
        let hop_limit = self.hop_limit();
        if hop_limit <= 1 {
            return None;
        }
        self.set_hop_limit(hop_limit - 1);
        Some(hop_limit - 1)
    }

    /// The payload, writable.
    #[inline]
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let end = HEADER_LEN + usize::from(self.payload_len());
        self.buffer
            .as_mut()
            .get_mut(HEADER_LEN..end)
            .unwrap_or(&mut [])
    }

    #[inline]
    fn set_ver_tc_flow(&mut self, word: u32) {
        set_u32(self.buffer.as_mut(), field::VER_TC_FLOW, word);
    }
}

/// What a Fragment header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FragmentInfo {
    /// Offset of this fragment's data in the original packet, in bytes (a multiple of 8).
    pub offset: u16,
    pub more_frags: bool,
    pub ident: u32,
}

impl FragmentInfo {
    /// True for the fragment at offset 0, the only one that carries the upper-layer header.
    #[inline]
    pub fn is_first(&self) -> bool {
        self.offset == 0
    }
}

/// Where the upper layer starts, as found by [`walk_extension_headers`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct UpperLayer {
    /// The first number that is not a walked extension header. After a non-first fragment,
    /// the protocol the reassembled packet continues with.
    pub protocol: Protocol,
    /// Offset of the upper-layer header from the start of the walked bytes.
    pub offset: usize,
    /// The Fragment header, if one was crossed.
    pub fragment: Option<FragmentInfo>,
}

/// True for the numbers the walk skips over.
#[inline]
fn is_walked_extension(next_header: u8) -> bool {
    matches!(
        next_header,
        ext::HOP_BY_HOP
            | ext::ROUTING
            | ext::FRAGMENT
            | ext::AUTHENTICATION
            | ext::DESTINATION_OPTIONS
    )
}

/// Skips the extension headers at the start of `bytes` (an IPv6 payload whose first header
/// is `next_header`) and returns the upper-layer protocol and its offset in `bytes`.
///
/// Errors: `Truncated` when a header runs past `bytes`; `Malformed` for a Hop-by-Hop header
/// that is not first or a second Fragment header; `Unsupported` when more than
/// [`MAX_EXTENSION_HEADERS`] extension headers precede the upper layer. Allocates nothing.
pub fn walk_extension_headers(next_header: Protocol, bytes: &[u8]) -> Result<UpperLayer> {
    let mut next = u8::from(next_header);
    let mut offset = 0usize;
    let mut fragment: Option<FragmentInfo> = None;
    let mut count = 0usize;
    while is_walked_extension(next) {
        if count == MAX_EXTENSION_HEADERS {
            return Err(Error::Unsupported);
        }
        if next == ext::HOP_BY_HOP && count != 0 {
            return Err(Error::Malformed);
        }
        let rest = bytes.get(offset..).unwrap_or(&[]);
        let &[following, len_byte] = rest.first_chunk::<2>().ok_or(Error::Truncated)?;
        let len = match next {
            ext::FRAGMENT => {
                if fragment.is_some() {
                    return Err(Error::Malformed);
                }
                fragment = Some(parse_fragment(rest)?);
                FRAGMENT_HEADER_LEN
            }
            // RFC 4302: the AH length counts 4-byte words, minus 2.
            ext::AUTHENTICATION => (usize::from(len_byte) + 2) * 4,
            // RFC 8200: 8-byte units, not counting the first 8 bytes.
            _ => (usize::from(len_byte) + 1) * 8,
        };
        if rest.len() < len {
            return Err(Error::Truncated);
        }
        offset += len;
        next = following;
        count += 1;
        if fragment.is_some_and(|f| !f.is_first()) {
            // What follows is fragment data, not a header.
            break;
        }
    }
    Ok(UpperLayer {
        protocol: Protocol::from(next),
        offset,
        fragment,
    })
}

/// Parses a Fragment header at the start of `header`.
#[inline]
fn parse_fragment(header: &[u8]) -> Result<FragmentInfo> {
    let &[_, _, o0, o1, i0, i1, i2, i3] = header
        .first_chunk::<FRAGMENT_HEADER_LEN>()
        .ok_or(Error::Truncated)?;
    let offset_and_flags = u16::from_be_bytes([o0, o1]);
    Ok(FragmentInfo {
        // 13 bits of 8-byte units, then 2 reserved bits and the M flag.
        offset: offset_and_flags & 0xfff8,
        more_frags: offset_and_flags & 1 != 0,
        ident: u32::from_be_bytes([i0, i1, i2, i3]),
    })
}

/// A parsed IPv6 fixed header. Extension headers are part of the payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Repr {
    pub src_addr: Ipv6Addr,
    pub dst_addr: Ipv6Addr,
    pub next_header: Protocol,
    /// Bytes after the fixed header.
    pub payload_len: usize,
    pub hop_limit: u8,
    pub traffic_class: u8,
    /// 20 bits.
    pub flow_label: u32,
}

impl Repr {
    /// A header with hop limit 64, traffic class 0 and flow label 0.
    pub fn new(
        src_addr: Ipv6Addr,
        dst_addr: Ipv6Addr,
        next_header: Protocol,
        payload_len: usize,
    ) -> Repr {
        Repr {
            src_addr,
            dst_addr,
            next_header,
            payload_len,
            hop_limit: DEFAULT_HOP_LIMIT,
            traffic_class: 0,
            flow_label: 0,
        }
    }

    /// Parses the fixed header: `Truncated` per [`Ipv6Packet::check_len`], `Malformed` for a
    /// version other than 6.
    pub fn parse<T: AsRef<[u8]> + ?Sized>(packet: &Ipv6Packet<&T>) -> Result<Repr> {
        packet.check_len()?;
        if packet.version() != 6 {
            return Err(Error::Malformed);
        }
        Ok(Repr {
            src_addr: packet.src_addr(),
            dst_addr: packet.dst_addr(),
            next_header: packet.next_header(),
            payload_len: usize::from(packet.payload_len()),
            hop_limit: packet.hop_limit(),
            traffic_class: packet.traffic_class(),
            flow_label: packet.flow_label(),
        })
    }

    /// Always 40: extension headers belong to the payload.
    #[inline]
    pub fn header_len(&self) -> usize {
        HEADER_LEN
    }

    /// Header plus payload.
    #[inline]
    pub fn buffer_len(&self) -> usize {
        HEADER_LEN + self.payload_len
    }

    /// Writes the fixed header; the payload is left for the caller.
    ///
    /// # Panics
    /// When the buffer is shorter than 40 bytes. In debug builds, also when `payload_len`
    /// exceeds 65535 (jumbograms are not supported).
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]> + ?Sized>(&self, packet: &mut Ipv6Packet<&mut T>) {
        debug_assert!(self.payload_len <= usize::from(u16::MAX));
        packet.set_ver_tc_flow(
            (6 << 28) | (u32::from(self.traffic_class) << 20) | (self.flow_label & 0x000f_ffff),
        );
        packet.set_payload_len(self.payload_len as u16);
        packet.set_next_header(self.next_header);
        packet.set_hop_limit(self.hop_limit);
        packet.set_src_addr(self.src_addr);
        packet.set_dst_addr(self.dst_addr);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    // The first fragment of a UDP datagram from fd00:10:244:1::5 to fd00:10:244:2::7, behind
    // a Hop-by-Hop header holding a Router Alert option: the chain the spec's walk must cross.
    const HBH_FRAGMENT_UDP: [u8; 72] = [
        0x60, 0x0a, 0xbc, 0xde, // version 6, traffic class 0, flow label 0xabcde
        0x00, 0x20, 0x00, 0x40, // payload length 32, next header Hop-by-Hop, hop limit 64
        0xfd, 0x00, 0x00, 0x10, 0x02, 0x44, 0x00, 0x01, // fd00:10:244:1::5
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x05, //
        0xfd, 0x00, 0x00, 0x10, 0x02, 0x44, 0x00, 0x02, // fd00:10:244:2::7
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x07, //
        0x2c, 0x00, // Hop-by-Hop: next Fragment, length 0 (8 bytes)
        0x05, 0x02, 0x00, 0x00, // Router Alert (RFC 2711), value 0
        0x01, 0x00, // PadN, 0 bytes of padding
        0x11, 0x00, 0x00, 0x01, // Fragment: next UDP, offset 0, M set
        0x12, 0x34, 0x56, 0x78, // identification
        0x00, 0x35, 0x9c, 0x40, // UDP: port 53 -> 40000
        0x06, 0x40, 0x00, 0x00, // length 1600 (the whole datagram), checksum not checked
        0x12, 0x34, 0x81, 0x80, 0x00, 0x01, 0x00, 0x01, // the start of a DNS answer
    ];

    // An ICMPv6 echo request 2001:db8::1 -> 2001:db8::2 with 4 data bytes ("ping"), traffic
    // class 0xb8 (EF), flow label 0x12345; its ICMPv6 checksum 0x4548 covers the pseudo-header.
    const ICMPV6_ECHO: [u8; 52] = [
        0x6b, 0x81, 0x23, 0x45, // version 6, traffic class 0xb8, flow label 0x12345
        0x00, 0x0c, 0x3a, 0x40, // payload length 12, ICMPv6, hop limit 64
        0x20, 0x01, 0x0d, 0xb8, 0x00, 0x00, 0x00, 0x00, // 2001:db8::1
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, //
        0x20, 0x01, 0x0d, 0xb8, 0x00, 0x00, 0x00, 0x00, // 2001:db8::2
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x02, //
        0x80, 0x00, 0x45, 0x48, 0x00, 0x2a, 0x00, 0x01, // echo request, id 42, seq 1
        0x70, 0x69, 0x6e, 0x67, // "ping"
    ];

    const GOLDEN: [&[u8]; 2] = [&HBH_FRAGMENT_UDP, &ICMPV6_ECHO];

    #[test]
    fn hbh_fragment_udp_golden() {
        let p = Ipv6Packet::new_checked(&HBH_FRAGMENT_UDP[..]).unwrap();
        assert_eq!(p.version(), 6);
        assert_eq!(p.traffic_class(), 0);
        assert_eq!(p.flow_label(), 0xabcde);
        assert_eq!(p.payload_len(), 32);
        assert_eq!(p.next_header(), Protocol::Unknown(ext::HOP_BY_HOP));
        assert_eq!(p.hop_limit(), 64);
        assert_eq!(
            p.src_addr(),
            "fd00:10:244:1::5".parse::<Ipv6Addr>().unwrap()
        );
        assert_eq!(
            p.dst_addr(),
            "fd00:10:244:2::7".parse::<Ipv6Addr>().unwrap()
        );
        assert_eq!(p.payload(), &HBH_FRAGMENT_UDP[40..]);
        let upper = p.upper_layer().unwrap();
        assert_eq!(
            upper,
            UpperLayer {
                protocol: Protocol::Udp,
                offset: 16,
                fragment: Some(FragmentInfo {
                    offset: 0,
                    more_frags: true,
                    ident: 0x1234_5678
                }),
            }
        );
        assert_eq!(&p.payload()[upper.offset..upper.offset + 2], &[0x00, 0x35]);
    }

    #[test]
    fn icmpv6_echo_golden() {
        let p = Ipv6Packet::new_checked(&ICMPV6_ECHO[..]).unwrap();
        assert_eq!(p.traffic_class(), 0xb8);
        assert_eq!(p.flow_label(), 0x12345);
        assert_eq!(p.next_header(), Protocol::Icmpv6);
        assert_eq!(p.payload(), &ICMPV6_ECHO[40..]);
        assert_eq!(
            p.upper_layer(),
            Ok(UpperLayer {
                protocol: Protocol::Icmpv6,
                offset: 0,
                fragment: None
            })
        );
        // The ICMPv6 checksum in the capture verifies over the pseudo-header, which shows
        // the addresses and length are read from the right bytes.
        let pseudo = crate::wire::checksum::pseudo_header_v6(
            p.src_addr(),
            p.dst_addr(),
            58,
            u32::from(p.payload_len()),
        );
        let sum = crate::wire::checksum::sum(p.payload(), pseudo);
        assert_eq!(crate::wire::checksum::fold(sum), 0xffff);
    }

    #[test]
    fn parse_emit_round_trip_golden() {
        for golden in GOLDEN {
            let repr = Repr::parse(&Ipv6Packet::new_checked(golden).unwrap()).unwrap();
            assert_eq!(repr.buffer_len(), golden.len());
            let mut out = golden.to_vec();
            out[..HEADER_LEN].fill(0xee);
            repr.emit(&mut Ipv6Packet::new_unchecked(&mut out[..]));
            assert_eq!(out, golden);
        }
    }

    #[test]
    fn every_truncation_is_an_error() {
        for golden in GOLDEN {
            for len in 0..golden.len() {
                let p = Ipv6Packet::new_unchecked(&golden[..len]);
                assert_eq!(p.check_len(), Err(Error::Truncated), "{len} bytes");
                assert_eq!(Repr::parse(&p), Err(Error::Truncated), "{len} bytes");
            }
        }
    }

    #[test]
    fn padding_is_not_payload() {
        let mut padded = ICMPV6_ECHO.to_vec();
        padded.extend_from_slice(&[0; 6]);
        let p = Ipv6Packet::new_checked(&padded[..]).unwrap();
        assert_eq!(p.payload(), &ICMPV6_ECHO[40..]);
    }

    #[test]
    fn version_4_is_malformed() {
        let mut v4 = ICMPV6_ECHO;
        v4[0] = 0x4b;
        assert_eq!(
            Ipv6Packet::new_checked(&v4[..]).err(),
            Some(Error::Malformed)
        );
        assert_eq!(
            Repr::parse(&Ipv6Packet::new_unchecked(&v4[..])),
            Err(Error::Malformed)
        );
    }

    #[test]
    fn payload_len_past_the_buffer_is_truncated() {
        let mut long = ICMPV6_ECHO;
        long[5] = 13;
        assert_eq!(
            Ipv6Packet::new_checked(&long[..]).err(),
            Some(Error::Truncated)
        );
    }

    #[test]
    fn every_truncated_chain_is_truncated() {
        let payload = &HBH_FRAGMENT_UDP[40..];
        for len in 0..16 {
            assert_eq!(
                walk_extension_headers(Protocol::Unknown(ext::HOP_BY_HOP), &payload[..len]),
                Err(Error::Truncated),
                "{len} bytes"
            );
        }
        // The upper-layer header itself is not the walk's business.
        assert!(walk_extension_headers(Protocol::Unknown(0), &payload[..16]).is_ok());
    }

    /// A generic extension header (8 bytes) followed by `next`.
    fn options_header(next: u8) -> [u8; 8] {
        [next, 0, 0x01, 0x04, 0, 0, 0, 0]
    }

    fn chain(kinds: &[u8], upper: u8) -> (Protocol, Vec<u8>) {
        let mut bytes = Vec::new();
        for (i, _) in kinds.iter().enumerate() {
            let next = kinds.get(i + 1).copied().unwrap_or(upper);
            bytes.extend_from_slice(&options_header(next));
        }
        (Protocol::from(kinds[0]), bytes)
    }

    #[test]
    fn eight_extension_headers_are_walked_nine_are_unsupported() {
        let eight = [ext::DESTINATION_OPTIONS; 8];
        let (first, bytes) = chain(&eight, 6);
        assert_eq!(
            walk_extension_headers(first, &bytes),
            Ok(UpperLayer {
                protocol: Protocol::Tcp,
                offset: 64,
                fragment: None
            })
        );
        let nine = [ext::DESTINATION_OPTIONS; 9];
        let (first, bytes) = chain(&nine, 6);
        assert_eq!(
            walk_extension_headers(first, &bytes),
            Err(Error::Unsupported)
        );
    }

    #[test]
    fn hop_by_hop_must_come_first() {
        let (first, bytes) = chain(&[ext::DESTINATION_OPTIONS, ext::HOP_BY_HOP], 17);
        assert_eq!(walk_extension_headers(first, &bytes), Err(Error::Malformed));
    }

    #[test]
    fn two_fragment_headers_are_malformed() {
        let mut bytes = vec![ext::FRAGMENT, 0, 0, 1, 0, 0, 0, 1];
        bytes.extend_from_slice(&[17, 0, 0, 1, 0, 0, 0, 1]);
        assert_eq!(
            walk_extension_headers(Protocol::Unknown(ext::FRAGMENT), &bytes),
            Err(Error::Malformed)
        );
    }

    #[test]
    fn non_first_fragment_stops_after_the_fragment_header() {
        // Offset 1448 (181 units), M set, then fragment data that looks like a header.
        let mut bytes = vec![ext::DESTINATION_OPTIONS, 0, 0x05, 0xa9, 0, 0, 0, 9];
        bytes.extend_from_slice(&[0xff; 16]);
        assert_eq!(
            walk_extension_headers(Protocol::Unknown(ext::FRAGMENT), &bytes),
            Ok(UpperLayer {
                protocol: Protocol::Unknown(ext::DESTINATION_OPTIONS),
                offset: 8,
                fragment: Some(FragmentInfo {
                    offset: 1448,
                    more_frags: true,
                    ident: 9
                }),
            })
        );
    }

    #[test]
    fn routing_and_authentication_lengths() {
        // A type-4 routing header (SRH) with one segment: length 2 -> 24 bytes; then AH with
        // a 96-bit ICV: payload length 4 -> 24 bytes; then TCP.
        let mut bytes = vec![ext::AUTHENTICATION, 2, 4, 0, 0, 0, 0, 0];
        bytes.extend_from_slice(&[0; 16]);
        bytes.extend_from_slice(&[6, 4, 0, 0]);
        bytes.extend_from_slice(&[0; 20]);
        bytes.extend_from_slice(&[0xaa; 20]);
        assert_eq!(
            walk_extension_headers(Protocol::Unknown(ext::ROUTING), &bytes),
            Ok(UpperLayer {
                protocol: Protocol::Tcp,
                offset: 48,
                fragment: None
            })
        );
        assert_eq!(
            walk_extension_headers(Protocol::Unknown(ext::ROUTING), &bytes[..47]),
            Err(Error::Truncated)
        );
    }

    #[test]
    fn no_next_header_stops_the_walk() {
        let (first, bytes) = chain(&[ext::HOP_BY_HOP], ext::NO_NEXT_HEADER);
        assert_eq!(
            walk_extension_headers(first, &bytes),
            Ok(UpperLayer {
                protocol: Protocol::Unknown(ext::NO_NEXT_HEADER),
                offset: 8,
                fragment: None
            })
        );
    }

    #[test]
    fn hop_limit_decrements_until_expired() {
        let mut copy = ICMPV6_ECHO;
        let mut p = Ipv6Packet::new_checked(&mut copy[..]).unwrap();
        assert_eq!(p.decrement_hop_limit(), Some(63));
        p.set_hop_limit(2);
        assert_eq!(p.decrement_hop_limit(), Some(1));
        assert_eq!(p.decrement_hop_limit(), None);
        assert_eq!(p.hop_limit(), 1);
        p.set_hop_limit(0);
        assert_eq!(p.decrement_hop_limit(), None);
        assert_eq!(p.hop_limit(), 0);
    }

    #[test]
    fn setters_keep_neighbouring_bits() {
        let mut copy = ICMPV6_ECHO;
        let mut p = Ipv6Packet::new_checked(&mut copy[..]).unwrap();
        p.set_traffic_class(0x12);
        assert_eq!((p.version(), p.flow_label()), (6, 0x12345));
        p.set_flow_label(0xfff_ffff);
        assert_eq!(
            (p.version(), p.traffic_class(), p.flow_label()),
            (6, 0x12, 0xfffff)
        );
        p.set_version(4);
        assert_eq!((p.version(), p.traffic_class()), (4, 0x12));
        p.set_payload_len(0xffff);
        assert!(p.payload().is_empty());
        assert!(p.payload_mut().is_empty());
    }

    prop_compose! {
        fn repr_strategy()(
            src in any::<[u8; 16]>(),
            dst in any::<[u8; 16]>(),
            next_header in any::<u8>(),
            payload_len in 0usize..1400,
            hop_limit in any::<u8>(),
            traffic_class in any::<u8>(),
            flow_label in 0u32..(1 << 20),
        ) -> Repr {
            Repr {
                src_addr: Ipv6Addr::from(src),
                dst_addr: Ipv6Addr::from(dst),
                next_header: Protocol::from(next_header),
                payload_len,
                hop_limit,
                traffic_class,
                flow_label,
            }
        }
    }

    /// One extension header of a random chain: (kind, length byte, fragment offset units).
    fn ext_header() -> impl Strategy<Value = (u8, u8, u16)> {
        (
            prop::sample::select(vec![
                ext::ROUTING,
                ext::FRAGMENT,
                ext::AUTHENTICATION,
                ext::DESTINATION_OPTIONS,
            ]),
            0u8..4,
            0u16..4,
        )
    }

    proptest! {
        #[test]
        fn repr_emit_parse_round_trip(repr in repr_strategy()) {
            let mut buf = vec![0u8; repr.buffer_len()];
            repr.emit(&mut Ipv6Packet::new_unchecked(&mut buf[..]));
            let p = Ipv6Packet::new_checked(&buf[..]).unwrap();
            prop_assert_eq!(p.payload().len(), repr.payload_len);
            prop_assert_eq!(Repr::parse(&p).unwrap(), repr);
        }

        #[test]
        fn random_chains_walk_to_the_upper_layer(
            hop_by_hop in any::<bool>(),
            headers in proptest::collection::vec(ext_header(), 0..10),
            upper in prop::sample::select(vec![6u8, 17, 58, 59, 50]),
        ) {
            let mut kinds: Vec<(u8, u8, u16)> = Vec::new();
            if hop_by_hop {
                kinds.push((ext::HOP_BY_HOP, 0, 0));
            }
            kinds.extend(headers);
            let mut bytes = Vec::new();
            let mut expected = Ok(UpperLayer { protocol: Protocol::from(upper), offset: 0, fragment: None });
            let mut seen_fragment = false;
            let mut stopped = false;
            for (i, &(kind, len_byte, frag_units)) in kinds.iter().enumerate() {
                let next = kinds.get(i + 1).map_or(upper, |k| k.0);
                let start = bytes.len();
                match kind {
                    ext::FRAGMENT => {
                        let field = (frag_units << 3) | 1;
                        bytes.extend_from_slice(&[next, 0]);
                        bytes.extend_from_slice(&field.to_be_bytes());
                        bytes.extend_from_slice(&7u32.to_be_bytes());
                    }
                    ext::AUTHENTICATION => {
                        bytes.extend_from_slice(&[next, len_byte]);
                        bytes.resize(start + (usize::from(len_byte) + 2) * 4, 0);
                    }
                    _ => {
                        bytes.extend_from_slice(&[next, len_byte]);
                        bytes.resize(start + (usize::from(len_byte) + 1) * 8, 0);
                    }
                }
                // The model of the walk, one header at a time.
                if stopped || expected.is_err() {
                    continue;
                }
                if i == MAX_EXTENSION_HEADERS {
                    expected = Err(Error::Unsupported);
                    continue;
                }
                if kind == ext::FRAGMENT && seen_fragment {
                    expected = Err(Error::Malformed);
                    continue;
                }
                if let Ok(up) = expected.as_mut() {
                    up.protocol = Protocol::from(next);
                    up.offset = bytes.len();
                    if kind == ext::FRAGMENT {
                        seen_fragment = true;
                        stopped = frag_units != 0;
                        up.fragment = Some(FragmentInfo { offset: frag_units << 3, more_frags: true, ident: 7 });
                    }
                }
            }
            bytes.extend_from_slice(&[0xab; 8]);
            let first = kinds.first().map_or(upper, |k| k.0);
            prop_assert_eq!(walk_extension_headers(Protocol::from(first), &bytes), expected);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..120)) {
            if let Ok(p) = Ipv6Packet::new_checked(&bytes[..]) {
                let _ = (p.traffic_class(), p.flow_label(), p.hop_limit(), p.src_addr(), p.dst_addr());
                prop_assert_eq!(p.payload().len(), usize::from(p.payload_len()));
                if let Ok(upper) = p.upper_layer() {
                    prop_assert!(upper.offset <= p.payload().len());
                }
                let _ = Repr::parse(&p);
            }
            for first in [0u8, 43, 44, 51, 60] {
                if let Ok(upper) = walk_extension_headers(Protocol::from(first), &bytes) {
                    prop_assert!(upper.offset <= bytes.len());
                }
            }
        }
    }
}
