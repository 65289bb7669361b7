//! This node's own policy (Cilium's host firewall): the host policies (`nodeSelector`) that
//! select the node's labels from its etcd record, compiled whole by the engine and sent as
//! `host_policy.replace` (both directions) whenever it differs from what was sent.
//!
//! Host policies are few and their map small, so recomputing it at every commit costs a scan
//! of the policies' sections and spares the engine a second kind of dirty tracking. Entries
//! whose identity has no cluster-wide number yet hold the whole update back (sending the rest
//! could drop a deny); the next commit retries.

use dataplane::tables::policy::Direction;
use policy_compiler::labels::Labels;
use policy_compiler::trace::{host_policies, HostPolicies};

use super::wire::wire_direction;
use super::ClusterState;
use crate::dataplane_client::{policy_entry, Change, HostPolicyReplace};
use crate::schema::NodeSpec;

impl ClusterState {
    /// Appends `host_policy.replace` for both directions when this node's host policy changed
    /// since it was last sent (or was never sent).
    pub(super) fn host_policy_changes(&mut self, out: &mut Vec<Change>) {
        let Some(spec) = self.nodes.get(&self.node) else {
            return; // No record of this node yet: nothing can select it.
        };
        let labels = node_labels(spec);
        let policy = self.engine.host_policy(&labels);
        let mut wanted = Vec::with_capacity(2);
        for d in [Direction::Ingress, Direction::Egress] {
            let dp = policy.direction(d);
            let mut entries = Vec::with_capacity(dp.map.len());
            for (k, e) in dp.map.iter() {
                let Some(id) = self.translate(k.identity) else {
                    return; // Retried at the next commit, once the identity is known.
                };
                entries.push(policy_entry(&k, id, &e));
            }
            wanted.push(HostPolicyReplace {
                direction: wire_direction(d),
                enforced: dp.enforced,
                entries,
            });
        }
        if self.sent_host_policy.as_ref() != Some(&wanted) {
            out.extend(wanted.iter().cloned().map(Change::HostPolicyReplace));
            self.sent_host_policy = Some(wanted);
        }
    }

    /// Every known node's host policy, as its agent would compute it (for `policy trace` and
    /// `policy get --host`; identities are this model's local numbers).
    pub fn host_policies(&mut self) -> HostPolicies {
        let nodes: Vec<(String, Labels)> = self
            .nodes
            .iter()
            .map(|(name, spec)| (name.clone(), node_labels(spec)))
            .collect();
        host_policies(&mut self.engine, nodes.iter().map(|(n, l)| (n.as_str(), l)))
    }

    /// Forgets what was sent (the dataplane restarted empty).
    pub(super) fn forget_host_policy(&mut self) {
        self.sent_host_policy = None;
    }
}

/// A node's labels as the policy engine matches them.
fn node_labels(spec: &NodeSpec) -> Labels {
    let mut labels = Labels::new();
    for (k, v) in &spec.labels {
        labels.insert(k.clone(), v.clone());
    }
    labels
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test
mod tests {
    use super::super::test_support::{base, k, resolve_all};
    use super::super::ClusterState;
    use crate::dataplane_client::{Change, HostPolicyReplace, WireDirection};

    const FIREWALL: &[u8] = br#"{"apiVersion":"cilium.io/v2","kind":"CiliumClusterwideNetworkPolicy","metadata":{"name":"fw"},"spec":{"nodeSelector":{"matchLabels":{"role":"worker"}},"ingress":[{"fromEndpoints":[{"matchLabels":{"app":"b"}}],"toPorts":[{"ports":[{"port":"8080","protocol":"TCP"}]}]}]}}"#;

    fn host_changes(out: &[Change]) -> Vec<&HostPolicyReplace> {
        out.iter()
            .filter_map(|c| match c {
                Change::HostPolicyReplace(m) => Some(m),
                _ => None,
            })
            .collect()
    }

    fn ingress(out: &[Change]) -> Option<&HostPolicyReplace> {
        host_changes(out)
            .into_iter()
            .find(|m| m.direction == WireDirection::Ingress)
    }

    fn state() -> (ClusterState, u32) {
        let mut s = ClusterState::new("n1");
        base(&mut s);
        s.put(
            &k("endpoints/default/b"),
            br#"{"node":"n2","labels":{"app":"b"},"ipv4":"10.2.0.9","interface":"lxc9"}"#,
        )
        .unwrap();
        s.put(&k("policies/CiliumClusterwideNetworkPolicy/fw"), FIREWALL)
            .unwrap();
        let mut next = 1000;
        resolve_all(&mut s, &mut next);
        (s, next)
    }

    #[test]
    fn the_labels_of_the_nodes_record_select_its_host_policy() {
        let (mut s, _) = state();
        let out = s.commit();
        let first = ingress(&out).expect("the first commit says what the host's policy is");
        assert!(!first.enforced, "n1 has no labels yet: not selected");
        assert!(
            host_changes(&s.commit()).is_empty(),
            "unchanged: not resent"
        );

        s.put(
            &k("nodes/n1"),
            br#"{"underlay_ip":"192.168.0.1","pod_cidrs":["10.1.0.0/24"],"labels":{"role":"worker"}}"#,
        )
        .unwrap();
        let out = s.commit();
        let m = ingress(&out).expect("selected now: the ingress map is sent");
        assert!(m.enforced);
        let b = s.pod_identity("default/b").unwrap();
        assert_eq!(m.entries.len(), 1);
        assert_eq!((m.entries[0].identity, m.entries[0].port), (b, Some(8080)));

        // After a dataplane restart the snapshot carries it again.
        let snap = s.snapshot();
        assert!(ingress(&snap).is_some_and(|m| m.enforced));

        s.delete(&k("policies/CiliumClusterwideNetworkPolicy/fw"));
        let out = s.commit();
        assert!(ingress(&out).is_some_and(|m| !m.enforced && m.entries.is_empty()));
    }

    #[test]
    fn node_labels_are_checked_like_other_labels() {
        let mut s = ClusterState::new("n1");
        base(&mut s);
        let e = s
            .put(
                &k("nodes/n3"),
                br#"{"underlay_ip":"192.168.0.3","pod_cidrs":["10.3.0.0/24"],"labels":{"":"x"}}"#,
            )
            .unwrap_err();
        assert!(e.to_string().contains("label key is empty"), "{e}");
    }
}
