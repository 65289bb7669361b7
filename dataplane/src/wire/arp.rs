//! ARP (RFC 826) for Ethernet and IPv4, the only combination a pod network speaks.
//!
//! Contract:
//! - The view's field offsets assume the Ethernet/IPv4 layout (hardware length 6, protocol
//!   length 4), so [`ArpPacket::check_len`] asks for [`HEADER_LEN`] (28) bytes and every getter
//!   is safe after it; on other layouts the getters read garbage but never panic.
//!   [`Repr::parse`] is where the layout is validated: anything but hardware type 1, protocol
//!   type 0x0800, lengths 6 and 4 is [`Error::Unsupported`].
//! - Unknown operations are values ([`Operation::Unknown`]), not errors.
//! - Bytes after the 28-byte body are Ethernet padding and are ignored.
//!
//! The dataplane answers ARP requests for a pod's gateway address: [`Repr::reply`] turns a
//! request into the reply to send back.

use std::net::Ipv4Addr;

use crate::types::MacAddr;
use crate::wire::bytes::{get_ipv4, get_mac, get_u16, set_u16};
use crate::wire::ethernet::EtherType;
use crate::wire::{Error, Result};

mod field {
    use crate::wire::Field;

    pub const HTYPE: Field = 0..2;
    pub const PTYPE: Field = 2..4;
    pub const HLEN: usize = 4;
    pub const PLEN: usize = 5;
    pub const OPER: Field = 6..8;
    // The address fields below are placed for HLEN 6 and PLEN 4.
    pub const SHA: Field = 8..14;
    pub const SPA: Field = 14..18;
    pub const THA: Field = 18..24;
    pub const TPA: Field = 24..28;
}

/// Length of an Ethernet/IPv4 ARP packet.
pub const HEADER_LEN: usize = field::TPA.end;

/// ARP hardware type for Ethernet.
pub const HARDWARE_ETHERNET: u16 = 1;

/// An ARP operation code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Operation {
    Request,
    Reply,
    Unknown(u16),
}

impl From<u16> for Operation {
    #[inline]
    fn from(value: u16) -> Self {
        match value {
            1 => Operation::Request,
            2 => Operation::Reply,
            other => Operation::Unknown(other),
        }
    }
}

impl From<Operation> for u16 {
    #[inline]
    fn from(value: Operation) -> Self {
        match value {
            Operation::Request => 1,
            Operation::Reply => 2,
            Operation::Unknown(other) => other,
        }
    }
}

