//! Services from outside the cluster, with DSR (`cluster.rs`'s three nodes, one more namespace):
//! a client that runs no Flagella sits behind the underlay's router (the underlay namespace
//! itself, which becomes the nodes' default gateway) and connects to node 1's address and a
//! NodePort; Maglev on node 1 picks a backend on node 2 or node 3, node 1 forwards the flow
//! with the frontend in the DSR option, and the backend's node answers the client directly, from
//! node 1's address and the NodePort.
//!
//! ```text
//!  client fcl-<pid>-<m>-x  10.78.<m>.2 ── xr 10.78.<m>.1 ┐ fcl-<pid>-<m>-u: routes between
//!                                         br0 10.77.<m>.254 ┘ the client and the underlay
//!          ┌───────────────────────────────┼───────────────────────────────┐
//!   node 1 (frontend 10.77.<m>.1:30080)  node 2 (backend n2b)           node 3 (backend n3b)
//! ```
//!
//! The same in SNAT mode (`Lb::Snat`): node 1 also rewrites the client's source to its own
//! address and a masquerade port, and the replies come back through it.
//!
//! Checks: 200 connections all complete and both backends answer; a capture on the bridge
//! ports shows the replies (source port 30080) leaving nodes 2 and 3 towards the client and
//! none leaving node 1, whose port only sees the requests (SNAT: all leaving node 1, none from
//! nodes 2 and 3); the service's external IP, which the router routes to node 1, answers 20
//! connections too; in DSR runs, a pod that sends a datagram carrying a DSR option has it
//! dropped and counted (`dsr_option_untrusted`) while the same datagram without the option is
//! answered, and so has the external client's connection with one; removing backend n3b leaves
//! the connections established to n2b intact. Everything comes from etcd (the service with its
//! `node_port`); the nodes' default route and the client's are the only things set by hand, as
//! an operator's network would have them.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::json;

use super::common::net::{ip_in, preflight, spawn_in, wait_for_within, Proc};
use super::common::traffic::tcp_server;
use super::{assert_torn_down, wait_for, Cluster, Mode, NAMESPACE, SERIAL, UDP_PORT};

const NODE_PORT: u16 = 30080;
/// The backends' "name, then echo" servers.
const NAMED_ECHO_PORT: u16 = 7004;
const CONNECTIONS: usize = 200;
/// Connections held open across the backend's removal.
const HELD: usize = 24;

fn router_v4(mode: Mode) -> Ipv4Addr {
    Ipv4Addr::new(10, 77, mode.index(), 254)
}

/// The service's external IP, which the router routes to node 1.
fn external_v4(mode: Mode) -> Ipv4Addr {
    Ipv4Addr::new(10, 79, mode.index(), 10)
}

fn client_v4(mode: Mode) -> Ipv4Addr {
    Ipv4Addr::new(10, 78, mode.index(), 2)
}

/// How the service answers external clients.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lb {
    /// The backend's node answers the client directly.
    Dsr,
    /// Node 1 translates the client's source; replies come back through it.
    Snat,
}

impl Lb {
    fn name(self) -> &'static str {
        match self {
            Lb::Dsr => "dsr",
            Lb::Snat => "snat",
        }
    }
}

