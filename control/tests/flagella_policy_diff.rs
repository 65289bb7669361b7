//! `flagella policy diff` and `flagella policy import --dry-run` through the binary.
//!
//! The contract checked: applying the file changes exactly the verdicts the diff lists. A
//! synthetic cluster (pods on two nodes, named ports, a CIDR with an exception) is traced with
//! `flagella policy trace --probes` over every pair of its ends and a set of ports around every
//! rule's edges, once with the policies in force and once with the file applied; the probes
//! whose verdict differs must be exactly the (pair, port) the diff's groups cover; so must a
//! host firewall's (nodes' addresses as ends). Offline from files, and live against a real etcd (skipped with a message when /usr/bin/etcd is missing),
//! where `--dry-run` must leave etcd's revision where it was.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failure is a failed test

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use control::store::Store;
use serde_json::{json, Value};

use common::cli::{flagella, json, ok, stderr, Dir};

const CLUSTER: &str = r#"
namespaces: {x: {team: x}, y: {team: y}}
pods:
- {namespace: x, name: a, labels: {app: a}, ip: 10.1.0.1, nodeName: n1}
- {namespace: x, name: b, labels: {app: b}, ip: 10.1.0.2, nodeName: n2}
- {namespace: y, name: web1, labels: {app: web}, ip: 10.2.0.1, nodeName: n1, ports: [{name: http, containerPort: 8080}]}
- {namespace: y, name: web2, labels: {app: web}, ip: 10.2.0.2, nodeName: n2, ports: [{name: http, containerPort: 8080}]}
- {namespace: y, name: db, labels: {app: db}, ip: 10.2.0.3, nodeName: n2}
nodes: [{name: n1, ip: 192.168.0.1}, {name: n2, ip: 192.168.0.2}]
"#;

const DENY_Y: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny, namespace: y}
spec: {podSelector: {}, policyTypes: [Ingress]}
"#;

const WEB_80: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web, namespace: y}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
  - from: [{namespaceSelector: {matchLabels: {team: x}}}]
    ports: [{port: 80}]
"#;

/// The file previewed: replaces `y/web` (named port, only app=a) and adds an egress policy
/// with a CIDR and an exception.
const NEW: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web, namespace: y}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
  - from: [{namespaceSelector: {matchLabels: {team: x}}, podSelector: {matchLabels: {app: a}}}]
    ports: [{port: http}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: egress-b, namespace: x}
spec:
  podSelector: {matchLabels: {app: b}}
  policyTypes: [Egress]
  egress:
  - to: [{ipBlock: {cidr: 10.2.0.0/16, except: [10.2.0.3/32]}}]
    ports: [{port: 53, protocol: UDP}]
"#;

/// `y/web` as the file leaves it and the unchanged `y/deny`: the policies after applying NEW.
fn after_policies() -> String {
    format!("{DENY_Y}---{NEW}")
}

const ENDS: &[&str] = &[
    "x/a",
    "x/b",
    "y/web1",
    "y/web2",
    "y/db",
    "192.168.0.1",
    "192.168.0.2",
    "10.2.0.0",
    "192.0.2.1",
];
const PORTS: &[u16] = &[1, 52, 53, 54, 79, 80, 81, 8079, 8080, 8081, 65535];

/// Every probe between two different `ends`, TCP and UDP, on `ports`.
fn probes(ends: &[&str], ports: &[u16]) -> Vec<Value> {
    let mut out = Vec::new();
    for from in ends {
        for to in ends {
            if from == to {
                continue;
            }
            for proto in ["TCP", "UDP"] {
                for port in ports {
                    out.push(json!({"from": from, "to": to, "port": port, "protocol": proto}));
                }
            }
        }
    }
    out
}

type Flow = (String, String, u16, String);

