//! ICMPv6 (RFC 4443) and the two Neighbor Discovery messages the dataplane answers for the pod
//! gateway (RFC 4861 Neighbor Solicitation and Advertisement): a zero-copy view and a `Repr`.
//!
//! Contract and invariants:
//! - The buffer is exactly one ICMPv6 message (the IPv6 payload after extension headers). The
//!   checksum covers the IPv6 pseudo-header (next header 58) and the whole buffer.
//! - [`Icmpv6Packet::check_len`] requires the 8-byte header, and 24 bytes for NS/NA (header and
//!   target address). Type-dependent accessors read through `get`, so after
//!   [`Icmpv6Packet::new_checked`] succeeds no accessor panics, even if a setter changes the
//!   type afterwards.
//! - Error messages (types 1 to 127: Destination Unreachable, Packet Too Big, Time Exceeded,
//!   Parameter Problem) quote the offending packet; [`Repr::parse`] rejects one that
//!   quotes less than an IPv6 header and 8 bytes.
//! - NDP options are walked by [`NdiscOptions`]: an option of length 0 or running past the
//!   message is `Malformed` (RFC 4861 section 4.6: such packets are discarded). The `Repr` keeps
//!   only the link-layer address option; other options are dropped on a parse/emit round trip.
//! - Unknown types and codes are values (`Unknown(u8)`); unmodelled messages are
//!   [`Repr::Other`]. Checksums are never verified implicitly; rewrites patch them
//!   incrementally (RFC 1624).

use core::ops::BitOr;
use std::net::Ipv6Addr;

use super::bytes::{get_u16, get_u32, set_u16, set_u32};
use super::checksum;
use super::checksum::write_with_checksum_update;
use super::ip::Protocol;
use super::u8_enum;
use super::{Error, Result};
use crate::types::MacAddr;

u8_enum! {
    /// ICMPv6 message type.
    pub enum Message {
        DstUnreachable = 1,
        PktTooBig = 2,
        TimeExceeded = 3,
        ParamProblem = 4,
        EchoRequest = 128,
        EchoReply = 129,
        MldQuery = 130,
        MldReport = 131,
        MldDone = 132,
        RouterSolicit = 133,
        RouterAdvert = 134,
        NeighborSolicit = 135,
        NeighborAdvert = 136,
        Redirect = 137,
        MldReportV2 = 143,
    }
}

impl Message {
    /// True for error messages: RFC 4443 section 2.1 reserves types 0 to 127 for them.
    #[inline]
    pub fn is_error(self) -> bool {
        u8::from(self) & 0x80 == 0
    }

    /// True for the Neighbor Discovery messages this module models (NS, NA).
    #[inline]
    pub fn is_ndisc(self) -> bool {
        matches!(self, Message::NeighborSolicit | Message::NeighborAdvert)
    }
}

u8_enum! {
    /// Destination Unreachable codes (RFC 4443 section 3.1).
    pub enum DstUnreachable {
        NoRoute = 0,
        /// Communication administratively prohibited: what a policy drop answers with.
        AdminProhibited = 1,
        BeyondScope = 2,
        AddrUnreachable = 3,
        PortUnreachable = 4,
        FailedPolicy = 5,
        RejectRoute = 6,
    }
}

u8_enum! {
    /// Time Exceeded codes.
    pub enum TimeExceeded {
        HopLimitExceeded = 0,
        FragReassemblyExceeded = 1,
    }
}

u8_enum! {
    /// Parameter Problem codes.
    pub enum ParamProblem {
        ErroneousHeaderField = 0,
        UnrecognizedNextHeader = 1,
        UnrecognizedOption = 2,
    }
}

/// Byte offsets of the header fields. The word after the checksum depends on the type.
mod field {
    use crate::wire::Field;

    pub const TYPE: Field = 0..1;
    pub const CODE: Field = 1..2;
    pub const CHECKSUM: Field = 2..4;
    /// Echo request/reply.
    pub const ECHO_IDENT: Field = 4..6;
    pub const ECHO_SEQ_NO: Field = 6..8;
    /// Packet Too Big.
    pub const MTU: Field = 4..8;
    /// Parameter Problem.
    pub const POINTER: Field = 4..8;
    /// Neighbor Advertisement flags (R, S, O); the rest of the word is reserved.
    pub const NA_FLAGS: Field = 4..5;
    /// The type-specific word, whatever the type.
    pub const REST_OF_HEADER: Field = 4..8;
    /// Target address of NS and NA.
    pub const TARGET: Field = 8..24;
}

/// Length of the header common to every message.
pub const HEADER_LEN: usize = field::REST_OF_HEADER.end;
/// Length of the NS/NA header (common header and target address); options follow.
pub const NDISC_HEADER_LEN: usize = field::TARGET.end;
/// Least an error must quote for the dataplane to match it to a flow: an IPv6 header and the
/// first 8 bytes after it.
pub const MIN_QUOTED_LEN: usize = 40 + 8;
/// NDP option type of the Source Link-Layer Address (sent in NS).
pub const NDISC_OPTION_SOURCE_LLADDR: u8 = 1;
/// NDP option type of the Target Link-Layer Address (sent in NA).
pub const NDISC_OPTION_TARGET_LLADDR: u8 = 2;
/// Length of an Ethernet link-layer address option (one 8-byte unit).
pub const LLADDR_OPTION_LEN: usize = 8;

/// Length as the pseudo-header wants it (saturating; frames are far below 4 GiB).
#[inline]
fn len_u32(len: usize) -> u32 {
    u32::try_from(len).unwrap_or(u32::MAX)
}