pub fn run(mode: Mode, lb: Lb) {
    let bin = match preflight() {
        Ok(bin) => bin,
        Err(reason) => return testkit::skip(&reason),
    };
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let prefix = format!("fcl-{}-{}", std::process::id(), mode.index());
    let mut c = Cluster::start(mode, &bin);
    c.wait_next_hops();
    let client = build_outside(&mut c);
    start_named_echo(&mut c, &["n2b", "n3b"]);
    put_service(&c, lb, &["n2b", "n3b"]);
    let frontend = SocketAddr::new(IpAddr::V4(c.node(1).underlay), NODE_PORT);
    wait_for("the NodePort answers the external client", || {
        ask_name(&client, frontend).is_ok()
    });

    let counter =
        |c: &Cluster, n: u8, name: &str| c.counters(n)["counters"][name].as_u64().unwrap_or(0);
    let written_before = counter(&c, 1, "dsr_option_written");
    let allocated_before = counter(&c, 1, "masquerade_ports_allocated");
    let capture = PortCapture::start(&c);
    let names = many_connections(&client, frontend, CONNECTIONS);
    let (n2b, n3b) = (count(&names, "n2b"), count(&names, "n3b"));
    assert_eq!(
        n2b + n3b,
        CONNECTIONS,
        "every connection answered by a backend: {names:?}"
    );
    assert!(
        n2b > 0 && n3b > 0,
        "both backends used: n2b {n2b}, n3b {n3b}"
    );
    eprintln!(
        "{CONNECTIONS} connections through node 1's NodePort ({}): n2b {n2b}, n3b {n3b}",
        lb.name()
    );
    let written = counter(&c, 1, "dsr_option_written") - written_before;
    let allocated = counter(&c, 1, "masquerade_ports_allocated") - allocated_before;
    match lb {
        Lb::Dsr => {
            // Every request packet (at least a SYN and an ACK per connection) carried the
            // frontend (the IPv4 option natively and in VXLAN's inner header, the Geneve
            // option in Geneve), and the backends' nodes took it off.
            let consumed =
                counter(&c, 2, "dsr_option_consumed") + counter(&c, 3, "dsr_option_consumed");
            assert!(
                written >= 2 * CONNECTIONS as u64,
                "node 1 wrote {written} DSR options"
            );
            assert!(
                consumed >= written,
                "nodes 2 and 3 consumed {consumed} of {written} DSR options"
            );
            assert_eq!(allocated, 0, "DSR translates no source");
        }
        Lb::Snat => {
            // One source port of the masquerade range per connection, from its allocator.
            assert_eq!(written, 0, "SNAT mode writes no DSR option");
            assert!(
                allocated >= CONNECTIONS as u64,
                "node 1 allocated {allocated} source ports for {CONNECTIONS} connections"
            );
        }
    }
    if let Some(capture) = capture {
        check_where_replies_leave(&c, lb, capture.stop());
    }
    external_ip_answers(&c, &client);
    if lb == Lb::Dsr {
        dsr_option_from_a_pod_is_not_trusted(&mut c);
        dsr_option_from_the_world_is_not_trusted(&c, &client, frontend);
    }
    removing_a_backend_keeps_the_others_connections(&c, lb, &client, frontend);

    let pids: Vec<u32> = c
        .nodes
        .iter()
        .flat_map(|n| [n.dataplane.pid(), n.control.pid()])
        .flatten()
        .collect();
    drop(c);
    assert_torn_down(&prefix, &pids);
}

/// The underlay namespace routes between the bridge and the client's namespace; every node's
/// default route goes through it. Returns the client's namespace.
fn build_outside(c: &mut Cluster) -> String {
    let (u, x) = (c.underlay_ns(), format!("{}-x", c.prefix));
    c.add_netns(&x);
    let (router, client) = (router_v4(c.mode), client_v4(c.mode));
    ip_in(&u, &["addr", "add", &format!("{router}/24"), "dev", "br0"]);
    ip_in(
        &u,
        &[
            "link", "add", "xr", "type", "veth", "peer", "name", "eth0", "netns", &x,
        ],
    );
    let router_x = Ipv4Addr::new(10, 78, c.mode.index(), 1);
    ip_in(&u, &["addr", "add", &format!("{router_x}/24"), "dev", "xr"]);
    ip_in(&u, &["link", "set", "xr", "up"]);
    sysctl_in(&u, "net.ipv4.ip_forward=1");
    ip_in(&x, &["addr", "add", &format!("{client}/24"), "dev", "eth0"]);
    ip_in(&x, &["link", "set", "eth0", "up"]);
    // Over veth, "checksum offload" leaves the TCP checksum to a NIC that does not exist, and
    // AF_XDP carries no "checksum partial" flag for the dataplane to see: have the client's
    // kernel compute it, as a real NIC would before the frame hits the wire.
    let out = Command::new("ip")
        .args(["netns", "exec", &x, "ethtool", "-K", "eth0", "tx", "off"])
        .output()
        .expect("run ethtool (scripts/test.sh installs it)");
    assert!(out.status.success(), "ethtool -K eth0 tx off: {out:?}");
    ip_in(
        &x,
        &["route", "add", "default", "via", &router_x.to_string()],
    );
    // The network routes the service's external IP to node 1.
    let external = format!("{}/32", external_v4(c.mode));
    let node1 = c.node(1).underlay.to_string();
    ip_in(&u, &["route", "add", &external, "via", &node1]);
    for node in &c.nodes {
        ip_in(
            &node.netns,
            &["route", "add", "default", "via", &router.to_string()],
        );
    }
    for n in 1..=super::NODES {
        wait_for(
            &format!("node-{n}'s default gateway from its kernel"),
            || c.next_hops(n)["default_v4"].is_string(),
        );
    }
    x
}

