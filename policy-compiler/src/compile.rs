//! The policy engine: cluster state + rule repository + selector cache -> per-endpoint policy
//! maps in the dataplane's own format ([`EndpointPolicy`]), changed by add/delete deltas.
//!
//! A thin composition of the layers (as Cilium's pkg/policy), one file each:
//! - `inputs`: namespaces, pods, nodes and their indexes;
//! - [`crate::identity`]: identity numbers for label sets and CIDRs;
//! - the ipcache: `dataplane::tables::ipcache::IpCache`, the dataplane's own table;
//! - [`crate::repository`]: the policies, with a revision;
//! - `rule_index`: which sections use which selector;
//! - [`crate::selector_cache`]: selector -> the identities it selects;
//! - `distillery`: an endpoint's map state computed from the above;
//! - `mapstate`: merging rules into a map state and applying it to a map as deltas;
//! - `cookie`: the rules behind each map entry.
//!
//! Incremental contract: mutators ([`PolicyEngine::upsert_policy`], [`PolicyEngine::upsert_pod`],
//! ...) update identities, the ipcache and the selector cache at once and mark the endpoints
//! whose maps may change as dirty: the subjects of a changed policy; the subjects of every
//! section using a selector whose selection changed; the pod itself; and, for pods with named
//! ports, the subjects of sections with egress named ports. [`PolicyEngine::commit`] recompiles
//! only the dirty endpoints, applies the difference to their maps in place and returns it as
//! [`Delta`]s (with the ipcache changes), in a deterministic order.
//!
//! Compiled pods: a node agent only needs the maps of its own node's pods, but every pod of
//! the cluster is an input (identities, selector selections, the ipcache, named ports).
//! [`PolicyEngine::upsert_pod_with`] with `compile: false` adds such an input-only pod: it is
//! never marked dirty and has no [`EndpointPolicy`], so a change costs O(this node's affected
//! pods), not O(the cluster's).
//!
//! What an endpoint's map state is, rule by rule, is written in `distillery`.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use dataplane::tables::ipcache::{IpCache, IpCacheEntry};
use dataplane::tables::policy::{Direction, EndpointPolicy, PolicyEntry, PolicyKey};
use dataplane::{Identity, Prefix};

use crate::cluster::{Cluster, Pod};
use crate::cookie::CookieTable;
use crate::distillery::Distillery;
use crate::identity::{IdentityError, IdentityTable};
use crate::inputs::{Inputs, PodState};
use crate::labels::{Labels, NAMESPACE_NAME_LABEL};
use crate::mapstate::apply;
use crate::model::{Peer, Policy, PolicyId, Section};
use crate::repository::Repository;
use crate::rule_index::{policy_prefixes, Released, RuleIndex, SectionRef};
use crate::selector::Selector;
use crate::selector_cache::{SelectionContext, SelectorCache};
use crate::splits::{self, SplitWarning};

pub use crate::cookie::RuleOrigin;
pub use crate::delta::Delta;

/// Why a change was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EngineError {
    #[error("pod {pod}: namespace `{namespace}` does not exist; create the namespace first")]
    UnknownNamespace { pod: String, namespace: String },
    #[error("{what}: address {addr} is already used by {owner}; addresses must be unique")]
    AddressInUse {
        what: String,
        addr: IpAddr,
        owner: String,
    },
    #[error(transparent)]
    Identity(#[from] IdentityError),
}

/// The whole compiler state. See the module doc.
#[derive(Debug, Default)]
pub struct PolicyEngine {
    inputs: Inputs,
    identities: IdentityTable,
    /// The dataplane's own ipcache type, holding what the dataplane is sent (no tunnel
    /// endpoints: those are the agent's business).
    ipcache: IpCache,
    repo: Repository,
    index: RuleIndex,
    cache: SelectorCache,
    cookies: CookieTable,
    endpoints: BTreeMap<String, EndpointPolicy>,
    /// The node this engine compiles for (its address is `host`), when known.
    local_node: Option<String>,
    dirty: BTreeSet<String>,
    pending: Vec<Delta>,
}

impl PolicyEngine {
    pub fn new() -> Self {
        Self::default()
    }

    /// Builds an engine from a whole cluster and policy set, compiled. Pods are added in
    /// `namespace/name` order, so identity numbers do not depend on the input order.
    pub fn build(cluster: &Cluster, policies: &[Policy]) -> Result<PolicyEngine, EngineError> {
        let mut e = PolicyEngine::new();
        for (name, labels) in &cluster.namespaces {
            e.upsert_namespace(name, labels.clone())?;
        }
        for node in &cluster.nodes {
            e.upsert_node(&node.name, node.ip)?;
        }
        let mut pods: Vec<&Pod> = cluster.pods.iter().collect();
        pods.sort_by_key(|p| (p.namespace.clone(), p.name.clone()));
        for pod in pods {
            e.upsert_pod(pod.clone())?;
        }
        for p in policies {
            e.upsert_policy(p.clone())?;
        }
        e.commit();
        Ok(e)
    }

    // ---- namespaces, pods, nodes -------------------------------------------------------

