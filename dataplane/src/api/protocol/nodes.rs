//! `node.upsert` / `node.delete`: the other nodes of the cluster, and a node's shape in
//! `dump`.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use super::{Text, WireEncap};
use crate::tables::nodes::Node;
use crate::types::Prefix;

/// `node.upsert`; also the shape of a node in `dump`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeMsg {
    pub name: String,
    pub underlay: IpAddr,
    #[serde(default)]
    pub pod_cidrs: Vec<Text<Prefix>>,
    #[serde(default)]
    pub encap: WireEncap,
}

impl NodeMsg {
    pub fn to_node(&self) -> Node {
        Node {
            name: self.name.clone(),
            underlay: self.underlay,
            pod_cidrs: self.pod_cidrs.iter().map(|p| p.0).collect(),
            encap: self.encap.into(),
        }
    }
}

impl From<&Node> for NodeMsg {
    fn from(n: &Node) -> Self {
        NodeMsg {
            name: n.name.clone(),
            underlay: n.underlay,
            pod_cidrs: n.pod_cidrs.iter().copied().map(Text).collect(),
            encap: n.encap.into(),
        }
    }
}

/// `node.delete`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeRef {
    pub name: String,
}
