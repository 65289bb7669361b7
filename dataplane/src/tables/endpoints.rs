//! The local endpoints: the pod interfaces of this node, with their addresses, identity and
//! policy.
//!
//! # Storage
//! Each [`Endpoint`] is stored once, in a slab (`Vec<Option<Endpoint>>` plus a free list of
//! vacated slots). Five hash indexes map the endpoint id, interface index, IPv4, IPv6 and MAC
//! to the slot, so a fast-path lookup ([`Endpoints::by_ifindex`]: which pod sent this frame;
//! [`Endpoints::by_ip`]: is the destination local) is one hash probe and one indexed load, and
//! allocates nothing.
//!
//! # Invariants
//! - The id, interface index, MAC, IPv4 and IPv6 of an endpoint each belong to no other
//!   endpoint; an upsert that would share one is refused with an [`EndpointError`] naming both
//!   endpoints.
//! - Every endpoint has at least one IP address, and its addresses are usable unicast ones
//!   (no unspecified, multicast or broadcast IP, no multicast or all-zero MAC).
//! - Each index holds exactly the values of the stored endpoints and points to their slot.
//! - An upsert that fails changes nothing. An upsert of an existing id replaces its spec,
//!   re-indexes whatever changed and keeps its policy.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use hashbrown::HashMap;

use crate::tables::policy::EndpointPolicy;
use crate::types::{Identity, MacAddr};

/// An endpoint's id, unique on this node (Cilium's endpoint id).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EndpointId(pub u32);

impl fmt::Display for EndpointId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Where an endpoint lives in its table's slab: a lookup by slot is one indexed load, no hash.
///
/// Valid only for the [`Endpoints`] table (version) that returned it: the pipeline takes a
/// slot from one table and uses it only while processing the same batch against that table.
/// A slot of another version may name another endpoint or none, never memory out of bounds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EndpointSlot(u32);

/// What the control process says about an endpoint (everything but its policy).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct EndpointSpec {
    pub id: EndpointId,
    /// The host-side interface (veth) of the pod.
    pub ifindex: u32,
    /// The pod's MAC address.
    pub mac: MacAddr,
    pub ipv4: Option<Ipv4Addr>,
    pub ipv6: Option<Ipv6Addr>,
    pub identity: Identity,
}

impl EndpointSpec {
    /// The endpoint's addresses, IPv4 first.
    pub fn ips(&self) -> impl Iterator<Item = IpAddr> {
        self.ipv4
            .map(IpAddr::V4)
            .into_iter()
            .chain(self.ipv6.map(IpAddr::V6))
    }
}

/// A stored endpoint: its spec and its policy maps.
#[derive(Clone, Debug)]
pub struct Endpoint {
    pub spec: EndpointSpec,
    /// Shared between table versions: publishing a new version of the endpoints table copies
    /// the pointer, and editing one endpoint's policy copies only that policy.
    pub policy: Arc<EndpointPolicy>,
}

impl Endpoint {
    pub fn id(&self) -> EndpointId {
        self.spec.id
    }

    pub fn identity(&self) -> Identity {
        self.spec.identity
    }
}

/// Why an upsert was refused. Nothing was changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EndpointError {
    #[error("endpoint {id} has neither an IPv4 nor an IPv6 address: give it at least one")]
    NoAddress { id: EndpointId },
    #[error("endpoint {id}: {addr} is not a unicast address (unspecified, multicast or broadcast): give the pod a unicast IP")]
    UnusableIp { id: EndpointId, addr: IpAddr },
    #[error("endpoint {id}: MAC {mac} is all-zero or multicast: give the pod a unicast MAC")]
    UnusableMac { id: EndpointId, mac: MacAddr },
    #[error("endpoint {id}: IP {addr} already belongs to endpoint {owner}: remove or re-address endpoint {owner} first")]
    IpInUse {
        id: EndpointId,
        owner: EndpointId,
        addr: IpAddr,
    },
    #[error("endpoint {id}: MAC {mac} already belongs to endpoint {owner}: remove endpoint {owner} first or give a different MAC")]
    MacInUse {
        id: EndpointId,
        owner: EndpointId,
        mac: MacAddr,
    },
    #[error("endpoint {id}: interface index {ifindex} already belongs to endpoint {owner}: remove endpoint {owner} first (its interface was probably deleted and the index reused)")]
    IfindexInUse {
        id: EndpointId,
        owner: EndpointId,
        ifindex: u32,
    },
}