/// A zero-copy view of an Ethernet/IPv4 ARP packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArpPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> ArpPacket<T> {
    /// Wraps a buffer without checking it; getters may panic on a short buffer.
    #[inline]
    pub fn new_unchecked(buffer: T) -> ArpPacket<T> {
        ArpPacket { buffer }
    }

    /// Wraps a buffer after [`check_len`](Self::check_len).
    #[inline]
    pub fn new_checked(buffer: T) -> Result<ArpPacket<T>> {
        let packet = Self::new_unchecked(buffer);
        packet.check_len()?;
        Ok(packet)
    }

    /// `Err(Truncated)` when the buffer is shorter than [`HEADER_LEN`].
    #[inline]
    pub fn check_len(&self) -> Result<()> {
        if self.buffer.as_ref().len() < HEADER_LEN {
            return Err(Error::Truncated);
        }
        Ok(())
    }

    #[inline]
    pub fn into_inner(self) -> T {
        self.buffer
    }

    #[inline]
    pub fn hardware_type(&self) -> u16 {
        get_u16(self.buffer.as_ref(), field::HTYPE)
    }

    #[inline]
    pub fn protocol_type(&self) -> EtherType {
        EtherType::from(get_u16(self.buffer.as_ref(), field::PTYPE))
    }

    #[inline]
    pub fn hardware_len(&self) -> u8 {
        self.buffer.as_ref()[field::HLEN]
    }

    #[inline]
    pub fn protocol_len(&self) -> u8 {
        self.buffer.as_ref()[field::PLEN]
    }

    #[inline]
    pub fn operation(&self) -> Operation {
        Operation::from(get_u16(self.buffer.as_ref(), field::OPER))
    }

    #[inline]
    pub fn source_hardware_addr(&self) -> MacAddr {
        get_mac(self.buffer.as_ref(), field::SHA)
    }

    #[inline]
    pub fn source_protocol_addr(&self) -> Ipv4Addr {
        get_ipv4(self.buffer.as_ref(), field::SPA)
    }

    #[inline]
    pub fn target_hardware_addr(&self) -> MacAddr {
        get_mac(self.buffer.as_ref(), field::THA)
    }

    #[inline]
    pub fn target_protocol_addr(&self) -> Ipv4Addr {
        get_ipv4(self.buffer.as_ref(), field::TPA)
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> ArpPacket<T> {
    #[inline]
    pub fn set_hardware_type(&mut self, value: u16) {
        set_u16(self.buffer.as_mut(), field::HTYPE, value);
    }

    #[inline]
    pub fn set_protocol_type(&mut self, value: EtherType) {
        set_u16(self.buffer.as_mut(), field::PTYPE, value.into());
    }

    #[inline]
    pub fn set_hardware_len(&mut self, value: u8) {
        self.buffer.as_mut()[field::HLEN] = value;
    }

    #[inline]
    pub fn set_protocol_len(&mut self, value: u8) {
        self.buffer.as_mut()[field::PLEN] = value;
    }

    #[inline]
    pub fn set_operation(&mut self, value: Operation) {
        set_u16(self.buffer.as_mut(), field::OPER, value.into());
    }

    #[inline]
    pub fn set_source_hardware_addr(&mut self, addr: MacAddr) {
        self.buffer.as_mut()[field::SHA].copy_from_slice(&addr.0);
    }

    #[inline]
    pub fn set_source_protocol_addr(&mut self, addr: Ipv4Addr) {
        self.buffer.as_mut()[field::SPA].copy_from_slice(&addr.octets());
    }

    #[inline]
    pub fn set_target_hardware_addr(&mut self, addr: MacAddr) {
        self.buffer.as_mut()[field::THA].copy_from_slice(&addr.0);
    }

    #[inline]
    pub fn set_target_protocol_addr(&mut self, addr: Ipv4Addr) {
        self.buffer.as_mut()[field::TPA].copy_from_slice(&addr.octets());
    }
}

/// A parsed ARP packet. Only Ethernet/IPv4 exists; the enum leaves room for nothing else on
/// purpose, so a `match` documents that assumption where it is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Repr {
    EthernetIpv4 {
        operation: Operation,
        source_hardware_addr: MacAddr,
        source_protocol_addr: Ipv4Addr,
        target_hardware_addr: MacAddr,
        target_protocol_addr: Ipv4Addr,
    },
}

impl Repr {
    /// Parses an ARP packet: `Truncated` when short, `Unsupported` for any hardware/protocol
    /// combination other than Ethernet (1, length 6) and IPv4 (0x0800, length 4).
    pub fn parse<T: AsRef<[u8]> + ?Sized>(packet: &ArpPacket<&T>) -> Result<Repr> {
        packet.check_len()?;
        if packet.hardware_type() != HARDWARE_ETHERNET
            || packet.protocol_type() != EtherType::Ipv4
            || packet.hardware_len() != 6
            || packet.protocol_len() != 4
        {
            return Err(Error::Unsupported);
        }
        Ok(Repr::EthernetIpv4 {
            operation: packet.operation(),
            source_hardware_addr: packet.source_hardware_addr(),
            source_protocol_addr: packet.source_protocol_addr(),
            target_hardware_addr: packet.target_hardware_addr(),
            target_protocol_addr: packet.target_protocol_addr(),
        })
    }

    /// The reply to this packet when it is a request, answering that `our_mac` owns the
    /// requested address; `None` for anything else.
    ///
    /// The caller decides whether the requested address ([`Repr::target_protocol_addr`]) is one
    /// it answers for (a pod's gateway). The reply goes to the requester only: the Ethernet
    /// destination is the request's source hardware address, which the reply also names as
    /// its target.
    pub fn reply(&self, our_mac: MacAddr) -> Option<Repr> {
        match *self {
            Repr::EthernetIpv4 {
                operation: Operation::Request,
                source_hardware_addr,
                source_protocol_addr,
                target_protocol_addr,
                ..
            } => Some(Repr::EthernetIpv4 {
                operation: Operation::Reply,
                source_hardware_addr: our_mac,
                source_protocol_addr: target_protocol_addr,
                target_hardware_addr: source_hardware_addr,
                target_protocol_addr: source_protocol_addr,
            }),
            Repr::EthernetIpv4 { .. } => None,
        }
    }