/// Neighbor Advertisement flags (RFC 4861 section 4.4). Only the three defined bits are kept.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct NeighborFlags(u8);

impl NeighborFlags {
    pub const NONE: NeighborFlags = NeighborFlags(0);
    /// The sender is a router.
    pub const ROUTER: NeighborFlags = NeighborFlags(0x80);
    /// Sent in response to a Neighbor Solicitation.
    pub const SOLICITED: NeighborFlags = NeighborFlags(0x40);
    /// Override an existing cache entry.
    pub const OVERRIDE: NeighborFlags = NeighborFlags(0x20);
    const DEFINED: u8 = 0xe0;

    /// Builds flags from the first byte of the NA word; reserved bits are dropped.
    #[inline]
    pub const fn from_bits_truncate(bits: u8) -> NeighborFlags {
        NeighborFlags(bits & Self::DEFINED)
    }

    #[inline]
    pub const fn bits(self) -> u8 {
        self.0
    }

    #[inline]
    pub const fn contains(self, other: NeighborFlags) -> bool {
        self.0 & other.0 == other.0
    }
}

impl BitOr for NeighborFlags {
    type Output = NeighborFlags;
    #[inline]
    fn bitor(self, rhs: NeighborFlags) -> NeighborFlags {
        NeighborFlags(self.0 | rhs.0)
    }
}

/// One NDP option: its type and its data (after the type and length bytes, padding included).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NdiscOption<'a> {
    pub type_: u8,
    pub data: &'a [u8],
}

/// Iterator over NDP options. Yields `Err(Malformed)` once, then stops, for an option of
/// length 0 or one running past the message.
#[derive(Debug, Clone)]
pub struct NdiscOptions<'a> {
    rest: &'a [u8],
}

impl<'a> NdiscOptions<'a> {
    /// Walks the options in `bytes` (the part of an NS/NA after the target address).
    pub fn new(bytes: &'a [u8]) -> NdiscOptions<'a> {
        NdiscOptions { rest: bytes }
    }

    fn split_first(bytes: &'a [u8]) -> Result<(NdiscOption<'a>, &'a [u8])> {
        let [type_, units] = *bytes.get(..2).ok_or(Error::Malformed)? else {
            return Err(Error::Malformed);
        };
        // RFC 4861 section 4.6: the length counts 8-byte units and 0 is invalid.
        if units == 0 {
            return Err(Error::Malformed);
        }
        let len = usize::from(units) * 8;
        let data = bytes.get(2..len).ok_or(Error::Malformed)?;
        let rest = bytes.get(len..).ok_or(Error::Malformed)?;
        Ok((NdiscOption { type_, data }, rest))
    }
}

impl<'a> Iterator for NdiscOptions<'a> {
    type Item = Result<NdiscOption<'a>>;

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

/// A read/write view of an ICMPv6 message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Icmpv6Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Icmpv6Packet<T> {
    /// Wraps a buffer without any check; accessors may panic on a short buffer.
    #[inline]
    pub const fn new_unchecked(buffer: T) -> Icmpv6Packet<T> {
        Icmpv6Packet { buffer }
    }

    /// Wraps a buffer and checks it with [`check_len`](Self::check_len).
    #[inline]
    pub fn new_checked(buffer: T) -> Result<Icmpv6Packet<T>> {
        let packet = Self::new_unchecked(buffer);
        packet.check_len()?;
        Ok(packet)
    }

