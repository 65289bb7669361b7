//! Two workers sharing two pods' multi-queue veths over AF_XDP, with real kernel TCP and UDP
//! (feature `afxdp`): each flow is processed by the worker that owns it, whichever queue its
//! frames arrive on.
//!
//! Topology, all in namespaces this test creates and removes (guard `Drop`, pass or fail):
//!
//! ```text
//!  fmq-<pid>-p1                          fmq-<pid> ("node")                     fmq-<pid>-p2
//!  eth0 10.79.0.11/32 <-veth, 2 queues-> fmq<pid>h1   fmq<pid>h2 <-veth, 2 queues-> eth0 10.79.0.12/32
//!                                 worker 0: queue 0 of both   worker 1: queue 1 of both
//! ```
//!
//! A pod spreads its flows over its two transmit queues by its own hash, and each frame
//! arrives on the same-numbered queue of the node's side: the two directions of a flow often
//! arrive on different workers. Checked:
//! - many TCP connections (both ways) and UDP flows (both ways) all complete, and frames were
//!   handed between the workers in both directions;
//! - with pod 1's ingress closed (a policy that admits nobody), pod 1's own connections still
//!   complete (the replies pass as established, on whichever worker they arrive), while a new
//!   connection towards pod 1 fails and is counted as `policy_denied_ingress`.
//!
//! Needs root; skips with a message when not root, or when `ip`, namespaces, BPF or AF_XDP
//! are unavailable. Never touches the root namespace's interfaces.

mod support;

use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::Duration;

use dataplane::api::{StatsRegistry, TablesHandle};
use dataplane::io::{PortSpec, Worker, WorkerConfig, XskConfig};
use dataplane::pipeline::flow_owner::FlowOwner;
use dataplane::pipeline::handoff::{mesh, Handoff, HandoffCounters};
use dataplane::pipeline::{Counters, DropReason, PipelineConfig};
use dataplane::tables::endpoints::EndpointId;
use dataplane::tables::{LocalNode, Tables};
use dataplane::{Identity, MacAddr};
use support::{
    add_default_route, add_veth_with_queues, ip_in, link_facts, preflight, spawn_in,
    tables_with_local_pods, udp_echo, udp_flows, Echo, LocalPod, NetNsGuard,
};
use xdp_redirect::{AttachMode, RedirectConfig, XdpProgram};

const WORKERS: usize = 2;
const QUEUES: u32 = 2;
const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 79, 0, 1);
const ROUTER_MAC: MacAddr = MacAddr([0x02, 0x79, 0, 0, 0, 0x01]);
const ECHO: Echo = Echo {
    port: 7777,
    payload: 64 << 10,
    read_timeout: Duration::from_secs(20),
};
const UDP_PORT: u16 = 5353;
/// Connections (TCP) and flows (UDP) per direction.
const FLOWS: usize = 16;

#[derive(Clone, Debug)]
struct Pod {
    ns: String,
    host_if: String,
    ip: Ipv4Addr,
    identity: Identity,
    ifindex: u32,
    mac: MacAddr,
}

struct Topology {
    node: String,
    pods: [Pod; 2],
    _guard: NetNsGuard,
}

