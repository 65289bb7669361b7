//! What a dataplane holds after a stream of changes, as plain maps of their JSON (so the same
//! mirror reads the agent's in-process [`Change`]s and the lines a stand-in dataplane socket
//! recorded), and the differential check built on it: a model fed change by change must leave
//! the dataplane exactly where a from-scratch compile of the final state puts it.
//!
//! [`Differential`] drives both sides with one identity allocator (the stand-in for etcd's:
//! the same label set gets the same number in both), so their outputs compare number for
//! number.

use std::collections::{BTreeMap, HashMap};

use serde_json::Value;

use policy_compiler::labels::Labels;
use policy_compiler::PolicyEngine;

use crate::dataplane_client::{change_json, Change};
use crate::schema::ROOT;
use crate::sync::ClusterState;

/// One endpoint's policy in one direction: enforced, entries by key (identity, protocol,
/// ports) -> (action, cookie).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MirrorPolicy {
    pub enforced: bool,
    pub entries: BTreeMap<String, String>,
}

/// The dataplane's tables as the changes left them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DataplaneMirror {
    /// Endpoint id -> its `endpoint.upsert` body.
    pub endpoints: BTreeMap<u64, String>,
    /// Prefix -> its `ipcache.upsert` body.
    pub ipcache: BTreeMap<String, String>,
    pub nodes: BTreeMap<String, String>,
    /// (endpoint id, direction) -> policy.
    pub policy: BTreeMap<(u64, String), MirrorPolicy>,
    /// Requests a dataplane would refuse (policy of an unknown endpoint): named here.
    pub refused: Vec<String>,
}

/// The first CIDR identity.
const CIDR_IDENTITY_BASE: u64 = policy_compiler::identity::FIRST_CIDR_IDENTITY as u64;

/// The policy key of an entry or key object: its identity, protocol and ports.
fn entry_key(e: &Value) -> String {
    format!(
        "{}/{}/{}-{}",
        e["identity"], e["proto"], e["port"], e["end_port"]
    )
}

fn entry_value(e: &Value) -> String {
    format!("{}/{}", e["action"], e["cookie"])
}

impl DataplaneMirror {
    /// Applies a model's changes with each entry's cookie replaced by the rules it names in
    /// `engine` (cookies are numbered per model: two models name the same rules differently).
    pub fn apply_changes(&mut self, changes: &[Change], engine: &PolicyEngine) {
        for c in changes {
            let mut v = change_json(c);
            for field in ["entries", "add"] {
                // `get_mut`, not indexing: `v[field]` would insert a null field.
                let entries = v.get_mut(field).and_then(Value::as_array_mut);
                for e in entries.into_iter().flatten() {
                    let cookie = e["cookie"].as_u64().and_then(|c| u32::try_from(c).ok());
                    let origins = engine.cookie_origins(cookie.unwrap_or(0));
                    let names: Vec<String> = origins
                        .iter()
                        .map(|o| format!("{}:{}", o.policy, o.rule))
                        .collect();
                    e["cookie"] = Value::from(names.join(","));
                }
            }
            self.apply_json(&v);
        }
    }

    /// The same tables with every cookie erased (to compare with recorded requests, whose
    /// cookies are the agent's own numbers).
    pub fn without_cookies(&self) -> DataplaneMirror {
        let mut out = self.clone();
        for p in out.policy.values_mut() {
            for v in p.entries.values_mut() {
                if let Some((action, _)) = v.split_once('/') {
                    *v = action.to_string();
                }
            }
        }
        out
    }

    /// Applies one request line's body (`op` and fields); a `batch` applies its changes.
    pub fn apply_json(&mut self, v: &Value) {
        let op = v["op"].as_str().unwrap_or("");
        match op {
            "batch" => {
                for c in v["changes"].as_array().into_iter().flatten() {
                    self.apply_json(c);
                }
            }
            "endpoint.upsert" => {
                let id = v["id"].as_u64().unwrap_or(0);
                self.endpoints.insert(id, without_seq(v));
            }
            "endpoint.delete" => {
                let id = v["id"].as_u64().unwrap_or(0);
                self.endpoints.remove(&id);
                self.policy.retain(|(e, _), _| *e != id);
            }
            "ipcache.upsert" => {
                let prefix = v["prefix"].as_str().unwrap_or("").to_string();
                self.ipcache.insert(prefix, without_seq(v));
            }
            "ipcache.delete" => {
                self.ipcache.remove(v["prefix"].as_str().unwrap_or(""));
            }
            "node.upsert" => {
                let name = v["name"].as_str().unwrap_or("").to_string();
                self.nodes.insert(name, without_seq(v));
            }
            "node.delete" => {
                self.nodes.remove(v["name"].as_str().unwrap_or(""));
            }
            "policy.replace" | "policy.update" => self.apply_policy(op, v),
            _ => {}
        }
    }

