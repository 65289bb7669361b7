//! Renumbered identities (issue 14, finding 7): a label set whose cluster-wide number was
//! collected and allocated again under a new number (its nodes were away longer than the
//! grace period). Everything the dataplane holds under the old number moves to the new one:
//! the ipcache entries of the label set's pods (this node's and every other node's) and the
//! policy entries of this node's endpoints that name it.
//!
//! In two commits, so that no packet meets a policy that knows neither number:
//! 1. the commit that learns the new number adds, beside every policy entry under the old
//!    number, the same entry under the new one (and re-sends the local endpoints, which now
//!    carry the new number);
//! 2. the next commit ([`ClusterState::commit_due`] says one is due at once) moves the ipcache
//!    entries to the new number and deletes the old policy entries.
//!
//! A label set that lost its number waits (the old number stays in force) until it has a new
//! one; one that got its old number back needs nothing. A policy entry the engine removes
//! meanwhile is deleted under every number the dataplane may hold it under
//! ([`ClusterState::numbers_held`]): step 2 moves only the entries still in the engine's maps.

use std::collections::BTreeMap;

use dataplane::tables::policy::Direction;
use dataplane::Identity;
use policy_compiler::labels::Labels;
use policy_compiler::Delta;

use super::changes::{DirKey, PolicyBatch};
use super::ClusterState;
use crate::dataplane_client::{policy_entry, policy_key, Change};

/// A label set's move from the number the dataplane holds to its new one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Move {
    pub old: u32,
    pub new: u32,
}

impl ClusterState {
    /// Notes that `labels` lost `old` (collected, or changed): its entries must move once it has
    /// a number again. The first old number is the one the dataplane holds.
    pub(super) fn note_renumbering(&mut self, labels: &Labels, old: u32) {
        self.renumbering.entry(labels.clone()).or_insert(old);
    }

    /// True when a commit is due at once (the second step of a renumbering).
    pub fn commit_due(&self) -> bool {
        !self.renumber_finish.is_empty()
    }

    /// Step 1 for the label sets whose new number is known: entries under the new number added
    /// beside the old ones (into `policy`); step 2 is due at the next commit.
    pub(super) fn begin_renumbering(&mut self, policy: &mut BTreeMap<(u32, DirKey), PolicyBatch>) {
        // A label set no pod has any more needs no move.
        let in_use: std::collections::BTreeSet<&Labels> = self.engine_labels.values().collect();
        let gone: Vec<Labels> = self
            .renumbering
            .keys()
            .filter(|l| !in_use.contains(l))
            .cloned()
            .collect();
        for labels in gone {
            self.renumbering.remove(&labels);
        }
        let resolved: Vec<(Labels, Move)> = self
            .renumbering
            .iter()
            .filter_map(|(labels, old)| {
                let new = *self.cluster_ids.get(labels)?;
                Some((labels.clone(), Move { old: *old, new }))
            })
            .collect();
        for (labels, m) in resolved {
            self.renumbering.remove(&labels);
            if m.old == m.new {
                continue;
            }
            self.for_each_local_entry(&labels, |ep, dir, key, entry| {
                let batch = policy.entry((ep, dir)).or_default();
                batch.add.push(policy_entry(key, m.new, entry));
            });
            self.renumber_finish.insert(labels, m);
        }
    }

    /// Step 2: the ipcache entries of the moved label sets under their new number (into `out`)
    /// and their old policy entries deleted (into `policy`).
    pub(super) fn finish_renumbering(
        &mut self,
        out: &mut Vec<Change>,
        policy: &mut BTreeMap<(u32, DirKey), PolicyBatch>,
    ) {
        let finishing = std::mem::take(&mut self.renumber_finish);
        for (labels, m) in &finishing {
            if self.cluster_ids.get(labels) != Some(&m.new) {
                // Renumbered again before this step: the addresses still carry `old`; start
                // over from it (entries under `new` are left behind: never reused, harmless).
                self.renumbering.insert(labels.clone(), m.old);
                continue;
            }
            for (prefix, identity) in self.engine.ipcache() {
                if self.engine_labels.get(&identity.0) == Some(labels) {
                    let mut unused = BTreeMap::new();
                    self.translate_delta(
                        &Delta::IpcacheUpsert { prefix, identity },
                        out,
                        &mut unused,
                    );
                }
            }
            // Pods with two addresses: the secondary (IPv6) entry is the model's own.
            let dual_stack: Vec<String> = self
                .endpoints
                .iter()
                .filter(|(_, e)| e.ipv4.is_some() && e.ipv6.is_some())
                .filter(|(k, _)| {
                    self.engine
                        .pod_identity(k)
                        .and_then(|l| self.engine_labels.get(&l.0))
                        == Some(labels)
                })
                .map(|(k, _)| k.clone())
                .collect();
            for key in dual_stack {
                self.endpoint_changes(&key, out);
            }
            self.for_each_local_entry(labels, |ep, dir, key, _| {
                let batch = policy.entry((ep, dir)).or_default();
                batch.delete.push(policy_key(key, m.old));
            });
        }
    }

