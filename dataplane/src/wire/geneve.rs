//! Geneve header and options (RFC 8926): the header between the outer UDP header (port 6081)
//! and the inner frame, its TLV options, and the DSR option that carries a service frontend
//! to the backend's node in tunnel mode (Cilium's layout).
//!
//! Contract and invariants:
//! - [`GenevePacket::check_len`] requires the 8-byte fixed header (`Truncated`), version 0
//!   (`Unsupported`: another version may lay the header out differently), and the options area
//!   announced by `opt_len` inside the buffer (`Truncated`). After
//!   [`GenevePacket::new_checked`] succeeds no accessor panics.
//! - Options are walked by [`GeneveOptions`], which yields `Err(Malformed)` (once, then stops)
//!   for an option whose header or data runs past the options area. [`Repr::parse`]
//!   walks them all, so a parsed header has a well-formed option list.
//! - RFC 8926 section 3.5: a packet with a critical option (type high bit) that the receiver
//!   does not understand must be dropped; [`GenevePacket::has_unknown_critical_option`] tells.
//! - Reserved bits are ignored on receive and zero on emit. The VNI is 24 bits (larger values
//!   are truncated and trip a debug assertion).
//! - Emitting is two steps: [`Repr::emit`] writes the fixed header (with `opt_len`), then
//!   [`write_option`] (or [`GenevePacket::write_option`]) and [`DsrOption::emit_geneve`] fill the
//!   options area in order, each returning the offset of the next option. They take the options
//!   area as its own slice, so an encapsulation path may split the header buffer in two.

use std::net::Ipv4Addr;

use super::bytes::{get_u16, get_u24, set_u16, set_u24};
use super::{Error, Result};
pub use crate::wire::dsr::DsrOption;

/// IANA-assigned UDP destination port.
pub const UDP_PORT: u16 = 6081;
/// Protocol type of an inner Ethernet frame (Transparent Ethernet Bridging).
pub const PROTOCOL_ETHERNET: u16 = 0x6558;

/// Byte offsets of the fixed header fields.
mod field {
    use crate::wire::Field;

    /// Version (2 high bits) and options length in 4-byte words (6 low bits).
    pub const VER_OPT_LEN: Field = 0..1;
    /// O (control/OAM, 0x80), C (critical options present, 0x40), 6 reserved bits.
    pub const FLAGS: Field = 1..2;
    /// EtherType of the inner payload.
    pub const PROTOCOL: Field = 2..4;
    pub const VNI: Field = 4..7;
    pub const RESERVED: Field = 7..8;

    /// Inside an option: class, type (high bit: critical), and R R R + 5-bit length in words.
    pub const OPTION_CLASS: Field = 0..2;
    pub const OPTION_TYPE: Field = 2..3;
    pub const OPTION_LEN: Field = 3..4;
}

/// Length of the fixed header.
pub const HEADER_LEN: usize = field::RESERVED.end;
/// Length of an option header.
pub const OPTION_HEADER_LEN: usize = field::OPTION_LEN.end;
/// Largest options area: 63 words.
pub const MAX_OPTIONS_LEN: usize = 63 * 4;
/// Largest option data: 31 words.
pub const MAX_OPTION_DATA_LEN: usize = 31 * 4;
/// Type bit of a critical option.
pub const OPTION_TYPE_CRITICAL: u8 = 0x80;
/// The only version RFC 8926 defines.
pub const VERSION: u8 = 0;

const FLAG_OAM: u8 = 0x80;
const FLAG_CRITICAL: u8 = 0x40;

/// Option class of the DSR option: Cilium's IANA-registered class, 0x014B (Cilium's
/// `bpf/lib/tunnel.h`, `DSR_GENEVE_OPT_CLASS`).
pub const DSR_OPTION_CLASS: u16 = 0x014b;
/// Option type of the DSR option, without the critical bit. Flagella emits it as is
/// (non-critical); Cilium sends it with the critical bit set (0x81). [`DsrOption::matches_geneve`]
/// recognises both, so a `known` filter for
/// [`has_unknown_critical_option`](GenevePacket::has_unknown_critical_option) should compare
/// `type_ & !OPTION_TYPE_CRITICAL` with this value.
pub const DSR_OPTION_TYPE: u8 = 0x01;
/// DSR option data: IPv4 address, port, 2 bytes of padding.
pub const DSR_OPTION_DATA_LEN: usize = 8;
/// Length of the DSR option on the wire: option header and 8 bytes of data (length field 2).
pub const DSR_OPTION_LEN: usize = OPTION_HEADER_LEN + DSR_OPTION_DATA_LEN;

