//! Destinations the dataplane owns on the uplink: [`OwnedPrefix`] and its key in the program's
//! `owned_v4` / `owned_v6` LPM tries.
//!
//! With the uplink filter on, an IPv4 or IPv6 frame whose destination lies in one of these
//! prefixes goes to the dataplane: local pod addresses today, service frontends, NodePort
//! addresses and masquerade replies later. Everything else (besides tunnel traffic to the
//! node's underlay address) stays with the kernel.
//!
//! Contract:
//! - An [`OwnedPrefix`] is always canonical: its host bits are zero, so two prefixes that cover
//!   the same addresses are equal (and map to the same trie key).
//! - The key layout is the kernel's `struct bpf_lpm_trie_key`: a native-endian `u32` prefix
//!   length, then the address in network byte order (4 or 16 bytes). Twins:
//!   `struct owned_v4_key` / `struct owned_v6_key` in `src/bpf/xdp_redirect.bpf.c`.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Prefixes per family the owned tries can hold. Twin: `OWNED_MAX_ENTRIES` in
/// `xdp_redirect.bpf.c`.
pub const OWNED_MAX_ENTRIES: u32 = 65536;

/// Length of an `owned_v4` key (prefix length + IPv4 address).
pub(crate) const V4_KEY_LEN: usize = 4 + 4;
/// Length of an `owned_v6` key (prefix length + IPv6 address).
pub(crate) const V6_KEY_LEN: usize = 4 + 16;

/// The value stored for every owned prefix (reserved: it may say why a destination is owned
/// one day; the program only checks that the key is present).
pub(crate) const OWNED_VALUE: [u8; 4] = 1u32.to_ne_bytes();

/// An IPv4 or IPv6 prefix the dataplane owns, host bits cleared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct OwnedPrefix {
    addr: IpAddr,
    len: u8,
}

/// A prefix length longer than its address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{addr}/{len} is not a prefix: use a length of at most 32 for IPv4 and 128 for IPv6")]
pub struct PrefixLengthError {
    pub addr: IpAddr,
    pub len: u8,
}

impl OwnedPrefix {
    /// `addr/len` with the bits beyond `len` cleared; an error when `len` is longer than the
    /// address.
    pub fn new(addr: IpAddr, len: u8) -> Result<Self, PrefixLengthError> {
        if len > max_len(addr) {
            return Err(PrefixLengthError { addr, len });
        }
        Ok(OwnedPrefix {
            addr: masked(addr, len),
            len,
        })
    }

    /// The host prefix of `addr` (/32 or /128).
    pub fn host(addr: IpAddr) -> Self {
        OwnedPrefix {
            addr,
            len: max_len(addr),
        }
    }

    /// The first address of the prefix.
    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    /// The prefix length in bits.
    pub fn prefix_len(&self) -> u8 {
        self.len
    }

    /// True for an IPv4 prefix (kept in `owned_v4`), false for IPv6 (`owned_v6`).
    pub fn is_ipv4(&self) -> bool {
        self.addr.is_ipv4()
    }

    /// The trie key: native-endian prefix length, then the address bytes.
    pub(crate) fn key(&self) -> Vec<u8> {
        let mut key = Vec::with_capacity(if self.is_ipv4() {
            V4_KEY_LEN
        } else {
            V6_KEY_LEN
        });
        key.extend_from_slice(&u32::from(self.len).to_ne_bytes());
        match self.addr {
            IpAddr::V4(a) => key.extend_from_slice(&a.octets()),
            IpAddr::V6(a) => key.extend_from_slice(&a.octets()),
        }
        key
    }

    /// The prefix a trie key holds; `None` for a key of the wrong size or length field.
    pub(crate) fn from_key(key: &[u8]) -> Option<Self> {
        let (len, addr) = key.split_first_chunk::<4>()?;
        let len = u8::try_from(u32::from_ne_bytes(*len)).ok()?;
        let addr = match addr.len() {
            4 => IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(addr).ok()?)),
            16 => IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(addr).ok()?)),
            _ => return None,
        };
        OwnedPrefix::new(addr, len).ok()
    }
}

impl fmt::Display for OwnedPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

fn max_len(addr: IpAddr) -> u8 {
    if addr.is_ipv4() {
        32
    } else {
        128
    }
}

fn masked(addr: IpAddr, len: u8) -> IpAddr {
    match addr {
        IpAddr::V4(a) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
            IpAddr::V4(Ipv4Addr::from(u32::from(a) & mask))
        }
        IpAddr::V6(a) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from(u128::from(a) & mask))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::skel::types;
    use std::mem::size_of;

    fn v4(s: &str) -> IpAddr {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn key_twins_match_the_c_structs() {
        assert_eq!(V4_KEY_LEN, size_of::<types::owned_v4_key>());
        assert_eq!(V6_KEY_LEN, size_of::<types::owned_v6_key>());
    }

    #[test]
    fn host_bits_are_cleared_and_lengths_checked() {
        let p = OwnedPrefix::new(v4("10.1.2.3"), 24).unwrap();
        assert_eq!(p.addr(), v4("10.1.2.0"));
        assert_eq!(p.to_string(), "10.1.2.0/24");
        assert_eq!(p, OwnedPrefix::new(v4("10.1.2.200"), 24).unwrap());
        assert_eq!(
            OwnedPrefix::new(v4("10.1.2.3"), 0).unwrap().addr(),
            v4("0.0.0.0")
        );
        assert_eq!(
            OwnedPrefix::new(v4("fd00::1:2"), 112).unwrap().addr(),
            v4("fd00::1:0")
        );
        let err = OwnedPrefix::new(v4("10.0.0.1"), 33).unwrap_err();
        assert!(err.to_string().contains("at most 32"), "{err}");
        assert!(OwnedPrefix::new(v4("fd00::1"), 129).is_err());
        assert_eq!(OwnedPrefix::host(v4("10.0.0.1")).prefix_len(), 32);
        assert_eq!(OwnedPrefix::host(v4("fd00::1")).prefix_len(), 128);
    }

    #[test]
    fn keys_are_length_then_network_order_address_and_round_trip() {
        let p = OwnedPrefix::host(v4("10.1.2.3"));
        let mut expected = 32u32.to_ne_bytes().to_vec();
        expected.extend_from_slice(&[10, 1, 2, 3]);
        assert_eq!(p.key(), expected);
        for p in [
            p,
            OwnedPrefix::new(v4("10.1.0.0"), 16).unwrap(),
            OwnedPrefix::host(v4("fd00::7")),
            OwnedPrefix::new(v4("fd00::"), 64).unwrap(),
        ] {
            assert_eq!(OwnedPrefix::from_key(&p.key()), Some(p));
        }
        assert_eq!(OwnedPrefix::from_key(&[0; 3]), None);
        assert_eq!(OwnedPrefix::from_key(&[0; 7]), None);
        let mut too_long = 33u32.to_ne_bytes().to_vec();
        too_long.extend_from_slice(&[10, 0, 0, 1]);
        assert_eq!(OwnedPrefix::from_key(&too_long), None);
    }
}
