//! The `flagella` binary against a real etcd: policy import (kubectl-style Lists in YAML and
//! JSON, a CiliumNetworkPolicy), a malformed file that writes nothing, get/delete round trips,
//! services, status counts, endpoints/nodes/identities, live trace, and the `-o json` shapes.
//! Skipped with a message when /usr/bin/etcd is missing.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failure is a failed test

mod common;

use std::io::Write;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use control::store::Store;
use serde_json::Value;

use common::cli::{json, ok, stderr};

const NP_LIST_YAML: &str = r#"apiVersion: v1
items:
- apiVersion: networking.k8s.io/v1
  kind: NetworkPolicy
  metadata:
    annotations:
      kubectl.kubernetes.io/last-applied-configuration: |
        {"apiVersion":"networking.k8s.io/v1","kind":"NetworkPolicy","metadata":{"annotations":{},"name":"deny-all","namespace":"prod"},"spec":{"podSelector":{},"policyTypes":["Ingress"]}}
    creationTimestamp: "2024-05-01T10:00:00Z"
    generation: 1
    name: deny-all
    namespace: prod
    resourceVersion: "1234"
    uid: 6f1c2a9e-1111-4c1d-9a2b-0123456789ab
  spec:
    podSelector: {}
    policyTypes:
    - Ingress
- apiVersion: networking.k8s.io/v1
  kind: NetworkPolicy
  metadata:
    creationTimestamp: "2024-05-01T10:00:01Z"
    generation: 1
    name: allow-web
    namespace: prod
    resourceVersion: "1235"
    uid: 6f1c2a9e-2222-4c1d-9a2b-0123456789ab
  spec:
    ingress:
    - from:
      - podSelector:
          matchLabels:
            app: client
      ports:
      - port: 80
        protocol: TCP
    podSelector:
      matchLabels:
        app: web
    policyTypes:
    - Ingress
- apiVersion: networking.k8s.io/v1
  kind: NetworkPolicy
  metadata:
    name: allow-dns
    namespace: kube-system
    resourceVersion: "1236"
  spec:
    podSelector: {}
    egress:
    - ports:
      - port: 53
        protocol: UDP
    policyTypes:
    - Egress
kind: List
metadata:
  resourceVersion: ""
"#;

const NP_LIST_JSON: &str = r#"{
    "apiVersion": "v1",
    "items": [
        {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": {"name": "j1", "namespace": "dev", "resourceVersion": "10", "uid": "a"},
            "spec": {"podSelector": {}, "policyTypes": ["Ingress"]}
        },
        {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": {"name": "j2", "namespace": "dev", "resourceVersion": "11", "uid": "b"},
            "spec": {"podSelector": {"matchLabels": {"app": "x"}},
                     "ingress": [{"ports": [{"port": 8080, "protocol": "TCP"}]}]}
        }
    ],
    "kind": "List",
    "metadata": {"resourceVersion": ""}
}"#;

const CNP: &str = r#"apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: web-from-client
  namespace: prod
spec:
  endpointSelector:
    matchLabels: {app: web}
  ingress:
  - fromEndpoints:
    - matchLabels: {app: client}
    toPorts:
    - ports: [{port: "443", protocol: TCP}]
"#;

fn flagella(etcd: &str, args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_flagella"))
        .arg("--etcd")
        .arg(etcd)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    if let Some(text) = stdin {
        input.write_all(text.as_bytes()).unwrap();
    }
    drop(input);
    child.wait_with_output().unwrap()
}

async fn keys(url: &str, prefix: &str) -> Vec<String> {
    let store = Store::connect(&[url.to_string()], Duration::from_secs(5))
        .await
        .unwrap();
    let (kvs, _) = store.list(prefix).await.unwrap();
    kvs.into_iter().map(|kv| kv.key).collect()
}

async fn put(url: &str, key: &str, value: &str) {
    let store = Store::connect(&[url.to_string()], Duration::from_secs(5))
        .await
        .unwrap();
    store.put(key, value).await.unwrap();
}

