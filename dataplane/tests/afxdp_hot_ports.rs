//! A socket handed to a running worker, and taken away again (feature `afxdp`): what
//! `interface.add`/`interface.remove` do in the daemon, at the `io` level.
//!
//! A worker serves pod 1 only; pod 2's interface gets its XDP program and a socket opened on the
//! worker's UMEM from another thread (`PortOpener`), sent through the worker's queue while it
//! runs. Kernel TCP from pod 1 to pod 2 must then work; after the program is detached and the
//! socket removed it must not; and after five rounds of adding and removing, TCP works again
//! and every frame the removed sockets' rings held is back on the free list (frames conserved:
//! nothing leaks per round).
//!
//! Needs root; skips with a message otherwise. Never touches the root namespace's interfaces.

mod support;

use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use dataplane::api::TablesHandle;
use dataplane::io::{
    monotonic_ns, PortChange, PortChanges, PortOpener, PortSpec, Worker, WorkerConfig, XskConfig,
};
use dataplane::pipeline::PipelineConfig;
use dataplane::tables::endpoints::{EndpointId, EndpointSpec};
use dataplane::tables::ipcache::IpCacheEntry;
use dataplane::tables::maglev::DEFAULT_M;
use dataplane::tables::services::Services;
use dataplane::tables::{LocalNode, Tables};
use dataplane::{Identity, MacAddr, Prefix};
use support::{build_pods, preflight, spawn_in, Echo, Pod};
use xdp_redirect::{AttachMode, RedirectConfig, XdpAttachment, XdpProgram};

const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 79, 0, 1);
const ECHO: Echo = Echo {
    port: 7780,
    payload: 256 << 10,
    read_timeout: Duration::from_secs(10),
};
/// A pod's program: all IP and ARP to the dataplane.
fn pod_redirect() -> RedirectConfig {
    RedirectConfig {
        redirect_arp: true,
        ..RedirectConfig::default()
    }
}

fn tables(pods: &[Pod]) -> Tables {
    let node = LocalNode {
        name: "fhp-node".into(),
        router_mac: MacAddr([0x02, 0x79, 0, 0, 0, 1]),
        gateway_ipv4: Some(GATEWAY),
        ..LocalNode::default()
    };
    let mut t = Tables::empty(node, Services::new(DEFAULT_M, 7).expect("services"));
    for pod in pods {
        let identity = Identity(1000 + pod.id);
        std::sync::Arc::make_mut(&mut t.endpoints)
            .upsert(EndpointSpec {
                id: EndpointId(pod.id),
                ifindex: pod.ifindex,
                mac: pod.mac,
                ipv4: Some(pod.ip),
                ipv6: None,
                identity,
            })
            .expect("endpoint");
        std::sync::Arc::make_mut(&mut t.ipcache).upsert(
            Prefix::host(IpAddr::V4(pod.ip)),
            IpCacheEntry::local(identity),
        );
    }
    t
}

/// What the daemon's `interface.add` does: attach, open, register, send.
fn add(
    node: &str,
    pod: &Pod,
    opener: &PortOpener,
    changes: &PortChanges,
) -> (XdpProgram, XdpAttachment) {
    let (pod, opener, changes) = (pod.clone(), opener.clone(), changes.clone());
    spawn_in(node, move || {
        let program = XdpProgram::load(pod_redirect()).expect("load");
        let attachment = program
            .attach(pod.ifindex, AttachMode::Native)
            .expect("attach");
        let port = opener
            .open(&PortSpec::new(&pod.host_if, 0))
            .expect("open the socket");
        program
            .register_socket(0, port.info().fd)
            .expect("register");
        changes
            .send(PortChange::Add(Box::new(port)))
            .expect("worker alive");
        (program, attachment)
    })
    .join()
    .expect("add")
}

/// What `interface.remove` does: detach, then the worker drops the socket.
fn remove(pod: &Pod, (program, attachment): (XdpProgram, XdpAttachment), changes: &PortChanges) {
    attachment.detach().expect("detach");
    drop(program);
    changes
        .send(PortChange::Remove {
            ifindex: pod.ifindex,
        })
        .expect("worker alive");
}

