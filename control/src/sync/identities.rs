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
        let previous = self.cluster_ids.insert(labels.clone(), id);
        if previous == Some(id) {
            return;
        }
        if let Some(old) = previous {
            self.note_renumbering(&labels, old);
        }
        // The local endpoints carrying it are re-sent (the ipcache moves in `renumber.rs`);
        // only local ones: a scan of every endpoint per label set was the initial sync's
        // hotspot (flagella-bench scale).
        for key in &self.local_keys {
            let same = self
                .engine
                .pod_identity(key)
                .and_then(|l| self.engine_labels.get(&l.0))
                == Some(&labels);
            if same {
                self.dirty_endpoints.insert(key.clone());
            }
        }
    }

    /// An identity was deleted from etcd (collected): forget the number. What the dataplane
    /// holds under it stays until the label set has a number again (`renumber.rs`).
    pub fn forget_identity(&mut self, id: u32) {
        let forgotten: Vec<Labels> = self
            .cluster_ids
            .iter()
            .filter(|(_, v)| **v == id)
            .map(|(l, _)| l.clone())
            .collect();
        for labels in forgotten {
            self.cluster_ids.remove(&labels);
            self.note_renumbering(&labels, id);
        }
        // Rare (a collected identity): every endpoint is looked at again.
        self.unresolved.extend(self.endpoints.keys().cloned());
    }

    /// The cluster-wide number of an engine identity (reserved and CIDR identities are the
    /// same number in both); `None` while its label set has no cluster number.
    pub fn cluster_identity(&self, local: Identity) -> Option<u32> {
        self.translate(local)
    }

    /// Forgets the label sets of engine identities the engine released, once no held-back
    /// delta needs them to translate (called at the end of each commit, whose deltas were the
    /// last to name them): without this the map grows with every label set ever seen.
    pub(super) fn prune_engine_labels(&mut self) {
        let identities = self.engine.identities();
        let held: BTreeSet<u32> = self.held_back.iter().filter_map(delta_identity).collect();
        self.engine_labels
            .retain(|id, _| identities.kind(Identity(*id)).is_some() || held.contains(id));
    }

    /// Engine-local label sets remembered (for tests).
    #[cfg(test)]
    pub(super) fn engine_label_count(&self) -> usize {
        self.engine_labels.len()
    }

    pub(super) fn translate(&self, local: Identity) -> Option<u32> {
        if local.0 < Identity::FIRST_CLUSTER_LOCAL || local.0 >= END_IDENTITY {
            return Some(local.0); // wildcard, reserved, CIDR: node-local, same numbers
        }
        let labels = self.engine_labels.get(&local.0)?;
        self.cluster_ids.get(labels).copied()
    }
}

/// The identity a delta names, if any.
fn delta_identity(d: &policy_compiler::Delta) -> Option<u32> {
    use policy_compiler::Delta;
    match d {
        Delta::IpcacheUpsert { identity, .. } => Some(identity.0),
        Delta::Upsert { key, .. } | Delta::Remove { key, .. } => Some(key.identity.0),
        Delta::IpcacheRemove { .. } | Delta::Enforce { .. } | Delta::EndpointRemoved { .. } => None,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test
mod tests {
    use super::super::test_support::{base, k, resolve_all};
    use super::ClusterState;

    /// Issue 14, finding 11: pods with ever-new label sets, created and deleted, left one
    /// `engine_labels` entry each behind.
    #[test]
    fn released_label_sets_are_forgotten_at_commit() {
        let mut s = ClusterState::new("n1");
        base(&mut s);
        let mut next = 1000;
        for i in 0..50 {
            let key = k(&format!("endpoints/default/p{i}"));
            let value = format!(
                r#"{{"node":"n2","labels":{{"app":"a{i}"}},"ipv4":"10.2.0.{}","interface":"lxc"}}"#,
                i + 2
            );
            s.put(&key, value.as_bytes()).unwrap();
            resolve_all(&mut s, &mut next);
            s.commit();
            s.delete(&key);
            s.commit();
        }
        assert_eq!(s.engine_label_count(), 0);
        // A live pod keeps its label set.
        s.put(
            &k("endpoints/default/live"),
            br#"{"node":"n2","labels":{"app":"live"},"ipv4":"10.2.0.100","interface":"lxc"}"#,
        )
        .unwrap();
        resolve_all(&mut s, &mut next);
        s.commit();
        assert_eq!(s.engine_label_count(), 1);
        assert!(s.pod_identity("default/live").is_some());
    }
}
