//! The host keeps its uplink: the real `flagella-dataplane` on a node's uplink, with the host's
//! own traffic to the node going to the kernel and what the dataplane owns going to it
//! (feature `afxdp`, root).
//!
//! Topology, all in namespaces this test creates and removes (guard `Drop`, pass or fail):
//!
//! ```text
//!  fuh-<pid>-peer  eth0 10.84.0.2/24 <-veth-> fuh<pid>u 10.84.0.1/24  fuh-<pid> ("node"):
//!    route 10.84.1.0/24 via 10.84.0.1                                   flagella-dataplane
//!                                                                         --interface fuh<pid>u=uplink
//!                                                                       a TCP echo on 10.84.0.1:8484
//! ```
//!
//! Run 1, the uplink filter on (the default): the node learns its underlay address 10.84.0.1
//! over the control socket (`local_node.set`, as the node agent would send it). Then, while the
//! dataplane runs, the peer pings the node and exchanges 64 KiB with its TCP echo, both through
//! the node's kernel: nothing of it reaches the dataplane (its `rx_packets` stays 0). VXLAN to
//! the underlay address does reach it; so does UDP to a local pod's address (10.84.1.5) once
//! the endpoint exists, and no longer once it is deleted. SIGTERM stops it (exit code 0, no XDP
//! program left on the uplink).
//!
//! Run 2, `--uplink-filter false` (the behaviour before the filter existed): every IP frame of
//! the uplink goes to the dataplane, so the same ping and TCP connection fail. This is what
//! shows that run 1 tests the filter and not a dataplane that is not in the path.
//!
//! Skips with a message when not root, or when `ip`, namespaces, BPF or AF_XDP are
//! unavailable. Never touches the root namespace's interfaces; stops only the daemons it
//! started (by PID).

#![allow(clippy::unwrap_used)] // Tests: a failed setup should stop the test loudly.

mod support;

use std::net::{Ipv4Addr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::json;
use support::daemon::{call, Daemon};
use support::{add_veth, ip_in, link_facts, preflight, spawn_in, Echo, NetNsGuard};

const DAEMON: &str = env!("CARGO_BIN_EXE_flagella-dataplane");
const NODE_IP: Ipv4Addr = Ipv4Addr::new(10, 84, 0, 1);
const PEER_IP: Ipv4Addr = Ipv4Addr::new(10, 84, 0, 2);
/// A local pod's address, reached by the peer through the node (native routing).
const POD_IP: Ipv4Addr = Ipv4Addr::new(10, 84, 1, 5);
const VXLAN_PORT: u16 = 4789;
/// The node's TCP echo (the host's own service, like SSH).
const ECHO: Echo = Echo {
    port: 8484,
    payload: 64 << 10,
    read_timeout: Duration::from_secs(10),
};
/// Datagrams sent per owned-traffic check.
const DATAGRAMS: u64 = 5;

/// Everything built for one run; dropping it removes both namespaces and the scratch files.
struct Topology {
    node: String,
    peer: String,
    uplink: String,
    dir: PathBuf,
    _guard: NetNsGuard,
}

impl Drop for Topology {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn build_topology() -> Result<Topology, String> {
    let pid = std::process::id();
    let mut guard = NetNsGuard::default();
    let node = format!("fuh-{pid}");
    let peer = format!("{node}-peer");
    guard.add(&node)?;
    guard.add(&peer)?;
    let uplink = format!("fuh{pid}u");
    ip_in(&node, &["link", "set", "lo", "up"]);
    add_veth(&node, &uplink, &peer, &format!("{PEER_IP}/24"));
    ip_in(
        &node,
        &["addr", "add", &format!("{NODE_IP}/24"), "dev", &uplink],
    );
    ip_in(
        &peer,
        &["route", "add", "10.84.1.0/24", "via", &NODE_IP.to_string()],
    );
    let dir = testkit::private_dir("fuh-");
    // An empty configuration: the flags say everything, and a file in /etc cannot interfere.
    std::fs::write(dir.join("dataplane.toml"), "").map_err(|e| e.to_string())?;
    Ok(Topology {
        node,
        peer,
        uplink,
        dir,
        _guard: guard,
    })
}

/// Starts the binary inside the node namespace on the uplink, with `extra` flags, and waits for
/// its control socket.
fn start_daemon(topo: &Topology, run: &str, extra: &[&str]) -> Daemon {
    let socket = topo.dir.join(format!("{run}.sock"));
    let log = topo.dir.join(format!("{run}.log"));
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &topo.node, DAEMON, "--config"])
        .arg(topo.dir.join("dataplane.toml"))
        .arg("--socket")
        .arg(&socket)
        .args(["--interface", &format!("{}=uplink", topo.uplink)])
        // What the uplink hands the dataplane is counted here in `rx_packets`: the host
        // interface's own chatter (the kernel's IPv6 router solicitations) would be counted too.
        .args(["--host-interface", "off"])
        .args(extra);
    Daemon::start(cmd, socket, log)
}

/// Frames the dataplane's pipeline received (`status`; lags the workers by one publication).
fn rx_packets(socket: &Path) -> u64 {
    call(socket, json!({"op": "status"}))["counters"]["rx_packets"]
        .as_u64()
        .unwrap()
}

/// Waits until `rx_packets` reaches `at_least`; its last value.
fn wait_rx(socket: &Path, at_least: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut rx = rx_packets(socket);
    while rx < at_least && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(50));
        rx = rx_packets(socket);
    }
    rx
}

