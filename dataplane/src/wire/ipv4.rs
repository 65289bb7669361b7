//! IPv4 headers (RFC 791), their options, and the DSR option that carries a service frontend.
//!
//! Contract:
//! - [`Ipv4Packet::check_len`] guarantees `20 <= header_len <= total_len <= buffer length`
//!   (a buffer longer than `total_len` is Ethernet padding and is fine);
//!   [`Ipv4Packet::new_checked`] also requires version 4. After either succeeds no getter can
//!   panic. [`Ipv4Packet::payload`] is bounded by `total_len`, never by the buffer.
//! - Setters do not re-validate. Getters that slice by the length fields (`options`,
//!   `payload`) use checked slicing, so a view whose lengths were edited to lie returns empty
//!   slices instead of panicking; re-run `check_len` after editing lengths.
//! - The header checksum is kept right by [`Ipv4Packet::fill_checksum`] or, on the fast path,
//!   incrementally (RFC 1624) by the `*_incremental` setters. Those fix only the IP header
//!   checksum: a TCP/UDP checksum covering the pseudo-header must be updated by the caller.
//! - Options: [`Ipv4Options`] walks them (End of List, No Operation, type-length-value); a TLV
//!   whose length is below 2 or runs past the header is [`Error::Malformed`]. The DSR option
//!   (type 0x9a, length 8, port then address, like Cilium's) carries the service frontend, a
//!   [`DsrOption`] (defined once in [`crate::wire::dsr`]; its IPv4 encoding is here), to the
//!   backend's node in native-routing DSR.
//! - [`Protocol`] is [`crate::wire::ip::Protocol`], re-exported here and by
//!   [`crate::wire::ipv6`] for the header's protocol field (as smoltcp does).

use std::fmt;
use std::iter::FusedIterator;
use std::net::Ipv4Addr;

use crate::wire::bytes::{get_ipv4, get_u16, set_u16};
use crate::wire::checksum;
pub use crate::wire::dsr::DsrOption;
pub use crate::wire::ip::Protocol;
use crate::wire::{Error, Result};

mod field {
    use crate::wire::Field;

    pub const VER_IHL: usize = 0;
    pub const DSCP_ECN: usize = 1;
    pub const LENGTH: Field = 2..4;
    pub const IDENT: Field = 4..6;
    pub const FLG_OFF: Field = 6..8;
    pub const TTL: usize = 8;
    pub const PROTOCOL: usize = 9;
    pub const CHECKSUM: Field = 10..12;
    pub const SRC_ADDR: Field = 12..16;
    pub const DST_ADDR: Field = 16..20;
}

/// Length of an IPv4 header without options.
pub const HEADER_LEN: usize = field::DST_ADDR.end;
/// Largest header IHL can describe (15 words).
pub const MAX_HEADER_LEN: usize = 60;
/// Largest options area.
pub const MAX_OPTIONS_LEN: usize = MAX_HEADER_LEN - HEADER_LEN;
/// TTL used by [`Repr::new`], as Linux does by default.
pub const DEFAULT_TTL: u8 = 64;

/// Option type: End of Option List (one byte; the rest of the header is padding).
pub const OPTION_END_OF_LIST: u8 = 0;
/// Option type: No Operation (one byte, used to align the next option).
pub const OPTION_NOP: u8 = 1;

const FLAG_DONT_FRAG: u16 = 0x4000;
const FLAG_MORE_FRAGS: u16 = 0x2000;
const FRAG_OFFSET_MASK: u16 = 0x1fff;

