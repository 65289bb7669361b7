//! What conntrack reads of a TCP segment ([`TcpSegment`]) and its flag bits ([`tcp_flag`]):
//! shared by the state machine (`tcp.rs`) and the sequence check (`tcp_window.rs`), and
//! depending on neither, so the entry (which holds the window) and the state machine (which
//! reads the entry's states) import no cycle.

/// TCP flag bits as they sit in byte 13 of the TCP header (the `tcp_flags` argument of
/// [`Conntrack::update`](super::Conntrack::update)): the bits of
/// [`crate::wire::tcp::TcpFlags`], as bytes.
pub(super) mod tcp_flag {
    use crate::wire::tcp::TcpFlags;

    pub const FIN: u8 = TcpFlags::FIN.bits();
    pub const SYN: u8 = TcpFlags::SYN.bits();
    pub const RST: u8 = TcpFlags::RST.bits();
    pub const ACK: u8 = TcpFlags::ACK.bits();
}

/// What conntrack reads of a TCP segment: its flags, and the numbers the sequence check
/// (`tcp_window`) needs. The pipeline fills it from the header; a non-TCP packet passes
/// [`TcpSegment::NONE`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct TcpSegment {
    /// Byte 13 of the header (the bits of [`crate::wire::tcp::TcpFlags`]).
    pub flags: u8,
    /// The window scale option's shift (read from SYNs only).
    pub wscale: Option<u8>,
    /// The advertised window, unscaled, as on the wire.
    pub window: u16,
    pub seq: u32,
    pub ack: u32,
    /// Payload bytes (the segment after its header).
    pub len: u16,
}

impl TcpSegment {
    /// No TCP segment (other protocols), or nothing known about it.
    pub const NONE: TcpSegment = TcpSegment {
        flags: 0,
        wscale: None,
        window: 0,
        seq: 0,
        ack: 0,
        len: 0,
    };
}
