//! TCP header (RFC 9293): a zero-copy view, the flag set the conntrack state machine consumes,
//! and a `Repr` for the segments the dataplane builds itself (resets, probes, tests).
//!
//! Contract and invariants:
//! - The buffer is exactly one TCP segment: the IP payload as the IP header delimits it. TCP has
//!   no length field, so the segment length the checksum covers is the buffer length.
//! - [`TcpPacket::check_len`] accepts a buffer that holds the fixed header and whose data offset
//!   is at least 5 words (else [`Error::Malformed`]) and ends inside the buffer (else
//!   [`Error::Truncated`]). After [`TcpPacket::new_checked`] succeeds no accessor panics; a view
//!   built with `new_unchecked` may panic on a short buffer.
//! - Checksums are never verified implicitly: forwarded segments are verified by the host that
//!   terminates them, and local code that terminates a segment calls `verify_checksum_v4`/`_v6`.
//! - NAT rewrites ports here and addresses in the IP header; each rewrite patches the checksum
//!   with an RFC 1624 incremental update (the `*_incremental` setters and
//!   `update_checksum_for_addr_*`), which gives the same field as a full recompute.

use core::fmt;
use core::ops::{BitAnd, BitOr, BitOrAssign};
use std::net::{Ipv4Addr, Ipv6Addr};

use super::bytes::{get_u16, get_u32, set_u16, set_u32};
use super::checksum;
use super::ip::Protocol;
use super::{Error, Result};

/// Byte offsets of the fixed header fields.
mod field {
    use crate::wire::Field;

    pub const SRC_PORT: Field = 0..2;
    pub const DST_PORT: Field = 2..4;
    pub const SEQ_NUM: Field = 4..8;
    pub const ACK_NUM: Field = 8..12;
    /// Data offset in 32-bit words (high nibble); reserved bits (low nibble).
    pub const DATA_OFFSET: Field = 12..13;
    /// CWR ECE URG ACK PSH RST SYN FIN, from the high bit down.
    pub const FLAGS: Field = 13..14;
    pub const WINDOW: Field = 14..16;
    pub const CHECKSUM: Field = 16..18;
    pub const URGENT: Field = 18..20;
}

/// Length of the fixed header (data offset 5).
pub const HEADER_LEN: usize = field::URGENT.end;
/// Largest header: data offset 15 words.
pub const MAX_HEADER_LEN: usize = 15 * 4;
/// Largest options area.
pub const MAX_OPTIONS_LEN: usize = MAX_HEADER_LEN - HEADER_LEN;

/// Length as the pseudo-header wants it. Frames are far below 4 GiB; saturating keeps the
/// function total anyway (the checksum would then simply not verify).
#[inline]
fn len_u32(len: usize) -> u32 {
    u32::try_from(len).unwrap_or(u32::MAX)
}

/// The eight TCP flag bits (byte 13 of the header). The reserved/AE bits of byte 12 are not
/// part of it.
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct TcpFlags(pub u8);

impl TcpFlags {
    pub const NONE: TcpFlags = TcpFlags(0);
    pub const FIN: TcpFlags = TcpFlags(0x01);
    pub const SYN: TcpFlags = TcpFlags(0x02);
    pub const RST: TcpFlags = TcpFlags(0x04);
    pub const PSH: TcpFlags = TcpFlags(0x08);
    pub const ACK: TcpFlags = TcpFlags(0x10);
    pub const URG: TcpFlags = TcpFlags(0x20);
    pub const ECE: TcpFlags = TcpFlags(0x40);
    pub const CWR: TcpFlags = TcpFlags(0x80);

