//! Renumbered identities across the cluster (issue 14, finding 7), `cluster.rs`'s three nodes
//! over VXLAN with agents whose identity references live 3 s (`--lease-ttl`) and whose
//! unreferenced identities are collected after 3 s (`--identity-grace`).
//!
//! Node 1's agent is stopped (SIGSTOP) past the lease and the grace period: the identities of
//! its pods lose their references and are collected, and the other agents allocate the label
//! sets again under new numbers. The agent is resumed (SIGCONT). Then, on every node, what
//! names pod n1a's identity has moved to its new number: node 1's endpoint, node 2's and node
//! 3's ipcache entries, and the policy maps of n1b (node 1), n2a (node 2) and n3a (node 3),
//! each of which admits n1a only: n1a still connects to all three, n1c is refused by all three.

use std::net::IpAddr;
use std::time::Duration;

use serde_json::json;

use super::common::net::{preflight, wait_for_within};
use super::{assert_torn_down, import_cnp, tcp_echo, wait_for, Cluster, Mode, SERIAL};

/// The agents' lease TTL and identity grace period, in seconds.
const SHORT: &str = "3";
/// Node 1's agent stays stopped until its pods' identities are renumbered (lease, grace, a
/// collection pass, an allocation): well within this.
const RENUMBERED: Duration = Duration::from_secs(90);
/// The targets of the policies, each admitting n1a only, one per node.
const TARGETS: [&str; 3] = ["n1b", "n2a", "n3a"];

pub fn run() {
    let bin = match preflight() {
        Ok(bin) => bin,
        Err(reason) => return testkit::skip(&reason),
    };
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let agent_args = ["--lease-ttl", SHORT, "--identity-grace", SHORT];
    let mut c = Cluster::start_with(Mode::Vxlan, &bin, &agent_args);
    c.wait_next_hops();
    c.start_servers();
    for target in TARGETS {
        import_cnp(
            &c,
            &format!("only-n1a-to-{target}"),
            json!({
                "endpointSelector": {"matchLabels": {"app": target}},
                "ingress": [{"fromEndpoints": [{"matchLabels": {"app": "n1a"}}]}],
            }),
        );
    }
    admits_only_n1a(&c, "before the agent is stopped");
    let old = identity_on_node_1(&c, "n1a");

    let agent = c.node(1).control.pid().expect("node 1's agent runs");
    let agent = libc::pid_t::try_from(agent).expect("a pid");
    // SAFETY: a plain signal to our own child, by its PID.
    assert_eq!(unsafe { libc::kill(agent, libc::SIGSTOP) }, 0);
    let resumed = Resume(agent);
    wait_for_within(
        "n1a's label set renumbered by the other agents (node 2's ipcache)",
        RENUMBERED,
        || ipcache_identity(&c, 2, "n1a").is_some_and(|id| id != old),
    );
    drop(resumed);

    let mut new = 0;
    wait_for_within("every node agrees on n1a's new number", RENUMBERED, || {
        new = identity_on_node_1(&c, "n1a");
        new != old
            && [2, 3]
                .iter()
                .all(|n| ipcache_identity(&c, *n, "n1a") == Some(new))
            && TARGETS.iter().all(|t| names_only(&c, t, new, old))
    });
    eprintln!("n1a's identity: {old} before, {new} after node 1's agent was away");
    admits_only_n1a(&c, "after n1a's identity was renumbered");
    let prefix = format!("fcl-{}-{}", std::process::id(), Mode::Vxlan.index());
    let pids: Vec<u32> = c
        .nodes
        .iter()
        .flat_map(|n| [n.dataplane.pid(), n.control.pid()])
        .flatten()
        .collect();
    drop(c);
    assert_torn_down(&prefix, &pids);
}

/// SIGCONT to the stopped agent when dropped (also when the test fails while it is stopped).
struct Resume(libc::pid_t);

impl Drop for Resume {
    fn drop(&mut self) {
        // SAFETY: a plain signal to our own child, by its PID.
        unsafe { libc::kill(self.0, libc::SIGCONT) };
    }
}

/// n1a reaches every target; n1c is refused by each (decided on the target's node).
fn admits_only_n1a(c: &Cluster, when: &str) {
    let (n1a, n1c) = (c.pod("n1a"), c.pod("n1c"));
    for target in TARGETS {
        let to = IpAddr::V4(c.pod(target).v4);
        wait_for(&format!("{when}: n1c is refused by {target}"), || {
            tcp_echo(n1c, to, Duration::from_millis(700)).is_err()
        });
        wait_for(&format!("{when}: n1a reaches {target}"), || {
            tcp_echo(n1a, to, Duration::from_secs(2)).is_ok()
        });
    }
}

/// The identity node 1's dataplane gives the endpoint of `pod` (a node-1 pod).
fn identity_on_node_1(c: &Cluster, pod: &str) -> u64 {
    let v4 = c.pod(pod).v4.to_string();
    let dump = c.dataplane(1, json!({"op": "dump", "table": "endpoints"}));
    dump["entries"]
        .as_array()
        .and_then(|eps| eps.iter().find(|e| e["ipv4"] == v4.as_str()))
        .and_then(|e| e["identity"].as_u64())
        .unwrap_or_else(|| panic!("node 1 has no endpoint for {pod}: {dump}"))
}

/// The identity node `n`'s ipcache gives `pod`'s IPv4 address.
fn ipcache_identity(c: &Cluster, n: u8, pod: &str) -> Option<u64> {
    let prefix = format!("{}/32", c.pod(pod).v4);
    let dump = c.dataplane(n, json!({"op": "dump", "table": "ipcache"}));
    dump["entries"]
        .as_array()?
        .iter()
        .find(|e| e["prefix"] == prefix.as_str())
        .and_then(|e| e["identity"].as_u64())
}

/// `target`'s ingress policy (on its node) names `new` and no longer `old`.
fn names_only(c: &Cluster, target: &str, new: u64, old: u64) -> bool {
    let pod = c.pod(target);
    let v4 = pod.v4.to_string();
    let endpoints = c.dataplane(pod.node, json!({"op": "dump", "table": "endpoints"}));
    let Some(id) = endpoints["entries"]
        .as_array()
        .and_then(|eps| eps.iter().find(|e| e["ipv4"] == v4.as_str()))
        .and_then(|e| e["id"].as_u64())
    else {
        return false;
    };
    let policy = c.dataplane(
        pod.node,
        json!({"op": "dump", "table": "policy", "endpoint": id}),
    );
    let identities: Vec<u64> = policy["ingress"]["entries"]
        .as_array()
        .map(|es| es.iter().filter_map(|e| e["identity"].as_u64()).collect())
        .unwrap_or_default();
    identities.contains(&new) && !identities.contains(&old)
}
