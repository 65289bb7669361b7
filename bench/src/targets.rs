//! The forwarders between pod A and pod B, each started in the node namespace and stopped on
//! drop (pass or fail):
//!
//! - `flagella`: `flagella-dataplane --interface A=pod --interface B=pod --core W`, configured
//!   over its control socket (node, endpoints, ipcache, an egress policy on A and an ingress
//!   policy on B admitting exactly the benchmark's UDP; conntrack is always on). Its cost per
//!   packet comes from `status`: `busy_ns / rx_packets` of the worker over the window.
//! - `kernel`: IPv4 forwarding in the node namespace (no process to run).
//! - `ovs`, `ovs-ct`: an ovsdb-server and an ovs-vswitchd of our own (private database, run
//!   directory and sockets under the run's scratch directory; the system's OVS, if any, is not
//!   touched), a `datapath_type=netdev` bridge with the two host veths as `type=afxdp` ports
//!   (`xdp-mode=native`), the PMD thread on the worker core, and OpenFlow rules that route A -> B
//!   (set MACs, decrement TTL), plainly or through conntrack. Cost per packet comes from
//!   `dpif-netdev/pmd-stats-show` ("avg processing cycles per packet").
//!
//! Processes are stopped by their own PID (SIGTERM, then SIGKILL after 5 s), never by name.

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::cli::RunArgs;
use crate::cputime::{threads_cpu_time, CpuTime};
use crate::topo::{exec_in, run, Topology, GATEWAY, ROUTER_MAC, SINK_PORT};
use crate::BenchError;

/// The default flagella-dataplane: next to this binary.
pub fn default_dataplane() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join("flagella-dataplane")))
        .unwrap_or_else(|| PathBuf::from("flagella-dataplane"))
}

/// A child process stopped by PID when dropped.
#[derive(Debug)]
pub struct ChildGuard {
    pub name: String,
    pub child: Child,
}

impl ChildGuard {
    pub fn spawn(name: &str, cmd: &mut Command) -> Result<ChildGuard, BenchError> {
        let child = cmd
            .spawn()
            .map_err(|e| BenchError::io(format!("starting {name}"), e))?;
        Ok(ChildGuard {
            name: name.to_string(),
            child,
        })
    }

    /// Sets the nice value of every thread the process has now (nice is per thread on Linux;
    /// threads created later inherit their creator's). 0 leaves it alone.
    pub fn renice(&self, nice: i32) -> Result<(), BenchError> {
        if nice == 0 {
            return Ok(());
        }
        let dir = format!("/proc/{}/task", self.child.id());
        let tasks =
            std::fs::read_dir(&dir).map_err(|e| BenchError::io(format!("listing {dir}"), e))?;
        for tid in tasks
            .flatten()
            .filter_map(|t| t.file_name().to_str()?.parse::<u32>().ok())
        {
            // SAFETY: setpriority takes plain integers; a vanished thread is an error we ignore.
            unsafe { libc::setpriority(libc::PRIO_PROCESS, tid, nice) };
        }
        Ok(())
    }

    /// The process's PID (`ip netns exec` execs in place, so it is the program's own).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `Err` with `log`'s text if the process already exited.
    pub fn check_alive(&mut self, log: &Path) -> Result<(), BenchError> {
        if let Ok(Some(status)) = self.child.try_wait() {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            return Err(BenchError::Failed(format!(
                "{} exited ({status}):\n{}",
                self.name,
                tail(&text, 20)
            )));
        }
        Ok(())
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        if let Ok(pid) = i32::try_from(self.child.id()) {
            // SAFETY: kill takes plain integers; the PID is our own child, not yet reaped.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!("WARNING: {} ignored SIGTERM for 5 s; killing it", self.name);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The last `n` lines of `text`.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Polls `ready` every 50 ms for up to `timeout`; fails with `what`.
pub(crate) fn wait_for(
    what: &str,
    timeout: Duration,
    mut ready: impl FnMut() -> Result<bool, BenchError>,
) -> Result<(), BenchError> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if ready()? {
            return Ok(());
        }
        crate::signals::sleep(Duration::from_millis(50))?;
    }
    Err(BenchError::Failed(format!("{what} within {timeout:?}")))
}

// ------------------------------------------------------------------------------------------
// flagella

/// A running flagella-dataplane and a connection to its control socket.
#[derive(Debug)]
pub struct Flagella {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    // Dropped last: the daemon outlives the connection.
    daemon: ChildGuard,
}

/// The worker's counters at one instant.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WorkerSample {
    pub busy_ns: u64,
    pub rx_packets: u64,
    /// From the workers' `io` counters (zero from a binary that does not report them).
    pub rx_batches: u64,
    pub tx_wakeups: u64,
    pub sock_rx_ring_full: u64,
    pub sock_fill_ring_empty: u64,
}

