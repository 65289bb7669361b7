//! Next hops on the underlay: the Ethernet address a frame for a peer node (or for the world)
//! is sent to.
//!
//! # Contract
//! - These are the kernel's facts, not configuration: the daemon's next-hop resolver
//!   (`crate::nexthop`) fills the table from the node namespace's routes and neighbour table and
//!   is its only writer; nothing in etcd or in a node record carries a MAC.
//! - [`NextHops::peer`] answers "which MAC do frames for the node at this underlay IP go to":
//!   the peer's own MAC when it is on-link, the gateway's when the kernel routes it through one.
//!   A peer without an entry has no usable next hop yet (unresolved, unreachable, or routed
//!   out of another interface than the uplink): the route stage drops its frames with
//!   `no_next_hop` rather than guess, so a frame is never sent to a wrong MAC.
//! - [`NextHops::default_v4`] / [`NextHops::default_v6`] are the MACs of the default routes'
//!   gateways through the uplink, for traffic leaving the cluster.
//!
//! - [`NextHops::is_peer_mac`] answers "did this frame come straight from a node": true for the
//!   MAC of an on-link peer (or of the router in front of routed ones). The service stage
//!   trusts a DSR option only from such a frame (or from a tunnel).
//!
//! Lookups are one hash probe and allocate nothing.

use std::net::IpAddr;

use hashbrown::HashMap;

use crate::types::MacAddr;

/// Underlay IP -> next-hop MAC, plus the default gateways.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NextHops {
    peers: HashMap<IpAddr, MacAddr>,
    /// How many peers each MAC is the next hop of (several peers behind one router share it).
    peer_macs: HashMap<MacAddr, u32>,
    default_v4: Option<MacAddr>,
    default_v6: Option<MacAddr>,
}

impl NextHops {
    pub fn new() -> Self {
        Self::default()
    }

    /// The MAC that frames for the node at `underlay` are sent to, if resolved.
    #[inline]
    pub fn peer(&self, underlay: IpAddr) -> Option<MacAddr> {
        self.peers.get(&underlay).copied()
    }

    /// The MAC of the IPv4 default route's gateway on the uplink.
    #[inline]
    pub fn default_v4(&self) -> Option<MacAddr> {
        self.default_v4
    }

    /// The MAC of the IPv6 default route's gateway on the uplink.
    #[inline]
    pub fn default_v6(&self) -> Option<MacAddr> {
        self.default_v6
    }

    /// The default gateway for a destination of `dst`'s family.
    #[inline]
    pub fn default_for(&self, dst: IpAddr) -> Option<MacAddr> {
        match dst {
            IpAddr::V4(_) => self.default_v4,
            IpAddr::V6(_) => self.default_v6,
        }
    }

    /// True when `mac` is the next hop of some peer node.
    #[inline]
    pub fn is_peer_mac(&self, mac: MacAddr) -> bool {
        self.peer_macs.contains_key(&mac)
    }

    /// Sets (or, with `None`, forgets) the next hop of the peer at `underlay`.
    pub fn set_peer(&mut self, underlay: IpAddr, mac: Option<MacAddr>) {
        let old = match mac {
            Some(mac) => self.peers.insert(underlay, mac),
            None => self.peers.remove(&underlay),
        };
        if let Some(old) = old {
            if let Some(n) = self.peer_macs.get_mut(&old) {
                *n -= 1;
                if *n == 0 {
                    self.peer_macs.remove(&old);
                }
            }
        }
        if let Some(mac) = mac {
            *self.peer_macs.entry(mac).or_insert(0) += 1;
        }
    }

    pub fn set_default_v4(&mut self, mac: Option<MacAddr>) {
        self.default_v4 = mac;
    }

    pub fn set_default_v6(&mut self, mac: Option<MacAddr>) {
        self.default_v6 = mac;
    }

    /// Every resolved peer, in no particular order (status, tests).
    pub fn peers(&self) -> impl Iterator<Item = (IpAddr, MacAddr)> + '_ {
        self.peers.iter().map(|(ip, mac)| (*ip, *mac))
    }

    /// Number of resolved peers.
    pub fn len(&self) -> usize {
        self.peers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.peers.is_empty() && self.default_v4.is_none() && self.default_v6.is_none()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test
mod tests {
    use super::*;

    const MAC: MacAddr = MacAddr([0x02, 0, 0, 0, 0, 7]);

    #[test]
    fn peers_are_set_replaced_and_forgotten() {
        let mut n = NextHops::new();
        let peer: IpAddr = "192.168.0.2".parse().unwrap();
        assert_eq!(n.peer(peer), None);
        n.set_peer(peer, Some(MAC));
        assert_eq!(n.peer(peer), Some(MAC));
        n.set_peer(peer, Some(MacAddr([0x02, 0, 0, 0, 0, 8])));
        assert_eq!(n.peer(peer), Some(MacAddr([0x02, 0, 0, 0, 0, 8])));
        n.set_peer(peer, None);
        assert_eq!(n.peer(peer), None);
        assert!(n.is_empty());
    }

    #[test]
    fn peer_macs_follow_the_peers_even_when_shared() {
        let mut n = NextHops::new();
        let (a, b): (IpAddr, IpAddr) = ("10.9.0.1".parse().unwrap(), "10.9.0.2".parse().unwrap());
        n.set_peer(a, Some(MAC));
        n.set_peer(b, Some(MAC)); // both behind one router
        assert!(n.is_peer_mac(MAC));
        n.set_peer(a, None);
        assert!(n.is_peer_mac(MAC), "still b's next hop");
        n.set_peer(b, Some(MacAddr([0x02, 0, 0, 0, 0, 9])));
        assert!(!n.is_peer_mac(MAC));
        assert!(n.is_peer_mac(MacAddr([0x02, 0, 0, 0, 0, 9])));
        assert_eq!(n, {
            let mut m = NextHops::new();
            m.set_peer(b, Some(MacAddr([0x02, 0, 0, 0, 0, 9])));
            m
        });
    }

    #[test]
    fn defaults_are_per_family() {
        let mut n = NextHops::new();
        n.set_default_v4(Some(MAC));
        assert_eq!(n.default_for("1.1.1.1".parse().unwrap()), Some(MAC));
        assert_eq!(n.default_for("2001:db8::1".parse().unwrap()), None);
        n.set_default_v6(Some(MAC));
        assert_eq!(n.default_for("2001:db8::1".parse().unwrap()), Some(MAC));
    }
}