/// A zero-copy view of an IPv4 packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ipv4Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Ipv4Packet<T> {
    /// Wraps a buffer without checking it; getters may panic on a short buffer.
    #[inline]
    pub fn new_unchecked(buffer: T) -> Ipv4Packet<T> {
        Ipv4Packet { buffer }
    }

    /// Wraps a buffer after [`check_len`](Self::check_len) and a version check (`Malformed`
    /// unless 4), so a checked view really is an IPv4 header.
    #[inline]
    pub fn new_checked(buffer: T) -> Result<Ipv4Packet<T>> {
        let packet = Self::new_unchecked(buffer);
        packet.check_len()?;
        if packet.version() != 4 {
            return Err(Error::Malformed);
        }
        Ok(packet)
    }

    /// Validates the length fields against the buffer, in this order: buffer shorter than 20
    /// bytes (`Truncated`), IHL below 5 (`Malformed`), header longer than the buffer
    /// (`Truncated`), total length below the header length (`Malformed`), total length past
    /// the buffer (`Truncated`).
    #[inline]
    pub fn check_len(&self) -> Result<()> {
        let len = self.buffer.as_ref().len();
        if len < HEADER_LEN {
            return Err(Error::Truncated);
        }
        let header_len = self.header_len();
        if header_len < HEADER_LEN {
            return Err(Error::Malformed);
        }
        if header_len > len {
            return Err(Error::Truncated);
        }
        let total_len = usize::from(self.total_len());
        if total_len < header_len {
            return Err(Error::Malformed);
        }
        if total_len > len {
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
        self.buffer.as_ref()[field::VER_IHL] >> 4
    }

    /// The header length in 32-bit words.
    #[inline]
    pub fn ihl(&self) -> u8 {
        self.buffer.as_ref()[field::VER_IHL] & 0x0f
    }

    /// The header length in bytes, options included.
    #[inline]
    pub fn header_len(&self) -> usize {
        usize::from(self.ihl()) * 4
    }

    /// Differentiated services code point (6 bits).
    #[inline]
    pub fn dscp(&self) -> u8 {
        self.buffer.as_ref()[field::DSCP_ECN] >> 2
    }

    /// Explicit congestion notification (2 bits).
    #[inline]
    pub fn ecn(&self) -> u8 {
        self.buffer.as_ref()[field::DSCP_ECN] & 0x03
    }

    /// Header plus payload, in bytes.
    #[inline]
    pub fn total_len(&self) -> u16 {
        get_u16(self.buffer.as_ref(), field::LENGTH)
    }

    #[inline]
    pub fn ident(&self) -> u16 {
        get_u16(self.buffer.as_ref(), field::IDENT)
    }

    #[inline]
    pub fn dont_frag(&self) -> bool {
        get_u16(self.buffer.as_ref(), field::FLG_OFF) & FLAG_DONT_FRAG != 0
    }

    #[inline]
    pub fn more_frags(&self) -> bool {
        get_u16(self.buffer.as_ref(), field::FLG_OFF) & FLAG_MORE_FRAGS != 0
    }

    /// The fragment offset in bytes (the field counts 8-byte units).
    #[inline]
    pub fn frag_offset(&self) -> u16 {
        (get_u16(self.buffer.as_ref(), field::FLG_OFF) & FRAG_OFFSET_MASK) << 3
    }

    /// True for any fragment: More Fragments set or a non-zero offset.
    #[inline]
    pub fn is_fragment(&self) -> bool {
        get_u16(self.buffer.as_ref(), field::FLG_OFF) & (FLAG_MORE_FRAGS | FRAG_OFFSET_MASK) != 0
    }

    /// True for the first fragment of a fragmented datagram (More Fragments set, offset 0).
    /// Only a packet with offset 0 carries the transport header; non-fragments do too.
    #[inline]
    pub fn is_first_fragment(&self) -> bool {
        self.more_frags() && self.frag_offset() == 0
    }

    #[inline]
    pub fn ttl(&self) -> u8 {
        self.buffer.as_ref()[field::TTL]
    }

    #[inline]
    pub fn protocol(&self) -> Protocol {
        Protocol::from(self.buffer.as_ref()[field::PROTOCOL])
    }

    /// The header checksum field.
    #[inline]
    pub fn checksum(&self) -> u16 {
        get_u16(self.buffer.as_ref(), field::CHECKSUM)
    }

    #[inline]
    pub fn src_addr(&self) -> Ipv4Addr {
        get_ipv4(self.buffer.as_ref(), field::SRC_ADDR)
    }

    #[inline]
    pub fn dst_addr(&self) -> Ipv4Addr {
        get_ipv4(self.buffer.as_ref(), field::DST_ADDR)
    }

    /// True when the header (options included) sums to 0xffff.
    #[inline]
    pub fn verify_checksum(&self) -> bool {
        match self.buffer.as_ref().get(..self.header_len()) {
            Some(header) => checksum::verify(header),
            None => false,
        }
    }

    /// The raw options area (bytes 20..header_len).
    #[inline]
    pub fn options(&self) -> &[u8] {
        let data = self.buffer.as_ref();
        data.get(HEADER_LEN..self.header_len()).unwrap_or(&[])
    }

    /// Iterates over the options.
    #[inline]
    pub fn iter_options(&self) -> Ipv4Options<'_> {
        Ipv4Options::new(self.options())
    }

    /// The payload: bytes header_len..total_len (Ethernet padding excluded).
    #[inline]
    pub fn payload(&self) -> &[u8] {
        let data = self.buffer.as_ref();
        data.get(self.header_len()..usize::from(self.total_len()))
            .unwrap_or(&[])
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Ipv4Packet<T> {
    #[inline]
    pub fn set_version(&mut self, version: u8) {
        let b = &mut self.buffer.as_mut()[field::VER_IHL];
        *b = (*b & 0x0f) | (version << 4);
    }

    /// Sets IHL from a length in bytes (a multiple of 4, at most 60; extra bits are dropped).
    #[inline]
    pub fn set_header_len(&mut self, len: usize) {
        let b = &mut self.buffer.as_mut()[field::VER_IHL];
        *b = (*b & 0xf0) | ((len / 4) as u8 & 0x0f);
    }

    #[inline]
    pub fn set_dscp(&mut self, dscp: u8) {
        let b = &mut self.buffer.as_mut()[field::DSCP_ECN];
        *b = (*b & 0x03) | (dscp << 2);
    }

    #[inline]
    pub fn set_ecn(&mut self, ecn: u8) {
        let b = &mut self.buffer.as_mut()[field::DSCP_ECN];
        *b = (*b & 0xfc) | (ecn & 0x03);
    }

    #[inline]
    pub fn set_total_len(&mut self, len: u16) {
        set_u16(self.buffer.as_mut(), field::LENGTH, len);
    }

    #[inline]
    pub fn set_ident(&mut self, ident: u16) {
        set_u16(self.buffer.as_mut(), field::IDENT, ident);
    }

    /// Clears the flags and the fragment offset.
    #[inline]
    pub fn clear_flags(&mut self) {
        set_u16(self.buffer.as_mut(), field::FLG_OFF, 0);
    }

    #[inline]
    pub fn set_dont_frag(&mut self, value: bool) {
        self.set_flag(FLAG_DONT_FRAG, value);
    }

    #[inline]
    pub fn set_more_frags(&mut self, value: bool) {
        self.set_flag(FLAG_MORE_FRAGS, value);
    }

    /// Sets the fragment offset from a byte count (a multiple of 8; the low 3 bits are
    /// dropped).
    #[inline]
    pub fn set_frag_offset(&mut self, offset: u16) {
        let raw = get_u16(self.buffer.as_ref(), field::FLG_OFF);
        set_u16(
            self.buffer.as_mut(),
            field::FLG_OFF,
            (raw & !FRAG_OFFSET_MASK) | (offset >> 3),
        );
    }

    #[inline]
    pub fn set_ttl(&mut self, ttl: u8) {
        self.buffer.as_mut()[field::TTL] = ttl;
    }

    #[inline]
    pub fn set_protocol(&mut self, protocol: Protocol) {
        self.buffer.as_mut()[field::PROTOCOL] = u8::from(protocol);
    }

    #[inline]
    pub fn set_checksum(&mut self, value: u16) {
        set_u16(self.buffer.as_mut(), field::CHECKSUM, value);
    }

    /// Writes the source address; the checksum is left stale (see
    /// [`set_src_addr_incremental`](Self::set_src_addr_incremental)).
    #[inline]
    pub fn set_src_addr(&mut self, addr: Ipv4Addr) {
        self.buffer.as_mut()[field::SRC_ADDR].copy_from_slice(&addr.octets());
    }

    /// Writes the destination address; the checksum is left stale.
    #[inline]
    pub fn set_dst_addr(&mut self, addr: Ipv4Addr) {
        self.buffer.as_mut()[field::DST_ADDR].copy_from_slice(&addr.octets());
    }

    /// Recomputes the header checksum over the whole header (options included).
    #[inline]
    pub fn fill_checksum(&mut self) {
        self.set_checksum(0);
        let header_len = self.header_len();
        let data = self.buffer.as_ref();
        let header = data.get(..header_len).unwrap_or(data);
        let value = checksum::checksum(header);
        self.set_checksum(value);
    }

    /// Rewrites the source address and patches the header checksum (RFC 1624). The caller
    /// still owns the transport checksum, whose pseudo-header covers this address.
    #[inline]
    pub fn set_src_addr_incremental(&mut self, addr: Ipv4Addr) {
        let old = u32::from(self.src_addr());
        let check = checksum::update32(self.checksum(), old, u32::from(addr));
        self.set_src_addr(addr);
        self.set_checksum(check);
    }

    /// Rewrites the destination address and patches the header checksum (RFC 1624). The
    /// caller still owns the transport checksum.
    #[inline]
    pub fn set_dst_addr_incremental(&mut self, addr: Ipv4Addr) {
        let old = u32::from(self.dst_addr());
        let check = checksum::update32(self.checksum(), old, u32::from(addr));
        self.set_dst_addr(addr);
        self.set_checksum(check);
    }

    /// Decrements the TTL and patches the checksum (RFC 1624), returning the new TTL.
    ///
    /// Returns `None` and leaves the packet untouched when the TTL is 0 or 1: such a packet
    /// must not be forwarded (RFC 1812 section 5.3.1; Cilium drops it as TTL exceeded).
    #[inline]
    pub fn decrement_ttl_incremental(&mut self) -> Option<u8> {
        let ttl = self.ttl();
        if ttl <= 1 {
            return None;
        }
        // TTL shares a 16-bit checksum word with the protocol.
        let protocol = self.buffer.as_ref()[field::PROTOCOL];
        let old = u16::from_be_bytes([ttl, protocol]);
        let new = u16::from_be_bytes([ttl - 1, protocol]);
        let check = checksum::update16(self.checksum(), old, new);
        self.set_ttl(ttl - 1);
        self.set_checksum(check);
        Some(ttl - 1)
    }

    /// The options area, writable.
    #[inline]
    pub fn options_mut(&mut self) -> &mut [u8] {
        let header_len = self.header_len();
        let data = self.buffer.as_mut();
        data.get_mut(HEADER_LEN..header_len).unwrap_or(&mut [])
    }

    /// The payload (header_len..total_len), writable.
    #[inline]
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let range = self.header_len()..usize::from(self.total_len());
        self.buffer.as_mut().get_mut(range).unwrap_or(&mut [])
    }

    #[inline]
    fn set_flag(&mut self, flag: u16, value: bool) {
        let raw = get_u16(self.buffer.as_ref(), field::FLG_OFF);
        let raw = if value { raw | flag } else { raw & !flag };
        set_u16(self.buffer.as_mut(), field::FLG_OFF, raw);
    }
}