fn sysctl_in(netns: &str, setting: &str) {
    let out = Command::new("ip")
        .args(["netns", "exec", netns, "sysctl", "-q", "-w", setting])
        .output()
        .expect("run sysctl");
    assert!(
        out.status.success(),
        "sysctl {setting} in {netns}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// In each named pod: a TCP server that sends the pod's name and a newline, then echoes.
fn start_named_echo(c: &mut Cluster, pods: &[&str]) {
    for name in pods {
        let pod = c.pod(name).clone();
        let label = pod.name.clone();
        let server = tcp_server(
            &pod.netns,
            SocketAddr::new(IpAddr::V4(pod.v4), NAMED_ECHO_PORT),
            &c.stop_servers,
            move |mut s| {
                if s.write_all(format!("{label}\n").as_bytes()).is_ok() {
                    super::echo(s);
                }
            },
        );
        c.servers.push(server);
    }
}

/// `services/<ns>/shop` in mode `lb`: cluster IP 10.96.<m>.20:80 with node port 30080,
/// backends `pods` on the named-echo port.
fn put_service(c: &Cluster, lb: Lb, pods: &[&str]) {
    let backends: Vec<_> = pods
        .iter()
        .map(|p| json!({"ip": c.pod(p).v4.to_string(), "port": NAMED_ECHO_PORT}))
        .collect();
    let vip = Ipv4Addr::new(10, 96, c.mode.index(), 20);
    c.put(
        &format!("services/{NAMESPACE}/shop"),
        json!({"frontends": [{"ip": vip.to_string(), "port": 80, "protocol": "TCP",
                              "node_port": NODE_PORT}],
               "backends": backends, "mode": lb.name(),
               "external_ips": [external_v4(c.mode).to_string()]}),
    );
}

/// A connection from `netns`: the backend's name, then the connection is closed.
fn ask_name(netns: &str, to: SocketAddr) -> Result<String, String> {
    spawn_in(netns, move || {
        let s = TcpStream::connect_timeout(&to, Duration::from_secs(2))
            .map_err(|e| format!("connect: {e}"))?;
        read_name(&s)
    })
    .join()
    .unwrap_or_else(|p| std::panic::resume_unwind(p))
}

fn read_name(s: &TcpStream) -> Result<String, String> {
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    let mut line = String::new();
    BufReader::new(s)
        .read_line(&mut line)
        .map_err(|e| format!("read the name: {e}"))?;
    let name = line.trim_end().to_string();
    (!name.is_empty())
        .then_some(name)
        .ok_or_else(|| "closed before the name".to_string())
}

/// `n` connections one after the other from `netns`; each answer's backend name or error.
fn many_connections(netns: &str, to: SocketAddr, n: usize) -> Vec<Result<String, String>> {
    spawn_in(netns, move || {
        (0..n)
            .map(|_| {
                let s = TcpStream::connect_timeout(&to, Duration::from_secs(2))
                    .map_err(|e| format!("connect: {e}"))?;
                read_name(&s)
            })
            .collect::<Vec<_>>()
    })
    .join()
    .unwrap_or_else(|p| std::panic::resume_unwind(p))
}

fn count(names: &[Result<String, String>], name: &str) -> usize {
    names.iter().filter(|r| r.as_deref() == Ok(name)).count()
}

/// The external IP (routed to node 1 by the router) serves the frontend's port: 20
/// connections, all answered by a backend.
fn external_ip_answers(c: &Cluster, client: &str) {
    let to = SocketAddr::new(IpAddr::V4(external_v4(c.mode)), 80);
    let names = many_connections(client, to, 20);
    let answered = count(&names, "n2b") + count(&names, "n3b");
    assert_eq!(answered, 20, "external IP {to}: {names:?}");
}

/// `dumpcap` on the three nodes' ports of the underlay bridge, for the NodePort's frames.
struct PortCapture {
    procs: Vec<Proc>,
    files: Vec<PathBuf>,
}

impl PortCapture {
    fn start(c: &Cluster) -> Option<PortCapture> {
        if Command::new("dumpcap").arg("-v").output().is_err() {
            testkit::skip(
                "the capture check: dumpcap is missing; install tshark (scripts/test.sh does)",
            );
            return None;
        }
        let filter = format!("tcp port {NODE_PORT}");
        let mut procs = Vec::new();
        let mut files = Vec::new();
        for n in 1..=super::NODES {
            let file = c.dir.join(format!("nodeport-u{n}.pcap"));
            let log = c.dir.join(format!("dumpcap-u{n}.log"));
            let child = Command::new("ip")
                .args(["netns", "exec", &c.underlay_ns()])
                .args(["dumpcap", "-q", "-i", &format!("u{n}"), "-f", &filter, "-w"])
                .arg(&file)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log).unwrap())
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
            procs.push(proc);
            files.push(file);
        }
        Some(PortCapture { procs, files })
    }

    /// Stops every capture (SIGINT, so the files are complete) and returns the files, node 1's
    /// port first.
    fn stop(mut self) -> Vec<PathBuf> {
        thread::sleep(Duration::from_millis(300));
        for proc in &mut self.procs {
            if let Some(pid) = proc.pid() {
                // SAFETY: a signal to our own child, by its PID.
                unsafe { libc::kill(pid as libc::pid_t, libc::SIGINT) };
            }
        }
        for proc in &mut self.procs {
            wait_for_within("dumpcap to stop", Duration::from_secs(5), || {
                !proc.running()
            });
        }
        self.files
    }
}