/// The MAC as a fixed-width integer: cheaper to hash than six bytes.
fn mac_key(mac: MacAddr) -> u64 {
    let b = mac.0;
    u64::from_be_bytes([0, 0, b[0], b[1], b[2], b[3], b[4], b[5]])
}

fn is_unicast_ip(addr: IpAddr) -> bool {
    match addr {
        IpAddr::V4(a) => !(a.is_unspecified() || a.is_multicast() || a.is_broadcast()),
        IpAddr::V6(a) => !(a.is_unspecified() || a.is_multicast()),
    }
}

/// The local endpoints (see the module doc).
#[derive(Clone, Debug, Default)]
pub struct Endpoints {
    slots: Vec<Option<Endpoint>>,
    /// Vacant slots, reused before the slab grows.
    free: Vec<usize>,
    by_id: HashMap<EndpointId, usize>,
    by_ifindex: HashMap<u32, usize>,
    by_ipv4: HashMap<u32, usize>,
    by_ipv6: HashMap<u128, usize>,
    by_mac: HashMap<u64, usize>,
    /// The node's own policy (Cilium's host firewall, from host policies): traffic to and from
    /// the node's own addresses through the dataplane. Kept beside the pods' policies because
    /// it is edited the same way and read by the same stage.
    host_policy: Arc<EndpointPolicy>,
}

impl Endpoints {
    pub fn new() -> Self {
        Self::default()
    }

    /// The host's policy (not enforced in either direction until a host policy selects it).
    #[inline]
    pub fn host_policy(&self) -> &EndpointPolicy {
        &self.host_policy
    }

    /// The host's policy, for the control path to edit in place.
    pub fn host_policy_mut(&mut self) -> &mut EndpointPolicy {
        Arc::make_mut(&mut self.host_policy)
    }

    /// Adds an endpoint, or updates the one with the same id: its addresses, interface and
    /// identity are replaced and re-indexed, its policy is kept. On error nothing changes.
    pub fn upsert(&mut self, spec: EndpointSpec) -> Result<(), EndpointError> {
        self.validate(&spec)?;
        match self.by_id.get(&spec.id).copied() {
            Some(slot) => self.update(slot, spec),
            None => self.add(spec),
        }
        Ok(())
    }

    /// Removes an endpoint; returns it (with its policy).
    pub fn remove(&mut self, id: EndpointId) -> Option<Endpoint> {
        let slot = *self.by_id.get(&id)?;
        let endpoint = self.slots.get_mut(slot)?.take()?;
        self.unindex(&endpoint.spec);
        self.free.push(slot);
        Some(endpoint)
    }

    pub fn get(&self, id: EndpointId) -> Option<&Endpoint> {
        self.at(self.by_id.get(&id))
    }

    /// The endpoint's policy, for the control path to edit in place.
    pub fn policy_mut(&mut self, id: EndpointId) -> Option<&mut EndpointPolicy> {
        let slot = *self.by_id.get(&id)?;
        let endpoint = self.slots.get_mut(slot)?.as_mut()?;
        Some(Arc::make_mut(&mut endpoint.policy))
    }

    /// Fast path: the endpoint in `slot` (from [`slot_by_ip`](Self::slot_by_ip) or
    /// [`slot_by_ifindex`](Self::slot_by_ifindex) on this same table).
    #[inline]
    pub fn by_slot(&self, slot: EndpointSlot) -> Option<&Endpoint> {
        self.slots.get(slot.0 as usize)?.as_ref()
    }