/// How `flagella-dataplane` is started: which binary, its worker's core, nice value and idle
/// sleep.
#[derive(Clone, Debug)]
pub struct DataplaneLaunch {
    pub binary: PathBuf,
    pub core: usize,
    pub nice: i32,
    /// `--idle-sleep-us` (0: the worker spins, the daemon's default and what measurements use).
    pub idle_sleep_us: u64,
    /// `--masquerade-ports FIRST-LAST` (absent: the daemon's default range).
    pub masquerade_ports: Option<String>,
    /// Further flags, as given (`monitor-cost`'s `--monitor-rate N`).
    pub extra_args: Vec<String>,
}

impl DataplaneLaunch {
    /// From `forward`'s options: `--dataplane` (default: next to this binary), `--worker-core`,
    /// `--nice`, `--idle-sleep-us`; fails with what to build when the binary is missing.
    pub fn from_run(args: &RunArgs) -> Result<DataplaneLaunch, BenchError> {
        DataplaneLaunch::new(
            args.dataplane.clone(),
            args.worker_core,
            args.nice,
            args.idle_sleep_us,
        )
    }

    /// The daemon at `binary` (default: next to this binary) with the daemon's defaults
    /// otherwise; fails with what to build when the binary is missing.
    pub fn new(
        binary: Option<PathBuf>,
        core: usize,
        nice: i32,
        idle_sleep_us: u64,
    ) -> Result<DataplaneLaunch, BenchError> {
        let binary = binary.unwrap_or_else(default_dataplane);
        if !binary.exists() {
            return Err(BenchError::Unavailable(format!(
                "{} not found: cargo build --release -p dataplane --features afxdp --bin flagella-dataplane (or pass --dataplane)",
                binary.display()
            )));
        }
        Ok(DataplaneLaunch {
            binary,
            core,
            nice,
            idle_sleep_us,
            masquerade_ports: None,
            extra_args: Vec::new(),
        })
    }
}

/// Starts `flagella-dataplane` in namespace `ns` on `interfaces` (`NAME=pod|uplink`) with its
/// socket, log and (empty) configuration file in `dir`, unconfigured; returns once the control
/// socket accepts connections.
pub fn start_dataplane(
    ns: &str,
    interfaces: &[String],
    launch: &DataplaneLaunch,
    dir: &Path,
) -> Result<(ChildGuard, PathBuf), BenchError> {
    let socket = dir.join("dataplane.sock");
    let log = dir.join("dataplane.log");
    let config = dir.join("dataplane.toml");
    std::fs::write(&config, "").map_err(|e| BenchError::io(config.display().to_string(), e))?;
    let logf = File::create(&log).map_err(|e| BenchError::io(log.display().to_string(), e))?;
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns])
        .arg(&launch.binary)
        .arg("--config")
        .arg(&config)
        .arg("--socket")
        .arg(&socket);
    for interface in interfaces {
        cmd.args(["--interface", interface]);
    }
    cmd.args(["--core", &launch.core.to_string()]);
    if launch.idle_sleep_us > 0 {
        cmd.args(["--idle-sleep-us", &launch.idle_sleep_us.to_string()]);
    }
    if let Some(ports) = &launch.masquerade_ports {
        cmd.args(["--masquerade-ports", ports]);
    }
    cmd.args(&launch.extra_args);
    cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(logf);
    let mut daemon = ChildGuard::spawn("flagella-dataplane", &mut cmd)?;
    wait_for(
        "flagella-dataplane's control socket to appear",
        Duration::from_secs(30),
        || {
            daemon.check_alive(&log)?;
            Ok(UnixStream::connect(&socket).is_ok())
        },
    )?;
    daemon.renice(launch.nice)?;
    Ok((daemon, socket))
}

