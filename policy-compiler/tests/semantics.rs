//! Conformance of the three semantic areas `policy trace` once got wrong, each written from the
//! documentation's stated behaviour, through the trace's library entry point (cluster file ->
//! compiled maps -> the dataplane's lookup):
//! - a pod's traffic to its own address is allowed under any policy, with the distinct detail
//!   "loopback: never reaches the network" (the pod's kernel routes its own address over `lo`);
//! - `host` is the node hosting the endpoint and `remote-node` every other node (Cilium's
//!   "Entities Based" policy documentation), with pods on two nodes;
//! - `io.cilium.k8s.policy.serviceaccount` is an identity label derived from the pod's service
//!   account, and policies select on it in ingress and egress (Cilium's "Service Accounts"
//!   example: pods running as `luke` may reach pods running as `leia` on 80/TCP).

#![allow(clippy::unwrap_used)] // a test: a failed unwrap is a failed test

use policy_compiler::trace::{explain, parse_port_proto, trace, Probe, TraceResult, LOOPBACK};
use policy_compiler::{parse_cluster, parse_policies, PolicyEngine};

/// Two nodes; x/a and x/luke on n1, x/b and x/leia on n2; x/c with no node; x/imposter has
/// x/luke's pod labels but not its service account.
const CLUSTER: &str = r#"
namespaces:
  x: {}
nodes:
- {name: n1, ip: 192.168.0.1}
- {name: n2, ip: 192.168.0.2}
pods:
- {namespace: x, name: a, labels: {app: a}, ip: 10.1.0.1, nodeName: n1}
- {namespace: x, name: b, labels: {app: b}, ip: 10.2.0.1, nodeName: n2}
- {namespace: x, name: c, labels: {app: c}, ip: 10.1.0.3}
- {namespace: x, name: luke, labels: {app: jedi}, ip: 10.1.0.10, nodeName: n1, serviceAccountName: luke}
- {namespace: x, name: imposter, labels: {app: jedi}, ip: 10.1.0.11, nodeName: n1, serviceAccountName: default}
- {namespace: x, name: leia, labels: {app: rebel}, ip: 10.2.0.10, nodeName: n2, serviceAccountName: leia}
"#;

fn engine(policies: &str) -> PolicyEngine {
    let cluster = parse_cluster("cluster.yaml", CLUSTER).unwrap();
    let parsed = parse_policies("policies.yaml", policies).unwrap();
    assert!(parsed.warnings.is_empty(), "{:?}", parsed.warnings);
    PolicyEngine::build(&cluster, &parsed.policies).unwrap()
}

fn run(e: &PolicyEngine, from: &str, to: &str, port: &str) -> TraceResult {
    let (port, protocol) = parse_port_proto(port).unwrap();
    trace(
        e,
        &Probe {
            from: from.into(),
            to: to.into(),
            port,
            protocol,
        },
    )
    .unwrap()
}

fn allowed(e: &PolicyEngine, from: &str, to: &str, port: &str) -> bool {
    run(e, from, to, port).allowed()
}

// ---- loopback ------------------------------------------------------------------------------

const DEFAULT_DENY_BOTH: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: default-deny, namespace: x}
spec:
  podSelector: {}
  policyTypes: [Ingress, Egress]
"#;

const ALLOW_B_TO_A_ON_80: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: a-from-b, namespace: x}
spec:
  podSelector: {matchLabels: {app: a}}
  policyTypes: [Ingress, Egress]
  ingress:
  - from: [{podSelector: {matchLabels: {app: b}}}]
    ports: [{port: 80}]
"#;

const CILIUM_DENY_ALL: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: deny-all, namespace: x}
spec:
  endpointSelector: {}
  ingressDeny: [{fromEntities: [all]}]
  egressDeny: [{toEntities: [all]}]
"#;

fn assert_loopback(e: &PolicyEngine, from: &str, to: &str, port: &str) {
    let r = run(e, from, to, port);
    assert!(r.allowed(), "{from} -> {to} {port}: {}", explain(&r));
    assert_eq!(r.detail, Some(LOOPBACK));
    assert_eq!(r.egress.reason, "loopback");
    assert_eq!(r.ingress.reason, "loopback");
    assert!(r.egress.rules.is_empty() && r.ingress.rules.is_empty());
    assert!(
        explain(&r).contains("ALLOWED (loopback: never reaches the network)"),
        "{}",
        explain(&r)
    );
}