    const NAMES: [(TcpFlags, &'static str); 8] = [
        (Self::FIN, "FIN"),
        (Self::SYN, "SYN"),
        (Self::RST, "RST"),
        (Self::PSH, "PSH"),
        (Self::ACK, "ACK"),
        (Self::URG, "URG"),
        (Self::ECE, "ECE"),
        (Self::CWR, "CWR"),
    ];

    /// The raw byte.
    #[inline]
    pub const fn bits(self) -> u8 {
        self.0
    }

    /// True when every bit of `other` is set in `self`.
    #[inline]
    pub const fn contains(self, other: TcpFlags) -> bool {
        self.0 & other.0 == other.0
    }

    /// True when any bit of `other` is set in `self`.
    #[inline]
    pub const fn intersects(self, other: TcpFlags) -> bool {
        self.0 & other.0 != 0
    }

    #[inline]
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    #[inline]
    pub const fn union(self, other: TcpFlags) -> TcpFlags {
        TcpFlags(self.0 | other.0)
    }

    /// `self` without the bits of `other`.
    #[inline]
    pub const fn difference(self, other: TcpFlags) -> TcpFlags {
        TcpFlags(self.0 & !other.0)
    }
}

impl BitOr for TcpFlags {
    type Output = TcpFlags;
    #[inline]
    fn bitor(self, rhs: TcpFlags) -> TcpFlags {
        self.union(rhs)
    }
}

impl BitOrAssign for TcpFlags {
    #[inline]
    fn bitor_assign(&mut self, rhs: TcpFlags) {
        self.0 |= rhs.0;
    }
}

impl BitAnd for TcpFlags {
    type Output = TcpFlags;
    #[inline]
    fn bitand(self, rhs: TcpFlags) -> TcpFlags {
        TcpFlags(self.0 & rhs.0)
    }
}

/// `SYN|ACK`, as tcpdump users read it; `-` for no flag.
impl fmt::Display for TcpFlags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return f.write_str("-");
        }
        let mut first = true;
        for (flag, name) in Self::NAMES {
            if self.contains(flag) {
                if !first {
                    f.write_str("|")?;
                }
                f.write_str(name)?;
                first = false;
            }
        }
        Ok(())
    }
}

impl fmt::Debug for TcpFlags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TcpFlags({self})")
    }
}