/// One option inside an IPv4 header, as found by [`Ipv4Options`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Option<'a> {
    kind: u8,
    offset: usize,
    bytes: &'a [u8],
}

impl<'a> Ipv4Option<'a> {
    /// The option type byte (copied flag, class and number).
    #[inline]
    pub fn kind(&self) -> u8 {
        self.kind
    }

    /// Offset of the option's type byte from the start of the IPv4 header.
    #[inline]
    pub fn offset(&self) -> usize {
        self.offset
    }

    /// The whole option: type byte, and for TLV options the length byte and data.
    #[inline]
    pub fn as_bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// The option data after type and length (empty for End of List and No Operation).
    #[inline]
    pub fn data(&self) -> &'a [u8] {
        self.bytes.get(2..).unwrap_or(&[])
    }

    /// The "copied" flag: the option is repeated in every fragment.
    #[inline]
    pub fn is_copied(&self) -> bool {
        self.kind & 0x80 != 0
    }
}

/// Iterator over the options of an IPv4 header.
///
/// Yields End of List (then stops: the rest is padding), No Operation, and TLV options. A TLV
/// whose length byte is missing, below 2, or runs past the options area yields one
/// `Err(Error::Malformed)` and ends the iteration.
#[derive(Debug, Clone)]
pub struct Ipv4Options<'a> {
    area: &'a [u8],
    pos: usize,
    done: bool,
}

impl<'a> Ipv4Options<'a> {
    /// Walks `area`, the options that follow a 20-byte header; offsets are reported from the
    /// start of that header.
    #[inline]
    pub fn new(area: &'a [u8]) -> Ipv4Options<'a> {
        Ipv4Options {
            area,
            pos: 0,
            done: false,
        }
    }

    #[inline]
    fn fail(&mut self) -> Option<Result<Ipv4Option<'a>>> {
        self.done = true;
        Some(Err(Error::Malformed))
    }
}

impl<'a> Iterator for Ipv4Options<'a> {
    type Item = Result<Ipv4Option<'a>>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let start = self.pos;
        let kind = *self.area.get(start)?;
        let len = match kind {
            OPTION_END_OF_LIST => {
                self.done = true;
                1
            }
            OPTION_NOP => 1,
            _ => match self.area.get(start + 1) {
                Some(&len) if len >= 2 => usize::from(len),
                _ => return self.fail(),
            },
        };
        let Some(bytes) = self.area.get(start..start + len) else {
            return self.fail();
        };
        self.pos = start + len;
        Some(Ok(Ipv4Option {
            kind,
            offset: HEADER_LEN + start,
            bytes,
        }))
    }
}

impl FusedIterator for Ipv4Options<'_> {}

/// Option type of the DSR option (copied, class 0, number 26; Cilium's native-routing DSR).
pub const DSR_OPTION_KIND: u8 = 0x9a;
/// Length of the DSR option, type and length bytes included.
pub const DSR_OPTION_LEN: usize = 8;

/// The IPv4 encoding of the DSR frontend (8 bytes, as in Cilium's native-routing DSR): type
/// 0x9a, length 8, port (2 bytes, big-endian), IPv4 address (4 bytes).
impl DsrOption {
    /// Parses the option from its bytes (type byte first). `Truncated` when shorter than
    /// [`DSR_OPTION_LEN`], `Malformed` when the type or the length byte is not the DSR one.
    /// Bytes after the first eight are ignored.
    pub fn parse_ipv4(option: &[u8]) -> Result<DsrOption> {
        let Some(&[kind, len, p0, p1, a, b, c, d]) = option.first_chunk::<DSR_OPTION_LEN>() else {
            return Err(Error::Truncated);
        };
        if kind != DSR_OPTION_KIND || usize::from(len) != DSR_OPTION_LEN {
            return Err(Error::Malformed);
        }
        Ok(DsrOption {
            addr: Ipv4Addr::new(a, b, c, d),
            port: u16::from_be_bytes([p0, p1]),
        })
    }

