//! The real `flagella-dataplane` run exactly as its systemd unit runs it
//! (`scripts/systemd/flagella-dataplane.service`): an unprivileged user (`nobody` here, for the
//! unit's `flagella`) with ambient `CAP_BPF CAP_NET_ADMIN CAP_NET_RAW`, a bounding set of
//! those three only, `NoNewPrivileges=yes`, and `LimitMEMLOCK=infinity` (raised here as root
//! before the switch, as systemd does); its control socket open to its group
//! (`--socket-group-access true`, mode 0660) in a directory owned by that user with mode 0750
//! (`RuntimeDirectory=flagella`, `RuntimeDirectoryMode=0750`). Feature `afxdp`, root.
//!
//! ```text
//!  fdc-<pid>-p1  eth0 10.81.0.11/32 <-veth-> fdc<pid>h1 ┐ fdc-<pid> ("node"):
//!  fdc-<pid>-p2  eth0 10.81.0.12/32 <-veth-> fdc<pid>h2 ┘  setpriv ... flagella-dataplane
//!  each pod: default via 10.81.0.1 onlink; the node namespace has no address and no route,
//!  so only the dataplane can carry a packet from one pod to the other
//! ```
//!
//! Checked: the process really runs with exactly those credentials (`/proc/<pid>/status`: uid,
//! effective = permitted = ambient = bounding = the three capabilities, `NoNewPrivs`); its
//! preflight accepts them and it attaches one XDP program per pod interface; a kernel TCP
//! connection from pod 1 to pod 2 (64 KiB each way, echoed intact) goes through it (its `rx` and
//! `tx` counters grow); SIGTERM stops it with exit code 0, its socket file removed and no XDP
//! program left on the veths.
//!
//! Where this root cannot lift the locked-memory limit (a container without
//! `CAP_SYS_RESOURCE`, whose hard `RLIMIT_MEMLOCK` is a few MiB while the daemon's UMEMs need
//! 32 MiB per interface), `LimitMEMLOCK=infinity` cannot be reproduced: the test then adds
//! `CAP_IPC_LOCK` — which exempts the UMEM from that limit and from nothing else — to the three
//! capabilities, says so on stderr (`DEVIATION: ...`), and checks everything else the same way.
//!
//! Skips with a message when not root, or when `ip`, namespaces, BPF, AF_XDP, `setpriv` or the
//! user `nobody` are unavailable. Never touches the root namespace's interfaces; removes its
//! namespaces and files, pass or fail.

#![allow(clippy::unwrap_used)] // Tests: a failed setup should stop the test loudly.

mod support;

use std::net::Ipv4Addr;
use std::os::unix::fs::{chown, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::daemon::{call, Daemon};
use support::{build_pods, ip_in, preflight, Echo, NetNsGuard, Pod, PodNamespaces};

const DAEMON: &str = env!("CARGO_BIN_EXE_flagella-dataplane");
const UNIT: &str = include_str!("../../scripts/systemd/flagella-dataplane.service");
const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 81, 0, 1);
const ROUTER_MAC: &str = "02:81:00:00:00:01";
const ECHO: Echo = Echo {
    port: 8181,
    payload: 64 << 10,
    read_timeout: Duration::from_secs(10),
};
/// The user the daemon runs as (the unit's `flagella` does not exist on a test machine).
const USER: &str = "nobody";

/// Capability numbers (linux/capability.h).
const CAP_NET_ADMIN: u32 = 12;
const CAP_NET_RAW: u32 = 13;
const CAP_IPC_LOCK: u32 = 14;
const CAP_BPF: u32 = 39;