fn build_topology() -> Result<Topology, String> {
    let mut guard = NetNsGuard::default();
    let pid = std::process::id();
    let node = format!("fmq-{pid}");
    guard.add(&node)?;
    ip_in(&node, &["link", "set", "lo", "up"]);
    let mut pods = Vec::new();
    for (i, host) in [(1u8, 11u8), (2, 12)] {
        let ns = format!("{node}-p{i}");
        guard.add(&ns)?;
        let host_if = format!("fmq{pid}h{i}");
        let ip = Ipv4Addr::new(10, 79, 0, host);
        add_veth_with_queues(&node, &host_if, &ns, &format!("{ip}/32"), QUEUES);
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
    Ok(Topology {
        node,
        pods: pods.try_into().map_err(|_| "two pods".to_string())?,
        _guard: guard,
    })
}

fn tables(topo: &Topology, close_pod1: bool) -> Tables {
    let node = LocalNode {
        name: "fmq-node".into(),
        router_mac: ROUTER_MAC,
        gateway_ipv4: Some(GATEWAY),
        ..LocalNode::default()
    };
    let local: Vec<LocalPod> = topo
        .pods
        .iter()
        .map(|p| LocalPod {
            ifindex: p.ifindex,
            mac: p.mac,
            ip: p.ip,
            identity: p.identity,
        })
        .collect();
    let mut t = tables_with_local_pods(node, &local);
    if close_pod1 {
        // Selected by a policy that admits nobody: default deny on ingress.
        Arc::make_mut(&mut t.endpoints)
            .policy_mut(EndpointId(1))
            .expect("pod 1")
            .ingress
            .enforced = true;
    }
    t
}

/// What a worker thread reports when it stops.
type WorkerReport = (Counters, HandoffCounters, u64);

/// Starts the two workers in the node namespace (worker w serves queue w of both veths);
/// returns once every socket is registered.
fn start_workers(
    topo: &Topology,
    tables: &TablesHandle,
    registry: &Arc<StatsRegistry>,
    shutdown: &Arc<AtomicBool>,
) -> Vec<thread::JoinHandle<Result<WorkerReport, String>>> {
    let (ready_tx, ready_rx) = mpsc::channel::<Result<(), String>>();
    let redirect = RedirectConfig {
        redirect_arp: true,
        ..RedirectConfig::default()
    };
    let ifaces: Vec<(String, u32)> = topo
        .pods
        .iter()
        .map(|p| (p.host_if.clone(), p.ifindex))
        .collect();
    // The programs (one per interface) are loaded and attached by the first thread, and
    // shared through this channel with the second (a program's XSKMAP takes both workers').
    let (programs_tx, programs_rx) = mpsc::channel::<Arc<Vec<XdpProgram>>>();
    let mut programs_rx = Some(programs_rx);
    let owner = FlowOwner::new(WORKERS, None);
    let mut handles = Vec::new();
    for (w, links) in mesh(WORKERS, 512, 3712).into_iter().enumerate() {
        let (ready_tx, ifaces) = (ready_tx.clone(), ifaces.clone());
        let (tables, registry, shutdown) = (tables.clone(), registry.clone(), shutdown.clone());
        let programs_tx = programs_tx.clone();
        let programs_rx = if w == 1 { programs_rx.take() } else { None };
        handles.push(spawn_in(&topo.node, move || {
            let fail = |e: String| {
                let _ = ready_tx.send(Err(e.clone()));
                Err(e)
            };
            let mut attachments = Vec::new();
            let programs = if w == 0 {
                let mut programs = Vec::new();
                for (ifname, ifindex) in &ifaces {
                    let program = match XdpProgram::load(redirect) {
                        Ok(p) => p,
                        Err(e) => return fail(format!("load: {e}")),
                    };
                    match program.attach(*ifindex, AttachMode::Native) {
                        Ok(a) => attachments.push(a),
                        Err(e) => return fail(format!("attach {ifname}: {e}")),
                    }
                    programs.push(program);
                }
                let programs = Arc::new(programs);
                for _ in 1..WORKERS {
                    let _ = programs_tx.send(Arc::clone(&programs));
                }
                programs
            } else {
                match programs_rx.map(|rx| rx.recv_timeout(Duration::from_secs(30))) {
                    Some(Ok(p)) => p,
                    _ => return fail("the first worker did not attach the programs".into()),
                }
            };
            let config = WorkerConfig {
                ports: ifaces
                    .iter()
                    .map(|(ifname, _)| PortSpec::new(ifname, w as u32))
                    .collect(),
                core: None,
                pipeline: PipelineConfig {
                    complete_l4_checksums: true,
                    ..PipelineConfig::default()
                },
                xsk: XskConfig::default(),
            };
            let mut worker = match Worker::new(config) {
                Ok(worker) => worker,
                Err(e) => return fail(format!("worker {w}: {e}")),
            };
            for (socket, program) in worker.sockets().iter().zip(programs.iter()) {
                if let Err(e) = program.register_socket(socket.spec.queue, socket.fd) {
                    return fail(format!("register {:?}: {e}", socket.spec));
                }
            }
            worker.hand_off(Handoff::new(owner, links));
            worker.publish_to(registry.register(&format!("worker-{w}"), 1024));
            let _ = ready_tx.send(Ok(()));
            worker
                .run(&tables, &shutdown)
                .map_err(|e| format!("run: {e}"))?;
            let report = (
                worker.pipeline().counters().clone(),
                worker.handoff_counters(),
                worker.io_counters().handoff_frames,
            );
            // Worker 0 keeps the programs attached until it stops.
            drop(attachments);
            Ok(report)
        }));
    }
    for _ in 0..WORKERS {
        match ready_rx.recv_timeout(Duration::from_secs(30)) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => panic!("worker setup failed: {e}"),
            Err(e) => panic!("a worker did not start: {e}"),
        }
    }
    handles
}