    /// Checks that the 8-byte header fits, and for NS/NA the target address (`Truncated`).
    #[inline]
    pub fn check_len(&self) -> Result<()> {
        let len = self.buffer.as_ref().len();
        if len < HEADER_LEN || len < self.header_len() {
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
    pub fn msg_type(&self) -> Message {
        Message::from(self.buffer.as_ref()[field::TYPE.start])
    }

    #[inline]
    pub fn msg_code(&self) -> u8 {
        self.buffer.as_ref()[field::CODE.start]
    }

    /// True for an error message (it quotes an offending packet, see [`quoted`](Self::quoted)).
    #[inline]
    pub fn is_error(&self) -> bool {
        self.msg_type().is_error()
    }

    #[inline]
    pub fn checksum(&self) -> u16 {
        get_u16(self.buffer.as_ref(), field::CHECKSUM)
    }

    /// Header length for this type: 24 for NS/NA (target included), else 8.
    #[inline]
    pub fn header_len(&self) -> usize {
        if self.msg_type().is_ndisc() {
            NDISC_HEADER_LEN
        } else {
            HEADER_LEN
        }
    }

    #[inline]
    pub fn echo_ident(&self) -> u16 {
        get_u16(self.buffer.as_ref(), field::ECHO_IDENT)
    }

    #[inline]
    pub fn echo_seq_no(&self) -> u16 {
        get_u16(self.buffer.as_ref(), field::ECHO_SEQ_NO)
    }

    /// MTU of a Packet Too Big message.
    #[inline]
    pub fn mtu(&self) -> u32 {
        get_u32(self.buffer.as_ref(), field::MTU)
    }

    /// Octet offset of the problem in the quoted packet (Parameter Problem).
    #[inline]
    pub fn pointer(&self) -> u32 {
        get_u32(self.buffer.as_ref(), field::POINTER)
    }

    /// Neighbor Advertisement flags.
    #[inline]
    pub fn neighbor_flags(&self) -> NeighborFlags {
        NeighborFlags::from_bits_truncate(self.buffer.as_ref()[field::NA_FLAGS.start])
    }

    /// The type-specific word after the checksum.
    #[inline]
    pub fn rest_of_header(&self) -> [u8; 4] {
        let d = self.buffer.as_ref();
        let s = field::REST_OF_HEADER.start;
        [d[s], d[s + 1], d[s + 2], d[s + 3]]
    }

    /// Target address of an NS or NA; `None` for other types.
    #[inline]
    pub fn target_addr(&self) -> Option<Ipv6Addr> {
        if !self.msg_type().is_ndisc() {
            return None;
        }
        let bytes: [u8; 16] = self.buffer.as_ref().get(field::TARGET)?.try_into().ok()?;
        Some(Ipv6Addr::from(bytes))
    }

    /// Everything after the type's header: echo data, an error's quoted packet, or the NDP
    /// options of NS/NA.
    #[inline]
    pub fn payload(&self) -> &[u8] {
        self.buffer
            .as_ref()
            .get(self.header_len()..)
            .unwrap_or_default()
    }

    /// The quoted packet of an error message (IPv6 header and what follows). The same bytes as
    /// [`payload`](Self::payload); meaningful when `msg_type().is_error()`.
    #[inline]
    pub fn quoted(&self) -> &[u8] {
        self.payload()
    }

    /// The NDP options of an NS/NA (empty for other types).
    #[inline]
    pub fn ndisc_options(&self) -> NdiscOptions<'_> {
        let bytes = if self.msg_type().is_ndisc() {
            self.payload()
        } else {
            &[]
        };
        NdiscOptions::new(bytes)
    }

    /// The first Ethernet link-layer address option of type `kind`
    /// ([`NDISC_OPTION_SOURCE_LLADDR`] or [`NDISC_OPTION_TARGET_LLADDR`]). `Malformed` when the
    /// option list is, or when that option's length is not one unit (not an Ethernet address).
    pub fn lladdr_option(&self, kind: u8) -> Result<Option<MacAddr>> {
        let mut found = None;
        for option in self.ndisc_options() {
            let option = option?;
            if option.type_ == kind && found.is_none() {
                if option.data.len() != LLADDR_OPTION_LEN - 2 {
                    return Err(Error::Malformed);
                }
                found = MacAddr::from_bytes(option.data);
            }
        }
        Ok(found)
    }

    /// Source link-layer address option (sent with an NS).
    #[inline]
    pub fn source_lladdr(&self) -> Result<Option<MacAddr>> {
        self.lladdr_option(NDISC_OPTION_SOURCE_LLADDR)
    }

    /// Target link-layer address option (sent with an NA).
    #[inline]
    pub fn target_lladdr(&self) -> Result<Option<MacAddr>> {
        self.lladdr_option(NDISC_OPTION_TARGET_LLADDR)
    }

    fn sum(&self, src: Ipv6Addr, dst: Ipv6Addr) -> u32 {
        let data = self.buffer.as_ref();
        let pseudo =
            checksum::pseudo_header_v6(src, dst, Protocol::Icmpv6.number(), len_u32(data.len()));
        checksum::sum(data, pseudo)
    }

    /// True when the checksum verifies over the IPv6 pseudo-header and the whole message.
    pub fn verify_checksum(&self, src: Ipv6Addr, dst: Ipv6Addr) -> bool {
        checksum::finish(self.sum(src, dst)) == 0
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Icmpv6Packet<T> {
    #[inline]
    pub fn set_msg_type(&mut self, message: Message) {
        self.buffer.as_mut()[field::TYPE.start] = message.into();
    }

    #[inline]
    pub fn set_msg_code(&mut self, code: u8) {
        self.buffer.as_mut()[field::CODE.start] = code;
    }

    #[inline]
    pub fn set_checksum(&mut self, check: u16) {
        set_u16(self.buffer.as_mut(), field::CHECKSUM, check);
    }

    #[inline]
    pub fn set_echo_ident(&mut self, ident: u16) {
        set_u16(self.buffer.as_mut(), field::ECHO_IDENT, ident);
    }

    #[inline]
    pub fn set_echo_seq_no(&mut self, seq_no: u16) {
        set_u16(self.buffer.as_mut(), field::ECHO_SEQ_NO, seq_no);
    }

    #[inline]
    pub fn set_mtu(&mut self, mtu: u32) {
        set_u32(self.buffer.as_mut(), field::MTU, mtu);
    }

    #[inline]
    pub fn set_pointer(&mut self, pointer: u32) {
        set_u32(self.buffer.as_mut(), field::POINTER, pointer);
    }

    /// Writes the NA flags byte (the reserved bits of that byte become zero).
    #[inline]
    pub fn set_neighbor_flags(&mut self, flags: NeighborFlags) {
        self.buffer.as_mut()[field::NA_FLAGS.start] = flags.bits();
    }

    #[inline]
    pub fn set_rest_of_header(&mut self, rest: [u8; 4]) {
        self.buffer.as_mut()[field::REST_OF_HEADER].copy_from_slice(&rest);
    }

    /// Writes the NS/NA target address; `Truncated` when the buffer is shorter than 24 bytes.
    #[inline]
    pub fn set_target_addr(&mut self, addr: Ipv6Addr) -> Result<()> {
        let target = self
            .buffer
            .as_mut()
            .get_mut(field::TARGET)
            .ok_or(Error::Truncated)?;
        target.copy_from_slice(&addr.octets());
        Ok(())
    }

    /// The payload (see [`payload`](Icmpv6Packet::payload)), writable.
    #[inline]
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let start = self.header_len();
        self.buffer.as_mut().get_mut(start..).unwrap_or_default()
    }

    /// Computes and stores the checksum over the IPv6 pseudo-header and the whole message.
    pub fn fill_checksum(&mut self, src: Ipv6Addr, dst: Ipv6Addr) {
        self.set_checksum(0);
        let check = checksum::finish(self.sum(src, dst));
        self.set_checksum(check);
    }

    /// Patches the checksum after the IPv6 header's source or destination address changed from
    /// `old` to `new` (the pseudo-header covers it). Call once per rewritten address.
    #[inline]
    pub fn update_checksum_for_addr(&mut self, old: Ipv6Addr, new: Ipv6Addr) {
        let check = checksum::update_bytes(self.checksum(), &old.octets(), &new.octets());
        self.set_checksum(check);
    }

    /// Rewrites the echo identifier and patches the checksum incrementally (echo NAT).
    #[inline]
    pub fn set_echo_ident_incremental(&mut self, ident: u16) {
        let old = self.echo_ident();
        self.set_echo_ident(ident);
        self.set_checksum(checksum::update16(self.checksum(), old, ident));
    }

    /// Writes `bytes` at `offset` into the payload (for an error: into the quoted packet) and
    /// patches the checksum incrementally; `offset` may be odd. `Truncated` (and nothing
    /// written) when the range leaves the payload.
    pub fn rewrite_payload_incremental(&mut self, offset: usize, bytes: &[u8]) -> Result<()> {
        let check = self.checksum();
        let start = offset
            .checked_add(self.header_len())
            .ok_or(Error::Truncated)?;
        let check = write_with_checksum_update(self.buffer.as_mut(), start, bytes, check)?;
        self.set_checksum(check);
        Ok(())
    }
}

/// An ICMPv6 message in plain fields. Echo data and quoted packets are not copied (the `Repr`
/// knows their length; the caller uses the view's payload). `Copy` and allocation-free.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Repr {
    EchoRequest {
        ident: u16,
        seq_no: u16,
        data_len: usize,
    },
    EchoReply {
        ident: u16,
        seq_no: u16,
        data_len: usize,
    },
    DstUnreachable {
        reason: DstUnreachable,
        quoted_len: usize,
    },
    PktTooBig {
        mtu: u32,
        quoted_len: usize,
    },
    TimeExceeded {
        reason: TimeExceeded,
        quoted_len: usize,
    },
    ParamProblem {
        reason: ParamProblem,
        pointer: u32,
        quoted_len: usize,
    },
    /// Neighbor Solicitation, with its Source Link-Layer Address option if present.
    NeighborSolicit {
        target: Ipv6Addr,
        lladdr: Option<MacAddr>,
    },
    /// Neighbor Advertisement, with its Target Link-Layer Address option if present.
    NeighborAdvert {
        flags: NeighborFlags,
        target: Ipv6Addr,
        lladdr: Option<MacAddr>,
    },
    /// Any other message, kept as raw type-specific word and data length. `message` is never one
    /// of the types modelled above.
    Other {
        message: Message,
        code: u8,
        rest_of_header: [u8; 4],
        data_len: usize,
    },
}

/// Checks that `quoted` holds an IPv6 header (version 6) and 8 bytes after it.
fn check_quoted(quoted: &[u8]) -> Result<()> {
    let first = *quoted.first().ok_or(Error::Truncated)?;
    if first >> 4 != 6 {
        return Err(Error::Malformed);
    }
    if quoted.len() < MIN_QUOTED_LEN {
        return Err(Error::Truncated);
    }
    Ok(())
}

impl Repr {
    /// Reads a message. Structural only (the checksum is the caller's, see
    /// [`Icmpv6Packet::verify_checksum`]; so are the IP-level NDP checks such as hop limit 255).
    /// Echo, NS and NA with a non-zero code are `Malformed`, as is a multicast NS/NA target or a
    /// bad option list; an error quoting less than an IPv6 header and 8 bytes is `Truncated`.
    pub fn parse<T: AsRef<[u8]>>(packet: &Icmpv6Packet<T>) -> Result<Repr> {
        packet.check_len()?;
        let message = packet.msg_type();
        let code = packet.msg_code();
        let data_len = packet.payload().len();
        let zero_code = || {
            if code == 0 {
                Ok(())
            } else {
                Err(Error::Malformed)
            }
        };
        let target = || -> Result<Ipv6Addr> {
            let target = packet.target_addr().ok_or(Error::Truncated)?;
            if target.is_multicast() {
                Err(Error::Malformed)
            } else {
                Ok(target)
            }
        };
        let quoted_len = || check_quoted(packet.quoted()).map(|()| data_len);
        Ok(match message {
            Message::EchoRequest => {
                zero_code()?;
                Repr::EchoRequest {
                    ident: packet.echo_ident(),
                    seq_no: packet.echo_seq_no(),
                    data_len,
                }
            }
            Message::EchoReply => {
                zero_code()?;
                Repr::EchoReply {
                    ident: packet.echo_ident(),
                    seq_no: packet.echo_seq_no(),
                    data_len,
                }
            }
            Message::DstUnreachable => Repr::DstUnreachable {
                reason: code.into(),
                quoted_len: quoted_len()?,
            },
            Message::PktTooBig => Repr::PktTooBig {
                mtu: packet.mtu(),
                quoted_len: quoted_len()?,
            },
            Message::TimeExceeded => Repr::TimeExceeded {
                reason: code.into(),
                quoted_len: quoted_len()?,
            },
            Message::ParamProblem => Repr::ParamProblem {
                reason: code.into(),
                pointer: packet.pointer(),
                quoted_len: quoted_len()?,
            },
            Message::NeighborSolicit => {
                zero_code()?;
                Repr::NeighborSolicit {
                    target: target()?,
                    lladdr: packet.source_lladdr()?,
                }
            }
            Message::NeighborAdvert => {
                zero_code()?;
                Repr::NeighborAdvert {
                    flags: packet.neighbor_flags(),
                    target: target()?,
                    lladdr: packet.target_lladdr()?,
                }
            }
            message => Repr::Other {
                message,
                code,
                rest_of_header: packet.rest_of_header(),
                data_len,
            },
        })
    }

