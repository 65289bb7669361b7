//! A cluster from etcd alone: three nodes on a bridged underlay, each with its own
//! `flagella-dataplane` (in the node's namespace) and `flagella-control`, three dual-stack pods per
//! node, and nothing pushed to a dataplane or configured by hand: the nodes, the pods (the CNI
//! way: an endpoint without addresses, which the node's agent allocates) and the policies are
//! written to a real etcd; next hops come from the kernel.
//!
//! ```text
//!                      fcl-<pid>-<m>-u: bridge br0 (underlay 10.77.<m>.0/24)
//!               ┌─────────────────────────┼─────────────────────────┐
//!  fcl-<pid>-<m>-n1 eth0 .1      fcl-<pid>-<m>-n2 eth0 .2      fcl-<pid>-<m>-n3 eth0 .3
//!   flagella-dataplane            flagella-dataplane            flagella-dataplane
//!   pods a-c (10.81.<m>.0/24,    pods a-c (10.82.<m>.0/24,    pods a-c (10.83.<m>.0/24,
//!              fd81:<m>::/64)                fd82:<m>::/64)                fd83:<m>::/64)
//!  root namespace: etcd (loopback), one flagella-control per node (Unix sockets)
//! ```
//!
//! For VXLAN, Geneve and native routing in turn (one test each, run one at a time):
//! - every dataplane resolves its peers' next hops from the kernel (`dump next_hops`);
//! - the hosts keep their network: ping and a TCP connection between underlay addresses work
//!   before and after pod traffic (the uplink's XDP program takes only what the dataplane owns);
//! - pod -> pod on other nodes and on the same node: ping, TCP echo, UDP request/response, over
//!   IPv4 and (tunnels) IPv6; a 100 MB TCP transfer across nodes with its checksum compared;
//! - MTU: pods get an MTU with room for the encapsulation (from their agent, in etcd); a pod
//!   whose interface claims more sends a full-size datagram with DF and its kernel learns the
//!   path MTU from the dataplane's ICMP "too big" error;
//! - a service VIP with backends on the two other nodes, SNAT then DSR: both answer;
//! - a NetworkPolicy on a node-2 pod admitting one node-1 pod: that pod connects, the other
//!   node-1 pod is refused, decided on node 2 (from the VNI in tunnels, the ipcache natively).
//!
//! In the tunnel modes, tshark decodes the tunnel frames captured on the underlay (checksums
//! checked, Geneve's DSR option included) without a malformed frame or a bad checksum, and a
//! Linux VXLAN / Geneve device in external (collect-metadata) mode, as a fourth node from etcd,
//! exchanges ICMP and TCP with a Flagella pod.
//!
//! Pods and their nodes (`pods_and_their_nodes_*`, VXLAN and native routing): through each
//! node's host interface (`flg_host`, created by its dataplane), a pod talks TCP to a server in
//! its node's namespace (underlay, gateway and another address of the node, learnt from its
//! kernel), the node to its pods, the node to
//! another node's pod, a pod to another node's address; an egress `toEntities: remote-node`
//! policy refuses the pod's own node and `toEntities: host` the other node; an ingress
//! `fromEntities: host` policy admits the node and refuses pods and the other node (which is
//! `remote-node`), `fromEntities: remote-node` admits the other node while the local host stays
//! admitted (allow-localhost), and an `ingressDeny` of `host` refuses it. `flagella policy
//! trace` (live, from etcd) agrees with each verdict on `host` / `remote-node`; policies
//! selecting on service accounts (every pod's record carries one) admit and reach exactly
//! their pods, and a pod reaches its own address whatever its policy (checks in
//! `cluster/semantics.rs`).
//! `pods_reach_the_world_masqueraded` (VXLAN) adds a router and a server that is no node
//! behind the nodes' default route: pods reach it masqueraded to their node's address (1,000
//! concurrent connections, 1,000 distinct ports), the router's "fragmentation needed" reaches
//! the pod, an egress policy refusing the world stops it, the node's own traffic is untouched.
//! An off-path sender in the world guessing a masqueraded flow's tuple sends RSTs at made-up
//! sequence numbers during a 4 MB transfer: dropped, the transfer completes and the flow stays
//! open; the pod's own RST closes it (checks in `cluster/tcp_rst.rs`).
//!
//! VXLAN also checks next-hop recovery: node 3's uplink is recreated with a new MAC (its
//! dataplane restarted, since its interface is new), and node 1, untouched, reaches node 3's pods
//! again.
//!
//! `icmp_types_and_host_policies_over_vxlan` (checks in `cluster/host_firewall.rs`): an
//! `icmps` rule admits ping in both families and refuses an ICMP timestamp request (counted);
//! a host policy (`nodeSelector` on node 1's etcd labels) admits pods to node 1 on TCP 8080 and
//! refuses 9090, leaves node 2 alone, and its deletion restores 9090.
//!
//! `nodeport_from_outside_*` and `nodeport_snat_from_outside_*` (checks in
//! `cluster/nodeport.rs`): a client outside the cluster, behind the underlay's router, through
//! node 1's NodePort with DSR, and in SNAT mode.
//!
//! Skips, with the reason, when not root or when etcd, `ip netns`, AF_XDP or the dataplane binary
//! are missing (a failure under CI). Stops only the processes it started and deletes its
//! namespaces and files, pass or fail.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failure is a failed test

mod common;
#[path = "cluster/host_firewall.rs"]
mod host_firewall;
#[path = "cluster/nodeport.rs"]
mod nodeport;
#[path = "cluster/renumber.rs"]
mod renumber;
#[path = "cluster/semantics.rs"]
mod semantics;
#[path = "cluster/tcp_rst.rs"]
mod tcp_rst;

use std::fs::File;
use std::io::{Read, Write};
use std::net::{
    IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket,
};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::net::{
    ip_in, link_facts, preflight, run_ip, spawn_agent_with_args, spawn_in, wait_for_within,
    NetNsGuard, Proc,
};
use common::traffic::{self, dataplane_request, echo, tcp_server};
use common::Etcd;
use control::store::Store;
use serde_json::{json, Value};

const FLAGELLA: &str = env!("CARGO_BIN_EXE_flagella");
const ROOT: &str = "/flagella/v1/";
const NAMESPACE: &str = "cl";
const ECHO_PORT: u16 = 7001;
const UDP_PORT: u16 = 7002;
const BULK_PORT: u16 = 7003;
const NAME_PORT: u16 = 8080;
const BULK_BYTES: usize = 100 << 20;
/// How long something that should work may take to show it (ARP, a publication).
const CONVERGE: Duration = Duration::from_secs(20);
const NODES: u8 = 3;
const PODS: [&str; 3] = ["a", "b", "c"];

/// One cluster at a time: three busy dataplanes already share this machine's cores.
static SERIAL: Mutex<()> = Mutex::new(());

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Vxlan,
    Geneve,
    Native,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Vxlan => "vxlan",
            Mode::Geneve => "geneve",
            Mode::Native => "native",
        }
    }

    /// Distinguishes the runs' addresses and names.
    fn index(self) -> u8 {
        match self {
            Mode::Vxlan => 1,
            Mode::Geneve => 2,
            Mode::Native => 3,
        }
    }

    /// Tunnels carry IPv6 pods over the IPv4 underlay; native routing of IPv6 would need an
    /// IPv6 underlay, which this topology does not have.
    fn ipv6(self) -> bool {
        self != Mode::Native
    }
}

#[derive(Clone, Debug)]
struct Pod {
    /// `n1a`: node 1, pod a; also its `app` label.
    name: String,
    node: u8,
    netns: String,
    host_if: String,
    ifindex: u64,
    mac: String,
    v4: Ipv4Addr,
    v6: Option<Ipv6Addr>,
}

impl Pod {
    fn addrs(&self, v6: bool) -> Vec<IpAddr> {
        let mut v = vec![IpAddr::V4(self.v4)];
        if v6 {
            v.extend(self.v6.map(IpAddr::V6));
        }
        v
    }
}

struct Node {
    n: u8,
    name: String,
    netns: String,
    underlay: Ipv4Addr,
    socket: PathBuf,
    status_file: PathBuf,
    dataplane: Proc,
    control: Proc,
}

