//! ICMP for IPv4 (RFC 792; RFC 1191 for the next-hop MTU): a zero-copy view and a `Repr` for
//! echo and the error messages the dataplane forwards, rewrites after NAT, or generates.
//!
//! Contract and invariants:
//! - The buffer is exactly one ICMP message (the IP payload). ICMP has no length field: the
//!   checksum covers the whole buffer, without a pseudo-header.
//! - [`Icmpv4Packet::check_len`] only requires the 8-byte header; every accessor reads inside
//!   it, so after [`Icmpv4Packet::new_checked`] succeeds no accessor panics.
//! - Error messages (Destination Unreachable, Time Exceeded, Parameter Problem) quote the
//!   offending datagram: its IP header and at least 8 bytes after it. [`Icmpv4Packet::quoted`]
//!   returns those bytes for the caller to parse with the IPv4 module; [`Repr::parse`]
//!   rejects an error that quotes less than that (version 4, IHL >= 5, IHL*4 + 8 bytes).
//! - Types and codes this module does not name are values (`Unknown(u8)`), and messages it does
//!   not model parse to [`Repr::Other`], never to an error.
//! - Checksums are never verified implicitly. Rewriting bytes inside a message (the quoted
//!   header of an error that follows a NATed flow, an echo identifier) patches the checksum
//!   incrementally (RFC 1624) and gives the same field as a full recompute.

use super::bytes::{get_u16, set_u16};
use super::checksum::{self, write_with_checksum_update};
use super::{u8_enum, Error, Result};

u8_enum! {
    /// ICMP message type.
    pub enum Message {
        EchoReply = 0,
        DstUnreachable = 3,
        /// Deprecated by RFC 6633; not treated as an error by this module.
        SourceQuench = 4,
        Redirect = 5,
        EchoRequest = 8,
        RouterAdvert = 9,
        RouterSolicit = 10,
        TimeExceeded = 11,
        ParamProblem = 12,
        Timestamp = 13,
        TimestampReply = 14,
    }
}

impl Message {
    /// True for the error messages this module models, which quote an offending datagram.
    #[inline]
    pub fn is_error(self) -> bool {
        matches!(
            self,
            Message::DstUnreachable | Message::TimeExceeded | Message::ParamProblem
        )
    }
}

u8_enum! {
    /// Destination Unreachable codes (RFC 792, RFC 1122, RFC 1812).
    pub enum DstUnreachable {
        NetUnreachable = 0,
        HostUnreachable = 1,
        ProtoUnreachable = 2,
        PortUnreachable = 3,
        /// Fragmentation needed and DF set: carries the next-hop MTU (RFC 1191).
        FragRequired = 4,
        SrcRouteFailed = 5,
        DstNetUnknown = 6,
        DstHostUnknown = 7,
        SrcHostIsolated = 8,
        NetProhibited = 9,
        HostProhibited = 10,
        NetUnreachToS = 11,
        HostUnreachToS = 12,
        /// Communication administratively prohibited: what a policy drop answers with.
        CommProhibited = 13,
        HostPrecedenceViolation = 14,
        PrecedenceCutoff = 15,
    }
}

u8_enum! {
    /// Time Exceeded codes.
    pub enum TimeExceeded {
        TtlExpired = 0,
        FragReassemblyExpired = 1,
    }
}

u8_enum! {
    /// Parameter Problem codes (RFC 792, RFC 1108).
    pub enum ParamProblem {
        AtPointer = 0,
        MissingOption = 1,
        BadLength = 2,
    }
}

/// Byte offsets of the header fields. The four bytes after the checksum depend on the type.
mod field {
    use crate::wire::{Field, Rest};