    /// True for error messages (types below 128).
    #[inline]
    pub fn is_error(&self) -> bool {
        self.message().is_error()
    }

    /// The message type.
    pub fn message(&self) -> Message {
        match *self {
            Repr::EchoRequest { .. } => Message::EchoRequest,
            Repr::EchoReply { .. } => Message::EchoReply,
            Repr::DstUnreachable { .. } => Message::DstUnreachable,
            Repr::PktTooBig { .. } => Message::PktTooBig,
            Repr::TimeExceeded { .. } => Message::TimeExceeded,
            Repr::ParamProblem { .. } => Message::ParamProblem,
            Repr::NeighborSolicit { .. } => Message::NeighborSolicit,
            Repr::NeighborAdvert { .. } => Message::NeighborAdvert,
            Repr::Other { message, .. } => message,
        }
    }

    /// Header length: 24 for NS/NA, else 8.
    #[inline]
    pub fn header_len(&self) -> usize {
        if self.message().is_ndisc() {
            NDISC_HEADER_LEN
        } else {
            HEADER_LEN
        }
    }

    /// The whole message: header, then data, quoted packet or NDP option.
    pub fn buffer_len(&self) -> usize {
        let rest = match *self {
            Repr::EchoRequest { data_len, .. }
            | Repr::EchoReply { data_len, .. }
            | Repr::Other { data_len, .. } => data_len,
            Repr::DstUnreachable { quoted_len, .. }
            | Repr::PktTooBig { quoted_len, .. }
            | Repr::TimeExceeded { quoted_len, .. }
            | Repr::ParamProblem { quoted_len, .. } => quoted_len,
            Repr::NeighborSolicit { lladdr, .. } | Repr::NeighborAdvert { lladdr, .. } => {
                lladdr.map_or(0, |_| LLADDR_OPTION_LEN)
            }
        };
        self.header_len() + rest
    }

