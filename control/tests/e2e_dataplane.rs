//! End to end: a real etcd, the real `flagella-dataplane` in a node namespace with three pods,
//! the real `flagella-control` for that node, and the `flagella` CLI; kernel TCP connections
//! between the pods decide.
//!
//! ```text
//!  fe2e-<pid>-a  eth0 10.78.0.11/32 <-veth-> fe2e<pid>a ┐
//!  fe2e-<pid>-b  eth0 10.78.0.12/32 <-veth-> fe2e<pid>b ├ fe2e-<pid> ("node"): flagella-dataplane
//!  fe2e-<pid>-c  eth0 10.78.0.13/32 <-veth-> fe2e<pid>c ┘
//!  each pod: default via 10.78.0.1 onlink (the gateway: the first host of the node's pod CIDR)
//!
//!  root namespace: etcd (loopback ports), flagella-control (etcd + the dataplane's socket file)
//! ```
//!
//! The test writes what the CNI plugin and the cluster would write (the node, the namespace, the
//! three endpoints with their host-side ifindex and pod MAC) into etcd, and nothing to the
//! dataplane: everything it has, including this node's gateway (`local_node.set`), comes from
//! the agent. Then, in order:
//! 1. all pods reach each other;
//! 2. `flagella policy import -f FILE` of a NetworkPolicy that admits only pod A into pod B:
//!    C -> B is refused, A -> B works; `flagella policy delete` restores C -> B;
//! 3. kill -9 of `flagella-control` and a restart: no identity number is duplicated
//!    (`flagella identity list -o json`), the dataplane's endpoints are the same, and a
//!    long-lived connection A -> B plus new connections keep working throughout (fail static);
//! 4. etcd stopped for 10 s (killed, restarted on the same data and ports): the long-lived
//!    connection and a new allowed connection work during the outage, the agent's status says
//!    etcd is unreachable, and a policy written after etcd returns is enforced;
//! 5. a corrupt identity counter fails only the new label set that needs it (logged, in the
//!    status's `identity_errors`); the session goes on and a policy written after it is enforced;
//!    malformed keys (bad JSON over an existing endpoint, an unknown kind) are logged, counted
//!    in the status file and skipped: the endpoint keeps its last good value and a policy
//!    change written after them converges;
//! 6. a fourth pod, D, the CNI way: its veth is served from the start but has no address;
//!    `flagella endpoint create --wait` writes its endpoint without one, the agent allocates it
//!    from the node's pod CIDR (IPAM) and writes it back with the pod MTU (the dataplane's
//!    uplink MTU minus the VXLAN overhead), the test gives D's `eth0` that address and that
//!    MTU, the endpoint reaches the dataplane and A -> D connects; `flagella endpoint
//!    delete` removes it from the dataplane and releases the address.
//!
//! The dataplane binary: Cargo gives tests the paths of their own package's binaries only, so
//! this test looks for `flagella-dataplane` next to its own binary's profile directory
//! (`target/<profile>/`), or at `$FLAGELLA_DATAPLANE_BIN`. `cargo test --workspace
//! --all-features` (scripts/test.sh) builds it; alone, build it first with
//! `cargo build -p dataplane --features afxdp --bin flagella-dataplane`.
//!
//! Skips, with the reason, when not root or when etcd, `ip netns`, AF_XDP or the dataplane
//! binary are missing. Stops only the processes it started (by their PID, on drop too) and
//! deletes its namespaces and files, pass or fail.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failure is a failed test

mod common;

use std::fs::File;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::net::{
    ip_in, pod_address, pod_veth, preflight, spawn_agent, spawn_in, wait_for_within, NetNsGuard,
    Proc,
};
use common::traffic::{dataplane_request, echo, tcp_echo, tcp_server};
use common::Etcd;
use control::store::Store;
use serde_json::{json, Value};

const FLAGELLA: &str = env!("CARGO_BIN_EXE_flagella");
const ROOT: &str = "/flagella/v1/";
const POD_CIDR: &str = "10.78.0.0/24";
const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 78, 0, 1);
const UNDERLAY: &str = "192.168.78.1";
const PORT: u16 = 7878;
/// How long a connection that should work may take to show it (ARP, a publication).
const CONVERGE: Duration = Duration::from_secs(10);

// ---- pods and the harness -----------------------------------------------------------------

/// A pod as the CNI plugin would record it.
#[derive(Clone, Debug)]
struct Pod {
    name: String,
    netns: String,
    host_if: String,
    ip: Ipv4Addr,
    ifindex: u64,
    mac: String,
}

/// One run: everything it started, dropped in field order (agent, dataplane, namespaces,
/// etcd, files).
struct Harness {
    control: Proc,
    dataplane: Proc,
    _netns: NetNsGuard,
    /// The bpffs the restartable dataplane pins its programs in (`start_restartable` only);
    /// unmounted after the namespaces are gone.
    bpffs: Option<testkit::BpffsGuard>,
    etcd: Etcd,
    dir: PathBuf,
    node: String,
    namespace: String,
    pods: Vec<Pod>,
    /// Pod D: no address until IPAM gives it one (step 6).
    cni_pod: Pod,
    socket: PathBuf,
    status_file: PathBuf,
    rt: tokio::runtime::Runtime,
    store: Store,
}

