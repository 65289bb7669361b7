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
//! over the socket, checks that a kernel TCP connection from pod 1 to pod 2 works, then applies
//! an ingress policy on pod 2 that admits pod 1 only: pod 3's new connection must fail, pod 1's
//! must still work, and `status` must count `policy_denied_ingress`. SIGTERM must stop the
//! daemon with exit code 0, its socket file removed and no XDP program left on the node's
//! veths; a second instance killed with SIGKILL must leave no XDP program either.
//!
//! Needs root; skips with a message when not root, or when `ip`, namespaces, BPF or AF_XDP
//! are unavailable. Never touches the root namespace's interfaces.

#![allow(clippy::unwrap_used)] // Tests: a failed setup should stop the test loudly.

use std::fs::File;
use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

use nix::sched::{setns, CloneFlags};
use serde_json::{json, Value};
use xdp_redirect::{RedirectConfig, XdpError, XdpProgram};

const DAEMON: &str = env!("CARGO_BIN_EXE_flagella-dataplane");
const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 79, 0, 1);
const ROUTER_MAC: &str = "02:79:00:00:00:01";
const PORT: u16 = 7979;
const PAYLOAD: usize = 64 << 10;

/// A pod: its namespace, the node-side veth, and what the node must learn about it.
#[derive(Clone, Debug)]
struct Pod {
    id: u32,
    ns: String,
    host_if: String,
    ip: Ipv4Addr,
    identity: u32,
    /// Index of `host_if` in the node namespace.
    ifindex: u64,
    /// MAC of the pod's `eth0`.
    mac: String,
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
fn link_facts(ns: &str, dev: &str) -> (u64, String) {
    let json = ip_in(ns, &["-j", "link", "show", "dev", dev]);
    let links: Value = serde_json::from_str(&json).expect("ip -j output");
    let ifindex = links[0]["ifindex"].as_u64().expect("ifindex");
    let mac = links[0]["address"].as_str().expect("address").to_string();
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

fn build_topology() -> Result<Topology, String> {
    let pid = std::process::id();
    let mut guard = NetNsGuard { names: Vec::new() };
    let node = format!("fdm-{pid}");
    guard.add(&node)?;
    ip_in(&node, &["link", "set", "lo", "up"]);
    let mut pods = Vec::new();
    for i in 1..=3u8 {
        let ns = format!("{node}-p{i}");
        guard.add(&ns)?;
        let host_if = format!("fdm{pid}h{i}");
        let ip = Ipv4Addr::new(10, 79, 0, 10 + i);
        ip_in(
            &node,
            &[
                "link", "add", &host_if, "type", "veth", "peer", "name", "eth0", "netns", &ns,
            ],
        );
        ip_in(&node, &["link", "set", &host_if, "up"]);
        ip_in(&ns, &["link", "set", "lo", "up"]);
        ip_in(&ns, &["link", "set", "eth0", "up"]);
        ip_in(&ns, &["addr", "add", &format!("{ip}/32"), "dev", "eth0"]);
        let gateway = GATEWAY.to_string();
        ip_in(
            &ns,
            &[
                "route", "add", "default", "via", &gateway, "dev", "eth0", "onlink",
            ],
        );
        let (ifindex, _) = link_facts(&node, &host_if);
        let (_, mac) = link_facts(&ns, "eth0");
        pods.push(Pod {
            id: u32::from(i),
            ns,
            host_if,
            ip,
            identity: 1000 + u32::from(i),
            ifindex,
            mac,
        });
    }
    let dir = std::env::temp_dir().join(format!("fdm-{pid}"));
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    // An empty configuration: the flags say everything, and a file in /etc cannot interfere.
    std::fs::write(dir.join("dataplane.toml"), "").map_err(|e| e.to_string())?;
    Ok(Topology {
        node,
        pods,
        dir,
        _guard: guard,
    })
}

/// A running daemon; dropping it kills it (if still running) so no test leaves one behind.
struct Daemon {
    child: Child,
    socket: PathBuf,
    log: PathBuf,
}

impl Daemon {
    /// Starts the binary inside the node namespace and waits for its control socket.
    fn start(topo: &Topology, run: &str) -> Daemon {
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
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(&log).unwrap())
            .spawn()
            .expect("spawn ip netns exec flagella-dataplane");
        let mut daemon = Daemon { child, socket, log };
        daemon.wait_ready();
        daemon
    }

    fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "the daemon exited ({status}) before it was ready:\n{}",
                    self.log_text()
                );
            }
            if UnixStream::connect(&self.socket).is_ok() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the daemon's control socket did not appear:\n{}",
                self.log_text()
            );
            thread::sleep(Duration::from_millis(50));
        }
        // `ip netns exec` execs the daemon in place, so the child's PID is the daemon's: the
        // signals below reach it and not a wrapper.
        let comm = std::fs::read_to_string(format!("/proc/{}/comm", self.pid())).unwrap();
        assert!(comm.starts_with("flagella-datap"), "the child is `{comm}`");
    }

    fn signal(&self, signal: libc::c_int) {
        // SAFETY: kill takes plain integers; the PID is our own child, not yet reaped.
        assert_eq!(unsafe { libc::kill(self.pid(), signal) }, 0, "kill");
    }

    fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the daemon did not stop in {timeout:?}:\n{}",
                self.log_text()
            );
            thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
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

    fn denied_ingress(&mut self) -> u64 {
        let status = self.ok(json!({"op": "status"}));
        status["counters"]["drops"]["policy_denied_ingress"]
            .as_u64()
            .unwrap_or(0)
    }
}