const POLICIES: &str = "/flagella/v1/policies/";

#[test]
fn import_get_delete_round_trip() {
    let Some(etcd) = common::Etcd::start() else {
        return;
    };
    let rt = common::runtime();
    let url = etcd.url.as_str();

    // A kubectl-style YAML List from stdin: every policy stored under its key.
    let out = ok(&flagella(
        url,
        &["policy", "import", "-f", "-"],
        Some(NP_LIST_YAML),
    ));
    assert!(out.contains("imported 3 policies"), "{out}");
    assert_eq!(
        rt.block_on(keys(url, POLICIES)),
        [
            "/flagella/v1/policies/NetworkPolicy/kube-system/allow-dns",
            "/flagella/v1/policies/NetworkPolicy/prod/allow-web",
            "/flagella/v1/policies/NetworkPolicy/prod/deny-all",
        ]
    );

    // The JSON List and a CiliumNetworkPolicy from files; -o json reports what was imported.
    let dir = testkit::private_dir("flagella-cli-");
    let jf = dir.join("np.json");
    std::fs::write(&jf, NP_LIST_JSON).unwrap();
    let report = json(&flagella(
        url,
        &["policy", "import", "-f", jf.to_str().unwrap(), "-o", "json"],
        None,
    ));
    assert_eq!(report["imported"].as_array().unwrap().len(), 2);
    assert_eq!(report["imported"][0]["kind"], "NetworkPolicy");
    assert_eq!(report["imported"][0]["namespace"], "dev");
    assert_eq!(report["imported"][0]["name"], "j1");
    assert_eq!(
        report["imported"][0]["key"],
        "/flagella/v1/policies/NetworkPolicy/dev/j1"
    );
    assert_eq!(report["dry_run"], false);
    ok(&flagella(url, &["policy", "import", "-f", "-"], Some(CNP)));
    assert_eq!(rt.block_on(keys(url, POLICIES)).len(), 6);

    // get: the table, one object, and a List that import reads back.
    let table = ok(&flagella(url, &["policy", "get"], None));
    assert!(table.starts_with("KIND"), "{table}");
    assert!(
        table
            .lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>()
                == ["CiliumNetworkPolicy", "prod", "web-from-client"]),
        "{table}"
    );
    let one = json(&flagella(
        url,
        &["policy", "get", "prod/deny-all", "-o", "json"],
        None,
    ));
    assert_eq!(
        one["metadata"]["uid"],
        "6f1c2a9e-1111-4c1d-9a2b-0123456789ab"
    );
    assert_eq!(one["spec"]["policyTypes"][0], "Ingress");
    let list = json(&flagella(url, &["policy", "get", "-o", "json"], None));
    assert_eq!(list["kind"], "List");
    assert_eq!(list["items"].as_array().unwrap().len(), 6);

    // delete, then get of it fails with exit 1 and a hint.
    let del = json(&flagella(
        url,
        &["policy", "delete", "prod/deny-all", "-o", "json"],
        None,
    ));
    assert_eq!(
        del["key"],
        "/flagella/v1/policies/NetworkPolicy/prod/deny-all"
    );
    let o = flagella(url, &["policy", "get", "prod/deny-all"], None);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("flagella policy get"), "{}", stderr(&o));
    let o = flagella(url, &["policy", "delete", "prod/deny-all"], None);
    assert_eq!(o.status.code(), Some(1));

    // Re-import what `get -o json` printed: the deleted one is not there, the rest unchanged.
    let listed = serde_json::to_string(&list).unwrap();
    let o = ok(&flagella(
        url,
        &["policy", "import", "-f", "-"],
        Some(&listed),
    ));
    assert!(o.contains("imported 6 policies"), "{o}");
    assert_eq!(rt.block_on(keys(url, POLICIES)).len(), 6);

    // Two kinds with one name: delete asks for --kind.
    let np_same_name = CNP
        .replace("cilium.io/v2", "networking.k8s.io/v1")
        .replace("CiliumNetworkPolicy", "NetworkPolicy")
        .replace(
            "spec:\n  endpointSelector:\n    matchLabels: {app: web}\n  ingress:\n  - fromEndpoints:\n    - matchLabels: {app: client}\n    toPorts:\n    - ports: [{port: \"443\", protocol: TCP}]\n",
            "spec:\n  podSelector: {}\n",
        );
    ok(&flagella(
        url,
        &["policy", "import", "-f", "-"],
        Some(&np_same_name),
    ));
    let o = flagella(url, &["policy", "delete", "prod/web-from-client"], None);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("--kind"), "{}", stderr(&o));
    ok(&flagella(
        url,
        &["policy", "delete", "prod/web-from-client", "--kind", "cnp"],
        None,
    ));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_malformed_file_writes_nothing_and_names_the_document_and_field() {
    let Some(etcd) = common::Etcd::start() else {
        return;
    };
    let rt = common::runtime();
    let url = etcd.url.as_str();
    // The third document of the List has a bad port; the first two are fine.
    let bad = NP_LIST_YAML.replace("port: 53", "port: 530000");
    let o = flagella(url, &["policy", "import", "-f", "-"], Some(&bad));
    assert_eq!(o.status.code(), Some(1));
    let e = stderr(&o);
    assert!(e.contains("document 3"), "{e}");
    assert!(e.contains("kube-system/allow-dns"), "{e}");
    assert!(e.contains("spec.egress[0].ports[0]"), "{e}");
    assert!(e.contains("nothing was written"), "{e}");
    assert!(rt.block_on(keys(url, POLICIES)).is_empty());

    // Not YAML at all; an unknown kind; a missing file.
    let o = flagella(url, &["policy", "import", "-f", "-"], Some("{ not: [json"));
    assert_eq!(o.status.code(), Some(1));
    let o = flagella(
        url,
        &["policy", "import", "-f", "-"],
        Some("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n"),
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("document 1"), "{}", stderr(&o));
    let o = flagella(
        url,
        &["policy", "import", "-f", "/nonexistent/np.yaml"],
        None,
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("/nonexistent/np.yaml"),
        "{}",
        stderr(&o)
    );
    // --dry-run validates and writes nothing.
    let o = ok(&flagella(
        url,
        &["policy", "import", "-f", "-", "--dry-run"],
        Some(NP_LIST_YAML),
    ));
    assert!(o.contains("would import 3 policies"), "{o}");
    assert!(rt.block_on(keys(url, POLICIES)).is_empty());
    // Usage errors are exit 2.
    let o = flagella(url, &["policy", "import"], None);
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn services_upsert_list_delete() {
    let Some(etcd) = common::Etcd::start() else {
        return;
    };
    let url = etcd.url.as_str();
    ok(&flagella(
        url,
        &[
            "service",
            "upsert",
            "default/dns",
            "--frontend",
            "10.96.0.10:53/udp",
            "--backend",
            "10.1.0.12:53",
            "--backend",
            "10.2.0.7:53,2",
        ],
        None,
    ));
    ok(&flagella(
        url,
        &[
            "service",
            "upsert",
            "default/web",
            "--frontend",
            "10.96.0.20:80/tcp",
            "--backend",
            "10.1.0.12:8080",
            "--mode",
            "dsr",
        ],
        None,
    ));
    let list = json(&flagella(url, &["service", "list", "-o", "json"], None));
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 2);
    assert_eq!(list[0]["namespace"], "default");
    assert_eq!(list[0]["name"], "dns");
    assert_eq!(list[0]["frontends"][0]["ip"], "10.96.0.10");
    assert_eq!(list[0]["frontends"][0]["port"], 53);
    assert_eq!(list[0]["frontends"][0]["protocol"], "UDP");
    assert_eq!(list[0]["backends"][1]["weight"], 2);
    assert_eq!(list[0]["mode"], "snat");
    assert_eq!(list[1]["mode"], "dsr");
    let table = ok(&flagella(url, &["service", "list"], None));
    assert!(
        table.contains(
            "default/dns   snat   10.96.0.10:53/udp   -              10.1.0.12:53 10.2.0.7:53,2"
        ),
        "{table}"
    );

    // NodePort and externalIPs: shown, and a node port outside 30000-32767 is refused (1).
    ok(&flagella(
        url,
        &[
            "service",
            "upsert",
            "default/shop",
            "--frontend",
            "10.96.0.30:80/tcp,nodeport=30080",
            "--external-ip",
            "203.0.113.7",
            "--backend",
            "10.2.0.5:8080",
            "--mode",
            "dsr",
        ],
        None,
    ));
    let list = json(&flagella(url, &["service", "list", "-o", "json"], None));
    assert_eq!(list[1]["name"], "shop");
    assert_eq!(list[1]["frontends"][0]["node_port"], 30080);
    assert_eq!(list[1]["external_ips"][0], "203.0.113.7");
    let table = ok(&flagella(url, &["service", "list"], None));
    assert!(
        table.contains("10.96.0.30:80/tcp,nodeport=30080   203.0.113.7"),
        "{table}"
    );
    let o = flagella(
        url,
        &[
            "service",
            "upsert",
            "default/low",
            "--frontend",
            "10.96.0.31:80/tcp,nodeport=8080",
        ],
        None,
    );
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("30000-32767"), "{}", stderr(&o));
    ok(&flagella(url, &["service", "delete", "default/shop"], None));

    // Upsert replaces.
    ok(&flagella(
        url,
        &[
            "service",
            "upsert",
            "default/web",
            "--frontend",
            "10.96.0.20:80",
        ],
        None,
    ));
    let list = json(&flagella(url, &["service", "list", "-o", "json"], None));
    assert_eq!(list[1]["backends"].as_array().unwrap().len(), 0);
    assert_eq!(list[1]["mode"], "snat");

    // Bad flags are usage errors (2); a bad name is an input error (1); nothing written.
    let o = flagella(
        url,
        &["service", "upsert", "default/x", "--frontend", "10.96.0.30"],
        None,
    );
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("IP:PORT"), "{}", stderr(&o));
    let o = flagella(url, &["service", "upsert", "default/x"], None);
    assert_eq!(o.status.code(), Some(2));
    let o = flagella(
        url,
        &[
            "service",
            "upsert",
            "nonamespace",
            "--frontend",
            "10.96.0.30:80",
        ],
        None,
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("NAMESPACE/NAME"), "{}", stderr(&o));

    ok(&flagella(url, &["service", "delete", "default/dns"], None));
    let o = flagella(url, &["service", "delete", "default/dns"], None);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("not found"), "{}", stderr(&o));
    let list = json(&flagella(url, &["service", "list", "-o", "json"], None));
    assert_eq!(list.as_array().unwrap().len(), 1);
}

