//! Kubernetes `NetworkPolicy` (networking.k8s.io/v1) into the compiler's [`Policy`] model.
//!
//! Semantics, from the API reference:
//! - `podSelector` selects pods in the policy's namespace; `{}` selects all of them.
//! - `policyTypes` absent: `Ingress`, plus `Egress` when `egress` has at least one rule.
//! - Every listed type makes the selected pods default-deny in that direction; the rules allow.
//! - A rule without `from`/`to` (or with an empty list) allows every remote; a rule without
//!   `ports` (or an empty list) allows every port. `ingress: []` or absent allows nothing.
//! - A peer with `podSelector` only: pods in the policy's namespace; `namespaceSelector` only:
//!   all pods in matching namespaces; both: pods matching both (AND); `ipBlock`: addresses in
//!   `cidr` but not in `except`, *including pod and node addresses* (see `docs/policy-semantics.md`).
//! - A port: `protocol` TCP (default), UDP or SCTP; `port` a number or a container port name;
//!   `endPort` (needs a numeric `port`) makes a range; no `port` means every port.

use crate::doc::Node;
use crate::error::{Error, Warning};
use crate::labels::{NAMESPACE_LABEL, NAMESPACE_LABELS_PREFIX};
use crate::model::{
    CidrPeer, DirectionRules, Peer, Peers, Policy, PolicyId, PolicyKind, PortSel, PortSpec,
    Protocol, Rule, Section, Verdict,
};
use crate::policy_fields::{check_except, metadata, parse_cidr};
use crate::selector::Selector;
use dataplane::tables::policy::PortRange;

pub use crate::policy_fields::DEFAULT_NAMESPACE;

/// Parses one NetworkPolicy document (already known to be of that kind).
pub fn parse_network_policy(root: Node<'_>, _warnings: &mut Vec<Warning>) -> Result<Policy, Error> {
    let (namespace, name) = metadata(root, true)?;
    let namespace = namespace.unwrap_or_else(|| DEFAULT_NAMESPACE.to_string());
    let id = PolicyId {
        kind: PolicyKind::NetworkPolicy,
        namespace: Some(namespace.clone()),
        name,
    };
    let section = root.required("spec", "the policy spec", |spec| {
        parse_spec(spec, &namespace)
    })?;
    Ok(Policy {
        id,
        sections: vec![section],
    })
}

fn parse_spec(spec: Node<'_>, namespace: &str) -> Result<Section, Error> {
    spec.fields(&["podSelector", "policyTypes", "ingress", "egress"], &[])?;
    let pod_selector = spec.required("podSelector", "podSelector ({} selects every pod)", |n| {
        Selector::parse(n, &str::to_string)
    })?;
    let subject = pod_selector.and_equals(NAMESPACE_LABEL, namespace);
    let ingress = spec.with_field("ingress", |n| n.items(|r| parse_rule(r, "from", namespace)))?;
    let egress = spec.with_field("egress", |n| n.items(|r| parse_rule(r, "to", namespace)))?;
    let types = spec.with_field("policyTypes", |n| {
        n.items(|t| match t.str()? {
            "Ingress" => Ok(true),
            "Egress" => Ok(false),
            other => Err(t.error(format!(
                "unknown policy type `{other}`; use Ingress or Egress"
            ))),
        })
    })?;
    let (has_ingress, has_egress) = match types {
        Some(t) if !t.is_empty() => (t.contains(&true), t.contains(&false)),
        // Defaulting as the API server does: Ingress always, Egress when there are egress rules.
        _ => (true, egress.as_ref().is_some_and(|e| !e.is_empty())),
    };
    let direction = |applies: bool, rules: Option<Vec<Rule>>| DirectionRules {
        applies,
        default_deny: applies,
        // Rules of a type not listed in policyTypes have no effect.
        rules: if applies {
            rules.unwrap_or_default()
        } else {
            Vec::new()
        },
    };
    Ok(Section {
        path: spec.path().to_string(),
        subject,
        hosts: false,
        ingress: direction(has_ingress, ingress),
        egress: direction(has_egress, egress),
    })
}