/// One cluster; dropped in field order: servers stop, processes, namespaces, etcd, files.
struct Cluster {
    stop_servers: Arc<AtomicBool>,
    servers: Vec<thread::JoinHandle<()>>,
    nodes: Vec<Node>,
    pods: Vec<Pod>,
    netns: NetNsGuard,
    etcd: Etcd,
    dir: PathBuf,
    mode: Mode,
    prefix: String,
    bin: PathBuf,
    rt: tokio::runtime::Runtime,
    store: Store,
    /// More arguments for every `flagella-control`.
    agent_args: Vec<String>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop_servers.store(true, Ordering::Relaxed);
        for h in self.servers.drain(..) {
            let _ = h.join();
        }
        for node in &self.nodes {
            eprintln!(
                "---- {} flagella-control ----\n{}\n---- {} flagella-dataplane ----\n{}",
                node.name,
                node.control.log_text(),
                node.name,
                node.dataplane.log_text()
            );
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn underlay_of(mode: Mode, n: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 77, mode.index(), n)
}

fn pod_cidr_v4(mode: Mode, n: u8) -> String {
    format!("10.{}.{}.0/24", 80 + n, mode.index())
}

fn pod_cidr_v6(mode: Mode, n: u8) -> String {
    format!("fd{}:{}::/64", 80 + n, mode.index())
}

impl Cluster {
    fn start(mode: Mode, bin: &Path) -> Cluster {
        Cluster::start_with(mode, bin, &[])
    }

    /// [`Cluster::start`] with `agent_args` given to every agent.
    fn start_with(mode: Mode, bin: &Path, agent_args: &[&str]) -> Cluster {
        let pid = std::process::id();
        let prefix = format!("fcl-{pid}-{}", mode.index());
        let dir = testkit::private_dir(&format!("{prefix}-"));
        let etcd = Etcd::start().expect("etcd (checked by preflight)");
        let rt = common::runtime();
        let store = rt
            .block_on(Store::connect(&etcd.urls(), Duration::from_secs(2)))
            .unwrap();
        let mut c = Cluster {
            stop_servers: Arc::new(AtomicBool::new(false)),
            servers: Vec::new(),
            nodes: Vec::new(),
            pods: Vec::new(),
            netns: NetNsGuard::default(),
            etcd,
            dir,
            mode,
            prefix,
            bin: bin.to_path_buf(),
            rt,
            store,
            agent_args: agent_args.iter().map(|a| a.to_string()).collect(),
        };
        c.build_underlay();
        for n in 1..=NODES {
            c.build_node(n);
        }
        for n in 1..=NODES {
            c.start_dataplane(n);
        }
        c.write_cluster();
        for n in 1..=NODES {
            c.start_control(n);
        }
        c.wait_pods_addressed();
        c
    }

    fn add_netns(&mut self, name: &str) {
        self.netns.add(name).unwrap_or_else(|e| panic!("{e}"));
        ip_in(name, &["link", "set", "lo", "up"]);
    }

    fn underlay_ns(&self) -> String {
        format!("{}-u", self.prefix)
    }

    fn build_underlay(&mut self) {
        let u = self.underlay_ns();
        self.add_netns(&u);
        ip_in(&u, &["link", "add", "br0", "type", "bridge"]);
        ip_in(&u, &["link", "set", "br0", "up"]);
    }

    /// The node's namespace and its uplink `eth0` on the underlay bridge, and its pods' veths.
    fn build_node(&mut self, n: u8) {
        let netns = format!("{}-n{n}", self.prefix);
        self.add_netns(&netns);
        self.plug_uplink(n, &netns);
        for pod in PODS {
            let name = format!("n{n}{pod}");
            let pod_ns = format!("{netns}-{pod}");
            self.add_netns(&pod_ns);
            let host_if = format!(
                "c{}{}{n}{pod}",
                std::process::id() % 10_000_000,
                self.mode.index()
            );
            ip_in(
                &netns,
                &[
                    "link", "add", &host_if, "type", "veth", "peer", "name", "eth0", "netns",
                    &pod_ns,
                ],
            );
            ip_in(&netns, &["link", "set", &host_if, "up"]);
            ip_in(&pod_ns, &["link", "set", "eth0", "up"]);
            let (ifindex, _) = link_facts(&netns, &host_if);
            let (_, mac) = link_facts(&pod_ns, "eth0");
            self.pods.push(Pod {
                name,
                node: n,
                netns: pod_ns,
                host_if,
                ifindex,
                mac,
                v4: Ipv4Addr::UNSPECIFIED,
                v6: None,
            });
        }
        let dir = &self.dir;
        self.nodes.push(Node {
            n,
            name: format!("node-{n}"),
            netns,
            underlay: underlay_of(self.mode, n),
            socket: dir.join(format!("n{n}.sock")),
            status_file: dir.join(format!("n{n}-status.json")),
            dataplane: Proc {
                child: None,
                what: "flagella-dataplane",
                log: dir.join(format!("n{n}-dataplane.log")),
            },
            control: Proc {
                child: None,
                what: "flagella-control",
                log: dir.join(format!("n{n}-control.log")),
            },
        });
    }

    /// A veth from the underlay bridge to the node's `eth0`, with the node's underlay address
    /// (also used to recreate the link, which gives it a new MAC).
    fn plug_uplink(&self, n: u8, netns: &str) {
        let u = self.underlay_ns();
        let port = format!("u{n}");
        ip_in(
            &u,
            &[
                "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", netns,
            ],
        );
        ip_in(&u, &["link", "set", &port, "master", "br0"]);
        ip_in(&u, &["link", "set", &port, "up"]);
        let addr = format!("{}/24", underlay_of(self.mode, n));
        ip_in(netns, &["addr", "add", &addr, "dev", "eth0"]);
        ip_in(netns, &["link", "set", "eth0", "up"]);
    }

    fn node(&self, n: u8) -> &Node {
        &self.nodes[usize::from(n - 1)]
    }

    fn pod(&self, name: &str) -> &Pod {
        self.pods.iter().find(|p| p.name == name).unwrap()
    }