#[test]
fn status_endpoints_nodes_identities_and_live_trace() {
    let Some(etcd) = common::Etcd::start() else {
        return;
    };
    let rt = common::runtime();
    let url = etcd.url.as_str();
    let k = |s: &str| format!("/flagella/v1/{s}");
    rt.block_on(async {
        put(url, &k("nodes/n1"), r#"{"underlay_ip":"192.168.0.1","pod_cidrs":["10.1.0.0/24"]}"#).await;
        put(url, &k("nodes/n2"), r#"{"underlay_ip":"192.168.0.2","pod_cidrs":["10.2.0.0/24"],"tunnel":"geneve"}"#).await;
        put(url, &k("namespaces/prod"), r#"{"labels":{"team":"a"}}"#).await;
        put(url, &k("endpoints/prod/web"), r#"{"node":"n1","labels":{"app":"web"},"ipv4":"10.1.0.5","interface":"lxc1","ifindex":7,"mac":"02:00:00:00:00:05"}"#).await;
        put(url, &k("endpoints/prod/client"), r#"{"node":"n2","labels":{"app":"client"},"ipv4":"10.2.0.9","interface":"lxc9"}"#).await;
        put(url, &k("identities/id/300"), r#"{"labels":{"app":"web","io.kubernetes.pod.namespace":"prod","io.cilium.k8s.namespace.labels.team":"a"}}"#).await;
        // One malformed key: counted, skipped, reported.
        put(url, &k("services/prod/broken"), "{not json").await;
    });
    ok(&flagella(
        url,
        &["policy", "import", "-f", "-"],
        Some(NP_LIST_YAML),
    ));

    let st = json(&flagella(url, &["status", "-o", "json"], None));
    assert_eq!(st["etcd"]["reachable"], true);
    assert!(st["etcd"]["revision"].as_i64().unwrap() >= 8);
    assert_eq!(st["counts"]["nodes"], 2);
    assert_eq!(st["counts"]["namespaces"], 1);
    assert_eq!(st["counts"]["endpoints"], 2);
    assert_eq!(st["counts"]["policies"], 3);
    assert_eq!(st["counts"]["identities"], 1);
    assert_eq!(st["counts"]["services"], 0);
    assert_eq!(st["counts"]["malformed"], 1);
    assert!(st.get("dataplane").is_none());
    let text = ok(&flagella(url, &["status"], None));
    assert!(
        text.contains("revision") && text.contains("policies 3"),
        "{text}"
    );

    // A dataplane socket nobody listens on: reported, exit 1.
    let o = flagella(
        url,
        &[
            "status",
            "--dataplane-socket",
            "/nonexistent/dp.sock",
            "-o",
            "json",
        ],
        None,
    );
    assert_eq!(o.status.code(), Some(1));
    let st: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(st["dataplane"]["reachable"], false);
    assert!(st["dataplane"]["error"]
        .as_str()
        .unwrap()
        .contains("dp.sock"));
    // etcd unreachable: reported, exit 1.
    let o = flagella("http://127.0.0.1:1", &["status", "-o", "json"], None);
    assert_eq!(o.status.code(), Some(1));
    let st: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(st["etcd"]["reachable"], false);

    let eps = json(&flagella(url, &["endpoint", "list", "-o", "json"], None));
    let eps = eps.as_array().unwrap();
    assert_eq!(eps.len(), 2);
    assert_eq!(eps[1]["name"], "web");
    assert_eq!(eps[1]["identity"], 300);
    assert_eq!(eps[1]["ipv4"], "10.1.0.5");
    assert_eq!(eps[0]["identity"], Value::Null); // not allocated yet
    let only_n2 = json(&flagella(
        url,
        &["endpoint", "list", "--node", "n2", "-o", "json"],
        None,
    ));
    assert_eq!(only_n2.as_array().unwrap().len(), 1);
    let web = json(&flagella(
        url,
        &["endpoint", "get", "prod/web", "-o", "json"],
        None,
    ));
    assert_eq!(web["node"], "n1");
    assert_eq!(web["labels"]["app"], "web");
    let o = flagella(url, &["endpoint", "get", "prod/nope"], None);
    assert_eq!(o.status.code(), Some(1));
    let table = ok(&flagella(url, &["endpoint", "list"], None));
    assert!(table.starts_with("ENDPOINT"), "{table}");

    let nodes = json(&flagella(url, &["node", "list", "-o", "json"], None));
    assert_eq!(nodes[1]["name"], "n2");
    assert_eq!(nodes[1]["tunnel"], "geneve");
    assert_eq!(nodes[1]["endpoints"], 1);
    assert_eq!(nodes[0]["pod_cidrs"][0], "10.1.0.0/24");

    let ids = json(&flagella(url, &["identity", "list", "-o", "json"], None));
    let ids = ids.as_array().unwrap();
    assert!(ids.iter().any(|i| i["id"] == 2 && i["reserved"] == true));
    assert!(ids
        .iter()
        .any(|i| i["id"] == 300 && i["labels"]["app"] == "web"));
    let one = json(&flagella(
        url,
        &["identity", "get", "300", "-o", "json"],
        None,
    ));
    assert_eq!(one["labels"]["app"], "web");
    let o = flagella(url, &["identity", "get", "9999"], None);
    assert_eq!(o.status.code(), Some(1));

    // Live trace: deny-all and allow-web in prod, from etcd.
    let r = json(&flagella(
        url,
        &[
            "policy",
            "trace",
            "--from",
            "prod/client",
            "--to",
            "prod/web",
            "--port",
            "80/TCP",
            "-o",
            "json",
        ],
        None,
    ));
    assert_eq!(r[0]["verdict"], "allowed");
    assert_eq!(r[0]["ingress"]["rules"][0]["policy"], "prod/allow-web");
    let r = json(&flagella(
        url,
        &[
            "policy",
            "trace",
            "--from",
            "prod/web",
            "--to",
            "prod/client",
            "--port",
            "80/TCP",
            "-o",
            "json",
        ],
        None,
    ));
    assert_eq!(r[0]["verdict"], "denied");
    // The remote identity is the cluster-wide number.
    assert_eq!(r[0]["ingress"]["remote"]["identity"], 300);
    let r = json(&flagella(
        url,
        &[
            "policy",
            "trace",
            "--from",
            "prod/client",
            "--to",
            "prod/web",
            "--port",
            "81/TCP",
            "-o",
            "json",
        ],
        None,
    ));
    assert_eq!(r[0]["verdict"], "denied");
    let o = flagella(
        url,
        &[
            "policy",
            "trace",
            "--from",
            "prod/ghost",
            "--to",
            "prod/web",
            "--port",
            "80",
        ],
        None,
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("flagella endpoint list"),
        "{}",
        stderr(&o)
    );
    // Offline mode needs both files.
    let o = flagella(
        url,
        &[
            "policy",
            "trace",
            "--policies",
            "x.yaml",
            "--from",
            "a/b",
            "--to",
            "c/d",
            "--port",
            "80",
        ],
        None,
    );
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn node_and_namespace_upsert() {
    let Some(etcd) = common::Etcd::start() else {
        return;
    };
    let rt = common::runtime();
    let url = etcd.url.as_str();
    const NODES: &str = "/flagella/v1/nodes/";

    let out = ok(&flagella(
        url,
        &[
            "node",
            "upsert",
            "n1",
            "--underlay-ip",
            "192.168.0.1",
            "--pod-cidr",
            "10.1.0.0/24",
        ],
        None,
    ));
    assert!(out.contains("node n1 written"), "{out}");
    let nodes = json(&flagella(url, &["node", "list", "-o", "json"], None));
    assert_eq!(nodes[0]["name"], "n1");
    assert_eq!(nodes[0]["underlay_ip"], "192.168.0.1");
    assert_eq!(nodes[0]["pod_cidrs"], serde_json::json!(["10.1.0.0/24"]));
    assert_eq!(nodes[0]["tunnel"], "vxlan");

    // Upsert replaces the whole node.
    let written = json(&flagella(
        url,
        &[
            "node",
            "upsert",
            "n1",
            "--underlay-ip",
            "192.168.0.9",
            "--pod-cidr",
            "10.9.0.0/24",
            "--pod-cidr",
            "fd00:9::/64",
            "--tunnel",
            "geneve",
            "--labels",
            "role=fw,zone=a",
            "-o",
            "json",
        ],
        None,
    ));
    assert_eq!(written["underlay_ip"], "192.168.0.9");
    assert_eq!(written["labels"]["role"], "fw");
    let nodes = json(&flagella(url, &["node", "list", "-o", "json"], None));
    assert_eq!(nodes.as_array().unwrap().len(), 1);
    assert_eq!(nodes[0]["underlay_ip"], "192.168.0.9");
    assert_eq!(
        nodes[0]["pod_cidrs"],
        serde_json::json!(["10.9.0.0/24", "fd00:9::/64"])
    );
    assert_eq!(nodes[0]["tunnel"], "geneve");
    assert_eq!(
        nodes[0]["labels"],
        serde_json::json!({"role": "fw", "zone": "a"})
    );
    let table = ok(&flagella(url, &["node", "list"], None));
    assert!(
        table.contains("LABELS") && table.contains("role=fw,zone=a"),
        "{table}"
    );

    // Refused as the agents would refuse them (exit 1), nothing written.
    for (args, says) in [
        (
            &[
                "n1",
                "--underlay-ip",
                "192.168.0.1",
                "--pod-cidr",
                "10.1.0.1/24",
            ][..],
            "pod_cidrs[0]",
        ),
        (
            &[
                "n1",
                "--underlay-ip",
                "0.0.0.0",
                "--pod-cidr",
                "10.1.0.0/24",
            ][..],
            "unicast",
        ),
        (
            &[
                "a/b",
                "--underlay-ip",
                "192.168.0.1",
                "--pod-cidr",
                "10.1.0.0/24",
            ][..],
            "a/b",
        ),
    ] {
        let mut all = vec!["node", "upsert"];
        all.extend_from_slice(args);
        let o = flagella(url, &all, None);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {}", stderr(&o));
        assert!(stderr(&o).contains(says), "{args:?}: {}", stderr(&o));
        assert!(stderr(&o).contains("nothing was written"), "{}", stderr(&o));
    }
    let nodes = json(&flagella(url, &["node", "list", "-o", "json"], None));
    assert_eq!(nodes[0]["underlay_ip"], "192.168.0.9");
    assert_eq!(
        rt.block_on(keys(url, NODES)),
        vec![format!("{NODES}n1")],
        "only n1 was written"
    );
    // Usage errors (exit 2): no pod CIDR, a bad address, an unknown tunnel mode.
    for args in [
        &["n2", "--underlay-ip", "192.168.0.2"][..],
        &["n2", "--underlay-ip", "x", "--pod-cidr", "10.2.0.0/24"][..],
        &[
            "n2",
            "--underlay-ip",
            "192.168.0.2",
            "--pod-cidr",
            "10.2.0.0/24",
            "--tunnel",
            "gre",
        ][..],
    ] {
        let mut all = vec!["node", "upsert"];
        all.extend_from_slice(args);
        let o = flagella(url, &all, None);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
    }

    // An endpoint in a namespace that does not exist is refused by the agents (a warning)
    // until `namespace upsert` writes the namespace.
    rt.block_on(put(
        url,
        "/flagella/v1/endpoints/prod/web",
        r#"{"node":"n1","labels":{"app":"web"},"ipv4":"10.9.0.5","interface":"lxc1","ifindex":7,"mac":"02:00:00:00:00:05"}"#,
    ));
    let o = flagella(url, &["endpoint", "list", "-o", "json"], None);
    assert_eq!(json(&o).as_array().unwrap().len(), 0);
    assert!(stderr(&o).contains("endpoints/prod/web"), "{}", stderr(&o));
    let out = ok(&flagella(
        url,
        &["namespace", "upsert", "prod", "--labels", "team=a,tier=1"],
        None,
    ));
    assert!(out.contains("namespace prod written"), "{out}");
    let eps = json(&flagella(url, &["endpoint", "list", "-o", "json"], None));
    assert_eq!(eps[0]["name"], "web");
    let list = json(&flagella(url, &["namespace", "list", "-o", "json"], None));
    assert_eq!(list[0]["name"], "prod");
    assert_eq!(list[0]["labels"]["team"], "a");
    assert_eq!(list[0]["labels"]["tier"], "1");
    let table = ok(&flagella(url, &["namespace", "list"], None));
    assert!(table.contains("prod   team=a,tier=1"), "{table}");
    // Upsert replaces the labels.
    ok(&flagella(url, &["namespace", "upsert", "prod"], None));
    let list = json(&flagella(url, &["namespace", "list", "-o", "json"], None));
    assert_eq!(list[0]["labels"], serde_json::json!({}));
    let o = flagella(
        url,
        &["namespace", "upsert", "prod", "--labels", "team"],
        None,
    );
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let o = flagella(url, &["namespace", "upsert", "a/b"], None);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
}
