//! The real `flagella-dataplane` binary in a node namespace, driven over its control socket
//! (feature `afxdp`, root).
//!
//! Topology, all in namespaces this test creates and removes (guard `Drop`, pass or fail):
//!
//! ```text
//!  fdm-<pid>-p1  eth0 10.79.0.11/32 <-veth-> fdm<pid>h1 ┐
//!  fdm-<pid>-p2  eth0 10.79.0.12/32 <-veth-> fdm<pid>h2 ├ fdm-<pid> ("node"): flagella-dataplane
//!  fdm-<pid>-p3  eth0 10.79.0.13/32 <-veth-> fdm<pid>h3 ┘   --interface fdm<pid>hN=pod
//!  each pod: default via 10.79.0.1 onlink
//! ```
//!
//! The daemon starts with empty tables; the test pushes the node, the endpoints and the ipcache
//! over the socket, then runs these cases in order against one instance, with kernel TCP, UDP
//! and ICMP in the pods (A, B, C are pods 1, 2, 3):
//!
//! 1. no policy: a TCP echo, a `ping` and a UDP request/response from A to B succeed, and
//!    100 MB of TCP from A arrive at B intact (same length and FNV-1a hash);
//! 2. A sends UDP from an address it holds but the dataplane does not know as A's: nothing
//!    reaches B and `status` counts exactly those datagrams as `invalid_source_ip` (the pods'
//!    IPv6 link-local noise is counted apart);
//! 3. an ingress policy on B admits A on the TCP port only: C's connection fails and is counted
//!    `policy_denied_ingress`, A's works;
//! 4. an egress policy on B that allows nothing: A's new connection to B still works (B's
//!    replies belong to A's flow), B's new connection to A fails and is counted
//!    `policy_denied_egress`; once removed, B connects to A;
//! 5. B's ingress policy removed (`policy.replace`, not enforced): C connects again;
//! 6. a request with a malformed field and a line that is not JSON get error replies; the same
//!    connection still answers, and a new TCP connection from A to B works.
//!
//! The servers count what they served, so a connection that should have been dropped but was
//! not is caught too. SIGTERM must stop the daemon with exit code 0, its socket file removed
//! and no XDP program left on the node's veths; a second instance killed with SIGKILL must
//! leave no XDP program either.
//!
//! Needs root; skips with a message when not root, or when `ip`, namespaces, BPF or AF_XDP
//! are unavailable. Never touches the root namespace's interfaces.

#![allow(clippy::unwrap_used)] // Tests: a failed setup should stop the test loudly.

mod support;

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::daemon::Daemon;
use support::{build_pods, ip_in, preflight, spawn_in, Echo, NetNsGuard, Pod, PodNamespaces};

const DAEMON: &str = env!("CARGO_BIN_EXE_flagella-dataplane");
const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 79, 0, 1);
const ROUTER_MAC: &str = "02:79:00:00:00:01";
const PORT: u16 = 7979;
/// The TCP echo servers in pods 1 and 2, and every connection to them: 64 KiB both ways.
const ECHO: Echo = Echo {
    port: PORT,
    payload: 64 << 10,
    read_timeout: Duration::from_secs(10),
};
/// The UDP echo in pod 2.
const UDP_PORT: u16 = 7980;
/// The bulk-transfer sink in pod 2.
const BULK_PORT: u16 = 7981;
const BULK_BYTES: u64 = 100 << 20;
/// The address pod 1 adds to its own interface to send from, which the dataplane does not
/// know as pod 1's.
const SPOOFED: Ipv4Addr = Ipv4Addr::new(10, 79, 0, 99);
const SPOOFED_DATAGRAMS: u64 = 20;

/// Everything built for one run; dropping it removes every namespace.
struct Topology {
    node: String,
    pods: Vec<Pod>,
    /// Scratch files (the control socket, the empty configuration, the daemon's log).
    dir: PathBuf,
    _guard: NetNsGuard,
}