    fn start_dataplane(&mut self, n: u8) {
        let config = self.dir.join("dataplane.toml");
        std::fs::write(&config, "").unwrap(); // the flags say everything
        let node = self.node(n);
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &node.netns])
            .arg(&self.bin)
            .arg("--config")
            .arg(&config)
            .arg("--socket")
            .arg(&node.socket)
            .args(["--interface", "eth0=uplink"])
            // Three nodes share two cores: idle workers must not spin.
            .args(["--idle-sleep-us", "200"]);
        for pod in self.pods.iter().filter(|p| p.node == n) {
            cmd.args(["--interface", &format!("{}=pod", pod.host_if)]);
        }
        let log = File::options()
            .create(true)
            .append(true)
            .open(&node.dataplane.log)
            .unwrap();
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn ip netns exec flagella-dataplane");
        let socket = node.socket.clone();
        let node = &mut self.nodes[usize::from(n - 1)];
        node.dataplane.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while UnixStream::connect(&socket).is_err() {
            assert!(
                node.dataplane.running(),
                "node {n}'s dataplane exited before it was ready:\n{}",
                node.dataplane.log_text()
            );
            assert!(
                Instant::now() < deadline,
                "node {n}'s dataplane socket did not appear:\n{}",
                node.dataplane.log_text()
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    fn start_control(&mut self, n: u8) {
        let url = self.etcd.url.clone();
        let node = &mut self.nodes[usize::from(n - 1)];
        let args: Vec<&str> = self.agent_args.iter().map(String::as_str).collect();
        let child = spawn_agent_with_args(
            &url,
            &node.name,
            &node.socket,
            &node.status_file,
            &node.control.log,
            &args,
        );
        node.control.child = Some(child);
    }

    fn put(&self, key: &str, value: Value) {
        let key = format!("{ROOT}{key}");
        self.rt
            .block_on(self.store.put(&key, value.to_string()))
            .unwrap();
    }

    fn delete(&self, key: &str) {
        let key = format!("{ROOT}{key}");
        self.rt.block_on(self.store.delete(&key)).unwrap();
    }

    fn get(&self, key: &str) -> Option<Value> {
        let key = format!("{ROOT}{key}");
        let kv = self.rt.block_on(self.store.get(&key)).unwrap()?;
        serde_json::from_slice(&kv.value).ok()
    }

    /// What the cluster writes (nodes, the namespace) and what the CNI plugin writes: each pod's
    /// endpoint without addresses, for its node's agent to allocate.
    fn write_cluster(&self) {
        for node in &self.nodes {
            let mut cidrs = vec![pod_cidr_v4(self.mode, node.n)];
            if self.mode.ipv6() {
                cidrs.push(pod_cidr_v6(self.mode, node.n));
            }
            self.put(
                &format!("nodes/{}", node.name),
                json!({"underlay_ip": node.underlay.to_string(), "pod_cidrs": cidrs,
                       "tunnel": self.mode.name()}),
            );
        }
        self.put(
            &format!("namespaces/{NAMESPACE}"),
            json!({"labels": {"team": "cluster"}}),
        );
        for pod in &self.pods {
            self.put(
                &format!("endpoints/{NAMESPACE}/{}", pod.name),
                json!({"node": format!("node-{}", pod.node), "labels": {"app": pod.name},
                       "service_account": semantics::service_account_of(&pod.name),
                       "interface": pod.host_if, "ifindex": pod.ifindex, "mac": pod.mac}),
            );
        }
    }

    /// Waits for every agent's IPAM to fill its pods' addresses in, then configures each pod
    /// as the CNI plugin would: the addresses, the MTU the agent chose, routes via the gateway.
    fn wait_pods_addressed(&mut self) {
        let v6 = self.mode.ipv6();
        let mut records = Vec::new();
        for pod in &self.pods {
            let key = format!("endpoints/{NAMESPACE}/{}", pod.name);
            let mut record = Value::Null;
            wait_for(&format!("an address for pod {}", pod.name), || {
                record = self.get(&key).unwrap_or(Value::Null);
                record["ipv4"].is_string() && (!v6 || record["ipv6"].is_string())
            });
            records.push(record);
        }
        for (pod, record) in self.pods.iter_mut().zip(records) {
            pod.v4 = record["ipv4"].as_str().unwrap().parse().unwrap();
            pod.v6 = record["ipv6"].as_str().map(|a| a.parse().unwrap());
            let mtu = record["mtu"]
                .as_u64()
                .unwrap_or_else(|| panic!("the agent wrote no mtu for pod {}: {record}", pod.name));
            configure_pod(pod, self.mode, mtu);
        }
    }

    /// One request to node `n`'s dataplane; the reply must be ok.
    fn dataplane(&self, n: u8, request: Value) -> Value {
        dataplane_request(&self.node(n).socket, &request)
    }

    fn next_hops(&self, n: u8) -> Value {
        self.dataplane(n, json!({"op": "dump", "table": "next_hops"}))["next_hops"].clone()
    }

    /// Waits until every dataplane resolved both of its peers, from the kernel.
    fn wait_next_hops(&self) {
        for node in &self.nodes {
            wait_for(&format!("{}'s next hops to both peers", node.name), || {
                self.next_hops(node.n)["peers"]
                    .as_array()
                    .is_some_and(|p| p.len() == usize::from(NODES - 1))
            });
        }
    }

    /// The MAC of node `n`'s uplink.
    fn uplink_mac(&self, n: u8) -> String {
        link_facts(&self.node(n).netns, "eth0").1
    }

    fn counters(&self, n: u8) -> Value {
        self.dataplane(n, json!({"op": "status"}))
    }

    fn flagella(&self, args: &[&str]) {
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
    }

    /// Servers in every pod: TCP echo, UDP echo, a bulk sink that answers with a checksum, and a
    /// name server (answers the pod's name) for services.
    fn start_servers(&mut self) {
        let stop = Arc::clone(&self.stop_servers);
        let v6 = self.mode.ipv6();
        for pod in &self.pods {
            for addr in pod.addrs(v6) {
                self.servers.push(tcp_server(
                    &pod.netns,
                    SocketAddr::new(addr, ECHO_PORT),
                    &stop,
                    echo,
                ));
                self.servers.push(tcp_server(
                    &pod.netns,
                    SocketAddr::new(addr, BULK_PORT),
                    &stop,
                    bulk_sink,
                ));
                self.servers.push(udp_echo(pod, addr, &stop));
            }
            let name = pod.name.clone();
            self.servers.push(tcp_server(
                &pod.netns,
                SocketAddr::new(IpAddr::V4(pod.v4), NAME_PORT),
                &stop,
                move |mut s| {
                    let _ = s.write_all(name.as_bytes());
                },
            ));
        }
    }
}

fn wait_for(what: &str, done: impl FnMut() -> bool) {
    wait_for_within(what, CONVERGE, done);
}

/// The pod's side of the CNI plugin's work: addresses, MTU, routes through the gateway (the
/// first host of the node's pod CIDR, answered by the dataplane).
fn configure_pod(pod: &Pod, mode: Mode, mtu: u64) {
    let ns = &pod.netns;
    ip_in(ns, &["link", "set", "eth0", "mtu", &mtu.to_string()]);
    ip_in(
        ns,
        &["addr", "add", &format!("{}/32", pod.v4), "dev", "eth0"],
    );
    let gw4 = format!("10.{}.{}.1", 80 + pod.node, mode.index());
    ip_in(
        ns,
        &[
            "route", "add", "default", "via", &gw4, "dev", "eth0", "onlink",
        ],
    );
    if let Some(v6) = pod.v6 {
        ip_in(
            ns,
            &[
                "-6",
                "addr",
                "add",
                &format!("{v6}/128"),
                "dev",
                "eth0",
                "nodad",
            ],
        );
        let gw6 = format!("fd{}:{}::1", 80 + pod.node, mode.index());
        ip_in(
            ns,
            &[
                "-6", "route", "add", "default", "via", &gw6, "dev", "eth0", "onlink",
            ],
        );
    }
}

// ---- servers and clients in pods ---------------------------------------------------------------

/// FNV-1a over a byte stream, 64 bits.
#[derive(Clone, Copy)]
struct Fnv(u64);

impl Fnv {
    fn new() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }

    fn update(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
}

/// Reads everything, then answers `<bytes> <fnv64>`.
fn bulk_sink(mut stream: TcpStream) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
    let mut buf = vec![0u8; 64 << 10];
    let (mut total, mut hash) = (0usize, Fnv::new());
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                total += n;
                hash.update(&buf[..n]);
            }
            Err(_) => return,
        }
    }
    let _ = stream.write_all(format!("{total} {:016x}", hash.0).as_bytes());
}

fn udp_echo(pod: &Pod, addr: IpAddr, stop: &Arc<AtomicBool>) -> thread::JoinHandle<()> {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let stop = Arc::clone(stop);
    let handle = spawn_in(&pod.netns, move || {
        let sock = UdpSocket::bind(SocketAddr::new(addr, UDP_PORT)).expect("bind udp");
        sock.set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        ready_tx.send(()).expect("ready");
        let mut buf = [0u8; 2048];
        while !stop.load(Ordering::Relaxed) {
            if let Ok((n, from)) = sock.recv_from(&mut buf) {
                let _ = sock.send_to(&buf[..n], from);
            }
        }
    });
    ready_rx.recv().expect("udp server ready");
    handle
}

fn in_pod<T: Send + 'static>(pod: &Pod, f: impl FnOnce() -> T + Send + 'static) -> T {
    spawn_in(&pod.netns, f)
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p))
}

/// A TCP echo of 16 KiB from `from` to `to:ECHO_PORT`.
fn tcp_echo(from: &Pod, to: IpAddr, timeout: Duration) -> Result<(), String> {
    traffic::tcp_echo(&from.netns, SocketAddr::new(to, ECHO_PORT), timeout)
}

fn udp_request(from: &Pod, to: IpAddr) -> Result<(), String> {
    in_pod(from, move || {
        let any: SocketAddr = if to.is_ipv4() {
            "0.0.0.0:0".parse().unwrap()
        } else {
            "[::]:0".parse().unwrap()
        };
        let sock = UdpSocket::bind(any).map_err(|e| e.to_string())?;
        sock.set_read_timeout(Some(Duration::from_millis(500)))
            .map_err(|e| e.to_string())?;
        let msg = b"flagella udp request";
        for _ in 0..6 {
            sock.send_to(msg, SocketAddr::new(to, UDP_PORT))
                .map_err(|e| format!("send: {e}"))?;
            let mut buf = [0u8; 64];
            if let Ok((n, _)) = sock.recv_from(&mut buf) {
                if &buf[..n] == msg {
                    return Ok(());
                }
            }
        }
        Err("no UDP answer".into())
    })
}

