//! Two pods talking through the dataplane over AF_XDP, with real kernel TCP (feature `afxdp`).
//!
//! Topology, all in namespaces this test creates and removes (guard `Drop`, pass or fail):
//!
//! ```text
//!  fio-<pid>-p1                  fio-<pid> ("node")                     fio-<pid>-p2
//!  eth0 10.77.0.11/32 <-veth-> fioh1 [XDP + AF_XDP]   [XDP + AF_XDP] fioh2 <-veth-> eth0 10.77.0.12/32
//!  default via 10.77.0.1 onlink          worker thread: Pipeline          default via 10.77.0.1 onlink
//!                                        fiou [XDP + AF_XDP] <-veth-> eth0 192.168.77.2/24
//!                                                                     fio-<pid>-u ("node b")
//! ```
//!
//! The worker runs on a thread that entered the node namespace; the XDP redirect program is
//! attached natively to both node-side veths with ARP redirected too, so the dataplane answers
//! the pods' ARP for their gateway. A kernel TCP connection from pod 1 to pod 2 must carry
//! 1 MiB both ways intact; after an ingress policy on pod 2 that admits nobody is published, a
//! new connection must fail and the drop must be counted as `policy_denied_ingress`. In
//! between, UDP from pod 1 to a pod of node b (10.78.0.21) must leave on the uplink as VXLAN:
//! encapsulation grows the frame at the front, so this exercises the headroom and the move
//! back to the receive offset before TX.
//!
//! Needs root; skips with a message when not root, or when `ip`, namespaces, BPF or AF_XDP
//! are unavailable. Never touches the root namespace's interfaces.

use std::fs::File;
use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

use dataplane::api::{StatsRegistry, TablesHandle};
use dataplane::io::{IoCounters, PortSpec, SocketStats, Worker, WorkerConfig, XskConfig};
use dataplane::pipeline::{Counters, DropReason, PipelineConfig};
use dataplane::tables::endpoints::{EndpointId, EndpointSpec};
use dataplane::tables::ipcache::IpCacheEntry;
use dataplane::tables::maglev::DEFAULT_M;
use dataplane::tables::nodes::{Encap, Node};
use dataplane::tables::services::Services;
use dataplane::tables::{LocalNode, Tables};
use dataplane::{Identity, MacAddr, Prefix};
use nix::sched::{setns, CloneFlags};
use xdp_redirect::{AttachMode, RedirectConfig, XdpError, XdpProgram};

const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
const ROUTER_MAC: MacAddr = MacAddr([0x02, 0x77, 0, 0, 0, 0x01]);
const PORT: u16 = 7777;
const PAYLOAD: usize = 1 << 20;
const NODE_UNDERLAY: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 1);
const NODE_B_UNDERLAY: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 2);
const REMOTE_POD: Ipv4Addr = Ipv4Addr::new(10, 78, 0, 21);
const VXLAN_PORT: u16 = 4789;

/// A pod: its namespace, the node-side veth, its address and what the node learned about it.
#[derive(Clone, Debug)]
struct Pod {
    ns: String,
    host_if: String,
    ip: Ipv4Addr,
    identity: Identity,
    /// Index of `host_if` in the node namespace.
    ifindex: u32,
    /// MAC of the pod's `eth0`.
    mac: MacAddr,
}

/// The uplink: node side `fiou`, and node b's `eth0` in its own namespace.
#[derive(Clone, Debug)]
struct Uplink {
    ns: String,
    host_if: String,
    ifindex: u32,
    mac: MacAddr,
    /// Node b's MAC: the next hop of tunnel packets.
    peer_mac: MacAddr,
}

/// Everything built for one run; dropping it removes every namespace.
struct Topology {
    node: String,
    pods: [Pod; 2],
    uplink: Uplink,
    _guard: NetNsGuard,
}

/// The namespaces of one run; deleting them deletes the veth pairs.
struct NetNsGuard {
    names: Vec<String>,
}

