//! `flagella policy trace` and `flagella endpoint create` on the three semantic areas, through
//! the binary: a pod's traffic to itself (loopback, allowed with its own detail), `host` as the
//! pod's own node and `remote-node` the others (pods on two nodes), and service accounts as the
//! identity label `io.cilium.k8s.policy.serviceaccount`; offline (cluster file `nodeName`,
//! `serviceAccountName`) and live (the etcd endpoint record's `node` and `service_account`,
//! against a real etcd; skipped with a message when /usr/bin/etcd is missing).

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failure is a failed test

mod common;

use std::process::{Command, Output};
use std::time::Duration;

use control::store::Store;
use serde_json::Value;

use common::cli::{flagella, json, ok, stderr, Dir};

/// Cilium's service-account example (L4 part): `luke` may reach `leia` on 80/TCP; `luke` may
/// also reach its own node (`host`) and nothing else.
const POLICIES: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: leia-from-luke, namespace: prod}
spec:
  endpointSelector:
    matchLabels: {io.cilium.k8s.policy.serviceaccount: leia}
  ingress:
  - fromEndpoints:
    - matchLabels: {io.cilium.k8s.policy.serviceaccount: luke}
    toPorts:
    - ports: [{port: "80", protocol: TCP}]
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: luke-out, namespace: prod}
spec:
  endpointSelector:
    matchLabels: {k8s:io.cilium.k8s.policy.serviceaccount: luke}
  egress:
  - toEntities: [host]
  - toEndpoints:
    - matchLabels: {io.cilium.k8s.policy.serviceaccount: leia}
    toPorts:
    - ports: [{port: "80", protocol: TCP}]
"#;

const CLUSTER: &str = r#"
namespaces: {prod: {}}
nodes:
- {name: n1, ip: 192.168.0.1}
- {name: n2, ip: 192.168.0.2}
pods:
- {namespace: prod, name: luke, labels: {app: jedi}, ip: 10.1.0.5, nodeName: n1, serviceAccountName: luke}
- {namespace: prod, name: imposter, labels: {app: jedi}, ip: 10.1.0.6, nodeName: n1, serviceAccountName: default}
- {namespace: prod, name: leia, labels: {app: rebel}, ip: 10.2.0.9, nodeName: n2, serviceAccountName: leia}
- {namespace: prod, name: luke2, labels: {app: jedi}, ip: 10.2.0.15, nodeName: n2, serviceAccountName: luke}
"#;

/// An ipBlock holding prod/luke but not prod/luke2, which share an identity (it selects no
/// pod: only the warning matters).
const SPLITTING: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: splits-luke, namespace: prod}
spec:
  podSelector: {matchLabels: {app: nobody}}
  policyTypes: [Egress]
  egress:
  - to: [{ipBlock: {cidr: 10.1.0.0/24}}]
"#;

/// The warning both modes give for [`SPLITTING`].
fn assert_split_warning(stderr: &str) {
    assert!(
        stderr.contains("warning: NetworkPolicy prod/splits-luke spec.egress[0]: ipBlock 10.1.0.0/24 splits identity (")
            && stderr.contains("io.cilium.k8s.policy.serviceaccount=luke")
            && stderr.contains("prod/luke inside, prod/luke2 outside"),
        "{stderr}"
    );
}

/// Where a trace reads its state: global options (`--etcd URL`) and `policy trace` options
/// (`--policies P --cluster C`).
struct Source<'a> {
    global: &'a [&'a str],
    trace: &'a [&'a str],
}

/// Traces `from -> to port` from `source`, as JSON.
fn trace(source: &Source<'_>, from: &str, to: &str, port: &str) -> Value {
    let mut args = source.global.to_vec();
    args.extend(["policy", "trace"]);
    args.extend(source.trace);
    args.extend(["--from", from, "--to", to, "--port", port, "-o", "json"]);
    json(&flagella(&args))[0].clone()
}