/// Frames in `file` that match the display filter `filter`.
fn frames(file: &Path, filter: &str) -> usize {
    let out = Command::new("tshark")
        .arg("-r")
        .arg(file)
        .args(["-Y", filter, "-T", "fields", "-e", "frame.number"])
        .output()
        .expect("run tshark");
    assert!(
        out.status.success(),
        "tshark -Y {filter}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).lines().count()
}

/// Where the replies (node 1's address and port 30080 -> the client) leave: with DSR from
/// nodes 2 and 3 on their own ports, none from node 1, whose port carries the requests; in SNAT
/// mode all from node 1, none from nodes 2 and 3.
fn check_where_replies_leave(c: &Cluster, lb: Lb, files: Vec<PathBuf>) {
    let (node1, client) = (c.node(1).underlay, client_v4(c.mode));
    let replies = format!("ip.src == {node1} && tcp.srcport == {NODE_PORT} && ip.dst == {client}");
    let requests = format!("ip.src == {client} && tcp.dstport == {NODE_PORT}");
    let on = |n: usize, filter: &str| frames(&files[n - 1], filter);
    let (req1, rep1, rep2, rep3) = (
        on(1, &requests),
        on(1, &replies),
        on(2, &replies),
        on(3, &replies),
    );
    eprintln!(
        "capture ({}): node 1's port: {req1} requests, {rep1} replies; replies leaving \
         node 2: {rep2}, node 3: {rep3}",
        lb.name()
    );
    assert!(req1 >= CONNECTIONS, "the requests reach node 1: {req1}");
    match lb {
        Lb::Dsr => {
            assert_eq!(rep1, 0, "no reply passes node 1 (DSR)");
            assert!(rep2 > 0 && rep3 > 0, "replies leave both backends' nodes");
        }
        Lb::Snat => {
            assert!(rep1 >= CONNECTIONS, "replies leave node 1: {rep1}");
            assert_eq!(
                (rep2, rep3),
                (0, 0),
                "no reply leaves a backend's node directly"
            );
        }
    }
}

/// A pod must not choose the source of another pod's replies: n2a's datagram to n2c with a DSR
/// option is dropped as `dsr_option_untrusted` on node 2; the same datagram without it is
/// answered.
fn dsr_option_from_a_pod_is_not_trusted(c: &mut Cluster) {
    let target = c.pod("n2c").clone();
    let server = super::udp_echo(&target, IpAddr::V4(target.v4), &c.stop_servers);
    c.servers.push(server);
    let (from, to) = (c.pod("n2a").clone(), target.v4);
    let untrusted = |c: &Cluster| {
        c.counters(2)["counters"]["drops"]["dsr_option_untrusted"]
            .as_u64()
            .unwrap_or(0)
    };
    let before = untrusted(c);
    let node1 = c.node(1).underlay;
    let answered = spawn_in(&from.netns, move || {
        let s = UdpSocket::bind((from.v4, 0)).expect("bind");
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let dst = SocketAddr::new(IpAddr::V4(to), UDP_PORT);
        // The native DSR option: type 0x9a, length 8, port, IPv4 address (wire::ipv4).
        let [p0, p1] = NODE_PORT.to_be_bytes();
        let [a, b, cc, d] = node1.octets();
        set_ip_options(&s, &[0x9a, 8, p0, p1, a, b, cc, d]);
        s.send_to(b"forged", dst).expect("send with the option");
        set_ip_options(&s, &[]);
        let mut buf = [0u8; 64];
        let mut got = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        // The plain datagram is answered (retried: UDP may be lost), the forged one never.
        while Instant::now() < deadline && !got.iter().any(|g: &Vec<u8>| g == b"plain") {
            s.send_to(b"plain", dst).expect("send");
            if let Ok(n) = s.recv(&mut buf) {
                got.push(buf[..n].to_vec());
            }
        }
        got
    })
    .join()
    .unwrap();
    assert!(
        answered.iter().any(|g| g == b"plain"),
        "the datagram without the option is answered"
    );
    assert!(
        !answered.iter().any(|g| g == b"forged"),
        "the datagram with the option must not reach n2c"
    );
    wait_for("node 2 counts the pod's DSR option as untrusted", || {
        untrusted(c) > before
    });
}

/// Nor may the world: the external client's connection to the NodePort with a DSR option
/// (claiming another frontend) is dropped on node 1 as `dsr_option_untrusted` (its MAC is the
/// router's, no peer node's).
fn dsr_option_from_the_world_is_not_trusted(c: &Cluster, client: &str, to: SocketAddr) {
    let untrusted = |c: &Cluster| {
        c.counters(1)["counters"]["drops"]["dsr_option_untrusted"]
            .as_u64()
            .unwrap_or(0)
    };
    let before = untrusted(c);
    let claimed = c.node(2).underlay;
    let connected = spawn_in(client, move || {
        let s = socket2_tcp();
        let [p0, p1] = NODE_PORT.to_be_bytes();
        let [a, b, cc, d] = claimed.octets();
        set_ip_options_fd(s.as_raw_fd(), &[0x9a, 8, p0, p1, a, b, cc, d]);
        connect_fd(&s, to)
    })
    .join()
    .unwrap();
    assert!(
        !connected,
        "a connection carrying a forged DSR option must not be served"
    );
    wait_for("node 1 counts the world's DSR option as untrusted", || {
        untrusted(c) > before
    });
}

/// A blocking TCP socket not connected yet (std has no such constructor).
fn socket2_tcp() -> std::os::fd::OwnedFd {
    use std::os::fd::FromRawFd;
    // SAFETY: plain syscall; the result is checked and owned below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
    // SAFETY: `fd` was just opened and is owned by nothing else.
    unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) }
}