/// `--interface` values for the two pods' host veths of the single-node topology.
pub fn pod_interfaces(topo: &Topology) -> Vec<String> {
    [&topo.a, &topo.b]
        .map(|p| format!("{}=pod", p.host_if))
        .to_vec()
}

impl Flagella {
    /// Starts the dataplane (see [`start_dataplane`]) and connects to its control socket; the
    /// tables are still empty.
    pub fn launch(
        ns: &str,
        interfaces: &[String],
        launch: &DataplaneLaunch,
        dir: &Path,
    ) -> Result<Flagella, BenchError> {
        let (daemon, socket) = start_dataplane(ns, interfaces, launch, dir)?;
        let writer = UnixStream::connect(&socket)
            .map_err(|e| BenchError::io(socket.display().to_string(), e))?;
        writer
            .set_read_timeout(Some(Duration::from_secs(10)))
            .map_err(|e| BenchError::io("control socket timeout", e))?;
        let reader = BufReader::new(
            writer
                .try_clone()
                .map_err(|e| BenchError::io("control socket", e))?,
        );
        Ok(Flagella {
            reader,
            writer,
            daemon,
        })
    }

    /// The `flagella` target: the dataplane on the two pods' host veths, configured.
    pub fn start(
        topo: &Topology,
        launch: &DataplaneLaunch,
        dir: &Path,
    ) -> Result<Flagella, BenchError> {
        let mut f = Flagella::launch(&topo.node, &pod_interfaces(topo), launch, dir)?;
        f.configure(topo)?;
        Ok(f)
    }

    /// The daemon's PID.
    pub fn pid(&self) -> u32 {
        self.daemon.pid()
    }

    /// One request; `Err` unless the reply says `ok`.
    pub(crate) fn call(&mut self, request: Value) -> Result<Value, BenchError> {
        let mut line = request.to_string();
        line.push('\n');
        self.writer
            .write_all(line.as_bytes())
            .map_err(|e| BenchError::io("writing to the control socket", e))?;
        let mut reply = String::new();
        self.reader
            .read_line(&mut reply)
            .map_err(|e| BenchError::io("reading the control socket", e))?;
        let v: Value = serde_json::from_str(&reply)
            .map_err(|e| BenchError::Failed(format!("control reply `{reply}`: {e}")))?;
        if v["ok"] == true {
            Ok(v)
        } else {
            Err(BenchError::Failed(format!(
                "control request {request} -> {v}"
            )))
        }
    }

    /// Node, endpoints (A = 1/identity 1001, B = 2/1002), ipcache, and policy: A may send UDP
    /// to B's sink port (egress), B admits exactly that (ingress).
    fn configure(&mut self, topo: &Topology) -> Result<(), BenchError> {
        self.call(json!({"op": "local_node.set", "name": topo.prefix,
            "router_mac": ROUTER_MAC, "gateway_ipv4": GATEWAY.to_string()}))?;
        for (id, pod) in [(1u32, &topo.a), (2, &topo.b)] {
            let identity = 1000 + id;
            self.call(
                json!({"op": "endpoint.upsert", "id": id, "ifindex": pod.host_ifindex,
                "mac": pod.mac, "ipv4": pod.ip.to_string(), "identity": identity}),
            )?;
            self.call(
                json!({"op": "ipcache.upsert", "prefix": format!("{}/32", pod.ip),
                "identity": identity}),
            )?;
        }
        self.call(
            json!({"op": "policy.update", "endpoint": 1, "direction": "egress",
            "enforced": true,
            "add": [{"identity": 1002, "proto": "udp", "port": SINK_PORT, "action": "allow"}]}),
        )?;
        self.call(
            json!({"op": "policy.update", "endpoint": 2, "direction": "ingress",
            "enforced": true,
            "add": [{"identity": 1001, "proto": "udp", "port": SINK_PORT, "action": "allow"}]}),
        )?;
        Ok(())
    }

    /// The packet threads' CPU time (the workers, `worker-N`).
    pub fn cpu_time(&self) -> Result<CpuTime, BenchError> {
        threads_cpu_time(self.daemon.pid(), "worker-")
    }