    /// The option's eight bytes.
    #[inline]
    pub fn to_ipv4_bytes(&self) -> [u8; DSR_OPTION_LEN] {
        let [p0, p1] = self.port.to_be_bytes();
        let [a, b, c, d] = self.addr.octets();
        [DSR_OPTION_KIND, DSR_OPTION_LEN as u8, p0, p1, a, b, c, d]
    }

    /// Writes the option at the start of `buf`.
    ///
    /// # Panics
    /// When `buf` is shorter than [`DSR_OPTION_LEN`].
    #[inline]
    pub fn emit_ipv4(&self, buf: &mut [u8]) {
        buf[..DSR_OPTION_LEN].copy_from_slice(&self.to_ipv4_bytes());
    }
}

/// Finds the first DSR option of a packet, with its offset from the start of the IPv4 header.
///
/// `Ok(None)` when there is none (the common case costs one comparison: no options at all);
/// `Err(Malformed)` when the options before it are malformed or the DSR option itself has
/// the wrong length.
pub fn find_dsr_option<T: AsRef<[u8]>>(
    packet: &Ipv4Packet<T>,
) -> Result<Option<(DsrOption, usize)>> {
    if packet.header_len() <= HEADER_LEN {
        return Ok(None);
    }
    for option in packet.iter_options() {
        let option = option?;
        if option.kind() == DSR_OPTION_KIND {
            // The iterator bounded the option by its own length byte: a short one is
            // malformed, not truncated.
            return match DsrOption::parse_ipv4(option.as_bytes()) {
                Ok(dsr) => Ok(Some((dsr, option.offset()))),
                Err(_) => Err(Error::Malformed),
            };
        }
    }
    Ok(None)
}

/// Options carried by a [`Repr`]: up to 40 bytes held inline, so a `Repr` stays `Copy` and
/// emitting allocates nothing.
///
/// Invariant: the bytes are a well-formed option list whose length is a multiple of 4, and
/// the unused tail of the array is zero (so the derived equality compares only the options).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct OptionBytes {
    len: u8,
    bytes: [u8; MAX_OPTIONS_LEN],
}

impl OptionBytes {
    /// No options.
    pub const EMPTY: OptionBytes = OptionBytes {
        len: 0,
        bytes: [0; MAX_OPTIONS_LEN],
    };

    /// Copies an option list, padding it with End of List (zero) bytes to a multiple of 4.
    /// `Malformed` when it is longer than 40 bytes or an option is malformed.
    pub fn new(options: &[u8]) -> Result<OptionBytes> {
        if options.len() > MAX_OPTIONS_LEN {
            return Err(Error::Malformed);
        }
        for option in Ipv4Options::new(options) {
            option?;
        }
        let mut out = OptionBytes::EMPTY;
        out.bytes[..options.len()].copy_from_slice(options);
        out.len = options.len().next_multiple_of(4) as u8;
        Ok(out)
    }

    /// A list holding only the DSR option (8 bytes, already aligned).
    pub fn with_dsr(dsr: DsrOption) -> OptionBytes {
        let mut out = OptionBytes::EMPTY;
        dsr.emit_ipv4(&mut out.bytes);
        out.len = DSR_OPTION_LEN as u8;
        out
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

impl Default for OptionBytes {
    fn default() -> Self {
        OptionBytes::EMPTY
    }
}

impl fmt::Debug for OptionBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "OptionBytes({:02x?})", self.as_bytes())
    }
}

/// A parsed IPv4 header: everything but the lengths and the checksum, which [`Repr::emit`]
/// derives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Repr {
    pub src_addr: Ipv4Addr,
    pub dst_addr: Ipv4Addr,
    pub protocol: Protocol,
    /// Bytes after the header (total length minus header length).
    pub payload_len: usize,
    pub ttl: u8,
    /// 6 bits.
    pub dscp: u8,
    /// 2 bits.
    pub ecn: u8,
    pub ident: u16,
    pub dont_frag: bool,
    pub more_frags: bool,
    /// In bytes; a multiple of 8.
    pub frag_offset: u16,
    pub options: OptionBytes,
}

impl Repr {
    /// An unfragmented header with no options: TTL 64, Don't Fragment set (path MTU
    /// discovery, as Linux sends), identification 0, DSCP and ECN 0.
    pub fn new(
        src_addr: Ipv4Addr,
        dst_addr: Ipv4Addr,
        protocol: Protocol,
        payload_len: usize,
    ) -> Repr {
        Repr {
            src_addr,
            dst_addr,
            protocol,
            payload_len,
            ttl: DEFAULT_TTL,
            dscp: 0,
            ecn: 0,
            ident: 0,
            dont_frag: true,
            more_frags: false,
            frag_offset: 0,
            options: OptionBytes::EMPTY,
        }
    }

    /// Parses a header: the length rules of [`Ipv4Packet::check_len`], then `Malformed` for a
    /// version other than 4, `Checksum` for a bad header checksum, `Malformed` for malformed
    /// options. The reserved flag bit is ignored.
    pub fn parse<T: AsRef<[u8]> + ?Sized>(packet: &Ipv4Packet<&T>) -> Result<Repr> {
        packet.check_len()?;
        if packet.version() != 4 {
            return Err(Error::Malformed);
        }
        if !packet.verify_checksum() {
            return Err(Error::Checksum);
        }
        let options = OptionBytes::new(packet.options())?;
        Ok(Repr {
            src_addr: packet.src_addr(),
            dst_addr: packet.dst_addr(),
            protocol: packet.protocol(),
            payload_len: usize::from(packet.total_len()) - packet.header_len(),
            ttl: packet.ttl(),
            dscp: packet.dscp(),
            ecn: packet.ecn(),
            ident: packet.ident(),
            dont_frag: packet.dont_frag(),
            more_frags: packet.more_frags(),
            frag_offset: packet.frag_offset(),
            options,
        })
    }

