//! Namespaces, child processes and the dataplane binary, for the tests that run real
//! dataplanes and agents in network namespaces (`e2e_dataplane.rs`, `cluster.rs`).
//!
//! Everything here removes what it made on drop (namespaces, processes by their PID), pass or
//! fail.

#![allow(dead_code)]
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helper: a failure is a failed test

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

/// A child process of this test: SIGKILL by its PID and reaped on drop.
pub struct Proc {
    pub child: Option<Child>,
    pub what: &'static str,
    pub log: PathBuf,
}

impl Proc {
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn running(&mut self) -> bool {
        matches!(self.child.as_mut().map(Child::try_wait), Some(Ok(None)))
    }

    /// kill -9 (only this child, by its PID) and reap it.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM (only this child, by its PID) and waits for it to exit: a graceful stop.
    pub fn terminate(&mut self) -> Option<std::process::ExitStatus> {
        let mut c = self.child.take()?;
        let pid = libc::pid_t::try_from(c.id()).ok()?;
        // SAFETY: plain syscall; `pid` is our own unreaped child, so it cannot be recycled.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        c.wait().ok()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.running() {
            eprintln!("stopping {} (pid {:?})", self.what, self.pid());
        }
        self.kill9();
    }
}

// The namespace guard and `ip` helpers are the workspace's one definition (`testkit`).
#[allow(unused_imports)] // each test file uses a subset
pub use testkit::{ip_in, run_in, run_ip, spawn_in, NetNsGuard};

/// `(ifindex, MAC)` of `dev` in namespace `ns`.
pub fn link_facts(ns: &str, dev: &str) -> (u64, String) {
    let links: Value = serde_json::from_str(&ip_in(ns, &["-j", "link", "show", "dev", dev]))
        .expect("ip -j output");
    (
        links[0]["ifindex"].as_u64().expect("ifindex"),
        links[0]["address"].as_str().expect("address").to_string(),
    )
}

/// A pod's veth: `host_if` in namespace `node`, its peer `eth0` in namespace `pod`, both up (and
/// the pod's loopback); returns the host side's ifindex and the pod side's MAC.
pub fn pod_veth(node: &str, pod: &str, host_if: &str) -> (u64, String) {
    ip_in(
        node,
        &[
            "link", "add", host_if, "type", "veth", "peer", "name", "eth0", "netns", pod,
        ],
    );
    ip_in(node, &["link", "set", host_if, "up"]);
    ip_in(pod, &["link", "set", "lo", "up"]);
    ip_in(pod, &["link", "set", "eth0", "up"]);
    let (ifindex, _) = link_facts(node, host_if);
    let (_, mac) = link_facts(pod, "eth0");
    (ifindex, mac)
}

/// Gives the pod in namespace `pod` the address `ip`/32 on `eth0` and a default route via
/// `gateway` (onlink), as the CNI plugin does.
pub fn pod_address(pod: &str, ip: std::net::Ipv4Addr, gateway: std::net::Ipv4Addr) {
    ip_in(pod, &["addr", "add", &format!("{ip}/32"), "dev", "eth0"]);
    let gw = gateway.to_string();
    ip_in(
        pod,
        &[
            "route", "add", "default", "via", &gw, "dev", "eth0", "onlink",
        ],
    );
}

/// The dataplane binary, next to this test's profile directory or from the environment.
pub fn dataplane_binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("FLAGELLA_DATAPLANE_BIN") {
        return Some(PathBuf::from(p));
    }
    // target/<profile>/deps/e2e_dataplane-<hash> -> target/<profile>/flagella-dataplane
    let exe = std::env::current_exe().ok()?;
    let profile = exe.parent()?.parent()?;
    let bin = profile.join("flagella-dataplane");
    bin.exists().then_some(bin)
}

/// Root, etcd, `ip netns`, AF_XDP and the dataplane binary; or the reason to skip.
pub fn preflight() -> Result<PathBuf, String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err("needs root (namespaces, XDP, AF_XDP)".into());
    }
    if !Path::new(super::ETCD).exists() {
        return Err(format!(
            "{} is missing; install Debian's etcd-server",
            super::ETCD
        ));
    }
    run_ip(&["netns", "list"])?;
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
    dataplane_binary().ok_or_else(|| {
        "the flagella-dataplane binary is not built next to this test: run `cargo build -p \
         dataplane --features afxdp --bin flagella-dataplane` (or set FLAGELLA_DATAPLANE_BIN)"
            .to_string()
    })
}

pub fn wait_for_within(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        thread::sleep(Duration::from_millis(50));
    }
}

/// `flagella-control` for `node`, on etcd at `etcd_url` and the dataplane's `socket`, writing its
/// status to `status_file` and appending its stderr to `log` (what every test's agent runs
/// with: a short etcd timeout, so outages show quickly). Its `/metrics` is off: several agents
/// share the root namespace, where only one could have the default port.
pub fn spawn_agent(
    etcd_url: &str,
    node: &str,
    socket: &Path,
    status_file: &Path,
    log: &Path,
) -> Child {
    spawn_agent_with_metrics(etcd_url, node, socket, status_file, log, "off")
}

/// [`spawn_agent`], serving `/metrics` on `metrics` (`ADDRESS:PORT` or `off`).
pub fn spawn_agent_with_metrics(
    etcd_url: &str,
    node: &str,
    socket: &Path,
    status_file: &Path,
    log: &Path,
    metrics: &str,
) -> Child {
    spawn_agent_with_args(
        etcd_url,
        node,
        socket,
        status_file,
        log,
        &["--metrics-address", metrics],
    )
}

/// [`spawn_agent`] with more arguments (`--metrics-address off` unless they say otherwise;
/// e.g. a short `--lease-ttl` and `--identity-grace`).
pub fn spawn_agent_with_args(
    etcd_url: &str,
    node: &str,
    socket: &Path,
    status_file: &Path,
    log: &Path,
    extra: &[&str],
) -> Child {
    let log = File::options().create(true).append(true).open(log).unwrap();
    let metrics = if extra.contains(&"--metrics-address") {
        &[][..]
    } else {
        &["--metrics-address", "off"][..]
    };
    Command::new(env!("CARGO_BIN_EXE_flagella-control"))
        .arg("--etcd")
        .arg(etcd_url)
        .args(["--node", node])
        .arg("--dataplane-socket")
        .arg(socket)
        .arg("--status-file")
        .arg(status_file)
        .args(["--etcd-timeout", "1"])
        .args(metrics)
        .args(extra)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn flagella-control")
}