/// The unit's capability set, parsed from the unit file itself so that this test follows it:
/// the names of `AmbientCapabilities=`, which must equal `CapabilityBoundingSet=`.
fn unit_capabilities() -> Vec<String> {
    let line = |key: &str| -> Vec<String> {
        UNIT.lines()
            .find_map(|l| l.strip_prefix(key))
            .unwrap_or_else(|| panic!("the unit has no {key}"))
            .split_whitespace()
            .map(str::to_string)
            .collect()
    };
    let ambient = line("AmbientCapabilities=");
    assert_eq!(
        ambient,
        line("CapabilityBoundingSet="),
        "ambient = bounding"
    );
    assert!(
        UNIT.contains("\nNoNewPrivileges=yes"),
        "the unit sets NoNewPrivileges"
    );
    assert!(
        UNIT.contains("\nLimitMEMLOCK=infinity"),
        "the unit lifts the memlock limit"
    );
    ambient
}

fn cap_bit(name: &str) -> u32 {
    match name {
        "CAP_NET_ADMIN" => CAP_NET_ADMIN,
        "CAP_NET_RAW" => CAP_NET_RAW,
        "CAP_BPF" => CAP_BPF,
        "CAP_IPC_LOCK" => CAP_IPC_LOCK,
        other => panic!("the unit grants {other}: teach this test its number"),
    }
}

/// `cap_bpf,cap_net_admin` -> `+bpf,+net_admin` (setpriv's syntax).
fn setpriv_caps(caps: &[String], sign: char) -> String {
    caps.iter()
        .map(|c| {
            format!(
                "{sign}{}",
                c.trim_start_matches("CAP_").to_ascii_lowercase()
            )
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// `(uid, gid)` of `user`, from `id`.
fn ids_of(user: &str) -> Option<(u32, u32)> {
    let id = |flag: &str| -> Option<u32> {
        let out = Command::new("id").args([flag, user]).output().ok()?;
        out.status.success().then_some(())?;
        String::from_utf8_lossy(&out.stdout).trim().parse().ok()
    };
    Some((id("-u")?, id("-g")?))
}

/// The namespaces and the scratch directory of one run.
struct Topology {
    node: String,
    pods: Vec<Pod>,
    /// Mode 0755, owned by root: the (empty) configuration, the log.
    dir: PathBuf,
    /// Mode 0750, owned by the daemon's user: its control socket (`/run/flagella`).
    run_dir: PathBuf,
    /// Removes `dir` on drop (`mkdtemp`: a name nobody can predict).
    _scratch: tempfile::TempDir,
    _guard: NetNsGuard,
}

fn build_topology(uid: u32, gid: u32) -> Result<Topology, String> {
    let PodNamespaces { node, pods, guard } = build_pods("fdc", [10, 81, 0], GATEWAY, 2)?;
    let scratch = tempfile::Builder::new()
        .prefix("fdc-")
        .tempdir()
        .map_err(|e| format!("a temporary directory: {e}"))?;
    let dir = scratch.path().to_path_buf();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))
        .map_err(|e| e.to_string())?;
    std::fs::write(dir.join("dataplane.toml"), "").map_err(|e| e.to_string())?;
    // What RuntimeDirectory=flagella with RuntimeDirectoryMode=0750 gives the service.
    let run_dir = dir.join("run-flagella");
    std::fs::create_dir(&run_dir).map_err(|e| e.to_string())?;
    chown(&run_dir, Some(uid), Some(gid)).map_err(|e| e.to_string())?;
    std::fs::set_permissions(&run_dir, std::fs::Permissions::from_mode(0o750))
        .map_err(|e| e.to_string())?;
    Ok(Topology {
        node,
        pods,
        dir,
        run_dir,
        _scratch: scratch,
        _guard: guard,
    })
}

/// LimitMEMLOCK=infinity: raised in this (root) process, inherited by the daemon, which as an
/// unprivileged user could not raise it itself. The error when this root may not (no
/// `CAP_SYS_RESOURCE`), with the hard limit in force.
fn raise_memlock() -> Result<(), String> {
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: setrlimit reads the struct we pass; it has no other precondition.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) } == 0 {
        return Ok(());
    }
    let why = std::io::Error::last_os_error();
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: lim is a valid, writable rlimit for the duration of the call.
    unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut lim) };
    Err(format!(
        "cannot lift RLIMIT_MEMLOCK ({why}); hard limit {} KiB",
        lim.rlim_max / 1024
    ))
}