/// One TLV option. `data` excludes the 4-byte option header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GeneveOption<'a> {
    pub class: u16,
    /// Full type byte, critical bit included.
    pub type_: u8,
    pub data: &'a [u8],
}

impl GeneveOption<'_> {
    /// True when the receiver must understand this option or drop the packet.
    #[inline]
    pub fn is_critical(&self) -> bool {
        self.type_ & OPTION_TYPE_CRITICAL != 0
    }

    /// Length on the wire, header included.
    #[inline]
    pub fn wire_len(&self) -> usize {
        OPTION_HEADER_LEN + self.data.len()
    }
}

/// Iterator over the options area.
#[derive(Debug, Clone)]
pub struct GeneveOptions<'a> {
    rest: &'a [u8],
}

impl<'a> GeneveOptions<'a> {
    /// Walks an options area (the bytes `opt_len` announces).
    pub fn new(options: &'a [u8]) -> GeneveOptions<'a> {
        GeneveOptions { rest: options }
    }

    fn split_first(bytes: &'a [u8]) -> Result<(GeneveOption<'a>, &'a [u8])> {
        let header: [u8; OPTION_HEADER_LEN] = bytes
            .get(..OPTION_HEADER_LEN)
            .and_then(|h| h.try_into().ok())
            .ok_or(Error::Malformed)?;
        let [class_hi, class_lo, type_, len] = header;
        let end = OPTION_HEADER_LEN + usize::from(len & 0x1f) * 4;
        let data = bytes.get(OPTION_HEADER_LEN..end).ok_or(Error::Malformed)?;
        let rest = bytes.get(end..).ok_or(Error::Malformed)?;
        let option = GeneveOption {
            class: u16::from_be_bytes([class_hi, class_lo]),
            type_,
            data,
        };
        Ok((option, rest))
    }
}

impl<'a> Iterator for GeneveOptions<'a> {
    type Item = Result<GeneveOption<'a>>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        match Self::split_first(self.rest) {
            Ok((option, rest)) => {
                self.rest = rest;
                Some(Ok(option))
            }
            Err(e) => {
                self.rest = &[];
                Some(Err(e))
            }
        }
    }
}

