//! The engine's cluster inputs: namespaces, pods, nodes, and the indexes over them (addresses
//! by identity, pods by identity, pods by IP).
//!
//! Contract: plain data with its indexes kept consistent; no policy logic. Every pod is an
//! input (identities, selections, the ipcache, named ports); a pod is *compiled* (has maps)
//! only when [`PodState::compiled`] says so, and only compiled pods are in
//! `compiled_by_identity`. Identities are numbered by [`crate::identity`]; the ipcache and the
//! deltas are the engine's ([`crate::compile`]).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use hashbrown::HashMap;

use dataplane::Identity;

use crate::cluster::Pod;
use crate::labels::Labels;

/// A pod as the engine knows it.
#[derive(Clone, Debug)]
pub(crate) struct PodState {
    pub(crate) pod: Pod,
    pub(crate) identity: Identity,
    /// Its maps are computed (false: an input only, see the module doc).
    pub(crate) compiled: bool,
}

/// See the module doc.
#[derive(Clone, Debug, Default)]
pub(crate) struct Inputs {
    /// Namespace -> its labels (with `kubernetes.io/metadata.name`).
    pub(crate) namespaces: BTreeMap<String, Labels>,
    /// `namespace/name` -> pod.
    pub(crate) pods: BTreeMap<String, PodState>,
    pub(crate) pod_by_ip: HashMap<IpAddr, String>,
    /// Node name -> its address and identity (`host` for the engine's own node, else
    /// `remote-node`).
    pub(crate) nodes: BTreeMap<String, (IpAddr, Identity)>,
    /// Identity -> the addresses that carry it (pods and nodes; what CIDR selectors test).
    pub(crate) addresses: HashMap<Identity, Vec<IpAddr>>,
    pub(crate) pods_by_identity: HashMap<Identity, BTreeSet<String>>,
    /// The compiled pods among `pods_by_identity` (what the engine marks dirty).
    pub(crate) compiled_by_identity: HashMap<Identity, BTreeSet<String>>,
}

impl Inputs {
    /// Indexes pod `key`'s address `ip` under identity `id` (and as compiled when `compiled`).
    pub(crate) fn add_pod_address(&mut self, key: &str, id: Identity, ip: IpAddr, compiled: bool) {
        self.addresses.entry(id).or_default().push(ip);
        self.pods_by_identity
            .entry(id)
            .or_default()
            .insert(key.to_string());
        if compiled {
            self.compiled_by_identity
                .entry(id)
                .or_default()
                .insert(key.to_string());
        }
        self.pod_by_ip.insert(ip, key.to_string());
    }

    /// Unindexes pod `key`'s address `ip` and identity; returns whether `ip` was the pod's
    /// (so that its ipcache entry goes).
    pub(crate) fn forget_pod_address(&mut self, key: &str, identity: Identity, ip: IpAddr) -> bool {
        if let Some(addrs) = self.addresses.get_mut(&identity) {
            if let Some(i) = addrs.iter().position(|a| *a == ip) {
                addrs.swap_remove(i);
            }
            if addrs.is_empty() {
                self.addresses.remove(&identity);
            }
        }
        for index in [&mut self.pods_by_identity, &mut self.compiled_by_identity] {
            if let Some(set) = index.get_mut(&identity) {
                set.remove(key);
                if set.is_empty() {
                    index.remove(&identity);
                }
            }
        }
        if self.pod_by_ip.get(&ip).is_some_and(|k| k == key) {
            self.pod_by_ip.remove(&ip);
            return true;
        }
        false
    }

    /// Records node `name` at `ip` (after [`Self::forget_node_address`] of its old address).
    pub(crate) fn add_node(&mut self, name: &str, ip: IpAddr, identity: Identity) {
        self.nodes.insert(name.to_string(), (ip, identity));
        self.addresses.entry(identity).or_default().push(ip);
    }

    /// Unindexes node `name`'s address (the node stays named); returns the address and the
    /// identity it had.
    pub(crate) fn forget_node_address(&mut self, name: &str) -> Option<(IpAddr, Identity)> {
        let (ip, identity) = self.nodes.get(name).copied()?;
        if let Some(addrs) = self.addresses.get_mut(&identity) {
            addrs.retain(|a| *a != ip);
        }
        Some((ip, identity))
    }

    /// Who holds `ip`: `pod <namespace/name>` or `node <name>`.
    pub(crate) fn address_owner(&self, ip: IpAddr) -> Option<String> {
        if let Some(k) = self.pod_by_ip.get(&ip) {
            return Some(format!("pod {k}"));
        }
        self.node_by_ip(ip).map(|n| format!("node {n}"))
    }

    /// The node that owns `addr`, if any.
    pub(crate) fn node_by_ip(&self, addr: IpAddr) -> Option<&str> {
        self.nodes
            .iter()
            .find(|(_, (a, _))| *a == addr)
            .map(|(n, _)| n.as_str())
    }
}
