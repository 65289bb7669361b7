//! Fuzz body for policy parsing: Kubernetes NetworkPolicy and Cilium(Clusterwide)NetworkPolicy
//! text, YAML or JSON, through `policy_compiler::parse_policies`, then compiled and traced.
//!
//! Properties (any input, read as UTF-8 with invalid bytes replaced):
//! - no panic, whatever the text;
//! - **the parse is a function of the documents' values**: the documents re-serialized as one
//!   JSON array (what `kubectl -o json` would print for them) parse to the same result: both
//!   refused with the same message, or the same policies (`Policy` equality: ids, sections,
//!   rules, peers, ports, paths) and the same warnings. This ties the YAML reader to the JSON
//!   one, and fails if a reader depends on anything but the value (text form, key order,
//!   number spelling) or if a value does not survive its JSON encoding;
//! - compiled over a small fixed cluster (two namespaces, three pods on two nodes, one with a
//!   service account), **the verdicts do not depend on the order of the policies** (every pod
//!   and two outside addresses, both ways, on 80/TCP and 53/UDP), **a pod's traffic to itself
//!   is always allowed** (loopback), and the split-identity warnings are computed without a
//!   panic.

use policy_compiler::doc::split_documents;
use policy_compiler::model::Policy;
use policy_compiler::trace::{trace, Probe};
use policy_compiler::{parse_cluster, parse_policies, Cluster, PolicyEngine};

/// Larger inputs are cut: parsing is linear, and the fuzzer gains nothing from megabytes.
const MAX_INPUT: usize = 64 * 1024;

/// The name both parses give their input, so that messages compare equal.
const SOURCE: &str = "fuzz-input";

const CLUSTER: &str = r#"
namespaces: {x: {ns: x}, y: {}}
nodes: [{name: n1, ip: 192.168.0.1}, {name: n2, ip: 192.168.0.2}]
pods:
- {namespace: x, name: a, labels: {app: a}, ip: 10.1.0.1, nodeName: n1, serviceAccountName: luke,
   ports: [{name: http, containerPort: 80}]}
- {namespace: x, name: b, labels: {app: b}, ip: 10.1.0.2, nodeName: n2}
- {namespace: y, name: a, labels: {app: a}, ip: 10.2.0.1, nodeName: n1,
   ports: [{name: dns, containerPort: 53, protocol: UDP}]}
"#;

const ENDS: [&str; 5] = ["x/a", "x/b", "y/a", "192.168.0.1", "8.8.8.8"];
const PODS: [&str; 3] = ["x/a", "x/b", "y/a"];
/// (port, protocol number).
const PORTS: [(u16, u8); 2] = [(80, 6), (53, 17)];

/// The fuzz body: see the module doc.
pub fn policy_parse(data: &[u8]) {
    let data = &data[..data.len().min(MAX_INPUT)];
    let text = String::from_utf8_lossy(data);
    let first = parse_policies(SOURCE, &text);
    let Ok(documents) = split_documents(SOURCE, &text) else {
        assert!(
            first.is_err(),
            "documents that do not split parsed as policies"
        );
        return;
    };
    let values: Vec<&serde_json::Value> = documents.iter().map(|d| &d.value).collect();
    let json = serde_json::to_string(&values).expect("a serde_json::Value always serializes");
    let second = parse_policies(SOURCE, &json);
    match (&first, &second) {
        (Ok(a), Ok(b)) => {
            assert_eq!(
                a.policies, b.policies,
                "the JSON re-encoding parsed differently:\n{json}"
            );
            let warnings = |p: &policy_compiler::ParsedPolicies| {
                p.warnings
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
            };
            assert_eq!(warnings(a), warnings(b), "warnings differ for\n{json}");
        }
        (Err(a), Err(b)) => assert_eq!(
            a.to_string(),
            b.to_string(),
            "the JSON re-encoding is refused differently:\n{json}"
        ),
        _ => panic!(
            "YAML/JSON disagree: {:?} vs {:?} for\n{json}",
            first.as_ref().map(|p| p.policies.len()),
            second.as_ref().map(|p| p.policies.len())
        ),
    }
    if let Ok(parsed) = first {
        compile_and_trace(&parsed.policies);
    }
}

/// Compiles `policies` in their order and reversed: same verdicts, loopback always allowed.
fn compile_and_trace(policies: &[Policy]) {
    let cluster = cluster();
    let Ok(forward) = PolicyEngine::build(&cluster, policies) else {
        return;
    };
    let reversed: Vec<Policy> = policies.iter().rev().cloned().collect();
    let backward = PolicyEngine::build(&cluster, &reversed)
        .expect("the same policies in another order compile too");
    let _ = forward.split_warnings();
    for from in ENDS {
        for to in ENDS {
            if !PODS.contains(&from) && !PODS.contains(&to) {
                continue;
            }
            for (port, protocol) in PORTS {
                let probe = Probe {
                    from: from.into(),
                    to: to.into(),
                    port,
                    protocol,
                };
                let a = trace(&forward, &probe).expect("the probe's ends are in the cluster");
                let b = trace(&backward, &probe).expect("the probe's ends are in the cluster");
                assert_eq!(
                    a.verdict, b.verdict,
                    "{from} -> {to} {port}/{protocol}: the policies' order changed the verdict"
                );
                if from == to {
                    assert!(a.allowed(), "{from} -> itself refused: {a:?}");
                }
            }
        }
    }
}

fn cluster() -> Cluster {
    parse_cluster("fuzz-cluster.yaml", CLUSTER).expect("the fixed cluster parses")
}