    fn code_and_rest(&self) -> (u8, [u8; 4]) {
        let echo_rest = |ident: u16, seq_no: u16| {
            let (i, s) = (ident.to_be_bytes(), seq_no.to_be_bytes());
            [i[0], i[1], s[0], s[1]]
        };
        match *self {
            Repr::EchoRequest { ident, seq_no, .. } | Repr::EchoReply { ident, seq_no, .. } => {
                (0, echo_rest(ident, seq_no))
            }
            Repr::DstUnreachable { reason, .. } => (reason.into(), [0; 4]),
            Repr::PktTooBig { mtu, .. } => (0, mtu.to_be_bytes()),
            Repr::TimeExceeded { reason, .. } => (reason.into(), [0; 4]),
            Repr::ParamProblem {
                reason, pointer, ..
            } => (reason.into(), pointer.to_be_bytes()),
            Repr::NeighborSolicit { .. } => (0, [0; 4]),
            Repr::NeighborAdvert { flags, .. } => (0, [flags.bits(), 0, 0, 0]),
            Repr::Other {
                code,
                rest_of_header,
                ..
            } => (code, rest_of_header),
        }
    }

    /// Writes the header (reserved bytes zero), for NS/NA the target and link-layer address
    /// option, and the checksum over the pseudo-header `src`/`dst`. Echo data or a quoted packet
    /// must already be in the payload, and the buffer must be exactly
    /// [`buffer_len`](Self::buffer_len) long: the checksum covers all of it.
    ///
    /// # Panics
    /// If the buffer is shorter than [`buffer_len`](Self::buffer_len) for NS/NA, or than
    /// [`HEADER_LEN`] otherwise.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(
        &self,
        packet: &mut Icmpv6Packet<T>,
        src: Ipv6Addr,
        dst: Ipv6Addr,
    ) {
        let (code, rest) = self.code_and_rest();
        packet.set_msg_type(self.message());
        packet.set_msg_code(code);
        packet.set_rest_of_header(rest);
        let ndisc = match *self {
            Repr::NeighborSolicit { target, lladdr } => {
                Some((target, lladdr, NDISC_OPTION_SOURCE_LLADDR))
            }
            Repr::NeighborAdvert { target, lladdr, .. } => {
                Some((target, lladdr, NDISC_OPTION_TARGET_LLADDR))
            }
            _ => None,
        };
        if let Some((target, lladdr, kind)) = ndisc {
            let buf = packet.buffer.as_mut();
            buf[field::TARGET].copy_from_slice(&target.octets());
            if let Some(mac) = lladdr {
                let option = &mut buf[NDISC_HEADER_LEN..NDISC_HEADER_LEN + LLADDR_OPTION_LEN];
                option[0] = kind;
                option[1] = 1; // one 8-byte unit
                option[2..].copy_from_slice(mac.as_bytes());
            }
        }
        packet.fill_checksum(src, dst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const HOST1: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1);
    const HOST2: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 2);
    /// Solicited-node multicast address of fd00::2.
    const SOLICITED_NODE2: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 1, 0xff00, 2);
    const ROUTER: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 0xfe);
    const MAC1: MacAddr = MacAddr([0x02, 0, 0, 0, 0, 0x01]);
    const MAC2: MacAddr = MacAddr([0x02, 0, 0, 0, 0, 0x02]);

    // Echo request fd00::1 -> fd00::2, identifier 0x1c46, sequence 1, 32 bytes of Windows ping
    // data. Checksum 0xbead computed by an independent script (Python) over the pseudo-header.
    const ICMPV6_ECHO_REQUEST: [u8; 40] = [
        0x80, 0x00, 0xbe, 0xad, 0x1c, 0x46, 0x00, 0x01, 0x61, 0x62, 0x63, 0x64, 0x65, 0x66, 0x67,
        0x68, 0x69, 0x6a, 0x6b, 0x6c, 0x6d, 0x6e, 0x6f, 0x70, 0x71, 0x72, 0x73, 0x74, 0x75, 0x76,
        0x77, 0x61, 0x62, 0x63, 0x64, 0x65, 0x66, 0x67, 0x68, 0x69,
    ];
    // NS fd00::1 -> ff02::1:ff00:2 for target fd00::2, source lladdr 02:00:00:00:00:01.
    const ICMPV6_NS: [u8; 32] = [
        0x87, 0x00, 0x7d, 0x97, 0x00, 0x00, 0x00, 0x00, 0xfd, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x02, 0x01, 0x01, 0x02, 0x00, 0x00, 0x00,
        0x00, 0x01,
    ];
    // NA fd00::2 -> fd00::1, flags S|O, target fd00::2, target lladdr 02:00:00:00:00:02.
    const ICMPV6_NA: [u8; 32] = [
        0x88, 0x00, 0x1c, 0x9a, 0x60, 0x00, 0x00, 0x00, 0xfd, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x02, 0x02, 0x01, 0x02, 0x00, 0x00, 0x00,
        0x00, 0x02,
    ];
    // Packet Too Big (MTU 1280) fd00::fe -> fd00::1 quoting an IPv6 header fd00::1 -> fd00::53
    // (UDP, payload length 108, hop limit 64) and its UDP header 40000 -> 53.
    const ICMPV6_PACKET_TOO_BIG: [u8; 56] = [
        0x02, 0x00, 0x35, 0xb9, 0x00, 0x00, 0x05, 0x00, 0x60, 0x00, 0x00, 0x00, 0x00, 0x6c, 0x11,
        0x40, 0xfd, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x00, 0x01, 0xfd, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x53, 0x9c, 0x40, 0x00, 0x35, 0x00, 0x6c, 0xbe, 0xef,
    ];

    /// The goldens with their pseudo-header addresses.
    fn goldens() -> [(&'static [u8], Ipv6Addr, Ipv6Addr); 4] {
        [
            (&ICMPV6_ECHO_REQUEST, HOST1, HOST2),
            (&ICMPV6_NS, HOST1, SOLICITED_NODE2),
            (&ICMPV6_NA, HOST2, HOST1),
            (&ICMPV6_PACKET_TOO_BIG, ROUTER, HOST1),
        ]
    }

    fn parse(bytes: &[u8], src: Ipv6Addr, dst: Ipv6Addr) -> Result<Repr> {
        let packet = Icmpv6Packet::new_checked(bytes)?;
        if !packet.verify_checksum(src, dst) {
            return Err(Error::Checksum);
        }
        Repr::parse(&packet)
    }

    #[test]
    fn echo_request_fields() {
        let p = Icmpv6Packet::new_checked(&ICMPV6_ECHO_REQUEST[..]).unwrap();
        assert_eq!(p.msg_type(), Message::EchoRequest);
        assert!(!p.msg_type().is_error());
        assert_eq!(p.echo_ident(), 0x1c46);
        assert_eq!(p.echo_seq_no(), 1);
        assert_eq!(p.payload(), b"abcdefghijklmnopqrstuvwabcdefghi");
        assert_eq!(p.target_addr(), None);
        assert!(p.verify_checksum(HOST1, HOST2));
        assert!(!p.verify_checksum(HOST1, ROUTER));
        assert_eq!(
            parse(&ICMPV6_ECHO_REQUEST, HOST1, HOST2),
            Ok(Repr::EchoRequest {
                ident: 0x1c46,
                seq_no: 1,
                data_len: 32
            })
        );
    }

    #[test]
    fn neighbor_solicit_and_advert_fields() {
        let ns = Icmpv6Packet::new_checked(&ICMPV6_NS[..]).unwrap();
        assert_eq!(ns.msg_type(), Message::NeighborSolicit);
        assert_eq!(ns.header_len(), NDISC_HEADER_LEN);
        assert_eq!(ns.target_addr(), Some(HOST2));
        assert_eq!(ns.source_lladdr(), Ok(Some(MAC1)));
        assert_eq!(ns.target_lladdr(), Ok(None));
        assert_eq!(
            parse(&ICMPV6_NS, HOST1, SOLICITED_NODE2),
            Ok(Repr::NeighborSolicit {
                target: HOST2,
                lladdr: Some(MAC1)
            })
        );

        let na = Icmpv6Packet::new_checked(&ICMPV6_NA[..]).unwrap();
        assert_eq!(
            na.neighbor_flags(),
            NeighborFlags::SOLICITED | NeighborFlags::OVERRIDE
        );
        assert!(!na.neighbor_flags().contains(NeighborFlags::ROUTER));
        assert_eq!(na.target_lladdr(), Ok(Some(MAC2)));
        assert_eq!(
            parse(&ICMPV6_NA, HOST2, HOST1),
            Ok(Repr::NeighborAdvert {
                flags: NeighborFlags::SOLICITED | NeighborFlags::OVERRIDE,
                target: HOST2,
                lladdr: Some(MAC2)
            })
        );
    }

    #[test]
    fn packet_too_big_fields() {
        let p = Icmpv6Packet::new_checked(&ICMPV6_PACKET_TOO_BIG[..]).unwrap();
        assert!(p.msg_type().is_error());
        assert_eq!(p.mtu(), 1280);
        assert_eq!(p.quoted().len(), 48);
        assert_eq!(&p.quoted()[8..24], &HOST1.octets());
        let repr = parse(&ICMPV6_PACKET_TOO_BIG, ROUTER, HOST1).unwrap();
        assert_eq!(
            repr,
            Repr::PktTooBig {
                mtu: 1280,
                quoted_len: 48
            }
        );
        assert!(repr.is_error());
    }

    /// The gateway's answer to an NS, built the way the dataplane will build it.
    #[test]
    fn answer_neighbor_solicitation() {
        let Repr::NeighborSolicit { target, .. } =
            parse(&ICMPV6_NS, HOST1, SOLICITED_NODE2).unwrap()
        else {
            panic!("not an NS");
        };
        let answer = Repr::NeighborAdvert {
            flags: NeighborFlags::SOLICITED | NeighborFlags::OVERRIDE,
            target,
            lladdr: Some(MAC2),
        };
        let mut buf = vec![0u8; answer.buffer_len()];
        answer.emit(
            &mut Icmpv6Packet::new_unchecked(&mut buf[..]),
            target,
            HOST1,
        );
        assert_eq!(buf, ICMPV6_NA);
    }

    #[test]
    fn parse_emit_round_trip_is_byte_exact() {
        for (golden, src, dst) in goldens() {
            let repr = parse(golden, src, dst).unwrap();
            assert_eq!(repr.buffer_len(), golden.len());
            let mut out = vec![0xeeu8; golden.len()];
            out[repr.header_len()..].copy_from_slice(&golden[repr.header_len()..]);
            repr.emit(&mut Icmpv6Packet::new_unchecked(&mut out[..]), src, dst);
            assert_eq!(out, golden);
        }
    }

    #[test]
    fn every_truncation_is_an_error() {
        for (golden, src, dst) in goldens() {
            for n in 0..golden.len() {
                assert!(parse(&golden[..n], src, dst).is_err(), "{n}");
            }
        }
        // Structurally (without the checksum) truncated NS/NA and errors are caught, except
        // an NS/NA cut right after the target: a valid message without options.
        for golden in [&ICMPV6_NS[..], &ICMPV6_NA, &ICMPV6_PACKET_TOO_BIG] {
            for n in 0..golden.len() {
                let p = Icmpv6Packet::new_unchecked(&golden[..n]);
                let valid_without_options = golden[0] != 2 && n == NDISC_HEADER_LEN;
                assert_eq!(Repr::parse(&p).is_err(), !valid_without_options, "{n}");
            }
        }
    }

    #[test]
    fn malformed_ndisc() {
        let parse_ns = |bytes: &[u8]| Repr::parse(&Icmpv6Packet::new_unchecked(bytes));
        let mut bytes = ICMPV6_NS;
        bytes[25] = 0; // option length 0
        assert_eq!(parse_ns(&bytes), Err(Error::Malformed));
        bytes[25] = 2; // option runs past the message
        assert_eq!(parse_ns(&bytes), Err(Error::Malformed));
        let mut bytes = ICMPV6_NS;
        bytes[1] = 1; // non-zero code
        assert_eq!(parse_ns(&bytes), Err(Error::Malformed));
        let mut bytes = ICMPV6_NS;
        bytes[8] = 0xff; // multicast target
        assert_eq!(parse_ns(&bytes), Err(Error::Malformed));
        // Other options are skipped; an NS without an option has no lladdr.
        let mut bytes = ICMPV6_NS;
        bytes[24] = 14; // nonce option (RFC 3971), ignored
        assert_eq!(
            parse_ns(&bytes),
            Ok(Repr::NeighborSolicit {
                target: HOST2,
                lladdr: None
            })
        );
        assert_eq!(
            parse_ns(&ICMPV6_NS[..24]),
            Ok(Repr::NeighborSolicit {
                target: HOST2,
                lladdr: None
            })
        );
    }

    #[test]
    fn quoted_must_be_ipv6_with_eight_bytes() {
        let mut bytes = ICMPV6_PACKET_TOO_BIG;
        bytes[8] = 0x45;
        let p = Icmpv6Packet::new_unchecked(&bytes[..]);
        assert_eq!(Repr::parse(&p), Err(Error::Malformed));
    }

    #[test]
    fn nat_updates_equal_recompute_on_golden() {
        // The flow fd00::1 -> fd00::53 was DNATed from a VIP: restore the VIP in the quoted
        // header, and the outer destination moves too.
        let vip = Ipv6Addr::new(0xfd00, 0x96, 0, 0, 0, 0, 0, 0x10);
        let new_dst = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 0x99);
        let mut bytes = ICMPV6_PACKET_TOO_BIG;
        let mut p = Icmpv6Packet::new_unchecked(&mut bytes[..]);
        p.rewrite_payload_incremental(24, &vip.octets()).unwrap();
        p.update_checksum_for_addr(HOST1, new_dst);
        assert!(p.verify_checksum(ROUTER, new_dst));
        let mut bytes = ICMPV6_ECHO_REQUEST;
        let mut p = Icmpv6Packet::new_unchecked(&mut bytes[..]);
        p.set_echo_ident_incremental(0x4242);
        assert!(p.verify_checksum(HOST1, HOST2));
    }

    #[test]
    fn type_dependent_accessors_do_not_panic_after_type_change() {
        let mut bytes = ICMPV6_ECHO_REQUEST;
        let mut p = Icmpv6Packet::new_checked(&mut bytes[..12]).unwrap();
        p.set_msg_type(Message::NeighborSolicit);
        assert_eq!(p.target_addr(), None);
        assert!(p.payload().is_empty());
        assert!(p.payload_mut().is_empty());
        assert_eq!(p.set_target_addr(HOST1), Err(Error::Truncated));
        assert!(Repr::parse(&p).is_err());
    }

    fn arb_mac() -> impl Strategy<Value = Option<MacAddr>> {
        proptest::option::of(any::<[u8; 6]>().prop_map(MacAddr))
    }

    fn arb_unicast() -> impl Strategy<Value = Ipv6Addr> {
        any::<[u8; 16]>()
            .prop_map(Ipv6Addr::from)
            .prop_filter("NS/NA targets are unicast", |a| !a.is_multicast())
    }

    fn arb_repr() -> impl Strategy<Value = Repr> {
        let len = 0usize..64;
        let quoted = MIN_QUOTED_LEN..96;
        prop_oneof![
            (any::<u16>(), any::<u16>(), len.clone()).prop_map(|(ident, seq_no, data_len)| {
                Repr::EchoRequest {
                    ident,
                    seq_no,
                    data_len,
                }
            }),
            (any::<u16>(), any::<u16>(), len.clone()).prop_map(|(ident, seq_no, data_len)| {
                Repr::EchoReply {
                    ident,
                    seq_no,
                    data_len,
                }
            }),
            (any::<u8>(), quoted.clone()).prop_map(|(code, quoted_len)| {
                Repr::DstUnreachable {
                    reason: code.into(),
                    quoted_len,
                }
            }),
            (any::<u32>(), quoted.clone())
                .prop_map(|(mtu, quoted_len)| Repr::PktTooBig { mtu, quoted_len }),
            (any::<u8>(), quoted.clone()).prop_map(|(code, quoted_len)| {
                Repr::TimeExceeded {
                    reason: code.into(),
                    quoted_len,
                }
            }),
            (any::<u8>(), any::<u32>(), quoted).prop_map(|(code, pointer, quoted_len)| {
                Repr::ParamProblem {
                    reason: code.into(),
                    pointer,
                    quoted_len,
                }
            }),
            (arb_unicast(), arb_mac())
                .prop_map(|(target, lladdr)| Repr::NeighborSolicit { target, lladdr }),
            (any::<u8>(), arb_unicast(), arb_mac()).prop_map(|(flags, target, lladdr)| {
                Repr::NeighborAdvert {
                    flags: NeighborFlags::from_bits_truncate(flags),
                    target,
                    lladdr,
                }
            }),
            (any::<u8>(), any::<u8>(), any::<[u8; 4]>(), len)
                .prop_filter("modelled types are not Other", |(t, ..)| {
                    ![1, 2, 3, 4, 128, 129, 135, 136].contains(t)
                })
                .prop_map(|(t, code, rest_of_header, data_len)| Repr::Other {
                    message: t.into(),
                    code,
                    rest_of_header,
                    data_len,
                }),
        ]
    }

    proptest! {
        #[test]
        fn repr_round_trip(repr in arb_repr(), fill in any::<u8>(),
                           src in any::<[u8; 16]>(), dst in any::<[u8; 16]>()) {
            let (src, dst) = (Ipv6Addr::from(src), Ipv6Addr::from(dst));
            let mut buf = vec![fill; repr.buffer_len()];
            if repr.is_error() && repr.buffer_len() > HEADER_LEN {
                buf[HEADER_LEN] = 0x60;
            }
            repr.emit(&mut Icmpv6Packet::new_unchecked(&mut buf[..]), src, dst);
            prop_assert_eq!(parse(&buf, src, dst), Ok(repr));
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64),
                                       ndisc in any::<bool>()) {
            let mut bytes = bytes;
            if ndisc && !bytes.is_empty() {
                bytes[0] = 135; // exercise the option walk often
            }
            if let Ok(p) = Icmpv6Packet::new_checked(&bytes[..]) {
                let _ = (p.msg_type(), p.msg_code(), p.checksum(), p.echo_ident(), p.echo_seq_no());
                let _ = (p.mtu(), p.pointer(), p.neighbor_flags(), p.rest_of_header());
                let _ = (p.target_addr(), p.quoted(), p.source_lladdr(), p.target_lladdr());
                let _ = p.ndisc_options().count();
                let _ = (p.verify_checksum(HOST1, HOST2), Repr::parse(&p));
            } else {
                prop_assert!(Repr::parse(&Icmpv6Packet::new_unchecked(&bytes[..])).is_err());
            }
        }

        #[test]
        fn incremental_updates_equal_recompute(
            mut bytes in proptest::collection::vec(any::<u8>(), HEADER_LEN..80),
            src in any::<[u8; 16]>(), dst in any::<[u8; 16]>(), new_dst in any::<[u8; 16]>(),
            offset in 0usize..80,
            new in proptest::collection::vec(any::<u8>(), 0..24),
            ident in any::<u16>(),
        ) {
            bytes[0] = 129; // an echo reply: 8-byte header
            let (src, dst, new_dst) = (Ipv6Addr::from(src), Ipv6Addr::from(dst), Ipv6Addr::from(new_dst));
            let mut p = Icmpv6Packet::new_unchecked(&mut bytes[..]);
            p.fill_checksum(src, dst);
            let fits = offset + new.len() <= p.payload().len();
            prop_assert_eq!(p.rewrite_payload_incremental(offset, &new).is_ok(), fits);
            p.update_checksum_for_addr(dst, new_dst);
            p.set_echo_ident_incremental(ident);
            let incremental = p.checksum();
            p.fill_checksum(src, new_dst);
            prop_assert_eq!(incremental, p.checksum());
        }
    }
}
