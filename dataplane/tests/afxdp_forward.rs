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

mod support;

use std::net::{IpAddr, Ipv4Addr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

use dataplane::api::{StatsRegistry, TablesHandle};
use dataplane::io::{IoCounters, PortSpec, SocketStats, Worker, WorkerConfig, XskConfig};
use dataplane::pipeline::{Counters, DropReason, PipelineConfig};
use dataplane::tables::endpoints::EndpointId;
use dataplane::tables::ipcache::IpCacheEntry;
use dataplane::tables::nodes::{Encap, Node};
use dataplane::tables::{LocalNode, Tables};
use dataplane::{Identity, MacAddr, Prefix};
use support::{
    add_default_route, add_veth, ip_in, link_facts, preflight, spawn_in, tables_with_local_pods,
    Echo, LocalPod, NetNsGuard,
};
use xdp_redirect::{AttachMode, RedirectConfig, XdpProgram};

const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
const ROUTER_MAC: MacAddr = MacAddr([0x02, 0x77, 0, 0, 0, 0x01]);
/// Pod 2's server and pod 1's connections: 1 MiB both ways.
const ECHO: Echo = Echo {
    port: 7777,
    payload: 1 << 20,
    read_timeout: Duration::from_secs(20),
};
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

/// Builds the node, two pods and node b behind the uplink.
fn build_topology() -> Result<Topology, String> {
    let mut guard = NetNsGuard::default();
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
        add_default_route(&ns, GATEWAY);
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
    let local: Vec<LocalPod> = pods
        .iter()
        .map(|p| LocalPod {
            ifindex: p.ifindex,
            mac: p.mac,
            ip: p.ip,
            identity: p.identity,
        })
        .collect();
    let mut t = tables_with_local_pods(node, &local);
    Arc::make_mut(&mut t.ipcache).upsert(
        Prefix::host(IpAddr::V4(REMOTE_POD)),
        IpCacheEntry::remote(Identity(2001), IpAddr::V4(NODE_B_UNDERLAY)),
    );
    Arc::make_mut(&mut t.nodes)
        .upsert(Node {
            name: "fio-node-b".into(),
            underlay: IpAddr::V4(NODE_B_UNDERLAY),
            pod_cidrs: vec!["10.78.0.0/24".parse().expect("CIDR")],
            encap: Encap::Vxlan,
        })
        .expect("node b");
    // What the daemon's next-hop resolver would find: node B on-link.
    Arc::make_mut(&mut t.next_hops)
        .set_peer(IpAddr::V4(NODE_B_UNDERLAY), Some(topo.uplink.peer_mac));
    if deny_into_pod2 {
        // Selected by a policy that admits nobody: default deny on ingress.
        let endpoints = Arc::make_mut(&mut t.endpoints);
        let policy = endpoints.policy_mut(EndpointId(2)).expect("pod 2");
        policy.ingress.enforced = true;
    }
    t
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
        ..RedirectConfig::default()
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
        testkit::skip(&why);
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
    let server = ECHO.serve(&pods[1].ns, pods[1].ip, Arc::clone(&stop_server));

    let started = Instant::now();
    let allowed = ECHO.exchange(&pods[0].ns, pods[1].ip, Duration::from_secs(5));
    let allowed_took = started.elapsed();

    let tunnelled = udp_to_remote_pod(&pods[0], &topo.uplink);

    handle.store(tables(&topo, true));
    let denied = ECHO.exchange(&pods[0].ns, pods[1].ip, Duration::from_secs(2));

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
