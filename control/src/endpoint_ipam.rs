//! Endpoint IPAM: the node's agent gives addresses to its endpoints written without any
//! (`flagella endpoint create`, a CNI plugin), as Cilium's agent answers its CNI plugin.
//!
//! Flow (one agent per node; `docs/etcd-schema.md`, "IPAM"):
//! 1. an endpoint `endpoints/<ns>/<pod>` of this node with neither `ipv4` nor `ipv6` is
//!    pending ([`Object::PendingEndpoint`]); the sync leaves it out of the model;
//! 2. the agent allocates one address per pool — the node's first IPv4 and first IPv6 pod
//!    CIDR — with [`Ipam`], owner `<ns>/<pod>`: the allocation key is created first;
//! 3. it writes the addresses into the endpoint's value with a transaction that requires the
//!    value's `mod_revision` to be the one it read, so a concurrent change (a rewrite, a
//!    delete) is never overwritten: the newer value arrives through the watch and is handled
//!    then;
//! 4. the endpoint, now with addresses, flows to the dataplane as any other.
//!
//! The pod's MTU is written with the addresses (`mtu`): the node's uplink MTU, which the agent
//! reads from its dataplane's `local_node` and hands over with [`EndpointIpam::set_uplink_mtu`],
//! minus the overhead of the node's tunnel mode ([`TunnelMode::pod_mtu`], the dataplane's own
//! number). While the uplink's MTU is unknown (no dataplane reached yet) addresses are written
//! without it, and once it is known each pass gives the node's addressed endpoints without an
//! `mtu` theirs, with the same guarded write. An `mtu` already written is never changed: the
//! pod's interface was made with it.
//!
//! Release and reconciliation ([`EndpointIpam::converge`], after every listing — so on every
//! start — and every watch batch): an allocation is kept while its owner is an endpoint of
//! this node that is pending or holds that address. Any other is deleted by a transaction that
//! requires the owner key's `mod_revision` to be the one last seen (0: absent), so the address
//! of a deleted endpoint is released only once its key is gone, and an endpoint created or
//! rewritten meanwhile keeps its address until the watch shows it.
//!
//! Invariants:
//! - idempotent per owner: an agent killed between 2 and 3 finds its allocation on restart
//!   (the owner's existing allocation is reused), so no endpoint ever holds two;
//! - an address is handed out only by the transaction that created its key, and addresses
//!   this node's endpoints hold without a key (written by hand) are never handed out;
//! - an endpoint's value is written only from a value that decoded, and what is written is
//!   checked with [`schema::decode`] first: the agent never writes a malformed endpoint;
//! - nothing here panics on etcd contents; an endpoint value that does not decode is left to
//!   the sync (which logs and counts it) and the last good view of it stays here.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use dataplane::Prefix;

use crate::ipam::{allocation_key, list_allocations, Ipam, IpamError};
use crate::schema::{self, EndpointSpec, NodeSpec, Object, ObjectKey, TunnelMode, ROOT};
use crate::store::{Event, Kv, Store, StoreError};
use crate::sync::log;

/// One endpoint of this node, as last seen.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Local {
    spec: EndpointSpec,
    mod_revision: i64,
}

/// The endpoint IPAM of one node. See the module doc.
#[derive(Debug)]
pub struct EndpointIpam {
    node: String,
    /// This node's pod CIDRs addresses come from: the first IPv4 one, the first IPv6 one.
    pools: Vec<Prefix>,
    /// This node's tunnel mode, once its entry is known.
    tunnel: Option<TunnelMode>,
    /// The uplink's MTU, from the dataplane ([`EndpointIpam::set_uplink_mtu`]).
    uplink_mtu: Option<u16>,
    /// This node's endpoints (pending or with addresses), by owner `namespace/pod`.
    local: BTreeMap<String, Local>,
    /// The `mod_revision` of every endpoint key seen, by owner (the release guard).
    revisions: BTreeMap<String, i64>,
    /// Failures already reported, by owner (reported again only when the reason changes).
    failing: BTreeMap<String, String>,
    /// Owners whose endpoint key exists but whose current value does not decode: their
    /// allocations are kept until the key is deleted (or decodes again), so a pod whose value
    /// turned malformed never loses its address to a new pod, even across an agent restart
    /// (when there is no last good view to go by).
    unreadable: BTreeSet<String>,
}

