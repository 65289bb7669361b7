//! The other nodes of the cluster: the tunnel map.
//!
//! # Contract
//! A [`Node`] is named, reachable at an underlay IP, and hosts the pods of its pod CIDRs. The
//! fast path asks two questions: which node hosts this pod address ([`Nodes::by_pod_ip`], a
//! longest-prefix match over every node's pod CIDRs) and whether a tunnel packet comes from a
//! known node ([`Nodes::by_underlay`], one hash probe). Both allocate nothing.
//!
//! # Storage
//! Nodes are stored once, in a slab with a free list; a name index, an underlay index and an
//! [`Lpm`] over pod CIDRs map to the slot.
//!
//! # Invariants
//! - Names and underlay IPs are unique; no pod CIDR of one node overlaps (contains or is
//!   contained in) a pod CIDR of another node, so a pod address has at most one home.
//! - Each index holds exactly the values of the stored nodes and points to their slot.
//! - An upsert that fails changes nothing; an upsert of an existing name replaces the node
//!   and re-indexes its underlay IP and pod CIDRs.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use hashbrown::HashMap;

use crate::tables::lpm::Lpm;
use crate::types::Prefix;
use crate::wire::{ethernet, geneve, ipv4, udp, vxlan};

/// How traffic to a node's pods is carried.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Encap {
    /// VXLAN over UDP 4789, source identity in the VNI.
    Vxlan,
    /// Geneve over UDP 6081, source identity in the VNI.
    Geneve,
    /// No tunnel: the underlay routes pod CIDRs (native routing).
    Native,
}

impl Encap {
    /// Bytes the route stage may add, in the worst case, to a pod's IP packet sent to a node
    /// reached this way; the outer Ethernet header is not counted, as no MTU counts its own
    /// link header. The one definition of the tunnel overhead: the route stage's fit check
    /// and the pod MTU the agent hands out ([`Encap::pod_mtu`]) both come from here.
    ///
    /// - VXLAN: outer IPv4 20 + UDP 8 + VXLAN 8 + inner Ethernet 14 = 50, plus the 8-byte DSR
    ///   IPv4 option inserted in the inner header for a DSR service: 58.
    /// - Geneve: outer IPv4 20 + UDP 8 + Geneve 8 + inner Ethernet 14 = 50, plus the 12-byte
    ///   Geneve DSR option: 62 (the inner header gets no IPv4 option).
    /// - Native: the 8-byte DSR IPv4 option.
    ///
    /// The DSR share is reserved whether or not the packet belongs to a DSR service (and for
    /// IPv6, which never carries it): a pod has one MTU for every destination, and a flow's
    /// packets must not start failing when a service turns DSR on.
    pub const fn overhead(self) -> u16 {
        const TUNNEL_BASE: usize =
            ipv4::HEADER_LEN + udp::HEADER_LEN + vxlan::HEADER_LEN + ethernet::HEADER_LEN;
        let bytes = match self {
            Encap::Vxlan => TUNNEL_BASE + ipv4::DSR_OPTION_LEN,
            Encap::Geneve => {
                ipv4::HEADER_LEN
                    + udp::HEADER_LEN
                    + geneve::HEADER_LEN
                    + ethernet::HEADER_LEN
                    + geneve::DSR_OPTION_LEN
            }
            Encap::Native => ipv4::DSR_OPTION_LEN,
        };
        bytes as u16
    }

    /// The largest IP packet a pod may send to a node reached this way when the uplink's MTU
    /// is `uplink_mtu`: the pods' interface MTU, and the next-hop MTU the dataplane reports in
    /// ICMP "fragmentation needed" / "packet too big" errors.
    pub const fn pod_mtu(self, uplink_mtu: u16) -> u16 {
        uplink_mtu.saturating_sub(self.overhead())
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Encap::Vxlan => "vxlan",
            Encap::Geneve => "geneve",
            Encap::Native => "native",
        }
    }
}

