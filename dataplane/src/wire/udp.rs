//! UDP header (RFC 768; over IPv6, RFC 8200 section 8.1): a zero-copy view and a `Repr`.
//!
//! Contract and invariants:
//! - The buffer starts at the UDP header and holds at least the datagram: the IP payload may be
//!   longer (link padding), and the UDP length field decides where the datagram ends.
//!   [`UdpPacket::check_len`] rejects a length field below 8 (`Malformed`) or beyond the buffer
//!   (`Truncated`). After [`UdpPacket::new_checked`] succeeds no accessor panics.
//! - Checksum rules (RFC 768, RFC 8200): a zero field means "no checksum" over IPv4, so it
//!   verifies; over IPv6 it is invalid. A computed zero is transmitted as 0xffff
//!   ([`checksum::udp_nonzero`]). The checksum covers the pseudo-header and the `length` bytes.
//! - Incremental NAT updates never touch a zero field: over IPv4 the datagram stays
//!   "unchecksummed", over IPv6 it stays invalid (a NAT must not turn a bad datagram into a good
//!   one). Any other field is updated per RFC 1624 and re-mapped from 0 to 0xffff, which equals a
//!   full recompute.
//! - Checksums are never verified implicitly (see `verify_checksum_v4`/`_v6`).

use std::net::{Ipv4Addr, Ipv6Addr};

use super::bytes::{get_u16, set_u16};
use super::checksum;
use super::ip::Protocol;
use super::{Error, Result};

/// Byte offsets of the header fields.
mod field {
    use crate::wire::Field;

    pub const SRC_PORT: Field = 0..2;
    pub const DST_PORT: Field = 2..4;
    /// Length of header and payload, in bytes.
    pub const LENGTH: Field = 4..6;
    pub const CHECKSUM: Field = 6..8;
}

/// Length of the header.
pub const HEADER_LEN: usize = field::CHECKSUM.end;
/// Largest payload the 16-bit length field can describe.
pub const MAX_PAYLOAD_LEN: usize = u16::MAX as usize - HEADER_LEN;