    /// Creates a namespace or changes its labels (which changes the identity of its pods).
    pub fn upsert_namespace(&mut self, name: &str, mut labels: Labels) -> Result<(), EngineError> {
        if !labels.contains_key(NAMESPACE_NAME_LABEL) {
            labels.insert(NAMESPACE_NAME_LABEL, name);
        }
        if self.inputs.namespaces.get(name) == Some(&labels) {
            return Ok(());
        }
        self.inputs.namespaces.insert(name.to_string(), labels);
        let prefix = format!("{name}/");
        let in_ns: Vec<(Pod, bool)> = self
            .inputs
            .pods
            .range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .map(|(_, s)| (s.pod.clone(), s.compiled))
            .collect();
        for (pod, compiled) in in_ns {
            self.upsert_pod_with(pod, compiled)?;
        }
        Ok(())
    }

    /// Adds a pod, or changes its labels, address or ports; its maps are compiled.
    pub fn upsert_pod(&mut self, pod: Pod) -> Result<(), EngineError> {
        self.upsert_pod_with(pod, true)
    }

    /// As [`Self::upsert_pod`]; with `compile` false the pod is an input only (a pod of
    /// another node): no maps are computed for it, and maps it had are dropped
    /// ([`Delta::EndpointRemoved`]).
    pub fn upsert_pod_with(&mut self, pod: Pod, compile: bool) -> Result<(), EngineError> {
        let key = pod.key();
        let ns_labels = self.inputs.namespaces.get(&pod.namespace).ok_or_else(|| {
            EngineError::UnknownNamespace {
                pod: key.clone(),
                namespace: pod.namespace.clone(),
            }
        })?;
        let me = format!("pod {key}");
        if let Some(owner) = self.inputs.address_owner(pod.ip).filter(|o| *o != me) {
            return Err(EngineError::AddressInUse {
                what: format!("pod {key}"),
                addr: pod.ip,
                owner,
            });
        }
        let labels = pod.identity_labels(ns_labels);
        let (id, _) = self.identities.acquire_labels(&labels)?;
        let named = !pod.ports.iter().all(|p| p.name.is_none());
        let ip = pod.ip;
        let old = self.inputs.pods.insert(
            key.clone(),
            PodState {
                pod,
                identity: id,
                compiled: compile,
            },
        );
        let mut touched = vec![id];
        let mut old_named = false;
        if let Some(old) = &old {
            old_named = old.pod.ports.iter().any(|p| p.name.is_some());
            self.forget_pod_address(&key, old.identity, old.pod.ip);
            touched.push(old.identity);
        }
        self.inputs.add_pod_address(&key, id, ip, compile);
        self.set_ipcache(Prefix::host(ip), id);
        if let Some(old) = old {
            self.identities.release(old.identity);
        }
        touched.dedup();
        for t in touched {
            self.identity_changed(t);
        }
        if named || old_named {
            self.mark_named_egress_users();
        }
        if compile {
            self.dirty.insert(key);
        } else {
            self.dirty.remove(&key);
            if self.endpoints.remove(&key).is_some() {
                self.pending.push(Delta::EndpointRemoved { endpoint: key });
            }
        }
        Ok(())
    }

    /// Removes a pod; returns whether it existed.
    pub fn delete_pod(&mut self, namespace: &str, name: &str) -> bool {
        let key = format!("{namespace}/{name}");
        let Some(old) = self.inputs.pods.remove(&key) else {
            return false;
        };
        self.forget_pod_address(&key, old.identity, old.pod.ip);
        self.identities.release(old.identity);
        self.identity_changed(old.identity);
        if old.pod.ports.iter().any(|p| p.name.is_some()) {
            self.mark_named_egress_users();
        }
        self.dirty.remove(&key);
        if self.endpoints.remove(&key).is_some() {
            self.pending.push(Delta::EndpointRemoved { endpoint: key });
        }
        true
    }

    fn forget_pod_address(&mut self, key: &str, identity: Identity, ip: IpAddr) {
        if self.inputs.forget_pod_address(key, identity, ip) {
            self.remove_ipcache(&Prefix::host(ip));
        }
    }

    /// Names the node this engine compiles for: its address has the `host` identity, every
    /// other node's `remote-node` (as Cilium's ipcache has it). A node already known is
    /// re-identified.
    pub fn set_local_node(&mut self, name: &str) {
        if self.local_node.as_deref() == Some(name) {
            return;
        }
        let before = self.local_node.replace(name.to_string());
        for node in before.iter().map(String::as_str).chain([name]) {
            if let Some(&(ip, _)) = self.inputs.nodes.get(node) {
                // Same address, so no owner conflict: cannot fail.
                let _ = self.upsert_node(node, ip);
            }
        }
    }

    /// The identity of node `name`'s address.
    fn node_identity(&self, name: &str) -> Identity {
        if self.local_node.as_deref() == Some(name) {
            Identity::HOST
        } else {
            Identity::REMOTE_NODE
        }
    }

    /// Adds or moves a node (its address has the `remote-node` identity, or `host` for the
    /// local node: [`Self::set_local_node`]).
    pub fn upsert_node(&mut self, name: &str, ip: IpAddr) -> Result<(), EngineError> {
        if let Some(owner) = self
            .inputs
            .address_owner(ip)
            .filter(|o| *o != format!("node {name}"))
        {
            return Err(EngineError::AddressInUse {
                what: format!("node {name}"),
                addr: ip,
                owner,
            });
        }
        let identity = self.node_identity(name);
        if let Some(before) = self.delete_node_address(name).filter(|b| *b != identity) {
            self.identity_changed(before);
        }
        self.inputs.add_node(name, ip, identity);
        self.set_ipcache(Prefix::host(ip), identity);
        self.identity_changed(identity);
        Ok(())
    }

    pub fn delete_node(&mut self, name: &str) -> bool {
        let Some(identity) = self.delete_node_address(name) else {
            return false;
        };
        self.inputs.nodes.remove(name);
        self.identity_changed(identity);
        true
    }