impl fmt::Display for Encap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Error from parsing an [`Encap`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown encapsulation `{0}`: expected vxlan, geneve or native")]
pub struct EncapParseError(pub String);

impl FromStr for Encap {
    type Err = EncapParseError;

    /// Parses `vxlan`, `geneve` or `native`, ignoring ASCII case.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [Encap::Vxlan, Encap::Geneve, Encap::Native]
            .into_iter()
            .find(|e| e.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| EncapParseError(s.to_string()))
    }
}

/// Another node of the cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    pub name: String,
    /// The node's IP on the underlay network: the outer destination of tunnel packets.
    pub underlay: IpAddr,
    /// The prefixes the node allocates pod addresses from.
    pub pod_cidrs: Vec<Prefix>,
    pub encap: Encap,
}

/// Why an upsert was refused. Nothing was changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NodeError {
    #[error("a node needs a non-empty name")]
    EmptyName,
    #[error("node {node}: underlay IP {underlay} is unspecified or multicast: give the node's unicast address on the underlay network")]
    UnusableUnderlay { node: String, underlay: IpAddr },
    #[error("node {node}: underlay IP {underlay} already belongs to node {owner}: remove node {owner} first or fix the address")]
    UnderlayInUse {
        node: String,
        owner: String,
        underlay: IpAddr,
    },
    #[error("node {node}: pod CIDR {cidr} overlaps pod CIDR {owner_cidr} of node {owner}: pod CIDRs of different nodes must be disjoint (check IPAM)")]
    PodCidrOverlap {
        node: String,
        cidr: Prefix,
        owner: String,
        owner_cidr: Prefix,
    },
}

fn overlaps(a: &Prefix, b: &Prefix) -> bool {
    a.covers(b) || b.covers(a)
}

/// The other nodes of the cluster (see the module doc).
#[derive(Clone, Debug, Default)]
pub struct Nodes {
    slots: Vec<Option<Node>>,
    /// Vacant slots, reused before the slab grows.
    free: Vec<usize>,
    by_name: HashMap<String, usize>,
    by_underlay: HashMap<IpAddr, usize>,
    by_pod_cidr: Lpm<usize>,
}

impl Nodes {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a node, or replaces the one with the same name (re-indexing its underlay IP and
    /// pod CIDRs). On error nothing changes.
    pub fn upsert(&mut self, node: Node) -> Result<(), NodeError> {
        self.validate(&node)?;
        match self.by_name.get(node.name.as_str()).copied() {
            Some(slot) => self.replace(slot, node),
            None => self.add(node),
        }
        Ok(())
    }

    /// Removes a node; returns it.
    pub fn remove(&mut self, name: &str) -> Option<Node> {
        let slot = *self.by_name.get(name)?;
        let node = self.slots.get_mut(slot)?.take()?;
        self.unindex(&node);
        self.free.push(slot);
        Some(node)
    }

    pub fn get(&self, name: &str) -> Option<&Node> {
        self.at(self.by_name.get(name))
    }

    /// Fast path: the node whose pod CIDRs contain `addr` (longest match).
    #[inline]
    pub fn by_pod_ip(&self, addr: IpAddr) -> Option<&Node> {
        self.at(self.by_pod_cidr.lookup_value(addr))
    }

    /// Fast path: the node whose underlay IP is `addr` (is this tunnel packet from a peer).
    #[inline]
    pub fn by_underlay(&self, addr: IpAddr) -> Option<&Node> {
        self.at(self.by_underlay.get(&addr))
    }

    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    /// Every node, in slot order (not name order).
    pub fn iter(&self) -> impl Iterator<Item = &Node> + '_ {
        self.slots.iter().flatten()
    }

    #[inline]
    fn at(&self, slot: Option<&usize>) -> Option<&Node> {
        self.slots.get(*slot?)?.as_ref()
    }