/// The verdicts both modes must give (from the Cilium documentation's stated behaviour).
fn check_semantics(source: &Source<'_>) {
    let r = trace(source, "prod/luke", "prod/leia", "80/TCP");
    assert_eq!(r["verdict"], "allowed", "{r}");
    assert_eq!(r["egress"]["rules"][0]["policy"], "prod/luke-out");
    assert_eq!(r["ingress"]["rules"][0]["policy"], "prod/leia-from-luke");
    // Same pod labels, another service account.
    let r = trace(source, "prod/imposter", "prod/leia", "80/TCP");
    assert_eq!(r["verdict"], "denied", "{r}");
    assert_eq!(r["ingress"]["reason"], "default-deny");
    // luke runs on n1: n1 is its host, n2 a remote node.
    let r = trace(source, "prod/luke", "192.168.0.1", "10250/TCP");
    assert_eq!(r["verdict"], "allowed", "{r}");
    assert_eq!(r["egress"]["remote"]["identity"], 1);
    let r = trace(source, "prod/luke", "192.168.0.2", "10250/TCP");
    assert_eq!(r["verdict"], "denied", "{r}");
    assert_eq!(r["egress"]["remote"]["identity"], 6);
    // Loopback, under an ingress policy that admits only luke on 80.
    let r = trace(source, "prod/leia", "10.2.0.9", "443/TCP");
    assert_eq!(r["verdict"], "allowed", "{r}");
    assert_eq!(r["detail"], "loopback: never reaches the network");
    assert_eq!(r["ingress"]["reason"], "loopback");
    assert!(r.get("detail").is_some());
    let r = trace(source, "prod/imposter", "prod/leia", "443/TCP");
    assert!(r.get("detail").is_none(), "{r}");
}

#[test]
fn offline_trace_knows_nodes_service_accounts_and_loopback() {
    let d = Dir::new("flagella-sem-offline-");
    let (c, p) = (d.file("c.yaml", CLUSTER), d.file("p.yaml", POLICIES));
    check_semantics(&Source {
        global: &[],
        trace: &["--policies", &p, "--cluster", &c],
    });
    let text = ok(&flagella(&[
        "policy",
        "trace",
        "--policies",
        &p,
        "--cluster",
        &c,
        "--from",
        "prod/leia",
        "--to",
        "prod/leia",
        "--port",
        "80/TCP",
    ]));
    assert!(
        text.starts_with(
            "prod/leia -> prod/leia 80/TCP: ALLOWED (loopback: never reaches the network)"
        ),
        "{text}"
    );
    // An ipBlock that splits an identity: trace warns.
    let q = d.file("q.yaml", SPLITTING);
    let o = flagella(&[
        "policy",
        "trace",
        "--policies",
        &p,
        "--policies",
        &q,
        "--cluster",
        &c,
        "--from",
        "prod/luke",
        "--to",
        "prod/leia",
        "--port",
        "80",
    ]);
    ok(&o);
    assert_split_warning(&stderr(&o));
    // A pod on an undeclared node, a bad service account: refused with the field.
    for (from, to, field) in [
        ("nodeName: n2", "nodeName: n9", "pods[2].nodeName"),
        (
            "serviceAccountName: leia",
            "serviceAccountName: Leia!",
            "pods[2].serviceAccountName",
        ),
    ] {
        let bad = d.file("bad.yaml", &CLUSTER.replace(from, to));
        let o = flagella(&[
            "policy",
            "trace",
            "--policies",
            &p,
            "--cluster",
            &bad,
            "--from",
            "prod/luke",
            "--to",
            "prod/leia",
            "--port",
            "80",
        ]);
        assert_eq!(o.status.code(), Some(1));
        assert!(stderr(&o).contains(field), "{}", stderr(&o));
    }
}

