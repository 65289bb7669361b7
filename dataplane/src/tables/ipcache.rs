//! The ipcache: prefix -> (security identity, tunnel endpoint), as Cilium's `cilium_ipcache`.
//!
//! # Contract
//! - Pods are /32 or /128 entries carrying the pod's identity and, for pods on other nodes, the
//!   underlay IP of the node that hosts them (the tunnel endpoint). Local pods, the host and
//!   world prefixes have no tunnel endpoint.
//! - CIDR policies add shorter prefixes with CIDR identities; an address takes the entry of the
//!   longest prefix containing it ([`IpCache::lookup`]).
//! - An address that no prefix contains is `reserved:world` ([`IpCache::identity_of`]), as in
//!   Cilium.
//!
//! Lookups run twice per packet (source and destination) and allocate nothing; see
//! [`super::lpm`] for their cost. Updates are control-path.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::tables::lpm::Lpm;
use crate::types::{Identity, Prefix};

/// What the ipcache knows about a prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct IpCacheEntry {
    /// The security identity of every address in the prefix.
    pub identity: Identity,
    /// Underlay IP of the node hosting the prefix; `None` for local or world prefixes.
    pub tunnel_endpoint: Option<IpAddr>,
}

impl IpCacheEntry {
    /// An entry reached without a tunnel (local pod, host, CIDR identity).
    pub fn local(identity: Identity) -> Self {
        IpCacheEntry {
            identity,
            tunnel_endpoint: None,
        }
    }

    /// An entry hosted by the node whose underlay IP is `node`.
    pub fn remote(identity: Identity, node: IpAddr) -> Self {
        IpCacheEntry {
            identity,
            tunnel_endpoint: Some(node),
        }
    }
}

/// Prefix -> [`IpCacheEntry`] with longest-prefix match.
#[derive(Clone, Debug, Default)]
pub struct IpCache {
    entries: Lpm<IpCacheEntry>,
}

impl IpCache {
    pub fn new() -> Self {
        Self::default()
    }

    /// Inserts or replaces the entry of `prefix`; returns the previous entry.
    pub fn upsert(&mut self, prefix: Prefix, entry: IpCacheEntry) -> Option<IpCacheEntry> {
        self.entries.insert(prefix, entry)
    }

    /// Removes exactly `prefix`; returns its entry.
    pub fn remove(&mut self, prefix: &Prefix) -> Option<IpCacheEntry> {
        self.entries.remove(prefix)
    }

    /// The entry stored under exactly `prefix`.
    pub fn get(&self, prefix: &Prefix) -> Option<&IpCacheEntry> {
        self.entries.get(prefix)
    }

    /// The entry of the longest prefix containing `addr`.
    #[inline]
    pub fn lookup(&self, addr: IpAddr) -> Option<&IpCacheEntry> {
        self.entries.lookup_value(addr)
    }

    #[inline]
    pub fn lookup_v4(&self, addr: Ipv4Addr) -> Option<&IpCacheEntry> {
        self.entries.lookup_value_v4(addr)
    }

    #[inline]
    pub fn lookup_v6(&self, addr: Ipv6Addr) -> Option<&IpCacheEntry> {
        self.entries.lookup_value_v6(addr)
    }

    /// Like [`IpCache::lookup`], also naming the prefix that matched (for `policy trace` and
    /// the CLI).
    pub fn lookup_with_prefix(&self, addr: IpAddr) -> Option<(Prefix, &IpCacheEntry)> {
        self.entries.lookup(addr)
    }

    /// The identity of `addr`: its longest match's, or `reserved:world` when nothing matches.
    #[inline]
    pub fn identity_of(&self, addr: IpAddr) -> Identity {
        self.lookup(addr)
            .map_or(Identity::WORLD, |entry| entry.identity)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Every (prefix, entry), in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (Prefix, &IpCacheEntry)> + '_ {
        self.entries.iter()
    }