    /// Forgets node `name`'s address; returns the identity it had.
    fn delete_node_address(&mut self, name: &str) -> Option<Identity> {
        let (ip, identity) = self.inputs.forget_node_address(name)?;
        self.remove_ipcache(&Prefix::host(ip));
        Some(identity)
    }

    fn set_ipcache(&mut self, prefix: Prefix, identity: Identity) {
        if self.ipcache.get(&prefix).map(|e| e.identity) != Some(identity) {
            self.ipcache.upsert(prefix, IpCacheEntry::local(identity));
            self.pending.push(Delta::IpcacheUpsert { prefix, identity });
        }
    }

    fn remove_ipcache(&mut self, prefix: &Prefix) {
        if self.ipcache.remove(prefix).is_some() {
            self.pending.push(Delta::IpcacheRemove { prefix: *prefix });
        }
    }

    // ---- policies ----------------------------------------------------------------------

    /// Adds or replaces a policy.
    pub fn upsert_policy(&mut self, policy: Policy) -> Result<(), EngineError> {
        let old = self.repo.get(&policy.id).cloned();
        if old.as_ref() == Some(&policy) {
            return Ok(());
        }
        // Register the new version before releasing the old one so shared selectors and CIDR
        // identities are kept (same numbers, no churn).
        let released = old.as_ref().map(|o| self.unindex(o));
        self.register(&policy)?;
        if let Some(released) = released {
            self.release(released);
        }
        self.repo.upsert(policy);
        Ok(())
    }

    /// Removes a policy; returns whether it existed.
    pub fn delete_policy(&mut self, id: &PolicyId) -> bool {
        let Some(old) = self.repo.delete(id) else {
            return false;
        };
        let released = self.unindex(&old);
        self.release(released);
        true
    }

    /// Indexes `policy`'s selectors and CIDRs and marks its subjects dirty.
    fn register(&mut self, policy: &Policy) -> Result<(), EngineError> {
        for prefix in policy_prefixes(policy) {
            let (id, created) = self.identities.acquire_prefix(prefix)?;
            if created {
                self.set_ipcache(prefix, id);
                self.identity_changed(id);
            }
        }
        for (i, section) in policy.sections.iter().enumerate() {
            let sref = (policy.id.clone(), i);
            for selector in self.index.add(&sref, section) {
                self.cache.add_user(
                    &selector,
                    SelectionContext {
                        identities: &self.identities,
                        addresses: &self.inputs.addresses,
                    },
                );
            }
            self.mark_section_subject(section);
        }
        Ok(())
    }

    /// Removes `policy` from the indexes and marks its subjects dirty; returns what must be
    /// released once the replacement (if any) is registered.
    fn unindex(&mut self, policy: &Policy) -> Released {
        let mut released = Released::default();
        for (i, section) in policy.sections.iter().enumerate() {
            let sref = (policy.id.clone(), i);
            self.mark_section_subject(section);
            released.peers.extend(self.index.remove(&sref, section));
        }
        released.prefixes = policy_prefixes(policy);
        released
    }

    fn release(&mut self, released: Released) {
        for peer in &released.peers {
            self.cache.remove_user(peer);
        }
        for prefix in released.prefixes {
            let Some(id) = self.identities.by_prefix(&prefix) else {
                continue;
            };
            if self.identities.release(id) == Some(true) {
                self.remove_ipcache(&prefix);
                self.identity_changed(id);
            }
        }
    }

    // ---- dirty tracking ----------------------------------------------------------------

    /// Re-tests `id` in the selector cache and marks the users of changed selectors dirty.
    fn identity_changed(&mut self, id: Identity) {
        let cx = SelectionContext {
            identities: &self.identities,
            addresses: &self.inputs.addresses,
        };
        let changed = self.cache.identity_changed(id, cx);
        for peer in changed {
            for sref in self.index.peer_users(&peer) {
                self.mark_section(&sref);
            }
        }
    }

    fn mark_section(&mut self, sref: &SectionRef) {
        let subject = self
            .repo
            .get(&sref.0)
            .and_then(|p| p.sections.get(sref.1))
            .filter(|s| !s.hosts)
            .map(|s| s.subject.clone());
        if let Some(subject) = subject {
            self.mark_subject(&subject);
        }
    }

    /// Marks the pods a section applies to dirty; a host policy applies to no pod (the host's
    /// map is computed whole by [`Self::host_policy`]).
    fn mark_section_subject(&mut self, section: &Section) {
        if !section.hosts {
            self.mark_subject(&section.subject);
        }
    }

    /// Marks the compiled pods `subject` selects dirty.
    fn mark_subject(&mut self, subject: &Selector) {
        let selection = self.cache.selection(&Peer::Endpoints(subject.clone()));
        for id in selection {
            if let Some(pods) = self.inputs.compiled_by_identity.get(id) {
                self.dirty.extend(pods.iter().cloned());
            }
        }
    }

    fn mark_named_egress_users(&mut self) {
        for sref in self.index.named_egress() {
            self.mark_section(&sref);
        }
    }

    // ---- compilation -------------------------------------------------------------------

