//! Change sets: what the dataplane must be told since the last [`ClusterState::commit`]
//! (nodes, services, local endpoints, the ipcache, per-endpoint policy deltas), or all of it
//! after a dataplane restart ([`ClusterState::snapshot`]).
//!
//! Order within a commit: endpoints first (policy changes refer to them), then the ipcache,
//! then one `policy.update` per endpoint and direction, then this node's host policy when it
//! changed (`host_policy.rs`). (On the wire, `requests.rs` regroups
//! them: each endpoint travels in one atomic batch with its policy.) A change that needs a cluster-wide
//! identity not known yet is held back until [`ClusterState::set_identity`] supplies it; a later
//! change of the same target supersedes it (`supersede.rs`).

use std::collections::BTreeMap;
use std::net::IpAddr;

use dataplane::tables::policy::Direction;
use dataplane::Prefix;
use policy_compiler::Delta;

use super::supersede::latest_per_target;
use super::wire::{node_upsert, wire_direction};
use super::ClusterState;
use crate::dataplane_client::{
    policy_entry, policy_key, Change, EndpointMsg, IpcacheMsg, PolicyEntryMsg, PolicyKeyMsg,
    PolicyReplace, PolicyUpdate, PrefixRef, Text,
};

impl ClusterState {
    // ---- output ----------------------------------------------------------------------------

    /// The dataplane changes since the last commit. Changes that need a cluster identity not
    /// yet known are held back until [`ClusterState::set_identity`] supplies it.
    pub fn commit(&mut self) -> Vec<Change> {
        let unresolved = std::mem::take(&mut self.unresolved);
        self.unresolved = unresolved
            .into_iter()
            .filter(|k| self.pod_identity(k).is_none())
            .collect();
        let mut out = std::mem::take(&mut self.pending);
        let mut deltas = std::mem::take(&mut self.held_back);
        deltas.extend(self.engine.commit());
        // A held-back delta must not go out after a newer one for the same target.
        let deltas = latest_per_target(deltas);
        // Endpoints first (policy changes refer to them), then ipcache, then policy.
        let dirty = std::mem::take(&mut self.dirty_endpoints);
        for key in dirty {
            if !self.endpoint_changes(&key, &mut out) {
                self.dirty_endpoints.insert(key);
            }
        }
        let mut policy: BTreeMap<(u32, DirKey), PolicyBatch> = BTreeMap::new();
        for d in deltas {
            if !self.translate_delta(&d, &mut out, &mut policy) {
                self.held_back.push(d);
            }
        }
        // A renumbering begun at the last commit moves the ipcache and drops the old entries
        // (after the deltas: a removal among them deletes the old number's entry too).
        self.finish_renumbering(&mut out, &mut policy);
        self.begin_renumbering(&mut policy);
        for ((endpoint, dir), batch) in policy {
            out.push(Change::PolicyUpdate(PolicyUpdate {
                endpoint,
                direction: wire_direction(dir.0),
                enforced: batch.enforced,
                add: batch.add,
                delete: batch.delete,
            }));
        }
        self.host_policy_changes(&mut out);
        self.prune_engine_labels();
        out
    }

    /// `endpoint.upsert` and the secondary ipcache entry of `key`; false when its identity has
    /// no cluster number yet.
    pub(super) fn endpoint_changes(&mut self, key: &str, out: &mut Vec<Change>) -> bool {
        let Some(spec) = self.endpoints.get(key) else {
            return true;
        };
        let Some(identity) = self.pod_identity(key) else {
            return false;
        };
        if let (Some(v4), Some(v6)) = (spec.ipv4, spec.ipv6) {
            let _ = v4;
            let v6 = IpAddr::V6(v6);
            if self.sent_secondary.get(key) != Some(&(v6, identity)) {
                out.push(Change::IpcacheUpsert(IpcacheMsg {
                    prefix: Text(Prefix::host(v6)),
                    identity,
                    tunnel_endpoint: self.tunnel_endpoint(&spec.node),
                }));
                self.sent_secondary.insert(key.to_string(), (v6, identity));
            }
        }
        if spec.node != self.node {
            return true;
        }
        let (Some(id), Some(ifindex), Some(mac)) =
            (self.endpoint_id(spec), spec.ifindex, spec.mac_addr())
        else {
            return true;
        };
        out.push(Change::EndpointUpsert(EndpointMsg {
            id,
            ifindex,
            mac: Text(mac),
            ipv4: spec.ipv4,
            ipv6: spec.ipv6,
            identity,
        }));
        self.sent_endpoints.insert(key.to_string(), id);
        true
    }