/// `connect(2)` with a 2 s send timeout (SYN retries end there); true when it connected.
fn connect_fd(s: &std::os::fd::OwnedFd, to: SocketAddr) -> bool {
    let SocketAddr::V4(to) = to else {
        return false;
    };
    let timeout = libc::timeval {
        tv_sec: 2,
        tv_usec: 0,
    };
    let addr = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: to.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*to.ip()).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: the pointers are to live values of the sizes passed; the fd is the socket's own.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_SNDTIMEO,
            std::ptr::from_ref(&timeout).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        );
        libc::connect(
            s.as_raw_fd(),
            std::ptr::from_ref(&addr).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        ) == 0
    }
}

/// `setsockopt(IP_OPTIONS)`: Linux sends unknown option types only for CAP_NET_RAW (we are
/// root); an empty list removes them.
fn set_ip_options(s: &UdpSocket, options: &[u8]) {
    set_ip_options_fd(s.as_raw_fd(), options);
}

fn set_ip_options_fd(fd: std::os::fd::RawFd, options: &[u8]) {
    // SAFETY: `options` is valid for its length; the fd is the caller's socket.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::IPPROTO_IP,
            libc::IP_OPTIONS,
            options.as_ptr().cast(),
            options.len() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "IP_OPTIONS: {}", std::io::Error::last_os_error());
}

