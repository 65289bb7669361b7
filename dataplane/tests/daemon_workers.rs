//! The real `flagella-dataplane` binary with `--workers 2` (feature `afxdp`, root): two pods on
//! 2-queue veths, kernel TCP and UDP both ways, and `status` showing the handoff per worker and
//! summed.
//!
//! Topology, all in namespaces this test creates and removes (guard `Drop`, pass or fail):
//!
//! ```text
//!  fdw-<pid>-p1  eth0 10.81.0.11/32 <-veth, 2 queues-> fdw<pid>h1 ┐ fdw-<pid> ("node"):
//!  fdw-<pid>-p2  eth0 10.81.0.12/32 <-veth, 2 queues-> fdw<pid>h2 ┘ flagella-dataplane --workers 2
//! ```
//!
//! The configuration file lists the interfaces with `queues = 2` and `hot_interfaces = 0`; the
//! daemon creates its host veth with two queues too. After the traffic, SIGTERM must stop the
//! daemon with exit code 0.
//!
//! Needs root; skips with a message when not root, or when `ip`, namespaces, BPF or AF_XDP
//! are unavailable. Never touches the root namespace's interfaces.

#![allow(clippy::unwrap_used)] // Tests: a failed setup should stop the test loudly.

mod support;

use std::net::Ipv4Addr;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::daemon::{call, Daemon};
use support::{build_pods_with_queues, preflight, udp_echo, udp_flows, Echo, PodNamespaces};

const DAEMON: &str = env!("CARGO_BIN_EXE_flagella-dataplane");
const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 81, 0, 1);
const ROUTER_MAC: &str = "02:81:00:00:00:01";
const ECHO: Echo = Echo {
    port: 8181,
    payload: 64 << 10,
    read_timeout: Duration::from_secs(10),
};
const UDP_PORT: u16 = 8182;
const FLOWS: usize = 12;

#[test]
fn the_daemon_with_two_workers_serves_multi_queue_veths() {
    if let Err(why) = preflight() {
        testkit::skip(&why);
        return;
    }
    let PodNamespaces { node, pods, guard } =
        build_pods_with_queues("fdw", [10, 81, 0], GATEWAY, 2, 2)
            .unwrap_or_else(|e| panic!("topology: {e}"));
    let dir = testkit::private_dir("fdw-");
    let mut toml = String::from(
        "workers = 2\nhot_interfaces = 0\nmetrics_address = \"off\"\nmasquerade = false\n",
    );
    for pod in &pods {
        toml.push_str(&format!(
            "[[interface]]\nname = \"{}\"\nrole = \"pod\"\nqueues = 2\n",
            pod.host_if
        ));
    }
    std::fs::write(dir.join("dataplane.toml"), toml).unwrap();
    let socket = dir.join("dataplane.sock");
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &node, DAEMON, "--config"])
        .arg(dir.join("dataplane.toml"))
        .arg("--socket")
        .arg(&socket);
    let daemon = Daemon::start(cmd, socket.clone(), dir.join("daemon.log"));

    call(
        &socket,
        json!({"op": "local_node.set", "name": "fdw-node",
               "router_mac": ROUTER_MAC, "gateway_ipv4": GATEWAY.to_string()}),
    );
    for pod in &pods {
        let identity = 1000 + pod.id;
        call(
            &socket,
            json!({"op": "endpoint.upsert", "id": pod.id, "ifindex": pod.ifindex,
                   "mac": pod.mac.to_string(), "ipv4": pod.ip.to_string(), "identity": identity}),
        );
        call(
            &socket,
            json!({"op": "ipcache.upsert", "prefix": format!("{}/32", pod.ip), "identity": identity}),
        );
    }

    let stop = Arc::new(AtomicBool::new(false));
    let (p1, p2) = (&pods[0], &pods[1]);
    let servers = [
        ECHO.serve(&p1.ns, p1.ip, Arc::clone(&stop)),
        ECHO.serve(&p2.ns, p2.ip, Arc::clone(&stop)),
        udp_echo(&p1.ns, p1.ip, UDP_PORT, Arc::clone(&stop)),
        udp_echo(&p2.ns, p2.ip, UDP_PORT, Arc::clone(&stop)),
    ];
    let mut outcomes = Vec::new();
    for (from, to) in [(p1, p2), (p2, p1)] {
        for c in 0..FLOWS {
            let r = ECHO.exchange(&from.ns, to.ip, Duration::from_secs(5));
            outcomes.push((format!("TCP {c} {} -> {}", from.ip, to.ip), r));
        }
        let r = udp_flows(&from.ns, to.ip, UDP_PORT, FLOWS);
        outcomes.push((format!("UDP {} -> {}", from.ip, to.ip), r));
    }
    stop.store(true, Ordering::Relaxed);
    for s in servers {
        s.join().unwrap();
    }
    let status = published_status(&socket, FLOWS as u64 * 4);
    let log = daemon.log_text();
    let exit = daemon.terminate();
    let workers = status["workers"].as_array().cloned().unwrap_or_default();
    eprintln!("{log}");
    eprintln!(
        "status workers: {workers:#?}\nio_total: {:#}",
        status["io_total"]
    );

    for (what, r) in &outcomes {
        assert_eq!(r, &Ok(()), "{what}");
    }
    assert!(exit.success(), "SIGTERM: {exit:?}");
    assert_eq!(workers.len(), 2, "two workers in status");
    let handed: Vec<u64> = workers
        .iter()
        .map(|w| w["io"]["handed_off"].as_u64().unwrap_or(0))
        .collect();
    assert!(
        handed.iter().all(|&n| n > 0),
        "both workers handed frames over: {handed:?}"
    );
    assert_eq!(
        status["io_total"]["handed_off"].as_u64(),
        Some(handed.iter().sum::<u64>()),
        "io_total sums the workers"
    );
    assert_eq!(status["io_total"]["handoff_dropped"], 0);
    assert!(
        log.contains("queues q with q mod 2 = 1"),
        "the log says which queues: {log}"
    );
    drop(guard);
    let _ = std::fs::remove_dir_all(&dir);
}

/// `status` once both workers' I/O summaries (published about every 100 ms) show at least
/// `frames` frames handed over in total, or after 5 s.
fn published_status(socket: &std::path::Path, frames: u64) -> Value {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let status = call(socket, json!({"op": "status"}));
        let handed = status["io_total"]["handed_off"].as_u64().unwrap_or(0);
        if handed >= frames || Instant::now() > deadline {
            return status;
        }
        thread::sleep(Duration::from_millis(100));
    }
}
