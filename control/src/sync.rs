//! The in-memory cluster model built from etcd, the policy engine it feeds, and the dataplane
//! changes that follow.
//!
//! Flow: the agent hands every listed or watched key to [`ClusterState::put`] /
//! [`ClusterState::delete`]; asks [`ClusterState::needed_identities`] which label sets have no
//! cluster-wide number yet and resolves them through [`crate::identity`]
//! ([`ClusterState::set_identity`]); then [`ClusterState::commit`] returns the dataplane
//! [`Change`]s since the last commit. After a dataplane restart, [`ClusterState::snapshot`]
//! returns the whole state as changes.
//!
//! Invariants:
//! - a malformed value (see [`crate::schema`]) is logged with its key and reason, counted in
//!   [`ClusterState::malformed_total`], listed in [`ClusterState::rejected`], and skipped: the
//!   last good value of that key stays in force;
//! - an endpoint whose node or namespace does not exist yet is rejected the same way and kept
//!   aside; it is retried whenever a node or namespace is written;
//! - identities: the engine numbers label sets locally; every number sent to the dataplane is
//!   the cluster-wide one of the same label set (reserved and CIDR identities are the same in
//!   both). A change that needs a label set without a cluster number is held back until
//!   [`ClusterState::set_identity`] supplies it.
//! - only this node's endpoints get `endpoint.*` and `policy.*` changes; the ipcache and nodes
//!   cover the whole cluster (remote pods carry their node's underlay IP as tunnel endpoint);
//! - with [`ClusterState::set_local_only`] (the agent) the engine compiles maps only for this
//!   node's pods; the other pods stay inputs (identities, selectors, ipcache, named ports). The
//!   CLI's offline model (node `""`) compiles every pod, for `policy trace`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;

use dataplane::tables::policy::Direction;
use dataplane::{Identity, Prefix};
use policy_compiler::cluster::{ContainerPort, Pod};
use policy_compiler::labels::Labels;
use policy_compiler::model::{PolicyId, Protocol};
use policy_compiler::{Delta, EngineError, PolicyEngine};

use crate::dataplane_client::{
    policy_entry, policy_key, BackendMsg, Change, EndpointMsg, EndpointRef, FrontendMsg,
    IpcacheMsg, LocalNodeMsg, NodeMsg, NodeRef, PolicyEntryMsg, PolicyKeyMsg, PolicyReplace,
    PolicyUpdate, PrefixRef, Proto, ServiceMsg, ServiceRef, Text, WireDirection, WireEncap,
    WireLbMode,
};
use crate::identity::END_IDENTITY;
use crate::schema::{
    self, EndpointSpec, NodeSpec, Object, ObjectKey, SchemaError, ServiceMode, ServiceSpec,
    TunnelMode,
};

/// A timestamped line on stderr (the agent's log).
pub fn log(msg: impl std::fmt::Display) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    eprintln!("[{}.{:03}] {msg}", now.as_secs(), now.subsec_millis());
}

/// The model. See the module doc.
#[derive(Debug)]
pub struct ClusterState {
    node: String,
    engine: PolicyEngine,
    namespaces: BTreeMap<String, Labels>,
    nodes: BTreeMap<String, NodeSpec>,
    endpoints: BTreeMap<String, EndpointSpec>,
    services: BTreeMap<String, ServiceSpec>,
    policies: BTreeSet<PolicyId>,
    /// Keys whose last value was refused, with the reason.
    rejected: BTreeMap<String, String>,
    /// Refused for a missing node or namespace: retried when one appears.
    deferred: BTreeMap<String, Vec<u8>>,
    malformed_total: u64,
    /// Cluster-wide numbers of label sets.
    cluster_ids: HashMap<Labels, u32>,
    /// Engine-local endpoint identity -> its label set (kept after the engine releases it, so
    /// that late removals still translate).
    engine_labels: HashMap<u32, Labels>,
    /// Changes computed but not yet returned (nodes, services, endpoints).
    pending: Vec<Change>,
    /// Engine deltas that still wait for a cluster identity.
    held_back: Vec<Delta>,
    /// Local endpoints whose `endpoint.upsert` must be (re)sent at the next commit.
    dirty_endpoints: BTreeSet<String>,
    /// Endpoint ids sent to the dataplane, by pod key.
    sent_endpoints: BTreeMap<String, u32>,
    /// Secondary (IPv6 next to IPv4) addresses in the ipcache, by pod key.
    sent_secondary: BTreeMap<String, (IpAddr, u32)>,
    /// Do not log refused keys (the CLI reports them itself).
    quiet: bool,
    /// This node's own entry changed (or the dataplane restarted): `local_node.set` is due.
    local_node_dirty: bool,
    /// Compile policy maps for this node's pods only (see the module doc).
    local_only: bool,
    /// Pod keys on this node (kept so per-change work does not scan every endpoint).
    local_keys: BTreeSet<String>,
    /// Pod keys whose label set may lack a cluster number: written since the last commit, or
    /// whose number was forgotten. [`Self::needed_identities`] looks at these only (a scan of
    /// every endpoint cost 6-11 ms per watch batch at 10k endpoints); commit prunes them.
    unresolved: BTreeSet<String>,
}

