//! Small value types shared by the wire formats, the tables and the pipeline.
//!
//! They are `Copy`, fixed-size and allocation-free so that the fast path can pass them by value.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// A security identity (Cilium's numeric identity), derived from a pod's label set.
///
/// Numbers 1..=255 are reserved (see [`Identity::HOST`] and friends); `0` is never a real
/// identity and means "any identity" in a policy-map key.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Identity(pub u32);

impl Identity {
    /// Wildcard in policy-map keys; never assigned to a peer.
    pub const ANY: Identity = Identity(0);
    /// The local node (host namespace).
    pub const HOST: Identity = Identity(1);
    /// Anything outside the cluster.
    pub const WORLD: Identity = Identity(2);
    /// Pods not managed by Flagella.
    pub const UNMANAGED: Identity = Identity(3);
    /// Health-check endpoints.
    pub const HEALTH: Identity = Identity(4);
    /// Endpoints whose identity is not resolved yet.
    pub const INIT: Identity = Identity(5);
    /// Other nodes of the cluster.
    pub const REMOTE_NODE: Identity = Identity(6);
    /// First number of the cluster-local (label-derived) range.
    pub const FIRST_CLUSTER_LOCAL: u32 = 256;

    /// True for the reserved range 1..=255.
    pub fn is_reserved(self) -> bool {
        (1..Self::FIRST_CLUSTER_LOCAL).contains(&self.0)
    }

    /// The reserved identity's name as Cilium spells it (`reserved:world`), if any.
    pub fn reserved_name(self) -> Option<&'static str> {
        Some(match self.0 {
            1 => "host",
            2 => "world",
            3 => "unmanaged",
            4 => "health",
            5 => "init",
            6 => "remote-node",
            _ => return None,
        })
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A 48-bit Ethernet MAC address.
#[derive(Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    pub const BROADCAST: MacAddr = MacAddr([0xff; 6]);
    pub const ZERO: MacAddr = MacAddr([0; 6]);

    /// Builds an address from the first six bytes of `bytes`; `None` when shorter.
    pub fn from_bytes(bytes: &[u8]) -> Option<MacAddr> {
        let b: [u8; 6] = bytes.get(..6)?.try_into().ok()?;
        Some(MacAddr(b))
    }

    pub fn as_bytes(&self) -> &[u8; 6] {
        &self.0
    }

    pub fn is_broadcast(&self) -> bool {
        *self == Self::BROADCAST
    }

    /// Group bit set (multicast or broadcast).
    pub fn is_multicast(&self) -> bool {
        self.0[0] & 1 == 1
    }

    pub fn is_unicast(&self) -> bool {
        !self.is_multicast()
    }
}

impl fmt::Debug for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = &self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

/// Error from parsing a [`MacAddr`] or a [`Prefix`] from text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PrefixError {
    #[error("`{0}` is not an IP address or CIDR (expected e.g. 10.0.1.0/24 or fd00::/64)")]
    Syntax(String),
    #[error("prefix length {len} is longer than the address ({max} bits) in `{text}`")]
    TooLong { text: String, len: u8, max: u8 },
    #[error("`{0}` is not a MAC address (expected six hex bytes, e.g. 02:00:00:00:00:01)")]
    Mac(String),
}

impl FromStr for MacAddr {
    type Err = PrefixError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut out = [0u8; 6];
        let mut parts = s.split(':');
        for byte in out.iter_mut() {
            let part = parts
                .next()
                .ok_or_else(|| PrefixError::Mac(s.to_string()))?;
            if part.is_empty() || part.len() > 2 {
                return Err(PrefixError::Mac(s.to_string()));
            }
            *byte = u8::from_str_radix(part, 16).map_err(|_| PrefixError::Mac(s.to_string()))?;
        }
        if parts.next().is_some() {
            return Err(PrefixError::Mac(s.to_string()));
        }
        Ok(MacAddr(out))
    }
}

/// An IPv4 or IPv6 prefix (CIDR). The address is always stored masked to `len` bits, so two
/// prefixes that cover the same addresses compare equal.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Prefix {
    addr: IpAddr,
    len: u8,
}