#[test]
fn sockets_come_and_go_while_the_worker_runs_and_no_frame_leaks() {
    if let Err(why) = preflight() {
        eprintln!("SKIPPED: {why}");
        return;
    }
    let topo = build_pods("fhp", [10, 79, 0], GATEWAY, 2).unwrap_or_else(|e| panic!("{e}"));
    let (p1, p2) = (topo.pods[0].clone(), topo.pods[1].clone());
    let handle = TablesHandle::new(tables(&topo.pods));
    let shutdown = Arc::new(AtomicBool::new(false));
    let xsk = XskConfig {
        hot_ports: 1,
        hot_frames_per_port: 1024,
        ..XskConfig::default()
    };
    let total = xsk.frames_per_port + 1024;
    let fill_of_pod1 = xsk.fill_size;
    let (ready_tx, ready_rx) = mpsc::channel();
    let worker = {
        let (p1, handle, shutdown) = (p1.clone(), handle.clone(), Arc::clone(&shutdown));
        spawn_in(&topo.node, move || {
            let program = XdpProgram::load(pod_redirect()).expect("load");
            let _attachment = program
                .attach(p1.ifindex, AttachMode::Native)
                .expect("attach");
            let mut worker = Worker::new(WorkerConfig {
                ports: vec![PortSpec::new(&p1.host_if, 0)],
                core: None,
                pipeline: PipelineConfig {
                    complete_l4_checksums: true,
                    ..PipelineConfig::default()
                },
                xsk,
            })
            .expect("worker");
            for s in worker.sockets() {
                program
                    .register_socket(s.spec.queue, s.fd)
                    .expect("register");
            }
            ready_tx
                .send((worker.port_opener(), worker.port_changes()))
                .expect("ready");
            worker.run(&handle, &shutdown).expect("run");
            // The last removal (if the loop stopped before it), then one pass to reap
            // completions: what is not in pod 1's fill ring must be free.
            worker.apply_port_changes();
            worker.poll_once(&handle, monotonic_ns());
            (worker.free_frames(), worker.filled_frames())
        })
    };
    let (opener, changes) = ready_rx
        .recv_timeout(Duration::from_secs(30))
        .expect("worker up");
    let stop = Arc::new(AtomicBool::new(false));
    let server = ECHO.serve(&p2.ns, p2.ip, Arc::clone(&stop));

    let mut results = Vec::new();
    for round in 0..5 {
        let served = add(&topo.node, &p2, &opener, &changes);
        let up = ECHO.exchange(&p1.ns, p2.ip, Duration::from_secs(5));
        remove(&p2, served, &changes);
        let down = ECHO.exchange(&p1.ns, p2.ip, Duration::from_millis(500));
        eprintln!(
            "round {round}: served {up:?}, removed {:?}",
            down.as_ref().err()
        );
        results.push((up, down.is_err()));
    }
    let last = add(&topo.node, &p2, &opener, &changes);
    let again = ECHO.exchange(&p1.ns, p2.ip, Duration::from_secs(5));
    remove(&p2, last, &changes);
    stop.store(true, Ordering::Relaxed);
    shutdown.store(true, Ordering::Relaxed);
    let served = server.join().expect("server");
    let (free, filled) = worker.join().expect("worker thread");

    for (round, (up, down)) in results.iter().enumerate() {
        assert_eq!(up, &Ok(()), "round {round}: TCP through the added socket");
        assert!(
            down,
            "round {round}: nothing reaches pod 2 once its socket is removed"
        );
    }
    assert_eq!(again, Ok(()), "added a sixth time");
    assert_eq!(served, 6);
    assert!(
        filled <= fill_of_pod1 as usize,
        "only pod 1's rings hold frames"
    );
    assert_eq!(
        (free + filled) as u32,
        total,
        "every frame is free or in pod 1's rings: none stayed with a removed socket, none twice"
    );
}
