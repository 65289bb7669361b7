//! Frame builders for tests, fuzz seeds and benchmarks.
//!
//! Frames are built byte by byte with full checksums computed from scratch, independently of
//! the `wire` views, so tests that compare the pipeline's output with a built frame also check
//! the wire code and every incremental checksum update.

use std::net::IpAddr;

use crate::frame::{Frame, DEFAULT_HEADROOM};
use crate::types::MacAddr;
use crate::wire::checksum;
use crate::wire::ip::Protocol;
use crate::wire::tcp::TcpFlags;

/// Transport part of a built packet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum L4 {
    Tcp {
        sport: u16,
        dport: u16,
        flags: u8,
        seq: u32,
        ack: u32,
    },
    Udp {
        sport: u16,
        dport: u16,
    },
    /// ICMP (v4 or v6 by address family) echo request or reply.
    Echo {
        request: bool,
        ident: u16,
        seq: u16,
    },
    /// Any other protocol: raw bytes after the IP header.
    Raw {
        proto: u8,
    },
}

/// TCP flag bytes for [`L4::Tcp`]: the bits of [`TcpFlags`].
pub const TCP_SYN: u8 = TcpFlags::SYN.bits();
pub const TCP_ACK: u8 = TcpFlags::ACK.bits();
pub const TCP_FIN: u8 = TcpFlags::FIN.bits();
pub const TCP_RST: u8 = TcpFlags::RST.bits();
pub const TCP_SYN_ACK: u8 = TCP_SYN | TCP_ACK;

/// An Ethernet + IPv4/IPv6 + L4 packet description.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PacketBuilder {
    pub src_mac: MacAddr,
    pub dst_mac: MacAddr,
    pub src: IpAddr,
    pub dst: IpAddr,
    pub ttl: u8,
    /// IPv4 options (a multiple of 4 bytes).
    pub ipv4_options: Vec<u8>,
    pub l4: L4,
    pub payload: Vec<u8>,
}

impl PacketBuilder {
    pub fn new(src_mac: MacAddr, dst_mac: MacAddr, src: IpAddr, dst: IpAddr, l4: L4) -> Self {
        PacketBuilder {
            src_mac,
            dst_mac,
            src,
            dst,
            ttl: 64,
            ipv4_options: Vec::new(),
            l4,
            payload: Vec::new(),
        }
    }

    pub fn tcp(src: IpAddr, sport: u16, dst: IpAddr, dport: u16, flags: u8) -> Self {
        let l4 = L4::Tcp {
            sport,
            dport,
            flags,
            seq: 1000,
            ack: 0,
        };
        Self::new(MacAddr::ZERO, MacAddr::ZERO, src, dst, l4)
    }

    pub fn udp(src: IpAddr, sport: u16, dst: IpAddr, dport: u16) -> Self {
        Self::new(
            MacAddr::ZERO,
            MacAddr::ZERO,
            src,
            dst,
            L4::Udp { sport, dport },
        )
    }

    pub fn echo(src: IpAddr, dst: IpAddr, request: bool, ident: u16) -> Self {
        Self::new(
            MacAddr::ZERO,
            MacAddr::ZERO,
            src,
            dst,
            L4::Echo {
                request,
                ident,
                seq: 1,
            },
        )
    }

    pub fn macs(mut self, src: MacAddr, dst: MacAddr) -> Self {
        self.src_mac = src;
        self.dst_mac = dst;
        self
    }

    /// Sets a TCP packet's sequence and acknowledgement numbers (a no-op for other packets).
    pub fn seq_ack(mut self, seq: u32, ack: u32) -> Self {
        if let L4::Tcp { seq: s, ack: a, .. } = &mut self.l4 {
            (*s, *a) = (seq, ack);
        }
        self
    }

    pub fn ttl(mut self, ttl: u8) -> Self {
        self.ttl = ttl;
        self
    }

    pub fn payload(mut self, payload: &[u8]) -> Self {
        self.payload = payload.to_vec();
        self
    }

    pub fn ipv4_options(mut self, options: &[u8]) -> Self {
        self.ipv4_options = options.to_vec();
        self
    }

