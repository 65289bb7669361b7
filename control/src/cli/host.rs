//! `flagella policy get --host NODE`: a node's host policy (Cilium's host firewall) as its
//! agent compiles it from etcd (the host policies whose `nodeSelector` selects the node's
//! labels): per direction, whether it is enforced, and every map entry with its remote identity,
//! protocol, ports, action and the rules behind it. Offline (`--policies F --cluster C`), the
//! same from files: the cluster file's nodes with their labels, and the policies in force.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use dataplane::tables::policy::{Action, DirectionalPolicy, PortRange, PROTO_ANY};
use dataplane::Identity;
use policy_compiler::model::Protocol;
use policy_compiler::trace::RuleRef;
use policy_compiler::PolicyEngine;
use serde::Serialize;

use super::table::Table;
use super::trace::{read_cluster, read_policy_files};
use super::{CliError, Skipped};
use crate::store::Store;

/// One node's host policy.
#[derive(Clone, Debug, Serialize)]
pub struct HostPolicyView {
    pub node: String,
    pub labels: BTreeMap<String, String>,
    pub ingress: DirectionView,
    pub egress: DirectionView,
}

/// One direction of it.
#[derive(Clone, Debug, Serialize)]
pub struct DirectionView {
    /// False while no host policy selects the node in this direction (everything passes).
    pub enforced: bool,
    pub entries: Vec<EntryView>,
}

/// One map entry.
#[derive(Clone, Debug, Serialize)]
pub struct EntryView {
    /// The cluster-wide identity number (0: any), or the model's local number with a note in
    /// `remote` while none is allocated.
    pub identity: u32,
    /// Its labels (`reserved:world`, `cidr:...`, `any`).
    pub remote: String,
    /// `TCP`, `UDP`, `ICMP`, ... or `any`.
    pub protocol: String,
    /// `80`, `8000-8080` (ICMP: types) or `any`.
    pub ports: String,
    /// `allow` or `deny`.
    pub action: &'static str,
    pub rules: Vec<RuleRef>,
}

/// The host policy of `node` from the cluster in etcd, with the keys the model refused.
pub async fn get(store: &Store, node: &str) -> Result<(HostPolicyView, Vec<Skipped>), CliError> {
    let (mut state, skipped) = super::policy::live_state(store).await?;
    let Some(spec) = state.nodes().get(node).cloned() else {
        return Err(CliError::NotFound {
            what: format!("node {node}"),
            hint: "`flagella node list` lists the nodes in etcd".into(),
        });
    };
    let mut hosts = state.host_policies();
    let Some(policy) = hosts.remove(node) else {
        return Err(CliError::Other(format!(
            "node {node} has no host policy in the model; this is a bug in flagella, please report it"
        )));
    };
    let cluster_number = |id: Identity| state.cluster_identity(id);
    let view = |d: &DirectionalPolicy| direction_view(state.engine(), d, &cluster_number);
    let out = HostPolicyView {
        node: node.to_string(),
        labels: spec.labels.clone(),
        ingress: view(&policy.ingress),
        egress: view(&policy.egress),
    };
    Ok((out, skipped))
}

/// The host policy of `node` from files: the policies in force (`policies`) over the cluster
/// file `cluster`. Identity numbers are the offline model's own, as `policy trace` prints them.
pub fn get_offline(
    policies: &[PathBuf],
    cluster: &Path,
    node: &str,
) -> Result<HostPolicyView, CliError> {
    let in_force = read_policy_files(policies)?;
    let cluster_name = cluster.display().to_string();
    let cluster = read_cluster(cluster)?;
    let Some(spec) = cluster.nodes.iter().find(|n| n.name == node) else {
        return Err(CliError::NotFound {
            what: format!("node {node} in {cluster_name}"),
            hint: "the cluster file's `nodes` list names them; add the node there".into(),
        });
    };
    let mut engine = PolicyEngine::build(&cluster, &in_force)
        .map_err(|e| CliError::Other(format!("{cluster_name}: {e}")))?;
    let policy = engine.host_policy(&spec.labels);
    let own_number = |id: Identity| Some(id.0);
    let view = |d: &DirectionalPolicy| direction_view(&engine, d, &own_number);
    Ok(HostPolicyView {
        node: node.to_string(),
        labels: spec.labels.clone().into(),
        ingress: view(&policy.ingress),
        egress: view(&policy.egress),
    })
}