    /// True for any fragment (More Fragments set or a non-zero offset).
    #[inline]
    pub fn is_fragment(&self) -> bool {
        self.more_frags || self.frag_offset != 0
    }

    /// 20 plus the options.
    #[inline]
    pub fn header_len(&self) -> usize {
        HEADER_LEN + self.options.len()
    }

    /// Header plus payload.
    #[inline]
    pub fn buffer_len(&self) -> usize {
        self.header_len() + self.payload_len
    }

    /// Writes the header, options and checksum; the payload is left for the caller.
    ///
    /// # Panics
    /// When the buffer is shorter than [`header_len`](Self::header_len). In debug builds,
    /// also when [`buffer_len`](Self::buffer_len) exceeds 65535, which IPv4 cannot express.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]> + ?Sized>(&self, packet: &mut Ipv4Packet<&mut T>) {
        debug_assert!(self.buffer_len() <= usize::from(u16::MAX));
        packet.set_version(4);
        packet.set_header_len(self.header_len());
        packet.set_dscp(self.dscp);
        packet.set_ecn(self.ecn);
        packet.set_total_len(self.buffer_len() as u16);
        packet.set_ident(self.ident);
        packet.clear_flags();
        packet.set_dont_frag(self.dont_frag);
        packet.set_more_frags(self.more_frags);
        packet.set_frag_offset(self.frag_offset);
        packet.set_ttl(self.ttl);
        packet.set_protocol(self.protocol);
        packet.set_src_addr(self.src_addr);
        packet.set_dst_addr(self.dst_addr);
        packet
            .options_mut()
            .copy_from_slice(self.options.as_bytes());
        packet.fill_checksum();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    // `ping -s 0 10.0.2.7` from 10.0.1.5: ident 0x1c46, DF, TTL 64, ICMP, header checksum
    // 0x0790; then an ICMP echo request (id 0x002a, seq 1).
    const ICMP_ECHO: [u8; 28] = [
        0x45, 0x00, 0x00, 0x1c, // v4, IHL 5, DSCP 0, ECN 0, total length 28
        0x1c, 0x46, 0x40, 0x00, // ident, DF, offset 0
        0x40, 0x01, 0x07, 0x90, // TTL 64, ICMP, checksum
        0x0a, 0x00, 0x01, 0x05, // 10.0.1.5
        0x0a, 0x00, 0x02, 0x07, // 10.0.2.7
        0x08, 0x00, 0xf7, 0xd4, 0x00, 0x2a, 0x00, 0x01, // ICMP echo request
    ];

    // An IGMPv2 membership report for 224.0.0.251 as Linux sends it: DSCP 48 (CS6), DF,
    // TTL 1, and the Router Alert option (RFC 2113: 0x94 0x04 0x0000), so IHL is 6.
    const IGMP_REPORT: [u8; 32] = [
        0x46, 0xc0, 0x00, 0x20, // v4, IHL 6, CS6, total length 32
        0x00, 0x00, 0x40, 0x00, // ident 0, DF
        0x01, 0x02, 0x41, 0x6a, // TTL 1, IGMP, checksum
        0xc0, 0xa8, 0x01, 0x0a, // 192.168.1.10
        0xe0, 0x00, 0x00, 0xfb, // 224.0.0.251
        0x94, 0x04, 0x00, 0x00, // Router Alert
        0x16, 0x00, 0x09, 0x04, 0xe0, 0x00, 0x00, 0xfb, // IGMPv2 report
    ];

    // A TCP SYN a load balancer forwarded in native-routing DSR: client 192.168.10.20:40000
    // to backend 10.0.2.7:8080, with the frontend 10.96.0.10:80 in the DSR option.
    const DSR_SYN: [u8; 48] = [
        0x47, 0x00, 0x00, 0x30, // v4, IHL 7, total length 48
        0x5d, 0x3a, 0x40, 0x00, // ident, DF
        0x3f, 0x06, 0x61, 0x08, // TTL 63, TCP, checksum
        0xc0, 0xa8, 0x0a, 0x14, // 192.168.10.20
        0x0a, 0x00, 0x02, 0x07, // 10.0.2.7
        0x9a, 0x08, 0x00, 0x50, 0x0a, 0x60, 0x00, 0x0a, // DSR: port 80, 10.96.0.10
        0x9c, 0x40, 0x1f, 0x90, 0x01, 0x02, 0x03, 0x04, // TCP: ports, seq
        0x00, 0x00, 0x00, 0x00, 0x50, 0x02, 0xfa, 0xf0, // ack, offset 5, SYN, window
        0x1e, 0x58, 0x00, 0x00, // checksum, urgent
    ];

    // A middle fragment of a UDP datagram: MF set, offset 185 units = 1480 bytes.
    const FRAGMENT: [u8; 28] = [
        0x45, 0x00, 0x00, 0x1c, 0xab, 0xcd, 0x20, 0xb9, 0x40, 0x11, 0x97, 0x3f, 0x0a, 0x00, 0x01,
        0x05, 0x0a, 0x00, 0x02, 0x07, 0xde, 0xad, 0xbe, 0xef, 0xde, 0xad, 0xbe, 0xef,
    ];

    // Wikipedia's worked example header; its checksum is 0xb861.
    const WIKIPEDIA_HEADER: [u8; 20] = [
        0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0xb8, 0x61, 0xc0, 0xa8, 0x00,
        0x01, 0xc0, 0xa8, 0x00, 0xc7,
    ];

    const GOLDEN: [&[u8]; 4] = [&ICMP_ECHO, &IGMP_REPORT, &DSR_SYN, &FRAGMENT];