    /// Approximate heap bytes (for the benchmark's memory report).
    pub fn approx_bytes(&self) -> usize {
        self.entries.approx_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Prefix {
        s.parse().unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    const POD_A: Identity = Identity(1000);
    const POD_B: Identity = Identity(1001);
    const CIDR: Identity = Identity(16_777_217);

    fn cache() -> IpCache {
        let mut c = IpCache::new();
        c.upsert(p("10.0.1.5/32"), IpCacheEntry::local(POD_A));
        c.upsert(
            p("10.0.2.7/32"),
            IpCacheEntry::remote(POD_B, ip("192.168.0.2")),
        );
        c.upsert(
            p("fd00:2::7/128"),
            IpCacheEntry::remote(POD_B, ip("192.168.0.2")),
        );
        c.upsert(p("10.0.0.0/8"), IpCacheEntry::local(CIDR));
        c.upsert(
            p("192.168.0.2/32"),
            IpCacheEntry::local(Identity::REMOTE_NODE),
        );
        c
    }

    #[test]
    fn pods_cidrs_and_world() {
        let c = cache();
        assert_eq!(c.lookup(ip("10.0.1.5")), Some(&IpCacheEntry::local(POD_A)));
        assert_eq!(
            c.lookup_v4("10.0.2.7".parse().unwrap())
                .map(|e| e.tunnel_endpoint),
            Some(Some(ip("192.168.0.2")))
        );
        assert_eq!(
            c.lookup_v6("fd00:2::7".parse().unwrap())
                .map(|e| e.identity),
            Some(POD_B)
        );
        assert_eq!(c.identity_of(ip("10.0.1.5")), POD_A);
        assert_eq!(c.identity_of(ip("10.9.9.9")), CIDR);
        assert_eq!(c.identity_of(ip("192.168.0.2")), Identity::REMOTE_NODE);
        assert_eq!(c.identity_of(ip("8.8.8.8")), Identity::WORLD);
        assert_eq!(c.identity_of(ip("fd00:2::8")), Identity::WORLD);
        assert_eq!(c.lookup(ip("8.8.8.8")), None);
        assert_eq!(
            c.lookup_with_prefix(ip("10.9.9.9")).map(|(pfx, _)| pfx),
            Some(p("10.0.0.0/8"))
        );
    }

    #[test]
    fn default_routes_catch_everything_of_their_family() {
        let mut c = cache();
        c.upsert(p("0.0.0.0/0"), IpCacheEntry::local(Identity::UNMANAGED));
        assert_eq!(c.identity_of(ip("8.8.8.8")), Identity::UNMANAGED);
        assert_eq!(c.identity_of(ip("2001:db8::1")), Identity::WORLD);
        c.upsert(p("::/0"), IpCacheEntry::local(Identity::HEALTH));
        assert_eq!(c.identity_of(ip("2001:db8::1")), Identity::HEALTH);
        assert_eq!(c.identity_of(ip("fd00:2::7")), POD_B);
    }

    #[test]
    fn upsert_replaces_and_remove_falls_back_to_shorter_prefix() {
        let mut c = cache();
        let len = c.len();
        let old = c.upsert(p("10.0.1.5/32"), IpCacheEntry::local(POD_B));
        assert_eq!(old, Some(IpCacheEntry::local(POD_A)));
        assert_eq!(c.len(), len);
        assert_eq!(c.identity_of(ip("10.0.1.5")), POD_B);
        assert_eq!(
            c.remove(&p("10.0.1.5/32")),
            Some(IpCacheEntry::local(POD_B))
        );
        assert_eq!(c.remove(&p("10.0.1.5/32")), None);
        assert_eq!(c.identity_of(ip("10.0.1.5")), CIDR);
        assert_eq!(c.get(&p("10.0.0.0/8")), Some(&IpCacheEntry::local(CIDR)));
        assert_eq!(c.len(), len - 1);
    }

    #[test]
    fn iter_and_size() {
        let c = cache();
        assert_eq!(c.iter().count(), 5);
        assert!(c
            .iter()
            .any(|(pfx, e)| pfx == p("fd00:2::7/128") && e.identity == POD_B));
        assert!(!c.is_empty());
        assert!(c.approx_bytes() >= 5 * std::mem::size_of::<IpCacheEntry>());
    }
}