/// The daemon under the unit's credentials: `ip netns exec` and `setpriv`, both of which exec
/// in place (the child's PID is the daemon's). Not waited for.
fn spawn_daemon(topo: &Topology, uid: u32, gid: u32, caps: &[String], run: &str) -> Daemon {
    let socket = topo.run_dir.join("dataplane.sock");
    let log = topo.dir.join(format!("{run}.log"));
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &topo.node, "setpriv"])
        .arg(format!("--reuid={uid}"))
        .arg(format!("--regid={gid}"))
        .arg("--clear-groups")
        .arg(format!("--inh-caps=-all,{}", setpriv_caps(caps, '+')))
        .arg(format!("--ambient-caps={}", setpriv_caps(caps, '+')))
        .arg(format!("--bounding-set=-all,{}", setpriv_caps(caps, '+')))
        .arg("--no-new-privs")
        .arg(DAEMON)
        .arg("--config")
        .arg(topo.dir.join("dataplane.toml"))
        .arg("--socket")
        .arg(&socket)
        .args(["--socket-group-access", "true"]);
    assert!(
        UNIT.contains("--socket-group-access true"),
        "the unit no longer opens the socket to its group: update this test"
    );
    for pod in &topo.pods {
        cmd.args(["--interface", &format!("{}=pod", pod.host_if)]);
    }
    Daemon::spawn(cmd, socket, log)
}

/// One `Name:` line of `/proc/<pid>/status`.
fn proc_status(pid: i32, field: &str) -> String {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(field))
        .unwrap_or_else(|| panic!("no {field} in /proc/<pid>/status"))
        .trim()
        .to_string()
}

fn configure(socket: &Path, pods: &[Pod]) {
    call(
        socket,
        json!({"op": "local_node.set", "name": "fdc-node", "router_mac": ROUTER_MAC,
               "gateway_ipv4": GATEWAY.to_string()}),
    );
    for pod in pods {
        call(
            socket,
            json!({"op": "endpoint.upsert", "id": pod.id, "ifindex": pod.ifindex,
                   "mac": pod.mac.to_string(), "ipv4": pod.ip.to_string(), "identity": 1000 + pod.id}),
        );
        call(
            socket,
            json!({"op": "ipcache.upsert", "prefix": format!("{}/32", pod.ip),
                   "identity": 1000 + pod.id}),
        );
    }
}

/// `(rx_packets, tx_packets)` of the daemon (`status` lags the workers by one publication).
fn packets(socket: &Path) -> (u64, u64) {
    let s = call(socket, json!({"op": "status"}));
    let c = &s["counters"];
    (
        c["rx_packets"].as_u64().unwrap_or(0),
        c["tx_packets"].as_u64().unwrap_or(0),
    )
}

fn veths_with_xdp(topo: &Topology) -> Vec<String> {
    let links: Value =
        serde_json::from_str(&ip_in(&topo.node, &["-j", "link", "show"])).expect("ip -j output");
    links
        .as_array()
        .expect("a list of links")
        .iter()
        .filter(|link| link.get("xdp").is_some())
        .map(|link| link["ifname"].as_str().unwrap_or("?").to_string())
        .collect()
}