/// `ping -c 2` from a namespace.
fn ping(netns: &str, to: IpAddr) -> Result<(), String> {
    let out = Command::new("ip")
        .args([
            "netns", "exec", netns, "ping", "-c", "2", "-i", "0.2", "-W", "2",
        ])
        .arg(to.to_string())
        .output()
        .map_err(|e| format!("ping: {e} (install iputils-ping)"))?;
    out.status
        .success()
        .then_some(())
        .ok_or_else(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Retries `f` until it succeeds or [`CONVERGE`] passes (first packets: ARP, publications).
fn must(what: &str, mut f: impl FnMut() -> Result<(), String>) {
    let deadline = Instant::now() + CONVERGE;
    loop {
        match f() {
            Ok(()) => return,
            Err(e) if Instant::now() >= deadline => panic!("{what} does not work: {e}"),
            Err(_) => thread::sleep(Duration::from_millis(200)),
        }
    }
}

/// `BULK_BYTES` from `from` to `to:BULK_PORT`; the sink's count and checksum must match.
fn bulk_transfer(from: &Pod, to: IpAddr) -> Result<Duration, String> {
    in_pod(from, move || {
        let started = Instant::now();
        let addr = SocketAddr::new(to, BULK_PORT);
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(3))
            .map_err(|e| format!("connect: {e}"))?;
        s.set_write_timeout(Some(Duration::from_secs(20)))
            .map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(Duration::from_secs(20)))
            .map_err(|e| e.to_string())?;
        let mut chunk = vec![0u8; 64 << 10];
        let mut hash = Fnv::new();
        let mut x: u32 = 0x9e37_79b9;
        for sent in (0..BULK_BYTES).step_by(chunk.len()) {
            for b in chunk.iter_mut() {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                *b = x as u8;
            }
            let n = chunk.len().min(BULK_BYTES - sent);
            hash.update(&chunk[..n]);
            s.write_all(&chunk[..n])
                .map_err(|e| format!("write after {sent} bytes: {e}"))?;
        }
        s.shutdown(Shutdown::Write).map_err(|e| e.to_string())?;
        let mut answer = String::new();
        s.read_to_string(&mut answer)
            .map_err(|e| format!("read the sink's answer: {e}"))?;
        let want = format!("{BULK_BYTES} {:016x}", hash.0);
        (answer == want)
            .then(|| started.elapsed())
            .ok_or_else(|| format!("sink says `{answer}`, sent `{want}`"))
    })
}

/// Connects to `vip:80` `times` times from `from`; returns the backends' names that answered.
fn service_answers(from: &Pod, vip: Ipv4Addr, times: usize) -> Vec<String> {
    in_pod(from, move || {
        let mut names = Vec::new();
        for _ in 0..times {
            let addr = SocketAddr::new(IpAddr::V4(vip), 80);
            let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_secs(2)) else {
                continue;
            };
            let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
            let mut name = String::new();
            if s.read_to_string(&mut name).is_ok() && !name.is_empty() {
                names.push(name);
            }
        }
        names.sort();
        names.dedup();
        names
    })
}

/// The hosts' own traffic between underlay addresses: ping, and a TCP connection from node 1's
/// namespace to a listener in node 2's.
fn check_host_traffic(c: &Cluster, when: &str) {
    let (n1, n2) = (c.node(1), c.node(2));
    ping(&n1.netns, IpAddr::V4(n2.underlay))
        .unwrap_or_else(|e| panic!("host ping node-1 -> node-2 ({when}): {e}"));
    let addr = SocketAddr::new(IpAddr::V4(n2.underlay), 7999);
    let listener = spawn_in(&n2.netns, move || {
        let l = TcpListener::bind(addr).expect("bind on node-2's underlay address");
        l.set_nonblocking(true).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok((mut s, _)) = l.accept() {
                let _ = s.set_nonblocking(false);
                let _ = s.write_all(b"host");
                return true;
            }
            thread::sleep(Duration::from_millis(5));
        }
        false
    });
    thread::sleep(Duration::from_millis(100));
    let got = in_netns(&n1.netns, move || {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(3)).ok()?;
        let _ = s.set_read_timeout(Some(Duration::from_secs(3)));
        let mut out = String::new();
        s.read_to_string(&mut out).ok()?;
        Some(out)
    });
    assert!(
        listener.join().unwrap(),
        "node-2 accepted no host connection ({when})"
    );
    assert_eq!(
        got.as_deref(),
        Some("host"),
        "host TCP node-1 -> node-2 ({when})"
    );
}

fn in_netns<T: Send + 'static>(netns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    spawn_in(netns, f)
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p))
}

