//! Superseded deltas: of several engine deltas for the same target (an ipcache prefix, one
//! policy entry of one endpoint and direction, one endpoint's enforcement in one direction),
//! only the last one still says what the dataplane must hold; the earlier ones are dropped
//! before translation.
//!
//! Why: a delta whose identity has no cluster-wide number yet is held back
//! ([`super::ClusterState::commit`]) while later deltas go out. Without this, a held-back delta
//! sent once its number became known would overwrite the newer state. Found by the scale test
//! (control/tests/scale.rs): a watch catch-up batch relabelled a remote pod twice (or flipped
//! its namespace's labels twice); the ipcache upsert under the transient label set waited (no
//! pod needed that label set any more, so nobody resolved it) until another agent's allocation
//! of it arrived as an identity key, then moved the pod's address to that stale number. The same
//! holds for a policy entry's upsert and removal held back together (the dataplane applies an
//! update's deletes before its adds: the entry would stay).
//!
//! Each delta sets its target's final state (upsert replaces, remove deletes), so applying only
//! the last one per target leaves the dataplane where applying all of them in order would.

use std::collections::HashSet;

use dataplane::tables::policy::{Direction, PolicyKey};
use dataplane::Prefix;
use policy_compiler::Delta;

/// What a delta sets.
#[derive(PartialEq, Eq, Hash)]
enum Target<'a> {
    Ipcache(Prefix),
    Entry(&'a str, Direction, PolicyKey),
    Enforcement(&'a str, Direction),
}

fn target(d: &Delta) -> Option<Target<'_>> {
    match d {
        Delta::IpcacheUpsert { prefix, .. } | Delta::IpcacheRemove { prefix } => {
            Some(Target::Ipcache(*prefix))
        }
        Delta::Upsert {
            endpoint,
            direction,
            key,
            ..
        }
        | Delta::Remove {
            endpoint,
            direction,
            key,
        } => Some(Target::Entry(endpoint, *direction, *key)),
        Delta::Enforce {
            endpoint,
            direction,
            ..
        } => Some(Target::Enforcement(endpoint, *direction)),
        // Translates to nothing (the endpoint's delete went out with its key's delete).
        Delta::EndpointRemoved { .. } => None,
    }
}

