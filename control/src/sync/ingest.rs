//! Ingest: etcd keys (puts, deletes, full listings) into the model and the policy engine.
//!
//! A value is decoded by [`crate::schema`]; a malformed one is counted, listed in
//! [`ClusterState::rejected`], logged (unless quiet) and skipped, and the last good value stays.
//! An endpoint whose node or namespace is missing is kept aside and retried when one appears.
//! Nodes and services produce their dataplane changes here (into `pending`); endpoints are
//! marked dirty and become changes at [`ClusterState::commit`] (their identity may not be known
//! yet).

use std::collections::BTreeSet;
use std::net::IpAddr;

use dataplane::Prefix;
use policy_compiler::cluster::{ContainerPort, Pod};
use policy_compiler::labels::Labels;
use policy_compiler::EngineError;

use super::log::log;
use super::wire::{node_upsert, protocol_number};
use super::ClusterState;
use crate::dataplane_client::{Change, EndpointRef, NodeRef, PrefixRef, Text};
use crate::schema::{self, EndpointSpec, Object, ObjectKey, SchemaError};

impl ClusterState {
    fn refuse(&mut self, e: &SchemaError) {
        self.malformed_total += 1;
        self.rejected.insert(e.key().to_string(), e.to_string());
        if !self.quiet {
            log(format!("skipped malformed key: {e}"));
        }
    }

    /// Applies a put. A refused value is logged, counted and skipped (returned as the error).
    pub fn put(&mut self, key: &str, value: &[u8]) -> Result<(), SchemaError> {
        let result = schema::decode(key, value).and_then(|o| self.apply(key, o));
        match &result {
            Ok(()) => {
                self.rejected.remove(key);
                self.deferred.remove(key);
            }
            Err(e) => {
                if matches!(e, SchemaError::UnknownNode { .. }) || self.is_missing_namespace(e) {
                    self.deferred.insert(key.to_string(), value.to_vec());
                }
                self.refuse(e);
            }
        }
        result
    }

    fn is_missing_namespace(&self, e: &SchemaError) -> bool {
        matches!(e, SchemaError::Invalid { reason, .. } if reason.contains("does not exist; create the namespace"))
    }

    /// Applies a delete.
    pub fn delete(&mut self, key: &str) {
        self.rejected.remove(key);
        self.deferred.remove(key);
        let Ok(k) = schema::parse_key(key) else {
            return;
        };
        match k {
            ObjectKey::Namespace(n) => {
                // Pods of a deleted namespace stay until their keys go (etcd has no cascade);
                // their identity labels keep the last namespace labels.
                self.namespaces.remove(&n);
            }
            ObjectKey::Endpoint { namespace, name } => self.delete_endpoint(&namespace, &name),
            ObjectKey::Policy(id) => {
                self.engine.delete_policy(&id);
                self.policies.remove(&id);
            }
            ObjectKey::Service { namespace, name } => {
                let k = format!("{namespace}/{name}");
                if self.services.remove(&k).is_some() {
                    self.sync_service_frontends(&k);
                }
            }
            ObjectKey::Node(n) => {
                if self.nodes.remove(&n).is_some() {
                    self.engine.delete_node(&n);
                    if n != self.node {
                        self.pending.push(Change::NodeDelete(NodeRef { name: n }));
                    }
                }
            }
            ObjectKey::Identity(id) => self.forget_identity(id),
            ObjectKey::Internal(_) => {}
        }
    }

    /// Reconciles with a full listing (after a compaction): keys absent from it are deleted,
    /// the others put (unchanged values are no-ops).
    pub fn reconcile(&mut self, listing: &[(String, Vec<u8>)]) {
        let listed: BTreeSet<&str> = listing.iter().map(|(k, _)| k.as_str()).collect();
        let known: Vec<String> = self.known_keys();
        for k in known {
            if !listed.contains(k.as_str()) {
                self.delete(&k);
            }
        }
        self.put_all(listing);
    }