/// A UDP datagram of `len` bytes of payload with DF set (path MTU discovery "do"), sent twice
/// from `from` to `to` 300 ms apart; returns the second send's error (EMSGSIZE once an ICMP
/// "too big" lowered the route's path MTU) and the socket's `IP_MTU` / `IPV6_MTU` then.
fn udp_df_twice(from: &Pod, to: IpAddr, len: usize) -> (Option<i32>, i32) {
    in_pod(from, move || {
        use std::os::fd::AsRawFd;
        let any: SocketAddr = if to.is_ipv4() {
            "0.0.0.0:0".parse().unwrap()
        } else {
            "[::]:0".parse().unwrap()
        };
        let sock = UdpSocket::bind(any).unwrap();
        sock.connect(SocketAddr::new(to, UDP_PORT)).unwrap();
        let (level, opt, val, mtu_opt) = if to.is_ipv4() {
            (
                libc::IPPROTO_IP,
                libc::IP_MTU_DISCOVER,
                libc::IP_PMTUDISC_DO,
                libc::IP_MTU,
            )
        } else {
            (
                libc::IPPROTO_IPV6,
                libc::IPV6_MTU_DISCOVER,
                libc::IPV6_PMTUDISC_DO,
                libc::IPV6_MTU,
            )
        };
        let fd = sock.as_raw_fd();
        // SAFETY: setsockopt on a socket we own with an int option value that outlives the call.
        let rc = unsafe {
            libc::setsockopt(
                fd,
                level,
                opt,
                (&val as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        assert_eq!(rc, 0, "setsockopt PMTUDISC_DO");
        let payload = vec![0x5au8; len];
        sock.send(&payload)
            .expect("the first oversized send leaves the pod");
        thread::sleep(Duration::from_millis(300));
        let second = sock.send(&payload).err().and_then(|e| e.raw_os_error());
        let mut mtu: libc::c_int = 0;
        let mut mtu_len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: getsockopt into an int we own, with its size.
        unsafe {
            libc::getsockopt(
                fd,
                level,
                mtu_opt,
                (&mut mtu as *mut libc::c_int).cast(),
                &mut mtu_len,
            )
        };
        (second, mtu)
    })
}

// ---- the scenario ------------------------------------------------------------------------------

fn pod_to_pod(c: &Cluster) {
    let v6 = c.mode.ipv6();
    let pairs = [
        ("n1a", "n2a"),
        ("n1a", "n3b"),
        ("n2b", "n3a"),
        ("n3c", "n2c"),
        ("n1a", "n1b"),
    ];
    for (from, to) in pairs {
        let (from, to) = (c.pod(from), c.pod(to));
        for addr in to.addrs(v6) {
            let what = format!("{} -> {} ({addr})", from.name, to.name);
            must(&format!("ping {what}"), || ping(&from.netns, addr));
            must(&format!("TCP {what}"), || {
                tcp_echo(from, addr, Duration::from_secs(2))
            });
            must(&format!("UDP {what}"), || udp_request(from, addr));
        }
    }
}

/// A pod whose interface says 1500 (more than the tunnel leaves) sends a full-size datagram
/// with DF to a pod on another node: the dataplane answers ICMP "fragmentation needed" /
/// "packet too big" with the pod MTU, and the pod's kernel lowers the route's path MTU.
fn too_big_gets_icmp(c: &Cluster) {
    let (from, to) = (c.pod("n1b"), c.pod("n2b"));
    let want = c
        .get(&format!("endpoints/{NAMESPACE}/{}", from.name))
        .and_then(|r| r["mtu"].as_i64())
        .unwrap();
    ip_in(&from.netns, &["link", "set", "eth0", "mtu", "1500"]);
    for addr in to.addrs(c.mode.ipv6()) {
        let header = if addr.is_ipv4() { 28 } else { 48 };
        let sent_before = c.counters(1)["counters"]["icmp_too_big_sent"]
            .as_u64()
            .unwrap_or(0);
        let (second, mtu) = udp_df_twice(from, addr, 1500 - header);
        assert_eq!(
            second,
            Some(libc::EMSGSIZE),
            "{addr}: the second oversized send should fail with EMSGSIZE once the ICMP error \
             lowered the path MTU (socket MTU now {mtu})"
        );
        assert_eq!(i64::from(mtu), want, "{addr}: the path MTU the pod learnt");
        let sent_after = c.counters(1)["counters"]["icmp_too_big_sent"]
            .as_u64()
            .unwrap_or(0);
        assert!(
            sent_after > sent_before,
            "node 1 counted no ICMP too-big error"
        );
    }
    ip_in(
        &from.netns,
        &["link", "set", "eth0", "mtu", &want.to_string()],
    );
}

fn bulk(c: &Cluster) {
    let (from, to) = (c.pod("n1a"), c.pod("n2a"));
    for addr in to.addrs(c.mode.ipv6()) {
        let took = bulk_transfer(from, addr)
            .unwrap_or_else(|e| panic!("100 MB n1a -> n2a ({addr}) in {}: {e}", c.mode.name()));
        eprintln!(
            "{}: 100 MB n1a -> n2a ({addr}) in {:.2} s",
            c.mode.name(),
            took.as_secs_f64()
        );
    }
}

fn services(c: &Cluster) {
    let vip = Ipv4Addr::new(10, 96, c.mode.index(), 10);
    let client = c.pod("n1a");
    for mode in ["snat", "dsr"] {
        c.put(
            &format!("services/{NAMESPACE}/web"),
            json!({"frontends": [{"ip": vip.to_string(), "port": 80, "protocol": "TCP"}],
                   "backends": [{"ip": c.pod("n2b").v4.to_string(), "port": NAME_PORT},
                                {"ip": c.pod("n3b").v4.to_string(), "port": NAME_PORT}],
                   "mode": mode}),
        );
        let deadline = Instant::now() + CONVERGE;
        loop {
            let names = service_answers(client, vip, 24);
            if names == ["n2b", "n3b"] {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "service {vip}:80 ({mode}) from n1a: answered by {names:?}, want n2b and n3b"
            );
            thread::sleep(Duration::from_millis(200));
        }
    }
    c.delete(&format!("services/{NAMESPACE}/web"));
}

/// n2a admits only n1a: n1a connects, n1b is refused, on node 2.
fn policy(c: &Cluster) {
    let policy = json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": "only-n1a", "namespace": NAMESPACE},
        "spec": {
            "podSelector": {"matchLabels": {"app": "n2a"}},
            "policyTypes": ["Ingress"],
            "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "n1a"}}}]}],
        },
    });
    let file = c.dir.join("only-n1a.json");
    std::fs::write(&file, policy.to_string()).unwrap();
    c.flagella(&["policy", "import", "-f", file.to_str().unwrap()]);
    let (n1a, n1b, n2a) = (c.pod("n1a"), c.pod("n1b"), c.pod("n2a"));
    let denied_before = policy_drops(c, 2);
    let to = IpAddr::V4(n2a.v4);
    wait_for("n1b is refused by n2a's ingress policy", || {
        tcp_echo(n1b, to, Duration::from_millis(700)).is_err()
    });
    must("n1a -> n2a under the policy", || {
        tcp_echo(n1a, to, Duration::from_secs(2))
    });
    wait_for(
        "node 2 counts n1b's refused attempts as ingress policy drops",
        || policy_drops(c, 2) > denied_before,
    );
    c.flagella(&["policy", "delete", &format!("{NAMESPACE}/only-n1a")]);
    must("n1b -> n2a after the policy is deleted", || {
        tcp_echo(n1b, to, Duration::from_secs(2))
    });
}

fn policy_drops(c: &Cluster, n: u8) -> u64 {
    // Only reasons that happened are listed.
    c.counters(n)["counters"]["drops"]["policy_denied_ingress"]
        .as_u64()
        .unwrap_or(0)
}

/// Node 3's uplink is recreated (a new MAC); its dataplane restarts on the new interface, and
/// node 1, untouched, learns the new MAC from its kernel and reaches node 3's pods again.
fn peer_mac_change(c: &mut Cluster) {
    let old_mac = c.uplink_mac(3);
    let netns = c.node(3).netns.clone();
    c.nodes[2].dataplane.kill9();
    run_ip(&["-n", &c.underlay_ns(), "link", "del", "u3"]).unwrap();
    c.plug_uplink(3, &netns);
    let new_mac = c.uplink_mac(3);
    assert_ne!(old_mac, new_mac, "a recreated veth has a new MAC");
    c.start_dataplane(3);
    let underlay3 = c.node(3).underlay.to_string();
    wait_for("node 1's next hop to node 3 is the new MAC", || {
        c.next_hops(1)["peers"].as_array().is_some_and(|peers| {
            peers
                .iter()
                .any(|p| p["underlay"] == underlay3.as_str() && p["mac"] == new_mac.as_str())
        })
    });
    let (from, to) = (c.pod("n1a"), c.pod("n3a"));
    must("n1a -> n3a after node 3's uplink was recreated", || {
        tcp_echo(from, IpAddr::V4(to.v4), Duration::from_secs(2))
    });
}

/// `dumpcap` on node 1's port of the underlay bridge, for tunnel frames; stopped by its PID.
struct Capture {
    proc: Proc,
    file: PathBuf,
}

impl Capture {
    fn start(c: &Cluster) -> Option<Capture> {
        if Command::new("dumpcap").arg("-v").output().is_err() {
            testkit::skip(
                "the tshark check: dumpcap is missing; install tshark (scripts/test.sh does)",
            );
            return None;
        }
        let file = c.dir.join("underlay.pcap");
        let log = c.dir.join("dumpcap.log");
        // Node 1's port of the bridge: the bridge's own device sees only what is flooded or
        // addressed to it, not the frames it forwards between ports.
        let child = Command::new("ip")
            .args(["netns", "exec", &c.underlay_ns()])
            .args(["dumpcap", "-q", "-i", "u1"])
            .args(["-f", "udp port 4789 or udp port 6081", "-c", "20000", "-w"])
            .arg(&file)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(&log).unwrap())
            .spawn()
            .expect("spawn dumpcap");
        let mut proc = Proc {
            child: Some(child),
            what: "dumpcap",
            log,
        };
        wait_for("dumpcap to start capturing", || {
            proc.log_text().contains("Capturing on") || !proc.running()
        });
        Some(Capture { proc, file })
    }

    /// Stops the capture (SIGINT, so the file is complete) and returns it.
    fn stop(mut self) -> PathBuf {
        thread::sleep(Duration::from_millis(300));
        if let Some(pid) = self.proc.pid() {
            // SAFETY: a signal to our own child, by its PID.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGINT) };
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.proc.running() && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(50));
        }
        self.file.clone()
    }
}