/// A read/write view of a UDP datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UdpPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> UdpPacket<T> {
    /// Wraps a buffer without any check; accessors may panic on a short buffer.
    #[inline]
    pub const fn new_unchecked(buffer: T) -> UdpPacket<T> {
        UdpPacket { buffer }
    }

    /// Wraps a buffer and checks it with [`check_len`](Self::check_len).
    #[inline]
    pub fn new_checked(buffer: T) -> Result<UdpPacket<T>> {
        let packet = Self::new_unchecked(buffer);
        packet.check_len()?;
        Ok(packet)
    }

    /// Checks that the header fits (`Truncated`), that the length field counts at least the
    /// header (`Malformed`) and that the datagram it announces fits in the buffer (`Truncated`).
    #[inline]
    pub fn check_len(&self) -> Result<()> {
        let buffer_len = self.buffer.as_ref().len();
        if buffer_len < HEADER_LEN {
            return Err(Error::Truncated);
        }
        let len = usize::from(self.len());
        if len < HEADER_LEN {
            Err(Error::Malformed)
        } else if len > buffer_len {
            Err(Error::Truncated)
        } else {
            Ok(())
        }
    }

    /// Gives the buffer back.
    #[inline]
    pub fn into_inner(self) -> T {
        self.buffer
    }

    #[inline]
    pub fn src_port(&self) -> u16 {
        get_u16(self.buffer.as_ref(), field::SRC_PORT)
    }

    #[inline]
    pub fn dst_port(&self) -> u16 {
        get_u16(self.buffer.as_ref(), field::DST_PORT)
    }

    /// The length field: header plus payload.
    #[inline]
    pub fn len(&self) -> u16 {
        get_u16(self.buffer.as_ref(), field::LENGTH)
    }

    /// True when the length field says there is no payload.
    #[inline]
    pub fn is_empty(&self) -> bool {
        usize::from(self.len()) <= HEADER_LEN
    }

    #[inline]
    pub fn checksum(&self) -> u16 {
        get_u16(self.buffer.as_ref(), field::CHECKSUM)
    }

    /// The payload, up to the length field (bytes past it are not part of the datagram).
    #[inline]
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..usize::from(self.len())]
    }

    /// Header and payload, as the length field delimits them: what the checksum covers.
    #[inline]
    fn datagram(&self) -> &[u8] {
        &self.buffer.as_ref()[..usize::from(self.len())]
    }

    fn sum_v4(&self, src: Ipv4Addr, dst: Ipv4Addr) -> u32 {
        let pseudo =
            checksum::pseudo_header_v4(src, dst, Protocol::Udp.number(), u32::from(self.len()));
        checksum::sum(self.datagram(), pseudo)
    }

    fn sum_v6(&self, src: Ipv6Addr, dst: Ipv6Addr) -> u32 {
        let pseudo =
            checksum::pseudo_header_v6(src, dst, Protocol::Udp.number(), u32::from(self.len()));
        checksum::sum(self.datagram(), pseudo)
    }

    /// True when the checksum verifies over the IPv4 pseudo-header, or is 0 ("no checksum",
    /// RFC 768).
    pub fn verify_checksum_v4(&self, src: Ipv4Addr, dst: Ipv4Addr) -> bool {
        self.checksum() == 0 || checksum::finish(self.sum_v4(src, dst)) == 0
    }

    /// True when the checksum verifies over the IPv6 pseudo-header. A zero field is invalid over
    /// IPv6 (RFC 8200 section 8.1) and never verifies.
    pub fn verify_checksum_v6(&self, src: Ipv6Addr, dst: Ipv6Addr) -> bool {
        self.checksum() != 0 && checksum::finish(self.sum_v6(src, dst)) == 0
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> UdpPacket<T> {
    #[inline]
    pub fn set_src_port(&mut self, port: u16) {
        set_u16(self.buffer.as_mut(), field::SRC_PORT, port);
    }

    #[inline]
    pub fn set_dst_port(&mut self, port: u16) {
        set_u16(self.buffer.as_mut(), field::DST_PORT, port);
    }

    /// Sets the length field (header plus payload).
    #[inline]
    pub fn set_len(&mut self, len: u16) {
        set_u16(self.buffer.as_mut(), field::LENGTH, len);
    }

    #[inline]
    pub fn set_checksum(&mut self, check: u16) {
        set_u16(self.buffer.as_mut(), field::CHECKSUM, check);
    }

    /// The payload, up to the length field, writable.
    #[inline]
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let end = usize::from(self.len());
        &mut self.buffer.as_mut()[HEADER_LEN..end]
    }

    /// Computes and stores the checksum over the IPv4 pseudo-header (a computed 0 is stored as
    /// 0xffff).
    pub fn fill_checksum_v4(&mut self, src: Ipv4Addr, dst: Ipv4Addr) {
        self.set_checksum(0);
        let check = checksum::udp_nonzero(checksum::finish(self.sum_v4(src, dst)));
        self.set_checksum(check);
    }

    /// Computes and stores the checksum over the IPv6 pseudo-header (a computed 0 is stored as
    /// 0xffff).
    pub fn fill_checksum_v6(&mut self, src: Ipv6Addr, dst: Ipv6Addr) {
        self.set_checksum(0);
        let check = checksum::udp_nonzero(checksum::finish(self.sum_v6(src, dst)));
        self.set_checksum(check);
    }

    /// Applies an RFC 1624 update computed by `update` unless the field is 0 (see the module
    /// doc for why a zero field is left alone).
    #[inline]
    fn patch_checksum(&mut self, update: impl FnOnce(u16) -> u16) {
        let check = self.checksum();
        if check != 0 {
            self.set_checksum(checksum::udp_nonzero(update(check)));
        }
    }

    /// Patches the checksum after the IP header's source or destination address changed from
    /// `old` to `new`. Call once per rewritten address.
    #[inline]
    pub fn update_checksum_for_addr_v4(&mut self, old: Ipv4Addr, new: Ipv4Addr) {
        self.patch_checksum(|c| checksum::update32(c, u32::from(old), u32::from(new)));
    }

    /// IPv6 twin of [`update_checksum_for_addr_v4`](Self::update_checksum_for_addr_v4).
    #[inline]
    pub fn update_checksum_for_addr_v6(&mut self, old: Ipv6Addr, new: Ipv6Addr) {
        self.patch_checksum(|c| checksum::update_bytes(c, &old.octets(), &new.octets()));
    }

    /// Rewrites the source port and patches the checksum incrementally.
    #[inline]
    pub fn set_src_port_incremental(&mut self, port: u16) {
        let old = self.src_port();
        self.set_src_port(port);
        self.patch_checksum(|c| checksum::update16(c, old, port));
    }

    /// Rewrites the destination port and patches the checksum incrementally.
    #[inline]
    pub fn set_dst_port_incremental(&mut self, port: u16) {
        let old = self.dst_port();
        self.set_dst_port(port);
        self.patch_checksum(|c| checksum::update16(c, old, port));
    }
}

