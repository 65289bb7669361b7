//! `cni-add`: CNI ADD latency (issue 15, "Performance"): for `--pods` pods, the time from the
//! runtime's call of the plugin until the pod can send (its first datagram arrives at another
//! pod), `flagella-cni` against Debian's `ptp` + `host-local` (containernetworking-plugins)
//! in the same run, pod by pod alternately, so both see the same machine.
//!
//! Everything runs inside a node namespace `fca-<pid>` (removed on exit, pass, failure or
//! SIGINT, with every pod namespace): this process's worker thread enters it (`setns`), so
//! etcd, `flagella-control` (the agent, whose IPAM gives the addresses), `flagella-dataplane`
//! (no pod interface at start: the agent adds each new endpoint's, `interface.add`) and the
//! plugins, all started from that thread, live there and nothing touches the root namespace.
//!
//! Per plugin, a receiver pod is added first (not timed) with a UDP sink. Then, per pod: a
//! fresh namespace; `t0`; the plugin runs as a runtime runs it (`CNI_*` variables, the
//! configuration on stdin); `t_add` when it exits; a thread in the pod sends a datagram
//! naming the pod to the receiver every millisecond until the sink has it (`t_send`). Reported:
//! ADD (`t_add - t0`, the plugin's own time) and ADD-to-send (`t_send - t0`), p50/p99/max.

use std::io::Write;
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::cli::CniAddArgs;
use crate::converge::{default_control, Summary};
use crate::etcd::{Etcd, EtcdServer};
use crate::forward::{is_root, ScratchDir};
use crate::probe::{enter_netns, now_ns};
use crate::targets::{default_dataplane, start_dataplane, ChildGuard, DataplaneLaunch};
use crate::topo::{exec_in, Namespaces};
use crate::BenchError;

/// Debian's containernetworking-plugins.
pub const CNI_BIN_DIR: &str = "/usr/lib/cni";
/// The agent's pod CIDR for this node (flagella-cni's addresses).
const FLAGELLA_CIDR: &str = "10.93.0.0/24";
/// host-local's subnet (ptp's addresses).
const PTP_SUBNET: &str = "10.94.0.0/24";
/// The receivers' UDP port.
const SINK_PORT: u16 = 7300;
/// How long a pod may take to be able to send before the run gives up on it.
const SEND_TIMEOUT: Duration = Duration::from_secs(30);

/// The default flagella-cni: next to this binary.
pub fn default_cni() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join("flagella-cni")))
        .unwrap_or_else(|| PathBuf::from("flagella-cni"))
}

/// One plugin's figures, in milliseconds.
#[derive(Clone, Debug, Default)]
pub struct PluginResult {
    pub name: &'static str,
    pub add_ms: Vec<f64>,
    pub send_ms: Vec<f64>,
    pub failures: Vec<String>,
}

/// The plugins compared: how each is called.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Plugin {
    Flagella,
    Ptp,
}

impl Plugin {
    fn name(self) -> &'static str {
        match self {
            Plugin::Flagella => "flagella-cni",
            Plugin::Ptp => "ptp + host-local",
        }
    }
}

/// Runs the benchmark and returns its report.
pub fn cni_add(args: &CniAddArgs) -> Result<String, BenchError> {
    if !is_root() {
        return Err(BenchError::NotRoot { what: "cni-add" });
    }
    let bins = Binaries::find(args)?;
    let pid = std::process::id();
    let prefix = format!("fca-{pid}");
    let dir = ScratchDir(std::env::temp_dir().join(&prefix));
    std::fs::create_dir_all(&dir.0).map_err(|e| BenchError::io(dir.0.display().to_string(), e))?;
    let mut namespaces = Namespaces::default();
    namespaces.add(&prefix)?;
    let pods = usize::try_from(args.pods).unwrap_or(100);
    let work_dir = dir.0.clone();
    let node = prefix.clone();
    // Pod namespaces are added to `namespaces` by the worker: shared through a channel of
    // names, deleted here after the worker returned (or failed).
    let (names_tx, names_rx) = std::sync::mpsc::channel::<String>();
    let worker = thread::spawn(move || -> Result<Vec<PluginResult>, BenchError> {
        enter_netns(&node)?;
        let mut run = Run::start(&node, &work_dir, &bins, pods, names_tx)?;
        run.measure(pods)
    });
    let results = worker
        .join()
        .map_err(|_| BenchError::Failed("the cni-add worker panicked".into()));
    for name in names_rx.try_iter() {
        namespaces.adopt(&name);
    }
    let results = results??;
    Ok(render(&results, pods))
}