    fn tunnel_endpoint(&self, node: &str) -> Option<IpAddr> {
        if node == self.node {
            return None;
        }
        self.nodes.get(node).map(|n| n.underlay_ip)
    }

    /// Where a policy delta of `key` goes: `Ok(Some(id))` a local endpoint already sent to the
    /// dataplane; `Ok(None)` not a local endpoint (ignored); `Err(())` a local endpoint not sent
    /// yet (its identity is unknown): hold the delta back.
    pub(super) fn local_endpoint_id(&self, key: &str) -> Result<Option<u32>, ()> {
        match self.endpoints.get(key) {
            Some(spec) if spec.node == self.node => {
                self.sent_endpoints.get(key).copied().map(Some).ok_or(())
            }
            _ => Ok(None),
        }
    }

    /// Translates one engine delta; false when it must wait for an identity.
    pub(super) fn translate_delta(
        &self,
        d: &Delta,
        out: &mut Vec<Change>,
        policy: &mut BTreeMap<(u32, DirKey), PolicyBatch>,
    ) -> bool {
        match d {
            Delta::IpcacheUpsert { prefix, identity } => {
                let Some(id) = self.translate(*identity) else {
                    return false;
                };
                let node = self
                    .engine
                    .pod_by_ip(prefix.addr())
                    .and_then(|k| self.endpoints.get(k))
                    .map(|e| e.node.clone());
                out.push(Change::IpcacheUpsert(IpcacheMsg {
                    prefix: Text(*prefix),
                    identity: id,
                    tunnel_endpoint: node.and_then(|n| self.tunnel_endpoint(&n)),
                }));
            }
            Delta::IpcacheRemove { prefix } => out.push(Change::IpcacheDelete(PrefixRef {
                prefix: Text(*prefix),
            })),
            Delta::Enforce {
                endpoint,
                direction,
                enforced,
            } => {
                let Ok(target) = self.local_endpoint_id(endpoint) else {
                    return false;
                };
                if let Some(ep) = target {
                    policy.entry((ep, DirKey(*direction))).or_default().enforced = Some(*enforced);
                }
            }
            Delta::Upsert {
                endpoint,
                direction,
                key,
                entry,
            } => {
                let Ok(target) = self.local_endpoint_id(endpoint) else {
                    return false;
                };
                if let Some(ep) = target {
                    let Some(id) = self.translate(key.identity) else {
                        return false;
                    };
                    policy
                        .entry((ep, DirKey(*direction)))
                        .or_default()
                        .add
                        .push(policy_entry(key, id, entry));
                }
            }
            Delta::Remove {
                endpoint,
                direction,
                key,
            } => {
                let Ok(target) = self.local_endpoint_id(endpoint) else {
                    return false;
                };
                if let Some(ep) = target {
                    // Every number the dataplane may hold the entry under: during a renumbering
                    // the old one (the entry leaves the engine's map, so the renumbering's
                    // second step, which moves the map's entries, would not delete it).
                    let numbers = self.numbers_held(key.identity);
                    if numbers.is_empty() {
                        return false;
                    }
                    let batch = policy.entry((ep, DirKey(*direction))).or_default();
                    for id in numbers {
                        batch.delete.push(policy_key(key, id));
                    }
                }
            }
            // The endpoint.delete was sent by delete_endpoint (policy goes with it).
            Delta::EndpointRemoved { .. } => {}
        }
        true
    }