/// tshark decodes the captured tunnel frames (checksums checked: outer IPv4, inner IPv4, TCP,
/// UDP, and ICMP, which tshark always checks) without a malformed packet or a checksum error;
/// in Geneve the DSR option is there.
fn check_capture(c: &Cluster, file: &Path) {
    let tshark = |args: &[&str]| {
        let out = Command::new("tshark")
            .arg("-r")
            .arg(file)
            .args([
                "-o",
                "ip.check_checksum:TRUE",
                "-o",
                "udp.check_checksum:TRUE",
            ])
            .args(["-o", "tcp.check_checksum:TRUE"])
            .args(args)
            .output()
            .expect("run tshark");
        assert!(
            out.status.success(),
            "tshark {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let proto = match c.mode {
        Mode::Geneve => "geneve",
        _ => "vxlan",
    };
    let frames = tshark(&["-Y", proto, "-T", "fields", "-e", "frame.number"]);
    let count = frames.lines().count();
    assert!(
        count > 100,
        "only {count} {proto} frames captured on the underlay"
    );
    let problems = tshark(&["-Y", "_ws.malformed || _ws.expert.severity >= \"error\" || ip.checksum.status == \"Bad\" || udp.checksum.status == \"Bad\" || tcp.checksum.status == \"Bad\""]);
    assert!(
        problems.trim().is_empty(),
        "tshark finds malformed frames or bad checksums among {count} {proto} frames:\n{problems}"
    );
    if c.mode == Mode::Geneve {
        let dsr = tshark(&[
            "-Y",
            "geneve.option.class == 0x014b",
            "-T",
            "fields",
            "-e",
            "frame.number",
        ]);
        assert!(
            dsr.lines().count() > 0,
            "no Geneve frame with Flagella's DSR option (class 0x014b) was decoded"
        );
    }
    eprintln!(
        "{}: tshark decoded {count} {proto} frames cleanly",
        c.mode.name()
    );
}

/// A Linux VXLAN (or Geneve) device in external (collect-metadata) mode, in a namespace of its
/// own on the underlay, plays a fourth node: registered in etcd as `node-4` with one endpoint
/// (its address on the device), it reaches pod n1a with lightweight-tunnel routes whose VNI is
/// its endpoint's identity, and n1a's answers come back through the kernel device.
fn kernel_tunnel_interop(c: &mut Cluster) {
    let m = c.mode.index();
    let netns = format!("{}-k4", c.prefix);
    c.add_netns(&netns);
    c.plug_uplink(4, &netns);
    let kind = if c.mode == Mode::Geneve {
        "geneve"
    } else {
        "vxlan"
    };
    let mut add = vec!["link", "add", "tun0", "type", kind, "external"];
    if kind == "vxlan" {
        add.extend(["dstport", "4789"]);
    }
    if let Err(e) = run_ip(&[&["-n", netns.as_str()][..], &add[..]].concat()) {
        // Not every kernel has Geneve (CONFIG_GENEVE): this one's tunnel frames are still
        // decoded by tshark, only the kernel peer is missing.
        eprintln!("SKIPPED the Linux {kind} interop: the kernel cannot create the device: {e}");
        return;
    }
    let router_mac = c.dataplane(1, json!({"op": "dump", "table": "local_node"}))["local_node"]
        ["router_mac"]
        .as_str()
        .unwrap()
        .to_string();
    // Frames from Flagella's pods carry their gateway's (the router's) MAC as destination.
    if kind == "vxlan" {
        ip_in(&netns, &["link", "set", "tun0", "address", &router_mac]);
    }
    ip_in(&netns, &["link", "set", "tun0", "up"]);
    // Over veth, "checksum offload" leaves the inner TCP checksum to a NIC that does not exist
    // (the receiving node would get it incomplete): have the kernel compute it, as a real
    // NIC would before the frame hits the wire.
    let out = Command::new("ip")
        .args([
            "netns", "exec", &netns, "ethtool", "-K", "tun0", "tx", "off",
        ])
        .output()
        .expect("run ethtool (scripts/test.sh installs it)");
    assert!(out.status.success(), "ethtool -K tun0 tx off: {out:?}");
    let k4 = Ipv4Addr::new(10, 84, m, 5);
    ip_in(&netns, &["addr", "add", &format!("{k4}/32"), "dev", "tun0"]);
    c.put(
        "nodes/node-4",
        json!({"underlay_ip": underlay_of(c.mode, 4).to_string(),
               "pod_cidrs": [format!("10.84.{m}.0/24")], "tunnel": c.mode.name()}),
    );
    c.put(
        &format!("endpoints/{NAMESPACE}/k4"),
        json!({"node": "node-4", "labels": {"app": "k4"}, "ipv4": k4.to_string(),
               "interface": "tun0"}),
    );
    let mut identity = 0;
    wait_for("node 1 learns node-4's endpoint", || {
        let dump = c.dataplane(1, json!({"op": "dump", "table": "ipcache"}));
        identity = dump["entries"]
            .as_array()
            .and_then(|e| {
                e.iter()
                    .find(|e| e["prefix"] == format!("{k4}/32").as_str())
            })
            .and_then(|e| e["identity"].as_u64())
            .unwrap_or(0);
        identity != 0
    });
    let n1a = c.pod("n1a").clone();
    let vni = identity.to_string();
    let dst = underlay_of(c.mode, 1).to_string();
    ip_in(
        &netns,
        &[
            "route",
            "add",
            &format!("{}/32", n1a.v4),
            "encap",
            "ip",
            "id",
            &vni,
            "dst",
            &dst,
            "dev",
            "tun0",
            "src",
            &k4.to_string(),
        ],
    );
    if kind == "vxlan" {
        ip_in(
            &netns,
            &[
                "neigh",
                "add",
                &n1a.v4.to_string(),
                "lladdr",
                &router_mac,
                "dev",
                "tun0",
            ],
        );
    }
    let kernel_pod = Pod {
        name: "k4".into(),
        node: 4,
        netns: netns.clone(),
        host_if: String::new(),
        ifindex: 0,
        mac: String::new(),
        v4: k4,
        v6: None,
    };
    must(&format!("ping from a Linux {kind} device to n1a"), || {
        ping(&netns, IpAddr::V4(n1a.v4))
    });
    must(&format!("TCP from a Linux {kind} device to n1a"), || {
        tcp_echo(&kernel_pod, IpAddr::V4(n1a.v4), Duration::from_secs(2))
    });
}

fn run(mode: Mode) {
    let bin = match preflight() {
        Ok(bin) => bin,
        Err(reason) => return testkit::skip(&reason),
    };
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let prefix = format!("fcl-{}-{}", std::process::id(), mode.index());
    let mut c = Cluster::start(mode, &bin);
    c.wait_next_hops();
    check_host_traffic(&c, "dataplanes running, no pod traffic yet");
    c.start_servers();
    let capture = Capture::start(&c);
    pod_to_pod(&c);
    too_big_gets_icmp(&c);
    services(&c);
    if mode != Mode::Native {
        kernel_tunnel_interop(&mut c);
        if let Some(capture) = capture {
            check_capture(&c, &capture.stop());
        }
    }
    bulk(&c);
    policy(&c);
    check_host_traffic(&c, "after pod traffic");
    if mode == Mode::Vxlan {
        peer_mac_change(&mut c);
        check_host_traffic(&c, "after node 3's uplink was recreated");
    }
    let pids: Vec<u32> = c
        .nodes
        .iter()
        .flat_map(|n| [n.dataplane.pid(), n.control.pid()])
        .flatten()
        .collect();
    drop(c);
    assert_torn_down(&prefix, &pids);
}

// ---- masquerade: pods reach the world --------------------------------------------------------

/// The world: a server that is no node, behind a router on the underlay.
///
/// ```text
///   underlay bridge ── <prefix>-r (router: 10.77.<m>.254 | 198.51.<m>.1) ── <prefix>-w (198.51.<m>.7)
/// ```
/// Every node's namespace gets a default route via the router; the router knows no pod CIDR,
/// so a pod's packet reaches the world, and an answer reaches the pod, only masqueraded.
struct World {
    server: SocketAddr,
    /// The source address and port of every connection the server accepted.
    seen: Arc<Mutex<Vec<SocketAddr>>>,
}

const WORLD_PORT: u16 = 9000;
/// The MTU between the router and the world: smaller than the pods' path, so the router
/// answers a full-size datagram with "fragmentation needed".
const WORLD_MTU: i32 = 1300;

fn build_world(c: &mut Cluster) -> World {
    let m = c.mode.index();
    let (router, world) = (format!("{}-r", c.prefix), format!("{}-w", c.prefix));
    c.add_netns(&router);
    c.add_netns(&world);
    let u = c.underlay_ns();
    ip_in(
        &u,
        &[
            "link", "add", "ur", "type", "veth", "peer", "name", "eth0", "netns", &router,
        ],
    );
    ip_in(&u, &["link", "set", "ur", "master", "br0"]);
    ip_in(&u, &["link", "set", "ur", "up"]);
    ip_in(
        &router,
        &[
            "link", "add", "eth1", "type", "veth", "peer", "name", "eth0", "netns", &world,
        ],
    );
    ip_in(
        &router,
        &["addr", "add", &format!("10.77.{m}.254/24"), "dev", "eth0"],
    );
    ip_in(
        &router,
        &["addr", "add", &format!("198.51.{m}.1/24"), "dev", "eth1"],
    );
    ip_in(&router, &["link", "set", "eth0", "up"]);
    ip_in(
        &router,
        &["link", "set", "eth1", "mtu", &WORLD_MTU.to_string(), "up"],
    );
    in_netns(&router, || {
        std::fs::write("/proc/sys/net/ipv4/ip_forward", "1").expect("forwarding in the router")
    });
    ip_in(
        &world,
        &["addr", "add", &format!("198.51.{m}.7/24"), "dev", "eth0"],
    );
    ip_in(
        &world,
        &["link", "set", "eth0", "mtu", &WORLD_MTU.to_string(), "up"],
    );
    // A veth hands on "checksum partial" frames (only the pseudo-header sum filled in), and so
    // does the router's forwarding; AF_XDP does not say so. A real upstream sends complete
    // checksums: so does the world's server here.
    let out = Command::new("ip")
        .args([
            "netns", "exec", &world, "ethtool", "-K", "eth0", "tx", "off",
        ])
        .output()
        .expect("ethtool (install ethtool)");
    assert!(
        out.status.success(),
        "ethtool: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    ip_in(
        &world,
        &["route", "add", "default", "via", &format!("198.51.{m}.1")],
    );
    for node in &c.nodes {
        ip_in(
            &node.netns,
            &["route", "add", "default", "via", &format!("10.77.{m}.254")],
        );
    }
    let server = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(198, 51, m, 7)), WORLD_PORT);
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = Arc::clone(&seen);
    // Answers the source it sees, then holds the connection until the client closes it.
    c.servers
        .push(tcp_server(&world, server, &c.stop_servers, move |mut s| {
            let Ok(peer) = s.peer_addr() else { return };
            record.lock().unwrap().push(peer);
            if s.write_all(peer.to_string().as_bytes()).is_ok() {
                let _ = s.set_read_timeout(Some(Duration::from_secs(60)));
                let _ = s.read(&mut [0u8; 1]);
            }
        }));
    World { server, seen }
}

