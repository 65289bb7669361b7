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
//!
//! Files, one concern each: `ingest.rs` (etcd keys into the model), `identities.rs` (engine
//! numbers to cluster-wide numbers), `changes.rs` (what the dataplane must be told since the
//! last commit, or after its restart), `wire.rs` (model objects as the dataplane's wire
//! messages), `requests.rs` (changes into the requests that carry them: each endpoint in one
//! batch with its policy, the ipcache in batches), `renumber.rs` (a label set allocated again
//! under a new number: its ipcache and policy entries move), `host_policy.rs` (this node's own
//! policy, from host policies selecting its labels), `interfaces.rs` (the pod interfaces the
//! dataplane must serve), `supersede.rs` (of several engine deltas for one target, only the
//! last is sent: a held-back one never overwrites newer state), `log.rs` (the agent's log line).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;

use policy_compiler::labels::Labels;
use policy_compiler::model::PolicyId;
use policy_compiler::{Delta, PolicyEngine};

use crate::dataplane_client::Change;
use crate::schema::{EndpointSpec, NodeSpec, ServiceSpec};

mod changes;
mod frontends;
mod host_policy;
mod identities;
mod ingest;
pub mod interfaces;
mod log;
mod renumber;
mod requests;
mod supersede;
mod wire;

pub use log::log;
pub use requests::{fail_closed, requests, weight, IPCACHE_BATCH, PART_WEIGHT};
pub use wire::local_node_facts;

/// The model. See the module doc.
#[derive(Debug)]
pub struct ClusterState {
    node: String,
    engine: PolicyEngine,
    namespaces: BTreeMap<String, Labels>,
    nodes: BTreeMap<String, NodeSpec>,
    endpoints: BTreeMap<String, EndpointSpec>,
    services: BTreeMap<String, ServiceSpec>,
    /// The frontends this node's dataplane holds, by service key (`frontends.rs`).
    sent_frontends: BTreeMap<String, Vec<frontends::NodeFrontend>>,
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
    /// Label sets whose number was collected or changed, with the number the dataplane holds:
    /// their entries move once the new number is known (`renumber.rs`).
    renumbering: BTreeMap<Labels, u32>,
    /// Label sets moved in the last commit's first step, finished by the next commit.
    renumber_finish: BTreeMap<Labels, renumber::Move>,
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
    /// The host policy last sent (`host_policy.replace`, ingress then egress); `None` before
    /// the first and after a dataplane restart.
    sent_host_policy: Option<Vec<crate::dataplane_client::HostPolicyReplace>>,
}

impl ClusterState {
    pub fn new(node: &str) -> ClusterState {
        ClusterState {
            node: node.to_string(),
            engine: {
                let mut engine = PolicyEngine::new();
                engine.set_local_node(node); // Its own address is `host`, not `remote-node`.
                engine
            },
            namespaces: BTreeMap::new(),
            nodes: BTreeMap::new(),
            endpoints: BTreeMap::new(),
            services: BTreeMap::new(),
            sent_frontends: BTreeMap::new(),
            policies: BTreeSet::new(),
            rejected: BTreeMap::new(),
            deferred: BTreeMap::new(),
            malformed_total: 0,
            cluster_ids: HashMap::new(),
            engine_labels: HashMap::new(),
            pending: Vec::new(),
            held_back: Vec::new(),
            renumbering: BTreeMap::new(),
            renumber_finish: BTreeMap::new(),
            dirty_endpoints: BTreeSet::new(),
            sent_endpoints: BTreeMap::new(),
            sent_secondary: BTreeMap::new(),
            quiet: false,
            local_node_dirty: false,
            local_only: false,
            local_keys: BTreeSet::new(),
            unresolved: BTreeSet::new(),
            sent_host_policy: None,
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

    /// Label sets with a cluster-wide identity number known to the model.
    pub fn identities_known(&self) -> usize {
        self.cluster_ids.len()
    }

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

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test
mod test_support {
    use super::ClusterState;
    use crate::schema;

    pub(super) fn k(s: &str) -> String {
        format!("{}{s}", schema::ROOT)
    }

    pub(super) fn base(s: &mut ClusterState) {
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

    pub(super) fn resolve_all(s: &mut ClusterState, next: &mut u32) {
        for (l, _) in s.needed_identities() {
            s.set_identity(l, *next);
            *next += 1;
        }
    }
}
