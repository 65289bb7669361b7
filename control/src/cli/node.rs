//! `flagella node list|upsert`: the cluster's nodes (underlay address, pod CIDRs, tunnel mode,
//! labels), listed through the agents' model ([`super::policy::live_state`]) with their endpoint counts.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::Serialize;

use super::args::{NodeVerb, Output, TunnelArg};
use super::policy::live_state;
use super::render::{emit, warn};
use super::table::Table;
use super::{connect, put_validated, CliError};
use crate::schema::{NodeSpec, ObjectKey, TunnelMode};
use crate::store::Store;
use crate::sync::ClusterState;

/// `node upsert NAME`: validates the node as the agents will (a unicast underlay address, pod
/// CIDRs without host bits), then writes it. The node's agent allocates its pods' addresses
/// from the first pod CIDR of each family and gives its dataplane the gateway (the first host
/// address).
pub async fn upsert_node(store: &Store, name: &str, spec: NodeSpec) -> Result<NodeSpec, CliError> {
    let key = ObjectKey::Node(name.to_string()).to_key();
    put_validated(store, &key, &spec).await?;
    Ok(spec)
}

/// One node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct NodeInfo {
    pub name: String,
    pub underlay_ip: IpAddr,
    pub pod_cidrs: Vec<String>,
    pub tunnel: TunnelMode,
    /// The node's labels: what host policies' `nodeSelector` matches.
    pub labels: BTreeMap<String, String>,
    /// Endpoints the agents accept on this node.
    pub endpoints: usize,
}

/// Every node, sorted by name.
pub fn nodes(state: &ClusterState) -> Vec<NodeInfo> {
    state
        .nodes()
        .iter()
        .map(|(name, n): (&String, &NodeSpec)| NodeInfo {
            name: name.clone(),
            underlay_ip: n.underlay_ip,
            pod_cidrs: n.pod_cidrs.clone(),
            tunnel: n.tunnel,
            labels: n.labels.clone(),
            endpoints: state
                .endpoints()
                .values()
                .filter(|e| e.node == *name)
                .count(),
        })
        .collect()
}

/// `role=fw,zone=a`, or `-` for none.
fn label_text(labels: &BTreeMap<String, String>) -> String {
    if labels.is_empty() {
        return "-".to_string();
    }
    let pairs: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    pairs.join(",")
}

// ---- the command ----------------------------------------------------------------------

pub async fn run(verb: NodeVerb, etcd: &[String], out: Output) -> Result<(), CliError> {
    match verb {
        NodeVerb::List => {
            let store = connect(etcd).await?;
            let (state, skipped) = live_state(&store).await?;
            warn(&skipped);
            let nodes = nodes(&state);
            emit(out, &nodes, || {
                let mut t = Table::new(&[
                    "NAME",
                    "UNDERLAY",
                    "POD CIDRS",
                    "TUNNEL",
                    "ENDPOINTS",
                    "LABELS",
                ]);
                for n in &nodes {
                    t.row(vec![
                        n.name.clone(),
                        n.underlay_ip.to_string(),
                        n.pod_cidrs.join(","),
                        n.tunnel.as_str().to_string(),
                        n.endpoints.to_string(),
                        label_text(&n.labels),
                    ]);
                }
                t.render()
            })
        }
        NodeVerb::Upsert {
            name,
            underlay_ip,
            pod_cidrs,
            tunnel,
            labels,
        } => {
            let store = connect(etcd).await?;
            let spec = NodeSpec {
                underlay_ip,
                pod_cidrs,
                labels,
                tunnel: match tunnel {
                    TunnelArg::Vxlan => TunnelMode::Vxlan,
                    TunnelArg::Geneve => TunnelMode::Geneve,
                    TunnelArg::Native => TunnelMode::Native,
                },
            };
            let spec = upsert_node(&store, &name, spec).await?;
            emit(
                out,
                &serde_json::json!({"name": name, "underlay_ip": spec.underlay_ip,
                                    "pod_cidrs": spec.pod_cidrs, "tunnel": spec.tunnel,
                                    "labels": spec.labels}),
                || {
                    format!(
                        "node {name} written: underlay {}, pod CIDRs {}, {}, labels {}\n",
                        spec.underlay_ip,
                        spec.pod_cidrs.join(","),
                        spec.tunnel.as_str(),
                        label_text(&spec.labels)
                    )
                },
            )
        }
    }
}