/// A read/write view of a Geneve header, its options and the payload after them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GenevePacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> GenevePacket<T> {
    /// Wraps a buffer without any check; accessors may panic on a short buffer.
    #[inline]
    pub const fn new_unchecked(buffer: T) -> GenevePacket<T> {
        GenevePacket { buffer }
    }

    /// Wraps a buffer and checks it with [`check_len`](Self::check_len).
    #[inline]
    pub fn new_checked(buffer: T) -> Result<GenevePacket<T>> {
        let packet = Self::new_unchecked(buffer);
        packet.check_len()?;
        Ok(packet)
    }

    /// Checks that the fixed header fits (`Truncated`), that the version is 0 (`Unsupported`)
    /// and that the options area fits (`Truncated`).
    #[inline]
    pub fn check_len(&self) -> Result<()> {
        let len = self.buffer.as_ref().len();
        if len < HEADER_LEN {
            Err(Error::Truncated)
        } else if self.version() != VERSION {
            Err(Error::Unsupported)
        } else if self.header_len() > len {
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
    pub fn version(&self) -> u8 {
        self.buffer.as_ref()[field::VER_OPT_LEN.start] >> 6
    }

    /// Length of the options area in bytes (`opt_len` times 4).
    #[inline]
    pub fn options_len(&self) -> usize {
        usize::from(self.buffer.as_ref()[field::VER_OPT_LEN.start] & 0x3f) * 4
    }

    /// Fixed header plus options.
    #[inline]
    pub fn header_len(&self) -> usize {
        HEADER_LEN + self.options_len()
    }

    /// O bit: a control (OAM) packet, for the tunnel endpoint rather than the inner network.
    #[inline]
    pub fn oam(&self) -> bool {
        self.buffer.as_ref()[field::FLAGS.start] & FLAG_OAM != 0
    }

    /// C bit: at least one critical option is present.
    #[inline]
    pub fn critical(&self) -> bool {
        self.buffer.as_ref()[field::FLAGS.start] & FLAG_CRITICAL != 0
    }

    /// EtherType of the payload ([`PROTOCOL_ETHERNET`] for an Ethernet frame).
    #[inline]
    pub fn protocol(&self) -> u16 {
        get_u16(self.buffer.as_ref(), field::PROTOCOL)
    }

    /// The 24-bit VNI.
    #[inline]
    pub fn vni(&self) -> u32 {
        get_u24(self.buffer.as_ref(), field::VNI)
    }

    /// The raw options area.
    #[inline]
    pub fn options(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..self.header_len()]
    }

    /// Iterates over the options.
    #[inline]
    pub fn iter_options(&self) -> GeneveOptions<'_> {
        GeneveOptions::new(self.options())
    }

    /// The payload after the options (the inner frame).
    #[inline]
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[self.header_len()..]
    }

    /// True when some critical option is not `known(class, type)`: RFC 8926 section 3.5 says
    /// the packet must then be dropped. `Malformed` when the option list is.
    pub fn has_unknown_critical_option(&self, known: impl Fn(u16, u8) -> bool) -> Result<bool> {
        let mut unknown = false;
        for option in self.iter_options() {
            let option = option?;
            unknown |= option.is_critical() && !known(option.class, option.type_);
        }
        Ok(unknown)
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> GenevePacket<T> {
    /// Sets the version (2 bits), keeping `opt_len`.
    #[inline]
    pub fn set_version(&mut self, version: u8) {
        let byte = &mut self.buffer.as_mut()[field::VER_OPT_LEN.start];
        *byte = (version << 6) | (*byte & 0x3f);
    }

    /// Sets `opt_len` from a length in bytes (a multiple of 4, at most 252), keeping the
    /// version.
    #[inline]
    pub fn set_options_len(&mut self, len: usize) {
        debug_assert!(
            len % 4 == 0 && len <= MAX_OPTIONS_LEN,
            "bad Geneve options length {len}"
        );
        let words = ((len / 4) & 0x3f) as u8; // masked to 6 bits
        let byte = &mut self.buffer.as_mut()[field::VER_OPT_LEN.start];
        *byte = (*byte & 0xc0) | words;
    }

    #[inline]
    pub fn set_oam(&mut self, oam: bool) {
        self.set_flag(FLAG_OAM, oam);
    }

    #[inline]
    pub fn set_critical(&mut self, critical: bool) {
        self.set_flag(FLAG_CRITICAL, critical);
    }

    #[inline]
    fn set_flag(&mut self, flag: u8, on: bool) {
        let byte = &mut self.buffer.as_mut()[field::FLAGS.start];
        if on {
            *byte |= flag;
        } else {
            *byte &= !flag;
        }
    }

    #[inline]
    pub fn set_protocol(&mut self, protocol: u16) {
        set_u16(self.buffer.as_mut(), field::PROTOCOL, protocol);
    }

    /// Sets the VNI (low 24 bits of `vni`).
    #[inline]
    pub fn set_vni(&mut self, vni: u32) {
        debug_assert!(vni <= 0x00ff_ffff, "VNI {vni:#x} exceeds 24 bits");
        set_u24(self.buffer.as_mut(), field::VNI, vni);
    }

    /// The raw options area, writable.
    #[inline]
    pub fn options_mut(&mut self) -> &mut [u8] {
        let end = self.header_len();
        &mut self.buffer.as_mut()[HEADER_LEN..end]
    }

    /// The payload after the options, writable.
    #[inline]
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let start = self.header_len();
        &mut self.buffer.as_mut()[start..]
    }

    /// Writes one option at `offset` bytes into the view's options area (whose length
    /// `opt_len` already says); see [`write_option`] for the result and the errors.
    pub fn write_option(
        &mut self,
        offset: usize,
        class: u16,
        type_: u8,
        data: &[u8],
    ) -> Result<usize> {
        let header_len = self.header_len();
        let options = self
            .buffer
            .as_mut()
            .get_mut(HEADER_LEN..header_len)
            .ok_or(Error::Truncated)?;
        write_option(options, offset, class, type_, data)
    }
}