#[test]
fn the_daemon_runs_with_exactly_the_units_capabilities() {
    if let Err(why) = preflight() {
        testkit::skip(&why);
        return;
    }
    if Command::new("setpriv").arg("--version").output().is_err() {
        testkit::skip("setpriv is missing (Debian's util-linux)");
        return;
    }
    let Some((uid, gid)) = ids_of(USER) else {
        testkit::skip(&format!("no user `{USER}` to run the daemon as"));
        return;
    };
    let mut caps = unit_capabilities();
    let topo = build_topology(uid, gid).unwrap_or_else(|e| panic!("topology: {e}"));
    let memlock_lifted = match raise_memlock() {
        Ok(()) => true,
        Err(why) => {
            // With exactly the unit's capabilities, the only refusal is the memlock limit.
            let mut exact = spawn_daemon(&topo, uid, gid, &caps, "exact-caps");
            let status = exact.wait_exit(Duration::from_secs(20));
            let log = exact.log_text();
            assert_eq!(status.code(), Some(2), "a preflight refusal:\n{log}");
            assert!(
                log.contains("locked-memory limit") && !log.contains("CAP_"),
                "refused for the memlock limit only:\n{log}"
            );
            eprintln!(
                "DEVIATION: {why}: LimitMEMLOCK=infinity cannot be reproduced here (with exactly \
                 the unit's capabilities the daemon refuses for that alone: {}), so the daemon \
                 also gets CAP_IPC_LOCK (the UMEM is then not charged to that limit)",
                log.trim()
            );
            caps.push("CAP_IPC_LOCK".into());
            false
        }
    };
    let mask: u64 = caps.iter().map(|c| 1u64 << cap_bit(c)).sum();
    let (a, b) = (&topo.pods[0], &topo.pods[1]);

    let mut daemon = spawn_daemon(&topo, uid, gid, &caps, "daemon");
    daemon.wait_ready();
    // The credentials it really runs with.
    let hex = |v: u64| format!("{v:016x}");
    assert_eq!(
        proc_status(daemon.pid(), "Uid:")
            .split_whitespace()
            .collect::<Vec<_>>(),
        vec![uid.to_string(); 4],
        "real, effective, saved and fs uid are {USER}'s"
    );
    assert_eq!(
        proc_status(daemon.pid(), "Groups:"),
        "",
        "no supplementary group"
    );
    for set in ["CapEff:", "CapPrm:", "CapAmb:", "CapBnd:"] {
        assert_eq!(
            proc_status(daemon.pid(), set),
            hex(mask),
            "{set} is the unit's set {caps:?}"
        );
    }
    assert_eq!(proc_status(daemon.pid(), "NoNewPrivs:"), "1");
    let memlock = std::fs::read_to_string(format!("/proc/{}/limits", daemon.pid())).unwrap();
    assert!(
        !memlock_lifted
            || memlock
                .lines()
                .any(|l| l.starts_with("Max locked memory") && l.contains("unlimited")),
        "{memlock}"
    );
    let socket_mode = std::fs::metadata(&daemon.socket)
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(socket_mode & 0o777, 0o660, "the control socket is 0660");
    assert_eq!(
        veths_with_xdp(&topo).len(),
        topo.pods.len() + 1,
        "one XDP program per pod interface and one on the host interface (created with the \
         unit's capabilities):\n{}",
        daemon.log_text()
    );

    configure(&daemon.socket, &topo.pods);
    let before = packets(&daemon.socket);
    let stop = Arc::new(AtomicBool::new(false));
    let server = ECHO.serve(&b.ns, b.ip, Arc::clone(&stop));
    let result = ECHO.exchange(&a.ns, b.ip, Duration::from_secs(5));
    stop.store(true, Ordering::Relaxed);
    let served = server.join().expect("server thread");
    assert_eq!(
        result,
        Ok(()),
        "TCP pod 1 -> pod 2 through the dataplane:\n{}",
        daemon.log_text()
    );
    assert_eq!(served, 1, "the server echoed one connection");
    // 64 KiB each way is at least 45 full-size segments in each direction.
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut after = packets(&daemon.socket);
    while (after.0 < before.0 + 90 || after.1 < before.1 + 90) && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(50));
        after = packets(&daemon.socket);
    }
    assert!(
        after.0 >= before.0 + 90 && after.1 >= before.1 + 90,
        "the connection's packets went through the daemon: before {before:?}, after {after:?}"
    );

    daemon.signal(libc::SIGTERM);
    let status = daemon.wait_exit(Duration::from_secs(10));
    let log = daemon.log_text();
    eprintln!("daemon log:\n{log}");
    assert_eq!(status.code(), Some(0), "SIGTERM is a clean stop");
    assert!(
        !daemon.socket.exists(),
        "the control socket file is removed"
    );
    assert_eq!(
        veths_with_xdp(&topo),
        Vec::<String>::new(),
        "no XDP program left after SIGTERM"
    );
}