/// A read/write view of a TCP segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> TcpPacket<T> {
    /// Wraps a buffer without any check; accessors may panic on a short buffer.
    #[inline]
    pub const fn new_unchecked(buffer: T) -> TcpPacket<T> {
        TcpPacket { buffer }
    }

    /// Wraps a buffer and checks it with [`check_len`](Self::check_len).
    #[inline]
    pub fn new_checked(buffer: T) -> Result<TcpPacket<T>> {
        let packet = Self::new_unchecked(buffer);
        packet.check_len()?;
        Ok(packet)
    }

    /// Checks that the fixed header fits (`Truncated`), that the data offset is at least 5
    /// words (`Malformed`) and that the header it announces fits (`Truncated`).
    #[inline]
    pub fn check_len(&self) -> Result<()> {
        let len = self.buffer.as_ref().len();
        if len < HEADER_LEN {
            return Err(Error::Truncated);
        }
        let header_len = usize::from(self.header_len());
        if header_len < HEADER_LEN {
            Err(Error::Malformed)
        } else if header_len > len {
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

    #[inline]
    pub fn seq_number(&self) -> u32 {
        get_u32(self.buffer.as_ref(), field::SEQ_NUM)
    }

    #[inline]
    pub fn ack_number(&self) -> u32 {
        get_u32(self.buffer.as_ref(), field::ACK_NUM)
    }

    /// Header length in bytes (data offset times 4), options included.
    #[inline]
    pub fn header_len(&self) -> u8 {
        (self.buffer.as_ref()[field::DATA_OFFSET.start] >> 4) * 4
    }

    #[inline]
    pub fn flags(&self) -> TcpFlags {
        TcpFlags(self.buffer.as_ref()[field::FLAGS.start])
    }

    #[inline]
    pub fn window_len(&self) -> u16 {
        get_u16(self.buffer.as_ref(), field::WINDOW)
    }

    #[inline]
    pub fn checksum(&self) -> u16 {
        get_u16(self.buffer.as_ref(), field::CHECKSUM)
    }

    #[inline]
    pub fn urgent_at(&self) -> u16 {
        get_u16(self.buffer.as_ref(), field::URGENT)
    }

    /// The raw options area (between the fixed header and the payload), padding included.
    #[inline]
    pub fn options(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..usize::from(self.header_len())]
    }

    /// The segment data after the header.
    #[inline]
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[usize::from(self.header_len())..]
    }

    /// Length of the whole segment, header included (what the pseudo-header counts).
    #[inline]
    pub fn segment_len(&self) -> usize {
        self.buffer.as_ref().len()
    }

    fn sum_v4(&self, src: Ipv4Addr, dst: Ipv4Addr) -> u32 {
        let data = self.buffer.as_ref();
        let pseudo =
            checksum::pseudo_header_v4(src, dst, Protocol::Tcp.number(), len_u32(data.len()));
        checksum::sum(data, pseudo)
    }

    fn sum_v6(&self, src: Ipv6Addr, dst: Ipv6Addr) -> u32 {
        let data = self.buffer.as_ref();
        let pseudo =
            checksum::pseudo_header_v6(src, dst, Protocol::Tcp.number(), len_u32(data.len()));
        checksum::sum(data, pseudo)
    }

    /// True when the checksum verifies over the IPv4 pseudo-header and the whole segment.
    pub fn verify_checksum_v4(&self, src: Ipv4Addr, dst: Ipv4Addr) -> bool {
        checksum::finish(self.sum_v4(src, dst)) == 0
    }

    /// True when the checksum verifies over the IPv6 pseudo-header and the whole segment.
    pub fn verify_checksum_v6(&self, src: Ipv6Addr, dst: Ipv6Addr) -> bool {
        checksum::finish(self.sum_v6(src, dst)) == 0
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> TcpPacket<T> {
    #[inline]
    pub fn set_src_port(&mut self, port: u16) {
        set_u16(self.buffer.as_mut(), field::SRC_PORT, port);
    }

    #[inline]
    pub fn set_dst_port(&mut self, port: u16) {
        set_u16(self.buffer.as_mut(), field::DST_PORT, port);
    }

    #[inline]
    pub fn set_seq_number(&mut self, seq: u32) {
        set_u32(self.buffer.as_mut(), field::SEQ_NUM, seq);
    }

    #[inline]
    pub fn set_ack_number(&mut self, ack: u32) {
        set_u32(self.buffer.as_mut(), field::ACK_NUM, ack);
    }

    /// Sets the data offset from a header length in bytes (a multiple of 4 from 20 to 60; other
    /// values are rounded down to a word). The reserved low nibble is kept.
    #[inline]
    pub fn set_header_len(&mut self, len: u8) {
        let byte = &mut self.buffer.as_mut()[field::DATA_OFFSET.start];
        *byte = ((len / 4) << 4) | (*byte & 0x0f);
    }

    #[inline]
    pub fn set_flags(&mut self, flags: TcpFlags) {
        self.buffer.as_mut()[field::FLAGS.start] = flags.bits();
    }

    #[inline]
    pub fn set_window_len(&mut self, window: u16) {
        set_u16(self.buffer.as_mut(), field::WINDOW, window);
    }

    #[inline]
    pub fn set_checksum(&mut self, check: u16) {
        set_u16(self.buffer.as_mut(), field::CHECKSUM, check);
    }

    #[inline]
    pub fn set_urgent_at(&mut self, urgent: u16) {
        set_u16(self.buffer.as_mut(), field::URGENT, urgent);
    }

    /// The options area, writable.
    #[inline]
    pub fn options_mut(&mut self) -> &mut [u8] {
        let end = usize::from(self.header_len());
        &mut self.buffer.as_mut()[HEADER_LEN..end]
    }

    /// The segment data, writable.
    #[inline]
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let start = usize::from(self.header_len());
        &mut self.buffer.as_mut()[start..]
    }

    /// Computes and stores the checksum over the IPv4 pseudo-header and the whole segment.
    pub fn fill_checksum_v4(&mut self, src: Ipv4Addr, dst: Ipv4Addr) {
        self.set_checksum(0);
        let check = checksum::finish(self.sum_v4(src, dst));
        self.set_checksum(check);
    }

    /// Computes and stores the checksum over the IPv6 pseudo-header and the whole segment.
    pub fn fill_checksum_v6(&mut self, src: Ipv6Addr, dst: Ipv6Addr) {
        self.set_checksum(0);
        let check = checksum::finish(self.sum_v6(src, dst));
        self.set_checksum(check);
    }

    /// Patches the checksum after the IP header's source or destination address changed from
    /// `old` to `new` (the pseudo-header covers it). Call once per rewritten address.
    #[inline]
    pub fn update_checksum_for_addr_v4(&mut self, old: Ipv4Addr, new: Ipv4Addr) {
        let check = checksum::update32(self.checksum(), u32::from(old), u32::from(new));
        self.set_checksum(check);
    }

    /// IPv6 twin of [`update_checksum_for_addr_v4`](Self::update_checksum_for_addr_v4).
    #[inline]
    pub fn update_checksum_for_addr_v6(&mut self, old: Ipv6Addr, new: Ipv6Addr) {
        let check = checksum::update_bytes(self.checksum(), &old.octets(), &new.octets());
        self.set_checksum(check);
    }

    /// Rewrites the source port and patches the checksum incrementally.
    #[inline]
    pub fn set_src_port_incremental(&mut self, port: u16) {
        let old = self.src_port();
        self.set_src_port(port);
        self.set_checksum(checksum::update16(self.checksum(), old, port));
    }

    /// Rewrites the destination port and patches the checksum incrementally.
    #[inline]
    pub fn set_dst_port_incremental(&mut self, port: u16) {
        let old = self.dst_port();
        self.set_dst_port(port);
        self.set_checksum(checksum::update16(self.checksum(), old, port));
    }
}