/// What one pass must do, computed from the view alone ([`EndpointIpam::plan`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Pending endpoints of this node (owners), to give addresses; empty while the node has
    /// no pod CIDR.
    pub assign: Vec<String>,
    /// Allocations to release: `(address, owner, the owner key's mod_revision as last seen)`
    /// (0: the key is absent).
    pub release: Vec<(IpAddr, String, i64)>,
    /// Addresses this node's endpoints hold: never handed out.
    pub in_use: BTreeSet<IpAddr>,
    /// Addressed endpoints of this node without an `mtu` (owners), to give the pod MTU; empty
    /// while it is unknown.
    pub fill_mtu: Vec<String>,
}

/// What one pass did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Endpoints given addresses (written back), with the addresses.
    pub assigned: Vec<(String, Vec<IpAddr>)>,
    /// Addressed endpoints given their missing `mtu`, with it.
    pub mtu_filled: Vec<(String, u16)>,
    /// Allocations released: `(address, owner)`.
    pub released: Vec<(IpAddr, String)>,
    /// Write-backs or releases refused because the key changed meanwhile; the watch brings
    /// the change and the next pass acts on it.
    pub conflicts: usize,
    /// Endpoints left pending, with the reason (only failures not reported before).
    pub failed: Vec<(String, String)>,
}

/// The pools of a node: its first IPv4 and its first IPv6 pod CIDR.
pub fn pools_of(spec: &NodeSpec) -> Vec<Prefix> {
    let prefixes = spec.prefixes();
    let v4 = prefixes.iter().find(|p| p.is_ipv4()).copied();
    let v6 = prefixes.iter().find(|p| !p.is_ipv4()).copied();
    v4.into_iter().chain(v6).collect()
}

/// The endpoint key of an owner `namespace/pod`.
fn endpoint_key(owner: &str) -> String {
    format!("{ROOT}endpoints/{owner}")
}

/// `spec` with `addr` as its address of that family.
fn with_address(mut spec: EndpointSpec, addr: IpAddr) -> EndpointSpec {
    match addr {
        IpAddr::V4(a) => spec.ipv4 = Some(a),
        IpAddr::V6(a) => spec.ipv6 = Some(a),
    }
    spec
}

impl EndpointIpam {
    pub fn new(node: &str) -> EndpointIpam {
        EndpointIpam {
            node: node.to_string(),
            pools: Vec::new(),
            tunnel: None,
            uplink_mtu: None,
            local: BTreeMap::new(),
            revisions: BTreeMap::new(),
            failing: BTreeMap::new(),
            unreadable: BTreeSet::new(),
        }
    }

    /// Sets the uplink's MTU as the dataplane reports it (`local_node.uplink_mtu`); true when
    /// it changed, so that the caller runs a pass to give endpoints the new pod MTU.
    pub fn set_uplink_mtu(&mut self, mtu: Option<u16>) -> bool {
        std::mem::replace(&mut self.uplink_mtu, mtu) != mtu
    }

    /// The MTU this node's pods get: `None` until both the node's entry and the uplink's MTU
    /// are known.
    pub fn pod_mtu(&self) -> Option<u16> {
        Some(self.tunnel?.pod_mtu(self.uplink_mtu?))
    }

    /// Replaces the view with a full listing (session start, compaction).
    pub fn reset(&mut self, listing: &[Kv]) {
        self.pools.clear();
        self.tunnel = None;
        self.local.clear();
        self.revisions.clear();
        self.unreadable.clear();
        for kv in listing {
            self.observe_put(&kv.key, &kv.value, kv.mod_revision);
        }
    }

    /// Applies one watched change to the view.
    pub fn observe(&mut self, event: &Event) {
        match event {
            Event::Put(kv) => self.observe_put(&kv.key, &kv.value, kv.mod_revision),
            Event::Delete { key, .. } => self.observe_delete(key),
        }
    }

