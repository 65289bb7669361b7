//! Host policies (Cilium's host firewall) in the CLI, through the binary: `flagella policy
//! trace` to and from a node's address asks that node's host policy (offline, from the cluster
//! file's node labels; live, from the etcd node record's labels), and `flagella policy get
//! --host NODE` shows the compiled map with its rules, live (against a real etcd; skipped with a
//! message when /usr/bin/etcd is missing) and offline (`--policies/--cluster`), the two alike.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failure is a failed test

mod common;

use std::time::Duration;

use control::store::Store;
use serde_json::Value;

use common::cli::{flagella, json, ok, stderr, Dir};

/// Workers admit SSH from app=a only; egress from workers to app=b pods only on 80.
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
  - toEndpoints: [{matchLabels: {app: b}}]
    toPorts: [{ports: [{port: "80", protocol: TCP}]}]
"#;

const CLUSTER: &str = r#"
namespaces: {x: {}}
pods:
- {namespace: x, name: a, labels: {app: a}, ip: 10.1.0.1, nodeName: n1}
- {namespace: x, name: b, labels: {app: b}, ip: 10.2.0.1, nodeName: n2}
nodes:
- {name: n1, ip: 192.168.0.1, labels: {role: worker}}
- {name: n2, ip: 192.168.0.2}
"#;

/// (from, to, port, allowed, the end whose map decided)
const CASES: &[(&str, &str, u16, bool, &str)] = &[
    ("x/a", "node:n1", 22, true, "node:n1"),
    ("x/b", "node:n1", 22, false, "node:n1"),
    ("x/a", "192.168.0.1", 80, false, "node:n1"),
    ("node:n1", "x/b", 80, true, "node:n1"),
    ("node:n1", "x/b", 81, false, "node:n1"),
    ("x/b", "node:n2", 22, true, "-"),
];

fn check(results: &Value) {
    for (r, (from, to, port, allowed, at)) in results.as_array().unwrap().iter().zip(CASES) {
        let what = format!("{from} -> {to} {port}: {r}");
        assert_eq!(r["verdict"] == "allowed", *allowed, "{what}");
        let node_side = if from.starts_with("node:") {
            &r["egress"]
        } else {
            &r["ingress"]
        };
        if *at == "-" {
            assert_eq!(node_side["enforced"], false, "{what}");
        } else {
            assert_eq!(node_side["endpoint"], *at, "{what}");
            assert_eq!(node_side["enforced"], true, "{what}");
        }
    }
}

fn probes() -> String {
    let v: Vec<Value> = CASES
        .iter()
        .map(|(f, t, p, _, _)| serde_json::json!({"from": f, "to": t, "port": p}))
        .collect();
    Value::Array(v).to_string()
}

#[test]
fn offline_trace_meets_the_host_policy_of_the_nodes_labels() {
    let dir = Dir::new("flagella-host-");
    let policies = dir.file("fw.yaml", FIREWALL);
    let cluster = dir.file("cluster.yaml", CLUSTER);
    let probes = dir.file("probes.json", &probes());
    check(&json(&flagella(&[
        "policy",
        "trace",
        "--policies",
        &policies,
        "--cluster",
        &cluster,
        "--probes",
        &probes,
        "-o",
        "json",
    ])));
    let text = ok(&flagella(&[
        "policy",
        "trace",
        "--policies",
        &policies,
        "--cluster",
        &cluster,
        "--from",
        "x/b",
        "--to",
        "node:n1",
        "--port",
        "22/TCP",
    ]));
    assert!(
        text.contains("DENIED at node:n1: ingress is default-deny"),
        "{text}"
    );
    let o = flagella(&[
        "policy",
        "trace",
        "--policies",
        &policies,
        "--cluster",
        &cluster,
        "--from",
        "x/a",
        "--to",
        "node:n9",
        "--port",
        "22",
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("node:NAME"), "{}", stderr(&o));
}

/// n1's host policy: SSH in from app=a, port 80 out to app=b, each from the `workers` rule.
fn check_n1_view(view: &Value) {
    assert_eq!(view["labels"]["role"], "worker");
    for (dir, port) in [("ingress", "22"), ("egress", "80")] {
        let d = &view[dir];
        assert_eq!(d["enforced"], true, "{view:#}");
        let e = &d["entries"][0];
        assert_eq!(
            (e["protocol"].as_str(), e["ports"].as_str()),
            (Some("TCP"), Some(port))
        );
        assert_eq!(e["action"], "allow");
        assert_eq!(e["rules"][0]["policy"], "workers");
        assert_eq!(e["rules"][0]["rule"], format!("spec.{dir}[0]"));
    }
}

/// The view without identity numbers and the note that none is allocated yet (the offline
/// model numbers identities itself; here no agent allocates them in etcd).
fn without_identities(mut view: Value) -> Value {
    for dir in ["ingress", "egress"] {
        for e in view[dir]["entries"].as_array_mut().unwrap() {
            let e = e.as_object_mut().unwrap();
            e.remove("identity");
            let remote = e["remote"].as_str().unwrap();
            let labels = remote
                .split(" (no cluster-wide")
                .next()
                .unwrap()
                .to_string();
            e.insert("remote".into(), Value::from(labels));
        }
    }
    view
}

#[test]
fn offline_get_host_shows_the_host_policy_of_the_nodes_labels() {
    let dir = Dir::new("flagella-host-");
    let policies = dir.file("fw.yaml", FIREWALL);
    let cluster = dir.file("cluster.yaml", CLUSTER);
    let get = |node: &str, format: &str| {
        flagella(&[
            "policy",
            "get",
            "--host",
            node,
            "--policies",
            &policies,
            "--cluster",
            &cluster,
            "-o",
            format,
        ])
    };
    check_n1_view(&json(&get("n1", "json")));
    let text = ok(&get("n2", "text"));
    assert!(text.contains("ingress: not enforced"), "{text}");
    let text = ok(&get("n1", "text"));
    assert!(
        text.contains("CiliumClusterwideNetworkPolicy workers spec.ingress[0]"),
        "{text}"
    );
    let o = get("n9", "text");
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("cluster file"), "{}", stderr(&o));
    let o = flagella(&["policy", "get", "--host", "n1", "--cluster", &cluster]);
    assert_eq!(o.status.code(), Some(2), "--cluster alone is refused");
}