/// `flagella policy import -f -` with `text` on stdin.
fn import(url: &str, text: &str) -> Output {
    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_flagella"))
        .args(["--etcd", url, "policy", "import", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

async fn put(url: &str, key: &str, value: &str) {
    let store = Store::connect(&[url.to_string()], Duration::from_secs(5))
        .await
        .unwrap();
    store.put(key, value).await.unwrap();
}

async fn get(url: &str, key: &str) -> Option<Value> {
    let store = Store::connect(&[url.to_string()], Duration::from_secs(5))
        .await
        .unwrap();
    let v = store.get(key).await.unwrap()?;
    Some(serde_json::from_slice(&v.value).unwrap())
}

#[test]
fn live_trace_and_endpoint_create_carry_the_service_account() {
    let Some(etcd) = common::Etcd::start() else {
        return;
    };
    let rt = common::runtime();
    let url = etcd.url.as_str();
    let k = |s: &str| format!("/flagella/v1/{s}");
    rt.block_on(async {
        put(url, &k("nodes/n1"), r#"{"underlay_ip":"192.168.0.1","pod_cidrs":["10.1.0.0/24"]}"#).await;
        put(url, &k("nodes/n2"), r#"{"underlay_ip":"192.168.0.2","pod_cidrs":["10.2.0.0/24"]}"#).await;
        put(url, &k("namespaces/prod"), r#"{"labels":{}}"#).await;
        put(url, &k("endpoints/prod/luke"), r#"{"node":"n1","labels":{"app":"jedi"},"service_account":"luke","ipv4":"10.1.0.5","interface":"lxc5"}"#).await;
        put(url, &k("endpoints/prod/imposter"), r#"{"node":"n1","labels":{"app":"jedi"},"service_account":"default","ipv4":"10.1.0.6","interface":"lxc6"}"#).await;
        put(url, &k("endpoints/prod/leia"), r#"{"node":"n2","labels":{"app":"rebel"},"service_account":"leia","ipv4":"10.2.0.9","interface":"lxc9"}"#).await;
        put(url, &k("endpoints/prod/luke2"), r#"{"node":"n2","labels":{"app":"jedi"},"service_account":"luke","ipv4":"10.2.0.15","interface":"lxc15"}"#).await;
        // Hostile records: skipped with key and reason, the rest still traced.
        put(url, &k("endpoints/prod/bad-sa"), r#"{"node":"n2","service_account":"Not/A/Name","ipv4":"10.2.0.20","interface":"lxc20"}"#).await;
        put(url, &k("endpoints/prod/spoof"), r#"{"node":"n2","labels":{"io.cilium.k8s.policy.serviceaccount":"luke"},"ipv4":"10.2.0.21","interface":"lxc21"}"#).await;
    });
    ok(&import(url, POLICIES));
    check_semantics(&Source {
        global: &["--etcd", url],
        trace: &[],
    });
    // Importing a policy whose ipBlock splits an identity warns, and so does the trace.
    let o = import(url, SPLITTING);
    ok(&o);
    assert_split_warning(&stderr(&o));
    let o = flagella(&[
        "--etcd",
        url,
        "policy",
        "trace",
        "--from",
        "prod/luke",
        "--to",
        "prod/leia",
        "--port",
        "80",
    ]);
    ok(&o);
    assert_split_warning(&stderr(&o));
    let warnings = stderr(&o);
    assert!(
        warnings.contains("endpoints/prod/bad-sa")
            && warnings.contains("service_account")
            && warnings.contains("not a service account name"),
        "{warnings}"
    );
    assert!(
        warnings.contains("endpoints/prod/spoof") && warnings.contains("reserved"),
        "{warnings}"
    );

    // `endpoint create --service-account` writes the record's field.
    ok(&flagella(&[
        "--etcd",
        url,
        "endpoint",
        "create",
        "--node",
        "n2",
        "--namespace",
        "prod",
        "--name",
        "han",
        "--labels",
        "app=smuggler",
        "--interface",
        "lxc30",
        "--service-account",
        "han",
    ]));
    let rec = rt
        .block_on(get(url, &k("endpoints/prod/han")))
        .expect("the endpoint was written");
    assert_eq!(rec["service_account"], "han", "{rec}");
    // A bad name is a usage error; nothing is written.
    let o = flagella(&[
        "--etcd",
        url,
        "endpoint",
        "create",
        "--node",
        "n2",
        "--namespace",
        "prod",
        "--name",
        "greedo",
        "--interface",
        "lxc31",
        "--service-account",
        "Greedo",
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("not a service account name"),
        "{}",
        stderr(&o)
    );
    assert!(rt.block_on(get(url, &k("endpoints/prod/greedo"))).is_none());
}