/// The window scale option's shift count (RFC 7323, kind 3, length 3) in an options area, or
/// `None` when the area has none. Walks the options without copying; a malformed area (an
/// option running past the end, a length below 2) ends the walk as if nothing followed, since
/// this is only a hint for conntrack's window, never a reason to refuse the segment. A shift
/// above 14 is read as 14, as RFC 7323 section 2.3 says a receiver must.
pub fn window_scale(options: &[u8]) -> Option<u8> {
    const END: u8 = 0;
    const NOP: u8 = 1;
    const WINDOW_SCALE: u8 = 3;
    const MAX_SHIFT: u8 = 14;
    let mut rest = options;
    while let Some((&kind, tail)) = rest.split_first() {
        match kind {
            END => return None,
            NOP => rest = tail,
            _ => {
                let len = usize::from(*tail.first()?);
                if len < 2 || len > rest.len() {
                    return None;
                }
                if kind == WINDOW_SCALE && len == 3 {
                    return Some(rest[2].min(MAX_SHIFT));
                }
                rest = &rest[len..];
            }
        }
    }
    None
}

/// The options area of a header, kept inline (at most 40 bytes) so that [`Repr`] stays
/// `Copy` and allocation-free. Options are carried as raw bytes; nothing here interprets them.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TcpOptions {
    // Invariant: len <= MAX_OPTIONS_LEN, len % 4 == 0, bytes[len..] are zero.
    bytes: [u8; MAX_OPTIONS_LEN],
    len: u8,
}

impl TcpOptions {
    /// No options.
    pub const EMPTY: TcpOptions = TcpOptions {
        bytes: [0; MAX_OPTIONS_LEN],
        len: 0,
    };

    /// Copies an options area: its length must be a multiple of 4 and at most 40 bytes (the
    /// data offset counts words), else `Malformed`.
    pub fn new(options: &[u8]) -> Result<TcpOptions> {
        if options.len() > MAX_OPTIONS_LEN || options.len() % 4 != 0 {
            return Err(Error::Malformed);
        }
        let mut bytes = [0; MAX_OPTIONS_LEN];
        bytes[..options.len()].copy_from_slice(options);
        Ok(TcpOptions {
            bytes,
            len: options.len() as u8, // <= 40 checked above
        })
    }

    #[inline]
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }

    #[inline]
    pub fn len(&self) -> usize {
        usize::from(self.len)
    }

    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Default for TcpOptions {
    fn default() -> TcpOptions {
        TcpOptions::EMPTY
    }
}

impl fmt::Debug for TcpOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TcpOptions({:02x?})", self.as_bytes())
    }
}