/// From `netns`: `n` connections to the world server, all open at once; what the server says
/// each one came from.
fn world_sources(netns: &str, server: SocketAddr, n: usize) -> Result<Vec<SocketAddr>, String> {
    in_netns(netns, move || {
        let mut open = Vec::with_capacity(n);
        let mut sources = Vec::with_capacity(n);
        for _ in 0..n {
            let mut s = TcpStream::connect_timeout(&server, Duration::from_secs(2))
                .map_err(|e| format!("connect: {e}"))?;
            s.set_read_timeout(Some(Duration::from_secs(5)))
                .map_err(|e| e.to_string())?;
            let mut buf = [0u8; 64];
            let len = s.read(&mut buf).map_err(|e| format!("read: {e}"))?;
            let text = String::from_utf8_lossy(&buf[..len]).into_owned();
            sources.push(text.parse().map_err(|e| format!("`{text}`: {e}"))?);
            open.push(s);
        }
        drop(open);
        Ok(sources)
    })
}

/// Pods reach a server outside the cluster through their node's default route, masqueraded
/// to the node's address; 1,000 concurrent connections from one node's pods all get distinct
/// ports; an egress policy refusing the world stops it; the node's own connections still work.
fn pods_reach_the_world(c: &mut Cluster) {
    let world = build_world(c);
    let node1 = IpAddr::V4(c.node(1).underlay);
    let n1a = c.pod("n1a").netns.clone();
    let masquerade_ports = 61000..=65535;
    let mut first = Vec::new();
    must("n1a -> the world server", || {
        first = world_sources(&n1a, world.server, 1)?;
        Ok(())
    });
    assert_eq!(first[0].ip(), node1, "the server sees node 1's address");
    assert!(masquerade_ports.contains(&first[0].port()), "{first:?}");

    // The router's "fragmentation needed" about a masqueraded datagram reaches the pod, about
    // the datagram as the pod sent it: its kernel learns the path MTU.
    let reversed = c.counters(1)["counters"]["masquerade_reversed"].as_u64();
    let pod = c.pod("n1a").clone();
    let (second, mtu) = udp_df_twice(&pod, world.server.ip(), 1400);
    assert_eq!(
        second,
        Some(libc::EMSGSIZE),
        "the second oversized send fails once the router's error lowered the path MTU \
         (socket MTU now {mtu})"
    );
    assert_eq!(mtu, WORLD_MTU, "the path MTU n1a learnt from the router");
    assert!(c.counters(1)["counters"]["masquerade_reversed"].as_u64() > reversed);

    // The node's own connection to the same server: the kernel's, with a kernel port.
    let own = world_sources(&c.node(1).netns, world.server, 1).expect("node 1's own connection");
    assert_eq!(own[0].ip(), node1);
    assert!(!masquerade_ports.contains(&own[0].port()), "{own:?}");

    // 1,000 connections from node 1's three pods, all open at once.
    world.seen.lock().unwrap().clear();
    let per_pod = [334, 333, 333];
    let clients: Vec<_> = PODS
        .iter()
        .zip(per_pod)
        .map(|(p, n)| {
            let netns = c.pod(&format!("n1{p}")).netns.clone();
            let server = world.server;
            thread::spawn(move || world_sources(&netns, server, n))
        })
        .collect();
    let mut ports = std::collections::HashSet::new();
    for client in clients {
        for source in client
            .join()
            .unwrap()
            .expect("a pod's connections to the world")
        {
            assert_eq!(source.ip(), node1);
            assert!(masquerade_ports.contains(&source.port()), "{source}");
            ports.insert(source.port());
        }
    }
    let seen = world.seen.lock().unwrap().clone();
    let server_ports: std::collections::HashSet<u16> = seen.iter().map(|s| s.port()).collect();
    assert_eq!(seen.len(), 1000, "the server accepted every connection");
    assert_eq!(server_ports.len(), 1000, "1,000 distinct masquerade ports");
    assert_eq!(ports, server_ports);
    let status = c.counters(1);
    assert!(
        status["counters"]["masquerade_ports_allocated"].as_u64() >= Some(1001),
        "{status}"
    );

    let world_ns = format!("{}-w", c.prefix);
    tcp_rst::guessed_rsts_do_not_break_a_masqueraded_flow(c, &world_ns);

    // An egress policy that allows only pods: n1a no longer reaches the world, n1b does.
    let policy = json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": "n1a-no-world", "namespace": NAMESPACE},
        "spec": {
            "podSelector": {"matchLabels": {"app": "n1a"}},
            "policyTypes": ["Egress"],
            "egress": [{"to": [{"podSelector": {}}]}],
        },
    });
    let file = c.dir.join("n1a-no-world.json");
    std::fs::write(&file, policy.to_string()).unwrap();
    c.flagella(&["policy", "import", "-f", file.to_str().unwrap()]);
    let server = world.server;
    wait_for("n1a's egress policy refuses the world", || {
        in_netns(&n1a, move || {
            TcpStream::connect_timeout(&server, Duration::from_millis(700))
        })
        .is_err()
    });
    let n1b = c.pod("n1b").netns.clone();
    must("n1b -> the world under n1a's policy", || {
        world_sources(&n1b, server, 1).map(drop)
    });
    c.flagella(&["policy", "delete", &format!("{NAMESPACE}/n1a-no-world")]);
    must("n1a -> the world after the policy is deleted", || {
        world_sources(&n1a, server, 1).map(drop)
    });
    check_host_traffic(c, "after masqueraded traffic");
}

#[test]
fn pods_reach_the_world_masqueraded() {
    let bin = match preflight() {
        Ok(bin) => bin,
        Err(reason) => return testkit::skip(&reason),
    };
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let mode = Mode::Vxlan;
    let prefix = format!("fcl-{}-{}", std::process::id(), mode.index());
    let mut c = Cluster::start(mode, &bin);
    c.wait_next_hops();
    pods_reach_the_world(&mut c);
    let pids: Vec<u32> = c
        .nodes
        .iter()
        .flat_map(|n| [n.dataplane.pid(), n.control.pid()])
        .flatten()
        .collect();
    drop(c);
    assert_torn_down(&prefix, &pids);
}

/// Nothing of the run is left: no namespace with its prefix, no process it started.
fn assert_torn_down(prefix: &str, pids: &[u32]) {
    let left = run_ip(&["netns", "list"]).unwrap_or_default();
    let ours: Vec<&str> = left.lines().filter(|l| l.starts_with(prefix)).collect();
    assert!(ours.is_empty(), "namespaces left behind: {ours:?}");
    for pid in pids {
        let alive = Path::new(&format!("/proc/{pid}")).exists()
            && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .unwrap_or_default()
                .contains(") Z ");
        assert!(!alive, "process {pid} is still running");
    }
}

// ---- pods and their nodes: the host interface (issue 12, deliverable 1) ------------------------

/// The port of the TCP echo servers in the nodes' own namespaces (every address, both families).
const HOST_PORT: u16 = 7101;

fn node_addr(node: &Node, port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(node.underlay), port)
}

/// Node `n`'s pods' gateway: the first host of its pod CIDR, which the node's kernel holds on
/// its host interface.
fn gateway_v4(c: &Cluster, n: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 80 + n, c.mode.index(), 1))
}

fn gateway_v6(c: &Cluster, n: u8) -> IpAddr {
    format!("fd{}:{}::1", 80 + n, c.mode.index())
        .parse()
        .unwrap()
}

fn echo_from(netns: &str, to: SocketAddr) -> Result<(), String> {
    traffic::tcp_echo(netns, to, Duration::from_millis(1500))
}

/// Imports one CiliumNetworkPolicy in the test namespace.
fn import_cnp(c: &Cluster, name: &str, spec: Value) {
    let policy = json!({
        "apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": spec,
    });
    let file = c.dir.join(format!("{name}.json"));
    std::fs::write(&file, policy.to_string()).unwrap();
    c.flagella(&["policy", "import", "-f", file.to_str().unwrap()]);
}