    /// The (only) worker's busy time and received packets, from `status`.
    pub fn sample(&mut self) -> Result<WorkerSample, BenchError> {
        let status = self.call(json!({"op": "status"}))?;
        let workers = status["workers"].as_array().cloned().unwrap_or_default();
        let sum = |key: &str| workers.iter().filter_map(|w| w[key].as_u64()).sum::<u64>();
        let io = |key: &str| {
            workers
                .iter()
                .filter_map(|w| w["io"][key].as_u64())
                .sum::<u64>()
        };
        Ok(WorkerSample {
            busy_ns: sum("busy_ns"),
            rx_packets: sum("rx_packets"),
            rx_batches: io("rx_batches"),
            tx_wakeups: io("tx_wakeups"),
            sock_rx_ring_full: io("sock_rx_ring_full"),
            sock_fill_ring_empty: io("sock_fill_ring_empty"),
        })
    }

    /// Drop counters by reason (for the notes when little arrives).
    pub fn drops(&mut self) -> Result<String, BenchError> {
        let status = self.call(json!({"op": "status"}))?;
        Ok(status["counters"]["drops"].to_string())
    }
}

// ------------------------------------------------------------------------------------------
// Open vSwitch

const OVS_SCHEMA: &str = "/usr/share/openvswitch/vswitch.ovsschema";

/// Our own ovsdb-server and ovs-vswitchd.
#[derive(Debug)]
pub struct Ovs {
    dir: PathBuf,
    // Field order is drop order: the switch stops before its database.
    _vswitchd: ChildGuard,
    _ovsdb: ChildGuard,
}

/// Whether the OVS binaries are installed, or what to do.
pub fn ovs_installed() -> Result<(), BenchError> {
    for bin in [
        "ovsdb-server",
        "ovs-vswitchd",
        "ovs-vsctl",
        "ovs-ofctl",
        "ovs-appctl",
    ] {
        if run("sh", &["-c", &format!("command -v {bin}")]).is_err() {
            return Err(BenchError::Unavailable(format!(
                "Open vSwitch is not installed ({bin} missing): apt-get install -y openvswitch-switch"
            )));
        }
    }
    if !Path::new(OVS_SCHEMA).exists() {
        return Err(BenchError::Unavailable(format!("{OVS_SCHEMA} is missing")));
    }
    Ok(())
}

impl Ovs {
    pub fn start(
        topo: &Topology,
        dir: &Path,
        core: usize,
        conntrack: bool,
        nice: i32,
    ) -> Result<Ovs, BenchError> {
        ovs_installed()?;
        let dir = dir.join("ovs");
        std::fs::create_dir_all(&dir).map_err(|e| BenchError::io(dir.display().to_string(), e))?;
        let db = dir.join("conf.db");
        let db_s = db.display().to_string();
        run("ovsdb-tool", &["create", &db_s, OVS_SCHEMA])?;
        let remote = format!("unix:{}/db.sock", dir.display());
        let mut ovsdb_cmd = Command::new("ovsdb-server");
        ovsdb_cmd
            .arg(&db_s)
            .arg(format!("--remote=p{remote}"))
            .arg(format!("--unixctl={}/ovsdb-server.ctl", dir.display()))
            .arg(format!("--log-file={}/ovsdb-server.log", dir.display()))
            .arg(format!("--pidfile={}/ovsdb-server.pid", dir.display()));
        quiet_with_env(&mut ovsdb_cmd, &dir);
        let ovsdb = ChildGuard::spawn("ovsdb-server", &mut ovsdb_cmd)?;
        let db_sock = dir.join("db.sock");
        wait_for(
            "ovsdb-server's socket to appear",
            Duration::from_secs(10),
            || Ok(db_sock.exists()),
        )?;
        let mut ovs = OvsPartial {
            remote,
            ovsdb: Some(ovsdb),
        };
        ovs.vsctl(&["--no-wait", "init"])?;
        ovs.vsctl(&[
            "--no-wait",
            "set",
            "Open_vSwitch",
            ".",
            &format!("other_config:pmd-cpu-mask=0x{:x}", 1u64 << core.min(63)),
        ])?;
        let vlog = dir.join("ovs-vswitchd.log");
        let mut vs_cmd = Command::new("ip");
        vs_cmd
            .args(["netns", "exec", &topo.node, "ovs-vswitchd", &ovs.remote])
            .arg(format!("--unixctl={}/ovs-vswitchd.ctl", dir.display()))
            .arg(format!("--log-file={}", vlog.display()))
            .arg(format!("--pidfile={}/ovs-vswitchd.pid", dir.display()));
        quiet_with_env(&mut vs_cmd, &dir);
        let mut vswitchd = ChildGuard::spawn("ovs-vswitchd", &mut vs_cmd)?;
        let ctl = dir.join("ovs-vswitchd.ctl");
        wait_for(
            "ovs-vswitchd's control socket to appear",
            Duration::from_secs(20),
            || {
                vswitchd.check_alive(&vlog)?;
                Ok(ctl.exists())
            },
        )?;
        let ovsdb = ovs.ovsdb.take();
        let ovs = Ovs {
            dir,
            _vswitchd: vswitchd,
            _ovsdb: ovsdb.ok_or_else(|| BenchError::Failed("ovsdb-server lost".into()))?,
        };
        ovs.configure(topo, conntrack).map_err(|e| {
            let log = std::fs::read_to_string(&vlog).unwrap_or_default();
            BenchError::Failed(format!(
                "{e}\novs-vswitchd.log (last lines):\n{}",
                tail(&log, 15)
            ))
        })?;
        // After the ports exist, so the PMD thread is among the threads reniced.
        ovs._vswitchd.renice(nice)?;
        Ok(ovs)
    }