    #[inline]
    pub fn operation(&self) -> Operation {
        match *self {
            Repr::EthernetIpv4 { operation, .. } => operation,
        }
    }

    #[inline]
    pub fn source_hardware_addr(&self) -> MacAddr {
        match *self {
            Repr::EthernetIpv4 {
                source_hardware_addr,
                ..
            } => source_hardware_addr,
        }
    }

    #[inline]
    pub fn source_protocol_addr(&self) -> Ipv4Addr {
        match *self {
            Repr::EthernetIpv4 {
                source_protocol_addr,
                ..
            } => source_protocol_addr,
        }
    }

    #[inline]
    pub fn target_hardware_addr(&self) -> MacAddr {
        match *self {
            Repr::EthernetIpv4 {
                target_hardware_addr,
                ..
            } => target_hardware_addr,
        }
    }

    #[inline]
    pub fn target_protocol_addr(&self) -> Ipv4Addr {
        match *self {
            Repr::EthernetIpv4 {
                target_protocol_addr,
                ..
            } => target_protocol_addr,
        }
    }

    /// ARP has no payload: the header is the whole packet (28 bytes).
    #[inline]
    pub fn header_len(&self) -> usize {
        HEADER_LEN
    }

    /// The bytes [`emit`](Self::emit) writes (28; pad the frame to 60 bytes separately).
    #[inline]
    pub fn buffer_len(&self) -> usize {
        HEADER_LEN
    }