fn protocol_number(p: &str) -> u8 {
    Protocol::parse(p, false).map_or(Protocol::TCP, |p| p.numbers()[0])
}

impl ClusterState {
    pub fn new(node: &str) -> ClusterState {
        ClusterState {
            node: node.to_string(),
            engine: PolicyEngine::new(),
            namespaces: BTreeMap::new(),
            nodes: BTreeMap::new(),
            endpoints: BTreeMap::new(),
            services: BTreeMap::new(),
            policies: BTreeSet::new(),
            rejected: BTreeMap::new(),
            deferred: BTreeMap::new(),
            malformed_total: 0,
            cluster_ids: HashMap::new(),
            engine_labels: HashMap::new(),
            pending: Vec::new(),
            held_back: Vec::new(),
            dirty_endpoints: BTreeSet::new(),
            sent_endpoints: BTreeMap::new(),
            sent_secondary: BTreeMap::new(),
            quiet: false,
            local_node_dirty: false,
            local_only: false,
            local_keys: BTreeSet::new(),
            unresolved: BTreeSet::new(),
        }
    }

    /// Compile maps for this node's pods only (the agent); the default compiles every pod.
    /// Set it before the first put: pods already known keep their setting until re-put.
    pub fn set_local_only(&mut self, local_only: bool) {
        self.local_only = local_only;
    }

    /// Stops logging refused keys (they are still counted and listed in [`Self::rejected`]).
    pub fn set_quiet(&mut self, quiet: bool) {
        self.quiet = quiet;
    }

    // ---- queries ---------------------------------------------------------------------------

    pub fn malformed_total(&self) -> u64 {
        self.malformed_total
    }

    /// Keys currently refused, with the reason.
    pub fn rejected(&self) -> &BTreeMap<String, String> {
        &self.rejected
    }

    pub fn engine(&self) -> &PolicyEngine {
        &self.engine
    }

    pub fn endpoints(&self) -> &BTreeMap<String, EndpointSpec> {
        &self.endpoints
    }

    pub fn nodes(&self) -> &BTreeMap<String, NodeSpec> {
        &self.nodes
    }

    pub fn services(&self) -> &BTreeMap<String, ServiceSpec> {
        &self.services
    }

    pub fn policies(&self) -> &BTreeSet<PolicyId> {
        &self.policies
    }

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

    fn translate(&self, local: Identity) -> Option<u32> {
        if local.0 < Identity::FIRST_CLUSTER_LOCAL || local.0 >= END_IDENTITY {
            return Some(local.0); // wildcard, reserved, CIDR: node-local, same numbers
        }
        let labels = self.engine_labels.get(&local.0)?;
        self.cluster_ids.get(labels).copied()
    }