impl Drop for Harness {
    fn drop(&mut self) {
        // Captured by the test harness unless the test fails (or runs with --nocapture).
        {
            eprintln!(
                "---- flagella-control log ----\n{}\n---- flagella-dataplane log ----\n{}",
                self.control.log_text(),
                self.dataplane.log_text()
            );
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `tag` tells apart the runs of the tests of this file, which share a PID.
fn build_topology(node: &str, tag: &str, netns: &mut NetNsGuard) -> (Vec<Pod>, Pod) {
    let pid = std::process::id();
    let add = |netns: &mut NetNsGuard, name: &str| {
        netns.add(name).unwrap_or_else(|e| panic!("{e}"));
    };
    add(netns, node);
    ip_in(node, &["link", "set", "lo", "up"]);
    let mut pods = Vec::new();
    for (i, letter) in ["a", "b", "c"].into_iter().enumerate() {
        let ns = format!("{node}-{letter}");
        add(netns, &ns);
        let host_if = format!("fe2e{pid}{tag}{letter}");
        let ip = Ipv4Addr::new(10, 78, 0, 11 + i as u8);
        let (ifindex, mac) = pod_veth(node, &ns, &host_if);
        pod_address(&ns, ip, GATEWAY);
        pods.push(Pod {
            name: letter.to_string(),
            netns: ns,
            host_if,
            ip,
            ifindex,
            mac,
        });
    }
    // Pod D: a veth the dataplane serves from the start, without an address yet.
    let ns = format!("{node}-d");
    add(netns, &ns);
    let host_if = format!("fe2e{pid}{tag}d");
    let (ifindex, mac) = pod_veth(node, &ns, &host_if);
    let cni_pod = Pod {
        name: "d".into(),
        netns: ns,
        host_if,
        ip: Ipv4Addr::UNSPECIFIED,
        ifindex,
        mac,
    };
    (pods, cni_pod)
}

impl Harness {
    /// `tag` (a letter or empty) makes the names of this run unique among the tests of this
    /// file, which run at once in one process.
    fn start(dataplane_bin: &Path, tag: &str) -> Harness {
        Self::start_with(dataplane_bin, tag, None)
    }

    /// [`Harness::start`] with the dataplane's programs pinned in `bpffs` and its conntrack in
    /// a state file of the run's directory: restartable without losing flows.
    fn start_restartable(dataplane_bin: &Path, tag: &str, bpffs: testkit::BpffsGuard) -> Harness {
        Self::start_with(dataplane_bin, tag, Some(bpffs))
    }

    fn start_with(dataplane_bin: &Path, tag: &str, bpffs: Option<testkit::BpffsGuard>) -> Harness {
        let pid = std::process::id();
        let node = format!("fe2e-{pid}{tag}");
        let dir = testkit::private_dir("fe2e-");
        let etcd = Etcd::start().expect("etcd (checked by preflight)");
        let mut netns = NetNsGuard::default();
        let (pods, cni_pod) = build_topology(&node, tag, &mut netns);
        let rt = common::runtime();
        let store = rt
            .block_on(Store::connect(&etcd.urls(), Duration::from_secs(2)))
            .unwrap();
        let mut h = Harness {
            control: Proc {
                child: None,
                what: "flagella-control",
                log: dir.join("control.log"),
            },
            dataplane: Proc {
                child: None,
                what: "flagella-dataplane",
                log: dir.join("dataplane.log"),
            },
            _netns: netns,
            bpffs,
            etcd,
            socket: dir.join("dataplane.sock"),
            status_file: dir.join("control-status.json"),
            dir,
            namespace: node.clone(),
            node,
            pods,
            cni_pod,
            rt,
            store,
        };
        h.start_dataplane(dataplane_bin);
        h.write_cluster();
        h.start_control();
        h
    }

    /// kill -9 of the dataplane, and the same binary started again on the same interfaces.
    fn restart_dataplane(&mut self, bin: &Path) {
        self.dataplane.kill9();
        let _ = std::fs::remove_file(&self.socket);
        self.start_dataplane(bin);
    }

    fn start_dataplane(&mut self, bin: &Path) {
        let config = self.dir.join("dataplane.toml");
        std::fs::write(&config, "").unwrap(); // the flags say everything
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.node])
            .arg(bin)
            .arg("--config")
            .arg(&config)
            .arg("--socket")
            .arg(&self.socket);
        for pod in self.pods.iter().chain([&self.cni_pod]) {
            cmd.args(["--interface", &format!("{}=pod", pod.host_if)]);
        }
        if let Some(bpffs) = &self.bpffs {
            cmd.arg("--bpf-pin-dir")
                .arg(bpffs.path().join("flagella"))
                .arg("--state-dir")
                .arg(self.dir.join("state"));
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(
                File::options()
                    .create(true)
                    .append(true)
                    .open(&self.dataplane.log)
                    .unwrap(),
            )
            .spawn()
            .expect("spawn ip netns exec flagella-dataplane");
        self.dataplane.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while UnixStream::connect(&self.socket).is_err() {
            assert!(
                self.dataplane.running(),
                "the dataplane exited before it was ready:\n{}",
                self.dataplane.log_text()
            );
            assert!(
                Instant::now() < deadline,
                "the dataplane's socket did not appear:\n{}",
                self.dataplane.log_text()
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    fn start_control(&mut self) {
        let _ = std::fs::remove_file(&self.status_file);
        let child = spawn_agent(
            &self.etcd.url,
            &self.node,
            &self.socket,
            &self.status_file,
            &self.control.log,
        );
        self.control.child = Some(child);
    }

    fn put(&self, key: &str, value: impl Into<Vec<u8>>) {
        let key = format!("{ROOT}{key}");
        self.rt.block_on(self.store.put(&key, value)).unwrap();
    }

    /// What the cluster (the node, the namespace) and the CNI plugin (the endpoints) write.
    fn write_cluster(&self) {
        self.put(
            &format!("nodes/{}", self.node),
            json!({"underlay_ip": UNDERLAY, "pod_cidrs": [POD_CIDR], "tunnel": "vxlan"})
                .to_string(),
        );
        self.put(
            &format!("namespaces/{}", self.namespace),
            json!({"labels": {"team": "e2e"}}).to_string(),
        );
        for pod in &self.pods {
            self.put(
                &format!("ipam/{}/{}", self.node, pod.ip),
                json!({"owner": format!("{}/{}", self.namespace, pod.name)}).to_string(),
            );
            self.put(&self.endpoint_key(pod), self.endpoint_value(pod));
        }
    }

    fn endpoint_key(&self, pod: &Pod) -> String {
        format!("endpoints/{}/{}", self.namespace, pod.name)
    }

    fn endpoint_value(&self, pod: &Pod) -> String {
        json!({
            "node": self.node, "labels": {"app": pod.name}, "ipv4": pod.ip.to_string(),
            "interface": pod.host_if, "ifindex": pod.ifindex, "mac": pod.mac,
        })
        .to_string()
    }

    fn pod(&self, name: &str) -> &Pod {
        self.pods.iter().find(|p| p.name == name).unwrap()
    }

    // ---- the dataplane, the agent, the CLI -------------------------------------------------

    /// One request to the dataplane's control socket; the reply must be ok.
    fn dataplane(&self, request: Value) -> Value {
        dataplane_request(&self.socket, &request)
    }

    /// The dataplane's endpoints, by IPv4 address.
    fn dp_endpoints(&self) -> Vec<Value> {
        let v = self.dataplane(json!({"op": "dump", "table": "endpoints"}));
        v["entries"].as_array().cloned().unwrap_or_default()
    }

    fn dp_endpoint_id(&self, pod: &Pod) -> u64 {
        self.dp_endpoints()
            .iter()
            .find(|e| e["ipv4"] == pod.ip.to_string())
            .and_then(|e| e["id"].as_u64())
            .unwrap_or_else(|| panic!("pod {} is not a dataplane endpoint", pod.name))
    }

    /// `dump policy` of a pod's endpoint: its ingress section.
    fn dp_ingress(&self, pod: &Pod) -> Value {
        let id = self.dp_endpoint_id(pod);
        self.dataplane(json!({"op": "dump", "table": "policy", "endpoint": id}))["ingress"].clone()
    }

    /// The agent's status file (empty object until written).
    fn status(&self) -> Value {
        std::fs::read(&self.status_file)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_else(|| json!({}))
    }

    fn flagella(&self, args: &[&str]) -> Output {
        let out = Command::new(FLAGELLA)
            .arg("--etcd")
            .arg(&self.etcd.url)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run flagella");
        assert!(
            out.status.success(),
            "flagella {args:?}: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    fn flagella_json(&self, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.extend(["-o", "json"]);
        serde_json::from_slice(&self.flagella(&all).stdout).expect("flagella -o json")
    }

    /// `flagella policy import -f FILE` of a NetworkPolicy: pods labelled `app: to` admit
    /// pods labelled `app: from` only.
    fn import_policy(&self, name: &str, to: &str, from: &str) {
        let policy = json!({
            "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": name, "namespace": self.namespace},
            "spec": {
                "podSelector": {"matchLabels": {"app": to}},
                "policyTypes": ["Ingress"],
                "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": from}}}]}],
            },
        });
        let file = self.dir.join(format!("{name}.json"));
        std::fs::write(&file, policy.to_string()).unwrap();
        self.flagella(&["policy", "import", "-f", file.to_str().unwrap()]);
    }

    fn delete_policy(&self, name: &str) {
        self.flagella(&["policy", "delete", &format!("{}/{name}", self.namespace)]);
    }

    /// Waits until `pod`'s ingress is enforced and admits exactly `from`'s identity, besides the
    /// node's own stack (`host`, identity 1: allow-localhost, docs/policy-semantics.md).
    fn wait_ingress_admits_only(&self, pod: &Pod, from: &Pod) {
        let from_id = self.identity_of(from);
        wait_for(
            &format!("pod {}'s ingress admits only pod {}", pod.name, from.name),
            || {
                let ing = self.dp_ingress(pod);
                let mut ids: Vec<u64> = ing["entries"]
                    .as_array()
                    .map(|a| a.iter().filter_map(|e| e["identity"].as_u64()).collect())
                    .unwrap_or_default();
                ids.sort_unstable();
                ing["enforced"] == true && ids == [1, from_id]
            },
        );
    }

    fn wait_ingress_open(&self, pod: &Pod) {
        wait_for(
            &format!("pod {}'s ingress is not enforced", pod.name),
            || self.dp_ingress(pod)["enforced"] == false,
        );
    }

    fn identity_of(&self, pod: &Pod) -> u64 {
        self.dp_endpoints()
            .iter()
            .find(|e| e["ipv4"] == pod.ip.to_string())
            .and_then(|e| e["identity"].as_u64())
            .unwrap()
    }

    /// Waits until the agent says it is connected to etcd and the dataplane at a revision at
    /// least `revision`.
    fn wait_agent_synced(&self, revision: i64) {
        self.wait_agent_synced_within(revision, CONVERGE);
    }

    fn wait_agent_synced_within(&self, revision: i64, timeout: Duration) {
        wait_for_within(
            "the agent's status: etcd reachable, dataplane connected",
            timeout,
            || {
                let s = self.status();
                s["etcd_reachable"] == true
                    && s["dataplane_connected"] == true
                    && s["revision"].as_i64().unwrap_or(0) >= revision
            },
        );
    }

    fn etcd_revision(&self) -> i64 {
        self.rt.block_on(self.store.revision()).unwrap()
    }
}