impl NetNsGuard {
    fn add(&mut self, name: &str) -> Result<(), String> {
        run_ip(&["netns", "add", name])?;
        self.names.push(name.to_string());
        Ok(())
    }
}

impl Drop for NetNsGuard {
    fn drop(&mut self) {
        for name in self.names.iter().rev() {
            if run_ip(&["netns", "del", name]).is_err() {
                eprintln!("WARNING: could not delete namespace {name}: run `ip netns del {name}`");
            }
        }
    }
}

fn run_ip(args: &[&str]) -> Result<String, String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run `ip` (install iproute2): {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn ip_in(ns: &str, args: &[&str]) -> String {
    let mut all = vec!["-n", ns];
    all.extend_from_slice(args);
    run_ip(&all).unwrap_or_else(|e| panic!("{e}"))
}

/// `(ifindex, MAC)` of `dev` in namespace `ns`, from `ip -j link show`.
fn link_facts(ns: &str, dev: &str) -> (u32, MacAddr) {
    let json = ip_in(ns, &["-j", "link", "show", "dev", dev]);
    let links: serde_json::Value = serde_json::from_str(&json).expect("ip -j output");
    let link = &links[0];
    let ifindex = link["ifindex"].as_u64().expect("ifindex") as u32;
    let mac = link["address"]
        .as_str()
        .expect("address")
        .parse()
        .expect("MAC");
    (ifindex, mac)
}

/// Root, `ip netns`, BPF and AF_XDP, or the reason to skip.
fn preflight() -> Result<(), String> {
    if !nix::unistd::geteuid().is_root() {
        return Err("needs root (run `sudo cargo test -p dataplane --features afxdp`)".into());
    }
    run_ip(&["netns", "list"])?;
    match XdpProgram::load(RedirectConfig::default()) {
        Ok(_) => {}
        Err(e @ (XdpError::PermissionDenied { .. } | XdpError::BpfUnavailable { .. })) => {
            return Err(format!("BPF unavailable: {e}"));
        }
        Err(e) => panic!("loading the XDP program failed: {e}"),
    }
    // SAFETY: plain syscall with constant arguments; the result is checked below.
    let fd = unsafe { libc::socket(libc::AF_XDP, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(format!(
            "no AF_XDP sockets here: {}",
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: `fd` was just opened here and is not used afterwards.
    unsafe { libc::close(fd) };
    Ok(())
}

/// Builds the node, two pods and node b behind the uplink.
fn build_topology() -> Result<Topology, String> {
    let mut guard = NetNsGuard { names: Vec::new() };
    let node = format!("fio-{}", std::process::id());
    guard.add(&node)?;
    ip_in(&node, &["link", "set", "lo", "up"]);
    let mut pods = Vec::new();
    for (i, host) in [(1u8, 11u8), (2, 12)] {
        let ns = format!("{node}-p{i}");
        guard.add(&ns)?;
        let host_if = format!("fioh{i}");
        let ip = Ipv4Addr::new(10, 77, 0, host);
        add_veth(&node, &host_if, &ns, &format!("{ip}/32"));
        ip_in(
            &ns,
            &[
                "route",
                "add",
                "default",
                "via",
                &GATEWAY.to_string(),
                "dev",
                "eth0",
                "onlink",
            ],
        );
        let (ifindex, _) = link_facts(&node, &host_if);
        let (_, mac) = link_facts(&ns, "eth0");
        pods.push(Pod {
            ns,
            host_if,
            ip,
            identity: Identity(1000 + u32::from(i)),
            ifindex,
            mac,
        });
    }
    let pods: [Pod; 2] = pods.try_into().expect("two pods");

    let ns = format!("{node}-u");
    guard.add(&ns)?;
    let host_if = "fiou".to_string();
    add_veth(&node, &host_if, &ns, &format!("{NODE_B_UNDERLAY}/24"));
    let (ifindex, mac) = link_facts(&node, &host_if);
    let (_, peer_mac) = link_facts(&ns, "eth0");
    let uplink = Uplink {
        ns,
        host_if,
        ifindex,
        mac,
        peer_mac,
    };
    Ok(Topology {
        node,
        pods,
        uplink,
        _guard: guard,
    })
}

/// A veth pair `host_if` (in `node`, up, no address) <-> `eth0` (in `peer_ns`, up, `addr`).
fn add_veth(node: &str, host_if: &str, peer_ns: &str, addr: &str) {
    ip_in(
        node,
        &[
            "link", "add", host_if, "type", "veth", "peer", "name", "eth0", "netns", peer_ns,
        ],
    );
    ip_in(node, &["link", "set", host_if, "up"]);
    ip_in(peer_ns, &["link", "set", "lo", "up"]);
    ip_in(peer_ns, &["link", "set", "eth0", "up"]);
    ip_in(peer_ns, &["addr", "add", addr, "dev", "eth0"]);
}

fn tables(topo: &Topology, deny_into_pod2: bool) -> Tables {
    let pods = &topo.pods;
    let node = LocalNode {
        name: "fio-node".into(),
        underlay_ipv4: Some(NODE_UNDERLAY),
        router_mac: ROUTER_MAC,
        gateway_ipv4: Some(GATEWAY),
        uplink_ifindex: Some(topo.uplink.ifindex),
        uplink_mac: topo.uplink.mac,
        ..LocalNode::default()
    };
    let mut t = Tables::empty(node, Services::new(DEFAULT_M, 7).expect("services"));
    let (endpoints, ipcache) = (
        Arc::make_mut(&mut t.endpoints),
        Arc::make_mut(&mut t.ipcache),
    );
    for (i, pod) in pods.iter().enumerate() {
        endpoints
            .upsert(EndpointSpec {
                id: EndpointId(i as u32 + 1),
                ifindex: pod.ifindex,
                mac: pod.mac,
                ipv4: Some(pod.ip),
                ipv6: None,
                identity: pod.identity,
            })
            .expect("endpoint");
        ipcache.upsert(
            Prefix::host(IpAddr::V4(pod.ip)),
            IpCacheEntry::local(pod.identity),
        );
    }
    ipcache.upsert(
        Prefix::host(IpAddr::V4(REMOTE_POD)),
        IpCacheEntry::remote(Identity(2001), IpAddr::V4(NODE_B_UNDERLAY)),
    );
    Arc::make_mut(&mut t.nodes)
        .upsert(Node {
            name: "fio-node-b".into(),
            underlay: IpAddr::V4(NODE_B_UNDERLAY),
            pod_cidrs: vec!["10.78.0.0/24".parse().expect("CIDR")],
            encap: Encap::Vxlan,
            next_hop_mac: Some(topo.uplink.peer_mac),
        })
        .expect("node b");
    if deny_into_pod2 {
        // Selected by a policy that admits nobody: default deny on ingress.
        let policy = endpoints.policy_mut(EndpointId(2)).expect("pod 2");
        policy.ingress.enforced = true;
    }
    t
}

/// Runs `f` on a thread that entered network namespace `ns`.
fn spawn_in<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> thread::JoinHandle<T> {
    let path = format!("/var/run/netns/{ns}");
    thread::spawn(move || {
        let file = File::open(&path).expect("open namespace");
        setns(file, CloneFlags::CLONE_NEWNET).expect("setns");
        f()
    })
}

/// What the worker thread reports when it stops.
type WorkerReport = (IoCounters, Counters, Vec<SocketStats>);

/// Starts the worker in the node namespace; returns once its sockets are registered.
fn start_worker(
    topo: &Topology,
    tables: TablesHandle,
    registry: Arc<StatsRegistry>,
    shutdown: Arc<AtomicBool>,
) -> thread::JoinHandle<Result<WorkerReport, String>> {
    let (ready_tx, ready_rx) = mpsc::channel::<Result<(), String>>();
    // (interface, its index, what its program redirects): pods' ARP is the dataplane's to
    // answer; the uplink's ARP is the kernel's.
    let pod_redirect = RedirectConfig {
        redirect_arp: true,
        redirect_non_ip: false,
    };
    let mut ports: Vec<(String, u32, RedirectConfig)> = topo
        .pods
        .iter()
        .map(|p| (p.host_if.clone(), p.ifindex, pod_redirect))
        .collect();
    ports.push((
        topo.uplink.host_if.clone(),
        topo.uplink.ifindex,
        RedirectConfig::default(),
    ));
    let handle = spawn_in(&topo.node, move || {
        let fail = |tx: &mpsc::Sender<Result<(), String>>, e: String| {
            let _ = tx.send(Err(e.clone()));
            Err(e)
        };
        let mut programs = Vec::new();
        let mut attachments = Vec::new();
        for (ifname, ifindex, redirect) in &ports {
            let program = match XdpProgram::load(*redirect) {
                Ok(p) => p,
                Err(e) => return fail(&ready_tx, format!("load: {e}")),
            };
            match program.attach(*ifindex, AttachMode::Native) {
                Ok(a) => attachments.push(a),
                Err(e) => return fail(&ready_tx, format!("attach {ifname}: {e}")),
            }
            programs.push(program);
        }
        let config = WorkerConfig {
            ports: ports
                .iter()
                .map(|(ifname, _, _)| PortSpec::new(ifname, 0))
                .collect(),
            core: None,
            pipeline: PipelineConfig {
                complete_l4_checksums: true,
                ..PipelineConfig::default()
            },
            xsk: XskConfig::default(),
        };
        let mut worker = match Worker::new(config) {
            Ok(w) => w,
            Err(e) => return fail(&ready_tx, format!("worker: {e}")),
        };
        for (socket, program) in worker.sockets().iter().zip(&programs) {
            eprintln!(
                "socket {} queue {} (ifindex {}): fd {}, copy-mode TX budget {:?}",
                socket.spec.ifname, socket.spec.queue, socket.ifindex, socket.fd, socket.tx_budget
            );
            if let Err(e) = program.register_socket(socket.spec.queue, socket.fd) {
                return fail(&ready_tx, format!("register {:?}: {e}", socket.spec));
            }
        }
        let _ = ready_tx.send(Ok(()));
        worker.publish_to(registry.register("worker-0", 1024));
        worker
            .run(&tables, &shutdown)
            .map_err(|e| format!("run: {e}"))?;
        let report = (
            worker.io_counters().clone(),
            worker.pipeline().counters().clone(),
            worker.socket_stats(),
        );
        drop(attachments);
        Ok(report)
    });
    match ready_rx.recv_timeout(Duration::from_secs(30)) {
        Ok(Ok(())) => {}
        Ok(Err(e)) => panic!("worker setup failed: {e}"),
        Err(e) => panic!("worker did not start: {e}"),
    }
    handle
}

/// A server in pod 2: for each connection, reads until EOF and sends the bytes back.
fn start_server(pod: &Pod, stop: Arc<AtomicBool>) -> thread::JoinHandle<usize> {
    let (ready_tx, ready_rx) = mpsc::channel();
    let addr = SocketAddr::new(IpAddr::V4(pod.ip), PORT);
    let handle = spawn_in(&pod.ns, move || {
        let listener = TcpListener::bind(addr).expect("bind in pod 2");
        listener.set_nonblocking(true).expect("nonblocking");
        ready_tx.send(()).expect("ready");
        let mut served = 0;
        while !stop.load(Ordering::Relaxed) {
            match listener.accept() {
                Ok((mut stream, _)) => {
                    stream.set_nonblocking(false).expect("blocking");
                    stream
                        .set_read_timeout(Some(Duration::from_secs(20)))
                        .expect("timeout");
                    let mut data = Vec::new();
                    if stream.read_to_end(&mut data).is_ok() && stream.write_all(&data).is_ok() {
                        served += 1;
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    thread::sleep(Duration::from_millis(5))
                }
                Err(e) => panic!("accept: {e}"),
            }
        }
        served
    });
    ready_rx.recv().expect("server ready");
    handle
}

/// From pod 1: connects to pod 2, sends `PAYLOAD` bytes, reads them back.
fn echo_from(pod: &Pod, dst: Ipv4Addr, timeout: Duration) -> Result<(), String> {
    let addr = SocketAddr::new(IpAddr::V4(dst), PORT);
    spawn_in(&pod.ns, move || {
        let mut stream =
            TcpStream::connect_timeout(&addr, timeout).map_err(|e| format!("connect: {e}"))?;
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .map_err(|e| e.to_string())?;
        let sent: Vec<u8> = (0..PAYLOAD).map(|i| (i * 7 + i / 251) as u8).collect();
        let writer = {
            let mut stream = stream.try_clone().map_err(|e| e.to_string())?;
            let sent = sent.clone();
            thread::spawn(move || {
                stream.write_all(&sent)?;
                stream.shutdown(Shutdown::Write)
            })
        };
        let mut got = Vec::with_capacity(PAYLOAD);
        stream
            .read_to_end(&mut got)
            .map_err(|e| format!("read back: {e}"))?;
        writer
            .join()
            .map_err(|_| "writer panicked".to_string())?
            .map_err(|e| format!("write: {e}"))?;
        if got != sent {
            return Err(format!("echo differs: {} bytes back", got.len()));
        }
        Ok(())
    })
    .join()
    .unwrap_or_else(|p| std::panic::resume_unwind(p))
}

/// From pod 1: UDP datagrams to a pod of node b; node b (a plain UDP socket on the VXLAN port
/// of its underlay address) must receive one VXLAN packet whose VNI is pod 1's identity and
/// whose inner frame carries the datagram, from pod 1 to that pod.
fn udp_to_remote_pod(pod: &Pod, uplink: &Uplink) -> Result<(), String> {
    const MESSAGE: &[u8] = b"to a pod on node b";
    let receiver = spawn_in(&uplink.ns, move || {
        let socket = UdpSocket::bind((NODE_B_UNDERLAY, VXLAN_PORT)).map_err(|e| e.to_string())?;
        socket
            .set_read_timeout(Some(Duration::from_secs(5)))
            .map_err(|e| e.to_string())?;
        let mut buf = [0u8; 2048];
        let (n, from) = socket
            .recv_from(&mut buf)
            .map_err(|e| format!("nothing arrived on the uplink: {e}"))?;
        Ok::<_, String>((buf[..n].to_vec(), from))
    });
    thread::sleep(Duration::from_millis(100)); // let node b bind first
    let identity = pod.identity;
    spawn_in(&pod.ns, move || {
        let socket = UdpSocket::bind("0.0.0.0:0").expect("udp in pod 1");
        for _ in 0..3 {
            socket
                .send_to(MESSAGE, (REMOTE_POD, 9999))
                .expect("send from pod 1");
            thread::sleep(Duration::from_millis(50));
        }
    })
    .join()
    .expect("sender");
    let (vxlan, from) = receiver.join().expect("receiver")?;
    if from.ip() != IpAddr::V4(NODE_UNDERLAY) {
        return Err(format!("outer source {from}, expected {NODE_UNDERLAY}"));
    }
    // VXLAN header (8) + inner Ethernet (14) + IPv4 (20) + UDP (8) + message.
    let inner_ip = 8 + 14;
    if vxlan.len() != inner_ip + 28 + MESSAGE.len() {
        return Err(format!("{} bytes of VXLAN payload", vxlan.len()));
    }
    let vni = u32::from_be_bytes([0, vxlan[4], vxlan[5], vxlan[6]]);
    if vxlan[0] != 0x08 || vni != identity.0 {
        return Err(format!("VXLAN flags {:#x}, VNI {vni}", vxlan[0]));
    }
    let inner_src = Ipv4Addr::new(
        vxlan[inner_ip + 12],
        vxlan[inner_ip + 13],
        vxlan[inner_ip + 14],
        vxlan[inner_ip + 15],
    );
    let inner_dst = Ipv4Addr::new(
        vxlan[inner_ip + 16],
        vxlan[inner_ip + 17],
        vxlan[inner_ip + 18],
        vxlan[inner_ip + 19],
    );
    if (inner_src, inner_dst) != (pod.ip, REMOTE_POD) || !vxlan.ends_with(MESSAGE) {
        return Err(format!("inner packet {inner_src} -> {inner_dst}"));
    }
    Ok(())
}

#[test]
fn pods_talk_through_the_dataplane_and_policy_drops_are_counted() {
    if let Err(why) = preflight() {
        eprintln!("SKIPPED: {why}");
        return;
    }
    let topo = build_topology().unwrap_or_else(|e| panic!("topology: {e}"));
    let pods = &topo.pods;
    // Published the way the control socket publishes: read-copy-update through a handle.
    let handle = TablesHandle::new(tables(&topo, false));
    let registry = StatsRegistry::new();
    let shutdown = Arc::new(AtomicBool::new(false));
    let worker = start_worker(
        &topo,
        handle.clone(),
        Arc::clone(&registry),
        Arc::clone(&shutdown),
    );
    let stop_server = Arc::new(AtomicBool::new(false));
    let server = start_server(&pods[1], Arc::clone(&stop_server));

    let started = Instant::now();
    let allowed = echo_from(&pods[0], pods[1].ip, Duration::from_secs(5));
    let allowed_took = started.elapsed();

    let tunnelled = udp_to_remote_pod(&pods[0], &topo.uplink);

    handle.store(tables(&topo, true));
    let denied = echo_from(&pods[0], pods[1].ip, Duration::from_secs(2));

    stop_server.store(true, Ordering::Relaxed);
    shutdown.store(true, Ordering::Relaxed);
    let served = server.join().expect("server thread");
    let (io, counters, sockets) = worker
        .join()
        .expect("worker thread")
        .unwrap_or_else(|e| panic!("worker: {e}"));
    eprintln!("allowed connection: {allowed:?} in {allowed_took:?}; denied: {denied:?}");
    eprintln!("UDP to node b's pod, as seen by node b: {tunnelled:?}");
    eprintln!("io: {io:#?}");
    eprintln!(
        "pipeline: rx {} tx {} drop {} arp_replies {} ct_created {} encapsulated {} \
         l4_checksum_completed {}",
        counters.rx_packets,
        counters.tx_packets,
        counters.drop_packets,
        counters.arp_replies,
        counters.ct_created,
        counters.encapsulated,
        counters.l4_checksum_completed
    );
    for (reason, n) in counters.nonzero_drops() {
        eprintln!("  drop {reason}: {n}");
    }
    eprintln!("sockets: {sockets:?}");

    assert_eq!(allowed, Ok(()), "pod 1 -> pod 2 through the dataplane");
    assert_eq!(served, 1, "the server saw exactly the allowed connection");
    assert!(
        counters.arp_replies >= 2,
        "both pods resolved their gateway"
    );
    assert!(counters.l4_checksum_completed > 0);
    assert!(io.tx_frames > 0 && io.tx_completed > 0);
    assert_eq!(
        tunnelled,
        Ok(()),
        "pod 1 -> pod on node b, VXLAN on the uplink"
    );
    assert!(counters.encapsulated > 0 && io.realigned > 0);
    assert!(denied.is_err(), "the denied connection must fail");
    assert!(
        counters.drops(DropReason::PolicyDeniedIngress) > 0,
        "the denied SYN is counted as policy_denied_ingress"
    );
    assert_eq!(
        registry.total().drops(DropReason::PolicyDeniedIngress),
        counters.drops(DropReason::PolicyDeniedIngress),
        "the control socket's registry sees the worker's final counters"
    );
    assert_eq!(io.rx_invalid + io.view_mismatch + io.realign_too_long, 0);
}
