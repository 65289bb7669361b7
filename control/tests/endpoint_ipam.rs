//! IPAM's caller end to end, without a dataplane: a real etcd, the real `flagella-control` of
//! two nodes, and endpoints created and deleted with the real `flagella` CLI, written without
//! addresses as a CNI plugin writes them.
//!
//! While 60 endpoints are created (and some deleted), the agent of node 1 is killed with
//! SIGKILL (by its PID) twice — once in the middle of a burst of creations, once while idle —
//! and restarted each time after endpoints were created and deleted behind its back; the agent
//! of node 2 is killed once. Before the first start, etcd also holds what a crash leaves: an
//! allocation made for a pending endpoint but not written back, and an allocation whose
//! endpoint is gone. At the end:
//! - every endpoint has exactly one address, inside its node's pod CIDR (never the network,
//!   gateway or broadcast address); no two endpoints share one;
//! - the allocations under `ipam/` are exactly the endpoints' addresses with their owners
//!   (none orphaned, none missing); the crash leftovers were reused and released;
//! - identities: one number per label set in etcd, and endpoints with the same label set carry
//!   the same number, different sets different numbers (`flagella endpoint list -o json`).
//!
//! Also, against the same etcd: the two guarded writes IPAM relies on, and the library
//! (`EndpointIpam`) step by step — dual stack, a write-back refused because the endpoint changed
//! after it was read, idempotence, release only once the key is gone.
//!
//! The agents run with a dataplane socket that does not exist: the agent keeps retrying it
//! every second and does everything else. Skips (with a message) when /usr/bin/etcd is missing.
//! Stops only the processes it started, by PID, pass or fail.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failure is a failed test

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::Etcd;
use control::schema::{self, Object};
use control::store::Store;
use serde_json::{json, Value};

const FLAGELLA: &str = env!("CARGO_BIN_EXE_flagella");
const CONTROL: &str = env!("CARGO_BIN_EXE_flagella-control");
const ROOT: &str = "/flagella/v1/";
const ENDPOINTS: usize = 60;

/// The nodes: name and IPv4 pod CIDR (/26: 61 usable addresses, so the pools are tight).
const NODES: [(&str, &str); 2] = [("ipam-n1", "10.91.0.0/26"), ("ipam-n2", "10.92.0.0/26")];

/// An agent process: SIGKILL by its PID and reaped on drop.
struct Agent {
    node: &'static str,
    child: Option<Child>,
    log: PathBuf,
}

