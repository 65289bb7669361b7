//! Warnings for CIDR peers that split an identity: some addresses carrying one identity (pods,
//! nodes) lie inside the peer's block (and outside its excepts), others do not.
//!
//! Enforcement is by identity, so such a block can only take an identity whole or not at all:
//! a Kubernetes `ipBlock` then selects none of its pods (fail closed, `selector_cache`), and a
//! Cilium CIDR rule never selects cluster pods anyway. Either way the policy does not do what
//! its addresses suggest for the pods inside the block, and the user should hear it. These are
//! warnings of the compiled state (they depend on where pods are), not of the policy text:
//! [`crate::compile::PolicyEngine::split_warnings`] lists them; `policy import` and `policy
//! trace` print them.

use std::fmt;
use std::net::IpAddr;

use dataplane::tables::policy::Direction;
use dataplane::Identity;

use crate::identity::IdentityTable;
use crate::inputs::Inputs;
use crate::model::{CidrPeer, Peer, Peers, Policy, PolicyId};

/// How many names of each side a warning lists.
const NAMES_SHOWN: usize = 3;

/// A CIDR peer of a rule that splits an identity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SplitWarning {
    pub policy: PolicyId,
    /// Field path of the rule (`spec.ingress[0]`).
    pub rule: String,
    /// `10.1.0.0/16` or `10.1.0.0/16 except 10.1.2.0/24, ...`.
    pub block: String,
    /// Kubernetes `ipBlock` semantics (the block would select whole identities).
    pub ip_block: bool,
    /// The split identity, by its labels.
    pub identity: String,
    /// The pods (`namespace/name`) and nodes (`node NAME`) carrying it, inside and outside.
    pub inside: Vec<String>,
    pub outside: Vec<String>,
}

impl fmt::Display for SplitWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (what, advice) = if self.ip_block {
            (
                "ipBlock",
                "an identity is selected whole, so the block selects none of them; select them \
                 with a podSelector/namespaceSelector, or make the block hold all or none of them",
            )
        } else {
            (
                "CIDR",
                "Cilium CIDR rules never select cluster pods, so none of them is selected; \
                 select them with toEndpoints/fromEndpoints",
            )
        };
        write!(
            f,
            "{} {}: {what} {} splits identity ({}): {} inside, {} outside; {advice}",
            self.policy,
            self.rule,
            self.block,
            self.identity,
            names(&self.inside),
            names(&self.outside)
        )
    }
}

fn names(list: &[String]) -> String {
    let shown = list
        .iter()
        .take(NAMES_SHOWN)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    match list.len().saturating_sub(NAMES_SHOWN) {
        0 => shown,
        more => format!("{shown} and {more} more"),
    }
}

/// Every (rule, CIDR peer) of `policies` that splits an identity of `inputs`.
pub(crate) fn find<'a>(
    policies: impl Iterator<Item = &'a Policy>,
    inputs: &Inputs,
    identities: &IdentityTable,
) -> Vec<SplitWarning> {
    let mut out = Vec::new();
    for policy in policies {
        for (rule, peer) in cidr_peers(policy) {
            for (&id, addrs) in sorted(inputs) {
                let inside: Vec<IpAddr> = addrs
                    .iter()
                    .copied()
                    .filter(|a| in_block(peer, *a))
                    .collect();
                if inside.is_empty() || inside.len() == addrs.len() {
                    continue;
                }
                let (mut ins, mut outs) = (Vec::new(), Vec::new());
                for (name, ip) in holders(inputs, id) {
                    if inside.contains(&ip) {
                        ins.push(name);
                    } else {
                        outs.push(name);
                    }
                }
                out.push(SplitWarning {
                    policy: policy.id.clone(),
                    rule: rule.to_string(),
                    block: block_text(peer),
                    ip_block: peer.match_pods,
                    identity: identities.describe(id),
                    inside: ins,
                    outside: outs,
                });
            }
        }
    }
    out
}

/// The identities that carry addresses, in number order (a deterministic output).
fn sorted(inputs: &Inputs) -> Vec<(&Identity, &Vec<IpAddr>)> {
    let mut v: Vec<_> = inputs.addresses.iter().collect();
    v.sort_by_key(|(id, _)| **id);
    v
}

/// Every rule's CIDR peers, with the rule's path (each distinct pair once).
fn cidr_peers(policy: &Policy) -> Vec<(&str, &CidrPeer)> {
    let mut out: Vec<(&str, &CidrPeer)> = Vec::new();
    for section in &policy.sections {
        for dir in [Direction::Ingress, Direction::Egress] {
            for rule in &section.direction(dir).rules {
                let Peers::Only(peers) = &rule.peers else {
                    continue;
                };
                for peer in peers {
                    if let Peer::Cidr(c) = peer {
                        if !out.contains(&(rule.path.as_str(), c)) {
                            out.push((rule.path.as_str(), c));
                        }
                    }
                }
            }
        }
    }
    out
}