    /// The whole state as changes (after a dataplane restart): nodes, services, local
    /// endpoints, the ipcache, and a `policy.replace` per local endpoint and direction.
    /// Entries whose identity has no cluster number yet are left out (they follow in a later
    /// commit).
    pub fn snapshot(&mut self) -> Vec<Change> {
        let mut out = Vec::new();
        self.local_node_dirty = self.nodes.contains_key(&self.node);
        for (name, n) in &self.nodes {
            if *name != self.node {
                out.push(node_upsert(name, n));
            }
        }
        // Every service's frontends anew, through the same code as a watch event (the
        // dataplane restarted empty); changes already pending stay pending.
        let earlier = std::mem::take(&mut self.pending);
        self.sent_frontends.clear();
        let services: Vec<String> = self.services.keys().cloned().collect();
        for k in services {
            self.sync_service_frontends(&k);
        }
        out.append(&mut self.pending);
        self.pending = earlier;
        self.sent_secondary.clear();
        let keys: Vec<String> = self.endpoints.keys().cloned().collect();
        for k in keys {
            if !self.endpoint_changes(&k, &mut out) {
                self.dirty_endpoints.insert(k);
            }
        }
        for (prefix, identity) in self.engine.ipcache() {
            let mut batch = BTreeMap::new();
            self.translate_delta(
                &Delta::IpcacheUpsert { prefix, identity },
                &mut out,
                &mut batch,
            );
        }
        for (key, ep_policy) in self.engine.endpoints() {
            let Ok(Some(ep)) = self.local_endpoint_id(key) else {
                continue;
            };
            for d in [Direction::Ingress, Direction::Egress] {
                let dp = ep_policy.direction(d);
                let entries = dp
                    .map
                    .iter()
                    .filter_map(|(k, e)| Some(policy_entry(&k, self.translate(k.identity)?, &e)))
                    .collect();
                out.push(Change::PolicyReplace(PolicyReplace {
                    endpoint: ep,
                    direction: wire_direction(d),
                    enforced: dp.enforced,
                    entries,
                }));
            }
        }
        self.forget_host_policy();
        self.host_policy_changes(&mut out);
        out
    }
}

/// `Direction` ordered, as a map key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct DirKey(pub(super) Direction);

impl PartialOrd for DirKey {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for DirKey {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        let rank = |d: Direction| matches!(d, Direction::Ingress) as u8;
        rank(self.0).cmp(&rank(other.0))
    }
}

/// One endpoint's and direction's `policy.update` being built.
#[derive(Debug, Default)]
pub(super) struct PolicyBatch {
    pub(super) enforced: Option<bool>,
    pub(super) add: Vec<PolicyEntryMsg>,
    pub(super) delete: Vec<PolicyKeyMsg>,
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test
mod tests {
    use super::super::test_support::{base, k, resolve_all};
    use super::super::ClusterState;
    use crate::dataplane_client::{
        Change, EndpointMsg, EndpointRef, IpcacheMsg, NodeMsg, PolicyReplace, PolicyUpdate,
    };