    /// The cluster numbers the dataplane may hold entries of engine identity `local` under: its
    /// current number and, while its label set is being renumbered, the old one.
    pub(super) fn numbers_held(&self, local: Identity) -> Vec<u32> {
        let mut out: Vec<u32> = self.translate(local).into_iter().collect();
        if let Some(labels) = self.engine_labels.get(&local.0) {
            let old = self
                .renumbering
                .get(labels)
                .copied()
                .or_else(|| self.renumber_finish.get(labels).map(|m| m.old));
            out.extend(old.filter(|o| !out.contains(o)));
        }
        out
    }

    /// Calls `f` for every policy entry of this node's endpoints (sent to the dataplane) whose
    /// remote identity has the label set `labels`.
    fn for_each_local_entry(
        &self,
        labels: &Labels,
        mut f: impl FnMut(
            u32,
            DirKey,
            &dataplane::tables::policy::PolicyKey,
            &dataplane::tables::policy::PolicyEntry,
        ),
    ) {
        let names = |id: Identity| self.engine_labels.get(&id.0) == Some(labels);
        for (key, ep_policy) in self.engine.endpoints() {
            let Ok(Some(ep)) = self.local_endpoint_id(key) else {
                continue;
            };
            for d in [Direction::Ingress, Direction::Egress] {
                for (k, e) in ep_policy.direction(d).map.iter() {
                    if k.identity.0 >= Identity::FIRST_CLUSTER_LOCAL && names(k.identity) {
                        f(ep, DirKey(d), &k, &e);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test
mod tests {
    use super::super::test_support::{base, k, resolve_all};
    use super::super::ClusterState;
    use crate::dataplane_client::{Change, IpcacheMsg, PolicyUpdate};

    /// Pod a here admits pod b (on n2, two addresses); b's number is collected and b's label
    /// set allocated again under a new number: a's policy gets the new number beside the old
    /// (step 1), then b's addresses move and the old entries go (step 2), never the reverse.
    #[test]
    fn a_renumbered_identity_moves_its_ipcache_and_policy_entries() {
        let mut s = ClusterState::new("n1");
        s.set_local_only(true);
        base(&mut s);
        s.put(&k("endpoints/default/a"), br#"{"node":"n1","labels":{"app":"a"},"ipv4":"10.1.0.5","interface":"lxc1","ifindex":7,"mac":"02:00:00:00:00:05"}"#).unwrap();
        s.put(&k("endpoints/default/b"), br#"{"node":"n2","labels":{"app":"b"},"ipv4":"10.2.0.9","ipv6":"fd00:2::9","interface":"lxc9"}"#).unwrap();
        let np = br#"{"apiVersion":"networking.k8s.io/v1","kind":"NetworkPolicy","metadata":{"name":"p","namespace":"default"},"spec":{"podSelector":{"matchLabels":{"app":"a"}},"ingress":[{"from":[{"podSelector":{"matchLabels":{"app":"b"}}}],"ports":[{"port":80},{"port":81}]}]}}"#;
        s.put(&k("policies/NetworkPolicy/default/p"), np).unwrap();
        let mut next = 1000;
        resolve_all(&mut s, &mut next);
        s.commit();
        let old = s.pod_identity("default/b").unwrap();

        // Collected: nothing moves while b's label set has no number.
        s.forget_identity(old);
        let labels: Vec<_> = s.needed_identities();
        assert_eq!(labels.len(), 1);
        let out = s.commit();
        assert!(
            out.iter()
                .all(|c| !matches!(c, Change::PolicyUpdate(_) | Change::IpcacheUpsert(_))),
            "{out:?}"
        );
        assert!(!s.commit_due());

        // Allocated again under a new number.
        let new = 5000;
        s.set_identity(labels[0].0.clone(), new);
        let step1 = s.commit();
        let adds: Vec<u32> = updates(&step1)
            .flat_map(|u| u.add.iter().map(|e| e.identity))
            .collect();
        assert_eq!(adds, [new, new], "{step1:?}");
        assert!(updates(&step1).all(|u| u.delete.is_empty()), "{step1:?}");
        assert!(
            ipcache(&step1).is_empty(),
            "the addresses move after the policy: {step1:?}"
        );
        assert!(s.commit_due());

        let step2 = s.commit();
        let mut moved: Vec<(String, u32)> = ipcache(&step2);
        moved.sort();
        assert_eq!(
            moved,
            [
                ("10.2.0.9/32".to_string(), new),
                ("fd00:2::9/128".to_string(), new)
            ],
            "{step2:?}"
        );
        let deletes: Vec<u32> = updates(&step2)
            .flat_map(|u| u.delete.iter().map(|d| d.identity))
            .collect();
        assert_eq!(deletes, [old, old], "{step2:?}");
        assert!(!s.commit_due());
        assert!(s.commit().is_empty());
        // The snapshot agrees.
        let snap = s.snapshot();
        assert!(ipcache(&snap)
            .iter()
            .any(|(p, i)| p == "10.2.0.9/32" && *i == new));
    }

    /// Found by the scale test: b's number is collected, then the policy admitting b goes
    /// before b has a new number. The removal must delete the entries under the old number
    /// (the dataplane's), which the renumbering no longer moves (they left the engine's map).
    #[test]
    fn an_entry_removed_during_a_renumbering_goes_under_the_old_number() {
        let mut s = ClusterState::new("n1");
        s.set_local_only(true);
        base(&mut s);
        s.put(&k("endpoints/default/a"), br#"{"node":"n1","labels":{"app":"a"},"ipv4":"10.1.0.5","interface":"lxc1","ifindex":7,"mac":"02:00:00:00:00:05"}"#).unwrap();
        s.put(
            &k("endpoints/default/b"),
            br#"{"node":"n2","labels":{"app":"b"},"ipv4":"10.2.0.9","interface":"lxc9"}"#,
        )
        .unwrap();
        let np = br#"{"apiVersion":"networking.k8s.io/v1","kind":"NetworkPolicy","metadata":{"name":"p","namespace":"default"},"spec":{"podSelector":{"matchLabels":{"app":"a"}},"ingress":[{"from":[{"podSelector":{"matchLabels":{"app":"b"}}}],"ports":[{"port":80}]}]}}"#;
        s.put(&k("policies/NetworkPolicy/default/p"), np).unwrap();
        let mut next = 1000;
        resolve_all(&mut s, &mut next);
        s.commit();
        let old = s.pod_identity("default/b").unwrap();

        s.forget_identity(old);
        s.put(&k("policies/NetworkPolicy/default/p"), br#"{"apiVersion":"networking.k8s.io/v1","kind":"NetworkPolicy","metadata":{"name":"p","namespace":"default"},"spec":{"podSelector":{"matchLabels":{"app":"a"}},"ingress":[]}}"#).unwrap();
        let out = s.commit();
        let deletes: Vec<u32> = updates(&out)
            .flat_map(|u| u.delete.iter().map(|d| d.identity))
            .collect();
        assert_eq!(deletes, [old], "{out:?}");
        // The new number changes nothing more in the policy.
        let labels = s.needed_identities();
        s.set_identity(labels[0].0.clone(), 5000);
        let mut out = s.commit();
        out.extend(s.commit());
        assert!(updates(&out).all(|u| u.add.is_empty()), "{out:?}");
    }

    fn updates(out: &[Change]) -> impl Iterator<Item = &PolicyUpdate> {
        out.iter().filter_map(|c| match c {
            Change::PolicyUpdate(u) => Some(u),
            _ => None,
        })
    }

    fn ipcache(out: &[Change]) -> Vec<(String, u32)> {
        out.iter()
            .filter_map(|c| match c {
                Change::IpcacheUpsert(IpcacheMsg {
                    prefix, identity, ..
                }) => Some((prefix.0.to_string(), *identity)),
                _ => None,
            })
            .collect()
    }
}