fn delete_cnp(c: &Cluster, name: &str) {
    c.flagella(&["policy", "delete", &format!("{NAMESPACE}/{name}")]);
}

/// Echo servers in node 1's and node 2's own namespaces, on every address.
fn start_host_servers(c: &mut Cluster) {
    let stop = Arc::clone(&c.stop_servers);
    for n in [1, 2] {
        let netns = c.node(n).netns.clone();
        let any = SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), HOST_PORT);
        c.servers.push(tcp_server(&netns, any, &stop, echo));
    }
}

/// Real kernel TCP between pods and their node, both ways, and between pods and another node:
/// through each node's host interface (`flg_host`), which the dataplanes created and keep.
fn pods_and_their_node(c: &Cluster) {
    let (n1, n2) = (c.node(1), c.node(2));
    let (n1a, n2a) = (c.pod("n1a"), c.pod("n2a"));
    // An address of node 1 that no table names (as a second NIC's would be): the dataplane
    // learns it from the kernel.
    let other = IpAddr::V4(Ipv4Addr::new(10, 99, c.mode.index(), 1));
    ip_in(
        &n1.netns,
        &["addr", "add", &format!("{other}/32"), "dev", "lo"],
    );
    let mut to_node1 = vec![
        node_addr(n1, HOST_PORT),
        SocketAddr::new(gateway_v4(c, 1), HOST_PORT),
        SocketAddr::new(other, HOST_PORT),
    ];
    if c.mode.ipv6() {
        to_node1.push(SocketAddr::new(gateway_v6(c, 1), HOST_PORT));
    }
    for to in to_node1 {
        must(&format!("n1a -> its node ({to})"), || {
            echo_from(&n1a.netns, to)
        });
    }
    for addr in n1a.addrs(c.mode.ipv6()) {
        let to = SocketAddr::new(addr, ECHO_PORT);
        must(&format!("node-1 -> n1a ({to})"), || {
            echo_from(&n1.netns, to)
        });
    }
    let to = SocketAddr::new(IpAddr::V4(n2a.v4), ECHO_PORT);
    must("node-1 -> n2a (a pod of node 2)", || {
        echo_from(&n1.netns, to)
    });
    must("n1a -> node-2's address", || {
        echo_from(&n1a.netns, node_addr(n2, HOST_PORT))
    });
    let counters = c.counters(1)["counters"].clone();
    assert_eq!(
        counters["pass_dropped"].as_u64().unwrap_or(0),
        0,
        "node 1 dropped frames for the host that it should have sent to flg_host: {counters}"
    );
}

/// Egress `toEntities`: `host` is the pod's own node, `remote-node` the others.
fn egress_host_and_remote_node(c: &Cluster) {
    let (n1, n2, n1a) = (c.node(1), c.node(2), c.pod("n1a"));
    let (own, other) = (node_addr(n1, HOST_PORT), node_addr(n2, HOST_PORT));
    let only = |entity: &str| {
        json!({"endpointSelector": {"matchLabels": {"app": "n1a"}},
               "egress": [{"toEntities": [entity]}]})
    };
    import_cnp(c, "n1a-to-remote-node", only("remote-node"));
    wait_for(
        "n1a's egress policy (remote-node only) refuses its own node",
        || echo_from(&n1a.netns, own).is_err(),
    );
    must("n1a -> node-2 (remote-node) under that policy", || {
        echo_from(&n1a.netns, other)
    });
    delete_cnp(c, "n1a-to-remote-node");
    import_cnp(c, "n1a-to-host", only("host"));
    wait_for("n1a's egress policy (host only) refuses node-2", || {
        echo_from(&n1a.netns, other).is_err()
    });
    must("n1a -> its node (host) under that policy", || {
        echo_from(&n1a.netns, own)
    });
    delete_cnp(c, "n1a-to-host");
    must("n1a -> node-2 after the policies are deleted", || {
        echo_from(&n1a.netns, other)
    });
}

/// Ingress: the local host always reaches its pods (Cilium's default `allow-localhost`), unless
/// a deny names it; another node's host is `remote-node`, admitted only when a rule says so.
fn ingress_from_host(c: &Cluster) {
    let (n1, n2) = (c.node(1), c.node(2));
    let (n1b, n1c) = (c.pod("n1b"), c.pod("n1c"));
    let to = SocketAddr::new(IpAddr::V4(n1b.v4), ECHO_PORT);
    let selector = json!({"matchLabels": {"app": "n1b"}});
    import_cnp(
        c,
        "n1b-from-host",
        json!({"endpointSelector": selector, "ingress": [{"fromEntities": ["host"]}]}),
    );
    wait_for("n1c is refused by n1b's ingress policy (host only)", || {
        echo_from(&n1c.netns, to).is_err()
    });
    must("node-1 -> n1b (host)", || echo_from(&n1.netns, to));
    wait_for("node-2 -> n1b is refused: another node is not host", || {
        echo_from(&n2.netns, to).is_err()
    });
    delete_cnp(c, "n1b-from-host");
    import_cnp(
        c,
        "n1b-from-remote-node",
        json!({"endpointSelector": selector, "ingress": [{"fromEntities": ["remote-node"]}]}),
    );
    must("node-2 -> n1b (remote-node admitted)", || {
        echo_from(&n2.netns, to)
    });
    must("node-1 -> n1b: its own host is always admitted", || {
        echo_from(&n1.netns, to)
    });
    wait_for("n1c is still refused", || {
        echo_from(&n1c.netns, to).is_err()
    });
    import_cnp(
        c,
        "n1b-deny-host",
        json!({"endpointSelector": selector, "ingressDeny": [{"fromEntities": ["host"]}]}),
    );
    wait_for("node-1 -> n1b refused by a deny of host", || {
        echo_from(&n1.netns, to).is_err()
    });
    delete_cnp(c, "n1b-deny-host");
    delete_cnp(c, "n1b-from-remote-node");
    must("node-1 -> n1b after the policies are deleted", || {
        echo_from(&n1.netns, to)
    });
    must("n1c -> n1b after the policies are deleted", || {
        echo_from(&n1c.netns, to)
    });
}

fn run_host_path(mode: Mode) {
    let bin = match preflight() {
        Ok(bin) => bin,
        Err(reason) => return testkit::skip(&reason),
    };
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let prefix = format!("fcl-{}-{}", std::process::id(), mode.index());
    let mut c = Cluster::start(mode, &bin);
    c.wait_next_hops();
    c.start_servers();
    start_host_servers(&mut c);
    pods_and_their_node(&c);
    egress_host_and_remote_node(&c);
    semantics::trace_knows_each_pods_host(&c);
    ingress_from_host(&c);
    semantics::service_accounts(&c);
    check_host_traffic(&c, "after pod <-> node traffic");
    let pids: Vec<u32> = c
        .nodes
        .iter()
        .flat_map(|n| [n.dataplane.pid(), n.control.pid()])
        .flatten()
        .collect();
    drop(c);
    assert_torn_down(&prefix, &pids);
}

#[test]
fn pods_and_their_nodes_over_vxlan() {
    run_host_path(Mode::Vxlan);
}

#[test]
fn pods_and_their_nodes_natively_routed() {
    run_host_path(Mode::Native);
}

/// ICMP type rules and host policies (`cluster/host_firewall.rs`).
#[test]
fn icmp_types_and_host_policies_over_vxlan() {
    host_firewall::run();
}

#[test]
fn cluster_over_vxlan() {
    run(Mode::Vxlan);
}

#[test]
fn cluster_over_geneve() {
    run(Mode::Geneve);
}

#[test]
fn cluster_natively_routed() {
    run(Mode::Native);
}

#[test]
fn nodeport_from_outside_natively_routed() {
    nodeport::run(Mode::Native, nodeport::Lb::Dsr);
}

#[test]
fn nodeport_from_outside_over_vxlan() {
    nodeport::run(Mode::Vxlan, nodeport::Lb::Dsr);
}

#[test]
fn nodeport_from_outside_over_geneve() {
    nodeport::run(Mode::Geneve, nodeport::Lb::Dsr);
}

#[test]
fn nodeport_snat_from_outside_natively_routed() {
    nodeport::run(Mode::Native, nodeport::Lb::Snat);
}

#[test]
fn nodeport_snat_from_outside_over_vxlan() {
    nodeport::run(Mode::Vxlan, nodeport::Lb::Snat);
}

#[test]
fn renumbered_identities_keep_cross_node_policy() {
    renumber::run();
}