    /// The PMD threads' CPU time (`pmd-cNN/id:M`).
    pub fn cpu_time(&self) -> Result<CpuTime, BenchError> {
        threads_cpu_time(self._vswitchd.pid(), "pmd")
    }

    fn remote(&self) -> String {
        format!("unix:{}/db.sock", self.dir.display())
    }

    fn vsctl(&self, args: &[&str]) -> Result<String, BenchError> {
        let db = format!("--db={}", self.remote());
        let mut all = vec![db.as_str(), "--timeout=20"];
        all.extend_from_slice(args);
        run("ovs-vsctl", &all)
    }

    fn ofctl(&self, args: &[&str]) -> Result<String, BenchError> {
        // ovs-ofctl finds the bridge's management socket in OVS_RUNDIR.
        let out = Command::new("ovs-ofctl")
            .env("OVS_RUNDIR", &self.dir)
            .args(args)
            .output()
            .map_err(|e| BenchError::io("running ovs-ofctl", e))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(BenchError::Command {
                command: format!("ovs-ofctl {}", args.join(" ")),
                detail: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            })
        }
    }

    /// `ovs-appctl -t <our vswitchd> args...`.
    pub fn appctl(&self, args: &[&str]) -> Result<String, BenchError> {
        let target = format!("{}/ovs-vswitchd.ctl", self.dir.display());
        let mut all = vec!["-t", target.as_str()];
        all.extend_from_slice(args);
        run("ovs-appctl", &all)
    }

    fn configure(&self, topo: &Topology, conntrack: bool) -> Result<(), BenchError> {
        let br = "fbnbr0";
        self.vsctl(&[
            "add-br",
            br,
            "--",
            "set",
            "bridge",
            br,
            "datapath_type=netdev",
        ])?;
        for (ofport, pod) in [(1, &topo.a), (2, &topo.b)] {
            self.vsctl(&[
                "add-port",
                br,
                &pod.host_if,
                "--",
                "set",
                "interface",
                &pod.host_if,
                "type=afxdp",
                "options:xdp-mode=native",
                &format!("ofport_request={ofport}"),
            ])?;
        }
        // The ports must come up as AF_XDP; an error here is the precise reason they did not.
        for pod in [&topo.a, &topo.b] {
            let err = self.vsctl(&["get", "interface", &pod.host_if, "error"])?;
            let err = err.trim();
            if !err.is_empty() && err != "[]" {
                return Err(BenchError::Unavailable(format!(
                    "OVS AF_XDP port {} did not come up: {err}",
                    pod.host_if
                )));
            }
        }
        self.ofctl(&["del-flows", br])?;
        for flow in ovs_flows(topo, conntrack) {
            self.ofctl(&["add-flow", br, &flow])?;
        }
        Ok(())
    }

    /// Clears the PMD statistics (start of the window).
    pub fn clear_pmd_stats(&self) -> Result<(), BenchError> {
        self.appctl(&["dpif-netdev/pmd-stats-clear"]).map(|_| ())
    }

    /// The PMD statistics since the last clear.
    pub fn pmd_stats(&self) -> Result<String, BenchError> {
        self.appctl(&["dpif-netdev/pmd-stats-show"])
    }
}