/// `FLOWS` TCP connections from `from` to `to`, each carrying the echo payload both ways.
fn tcp_connections(from: &Pod, to: &Pod) -> Result<(), String> {
    for c in 0..FLOWS {
        ECHO.exchange(&from.ns, to.ip, Duration::from_secs(5))
            .map_err(|e| format!("connection {c} {} -> {}: {e}", from.ip, to.ip))?;
    }
    Ok(())
}

#[test]
fn two_workers_share_multi_queue_veths_and_keep_flows_consistent() {
    if let Err(why) = preflight() {
        testkit::skip(&why);
        return;
    }
    let topo = build_topology().unwrap_or_else(|e| panic!("topology: {e}"));
    let [p1, p2] = topo.pods.clone();
    let handle = TablesHandle::new(tables(&topo, false));
    let registry = StatsRegistry::new();
    let shutdown = Arc::new(AtomicBool::new(false));
    let workers = start_workers(&topo, &handle, &registry, &shutdown);

    let stop = Arc::new(AtomicBool::new(false));
    let servers = [
        ECHO.serve(&p1.ns, p1.ip, Arc::clone(&stop)),
        ECHO.serve(&p2.ns, p2.ip, Arc::clone(&stop)),
    ];
    let udp_servers = [
        udp_echo(&p1.ns, p1.ip, UDP_PORT, Arc::clone(&stop)),
        udp_echo(&p2.ns, p2.ip, UDP_PORT, Arc::clone(&stop)),
    ];

    let tcp_1_to_2 = tcp_connections(&p1, &p2);
    let tcp_2_to_1 = tcp_connections(&p2, &p1);
    let udp_1_to_2 = udp_flows(&p1.ns, p2.ip, UDP_PORT, FLOWS);
    let udp_2_to_1 = udp_flows(&p2.ns, p1.ip, UDP_PORT, FLOWS);

    // Pod 1 admits no new flow: its own connections must still work (replies established),
    // a new one towards it must not.
    handle.store(tables(&topo, true));
    let own_with_ingress_closed = tcp_connections(&p1, &p2);
    let denied = ECHO.exchange(&p2.ns, p1.ip, Duration::from_secs(2));

    stop.store(true, Ordering::Relaxed);
    shutdown.store(true, Ordering::Relaxed);
    let served: Vec<usize> = servers
        .into_iter()
        .map(|s| s.join().expect("server"))
        .collect();
    let echoed: Vec<usize> = udp_servers
        .into_iter()
        .map(|s| s.join().expect("UDP server"))
        .collect();
    let reports: Vec<WorkerReport> = workers
        .into_iter()
        .map(|w| {
            w.join()
                .expect("worker thread")
                .unwrap_or_else(|e| panic!("worker: {e}"))
        })
        .collect();
    for (w, (counters, handoff, taken)) in reports.iter().enumerate() {
        eprintln!(
            "worker {w}: rx {} tx {} drop {} ct_created {} ct_established {}; handoff {handoff:?}, \
             taken over into its UMEM {taken}",
            counters.rx_packets,
            counters.tx_packets,
            counters.drop_packets,
            counters.ct_created,
            counters.ct_established
        );
        for (reason, n) in counters.nonzero_drops() {
            eprintln!("  drop {reason}: {n}");
        }
    }
    eprintln!("TCP served {served:?}, UDP echoed {echoed:?}; denied: {denied:?}");

    assert_eq!(tcp_1_to_2, Ok(()), "TCP pod 1 -> pod 2");
    assert_eq!(tcp_2_to_1, Ok(()), "TCP pod 2 -> pod 1");
    assert_eq!(udp_1_to_2, Ok(()), "UDP pod 1 -> pod 2");
    assert_eq!(udp_2_to_1, Ok(()), "UDP pod 2 -> pod 1");
    assert_eq!(
        own_with_ingress_closed,
        Ok(()),
        "pod 1's connections pass as established with its ingress closed"
    );
    assert!(denied.is_err(), "a new connection into pod 1 is denied");
    let total: Counters = registry.total();
    assert!(total.drops(DropReason::PolicyDeniedIngress) > 0);
    let handed: Vec<u64> = reports.iter().map(|r| r.1.handed_off).collect();
    assert!(
        handed.iter().all(|&n| n > 0),
        "both workers received frames of flows the other owns: {handed:?}"
    );
    let taken: u64 = reports.iter().map(|r| r.2).sum();
    let dropped: u64 = reports.iter().map(|r| r.1.ring_full + r.1.too_long).sum();
    assert_eq!(dropped, 0, "no frame lost between workers");
    assert_eq!(
        taken,
        handed.iter().sum::<u64>(),
        "every handed-off frame taken over"
    );
    assert!(
        reports.iter().all(|r| r.0.ct_created > 0),
        "both workers own flows"
    );
}