    fn observe_put(&mut self, key: &str, value: &[u8], mod_revision: i64) {
        match schema::parse_key(key) {
            Ok(ObjectKey::Node(name)) if name == self.node => {
                // A malformed entry keeps the last good pools (as the sync keeps its value).
                if let Ok(Object::Node(_, spec)) = schema::decode(key, value) {
                    self.pools = pools_of(&spec);
                    self.tunnel = Some(spec.tunnel);
                }
            }
            Ok(ObjectKey::Endpoint { namespace, name }) => {
                let owner = format!("{namespace}/{name}");
                self.revisions.insert(owner.clone(), mod_revision);
                // Malformed: the last good view stays (a pending one is not written back
                // over it: its mod_revision no longer matches).
                match schema::decode(key, value) {
                    Ok(Object::Endpoint { spec, .. } | Object::PendingEndpoint { spec, .. }) => {
                        self.unreadable.remove(&owner);
                        if spec.node == self.node {
                            self.local.insert(owner, Local { spec, mod_revision });
                        } else {
                            self.local.remove(&owner);
                        }
                    }
                    _ => {
                        self.unreadable.insert(owner);
                    }
                }
            }
            _ => {}
        }
    }

    fn observe_delete(&mut self, key: &str) {
        match schema::parse_key(key) {
            Ok(ObjectKey::Node(name)) if name == self.node => {
                self.pools.clear();
                self.tunnel = None;
            }
            Ok(ObjectKey::Endpoint { namespace, name }) => {
                let owner = format!("{namespace}/{name}");
                self.local.remove(&owner);
                self.revisions.remove(&owner);
                self.failing.remove(&owner);
                self.unreadable.remove(&owner);
            }
            _ => {}
        }
    }

    /// Endpoints of this node still waiting for an address.
    pub fn pending(&self) -> usize {
        self.local
            .values()
            .filter(|l| l.spec.primary_ip().is_none())
            .count()
    }

    /// What a pass must do, given this node's allocations `(address, owner)`. Pure.
    pub fn plan(&self, allocations: &[(IpAddr, String)]) -> Plan {
        let in_use: BTreeSet<IpAddr> = self.local.values().flat_map(|l| l.spec.ips()).collect();
        let assign = if self.pools.is_empty() {
            Vec::new()
        } else {
            self.local
                .iter()
                .filter(|(_, l)| l.spec.primary_ip().is_none())
                .map(|(owner, _)| owner.clone())
                .collect()
        };
        let keeps = |addr: IpAddr, owner: &str| {
            self.unreadable.contains(owner)
                || match self.local.get(owner) {
                    Some(l) => l.spec.primary_ip().is_none() || l.spec.ips().any(|a| a == addr),
                    None => false,
                }
        };
        let release = allocations
            .iter()
            .filter(|(addr, owner)| !keeps(*addr, owner))
            .map(|(addr, owner)| {
                let seen = self.revisions.get(owner).copied().unwrap_or(0);
                (*addr, owner.clone(), seen)
            })
            .collect();
        // Only values whose last version decoded (the view is current): a malformed one is
        // the sync's to report, and a guarded write from the last good view would fail anyway.
        let current = |owner: &str, l: &Local| self.revisions.get(owner) == Some(&l.mod_revision);
        let fill_mtu = match self.pod_mtu() {
            Some(_) => self
                .local
                .iter()
                .filter(|(owner, l)| {
                    l.spec.primary_ip().is_some() && l.spec.mtu.is_none() && current(owner, l)
                })
                .map(|(owner, _)| owner.clone())
                .collect(),
            None => Vec::new(),
        };
        Plan {
            assign,
            release,
            in_use,
            fill_mtu,
        }
    }