    /// Checks every invariant `node` could break, before anything is changed. The overlap
    /// check scans every other node's CIDRs: control path, a few thousand comparisons at most.
    fn validate(&self, node: &Node) -> Result<(), NodeError> {
        if node.name.is_empty() {
            return Err(NodeError::EmptyName);
        }
        if node.underlay.is_unspecified() || node.underlay.is_multicast() {
            return Err(NodeError::UnusableUnderlay {
                node: node.name.clone(),
                underlay: node.underlay,
            });
        }
        if let Some(owner) = self.by_underlay(node.underlay) {
            if owner.name != node.name {
                return Err(NodeError::UnderlayInUse {
                    node: node.name.clone(),
                    owner: owner.name.clone(),
                    underlay: node.underlay,
                });
            }
        }
        for other in self.iter().filter(|other| other.name != node.name) {
            for cidr in &node.pod_cidrs {
                if let Some(owner_cidr) = other.pod_cidrs.iter().find(|oc| overlaps(cidr, oc)) {
                    return Err(NodeError::PodCidrOverlap {
                        node: node.name.clone(),
                        cidr: *cidr,
                        owner: other.name.clone(),
                        owner_cidr: *owner_cidr,
                    });
                }
            }
        }
        Ok(())
    }

    fn add(&mut self, node: Node) {
        let slot = match self.free.pop() {
            Some(slot) if slot < self.slots.len() => slot,
            _ => {
                self.slots.push(None);
                self.slots.len() - 1
            }
        };
        self.index(&node, slot);
        if let Some(cell) = self.slots.get_mut(slot) {
            *cell = Some(node);
        }
    }

    fn replace(&mut self, slot: usize, node: Node) {
        let Some(old) = self.slots.get_mut(slot).and_then(Option::take) else {
            return;
        };
        // Validation showed no new value belongs to another node, so dropping the old entries
        // and adding the new ones cannot steal another node's entry.
        self.unindex(&old);
        self.index(&node, slot);
        if let Some(cell) = self.slots.get_mut(slot) {
            *cell = Some(node);
        }
    }

    fn index(&mut self, node: &Node, slot: usize) {
        self.by_name.insert(node.name.clone(), slot);
        self.by_underlay.insert(node.underlay, slot);
        for cidr in &node.pod_cidrs {
            self.by_pod_cidr.insert(*cidr, slot);
        }
    }

    fn unindex(&mut self, node: &Node) {
        self.by_name.remove(node.name.as_str());
        self.by_underlay.remove(&node.underlay);
        for cidr in &node.pod_cidrs {
            self.by_pod_cidr.remove(cidr);
        }
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

    fn node(name: &str, underlay: &str, cidrs: &[&str]) -> Node {
        Node {
            name: name.to_string(),
            underlay: ip(underlay),
            pod_cidrs: cidrs.iter().map(|c| p(c)).collect(),
            encap: Encap::Vxlan,
        }
    }

    fn cluster() -> Nodes {
        let mut n = Nodes::new();
        n.upsert(node("a", "192.168.0.1", &["10.0.1.0/24", "fd00:1::/64"]))
            .unwrap();
        n.upsert(node("b", "192.168.0.2", &["10.0.2.0/24", "fd00:2::/64"]))
            .unwrap();
        n.upsert(node("c", "fd99::3", &["10.0.3.0/24"])).unwrap();
        n
    }

    fn names(n: &Nodes) -> Vec<String> {
        let mut v: Vec<_> = n.iter().map(|x| x.name.clone()).collect();
        v.sort();
        v
    }

    fn owner_of(n: &Nodes, addr: &str) -> Option<String> {
        n.by_pod_ip(ip(addr)).map(|x| x.name.clone())
    }

    #[test]
    fn encap_text_round_trip() {
        for e in [Encap::Vxlan, Encap::Geneve, Encap::Native] {
            assert_eq!(e.to_string().parse::<Encap>(), Ok(e));
        }
        assert_eq!("VXLAN".parse::<Encap>(), Ok(Encap::Vxlan));
        assert_eq!(Encap::Geneve.to_string(), "geneve");
        let err = "gre".parse::<Encap>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown encapsulation `gre`: expected vxlan, geneve or native"
        );
        // The tunnels' ports are the node's configuration, defaulting to IANA's.
        let ports = crate::tables::TunnelPorts::default();
        assert_eq!(ports.of(Encap::Vxlan), Some(4789));
        assert_eq!(ports.of(Encap::Geneve), Some(6081));
        assert_eq!(ports.of(Encap::Native), None);
    }