    #[test]
    fn icmp_echo_golden() {
        let p = Ipv4Packet::new_checked(&ICMP_ECHO[..]).unwrap();
        assert_eq!(p.version(), 4);
        assert_eq!(p.ihl(), 5);
        assert_eq!(p.header_len(), 20);
        assert_eq!((p.dscp(), p.ecn()), (0, 0));
        assert_eq!(p.total_len(), 28);
        assert_eq!(p.ident(), 0x1c46);
        assert!(p.dont_frag());
        assert!(!p.more_frags());
        assert_eq!(p.frag_offset(), 0);
        assert!(!p.is_fragment());
        assert!(!p.is_first_fragment());
        assert_eq!(p.ttl(), 64);
        assert_eq!(p.protocol(), Protocol::Icmp);
        assert_eq!(p.checksum(), 0x0790);
        assert!(p.verify_checksum());
        assert_eq!(p.src_addr(), Ipv4Addr::new(10, 0, 1, 5));
        assert_eq!(p.dst_addr(), Ipv4Addr::new(10, 0, 2, 7));
        assert!(p.options().is_empty());
        assert_eq!(p.iter_options().count(), 0);
        assert_eq!(p.payload(), &ICMP_ECHO[20..]);
        assert_eq!(find_dsr_option(&p), Ok(None));
    }

    #[test]
    fn igmp_report_with_router_alert_golden() {
        let p = Ipv4Packet::new_checked(&IGMP_REPORT[..]).unwrap();
        assert_eq!(p.header_len(), 24);
        assert_eq!((p.dscp(), p.ecn()), (48, 0));
        assert_eq!(p.ttl(), 1);
        assert_eq!(p.protocol(), Protocol::Unknown(2));
        assert!(p.verify_checksum());
        assert_eq!(p.options(), &[0x94, 0x04, 0x00, 0x00]);
        let options: Vec<_> = p.iter_options().collect::<Result<_>>().unwrap();
        assert_eq!(options.len(), 1);
        assert_eq!(options[0].kind(), 0x94);
        assert_eq!(options[0].offset(), 20);
        assert_eq!(options[0].data(), &[0x00, 0x00]);
        assert!(options[0].is_copied());
        assert_eq!(p.payload(), &IGMP_REPORT[24..]);
        assert_eq!(find_dsr_option(&p), Ok(None));
    }

    #[test]
    fn dsr_syn_golden() {
        let p = Ipv4Packet::new_checked(&DSR_SYN[..]).unwrap();
        assert_eq!(p.header_len(), 28);
        assert!(p.verify_checksum());
        let (dsr, offset) = find_dsr_option(&p).unwrap().unwrap();
        assert_eq!(
            dsr,
            DsrOption {
                addr: Ipv4Addr::new(10, 96, 0, 10),
                port: 80
            }
        );
        assert_eq!(offset, 20);
        assert_eq!(dsr.to_ipv4_bytes(), DSR_SYN[20..28]);
        assert_eq!(p.payload().len(), 20);
        let repr = Repr::parse(&p).unwrap();
        assert_eq!(repr.options, OptionBytes::with_dsr(dsr));
        assert_eq!(repr.payload_len, 20);
    }

    #[test]
    fn fragment_golden() {
        let p = Ipv4Packet::new_checked(&FRAGMENT[..]).unwrap();
        assert!(p.more_frags());
        assert!(!p.dont_frag());
        assert_eq!(p.frag_offset(), 1480);
        assert!(p.is_fragment());
        assert!(!p.is_first_fragment());
        let repr = Repr::parse(&p).unwrap();
        assert!(repr.is_fragment());

        let mut first = FRAGMENT;
        let mut view = Ipv4Packet::new_unchecked(&mut first[..]);
        view.set_frag_offset(0);
        assert!(view.is_fragment());
        assert!(view.is_first_fragment());
        view.set_more_frags(false);
        view.set_frag_offset(8);
        // The last fragment: no MF, non-zero offset.
        assert!(view.is_fragment());
        assert!(!view.is_first_fragment());
    }

    #[test]
    fn known_checksum_is_recomputed() {
        let mut header = WIKIPEDIA_HEADER;
        let mut p = Ipv4Packet::new_unchecked(&mut header[..]);
        assert!(p.verify_checksum());
        p.set_checksum(0);
        assert!(!p.verify_checksum());
        p.fill_checksum();
        assert_eq!(p.checksum(), 0xb861);
        for golden in GOLDEN {
            let mut copy = golden.to_vec();
            let mut p = Ipv4Packet::new_checked(&mut copy[..]).unwrap();
            let expected = p.checksum();
            p.set_checksum(0xffff);
            p.fill_checksum();
            assert_eq!(p.checksum(), expected);
        }
    }

    #[test]
    fn parse_emit_round_trip_golden() {
        for golden in GOLDEN {
            let repr = Repr::parse(&Ipv4Packet::new_checked(golden).unwrap()).unwrap();
            assert_eq!(repr.buffer_len(), golden.len());
            let mut out = golden.to_vec();
            out[..repr.header_len()].fill(0xee);
            repr.emit(&mut Ipv4Packet::new_unchecked(&mut out[..]));
            assert_eq!(out, golden);
        }
    }

    #[test]
    fn repr_new_defaults() {
        let repr = Repr::new(
            Ipv4Addr::new(10, 0, 1, 5),
            Ipv4Addr::new(10, 0, 2, 7),
            Protocol::Icmp,
            8,
        );
        let mut out = [0u8; 28];
        repr.emit(&mut Ipv4Packet::new_unchecked(&mut out[..]));
        let mut expected = ICMP_ECHO;
        // Same header as the capture but for the identification, hence the checksum.
        expected[4..6].copy_from_slice(&[0, 0]);
        let mut p = Ipv4Packet::new_unchecked(&mut expected[..]);
        p.fill_checksum();
        assert_eq!(out[..20], expected[..20]);
    }

    #[test]
    fn every_truncation_is_an_error() {
        for golden in GOLDEN {
            for len in 0..golden.len() {
                let p = Ipv4Packet::new_unchecked(&golden[..len]);
                assert_eq!(p.check_len(), Err(Error::Truncated), "{len} bytes");
                assert_eq!(Repr::parse(&p), Err(Error::Truncated), "{len} bytes");
            }
        }
    }

    #[test]
    fn ethernet_padding_is_not_payload() {
        let mut padded = ICMP_ECHO.to_vec();
        padded.extend_from_slice(&[0; 18]);
        let p = Ipv4Packet::new_checked(&padded[..]).unwrap();
        assert_eq!(p.payload(), &ICMP_ECHO[20..]);
        assert_eq!(Repr::parse(&p).unwrap().payload_len, 8);
    }