#[test]
fn self_traffic_is_allowed_under_default_deny() {
    let e = engine(DEFAULT_DENY_BOTH);
    for port in ["80/TCP", "81/UDP", "3868/SCTP"] {
        assert_loopback(&e, "x/a", "x/a", port);
        // By address too, either way round.
        assert_loopback(&e, "x/a", "10.1.0.1", port);
        assert_loopback(&e, "10.1.0.1", "x/a", port);
    }
    let r = run(&e, "x/a", "x/a", "80/TCP");
    assert!(r.egress.enforced && r.ingress.enforced);
    // The policy is in force for everyone else.
    let other = run(&e, "x/b", "x/a", "80/TCP");
    assert!(!other.allowed());
    assert_eq!(other.detail, None);
    assert!(!allowed(&e, "x/a", "x/b", "80/TCP"));
}

#[test]
fn self_traffic_is_allowed_under_an_allow_list_that_omits_the_pod() {
    let e = engine(ALLOW_B_TO_A_ON_80);
    assert!(allowed(&e, "x/b", "x/a", "80/TCP"));
    assert!(!allowed(&e, "x/b", "x/a", "81/TCP"));
    assert!(!allowed(&e, "x/c", "x/a", "80/TCP"));
    assert_loopback(&e, "x/a", "x/a", "80/TCP");
    assert_loopback(&e, "x/a", "x/a", "81/TCP");
}

#[test]
fn self_traffic_is_allowed_even_under_an_explicit_deny() {
    let e = engine(CILIUM_DENY_ALL);
    assert_loopback(&e, "x/b", "x/b", "80/TCP");
    let r = run(&e, "x/a", "x/b", "80/TCP");
    assert!(!r.allowed());
    assert_eq!(r.egress.reason, "deny-rule");
}

#[test]
fn pods_sharing_an_identity_are_not_loopback() {
    // x/luke and x/imposter differ only by service account; two pods of one identity (here
    // two replicas of b) still cross the network.
    let cluster = CLUSTER.replace(
        "- {namespace: x, name: c, labels: {app: c}",
        "- {namespace: x, name: c, labels: {app: b}",
    );
    let cluster = parse_cluster("cluster.yaml", &cluster).unwrap();
    let parsed = parse_policies("p.yaml", DEFAULT_DENY_BOTH).unwrap();
    let e = PolicyEngine::build(&cluster, &parsed.policies).unwrap();
    assert_eq!(e.pod_identity("x/b"), e.pod_identity("x/c"));
    let r = run(&e, "x/b", "x/c", "80/TCP");
    assert!(!r.allowed());
    assert_eq!(r.detail, None);
}

// ---- host and remote-node -------------------------------------------------------------------

const EGRESS_TO_HOST: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: to-host, namespace: x}
spec:
  endpointSelector: {}
  egress: [{toEntities: [host]}]
"#;

const EGRESS_TO_REMOTE_NODE: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: to-remote-node, namespace: x}
spec:
  endpointSelector: {}
  egress: [{toEntities: [remote-node]}]
"#;

const INGRESS_FROM_REMOTE_NODE: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: from-remote-node, namespace: x}
spec:
  endpointSelector: {}
  ingress: [{fromEntities: [remote-node]}]
"#;

#[test]
fn to_entities_host_admits_only_the_pods_own_node() {
    let e = engine(EGRESS_TO_HOST);
    // x/a runs on n1, x/b on n2: each reaches its own node only.
    let r = run(&e, "x/a", "192.168.0.1", "10250/TCP");
    assert!(r.allowed(), "{}", explain(&r));
    assert_eq!(r.egress.remote.description, "reserved:host");
    assert_eq!(r.egress.reason, "allow-rule");
    let r = run(&e, "x/a", "192.168.0.2", "10250/TCP");
    assert!(!r.allowed(), "{}", explain(&r));
    assert_eq!(r.egress.remote.description, "reserved:remote-node");
    assert!(allowed(&e, "x/b", "192.168.0.2", "10250/TCP"));
    assert!(!allowed(&e, "x/b", "192.168.0.1", "10250/TCP"));
    // A pod whose node is unknown has no `host` among the nodes.
    assert!(!allowed(&e, "x/c", "192.168.0.1", "10250/TCP"));
    assert!(!allowed(&e, "x/c", "192.168.0.2", "10250/TCP"));
    // Pods are not `host`.
    assert!(!allowed(&e, "x/a", "x/luke", "80/TCP"));
}

