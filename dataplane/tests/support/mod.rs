//! Network-namespace helpers shared by the root-only integration tests (`afxdp_forward.rs`,
//! `daemon.rs`; feature `afxdp`). A test file says `mod support;` to use them; Cargo does not
//! build this directory as a test of its own.
//!
//! Contract: every namespace a test creates goes through a [`NetNsGuard`] (from the `testkit`
//! dev-dependency), which deletes them
//! all (newest first) when dropped, pass or fail, so veth pairs go with them. Nothing here
//! touches the root namespace's interfaces. Setup failures panic: these are tests, and a broken
//! topology should stop them loudly; [`preflight`] is the one place that turns a missing
//! capability (root, `ip`, BPF, AF_XDP) into a reason to skip instead.

pub mod daemon;

use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::Duration;

use dataplane::tables::endpoints::{EndpointId, EndpointSpec};
use dataplane::tables::ipcache::IpCacheEntry;
use dataplane::tables::maglev::DEFAULT_M;
use dataplane::tables::services::Services;
use dataplane::tables::{LocalNode, Tables};
use dataplane::{Identity, MacAddr, Prefix};
use xdp_redirect::{RedirectConfig, XdpError, XdpProgram};

// The namespace guard and `ip` helpers are the workspace's one definition (`testkit`).
#[allow(unused_imports)] // each test file uses a subset
pub use testkit::{ip_in, run_ip, spawn_in, NetNsGuard};

/// `(ifindex, MAC)` of `dev` in namespace `ns`, from `ip -j link show`.
pub fn link_facts(ns: &str, dev: &str) -> (u32, MacAddr) {
    let json = ip_in(ns, &["-j", "link", "show", "dev", dev]);
    let links: serde_json::Value = serde_json::from_str(&json).expect("ip -j output");
    let link = &links[0];
    let ifindex = link["ifindex"].as_u64().expect("ifindex");
    let ifindex = u32::try_from(ifindex).expect("ifindex fits in u32");
    let mac = link["address"]
        .as_str()
        .expect("address")
        .parse()
        .expect("MAC");
    (ifindex, mac)
}