/// A UDP header in plain fields; the payload is the caller's, only its length is here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Repr {
    pub src_port: u16,
    pub dst_port: u16,
    /// At most [`MAX_PAYLOAD_LEN`].
    pub payload_len: usize,
}

impl Repr {
    /// Reads a datagram's header. Structural only: the checksum is the caller's.
    pub fn parse<T: AsRef<[u8]>>(packet: &UdpPacket<T>) -> Result<Repr> {
        packet.check_len()?;
        Ok(Repr {
            src_port: packet.src_port(),
            dst_port: packet.dst_port(),
            payload_len: packet.payload().len(),
        })
    }

    #[inline]
    pub fn header_len(&self) -> usize {
        HEADER_LEN
    }

    /// Header plus payload: the length field's value.
    #[inline]
    pub fn buffer_len(&self) -> usize {
        HEADER_LEN + self.payload_len
    }

    /// Writes the header with a zero checksum field, which over IPv4 is a valid "no checksum"
    /// datagram; over IPv6 follow with `fill_checksum_v6` once the payload is written.
    ///
    /// # Panics
    /// If the buffer is shorter than [`HEADER_LEN`].
    pub fn emit_header<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut UdpPacket<T>) {
        debug_assert!(self.payload_len <= MAX_PAYLOAD_LEN, "UDP payload too long");
        packet.set_src_port(self.src_port);
        packet.set_dst_port(self.dst_port);
        packet.set_len(u16::try_from(self.buffer_len()).unwrap_or(u16::MAX));
        packet.set_checksum(0);
    }

    /// Writes the header and the checksum over an IPv4 pseudo-header. The payload must already
    /// be in the buffer.
    ///
    /// # Panics
    /// If the buffer is shorter than [`buffer_len`](Self::buffer_len).
    pub fn emit_v4<T: AsRef<[u8]> + AsMut<[u8]>>(
        &self,
        packet: &mut UdpPacket<T>,
        src: Ipv4Addr,
        dst: Ipv4Addr,
    ) {
        self.emit_header(packet);
        packet.fill_checksum_v4(src, dst);
    }

    /// IPv6 twin of [`emit_v4`](Self::emit_v4).
    pub fn emit_v6<T: AsRef<[u8]> + AsMut<[u8]>>(
        &self,
        packet: &mut UdpPacket<T>,
        src: Ipv6Addr,
        dst: Ipv6Addr,
    ) {
        self.emit_header(packet);
        packet.fill_checksum_v6(src, dst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SRC4: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
    const DST4: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 53);
    const SRC6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1);
    const DST6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 0x53);

    // A DNS query (id 0xabcd, RD, "example.com" IN A) 10.0.0.1:53000 -> 10.0.0.53:53. Checksum
    // 0xa0f5 computed over the IPv4 pseudo-header by an independent script (Python).
    const UDP_DNS_V4: [u8; 37] = [
        0xcf, 0x08, 0x00, 0x35, 0x00, 0x25, 0xa0, 0xf5, 0xab, 0xcd, 0x01, 0x00, 0x00, 0x01, 0x00,
        0x00, 0x00, 0x00, 0x00, 0x00, 0x07, 0x65, 0x78, 0x61, 0x6d, 0x70, 0x6c, 0x65, 0x03, 0x63,
        0x6f, 0x6d, 0x00, 0x00, 0x01, 0x00, 0x01,
    ];
    // The same query fd00::1 -> fd00::53: checksum 0xbad5 over the IPv6 pseudo-header.
    const UDP_DNS_V6: [u8; 37] = [
        0xcf, 0x08, 0x00, 0x35, 0x00, 0x25, 0xba, 0xd5, 0xab, 0xcd, 0x01, 0x00, 0x00, 0x01, 0x00,
        0x00, 0x00, 0x00, 0x00, 0x00, 0x07, 0x65, 0x78, 0x61, 0x6d, 0x70, 0x6c, 0x65, 0x03, 0x63,
        0x6f, 0x6d, 0x00, 0x00, 0x01, 0x00, 0x01,
    ];

    #[test]
    fn dns_query_fields() {
        let p = UdpPacket::new_checked(&UDP_DNS_V4[..]).unwrap();
        assert_eq!(p.src_port(), 53000);
        assert_eq!(p.dst_port(), 53);
        assert_eq!(p.len(), 37);
        assert!(!p.is_empty());
        assert_eq!(p.checksum(), 0xa0f5);
        assert_eq!(p.payload().len(), 29);
        assert_eq!(&p.payload()[..2], &[0xab, 0xcd]);
        assert!(p.verify_checksum_v4(SRC4, DST4));
        assert!(!p.verify_checksum_v4(SRC4, Ipv4Addr::new(10, 0, 0, 54)));

        let p6 = UdpPacket::new_checked(&UDP_DNS_V6[..]).unwrap();
        assert!(p6.verify_checksum_v6(SRC6, DST6));
        assert!(!p6.verify_checksum_v6(SRC6, SRC6));
    }

    #[test]
    fn parse_emit_round_trip_is_byte_exact() {
        for (golden, v6) in [(UDP_DNS_V4, false), (UDP_DNS_V6, true)] {
            let repr = Repr::parse(&UdpPacket::new_checked(&golden[..]).unwrap()).unwrap();
            assert_eq!(
                repr,
                Repr {
                    src_port: 53000,
                    dst_port: 53,
                    payload_len: 29
                }
            );
            let mut out = [0u8; 37];
            out[HEADER_LEN..].copy_from_slice(&golden[HEADER_LEN..]);
            let mut p = UdpPacket::new_unchecked(&mut out[..]);
            if v6 {
                repr.emit_v6(&mut p, SRC6, DST6);
            } else {
                repr.emit_v4(&mut p, SRC4, DST4);
            }
            assert_eq!(out, golden);
        }
    }

    #[test]
    fn trailing_padding_is_not_payload() {
        let mut padded = [0u8; 46];
        padded[..37].copy_from_slice(&UDP_DNS_V4);
        padded[40] = 0x77;
        let p = UdpPacket::new_checked(&padded[..]).unwrap();
        assert_eq!(p.payload().len(), 29);
        assert!(p.verify_checksum_v4(SRC4, DST4));
    }

    #[test]
    fn every_truncation_is_an_error() {
        for n in 0..UDP_DNS_V4.len() {
            let bytes = &UDP_DNS_V4[..n];
            assert_eq!(
                UdpPacket::new_checked(bytes).err(),
                Some(Error::Truncated),
                "{n}"
            );
            assert!(Repr::parse(&UdpPacket::new_unchecked(bytes)).is_err());
        }
    }

    #[test]
    fn length_below_header_is_malformed() {
        for len in 0..8u8 {
            let mut bytes = UDP_DNS_V4;
            bytes[4] = 0;
            bytes[5] = len;
            assert_eq!(
                UdpPacket::new_checked(&bytes[..]).err(),
                Some(Error::Malformed),
                "{len}"
            );
        }
        let mut bytes = UDP_DNS_V4;
        bytes[5] = 38;
        assert_eq!(
            UdpPacket::new_checked(&bytes[..]).err(),
            Some(Error::Truncated)
        );
        bytes[5] = 8;
        assert!(UdpPacket::new_checked(&bytes[..]).unwrap().is_empty());
    }

    #[test]
    fn zero_checksum_rules() {
        let mut bytes = UDP_DNS_V4;
        bytes[6] = 0;
        bytes[7] = 0;
        let p = UdpPacket::new_checked(&bytes[..]).unwrap();
        // "No checksum" over IPv4 passes whatever the addresses; over IPv6 it is invalid.
        assert!(p.verify_checksum_v4(SRC4, DST4));
        assert!(p.verify_checksum_v4(DST4, Ipv4Addr::BROADCAST));
        assert!(!p.verify_checksum_v6(SRC6, DST6));

        // An incremental NAT leaves "no checksum" at zero.
        let mut p = UdpPacket::new_unchecked(&mut bytes[..]);
        p.update_checksum_for_addr_v4(DST4, Ipv4Addr::new(10, 1, 2, 3));
        p.set_dst_port_incremental(5353);
        p.set_src_port_incremental(1);
        assert_eq!(p.checksum(), 0);
        assert_eq!(p.dst_port(), 5353);
    }

    /// Finds a datagram whose checksum computes to 0, and checks it is sent as 0xffff and that
    /// the 0xffff verifies (RFC 768: zero and all-ones are the same number in one's complement).
    #[test]
    fn computed_zero_is_sent_as_ffff() {
        let mut bytes = [0u8; 10];
        let mut p = UdpPacket::new_unchecked(&mut bytes[..]);
        Repr {
            src_port: 1,
            dst_port: 2,
            payload_len: 2,
        }
        .emit_header(&mut p);
        // Choose the payload word so that the whole sum is 0xffff, i.e. the checksum is 0.
        let partial = checksum::sum(
            p.datagram(),
            checksum::pseudo_header_v4(SRC4, DST4, Protocol::Udp.number(), 10),
        );
        let word = !checksum::fold(partial);
        p.payload_mut().copy_from_slice(&word.to_be_bytes());
        p.fill_checksum_v4(SRC4, DST4);
        assert_eq!(p.checksum(), 0xffff);
        assert!(p.verify_checksum_v4(SRC4, DST4));
    }

    fn arb_repr() -> impl Strategy<Value = Repr> {
        (any::<u16>(), any::<u16>(), 0usize..128).prop_map(|(src_port, dst_port, payload_len)| {
            Repr {
                src_port,
                dst_port,
                payload_len,
            }
        })
    }

    /// Builds a checksummed IPv4 datagram.
    fn build_v4(repr: Repr, payload: &[u8], src: Ipv4Addr, dst: Ipv4Addr) -> Vec<u8> {
        let mut buf = vec![0; repr.buffer_len()];
        let mut p = UdpPacket::new_unchecked(&mut buf[..]);
        repr.emit_header(&mut p);
        p.payload_mut().copy_from_slice(payload);
        p.fill_checksum_v4(src, dst);
        buf
    }

    proptest! {
        #[test]
        fn repr_round_trip(repr in arb_repr(), src in any::<[u8; 16]>(), dst in any::<[u8; 16]>()) {
            let (src, dst) = (Ipv6Addr::from(src), Ipv6Addr::from(dst));
            let mut buf = vec![0x5a; repr.buffer_len()];
            let mut p = UdpPacket::new_unchecked(&mut buf[..]);
            repr.emit_v6(&mut p, src, dst);
            let p = UdpPacket::new_checked(&buf[..]).unwrap();
            prop_assert!(p.verify_checksum_v6(src, dst));
            prop_assert_ne!(p.checksum(), 0);
            prop_assert_eq!(Repr::parse(&p).unwrap(), repr);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..48)) {
            if let Ok(p) = UdpPacket::new_checked(&bytes[..]) {
                let _ = (p.src_port(), p.dst_port(), p.len(), p.checksum(), p.payload());
                let _ = p.verify_checksum_v4(SRC4, DST4);
                let _ = p.verify_checksum_v6(SRC6, DST6);
                prop_assert!(Repr::parse(&p).is_ok());
            } else {
                prop_assert!(Repr::parse(&UdpPacket::new_unchecked(&bytes[..])).is_err());
            }
        }

        #[test]
        fn incremental_nat_v4_equals_recompute(
            payload in proptest::collection::vec(any::<u8>(), 0..64),
            src in any::<[u8; 4]>(), dst in any::<[u8; 4]>(),
            new_src in any::<[u8; 4]>(), new_dst in any::<[u8; 4]>(),
            ports in any::<(u16, u16, u16, u16)>(),
        ) {
            let (sport, dport, new_sport, new_dport) = ports;
            let repr = Repr { src_port: sport, dst_port: dport, payload_len: payload.len() };
            let (src, dst) = (Ipv4Addr::from(src), Ipv4Addr::from(dst));
            let (new_src, new_dst) = (Ipv4Addr::from(new_src), Ipv4Addr::from(new_dst));
            let mut buf = build_v4(repr, &payload, src, dst);
            let mut p = UdpPacket::new_unchecked(&mut buf[..]);
            p.update_checksum_for_addr_v4(src, new_src);
            p.update_checksum_for_addr_v4(dst, new_dst);
            p.set_src_port_incremental(new_sport);
            p.set_dst_port_incremental(new_dport);
            let incremental = p.checksum();
            p.fill_checksum_v4(new_src, new_dst);
            prop_assert_eq!(incremental, p.checksum());
            prop_assert_ne!(incremental, 0);
        }

        #[test]
        fn incremental_nat_v6_equals_recompute(
            payload in proptest::collection::vec(any::<u8>(), 0..64),
            src in any::<[u8; 16]>(), dst in any::<[u8; 16]>(),
            new_src in any::<[u8; 16]>(), new_dst in any::<[u8; 16]>(),
            ports in any::<(u16, u16, u16, u16)>(),
        ) {
            let (sport, dport, new_sport, new_dport) = ports;
            let repr = Repr { src_port: sport, dst_port: dport, payload_len: payload.len() };
            let (src, dst) = (Ipv6Addr::from(src), Ipv6Addr::from(dst));
            let (new_src, new_dst) = (Ipv6Addr::from(new_src), Ipv6Addr::from(new_dst));
            let mut buf = vec![0; repr.buffer_len()];
            let mut p = UdpPacket::new_unchecked(&mut buf[..]);
            repr.emit_header(&mut p);
            p.payload_mut().copy_from_slice(&payload);
            p.fill_checksum_v6(src, dst);
            p.update_checksum_for_addr_v6(src, new_src);
            p.update_checksum_for_addr_v6(dst, new_dst);
            p.set_src_port_incremental(new_sport);
            p.set_dst_port_incremental(new_dport);
            let incremental = p.checksum();
            p.fill_checksum_v6(new_src, new_dst);
            prop_assert_eq!(incremental, p.checksum());
            prop_assert!(p.verify_checksum_v6(new_src, new_dst));
        }

        /// The RFC 768 corner: a datagram whose checksum computes to 0 (sent as 0xffff) stays
        /// equal to a full recompute through NAT, in both directions of the corner.
        #[test]
        fn incremental_nat_through_the_ffff_corner(
            src in any::<[u8; 4]>(), dst in any::<[u8; 4]>(), new_dst in any::<[u8; 4]>(),
            dport in any::<u16>(), new_dport in any::<u16>(),
        ) {
            let (src, dst, new_dst) = (Ipv4Addr::from(src), Ipv4Addr::from(dst), Ipv4Addr::from(new_dst));
            let repr = Repr { src_port: 1000, dst_port: dport, payload_len: 2 };
            // Pick the payload so that the checksum after NAT computes to 0.
            let mut buf = build_v4(repr, &[0, 0], src, new_dst);
            {
                let mut p = UdpPacket::new_unchecked(&mut buf[..]);
                p.set_dst_port(new_dport);
                p.set_checksum(0);
                let partial = checksum::sum(p.datagram(), checksum::pseudo_header_v4(src, new_dst, Protocol::Udp.number(), 10));
                let word = !checksum::fold(partial);
                p.payload_mut().copy_from_slice(&word.to_be_bytes());
                p.set_dst_port(dport);
                p.fill_checksum_v4(src, dst);
            }
            let mut p = UdpPacket::new_unchecked(&mut buf[..]);
            p.update_checksum_for_addr_v4(dst, new_dst);
            p.set_dst_port_incremental(new_dport);
            prop_assert_eq!(p.checksum(), 0xffff);
            prop_assert!(p.verify_checksum_v4(src, new_dst));
            // And back: from 0xffff to the original datagram.
            p.update_checksum_for_addr_v4(new_dst, dst);
            p.set_dst_port_incremental(dport);
            let incremental = p.checksum();
            p.fill_checksum_v4(src, dst);
            prop_assert_eq!(incremental, p.checksum());
        }
    }
}
