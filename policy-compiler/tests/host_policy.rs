//! Host policies (Cilium's host firewall): a CiliumClusterwideNetworkPolicy with a
//! `nodeSelector` compiles into the map of the nodes whose labels it selects, never into a
//! pod's, with default deny in the directions it names and nothing enforced elsewhere.
#![allow(clippy::unwrap_used)] // a test: a failed unwrap is a failed test

use dataplane::tables::policy::Decision;
use dataplane::Identity;
use policy_compiler::labels::Labels;
use policy_compiler::{parse_cluster, parse_policies, PolicyEngine};

const CLUSTER: &str = r#"
namespaces: {x: {ns: x}}
pods:
- {namespace: x, name: a, labels: {role: worker}, ip: 10.1.0.1}
- {namespace: x, name: b, labels: {app: b}, ip: 10.1.0.2}
nodes: [{name: n1, ip: 192.168.0.1}, {name: n2, ip: 192.168.0.2}]
"#;

/// Only TCP 22 and 8080 from pods reach the nodes labelled `role: worker`.
const HOST_FIREWALL: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumClusterwideNetworkPolicy
metadata: {name: workers-ssh-and-web}
spec:
  nodeSelector: {matchLabels: {role: worker}}
  ingress:
  - fromEntities: [cluster]
    toPorts: [{ports: [{port: "22", protocol: TCP}, {port: "8080", protocol: TCP}]}]
"#;

fn engine(policies: &str) -> PolicyEngine {
    let cluster = parse_cluster("c.yaml", CLUSTER).unwrap();
    let parsed = parse_policies("p.yaml", policies).unwrap();
    let mut e = PolicyEngine::build(&cluster, &parsed.policies).unwrap();
    e.commit();
    e
}

fn labels(pairs: &[(&str, &str)]) -> Labels {
    let mut l = Labels::new();
    for (k, v) in pairs {
        l.insert(*k, *v);
    }
    l
}

#[test]
fn a_selected_node_admits_only_the_listed_ports_from_pods() {
    let mut e = engine(HOST_FIREWALL);
    let pod = e.pod_identity("x/b").unwrap();
    let host = e.host_policy(&labels(&[("role", "worker"), ("zone", "a")]));
    assert!(host.ingress.enforced && !host.egress.enforced);
    for (port, allowed) in [(22, true), (8080, true), (9090, false)] {
        let d = host.ingress.lookup(pod, 6, port);
        assert_eq!(d.is_allowed(), allowed, "TCP {port}: {d:?}");
    }
    assert_eq!(
        host.ingress.lookup(pod, 17, 8080),
        Decision::DeniedByDefault
    );
    // `cluster` includes the other nodes.
    assert!(host
        .ingress
        .lookup(Identity::REMOTE_NODE, 6, 22)
        .is_allowed());
    assert_eq!(
        host.ingress.lookup(Identity::WORLD, 6, 22),
        Decision::DeniedByDefault
    );
    // The rule behind the entry is named.
    let Decision::Allowed { cookie, .. } = host.ingress.lookup(pod, 6, 22) else {
        panic!()
    };
    assert_eq!(e.cookie_origins(cookie)[0].rule, "spec.ingress[0]");
    assert_eq!(
        e.cookie_origins(cookie)[0].policy.name,
        "workers-ssh-and-web"
    );
}

#[test]
fn another_node_and_the_pods_are_unaffected() {
    let mut e = engine(HOST_FIREWALL);
    let other = e.host_policy(&labels(&[("role", "db")]));
    assert!(!other.ingress.enforced && !other.egress.enforced);
    assert!(other.ingress.map.is_empty());
    // A pod whose labels match the node selector is not a node: its maps are not enforced.
    let a = e.endpoint("x/a").unwrap();
    assert!(!a.ingress.enforced && !a.egress.enforced);
}