    fn apply_policy(&mut self, op: &str, v: &Value) {
        let id = v["endpoint"].as_u64().unwrap_or(0);
        if !self.endpoints.contains_key(&id) {
            self.refused
                .push(format!("{op} for endpoint {id}, which the dataplane lacks"));
            return;
        }
        let dir = v["direction"].as_str().unwrap_or("").to_string();
        let p = self.policy.entry((id, dir)).or_default();
        if op == "policy.replace" {
            p.enforced = v["enforced"].as_bool().unwrap_or(true);
            p.entries.clear();
            for e in v["entries"].as_array().into_iter().flatten() {
                p.entries.insert(entry_key(e), entry_value(e));
            }
            return;
        }
        if let Some(enforced) = v["enforced"].as_bool() {
            p.enforced = enforced;
        }
        for k in v["delete"].as_array().into_iter().flatten() {
            p.entries.remove(&entry_key(k));
        }
        for e in v["add"].as_array().into_iter().flatten() {
            p.entries.insert(entry_key(e), entry_value(e));
        }
    }

    /// Policy entries in all (every endpoint, both directions).
    pub fn policy_entries(&self) -> usize {
        self.policy.values().map(|p| p.entries.len()).sum()
    }

    /// The same tables with every CIDR identity (2^24 and up: numbered by each node in the
    /// order its policies named the prefixes, so two models number them differently) written
    /// as `cidr:<prefix>`, the prefix the ipcache maps it to.
    pub fn canonical(&self) -> DataplaneMirror {
        let mut names: HashMap<String, String> = HashMap::new();
        let mut out = self.clone();
        for (prefix, body) in out.ipcache.iter_mut() {
            let Ok(mut v) = serde_json::from_str::<Value>(body) else {
                continue;
            };
            let id = v["identity"].as_u64().unwrap_or(0);
            if id >= CIDR_IDENTITY_BASE {
                let name = format!("cidr:{prefix}");
                names.insert(id.to_string(), name.clone());
                v["identity"] = Value::from(name);
                *body = v.to_string();
            }
        }
        for p in out.policy.values_mut() {
            p.entries = std::mem::take(&mut p.entries)
                .into_iter()
                .map(|(k, v)| match k.split_once('/') {
                    Some((id, rest)) if names.contains_key(id) => {
                        (format!("{}/{rest}", names[id]), v)
                    }
                    _ => (k, v),
                })
                .collect();
        }
        out
    }

    /// What differs between `self` and `other` (CIDR identities compared by prefix), at most
    /// `limit` lines (empty: equal).
    pub fn diff(&self, other: &DataplaneMirror, limit: usize) -> Vec<String> {
        let (a, b) = (self.canonical(), other.canonical());
        a.diff_exact(&b, limit)
    }

    fn diff_exact(&self, other: &DataplaneMirror, limit: usize) -> Vec<String> {
        let mut out = Vec::new();
        diff_maps("endpoint", &self.endpoints, &other.endpoints, &mut out);
        diff_maps("ipcache", &self.ipcache, &other.ipcache, &mut out);
        diff_maps("node", &self.nodes, &other.nodes, &mut out);
        let empty = MirrorPolicy::default();
        let keys: std::collections::BTreeSet<_> =
            self.policy.keys().chain(other.policy.keys()).collect();
        for k in keys {
            let (a, b) = (
                self.policy.get(k).unwrap_or(&empty),
                other.policy.get(k).unwrap_or(&empty),
            );
            if a.enforced != b.enforced {
                out.push(format!(
                    "policy {k:?}: enforced {} vs {}",
                    a.enforced, b.enforced
                ));
            }
            let mut d = Vec::new();
            diff_maps(
                &format!("policy {k:?} entry"),
                &a.entries,
                &b.entries,
                &mut d,
            );
            out.extend(d);
        }
        out.extend(self.refused.iter().map(|r| format!("refused (left): {r}")));
        out.extend(
            other
                .refused
                .iter()
                .map(|r| format!("refused (right): {r}")),
        );
        out.truncate(limit);
        out
    }
}

fn without_seq(v: &Value) -> String {
    let mut v = v.clone();
    if let Value::Object(m) = &mut v {
        m.remove("seq");
    }
    v.to_string()
}