    #[test]
    fn local_endpoint_policy_and_remote_ipcache() {
        let mut s = ClusterState::new("n1");
        base(&mut s);
        s.put(&k("endpoints/default/a"), br#"{"node":"n1","labels":{"app":"a"},"ipv4":"10.1.0.5","interface":"lxc1","ifindex":7,"mac":"02:00:00:00:00:05"}"#).unwrap();
        s.put(
            &k("endpoints/default/b"),
            br#"{"node":"n2","labels":{"app":"b"},"ipv4":"10.2.0.9","interface":"lxc9"}"#,
        )
        .unwrap();
        let np = br#"{"apiVersion":"networking.k8s.io/v1","kind":"NetworkPolicy","metadata":{"name":"p","namespace":"default"},"spec":{"podSelector":{"matchLabels":{"app":"a"}},"ingress":[{"from":[{"podSelector":{"matchLabels":{"app":"b"}}}]}]}}"#;
        s.put(&k("policies/NetworkPolicy/default/p"), np).unwrap();
        // Nothing identity-bearing goes out before the numbers are known.
        let before = s.commit();
        assert!(
            before
                .iter()
                .all(|c| !matches!(c, Change::EndpointUpsert(_) | Change::PolicyUpdate(_))),
            "{before:?}"
        );
        let mut next = 1000;
        resolve_all(&mut s, &mut next);
        let out = s.commit();
        let b_id = s.pod_identity("default/b").unwrap();
        assert!(b_id >= 1000);
        assert!(
            out.iter().any(|c| matches!(
                c,
                Change::EndpointUpsert(EndpointMsg {
                    id: 5,
                    ifindex: 7,
                    ..
                })
            )),
            "{out:?}"
        );
        assert!(out.iter().any(|c| matches!(c, Change::IpcacheUpsert(IpcacheMsg { prefix, identity, tunnel_endpoint: Some(t) }) if prefix.0.to_string() == "10.2.0.9/32" && *identity == b_id && t.to_string() == "192.168.0.2")), "{out:?}");
        assert!(out.iter().any(|c| matches!(c, Change::PolicyUpdate(PolicyUpdate { endpoint: 5, enforced: Some(true), add, .. }) if add.iter().any(|e| e.identity == b_id))), "{out:?}");
        assert!(before
            .iter()
            .any(|c| matches!(c, Change::NodeUpsert(NodeMsg { name, .. }) if name == "n2")));
        // Deleting the policy removes the entry, with the cluster number.
        s.delete(&k("policies/NetworkPolicy/default/p"));
        let out = s.commit();
        assert!(out.iter().any(|c| matches!(c, Change::PolicyUpdate(PolicyUpdate { endpoint: 5, delete, .. }) if delete.iter().any(|d| d.identity == b_id))), "{out:?}");
        // The snapshot has everything again.
        let snap = s.snapshot();
        assert!(snap
            .iter()
            .any(|c| matches!(c, Change::PolicyReplace(PolicyReplace { endpoint: 5, .. }))));
        assert!(snap
            .iter()
            .any(|c| matches!(c, Change::EndpointUpsert(EndpointMsg { id: 5, .. }))));
    }

    /// The agent compiles maps for its own node's pods only; remote pods stay peers.
    #[test]
    fn local_only_compiles_this_nodes_pods() {
        let mut s = ClusterState::new("n1");
        s.set_local_only(true);
        base(&mut s);
        s.put(&k("endpoints/default/a"), br#"{"node":"n1","labels":{"app":"a"},"ipv4":"10.1.0.5","interface":"lxc1","ifindex":7,"mac":"02:00:00:00:00:05"}"#).unwrap();
        s.put(
            &k("endpoints/default/b"),
            br#"{"node":"n2","labels":{"app":"b"},"ipv4":"10.2.0.9","interface":"lxc9"}"#,
        )
        .unwrap();
        // Selects both pods; admits b.
        let np = br#"{"apiVersion":"networking.k8s.io/v1","kind":"NetworkPolicy","metadata":{"name":"p","namespace":"default"},"spec":{"podSelector":{},"ingress":[{"from":[{"podSelector":{"matchLabels":{"app":"b"}}}]}]}}"#;
        s.put(&k("policies/NetworkPolicy/default/p"), np).unwrap();
        let mut next = 1000;
        resolve_all(&mut s, &mut next);
        let out = s.commit();
        let b_id = s.pod_identity("default/b").unwrap();
        assert!(out.iter().any(|c| matches!(c, Change::PolicyUpdate(PolicyUpdate { endpoint: 5, add, .. }) if add.iter().any(|e| e.identity == b_id))), "{out:?}");
        let compiled: Vec<&str> = s.engine().endpoints().map(|(k, _)| k).collect();
        assert_eq!(compiled, ["default/a"]);
        // b moves here: now it is compiled too; a leaves: its maps go.
        s.put(&k("endpoints/default/b"), br#"{"node":"n1","labels":{"app":"b"},"ipv4":"10.1.0.9","interface":"lxc9","ifindex":9,"mac":"02:00:00:00:00:09"}"#).unwrap();
        s.put(
            &k("endpoints/default/a"),
            br#"{"node":"n2","labels":{"app":"a"},"ipv4":"10.2.0.5","interface":"lxc1"}"#,
        )
        .unwrap();
        let out = s.commit();
        let compiled: Vec<&str> = s.engine().endpoints().map(|(k, _)| k).collect();
        assert_eq!(compiled, ["default/b"]);
        assert!(
            out.iter()
                .any(|c| matches!(c, Change::EndpointDelete(EndpointRef { id: 5 }))),
            "{out:?}"
        );
        assert!(
            out.iter().any(|c| matches!(
                c,
                Change::PolicyUpdate(PolicyUpdate {
                    endpoint: 9,
                    enforced: Some(true),
                    ..
                })
            )),
            "{out:?}"
        );
    }
}