/// The node's facts, the pods as endpoints, their addresses in the ipcache.
fn configure(client: &mut Client, pods: &[Pod]) {
    client.ok(json!({
        "op": "local_node.set", "name": "fdm-node",
        "router_mac": ROUTER_MAC, "gateway_ipv4": GATEWAY.to_string(),
    }));
    for pod in pods {
        client.ok(json!({
            "op": "endpoint.upsert", "id": pod.id, "ifindex": pod.ifindex, "mac": pod.mac,
            "ipv4": pod.ip.to_string(), "identity": pod.identity,
        }));
        client.ok(json!({
            "op": "ipcache.upsert", "prefix": format!("{}/32", pod.ip), "identity": pod.identity,
        }));
    }
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

/// An echo server in `pod`: for each connection, reads until EOF and sends the bytes back.
fn start_server(pod: &Pod, stop: Arc<AtomicBool>) -> thread::JoinHandle<usize> {
    let (ready_tx, ready_rx) = mpsc::channel();
    let addr = SocketAddr::new(IpAddr::V4(pod.ip), PORT);
    let handle = spawn_in(&pod.ns, move || {
        let listener = TcpListener::bind(addr).expect("bind in the server pod");
        listener.set_nonblocking(true).expect("nonblocking");
        ready_tx.send(()).expect("ready");
        let mut served = 0;
        while !stop.load(Ordering::Relaxed) {
            match listener.accept() {
                Ok((mut stream, _)) => {
                    stream.set_nonblocking(false).expect("blocking");
                    stream
                        .set_read_timeout(Some(Duration::from_secs(10)))
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

/// From `pod`: connects to `dst`, sends `PAYLOAD` bytes, reads them back intact.
fn echo_from(pod: &Pod, dst: Ipv4Addr, timeout: Duration) -> Result<(), String> {
    let addr = SocketAddr::new(IpAddr::V4(dst), PORT);
    spawn_in(&pod.ns, move || {
        let mut stream =
            TcpStream::connect_timeout(&addr, timeout).map_err(|e| format!("connect: {e}"))?;
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .map_err(|e| e.to_string())?;
        let sent: Vec<u8> = (0..PAYLOAD).map(|i| (i * 7 + i / 251) as u8).collect();
        stream.write_all(&sent).map_err(|e| format!("write: {e}"))?;
        stream
            .shutdown(Shutdown::Write)
            .map_err(|e| format!("shutdown: {e}"))?;
        let mut got = Vec::with_capacity(PAYLOAD);
        stream
            .read_to_end(&mut got)
            .map_err(|e| format!("read back: {e}"))?;
        if got != sent {
            return Err(format!("echo differs: {} bytes back", got.len()));
        }
        Ok(())
    })
    .join()
    .unwrap_or_else(|p| std::panic::resume_unwind(p))
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

#[test]
fn the_daemon_forwards_enforces_policy_and_leaves_nothing_behind() {
    if let Err(why) = preflight() {
        eprintln!("SKIPPED: {why}");
        return;
    }
    let topo = build_topology().unwrap_or_else(|e| panic!("topology: {e}"));
    let pods = &topo.pods;

    // First instance: traffic and policy, then SIGTERM.
    let mut daemon = Daemon::start(&topo, "first");
    assert_eq!(
        veths_with_xdp(&topo).len(),
        pods.len(),
        "one XDP program per pod interface"
    );
    let mut client = Client::connect(&daemon.socket);
    configure(&mut client, pods);

    let stop_server = Arc::new(AtomicBool::new(false));
    let server = start_server(&pods[1], Arc::clone(&stop_server));
    let allowed = echo_from(&pods[0], pods[1].ip, Duration::from_secs(5));

    // Ingress of pod 2: pod 1 may connect on the port, nobody else.
    client.ok(json!({
        "op": "policy.update", "endpoint": pods[1].id, "direction": "ingress", "enforced": true,
        "add": [{"identity": pods[0].identity, "proto": "tcp", "port": PORT, "action": "allow"}],
    }));
    let denied = echo_from(&pods[2], pods[1].ip, Duration::from_secs(2));
    let still_allowed = echo_from(&pods[0], pods[1].ip, Duration::from_secs(5));
    // `status` lags the workers by one publication.
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut denied_count = client.denied_ingress();
    while denied_count == 0 && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(50));
        denied_count = client.denied_ingress();
    }
    stop_server.store(true, Ordering::Relaxed);
    let served = server.join().expect("server thread");
    let malformed = client.call(json!({"op": "endpoint.upsert", "id": "one"}));
    drop(client);

    daemon.signal(libc::SIGTERM);
    let status = daemon.wait_exit(Duration::from_secs(10));
    let log = daemon.log_text();
    eprintln!("first instance's log:\n{log}");
    eprintln!("allowed: {allowed:?}; denied: {denied:?}; allowed after policy: {still_allowed:?}");

    assert_eq!(allowed, Ok(()), "pod 1 -> pod 2 through the daemon");
    assert!(denied.is_err(), "pod 3 -> pod 2 is denied by the policy");
    assert_eq!(still_allowed, Ok(()), "pod 1 -> pod 2 is still allowed");
    assert_eq!(
        served, 2,
        "the server saw exactly the two allowed connections"
    );
    assert!(denied_count > 0, "status counts policy_denied_ingress");
    assert_eq!(malformed["ok"], false, "a malformed request is refused");
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
    let mut daemon = Daemon::start(&topo, "second");
    assert_eq!(veths_with_xdp(&topo).len(), pods.len());
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