/// A TCP header in plain fields. The payload is not part of it: the caller writes it into
/// [`TcpPacket::payload_mut`] and the `Repr` only knows its length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Repr {
    pub src_port: u16,
    pub dst_port: u16,
    pub seq: u32,
    /// The acknowledgment field as carried, meaningful when `flags` has ACK.
    pub ack: u32,
    pub flags: TcpFlags,
    pub window: u16,
    pub urgent: u16,
    pub options: TcpOptions,
    pub payload_len: usize,
}

impl Repr {
    /// Reads a segment's header. Structural only: the checksum is the caller's
    /// (`verify_checksum_v4`/`_v6`), and so is any judgement of the flag combination.
    pub fn parse<T: AsRef<[u8]>>(packet: &TcpPacket<T>) -> Result<Repr> {
        packet.check_len()?;
        Ok(Repr {
            src_port: packet.src_port(),
            dst_port: packet.dst_port(),
            seq: packet.seq_number(),
            ack: packet.ack_number(),
            flags: packet.flags(),
            window: packet.window_len(),
            urgent: packet.urgent_at(),
            options: TcpOptions::new(packet.options())?,
            payload_len: packet.payload().len(),
        })
    }

    /// Header length, options included.
    #[inline]
    pub fn header_len(&self) -> usize {
        HEADER_LEN + self.options.len()
    }

    /// Segment length: header and payload.
    #[inline]
    pub fn buffer_len(&self) -> usize {
        self.header_len() + self.payload_len
    }