impl Prefix {
    /// Builds a prefix, masking the host bits away. Errors when `len` exceeds the address width.
    pub fn new(addr: IpAddr, len: u8) -> Result<Prefix, PrefixError> {
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if len > max {
            return Err(PrefixError::TooLong {
                text: format!("{addr}/{len}"),
                len,
                max,
            });
        }
        Ok(Prefix {
            addr: mask(addr, len),
            len,
        })
    }

    /// A host prefix (/32 or /128).
    pub fn host(addr: IpAddr) -> Prefix {
        let len = if addr.is_ipv4() { 32 } else { 128 };
        Prefix { addr, len }
    }

    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    pub fn prefix_len(&self) -> u8 {
        self.len
    }

    /// True for /0, the prefix that holds every address of its family.
    pub fn is_default(&self) -> bool {
        self.len == 0
    }

    pub fn is_ipv4(&self) -> bool {
        self.addr.is_ipv4()
    }

    /// True when `addr` (of the same family) lies inside this prefix.
    pub fn contains(&self, addr: IpAddr) -> bool {
        addr.is_ipv4() == self.addr.is_ipv4() && mask(addr, self.len) == self.addr
    }

    /// True when every address of `other` lies inside `self`.
    pub fn covers(&self, other: &Prefix) -> bool {
        other.len >= self.len && self.contains(other.addr)
    }
}

impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

impl FromStr for Prefix {
    type Err = PrefixError;

    /// Parses `10.0.0.0/8`, `fd00::/64`, or a bare address (a host prefix).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (addr, len) = match s.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (s, None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| PrefixError::Syntax(s.to_string()))?;
        match len {
            None => Ok(Prefix::host(addr)),
            Some(l) => {
                let len: u8 = l.parse().map_err(|_| PrefixError::Syntax(s.to_string()))?;
                Prefix::new(addr, len).map_err(|e| match e {
                    PrefixError::TooLong { len, max, .. } => PrefixError::TooLong {
                        text: s.to_string(),
                        len,
                        max,
                    },
                    other => other,
                })
            }
        }
    }
}

/// `addr` with all bits after the first `len` cleared (`len` already checked by callers).
pub fn mask(addr: IpAddr, len: u8) -> IpAddr {
    match addr {
        IpAddr::V4(a) => IpAddr::V4(mask_v4(a, len)),
        IpAddr::V6(a) => IpAddr::V6(mask_v6(a, len)),
    }
}

pub fn mask_v4(addr: Ipv4Addr, len: u8) -> Ipv4Addr {
    let bits = u32::from(addr);
    let m = if len == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(len.min(32)))
    };
    Ipv4Addr::from(bits & m)
}

pub fn mask_v6(addr: Ipv6Addr, len: u8) -> Ipv6Addr {
    let bits = u128::from(addr);
    let m = if len == 0 {
        0
    } else {
        u128::MAX << (128 - u32::from(len.min(128)))
    };
    Ipv6Addr::from(bits & m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_masks_host_bits() {
        let p: Prefix = "10.1.2.3/16".parse().unwrap();
        assert_eq!(p.to_string(), "10.1.0.0/16");
        assert!(p.contains("10.1.255.1".parse().unwrap()));
        assert!(!p.contains("10.2.0.1".parse().unwrap()));
        assert!(!p.contains("::1".parse().unwrap()));
    }

    #[test]
    fn prefix_rejects_bad_input() {
        assert!("10.0.0.0/33".parse::<Prefix>().is_err());
        assert!("fd00::/129".parse::<Prefix>().is_err());
        assert!("nonsense".parse::<Prefix>().is_err());
        assert_eq!("0.0.0.0/0".parse::<Prefix>().unwrap().prefix_len(), 0);
    }

    #[test]
    fn mac_round_trip() {
        let m: MacAddr = "02:00:0a:00:01:ff".parse().unwrap();
        assert_eq!(m.to_string(), "02:00:0a:00:01:ff");
        assert!("02:00:0a:00:01".parse::<MacAddr>().is_err());
        assert!("02:00:0a:00:01:ff:00".parse::<MacAddr>().is_err());
        assert!(MacAddr::BROADCAST.is_multicast());
    }

    #[test]
    fn reserved_identities() {
        assert!(Identity::WORLD.is_reserved());
        assert_eq!(Identity::REMOTE_NODE.reserved_name(), Some("remote-node"));
        assert!(!Identity(256).is_reserved());
    }
}
