//! Identities: the engine numbers label sets locally; the dataplane gets the cluster-wide
//! number of the same label set, which the agent allocates in etcd ([`crate::identity`]) and
//! supplies through [`ClusterState::set_identity`]. Reserved and CIDR identities are the same
//! number in both. [`ClusterState::needed_identities`] lists what is still missing.

use std::collections::{BTreeMap, BTreeSet};

use dataplane::Identity;

use super::ClusterState;
use policy_compiler::labels::Labels;

use crate::identity::END_IDENTITY;

impl ClusterState {
    /// The cluster-wide identity of pod `namespace/name`, once known.
    pub fn pod_identity(&self, key: &str) -> Option<u32> {
        let local = self.engine.pod_identity(key)?;
        self.translate(local)
    }

    /// Label sets of this node's endpoints (the identities it must hold references on).
    pub fn local_label_sets(&self) -> BTreeSet<Labels> {
        self.local_keys
            .iter()
            .filter_map(|k| self.engine.pod_identity(k))
            .filter_map(|id| self.engine_labels.get(&id.0).cloned())
            .collect()
    }

    /// Label sets in use without a cluster-wide number yet: `(labels, local)` where `local`
    /// says a local endpoint uses it (so a reference must be taken).
    pub fn needed_identities(&self) -> Vec<(Labels, bool)> {
        let local = self.local_label_sets();
        let mut out: BTreeMap<Labels, bool> = BTreeMap::new();
        for key in &self.unresolved {
            let Some(id) = self.engine.pod_identity(key) else {
                continue;
            };
            let Some(labels) = self.engine_labels.get(&id.0) else {
                continue;
            };
            if !self.cluster_ids.contains_key(labels) {
                out.insert(labels.clone(), local.contains(labels));
            }
        }
        out.into_iter().collect()
    }

    /// Supplies the cluster-wide number of a label set.
    pub fn set_identity(&mut self, labels: Labels, id: u32) {
        if self.cluster_ids.insert(labels.clone(), id) != Some(id) {
            // Everything that carries this identity must be re-sent.
            for (key, ep) in &self.endpoints {
                let same = self
                    .engine
                    .pod_identity(key)
                    .and_then(|l| self.engine_labels.get(&l.0))
                    == Some(&labels);
                if same && ep.node == self.node {
                    self.dirty_endpoints.insert(key.clone());
                }
            }
        }
    }

    /// An identity was deleted from etcd (collected): forget the number.
    pub fn forget_identity(&mut self, id: u32) {
        self.cluster_ids.retain(|_, v| *v != id);
        // Rare (a collected identity): every endpoint is looked at again.
        self.unresolved.extend(self.endpoints.keys().cloned());
    }

    /// The cluster-wide number of an engine identity (reserved and CIDR identities are the
    /// same number in both); `None` while its label set has no cluster number.
    pub fn cluster_identity(&self, local: Identity) -> Option<u32> {
        self.translate(local)
    }

    pub(super) fn translate(&self, local: Identity) -> Option<u32> {
        if local.0 < Identity::FIRST_CLUSTER_LOCAL || local.0 >= END_IDENTITY {
            return Some(local.0); // wildcard, reserved, CIDR: node-local, same numbers
        }
        let labels = self.engine_labels.get(&local.0)?;
        self.cluster_ids.get(labels).copied()
    }
}
