//! Policy semantics through the agents and dataplanes, checked against `flagella policy trace`
//! (live, from the same etcd):
//! - service accounts: every pod's etcd record carries `service_account` (`sa-<letter>`, so
//!   n1a, n2a and n3a share `sa-a`); policies selecting `io.cilium.k8s.policy.serviceaccount`
//!   admit (ingress) and reach (egress) exactly those pods, across nodes, with real kernel TCP;
//! - `host` and `remote-node`: the trace of a pod to its own node's address and to another
//!   node's gives `host` and `remote-node`, as the dataplane enforced them
//!   (`egress_host_and_remote_node` in cluster.rs);
//! - loopback: a pod reaches its own address under a policy that refuses everyone else, and
//!   the trace says so.

use std::net::{IpAddr, SocketAddr};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};

use super::{
    delete_cnp, echo_from, import_cnp, must, node_addr, tcp_echo, wait_for, Cluster, ECHO_PORT,
    FLAGELLA, HOST_PORT, NAMESPACE,
};

/// The service account the test gives pod `name` (`n2b` -> `sa-b`).
pub(super) fn service_account_of(pod_name: &str) -> String {
    format!("sa-{}", pod_name.chars().last().unwrap_or('x'))
}

/// `flagella policy trace` against the cluster's etcd, as JSON (the one result).
fn trace(c: &Cluster, from: &str, to: &str, port: u16) -> Value {
    let port = format!("{port}/TCP");
    let out = Command::new(FLAGELLA)
        .args(["--etcd", &c.etcd.url, "policy", "trace"])
        .args(["--from", from, "--to", to, "--port", &port, "-o", "json"])
        .stdin(Stdio::null())
        .output()
        .expect("run flagella policy trace");
    assert!(
        out.status.success(),
        "flagella policy trace {from} -> {to}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("trace -o json is JSON");
    v[0].clone()
}

fn pod_key(name: &str) -> String {
    format!("{NAMESPACE}/{name}")
}

fn sa_selector(pod_name: &str) -> Value {
    json!({"matchLabels": {"io.cilium.k8s.policy.serviceaccount": service_account_of(pod_name)}})
}

/// Ingress and egress policies selecting on service accounts, enforced by the dataplanes and
/// explained alike by the trace.
pub(super) fn service_accounts(c: &Cluster) {
    let (n1b, n1c, n2a) = (c.pod("n1b"), c.pod("n1c"), c.pod("n2a"));
    let to_n2a = IpAddr::V4(n2a.v4);
    // Ingress: pods running as sa-a admit only pods running as sa-b.
    import_cnp(
        c,
        "sa-a-from-sa-b",
        json!({"endpointSelector": sa_selector("a"),
               "ingress": [{"fromEndpoints": [sa_selector("b")]}]}),
    );
    wait_for(
        "n1c (sa-c) is refused by n2a's (sa-a) ingress policy",
        || tcp_echo(n1c, to_n2a, Duration::from_millis(700)).is_err(),
    );
    must("n1b (sa-b) -> n2a (sa-a) under that policy", || {
        tcp_echo(n1b, to_n2a, Duration::from_secs(2))
    });
    let r = trace(c, &pod_key("n1b"), &pod_key("n2a"), ECHO_PORT);
    assert_eq!(r["verdict"], "allowed", "{r}");
    assert_eq!(
        r["ingress"]["rules"][0]["policy"],
        pod_key("sa-a-from-sa-b")
    );
    let r = trace(c, &pod_key("n1c"), &pod_key("n2a"), ECHO_PORT);
    assert_eq!(r["verdict"], "denied", "{r}");
    delete_cnp(c, "sa-a-from-sa-b");
    must("n1c -> n2a after the policy is deleted", || {
        tcp_echo(n1c, to_n2a, Duration::from_secs(2))
    });

    // Egress: pods running as sa-c reach only pods running as sa-a.
    import_cnp(
        c,
        "sa-c-to-sa-a",
        json!({"endpointSelector": sa_selector("c"),
               "egress": [{"toEndpoints": [sa_selector("a")]}]}),
    );
    let n3c = c.pod("n3c");
    let to_n1b = IpAddr::V4(n1b.v4);
    wait_for("n3c (sa-c) is refused on egress to n1b (sa-b)", || {
        tcp_echo(n3c, to_n1b, Duration::from_millis(700)).is_err()
    });
    must("n3c (sa-c) -> n2a (sa-a) under that policy", || {
        tcp_echo(n3c, to_n2a, Duration::from_secs(2))
    });
    let r = trace(c, &pod_key("n3c"), &pod_key("n2a"), ECHO_PORT);
    assert_eq!(r["verdict"], "allowed", "{r}");
    assert_eq!(r["egress"]["rules"][0]["policy"], pod_key("sa-c-to-sa-a"));
    let r = trace(c, &pod_key("n3c"), &pod_key("n1b"), ECHO_PORT);
    assert_eq!(r["verdict"], "denied", "{r}");
    assert_eq!(r["egress"]["reason"], "default-deny");

    // Loopback: n3c reaches its own address although its egress admits only sa-a.
    let own = SocketAddr::new(IpAddr::V4(n3c.v4), ECHO_PORT);
    must("n3c -> its own address under that policy", || {
        echo_from(&n3c.netns, own)
    });
    let r = trace(c, &pod_key("n3c"), &n3c.v4.to_string(), ECHO_PORT);
    assert_eq!(r["verdict"], "allowed", "{r}");
    assert_eq!(r["detail"], "loopback: never reaches the network");
    delete_cnp(c, "sa-c-to-sa-a");
    must("n3c -> n1b after the policy is deleted", || {
        tcp_echo(n3c, to_n1b, Duration::from_secs(2))
    });
}

/// With an egress policy admitting only `host`, the trace of n1a agrees with the dataplane:
/// node 1's address is `host` (allowed), node 2's `remote-node` (denied).
pub(super) fn trace_knows_each_pods_host(c: &Cluster) {
    let (n1, n2, n1a) = (c.node(1), c.node(2), c.pod("n1a"));
    let (own, other) = (node_addr(n1, HOST_PORT), node_addr(n2, HOST_PORT));
    import_cnp(
        c,
        "n1a-to-host-traced",
        json!({"endpointSelector": {"matchLabels": {"app": "n1a"}},
               "egress": [{"toEntities": ["host"]}]}),
    );
    wait_for("n1a's egress policy (host only) refuses node-2", || {
        echo_from(&n1a.netns, other).is_err()
    });
    must("n1a -> its node (host)", || echo_from(&n1a.netns, own));
    let r = trace(c, &pod_key("n1a"), &own.ip().to_string(), HOST_PORT);
    assert_eq!(r["verdict"], "allowed", "{r}");
    assert_eq!(r["egress"]["remote"]["identity"], 1, "{r}");
    let r = trace(c, &pod_key("n1a"), &other.ip().to_string(), HOST_PORT);
    assert_eq!(r["verdict"], "denied", "{r}");
    assert_eq!(r["egress"]["remote"]["identity"], 6, "{r}");
    // Node 2's pods see it the other way round.
    let r = trace(c, &pod_key("n2a"), &other.ip().to_string(), HOST_PORT);
    assert_eq!(r["egress"]["remote"]["identity"], 1, "{r}");
    delete_cnp(c, "n1a-to-host-traced");
}