/// Writes one option at `offset` bytes into an options area and returns the offset just past
/// it, so that calls chain. `Malformed` when `data` is not a whole number of words or is longer
/// than 124 bytes; `Truncated` when the option does not fit in `options`. Nothing is written on
/// error.
pub fn write_option(
    options: &mut [u8],
    offset: usize,
    class: u16,
    type_: u8,
    data: &[u8],
) -> Result<usize> {
    if data.len() % 4 != 0 || data.len() > MAX_OPTION_DATA_LEN {
        return Err(Error::Malformed);
    }
    let end = offset
        .checked_add(OPTION_HEADER_LEN + data.len())
        .ok_or(Error::Truncated)?;
    let slot = options.get_mut(offset..end).ok_or(Error::Truncated)?;
    let (header, body) = slot.split_at_mut(OPTION_HEADER_LEN);
    set_u16(header, field::OPTION_CLASS, class);
    header[field::OPTION_TYPE.start] = type_;
    header[field::OPTION_LEN.start] = (data.len() / 4) as u8; // <= 31, reserved bits zero
    body.copy_from_slice(data);
    Ok(end)
}

/// A Geneve fixed header in plain fields. Options are written separately; the `Repr` knows
/// the length of their area.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Repr {
    /// 24 bits.
    pub vni: u32,
    /// EtherType of the payload.
    pub protocol: u16,
    /// Bytes of options: a multiple of 4, at most [`MAX_OPTIONS_LEN`].
    pub options_len: usize,
    pub oam: bool,
    pub critical: bool,
}

impl Repr {
    /// Reads the fixed header, checking it and walking the options (`Malformed` when one runs
    /// past the options area).
    pub fn parse<T: AsRef<[u8]>>(packet: &GenevePacket<T>) -> Result<Repr> {
        packet.check_len()?;
        for option in packet.iter_options() {
            option?;
        }
        Ok(Repr {
            vni: packet.vni(),
            protocol: packet.protocol(),
            options_len: packet.options_len(),
            oam: packet.oam(),
            critical: packet.critical(),
        })
    }

    /// Fixed header plus options area.
    #[inline]
    pub fn header_len(&self) -> usize {
        HEADER_LEN + self.options_len
    }

    /// What [`emit`](Self::emit) and the options occupy: the header with its options (the
    /// inner frame follows).
    #[inline]
    pub fn buffer_len(&self) -> usize {
        self.header_len()
    }

    /// Writes the fixed header (version 0, reserved bits zero). The options area is left for
    /// [`GenevePacket::write_option`].
    ///
    /// # Panics
    /// If the buffer is shorter than [`HEADER_LEN`].
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut GenevePacket<T>) {
        let buf = packet.buffer.as_mut();
        buf[field::VER_OPT_LEN.start] = 0;
        buf[field::FLAGS.start] = 0;
        buf[field::RESERVED.start] = 0;
        packet.set_version(VERSION);
        packet.set_options_len(self.options_len);
        packet.set_oam(self.oam);
        packet.set_critical(self.critical);
        packet.set_protocol(self.protocol);
        packet.set_vni(self.vni);
    }
}

/// The Geneve encoding of the DSR frontend: an option of class [`DSR_OPTION_CLASS`], type
/// [`DSR_OPTION_TYPE`], whose data is the IPv4 address, the port, and 2 bytes of zero padding.
impl DsrOption {
    /// True when `option` is a DSR option by class and type, critical bit or not.
    #[inline]
    pub fn matches_geneve(option: &GeneveOption<'_>) -> bool {
        option.class == DSR_OPTION_CLASS && option.type_ & !OPTION_TYPE_CRITICAL == DSR_OPTION_TYPE
    }