    /// Recompiles every dirty endpoint, applies the changes to its maps and returns all the
    /// changes since the last commit (ipcache first, then endpoints by name).
    pub fn commit(&mut self) -> Vec<Delta> {
        let mut deltas = std::mem::take(&mut self.pending);
        let dirty = std::mem::take(&mut self.dirty);
        let distillery = Distillery {
            repo: &self.repo,
            index: &self.index,
            cache: &self.cache,
            inputs: &self.inputs,
        };
        for key in dirty {
            let Some(state) = self.inputs.pods.get(&key).filter(|s| s.compiled) else {
                continue;
            };
            let desired = [Direction::Egress, Direction::Ingress]
                .map(|d| (d, distillery.map_state(&state.pod, state.identity, d)));
            let mut desired_entries = Vec::with_capacity(2);
            for (d, (enforced, map)) in desired {
                let entries: Vec<(PolicyKey, PolicyEntry)> = map
                    .into_iter()
                    .map(|(k, (action, origins))| {
                        let cookie = self.cookies.intern(origins.into_iter().collect());
                        (k, PolicyEntry { action, cookie })
                    })
                    .collect();
                desired_entries.push((d, enforced, entries));
            }
            let ep = self.endpoints.entry(key.clone()).or_default();
            for (d, enforced, entries) in desired_entries {
                apply(&key, d, ep.direction_mut(d), enforced, entries, &mut deltas);
            }
        }
        deltas
    }

    /// The host policy of a node with labels `node_labels` (Cilium's host firewall): every
    /// cluster-wide section whose `nodeSelector` matches them, compiled as a pod's map is
    /// (without named ports, and without allow-localhost: the host is the subject). A direction
    /// no host policy selects is not enforced. Computed whole on each call (host policies are
    /// few); the cookies are the engine's, so `cookie_origins` names the rules.
    pub fn host_policy(&mut self, node_labels: &Labels) -> EndpointPolicy {
        let distillery = Distillery {
            repo: &self.repo,
            index: &self.index,
            cache: &self.cache,
            inputs: &self.inputs,
        };
        let mut policy = EndpointPolicy::default();
        for d in [Direction::Ingress, Direction::Egress] {
            let (enforced, map) = distillery.host_map_state(node_labels, d);
            let out = policy.direction_mut(d);
            out.enforced = enforced;
            for (key, (action, origins)) in map {
                let cookie = self.cookies.intern(origins.into_iter().collect());
                // Keys come from the compiler's own rules (a port always with a protocol).
                let _ = out.map.insert(key, PolicyEntry { action, cookie });
            }
        }
        policy
    }

    // ---- queries -----------------------------------------------------------------------

    /// The compiled maps of endpoint `namespace/name` (as of the last commit).
    pub fn endpoint(&self, key: &str) -> Option<&EndpointPolicy> {
        self.endpoints.get(key)
    }

    pub fn endpoints(&self) -> impl Iterator<Item = (&str, &EndpointPolicy)> {
        self.endpoints.iter().map(|(k, v)| (k.as_str(), v))
    }

    pub fn pod(&self, key: &str) -> Option<&Pod> {
        self.inputs.pods.get(key).map(|s| &s.pod)
    }

    pub fn pod_identity(&self, key: &str) -> Option<Identity> {
        self.inputs.pods.get(key).map(|s| s.identity)
    }

    /// The pod that owns `addr`, if any.
    pub fn pod_by_ip(&self, addr: IpAddr) -> Option<&str> {
        self.inputs.pod_by_ip.get(&addr).map(String::as_str)
    }

    /// The node that owns `addr`, if any.
    pub fn node_by_ip(&self, addr: IpAddr) -> Option<&str> {
        self.inputs.node_by_ip(addr)
    }

    /// Every node and its address, by name.
    pub fn nodes(&self) -> impl Iterator<Item = (&str, IpAddr)> {
        self.inputs
            .nodes
            .iter()
            .map(|(n, (ip, _))| (n.as_str(), *ip))
    }

    /// The identity the dataplane gives `addr` (ipcache longest-prefix match, else world),
    /// with the prefix that matched: the dataplane's own lookup over [`Self::ipcache_table`].
    pub fn resolve(&self, addr: IpAddr) -> (Identity, Option<Prefix>) {
        match self.ipcache.lookup_with_prefix(addr) {
            Some((prefix, entry)) => (entry.identity, Some(prefix)),
            None => (Identity::WORLD, None),
        }
    }

    /// The ipcache as the dataplane's table (`dataplane::tables::ipcache`), for lookups with
    /// the dataplane's own functions (`policy trace`).
    pub fn ipcache_table(&self) -> &IpCache {
        &self.ipcache
    }

    /// The CIDR peers of every policy that split an identity (some of the addresses carrying
    /// it inside the block, some outside): see [`crate::splits`].
    pub fn split_warnings(&self) -> Vec<SplitWarning> {
        splits::find(self.repo.iter(), &self.inputs, &self.identities)
    }

    /// Every ipcache entry, sorted.
    pub fn ipcache(&self) -> Vec<(Prefix, Identity)> {
        let mut v: Vec<_> = self.ipcache.iter().map(|(p, e)| (p, e.identity)).collect();
        v.sort();
        v
    }

    /// The rules a policy-map cookie stands for.
    pub fn cookie_origins(&self, cookie: u32) -> &[RuleOrigin] {
        self.cookies.get(cookie)
    }

    pub fn identities(&self) -> &IdentityTable {
        &self.identities
    }