#[test]
fn removing_the_policy_restores_default_allow() {
    let mut e = engine(HOST_FIREWALL);
    let worker = labels(&[("role", "worker")]);
    assert!(e.host_policy(&worker).ingress.enforced);
    let id = parse_policies("p.yaml", HOST_FIREWALL).unwrap().policies[0]
        .id
        .clone();
    assert!(e.delete_policy(&id));
    e.commit();
    assert!(!e.host_policy(&worker).ingress.enforced);
}

#[test]
fn host_egress_and_enable_default_deny() {
    let mut e = engine(
        r#"
apiVersion: cilium.io/v2
kind: CiliumClusterwideNetworkPolicy
metadata: {name: no-telnet-out}
spec:
  nodeSelector: {}
  enableDefaultDeny: {egress: false}
  egressDeny:
  - toPorts: [{ports: [{port: "23", protocol: TCP}]}]
"#,
    );
    let host = e.host_policy(&Labels::new());
    assert!(host.egress.enforced && !host.ingress.enforced);
    let pod = e.pod_identity("x/b").unwrap();
    assert!(host.egress.lookup(pod, 6, 80).is_allowed());
    assert!(matches!(
        host.egress.lookup(pod, 6, 23),
        Decision::DeniedByRule { .. }
    ));
}

#[test]
fn node_selectors_only_in_cluster_wide_policies_and_never_with_endpoint_selectors() {
    let cnp = "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: p, namespace: x}\nspec:\n  nodeSelector: {}\n  ingress: [{}]\n";
    let e = parse_policies("p.yaml", cnp).unwrap_err();
    assert!(
        e.to_string().contains("CiliumClusterwideNetworkPolicy"),
        "{e}"
    );
    let both = "apiVersion: cilium.io/v2\nkind: CiliumClusterwideNetworkPolicy\nmetadata: {name: p}\nspec:\n  nodeSelector: {}\n  endpointSelector: {}\n  ingress: [{}]\n";
    let e = parse_policies("p.yaml", both).unwrap_err();
    assert!(e.to_string().contains("not both"), "{e}");
    let neither = "apiVersion: cilium.io/v2\nkind: CiliumClusterwideNetworkPolicy\nmetadata: {name: p}\nspec:\n  ingress: [{}]\n";
    let e = parse_policies("p.yaml", neither).unwrap_err();
    assert!(e.to_string().contains("nodeSelector"), "{e}");
}

/// `policy trace` with the nodes' host policies: a node's address has a map (ingress for
/// traffic to it, egress from it), other nodes' addresses are `remote-node` to it, and a node
/// no host policy selects enforces nothing.
#[test]
fn trace_asks_the_host_policy_of_the_node_addressed() {
    use policy_compiler::trace::{host_policies, trace, trace_with_hosts, Probe};
    let mut e = engine(HOST_FIREWALL);
    let (worker, plain) = (labels(&[("role", "worker")]), labels(&[]));
    let hosts = host_policies(&mut e, [("n1", &worker), ("n2", &plain)]);
    let probe = |from: &str, to: &str, port| Probe {
        from: from.into(),
        to: to.into(),
        port,
        protocol: 6,
    };
    let t = |p: &Probe| trace_with_hosts(&e, &hosts, p).unwrap();
    let ssh = t(&probe("x/b", "node:n1", 22));
    assert!(ssh.allowed());
    assert_eq!(ssh.ingress.endpoint.as_deref(), Some("node:n1"));
    assert_eq!(ssh.ingress.rules[0].policy, "workers-ssh-and-web");
    let web = t(&probe("x/b", "192.168.0.1", 9090));
    assert!(!web.allowed());
    assert_eq!(web.ingress.reason, "default-deny");
    // Node n2 to n1: `remote-node`, which `cluster` includes.
    let peer = t(&probe("node:n2", "node:n1", 22));
    assert!(peer.allowed());
    assert_eq!(peer.ingress.remote.identity, Identity::REMOTE_NODE.0);
    // n2 is selected by nothing; without host policies, no node enforces anything.
    let open = t(&probe("x/b", "node:n2", 9090));
    assert!(open.allowed() && !open.ingress.enforced);
    assert!(trace(&e, &probe("x/b", "node:n1", 9090)).unwrap().allowed());
}