/// The binaries a run needs, checked before anything is built.
#[derive(Clone, Debug)]
struct Binaries {
    cni: PathBuf,
    control: PathBuf,
    dataplane: PathBuf,
    ptp: PathBuf,
}

impl Binaries {
    fn find(args: &CniAddArgs) -> Result<Binaries, BenchError> {
        let b = Binaries {
            cni: args.cni.clone().unwrap_or_else(default_cni),
            control: args.control.clone().unwrap_or_else(default_control),
            dataplane: args.dataplane.clone().unwrap_or_else(default_dataplane),
            ptp: Path::new(CNI_BIN_DIR).join("ptp"),
        };
        let missing = |p: &Path, fix: &str| {
            (!p.exists())
                .then(|| BenchError::Unavailable(format!("{} not found: {fix}", p.display())))
        };
        let checks = [
            missing(&b.cni, "cargo build --release -p control --bin flagella-cni (or pass --cni)"),
            missing(&b.control, "cargo build --release -p control --bin flagella-control (or pass --control)"),
            missing(&b.dataplane, "cargo build --release -p dataplane --features afxdp --bin flagella-dataplane (or pass --dataplane)"),
            missing(&b.ptp, "apt-get install containernetworking-plugins"),
            missing(&Path::new(CNI_BIN_DIR).join("host-local"), "apt-get install containernetworking-plugins"),
        ];
        match checks.into_iter().flatten().next() {
            Some(e) => Err(e),
            None => Ok(b),
        }
    }
}

/// What runs in the node namespace: etcd, the dataplane, the agent, the two receivers.
struct Run {
    node: String,
    dir: PathBuf,
    bins: Binaries,
    etcd_url: String,
    names: std::sync::mpsc::Sender<String>,
    sinks: Vec<(Plugin, Ipv4Addr, Sink)>,
    // Dropped last, in this order: the agent, the client, the dataplane, etcd.
    _agent: ChildGuard,
    _etcd_client: Etcd,
    _dataplane: ChildGuard,
    _etcd: EtcdServer,
}