    fn proto(&self) -> u8 {
        match (&self.l4, self.src) {
            (L4::Tcp { .. }, _) => Protocol::Tcp.number(),
            (L4::Udp { .. }, _) => Protocol::Udp.number(),
            (L4::Echo { .. }, IpAddr::V4(_)) => Protocol::Icmp.number(),
            (L4::Echo { .. }, IpAddr::V6(_)) => Protocol::Icmpv6.number(),
            (L4::Raw { proto }, _) => *proto,
        }
    }

    /// The transport header and payload, with a full checksum.
    fn l4_bytes(&self) -> Vec<u8> {
        let mut b = Vec::new();
        match self.l4 {
            L4::Tcp {
                sport,
                dport,
                flags,
                seq,
                ack,
            } => {
                b.extend_from_slice(&sport.to_be_bytes());
                b.extend_from_slice(&dport.to_be_bytes());
                b.extend_from_slice(&seq.to_be_bytes());
                b.extend_from_slice(&ack.to_be_bytes());
                b.extend_from_slice(&[0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
            }
            L4::Udp { sport, dport } => {
                b.extend_from_slice(&sport.to_be_bytes());
                b.extend_from_slice(&dport.to_be_bytes());
                b.extend_from_slice(&((8 + self.payload.len()) as u16).to_be_bytes());
                b.extend_from_slice(&[0, 0]);
            }
            L4::Echo {
                request,
                ident,
                seq,
            } => {
                let ty = match (request, self.src) {
                    (true, IpAddr::V4(_)) => 8,
                    (false, IpAddr::V4(_)) => 0,
                    (true, IpAddr::V6(_)) => 128,
                    (false, IpAddr::V6(_)) => 129,
                };
                b.extend_from_slice(&[ty, 0, 0, 0]);
                b.extend_from_slice(&ident.to_be_bytes());
                b.extend_from_slice(&seq.to_be_bytes());
            }
            L4::Raw { .. } => {}
        }
        b.extend_from_slice(&self.payload);
        let check_at = match self.l4 {
            L4::Tcp { .. } => Some(16),
            L4::Udp { .. } => Some(6),
            L4::Echo { .. } => Some(2),
            L4::Raw { .. } => None,
        };
        if let Some(at) = check_at {
            let pseudo = match (self.src, self.dst, &self.l4) {
                (IpAddr::V4(_), _, L4::Echo { .. }) => 0,
                (IpAddr::V4(s), IpAddr::V4(d), _) => {
                    checksum::pseudo_header_v4(s, d, self.proto(), b.len() as u32)
                }
                (IpAddr::V6(s), IpAddr::V6(d), _) => {
                    checksum::pseudo_header_v6(s, d, self.proto(), b.len() as u32)
                }
                _ => 0,
            };
            let mut c = checksum::finish(checksum::sum(&b, pseudo));
            if matches!(self.l4, L4::Udp { .. }) {
                c = checksum::udp_nonzero(c);
            }
            b[at..at + 2].copy_from_slice(&c.to_be_bytes());
        }
        b
    }

    /// The whole Ethernet frame.
    pub fn build(&self) -> Vec<u8> {
        let l4 = self.l4_bytes();
        let mut b = Vec::new();
        b.extend_from_slice(self.dst_mac.as_bytes());
        b.extend_from_slice(self.src_mac.as_bytes());
        match (self.src, self.dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                b.extend_from_slice(&[0x08, 0x00]);
                let hl = 20 + self.ipv4_options.len();
                let total = (hl + l4.len()) as u16;
                let mut ip = vec![0x40 | (hl / 4) as u8, 0];
                ip.extend_from_slice(&total.to_be_bytes());
                ip.extend_from_slice(&[0x12, 0x34, 0x40, 0x00, self.ttl, self.proto(), 0, 0]);
                ip.extend_from_slice(&s.octets());
                ip.extend_from_slice(&d.octets());
                ip.extend_from_slice(&self.ipv4_options);
                let c = checksum::checksum(&ip);
                ip[10..12].copy_from_slice(&c.to_be_bytes());
                b.extend_from_slice(&ip);
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                b.extend_from_slice(&[0x86, 0xdd]);
                b.extend_from_slice(&[0x60, 0, 0, 0]);
                b.extend_from_slice(&(l4.len() as u16).to_be_bytes());
                b.extend_from_slice(&[self.proto(), self.ttl]);
                b.extend_from_slice(&s.octets());
                b.extend_from_slice(&d.octets());
            }
            _ => panic!("PacketBuilder: source and destination families differ"),
        }
        b.extend_from_slice(&l4);
        b
    }

    /// The packet in a frame with the default headroom and some tailroom.
    pub fn frame(&self) -> Frame<Vec<u8>> {
        frame(&self.build())
    }
}

/// A frame around `bytes` with [`DEFAULT_HEADROOM`] in front and 64 bytes behind.
pub fn frame(bytes: &[u8]) -> Frame<Vec<u8>> {
    Frame::from_packet(bytes, DEFAULT_HEADROOM, 64)
}

/// An ARP request (Ethernet broadcast) from `sender` asking for `target`.
pub fn arp_request(
    sender_mac: MacAddr,
    sender: std::net::Ipv4Addr,
    target: std::net::Ipv4Addr,
) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(MacAddr::BROADCAST.as_bytes());
    b.extend_from_slice(sender_mac.as_bytes());
    b.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0x00, 6, 4, 0, 1]);
    b.extend_from_slice(sender_mac.as_bytes());
    b.extend_from_slice(&sender.octets());
    b.extend_from_slice(&[0; 6]);
    b.extend_from_slice(&target.octets());
    b
}