    pub const TYPE: Field = 0..1;
    pub const CODE: Field = 1..2;
    pub const CHECKSUM: Field = 2..4;
    /// Echo request/reply.
    pub const ECHO_IDENT: Field = 4..6;
    pub const ECHO_SEQ_NO: Field = 6..8;
    /// Destination Unreachable / Fragmentation Needed (RFC 1191); bytes 4..6 are unused.
    pub const NEXT_HOP_MTU: Field = 6..8;
    /// Parameter Problem; bytes 5..8 are unused.
    pub const POINTER: Field = 4..5;
    /// The type-specific word, whatever the type.
    pub const REST_OF_HEADER: Field = 4..8;
    /// Echo data, or the quoted datagram of an error.
    pub const DATA: Rest = 8..;
}

/// Length of the header common to every message.
pub const HEADER_LEN: usize = field::REST_OF_HEADER.end;
/// Least an error must quote for the dataplane to match it to a flow: a minimal IPv4 header and
/// the first 8 bytes of its payload (ports of TCP/UDP).
pub const MIN_QUOTED_LEN: usize = 20 + 8;

/// A read/write view of an ICMP message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Icmpv4Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Icmpv4Packet<T> {
    /// Wraps a buffer without any check; accessors may panic on a short buffer.
    #[inline]
    pub const fn new_unchecked(buffer: T) -> Icmpv4Packet<T> {
        Icmpv4Packet { buffer }
    }

    /// Wraps a buffer and checks it with [`check_len`](Self::check_len).
    #[inline]
    pub fn new_checked(buffer: T) -> Result<Icmpv4Packet<T>> {
        let packet = Self::new_unchecked(buffer);
        packet.check_len()?;
        Ok(packet)
    }

    /// Checks that the 8-byte header fits (`Truncated`).
    #[inline]
    pub fn check_len(&self) -> Result<()> {
        if self.buffer.as_ref().len() < HEADER_LEN {
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

    /// Echo identifier (the "port" a NAT rewrites for echo).
    #[inline]
    pub fn echo_ident(&self) -> u16 {
        get_u16(self.buffer.as_ref(), field::ECHO_IDENT)
    }

    #[inline]
    pub fn echo_seq_no(&self) -> u16 {
        get_u16(self.buffer.as_ref(), field::ECHO_SEQ_NO)
    }

    /// Next-hop MTU of a Fragmentation Needed message (0 from pre-RFC 1191 routers).
    #[inline]
    pub fn next_hop_mtu(&self) -> u16 {
        get_u16(self.buffer.as_ref(), field::NEXT_HOP_MTU)
    }

    /// Octet offset of the problem in the quoted datagram (Parameter Problem).
    #[inline]
    pub fn pointer(&self) -> u8 {
        self.buffer.as_ref()[field::POINTER.start]
    }

    /// The type-specific word after the checksum.
    #[inline]
    pub fn rest_of_header(&self) -> [u8; 4] {
        let d = self.buffer.as_ref();
        let s = field::REST_OF_HEADER.start;
        [d[s], d[s + 1], d[s + 2], d[s + 3]]
    }

    /// Everything after the 8-byte header: echo data, or an error's quoted datagram.
    #[inline]
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[field::DATA]
    }

    /// The quoted datagram of an error message (IPv4 header and the start of its payload).
    /// The same bytes as [`payload`](Self::payload); meaningful when `msg_type().is_error()`.
    #[inline]
    pub fn quoted(&self) -> &[u8] {
        self.payload()
    }

    /// True when the checksum verifies over the whole message.
    pub fn verify_checksum(&self) -> bool {
        checksum::verify(self.buffer.as_ref())
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Icmpv4Packet<T> {
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
    pub fn set_next_hop_mtu(&mut self, mtu: u16) {
        set_u16(self.buffer.as_mut(), field::NEXT_HOP_MTU, mtu);
    }

    #[inline]
    pub fn set_pointer(&mut self, pointer: u8) {
        self.buffer.as_mut()[field::POINTER.start] = pointer;
    }

    #[inline]
    pub fn set_rest_of_header(&mut self, rest: [u8; 4]) {
        self.buffer.as_mut()[field::REST_OF_HEADER].copy_from_slice(&rest);
    }

    /// Echo data or quoted datagram, writable.
    #[inline]
    pub fn payload_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[field::DATA]
    }

    /// Computes and stores the checksum over the whole message.
    pub fn fill_checksum(&mut self) {
        self.set_checksum(0);
        let check = checksum::checksum(self.buffer.as_ref());
        self.set_checksum(check);
    }

    /// Rewrites the echo identifier and patches the checksum incrementally (echo NAT).
    #[inline]
    pub fn set_echo_ident_incremental(&mut self, ident: u16) {
        let old = self.echo_ident();
        self.set_echo_ident(ident);
        self.set_checksum(checksum::update16(self.checksum(), old, ident));
    }

    /// Writes `bytes` at `offset` into the payload (for an error: into the quoted datagram) and
    /// patches the checksum incrementally. This is how the dataplane rewrites the quoted
    /// addresses, ports and inner checksums of an error that follows a NATed flow; `offset` may
    /// be odd. `Truncated` (and nothing written) when the range leaves the payload.
    pub fn rewrite_payload_incremental(&mut self, offset: usize, bytes: &[u8]) -> Result<()> {
        let check = self.checksum();
        let start = offset.checked_add(HEADER_LEN).ok_or(Error::Truncated)?;
        let check = write_with_checksum_update(self.buffer.as_mut(), start, bytes, check)?;
        self.set_checksum(check);
        Ok(())
    }
}

/// An ICMP message in plain fields. Echo data and quoted datagrams are not copied: the `Repr`
/// knows their length, and the caller reads or writes them through the view's payload. `Copy`
/// and allocation-free.
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
        /// Only for [`DstUnreachable::FragRequired`]; 0 otherwise (the field is unused).
        next_hop_mtu: u16,
        quoted_len: usize,
    },
    TimeExceeded {
        reason: TimeExceeded,
        quoted_len: usize,
    },
    ParamProblem {
        reason: ParamProblem,
        pointer: u8,
        quoted_len: usize,
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

/// Checks that `quoted` holds an IPv4 header (version 4, IHL >= 5) and 8 bytes after it.
fn check_quoted(quoted: &[u8]) -> Result<()> {
    let first = *quoted.first().ok_or(Error::Truncated)?;
    if first >> 4 != 4 {
        return Err(Error::Malformed);
    }
    let ihl = usize::from(first & 0x0f) * 4;
    if ihl < 20 {
        return Err(Error::Malformed);
    }
    if quoted.len() < ihl + 8 {
        return Err(Error::Truncated);
    }
    Ok(())
}

impl Repr {
    /// Reads a message. Structural only (the checksum is the caller's, see
    /// [`Icmpv4Packet::verify_checksum`]). Echo with a non-zero code is `Malformed`; an error
    /// quoting less than an IPv4 header and 8 bytes is `Truncated` (`Malformed` when the quoted
    /// bytes are not IPv4).
    pub fn parse<T: AsRef<[u8]>>(packet: &Icmpv4Packet<T>) -> Result<Repr> {
        packet.check_len()?;
        let data_len = packet.payload().len();
        let code = packet.msg_code();
        let echo = |reply: bool| {
            if code != 0 {
                return Err(Error::Malformed);
            }
            let (ident, seq_no) = (packet.echo_ident(), packet.echo_seq_no());
            Ok(if reply {
                Repr::EchoReply {
                    ident,
                    seq_no,
                    data_len,
                }
            } else {
                Repr::EchoRequest {
                    ident,
                    seq_no,
                    data_len,
                }
            })
        };
        match packet.msg_type() {
            Message::EchoRequest => echo(false),
            Message::EchoReply => echo(true),
            Message::DstUnreachable => {
                check_quoted(packet.quoted())?;
                let reason = DstUnreachable::from(code);
                let next_hop_mtu = if reason == DstUnreachable::FragRequired {
                    packet.next_hop_mtu()
                } else {
                    0
                };
                Ok(Repr::DstUnreachable {
                    reason,
                    next_hop_mtu,
                    quoted_len: data_len,
                })
            }
            Message::TimeExceeded => {
                check_quoted(packet.quoted())?;
                Ok(Repr::TimeExceeded {
                    reason: TimeExceeded::from(code),
                    quoted_len: data_len,
                })
            }
            Message::ParamProblem => {
                check_quoted(packet.quoted())?;
                Ok(Repr::ParamProblem {
                    reason: ParamProblem::from(code),
                    pointer: packet.pointer(),
                    quoted_len: data_len,
                })
            }
            message => Ok(Repr::Other {
                message,
                code,
                rest_of_header: packet.rest_of_header(),
                data_len,
            }),
        }
    }

    /// True for the error messages (they quote an offending datagram).
    #[inline]
    pub fn is_error(&self) -> bool {
        matches!(
            self,
            Repr::DstUnreachable { .. } | Repr::TimeExceeded { .. } | Repr::ParamProblem { .. }
        )
    }

    /// The header: always 8 bytes.
    #[inline]
    pub fn header_len(&self) -> usize {
        HEADER_LEN
    }

    /// The whole message: header and data or quoted datagram.
    #[inline]
    pub fn buffer_len(&self) -> usize {
        let data_len = match *self {
            Repr::EchoRequest { data_len, .. }
            | Repr::EchoReply { data_len, .. }
            | Repr::Other { data_len, .. } => data_len,
            Repr::DstUnreachable { quoted_len, .. }
            | Repr::TimeExceeded { quoted_len, .. }
            | Repr::ParamProblem { quoted_len, .. } => quoted_len,
        };
        HEADER_LEN + data_len
    }

    fn type_code_rest(&self) -> (Message, u8, [u8; 4]) {
        let echo_rest = |ident: u16, seq_no: u16| {
            let (i, s) = (ident.to_be_bytes(), seq_no.to_be_bytes());
            [i[0], i[1], s[0], s[1]]
        };
        match *self {
            Repr::EchoRequest { ident, seq_no, .. } => {
                (Message::EchoRequest, 0, echo_rest(ident, seq_no))
            }
            Repr::EchoReply { ident, seq_no, .. } => {
                (Message::EchoReply, 0, echo_rest(ident, seq_no))
            }
            Repr::DstUnreachable {
                reason,
                next_hop_mtu,
                ..
            } => {
                let mtu = if reason == DstUnreachable::FragRequired {
                    next_hop_mtu.to_be_bytes()
                } else {
                    [0, 0]
                };
                (
                    Message::DstUnreachable,
                    reason.into(),
                    [0, 0, mtu[0], mtu[1]],
                )
            }
            Repr::TimeExceeded { reason, .. } => (Message::TimeExceeded, reason.into(), [0; 4]),
            Repr::ParamProblem {
                reason, pointer, ..
            } => (Message::ParamProblem, reason.into(), [pointer, 0, 0, 0]),
            Repr::Other {
                message,
                code,
                rest_of_header,
                ..
            } => (message, code, rest_of_header),
        }
    }

    /// Writes the header (unused bytes zero) and the checksum. The data or quoted datagram must
    /// already be in the payload, and the buffer must be exactly
    /// [`buffer_len`](Self::buffer_len) long: the checksum covers all of it.
    ///
    /// # Panics
    /// If the buffer is shorter than [`HEADER_LEN`].
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut Icmpv4Packet<T>) {
        let (message, code, rest) = self.type_code_rest();
        packet.set_msg_type(message);
        packet.set_msg_code(code);
        packet.set_rest_of_header(rest);
        packet.fill_checksum();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    // Echo request, identifier 0x1c46, sequence 1, 32 bytes "abcdefghijklmnopqrstuvwabcdefghi"
    // (Windows ping's data). Checksum 0x3115 computed by an independent script (Python).
    const ICMP_ECHO_REQUEST: [u8; 40] = [
        0x08, 0x00, 0x31, 0x15, 0x1c, 0x46, 0x00, 0x01, 0x61, 0x62, 0x63, 0x64, 0x65, 0x66, 0x67,
        0x68, 0x69, 0x6a, 0x6b, 0x6c, 0x6d, 0x6e, 0x6f, 0x70, 0x71, 0x72, 0x73, 0x74, 0x75, 0x76,
        0x77, 0x61, 0x62, 0x63, 0x64, 0x65, 0x66, 0x67, 0x68, 0x69,
    ];

    // Port unreachable quoting an IPv4 header 10.0.0.2 -> 10.0.0.53 (UDP, total length 57, id
    // 0x4242, DF, TTL 64, header checksum 0xe43b) and the UDP header 40000 -> 53, length 37,
    // checksum 0x1234. ICMP checksum 0x4e2e computed by an independent script.
    const ICMP_PORT_UNREACHABLE: [u8; 36] = [
        0x03, 0x03, 0x4e, 0x2e, 0x00, 0x00, 0x00, 0x00, 0x45, 0x00, 0x00, 0x39, 0x42, 0x42, 0x40,
        0x00, 0x40, 0x11, 0xe4, 0x3b, 0x0a, 0x00, 0x00, 0x02, 0x0a, 0x00, 0x00, 0x35, 0x9c, 0x40,
        0x00, 0x35, 0x00, 0x25, 0x12, 0x34,
    ];

    fn parse(bytes: &[u8]) -> Result<Repr> {
        let packet = Icmpv4Packet::new_checked(bytes)?;
        if !packet.verify_checksum() {
            return Err(Error::Checksum);
        }
        Repr::parse(&packet)
    }

    #[test]
    fn echo_request_fields() {
        let p = Icmpv4Packet::new_checked(&ICMP_ECHO_REQUEST[..]).unwrap();
        assert_eq!(p.msg_type(), Message::EchoRequest);
        assert_eq!(p.msg_code(), 0);
        assert_eq!(p.checksum(), 0x3115);
        assert_eq!(p.echo_ident(), 0x1c46);
        assert_eq!(p.echo_seq_no(), 1);
        assert_eq!(p.payload(), b"abcdefghijklmnopqrstuvwabcdefghi");
        assert!(p.verify_checksum());
        assert_eq!(
            parse(&ICMP_ECHO_REQUEST),
            Ok(Repr::EchoRequest {
                ident: 0x1c46,
                seq_no: 1,
                data_len: 32
            })
        );
        assert!(!Repr::parse(&p).unwrap().is_error());
    }

    #[test]
    fn port_unreachable_fields() {
        let p = Icmpv4Packet::new_checked(&ICMP_PORT_UNREACHABLE[..]).unwrap();
        assert_eq!(p.msg_type(), Message::DstUnreachable);
        assert!(p.msg_type().is_error());
        assert_eq!(
            DstUnreachable::from(p.msg_code()),
            DstUnreachable::PortUnreachable
        );
        assert!(p.verify_checksum());
        let quoted = p.quoted();
        assert_eq!(quoted.len(), 28);
        assert_eq!(quoted[0], 0x45);
        assert_eq!(&quoted[12..16], &[10, 0, 0, 2]);
        assert!(checksum::verify(&quoted[..20]), "quoted IP header checksum");
        assert_eq!(&quoted[20..24], &[0x9c, 0x40, 0x00, 0x35]);
        let repr = parse(&ICMP_PORT_UNREACHABLE).unwrap();
        assert_eq!(
            repr,
            Repr::DstUnreachable {
                reason: DstUnreachable::PortUnreachable,
                next_hop_mtu: 0,
                quoted_len: 28
            }
        );
        assert!(repr.is_error());
    }

    #[test]
    fn parse_emit_round_trip_is_byte_exact() {
        for golden in [&ICMP_ECHO_REQUEST[..], &ICMP_PORT_UNREACHABLE[..]] {
            let repr = parse(golden).unwrap();
            assert_eq!(repr.buffer_len(), golden.len());
            let mut out = vec![0xeeu8; golden.len()];
            out[HEADER_LEN..].copy_from_slice(&golden[HEADER_LEN..]);
            repr.emit(&mut Icmpv4Packet::new_unchecked(&mut out[..]));
            assert_eq!(out, golden);
        }
    }

    #[test]
    fn every_truncation_is_an_error() {
        for golden in [&ICMP_ECHO_REQUEST[..], &ICMP_PORT_UNREACHABLE[..]] {
            for n in 0..golden.len() {
                assert!(parse(&golden[..n]).is_err(), "{n}");
            }
        }
        // Structurally (without the checksum) a truncated error is still caught.
        for n in 0..ICMP_PORT_UNREACHABLE.len() {
            let p = Icmpv4Packet::new_unchecked(&ICMP_PORT_UNREACHABLE[..n]);
            assert!(Repr::parse(&p).is_err(), "{n}");
        }
    }

    #[test]
    fn quoted_must_be_ipv4_with_eight_bytes() {
        let mut bytes = ICMP_PORT_UNREACHABLE;
        bytes[8] = 0x65; // version 6
        let p = Icmpv4Packet::new_unchecked(&bytes[..]);
        assert_eq!(Repr::parse(&p), Err(Error::Malformed));
        bytes[8] = 0x44; // IHL 4
        let p = Icmpv4Packet::new_unchecked(&bytes[..]);
        assert_eq!(Repr::parse(&p), Err(Error::Malformed));
        bytes[8] = 0x46; // IHL 6: 24 bytes of header, 4 bytes after it
        let p = Icmpv4Packet::new_unchecked(&bytes[..]);
        assert_eq!(Repr::parse(&p), Err(Error::Truncated));
    }

    #[test]
    fn echo_with_nonzero_code_is_malformed() {
        let mut bytes = ICMP_ECHO_REQUEST;
        bytes[1] = 1;
        let p = Icmpv4Packet::new_unchecked(&bytes[..]);
        assert_eq!(Repr::parse(&p), Err(Error::Malformed));
    }

    #[test]
    fn unknown_type_is_other() {
        let mut bytes = ICMP_ECHO_REQUEST;
        bytes[0] = 42;
        bytes[1] = 7;
        let p = Icmpv4Packet::new_unchecked(&bytes[..]);
        let repr = Repr::parse(&p).unwrap();
        assert_eq!(
            repr,
            Repr::Other {
                message: Message::Unknown(42),
                code: 7,
                rest_of_header: [0x1c, 0x46, 0x00, 0x01],
                data_len: 32
            }
        );
        assert!(!repr.is_error());
        assert_eq!(u8::from(Message::from(42)), 42);
        assert_eq!(Message::from(3), Message::DstUnreachable);
    }

    #[test]
    fn frag_needed_carries_mtu() {
        let repr = Repr::DstUnreachable {
            reason: DstUnreachable::FragRequired,
            next_hop_mtu: 1450,
            quoted_len: 28,
        };
        let mut buf = [0u8; 36];
        buf[8..].copy_from_slice(&ICMP_PORT_UNREACHABLE[8..]);
        repr.emit(&mut Icmpv4Packet::new_unchecked(&mut buf[..]));
        assert_eq!(&buf[..2], &[3, 4]);
        assert_eq!(&buf[4..8], &[0, 0, 0x05, 0xaa]);
        assert_eq!(parse(&buf), Ok(repr));
    }

    #[test]
    fn rewrite_quoted_after_nat() {
        // The flow was DNATed 10.0.0.53 -> 10.0.0.99: the error must quote the original.
        let mut bytes = ICMP_PORT_UNREACHABLE;
        let mut p = Icmpv4Packet::new_unchecked(&mut bytes[..]);
        p.rewrite_payload_incremental(16, &[10, 0, 0, 99]).unwrap();
        assert!(p.verify_checksum());
        assert_eq!(&p.quoted()[16..20], &[10, 0, 0, 99]);
        // Odd offset and length.
        p.rewrite_payload_incremental(3, &[0xaa, 0xbb, 0xcc])
            .unwrap();
        assert!(p.verify_checksum());
        // Past the end: an error, and nothing written.
        let before = bytes;
        let mut p = Icmpv4Packet::new_unchecked(&mut bytes[..]);
        assert_eq!(
            p.rewrite_payload_incremental(27, &[1, 2]),
            Err(Error::Truncated)
        );
        assert_eq!(
            p.rewrite_payload_incremental(usize::MAX, &[1]),
            Err(Error::Truncated)
        );
        assert_eq!(bytes, before);
    }

    #[test]
    fn echo_ident_nat() {
        let mut bytes = ICMP_ECHO_REQUEST;
        let mut p = Icmpv4Packet::new_unchecked(&mut bytes[..]);
        p.set_echo_ident_incremental(0x7777);
        assert_eq!(p.echo_ident(), 0x7777);
        assert!(p.verify_checksum());
    }

    fn arb_repr() -> impl Strategy<Value = Repr> {
        let len = 0usize..64;
        let quoted = MIN_QUOTED_LEN..80;
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
            (any::<u8>(), any::<u16>(), quoted.clone()).prop_map(|(code, mtu, quoted_len)| {
                let reason = DstUnreachable::from(code);
                let next_hop_mtu = if reason == DstUnreachable::FragRequired {
                    mtu
                } else {
                    0
                };
                Repr::DstUnreachable {
                    reason,
                    next_hop_mtu,
                    quoted_len,
                }
            }),
            (any::<u8>(), quoted.clone()).prop_map(|(code, quoted_len)| {
                Repr::TimeExceeded {
                    reason: code.into(),
                    quoted_len,
                }
            }),
            (any::<u8>(), any::<u8>(), quoted).prop_map(|(code, pointer, quoted_len)| {
                Repr::ParamProblem {
                    reason: code.into(),
                    pointer,
                    quoted_len,
                }
            }),
            (any::<u8>(), any::<u8>(), any::<[u8; 4]>(), len)
                .prop_filter("modelled types are not Other", |(t, ..)| {
                    ![0, 3, 8, 11, 12].contains(t)
                })
                .prop_map(|(t, code, rest_of_header, data_len)| Repr::Other {
                    message: t.into(),
                    code,
                    rest_of_header,
                    data_len,
                }),
        ]
    }

    /// A buffer for `repr` whose payload is `fill`, with a valid quoted IPv4 header for errors.
    fn buffer_for(repr: &Repr, fill: u8) -> Vec<u8> {
        let mut buf = vec![fill; repr.buffer_len()];
        if repr.is_error() {
            buf[HEADER_LEN] = 0x45;
        }
        buf
    }

    proptest! {
        #[test]
        fn repr_round_trip(repr in arb_repr(), fill in any::<u8>()) {
            let mut buf = buffer_for(&repr, fill);
            repr.emit(&mut Icmpv4Packet::new_unchecked(&mut buf[..]));
            prop_assert_eq!(parse(&buf), Ok(repr));
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            if let Ok(p) = Icmpv4Packet::new_checked(&bytes[..]) {
                let _ = (p.msg_type(), p.msg_code(), p.checksum(), p.echo_ident(), p.echo_seq_no());
                let _ = (p.next_hop_mtu(), p.pointer(), p.rest_of_header(), p.quoted());
                let _ = (p.verify_checksum(), Repr::parse(&p));
            } else {
                prop_assert!(Repr::parse(&Icmpv4Packet::new_unchecked(&bytes[..])).is_err());
            }
        }

        #[test]
        fn incremental_rewrite_equals_recompute(
            mut bytes in proptest::collection::vec(any::<u8>(), HEADER_LEN..80),
            offset in 0usize..80,
            new in proptest::collection::vec(any::<u8>(), 0..24),
        ) {
            let mut p = Icmpv4Packet::new_unchecked(&mut bytes[..]);
            p.fill_checksum();
            let fits = offset + new.len() <= p.payload().len();
            let result = p.rewrite_payload_incremental(offset, &new);
            prop_assert_eq!(result.is_ok(), fits);
            let incremental = p.checksum();
            p.fill_checksum();
            prop_assert_eq!(incremental, p.checksum());
        }
    }
}