fn wait_for(what: &str, done: impl FnMut() -> bool) {
    wait_for_within(what, CONVERGE, done);
}

// ---- traffic -------------------------------------------------------------------------------

/// An echo server in `pod` on `PORT`: every connection gets its bytes back as they come.
fn start_server(pod: &Pod, stop: Arc<AtomicBool>) -> thread::JoinHandle<()> {
    let addr = SocketAddr::new(IpAddr::V4(pod.ip), PORT);
    tcp_server(&pod.netns, addr, &stop, echo)
}

/// From `from`: a new connection to `to`, 16 KiB sent and read back intact.
fn connect(from: &Pod, to: &Pod, timeout: Duration) -> Result<(), String> {
    tcp_echo(
        &from.netns,
        SocketAddr::new(IpAddr::V4(to.ip), PORT),
        timeout,
    )
}

/// A connection that must work: retried (short timeouts) until `CONVERGE`, for the first
/// packets' ARP and the last publication.
fn must_connect(from: &Pod, to: &Pod) {
    let deadline = Instant::now() + CONVERGE;
    loop {
        match connect(from, to, Duration::from_millis(1500)) {
            Ok(()) => return,
            Err(e) if Instant::now() >= deadline => {
                panic!("{} -> {} does not work: {e}", from.name, to.name)
            }
            Err(_) => thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// A connection that is established once and then exchanges a message every 50 ms; every
/// round trip must succeed. `stop` ends it and returns `(round trips, first failure)`.
struct LongLived {
    stop: Arc<AtomicBool>,
    trips: Arc<AtomicU64>,
    failure: Arc<Mutex<Option<String>>>,
    handle: thread::JoinHandle<()>,
}

impl LongLived {
    fn open(from: &Pod, to: &Pod) -> LongLived {
        let addr = SocketAddr::new(IpAddr::V4(to.ip), PORT);
        let stop = Arc::new(AtomicBool::new(false));
        let trips = Arc::new(AtomicU64::new(0));
        let failure = Arc::new(Mutex::new(None));
        let (s, t, f) = (Arc::clone(&stop), Arc::clone(&trips), Arc::clone(&failure));
        let handle = spawn_in(&from.netns, move || {
            let fail = |e: String| *f.lock().unwrap() = Some(e);
            let mut stream = match TcpStream::connect_timeout(&addr, Duration::from_secs(3)) {
                Ok(s) => s,
                Err(e) => return fail(format!("connect: {e}")),
            };
            let _ = stream.set_read_timeout(Some(Duration::from_secs(3)));
            let mut n = 0u64;
            while !s.load(Ordering::Relaxed) {
                let msg = format!("ping {n:08}\n");
                let mut back = vec![0u8; msg.len()];
                if let Err(e) = stream.write_all(msg.as_bytes()) {
                    return fail(format!("round trip {n}: write: {e}"));
                }
                if let Err(e) = stream.read_exact(&mut back) {
                    return fail(format!("round trip {n}: read: {e}"));
                }
                if back != msg.as_bytes() {
                    return fail(format!("round trip {n}: echo differs"));
                }
                n += 1;
                t.store(n, Ordering::Relaxed);
                thread::sleep(Duration::from_millis(50));
            }
        });
        let ll = LongLived {
            stop,
            trips,
            failure,
            handle,
        };
        wait_for("the long-lived connection's first round trip", || {
            ll.trips.load(Ordering::Relaxed) > 0 || ll.failure.lock().unwrap().is_some()
        });
        ll
    }

    /// Round trips so far; panics at the first failure.
    fn check(&self, when: &str) -> u64 {
        if let Some(e) = self.failure.lock().unwrap().clone() {
            panic!("the long-lived connection broke ({when}): {e}");
        }
        self.trips.load(Ordering::Relaxed)
    }

    fn close(self, when: &str) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        let LongLived {
            trips,
            failure,
            handle,
            ..
        } = self;
        handle.join().unwrap();
        if let Some(e) = failure.lock().unwrap().clone() {
            panic!("the long-lived connection broke ({when}): {e}");
        }
        trips.load(Ordering::Relaxed)
    }
}

// ---- the test ------------------------------------------------------------------------------

/// Non-reserved identities from `flagella identity list -o json`: `(id, labels)`.
fn cluster_identities(h: &Harness) -> Vec<(u64, Value)> {
    h.flagella_json(&["identity", "list"])
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["reserved"] != true)
        .map(|i| (i["id"].as_u64().unwrap(), i["labels"].clone()))
        .collect()
}

fn assert_no_duplicate_identity(ids: &[(u64, Value)]) {
    for (i, (id, labels)) in ids.iter().enumerate() {
        for (other_id, other_labels) in &ids[i + 1..] {
            assert_ne!(id, other_id, "identity number listed twice: {ids:?}");
            assert_ne!(labels, other_labels, "one label set, two numbers: {ids:?}");
        }
    }
}

#[test]
fn policy_restarts_etcd_outage_and_bad_keys_end_to_end() {
    let dataplane_bin = match preflight() {
        Ok(bin) => bin,
        Err(why) => {
            testkit::skip(&why);
            return;
        }
    };
    let started = Instant::now();
    let mut h = Harness::start(&dataplane_bin, "");
    let (a, b, c) = (h.pod("a").clone(), h.pod("b").clone(), h.pod("c").clone());

    // 0. The agent alone fills the dataplane: three endpoints with cluster identities, and
    //    this node's gateway (from its etcd entry).
    h.wait_agent_synced(h.etcd_revision());
    wait_for("three endpoints in the dataplane", || {
        h.dp_endpoints().len() == 3
    });
    let local = h.dataplane(json!({"op": "dump", "table": "local_node"}))["local_node"].clone();
    assert_eq!(local["gateway_ipv4"], GATEWAY.to_string(), "{local}");
    assert_eq!(local["name"], h.node.as_str(), "{local}");
    assert_eq!(local["underlay_ipv4"], UNDERLAY, "{local}");
    let stop = Arc::new(AtomicBool::new(false));
    let servers: Vec<_> = h
        .pods
        .iter()
        .map(|p| start_server(p, Arc::clone(&stop)))
        .collect();
    for (from, to) in [(&a, &b), (&c, &b), (&b, &a), (&c, &a)] {
        must_connect(from, to);
    }

    // 1-2. A policy imported with the CLI reaches the dataplane: only A may connect to B.
    h.import_policy("b-from-a", "b", "a");
    h.wait_ingress_admits_only(&b, &a);
    let denied = connect(&c, &b, Duration::from_millis(1500));
    assert!(denied.is_err(), "C -> B must be refused by b-from-a");
    connect(&a, &b, Duration::from_secs(3)).expect("A -> B is admitted by b-from-a");
    h.delete_policy("b-from-a");
    h.wait_ingress_open(&b);
    must_connect(&c, &b);
    eprintln!("policy import/delete: ok ({:?})", started.elapsed());

    // 3. kill -9 of the agent and a restart: fail static, same identities and endpoints.
    let long = LongLived::open(&a, &b);
    let ids_before = cluster_identities(&h);
    assert_no_duplicate_identity(&ids_before);
    let endpoints_before = h.dp_endpoints();
    assert_eq!(endpoints_before.len(), 3);
    let status = h.status();
    assert_eq!(status["dataplane_refusals"], 0, "{status}");
    h.control.kill9();
    connect(&a, &b, Duration::from_secs(3)).expect("A -> B with the agent dead");
    connect(&c, &b, Duration::from_secs(3)).expect("C -> B with the agent dead");
    h.start_control();
    h.wait_agent_synced(h.etcd_revision());
    let ids_after = cluster_identities(&h);
    assert_no_duplicate_identity(&ids_after);
    assert_eq!(ids_after, ids_before, "the restart changed the identities");
    assert_eq!(
        h.dp_endpoints(),
        endpoints_before,
        "the restart lost or changed an endpoint"
    );
    connect(&a, &b, Duration::from_secs(3)).expect("A -> B after the agent's restart");
    long.check("agent killed and restarted");
    eprintln!("agent kill -9 and restart: ok ({:?})", started.elapsed());

    // 4. etcd away for 10 s: the dataplane keeps its state, the agent says so.
    h.etcd.stop();
    let outage = Instant::now();
    let mut said_unreachable = false;
    let mut new_connections = 0;
    while outage.elapsed() < Duration::from_secs(10) {
        connect(&a, &b, Duration::from_secs(3)).expect("a new A -> B during the etcd outage");
        new_connections += 1;
        said_unreachable |= h.status()["etcd_reachable"] == false;
        long.check("etcd down");
        thread::sleep(Duration::from_millis(500));
    }
    assert!(
        new_connections >= 5,
        "only {new_connections} new connections"
    );
    assert!(
        said_unreachable,
        "the agent's status never said etcd was unreachable: {}",
        h.status()
    );
    h.etcd.restart();
    h.store =
        h.rt.block_on(Store::connect(&h.etcd.urls(), Duration::from_secs(2)))
            .unwrap();
    // The agent's backoff (0.5 s doubling) was at its 8 s step when etcd returned.
    h.wait_agent_synced_within(h.etcd_revision(), Duration::from_secs(30));
    eprintln!("the agent is back on etcd ({:?})", outage.elapsed());
    h.import_policy("a-from-b", "a", "b");
    h.wait_ingress_admits_only(&a, &b);
    let denied = connect(&c, &a, Duration::from_millis(1500));
    assert!(
        denied.is_err(),
        "C -> A must be refused by a-from-b, written after etcd returned"
    );
    connect(&b, &a, Duration::from_secs(3)).expect("B -> A is admitted by a-from-b");
    let trips = long.close("etcd outage and return");
    assert!(
        trips > 20,
        "the long-lived connection made only {trips} round trips"
    );
    eprintln!("etcd outage: ok ({:?})", started.elapsed());

    // 5a. A poison pill for identities: a corrupt allocation counter makes the identity of a new
    //     label set (pod "ghost") fail. That label set is logged and skipped; the etcd session
    //     goes on, and a policy change written after it is enforced.
    let next_key = format!("{ROOT}identities/next");
    let next_before =
        h.rt.block_on(h.store.get(&next_key))
            .unwrap()
            .map(|kv| kv.value)
            .unwrap_or_else(|| b"256".to_vec());
    h.rt.block_on(h.store.put(&next_key, "not-a-number"))
        .unwrap();
    let ghost_key = format!("endpoints/{}/ghost", h.namespace);
    h.put(
        &ghost_key,
        json!({"node": h.node, "labels": {"app": "ghost"}, "interface": "ghost0",
               "ifindex": 9999, "mac": "02:00:00:00:99:99"})
        .to_string(),
    );
    wait_for("the agent reports the ghost's identity error", || {
        h.status()["identity_errors"].as_object().is_some_and(|e| {
            e.values()
                .any(|r| r.as_str().is_some_and(|r| r.contains("identities/next")))
        })
    });
    h.import_policy("poison-check", "a", "b");
    h.wait_ingress_admits_only(&a, &b);
    assert_eq!(h.status()["etcd_reachable"], true, "{}", h.status());
    h.delete_policy("poison-check");
    h.rt.block_on(h.store.delete(&format!("{ROOT}{ghost_key}")))
        .unwrap();
    h.rt.block_on(h.store.put(&next_key, next_before)).unwrap();
    assert!(
        h.control.log_text().contains("identities/next"),
        "the log names the corrupt key"
    );
    eprintln!("identity poison pill: ok ({:?})", started.elapsed());

    // 5. Malformed keys: logged, counted, skipped; the rest converges.
    let malformed_before = h.status()["malformed_total"].as_u64().unwrap();
    let bad_endpoint = format!("{ROOT}{}", h.endpoint_key(&c));
    let bad_kind = format!("{ROOT}gadgets/{}/x", h.namespace);
    h.put(&h.endpoint_key(&c), "{oops");
    h.put(&format!("gadgets/{}/x", h.namespace), "{}");
    h.delete_policy("a-from-b");
    h.wait_ingress_open(&a);
    h.wait_agent_synced(h.etcd_revision());
    let status = h.status();
    assert_eq!(
        status["malformed_total"].as_u64().unwrap(),
        malformed_before + 2,
        "{status}"
    );
    let rejected: Vec<&str> = status["rejected_keys"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(rejected.contains(&bad_endpoint.as_str()), "{status}");
    assert!(rejected.contains(&bad_kind.as_str()), "{status}");
    assert_eq!(status["endpoints"], 3, "{status}");
    assert_eq!(status["dataplane_refusals"], 0, "{status}");
    let log = h.control.log_text();
    assert!(log.contains(&bad_endpoint), "the log names {bad_endpoint}");
    assert!(log.contains(&bad_kind), "the log names {bad_kind}");
    // Pod C keeps its last good endpoint, and everyone is reachable again.
    assert_eq!(h.dp_endpoints(), endpoints_before);
    must_connect(&c, &a);
    must_connect(&c, &b);
    must_connect(&a, &c);
    eprintln!("malformed keys: ok ({:?})", started.elapsed());

    // 6. Pod D the CNI way: created without an address, IPAM's address written back by the
    //    agent, then in the dataplane.
    let mut d = h.cni_pod.clone();
    let (ifindex, node, namespace) = (d.ifindex.to_string(), h.node.clone(), h.namespace.clone());
    let created = h.flagella_json(&[
        "endpoint",
        "create",
        "--node",
        &node,
        "--namespace",
        &namespace,
        "--name",
        "d",
        "--labels",
        "app=d",
        "--interface",
        &d.host_if,
        "--ifindex",
        &ifindex,
        "--mac",
        &d.mac,
        "--wait",
        "10",
    ]);
    d.ip = created["ipv4"]
        .as_str()
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no IPv4 address written back: {created}"));
    // The pod MTU comes with the address: the dataplane's uplink MTU (no uplink here: the
    // default) minus the overhead of the node's tunnel (VXLAN).
    let uplink_mtu = local["uplink_mtu"].as_u64().expect("uplink_mtu") as u16;
    let pod_mtu = control::schema::TunnelMode::Vxlan.pod_mtu(uplink_mtu);
    assert_eq!(created["mtu"], pod_mtu, "{created}");
    let net = u32::from(Ipv4Addr::new(10, 78, 0, 0));
    let offset = u32::from(d.ip).wrapping_sub(net);
    assert!(
        (2..255).contains(&offset) && h.pods.iter().all(|p| p.ip != d.ip),
        "IPAM gave D {}: outside {POD_CIDR}, reserved, or another pod's",
        d.ip
    );
    let allocation =
        h.rt.block_on(h.store.get(&format!("{ROOT}ipam/{node}/{}", d.ip)))
            .unwrap()
            .expect("the allocation key");
    assert_eq!(
        serde_json::from_slice::<Value>(&allocation.value).unwrap()["owner"],
        format!("{namespace}/d")
    );
    ip_in(
        &d.netns,
        &["link", "set", "dev", "eth0", "mtu", &pod_mtu.to_string()],
    );
    ip_in(
        &d.netns,
        &["addr", "add", &format!("{}/32", d.ip), "dev", "eth0"],
    );
    let gw = GATEWAY.to_string();
    ip_in(
        &d.netns,
        &[
            "route", "add", "default", "via", &gw, "dev", "eth0", "onlink",
        ],
    );
    wait_for("D in the dataplane", || {
        h.dp_endpoints()
            .iter()
            .any(|e| e["ipv4"] == d.ip.to_string())
    });
    let server_d = start_server(&d, Arc::clone(&stop));
    must_connect(&a, &d);
    must_connect(&d, &b);
    h.flagella(&["endpoint", "delete", &format!("{namespace}/d")]);
    wait_for("D gone from the dataplane", || h.dp_endpoints().len() == 3);
    wait_for("D's address released", || {
        h.rt.block_on(h.store.get(&format!("{ROOT}ipam/{node}/{}", d.ip)))
            .unwrap()
            .is_none()
    });
    eprintln!("pod created the CNI way: ok ({:?})", started.elapsed());

    stop.store(true, Ordering::Relaxed);
    server_d.join().unwrap();
    for s in servers {
        s.join().unwrap();
    }
    assert!(h.control.running(), "the agent is still running");
    assert!(h.dataplane.running(), "the dataplane is still running");
}

// ---- restart of the dataplane: enforced from the first packet --------------------------------

/// Remote pods written for the restart test: enough that the resync's ipcache takes a while.
const REMOTE_PODS: u32 = 3000;

/// A refused client that keeps trying: from `from`, new connections to `to` one after another
/// on `threads` threads (each attempt waits `attempt` for the handshake), until `stop`;
/// counts the attempts and the connections that were accepted.
struct Hammer {
    stop: Arc<AtomicBool>,
    attempts: Arc<AtomicU64>,
    accepted: Arc<AtomicU64>,
    handles: Vec<thread::JoinHandle<()>>,
}

impl Hammer {
    fn start(from: &Pod, to: &Pod, threads: usize, attempt: Duration) -> Hammer {
        let addr = SocketAddr::new(IpAddr::V4(to.ip), PORT);
        let stop = Arc::new(AtomicBool::new(false));
        let attempts = Arc::new(AtomicU64::new(0));
        let accepted = Arc::new(AtomicU64::new(0));
        let handles = (0..threads)
            .map(|_| {
                let (s, n, ok) = (
                    Arc::clone(&stop),
                    Arc::clone(&attempts),
                    Arc::clone(&accepted),
                );
                spawn_in(&from.netns, move || {
                    while !s.load(Ordering::Relaxed) {
                        n.fetch_add(1, Ordering::Relaxed);
                        match TcpStream::connect_timeout(&addr, attempt) {
                            Ok(_) => {
                                ok.fetch_add(1, Ordering::Relaxed);
                            }
                            // Refused outright (no route yet): do not spin.
                            Err(_) => thread::sleep(Duration::from_millis(5)),
                        }
                    }
                })
            })
            .collect();
        Hammer {
            stop,
            attempts,
            accepted,
            handles,
        }
    }

    /// Stops the threads; `(attempts, accepted)`.
    fn finish(self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        for h in self.handles {
            h.join().unwrap();
        }
        (
            self.attempts.load(Ordering::Relaxed),
            self.accepted.load(Ordering::Relaxed),
        )
    }
}

/// Issue 14, finding 5: after a dataplane restart the agent used to send the endpoints (not
/// enforced), then the whole ipcache one request at a time, then the policies; a client the
/// policy refuses could connect in that window, and its connection stayed established. Here
/// pod C keeps trying to connect to pod B, whose policy admits only A, while the dataplane is
/// killed (-9) and started again, with 3000 remote pods in the ipcache: not one connection may
/// be accepted, and A -> B works again afterwards.
#[test]
fn dataplane_restart_never_forwards_unenforced() {
    let dataplane_bin = match preflight() {
        Ok(bin) => bin,
        Err(why) => {
            testkit::skip(&why);
            return;
        }
    };
    let started = Instant::now();
    let mut h = Harness::start(&dataplane_bin, "r");
    let (a, b, c) = (h.pod("a").clone(), h.pod("b").clone(), h.pod("c").clone());
    h.put(
        "nodes/far",
        json!({"underlay_ip": "192.168.78.2", "pod_cidrs": ["10.79.0.0/16"], "tunnel": "vxlan"})
            .to_string(),
    );
    for i in 0..REMOTE_PODS {
        let ip = Ipv4Addr::new(10, 79, (i / 250) as u8, (1 + i % 250) as u8);
        h.put(
            &format!("endpoints/{}/far-{i}", h.namespace),
            json!({"node": "far", "labels": {"app": "far"}, "ipv4": ip.to_string(),
                   "interface": format!("far{i}")})
            .to_string(),
        );
    }
    h.wait_agent_synced_within(h.etcd_revision(), Duration::from_secs(60));
    let ipcache_len = |h: &Harness| {
        h.dataplane(json!({"op": "dump", "table": "ipcache"}))["entries"]
            .as_array()
            .map_or(0, Vec::len)
    };
    wait_for("the remote pods in the ipcache", || {
        ipcache_len(&h) >= REMOTE_PODS as usize
    });
    let stop = Arc::new(AtomicBool::new(false));
    let servers: Vec<_> = h
        .pods
        .iter()
        .map(|p| start_server(p, Arc::clone(&stop)))
        .collect();
    h.import_policy("b-from-a", "b", "a");
    h.wait_ingress_admits_only(&b, &a);
    must_connect(&a, &b);
    let before = Hammer::start(&c, &b, 1, Duration::from_millis(500));
    thread::sleep(Duration::from_secs(1));
    let (tries, accepted) = before.finish();
    assert_eq!(
        accepted, 0,
        "C -> B accepted before the restart ({tries} tries)"
    );
    eprintln!("setup: ok ({:?})", started.elapsed());

    // The refused client keeps trying across kill -9 and the restart.
    let hammer = Hammer::start(&c, &b, 4, Duration::from_millis(300));
    thread::sleep(Duration::from_millis(500));
    h.restart_dataplane(&dataplane_bin);
    let restarted = Instant::now();
    wait_for_within(
        "B's policy back in the restarted dataplane",
        CONVERGE,
        || {
            h.dp_endpoints().len() == 3
                && h.dp_ingress(&b)["enforced"] == true
                && ipcache_len(&h) >= REMOTE_PODS as usize
        },
    );
    eprintln!("resync done {:?} after the restart", restarted.elapsed());
    must_connect(&a, &b);
    thread::sleep(Duration::from_secs(2));
    let (tries, accepted) = hammer.finish();
    eprintln!("C -> B: {tries} attempts across the restart, {accepted} accepted");
    assert!(tries > 20, "the refused client tried only {tries} times");
    assert_eq!(
        accepted, 0,
        "C -> B was accepted {accepted} times across the dataplane's restart: B carried \
         traffic before its policy was in force"
    );
    let status = h.status();
    assert_eq!(status["dataplane_refusals"], 0, "{status}");
    stop.store(true, Ordering::Relaxed);
    for s in servers {
        s.join().unwrap();
    }
    assert!(h.control.running(), "the agent is still running");
    eprintln!("dataplane restart: ok ({:?})", started.elapsed());
}

// ---- restarts and upgrades keep connections (issue 15) ------------------------------------

/// Where pod B receives the long transfer.
const TRANSFER_PORT: u16 = 7879;
/// The transfer's size: long enough to span four restarts.
const TRANSFER_BYTES: u64 = 200 << 20;
const CHUNK: usize = 64 << 10;

/// FNV-1a over a byte stream, computed the same way by the sender and the receiver.
struct StreamHash(u64);

impl StreamHash {
    fn new() -> StreamHash {
        StreamHash(0xcbf2_9ce4_8422_2325)
    }

    fn update(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.0 ^= u64::from(*byte);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
}

/// What pod B received: the stream's hash, its length, and the longest pause between two
/// reads (the delivery gap a restart causes).
struct Received {
    hash: u64,
    bytes: u64,
    longest_gap: Duration,
}

/// In `pod`: accepts one connection on [`TRANSFER_PORT`] and reads it to the end, counting
/// into `progress` as it goes.
fn start_sink(pod: &Pod, progress: Arc<AtomicU64>) -> thread::JoinHandle<Received> {
    let addr = SocketAddr::new(IpAddr::V4(pod.ip), TRANSFER_PORT);
    let listener = Arc::new(Mutex::new(None));
    let bound = Arc::clone(&listener);
    let handle = spawn_in(&pod.netns, move || {
        let l = std::net::TcpListener::bind(addr).expect("bind the transfer's sink");
        *bound.lock().unwrap() = Some(());
        let (mut stream, _) = l.accept().expect("accept the transfer");
        let mut buf = vec![0u8; CHUNK];
        let mut hash = StreamHash::new();
        let (mut bytes, mut longest_gap, mut last) = (0u64, Duration::ZERO, Instant::now());
        loop {
            let n = stream.read(&mut buf).expect("read the transfer");
            let now = Instant::now();
            longest_gap = longest_gap.max(now - last);
            last = now;
            if n == 0 {
                break;
            }
            hash.update(&buf[..n]);
            bytes += n as u64;
            progress.store(bytes, Ordering::Relaxed);
        }
        Received {
            hash: hash.0,
            bytes,
            longest_gap,
        }
    });
    wait_for("the transfer's sink listening", || {
        listener.lock().unwrap().is_some()
    });
    handle
}

/// In `from`: one connection to `to`'s sink, [`TRANSFER_BYTES`] of pseudo-random data
/// written, then closed; the hash of what was sent.
fn start_sender(from: &Pod, to: &Pod) -> thread::JoinHandle<u64> {
    let addr = SocketAddr::new(IpAddr::V4(to.ip), TRANSFER_PORT);
    spawn_in(&from.netns, move || {
        let mut stream = TcpStream::connect_timeout(&addr, CONVERGE).expect("connect the transfer");
        let mut hash = StreamHash::new();
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        let mut chunk = vec![0u8; CHUNK];
        let mut sent = 0u64;
        while sent < TRANSFER_BYTES {
            for word in chunk.chunks_exact_mut(8) {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                word.copy_from_slice(&state.to_le_bytes());
            }
            stream.write_all(&chunk).expect("send the transfer");
            hash.update(&chunk);
            sent += CHUNK as u64;
        }
        stream
            .shutdown(std::net::Shutdown::Write)
            .expect("close the transfer");
        hash.0
    })
}

/// The dataplane's established flows (more than a minute to live, so none can expire
/// during a restart): `(src, dst, proto)` as the conntrack dump names them.
fn established_flows(h: &Harness) -> std::collections::BTreeSet<(String, String, u64)> {
    let dump = h.dataplane(json!({"op": "dump", "table": "conntrack", "limit": 10000}));
    dump["workers"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|w| w["entries"].as_array().cloned().unwrap_or_default())
        .filter(|e| e["expires_in_ms"].as_u64().unwrap_or(0) > 60_000)
        .map(|e| {
            (
                e["src"].as_str().unwrap_or_default().to_string(),
                e["dst"].as_str().unwrap_or_default().to_string(),
                e["proto"].as_u64().unwrap_or(0),
            )
        })
        .collect()
}

/// `flagella_xdp_no_socket_dropped_total`, summed over the interfaces: the frames the pinned
/// programs dropped while no dataplane served them.
fn dropped_without_socket(h: &Harness) -> f64 {
    let text = common::prometheus::http_get_in(
        &h.node,
        SocketAddr::from(([127, 0, 0, 1], 9962)),
        "/metrics",
    )
    .unwrap_or_default();
    text.lines()
        .filter(|l| l.starts_with("flagella_xdp_no_socket_dropped_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Issue 15: a 200 MB transfer from pod A to pod B runs while the dataplane is restarted three
/// times gracefully (SIGTERM, then a new process) and once by kill -9 and a start, its
/// programs pinned and its conntrack in a state file. The transfer completes intact (hash
/// compared), every established conntrack entry before a restart is there after it, the
/// pinned program stays on the pods' interfaces while no dataplane runs (and counts what it
/// drops), and pod C, which B's policy refuses, never connects (probing every few ms). The
/// longest delivery gap is printed.
#[test]
fn dataplane_restarts_keep_a_transfer_and_its_conntrack() {
    let dataplane_bin = match preflight() {
        Ok(bin) => bin,
        Err(why) => {
            testkit::skip(&why);
            return;
        }
    };
    let bpffs = match testkit::BpffsGuard::mount("fe2e-bpffs-") {
        Ok(fs) => fs,
        Err(why) => {
            testkit::skip(&format!("no bpffs for the pinned programs: {why}"));
            return;
        }
    };
    let started = Instant::now();
    let mut h = Harness::start_restartable(&dataplane_bin, "u", bpffs);
    let (a, b, c) = (h.pod("a").clone(), h.pod("b").clone(), h.pod("c").clone());
    let stop = Arc::new(AtomicBool::new(false));
    let server = start_server(&b, Arc::clone(&stop));
    wait_for("the three pods in the dataplane", || {
        h.dp_endpoints().len() == 3
    });
    h.import_policy("b-from-a", "b", "a");
    h.wait_ingress_admits_only(&b, &a);
    must_connect(&a, &b);

    let progress = Arc::new(AtomicU64::new(0));
    let sink = start_sink(&b, Arc::clone(&progress));
    let sender = start_sender(&a, &b);
    // Six probes in flight, each given 40 ms: a new attempt every ~7 ms.
    let hammer = Hammer::start(&c, &b, 6, Duration::from_millis(40));
    for round in 0..4u64 {
        let mark = (round + 1) * TRANSFER_BYTES / 5;
        wait_for_within("the transfer's progress", Duration::from_secs(300), || {
            progress.load(Ordering::Relaxed) >= mark
        });
        let before = established_flows(&h);
        let transfer = format!("{}:{TRANSFER_PORT}", b.ip);
        assert!(
            before.iter().any(|(_, dst, _)| *dst == transfer),
            "the transfer is not in conntrack: {before:?}"
        );
        let graceful = round < 3;
        let stopped = Instant::now();
        if graceful {
            let status = h.dataplane.terminate();
            assert!(
                status.is_some_and(|s| s.success()),
                "graceful stop: {status:?}"
            );
            let link = ip_in(&h.node, &["link", "show", "dev", &a.host_if]);
            assert!(
                link.contains("xdp"),
                "the pinned program left A's interface with the process: {link}"
            );
        } else {
            h.dataplane.kill9();
            let _ = std::fs::remove_file(&h.socket);
        }
        h.start_dataplane(&dataplane_bin);
        let after = established_flows(&h);
        let lost: Vec<_> = before.difference(&after).collect();
        assert!(
            lost.is_empty(),
            "round {round}: conntrack entries lost across the restart: {lost:?}"
        );
        wait_for("the agent's resync of the new dataplane", || {
            h.dp_endpoints().len() == 3 && h.dp_ingress(&b)["enforced"] == true
        });
        eprintln!(
            "restart {round} ({}): back and resynced {:?} after the stop, {} flows kept",
            if graceful { "graceful" } else { "kill -9" },
            stopped.elapsed(),
            before.len()
        );
    }
    let sent = sender.join().expect("the sender");
    let received = sink.join().expect("the sink");
    assert_eq!(received.bytes, TRANSFER_BYTES, "the transfer is complete");
    assert_eq!(received.hash, sent, "the transfer arrived intact");
    eprintln!(
        "200 MB across 3 graceful restarts and 1 kill -9: intact; longest delivery gap {:?}",
        received.longest_gap
    );
    let dropped = dropped_without_socket(&h);
    eprintln!("frames the pinned programs dropped while no dataplane ran: {dropped}");
    assert!(dropped > 0.0, "nothing counted as dropped without a socket");
    let (tries, accepted) = hammer.finish();
    eprintln!("C -> B: {tries} attempts across the restarts, {accepted} accepted");
    assert!(tries > 500, "the refused client tried only {tries} times");
    assert_eq!(accepted, 0, "C -> B was accepted across a restart");
    stop.store(true, Ordering::Relaxed);
    server.join().unwrap();
    eprintln!("dataplane restarts: ok ({:?})", started.elapsed());
}