impl Drop for Topology {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The topology above under `prefix` (`fdm`, or another for a test that runs beside it: the
/// namespaces are named by prefix and process id, and the tests of this file run in parallel).
fn build_topology(prefix: &str) -> Result<Topology, String> {
    let PodNamespaces { node, pods, guard } = build_pods(prefix, [10, 79, 0], GATEWAY, 3)?;
    let dir = testkit::private_dir(&format!("{prefix}-"));
    // An empty configuration: the flags say everything, and a file in /etc cannot interfere.
    std::fs::write(dir.join("dataplane.toml"), "").map_err(|e| e.to_string())?;
    Ok(Topology {
        node,
        pods,
        dir,
        _guard: guard,
    })
}

/// The security identity the tests give a pod.
fn identity_of(pod: &Pod) -> u32 {
    1000 + pod.id
}

/// Starts the binary inside the node namespace on the pods' veths and waits for its control
/// socket.
fn start_daemon(topo: &Topology, run: &str) -> Daemon {
    let socket = topo.dir.join(format!("{run}.sock"));
    let log = topo.dir.join(format!("{run}.log"));
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &topo.node, DAEMON, "--config"])
        .arg(topo.dir.join("dataplane.toml"))
        .arg("--socket")
        .arg(&socket);
    for pod in &topo.pods {
        cmd.args(["--interface", &format!("{}=pod", pod.host_if)]);
    }
    Daemon::start(cmd, socket, log)
}

/// A control-socket client: one request line, one reply line.
struct Client {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Client {
    fn connect(path: &Path) -> Client {
        let writer = UnixStream::connect(path).unwrap();
        writer
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let reader = BufReader::new(writer.try_clone().unwrap());
        Client { reader, writer }
    }

    fn call(&mut self, request: Value) -> Value {
        let mut line = serde_json::to_vec(&request).unwrap();
        line.push(b'\n');
        self.writer.write_all(&line).unwrap();
        let mut reply = String::new();
        self.reader.read_line(&mut reply).unwrap();
        serde_json::from_str(&reply).unwrap_or_else(|e| panic!("reply `{reply}`: {e}"))
    }

    /// A request that must succeed.
    fn ok(&mut self, request: Value) -> Value {
        let reply = self.call(request.clone());
        assert_eq!(reply["ok"], true, "{request} -> {reply}");
        reply
    }

    /// A request line as raw text (to send what no `Value` can: text that is not JSON).
    fn call_raw(&mut self, line: &str) -> Value {
        self.writer.write_all(line.as_bytes()).unwrap();
        self.writer.write_all(b"\n").unwrap();
        let mut reply = String::new();
        self.reader.read_line(&mut reply).unwrap();
        serde_json::from_str(&reply).unwrap_or_else(|e| panic!("reply `{reply}`: {e}"))
    }

    /// The drop counter of `reason` (its metrics name) in `status`.
    fn drops(&mut self, reason: &str) -> u64 {
        let status = self.ok(json!({"op": "status"}));
        status["counters"]["drops"][reason].as_u64().unwrap_or(0)
    }

    /// Waits until the drop counter of `reason` reaches `at_least` (`status` lags the workers
    /// by one publication) and returns its last value.
    fn wait_drops(&mut self, reason: &str, at_least: u64) -> u64 {
        let deadline = Instant::now() + Duration::from_secs(3);
        let mut count = self.drops(reason);
        while count < at_least && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(50));
            count = self.drops(reason);
        }
        count
    }
}