fn flow_of(v: &Value) -> Flow {
    (
        v["from"].as_str().unwrap().to_string(),
        v["to"].as_str().unwrap().to_string(),
        v["port"].as_u64().unwrap() as u16,
        v["protocol"].as_str().unwrap().to_string(),
    )
}

/// Offline, over the probe file: the flows whose `policy trace` verdict changes from the
/// `current` policies to the `after` ones, and `policy diff -f new` against `current` (JSON).
fn offline_trace_and_diff(
    current: &str,
    after: &str,
    new: &str,
    cluster: &str,
    probes: &str,
) -> (BTreeSet<Flow>, Value) {
    let trace = |policies: &str| {
        json(&flagella(&[
            "policy",
            "trace",
            "--policies",
            policies,
            "--cluster",
            cluster,
            "--probes",
            probes,
            "-o",
            "json",
        ]))
    };
    let expected = changed(&trace(current), &trace(after));
    let report = json(&flagella(&[
        "policy",
        "diff",
        "-f",
        new,
        "--policies",
        current,
        "--cluster",
        cluster,
        "-o",
        "json",
    ]));
    (expected, report)
}

/// The probes whose verdict differs between two `policy trace -o json` answers.
fn changed(before: &Value, after: &Value) -> BTreeSet<Flow> {
    let (b, a) = (before.as_array().unwrap(), after.as_array().unwrap());
    assert_eq!(b.len(), a.len());
    b.iter()
        .zip(a)
        .filter(|(b, a)| b["verdict"] != a["verdict"])
        .map(|(b, _)| flow_of(b))
        .collect()
}

/// The probes on `ports` a diff report's groups cover.
fn covered(report: &Value, ports: &[u16]) -> BTreeSet<Flow> {
    let mut out = BTreeSet::new();
    for c in report["changes"].as_array().unwrap() {
        let (lo, hi) = (
            c["portFrom"].as_u64().unwrap(),
            c["portTo"].as_u64().unwrap(),
        );
        let proto = c["protocol"].as_str().unwrap();
        for f in c["flows"].as_array().unwrap() {
            for port in ports {
                if (lo..=hi).contains(&u64::from(*port)) {
                    out.insert((
                        f[0].as_str().unwrap().to_string(),
                        f[1].as_str().unwrap().to_string(),
                        *port,
                        proto.to_string(),
                    ));
                }
            }
        }
    }
    out
}

/// Keeps only the flows between `ends` (what both the test and the diff enumerate).
fn between(flows: BTreeSet<Flow>, ends: &[&str]) -> BTreeSet<Flow> {
    flows
        .into_iter()
        .filter(|(f, t, _, _)| ends.contains(&f.as_str()) && ends.contains(&t.as_str()))
        .collect()
}

#[test]
fn offline_diff_lists_exactly_the_verdicts_that_change() {
    let dir = Dir::new("flagella-diff-");
    let cluster = dir.file("cluster.yaml", CLUSTER);
    let current = dir.file("current.yaml", &format!("{DENY_Y}---{WEB_80}"));
    let after = dir.file("after.yaml", &after_policies());
    let new = dir.file("new.yaml", NEW);
    let probes = dir.file(
        "probes.json",
        &Value::Array(probes(ENDS, PORTS)).to_string(),
    );
    let (expected, report) = offline_trace_and_diff(&current, &after, &new, &cluster, &probes);
    assert!(!expected.is_empty());
    assert_eq!(
        between(covered(&report, PORTS), ENDS),
        expected,
        "{report:#}"
    );
    // The groups are sorted by blast radius and say why.
    let radius: Vec<u64> = report["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let ports = c["portTo"].as_u64().unwrap() - c["portFrom"].as_u64().unwrap() + 1;
            c["flows"].as_array().unwrap().len() as u64 * ports
        })
        .collect();
    assert!(radius.windows(2).all(|w| w[0] >= w[1]), "{radius:?}");
    let named = report["changes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["change"] == "newly-allowed" && c["portFrom"] == 8080)
        .expect("8080 (the named port http) is newly allowed from x/a");
    assert_eq!(named["destinationPods"], 2);
    assert_eq!(named["because"][0], "NetworkPolicy y/web spec.ingress[0]");
    // The text report: a table and a summary.
    let text = ok(&flagella(&[
        "policy",
        "diff",
        "-f",
        &new,
        "--policies",
        &current,
        "--cluster",
        &cluster,
    ]));
    assert!(
        text.contains("newly-allowed") && text.contains("8080/TCP"),
        "{text}"
    );
    assert!(
        text.contains("change verdict if the 2 policies of"),
        "{text}"
    );
    // The file against itself changes nothing.
    let same = ok(&flagella(&[
        "policy",
        "diff",
        "-f",
        &after,
        "--policies",
        &after,
        "--cluster",
        &cluster,
    ]));
    assert!(same.starts_with("no flow changes verdict"), "{same}");
}