/// Connections held open to both backends; n3b is removed from the service; each connection
/// to n2b still echoes (node 1 keeps choosing n2b for them, node 2 keeps their DSR state).
fn removing_a_backend_keeps_the_others_connections(
    c: &Cluster,
    lb: Lb,
    client: &str,
    to: SocketAddr,
) {
    let (tx_ready, rx_ready) = std::sync::mpsc::channel::<Vec<String>>();
    let (tx_go, rx_go) = std::sync::mpsc::channel::<()>();
    let held = spawn_in(client, move || {
        let mut conns: Vec<(String, TcpStream)> = Vec::new();
        for _ in 0..HELD {
            let s = TcpStream::connect_timeout(&to, Duration::from_secs(2)).expect("connect");
            let name = read_name(&s).expect("the backend's name");
            conns.push((name, s));
        }
        tx_ready
            .send(conns.iter().map(|(n, _)| n.clone()).collect())
            .unwrap();
        rx_go.recv().unwrap();
        conns
            .into_iter()
            .filter(|(n, _)| n == "n2b")
            .map(|(_, mut s)| {
                let msg = b"still here\n";
                s.write_all(msg).map_err(|e| format!("write: {e}"))?;
                let mut back = [0u8; 11];
                s.read_exact(&mut back).map_err(|e| format!("read: {e}"))?;
                (back == *msg)
                    .then_some(())
                    .ok_or_else(|| "echo differs".to_string())
            })
            .collect::<Vec<Result<(), String>>>()
    });
    let names = rx_ready.recv().expect("held connections");
    assert!(
        names.iter().any(|n| n == "n2b") && names.iter().any(|n| n == "n3b"),
        "held connections reach both backends: {names:?}"
    );
    put_service(c, lb, &["n2b"]);
    // Node 1 has the new backend set once new connections all go to n2b.
    wait_for("new connections go to n2b only", || {
        let recent = many_connections(client, to, 8);
        count(&recent, "n2b") == recent.len()
    });
    tx_go.send(()).unwrap();
    let results = held.join().unwrap();
    let kept = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(
        kept,
        results.len(),
        "every connection established to n2b survives n3b's removal: {results:?}"
    );
    eprintln!("{kept} connections to n2b intact after n3b was removed");
}