    // ---- input -----------------------------------------------------------------------------

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
                if let Some(old) = self.services.remove(&format!("{namespace}/{name}")) {
                    for f in &old.frontends {
                        self.pending.push(Change::ServiceDelete(ServiceRef {
                            frontend: frontend_msg(f),
                        }));
                    }
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
                // The engine renumbered the namespace's pods: look at their label sets again.
                let prefix = format!("{name}/");
                let in_ns: Vec<String> = self
                    .endpoints
                    .range(prefix.clone()..)
                    .take_while(|(k, _)| k.starts_with(&prefix))
                    .map(|(k, _)| k.clone())
                    .collect();
                self.unresolved.extend(in_ns);
                self.namespaces.insert(name, labels);
                self.refresh_local_endpoints();
                self.retry_deferred();
            }
            Object::Node(name, spec) => {
                self.engine
                    .upsert_node(&name, spec.underlay_ip)
                    .map_err(invalid)?;
                if name != self.node {
                    self.pending.push(node_upsert(&name, &spec));
                } else if self.nodes.get(&name) != Some(&spec) {
                    self.local_node_dirty = true;
                }
                self.nodes.insert(name, spec);
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
                if let Some(old) = self.services.get(&k) {
                    for f in old.frontends.iter().filter(|f| !spec.frontends.contains(f)) {
                        self.pending.push(Change::ServiceDelete(ServiceRef {
                            frontend: frontend_msg(f),
                        }));
                    }
                }
                for f in &spec.frontends {
                    self.pending.push(service_upsert(f, &spec));
                }
                self.services.insert(k, spec);
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

    fn refresh_local_endpoints(&mut self) {
        self.dirty_endpoints.extend(self.local_keys.iter().cloned());
    }

    /// The dataplane endpoint id of a local endpoint: its address's offset in the node's pod
    /// CIDR, stable across restarts and unique on the node (IPAM hands each address out once).
    fn endpoint_id(&self, spec: &EndpointSpec) -> Option<u32> {
        let node = self.nodes.get(&spec.node)?;
        let ip = spec.primary_ip()?;
        node.prefixes().iter().enumerate().find_map(|(i, p)| {
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
            if self.endpoint_id(&spec).is_none() {
                return Err(invalid(format!(
                    "address {} is outside node {}'s pod CIDRs",
                    spec.primary_ip().map_or(String::new(), |a| a.to_string()),
                    spec.node
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
        };
        let ns_labels = self.namespaces.get(&namespace).cloned().unwrap_or_default();
        let identity_labels = Labels::for_pod(&pod.labels, &namespace, &ns_labels);
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
        for ((endpoint, dir), batch) in policy {
            out.push(Change::PolicyUpdate(PolicyUpdate {
                endpoint,
                direction: wire_direction(dir.0),
                enforced: batch.enforced,
                add: batch.add,
                delete: batch.delete,
            }));
        }
        out
    }

    /// `endpoint.upsert` and the secondary ipcache entry of `key`; false when its identity has
    /// no cluster number yet.
    fn endpoint_changes(&mut self, key: &str, out: &mut Vec<Change>) -> bool {
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
    fn local_endpoint_id(&self, key: &str) -> Result<Option<u32>, ()> {
        match self.endpoints.get(key) {
            Some(spec) if spec.node == self.node => {
                self.sent_endpoints.get(key).copied().map(Some).ok_or(())
            }
            _ => Ok(None),
        }
    }

    /// Translates one engine delta; false when it must wait for an identity.
    fn translate_delta(
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
                    let Some(id) = self.translate(key.identity) else {
                        return false;
                    };
                    policy
                        .entry((ep, DirKey(*direction)))
                        .or_default()
                        .delete
                        .push(policy_key(key, id));
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
        for s in self.services.values() {
            for f in &s.frontends {
                out.push(service_upsert(f, s));
            }
        }
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
        out
    }
}

impl ClusterState {
    /// True once after this node's own etcd entry changed (or after [`Self::snapshot`]): the
    /// agent must then send `local_node.set` built by [`local_node_facts`].
    pub fn take_local_node_due(&mut self) -> bool {
        std::mem::take(&mut self.local_node_dirty)
    }

    /// This node's own etcd entry, once known.
    pub fn own_node(&self) -> Option<&NodeSpec> {
        self.nodes.get(&self.node)
    }
}

/// The dataplane's `local_node` with this node's etcd facts written over it: the name, the
/// underlay IPv4 address, the pods' gateways (the first host address of the first pod CIDR of
/// each family: the address IPAM never hands out) and the default encapsulation. Everything
/// else (the router MAC, the uplink's index, MAC, MTU and gateway MAC, which the dataplane read
/// from its interfaces at start) is kept from `current`, because `local_node.set` replaces the
/// whole record.
pub fn local_node_facts(current: &LocalNodeMsg, name: &str, spec: &NodeSpec) -> LocalNodeMsg {
    let first_host = |v4: bool| {
        spec.prefixes()
            .into_iter()
            .find(|p| p.is_ipv4() == v4 && p.prefix_len() < if v4 { 32 } else { 128 })
            .map(|p| match p.addr() {
                IpAddr::V4(a) => IpAddr::V4(u32::from(a).wrapping_add(1).into()),
                IpAddr::V6(a) => IpAddr::V6(u128::from(a).wrapping_add(1).into()),
            })
    };
    LocalNodeMsg {
        name: name.to_string(),
        underlay_ipv4: match spec.underlay_ip {
            IpAddr::V4(a) => Some(a),
            IpAddr::V6(_) => current.underlay_ipv4,
        },
        gateway_ipv4: match first_host(true) {
            Some(IpAddr::V4(a)) => Some(a),
            _ => None,
        },
        gateway_ipv6: match first_host(false) {
            Some(IpAddr::V6(a)) => Some(a),
            _ => None,
        },
        default_encap: wire_encap(spec.tunnel),
        ..current.clone()
    }
}

fn wire_encap(t: TunnelMode) -> WireEncap {
    match t {
        TunnelMode::Vxlan => WireEncap::Vxlan,
        TunnelMode::Geneve => WireEncap::Geneve,
        TunnelMode::Native => WireEncap::Native,
    }
}

/// `Direction` ordered, as a map key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct DirKey(Direction);

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

#[derive(Debug, Default)]
struct PolicyBatch {
    enforced: Option<bool>,
    add: Vec<PolicyEntryMsg>,
    delete: Vec<PolicyKeyMsg>,
}

fn wire_direction(d: Direction) -> WireDirection {
    match d {
        Direction::Ingress => WireDirection::Ingress,
        Direction::Egress => WireDirection::Egress,
    }
}

fn node_upsert(name: &str, n: &NodeSpec) -> Change {
    Change::NodeUpsert(NodeMsg {
        name: name.to_string(),
        underlay: n.underlay_ip,
        pod_cidrs: n.prefixes().into_iter().map(Text).collect(),
        encap: wire_encap(n.tunnel),
    })
}

fn frontend_msg(f: &schema::FrontendSpec) -> FrontendMsg {
    FrontendMsg {
        addr: f.ip,
        port: f.port,
        proto: Proto(protocol_number(&f.protocol)),
    }
}

fn service_upsert(f: &schema::FrontendSpec, s: &ServiceSpec) -> Change {
    Change::ServiceUpsert(ServiceMsg {
        frontend: frontend_msg(f),
        backends: s
            .backends
            .iter()
            .map(|b| BackendMsg {
                addr: b.ip,
                port: b.port,
                weight: b.weight,
            })
            .collect(),
        mode: match s.mode {
            ServiceMode::Snat => WireLbMode::Snat,
            ServiceMode::Dsr => WireLbMode::Dsr,
        },
        id: None,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test
mod tests {
    use super::*;

    fn k(s: &str) -> String {
        format!("{}{s}", schema::ROOT)
    }

    fn base(s: &mut ClusterState) {
        s.put(
            &k("nodes/n1"),
            br#"{"underlay_ip":"192.168.0.1","pod_cidrs":["10.1.0.0/24"]}"#,
        )
        .unwrap();
        s.put(
            &k("nodes/n2"),
            br#"{"underlay_ip":"192.168.0.2","pod_cidrs":["10.2.0.0/24"]}"#,
        )
        .unwrap();
        s.put(&k("namespaces/default"), br#"{}"#).unwrap();
    }

    fn resolve_all(s: &mut ClusterState, next: &mut u32) {
        for (l, _) in s.needed_identities() {
            s.set_identity(l, *next);
            *next += 1;
        }
    }

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

    /// Regression: the agent never sent `local_node.set`, so a dataplane fed only by the agent
    /// had no gateway address and pods could not resolve their default route's next hop.
    #[test]
    fn own_node_entry_makes_local_node_due_and_keeps_the_uplink_facts() {
        let mut s = ClusterState::new("n1");
        assert!(!s.take_local_node_due());
        base(&mut s);
        assert!(s.take_local_node_due(), "own node written");
        assert!(!s.take_local_node_due(), "once");
        // Another node, or the same own value again: nothing due.
        s.put(
            &k("nodes/n2"),
            br#"{"underlay_ip":"192.168.0.9","pod_cidrs":["10.2.0.0/24"]}"#,
        )
        .unwrap();
        s.put(
            &k("nodes/n1"),
            br#"{"underlay_ip":"192.168.0.1","pod_cidrs":["10.1.0.0/24"]}"#,
        )
        .unwrap();
        assert!(!s.take_local_node_due());
        s.put(
            &k("nodes/n1"),
            br#"{"underlay_ip":"192.168.0.1","pod_cidrs":["10.1.0.0/24","fd00:1::/64"],"tunnel":"geneve"}"#,
        )
        .unwrap();
        assert!(s.take_local_node_due(), "own node changed");
        let _ = s.snapshot();
        assert!(s.take_local_node_due(), "after a dataplane (re)connection");

        let current = LocalNodeMsg {
            router_mac: Text("02:aa:00:00:00:01".parse().unwrap()),
            uplink_ifindex: Some(4),
            uplink_mac: Text("02:bb:00:00:00:02".parse().unwrap()),
            uplink_mtu: 9000,
            ..LocalNodeMsg::default()
        };
        let facts = local_node_facts(&current, "n1", s.own_node().unwrap());
        assert_eq!(facts.name, "n1");
        assert_eq!(facts.underlay_ipv4, Some("192.168.0.1".parse().unwrap()));
        assert_eq!(facts.gateway_ipv4, Some("10.1.0.1".parse().unwrap()));
        assert_eq!(facts.gateway_ipv6, Some("fd00:1::1".parse().unwrap()));
        assert_eq!(facts.default_encap, WireEncap::Geneve);
        assert_eq!(facts.router_mac, current.router_mac);
        assert_eq!(facts.uplink_ifindex, Some(4));
        assert_eq!(facts.uplink_mac, current.uplink_mac);
        assert_eq!(facts.uplink_mtu, 9000);
        // What the dataplane accepts.
        facts.to_local_node().unwrap();
    }
}