fn diff_maps<K: Ord + std::fmt::Debug>(
    what: &str,
    a: &BTreeMap<K, String>,
    b: &BTreeMap<K, String>,
    out: &mut Vec<String>,
) {
    for (k, va) in a {
        match b.get(k) {
            None => out.push(format!("{what} {k:?}: only left: {va}")),
            Some(vb) if vb != va => out.push(format!("{what} {k:?}: {va} vs {vb}")),
            _ => {}
        }
    }
    for (k, vb) in b {
        if !a.contains_key(k) {
            out.push(format!("{what} {k:?}: only right: {vb}"));
        }
    }
}

/// Cluster-wide identity numbers, as etcd's allocator would give them: the same label set
/// gets the same number on every side, from 256 up.
#[derive(Clone, Debug, Default)]
pub struct IdentityBook {
    ids: HashMap<Labels, u32>,
    /// Numbers given so far (a collected number is never given again, as in etcd).
    given: u32,
}

impl IdentityBook {
    pub fn number(&mut self, labels: &Labels) -> u32 {
        if let Some(n) = self.ids.get(labels) {
            return *n;
        }
        let n = 256 + self.given;
        self.given += 1;
        self.ids.insert(labels.clone(), n);
        n
    }

    /// Garbage collection of number `n`: its label set gets a new number when next asked
    /// (the agents' collection of an identity no node references). Returns its label set.
    pub fn collect(&mut self, n: u32) -> Option<Labels> {
        let labels = self.ids.iter().find(|(_, v)| **v == n)?.0.clone();
        self.ids.remove(&labels);
        Some(labels)
    }

    /// Every number given so far, as the identity keys (`identities/id/<n>`, relative to
    /// [`ROOT`]) etcd would hold, from number `from` on (numbers are given from 256 up).
    pub fn identity_keys_from(&self, from: u32) -> Vec<(String, String)> {
        let mut out: Vec<(u32, &Labels)> = self
            .ids
            .iter()
            .filter(|(_, n)| **n >= from)
            .map(|(l, n)| (*n, l))
            .collect();
        out.sort_unstable();
        out.into_iter()
            .map(|(n, labels)| {
                let spec = crate::schema::IdentitySpec {
                    labels: labels.iter().map(|(k, v)| (k.into(), v.into())).collect(),
                };
                let value = serde_json::to_string(&spec).unwrap_or_default();
                (format!("identities/id/{n}"), value)
            })
            .collect()
    }

    /// Undoes [`Self::collect`] (a collection that did not happen).
    pub fn restore(&mut self, labels: Labels, n: u32) {
        self.ids.insert(labels, n);
    }

    /// One past the last number given.
    pub fn next_number(&self) -> u32 {
        256 + self.given
    }

    /// Supplies every number `st` still needs (what the agent's `converge` does through etcd).
    pub fn resolve(&mut self, st: &mut ClusterState) {
        for (labels, _) in st.needed_identities() {
            let id = self.number(&labels);
            st.set_identity(labels, id);
        }
    }
}

/// The differential check: an incrementally fed model and its dataplane, beside the state
/// (the current etcd contents) a from-scratch compile starts from.
#[derive(Debug)]
pub struct Differential {
    node: String,
    pub model: ClusterState,
    pub mirror: DataplaneMirror,
    pub ids: IdentityBook,
    /// The current value of every key (full keys), as etcd holds it.
    pub state: BTreeMap<String, Vec<u8>>,
}

impl Differential {
    /// A model for `node` fed `objects` (keys relative to [`ROOT`]) as the agent's first
    /// listing, resolved and committed into the mirror.
    pub fn start(node: &str, objects: &[(String, String)]) -> Differential {
        let mut d = Differential {
            node: node.to_string(),
            model: new_model(node),
            mirror: DataplaneMirror::default(),
            ids: IdentityBook::default(),
            state: BTreeMap::new(),
        };
        for (k, v) in objects {
            d.state.insert(format!("{ROOT}{k}"), v.clone().into_bytes());
        }
        let listing: Vec<(String, Vec<u8>)> = d
            .state
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        d.model.put_all(&listing);
        d.converge();
        d
    }

    /// One watch event (key relative to [`ROOT`]; `None` deletes), then what the agent does
    /// after a watch batch: identities, commit, push.
    pub fn apply(&mut self, key: &str, value: Option<&str>) {
        self.apply_batch(&[(key.to_string(), value.map(str::to_string))]);
    }