/// An ARP reply from `sender` to `target` (what the dataplane answers).
pub fn arp_reply(
    sender_mac: MacAddr,
    sender: std::net::Ipv4Addr,
    target_mac: MacAddr,
    target: std::net::Ipv4Addr,
) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(target_mac.as_bytes());
    b.extend_from_slice(sender_mac.as_bytes());
    b.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0x00, 6, 4, 0, 2]);
    b.extend_from_slice(sender_mac.as_bytes());
    b.extend_from_slice(&sender.octets());
    b.extend_from_slice(target_mac.as_bytes());
    b.extend_from_slice(&target.octets());
    b
}

/// Outer headers of a tunnel packet, for building expected encapsulated frames.
#[derive(Clone, Debug)]
pub struct TunnelBuilder {
    pub src_mac: MacAddr,
    pub dst_mac: MacAddr,
    pub src: std::net::Ipv4Addr,
    pub dst: std::net::Ipv4Addr,
    pub sport: u16,
    pub vni: u32,
    /// Geneve (with these raw option bytes) instead of VXLAN.
    pub geneve_options: Option<Vec<u8>>,
}

impl TunnelBuilder {
    /// Ethernet + IPv4 (DF, TTL 64, id 0) + UDP (checksum 0) + VXLAN/Geneve + `inner`.
    pub fn wrap(&self, inner: &[u8]) -> Vec<u8> {
        let mut tunnel = Vec::new();
        let port: u16 = match &self.geneve_options {
            Some(opts) => {
                tunnel.extend_from_slice(&[(opts.len() / 4) as u8, 0, 0x65, 0x58]);
                tunnel.extend_from_slice(&(self.vni << 8).to_be_bytes());
                tunnel.extend_from_slice(opts);
                6081
            }
            None => {
                tunnel.extend_from_slice(&[0x08, 0, 0, 0]);
                tunnel.extend_from_slice(&(self.vni << 8).to_be_bytes());
                4789
            }
        };
        let udp_len = 8 + tunnel.len() + inner.len();
        let mut b = Vec::new();
        b.extend_from_slice(self.dst_mac.as_bytes());
        b.extend_from_slice(self.src_mac.as_bytes());
        b.extend_from_slice(&[0x08, 0x00]);
        let mut ip = vec![0x45, 0];
        ip.extend_from_slice(&((20 + udp_len) as u16).to_be_bytes());
        ip.extend_from_slice(&[0, 0, 0x40, 0, 64, Protocol::Udp.number(), 0, 0]);
        ip.extend_from_slice(&self.src.octets());
        ip.extend_from_slice(&self.dst.octets());
        let c = checksum::checksum(&ip);
        ip[10..12].copy_from_slice(&c.to_be_bytes());
        b.extend_from_slice(&ip);
        b.extend_from_slice(&self.sport.to_be_bytes());
        b.extend_from_slice(&port.to_be_bytes());
        b.extend_from_slice(&(udp_len as u16).to_be_bytes());
        b.extend_from_slice(&[0, 0]);
        b.extend_from_slice(&tunnel);
        b.extend_from_slice(inner);
        b
    }
}