impl Agent {
    fn start(&mut self, etcd: &str, dir: &std::path::Path) {
        assert!(self.child.is_none(), "{} already running", self.node);
        let log = File::options()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(CONTROL)
            .args(["--etcd", etcd, "--node", self.node])
            .arg("--dataplane-socket")
            .arg(dir.join(format!("{}-no-dataplane.sock", self.node)))
            .args(["--etcd-timeout", "2", "--lease-ttl", "10"])
            // Two agents share this loopback: neither serves /metrics.
            .args(["--metrics-address", "off"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn flagella-control");
        self.child = Some(child);
    }

    /// kill -9 of this child only (by its PID), then reap it.
    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let pid = c.id();
            let _ = c.kill();
            let status = c.wait().unwrap();
            eprintln!(
                "killed flagella-control of {} (pid {pid}): {status}",
                self.node
            );
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill9();
    }
}

struct Harness {
    etcd: Etcd,
    rt: tokio::runtime::Runtime,
    store: Store,
    dir: PathBuf,
    agents: Vec<Agent>,
}

impl Drop for Harness {
    fn drop(&mut self) {
        for a in &mut self.agents {
            a.kill9();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Harness {
    fn put(&self, key: &str, value: &str) {
        self.rt
            .block_on(self.store.put(&format!("{ROOT}{key}"), value))
            .unwrap();
    }

    fn list(&self, prefix: &str) -> Vec<(String, Vec<u8>)> {
        let (kvs, _) = self
            .rt
            .block_on(self.store.list(&format!("{ROOT}{prefix}")))
            .unwrap();
        kvs.into_iter().map(|kv| (kv.key, kv.value)).collect()
    }

    fn flagella(&self, args: &[&str]) -> Output {
        Command::new(FLAGELLA)
            .args(["--etcd", &self.etcd.url])
            .args(args)
            .output()
            .expect("run flagella")
    }

    fn flagella_ok(&self, args: &[&str]) -> String {
        let out = self.flagella(args);
        assert!(
            out.status.success(),
            "flagella {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn agent(&mut self, i: usize) -> &mut Agent {
        &mut self.agents[i]
    }

    fn start(&mut self, i: usize) {
        let (url, dir) = (self.etcd.url.clone(), self.dir.clone());
        self.agents[i].start(&url, &dir);
    }

    fn logs(&self) -> String {
        self.agents
            .iter()
            .map(|a| format!("--- {} ---\n{}", a.node, a.log_text()))
            .collect()
    }
}

/// What the test asks for endpoint `i`: namespace, name, node index, labels.
fn endpoint(i: usize) -> (String, String, usize, String) {
    let ns = if i % 3 == 0 { "ipam-b" } else { "ipam-a" };
    // 5 apps x 2 namespaces: 10 label sets shared by several endpoints each.
    (
        ns.into(),
        format!("pod-{i}"),
        i % 2,
        format!("app=app-{},tier=t", i % 5),
    )
}

fn create(h: &Harness, i: usize) {
    create_with(&h.etcd.url, i);
}

/// `flagella endpoint create` of endpoint `i` (from any thread).
fn create_with(etcd: &str, i: usize) {
    let (ns, name, node, labels) = endpoint(i);
    let ifindex = (100 + i).to_string();
    let mac = format!("02:00:00:00:{:02x}:{:02x}", i / 256, i % 256);
    let out = Command::new(FLAGELLA)
        .args(["--etcd", etcd])
        .args([
            "endpoint",
            "create",
            "--node",
            NODES[node].0,
            "--namespace",
            &ns,
            "--name",
            &name,
            "--labels",
            &labels,
            "--interface",
            &format!("lxc{i}"),
            "--ifindex",
            &ifindex,
            "--mac",
            &mac,
        ])
        .output()
        .expect("run flagella");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("created"),
        "endpoint create {i}: {text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// What a kill left in etcd (timing-dependent, so printed, not asserted): pending endpoints
/// of node 1 that already have an allocation (killed between allocating and writing back),
/// and those without one yet.
fn report_in_flight(h: &Harness, when: &str) {
    let eps = endpoints_in_etcd(h);
    let allocated: BTreeSet<String> = allocations_in_etcd(h).into_values().collect();
    let pending: Vec<&String> = eps
        .iter()
        .filter(|(_, (node, a))| node == NODES[0].0 && a.is_none())
        .map(|(o, _)| o)
        .collect();
    let (mid, waiting): (Vec<&String>, Vec<&String>) =
        pending.into_iter().partition(|o| allocated.contains(*o));
    eprintln!(
        "{when}: allocated but not written back: {mid:?}; not allocated yet: {} endpoints",
        waiting.len()
    );
}

fn delete(h: &Harness, i: usize) {
    let (ns, name, _, _) = endpoint(i);
    h.flagella_ok(&["endpoint", "delete", &format!("{ns}/{name}")]);
}

/// The endpoints in etcd: owner -> (node, address or None while pending).
fn endpoints_in_etcd(h: &Harness) -> BTreeMap<String, (String, Option<Ipv4Addr>)> {
    h.list("endpoints/")
        .into_iter()
        .map(|(key, value)| {
            let owner = key
                .trim_start_matches(&format!("{ROOT}endpoints/"))
                .to_string();
            match schema::decode(&key, &value).unwrap() {
                Object::Endpoint { spec, .. } => {
                    assert!(spec.ipv6.is_none(), "{owner}: the nodes have no IPv6 CIDR");
                    (owner, (spec.node, spec.ipv4))
                }
                Object::PendingEndpoint { spec, .. } => (owner, (spec.node, None)),
                o => panic!("{key}: {o:?}"),
            }
        })
        .collect()
}

/// The allocations in etcd: (node, address) -> owner.
fn allocations_in_etcd(h: &Harness) -> BTreeMap<(String, IpAddr), String> {
    h.list("ipam/")
        .into_iter()
        .map(|(key, value)| {
            let rest = key.trim_start_matches(&format!("{ROOT}ipam/"));
            let (node, addr) = rest.split_once('/').unwrap();
            let v: Value = serde_json::from_slice(&value).unwrap();
            (
                (node.to_string(), addr.parse().unwrap()),
                v["owner"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// True once every endpoint has an address and the allocations are exactly theirs.
fn converged(h: &Harness, expected: &BTreeSet<String>) -> bool {
    let eps = endpoints_in_etcd(h);
    let owners: BTreeSet<String> = eps.keys().cloned().collect();
    if &owners != expected || eps.values().any(|(_, a)| a.is_none()) {
        return false;
    }
    let from_endpoints: BTreeMap<(String, IpAddr), String> = eps
        .iter()
        .filter_map(|(o, (n, a))| Some(((n.clone(), IpAddr::V4((*a)?)), o.clone())))
        .collect();
    from_endpoints == allocations_in_etcd(h)
}

fn wait_until(what: &str, h: &Harness, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}\nendpoints: {:?}\nallocations: {:?}\n{}",
            endpoints_in_etcd(h),
            allocations_in_etcd(h),
            h.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn pod_cidr(node: &str) -> (u32, u32) {
    let (_, cidr) = NODES.iter().find(|(n, _)| *n == node).unwrap();
    let (addr, len) = cidr.split_once('/').unwrap();
    let base = u32::from(addr.parse::<Ipv4Addr>().unwrap());
    (
        base,
        base + (1u32 << (32 - len.parse::<u32>().unwrap())) - 1,
    )
}

#[test]
fn agents_killed_and_restarted_never_hand_out_an_address_twice() {
    let Some(etcd) = Etcd::start() else {
        return;
    };
    let rt = common::runtime();
    let store = rt
        .block_on(Store::connect(&etcd.urls(), Duration::from_secs(5)))
        .unwrap();
    let dir = testkit::private_dir("flagella-ipam-");
    let mut h = Harness {
        agents: NODES
            .iter()
            .map(|(node, _)| Agent {
                node,
                child: None,
                log: dir.join(format!("{node}.log")),
            })
            .collect(),
        etcd,
        rt,
        store,
        dir,
    };
    for (i, (node, cidr)) in NODES.iter().enumerate() {
        h.put(
            &format!("nodes/{node}"),
            &json!({"underlay_ip": format!("192.168.91.{}", i + 1), "pod_cidrs": [cidr]})
                .to_string(),
        );
    }
    h.put("namespaces/ipam-a", r#"{"labels":{"team":"a"}}"#);
    h.put("namespaces/ipam-b", r#"{"labels":{"team":"b"}}"#);

    // What a crash leaves: node 1's agent allocated .50 for a pending endpoint and died before
    // writing it back; and .51 belongs to an endpoint deleted while no agent ran.
    h.put(
        "endpoints/ipam-a/crashed",
        r#"{"node":"ipam-n1","interface":"lxcc","ifindex":99,"mac":"02:00:00:00:99:99","labels":{"app":"app-0","tier":"t"}}"#,
    );
    h.put("ipam/ipam-n1/10.91.0.50", r#"{"owner":"ipam-a/crashed"}"#);
    h.put("ipam/ipam-n1/10.91.0.51", r#"{"owner":"ipam-a/ghost"}"#);

    let mut expected: BTreeSet<String> = BTreeSet::from(["ipam-a/crashed".to_string()]);
    let owner = |i: usize| {
        let (ns, name, _, _) = endpoint(i);
        format!("{ns}/{name}")
    };
    let mut deleted = 0;
    h.start(0);
    h.start(1);
    for i in 0..10 {
        create(&h, i);
        expected.insert(owner(i));
    }
    // Kill 1: node 1's agent in the middle of a burst — 20 `endpoint create` at once, as
    // concurrent CNI ADDs — while it allocates and writes back.
    let burst: Vec<std::thread::JoinHandle<()>> = (10..30)
        .map(|i| {
            let url = h.etcd.url.clone();
            std::thread::spawn(move || create_with(&url, i))
        })
        .collect();
    // Killed as soon as it has written back its first address of the burst: it is then in
    // the middle of its work on the others.
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline
        && !endpoints_in_etcd(&h).iter().any(|(o, (node, a))| {
            node == NODES[0].0 && a.is_some() && (10..30).any(|i| *o == owner(i))
        })
    {
        std::thread::sleep(Duration::from_millis(1));
    }
    h.agent(0).kill9();
    for t in burst {
        t.join().unwrap();
    }
    expected.extend((10..30).map(owner));
    report_in_flight(&h, "after kill 1 (node 1)");
    // Deleted while their agent is down: pod-4 was given its address before the kill, pod-12
    // perhaps; the restart's reconciliation must release what they held.
    for i in [4, 12] {
        delete(&h, i);
        expected.remove(&owner(i));
        deleted += 1;
    }
    for i in 30..ENDPOINTS {
        create(&h, i);
        expected.insert(owner(i));
        match i {
            // Node 1's agent is down: its new endpoint is listed, waiting for an address.
            30 => {
                let e: Value = serde_json::from_str(&h.flagella_ok(&[
                    "-o",
                    "json",
                    "endpoint",
                    "get",
                    &owner(30),
                ]))
                .unwrap();
                assert!(e["ipv4"].is_null() && e["identity"].is_null(), "{e}");
                let listed: Value = serde_json::from_str(
                    &h.flagella_ok(&["-o", "json", "endpoint", "list", "--node", NODES[0].0]),
                )
                .unwrap();
                assert!(
                    listed
                        .as_array()
                        .unwrap()
                        .iter()
                        .any(|e| e["name"] == "pod-30"),
                    "{listed}"
                );
            }
            36 => h.start(0),
            // Node 2's agent, once, right after a creation; down for a few creations.
            33 => h.agent(1).kill9(),
            38 => h.start(1),
            // Deletions with the agents up.
            41 | 44 => {
                delete(&h, i - 10);
                expected.remove(&owner(i - 10));
                deleted += 1;
            }
            _ => {}
        }
    }
    // Kill 2: node 1's agent once everything it was given is settled, with endpoints deleted
    // and created behind its back, then restarted (its reconciliation pass).
    wait_until(
        "the first 60 endpoints",
        &h,
        Duration::from_secs(60),
        || converged(&h, &expected),
    );
    h.agent(0).kill9();
    for i in [2, 6] {
        delete(&h, i);
        expected.remove(&owner(i));
        deleted += 1;
    }
    for i in ENDPOINTS..ENDPOINTS + 4 {
        create(&h, i);
        expected.insert(owner(i));
    }
    h.start(0);
    wait_until(
        "convergence after the restarts",
        &h,
        Duration::from_secs(60),
        || converged(&h, &expected),
    );
    assert_eq!(deleted, 6);

    // `create --wait` returns the address the agent wrote back.
    let out = h.flagella_ok(&[
        "-o",
        "json",
        "endpoint",
        "create",
        "--node",
        "ipam-n2",
        "--namespace",
        "ipam-a",
        "--name",
        "waited",
        "--labels",
        "app=app-1,tier=t",
        "--interface",
        "lxcw",
        "--ifindex",
        "98",
        "--mac",
        "02:00:00:00:98:98",
        "--wait",
        "20",
    ]);
    let waited: Value = serde_json::from_str(&out).unwrap();
    let waited_ip: Ipv4Addr = waited["ipv4"].as_str().unwrap().parse().unwrap();
    expected.insert("ipam-a/waited".into());
    // A second create of the same endpoint is refused (exit 1), and the key is unchanged.
    let again = h.flagella(&[
        "endpoint",
        "create",
        "--node",
        "ipam-n2",
        "--namespace",
        "ipam-a",
        "--name",
        "waited",
        "--interface",
        "lxcw",
    ]);
    assert_eq!(again.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"));
    let missing = h.flagella(&["endpoint", "delete", "ipam-a/no-such-pod"]);
    assert_eq!(
        missing.status.code(),
        Some(1),
        "deleting a missing endpoint fails"
    );
    let bad = h.flagella(&[
        "endpoint",
        "create",
        "--node",
        "ipam-n1",
        "--namespace",
        "ipam-a",
        "--name",
        "bad",
        "--labels",
        "novalue",
        "--interface",
        "lxcb",
    ]);
    assert_eq!(
        bad.status.code(),
        Some(2),
        "a malformed --labels is a usage error"
    );
    wait_until("the waited endpoint", &h, Duration::from_secs(20), || {
        converged(&h, &expected)
    });

    // ---- the verdicts ----
    let eps = endpoints_in_etcd(&h);
    assert_eq!(eps.len(), ENDPOINTS + 4 + 2 - 6);
    assert_eq!(eps["ipam-a/waited"].1, Some(waited_ip));
    // The crash leftovers: the allocation made before the "crash" was reused, the orphan
    // released.
    assert_eq!(
        eps["ipam-a/crashed"].1,
        Some(Ipv4Addr::new(10, 91, 0, 50)),
        "the allocation already made for the endpoint must be reused"
    );
    let allocations = allocations_in_etcd(&h);
    assert!(!allocations.contains_key(&("ipam-n1".into(), "10.91.0.51".parse().unwrap())));
    let mut seen: BTreeMap<Ipv4Addr, &str> = BTreeMap::new();
    for (owner, (node, addr)) in &eps {
        let addr = addr.unwrap();
        let (net, broadcast) = pod_cidr(node);
        let a = u32::from(addr);
        assert!(
            a > net + 1 && a < broadcast,
            "{owner} on {node} got {addr}: outside its pod CIDR or a reserved address"
        );
        if let Some(other) = seen.insert(addr, owner) {
            panic!("{addr} handed out twice: {other} and {owner}");
        }
        assert_eq!(
            allocations.get(&(node.clone(), IpAddr::V4(addr))),
            Some(owner),
            "{owner}'s address has no allocation of its own"
        );
    }
    assert_eq!(
        allocations.len(),
        eps.len(),
        "orphaned allocations: {allocations:?}"
    );

    // Identities: one number per label set in etcd ...
    let mut numbers_of_set: BTreeMap<String, BTreeSet<u64>> = BTreeMap::new();
    for (key, value) in h.list("identities/id/") {
        let v: Value = serde_json::from_slice(&value).unwrap();
        let n: u64 = key.rsplit('/').next().unwrap().parse().unwrap();
        numbers_of_set
            .entry(v["labels"].to_string())
            .or_default()
            .insert(n);
    }
    for (set, numbers) in &numbers_of_set {
        assert_eq!(
            numbers.len(),
            1,
            "label set {set} has several numbers: {numbers:?}"
        );
    }
    // ... and every endpoint carries the number of its label set (same set, same number;
    // different sets, different numbers).
    let listed: Value =
        serde_json::from_str(&h.flagella_ok(&["-o", "json", "endpoint", "list"])).unwrap();
    let listed = listed.as_array().unwrap();
    assert_eq!(listed.len(), eps.len());
    let mut number_of: BTreeMap<(String, String), u64> = BTreeMap::new();
    let mut set_of: BTreeMap<u64, (String, String)> = BTreeMap::new();
    for e in listed {
        let set = (e["namespace"].to_string(), e["labels"].to_string());
        let n = e["identity"]
            .as_u64()
            .unwrap_or_else(|| panic!("{e}: no identity"));
        if let Some(m) = number_of.insert(set.clone(), n) {
            assert_eq!(m, n, "label set {set:?} carries two numbers");
        }
        if let Some(other) = set_of.insert(n, set.clone()) {
            assert_eq!(other, set, "identity {n} names two label sets");
        }
    }
    assert_eq!(number_of.len(), 10, "5 apps x 2 namespaces");

    // The agents logged what they did.
    let logs = h.logs();
    eprintln!("{logs}");
    assert!(
        logs.contains("ipam: endpoint ipam-a/crashed got [10.91.0.50]"),
        "{logs}"
    );
    assert!(logs.contains("ipam: released 10.91.0.51"), "{logs}");
}

/// The two guarded writes IPAM relies on, against etcd itself: a put that requires the key's
/// mod revision (0: absent), a delete that requires another key's.
#[test]
fn guarded_writes_refuse_a_changed_key() {
    let Some(etcd) = Etcd::start() else {
        return;
    };
    common::runtime().block_on(async {
        let s = Store::connect(&etcd.urls(), Duration::from_secs(5))
            .await
            .unwrap();
        let k = "/flagella/v1/endpoints/t/a";
        let r1 = s.put_if_unchanged(k, "1", 0).await.unwrap().unwrap();
        assert_eq!(s.put_if_unchanged(k, "2", 0).await.unwrap(), None, "exists");
        let r2 = s.put_if_unchanged(k, "2", r1).await.unwrap().unwrap();
        assert!(r2 > r1);
        assert_eq!(s.put_if_unchanged(k, "3", r1).await.unwrap(), None, "stale");
        assert_eq!(s.get(k).await.unwrap().unwrap().value, b"2");
        let alloc = "/flagella/v1/ipam/n/10.0.0.2";
        s.put(alloc, "x").await.unwrap();
        assert!(
            !s.delete_if_unchanged(alloc, k, 0).await.unwrap(),
            "owner exists"
        );
        assert!(
            !s.delete_if_unchanged(alloc, k, r1).await.unwrap(),
            "owner changed"
        );
        assert!(s.get(alloc).await.unwrap().is_some());
        s.delete(k).await.unwrap();
        assert!(
            s.delete_if_unchanged(alloc, k, 0).await.unwrap(),
            "owner gone"
        );
        assert!(s.get(alloc).await.unwrap().is_none());
    });
}

/// [`EndpointIpam`] itself against etcd, step by step: dual stack (one address per family),
/// idempotence per owner, the write-back refused when the endpoint changed after the agent
/// read it, and the release only once the endpoint's key is gone.
#[test]
fn library_dual_stack_conflict_and_release() {
    use control::endpoint_ipam::EndpointIpam;
    use control::store::Event;
    let Some(etcd) = Etcd::start() else {
        return;
    };
    common::runtime().block_on(async {
        let s = Store::connect(&etcd.urls(), Duration::from_secs(5))
            .await
            .unwrap();
        let node_key = format!("{ROOT}nodes/n1");
        s.put(
            &node_key,
            r#"{"underlay_ip":"192.168.0.1","pod_cidrs":["10.7.0.0/24","fd00:7::/64"]}"#,
        )
        .await
        .unwrap();
        let ep = format!("{ROOT}endpoints/ns/a");
        let pending = r#"{"node":"n1","interface":"lxc1","ifindex":7,"mac":"02:00:00:00:00:07"}"#;
        s.put(&ep, pending).await.unwrap();
        let listing = |s: Store| async move { s.list(ROOT).await.unwrap().0 };

        let mut ipam = EndpointIpam::new("n1");
        ipam.reset(&listing(s.clone()).await);
        assert_eq!(ipam.pending(), 1);
        // The agent read the pending value; someone rewrites it (labels) before the write-back.
        let rewritten = r#"{"node":"n1","interface":"lxc1","ifindex":7,"mac":"02:00:00:00:00:07","labels":{"app":"x"}}"#;
        s.put(&ep, rewritten).await.unwrap();
        let out = ipam.converge(&s).await.unwrap();
        assert!(out.assigned.is_empty(), "{out:?}");
        assert_eq!(out.conflicts, 1, "{out:?}");
        assert_eq!(s.get(&ep).await.unwrap().unwrap().value, rewritten.as_bytes());
        // The allocations it made stay with the owner, and are reused once the watch shows
        // the new value.
        let held: Vec<String> = s
            .list(&format!("{ROOT}ipam/n1/"))
            .await
            .unwrap()
            .0
            .into_iter()
            .map(|kv| kv.key)
            .collect();
        assert_eq!(held.len(), 2, "{held:?}");
        let kv = s.get(&ep).await.unwrap().unwrap();
        ipam.observe(&Event::Put(kv));
        let out = ipam.converge(&s).await.unwrap();
        assert_eq!(out.assigned.len(), 1, "{out:?}");
        let addrs = &out.assigned[0].1;
        assert_eq!(addrs.len(), 2, "one address per family: {addrs:?}");
        assert_eq!(addrs[0], "10.7.0.2".parse::<IpAddr>().unwrap());
        assert_eq!(addrs[1], "fd00:7::2".parse::<IpAddr>().unwrap());
        let value: Value = serde_json::from_slice(&s.get(&ep).await.unwrap().unwrap().value).unwrap();
        assert_eq!(value["ipv4"], "10.7.0.2");
        assert_eq!(value["ipv6"], "fd00:7::2");
        assert_eq!(value["labels"]["app"], "x", "the rewrite is kept");
        // A fresh agent (a restart) sees nothing to do.
        let mut again = EndpointIpam::new("n1");
        again.reset(&listing(s.clone()).await);
        let out = again.converge(&s).await.unwrap();
        assert_eq!(out, Default::default());
        // Deleted: released only once the key is gone (the view still has it: kept).
        s.delete(&ep).await.unwrap();
        let out = again.converge(&s).await.unwrap();
        assert!(out.released.is_empty(), "{out:?}");
        again.observe(&Event::Delete {
            key: ep.clone(),
            mod_revision: 0,
        });
        let out = again.converge(&s).await.unwrap();
        assert_eq!(out.released.len(), 2, "{out:?}");
        assert!(s
            .list(&format!("{ROOT}ipam/n1/"))
            .await
            .unwrap()
            .0
            .is_empty());
    });
}

/// The pod MTU in the write-back, against etcd: an agent that knows its dataplane's uplink MTU
/// writes it with the addresses (the uplink's minus the node's tunnel overhead); one that does
/// not yet writes the addresses alone and fills the MTU in once it knows; an MTU already
/// written is left as it is.
#[test]
fn library_writes_the_pod_mtu_with_the_address() {
    use control::endpoint_ipam::EndpointIpam;
    let Some(etcd) = Etcd::start() else {
        return;
    };
    common::runtime().block_on(async {
        let s = Store::connect(&etcd.urls(), Duration::from_secs(5))
            .await
            .unwrap();
        s.put(
            &format!("{ROOT}nodes/n1"),
            r#"{"underlay_ip":"192.168.0.1","pod_cidrs":["10.8.0.0/24"],"tunnel":"geneve"}"#,
        )
        .await
        .unwrap();
        let pending = r#"{"node":"n1","interface":"lxc1","ifindex":7,"mac":"02:00:00:00:00:07"}"#;
        let (a, b) = (
            format!("{ROOT}endpoints/ns/a"),
            format!("{ROOT}endpoints/ns/b"),
        );
        let value = |s: Store, key: String| async move {
            serde_json::from_slice::<Value>(&s.get(&key).await.unwrap().unwrap().value).unwrap()
        };
        s.put(&a, pending).await.unwrap();
        let hand_written = r#"{"node":"n1","interface":"lxc3","ipv4":"10.8.0.200","mtu":1300}"#;
        let c = format!("{ROOT}endpoints/ns/c");
        s.put(&c, hand_written).await.unwrap();

        // No dataplane reached yet: the address alone.
        let mut ipam = EndpointIpam::new("n1");
        ipam.reset(&s.list(ROOT).await.unwrap().0);
        assert_eq!(ipam.pod_mtu(), None);
        let out = ipam.converge(&s).await.unwrap();
        assert_eq!(out.assigned.len(), 1, "{out:?}");
        let va = value(s.clone(), a.clone()).await;
        assert_eq!(va["ipv4"], "10.8.0.2");
        assert!(va.get("mtu").is_none(), "{va}");

        // The dataplane says 1500: B gets it with its address, A gets it filled in.
        s.put(&b, pending).await.unwrap();
        ipam.observe(&control::store::Event::Put(
            s.get(&b).await.unwrap().unwrap(),
        ));
        assert!(ipam.set_uplink_mtu(Some(1500)));
        assert_eq!(
            ipam.pod_mtu(),
            Some(1500 - 62),
            "Geneve with its DSR option"
        );
        let out = ipam.converge(&s).await.unwrap();
        assert_eq!(out.assigned.len(), 1, "{out:?}");
        assert_eq!(out.mtu_filled, vec![("ns/a".to_string(), 1438)], "{out:?}");
        let vb = value(s.clone(), b.clone()).await;
        assert_eq!(
            (vb["ipv4"].as_str(), vb["mtu"].as_u64()),
            (Some("10.8.0.3"), Some(1438))
        );
        let va = value(s.clone(), a.clone()).await;
        assert_eq!(
            (va["ipv4"].as_str(), va["mtu"].as_u64()),
            (Some("10.8.0.2"), Some(1438))
        );
        assert!(matches!(
            schema::decode(&a, &s.get(&a).await.unwrap().unwrap().value),
            Ok(Object::Endpoint { spec, .. }) if spec.mtu == Some(1438)
        ));
        assert_eq!(
            s.get(&c).await.unwrap().unwrap().value,
            hand_written.as_bytes(),
            "an MTU already written is kept"
        );
        // Nothing more to do, now or for a restarted agent.
        assert_eq!(ipam.converge(&s).await.unwrap(), Default::default());
        let mut again = EndpointIpam::new("n1");
        again.reset(&s.list(ROOT).await.unwrap().0);
        again.set_uplink_mtu(Some(1500));
        assert_eq!(again.converge(&s).await.unwrap(), Default::default());
    });
}