    #[test]
    fn malformed_lengths_and_version() {
        let mut ihl4 = ICMP_ECHO;
        ihl4[0] = 0x44;
        assert_eq!(
            Ipv4Packet::new_checked(&ihl4[..]).err(),
            Some(Error::Malformed)
        );

        let mut v6 = ICMP_ECHO;
        v6[0] = 0x65;
        assert_eq!(
            Ipv4Packet::new_checked(&v6[..]).err(),
            Some(Error::Malformed)
        );
        assert_eq!(
            Repr::parse(&Ipv4Packet::new_unchecked(&v6[..])),
            Err(Error::Malformed)
        );

        let mut short_total = ICMP_ECHO;
        short_total[3] = 19;
        assert_eq!(
            Ipv4Packet::new_checked(&short_total[..]).err(),
            Some(Error::Malformed)
        );

        let mut long_total = ICMP_ECHO;
        long_total[3] = 29;
        assert_eq!(
            Ipv4Packet::new_checked(&long_total[..]).err(),
            Some(Error::Truncated)
        );

        // IHL 15 on a 28-byte buffer: the header runs past the buffer.
        let mut long_header = ICMP_ECHO;
        long_header[0] = 0x4f;
        assert_eq!(
            Ipv4Packet::new_checked(&long_header[..]).err(),
            Some(Error::Truncated)
        );
    }

    #[test]
    fn bad_checksum_is_reported() {
        let mut bad = ICMP_ECHO;
        bad[11] ^= 0x01;
        let p = Ipv4Packet::new_checked(&bad[..]).unwrap();
        assert!(!p.verify_checksum());
        assert_eq!(Repr::parse(&p), Err(Error::Checksum));
    }

    /// IGMP_REPORT with its four option bytes replaced (the checksum refilled).
    fn with_options(options: [u8; 4]) -> [u8; 32] {
        let mut packet = IGMP_REPORT;
        packet[20..24].copy_from_slice(&options);
        Ipv4Packet::new_unchecked(&mut packet[..]).fill_checksum();
        packet
    }

    #[test]
    fn option_length_one_is_malformed() {
        let packet = with_options([0x94, 0x01, 0x00, 0x00]);
        let p = Ipv4Packet::new_checked(&packet[..]).unwrap();
        let items: Vec<_> = p.iter_options().collect();
        assert_eq!(items, vec![Err(Error::Malformed)]);
        assert_eq!(Repr::parse(&p), Err(Error::Malformed));
        assert_eq!(find_dsr_option(&p), Err(Error::Malformed));
    }

    #[test]
    fn option_past_the_header_is_malformed() {
        // NOP, then a TLV claiming 4 bytes where only 3 remain.
        let packet = with_options([0x01, 0x94, 0x04, 0x00]);
        let p = Ipv4Packet::new_checked(&packet[..]).unwrap();
        let mut it = p.iter_options();
        assert_eq!(it.next().unwrap().unwrap().kind(), OPTION_NOP);
        assert_eq!(it.next(), Some(Err(Error::Malformed)));
        assert_eq!(it.next(), None);
        assert_eq!(Repr::parse(&p), Err(Error::Malformed));

        // A TLV type in the last byte, with no room for its length.
        let packet = with_options([0x01, 0x01, 0x01, 0x94]);
        let p = Ipv4Packet::new_checked(&packet[..]).unwrap();
        assert_eq!(p.iter_options().last(), Some(Err(Error::Malformed)));
        assert_eq!(Repr::parse(&p), Err(Error::Malformed));
    }

    #[test]
    fn end_of_list_stops_the_walk() {
        // NOP, End of List, then padding that would be malformed if it were read.
        let packet = with_options([0x01, 0x00, 0x94, 0x01]);
        let p = Ipv4Packet::new_checked(&packet[..]).unwrap();
        let kinds: Vec<u8> = p.iter_options().map(|o| o.unwrap().kind()).collect();
        assert_eq!(kinds, vec![OPTION_NOP, OPTION_END_OF_LIST]);
        assert!(Repr::parse(&p).is_ok());
    }

    #[test]
    fn dsr_option_with_wrong_length_is_malformed() {
        let mut packet = DSR_SYN;
        packet[21] = 6; // DSR claims 6 bytes, then 2 bytes of what follows parse as a TLV
        packet[26] = 0x01; // ...made NOPs so that only the DSR length is wrong
        packet[27] = 0x01;
        Ipv4Packet::new_unchecked(&mut packet[..]).fill_checksum();
        let p = Ipv4Packet::new_checked(&packet[..]).unwrap();
        assert_eq!(find_dsr_option(&p), Err(Error::Malformed));
    }

    #[test]
    fn dsr_option_parse_errors() {
        let good = DSR_SYN[20..28].to_vec();
        assert!(DsrOption::parse_ipv4(&good).is_ok());
        for len in 0..DSR_OPTION_LEN {
            assert_eq!(DsrOption::parse_ipv4(&good[..len]), Err(Error::Truncated));
        }
        let mut wrong_kind = good.clone();
        wrong_kind[0] = 0x94;
        assert_eq!(DsrOption::parse_ipv4(&wrong_kind), Err(Error::Malformed));
        let mut wrong_len = good.clone();
        wrong_len[1] = 12;
        assert_eq!(DsrOption::parse_ipv4(&wrong_len), Err(Error::Malformed));
        let mut out = [0u8; 8];
        DsrOption::parse_ipv4(&good).unwrap().emit_ipv4(&mut out);
        assert_eq!(&out[..], &good[..]);
    }

    #[test]
    fn option_bytes_pad_and_validate() {
        let nop = OptionBytes::new(&[OPTION_NOP]).unwrap();
        assert_eq!(nop.as_bytes(), &[1, 0, 0, 0]);
        assert_eq!(OptionBytes::new(&[0x94, 0x01]), Err(Error::Malformed));
        assert_eq!(OptionBytes::new(&[1; 41]), Err(Error::Malformed));
        assert_eq!(OptionBytes::new(&[1; 40]).unwrap().len(), 40);
        assert!(OptionBytes::default().is_empty());
    }