    #[test]
    fn overhead_covers_what_the_route_stage_adds() {
        // Spelled out once more by hand: outer IPv4 + UDP + tunnel header + inner Ethernet,
        // plus the DSR option of each mode.
        assert_eq!(Encap::Vxlan.overhead(), 20 + 8 + 8 + 14 + 8);
        assert_eq!(Encap::Geneve.overhead(), 20 + 8 + 8 + 14 + 12);
        assert_eq!(Encap::Native.overhead(), 8);
        assert_eq!(Encap::Vxlan.pod_mtu(1500), 1442);
        assert_eq!(Encap::Geneve.pod_mtu(1500), 1438);
        assert_eq!(Encap::Native.pod_mtu(9000), 8992);
        assert_eq!(Encap::Geneve.pod_mtu(40), 0);
    }

    #[test]
    fn lookups() {
        let n = cluster();
        assert_eq!(n.len(), 3);
        assert_eq!(owner_of(&n, "10.0.1.7").as_deref(), Some("a"));
        assert_eq!(owner_of(&n, "fd00:2::9").as_deref(), Some("b"));
        assert_eq!(owner_of(&n, "10.0.3.255").as_deref(), Some("c"));
        assert_eq!(owner_of(&n, "10.0.4.1"), None);
        assert_eq!(owner_of(&n, "fd00:3::1"), None);
        assert_eq!(
            n.by_underlay(ip("fd99::3")).map(|x| x.name.as_str()),
            Some("c")
        );
        assert!(n.by_underlay(ip("192.168.0.9")).is_none());
        assert_eq!(n.get("b").map(|x| x.underlay), Some(ip("192.168.0.2")));
        assert!(n.get("z").is_none());
    }

    #[test]
    fn nested_cidrs_of_one_node_are_allowed() {
        let mut n = Nodes::new();
        n.upsert(node("a", "192.168.0.1", &["10.0.0.0/16", "10.0.5.0/24"]))
            .unwrap();
        assert_eq!(owner_of(&n, "10.0.5.1").as_deref(), Some("a"));
        assert_eq!(owner_of(&n, "10.0.6.1").as_deref(), Some("a"));
    }

    #[test]
    fn update_reindexes() {
        let mut n = cluster();
        let moved = Node {
            encap: Encap::Geneve,
            ..node("a", "192.168.0.11", &["10.0.11.0/24"])
        };
        n.upsert(moved.clone()).unwrap();
        assert_eq!(n.len(), 3);
        assert_eq!(n.get("a"), Some(&moved));
        assert_eq!(owner_of(&n, "10.0.11.1").as_deref(), Some("a"));
        assert_eq!(owner_of(&n, "10.0.1.7"), None);
        assert_eq!(owner_of(&n, "fd00:1::1"), None);
        assert!(n.by_underlay(ip("192.168.0.1")).is_none());
        assert_eq!(
            n.by_underlay(ip("192.168.0.11")).map(|x| x.name.as_str()),
            Some("a")
        );
        // The released CIDR and underlay IP can go to another node.
        n.upsert(node("d", "192.168.0.1", &["10.0.1.0/24"]))
            .unwrap();
        assert_eq!(owner_of(&n, "10.0.1.7").as_deref(), Some("d"));
    }

    #[test]
    fn an_update_may_keep_its_own_values() {
        let mut n = cluster();
        let same = node("a", "192.168.0.1", &["10.0.1.0/24", "10.0.1.0/25"]);
        n.upsert(same).unwrap();
        assert_eq!(owner_of(&n, "10.0.1.200").as_deref(), Some("a"));
        assert_eq!(n.len(), 3);
    }