/// `curl http://127.0.0.1:9962/metrics` inside namespace `ns`.
fn scrape_metrics(ns: &str) -> String {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "curl", "-sf", "--max-time", "5"])
        .arg("http://127.0.0.1:9962/metrics")
        .output()
        .expect("run curl (apt-get install curl)");
    assert!(out.status.success(), "curl /metrics: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The value of the sample `name` (with its labels, as the text format spells it).
fn metric_value(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
}

/// The node's facts, the pods as endpoints, their addresses in the ipcache.
fn configure(client: &mut Client, pods: &[Pod]) {
    client.ok(json!({
        "op": "local_node.set", "name": "fdm-node",
        "router_mac": ROUTER_MAC, "gateway_ipv4": GATEWAY.to_string(),
    }));
    for pod in pods {
        client.ok(json!({
            "op": "endpoint.upsert", "id": pod.id, "ifindex": pod.ifindex,
            "mac": pod.mac.to_string(),
            "ipv4": pod.ip.to_string(), "identity": identity_of(pod),
        }));
        client.ok(json!({
            "op": "ipcache.upsert", "prefix": format!("{}/32", pod.ip), "identity": identity_of(pod),
        }));
    }
}

/// From `pod`: one ICMP echo to `dst` with the system's `ping`.
fn ping_from(pod: &Pod, dst: Ipv4Addr) -> Result<(), String> {
    let out = Command::new("ip")
        .args(["netns", "exec", &pod.ns, "ping", "-c", "1", "-W", "2"])
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

/// A UDP echo in `pod` on `UDP_PORT`: sends each datagram back to its sender. Returns the
/// sources it heard from.
fn start_udp_echo(pod: &Pod, stop: Arc<AtomicBool>) -> thread::JoinHandle<Vec<SocketAddr>> {
    let (ready_tx, ready_rx) = mpsc::channel();
    let addr = SocketAddr::new(IpAddr::V4(pod.ip), UDP_PORT);
    let handle = spawn_in(&pod.ns, move || {
        let socket = UdpSocket::bind(addr).expect("bind UDP in the server pod");
        socket
            .set_read_timeout(Some(Duration::from_millis(50)))
            .expect("timeout");
        ready_tx.send(()).expect("ready");
        let mut sources = Vec::new();
        let mut buf = [0u8; 2048];
        while !stop.load(Ordering::Relaxed) {
            match socket.recv_from(&mut buf) {
                Ok((n, from)) => {
                    sources.push(from);
                    socket.send_to(&buf[..n], from).expect("UDP echo send");
                }
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(e) => panic!("UDP recv: {e}"),
            }
        }
        sources
    });
    ready_rx.recv().expect("UDP server ready");
    handle
}

/// From `pod`: one datagram to `dst`'s UDP echo, and its echo back.
fn udp_request_from(pod: &Pod, dst: Ipv4Addr) -> Result<(), String> {
    let src = SocketAddr::new(IpAddr::V4(pod.ip), 0);
    let dst = SocketAddr::new(IpAddr::V4(dst), UDP_PORT);
    spawn_in(&pod.ns, move || {
        let socket = UdpSocket::bind(src).map_err(|e| format!("bind: {e}"))?;
        socket
            .set_read_timeout(Some(Duration::from_secs(2)))
            .map_err(|e| e.to_string())?;
        let request = b"flagella udp request";
        socket
            .send_to(request, dst)
            .map_err(|e| format!("send: {e}"))?;
        let mut buf = [0u8; 2048];
        let (n, from) = socket
            .recv_from(&mut buf)
            .map_err(|e| format!("no UDP reply: {e}"))?;
        if from != dst || &buf[..n] != request {
            return Err(format!("unexpected reply from {from}: {:?}", &buf[..n]));
        }
        Ok(())
    })
    .join()
    .unwrap_or_else(|p| std::panic::resume_unwind(p))
}

/// From `pod`, bound to `src` (an address `pod` holds but the dataplane does not know as
/// its own): `SPOOFED_DATAGRAMS` datagrams to `dst`'s UDP echo. Returns how many replies came.
fn udp_spoofed_from(pod: &Pod, src: Ipv4Addr, dst: Ipv4Addr) -> Result<usize, String> {
    let src = SocketAddr::new(IpAddr::V4(src), 0);
    let dst = SocketAddr::new(IpAddr::V4(dst), UDP_PORT);
    spawn_in(&pod.ns, move || {
        let socket = UdpSocket::bind(src).map_err(|e| format!("bind {src}: {e}"))?;
        socket
            .set_read_timeout(Some(Duration::from_millis(20)))
            .map_err(|e| e.to_string())?;
        let mut replies = 0;
        let mut buf = [0u8; 2048];
        for i in 0..SPOOFED_DATAGRAMS {
            socket
                .send_to(&i.to_be_bytes(), dst)
                .map_err(|e| format!("send: {e}"))?;
            if socket.recv_from(&mut buf).is_ok() {
                replies += 1;
            }
        }
        Ok(replies)
    })
    .join()
    .unwrap_or_else(|p| std::panic::resume_unwind(p))
}

/// 64-bit FNV-1a over a byte stream, fed in pieces of any size.
struct Fnv1a(u64);

impl Fnv1a {
    fn new() -> Self {
        Fnv1a(0xcbf2_9ce4_8422_2325)
    }

    fn update(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
}

/// A sink in `pod` on `BULK_PORT`: accepts one connection, reads it to EOF. Returns
/// `(bytes, FNV-1a of the bytes)`.
fn start_bulk_sink(pod: &Pod) -> thread::JoinHandle<Result<(u64, u64), String>> {
    let (ready_tx, ready_rx) = mpsc::channel();
    let addr = SocketAddr::new(IpAddr::V4(pod.ip), BULK_PORT);
    let handle = spawn_in(&pod.ns, move || {
        let listener = TcpListener::bind(addr).expect("bind the sink");
        listener.set_nonblocking(true).expect("nonblocking");
        ready_tx.send(()).expect("ready");
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut stream = loop {
            match listener.accept() {
                Ok((stream, _)) => break stream,
                Err(e) if e.kind() == ErrorKind::WouldBlock && Instant::now() < deadline => {
                    thread::sleep(Duration::from_millis(5))
                }
                Err(e) => return Err(format!("accept: {e}")),
            }
        };
        stream.set_nonblocking(false).map_err(|e| e.to_string())?;
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .map_err(|e| e.to_string())?;
        let (mut total, mut hash) = (0u64, Fnv1a::new());
        let mut buf = vec![0u8; 256 << 10];
        loop {
            match stream.read(&mut buf) {
                Ok(0) => return Ok((total, hash.0)),
                Ok(n) => {
                    hash.update(&buf[..n]);
                    total += n as u64;
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(format!("read after {total} bytes: {e}")),
            }
        }
    });
    ready_rx.recv().expect("sink ready");
    handle
}

/// From `pod`: `BULK_BYTES` pseudo-random bytes to `dst`'s sink. Returns `(bytes, FNV-1a)`
/// of what it sent.
fn bulk_from(pod: &Pod, dst: Ipv4Addr) -> Result<(u64, u64), String> {
    let addr = SocketAddr::new(IpAddr::V4(dst), BULK_PORT);
    spawn_in(&pod.ns, move || {
        let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
            .map_err(|e| format!("connect: {e}"))?;
        stream
            .set_write_timeout(Some(Duration::from_secs(10)))
            .map_err(|e| e.to_string())?;
        let (mut sent, mut hash) = (0u64, Fnv1a::new());
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut chunk = vec![0u8; 64 << 10];
        while sent < BULK_BYTES {
            // xorshift64: cheap bytes that no offset or length mistake can reproduce.
            for word in chunk.chunks_exact_mut(8) {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                word.copy_from_slice(&state.to_le_bytes());
            }
            stream
                .write_all(&chunk)
                .map_err(|e| format!("write after {sent} bytes: {e}"))?;
            hash.update(&chunk);
            sent += chunk.len() as u64;
        }
        stream
            .shutdown(Shutdown::Write)
            .map_err(|e| format!("shutdown: {e}"))?;
        Ok((sent, hash.0))
    })
    .join()
    .unwrap_or_else(|p| std::panic::resume_unwind(p))
}

/// The outcomes of the cases of one run, asserted together once the daemon's log is printed.
#[derive(Default)]
struct Checks {
    failed: Vec<String>,
}

impl Checks {
    /// A case that must succeed.
    fn pass(&mut self, what: &str, outcome: Result<(), String>) {
        eprintln!("case: {what}: {outcome:?}");
        if let Err(e) = outcome {
            self.failed.push(format!("{what}: {e}"));
        }
    }

    /// A case that must fail (a denied connection).
    fn fail(&mut self, what: &str, outcome: Result<(), String>) {
        eprintln!("case: {what}: {outcome:?} (must fail)");
        if outcome.is_ok() {
            self.failed.push(format!("{what}: succeeded"));
        }
    }

    fn that(&mut self, what: &str, ok: bool, detail: String) {
        eprintln!("case: {what}: {ok} ({detail})");
        if !ok {
            self.failed.push(format!("{what}: {detail}"));
        }
    }
}

/// The node's interfaces that carry an XDP program, from `ip -j link show`; checked against
/// the plain `ip link show` text, which names `xdp` exactly when one is attached.
fn veths_with_xdp(topo: &Topology) -> Vec<String> {
    let json = ip_in(&topo.node, &["-j", "link", "show"]);
    let links: Value = serde_json::from_str(&json).expect("ip -j output");
    let with_xdp: Vec<String> = links
        .as_array()
        .expect("a list of links")
        .iter()
        .filter(|link| link.get("xdp").is_some())
        .map(|link| link["ifname"].as_str().unwrap_or("?").to_string())
        .collect();
    let text = ip_in(&topo.node, &["link", "show"]);
    assert_eq!(text.contains("xdp"), !with_xdp.is_empty(), "{text}");
    with_xdp
}

/// An interface added at run time (`interface.add`) shows its XDP program's counters in
/// `/metrics` as the configured ones do, and no longer once removed.
fn check_hot_interface_metrics(topo: &Topology, client: &mut Client, checks: &mut Checks) {
    let ifname = format!("fdm{}x", std::process::id());
    let peer = format!("fdm{}y", std::process::id());
    ip_in(
        &topo.node,
        &[
            "link", "add", &ifname, "type", "veth", "peer", "name", &peer,
        ],
    );
    for dev in [&ifname, &peer] {
        ip_in(&topo.node, &["link", "set", dev, "up"]);
    }
    let sample = format!("flagella_xdp_redirected_total{{interface=\"{ifname}\"}}");
    client.ok(json!({"op": "interface.add", "ifname": ifname}));
    let metrics = scrape_metrics(&topo.node);
    checks.that(
        "/metrics shows the XDP program counters of an interface added at run time",
        metric_value(&metrics, &sample).is_some(),
        metrics
            .lines()
            .filter(|l| l.starts_with("flagella_xdp_redirected"))
            .collect::<Vec<_>>()
            .join("; "),
    );
    client.ok(json!({"op": "interface.remove", "ifname": ifname}));
    let metrics = scrape_metrics(&topo.node);
    checks.that(
        "... and no longer once it is removed",
        metric_value(&metrics, &sample).is_none(),
        format!("{sample} still there"),
    );
    ip_in(&topo.node, &["link", "del", &ifname]);
}

#[test]
fn the_daemon_forwards_enforces_policy_and_leaves_nothing_behind() {
    if let Err(why) = preflight() {
        testkit::skip(&why);
        return;
    }
    let topo = build_topology("fdm").unwrap_or_else(|e| panic!("topology: {e}"));
    let pods = &topo.pods;
    let (a, b, c) = (&pods[0], &pods[1], &pods[2]);
    let long = Duration::from_secs(5);
    let short = Duration::from_secs(2);

    // First instance: the cases in order, then SIGTERM.
    let mut daemon = start_daemon(&topo, "first");
    assert_eq!(
        veths_with_xdp(&topo).len(),
        pods.len() + 1,
        "one XDP program per pod interface, and one on the host interface's flg_net"
    );
    let mut client = Client::connect(&daemon.socket);
    configure(&mut client, pods);
    let mut checks = Checks::default();

    let stop_servers = Arc::new(AtomicBool::new(false));
    let server_b = ECHO.serve(&b.ns, b.ip, Arc::clone(&stop_servers));
    let server_a = ECHO.serve(&a.ns, a.ip, Arc::clone(&stop_servers));
    let udp_b = start_udp_echo(b, Arc::clone(&stop_servers));
    let sink_b = start_bulk_sink(b);

    // No policy: TCP, ICMP and UDP from A to B.
    checks.pass("tcp echo A -> B", ECHO.exchange(&a.ns, b.ip, long));
    checks.pass("ping A -> B", ping_from(a, b.ip));
    checks.pass("udp request/response A -> B", udp_request_from(a, b.ip));

    let started = Instant::now();
    let sent = bulk_from(a, b.ip);
    let received = sink_b.join().expect("sink thread");
    eprintln!(
        "bulk: {:?} sent, {:?} received in {:?}",
        sent,
        received,
        started.elapsed()
    );
    checks.that(
        "100 MB A -> B arrives intact",
        matches!((&sent, &received), (Ok(s), Ok(r)) if s == r && s.0 == BULK_BYTES),
        format!("sent (bytes, fnv) {sent:?}, received {received:?}"),
    );

    // The worker's I/O counters reach `status` (published about every 100 ms).
    thread::sleep(Duration::from_millis(300));
    let status = client.ok(json!({"op": "status"}));
    let io = &status["workers"][0]["io"];
    let (polls, batches, kicks) = (
        io["polls"].as_u64().unwrap_or(0),
        io["rx_batches"].as_u64().unwrap_or(0),
        io["tx_wakeups"].as_u64().unwrap_or(0),
    );
    checks.that(
        "status reports the worker's I/O: batches received, TX kicks, socket drops",
        batches > 0 && polls >= batches && kicks > 0 && io["sock_rx_ring_full"].is_u64(),
        format!("io {io}"),
    );

    // Spoofing: A sends from an address it holds but the dataplane does not know as A's.
    let spoofed = format!("{SPOOFED}/32");
    ip_in(&a.ns, &["addr", "add", &spoofed, "dev", "eth0"]);
    let status = client.ok(json!({"op": "status"}));
    eprintln!("drops before spoofing: {}", status["counters"]["drops"]);
    let before = client.drops("invalid_source_ip");
    let replies = udp_spoofed_from(a, SPOOFED, b.ip);
    let after = client.wait_drops("invalid_source_ip", before + SPOOFED_DATAGRAMS);
    ip_in(&a.ns, &["addr", "del", &spoofed, "dev", "eth0"]);
    checks.that(
        "spoofed datagrams get no reply",
        replies == Ok(0),
        format!("{replies:?}"),
    );
    // Before: 0, though every pod's IPv6 stack has sent neighbor discovery and MLD from its
    // link-local address by now (counted `ipv6_link_scoped_source`, not as spoofing).
    checks.that(
        "exactly the spoofed datagrams are counted invalid_source_ip",
        before == 0 && after == SPOOFED_DATAGRAMS,
        format!("{before} -> {after}, {SPOOFED_DATAGRAMS} sent"),
    );

    // Ingress of B: A may connect on the port, nobody else.
    client.ok(json!({
        "op": "policy.update", "endpoint": b.id, "direction": "ingress", "enforced": true,
        "add": [{"identity": identity_of(a), "proto": "tcp", "port": PORT, "action": "allow"}],
    }));
    let before = client.drops("policy_denied_ingress");
    checks.fail(
        "tcp C -> B under B's ingress policy",
        ECHO.exchange(&c.ns, b.ip, short),
    );
    let after = client.wait_drops("policy_denied_ingress", before + 1);
    checks.that(
        "C's connection is counted policy_denied_ingress",
        after > before,
        format!("{before} -> {after}"),
    );
    // The same counters through /metrics, scraped with a real HTTP client (curl) in the node's
    // namespace, where the daemon serves 127.0.0.1:9962.
    let metrics = scrape_metrics(&topo.node);
    let denied = metric_value(
        &metrics,
        "flagella_drops_total{direction=\"ingress\",reason=\"policy_denied_ingress\"}",
    );
    checks.that(
        "/metrics counts the denied connection",
        denied.is_some_and(|n| n >= after as f64),
        format!("{denied:?} (status says {after})"),
    );
    checks.that(
        "/metrics counts forwarded packets",
        metric_value(&metrics, "flagella_tx_packets_total").is_some_and(|n| n > 0.0),
        metrics
            .lines()
            .filter(|l| l.starts_with("flagella_tx"))
            .collect::<Vec<_>>()
            .join("; "),
    );
    checks.pass(
        "tcp A -> B under B's ingress policy",
        ECHO.exchange(&a.ns, b.ip, long),
    );
    check_hot_interface_metrics(&topo, &mut client, &mut checks);

    // Egress of B: nothing new may leave B. The replies of A's connection pass (conntrack),
    // B's own new connection to A does not.
    client.ok(json!({
        "op": "policy.replace", "endpoint": b.id, "direction": "egress", "enforced": true,
        "entries": [],
    }));
    checks.pass(
        "tcp A -> B: replies pass B's egress policy",
        ECHO.exchange(&a.ns, b.ip, long),
    );
    let before = client.drops("policy_denied_egress");
    checks.fail(
        "tcp B -> A under B's egress policy",
        ECHO.exchange(&b.ns, a.ip, short),
    );
    let after = client.wait_drops("policy_denied_egress", before + 1);
    checks.that(
        "B's new connection is counted policy_denied_egress",
        after > before,
        format!("{before} -> {after}"),
    );
    client.ok(json!({
        "op": "policy.replace", "endpoint": b.id, "direction": "egress", "enforced": false,
        "entries": [],
    }));
    checks.pass(
        "tcp B -> A once B's egress policy is removed",
        ECHO.exchange(&b.ns, a.ip, long),
    );

    // Removing B's ingress policy, as a user would: C connects again.
    client.ok(json!({
        "op": "policy.replace", "endpoint": b.id, "direction": "ingress", "enforced": false,
        "entries": [],
    }));
    checks.pass(
        "tcp C -> B once B's ingress policy is removed",
        ECHO.exchange(&c.ns, b.ip, long),
    );

    // Malformed requests get an error reply; the socket and the traffic carry on.
    let malformed = client.call(json!({"op": "endpoint.upsert", "id": "one"}));
    checks.that(
        "a request with a malformed field is refused",
        malformed["ok"] == false && malformed["error"].as_str().is_some_and(|e| !e.is_empty()),
        malformed.to_string(),
    );
    let not_json = client.call_raw("{\"op\": \"status\"");
    checks.that(
        "a line that is not JSON is refused",
        not_json["ok"] == false && not_json["error"].as_str().is_some_and(|e| !e.is_empty()),
        not_json.to_string(),
    );
    let ping = client.call(json!({"op": "ping"}));
    checks.that(
        "the connection still answers",
        ping["ok"] == true,
        ping.to_string(),
    );
    checks.pass(
        "tcp A -> B after the malformed requests",
        ECHO.exchange(&a.ns, b.ip, long),
    );

    stop_servers.store(true, Ordering::Relaxed);
    let served_b = server_b.join().expect("server thread");
    let served_a = server_a.join().expect("server thread");
    let udp_sources = udp_b.join().expect("UDP server thread");
    drop(client);
    // A, A, A, C, A: the allowed connections to B; B once its egress policy was removed.
    checks.that(
        "B's server saw exactly the allowed connections",
        served_b == 5,
        format!("{served_b} served"),
    );
    checks.that(
        "A's server saw exactly the allowed connection",
        served_a == 1,
        format!("{served_a} served"),
    );
    checks.that(
        "B's UDP echo heard A once and never the spoofed address",
        udp_sources.len() == 1 && udp_sources.iter().all(|s| s.ip() == IpAddr::V4(a.ip)),
        format!("{udp_sources:?}"),
    );

    daemon.signal(libc::SIGTERM);
    let status = daemon.wait_exit(Duration::from_secs(10));
    let log = daemon.log_text();
    eprintln!("first instance's log:\n{log}");
    assert!(
        checks.failed.is_empty(),
        "failed cases:\n{}",
        checks.failed.join("\n")
    );
    assert_eq!(status.code(), Some(0), "SIGTERM is a clean stop");
    assert!(log.contains("stopped cleanly"), "{log}");
    assert!(
        !daemon.socket.exists(),
        "the control socket file is removed"
    );
    assert_eq!(
        veths_with_xdp(&topo),
        Vec::<String>::new(),
        "no XDP program left after SIGTERM"
    );

    // Second instance: SIGKILL. The kernel detaches the programs when the links' last fd
    // closes with the process.
    let mut daemon = start_daemon(&topo, "second");
    assert_eq!(
        veths_with_xdp(&topo).len(),
        pods.len() + 1,
        "the host interface, found from the first instance, is served again"
    );
    daemon.signal(libc::SIGKILL);
    let status = daemon.wait_exit(Duration::from_secs(10));
    assert_eq!(status.code(), None, "killed by a signal");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !veths_with_xdp(&topo).is_empty() && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        veths_with_xdp(&topo),
        Vec::<String>::new(),
        "no XDP program left after SIGKILL"
    );
}

/// Issue 15: with `--bpf-pin-dir` (a private bpffs here), a stopped dataplane leaves its
/// programs on the interfaces (the safe state: they drop what no socket serves) and its
/// conntrack state file; the next process takes both over; `--uninstall` removes everything.
#[test]
fn pinned_programs_outlive_the_process_until_uninstall() {
    if let Err(why) = preflight() {
        testkit::skip(&why);
        return;
    }
    let bpffs = match testkit::BpffsGuard::mount("fdm-bpffs-") {
        Ok(fs) => fs,
        Err(why) => {
            testkit::skip(&format!("no bpffs: {why}"));
            return;
        }
    };
    let topo = build_topology("fdq").unwrap_or_else(|e| panic!("topology: {e}"));
    let pins = bpffs.path().join("flagella");
    let state = topo.dir.join("state");
    let restartable = |run: &str| {
        let socket = topo.dir.join(format!("{run}.sock"));
        let log = topo.dir.join(format!("{run}.log"));
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &topo.node, DAEMON, "--config"])
            .arg(topo.dir.join("dataplane.toml"))
            .arg("--socket")
            .arg(&socket)
            .arg("--bpf-pin-dir")
            .arg(&pins)
            .arg("--state-dir")
            .arg(&state);
        for pod in &topo.pods {
            cmd.args(["--interface", &format!("{}=pod", pod.host_if)]);
        }
        (cmd, socket, log)
    };
    let served = topo.pods.len() + 1; // and the host interface's flg_net

    let (cmd, socket, log) = restartable("first");
    let mut first = Daemon::start(cmd, socket, log);
    first.signal(libc::SIGTERM);
    assert!(first.wait_exit(Duration::from_secs(10)).success());
    assert_eq!(
        veths_with_xdp(&topo).len(),
        served,
        "the pinned programs stay after SIGTERM"
    );
    assert!(state.join("conntrack-worker-0.state").exists());

    // The pins of an interface deleted while no dataplane ran: the next start removes them.
    std::fs::create_dir(pins.join("gone0")).expect("a stale pin directory");
    let (cmd, socket, log) = restartable("second");
    let mut second = Daemon::start(cmd, socket, log);
    second.wait_log("took over the pinned XDP program");
    second.wait_log("conntrack kept from the previous process");
    second.wait_log("gone0: gone");
    assert!(!pins.join("gone0").exists(), "stale pins removed");
    // Not under a running dataplane.
    let (mut cmd, _, _) = restartable("too-early");
    let out = cmd.arg("--uninstall").output().expect("run --uninstall");
    assert!(
        !out.status.success(),
        "--uninstall under a running dataplane"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("stop it first"));
    assert_eq!(veths_with_xdp(&topo).len(), served, "nothing removed");
    second.signal(libc::SIGKILL);
    second.wait_exit(Duration::from_secs(10));
    assert_eq!(
        veths_with_xdp(&topo).len(),
        served,
        "the pinned programs stay after SIGKILL"
    );

    let (mut cmd, _, _) = restartable("uninstall");
    let out = cmd.arg("--uninstall").output().expect("run --uninstall");
    assert!(
        out.status.success(),
        "--uninstall: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(veths_with_xdp(&topo), Vec::<String>::new(), "uninstalled");
    assert!(!pins.exists(), "no pin left");
    assert!(!state.join("conntrack-worker-0.state").exists());
}