#[test]
fn a_bad_file_or_missing_cluster_says_what_to_fix() {
    let dir = Dir::new("flagella-diff-");
    let cluster = dir.file("cluster.yaml", CLUSTER);
    let bad = dir.file("bad.yaml", &NEW.replace("port: 53", "port: 530000"));
    let o = flagella(&["policy", "diff", "-f", &bad, "--cluster", &cluster]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("document 2"), "{}", stderr(&o));
    let o = flagella(&["policy", "diff", "-f", &bad, "--policies", &bad]);
    assert_eq!(o.status.code(), Some(2), "--policies needs --cluster");
    let help = ok(&flagella(&["policy", "diff", "--help"]));
    assert!(
        help.contains("blast radius") && help.contains("EXAMPLES"),
        "{help}"
    );
}

async fn put(store: &Store, key: &str, value: &str) {
    store.put(key, value).await.unwrap();
}

/// The cluster of CLUSTER as etcd records.
async fn fill(store: &Store) {
    let k = |s: &str| format!("/flagella/v1/{s}");
    put(
        store,
        &k("nodes/n1"),
        r#"{"underlay_ip":"192.168.0.1","pod_cidrs":["10.1.0.0/24"]}"#,
    )
    .await;
    put(
        store,
        &k("nodes/n2"),
        r#"{"underlay_ip":"192.168.0.2","pod_cidrs":["10.2.0.0/24"]}"#,
    )
    .await;
    put(store, &k("namespaces/x"), r#"{"labels":{"team":"x"}}"#).await;
    put(store, &k("namespaces/y"), r#"{"labels":{"team":"y"}}"#).await;
    let ep = |node: &str, app: &str, ip: &str, ports: &str| {
        format!(
            r#"{{"node":"{node}","labels":{{"app":"{app}"}},"ipv4":"{ip}","interface":"lxc{app}"{ports}}}"#
        )
    };
    let http = r#","ports":[{"name":"http","port":8080,"protocol":"tcp"}]"#;
    put(store, &k("endpoints/x/a"), &ep("n1", "a", "10.1.0.1", "")).await;
    put(store, &k("endpoints/x/b"), &ep("n2", "b", "10.1.0.2", "")).await;
    put(
        store,
        &k("endpoints/y/web1"),
        &ep("n1", "web", "10.2.0.1", http),
    )
    .await;
    put(
        store,
        &k("endpoints/y/web2"),
        &ep("n2", "web", "10.2.0.2", http),
    )
    .await;
    put(store, &k("endpoints/y/db"), &ep("n2", "db", "10.2.0.3", "")).await;
}

#[test]
fn live_diff_and_dry_run_write_nothing_and_match_the_import() {
    let Some(etcd) = common::Etcd::start() else {
        return;
    };
    let url = etcd.url.as_str();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let store = rt
        .block_on(Store::connect(&[url.to_string()], Duration::from_secs(5)))
        .unwrap();
    rt.block_on(fill(&store));
    let dir = Dir::new("flagella-diff-");
    let current = dir.file("current.yaml", &format!("{DENY_Y}---{WEB_80}"));
    let new = dir.file("new.yaml", NEW);
    let probes = dir.file(
        "probes.json",
        &Value::Array(probes(ENDS, PORTS)).to_string(),
    );
    ok(&flagella(&[
        "--etcd", url, "policy", "import", "-f", &current,
    ]));
    let revision = || rt.block_on(store.list("/flagella/")).unwrap().1;
    let trace = || {
        json(&flagella(&[
            "--etcd", url, "policy", "trace", "--probes", &probes, "-o", "json",
        ]))
    };
    let before = trace();

    let at = revision();
    let diff = json(&flagella(&[
        "--etcd", url, "policy", "diff", "-f", &new, "-o", "json",
    ]));
    let dry = json(&flagella(&[
        "--etcd",
        url,
        "policy",
        "import",
        "-f",
        &new,
        "--dry-run",
        "-o",
        "json",
    ]));
    assert_eq!(revision(), at, "diff and --dry-run write nothing");
    assert_eq!(dry["dry_run"], true);
    assert_eq!(
        dry["changes"], diff["changes"],
        "--dry-run shows what diff shows"
    );
    let text = ok(&flagella(&[
        "--etcd",
        url,
        "policy",
        "import",
        "-f",
        &new,
        "--dry-run",
    ]));
    assert!(
        text.contains("would import 2 policies") && text.contains("newly-denied"),
        "{text}"
    );

    ok(&flagella(&["--etcd", url, "policy", "import", "-f", &new]));
    let expected = changed(&before, &trace());
    assert!(!expected.is_empty());
    assert_eq!(between(covered(&diff, PORTS), ENDS), expected, "{diff:#}");
}

/// A host firewall for the nodes labelled `role: worker` (n1 only): SSH from app=a, and the
/// node's own connections only to app=web on 8080.
const FIREWALL: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumClusterwideNetworkPolicy
metadata: {name: workers}
spec:
  nodeSelector: {matchLabels: {role: worker}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: a}}]
    toPorts: [{ports: [{port: "22", protocol: TCP}]}]
  egress:
  - toEndpoints: [{matchLabels: {app: web}}]
    toPorts: [{ports: [{port: "8080", protocol: TCP}]}]