    /// Reads a DSR option: `Unsupported` for another class/type, `Malformed` when the data is
    /// not 8 bytes. The padding is ignored.
    pub fn parse_geneve(option: &GeneveOption<'_>) -> Result<DsrOption> {
        if !Self::matches_geneve(option) {
            return Err(Error::Unsupported);
        }
        let [a, b, c, d, p0, p1, _, _]: [u8; DSR_OPTION_DATA_LEN] =
            option.data.try_into().map_err(|_| Error::Malformed)?;
        Ok(DsrOption {
            addr: Ipv4Addr::new(a, b, c, d),
            port: u16::from_be_bytes([p0, p1]),
        })
    }

    /// The option data: address, port, zero padding.
    pub fn geneve_data(&self) -> [u8; DSR_OPTION_DATA_LEN] {
        let [a, b, c, d] = self.addr.octets();
        let [p0, p1] = self.port.to_be_bytes();
        [a, b, c, d, p0, p1, 0, 0]
    }

    /// Writes the option at `offset` into an options area (for a view:
    /// [`GenevePacket::options_mut`]); returns the offset past it (see [`write_option`]).
    pub fn emit_geneve(&self, options: &mut [u8], offset: usize) -> Result<usize> {
        write_option(
            options,
            offset,
            DSR_OPTION_CLASS,
            DSR_OPTION_TYPE,
            &self.geneve_data(),
        )
    }
}