    /// One pass: release what no endpoint holds, give pending endpoints addresses and write
    /// them back. An etcd failure ends the pass (the agent's session restarts and lists
    /// again); a pool that is full leaves the endpoint pending and is reported.
    pub async fn converge(&mut self, store: &Store) -> Result<Outcome, StoreError> {
        let mut out = Outcome::default();
        let mut taken = list_allocations(store, &self.node).await?;
        let plan = self.plan(&taken);
        for (addr, owner, seen) in &plan.release {
            let key = allocation_key(&self.node, *addr);
            if store
                .delete_if_unchanged(&key, &endpoint_key(owner), *seen)
                .await?
            {
                taken.retain(|(a, _)| a != addr);
                out.released.push((*addr, owner.clone()));
            } else {
                out.conflicts += 1;
            }
        }
        for owner in &plan.assign {
            match self.assign(store, owner, &mut taken, &plan.in_use).await {
                Ok(Some(addrs)) => {
                    self.failing.remove(owner);
                    out.assigned.push((owner.clone(), addrs));
                }
                Ok(None) => out.conflicts += 1,
                Err(IpamError::Store(e)) => return Err(e),
                Err(e) => {
                    let reason = e.to_string();
                    if self.failing.get(owner) != Some(&reason) {
                        self.failing.insert(owner.clone(), reason.clone());
                        out.failed.push((owner.clone(), reason));
                    }
                }
            }
        }
        for owner in &plan.fill_mtu {
            match self.fill_mtu(store, owner).await {
                Ok(Some(mtu)) => out.mtu_filled.push((owner.clone(), mtu)),
                Ok(None) => out.conflicts += 1,
                Err(IpamError::Store(e)) => return Err(e),
                Err(e) => out.failed.push((owner.clone(), e.to_string())),
            }
        }
        Ok(out)
    }

    /// Writes the pod MTU into `owner`'s addressed value that has none; `None` when the value
    /// changed meanwhile (nothing written) or the MTU is not known.
    async fn fill_mtu(&mut self, store: &Store, owner: &str) -> Result<Option<u16>, IpamError> {
        let (Some(local), Some(mtu)) = (self.local.get(owner).cloned(), self.pod_mtu()) else {
            return Ok(None);
        };
        let spec = EndpointSpec {
            mtu: Some(mtu),
            ..local.spec
        };
        Ok(self
            .write_back(store, owner, spec, local.mod_revision)
            .await?
            .map(|_| mtu))
    }

    /// Writes `spec` as `owner`'s value if its `mod_revision` is still `seen`, after checking
    /// that it decodes; `Some(new revision)` when written, and the view follows.
    async fn write_back(
        &mut self,
        store: &Store,
        owner: &str,
        spec: EndpointSpec,
        seen: i64,
    ) -> Result<Option<i64>, IpamError> {
        let key = endpoint_key(owner);
        let value = serde_json::to_vec(&spec).map_err(|e| IpamError::WriteBack {
            owner: owner.to_string(),
            reason: e.to_string(),
        })?;
        if let Err(e) = schema::decode(&key, &value) {
            return Err(IpamError::WriteBack {
                owner: owner.to_string(),
                reason: e.to_string(),
            });
        }
        let Some(revision) = store.put_if_unchanged(&key, value, seen).await? else {
            return Ok(None);
        };
        self.revisions.insert(owner.to_string(), revision);
        self.local.insert(
            owner.to_string(),
            Local {
                spec,
                mod_revision: revision,
            },
        );
        Ok(Some(revision))
    }

    /// Allocates `owner`'s addresses and writes them back; `None` when its value changed
    /// meanwhile (nothing written; the allocations stay with the owner for the next pass).
    async fn assign(
        &mut self,
        store: &Store,
        owner: &str,
        taken: &mut Vec<(IpAddr, String)>,
        in_use: &BTreeSet<IpAddr>,
    ) -> Result<Option<Vec<IpAddr>>, IpamError> {
        let Some(local) = self.local.get(owner).cloned() else {
            return Ok(None);
        };
        let mut spec = local.spec;
        let mut addrs = Vec::new();
        for pool in &self.pools {
            let ipam = Ipam::new(store.clone(), &self.node, *pool);
            let addr = ipam.allocate_from(owner, taken, in_use).await?;
            if !taken.iter().any(|(a, _)| *a == addr) {
                taken.push((addr, owner.to_string()));
            }
            spec = with_address(spec, addr);
            addrs.push(addr);
        }
        // Written with the addresses when known; the one in a pending value, if any, is the
        // writer's guess, and the agent knows better.
        spec.mtu = self.pod_mtu().or(spec.mtu);
        Ok(self
            .write_back(store, owner, spec, local.mod_revision)
            .await?
            .map(|_| addrs))
    }

