//! Transport ports the dataplane owns on an address that otherwise stays the host's:
//! [`OwnedPort`] and its key in the program's `owned_ports` hash.
//!
//! A NodePort frontend is the node's own address and one port: the uplink must hand the
//! dataplane exactly (address, protocol, port) and leave the node's SSH, etcd and everything
//! else on that address to the kernel, so the match is exact, never a prefix.
//!
//! Contract:
//! - The key layout is `struct owned_port_key` in `src/bpf/xdp_redirect.bpf.c`: the IPv4
//!   address in network byte order, the IP protocol number, one zero pad byte, the port in
//!   network byte order (8 bytes). A test checks it against the generated type.
//! - Only TCP and UDP ports can be owned (the program reads the destination port of those two
//!   only); [`OwnedPort::new`] refuses the rest.

use std::fmt;
use std::net::Ipv4Addr;

/// Entries `owned_ports` can hold. Twin: `OWNED_PORTS_MAX_ENTRIES` in `xdp_redirect.bpf.c`.
pub const OWNED_PORTS_MAX_ENTRIES: u32 = 16384;

/// Length of an `owned_ports` key.
pub(crate) const PORT_KEY_LEN: usize = 4 + 1 + 1 + 2;

/// The value stored for every owned port (reserved, as for owned prefixes).
pub(crate) const OWNED_PORT_VALUE: [u8; 4] = 1u32.to_ne_bytes();

const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;

/// An exact IPv4 (address, protocol, destination port) the dataplane owns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct OwnedPort {
    addr: Ipv4Addr,
    proto: u8,
    port: u16,
}

/// A protocol the program cannot match ports of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "{addr}:{port} protocol {proto}: only TCP (6) and UDP (17) ports can be owned on the uplink"
)]
pub struct PortProtocolError {
    pub addr: Ipv4Addr,
    pub proto: u8,
    pub port: u16,
}

impl OwnedPort {
    /// `addr`, TCP or UDP (`proto` is the IP protocol number), `port`.
    pub fn new(addr: Ipv4Addr, proto: u8, port: u16) -> Result<Self, PortProtocolError> {
        if proto != IPPROTO_TCP && proto != IPPROTO_UDP {
            return Err(PortProtocolError { addr, proto, port });
        }
        Ok(OwnedPort { addr, proto, port })
    }

    pub fn addr(&self) -> Ipv4Addr {
        self.addr
    }

    pub fn proto(&self) -> u8 {
        self.proto
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The map key: address, protocol, zero pad, port (network byte order).
    pub(crate) fn key(&self) -> [u8; PORT_KEY_LEN] {
        let [a, b, c, d] = self.addr.octets();
        let [p0, p1] = self.port.to_be_bytes();
        [a, b, c, d, self.proto, 0, p0, p1]
    }

    /// The port a map key holds; `None` for a key of another size or protocol.
    pub(crate) fn from_key(key: &[u8]) -> Option<Self> {
        let [a, b, c, d, proto, _, p0, p1] = <[u8; PORT_KEY_LEN]>::try_from(key).ok()?;
        OwnedPort::new(
            Ipv4Addr::new(a, b, c, d),
            proto,
            u16::from_be_bytes([p0, p1]),
        )
        .ok()
    }
}

impl fmt::Display for OwnedPort {
    /// `192.168.0.1:30080/tcp`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let proto = if self.proto == IPPROTO_TCP {
            "tcp"
        } else {
            "udp"
        };
        write!(f, "{}:{}/{proto}", self.addr, self.port)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::skel::types;
    use std::mem::{offset_of, size_of};

    #[test]
    fn key_twin_matches_the_c_struct() {
        assert_eq!(PORT_KEY_LEN, size_of::<types::owned_port_key>());
        assert_eq!(offset_of!(types::owned_port_key, addr), 0);
        assert_eq!(offset_of!(types::owned_port_key, protocol), 4);
        assert_eq!(offset_of!(types::owned_port_key, pad), 5);
        assert_eq!(offset_of!(types::owned_port_key, port), 6);
    }

    #[test]
    fn keys_are_network_order_and_round_trip() {
        let p = OwnedPort::new(Ipv4Addr::new(192, 168, 0, 1), 6, 30080).unwrap();
        assert_eq!(p.key(), [192, 168, 0, 1, 6, 0, 0x75, 0x80]);
        assert_eq!(OwnedPort::from_key(&p.key()), Some(p));
        assert_eq!(p.to_string(), "192.168.0.1:30080/tcp");
        let u = OwnedPort::new(Ipv4Addr::new(10, 0, 0, 1), 17, 53).unwrap();
        assert_eq!(OwnedPort::from_key(&u.key()), Some(u));
        assert_eq!(OwnedPort::from_key(&[0; 7]), None);
        assert_eq!(OwnedPort::from_key(&[10, 0, 0, 1, 1, 0, 0, 1]), None);
    }

    #[test]
    fn only_tcp_and_udp() {
        let err = OwnedPort::new(Ipv4Addr::LOCALHOST, 132, 1).unwrap_err();
        assert!(err.to_string().contains("only TCP"), "{err}");
    }
}