    /// Writes the header with a zero checksum field (reserved bits zero). Use when the payload
    /// is written later, then call `fill_checksum_v4`/`_v6`.
    ///
    /// # Panics
    /// If the buffer is shorter than [`header_len`](Self::header_len) (a caller bug: size the
    /// buffer with [`buffer_len`](Self::buffer_len)).
    pub fn emit_header<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut TcpPacket<T>) {
        packet.set_src_port(self.src_port);
        packet.set_dst_port(self.dst_port);
        packet.set_seq_number(self.seq);
        packet.set_ack_number(self.ack);
        packet.buffer.as_mut()[field::DATA_OFFSET.start] = 0;
        packet.set_header_len(self.header_len() as u8); // <= 60 by TcpOptions' invariant
        packet.set_flags(self.flags);
        packet.set_window_len(self.window);
        packet.set_checksum(0);
        packet.set_urgent_at(self.urgent);
        packet
            .options_mut()
            .copy_from_slice(self.options.as_bytes());
    }

    /// Writes the header and the checksum over an IPv4 pseudo-header. The payload must already
    /// be in the buffer, and the buffer must be exactly [`buffer_len`](Self::buffer_len) long
    /// (TCP has no length field: the checksum covers the whole buffer).
    pub fn emit_v4<T: AsRef<[u8]> + AsMut<[u8]>>(
        &self,
        packet: &mut TcpPacket<T>,
        src: Ipv4Addr,
        dst: Ipv4Addr,
    ) {
        self.emit_header(packet);
        packet.fill_checksum_v4(src, dst);
    }

    /// IPv6 twin of [`emit_v4`](Self::emit_v4).
    pub fn emit_v6<T: AsRef<[u8]> + AsMut<[u8]>>(
        &self,
        packet: &mut TcpPacket<T>,
        src: Ipv6Addr,
        dst: Ipv6Addr,
    ) {
        self.emit_header(packet);
        packet.fill_checksum_v6(src, dst);
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn window_scale_is_found_among_options() {
        // MSS 1460, SACK permitted, timestamps, NOP, window scale 7: Linux's SYN.
        let syn = [
            2, 4, 5, 0xb4, 4, 2, 8, 10, 0, 0, 0, 1, 0, 0, 0, 0, 1, 3, 3, 7,
        ];
        assert_eq!(window_scale(&syn), Some(7));
        assert_eq!(window_scale(&[1, 1, 3, 3, 15, 0]), Some(14), "clamped");
        assert_eq!(window_scale(&[2, 4, 5, 0xb4]), None);
        assert_eq!(
            window_scale(&[0, 3, 3, 7]),
            None,
            "after the end of the list"
        );
        assert_eq!(window_scale(&[]), None);
        // Malformed lengths end the walk without panicking.
        assert_eq!(window_scale(&[2, 0, 3, 3, 7]), None);
        assert_eq!(window_scale(&[2, 40, 3, 3, 7]), None);
        assert_eq!(window_scale(&[3]), None);
        assert_eq!(window_scale(&[3, 3]), None);
    }
    use super::*;
    use proptest::prelude::*;

    const SRC4: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
    const DST4: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
    const SRC6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1);
    const DST6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 2);

    // A SYN 10.0.0.1:40000 -> 10.0.0.2:80, seq 0x12345678, window 64240, options MSS 1460,
    // SACK permitted, timestamps (0x1a2b3c, 0), NOP, window scale 7. Checksum 0x087a computed
    // over the IPv4 pseudo-header by an independent script (Python, RFC 1071 sum).
    const TCP_SYN_V4: [u8; 40] = [
        0x9c, 0x40, 0x00, 0x50, 0x12, 0x34, 0x56, 0x78, 0x00, 0x00, 0x00, 0x00, 0xa0, 0x02, 0xfa,
        0xf0, 0x08, 0x7a, 0x00, 0x00, 0x02, 0x04, 0x05, 0xb4, 0x04, 0x02, 0x08, 0x0a, 0x00, 0x1a,
        0x2b, 0x3c, 0x00, 0x00, 0x00, 0x00, 0x01, 0x03, 0x03, 0x07,
    ];
    // The same segment fd00::1 -> fd00::2: checksum 0x2278 over the IPv6 pseudo-header.
    const TCP_SYN_V6: [u8; 40] = [
        0x9c, 0x40, 0x00, 0x50, 0x12, 0x34, 0x56, 0x78, 0x00, 0x00, 0x00, 0x00, 0xa0, 0x02, 0xfa,
        0xf0, 0x22, 0x78, 0x00, 0x00, 0x02, 0x04, 0x05, 0xb4, 0x04, 0x02, 0x08, 0x0a, 0x00, 0x1a,
        0x2b, 0x3c, 0x00, 0x00, 0x00, 0x00, 0x01, 0x03, 0x03, 0x07,
    ];

    #[test]
    fn syn_fields() {
        let p = TcpPacket::new_checked(&TCP_SYN_V4[..]).unwrap();
        assert_eq!(p.src_port(), 40000);
        assert_eq!(p.dst_port(), 80);
        assert_eq!(p.seq_number(), 0x1234_5678);
        assert_eq!(p.ack_number(), 0);
        assert_eq!(p.header_len(), 40);
        assert_eq!(p.flags(), TcpFlags::SYN);
        assert!(!p.flags().contains(TcpFlags::ACK));
        assert_eq!(p.window_len(), 64240);
        assert_eq!(p.checksum(), 0x087a);
        assert_eq!(p.urgent_at(), 0);
        assert_eq!(&p.options()[..4], &[0x02, 0x04, 0x05, 0xb4]);
        assert_eq!(p.options().len(), 20);
        assert!(p.payload().is_empty());
        assert!(p.verify_checksum_v4(SRC4, DST4));
        assert!(!p.verify_checksum_v4(SRC4, Ipv4Addr::new(10, 0, 0, 3)));
    }

    #[test]
    fn syn_v6_checksum() {
        let p = TcpPacket::new_checked(&TCP_SYN_V6[..]).unwrap();
        assert!(p.verify_checksum_v6(SRC6, DST6));
        assert!(!p.verify_checksum_v6(SRC6, SRC6));
        let mut bytes = TCP_SYN_V6;
        let mut p = TcpPacket::new_unchecked(&mut bytes[..]);
        p.set_checksum(0xdead);
        p.fill_checksum_v6(SRC6, DST6);
        assert_eq!(bytes, TCP_SYN_V6);
    }

    #[test]
    fn fill_checksum_v4_matches_golden() {
        let mut bytes = TCP_SYN_V4;
        bytes[16] = 0;
        bytes[17] = 0;
        TcpPacket::new_unchecked(&mut bytes[..]).fill_checksum_v4(SRC4, DST4);
        assert_eq!(bytes, TCP_SYN_V4);
    }

    #[test]
    fn parse_emit_round_trip_is_byte_exact() {
        for (golden, v6) in [(TCP_SYN_V4, false), (TCP_SYN_V6, true)] {
            let repr = Repr::parse(&TcpPacket::new_checked(&golden[..]).unwrap()).unwrap();
            assert_eq!(repr.flags, TcpFlags::SYN);
            assert_eq!(repr.buffer_len(), golden.len());
            let mut out = [0xa5u8; 40];
            let mut p = TcpPacket::new_unchecked(&mut out[..]);
            if v6 {
                repr.emit_v6(&mut p, SRC6, DST6);
            } else {
                repr.emit_v4(&mut p, SRC4, DST4);
            }
            assert_eq!(out, golden);
        }
    }

    #[test]
    fn every_truncation_is_an_error() {
        for n in 0..TCP_SYN_V4.len() {
            let bytes = &TCP_SYN_V4[..n];
            assert_eq!(
                TcpPacket::new_checked(bytes).err(),
                Some(Error::Truncated),
                "{n}"
            );
            assert!(Repr::parse(&TcpPacket::new_unchecked(bytes)).is_err());
        }
    }

    #[test]
    fn data_offset_below_five_is_malformed() {
        for offset in 0..5u8 {
            let mut bytes = TCP_SYN_V4;
            bytes[12] = offset << 4;
            assert_eq!(
                TcpPacket::new_checked(&bytes[..]).err(),
                Some(Error::Malformed)
            );
        }
        let mut bytes = TCP_SYN_V4;
        bytes[12] = 11 << 4; // 44 bytes > 40
        assert_eq!(
            TcpPacket::new_checked(&bytes[..]).err(),
            Some(Error::Truncated)
        );
    }

    #[test]
    fn reserved_bits_survive_set_header_len() {
        let mut bytes = TCP_SYN_V4;
        bytes[12] |= 0x01;
        let mut p = TcpPacket::new_unchecked(&mut bytes[..]);
        p.set_header_len(20);
        assert_eq!(p.header_len(), 20);
        assert_eq!(bytes[12], 0x51);
    }

    #[test]
    fn flags_display() {
        assert_eq!((TcpFlags::SYN | TcpFlags::ACK).to_string(), "SYN|ACK");
        assert_eq!(TcpFlags::NONE.to_string(), "-");
        assert_eq!(format!("{:?}", TcpFlags::FIN), "TcpFlags(FIN)");
        let all = TcpFlags(0xff);
        assert_eq!(all.to_string(), "FIN|SYN|RST|PSH|ACK|URG|ECE|CWR");
        assert!(all.contains(TcpFlags::RST | TcpFlags::URG));
        assert!(!TcpFlags::SYN.intersects(TcpFlags::ACK));
        assert_eq!(all.difference(TcpFlags::SYN).bits(), 0xfd);
        assert_eq!((all & TcpFlags::ECE), TcpFlags::ECE);
    }

    #[test]
    fn options_must_be_words() {
        assert_eq!(TcpOptions::new(&[1, 1, 1]).err(), Some(Error::Malformed));
        assert_eq!(TcpOptions::new(&[1; 44]).err(), Some(Error::Malformed));
        assert_eq!(TcpOptions::new(&[1; 40]).unwrap().len(), 40);
        assert!(TcpOptions::default().is_empty());
    }

    #[test]
    fn nat_on_golden_syn() {
        // DNAT 10.0.0.2:80 -> 10.1.2.3:8080, done incrementally, equals a full recompute.
        let new_dst = Ipv4Addr::new(10, 1, 2, 3);
        let mut bytes = TCP_SYN_V4;
        let mut p = TcpPacket::new_unchecked(&mut bytes[..]);
        p.update_checksum_for_addr_v4(DST4, new_dst);
        p.set_dst_port_incremental(8080);
        assert!(p.verify_checksum_v4(SRC4, new_dst));
        assert!(!p.verify_checksum_v4(SRC4, DST4));
    }

    fn arb_flags() -> impl Strategy<Value = TcpFlags> {
        any::<u8>().prop_map(TcpFlags)
    }

    fn arb_repr() -> impl Strategy<Value = Repr> {
        (
            (any::<u16>(), any::<u16>(), any::<u32>(), any::<u32>()),
            (arb_flags(), any::<u16>(), any::<u16>()),
            (0usize..=10).prop_flat_map(|words| proptest::collection::vec(any::<u8>(), words * 4)),
            0usize..64,
        )
            .prop_map(
                |((src_port, dst_port, seq, ack), (flags, window, urgent), opts, payload_len)| {
                    Repr {
                        src_port,
                        dst_port,
                        seq,
                        ack,
                        flags,
                        window,
                        urgent,
                        options: TcpOptions::new(&opts).unwrap(),
                        payload_len,
                    }
                },
            )
    }

    proptest! {
        #[test]
        fn repr_round_trip(repr in arb_repr(), fill in any::<u8>(),
                           src in any::<[u8; 4]>(), dst in any::<[u8; 4]>()) {
            let (src, dst) = (Ipv4Addr::from(src), Ipv4Addr::from(dst));
            let mut buf = vec![fill; repr.buffer_len()];
            let mut p = TcpPacket::new_unchecked(&mut buf[..]);
            repr.emit_v4(&mut p, src, dst);
            let p = TcpPacket::new_checked(&buf[..]).unwrap();
            prop_assert!(p.verify_checksum_v4(src, dst));
            prop_assert_eq!(Repr::parse(&p).unwrap(), repr);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..80)) {
            if let Ok(p) = TcpPacket::new_checked(&bytes[..]) {
                let _ = (p.src_port(), p.dst_port(), p.seq_number(), p.ack_number(), p.flags());
                let _ = (p.window_len(), p.checksum(), p.urgent_at(), p.options(), p.payload());
                let _ = p.verify_checksum_v4(SRC4, DST4);
                prop_assert!(Repr::parse(&p).is_ok());
            } else {
                prop_assert!(Repr::parse(&TcpPacket::new_unchecked(&bytes[..])).is_err());
            }
        }

        #[test]
        fn incremental_nat_v4_equals_recompute(
            payload in proptest::collection::vec(any::<u8>(), 0..64),
            src in any::<[u8; 4]>(), dst in any::<[u8; 4]>(),
            new_src in any::<[u8; 4]>(), new_dst in any::<[u8; 4]>(),
            new_sport in any::<u16>(), new_dport in any::<u16>(),
            repr in arb_repr(),
        ) {
            let repr = Repr { payload_len: payload.len(), ..repr };
            let (src, dst) = (Ipv4Addr::from(src), Ipv4Addr::from(dst));
            let (new_src, new_dst) = (Ipv4Addr::from(new_src), Ipv4Addr::from(new_dst));
            let mut buf = vec![0; repr.buffer_len()];
            let mut p = TcpPacket::new_unchecked(&mut buf[..]);
            repr.emit_header(&mut p);
            p.payload_mut().copy_from_slice(&payload);
            p.fill_checksum_v4(src, dst);

            p.update_checksum_for_addr_v4(src, new_src);
            p.update_checksum_for_addr_v4(dst, new_dst);
            p.set_src_port_incremental(new_sport);
            p.set_dst_port_incremental(new_dport);
            let incremental = p.checksum();
            p.fill_checksum_v4(new_src, new_dst);
            prop_assert_eq!(incremental, p.checksum());
        }

        #[test]
        fn incremental_nat_v6_equals_recompute(
            payload in proptest::collection::vec(any::<u8>(), 0..64),
            src in any::<[u8; 16]>(), dst in any::<[u8; 16]>(),
            new_src in any::<[u8; 16]>(), new_dst in any::<[u8; 16]>(),
            new_sport in any::<u16>(), new_dport in any::<u16>(),
            repr in arb_repr(),
        ) {
            let repr = Repr { payload_len: payload.len(), ..repr };
            let (src, dst) = (Ipv6Addr::from(src), Ipv6Addr::from(dst));
            let (new_src, new_dst) = (Ipv6Addr::from(new_src), Ipv6Addr::from(new_dst));
            let mut buf = vec![0; repr.buffer_len()];
            let mut p = TcpPacket::new_unchecked(&mut buf[..]);
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
    }
}