    /// Several watch events (keys relative to [`ROOT`]; `None` deletes), then one converge:
    /// a watch batch, as an agent's catch-up after a restart delivers them.
    pub fn apply_batch(&mut self, events: &[(String, Option<String>)]) {
        for (key, value) in events {
            let full = format!("{ROOT}{key}");
            match value {
                Some(v) => {
                    self.state.insert(full.clone(), v.as_bytes().to_vec());
                    let _ = self.model.put(&full, v.as_bytes());
                }
                None => {
                    self.state.remove(&full);
                    self.model.delete(&full);
                }
            }
        }
        self.converge();
    }

    fn converge(&mut self) {
        self.ids.resolve(&mut self.model);
        let changes = self.model.commit();
        self.mirror.apply_changes(&changes, self.model.engine());
        if self.model.commit_due() {
            // A renumbered identity's second step, as the agent's `converge` runs it.
            let changes = self.model.commit();
            self.mirror.apply_changes(&changes, self.model.engine());
        }
    }

    /// The dataplane a fresh model compiles from the current state, with the same numbers.
    pub fn from_scratch(&mut self) -> DataplaneMirror {
        from_scratch(&self.node, &self.state, |labels| {
            Some(self.ids.number(labels))
        })
    }

    /// Differences between the incremental dataplane and a from-scratch compile (at most
    /// `limit`; empty: equal).
    pub fn check(&mut self, limit: usize) -> Vec<String> {
        let fresh = self.from_scratch();
        self.mirror.diff(&fresh, limit)
    }
}

/// The agent's model for `node` (maps for the node's own pods only, quiet).
fn new_model(node: &str) -> ClusterState {
    let mut st = ClusterState::new(node);
    st.set_quiet(true);
    st.set_local_only(true);
    st
}

/// A fresh model of `node` fed `state` (full keys) in one listing, identities numbered by
/// `number` (`None`: left unresolved), and the dataplane its snapshot and commit produce.
pub fn from_scratch(
    node: &str,
    state: &BTreeMap<String, Vec<u8>>,
    mut number: impl FnMut(&Labels) -> Option<u32>,
) -> DataplaneMirror {
    let mut st = new_model(node);
    let listing: Vec<(String, Vec<u8>)> =
        state.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    st.put_all(&listing);
    for (labels, _) in st.needed_identities() {
        if let Some(id) = number(&labels) {
            st.set_identity(labels, id);
        }
    }
    let mut mirror = DataplaneMirror::default();
    let snapshot = st.snapshot();
    mirror.apply_changes(&snapshot, st.engine());
    let rest = st.commit();
    mirror.apply_changes(&rest, st.engine());
    mirror
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::synth::{Mutation, Mutations, ScaleCluster, ScaleSpec};

    fn small() -> ScaleCluster {
        let mut spec = ScaleSpec::new("d", 600);
        spec.nodes = 8;
        spec.agents = 2;
        spec.local_pods = 40;
        spec.namespaces = 4;
        spec.identities = 60;
        spec.policies = 80;
        ScaleCluster::generate(&spec).unwrap()
    }

    #[test]
    fn initial_listing_equals_from_scratch() {
        let c = small();
        let mut d = Differential::start(&c.node_name(0), &c.objects());
        assert!(
            d.mirror.endpoints.len() >= 40,
            "{}",
            d.mirror.endpoints.len()
        );
        assert!(
            d.mirror.policy_entries() > 100,
            "{}",
            d.mirror.policy_entries()
        );
        let diff = d.check(20);
        assert!(diff.is_empty(), "{diff:#?}");
    }

    #[test]
    fn the_mirror_sees_a_difference() {
        let c = small();
        let mut d = Differential::start(&c.node_name(0), &c.objects());
        let ((id, dir), p) = d
            .mirror
            .policy
            .iter_mut()
            .find(|(_, p)| !p.entries.is_empty())
            .unwrap();
        let (id, dir) = (*id, dir.clone());
        p.entries.pop_first();
        let diff = d.check(20);
        assert_eq!(diff.len(), 1, "{diff:#?}");
        assert!(diff[0].contains(&format!("({id}, \"{dir}\")")), "{diff:?}");
    }

    #[test]
    fn a_few_changes_stay_equal() {
        let c = small();
        let mut d = Differential::start(&c.node_name(0), &c.objects());
        let mut m = Mutations::new(c, 3);
        for _ in 0..50 {
            match m.next_mutation() {
                Mutation::Put(k, v) => d.apply(&k, Some(&v)),
                Mutation::Delete(k) => d.apply(&k, None),
            }
        }
        let diff = d.check(20);
        assert!(diff.is_empty(), "{diff:#?}");
    }
}