    /// Puts a listing in dependency order (nodes and namespaces first).
    pub fn put_all(&mut self, listing: &[(String, Vec<u8>)]) {
        let mut sorted: Vec<&(String, Vec<u8>)> = listing.iter().collect();
        sorted.sort_by_key(|(k, _)| schema::parse_key(k).map_or(u8::MAX, |o| o.apply_rank()));
        for (k, v) in sorted {
            let _ = self.put(k, v);
        }
    }

    fn known_keys(&self) -> Vec<String> {
        let mut v: Vec<String> = Vec::new();
        v.extend(
            self.namespaces
                .keys()
                .map(|n| ObjectKey::Namespace(n.clone()).to_key()),
        );
        v.extend(
            self.nodes
                .keys()
                .map(|n| ObjectKey::Node(n.clone()).to_key()),
        );
        v.extend(
            self.endpoints
                .keys()
                .map(|k| format!("{}endpoints/{k}", schema::ROOT)),
        );
        v.extend(
            self.services
                .keys()
                .map(|k| format!("{}services/{k}", schema::ROOT)),
        );
        v.extend(self.policies.iter().map(schema::policy_key));
        v.extend(self.rejected.keys().cloned());
        v
    }

    fn apply(&mut self, key: &str, object: Object) -> Result<(), SchemaError> {
        let invalid = |e: EngineError| SchemaError::Invalid {
            key: key.to_string(),
            reason: e.to_string(),
        };
        match object {
            Object::Namespace(name, spec) => {
                let labels: Labels = spec.labels.into_iter().collect();
                self.engine
                    .upsert_namespace(&name, labels.clone())
                    .map_err(invalid)?;
                // The engine renumbered the namespace's pods: look at their label sets again,
                // and remember the new numbers' label sets (without them the new identities
                // never got a cluster number and the pods kept their old ones: found by the
                // differential check of control/tests/scale.rs).
                self.namespaces.insert(name.clone(), labels);
                let prefix = format!("{name}/");
                let in_ns: Vec<String> = self
                    .endpoints
                    .range(prefix.clone()..)
                    .take_while(|(k, _)| k.starts_with(&prefix))
                    .map(|(k, _)| k.clone())
                    .collect();
                for key in &in_ns {
                    self.remember_identity_labels(key);
                }
                self.unresolved.extend(in_ns);
                self.refresh_local_endpoints();
                self.retry_deferred();
            }
            Object::Node(name, spec) => {
                self.engine
                    .upsert_node(&name, spec.underlay_ip)
                    .map_err(invalid)?;
                let own_underlay_changed = name == self.node
                    && self.nodes.get(&name).map(|n| n.underlay_ip) != Some(spec.underlay_ip);
                if name != self.node {
                    self.pending.push(node_upsert(&name, &spec));
                } else if self.nodes.get(&name) != Some(&spec) {
                    self.local_node_dirty = true;
                }
                self.nodes.insert(name, spec);
                if own_underlay_changed {
                    self.sync_node_port_frontends();
                }
                self.retry_deferred();
            }
            Object::Endpoint {
                namespace,
                name,
                spec,
            } => self.upsert_endpoint(key, namespace, name, spec)?,
            // No address yet (its node's IPAM gives one): not in the model until then.
            Object::PendingEndpoint {
                namespace, name, ..
            } => self.delete_endpoint(&namespace, &name),
            Object::Policy(policy) => {
                let id = policy.id.clone();
                self.engine.upsert_policy(*policy).map_err(invalid)?;
                self.policies.insert(id);
            }
            Object::Service {
                namespace,
                name,
                spec,
            } => {
                let k = format!("{namespace}/{name}");
                self.check_node_ports(key, &k, &spec)?;
                self.check_external_ips(key, &spec)?;
                self.services.insert(k.clone(), spec);
                self.sync_service_frontends(&k);
            }
            Object::Identity(id, spec) => self.set_identity(spec.labels.into(), id),
            Object::Ignored => {}
        }
        Ok(())
    }