/// Root, `ip netns`, BPF and AF_XDP, or the reason to skip.
pub fn preflight() -> Result<(), String> {
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

/// A veth pair `host_if` (in `node`, up, no address) <-> `eth0` (in `peer_ns`, up, `addr`),
/// with `lo` up in `peer_ns`.
#[allow(dead_code)] // Each test file uses a subset of these helpers.
pub fn add_veth(node: &str, host_if: &str, peer_ns: &str, addr: &str) {
    add_veth_with_queues(node, host_if, peer_ns, addr, 1);
}

/// [`add_veth`] with `queues` receive and transmit queues on both sides: the pod spreads its
/// flows over its transmit queues, and each arrives on the same-numbered receive queue of
/// `host_if`.
pub fn add_veth_with_queues(node: &str, host_if: &str, peer_ns: &str, addr: &str, queues: u32) {
    let q = queues.to_string();
    ip_in(
        node,
        &[
            "link",
            "add",
            host_if,
            "numtxqueues",
            &q,
            "numrxqueues",
            &q,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "numtxqueues",
            &q,
            "numrxqueues",
            &q,
            "netns",
            peer_ns,
        ],
    );
    ip_in(node, &["link", "set", host_if, "up"]);
    ip_in(peer_ns, &["link", "set", "lo", "up"]);
    ip_in(peer_ns, &["link", "set", "eth0", "up"]);
    ip_in(peer_ns, &["addr", "add", addr, "dev", "eth0"]);
}

/// A pod's default route: via `gateway` on `eth0`, `onlink` because the pod's own address is
/// a /32 and no subnet contains the gateway.
pub fn add_default_route(ns: &str, gateway: Ipv4Addr) {
    let gateway = gateway.to_string();
    ip_in(
        ns,
        &[
            "route", "add", "default", "via", &gateway, "dev", "eth0", "onlink",
        ],
    );
}

/// A pod: its namespace, the node-side veth, and what the node must learn about it.
#[allow(dead_code)] // Each test file uses a subset of these helpers.
#[derive(Clone, Debug)]
pub struct Pod {
    pub id: u32,
    pub ns: String,
    pub host_if: String,
    pub ip: Ipv4Addr,
    /// Index of `host_if` in the node namespace.
    pub ifindex: u32,
    /// MAC of the pod's `eth0`.
    pub mac: MacAddr,
}

/// A node namespace and its pods; the guard deletes every namespace when dropped.
#[allow(dead_code)]
pub struct PodNamespaces {
    pub node: String,
    pub pods: Vec<Pod>,
    pub guard: NetNsGuard,
}

/// Node namespace `{prefix}-{pid}` with `count` pods `{node}-p{i}`, each joined by a veth
/// (`{prefix}{pid}h{i}` on the node side), addressed `{net}.{10 + i}/32` with a default route via
/// `gateway`.
#[allow(dead_code)]
pub fn build_pods(
    prefix: &str,
    net: [u8; 3],
    gateway: Ipv4Addr,
    count: u8,
) -> Result<PodNamespaces, String> {
    build_pods_with_queues(prefix, net, gateway, count, 1)
}

/// [`build_pods`] with veths of `queues` receive and transmit queues on both sides.
#[allow(dead_code)]
pub fn build_pods_with_queues(
    prefix: &str,
    net: [u8; 3],
    gateway: Ipv4Addr,
    count: u8,
    queues: u32,
) -> Result<PodNamespaces, String> {
    let pid = std::process::id();
    let mut guard = NetNsGuard::default();
    let node = format!("{prefix}-{pid}");
    guard.add(&node)?;
    ip_in(&node, &["link", "set", "lo", "up"]);
    let mut pods = Vec::new();
    for i in 1..=count {
        let ns = format!("{node}-p{i}");
        guard.add(&ns)?;
        let host_if = format!("{prefix}{pid}h{i}");
        let ip = Ipv4Addr::new(net[0], net[1], net[2], 10 + i);
        add_veth_with_queues(&node, &host_if, &ns, &format!("{ip}/32"), queues);
        add_default_route(&ns, gateway);
        let (ifindex, _) = link_facts(&node, &host_if);
        let (_, mac) = link_facts(&ns, "eth0");
        pods.push(Pod {
            id: u32::from(i),
            ns,
            host_if,
            ip,
            ifindex,
            mac,
        });
    }
    Ok(PodNamespaces { node, pods, guard })
}

/// A pod as the agent tells the dataplane about it: host-side ifindex, the pod's MAC, its
/// address and identity.
#[allow(dead_code)]
#[derive(Clone, Copy, Debug)]
pub struct LocalPod {
    pub ifindex: u32,
    pub mac: MacAddr,
    pub ip: Ipv4Addr,
    pub identity: Identity,
}

/// `node`'s tables with `pods` as its endpoints (ids 1, 2, ... in order) and their addresses
/// in the ipcache as local: what every forwarding test starts from.
#[allow(dead_code)]
pub fn tables_with_local_pods(node: LocalNode, pods: &[LocalPod]) -> Tables {
    let mut t = Tables::empty(node, Services::new(DEFAULT_M, 7).expect("services"));
    let (endpoints, ipcache) = (
        Arc::make_mut(&mut t.endpoints),
        Arc::make_mut(&mut t.ipcache),
    );
    for (id, pod) in (1..).zip(pods) {
        endpoints
            .upsert(EndpointSpec {
                id: EndpointId(id),
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
    t
}

/// A kernel-TCP echo between pods: the server reads each connection to EOF and sends the
/// bytes back; the client sends `payload` pseudo-random bytes and checks it gets them back.
#[allow(dead_code)] // Each test file uses a subset of these helpers.
#[derive(Clone, Copy, Debug)]
pub struct Echo {
    pub port: u16,
    /// Bytes the client sends (and must get back).
    pub payload: usize,
    /// How long a read may stall, on either side, before the exchange counts as failed.
    pub read_timeout: Duration,
}

#[allow(dead_code)] // Each test file uses a subset of these helpers.
impl Echo {
    /// Starts the server in namespace `ns` on `ip:port`; returns once it listens. The thread
    /// returns how many exchanges it completed once `stop` is set.
    pub fn serve(self, ns: &str, ip: Ipv4Addr, stop: Arc<AtomicBool>) -> thread::JoinHandle<usize> {
        let (ready_tx, ready_rx) = mpsc::channel();
        let addr = SocketAddr::new(IpAddr::V4(ip), self.port);
        let handle = spawn_in(ns, move || {
            let listener = TcpListener::bind(addr).expect("bind the echo server");
            listener.set_nonblocking(true).expect("nonblocking");
            ready_tx.send(()).expect("ready");
            let mut served = 0;
            while !stop.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut stream, _)) => {
                        stream.set_nonblocking(false).expect("blocking");
                        stream
                            .set_read_timeout(Some(self.read_timeout))
                            .expect("timeout");
                        let mut data = Vec::new();
                        if stream.read_to_end(&mut data).is_ok() && stream.write_all(&data).is_ok()
                        {
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

    /// From namespace `ns`: connects to `dst:port` (giving up after `connect_timeout`), sends
    /// the payload while reading the echo on this thread, and checks the echo is intact.
    pub fn exchange(
        self,
        ns: &str,
        dst: Ipv4Addr,
        connect_timeout: Duration,
    ) -> Result<(), String> {
        let addr = SocketAddr::new(IpAddr::V4(dst), self.port);
        spawn_in(ns, move || {
            let mut stream = TcpStream::connect_timeout(&addr, connect_timeout)
                .map_err(|e| format!("connect: {e}"))?;
            stream
                .set_read_timeout(Some(self.read_timeout))
                .map_err(|e| e.to_string())?;
            let sent: Vec<u8> = (0..self.payload).map(|i| (i * 7 + i / 251) as u8).collect();
            // Writing on its own thread: nothing can deadlock on full socket buffers, whatever
            // the payload and however the server interleaves its reads and writes.
            let writer = {
                let mut stream = stream.try_clone().map_err(|e| e.to_string())?;
                let sent = sent.clone();
                thread::spawn(move || {
                    stream.write_all(&sent)?;
                    stream.shutdown(Shutdown::Write)
                })
            };
            let mut got = Vec::with_capacity(self.payload);
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
}

/// A UDP echo server in `ns` on `ip:port` until `stop`; the thread returns how many datagrams
/// it echoed.
#[allow(dead_code)] // Each test file uses a subset of these helpers.
pub fn udp_echo(
    ns: &str,
    ip: Ipv4Addr,
    port: u16,
    stop: Arc<AtomicBool>,
) -> thread::JoinHandle<usize> {
    let (ready_tx, ready_rx) = mpsc::channel();
    let handle = spawn_in(ns, move || {
        let socket = UdpSocket::bind(SocketAddr::new(IpAddr::V4(ip), port)).expect("bind");
        socket
            .set_read_timeout(Some(Duration::from_millis(50)))
            .expect("timeout");
        ready_tx.send(()).expect("ready");
        let mut echoed = 0;
        let mut buf = [0u8; 2048];
        while !stop.load(Ordering::Relaxed) {
            if let Ok((n, from)) = socket.recv_from(&mut buf) {
                if socket.send_to(&buf[..n], from).is_ok() {
                    echoed += 1;
                }
            }
        }
        echoed
    });
    ready_rx.recv().expect("UDP server ready");
    handle
}

/// From `ns`: `flows` UDP flows (one socket, so one source port, each) to `dst:port`, each a
/// few datagrams that must come back intact (a lost datagram is sent again, up to 5 times).
#[allow(dead_code)] // Each test file uses a subset of these helpers.
pub fn udp_flows(ns: &str, dst: Ipv4Addr, port: u16, flows: usize) -> Result<(), String> {
    spawn_in(ns, move || {
        for flow in 0..flows {
            let socket = UdpSocket::bind("0.0.0.0:0").map_err(|e| e.to_string())?;
            socket
                .set_read_timeout(Some(Duration::from_secs(1)))
                .map_err(|e| e.to_string())?;
            for n in 0..4u8 {
                let msg = [flow as u8, n, 0xa5, 0x5a];
                let mut answered = false;
                for _ in 0..5 {
                    socket
                        .send_to(&msg, SocketAddr::new(IpAddr::V4(dst), port))
                        .map_err(|e| e.to_string())?;
                    let mut buf = [0u8; 16];
                    if let Ok((len, _)) = socket.recv_from(&mut buf) {
                        if buf[..len] == msg {
                            answered = true;
                            break;
                        }
                    }
                }
                if !answered {
                    return Err(format!(
                        "UDP flow {flow} to {dst}: datagram {n} never echoed"
                    ));
                }
            }
        }
        Ok(())
    })
    .join()
    .map_err(|_| "UDP client panicked".to_string())?
}