#[test]
fn to_entities_remote_node_admits_only_the_other_nodes() {
    let e = engine(EGRESS_TO_REMOTE_NODE);
    assert!(!allowed(&e, "x/a", "192.168.0.1", "10250/TCP"));
    assert!(allowed(&e, "x/a", "192.168.0.2", "10250/TCP"));
    assert!(allowed(&e, "x/b", "192.168.0.1", "10250/TCP"));
    assert!(!allowed(&e, "x/b", "192.168.0.2", "10250/TCP"));
}

#[test]
fn ingress_from_nodes_own_host_always_other_nodes_only_when_allowed() {
    // Default deny ingress for x: the pod's own node is admitted (allow-localhost), the
    // other node is not.
    let e = engine(DEFAULT_DENY_BOTH);
    let r = run(&e, "192.168.0.1", "x/a", "8080/TCP");
    assert!(r.allowed(), "{}", explain(&r));
    assert_eq!(r.ingress.remote.description, "reserved:host");
    let r = run(&e, "192.168.0.2", "x/a", "8080/TCP");
    assert!(!r.allowed(), "{}", explain(&r));
    assert_eq!(r.ingress.remote.description, "reserved:remote-node");
    assert!(allowed(&e, "192.168.0.2", "x/b", "8080/TCP"));
    assert!(!allowed(&e, "192.168.0.1", "x/b", "8080/TCP"));
    // fromEntities remote-node admits the other node.
    let e = engine(INGRESS_FROM_REMOTE_NODE);
    assert!(allowed(&e, "192.168.0.2", "x/a", "8080/TCP"));
    assert!(allowed(&e, "192.168.0.1", "x/b", "8080/TCP"));
}

// ---- service accounts -----------------------------------------------------------------------

/// Cilium's documentation example, L4 part: pods running as `luke` may reach pods running as
/// `leia` on 80/TCP (the `k8s:` source prefix on one of the two keys, as users write it).
const LEIA_FROM_LUKE: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: k8s-svc-account, namespace: x}
spec:
  endpointSelector:
    matchLabels: {io.cilium.k8s.policy.serviceaccount: leia}
  ingress:
  - fromEndpoints:
    - matchLabels: {k8s:io.cilium.k8s.policy.serviceaccount: luke}
    toPorts:
    - ports: [{port: "80", protocol: TCP}]
"#;

const LUKE_TO_LEIA: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: luke-egress, namespace: x}
spec:
  endpointSelector:
    matchLabels: {io.cilium.k8s.policy.serviceaccount: luke}
  egress:
  - toEndpoints:
    - matchLabels: {io.cilium.k8s.policy.serviceaccount: leia}
    toPorts:
    - ports: [{port: "80", protocol: TCP}]
"#;

#[test]
fn service_accounts_are_identity_labels() {
    let e = engine("");
    assert_ne!(e.pod_identity("x/luke"), e.pod_identity("x/imposter"));
    let luke = e.pod_identity("x/luke").unwrap();
    assert!(
        e.identities()
            .describe(luke)
            .contains("io.cilium.k8s.policy.serviceaccount=luke"),
        "{}",
        e.identities().describe(luke)
    );
}

#[test]
fn ingress_selects_on_the_service_account() {
    let e = engine(LEIA_FROM_LUKE);
    let r = run(&e, "x/luke", "x/leia", "80/TCP");
    assert!(r.allowed(), "{}", explain(&r));
    assert_eq!(r.ingress.rules[0].policy, "x/k8s-svc-account");
    // Same pod labels, another service account: refused.
    assert!(!allowed(&e, "x/imposter", "x/leia", "80/TCP"));
    assert!(!allowed(&e, "x/a", "x/leia", "80/TCP"));
    assert!(!allowed(&e, "x/luke", "x/leia", "81/TCP"));
    // Only leia's pods are subjects.
    assert!(allowed(&e, "x/a", "x/imposter", "80/TCP"));
}

#[test]
fn egress_selects_on_the_service_account() {
    let e = engine(LUKE_TO_LEIA);
    let r = run(&e, "x/luke", "x/leia", "80/TCP");
    assert!(r.allowed(), "{}", explain(&r));
    assert_eq!(r.egress.rules[0].policy, "x/luke-egress");
    assert!(!allowed(&e, "x/luke", "x/b", "80/TCP"));
    assert!(!allowed(&e, "x/luke", "x/leia", "81/TCP"));
    // The imposter is not a subject: its egress is not enforced.
    assert!(allowed(&e, "x/imposter", "x/b", "80/TCP"));
    assert!(!run(&e, "x/imposter", "x/b", "80/TCP").egress.enforced);
}