impl Run {
    fn start(
        node: &str,
        dir: &Path,
        bins: &Binaries,
        pods: usize,
        names: std::sync::mpsc::Sender<String>,
    ) -> Result<Run, BenchError> {
        let etcd_server = EtcdServer::start(node, dir)?;
        let mut etcd = Etcd::connect(std::slice::from_ref(&etcd_server.url))?;
        etcd.put(
            &format!("nodes/{node}"),
            &json!({"underlay_ip": "192.0.2.1", "pod_cidrs": [FLAGELLA_CIDR], "tunnel": "vxlan"})
                .to_string(),
        )?;
        etcd.put("namespaces/bench", "{}")?;
        exec_in(node, "sysctl", &["-qw", "net.ipv4.ip_forward=1"])?;
        let launch = DataplaneLaunch {
            binary: bins.dataplane.clone(),
            core: 1,
            nice: 0,
            idle_sleep_us: 100,
            masquerade_ports: None,
            extra_args: vec![
                "--hot-interfaces".into(),
                (pods + 8).to_string(),
                "--metrics-address".into(),
                "off".into(),
                "--monitor-socket".into(),
                "off".into(),
            ],
        };
        let (dataplane, socket) = start_dataplane(node, &[], &launch, dir)?;
        let log = dir.join("control.log");
        let logf = std::fs::File::create(&log)
            .map_err(|e| BenchError::io(log.display().to_string(), e))?;
        let agent = ChildGuard::spawn(
            "flagella-control",
            Command::new("ip")
                .args(["netns", "exec", node])
                .arg(&bins.control)
                .arg("--etcd")
                .arg(&etcd_server.url)
                .args(["--node", node])
                .arg("--dataplane-socket")
                .arg(&socket)
                .arg("--status-file")
                .arg(dir.join("control-status.json"))
                .args(["--metrics-address", "off"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(logf),
        )?;
        let mut run = Run {
            node: node.to_string(),
            dir: dir.to_path_buf(),
            bins: bins.clone(),
            etcd_url: etcd_server.url.clone(),
            names,
            sinks: Vec::new(),
            _agent: agent,
            _etcd_client: etcd,
            _dataplane: dataplane,
            _etcd: etcd_server,
        };
        for plugin in [Plugin::Flagella, Plugin::Ptp] {
            let ns = run.pod_namespace(plugin, "recv")?;
            let ip = run.add(plugin, &ns, "recv")?;
            let sink = Sink::start(&ns, pods)?;
            run.sinks.push((plugin, ip, sink));
        }
        Ok(run)
    }

    /// Every pod, the two plugins alternately.
    fn measure(&mut self, pods: usize) -> Result<Vec<PluginResult>, BenchError> {
        let mut results: Vec<PluginResult> = [Plugin::Flagella, Plugin::Ptp]
            .map(|p| PluginResult {
                name: p.name(),
                ..PluginResult::default()
            })
            .to_vec();
        for k in 0..pods {
            for (index, plugin) in [Plugin::Flagella, Plugin::Ptp].into_iter().enumerate() {
                if crate::signals::stopping() {
                    return Err(BenchError::Interrupted);
                }
                let r = &mut results[index];
                match self.one_pod(plugin, k) {
                    Ok((add, send)) => {
                        r.add_ms.push(add);
                        r.send_ms.push(send);
                    }
                    Err(e) => r.failures.push(format!("pod {k}: {e}")),
                }
            }
            if (k + 1) % 10 == 0 {
                eprintln!("   {} pods of each plugin added", k + 1);
            }
        }
        Ok(results)
    }

    /// One pod of `plugin`: ADD, then its first datagram at the receiver; (ADD ms, send ms).
    fn one_pod(&mut self, plugin: Plugin, k: usize) -> Result<(f64, f64), BenchError> {
        let name = format!("p{k}");
        let ns = self.pod_namespace(plugin, &name)?;
        let (receiver, arrived) = self
            .sinks
            .iter()
            .find(|(p, _, _)| *p == plugin)
            .map(|(_, ip, sink)| (*ip, sink.slot(k)))
            .ok_or_else(|| BenchError::Failed("no receiver".into()))?;
        let t0 = now_ns();
        self.add(plugin, &ns, &name)?;
        let t_add = now_ns();
        send_until_arrived(&ns, receiver, k, arrived.clone())?;
        let t_send = arrived.load(Ordering::SeqCst);
        let ms = |t: u64| t.saturating_sub(t0) as f64 / 1e6;
        Ok((ms(t_add), ms(t_send)))
    }

    /// A fresh pod namespace (deleted with the run).
    fn pod_namespace(&self, plugin: Plugin, name: &str) -> Result<String, BenchError> {
        let tag = match plugin {
            Plugin::Flagella => "f",
            Plugin::Ptp => "p",
        };
        let ns = format!("{}-{tag}{name}", self.node);
        crate::topo::run("ip", &["netns", "add", &ns])?;
        let _ = self.names.send(ns.clone());
        Ok(ns)
    }

    /// CNI ADD of container `name` in namespace `ns`, as a runtime calls it; the pod's IPv4.
    fn add(&self, plugin: Plugin, ns: &str, name: &str) -> Result<Ipv4Addr, BenchError> {
        let (binary, config) = match plugin {
            Plugin::Flagella => (
                &self.bins.cni,
                json!({
                    "cniVersion": "1.1.0", "name": "flagella", "type": "flagella-cni",
                    "etcdEndpoints": [self.etcd_url], "node": self.node,
                    "addressTimeoutSeconds": 20,
                }),
            ),
            Plugin::Ptp => (
                &self.bins.ptp,
                json!({
                    "cniVersion": "1.0.0", "name": format!("ptp-{}", self.node), "type": "ptp",
                    "ipam": {"type": "host-local", "subnet": PTP_SUBNET,
                             "dataDir": self.dir.join("host-local")},
                }),
            ),
        };
        let id = format!("{}{}", self.node, ns.rsplit('-').next().unwrap_or(name));
        let out = invoke(
            &self.node,
            binary,
            &[
                ("CNI_COMMAND", "ADD"),
                ("CNI_CONTAINERID", &id),
                ("CNI_NETNS", &format!("/run/netns/{ns}")),
                ("CNI_IFNAME", "eth0"),
                (
                    "CNI_ARGS",
                    &format!("IgnoreUnknown=1;K8S_POD_NAMESPACE=bench;K8S_POD_NAME={name}"),
                ),
            ],
            &config,
        )?;
        result_ipv4(&out).ok_or_else(|| {
            BenchError::Failed(format!(
                "{} ADD printed no IPv4 address: {out}",
                plugin.name()
            ))
        })
    }
}

/// Runs a CNI plugin as a runtime does (environment and stdin) in namespace `node`; its
/// stdout, or its error. Through `ip netns exec`, which also mounts the namespace's own
/// `/sys` (plugins read `/sys/class/net`), for both plugins alike.
fn invoke(
    node: &str,
    binary: &Path,
    env: &[(&str, &str)],
    config: &Value,
) -> Result<Value, BenchError> {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", node])
        .arg(binary)
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("CNI_PATH", CNI_BIN_DIR)
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .map_err(|e| BenchError::io(format!("running {}", binary.display()), e))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(config.to_string().as_bytes())
            .map_err(|e| BenchError::io("writing the CNI configuration", e))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| BenchError::io(format!("waiting for {}", binary.display()), e))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(BenchError::Failed(format!(
            "{} exited {}: {stdout} {}",
            binary.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    serde_json::from_str(&stdout)
        .map_err(|e| BenchError::Failed(format!("{}'s result `{stdout}`: {e}", binary.display())))
}

/// The first IPv4 address of a CNI result (`ips[].address`, `a.b.c.d/len`).
pub fn result_ipv4(result: &Value) -> Option<Ipv4Addr> {
    result["ips"]
        .as_array()?
        .iter()
        .filter_map(|ip| ip["address"].as_str()?.split('/').next()?.parse().ok())
        .next()
}

/// From pod `ns`: a datagram naming pod `k` to the receiver every millisecond until the
/// receiver's slot for `k` is set (or [`SEND_TIMEOUT`]).
fn send_until_arrived(
    ns: &str,
    receiver: Ipv4Addr,
    k: usize,
    arrived: Arc<AtomicU64>,
) -> Result<(), BenchError> {
    let ns = ns.to_string();
    thread::spawn(move || -> Result<(), BenchError> {
        enter_netns(&ns)?;
        let socket =
            UdpSocket::bind("0.0.0.0:0").map_err(|e| BenchError::io("pod's UDP socket", e))?;
        let payload = (k as u64).to_be_bytes();
        let deadline = Instant::now() + SEND_TIMEOUT;
        while arrived.load(Ordering::SeqCst) == 0 {
            if Instant::now() > deadline {
                return Err(BenchError::Failed(format!(
                    "pod {k} could not send to {receiver} within {SEND_TIMEOUT:?}"
                )));
            }
            // Errors (no route yet, no neighbour yet) are what is being waited out.
            let _ = socket.send_to(&payload, SocketAddrV4::new(receiver, SINK_PORT));
            thread::sleep(Duration::from_millis(1));
        }
        Ok(())
    })
    .join()
    .map_err(|_| BenchError::Failed("a sender thread panicked".into()))?
}

/// A receiver pod's UDP sink: the arrival time of each pod's first datagram, by pod number.
struct Sink {
    slots: Arc<Vec<Arc<AtomicU64>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Sink {
    fn start(ns: &str, pods: usize) -> Result<Sink, BenchError> {
        let slots: Arc<Vec<Arc<AtomicU64>>> =
            Arc::new((0..pods).map(|_| Arc::new(AtomicU64::new(0))).collect());
        let stop = Arc::new(AtomicBool::new(false));
        let (ns, slots_t, stop_t) = (ns.to_string(), Arc::clone(&slots), Arc::clone(&stop));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = thread::spawn(move || {
            let socket = enter_netns(&ns).and_then(|()| {
                let s = UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, SINK_PORT))
                    .map_err(|e| BenchError::io("the receiver's socket", e))?;
                s.set_read_timeout(Some(Duration::from_millis(50)))
                    .map_err(|e| BenchError::io("the receiver's socket", e))?;
                Ok(s)
            });
            let socket = match socket {
                Ok(s) => {
                    let _ = ready_tx.send(Ok(()));
                    s
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            let mut buf = [0u8; 64];
            while !stop_t.load(Ordering::Relaxed) {
                let Ok(n) = socket.recv(&mut buf) else {
                    continue;
                };
                let Some(bytes) = buf.get(..8).filter(|_| n == 8) else {
                    continue;
                };
                let mut k = [0u8; 8];
                k.copy_from_slice(bytes);
                let slot = usize::try_from(u64::from_be_bytes(k))
                    .ok()
                    .and_then(|k| slots_t.get(k));
                if let Some(slot) = slot {
                    let _ = slot.compare_exchange(0, now_ns(), Ordering::SeqCst, Ordering::SeqCst);
                }
            }
        });
        ready_rx
            .recv()
            .map_err(|_| BenchError::Failed("the receiver thread died".into()))??;
        Ok(Sink {
            slots,
            stop,
            thread: Some(thread),
        })
    }

    /// Pod `k`'s arrival time (0 until it arrived).
    fn slot(&self, k: usize) -> Arc<AtomicU64> {
        self.slots
            .get(k)
            .cloned()
            .unwrap_or_else(|| Arc::new(AtomicU64::new(0)))
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The table: per plugin, ADD and ADD-to-send p50/p99/max.
pub fn render(results: &[PluginResult], pods: usize) -> String {
    let mut out = format!(
        "cni-add: {pods} pods per plugin, added one at a time (the plugins alternately)\n\
         | plugin | pods | ADD p50 ms | ADD p99 ms | ADD max ms | ADD -> can send p50 ms | p99 ms | max ms | failures |\n\
         |---|---|---|---|---|---|---|---|---|\n"
    );
    for r in results {
        let add = Summary::of(&r.add_ms).unwrap_or_default();
        let send = Summary::of(&r.send_ms).unwrap_or_default();
        out.push_str(&format!(
            "| {} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {} |\n",
            r.name,
            add.n,
            add.p50,
            add.p99,
            add.max,
            send.p50,
            send.p99,
            send.max,
            r.failures.len()
        ));
    }
    for r in results {
        for f in r.failures.iter().take(3) {
            out.push_str(&format!("{}: {f}\n", r.name));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_address_comes_from_the_results_first_ipv4() {
        let r = json!({"ips": [{"address": "fd00::5/64"}, {"address": "10.93.0.7/24", "gateway": "10.93.0.1"}]});
        assert_eq!(result_ipv4(&r), Some(Ipv4Addr::new(10, 93, 0, 7)));
        assert_eq!(result_ipv4(&json!({"ips": []})), None);
        assert_eq!(result_ipv4(&json!({"code": 3})), None);
    }
}