/// ovsdb-server until ovs-vswitchd is up (so a failure in between still stops it).
struct OvsPartial {
    remote: String,
    ovsdb: Option<ChildGuard>,
}

impl OvsPartial {
    fn vsctl(&self, args: &[&str]) -> Result<String, BenchError> {
        let db = format!("--db={}", self.remote);
        let mut all = vec![db.as_str(), "--timeout=20"];
        all.extend_from_slice(args);
        run("ovs-vsctl", &all)
    }
}

fn quiet_with_env(cmd: &mut Command, dir: &Path) {
    cmd.env("OVS_RUNDIR", dir)
        .env("OVS_DBDIR", dir)
        .env("OVS_LOGDIR", dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
}

/// OpenFlow rules routing A <-> B like a router would (source MAC = gateway, destination MAC
/// = the pod's, TTL - 1). With `conntrack`: every IP packet goes through `ct()` in zone 1,
/// new connections are committed, established ones pass (as a stateful firewall does).
pub fn ovs_flows(topo: &Topology, conntrack: bool) -> Vec<String> {
    let route = |pod: &crate::topo::Pod, port: u32| {
        format!(
            "mod_dl_src:{ROUTER_MAC},mod_dl_dst:{},dec_ttl,output:{port}",
            pod.mac
        )
    };
    let to_b = route(&topo.b, 2);
    let to_a = route(&topo.a, 1);
    let (a, b) = (topo.a.ip, topo.b.ip);
    if !conntrack {
        return vec![
            format!("table=0,priority=10,in_port=1,ip,nw_dst={b},actions={to_b}"),
            format!("table=0,priority=10,in_port=2,ip,nw_dst={a},actions={to_a}"),
            "table=0,priority=0,actions=drop".to_string(),
        ];
    }
    vec![
        "table=0,priority=10,ip,ct_state=-trk,actions=ct(zone=1,table=1)".to_string(),
        "table=0,priority=0,actions=drop".to_string(),
        format!("table=1,priority=10,in_port=1,ip,nw_dst={b},ct_state=+trk+new,actions=ct(commit,zone=1),{to_b}"),
        format!("table=1,priority=10,in_port=1,ip,nw_dst={b},ct_state=+trk+est,actions={to_b}"),
        format!("table=1,priority=10,in_port=2,ip,nw_dst={a},ct_state=+trk+est,actions={to_a}"),
        "table=1,priority=0,actions=drop".to_string(),
    ]
}

/// From `pmd-stats-show`: (packets received, avg processing cycles per packet) summed/weighted
/// over the PMD threads.
pub fn parse_pmd_stats(text: &str) -> Option<(u64, f64)> {
    let mut packets = 0u64;
    let mut weighted = 0f64;
    let mut current = 0u64;
    for line in text.lines().map(str::trim) {
        if let Some(v) = line.strip_prefix("packets received:") {
            current = v.trim().parse().ok()?;
            packets += current;
        } else if let Some(v) = line.strip_prefix("avg processing cycles per packet:") {
            let cycles: f64 = v.split_whitespace().next()?.parse().ok()?;
            weighted += cycles * current as f64;
        }
    }
    (packets > 0).then(|| (packets, weighted / packets as f64))
}

/// Runs in the node namespace: used by `forward` for diagnostics only.
pub fn node_links(topo: &Topology) -> String {
    exec_in(&topo.node, "ip", &["-br", "link"]).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pmd_stats_weighted_by_packets() {
        let text = "pmd thread numa_id 0 core_id 1:\n  packets received: 300\n  \
            avg cycles per packet: 900.00 (1/2)\n  avg processing cycles per packet: 1000.00 (3/4)\n\
            pmd thread numa_id 0 core_id 0:\n  packets received: 100\n  \
            avg processing cycles per packet: 2000.00 (3/4)\n";
        assert_eq!(parse_pmd_stats(text), Some((400, 1250.0)));
        assert_eq!(
            parse_pmd_stats("main thread:\n  packets received: 0\n"),
            None
        );
    }

    #[test]
    fn tail_keeps_last_lines() {
        assert_eq!(tail("a\nb\nc", 2), "b\nc");
        assert_eq!(tail("a", 5), "a");
    }
}