    pub fn repository(&self) -> &Repository {
        &self.repo
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dataplane::tables::policy::{Action, PortRange};

    use crate::cluster::{parse_cluster, ContainerPort};
    use crate::parse::parse_policies;
    use crate::trace::{parse_port_proto, trace, Probe};

    const CLUSTER: &str = r#"
namespaces: {x: {ns: x}, y: {ns: y}}
pods:
- {namespace: x, name: a, labels: {app: a}, ip: 10.1.0.1}
- {namespace: y, name: a, labels: {app: web}, ip: 10.2.0.1, ports: [{name: web, containerPort: 8080}]}
- {namespace: y, name: b, labels: {app: web, v: "2"}, ip: 10.2.0.2, ports: [{name: web, containerPort: 9090}]}
- {namespace: y, name: c, labels: {app: web}, ip: 10.2.0.3}
nodes: [{name: n1, ip: 192.168.0.1}]
"#;

    fn engine(policies: &str) -> PolicyEngine {
        let cluster = parse_cluster("c.yaml", CLUSTER).unwrap();
        let parsed = parse_policies("p.yaml", policies).unwrap();
        PolicyEngine::build(&cluster, &parsed.policies).unwrap()
    }

    fn allowed(e: &PolicyEngine, from: &str, to: &str, port: &str) -> bool {
        let (port, protocol) = parse_port_proto(port).unwrap();
        let probe = Probe {
            from: from.into(),
            to: to.into(),
            port,
            protocol,
        };
        trace(e, &probe).unwrap().allowed()
    }

    fn np(ns: &str, name: &str, spec: &str) -> String {
        format!("---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n{spec}")
    }

    fn cnp(ns: &str, name: &str, spec: &str) -> String {
        format!("---\napiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n{spec}")
    }

    /// The engine of node n1's agent: n1's address is `host`, n2's `remote-node`.
    fn engine_on_n1(policies: &str) -> PolicyEngine {
        let mut e = engine(policies);
        e.upsert_node("n2", "192.168.0.2".parse().unwrap()).unwrap();
        e.set_local_node("n1");
        e.commit();
        e
    }

    #[test]
    fn the_local_node_is_host_and_the_others_remote_node() {
        let e = engine_on_n1("");
        let id = |a: &str| e.ipcache_table().identity_of(a.parse().unwrap());
        assert_eq!(id("192.168.0.1"), Identity::HOST);
        assert_eq!(id("192.168.0.2"), Identity::REMOTE_NODE);
        // Without a local node (the CLI's whole-cluster view), every node is remote.
        let e = engine("");
        assert_eq!(
            e.ipcache_table()
                .identity_of("192.168.0.1".parse().unwrap()),
            Identity::REMOTE_NODE
        );
    }

    #[test]
    fn to_entities_host_and_remote_node_select_each_node_apart() {
        let e = engine_on_n1(&cnp(
            "x",
            "p",
            "  endpointSelector: {}\n  egress:\n  - toEntities: [host]\n",
        ));
        assert!(allowed(&e, "x/a", "192.168.0.1", "22/TCP"));
        assert!(!allowed(&e, "x/a", "192.168.0.2", "22/TCP"));
        let e = engine_on_n1(&cnp(
            "x",
            "p",
            "  endpointSelector: {}\n  egress:\n  - toEntities: [remote-node]\n",
        ));
        assert!(!allowed(&e, "x/a", "192.168.0.1", "22/TCP"));
        assert!(allowed(&e, "x/a", "192.168.0.2", "22/TCP"));
    }

    #[test]
    fn the_local_host_always_reaches_pods_unless_denied() {
        // allow-localhost (Cilium's default): an ingress policy that names only pods still
        // admits the node's own stack, not the other nodes.
        let e = engine_on_n1(&cnp(
            "y",
            "p",
            "  endpointSelector: {}\n  ingress:\n  - fromEndpoints: [{matchLabels: {app: nobody}}]\n",
        ));
        assert!(allowed(&e, "192.168.0.1", "y/a", "8080/TCP"));
        assert!(!allowed(&e, "192.168.0.2", "y/a", "8080/TCP"));
        assert!(!allowed(&e, "x/a", "y/a", "8080/TCP"));
        // An explicit deny of `host` wins, as every deny does.
        let e = engine_on_n1(&cnp(
            "y",
            "p",
            "  endpointSelector: {}\n  ingress:\n  - fromEntities: [all]\n  ingressDeny:\n  - fromEntities: [host]\n",
        ));
        assert!(!allowed(&e, "192.168.0.1", "y/a", "8080/TCP"));
        assert!(allowed(&e, "x/a", "y/a", "8080/TCP"));
        // No ingress policy: nothing is enforced, nothing added.
        let e = engine_on_n1("");
        assert!(e.endpoint("y/a").unwrap().ingress.map.is_empty());
    }

    #[test]
    fn no_policy_allows_everything() {
        let e = engine("");
        assert!(allowed(&e, "x/a", "y/a", "1/UDP"));
        assert!(!e.endpoint("x/a").unwrap().ingress.enforced);
    }

    #[test]
    fn named_ports_resolve_per_destination_pod() {
        // Egress: the name resolves against each destination pod.
        let e = engine(&np(
            "x",
            "to-web",
            "  podSelector: {}\n  egress:\n  - ports: [{port: web}]\n",
        ));
        assert!(allowed(&e, "x/a", "y/a", "8080/TCP"));
        assert!(!allowed(&e, "x/a", "y/a", "9090/TCP"));
        assert!(allowed(&e, "x/a", "y/b", "9090/TCP"));
        assert!(!allowed(&e, "x/a", "y/b", "8080/TCP"));
        // y/c shares y/a's identity: the egress map cannot tell them apart, so y/a's port is
        // open towards y/c as well (documented over-approximation, as in Cilium).
        assert!(allowed(&e, "x/a", "y/c", "8080/TCP"));
        // Ingress: against the selected pod itself.
        let e = engine(&np(
            "y",
            "web",
            "  podSelector: {}\n  ingress:\n  - ports: [{port: web}]\n",
        ));
        assert!(allowed(&e, "x/a", "y/a", "8080/TCP"));
        assert!(!allowed(&e, "x/a", "y/a", "9090/TCP"));
        assert!(allowed(&e, "x/a", "y/b", "9090/TCP"));
        assert!(
            !allowed(&e, "x/a", "y/b", "8080/UDP"),
            "protocol must match too"
        );
    }

    #[test]
    fn end_port_range_is_inclusive() {
        let e = engine(&np(
            "y",
            "range",
            "  podSelector: {}\n  ingress:\n  - ports: [{port: 100, endPort: 200}]\n",
        ));
        assert!(!allowed(&e, "x/a", "y/a", "99/TCP"));
        assert!(allowed(&e, "x/a", "y/a", "100/TCP"));
        assert!(allowed(&e, "x/a", "y/a", "200/TCP"));
        assert!(!allowed(&e, "x/a", "y/a", "201/TCP"));
        assert!(!allowed(&e, "x/a", "y/a", "150/UDP"));
    }

    #[test]
    fn deny_beats_a_more_specific_allow() {
        let e = engine(&cnp(
            "y",
            "p",
            "  endpointSelector: {}\n  ingress:\n  - fromEndpoints: [{matchLabels: {'k8s:io.kubernetes.pod.namespace': x}}]\n    toPorts: [{ports: [{port: '80', protocol: TCP}]}]\n  ingressDeny:\n  - fromEntities: [cluster]\n",
        ));
        assert!(!allowed(&e, "x/a", "y/a", "80/TCP"));
        let e2 = engine(&cnp(
            "y",
            "p",
            "  endpointSelector: {}\n  ingress:\n  - fromEndpoints: [{matchLabels: {'k8s:io.kubernetes.pod.namespace': x}}]\n    toPorts: [{ports: [{port: '80', protocol: TCP}]}]\n",
        ));
        assert!(allowed(&e2, "x/a", "y/a", "80/TCP"));
    }

    #[test]
    fn default_deny_off_only_matters_when_no_other_policy_wants_it() {
        let deny_world =
            "  endpointSelector: {}\n  enableDefaultDeny: {ingress: false}\n  ingressDeny:\n  - fromEntities: [world]\n";
        let e = engine(&cnp("y", "p", deny_world));
        assert!(allowed(&e, "x/a", "y/a", "80/TCP"));
        assert!(!allowed(&e, "8.8.8.8", "y/a", "80/TCP"));
        let both = format!(
            "{}{}",
            cnp("y", "p", deny_world),
            np("y", "deny", "  podSelector: {}\n  policyTypes: [Ingress]\n")
        );
        let e = engine(&both);
        assert!(!allowed(&e, "x/a", "y/a", "80/TCP"));
    }

    #[test]
    fn except_blocks_and_cilium_cidrs() {
        let e = engine(&cnp(
            "x",
            "p",
            "  endpointSelector: {}\n  egress:\n  - toCIDRSet: [{cidr: 8.0.0.0/8, except: [8.8.0.0/16]}]\n  - toCIDR: [10.2.0.0/16]\n",
        ));
        assert!(allowed(&e, "x/a", "8.1.2.3", "53/UDP"));
        assert!(!allowed(&e, "x/a", "8.8.8.8", "53/UDP"));
        assert!(!allowed(&e, "x/a", "9.9.9.9", "53/UDP"));
        // Cilium CIDR rules do not select pods, even when the prefix covers their addresses.
        assert!(!allowed(&e, "x/a", "y/a", "80/TCP"));
        assert!(allowed(&e, "x/a", "10.2.9.9", "80/TCP"));
        let ipcache = e.ipcache();
        assert!(ipcache.contains(&(
            "8.8.0.0/16".parse().unwrap(),
            Identity(crate::identity::FIRST_CIDR_IDENTITY + 1)
        )));
    }

    #[test]
    fn ip_block_cannot_split_an_identity() {
        // y/a and y/c share one identity; a block that covers only y/a selects neither.
        let e = engine(&np(
            "x",
            "p",
            "  podSelector: {}\n  policyTypes: [Egress]\n  egress:\n  - to: [{ipBlock: {cidr: 10.2.0.1/32}}]\n",
        ));
        assert!(!allowed(&e, "x/a", "y/a", "80/TCP"));
        let e = engine(&np(
            "x",
            "p",
            "  podSelector: {}\n  policyTypes: [Egress]\n  egress:\n  - to: [{ipBlock: {cidr: 10.2.0.0/30}}]\n",
        ));
        assert!(allowed(&e, "x/a", "y/a", "80/TCP"));
        assert!(allowed(&e, "x/a", "y/c", "80/TCP"));
    }

    #[test]
    fn entities() {
        let e = engine(&cnp(
            "y",
            "p",
            "  endpointSelector: {}\n  ingress:\n  - fromEntities: [remote-node]\n",
        ));
        assert!(allowed(&e, "192.168.0.1", "y/a", "80/TCP"));
        assert!(!allowed(&e, "x/a", "y/a", "80/TCP"));
        assert!(!allowed(&e, "1.1.1.1", "y/a", "80/TCP"));
        let e = engine(&cnp(
            "y",
            "p",
            "  endpointSelector: {}\n  ingress:\n  - fromEntities: [cluster]\n",
        ));
        assert!(allowed(&e, "x/a", "y/a", "80/TCP"));
        assert!(allowed(&e, "192.168.0.1", "y/a", "80/TCP"));
        assert!(!allowed(&e, "1.1.1.1", "y/a", "80/TCP"));
        let e = engine(&cnp(
            "y",
            "p",
            "  endpointSelector: {}\n  ingress:\n  - fromEntities: [world]\n",
        ));
        assert!(!allowed(&e, "x/a", "y/a", "80/TCP"));
        assert!(allowed(&e, "1.1.1.1", "y/a", "80/TCP"));
    }

    #[test]
    fn cookies_name_every_rule_behind_an_entry() {
        let e = engine(&format!(
            "{}{}",
            np(
                "y",
                "one",
                "  podSelector: {}\n  ingress:\n  - ports: [{port: 80}]\n"
            ),
            np(
                "y",
                "two",
                "  podSelector: {}\n  ingress:\n  - {}\n  - ports: [{port: 80}]\n"
            )
        ));
        let probe = Probe {
            from: "x/a".into(),
            to: "y/a".into(),
            port: 80,
            protocol: 6,
        };
        let r = trace(&e, &probe).unwrap();
        let names: Vec<String> = r
            .ingress
            .rules
            .iter()
            .map(|r| format!("{} {}", r.policy, r.rule))
            .collect();
        assert_eq!(
            names,
            vec!["y/one spec.ingress[0]", "y/two spec.ingress[1]"]
        );
        assert_eq!(r.ingress.match_kind, Some("l4-only"));
    }

    /// Endpoint maps as comparable data: cookies replaced by the rules they name.
    type Snapshot =
        BTreeMap<String, Vec<(bool, Vec<(String, u8, PortRange, Action, Vec<RuleOrigin>)>)>>;

    /// Identities are named by their labels or prefix, so two histories that numbered them
    /// differently still compare equal.
    fn snapshot(e: &PolicyEngine) -> Snapshot {
        e.endpoints()
            .map(|(k, ep)| {
                let dirs = [&ep.ingress, &ep.egress]
                    .iter()
                    .map(|d| {
                        let mut entries: Vec<_> = d
                            .map
                            .iter()
                            .map(|(key, entry)| {
                                (
                                    e.identities().describe(key.identity),
                                    key.proto,
                                    key.ports,
                                    entry.action,
                                    e.cookie_origins(entry.cookie).to_vec(),
                                )
                            })
                            .collect();
                        entries.sort_by(|a, b| (&a.0, a.1, a.2).cmp(&(&b.0, b.1, b.2)));
                        (d.enforced, entries)
                    })
                    .collect();
                (k.to_string(), dirs)
            })
            .collect()
    }

    const POLICIES: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web, namespace: y}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
  - from: [{namespaceSelector: {matchLabels: {team: blue}}}]
    ports: [{port: web}]
  - from: [{ipBlock: {cidr: 10.1.0.0/16, except: [10.1.9.0/24]}}]
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: x-egress, namespace: x}
spec:
  endpointSelector: {}
  egress:
  - toEndpoints: [{matchLabels: {'k8s:io.kubernetes.pod.namespace': y}}]
    toPorts: [{ports: [{port: web}]}]
  egressDeny:
  - toCIDR: [10.1.9.0/24]