    /// Starts loading the endpoint in `slot` into the cache, without reading it: phase one of
    /// a batch that will look up several endpoints. A no-op off x86_64 or for a slot outside
    /// the slab.
    #[inline]
    pub fn prefetch_slot(&self, slot: EndpointSlot) {
        if let Some(entry) = self.slots.get(slot.0 as usize) {
            crate::tables::prefetch(entry);
        }
    }

    /// Fast path: [`by_ifindex`](Self::by_ifindex), with the endpoint's slot.
    #[inline]
    pub fn slot_by_ifindex(&self, ifindex: u32) -> Option<(EndpointSlot, &Endpoint)> {
        self.at_slot(self.by_ifindex.get(&ifindex))
    }

    /// Fast path: [`by_ip`](Self::by_ip), with the endpoint's slot.
    #[inline]
    pub fn slot_by_ip(&self, addr: IpAddr) -> Option<(EndpointSlot, &Endpoint)> {
        match addr {
            IpAddr::V4(a) => self.at_slot(self.by_ipv4.get(&u32::from(a))),
            IpAddr::V6(a) => self.at_slot(self.by_ipv6.get(&u128::from(a))),
        }
    }

    /// Fast path: the endpoint whose interface received a frame.
    #[inline]
    pub fn by_ifindex(&self, ifindex: u32) -> Option<&Endpoint> {
        self.at(self.by_ifindex.get(&ifindex))
    }

    /// Fast path: the local endpoint that owns `addr`, if the destination is local.
    #[inline]
    pub fn by_ip(&self, addr: IpAddr) -> Option<&Endpoint> {
        match addr {
            IpAddr::V4(a) => self.by_ipv4(a),
            IpAddr::V6(a) => self.by_ipv6(a),
        }
    }

    #[inline]
    pub fn by_ipv4(&self, addr: Ipv4Addr) -> Option<&Endpoint> {
        self.at(self.by_ipv4.get(&u32::from(addr)))
    }

    #[inline]
    pub fn by_ipv6(&self, addr: Ipv6Addr) -> Option<&Endpoint> {
        self.at(self.by_ipv6.get(&u128::from(addr)))
    }

    #[inline]
    pub fn by_mac(&self, mac: MacAddr) -> Option<&Endpoint> {
        self.at(self.by_mac.get(&mac_key(mac)))
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// Every endpoint, in slot order (not id order).
    pub fn iter(&self) -> impl Iterator<Item = &Endpoint> + '_ {
        self.slots.iter().flatten()
    }

    /// Approximate heap bytes, policies included (for the benchmark's memory report).
    pub fn approx_bytes(&self) -> usize {
        fn map_bytes<K, V>(m: &HashMap<K, V>) -> usize {
            m.capacity() * (std::mem::size_of::<(K, V)>() + 1)
        }
        let slab = self.slots.capacity() * std::mem::size_of::<Option<Endpoint>>()
            + self.free.capacity() * std::mem::size_of::<usize>();
        let indexes = map_bytes(&self.by_id)
            + map_bytes(&self.by_ifindex)
            + map_bytes(&self.by_ipv4)
            + map_bytes(&self.by_ipv6)
            + map_bytes(&self.by_mac);
        let policies: usize = self
            .iter()
            .map(|e| e.policy.ingress.map.approx_bytes() + e.policy.egress.map.approx_bytes())
            .sum();
        slab + indexes + policies
    }

    #[inline]
    fn at(&self, slot: Option<&usize>) -> Option<&Endpoint> {
        self.slots.get(*slot?)?.as_ref()
    }

    #[inline]
    fn at_slot(&self, slot: Option<&usize>) -> Option<(EndpointSlot, &Endpoint)> {
        let slot = *slot?;
        let endpoint = self.slots.get(slot)?.as_ref()?;
        // Slots are created by `add` one at a time; a table never holds 2^32 endpoints.
        Some((EndpointSlot(u32::try_from(slot).ok()?), endpoint))
    }

    /// The endpoint other than `id` that an index entry points to, if any.
    fn other_owner(&self, slot: Option<&usize>, id: EndpointId) -> Option<EndpointId> {
        let owner = self.at(slot)?.id();
        (owner != id).then_some(owner)
    }