    fn retry_deferred(&mut self) {
        let deferred = std::mem::take(&mut self.deferred);
        for (k, v) in deferred {
            if self.put(&k, &v).is_err() {
                // `put` counted the failure again; a retry is not a new malformed value.
                self.malformed_total = self.malformed_total.saturating_sub(1);
            }
        }
    }

    /// Records the label set (namespace labels folded in) behind pod `key`'s engine identity.
    fn remember_identity_labels(&mut self, key: &str) {
        let (Some(spec), Some((namespace, _))) = (self.endpoints.get(key), key.split_once('/'))
        else {
            return;
        };
        let Some(local) = self.engine.pod_identity(key) else {
            return;
        };
        let pod: Labels = spec
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let ns_labels = self.namespaces.get(namespace).cloned().unwrap_or_default();
        let sa = spec.service_account.as_deref();
        self.engine_labels
            .insert(local.0, Labels::for_pod(&pod, namespace, &ns_labels, sa));
    }

    fn refresh_local_endpoints(&mut self) {
        self.dirty_endpoints.extend(self.local_keys.iter().cloned());
    }

    /// The dataplane endpoint id of a local endpoint: its address's offset in the node's pod
    /// CIDR (low 24 bits) and the CIDR's index (top 8 bits), stable across restarts. IPAM hands
    /// addresses out from the start of the CIDR, so its addresses never collide; an address
    /// chosen by hand could (an offset past 2^24 in a large CIDR), and `upsert_endpoint` refuses
    /// the second endpoint rather than let one pod run under another's policy. Only a node's
    /// first 256 CIDRs can hold local endpoints.
    pub(super) fn endpoint_id(&self, spec: &EndpointSpec) -> Option<u32> {
        let node = self.nodes.get(&spec.node)?;
        let ip = spec.primary_ip()?;
        node.prefixes()
            .iter()
            .enumerate()
            .take(256)
            .find_map(|(i, p)| {
                if !p.contains(ip) {
                    return None;
                }
                let off = match (ip, p.addr()) {
                    (IpAddr::V4(a), IpAddr::V4(b)) => u128::from(u32::from(a) - u32::from(b)),
                    (IpAddr::V6(a), IpAddr::V6(b)) => u128::from(a) - u128::from(b),
                    _ => return None,
                };
                // Several CIDRs: the index goes into the top bits.
                let off = u32::try_from(off & 0x00ff_ffff).ok()?;
                Some(off | (u32::try_from(i).ok()? << 24))
            })
    }