fn direction_view(
    engine: &PolicyEngine,
    d: &DirectionalPolicy,
    cluster_number: &dyn Fn(Identity) -> Option<u32>,
) -> DirectionView {
    let mut entries: Vec<EntryView> = d
        .map
        .iter()
        .map(|(key, entry)| {
            let described = if key.identity == Identity::ANY {
                "any".to_string()
            } else {
                engine.identities().describe(key.identity)
            };
            let (identity, remote) = match cluster_number(key.identity) {
                Some(n) => (n, described),
                None => (
                    key.identity.0,
                    format!("{described} (no cluster-wide identity yet; number is local)"),
                ),
            };
            EntryView {
                identity,
                remote,
                protocol: if key.proto == PROTO_ANY {
                    "any".into()
                } else {
                    Protocol::name_of(key.proto)
                },
                ports: ports_text(key.ports),
                action: match entry.action {
                    Action::Allow => "allow",
                    Action::Deny => "deny",
                },
                rules: engine
                    .cookie_origins(entry.cookie)
                    .iter()
                    .map(|o| RuleRef {
                        kind: o.policy.kind.as_str(),
                        policy: o.policy.qualified_name(),
                        rule: o.rule.clone(),
                    })
                    .collect(),
            }
        })
        .collect();
    entries.sort_by(|a, b| {
        (a.identity, &a.protocol, &a.ports).cmp(&(b.identity, &b.protocol, &b.ports))
    });
    DirectionView {
        enforced: d.enforced,
        entries,
    }
}

fn ports_text(p: PortRange) -> String {
    match (p.lo, p.hi) {
        (0, u16::MAX) => "any".into(),
        (lo, hi) if lo == hi => lo.to_string(),
        (lo, hi) => format!("{lo}-{hi}"),
    }
}

/// The view for people: a line per direction, then its entries.
pub fn text(v: &HostPolicyView) -> String {
    let labels = super::labels_text(&v.labels);
    let mut out = format!(
        "host policy of node {} (labels: {})\n",
        v.node,
        if labels.is_empty() { "none" } else { &labels }
    );
    for (name, d) in [("ingress", &v.ingress), ("egress", &v.egress)] {
        if !d.enforced {
            out.push_str(&format!(
                "{name}: not enforced (no host policy selects this node for {name})\n"
            ));
            continue;
        }
        out.push_str(&format!(
            "{name}: enforced, default deny, {} entries\n",
            d.entries.len()
        ));
        let mut t = Table::new(&["IDENTITY", "REMOTE", "PROTO", "PORTS", "ACTION", "RULES"]);
        for e in &d.entries {
            let rules: Vec<String> = e
                .rules
                .iter()
                .map(|r| format!("{} {} {}", r.kind, r.policy, r.rule))
                .collect();
            t.row(vec![
                e.identity.to_string(),
                e.remote.clone(),
                e.protocol.clone(),
                e.ports.clone(),
                e.action.to_string(),
                rules.join("; "),
            ]);
        }
        if !t.is_empty() {
            out.push_str(&t.render());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_ranges_read_as_people_write_them() {
        assert_eq!(ports_text(PortRange::ANY), "any");
        assert_eq!(ports_text(PortRange { lo: 22, hi: 22 }), "22");
        assert_eq!(ports_text(PortRange { lo: 8000, hi: 8080 }), "8000-8080");
    }
}