fn parse_rule(rule: Node<'_>, peers_field: &str, namespace: &str) -> Result<Rule, Error> {
    rule.fields(&[peers_field, "ports"], &[])?;
    let peers = rule
        .with_field(peers_field, |n| n.items(|p| parse_peer(p, namespace)))?
        .filter(|p| !p.is_empty())
        .map_or(Peers::All, Peers::Only);
    let ports = rule
        .with_field("ports", |n| n.items(parse_port))?
        .unwrap_or_default();
    Ok(Rule {
        path: rule.path().to_string(),
        verdict: Verdict::Allow,
        peers,
        ports,
    })
}

fn parse_peer(peer: Node<'_>, namespace: &str) -> Result<Peer, Error> {
    peer.fields(&["podSelector", "namespaceSelector", "ipBlock"], &[])?;
    let pods = peer.with_field("podSelector", |n| Selector::parse(n, &str::to_string))?;
    let namespaces = peer.with_field("namespaceSelector", |n| {
        Selector::parse(n, &|k| format!("{NAMESPACE_LABELS_PREFIX}{k}"))
    })?;
    let block = peer.with_field("ipBlock", parse_ip_block)?;
    match (pods, namespaces, block) {
        (None, None, Some(block)) => Ok(Peer::Cidr(block)),
        (_, _, Some(_)) => Err(peer.error(
            "ipBlock cannot be combined with podSelector or namespaceSelector; use separate peers",
        )),
        (None, None, None) => Err(peer.error(
            "a peer needs podSelector, namespaceSelector or ipBlock; to allow every remote, \
             leave out the whole `from`/`to` list",
        )),
        (Some(pods), None, None) => {
            Ok(Peer::Endpoints(pods.and_equals(NAMESPACE_LABEL, namespace)))
        }
        (None, Some(ns), None) => Ok(Peer::Endpoints(ns)),
        (Some(pods), Some(ns), None) => Ok(Peer::Endpoints(pods.and(&ns))),
    }
}

fn parse_ip_block(block: Node<'_>) -> Result<CidrPeer, Error> {
    block.fields(&["cidr", "except"], &[])?;
    let cidr = block.required("cidr", "the CIDR (e.g. 10.0.0.0/16)", parse_cidr)?;
    let except = block
        .with_field("except", |n| n.items(parse_cidr))?
        .unwrap_or_default();
    check_except(block, &cidr, &except)?;
    Ok(CidrPeer {
        cidr,
        except,
        match_pods: true,
    })
}

fn parse_port(port: Node<'_>) -> Result<PortSpec, Error> {
    port.fields(&["protocol", "port", "endPort"], &[])?;
    let protocol = port
        .with_field("protocol", |n| {
            let s = n.str()?;
            Protocol::parse(s, false)
                .ok_or_else(|| n.error(format!("unknown protocol `{s}`; use TCP, UDP or SCTP")))
        })?
        .unwrap_or(Protocol::Tcp);
    let end = port.with_field("endPort", |n| n.u16())?;
    let sel = port.with_field("port", |n| match n.value {
        serde_json::Value::String(s) if s.parse::<u16>().is_err() => {
            if s.is_empty() {
                Err(n.error("empty port name"))
            } else {
                Ok(PortSel::Named(s.clone()))
            }
        }
        _ => n.u16().map(|p| PortSel::Range(PortRange::single(p))),
    })?;
    let sel = match (sel, end) {
        (None, None) => PortSel::All,
        (Some(s), None) => s,
        (Some(PortSel::Range(r)), Some(end)) => PortRange::new(r.lo, end)
            .map(PortSel::Range)
            .ok_or_else(|| port.error(format!("endPort {end} is below port {}", r.lo)))?,
        (Some(_), Some(_)) => {
            return Err(port.error("endPort needs a numeric `port`, not a named port"))
        }
        (None, Some(_)) => return Err(port.error("endPort needs `port` to be set")),
    };
    Ok(PortSpec {
        protocol,
        port: sel,
    })
}

#[cfg(test)]
mod tests {
    use crate::model::{Peer, Peers, PortSel, Protocol};
    use crate::parse::parse_policies;