    fn upsert_endpoint(
        &mut self,
        key: &str,
        namespace: String,
        name: String,
        spec: EndpointSpec,
    ) -> Result<(), SchemaError> {
        if !self.nodes.contains_key(&spec.node) {
            return Err(SchemaError::UnknownNode {
                key: key.to_string(),
                node: spec.node.clone(),
            });
        }
        let invalid = |reason: String| SchemaError::Invalid {
            key: key.to_string(),
            reason,
        };
        if spec.node == self.node {
            if spec.ifindex.is_none() || spec.mac.is_none() {
                return Err(invalid(
                    "an endpoint on this node needs ifindex and mac (the CNI plugin writes them)"
                        .into(),
                ));
            }
            let Some(id) = self.endpoint_id(&spec) else {
                return Err(invalid(format!(
                    "address {} is outside node {}'s (first 256) pod CIDRs",
                    spec.primary_ip().map_or(String::new(), |a| a.to_string()),
                    spec.node
                )));
            };
            let own = format!("{namespace}/{name}");
            let taken = self.local_keys.iter().find(|other| {
                **other != own
                    && self.endpoints.get(*other).and_then(|o| self.endpoint_id(o)) == Some(id)
            });
            if let Some(other) = taken {
                return Err(invalid(format!(
                    "its dataplane endpoint id {id:#x} (the address's offset in the pod CIDR, low \
                     24 bits) is already endpoint {other}'s: give it an address from IPAM (leave \
                     ipv4/ipv6 out) or one whose offset differs"
                )));
            }
        }
        let pod_key = format!("{namespace}/{name}");
        let Some(ip) = spec.primary_ip() else {
            return Err(invalid("an endpoint needs an address".into()));
        };
        let pod = Pod {
            namespace: namespace.clone(),
            name: name.clone(),
            labels: spec
                .labels
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect(),
            ip,
            ports: spec
                .ports
                .iter()
                .map(|p| ContainerPort {
                    name: p.name.clone(),
                    port: p.port,
                    protocol: protocol_number(&p.protocol),
                })
                .collect(),
            node: Some(spec.node.clone()),
            service_account: spec.service_account.clone(),
        };
        let ns_labels = self.namespaces.get(&namespace).cloned().unwrap_or_default();
        let identity_labels = pod.identity_labels(&ns_labels);
        // A move to another node: the old local endpoint goes.
        if let Some(old) = self.endpoints.get(&pod_key) {
            if old.node == self.node && spec.node != self.node {
                if let Some(id) = self.sent_endpoints.remove(&pod_key) {
                    self.pending
                        .push(Change::EndpointDelete(EndpointRef { id }));
                }
            }
        }
        let compile = !self.local_only || spec.node == self.node;
        self.engine
            .upsert_pod_with(pod, compile)
            .map_err(|e| invalid(e.to_string()))?;
        if let Some(local) = self.engine.pod_identity(&pod_key) {
            self.engine_labels.insert(local.0, identity_labels);
        }
        if spec.node == self.node {
            self.dirty_endpoints.insert(pod_key.clone());
            self.local_keys.insert(pod_key.clone());
        } else {
            self.local_keys.remove(&pod_key);
        }
        self.unresolved.insert(pod_key.clone());
        self.endpoints.insert(pod_key.clone(), spec);
        self.dirty_endpoints.insert(pod_key);
        Ok(())
    }