    /// Checks every invariant `spec` could break, before anything is changed.
    fn validate(&self, spec: &EndpointSpec) -> Result<(), EndpointError> {
        let id = spec.id;
        if spec.ipv4.is_none() && spec.ipv6.is_none() {
            return Err(EndpointError::NoAddress { id });
        }
        if let Some(addr) = spec.ips().find(|a| !is_unicast_ip(*a)) {
            return Err(EndpointError::UnusableIp { id, addr });
        }
        if spec.mac.is_multicast() || spec.mac == MacAddr::ZERO {
            return Err(EndpointError::UnusableMac { id, mac: spec.mac });
        }
        if let Some(owner) = self.other_owner(self.by_ifindex.get(&spec.ifindex), id) {
            return Err(EndpointError::IfindexInUse {
                id,
                owner,
                ifindex: spec.ifindex,
            });
        }
        if let Some(owner) = self.other_owner(self.by_mac.get(&mac_key(spec.mac)), id) {
            return Err(EndpointError::MacInUse {
                id,
                owner,
                mac: spec.mac,
            });
        }
        for addr in spec.ips() {
            let slot = match addr {
                IpAddr::V4(a) => self.by_ipv4.get(&u32::from(a)),
                IpAddr::V6(a) => self.by_ipv6.get(&u128::from(a)),
            };
            if let Some(owner) = self.other_owner(slot, id) {
                return Err(EndpointError::IpInUse { id, owner, addr });
            }
        }
        Ok(())
    }

    fn add(&mut self, spec: EndpointSpec) {
        let endpoint = Some(Endpoint {
            spec,
            policy: Arc::default(),
        });
        let slot = match self.free.pop() {
            Some(slot) if slot < self.slots.len() => {
                self.slots[slot] = endpoint;
                slot
            }
            _ => {
                self.slots.push(endpoint);
                self.slots.len() - 1
            }
        };
        self.index(&spec, slot);
    }

    fn update(&mut self, slot: usize, spec: EndpointSpec) {
        let Some(Some(endpoint)) = self.slots.get_mut(slot) else {
            return;
        };
        let old = std::mem::replace(&mut endpoint.spec, spec);
        // Validation showed every new value is free or already ours, so dropping all old
        // entries and adding the new ones cannot steal another endpoint's entry.
        self.unindex(&old);
        self.index(&spec, slot);
    }

    fn index(&mut self, spec: &EndpointSpec, slot: usize) {
        self.by_id.insert(spec.id, slot);
        self.by_ifindex.insert(spec.ifindex, slot);
        self.by_mac.insert(mac_key(spec.mac), slot);
        if let Some(a) = spec.ipv4 {
            self.by_ipv4.insert(u32::from(a), slot);
        }
        if let Some(a) = spec.ipv6 {
            self.by_ipv6.insert(u128::from(a), slot);
        }
    }