    fn one(spec: &str) -> Result<crate::model::Policy, crate::Error> {
        let text = format!(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: p, namespace: x}}\nspec:\n{spec}"
        );
        parse_policies("p.yaml", &text).map(|mut p| p.policies.remove(0))
    }

    #[test]
    fn policy_types_default_from_rules() {
        let p = one("  podSelector: {}\n").unwrap();
        let s = &p.sections[0];
        assert!(s.ingress.applies && !s.egress.applies);
        let p = one("  podSelector: {}\n  egress: [{}]\n").unwrap();
        assert!(p.sections[0].ingress.applies && p.sections[0].egress.applies);
        // An empty egress list does not add Egress (the API server's defaulting).
        let p = one("  podSelector: {}\n  egress: []\n").unwrap();
        assert!(!p.sections[0].egress.applies);
        let p = one("  podSelector: {}\n  policyTypes: [Egress]\n  ingress: [{}]\n").unwrap();
        assert!(!p.sections[0].ingress.applies);
        assert!(p.sections[0].ingress.rules.is_empty());
    }

    #[test]
    fn empty_versus_absent_peers_and_ports() {
        let p = one("  podSelector: {}\n  ingress:\n  - from: []\n    ports: []\n").unwrap();
        let r = &p.sections[0].ingress.rules[0];
        assert_eq!(r.peers, Peers::All);
        assert!(r.ports.is_empty());
    }

    #[test]
    fn peers_combine_selectors() {
        let p = one(
            "  podSelector: {}\n  ingress:\n  - from:\n    - podSelector: {matchLabels: {a: b}}\n      namespaceSelector: {matchLabels: {team: t}}\n",
        )
        .unwrap();
        let Peers::Only(peers) = &p.sections[0].ingress.rules[0].peers else {
            panic!()
        };
        let Peer::Endpoints(sel) = &peers[0] else {
            panic!()
        };
        assert_eq!(sel.to_string(), "a=b,io.cilium.k8s.namespace.labels.team=t");
    }

    #[test]
    fn ports_named_numeric_ranges() {
        let p = one(
            "  podSelector: {}\n  ingress:\n  - ports:\n    - {port: http}\n    - {port: 53, protocol: UDP}\n    - {port: 1000, endPort: 2000, protocol: SCTP}\n    - {protocol: UDP}\n",
        )
        .unwrap();
        let ports = &p.sections[0].ingress.rules[0].ports;
        assert_eq!(ports[0].port, PortSel::Named("http".into()));
        assert_eq!(ports[0].protocol, Protocol::Tcp);
        assert_eq!(ports[1].protocol, Protocol::Udp);
        assert!(matches!(ports[2].port, PortSel::Range(r) if r.lo == 1000 && r.hi == 2000));
        assert_eq!(ports[3].port, PortSel::All);
    }

    #[test]
    fn errors_name_document_and_path() {
        let e = one("  podSelector: {}\n  ingress:\n  - from:\n    - ipBlock: {cidr: 10.0.0.0/8, except: [11.0.0.0/16]}\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("p.yaml, document 1 (NetworkPolicy x/p)"), "{e}");
        assert!(e.contains("spec.ingress[0].from[0].ipBlock"), "{e}");
        assert!(e.contains("not inside"), "{e}");
        let e = one("  podSelector: {}\n  ingress:\n  - ports: [{port: http, endPort: 90}]\n")
            .unwrap_err();
        assert!(e.to_string().contains("spec.ingress[0].ports[0]"), "{e}");
        let e = one("  podSelector: {}\n  ingress:\n  - from: [{}]\n").unwrap_err();
        assert!(e.to_string().contains("a peer needs"), "{e}");
        let e = one("  ingress: []\n").unwrap_err();
        assert!(e.to_string().contains("spec.podSelector"), "{e}");
        let e = one("  podSelector: {}\n  ingress:\n  - from:\n    - ipBlock: {cidr: 10.0.0.1}\n")
            .unwrap_err();
        assert!(e.to_string().contains("no prefix length"), "{e}");
        let e = one("  podSelector: {}\n  ingress:\n  - ports: [{port: 80, protocol: ICMP}]\n")
            .unwrap_err();
        assert!(e.to_string().contains("unknown protocol"), "{e}");
    }

    #[test]
    fn other_kinds_and_duplicates_are_refused() {
        let e = parse_policies("f.yaml", "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\n")
            .unwrap_err();
        assert!(e.to_string().contains("not a policy Flagella reads"), "{e}");
        let doc = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: x}\nspec: {podSelector: {}}\n";
        let e = parse_policies("f.yaml", &format!("{doc}---\n{doc}")).unwrap_err();
        assert!(e.to_string().contains("defined twice"), "{e}");
    }
}