"#;

    #[test]
    fn deltas_match_a_full_rebuild() {
        let parsed = parse_policies("p.yaml", POLICIES).unwrap();
        let mut cluster = parse_cluster("c.yaml", CLUSTER).unwrap();
        let mut e = PolicyEngine::build(&cluster, &[]).unwrap();
        for p in &parsed.policies {
            e.upsert_policy(p.clone()).unwrap();
        }
        e.commit();
        assert_eq!(
            snapshot(&e),
            snapshot(&PolicyEngine::build(&cluster, &parsed.policies).unwrap())
        );

        // A new pod in x with a named port: only maps that can see it change.
        let pod = Pod {
            namespace: "x".into(),
            name: "n".into(),
            labels: [("app", "new")].into_iter().collect(),
            ip: "10.1.9.7".parse().unwrap(),
            ports: vec![ContainerPort {
                name: Some("web".into()),
                port: 7000,
                protocol: 6,
            }],
            node: None,
            service_account: None,
        };
        e.upsert_pod(pod.clone()).unwrap();
        let deltas = e.commit();
        assert!(deltas.contains(&Delta::IpcacheUpsert {
            prefix: "10.1.9.7/32".parse().unwrap(),
            identity: e.pod_identity("x/n").unwrap()
        }));
        cluster.pods.push(pod);
        assert_eq!(
            snapshot(&e),
            snapshot(&PolicyEngine::build(&cluster, &parsed.policies).unwrap())
        );

        // Namespace labels change: x's pods get new identities; y's web policy now selects them.
        let blue: Labels = [("ns", "x"), ("team", "blue")].into_iter().collect();
        e.upsert_namespace("x", blue.clone()).unwrap();
        let deltas = e.commit();
        assert!(deltas
            .iter()
            .any(|d| matches!(d, Delta::Upsert { endpoint, .. } if endpoint == "y/a")));
        let mut blue_full = blue;
        blue_full.insert(NAMESPACE_NAME_LABEL, "x");
        cluster.namespaces.insert("x".into(), blue_full);
        let full = PolicyEngine::build(&cluster, &parsed.policies).unwrap();
        assert_eq!(snapshot(&e), snapshot(&full));
        assert!(allowed(&e, "x/a", "y/a", "8080/TCP"));

        // Removing a policy empties the maps of its subjects and releases its CIDR identities.
        let id = parsed.policies[1].id.clone();
        assert!(e.delete_policy(&id));
        let deltas = e.commit();
        assert!(deltas.contains(&Delta::Enforce {
            endpoint: "x/a".into(),
            direction: Direction::Egress,
            enforced: false
        }));
        // 10.1.9.0/24 is still the `except` of policy y/web: its CIDR identity stays.
        assert!(e
            .ipcache()
            .iter()
            .any(|(p, _)| p.to_string() == "10.1.9.0/24"));
        assert!(e.delete_policy(&parsed.policies[0].id));
        let deltas = e.commit();
        assert!(deltas.contains(&Delta::IpcacheRemove {
            prefix: "10.1.9.0/24".parse().unwrap()
        }));
        assert!(!e.endpoint("y/a").unwrap().ingress.enforced);
        assert!(e.endpoint("x/a").unwrap().egress.map.is_empty());

        // Deleting a pod removes its endpoint and its ipcache entry.
        assert!(e.delete_pod("x", "n"));
        let deltas = e.commit();
        assert!(deltas.contains(&Delta::EndpointRemoved {
            endpoint: "x/n".into()
        }));
        assert!(deltas.contains(&Delta::IpcacheRemove {
            prefix: "10.1.9.7/32".parse().unwrap()
        }));
        // Nothing changed: nothing to send.
        assert!(e.commit().is_empty());
    }

    #[test]
    fn adding_a_pod_touches_only_affected_endpoints() {
        let parsed = parse_policies("p.yaml", POLICIES).unwrap();
        let cluster = parse_cluster("c.yaml", CLUSTER).unwrap();
        let mut e = PolicyEngine::build(&cluster, &parsed.policies).unwrap();
        // A pod in y with a `web` port: x's egress (to y, port web) must now include it; y's
        // web policy does not select it and nobody else can see it.
        e.upsert_pod(Pod {
            namespace: "y".into(),
            name: "other".into(),
            labels: [("app", "other")].into_iter().collect(),
            ip: "10.2.0.9".parse().unwrap(),
            ports: vec![ContainerPort {
                name: Some("web".into()),
                port: 7070,
                protocol: 6,
            }],
            node: None,
            service_account: None,
        })
        .unwrap();
        let deltas = e.commit();
        let touched: BTreeSet<&str> = deltas
            .iter()
            .filter_map(|d| match d {
                Delta::Upsert { endpoint, .. }
                | Delta::Remove { endpoint, .. }
                | Delta::Enforce { endpoint, .. } => Some(endpoint.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(touched, ["x/a"].into_iter().collect(), "{deltas:?}");
    }

    /// A node agent compiles only its own pods; the others are inputs (peers, named ports).
    #[test]
    fn input_only_pods_have_no_maps_but_are_peers() {
        let parsed = parse_policies("p.yaml", POLICIES).unwrap();
        let cluster = parse_cluster("c.yaml", CLUSTER).unwrap();
        let full = PolicyEngine::build(&cluster, &parsed.policies).unwrap();
        let local = "y/a";
        let mut e = PolicyEngine::new();
        for (name, labels) in &cluster.namespaces {
            e.upsert_namespace(name, labels.clone()).unwrap();
        }
        for pod in &cluster.pods {
            e.upsert_pod_with(pod.clone(), pod.key() == local).unwrap();
        }
        for p in &parsed.policies {
            e.upsert_policy(p.clone()).unwrap();
        }
        e.commit();
        // Only the local pod has maps, and they equal the full compilation's.
        let keys: Vec<&str> = e.endpoints().map(|(k, _)| k).collect();
        assert_eq!(keys, [local]);
        let only = |s: Snapshot| {
            s.into_iter()
                .filter(|(k, _)| k == local)
                .collect::<Snapshot>()
        };
        assert_eq!(snapshot(&e), only(snapshot(&full)));
        // A namespace relabel keeps every pod's compile setting.
        let blue: Labels = [("team", "blue")].into_iter().collect();
        e.upsert_namespace("x", blue).unwrap();
        e.commit();
        assert_eq!(e.endpoints().map(|(k, _)| k).collect::<Vec<_>>(), [local]);
        // Turning the local pod into an input drops its maps; back again compiles them.
        let pod = e.pod(local).unwrap().clone();
        e.upsert_pod_with(pod.clone(), false).unwrap();
        let deltas = e.commit();
        assert!(deltas.contains(&Delta::EndpointRemoved {
            endpoint: local.into()
        }));
        assert!(e.endpoint(local).is_none());
        e.upsert_pod_with(pod, true).unwrap();
        e.commit();
        assert!(e.endpoint(local).is_some_and(|ep| ep.ingress.enforced));
    }

    #[test]
    fn engine_refuses_bad_changes() {
        let cluster = parse_cluster("c.yaml", CLUSTER).unwrap();
        let mut e = PolicyEngine::build(&cluster, &[]).unwrap();
        let mut pod = cluster.pods[0].clone();
        pod.name = "dup".into();
        assert!(matches!(
            e.upsert_pod(pod.clone()),
            Err(EngineError::AddressInUse { .. })
        ));
        pod.namespace = "nope".into();
        assert!(matches!(
            e.upsert_pod(pod),
            Err(EngineError::UnknownNamespace { .. })
        ));
    }
}