fn in_block(peer: &CidrPeer, addr: IpAddr) -> bool {
    peer.cidr.contains(addr) && !peer.except.iter().any(|e| e.contains(addr))
}

fn block_text(peer: &CidrPeer) -> String {
    if peer.except.is_empty() {
        return peer.cidr.to_string();
    }
    let except: Vec<String> = peer.except.iter().map(ToString::to_string).collect();
    format!("{} except {}", peer.cidr, except.join(", "))
}

/// The pods and nodes whose address carries `id`, named, sorted.
fn holders(inputs: &Inputs, id: Identity) -> Vec<(String, IpAddr)> {
    let pods = inputs
        .pods_by_identity
        .get(&id)
        .into_iter()
        .flatten()
        .filter_map(|key| inputs.pods.get(key).map(|p| (key.clone(), p.pod.ip)));
    let nodes = inputs
        .nodes
        .iter()
        .filter(|(_, (_, node_id))| *node_id == id)
        .map(|(name, (ip, _))| (format!("node {name}"), *ip));
    let mut all: Vec<_> = pods.chain(nodes).collect();
    all.sort();
    all
}

#[cfg(test)]
mod tests {
    use crate::compile::PolicyEngine;
    use crate::{parse_cluster, parse_policies};

    /// x/a and x/b share an identity (app: web) at 10.1.0.1 and 10.1.1.1; x/c is alone.
    const CLUSTER: &str = r#"
namespaces: {x: {}}
nodes: [{name: n1, ip: 192.168.0.1}, {name: n2, ip: 192.168.1.1}]
pods:
- {namespace: x, name: a, labels: {app: web}, ip: 10.1.0.1}
- {namespace: x, name: b, labels: {app: web}, ip: 10.1.1.1}
- {namespace: x, name: c, labels: {app: db}, ip: 10.1.0.3}
"#;

    fn warnings(policy: &str) -> Vec<String> {
        let cluster = parse_cluster("c.yaml", CLUSTER).unwrap();
        let parsed = parse_policies("p.yaml", policy).unwrap();
        let e = PolicyEngine::build(&cluster, &parsed.policies).unwrap();
        e.split_warnings().iter().map(ToString::to_string).collect()
    }

    fn np_egress_to(block: &str) -> String {
        format!(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: p, namespace: x}}\nspec:\n  podSelector: {{}}\n  policyTypes: [Egress]\n  egress:\n  - to: [{{ipBlock: {block}}}]\n"
        )
    }

    #[test]
    fn an_ip_block_holding_part_of_an_identity_is_reported() {
        let w = warnings(&np_egress_to("{cidr: 10.1.0.0/24}"));
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(
            w[0].starts_with(
                "NetworkPolicy x/p spec.egress[0]: ipBlock 10.1.0.0/24 splits identity (app=web,"
            ) && w[0].contains("x/a inside, x/b outside")
                && w[0].contains("selects none of them"),
            "{}",
            w[0]
        );
    }

    #[test]
    fn an_except_that_splits_is_reported_with_the_except() {
        let w = warnings(&np_egress_to("{cidr: 10.1.0.0/16, except: [10.1.1.0/24]}"));
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(
            w[0].contains("ipBlock 10.1.0.0/16 except 10.1.1.0/24 splits")
                && w[0].contains("x/a inside, x/b outside"),
            "{}",
            w[0]
        );
    }

    #[test]
    fn whole_identities_and_nodes_split_by_a_block() {
        // Holds both web pods and x/c: nothing split.
        assert!(warnings(&np_egress_to("{cidr: 10.1.0.0/16}")).is_empty());
        // Holds none of them.
        assert!(warnings(&np_egress_to("{cidr: 172.16.0.0/12}")).is_empty());
        // The nodes share `remote-node`: a block with one of them splits it.
        let w = warnings(&np_egress_to("{cidr: 192.168.0.0/24}"));
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(
            w[0].contains("reserved:remote-node")
                && w[0].contains("node n1 inside, node n2 outside"),
            "{}",
            w[0]
        );
    }

    #[test]
    fn cilium_cidr_rules_get_their_own_advice() {
        let w = warnings(
            "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: q, namespace: x}\nspec:\n  endpointSelector: {}\n  ingress:\n  - fromCIDRSet: [{cidr: 10.0.0.0/8, except: [10.1.1.0/24]}]\n",
        );
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(
            w[0].starts_with("CiliumNetworkPolicy x/q spec.ingress[0]: CIDR 10.0.0.0/8 except 10.1.1.0/24 splits")
                && w[0].contains("toEndpoints"),
            "{}",
            w[0]
        );
    }
}