    #[test]
    fn conflicts_name_both_nodes_and_change_nothing() {
        let mut n = cluster();
        let before: Vec<Node> = {
            let mut v: Vec<_> = n.iter().cloned().collect();
            v.sort_by(|a, b| a.name.cmp(&b.name));
            v
        };
        let cases = [
            (
                node("d", "192.168.0.2", &["10.0.4.0/24"]),
                NodeError::UnderlayInUse {
                    node: "d".into(),
                    owner: "b".into(),
                    underlay: ip("192.168.0.2"),
                },
            ),
            (
                // Contained in b's CIDR.
                node("d", "192.168.0.4", &["10.0.4.0/24", "10.0.2.128/25"]),
                NodeError::PodCidrOverlap {
                    node: "d".into(),
                    cidr: p("10.0.2.128/25"),
                    owner: "b".into(),
                    owner_cidr: p("10.0.2.0/24"),
                },
            ),
            (
                // Containing b's and c's CIDRs, as an update of a.
                node("a", "192.168.0.1", &["10.0.0.0/16"]),
                NodeError::PodCidrOverlap {
                    node: "a".into(),
                    cidr: p("10.0.0.0/16"),
                    owner: "b".into(),
                    owner_cidr: p("10.0.2.0/24"),
                },
            ),
            (
                node("d", "192.168.0.4", &["::/0"]),
                NodeError::PodCidrOverlap {
                    node: "d".into(),
                    cidr: p("::/0"),
                    owner: "a".into(),
                    owner_cidr: p("fd00:1::/64"),
                },
            ),
            (node("", "192.168.0.4", &[]), NodeError::EmptyName),
            (
                node("d", "0.0.0.0", &[]),
                NodeError::UnusableUnderlay {
                    node: "d".into(),
                    underlay: ip("0.0.0.0"),
                },
            ),
        ];
        for (bad, want) in cases {
            let got = n.upsert(bad).unwrap_err();
            // Which other node is named first depends on slot order; the kind and the new
            // node must match, and the named owner must really hold the value.
            match (&got, &want) {
                (
                    NodeError::PodCidrOverlap {
                        node, cidr, owner, ..
                    },
                    NodeError::PodCidrOverlap {
                        node: wn, cidr: wc, ..
                    },
                ) => {
                    assert_eq!((node, cidr), (wn, wc));
                    let holder = n.get(owner).unwrap();
                    assert!(holder.pod_cidrs.iter().any(|oc| overlaps(cidr, oc)));
                }
                _ => assert_eq!(got, want),
            }
            let mut after: Vec<_> = n.iter().cloned().collect();
            after.sort_by(|a, b| a.name.cmp(&b.name));
            assert_eq!(after, before);
            assert_eq!(owner_of(&n, "10.0.1.7").as_deref(), Some("a"));
            assert_eq!(owner_of(&n, "10.0.4.1"), None);
            assert!(n.get("d").is_none());
        }
        // The message names both nodes and both CIDRs.
        let msg = NodeError::PodCidrOverlap {
            node: "d".into(),
            cidr: p("10.0.2.128/25"),
            owner: "b".into(),
            owner_cidr: p("10.0.2.0/24"),
        }
        .to_string();
        assert_eq!(msg, "node d: pod CIDR 10.0.2.128/25 overlaps pod CIDR 10.0.2.0/24 of node b: pod CIDRs of different nodes must be disjoint (check IPAM)");
    }

    #[test]
    fn remove_releases_everything_and_slot_is_reused() {
        let mut n = cluster();
        let b = n.remove("b").unwrap();
        assert_eq!(b.name, "b");
        assert!(n.remove("b").is_none());
        assert_eq!(names(&n), ["a", "c"]);
        assert_eq!(owner_of(&n, "10.0.2.1"), None);
        assert_eq!(owner_of(&n, "fd00:2::1"), None);
        assert!(n.by_underlay(ip("192.168.0.2")).is_none());
        n.upsert(node("e", "192.168.0.2", &["10.0.2.0/24", "fd00:2::/48"]))
            .unwrap();
        assert_eq!(n.slots.len(), 3, "the vacated slot is reused");
        assert_eq!(owner_of(&n, "10.0.3.1").as_deref(), Some("c"));
        assert_eq!(owner_of(&n, "10.0.2.1").as_deref(), Some("e"));
        assert_eq!(names(&n), ["a", "c", "e"]);
    }
}