    fn delete_endpoint(&mut self, namespace: &str, name: &str) {
        let key = format!("{namespace}/{name}");
        if self.endpoints.remove(&key).is_none() {
            return;
        }
        self.engine.delete_pod(namespace, name);
        self.local_keys.remove(&key);
        self.unresolved.remove(&key);
        if let Some(id) = self.sent_endpoints.remove(&key) {
            self.pending
                .push(Change::EndpointDelete(EndpointRef { id }));
        }
        if let Some((ip, _)) = self.sent_secondary.remove(&key) {
            self.pending.push(Change::IpcacheDelete(PrefixRef {
                prefix: Text(Prefix::host(ip)),
            }));
        }
        self.dirty_endpoints.remove(&key);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test
mod tests {
    use super::super::test_support::{base, k};
    use super::super::ClusterState;
    use crate::schema::SchemaError;

    /// Two local endpoints whose addresses share the low 24 bits of their offset would share a
    /// dataplane endpoint id (one pod under the other's policy): the second is refused.
    #[test]
    fn colliding_endpoint_ids_are_refused() {
        let mut s = ClusterState::new("n1");
        s.put(
            &k("nodes/n1"),
            br#"{"underlay_ip":"192.168.0.1","pod_cidrs":["10.0.0.0/7"]}"#,
        )
        .unwrap();
        s.put(&k("namespaces/default"), br#"{}"#).unwrap();
        let ep = |ip: &str| {
            format!(
                r#"{{"node":"n1","ipv4":"{ip}","interface":"lxc","ifindex":3,"mac":"02:00:00:00:00:03"}}"#
            )
        };
        s.put(&k("endpoints/default/a"), ep("10.0.0.5").as_bytes())
            .unwrap();
        // 11.0.0.5 is 2^24 past 10.0.0.5: the same low 24 bits.
        let e = s
            .put(&k("endpoints/default/b"), ep("11.0.0.5").as_bytes())
            .unwrap_err();
        assert!(e.to_string().contains("default/a"), "{e}");
        // Rewriting a itself is no collision.
        s.put(&k("endpoints/default/a"), ep("10.0.0.5").as_bytes())
            .unwrap();
        s.put(&k("endpoints/default/c"), ep("10.0.0.6").as_bytes())
            .unwrap();
    }

    /// Issue 14, finding 8, as its test list words it: two IPv6 endpoints 2^24 apart in one
    /// /64 (addresses chosen outside IPAM) never share a dataplane id: the second is refused,
    /// naming the first, and only the first reaches the dataplane.
    #[test]
    fn ipv6_endpoints_2_pow_24_apart_never_share_a_dataplane_id() {
        let mut s = ClusterState::new("n1");
        s.put(
            &k("nodes/n1"),
            br#"{"underlay_ip":"192.168.0.1","pod_cidrs":["fd00:1::/64"]}"#,
        )
        .unwrap();
        s.put(&k("namespaces/default"), br#"{}"#).unwrap();
        let ep = |ip: &str, mac: u8| {
            format!(
                r#"{{"node":"n1","ipv6":"{ip}","interface":"lxc","ifindex":{mac},"mac":"02:00:00:00:00:{mac:02x}"}}"#
            )
        };
        s.put(&k("endpoints/default/a"), ep("fd00:1::5", 3).as_bytes())
            .unwrap();
        // fd00:1::100:5 is 2^24 past fd00:1::5.
        let e = s
            .put(&k("endpoints/default/b"), ep("fd00:1::100:5", 4).as_bytes())
            .unwrap_err();
        assert!(e.to_string().contains("default/a"), "{e}");
        s.put(&k("endpoints/default/c"), ep("fd00:1::6", 5).as_bytes())
            .unwrap();
        let mut next = 1000;
        super::super::test_support::resolve_all(&mut s, &mut next);
        let ids: Vec<u32> = s
            .commit()
            .iter()
            .filter_map(|c| match c {
                crate::dataplane_client::Change::EndpointUpsert(m) => Some(m.id),
                _ => None,
            })
            .collect();
        assert_eq!(ids.len(), 2, "a and c only: {ids:?}");
        assert_ne!(ids[0], ids[1]);
    }

    #[test]
    fn malformed_is_counted_and_last_good_value_stays() {
        let mut s = ClusterState::new("n1");
        base(&mut s);
        s.put(
            &k("endpoints/default/b"),
            br#"{"node":"n2","labels":{"app":"b"},"ipv4":"10.2.0.9","interface":"lxc9"}"#,
        )
        .unwrap();
        assert!(s.put(&k("endpoints/default/b"), b"{oops").is_err());
        assert!(s.put(&k("gadgets/x"), b"{}").is_err());
        assert!(s
            .put(
                &k("nodes/n3"),
                br#"{"underlay_ip":"192.168.0.3","pod_cidrs":["10.3.0.1/24"]}"#
            )
            .is_err());
        assert_eq!(s.malformed_total(), 3);
        assert_eq!(
            s.endpoints()["default/b"].ipv4.unwrap().to_string(),
            "10.2.0.9"
        );
        assert!(s.rejected().contains_key(&k("endpoints/default/b")));
        // An endpoint on an unknown node waits for the node.
        let e = s
            .put(
                &k("endpoints/default/c"),
                br#"{"node":"n4","ipv4":"10.4.0.2","interface":"lxc2"}"#,
            )
            .unwrap_err();
        assert!(matches!(e, SchemaError::UnknownNode { .. }), "{e}");
        assert_eq!(s.malformed_total(), 4);
        s.put(
            &k("nodes/n4"),
            br#"{"underlay_ip":"192.168.0.4","pod_cidrs":["10.4.0.0/24"]}"#,
        )
        .unwrap();
        assert!(s.endpoints().contains_key("default/c"));
        assert!(!s.rejected().contains_key(&k("endpoints/default/c")));
        assert_eq!(s.malformed_total(), 4);
    }
}