    fn unindex(&mut self, spec: &EndpointSpec) {
        self.by_id.remove(&spec.id);
        self.by_ifindex.remove(&spec.ifindex);
        self.by_mac.remove(&mac_key(spec.mac));
        if let Some(a) = spec.ipv4 {
            self.by_ipv4.remove(&u32::from(a));
        }
        if let Some(a) = spec.ipv6 {
            self.by_ipv6.remove(&u128::from(a));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tables::policy::{PolicyEntry, PolicyKey};

    fn spec(id: u32) -> EndpointSpec {
        let n = id as u8;
        EndpointSpec {
            id: EndpointId(id),
            ifindex: 100 + id,
            mac: MacAddr([0x02, 0, 0, 0, 0, n]),
            ipv4: Some(Ipv4Addr::new(10, 0, 1, n)),
            ipv6: Some(Ipv6Addr::new(0xfd00, 0, 0, 1, 0, 0, 0, u16::from(n))),
            identity: Identity(1000 + id),
        }
    }

    fn table(ids: &[u32]) -> Endpoints {
        let mut t = Endpoints::new();
        for id in ids {
            t.upsert(spec(*id)).unwrap();
        }
        t
    }

    /// Every index agrees with `s` (and therefore the endpoint is fully reachable).
    fn assert_indexed(t: &Endpoints, s: &EndpointSpec) {
        let id = Some(s.id);
        assert_eq!(t.get(s.id).map(|e| e.spec), Some(*s));
        assert_eq!(t.by_ifindex(s.ifindex).map(Endpoint::id), id);
        assert_eq!(t.by_mac(s.mac).map(Endpoint::id), id);
        let (slot, _) = t.slot_by_ifindex(s.ifindex).unwrap();
        assert_eq!(t.by_slot(slot).map(Endpoint::id), id);
        for addr in s.ips() {
            assert_eq!(t.by_ip(addr).map(Endpoint::id), id);
            assert_eq!(t.slot_by_ip(addr).map(|(s, _)| s), Some(slot));
        }
    }

    fn snapshot(t: &Endpoints) -> Vec<EndpointSpec> {
        let mut v: Vec<_> = t.iter().map(|e| e.spec).collect();
        v.sort_by_key(|s| s.id);
        v
    }

    #[test]
    fn upsert_and_lookups() {
        let t = table(&[1, 2, 3]);
        assert_eq!(t.len(), 3);
        for id in [1, 2, 3] {
            assert_indexed(&t, &spec(id));
        }
        let s = spec(2);
        assert_eq!(
            t.by_ipv4(s.ipv4.unwrap()).map(Endpoint::identity),
            Some(Identity(1002))
        );
        assert_eq!(
            t.by_ipv6(s.ipv6.unwrap()).map(Endpoint::id),
            Some(EndpointId(2))
        );
        assert!(t.by_ifindex(99).is_none());
        assert!(t.by_ip("10.0.1.99".parse().unwrap()).is_none());
        assert!(t.by_mac(MacAddr([0x02, 0, 0, 0, 0, 99])).is_none());
        assert!(t.get(EndpointId(9)).is_none());
        assert!(t.approx_bytes() > 0);
    }

    #[test]
    fn single_stack_endpoints() {
        let mut t = Endpoints::new();
        let v4 = EndpointSpec {
            ipv6: None,
            ..spec(1)
        };
        let v6 = EndpointSpec {
            ipv4: None,
            ..spec(2)
        };
        t.upsert(v4).unwrap();
        t.upsert(v6).unwrap();
        assert_indexed(&t, &v4);
        assert_indexed(&t, &v6);
        assert!(t.by_ip(IpAddr::V6(spec(1).ipv6.unwrap())).is_none());
        assert!(t.by_ip(IpAddr::V4(spec(2).ipv4.unwrap())).is_none());
    }

    #[test]
    fn update_reindexes_and_keeps_policy() {
        let mut t = table(&[1, 2]);
        let key = PolicyKey::l3(Identity(7));
        t.policy_mut(EndpointId(1)).unwrap().ingress.enforced = true;
        t.policy_mut(EndpointId(1))
            .unwrap()
            .ingress
            .map
            .insert(key, PolicyEntry::allow(3))
            .unwrap();

        let old = spec(1);
        let new = EndpointSpec {
            ifindex: 500,
            mac: MacAddr([0x02, 0, 0, 0, 5, 0]),
            ipv4: Some(Ipv4Addr::new(10, 0, 9, 9)),
            ipv6: None,
            identity: Identity(4242),
            ..old
        };
        t.upsert(new).unwrap();
        assert_eq!(t.len(), 2);
        assert_indexed(&t, &new);
        assert!(t.by_ifindex(old.ifindex).is_none());
        assert!(t.by_mac(old.mac).is_none());
        assert!(t.by_ipv4(old.ipv4.unwrap()).is_none());
        assert!(t.by_ipv6(old.ipv6.unwrap()).is_none());
        let ep = t.get(EndpointId(1)).unwrap();
        assert!(ep.policy.ingress.enforced);
        assert_eq!(ep.policy.ingress.map.get(&key), Some(PolicyEntry::allow(3)));
        assert_eq!(ep.identity(), Identity(4242));
        assert_indexed(&t, &spec(2));

        // The freed values can now go to another endpoint.
        let taker = EndpointSpec {
            id: EndpointId(3),
            ..old
        };
        t.upsert(taker).unwrap();
        assert_indexed(&t, &taker);
    }

    #[test]
    fn same_spec_twice_is_a_no_op() {
        let mut t = table(&[1]);
        t.upsert(spec(1)).unwrap();
        assert_eq!(t.len(), 1);
        assert_indexed(&t, &spec(1));
    }

    #[test]
    fn conflicts_name_both_endpoints_and_change_nothing() {
        let mut t = table(&[1, 2]);
        let before = snapshot(&t);
        let s2 = spec(2);
        let cases = [
            (
                EndpointSpec {
                    ifindex: s2.ifindex,
                    ..spec(3)
                },
                EndpointError::IfindexInUse {
                    id: EndpointId(3),
                    owner: EndpointId(2),
                    ifindex: s2.ifindex,
                },
            ),
            (
                EndpointSpec {
                    mac: s2.mac,
                    ..spec(3)
                },
                EndpointError::MacInUse {
                    id: EndpointId(3),
                    owner: EndpointId(2),
                    mac: s2.mac,
                },
            ),
            (
                EndpointSpec {
                    ipv4: s2.ipv4,
                    ..spec(3)
                },
                EndpointError::IpInUse {
                    id: EndpointId(3),
                    owner: EndpointId(2),
                    addr: IpAddr::V4(s2.ipv4.unwrap()),
                },
            ),
            (
                // An update of endpoint 1 that would take endpoint 2's IPv6.
                EndpointSpec {
                    ipv6: s2.ipv6,
                    ..spec(1)
                },
                EndpointError::IpInUse {
                    id: EndpointId(1),
                    owner: EndpointId(2),
                    addr: IpAddr::V6(s2.ipv6.unwrap()),
                },
            ),
        ];
        for (bad, want) in cases {
            assert_eq!(t.upsert(bad), Err(want.clone()));
            let msg = want.to_string();
            assert!(msg.contains("endpoint 2"), "{msg}");
            assert_eq!(snapshot(&t), before);
            assert_indexed(&t, &spec(1));
            assert_indexed(&t, &spec(2));
            assert!(t.get(EndpointId(3)).is_none());
        }
    }

    #[test]
    fn invalid_specs_are_refused() {
        let mut t = table(&[1]);
        let before = snapshot(&t);
        let no_ip = EndpointSpec {
            ipv4: None,
            ipv6: None,
            ..spec(1)
        };
        assert_eq!(
            t.upsert(no_ip),
            Err(EndpointError::NoAddress { id: EndpointId(1) })
        );
        let multicast_mac = EndpointSpec {
            mac: MacAddr([0x01, 0, 0x5e, 0, 0, 1]),
            ..spec(2)
        };
        assert!(matches!(
            t.upsert(multicast_mac),
            Err(EndpointError::UnusableMac { .. })
        ));
        let zero_mac = EndpointSpec {
            mac: MacAddr::ZERO,
            ..spec(2)
        };
        assert!(matches!(
            t.upsert(zero_mac),
            Err(EndpointError::UnusableMac { .. })
        ));
        for bad in ["0.0.0.0", "224.0.0.1", "255.255.255.255"] {
            let s = EndpointSpec {
                ipv4: Some(bad.parse().unwrap()),
                ..spec(2)
            };
            assert!(
                matches!(t.upsert(s), Err(EndpointError::UnusableIp { .. })),
                "{bad}"
            );
        }
        let s = EndpointSpec {
            ipv6: Some("ff02::1".parse().unwrap()),
            ..spec(2)
        };
        assert!(matches!(t.upsert(s), Err(EndpointError::UnusableIp { .. })));
        assert_eq!(snapshot(&t), before);
    }

    #[test]
    fn remove_frees_values_and_slot_is_reused() {
        let mut t = table(&[1, 2, 3]);
        t.policy_mut(EndpointId(2)).unwrap().egress.enforced = true;
        let (vacated, _) = t.slot_by_ifindex(spec(2).ifindex).unwrap();
        let removed = t.remove(EndpointId(2)).unwrap();
        assert_eq!(removed.spec, spec(2));
        assert!(
            t.by_slot(vacated).is_none(),
            "a vacant slot names no endpoint"
        );
        t.prefetch_slot(vacated);
        t.prefetch_slot(EndpointSlot(u32::MAX)); // Outside the slab: a no-op.
        assert!(t.by_slot(EndpointSlot(u32::MAX)).is_none());
        assert!(removed.policy.egress.enforced);
        assert!(t.remove(EndpointId(2)).is_none());
        assert!(t.policy_mut(EndpointId(2)).is_none());
        assert_eq!(t.len(), 2);
        let s = spec(2);
        assert!(t.get(s.id).is_none());
        assert!(t.by_ifindex(s.ifindex).is_none());
        assert!(t.by_mac(s.mac).is_none());
        assert!(s.ips().all(|a| t.by_ip(a).is_none()));

        t.upsert(spec(4)).unwrap();
        assert_eq!(t.slots.len(), 3, "the vacated slot is reused");
        assert!(!t.get(EndpointId(4)).unwrap().policy.egress.enforced);
        for id in [1, 3, 4] {
            assert_indexed(&t, &spec(id));
        }
    }

    #[test]
    fn error_messages_are_actionable() {
        let e = EndpointError::IfindexInUse {
            id: EndpointId(3),
            owner: EndpointId(2),
            ifindex: 7,
        };
        assert_eq!(
            e.to_string(),
            "endpoint 3: interface index 7 already belongs to endpoint 2: remove endpoint 2 first (its interface was probably deleted and the index reused)"
        );
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        #[derive(Clone, Debug)]
        enum Op {
            Upsert(EndpointSpec),
            Remove(u32),
            Enforce(u32),
        }

        // Small value domains so that collisions (conflicts, updates) are frequent.
        fn arb_spec() -> impl Strategy<Value = EndpointSpec> {
            (
                0u32..5,
                1u32..6,
                1u8..6,
                proptest::option::of(1u8..6),
                proptest::option::weighted(0.7, 1u16..6),
                256u32..259,
            )
                .prop_map(|(id, ifindex, mac, v4, v6, identity)| EndpointSpec {
                    id: EndpointId(id),
                    ifindex,
                    mac: MacAddr([0x02, 0, 0, 0, 0, mac]),
                    ipv4: v4.map(|n| Ipv4Addr::new(10, 0, 0, n)),
                    ipv6: v6.map(|n| Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, n)),
                    identity: Identity(identity),
                })
        }

        fn arb_op() -> impl Strategy<Value = Op> {
            prop_oneof![
                4 => arb_spec().prop_map(Op::Upsert),
                1 => (0u32..5).prop_map(Op::Remove),
                1 => (0u32..5).prop_map(Op::Enforce),
            ]
        }

        /// The model: a list of (spec, ingress enforced), scanned linearly.
        type Model = Vec<(EndpointSpec, bool)>;

        fn shares_a_value(a: &EndpointSpec, b: &EndpointSpec) -> bool {
            a.ifindex == b.ifindex
                || a.mac == b.mac
                || (a.ipv4.is_some() && a.ipv4 == b.ipv4)
                || (a.ipv6.is_some() && a.ipv6 == b.ipv6)
        }

        fn model_accepts(model: &Model, s: &EndpointSpec) -> bool {
            (s.ipv4.is_some() || s.ipv6.is_some())
                && !model
                    .iter()
                    .any(|(m, _)| m.id != s.id && shares_a_value(m, s))
        }

        /// The owner named in a conflict error must really hold the conflicting value.
        fn conflict_is_real(model: &Model, err: &EndpointError) -> bool {
            let holder = |owner: EndpointId, has: &dyn Fn(&EndpointSpec) -> bool| {
                model.iter().any(|(m, _)| m.id == owner && has(m))
            };
            match err {
                EndpointError::NoAddress { .. } => true,
                EndpointError::IfindexInUse { owner, ifindex, .. } => {
                    holder(*owner, &|m| m.ifindex == *ifindex)
                }
                EndpointError::MacInUse { owner, mac, .. } => holder(*owner, &|m| m.mac == *mac),
                EndpointError::IpInUse { owner, addr, .. } => {
                    holder(*owner, &|m| m.ips().any(|a| a == *addr))
                }
                EndpointError::UnusableIp { .. } | EndpointError::UnusableMac { .. } => false,
            }
        }

        fn check_against_model(t: &Endpoints, model: &Model) -> Result<(), TestCaseError> {
            prop_assert_eq!(t.len(), model.len());
            prop_assert_eq!(t.iter().count(), model.len());
            let find = |pred: &dyn Fn(&EndpointSpec) -> bool| {
                model.iter().find(|(m, _)| pred(m)).map(|(m, _)| m.id)
            };
            for id in 0u32..5 {
                let id = EndpointId(id);
                let want = model.iter().find(|(m, _)| m.id == id);
                let got = t.get(id);
                prop_assert_eq!(got.map(|e| e.spec), want.map(|(m, _)| *m));
                prop_assert_eq!(
                    got.map(|e| e.policy.ingress.enforced),
                    want.map(|(_, enforced)| *enforced)
                );
            }
            for n in 0u8..7 {
                let ifindex = u32::from(n);
                prop_assert_eq!(
                    t.by_ifindex(ifindex).map(Endpoint::id),
                    find(&|m| m.ifindex == ifindex)
                );
                let mac = MacAddr([0x02, 0, 0, 0, 0, n]);
                prop_assert_eq!(t.by_mac(mac).map(Endpoint::id), find(&|m| m.mac == mac));
                let v4 = Ipv4Addr::new(10, 0, 0, n);
                prop_assert_eq!(
                    t.by_ipv4(v4).map(Endpoint::id),
                    find(&|m| m.ipv4 == Some(v4))
                );
                let v6 = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, u16::from(n));
                prop_assert_eq!(
                    t.by_ip(IpAddr::V6(v6)).map(Endpoint::id),
                    find(&|m| m.ipv6 == Some(v6))
                );
            }
            Ok(())
        }

        proptest! {
            #[test]
            fn endpoints_agree_with_a_linear_model(ops in proptest::collection::vec(arb_op(), 1..60)) {
                let mut t = Endpoints::new();
                let mut model: Model = Vec::new();
                for op in ops {
                    match op {
                        Op::Upsert(s) => {
                            let expected_ok = model_accepts(&model, &s);
                            match t.upsert(s) {
                                Ok(()) => {
                                    prop_assert!(expected_ok, "accepted {:?}", s);
                                    match model.iter_mut().find(|(m, _)| m.id == s.id) {
                                        Some((m, _)) => *m = s,
                                        None => model.push((s, false)),
                                    }
                                }
                                Err(e) => {
                                    prop_assert!(!expected_ok, "refused {:?}: {}", s, e);
                                    prop_assert!(conflict_is_real(&model, &e), "{}", e);
                                }
                            }
                        }
                        Op::Remove(id) => {
                            let want = model.iter().position(|(m, _)| m.id == EndpointId(id));
                            let got = t.remove(EndpointId(id));
                            prop_assert_eq!(got.map(|e| e.spec), want.map(|i| model.remove(i).0));
                        }
                        Op::Enforce(id) => {
                            let got = t.policy_mut(EndpointId(id)).map(|p| p.ingress.enforced = true);
                            let want = model
                                .iter_mut()
                                .find(|(m, _)| m.id == EndpointId(id))
                                .map(|(_, enforced)| *enforced = true);
                            prop_assert_eq!(got, want);
                        }
                    }
                    check_against_model(&t, &model)?;
                }
            }
        }
    }
}