    #[test]
    fn incremental_updates_match_full_recompute() {
        for golden in GOLDEN {
            let mut copy = golden.to_vec();
            let mut p = Ipv4Packet::new_checked(&mut copy[..]).unwrap();
            p.set_src_addr_incremental(Ipv4Addr::new(172, 16, 0, 1));
            p.set_dst_addr_incremental(Ipv4Addr::new(10, 96, 0, 10));
            let ttl = p.ttl();
            assert_eq!(p.decrement_ttl_incremental(), (ttl > 1).then(|| ttl - 1));
            assert!(p.verify_checksum());
            let incremental = p.checksum();
            p.fill_checksum();
            assert_eq!(incremental, p.checksum());
            assert_eq!(p.src_addr(), Ipv4Addr::new(172, 16, 0, 1));
            assert_eq!(p.dst_addr(), Ipv4Addr::new(10, 96, 0, 10));
        }
    }

    #[test]
    fn expired_ttl_is_left_alone() {
        for ttl in [0u8, 1] {
            let mut copy = ICMP_ECHO;
            let mut p = Ipv4Packet::new_unchecked(&mut copy[..]);
            p.set_ttl(ttl);
            p.fill_checksum();
            let before = copy;
            let mut p = Ipv4Packet::new_checked(&mut copy[..]).unwrap();
            assert_eq!(p.decrement_ttl_incremental(), None);
            assert_eq!(copy, before);
        }
        let mut copy = ICMP_ECHO;
        let mut p = Ipv4Packet::new_checked(&mut copy[..]).unwrap();
        assert_eq!(p.decrement_ttl_incremental(), Some(63));
        assert!(p.verify_checksum());
    }

    #[test]
    fn edited_lengths_do_not_panic() {
        let mut copy = ICMP_ECHO;
        let mut p = Ipv4Packet::new_checked(&mut copy[..]).unwrap();
        p.set_total_len(0xffff);
        assert!(p.payload().is_empty());
        assert!(p.payload_mut().is_empty());
        p.set_header_len(60);
        assert!(p.options().is_empty());
        assert!(p.options_mut().is_empty());
        assert!(!p.verify_checksum());
        p.fill_checksum();
        p.set_header_len(0);
        assert!(p.options().is_empty());
        assert_eq!(p.check_len(), Err(Error::Malformed));
    }

    fn option_list() -> impl Strategy<Value = Vec<u8>> {
        // Up to four TLVs of up to 8 bytes, each optionally preceded by a NOP: at most 36
        // bytes, padded to 40 at most.
        let tlv = (
            any::<bool>(),
            2u8..=255,
            proptest::collection::vec(any::<u8>(), 0..=6),
        );
        proptest::collection::vec(tlv, 0..=4).prop_map(|tlvs| {
            let mut out = Vec::new();
            for (nop, kind, data) in tlvs {
                if nop {
                    out.push(OPTION_NOP);
                }
                out.push(kind);
                out.push(data.len() as u8 + 2);
                out.extend_from_slice(&data);
            }
            out
        })
    }

    prop_compose! {
        fn repr_strategy()(
            src in any::<[u8; 4]>(),
            dst in any::<[u8; 4]>(),
            protocol in any::<u8>(),
            payload_len in 0usize..1400,
            ttl in any::<u8>(),
            dscp in 0u8..64,
            ecn in 0u8..4,
            ident in any::<u16>(),
            dont_frag in any::<bool>(),
            more_frags in any::<bool>(),
            frag_units in 0u16..=0x1fff,
            options in option_list(),
        ) -> Repr {
            Repr {
                src_addr: Ipv4Addr::from(src),
                dst_addr: Ipv4Addr::from(dst),
                protocol: Protocol::from(protocol),
                payload_len,
                ttl,
                dscp,
                ecn,
                ident,
                dont_frag,
                more_frags,
                frag_offset: frag_units << 3,
                options: OptionBytes::new(&options).unwrap(),
            }
        }
    }

    proptest! {
        #[test]
        fn repr_emit_parse_round_trip(repr in repr_strategy()) {
            let mut buf = vec![0u8; repr.buffer_len()];
            repr.emit(&mut Ipv4Packet::new_unchecked(&mut buf[..]));
            let p = Ipv4Packet::new_checked(&buf[..]).unwrap();
            prop_assert!(p.verify_checksum());
            prop_assert_eq!(p.payload().len(), repr.payload_len);
            prop_assert_eq!(Repr::parse(&p).unwrap(), repr);
        }

        #[test]
        fn dsr_option_round_trip(addr in any::<[u8; 4]>(), port in any::<u16>()) {
            let dsr = DsrOption { addr: Ipv4Addr::from(addr), port };
            let mut repr = Repr::new(Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(10, 0, 0, 2), Protocol::Tcp, 0);
            repr.options = OptionBytes::with_dsr(dsr);
            let mut buf = vec![0u8; repr.buffer_len()];
            repr.emit(&mut Ipv4Packet::new_unchecked(&mut buf[..]));
            let p = Ipv4Packet::new_checked(&buf[..]).unwrap();
            prop_assert_eq!(find_dsr_option(&p), Ok(Some((dsr, HEADER_LEN))));
        }

        #[test]
        fn incremental_rewrites_keep_the_checksum(
            repr in repr_strategy(),
            src in any::<[u8; 4]>(),
            dst in any::<[u8; 4]>(),
        ) {
            let mut buf = vec![0u8; repr.buffer_len()];
            repr.emit(&mut Ipv4Packet::new_unchecked(&mut buf[..]));
            let mut p = Ipv4Packet::new_checked(&mut buf[..]).unwrap();
            p.set_src_addr_incremental(Ipv4Addr::from(src));
            p.set_dst_addr_incremental(Ipv4Addr::from(dst));
            let _ = p.decrement_ttl_incremental();
            let incremental = p.checksum();
            p.fill_checksum();
            prop_assert_eq!(incremental, p.checksum());
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..80)) {
            if let Ok(p) = Ipv4Packet::new_checked(&bytes[..]) {
                let _ = (p.version(), p.dscp(), p.ecn(), p.ident(), p.dont_frag(), p.frag_offset());
                let _ = (p.is_fragment(), p.is_first_fragment(), p.ttl(), p.protocol());
                let _ = (p.src_addr(), p.dst_addr(), p.verify_checksum(), p.options().len());
                prop_assert_eq!(p.payload().len() + p.header_len(), usize::from(p.total_len()));
                for option in p.iter_options().flatten() {
                    prop_assert!(option.offset() + option.as_bytes().len() <= p.header_len());
                }
                let _ = find_dsr_option(&p);
                let _ = Repr::parse(&p);
            }
        }
    }
}
