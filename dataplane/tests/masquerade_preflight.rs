//! The host keeps its ports: `flagella-dataplane` with an uplink masquerades by default, and
//! refuses to start (exit code 2, a message that names `ip_local_port_range` and says what to
//! change) when the node's `net.ipv4.ip_local_port_range` overlaps the masquerade ports: the
//! uplink program would take the replies of the host's own connections. With a disjoint range
//! (or `--masquerade off`) it starts.
//!
//! One namespace (`fmq-<pid>`, removed on drop, pass or fail) with a veth uplink to a peer
//! namespace; the sysctl is the namespace's own. Skips with a message when not root, or when
//! `ip`, namespaces, BPF or AF_XDP are unavailable. Stops only the daemons it started (by PID).

#![allow(clippy::unwrap_used)] // Tests: a failed setup should stop the test loudly.

mod support;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use support::daemon::Daemon;
use support::{add_veth, ip_in, preflight, NetNsGuard};

const DAEMON: &str = env!("CARGO_BIN_EXE_flagella-dataplane");

struct Node {
    ns: String,
    uplink: String,
    dir: PathBuf,
    _guard: NetNsGuard,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn build_node() -> Node {
    let pid = std::process::id();
    let mut guard = NetNsGuard::default();
    let ns = format!("fmq-{pid}");
    let peer = format!("{ns}-peer");
    guard.add(&ns).unwrap();
    guard.add(&peer).unwrap();
    let uplink = format!("fmq{pid}u");
    ip_in(&ns, &["link", "set", "lo", "up"]);
    add_veth(&ns, &uplink, &peer, "10.85.0.2/24");
    ip_in(&ns, &["addr", "add", "10.85.0.1/24", "dev", &uplink]);
    let dir = std::env::temp_dir().join(format!("fmq-{pid}"));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("dataplane.toml"), "").unwrap();
    Node {
        ns,
        uplink,
        dir,
        _guard: guard,
    }
}

fn set_local_port_range(node: &Node, range: &str) {
    let out = Command::new("ip")
        .args(["netns", "exec", &node.ns, "sysctl", "-w"])
        .arg(format!("net.ipv4.ip_local_port_range={range}"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "sysctl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn daemon_command(node: &Node, run: &str, extra: &[&str]) -> (Command, PathBuf, PathBuf) {
    let socket = node.dir.join(format!("{run}.sock"));
    let log = node.dir.join(format!("{run}.log"));
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &node.ns, DAEMON, "--config"])
        .arg(node.dir.join("dataplane.toml"))
        .arg("--socket")
        .arg(&socket)
        .args(["--interface", &format!("{}=uplink", node.uplink)])
        .args(extra);
    (cmd, socket, log)
}

#[test]
fn an_overlapping_local_port_range_is_refused_with_what_to_do() {
    if let Err(why) = preflight() {
        testkit::skip(&why);
        return;
    }
    let node = build_node();

    set_local_port_range(&node, "32768 62000");
    let (mut cmd, _, _) = daemon_command(&node, "overlap", &[]);
    let out = cmd.stdin(Stdio::null()).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(2),
        "a configuration error: {stderr}"
    );
    assert!(
        stderr.contains("ip_local_port_range") && stderr.contains("61000-65535"),
        "the message names the sysctl and the range: {stderr}"
    );
    // Another range for the masquerade: it starts, and says so.
    let (cmd, socket, log) = daemon_command(&node, "moved", &["--masquerade-ports", "62001-65535"]);
    let mut daemon = Daemon::start(cmd, socket, log);
    assert!(
        daemon.log_text().contains("source ports 62001-65535"),
        "{}",
        daemon.log_text()
    );
    daemon.signal(libc::SIGTERM);
    assert_eq!(daemon.wait_exit(Duration::from_secs(10)).code(), Some(0));
    // Or no masquerade at all.
    let (cmd, socket, log) = daemon_command(&node, "off", &["--masquerade", "off"]);
    let daemon = Daemon::start(cmd, socket, log);
    assert!(!daemon.log_text().contains("masquerade on"));
    assert_eq!(daemon.terminate().code(), Some(0));

    set_local_port_range(&node, "32768 60999"); // Linux's default: masquerade on by default.
    let (cmd, socket, log) = daemon_command(&node, "default", &[]);
    let daemon = Daemon::start(cmd, socket, log);
    assert!(
        daemon.log_text().contains("masquerade on"),
        "{}",
        daemon.log_text()
    );
    assert_eq!(daemon.terminate().code(), Some(0));
}