/// The DSR option of a packet, if any. The whole option list is walked, so a malformed list is
/// `Malformed` wherever the damage is; a DSR option with bad data is `Malformed` too.
pub fn find_dsr_option<T: AsRef<[u8]>>(packet: &GenevePacket<T>) -> Result<Option<DsrOption>> {
    let mut found = None;
    for option in packet.iter_options() {
        let option = option?;
        if found.is_none() && DsrOption::matches_geneve(&option) {
            found = Some(DsrOption::parse_geneve(&option)?);
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    // Geneve header: version 0, opt_len 5 (20 bytes), C set, protocol 0x6558, VNI 0x123456;
    // option 1: DSR (class 0x014b, type 0x01, length 2) for 10.96.0.10:80;
    // option 2: class 0x0102 (OVN), type 0x80 (critical), length 1, data de ad be ef;
    // then the first bytes of the inner frame.
    const GENEVE_TWO_OPTIONS: [u8; 32] = [
        0x05, 0x40, 0x65, 0x58, 0x12, 0x34, 0x56, 0x00, // fixed header
        0x01, 0x4b, 0x01, 0x02, 0x0a, 0x60, 0x00, 0x0a, 0x00, 0x50, 0x00, 0x00, // DSR
        0x01, 0x02, 0x80, 0x01, 0xde, 0xad, 0xbe, 0xef, // OVN critical
        0xff, 0xff, 0xff, 0xff, // inner frame
    ];
    const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);

    fn golden_repr() -> Repr {
        Repr {
            vni: 0x12_3456,
            protocol: PROTOCOL_ETHERNET,
            options_len: 20,
            oam: false,
            critical: true,
        }
    }

    #[test]
    fn golden_fields() {
        let p = GenevePacket::new_checked(&GENEVE_TWO_OPTIONS[..]).unwrap();
        assert_eq!(p.version(), 0);
        assert_eq!(p.options_len(), 20);
        assert_eq!(p.header_len(), 28);
        assert!(!p.oam());
        assert!(p.critical());
        assert_eq!(p.protocol(), PROTOCOL_ETHERNET);
        assert_eq!(p.vni(), 0x12_3456);
        assert_eq!(p.payload(), &[0xff; 4]);
        let options: Vec<_> = p.iter_options().map(Result::unwrap).collect();
        assert_eq!(
            options,
            [
                GeneveOption {
                    class: DSR_OPTION_CLASS,
                    type_: DSR_OPTION_TYPE,
                    data: &[10, 96, 0, 10, 0, 80, 0, 0],
                },
                GeneveOption {
                    class: 0x0102,
                    type_: 0x80,
                    data: &[0xde, 0xad, 0xbe, 0xef],
                },
            ]
        );
        assert!(!options[0].is_critical());
        assert!(options[1].is_critical());
        assert_eq!(options[0].wire_len(), DSR_OPTION_LEN);
        assert_eq!(Repr::parse(&p), Ok(golden_repr()));
        assert_eq!(
            find_dsr_option(&p),
            Ok(Some(DsrOption {
                addr: VIP,
                port: 80
            }))
        );
    }

    #[test]
    fn parse_emit_round_trip_is_byte_exact() {
        let p = GenevePacket::new_checked(&GENEVE_TWO_OPTIONS[..]).unwrap();
        let repr = Repr::parse(&p).unwrap();
        let dsr = find_dsr_option(&p).unwrap().unwrap();
        let mut out = [0xa5u8; 32];
        out[28..].copy_from_slice(&GENEVE_TWO_OPTIONS[28..]);
        let mut q = GenevePacket::new_unchecked(&mut out[..]);
        repr.emit(&mut q);
        let next = dsr.emit_geneve(q.options_mut(), 0).unwrap();
        assert_eq!(next, 12);
        let next = q
            .write_option(next, 0x0102, 0x80, &[0xde, 0xad, 0xbe, 0xef])
            .unwrap();
        assert_eq!(next, repr.options_len);
        assert_eq!(out, GENEVE_TWO_OPTIONS);
    }

    #[test]
    fn every_truncation_is_an_error() {
        for n in 0..28 {
            let bytes = &GENEVE_TWO_OPTIONS[..n];
            assert_eq!(
                GenevePacket::new_checked(bytes).err(),
                Some(Error::Truncated),
                "{n}"
            );
            let p = GenevePacket::new_unchecked(bytes);
            assert!(Repr::parse(&p).is_err(), "{n}");
        }
    }

    #[test]
    fn version_one_is_unsupported() {
        let mut bytes = GENEVE_TWO_OPTIONS;
        bytes[0] |= 0x40;
        assert_eq!(
            GenevePacket::new_checked(&bytes[..]).err(),
            Some(Error::Unsupported)
        );
        assert_eq!(
            Repr::parse(&GenevePacket::new_unchecked(&bytes[..])),
            Err(Error::Unsupported)
        );
    }

    #[test]
    fn option_past_opt_len_is_malformed() {
        // Second option claims 2 words of data, but opt_len leaves room for 1.
        let mut bytes = GENEVE_TWO_OPTIONS;
        bytes[23] = 0x02;
        let p = GenevePacket::new_checked(&bytes[..]).unwrap();
        let results: Vec<_> = p.iter_options().collect();
        assert_eq!(results.len(), 2);
        assert!(results[0].is_ok());
        assert_eq!(results[1], Err(Error::Malformed));
        assert_eq!(Repr::parse(&p), Err(Error::Malformed));
        // The DSR option comes first, but the list is broken: no answer from a broken packet.
        assert_eq!(find_dsr_option(&p), Err(Error::Malformed));
        assert_eq!(
            p.has_unknown_critical_option(|_, _| true),
            Err(Error::Malformed)
        );

        // An options area that ends inside an option header.
        let mut bytes = GENEVE_TWO_OPTIONS;
        bytes[0] = 0x04; // 16 bytes: DSR (12) + 4 bytes = the next option's header only...
        let p = GenevePacket::new_checked(&bytes[..]).unwrap();
        assert!(Repr::parse(&p).is_err());
        bytes[0] = 0x03; // ...12 bytes: DSR only, well-formed.
        let p = GenevePacket::new_checked(&bytes[..]).unwrap();
        assert!(Repr::parse(&p).is_ok());
        bytes[11] = 0x03; // DSR option now claims 12 bytes of data.
        let p = GenevePacket::new_checked(&bytes[..]).unwrap();
        assert_eq!(Repr::parse(&p), Err(Error::Malformed));
    }

    #[test]
    fn unknown_critical_options() {
        let p = GenevePacket::new_checked(&GENEVE_TWO_OPTIONS[..]).unwrap();
        let only_dsr = |class: u16, type_: u8| {
            class == DSR_OPTION_CLASS && type_ & !OPTION_TYPE_CRITICAL == DSR_OPTION_TYPE
        };
        assert_eq!(p.has_unknown_critical_option(only_dsr), Ok(true));
        let dsr_and_ovn = |class: u16, type_: u8| only_dsr(class, type_) || class == 0x0102;
        assert_eq!(p.has_unknown_critical_option(dsr_and_ovn), Ok(false));
        // A non-critical unknown option is fine.
        let mut bytes = GENEVE_TWO_OPTIONS;
        bytes[22] = 0x01;
        let p = GenevePacket::new_checked(&bytes[..]).unwrap();
        assert_eq!(p.has_unknown_critical_option(only_dsr), Ok(false));
    }

    #[test]
    fn dsr_option_errors() {
        let wrong_class = GeneveOption {
            class: 0x0102,
            type_: DSR_OPTION_TYPE,
            data: &[0; 8],
        };
        assert_eq!(
            DsrOption::parse_geneve(&wrong_class),
            Err(Error::Unsupported)
        );
        let short = GeneveOption {
            class: DSR_OPTION_CLASS,
            type_: DSR_OPTION_TYPE,
            data: &[0; 4],
        };
        assert_eq!(DsrOption::parse_geneve(&short), Err(Error::Malformed));
        // A DSR option with bad data inside a well-formed list.
        let mut bytes = GENEVE_TWO_OPTIONS;
        bytes[11] = 0x01; // DSR option with 4 bytes of data; the rest reads as 1 more option
        bytes[16..20].copy_from_slice(&[0x01, 0x02, 0x00, 0x00]);
        let p = GenevePacket::new_checked(&bytes[..]).unwrap();
        assert!(Repr::parse(&p).is_ok());
        assert_eq!(find_dsr_option(&p), Err(Error::Malformed));
    }

    #[test]
    fn cilium_critical_dsr_option_is_recognised() {
        // Cilium sends the DSR option with the critical bit (type 0x81).
        let mut bytes = GENEVE_TWO_OPTIONS;
        bytes[10] = 0x81;
        let p = GenevePacket::new_checked(&bytes[..]).unwrap();
        assert_eq!(
            find_dsr_option(&p),
            Ok(Some(DsrOption {
                addr: VIP,
                port: 80
            }))
        );
        let dsr_and_ovn = |class: u16, type_: u8| {
            (class == DSR_OPTION_CLASS && type_ & !OPTION_TYPE_CRITICAL == DSR_OPTION_TYPE)
                || class == 0x0102
        };
        assert_eq!(p.has_unknown_critical_option(dsr_and_ovn), Ok(false));
        assert_eq!(p.has_unknown_critical_option(|c, _| c == 0x0102), Ok(true));
    }

    #[test]
    fn write_option_on_a_separate_options_slice() {
        // The encapsulation path writes the fixed header and the options area as two slices.
        let mut bytes = [0u8; 28];
        let (fixed, options) = bytes.split_at_mut(HEADER_LEN);
        golden_repr().emit(&mut GenevePacket::new_unchecked(fixed));
        let next = DsrOption {
            addr: VIP,
            port: 80,
        }
        .emit_geneve(options, 0)
        .unwrap();
        let next = write_option(options, next, 0x0102, 0x80, &[0xde, 0xad, 0xbe, 0xef]).unwrap();
        assert_eq!(next, options.len());
        assert_eq!(bytes, GENEVE_TWO_OPTIONS[..28]);
        assert_eq!(
            write_option(&mut [0u8; 4], 1, 1, 1, &[]),
            Err(Error::Truncated)
        );
    }

    #[test]
    fn no_options() {
        let bytes = [0x00, 0x00, 0x65, 0x58, 0x00, 0x00, 0x01, 0x00];
        let p = GenevePacket::new_checked(&bytes[..]).unwrap();
        assert_eq!(p.iter_options().count(), 0);
        assert_eq!(find_dsr_option(&p), Ok(None));
        assert_eq!(p.has_unknown_critical_option(|_, _| false), Ok(false));
        assert!(p.payload().is_empty());
    }

    #[test]
    fn write_option_errors_write_nothing() {
        let mut bytes = GENEVE_TWO_OPTIONS;
        let mut p = GenevePacket::new_unchecked(&mut bytes[..]);
        assert_eq!(p.write_option(0, 1, 1, &[1, 2, 3]), Err(Error::Malformed));
        assert_eq!(p.write_option(0, 1, 1, &[0; 128]), Err(Error::Malformed));
        assert_eq!(p.write_option(12, 1, 1, &[0; 8]), Err(Error::Truncated));
        assert_eq!(p.write_option(usize::MAX, 1, 1, &[]), Err(Error::Truncated));
        assert_eq!(bytes, GENEVE_TWO_OPTIONS);
        // opt_len larger than the buffer.
        let mut short = [0x3fu8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        let mut p = GenevePacket::new_unchecked(&mut short[..]);
        assert_eq!(p.write_option(0, 1, 1, &[]), Err(Error::Truncated));
    }

    fn arb_options() -> impl Strategy<Value = Vec<(u16, u8, Vec<u8>)>> {
        let option = (
            any::<u16>(),
            any::<u8>(),
            (0usize..=8).prop_flat_map(|words| proptest::collection::vec(any::<u8>(), words * 4)),
        );
        proptest::collection::vec(option, 0..6)
    }

    proptest! {
        #[test]
        fn repr_round_trip(vni in 0u32..=0x00ff_ffff, protocol in any::<u16>(),
                           oam in any::<bool>(), critical in any::<bool>(),
                           options in arb_options(), fill in any::<u8>()) {
            let options_len: usize = options.iter().map(|(_, _, d)| OPTION_HEADER_LEN + d.len()).sum();
            let repr = Repr { vni, protocol, options_len, oam, critical };
            let mut buf = vec![fill; repr.buffer_len() + 4];
            let mut p = GenevePacket::new_unchecked(&mut buf[..]);
            repr.emit(&mut p);
            let mut offset = 0;
            for (class, type_, data) in &options {
                offset = p.write_option(offset, *class, *type_, data).unwrap();
            }
            prop_assert_eq!(offset, options_len);

            let p = GenevePacket::new_checked(&buf[..]).unwrap();
            prop_assert_eq!(Repr::parse(&p), Ok(repr));
            let parsed: Vec<_> = p.iter_options().map(|o| o.map(|o| (o.class, o.type_, o.data.to_vec()))).collect::<Result<_>>().unwrap();
            prop_assert_eq!(parsed, options);
        }

        #[test]
        fn dsr_round_trip(addr in any::<[u8; 4]>(), port in any::<u16>(), vni in 0u32..=0x00ff_ffff) {
            let dsr = DsrOption { addr: Ipv4Addr::from(addr), port };
            let repr = Repr {
                vni,
                protocol: PROTOCOL_ETHERNET,
                options_len: DSR_OPTION_LEN,
                oam: false,
                critical: true,
            };
            let mut buf = vec![0; repr.buffer_len()];
            let mut p = GenevePacket::new_unchecked(&mut buf[..]);
            repr.emit(&mut p);
            prop_assert_eq!(dsr.emit_geneve(p.options_mut(), 0), Ok(DSR_OPTION_LEN));
            let p = GenevePacket::new_checked(&buf[..]).unwrap();
            prop_assert_eq!(find_dsr_option(&p), Ok(Some(dsr)));
            prop_assert_eq!(p.has_unknown_critical_option(|_, _| false), Ok(false));
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let mut bytes = bytes;
            if let Some(b) = bytes.first_mut() {
                *b &= 0x3f; // version 0 most of the time, to reach the option walk
            }
            if let Ok(p) = GenevePacket::new_checked(&bytes[..]) {
                let _ = (p.version(), p.options_len(), p.oam(), p.critical(), p.protocol(), p.vni());
                let _ = (p.options(), p.payload(), p.iter_options().count());
                let _ = (Repr::parse(&p), find_dsr_option(&p));
                let _ = p.has_unknown_critical_option(|_, _| false);
            } else {
                prop_assert!(Repr::parse(&GenevePacket::new_unchecked(&bytes[..])).is_err());
            }
        }
    }
}