#[test]
fn live_trace_and_get_host_show_the_nodes_host_policy() {
    let Some(etcd) = common::Etcd::start() else {
        return;
    };
    let url = etcd.url.as_str();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let store = Store::connect(&[url.to_string()], Duration::from_secs(5)).await.unwrap();
        let k = |s: &str| format!("/flagella/v1/{s}");
        for (key, value) in [
            ("nodes/n1", r#"{"underlay_ip":"192.168.0.1","pod_cidrs":["10.1.0.0/24"],"labels":{"role":"worker"}}"#),
            ("nodes/n2", r#"{"underlay_ip":"192.168.0.2","pod_cidrs":["10.2.0.0/24"]}"#),
            ("namespaces/x", r#"{"labels":{}}"#),
            ("endpoints/x/a", r#"{"node":"n1","labels":{"app":"a"},"ipv4":"10.1.0.1","interface":"lxca"}"#),
            ("endpoints/x/b", r#"{"node":"n2","labels":{"app":"b"},"ipv4":"10.2.0.1","interface":"lxcb"}"#),
        ] {
            store.put(&k(key), value).await.unwrap();
        }
    });
    let dir = Dir::new("flagella-host-");
    let policies = dir.file("fw.yaml", FIREWALL);
    let probes = dir.file("probes.json", &probes());
    ok(&flagella(&[
        "--etcd", url, "policy", "import", "-f", &policies,
    ]));
    check(&json(&flagella(&[
        "--etcd", url, "policy", "trace", "--probes", &probes, "-o", "json",
    ])));

    let view = json(&flagella(&[
        "--etcd", url, "policy", "get", "--host", "n1", "-o", "json",
    ]));
    check_n1_view(&view);
    let cluster = dir.file("cluster.yaml", CLUSTER);
    let offline = json(&flagella(&[
        "policy",
        "get",
        "--host",
        "n1",
        "--policies",
        &policies,
        "--cluster",
        &cluster,
        "-o",
        "json",
    ]));
    assert_eq!(
        without_identities(offline),
        without_identities(view),
        "offline and live views of the same cluster differ"
    );
    let text = ok(&flagella(&["--etcd", url, "policy", "get", "--host", "n2"]));
    assert!(text.contains("ingress: not enforced"), "{text}");
    let text = ok(&flagella(&["--etcd", url, "policy", "get", "--host", "n1"]));
    assert!(
        text.contains("ingress: enforced, default deny, 1 entries"),
        "{text}"
    );
    assert!(
        text.contains("CiliumClusterwideNetworkPolicy workers spec.ingress[0]"),
        "{text}"
    );
    let o = flagella(&["--etcd", url, "policy", "get", "--host", "n9"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("flagella node list"), "{}", stderr(&o));
}