/// `deltas` (oldest first) without those a later delta for the same target supersedes; the
/// survivors keep their order.
pub(super) fn latest_per_target(deltas: Vec<Delta>) -> Vec<Delta> {
    let mut seen: HashSet<Target<'_>> = HashSet::with_capacity(deltas.len());
    let mut keep = vec![true; deltas.len()];
    for (i, d) in deltas.iter().enumerate().rev() {
        if let Some(t) = target(d) {
            keep[i] = seen.insert(t);
        }
    }
    drop(seen);
    deltas
        .into_iter()
        .zip(keep)
        .filter_map(|(d, keep)| keep.then_some(d))
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test
mod tests {
    use super::super::test_support::{base, k, resolve_all};
    use super::super::ClusterState;
    use super::*;
    use crate::dataplane_client::{Change, IpcacheMsg};
    use dataplane::tables::policy::{Action, PolicyEntry};
    use dataplane::Identity;
    use policy_compiler::labels::Labels;

    fn ip(last: u8) -> Prefix {
        Prefix::host(std::net::IpAddr::from([10, 0, 0, last]))
    }

    #[test]
    fn only_the_last_delta_per_target_survives_in_order() {
        let key = PolicyKey::l3(Identity(300));
        let entry = PolicyEntry {
            action: Action::Allow,
            cookie: 0,
        };
        let deltas = vec![
            Delta::IpcacheUpsert {
                prefix: ip(1),
                identity: Identity(300),
            },
            Delta::Upsert {
                endpoint: "ns/a".into(),
                direction: Direction::Ingress,
                key,
                entry,
            },
            Delta::IpcacheUpsert {
                prefix: ip(2),
                identity: Identity(301),
            },
            Delta::IpcacheRemove { prefix: ip(1) },
            Delta::Remove {
                endpoint: "ns/a".into(),
                direction: Direction::Ingress,
                key,
            },
            // Another endpoint's entry with the same key is another target.
            Delta::Upsert {
                endpoint: "ns/b".into(),
                direction: Direction::Ingress,
                key,
                entry,
            },
            Delta::IpcacheUpsert {
                prefix: ip(1),
                identity: Identity(302),
            },
        ];
        let out = latest_per_target(deltas.clone());
        assert_eq!(out, [2, 4, 5, 6].map(|i| deltas[i].clone()));
    }

    /// Remote pod b's ipcache entries in `out`: `Some(identity)` an upsert, `None` a delete.
    fn b_entries(out: &[Change]) -> Vec<Option<u32>> {
        let b = "10.2.0.9/32";
        out.iter()
            .filter_map(|c| match c {
                Change::IpcacheUpsert(IpcacheMsg {
                    prefix, identity, ..
                }) if prefix.0.to_string() == b => Some(Some(*identity)),
                Change::IpcacheDelete(p) if p.prefix.0.to_string() == b => Some(None),
                _ => None,
            })
            .collect()
    }

    fn pod_b(app: &str) -> String {
        format!(
            r#"{{"node":"n2","labels":{{"app":"{app}"}},"ipv4":"10.2.0.9","interface":"lxc9"}}"#
        )
    }

    /// A model of n1 with remote pod b (app=b) resolved and committed; returns b's number.
    fn with_pod_b(next: &mut u32) -> (ClusterState, u32) {
        let mut s = ClusterState::new("n1");
        s.set_local_only(true);
        base(&mut s);
        s.put(&k("endpoints/default/b"), pod_b("b").as_bytes())
            .unwrap();
        resolve_all(&mut s, next);
        s.commit();
        let id = s.pod_identity("default/b").unwrap();
        (s, id)
    }

    /// The label set b has with `app` in namespace default carrying `ns`.
    fn labels_of_b(app: &str, ns: &[(&str, &str)]) -> Labels {
        let pod: Labels = [("app", app)].into_iter().collect();
        let ns_labels: Labels = ns.iter().copied().collect();
        Labels::for_pod(&pod, "default", &ns_labels, None)
    }

    /// The scale test's divergence, reduced: one watch batch relabels remote pod b and
    /// relabels it back; the transient label set's number arrives later (another agent
    /// allocated it: its identity key is watched). b's address must keep its own number.
    #[test]
    fn a_transient_label_set_numbered_later_does_not_move_the_address() {
        let mut next = 1000;
        let (mut s, id_b) = with_pod_b(&mut next);
        s.put(&k("endpoints/default/b"), pod_b("b2").as_bytes())
            .unwrap();
        s.put(&k("endpoints/default/b"), pod_b("b").as_bytes())
            .unwrap();
        resolve_all(&mut s, &mut next);
        let batch = b_entries(&s.commit());
        assert!(batch.iter().all(|e| *e == Some(id_b)), "{batch:?}");
        s.set_identity(labels_of_b("b2", &[]), 5000);
        let later = s.commit();
        assert!(b_entries(&later).is_empty(), "{later:?}");
        assert_eq!(s.pod_identity("default/b"), Some(id_b));
    }

    /// The same with the namespace's labels flipped and back in one batch (the scale test's
    /// `env` flips), and with a relabel followed by the pod's deletion.
    #[test]
    fn namespace_flips_and_deletions_in_one_batch_leave_no_stale_entry() {
        let mut next = 1000;
        let (mut s, id_b) = with_pod_b(&mut next);
        s.put(&k("namespaces/default"), br#"{"labels":{"env":"prod"}}"#)
            .unwrap();
        s.put(&k("namespaces/default"), br#"{}"#).unwrap();
        resolve_all(&mut s, &mut next);
        let batch = b_entries(&s.commit());
        assert!(batch.iter().all(|e| *e == Some(id_b)), "{batch:?}");
        s.set_identity(labels_of_b("b", &[("env", "prod")]), 5000);
        let later = s.commit();
        assert!(b_entries(&later).is_empty(), "{later:?}");

        s.put(&k("endpoints/default/b"), pod_b("b3").as_bytes())
            .unwrap();
        s.delete(&k("endpoints/default/b"));
        resolve_all(&mut s, &mut next);
        assert_eq!(b_entries(&s.commit()), [None]);
        s.set_identity(labels_of_b("b3", &[]), 5001);
        let later = s.commit();
        assert!(b_entries(&later).is_empty(), "{later:?}");
    }
}