    /// Writes the packet.
    ///
    /// # Panics
    /// When the buffer is shorter than [`HEADER_LEN`].
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]> + ?Sized>(&self, packet: &mut ArpPacket<&mut T>) {
        match *self {
            Repr::EthernetIpv4 {
                operation,
                source_hardware_addr,
                source_protocol_addr,
                target_hardware_addr,
                target_protocol_addr,
            } => {
                packet.set_hardware_type(HARDWARE_ETHERNET);
                packet.set_protocol_type(EtherType::Ipv4);
                packet.set_hardware_len(6);
                packet.set_protocol_len(4);
                packet.set_operation(operation);
                packet.set_source_hardware_addr(source_hardware_addr);
                packet.set_source_protocol_addr(source_protocol_addr);
                packet.set_target_hardware_addr(target_hardware_addr);
                packet.set_target_protocol_addr(target_protocol_addr);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::ethernet::{self, EthernetFrame};
    use proptest::prelude::*;

    const POD_MAC: MacAddr = MacAddr([0x0a, 0x58, 0x0a, 0x00, 0x01, 0x05]);
    const GATEWAY_MAC: MacAddr = MacAddr([0x02, 0xfe, 0x00, 0x00, 0x00, 0x01]);

    // A pod (10.0.1.5, 0a:58:0a:00:01:05) asking for its gateway 10.0.1.1, as Linux sends it:
    // a broadcast Ethernet frame padded to the 60-byte minimum, target hardware address zero.
    const REQUEST_FRAME: [u8; 60] = [
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, // Ethernet destination: broadcast
        0x0a, 0x58, 0x0a, 0x00, 0x01, 0x05, // Ethernet source
        0x08, 0x06, // ARP
        0x00, 0x01, // hardware type: Ethernet
        0x08, 0x00, // protocol type: IPv4
        0x06, 0x04, // hardware length 6, protocol length 4
        0x00, 0x01, // operation: request
        0x0a, 0x58, 0x0a, 0x00, 0x01, 0x05, // sender hardware address
        0x0a, 0x00, 0x01, 0x05, // sender protocol address 10.0.1.5
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // target hardware address: unknown
        0x0a, 0x00, 0x01, 0x01, // target protocol address 10.0.1.1
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // padding (18 bytes)
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    ];

    // The gateway's answer, unicast back to the pod.
    const REPLY_FRAME: [u8; 42] = [
        0x0a, 0x58, 0x0a, 0x00, 0x01, 0x05, // Ethernet destination: the pod
        0x02, 0xfe, 0x00, 0x00, 0x00, 0x01, // Ethernet source: the gateway
        0x08, 0x06, // ARP
        0x00, 0x01, 0x08, 0x00, 0x06, 0x04, // Ethernet / IPv4 / 6 / 4
        0x00, 0x02, // operation: reply
        0x02, 0xfe, 0x00, 0x00, 0x00, 0x01, // sender hardware address: the gateway
        0x0a, 0x00, 0x01, 0x01, // sender protocol address 10.0.1.1
        0x0a, 0x58, 0x0a, 0x00, 0x01, 0x05, // target hardware address: the pod
        0x0a, 0x00, 0x01, 0x05, // target protocol address 10.0.1.5
    ];

    fn arp_body(frame: &[u8]) -> &[u8] {
        &frame[ethernet::HEADER_LEN..]
    }

    #[test]
    fn request_golden() {
        let frame = EthernetFrame::new_checked(&REQUEST_FRAME[..]).unwrap();
        assert_eq!(frame.ethertype(), EtherType::Arp);
        let packet = ArpPacket::new_checked(frame.payload()).unwrap();
        assert_eq!(packet.hardware_type(), 1);
        assert_eq!(packet.protocol_type(), EtherType::Ipv4);
        assert_eq!((packet.hardware_len(), packet.protocol_len()), (6, 4));
        assert_eq!(packet.operation(), Operation::Request);
        assert_eq!(packet.source_hardware_addr(), POD_MAC);
        assert_eq!(packet.source_protocol_addr(), Ipv4Addr::new(10, 0, 1, 5));
        assert_eq!(packet.target_hardware_addr(), MacAddr::ZERO);
        assert_eq!(packet.target_protocol_addr(), Ipv4Addr::new(10, 0, 1, 1));
        assert_eq!(
            Repr::parse(&packet).unwrap(),
            Repr::EthernetIpv4 {
                operation: Operation::Request,
                source_hardware_addr: POD_MAC,
                source_protocol_addr: Ipv4Addr::new(10, 0, 1, 5),
                target_hardware_addr: MacAddr::ZERO,
                target_protocol_addr: Ipv4Addr::new(10, 0, 1, 1),
            }
        );
    }

    #[test]
    fn parse_emit_round_trip_golden() {
        for golden in [arp_body(&REQUEST_FRAME), arp_body(&REPLY_FRAME)] {
            let repr = Repr::parse(&ArpPacket::new_checked(golden).unwrap()).unwrap();
            let mut out = [0u8; HEADER_LEN];
            repr.emit(&mut ArpPacket::new_unchecked(&mut out[..]));
            assert_eq!(&out[..], &golden[..HEADER_LEN]);
        }
    }

    #[test]
    fn reply_to_the_gateway_request_golden() {
        let frame = EthernetFrame::new_checked(&REQUEST_FRAME[..]).unwrap();
        let request = Repr::parse(&ArpPacket::new_checked(frame.payload()).unwrap()).unwrap();
        assert_eq!(request.target_protocol_addr(), Ipv4Addr::new(10, 0, 1, 1));
        assert_eq!(request.target_hardware_addr(), MacAddr::ZERO);
        assert_eq!(request.source_protocol_addr(), Ipv4Addr::new(10, 0, 1, 5));
        let reply = request.reply(GATEWAY_MAC).unwrap();

        let mut out = [0u8; 42];
        let eth = ethernet::Repr {
            src_addr: GATEWAY_MAC,
            dst_addr: request.source_hardware_addr(),
            vlan: None,
            ethertype: EtherType::Arp,
        };
        let mut frame = EthernetFrame::new_unchecked(&mut out[..]);
        eth.emit(&mut frame);
        reply.emit(&mut ArpPacket::new_unchecked(frame.payload_mut()));
        assert_eq!(out, REPLY_FRAME);
    }

    #[test]
    fn only_requests_get_replies() {
        let reply = Repr::parse(&ArpPacket::new_checked(arp_body(&REPLY_FRAME)).unwrap()).unwrap();
        assert_eq!(reply.operation(), Operation::Reply);
        assert_eq!(reply.reply(GATEWAY_MAC), None);
        let Repr::EthernetIpv4 {
            source_hardware_addr,
            source_protocol_addr,
            target_hardware_addr,
            target_protocol_addr,
            ..
        } = reply;
        let unknown = Repr::EthernetIpv4 {
            operation: Operation::Unknown(9),
            source_hardware_addr,
            source_protocol_addr,
            target_hardware_addr,
            target_protocol_addr,
        };
        assert_eq!(unknown.reply(GATEWAY_MAC), None);
    }

    #[test]
    fn every_truncation_is_an_error() {
        let body = arp_body(&REQUEST_FRAME);
        for len in 0..HEADER_LEN {
            let packet = ArpPacket::new_unchecked(&body[..len]);
            assert_eq!(packet.check_len(), Err(Error::Truncated), "{len} bytes");
            assert_eq!(Repr::parse(&packet), Err(Error::Truncated), "{len} bytes");
        }
        assert!(ArpPacket::new_checked(&body[..HEADER_LEN]).is_ok());
    }

    #[test]
    fn other_layouts_are_unsupported() {
        // (byte offset, value): IEEE 802 hardware (6), IPv6 protocol type, hlen 8, plen 16.
        for (at, value) in [(1, 6u8), (2, 0x86), (4, 8), (5, 16)] {
            let mut body = [0u8; HEADER_LEN];
            body.copy_from_slice(&arp_body(&REQUEST_FRAME)[..HEADER_LEN]);
            body[at] = value;
            let packet = ArpPacket::new_checked(&body[..]).unwrap();
            assert_eq!(Repr::parse(&packet), Err(Error::Unsupported), "byte {at}");
        }
    }

    #[test]
    fn unknown_operation_is_a_value() {
        let mut body = [0u8; HEADER_LEN];
        body.copy_from_slice(&arp_body(&REQUEST_FRAME)[..HEADER_LEN]);
        body[7] = 3; // RARP request
        let repr = Repr::parse(&ArpPacket::new_checked(&body[..]).unwrap()).unwrap();
        assert_eq!(repr.operation(), Operation::Unknown(3));
        assert_eq!(u16::from(Operation::Unknown(3)), 3);
    }

    proptest! {
        #[test]
        fn repr_emit_parse_round_trip(
            op in any::<u16>(),
            sha in any::<[u8; 6]>(),
            spa in any::<[u8; 4]>(),
            tha in any::<[u8; 6]>(),
            tpa in any::<[u8; 4]>(),
        ) {
            let repr = Repr::EthernetIpv4 {
                operation: Operation::from(op),
                source_hardware_addr: MacAddr(sha),
                source_protocol_addr: Ipv4Addr::from(spa),
                target_hardware_addr: MacAddr(tha),
                target_protocol_addr: Ipv4Addr::from(tpa),
            };
            let mut buf = [0u8; HEADER_LEN];
            repr.emit(&mut ArpPacket::new_unchecked(&mut buf[..]));
            prop_assert_eq!(Repr::parse(&ArpPacket::new_checked(&buf[..]).unwrap()).unwrap(), repr);
        }

        #[test]
        fn reply_swaps_the_parties(
            sha in any::<[u8; 6]>(),
            spa in any::<[u8; 4]>(),
            tpa in any::<[u8; 4]>(),
            ours in any::<[u8; 6]>(),
        ) {
            let request = Repr::EthernetIpv4 {
                operation: Operation::Request,
                source_hardware_addr: MacAddr(sha),
                source_protocol_addr: Ipv4Addr::from(spa),
                target_hardware_addr: MacAddr::ZERO,
                target_protocol_addr: Ipv4Addr::from(tpa),
            };
            let reply = request.reply(MacAddr(ours)).unwrap();
            prop_assert_eq!(reply, Repr::EthernetIpv4 {
                operation: Operation::Reply,
                source_hardware_addr: MacAddr(ours),
                source_protocol_addr: Ipv4Addr::from(tpa),
                target_hardware_addr: MacAddr(sha),
                target_protocol_addr: Ipv4Addr::from(spa),
            });
        }
    }
}