"#;

#[test]
fn offline_diff_of_a_host_firewall_lists_exactly_the_verdicts_that_change() {
    let dir = Dir::new("flagella-diff-");
    let cluster = dir.file(
        "cluster.yaml",
        &CLUSTER.replace(
            "{name: n1, ip: 192.168.0.1}",
            "{name: n1, ip: 192.168.0.1, labels: {role: worker}}",
        ),
    );
    let current = dir.file("current.yaml", DENY_Y);
    let after = dir.file("after.yaml", &format!("{DENY_Y}---{FIREWALL}"));
    let new = dir.file("fw.yaml", FIREWALL);
    let ends = [
        "x/a",
        "x/b",
        "y/web1",
        "192.168.0.1",
        "192.168.0.2",
        "192.0.2.1",
    ];
    let ports = [1, 21, 22, 23, 8079, 8080, 8081, 65535];
    let probes = dir.file(
        "probes.json",
        &Value::Array(probes(&ends, &ports)).to_string(),
    );
    let (expected, report) = offline_trace_and_diff(&current, &after, &new, &cluster, &probes);
    assert!(expected.contains(&("x/b".into(), "192.168.0.1".into(), 22, "TCP".into())));
    assert!(expected.contains(&("192.168.0.2".into(), "192.168.0.1".into(), 22, "TCP".into())));
    assert_eq!(
        between(covered(&report, &ports), &ends),
        expected,
        "{report:#}"
    );
    assert!(report["changes"]
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c["because"]
            .as_array()
            .unwrap()
            .iter()
            .any(|b| b == "default-deny at node:n1 (ingress)")));
}