    /// [`EndpointIpam::converge`], logging what it did.
    pub async fn converge_and_log(&mut self, store: &Store) -> Result<(), StoreError> {
        let out = self.converge(store).await?;
        for (owner, addrs) in &out.assigned {
            match self.pod_mtu() {
                Some(mtu) => log(format!("ipam: endpoint {owner} got {addrs:?}, mtu {mtu}")),
                None => log(format!(
                    "ipam: endpoint {owner} got {addrs:?}, no mtu yet (the dataplane's uplink MTU is not known)"
                )),
            }
        }
        for (owner, mtu) in &out.mtu_filled {
            log(format!("ipam: endpoint {owner} got its mtu {mtu}"));
        }
        for (addr, owner) in &out.released {
            log(format!(
                "ipam: released {addr} (its owner {owner} is gone or holds another address)"
            ));
        }
        for (owner, reason) in &out.failed {
            log(format!(
                "ipam: endpoint {owner} stays without an address: {reason}"
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test
mod tests {
    use super::*;

    const NODE: &str = "n1";

    fn kv(key: &str, value: &str, rev: i64) -> Kv {
        Kv {
            key: format!("{ROOT}{key}"),
            value: value.as_bytes().to_vec(),
            mod_revision: rev,
        }
    }

    fn node(cidrs: &str) -> Kv {
        kv(
            &format!("nodes/{NODE}"),
            &format!(r#"{{"underlay_ip":"192.168.0.1","pod_cidrs":[{cidrs}]}}"#),
            1,
        )
    }

    fn pending(owner: &str, node: &str, rev: i64) -> Kv {
        kv(
            &format!("endpoints/{owner}"),
            &format!(
                r#"{{"node":"{node}","interface":"lxc1","ifindex":7,"mac":"02:00:00:00:00:07"}}"#
            ),
            rev,
        )
    }

    fn addressed(owner: &str, ip: &str, rev: i64) -> Kv {
        kv(
            &format!("endpoints/{owner}"),
            &format!(
                r#"{{"node":"{NODE}","interface":"lxc1","ifindex":7,"mac":"02:00:00:00:00:07","ipv4":"{ip}"}}"#
            ),
            rev,
        )
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn alloc(a: &str, owner: &str) -> (IpAddr, String) {
        (ip(a), owner.to_string())
    }

    #[test]
    fn pools_are_the_first_cidr_of_each_family() {
        let spec = NodeSpec {
            underlay_ip: ip("192.168.0.1"),
            pod_cidrs: vec![
                "fd00:1::/64".into(),
                "10.1.0.0/24".into(),
                "10.2.0.0/24".into(),
                "fd00:2::/64".into(),
            ],
            tunnel: schema::TunnelMode::Vxlan,
            labels: Default::default(),
        };
        let pools: Vec<String> = pools_of(&spec).iter().map(|p| p.to_string()).collect();
        assert_eq!(pools, ["10.1.0.0/24", "fd00:1::/64"]);
    }

    #[test]
    fn pending_local_endpoints_are_assigned_once_the_node_has_a_cidr() {
        let mut e = EndpointIpam::new(NODE);
        e.reset(&[
            pending("default/a", NODE, 5),
            pending("default/b", "n2", 6), // another node's: its own agent's business
            addressed("default/c", "10.1.0.9", 7),
        ]);
        assert_eq!(e.plan(&[]).assign, Vec::<String>::new(), "no pod CIDR yet");
        e.observe(&Event::Put(node(r#""10.1.0.0/24""#)));
        let plan = e.plan(&[]);
        assert_eq!(plan.assign, ["default/a"]);
        assert_eq!(plan.in_use, BTreeSet::from([ip("10.1.0.9")]));
        assert_eq!(e.pending(), 1);
        e.observe(&Event::Delete {
            key: format!("{ROOT}nodes/{NODE}"),
            mod_revision: 9,
        });
        assert!(e.plan(&[]).assign.is_empty());
    }

    #[test]
    fn releases_exactly_the_allocations_no_endpoint_holds() {
        let mut e = EndpointIpam::new(NODE);
        e.reset(&[
            node(r#""10.1.0.0/24""#),
            pending("ns/waiting", NODE, 10),
            addressed("ns/holder", "10.1.0.3", 11),
            addressed("ns/moved-address", "10.1.0.20", 12),
            pending("ns/elsewhere", "n2", 13),
        ]);
        let allocations = [
            alloc("10.1.0.2", "ns/waiting"), // allocated, not yet written back: kept
            alloc("10.1.0.3", "ns/holder"),  // held: kept
            alloc("10.1.0.4", "ns/moved-address"), // the endpoint holds another one
            alloc("10.1.0.5", "ns/gone"),    // the endpoint is deleted
            alloc("10.1.0.6", "ns/elsewhere"), // the endpoint moved to another node
        ];
        let plan = e.plan(&allocations);
        assert_eq!(
            plan.release,
            vec![
                (ip("10.1.0.4"), "ns/moved-address".to_string(), 12),
                (ip("10.1.0.5"), "ns/gone".to_string(), 0),
                (ip("10.1.0.6"), "ns/elsewhere".to_string(), 13),
            ]
        );
        assert_eq!(plan.assign, ["ns/waiting"]);
        // The holder is deleted: its address goes, guarded by "the key is absent".
        e.observe(&Event::Delete {
            key: format!("{ROOT}endpoints/ns/holder"),
            mod_revision: 20,
        });
        let plan = e.plan(&allocations);
        assert!(plan
            .release
            .contains(&(ip("10.1.0.3"), "ns/holder".to_string(), 0)));
    }

    /// Issue 14: an endpoint whose value turned malformed keeps its address until its key is
    /// deleted, also when the agent starts with no last good view of it.
    #[test]
    fn a_malformed_endpoint_keeps_its_allocation_until_deleted() {
        let mut e = EndpointIpam::new(NODE);
        e.reset(&[
            node(r#""10.1.0.0/24""#),
            kv("endpoints/ns/broken", "{oops", 9),
        ]);
        let allocations = [alloc("10.1.0.7", "ns/broken")];
        assert!(
            e.plan(&allocations).release.is_empty(),
            "kept while unreadable"
        );
        e.observe(&Event::Delete {
            key: format!("{ROOT}endpoints/ns/broken"),
            mod_revision: 10,
        });
        assert_eq!(
            e.plan(&allocations).release.len(),
            1,
            "released once deleted"
        );
    }

    #[test]
    fn pod_mtu_needs_the_node_and_the_uplink_and_follows_the_tunnel() {
        let mut e = EndpointIpam::new(NODE);
        e.reset(&[
            addressed("ns/old", "10.1.0.3", 5),
            pending("ns/new", NODE, 6),
        ]);
        assert!(e.set_uplink_mtu(Some(1500)));
        assert!(!e.set_uplink_mtu(Some(1500)), "unchanged");
        assert_eq!(e.pod_mtu(), None, "no node entry yet");
        assert!(e.plan(&[]).fill_mtu.is_empty());
        e.observe(&Event::Put(node(r#""10.1.0.0/24""#))); // VXLAN by default
        assert_eq!(e.pod_mtu(), Some(1442));
        let plan = e.plan(&[]);
        assert_eq!(
            plan.fill_mtu,
            ["ns/old"],
            "only addressed endpoints without one"
        );
        assert_eq!(plan.assign, ["ns/new"]);
        e.observe(&Event::Put(kv(
            &format!("nodes/{NODE}"),
            r#"{"underlay_ip":"192.168.0.1","pod_cidrs":["10.1.0.0/24"],"tunnel":"geneve"}"#,
            8,
        )));
        assert_eq!(e.pod_mtu(), Some(1438));
        assert!(e.set_uplink_mtu(None));
        assert_eq!(e.pod_mtu(), None);
        assert!(e.plan(&[]).fill_mtu.is_empty(), "unknown: nothing to fill");
        // A value that no longer decodes is not written over.
        e.set_uplink_mtu(Some(1500));
        e.observe(&Event::Put(kv("endpoints/ns/old", "{not json", 8)));
        assert!(e.plan(&[]).fill_mtu.is_empty());
        e.set_uplink_mtu(None);
        // An endpoint that has one keeps it.
        e.set_uplink_mtu(Some(9000));
        e.observe(&Event::Put(kv(
            "endpoints/ns/old",
            &format!(
                r#"{{"node":"{NODE}","interface":"lxc1","ifindex":7,"mac":"02:00:00:00:00:07","ipv4":"10.1.0.3","mtu":1442}}"#
            ),
            9,
        )));
        assert!(e.plan(&[]).fill_mtu.is_empty());
    }

    #[test]
    fn a_malformed_value_keeps_the_last_good_view() {
        let mut e = EndpointIpam::new(NODE);
        e.reset(&[node(r#""10.1.0.0/24""#), addressed("ns/a", "10.1.0.3", 5)]);
        e.observe(&Event::Put(kv("endpoints/ns/a", "{not json", 6)));
        e.observe(&Event::Put(kv(&format!("nodes/{NODE}"), "[]", 7)));
        let plan = e.plan(&[alloc("10.1.0.3", "ns/a")]);
        assert!(plan.release.is_empty(), "{plan:?}");
        assert_eq!(plan.in_use, BTreeSet::from([ip("10.1.0.3")]));
        assert_eq!(e.pools.len(), 1);
        // A garbage owner in an allocation is released, never panics.
        let plan = e.plan(&[alloc("10.1.0.7", "no/such/\u{0}owner")]);
        assert_eq!(plan.release.len(), 1);
    }

    /// The sync's side of a pending endpoint: not in the model, not malformed; once written
    /// back it is an ordinary local endpoint; if its addresses are taken away again, it leaves
    /// the dataplane.
    #[test]
    fn the_sync_leaves_pending_endpoints_out_of_the_model() {
        use crate::dataplane_client::{Change, EndpointMsg, EndpointRef};
        use crate::sync::ClusterState;
        let mut s = ClusterState::new(NODE);
        s.set_quiet(true);
        s.put(
            &node(r#""10.1.0.0/24""#).key,
            &node(r#""10.1.0.0/24""#).value,
        )
        .unwrap();
        s.put(&format!("{ROOT}namespaces/ns"), b"{}").unwrap();
        let p = pending("ns/a", NODE, 3);
        s.put(&p.key, &p.value).unwrap();
        assert!(s.endpoints().is_empty());
        assert_eq!(s.malformed_total(), 0);
        let a = addressed("ns/a", "10.1.0.2", 4);
        s.put(&a.key, &a.value).unwrap();
        for (labels, _) in s.needed_identities() {
            s.set_identity(labels, 1000);
        }
        let out = s.commit();
        assert!(
            out.iter()
                .any(|c| matches!(c, Change::EndpointUpsert(EndpointMsg { id: 2, .. }))),
            "{out:?}"
        );
        s.put(&p.key, &p.value).unwrap();
        assert!(s.endpoints().is_empty());
        let out = s.commit();
        assert!(
            out.iter()
                .any(|c| matches!(c, Change::EndpointDelete(EndpointRef { id: 2 }))),
            "{out:?}"
        );
        assert_eq!(s.malformed_total(), 0);
    }

    #[test]
    fn write_back_value_decodes_as_an_addressed_endpoint() {
        let Object::PendingEndpoint { spec, .. } = schema::decode(
            &pending("ns/a", NODE, 1).key,
            &pending("ns/a", NODE, 1).value,
        )
        .unwrap() else {
            panic!("not pending");
        };
        let spec = with_address(with_address(spec, ip("10.1.0.2")), ip("fd00::2"));
        let value = serde_json::to_vec(&spec).unwrap();
        match schema::decode(&endpoint_key("ns/a"), &value).unwrap() {
            Object::Endpoint { spec, .. } => {
                assert_eq!(spec.ipv4, Some("10.1.0.2".parse().unwrap()));
                assert_eq!(spec.ipv6, Some("fd00::2".parse().unwrap()));
                assert_eq!(spec.ifindex, Some(7));
            }
            o => panic!("{o:?}"),
        }
    }
}