/// From namespace `ns`: one ICMP echo to `dst` with the system's `ping`.
fn ping(ns: &str, dst: Ipv4Addr) -> Result<(), String> {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "ping", "-c", "1", "-W", "2"])
        .arg(dst.to_string())
        .output()
        .map_err(|e| format!("cannot run `ip netns exec .. ping`: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ping {dst} ({}; install iputils-ping if it is missing): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// From namespace `ns`: `DATAGRAMS` UDP datagrams to `dst:port` (a VXLAN header and a few
/// bytes: what the dataplane does with them is not the point, only that they reach it).
fn send_udp(ns: &str, dst: Ipv4Addr, port: u16) {
    spawn_in(ns, move || {
        let socket = UdpSocket::bind((PEER_IP, 0)).expect("bind UDP in the peer");
        let vxlan = [0x08, 0, 0, 0, 0, 0, 1, 0, 0xde, 0xad, 0xbe, 0xef];
        for _ in 0..DATAGRAMS {
            socket.send_to(&vxlan, (dst, port)).expect("send UDP");
        }
    })
    .join()
    .unwrap();
}

/// Whether `ip link` shows an XDP program on `dev` in `ns`.
fn has_xdp(ns: &str, dev: &str) -> bool {
    ip_in(ns, &["link", "show", "dev", dev]).contains("prog/xdp")
}

/// Run 1: the uplink filter on (default).
fn filter_on(topo: &Topology) {
    let daemon = start_daemon(topo, "filter-on", &[]);
    daemon.wait_log("uplink filter on");
    let (uplink_ifindex, uplink_mac) = link_facts(&topo.node, &topo.uplink);
    call(
        &daemon.socket,
        json!({
            "op": "local_node.set", "name": "fuh-node", "underlay_ipv4": NODE_IP.to_string(),
            "uplink_ifindex": uplink_ifindex, "uplink_mac": uplink_mac.to_string(),
        }),
    );
    daemon.wait_log(&format!("tunnel traffic to {NODE_IP} is the dataplane's"));

    // The host's own traffic: the node's kernel answers, the dataplane never sees it.
    ping(&topo.peer, NODE_IP).unwrap_or_else(|e| panic!("ping to the node's uplink: {e}"));
    ECHO.exchange(&topo.peer, NODE_IP, Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("TCP to a listener on the node: {e}"));
    thread::sleep(Duration::from_millis(300)); // a publication of the counters
    assert_eq!(
        rx_packets(&daemon.socket),
        0,
        "the host's own traffic reached the dataplane:\n{}",
        daemon.log_text()
    );

    // Tunnel traffic to the underlay address is the dataplane's.
    send_udp(&topo.peer, NODE_IP, VXLAN_PORT);
    let rx = wait_rx(&daemon.socket, DATAGRAMS);
    assert_eq!(rx, DATAGRAMS, "VXLAN to the underlay address");

    // A local pod's address is the dataplane's while the endpoint exists.
    call(
        &daemon.socket,
        json!({
            "op": "endpoint.upsert", "id": 1, "ifindex": 4242, "mac": "02:84:00:00:00:05",
            "ipv4": POD_IP.to_string(), "identity": 1001,
        }),
    );
    daemon.wait_log("1 owned prefixes (+1 -0)");
    send_udp(&topo.peer, POD_IP, 9);
    let rx = wait_rx(&daemon.socket, 2 * DATAGRAMS);
    assert_eq!(rx, 2 * DATAGRAMS, "UDP to a local pod");

    call(&daemon.socket, json!({"op": "endpoint.delete", "id": 1}));
    daemon.wait_log("0 owned prefixes (+0 -1)");
    send_udp(&topo.peer, POD_IP, 9);
    thread::sleep(Duration::from_millis(300));
    assert_eq!(
        rx_packets(&daemon.socket),
        2 * DATAGRAMS,
        "UDP to a deleted pod went to the dataplane"
    );

    let log = daemon.log.clone();
    let status = daemon.terminate();
    let log = std::fs::read_to_string(log).unwrap_or_default();
    assert!(status.success(), "exit status {status}:\n{log}");
    assert!(!has_xdp(&topo.node, &topo.uplink), "XDP left on the uplink");
}

/// Run 2: the uplink filter off, every IP frame to the dataplane: the host loses its traffic.
fn filter_off(topo: &Topology) {
    let daemon = start_daemon(topo, "filter-off", &["--uplink-filter", "false"]);
    daemon.wait_log("uplink filter OFF");
    assert!(
        ping(&topo.peer, NODE_IP).is_err(),
        "with the filter off, the ping must be taken from the host"
    );
    assert!(
        ECHO.exchange(&topo.peer, NODE_IP, Duration::from_secs(2))
            .is_err(),
        "with the filter off, the TCP connection must be taken from the host"
    );
    assert!(
        wait_rx(&daemon.socket, 1) > 0,
        "the dataplane saw none of it"
    );
    let status = daemon.terminate();
    assert!(status.success(), "exit status {status}");
    assert!(!has_xdp(&topo.node, &topo.uplink), "XDP left on the uplink");
}

#[test]
fn the_host_keeps_its_uplink() {
    if let Err(why) = preflight() {
        testkit::skip(&why);
        return;
    }
    let topo = build_topology().unwrap_or_else(|e| panic!("building the topology: {e}"));
    let stop = Arc::new(AtomicBool::new(false));
    let server = ECHO.serve(&topo.node, NODE_IP, Arc::clone(&stop));
    ping(&topo.peer, NODE_IP).unwrap_or_else(|e| panic!("without the dataplane: {e}"));

    filter_on(&topo);
    filter_off(&topo);
    // The kernel has the uplink back.
    ping(&topo.peer, NODE_IP).unwrap_or_else(|e| panic!("after the dataplane: {e}"));

    stop.store(true, Ordering::Relaxed);
    let served = server.join().unwrap();
    assert!(served >= 1, "the node's echo served {served} connections");
}
