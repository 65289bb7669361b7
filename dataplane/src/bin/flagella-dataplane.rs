//! `flagella-dataplane`: the node's packet path as a process.
//!
//! Start order (each step only after the previous one succeeded; a failure undoes what was
//! done, in reverse, by dropping it):
//! 1. configuration: the TOML file (optional when flags name the interfaces), then the flags;
//! 2. preflight: root, AF_XDP, the interfaces, the memlock limit;
//! 3. the host interface (unless `--host-interface off`): its veth pair created when absent and
//!    brought up; its dataplane side is then served like a pod interface
//!    (`dataplane::daemon::host_link`);
//! 4. tables: empty, with the uplink's index, MAC and MTU read from the interface, and the
//!    host interface's;
//! 5. one XDP program per interface, attached through a `bpf_link` this process owns, so the
//!    kernel detaches it when the process dies, even on `kill -9`; or, with `bpf_pin_dir`
//!    (`restart.rs`), pinned in bpffs: it stays when the process goes, drops what no socket
//!    serves, and the next process takes it over in place. The uplink's program
//!    starts with the uplink filter on (unless configured off): it hands the dataplane only
//!    tunnel traffic to the node and the destinations it owns, none yet;
//! 6. workers (their UMEMs and sockets), each socket registered in the XSKMAP of its
//!    interface's program, then one busy-polling thread per worker;
//! 7. the uplink-sync thread (with an uplink and its filter on), which keeps the uplink
//!    program's underlay address and owned prefixes in step with the published tables
//!    (`dataplane::daemon::host_path`);
//! 8. the control socket, served on its own thread;
//! 9. the `/metrics` server (unless `--metrics-address off`);
//! 10. with an uplink, the next-hop resolver thread (`dataplane::nexthop`): the MACs of the
//!     peer nodes' and the default route's next hops, from the kernel's routes and neighbours;
//! 11. with a host interface, the host-link-sync thread: the kernel side's gateway addresses,
//!     routes to pods and MTU, in step with the tables;
//! 12. wait for SIGTERM or SIGINT (or a thread that stopped on an error).
//!
//! Stop order: the shared shutdown flag stops the workers, the uplink-sync thread and the
//! control server; the threads are joined; the server removes its socket file; the XDP programs
//! are detached, unless pinned (they stay, dropping, for the next process).
//!
//! Exit codes (systemd reads them): 0 clean stop, 1 runtime error, 2 usage, configuration or
//! preflight error (restarting will not help until something is changed).

use std::fs;
use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use clap::{ArgAction, Parser, ValueEnum};
use dataplane::api::flow_export::{ExportConfig, ExportError, ExportStats, FlowExporter};
use dataplane::api::metrics::{self, KernelCounters, MetricsError, MetricsServer, Render};
use dataplane::api::monitor::{EventHub, MonitorError, MonitorServer, MonitorStats};
use dataplane::api::{ControlServer, ServerError, SocketAccess, StatsRegistry, TablesHandle};
use dataplane::daemon::config::{
    ConfigError, DaemonConfig, InterfaceConfig, Role, WorkerSection, XdpMode, DEFAULT_CONFIG_PATH,
};
use dataplane::daemon::host_link;
use dataplane::daemon::host_path::{self, OwnershipMaps};
use dataplane::daemon::masquerade::{self, MasqueradeError};
use dataplane::daemon::preflight::{self, PreflightError};
use dataplane::daemon::uplink_frontends::UplinkPort;
use dataplane::io::{IoError, PortSpec, SocketStatsReader, Worker, WorkerConfig, XskConfig};
use dataplane::nexthop;
use dataplane::nexthop::netlink::{Netlink, NetlinkError};
use dataplane::pipeline::event_ring::EventConfig;
use dataplane::pipeline::flow_owner::FlowOwner;
use dataplane::pipeline::handoff::{mesh, Handoff};
use dataplane::pipeline::{MasqueradeConfig, PipelineConfig};
use dataplane::tables::conntrack::CtConfig;
use dataplane::tables::maglev::{DAEMON_SEED, DEFAULT_M};
use dataplane::tables::services::{ServiceError, Services};
use dataplane::tables::{HostLink, LocalNode, Tables, TunnelPorts};
use dataplane::{MacAddr, Prefix};
use xdp_redirect::{
    AttachMode, OwnedPort, OwnedPrefix, PortProtocolError, PrefixLengthError, RedirectConfig,
    XdpAttachment, XdpError, XdpProgram,
};

/// Set by SIGTERM/SIGINT (and by the main thread when a thread fails); every thread polls it.
static SHUTDOWN: AtomicBool = AtomicBool::new(false);

/// Set by SIGHUP: the flow export reopens its file (after logrotate) or reconnects.
static REOPEN_FLOW_EXPORT: AtomicBool = AtomicBool::new(false);

/// How often the main thread looks at the flag and at its threads.
const WAIT_INTERVAL: Duration = Duration::from_millis(100);

/// Counter publication to the control socket's `status`: every this many worker passes.
const PUBLISH_EVERY: u32 = 1024;

const ABOUT: &str = "Flagella's dataplane: pod traffic through AF_XDP and a user-space pipeline";

const LONG_ABOUT: &str = "\
Flagella's dataplane: attaches a small XDP program to each configured interface, receives the
traffic of pods (and of the uplink) in AF_XDP sockets, and runs it through the Flagella pipeline
(identity, conntrack, network policy, service load balancing, routing, VXLAN/Geneve) in
busy-polling worker threads. It starts with empty tables: the node agent (or you) fills them over
the control socket (newline-delimited JSON; see docs/control-socket.md):

    echo '{\"op\":\"status\"}' | socat - UNIX-CONNECT:/run/flagella/dataplane.sock

Configuration comes from a TOML file (see --config) and these flags, which win over the file.
Example /etc/flagella/dataplane.toml:

    socket = \"/run/flagella/dataplane.sock\"
    batch_size = 64
    xdp_mode = \"native\"
    [[interface]]
    name = \"eth1\"
    role = \"uplink\"
    [[interface]]
    name = \"lxc-pod1\"
    role = \"pod\"
    [[worker]]
    core = 1
    interfaces = [\"eth1\", \"lxc-pod1\"]

Pods reach their node, and the node its pods, through a veth pair the dataplane creates in its
network namespace (flg_host, the host's side, with the pods' gateway addresses and routes to the
pods; flg_net, the dataplane's): see --host-interface.

Runs as root. SIGHUP reopens the flow export's file (after logrotate). Stops cleanly on SIGTERM or SIGINT.
With the programs pinned (--bpf-pin-dir, on by default where /sys/fs/bpf is bpffs) they stay on
the interfaces when the process stops or is killed, dropping the pods' frames (counted) until the
next process takes them over with the connection tracking kept in --state-dir; --uninstall
removes them. Unpinned, the programs are detached even when the process is killed (the kernel
owns their links through this process's file descriptors).";

const AFTER_HELP: &str = "\
Exit codes:
  0  stopped cleanly (SIGTERM or SIGINT)
  1  runtime error (attaching XDP, opening sockets, a worker or the control socket failed)
  2  usage, configuration or preflight error (not root, no AF_XDP, a missing interface, memlock
     too low): fix what the message says before starting again

Example (two pods and an uplink, no configuration file):
  flagella-dataplane --interface eth1=uplink --interface lxc1=pod --interface lxc2=pod \\
      --socket /run/flagella/dataplane.sock";

#[derive(Debug, Parser)]
#[command(
    name = "flagella-dataplane",
    version,
    about = ABOUT,
    long_about = LONG_ABOUT,
    after_help = AFTER_HELP
)]
struct Cli {
    /// Configuration file (TOML). Without this flag, /etc/flagella/dataplane.toml is read when it
    /// exists; a missing default file is fine when --interface flags name the interfaces.
    #[arg(long, value_name = "PATH")]
    config: Option<PathBuf>,

    /// An interface and its role, repeatable: `pod` for the host side of a pod's veth (the
    /// dataplane answers the pod's ARP for its gateway), `uplink` for the node's link to other
    /// nodes (ARP and the host's own traffic stay with the kernel). Adds to the file's
    /// interfaces, or changes the role of one the file lists.
    #[arg(long = "interface", value_name = "NAME=pod|uplink", value_parser = parse_interface)]
    interfaces: Vec<(String, Role)>,

    /// Control socket path (mode 0600); default from the file, else /run/flagella/dataplane.sock.
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,

    /// The monitor socket (the control socket's mode), which streams drop, policy-verdict and trace events as
    /// JSON lines to `flagella monitor` (docs/monitor.md); `off` to serve none. Default: beside
    /// the control socket, named after it (`dataplane.sock` -> `dataplane-monitor.sock`).
    #[arg(long, value_name = "PATH|off")]
    monitor_socket: Option<String>,

    /// One policy-verdict event per N flows policy admitted (while someone monitors); 0: none.
    /// Drops are always reported.
    #[arg(long, value_name = "N", default_value_t = 1)]
    monitor_policy_sample: u32,

    /// Also report a trace event for every forwarded frame while someone monitors (costly:
    /// for debugging).
    #[arg(long)]
    monitor_trace: bool,

    /// Events a second sent to monitor subscribers at most (each gets the same ones); the
    /// rest are reported to them as lost (`rate_limited`) and counted in /metrics. Bounds the
    /// CPU the monitor takes from forwarding under a flood of drops. 0: no limit.
    #[arg(long, value_name = "N", default_value_t = dataplane::api::monitor::DEFAULT_RATE)]
    monitor_rate: u32,

    /// Flow export: append the monitor's JSON flows (one a line, as `flagella monitor -o json`)
    /// to `file:PATH` (reopened on SIGHUP or when the path's inode changes, for logrotate), or
    /// write them to a collector's Unix stream socket `unix:PATH` (reconnected every second
    /// while it is away); `off` for none. Lost and rate-limited flows are reported in the
    /// stream and in /metrics. Overrides `flow_export` in the file (default off).
    #[arg(long, value_name = "file:PATH|unix:PATH|off")]
    flow_export: Option<String>,

    /// Flows exported per second at most (default 10000); the rest are counted as
    /// rate-limited. Overrides `flow_export_rate` in the file.
    #[arg(long, value_name = "N")]
    flow_export_rate: Option<u32>,

    /// Export only this event type (repeatable): drop, policy-verdict or trace. Default: all.
    /// Overrides `flow_export_types` in the file.
    #[arg(long = "flow-export-type", value_name = "TYPE")]
    flow_export_types: Vec<String>,

    /// `true`: the control socket is mode 0660, so members of the daemon's group may connect
    /// (run flagella-control as another user in that group: it then cannot signal the
    /// dataplane). `false`: mode 0600, the daemon's user only. Overrides `socket_group_access`
    /// in the file (default false).
    #[arg(long, value_name = "BOOL", action = ArgAction::Set)]
    socket_group_access: Option<bool>,

    /// Frames per batch, 1 to 256 (default 64): larger batches cost less per packet and add
    /// latency under load.
    #[arg(long, value_name = "N")]
    batch_size: Option<usize>,

    /// Pin the worker thread to this CPU (when the file declares several [[worker]] sections,
    /// set `core` in each instead). Default: not pinned.
    #[arg(long, value_name = "N")]
    core: Option<usize>,

    /// Run N workers that share every interface's receive queues (queue q to worker q mod N):
    /// each flow, both directions, is processed by the worker that owns it, whichever queue
    /// its frames arrive on (frames are handed between workers). Every interface needs at least
    /// N queues (`[[interface]] queues`; veth: `ip link add ... numrxqueues N numtxqueues N`),
    /// and --hot-interfaces must be 0. Overrides `workers` in the file (default 1).
    #[arg(long, value_name = "N")]
    workers: Option<usize>,

    /// CPUs to pin the --workers to, comma-separated, one per worker (e.g. `2,3`). Overrides
    /// `cores` in the file. Default: not pinned.
    #[arg(long, value_name = "LIST", value_delimiter = ',')]
    cores: Vec<usize>,

    /// How XDP is attached: `native` (in the driver, fast; the default) or `generic` (works on
    /// any interface, much slower; prints a warning).
    #[arg(long, value_enum, value_name = "MODE")]
    xdp_mode: Option<XdpModeArg>,

    /// Complete the TCP/UDP checksums of frames sent by pods. Pods on veth hand the kernel
    /// "checksum partial" frames (only the pseudo-header sum is filled in) and AF_XDP does not
    /// say so, so without this the receiving pod drops them as corrupt unless every pod turns
    /// checksum offload off (`ethtool -K eth0 tx off`). Only frames from pod interfaces are
    /// touched.
    #[arg(long, value_name = "BOOL", default_value_t = true, action = ArgAction::Set)]
    complete_l4_checksums: bool,

    /// Let idle workers sleep this many microseconds between passes once about 4096 passes in a
    /// row found no frame (0, the default: spin, for the lowest latency). Use it where a
    /// worker must not hold a whole core while the node is idle (small nodes, test clusters);
    /// the first frame after an idle spell waits up to this long.
    #[arg(long, value_name = "MICROSECONDS")]
    idle_sleep_us: Option<u64>,

    /// Pod interfaces the dataplane can take on while running, through `interface.add` on the
    /// control socket (the agent sends it for each new local endpoint: a pod needs no
    /// restart). Each reserves 1024 frames (4 MiB) of the first worker's UMEM at start.
    /// Default 16; 0 fixes the interfaces at start.
    #[arg(long, value_name = "COUNT")]
    hot_interfaces: Option<u32>,

    /// UDP port of VXLAN (default 4789), the same on every node of the cluster: what this node
    /// sends tunnel traffic to, decapsulates, and its uplink hands the dataplane.
    #[arg(long, value_name = "PORT")]
    vxlan_port: Option<u16>,

    /// UDP port of Geneve (default 6081), the same on every node of the cluster.
    #[arg(long, value_name = "PORT")]
    geneve_port: Option<u16>,

    /// Serve Prometheus metrics (`GET /metrics`) on ADDRESS:PORT (default 127.0.0.1:9962, as
    /// Cilium's agent), or `off`. Bound in the dataplane's network namespace.
    #[arg(long, value_name = "ADDRESS:PORT|off")]
    metrics_address: Option<String>,

    /// On the uplink, hand the dataplane only what it owns (tunnel traffic to the node's
    /// underlay address, local pod addresses) and leave everything else — the host's SSH, etcd,
    /// pings — to the kernel. On by default; `false` sends every IP frame of the uplink to the
    /// dataplane, which drops the host's traffic (for a dedicated uplink only). Overrides
    /// `uplink_filter` in the file.
    #[arg(long, value_name = "BOOL", action = ArgAction::Set)]
    uplink_filter: Option<bool>,

    /// The host interface, as Cilium's `cilium_host`: the kernel's side of a veth pair that
    /// the dataplane creates in its network namespace when absent (default `flg_host`), which
    /// gets the pods' gateway addresses and routes to every pod, so that pods reach their node
    /// and the node its pods. `off`: none (a pod's frames for the node are then dropped,
    /// counted `pass_dropped`). Overrides `host_interface` in the file. The pair stays after
    /// the dataplane exits (a restart finds it and corrects its addresses and routes); remove
    /// it with `ip link del flg_host`.
    #[arg(long, value_name = "NAME|off")]
    host_interface: Option<String>,

    /// The dataplane's side of the host interface's veth pair (default `flg_net`), served like a
    /// pod interface. Overrides `host_interface_peer` in the file.
    #[arg(long, value_name = "NAME")]
    host_interface_peer: Option<String>,

    /// `on` (the default when there is an uplink): pods' TCP and UDP flows to the world (what
    /// leaves through the uplink towards the default gateway) leave with the node's underlay
    /// address and a source port from --masquerade-ports, after egress policy decided on the
    /// pod's own address; replies come back to the pod. A pod's ICMP echo to the world is
    /// dropped (counted): its replies could not be told from the host's own. `off`: pods'
    /// packets leave with their own address. Overrides `masquerade` in the file.
    #[arg(long, value_name = "on|off", value_parser = parse_on_off)]
    masquerade: Option<bool>,

    /// Source ports of masqueraded flows, FIRST-LAST (default 61000-65535), shared out among
    /// the workers. Must not overlap the node's net.ipv4.ip_local_port_range (checked at start:
    /// the uplink takes TCP/UDP to these ports from the kernel) nor the NodePort range
    /// (30000-32767). Overrides `masquerade_ports` in the file.
    #[arg(long, value_name = "FIRST-LAST")]
    masquerade_ports: Option<String>,

    /// Where the interfaces' XDP programs and maps are pinned (on bpffs; default
    /// /sys/fs/bpf/flagella), or `off`. Pinned, a program outlives the process: while no
    /// dataplane runs it drops the pods' frames (counted) instead of passing them to the node's
    /// kernel, and the next process takes it over in place (docs/systemd.md, "Upgrades").
    /// Overrides `bpf_pin_dir` in the file.
    #[arg(long, value_name = "DIR|off")]
    bpf_pin_dir: Option<String>,

    /// Where connection tracking is kept across restarts (tmpfs; default /run/flagella), used
    /// while programs are pinned. Overrides `state_dir` in the file.
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,

    /// Remove everything a stopped dataplane leaves on purpose, then exit: the pinned XDP
    /// programs (the pods' interfaces then reach the node's kernel directly) and the
    /// connection-tracking state. Refused while a dataplane runs on the same state directory.
    #[arg(long)]
    uninstall: bool,
}

/// `on` or `off` (also `true`/`false`).
fn parse_on_off(arg: &str) -> Result<bool, String> {
    match arg {
        "on" | "true" => Ok(true),
        "off" | "false" => Ok(false),
        _ => Err(format!("`{arg}`: write on or off")),
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum XdpModeArg {
    Native,
    Generic,
}

/// `NAME=pod|uplink`.
fn parse_interface(arg: &str) -> Result<(String, Role), String> {
    let (name, role) = arg
        .split_once('=')
        .ok_or_else(|| format!("`{arg}`: write NAME=pod or NAME=uplink, e.g. lxc1=pod"))?;
    let role = match role {
        "pod" => Role::Pod,
        "uplink" => Role::Uplink,
        other => return Err(format!("role `{other}`: use `pod` or `uplink`")),
    };
    if name.is_empty() {
        return Err(format!("`{arg}`: the interface name is empty"));
    }
    Ok((name.to_string(), role))
}

/// Why the daemon did not start, or stopped on an error. Each message says what to do.
#[derive(Debug, thiserror::Error)]
enum DaemonError {
    #[error("{0}")]
    Usage(String),
    #[error("configuration: {0}")]
    Config(#[from] ConfigError),
    #[error("{0}")]
    Preflight(#[from] PreflightError),
    #[error("masquerade: {0}")]
    Masquerade(#[from] MasqueradeError),
    #[error("monitor: {0}")]
    Monitor(#[from] MonitorError),
    #[error("flow export: {0}")]
    FlowExport(#[from] ExportError),
    #[error("cannot read {what} of interface `{ifname}` from {path}: {source}: check the interface still exists")]
    InterfaceFacts {
        ifname: String,
        what: &'static str,
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("the service table: {0}")]
    Services(#[from] ServiceError),
    #[error("XDP on `{ifname}`: {source}")]
    Xdp {
        ifname: String,
        #[source]
        source: XdpError,
    },
    #[error("worker {index}: {source}")]
    Worker {
        index: usize,
        #[source]
        source: IoError,
    },
    #[error("cannot create the control socket's directory {path}: {source}: create it (mode 0700, or 0750 with socket_group_access) or choose another --socket")]
    SocketDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("control socket: {0}")]
    Server(#[from] ServerError),
    #[error("{0}")]
    Metrics(#[from] MetricsError),
    #[error("cannot start the {name} thread: {source}: the system is out of threads or memory")]
    Spawn {
        name: String,
        #[source]
        source: io::Error,
    },
    #[error("host interface `{ifname}`: {reason}; the dataplane needs CAP_NET_ADMIN in the node's network namespace (or pass --host-interface off)")]
    HostInterface { ifname: String, reason: String },
    #[error("uninstall: {0}")]
    Uninstall(String),
    #[error("installing the SIGTERM/SIGINT/SIGHUP handler failed: {0}")]
    Signal(io::Error),
    #[error(
        "the {name} thread stopped: {reason}; see the messages above, then restart the dataplane"
    )]
    ThreadFailed { name: String, reason: String },
}

impl DaemonError {
    /// 2 when the operator must change something before starting again, 1 otherwise.
    fn exit_code(&self) -> u8 {
        match self {
            DaemonError::Usage(_)
            | DaemonError::Config(_)
            | DaemonError::Preflight(_)
            | DaemonError::Masquerade(_) => 2,
            _ => 1,
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse(); // Usage errors exit with 2 here, as clap does.
    match run(cli) {
        Ok(()) => {
            log("stopped cleanly");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("flagella-dataplane: error: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

#[path = "flagella-dataplane/hot_interfaces.rs"]
mod hot_interfaces;
use hot_interfaces::{HotInterfaces, HotPrograms, ProgramSetup};
#[path = "flagella-dataplane/restart.rs"]
mod restart;

fn log(message: &str) {
    eprintln!("flagella-dataplane: {message}");
}

/// Everything started so far; [`stop`] takes it down in reverse order.
struct Running {
    workers: Vec<(String, JoinHandle<Result<(), IoError>>)>,
    server: Option<JoinHandle<Result<(), ServerError>>>,
    /// Threads beside the packet path (the next-hop resolver): stopped by the same flag; their
    /// error is a message.
    aux: Vec<(String, JoinHandle<Result<(), String>>)>,
    /// The control socket, once this process created it (and only then removes it).
    socket: Option<PathBuf>,
    /// One program per interface, with its attachment (dropping it detaches).
    xdp: Vec<InterfaceXdp>,
    /// Keeps the uplink program's ownership in step with the tables (uplink filter on).
    uplink_sync: Option<JoinHandle<()>>,
    /// Where the programs are pinned (`restart::pin_root`), if they are.
    pins: Option<PathBuf>,
}

struct InterfaceXdp {
    ifname: String,
    role: Role,
    /// Shared with the uplink-sync thread (the uplink's program only).
    program: Arc<XdpProgram>,
    /// The configuration the program was loaded with.
    redirect: RedirectConfig,
    attachment: XdpAttachment,
}

fn run(cli: Cli) -> Result<(), DaemonError> {
    let configured = effective_config(&cli)?;
    if cli.uninstall {
        return restart::uninstall(&configured).map_err(DaemonError::Uninstall);
    }
    // The host interface's dataplane side is served as any interface, but may not exist yet:
    // preflight checks the configured ones and counts the memory of all.
    let cfg = configured.with_host_interface();
    let mode = xdp_mode(&cfg);
    let workers = cfg.effective_workers();
    preflight::check(&configured, memlock_needed(&cfg, &workers))?;
    if let Some(ports) = masquerade::range(&cfg) {
        masquerade::check_node(ports)?;
        log(&format!(
            "masquerade on: pods' flows to the world leave as the node, source ports {ports}"
        ));
    }
    install_signal_handlers().map_err(DaemonError::Signal)?;
    let host = set_up_host_interface(&cfg)?;

    let tables = TablesHandle::new(initial_tables(&cfg, host.map(|h| h.link))?);
    let stats = StatsRegistry::new();

    let pins = restart::pin_root(&cfg).map_err(DaemonError::Usage)?;
    restart::prune_gone(pins.as_deref());
    let xdp = attach_all(&cfg, mode, pins.as_deref())?;
    let mut running = Running {
        workers: Vec::new(),
        server: None,
        aux: Vec::new(),
        socket: None,
        xdp,
        uplink_sync: None,
        pins,
    };
    let started = start(&cfg, &cli, &workers, &tables, &stats, &mut running)
        .and_then(|()| start_host_link_sync(&tables, host, &mut running));
    let result = started.and_then(|()| {
        log(&format!(
            "ready: {} interface(s), {} worker(s), control socket {}",
            running.xdp.len(),
            running.workers.len(),
            cfg.socket.display()
        ));
        wait(&running)
    });
    let stopped = stop(running);
    result.and(stopped)
}

/// Slots of each handoff ring (one per ordered pair of workers sharing queues): 512 frames of
/// up to a UMEM chunk's data area, ~1.9 MB a ring.
const HANDOFF_RING_SLOTS: usize = 512;

/// Each worker's handoff when workers share the interfaces' queues (`workers = N`), in worker
/// order; empty otherwise (each worker then owns its interfaces' flows alone).
fn handoffs(cfg: &DaemonConfig, workers: &[WorkerSection]) -> Vec<Handoff> {
    if workers.len() < 2 || workers.iter().any(|w| w.share.is_none()) {
        return Vec::new();
    }
    let xsk = XskConfig::default();
    // A ring slot holds what a UMEM chunk holds after the kernel's and the pipeline's headroom.
    let slot_bytes = (xsk.frame_size - XDP_PACKET_HEADROOM - xsk.frame_headroom) as usize;
    let owner = FlowOwner::new(workers.len(), masquerade::range(cfg));
    mesh(workers.len(), HANDOFF_RING_SLOTS, slot_bytes)
        .into_iter()
        .map(|links| Handoff::new(owner, links))
        .collect()
}

/// The kernel's headroom in front of every AF_XDP frame (`XDP_PACKET_HEADROOM`).
const XDP_PACKET_HEADROOM: u32 = 256;

/// The workers and the control server, in that order.
fn start(
    cfg: &DaemonConfig,
    cli: &Cli,
    workers: &[WorkerSection],
    tables: &TablesHandle,
    stats: &Arc<StatsRegistry>,
    running: &mut Running,
) -> Result<(), DaemonError> {
    let mut socket_readers = Vec::new();
    let mut hot = None;
    let export = cfg.flow_export().map_err(DaemonError::Usage)?;
    let events_wanted = monitor_socket(cfg, cli).is_some() || export.is_some();
    let mut hub = events_wanted.then(|| {
        EventHub::new(EventConfig {
            policy_sample: cli.monitor_policy_sample,
            trace: cli.monitor_trace,
        })
    });
    let mut handoffs = handoffs(cfg, workers).into_iter();
    for (index, section) in workers.iter().enumerate() {
        let masq = masquerade::range(cfg)
            .map(|ports| masquerade::worker_config(ports, index, workers.len()))
            .transpose()?;
        let state = restart::conntrack_state_file(cfg, running.pins.is_some(), index);
        let mut worker = build_worker(cfg, cli, section, masq, index == 0, state)
            .map_err(|source| DaemonError::Worker { index, source })?;
        restart::log_conntrack(index, worker.pipeline().conntrack_restored());
        if index == 0 && cfg.hot_interfaces > 0 {
            hot = Some((worker.port_opener(), worker.port_changes()));
        }
        if let Some(handoff) = handoffs.next() {
            worker.hand_off(handoff);
        }
        register_sockets(&worker, &running.xdp)?;
        socket_readers.extend(stats_readers(&worker));
        worker.set_idle_sleep(Some(Duration::from_micros(cfg.idle_sleep_us)));
        let name = format!("worker-{index}");
        worker.publish_to(stats.register(&name, PUBLISH_EVERY));
        if let Some(hub) = hub.as_mut() {
            worker.report_events(hub.sink());
        }
        let source = tables.clone();
        let handle = thread::Builder::new()
            .name(name.clone())
            .spawn(move || worker.run(&source, &SHUTDOWN))
            .map_err(|source| DaemonError::Spawn {
                name: name.clone(),
                source,
            })?;
        log(&format!(
            "{name}: interfaces {}{}{}",
            section.interfaces.join(", "),
            section
                .share
                .map(|s| format!(" (queues q with q mod {} = {})", s.of, s.index))
                .unwrap_or_default(),
            section
                .core
                .map(|c| format!(", pinned to CPU {c}"))
                .unwrap_or_default()
        ));
        running.workers.push((name, handle));
    }

    running.uplink_sync = start_uplink_sync(tables, &running.xdp)?;

    let access = if cfg.socket_group_access {
        SocketAccess::Group
    } else {
        SocketAccess::Owner
    };
    create_socket_dir(&cfg.socket, access)?;
    let mut server =
        ControlServer::bind_with_access(&cfg.socket, access, tables.clone(), Arc::clone(stats))?;
    let hot_programs = HotPrograms::default();
    if let Some((opener, changes)) = hot {
        let configured = running.xdp.iter().map(|x| x.ifname.clone()).collect();
        let setup = ProgramSetup {
            mode: xdp_mode(cfg),
            redirect: redirect_config(Role::Pod, false, tunnel_ports(cfg)),
            pins: running.pins.clone(),
        };
        server.set_interfaces(Box::new(HotInterfaces::new(
            setup,
            opener,
            changes,
            configured,
            cfg.hot_interfaces,
            hot_programs.clone(),
        )));
    }
    running.socket = Some(cfg.socket.clone());
    let handle = thread::Builder::new()
        .name("control".into())
        .spawn(move || server.run(&SHUTDOWN))
        .map_err(|source| DaemonError::Spawn {
            name: "control".into(),
            source,
        })?;
    running.server = Some(handle);

    let observed = match hub {
        Some(hub) => start_monitor(
            hub,
            (monitor_socket(cfg, cli), cli.monitor_rate),
            export,
            access,
            running,
        )?,
        None => Observed::default(),
    };

    if let Ok(Some(address)) = cfg.metrics() {
        let xdp = (running.xdp.as_slice(), hot_programs);
        let render = scrape(stats, tables, xdp, socket_readers, observed);
        let server = MetricsServer::bind(address, render)?;
        log(&format!("metrics: http://{address}/metrics"));
        let name = "metrics".to_string();
        let handle = thread::Builder::new()
            .name(name.clone())
            .spawn(move || {
                server.run(&SHUTDOWN);
                Ok(())
            })
            .map_err(|source| DaemonError::Spawn {
                name: name.clone(),
                source,
            })?;
        running.aux.push((name, handle));
    }

    if let Some(uplink) = tables.snapshot().node.uplink_ifindex {
        let source = tables.clone();
        let name = "next-hops".to_string();
        let handle = thread::Builder::new()
            .name(name.clone())
            .spawn(move || nexthop::run(&source, uplink, &SHUTDOWN).map_err(|e| e.to_string()))
            .map_err(|source| DaemonError::Spawn {
                name: name.clone(),
                source,
            })?;
        running.aux.push((name, handle));
    }
    Ok(())
}

/// The monitor socket's path: `--monitor-socket`, else `<control socket's name>-monitor.sock`
/// beside the control socket (`/run/flagella/dataplane-monitor.sock`), so that dataplanes
/// whose control sockets share a directory do not share a monitor socket; `None` for `off`.
fn monitor_socket(cfg: &DaemonConfig, cli: &Cli) -> Option<PathBuf> {
    match cli.monitor_socket.as_deref() {
        Some("off") => None,
        Some(path) => Some(PathBuf::from(path)),
        None => {
            let stem = cfg
                .socket
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| "dataplane".into());
            Some(cfg.socket.with_file_name(format!("{stem}-monitor.sock")))
        }
    }
}

/// The monitor's and the flow export's totals, for `/metrics`.
#[derive(Default)]
struct Observed {
    monitor: Option<Arc<MonitorStats>>,
    export: Option<Arc<ExportStats>>,
}

/// Binds the monitor socket (when `path` is given; its subscribers get at most `rate` events a
/// second) and starts the flow export (when configured), both fed by one thread that drains
/// the workers' event rings; returns their totals. `access`: the control socket's, so whoever
/// may use one may use the other.
fn start_monitor(
    hub: EventHub,
    (path, rate): (Option<PathBuf>, u32),
    export: Option<ExportConfig>,
    access: SocketAccess,
    running: &mut Running,
) -> Result<Observed, DaemonError> {
    let now = dataplane::io::monotonic_ns();
    let mut server = match &path {
        Some(path) => {
            create_socket_dir(path, access)?;
            let server = MonitorServer::bind(path, access.mode(), hub, now)?;
            log(&format!("monitor socket {}", path.display()));
            server
        }
        None => MonitorServer::without_socket(hub, now),
    };
    server.limit_rate(rate);
    let mut observed = Observed {
        monitor: Some(server.stats()),
        export: None,
    };
    if let Some(export) = export {
        let exporter = FlowExporter::start(&export, &REOPEN_FLOW_EXPORT)?;
        observed.export = Some(exporter.stats());
        log(&format!(
            "flow export to {} ({} flows/s at most; SIGHUP reopens)",
            export.target, export.rate
        ));
        server.export_to(exporter);
    }
    let name = "monitor".to_string();
    let handle = thread::Builder::new()
        .name(name.clone())
        .spawn(move || {
            server.run(&SHUTDOWN);
            Ok(())
        })
        .map_err(|source| DaemonError::Spawn {
            name: name.clone(),
            source,
        })?;
    running.aux.push((name, handle));
    Ok(observed)
}

/// The file (when there is one), then the flags on top; validated once more after merging.
fn effective_config(cli: &Cli) -> Result<DaemonConfig, DaemonError> {
    let mut cfg = match &cli.config {
        Some(path) => DaemonConfig::load(path)?,
        None if Path::new(DEFAULT_CONFIG_PATH).exists() => {
            DaemonConfig::load(Path::new(DEFAULT_CONFIG_PATH))?
        }
        None => DaemonConfig::default(),
    };
    for (name, role) in &cli.interfaces {
        match cfg.interfaces.iter_mut().find(|i| &i.name == name) {
            Some(existing) => existing.role = *role,
            None => cfg.interfaces.push(InterfaceConfig {
                name: name.clone(),
                role: *role,
                queues: 1,
            }),
        }
    }
    if let Some(socket) = &cli.socket {
        cfg.socket = socket.clone();
    }
    if let Some(group) = cli.socket_group_access {
        cfg.socket_group_access = group;
    }
    if let Some(batch) = cli.batch_size {
        cfg.batch_size = batch;
    }
    if let Some(us) = cli.idle_sleep_us {
        cfg.idle_sleep_us = us;
    }
    if let Some(n) = cli.hot_interfaces {
        cfg.hot_interfaces = n;
    }
    if let Some(port) = cli.vxlan_port {
        cfg.vxlan_port = port;
    }
    if let Some(port) = cli.geneve_port {
        cfg.geneve_port = port;
    }
    if let Some(address) = &cli.metrics_address {
        cfg.metrics_address = address.clone();
    }
    if let Some(export) = &cli.flow_export {
        cfg.flow_export = export.clone();
    }
    if let Some(rate) = cli.flow_export_rate {
        cfg.flow_export_rate = rate;
    }
    if !cli.flow_export_types.is_empty() {
        cfg.flow_export_types = cli.flow_export_types.clone();
    }
    if let Some(mode) = cli.xdp_mode {
        cfg.xdp_mode = match mode {
            XdpModeArg::Native => XdpMode::Native,
            XdpModeArg::Generic => XdpMode::Generic,
        };
    }
    if let Some(filter) = cli.uplink_filter {
        cfg.uplink_filter = filter;
    }
    if let Some(name) = &cli.host_interface {
        cfg.host_interface = name.clone();
    }
    if let Some(name) = &cli.host_interface_peer {
        cfg.host_interface_peer = name.clone();
    }
    if let Some(on) = cli.masquerade {
        cfg.masquerade = on;
    }
    if let Some(ports) = &cli.masquerade_ports {
        cfg.masquerade_ports = ports.clone();
    }
    if let Some(n) = cli.workers {
        cfg.worker_count = n;
    }
    if !cli.cores.is_empty() {
        cfg.cores = cli.cores.clone();
    }
    if let Some(dir) = &cli.bpf_pin_dir {
        cfg.bpf_pin_dir = dir.clone();
    }
    if let Some(dir) = &cli.state_dir {
        cfg.state_dir = dir.clone();
    }
    if let Some(core) = cli.core {
        if cfg.worker_count > 1 {
            return Err(DaemonError::Usage(
                "--core pins the only worker; with --workers N, list N cores with --cores".into(),
            ));
        }
        match cfg.workers.len() {
            0 => {
                cfg.workers.push(WorkerSection {
                    core: Some(core),
                    interfaces: cfg.interfaces.iter().map(|i| i.name.clone()).collect(),
                    share: None,
                });
            }
            1 => {
                if let Some(w) = cfg.workers.first_mut() {
                    w.core = Some(core);
                }
            }
            n => {
                return Err(DaemonError::Usage(format!(
                    "--core pins the only worker, but the configuration declares {n} [[worker]] sections: set `core` in each of them instead"
                )))
            }
        }
    }
    cfg.validate()?;
    // Without configured interfaces the host interface is served alone and pods come at run
    // time (`interface.add`), which needs both.
    let pods_at_run_time = cfg.hot_interfaces > 0 && cfg.host_interface().is_some();
    if cfg.interfaces.is_empty() && !pods_at_run_time {
        return Err(DaemonError::Usage(format!(
            "no interfaces to serve: pass --interface NAME=pod|uplink, or list [[interface]] sections in {} (or the file given with --config), or keep the host interface and --hot-interfaces above 0 so that pods are added at run time",
            DEFAULT_CONFIG_PATH
        )));
    }
    Ok(cfg)
}

/// Bytes the locked-memory limit must allow: room for the BPF maps, plus the UMEMs unless the
/// kernel does not charge them to this process (`CAP_IPC_LOCK`).
fn memlock_needed(cfg: &DaemonConfig, workers: &[WorkerSection]) -> u64 {
    let maps = (1 << 20) * cfg.interfaces.len() as u64;
    if !preflight::umem_counts_against_memlock() {
        return maps;
    }
    let xsk = hot_xsk_config(cfg);
    let per_port = u64::from(xsk.frames_per_port) * u64::from(xsk.frame_size);
    let hot =
        u64::from(xsk.hot_ports) * u64::from(xsk.hot_frames_per_port) * u64::from(xsk.frame_size);
    let ports: u64 = workers.iter().map(|w| cfg.ports_of(w).len() as u64).sum();
    ports * per_port + hot + maps
}

/// The first worker's socket geometry: room for `hot_interfaces` interfaces added at run time.
fn hot_xsk_config(cfg: &DaemonConfig) -> XskConfig {
    XskConfig {
        hot_ports: cfg.hot_interfaces,
        hot_frames_per_port: HOT_FRAMES_PER_INTERFACE,
        ..XskConfig::default()
    }
}

/// UMEM frames reserved per interface added at run time (half of them in its fill ring): a
/// pod's veth in copy mode needs far fewer than an uplink.
const HOT_FRAMES_PER_INTERFACE: u32 = 1024;

/// Empty tables; the uplink's index, MAC and MTU come from the interface itself, the host
/// interface's from [`set_up_host_interface`].
fn initial_tables(cfg: &DaemonConfig, host_link: Option<HostLink>) -> Result<Tables, DaemonError> {
    let mut node = LocalNode {
        name: hostname(),
        tunnel_ports: tunnel_ports(cfg),
        host_link,
        ..LocalNode::default()
    };
    if let Some(uplink) = cfg.uplink() {
        node.uplink_ifindex = Some(preflight::ifindex(&uplink.name)?);
        node.uplink_mac = interface_mac(&uplink.name)?;
        if let Some(mtu) = interface_mtu(&uplink.name)? {
            node.uplink_mtu = mtu;
        }
    }
    Ok(Tables::empty(node, Services::new(DEFAULT_M, DAEMON_SEED)?))
}

fn hostname() -> String {
    fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

fn sysfs(ifname: &str, what: &'static str, file: &str) -> Result<String, DaemonError> {
    let path = format!("/sys/class/net/{ifname}/{file}");
    fs::read_to_string(&path)
        .map(|s| s.trim().to_string())
        .map_err(|source| DaemonError::InterfaceFacts {
            ifname: ifname.to_string(),
            what,
            path,
            source,
        })
}

fn interface_mac(ifname: &str) -> Result<MacAddr, DaemonError> {
    let text = sysfs(ifname, "the MAC address", "address")?;
    text.parse().map_err(|_| DaemonError::InterfaceFacts {
        ifname: ifname.to_string(),
        what: "the MAC address",
        path: format!("/sys/class/net/{ifname}/address (`{text}`)"),
        source: io::ErrorKind::InvalidData.into(),
    })
}

/// The MTU, when it fits the table's field (it always does on Ethernet).
fn interface_mtu(ifname: &str) -> Result<Option<u16>, DaemonError> {
    Ok(sysfs(ifname, "the MTU", "mtu")?.parse().ok())
}

fn xdp_mode(cfg: &DaemonConfig) -> AttachMode {
    match cfg.xdp_mode {
        XdpMode::Native => AttachMode::Native,
        XdpMode::Generic => AttachMode::Generic,
    }
}

fn tunnel_ports(cfg: &DaemonConfig) -> TunnelPorts {
    TunnelPorts {
        vxlan: cfg.vxlan_port,
        geneve: cfg.geneve_port,
    }
}

/// What an interface's program hands the dataplane. Pods: all IP, and ARP (the dataplane answers
/// for their gateway). The uplink: with the filter on, tunnel traffic to the node (on the ports
/// the pipeline decapsulates) and the owned destinations, none until the uplink-sync thread
/// learns them; ARP and everything else stay with the kernel.
fn redirect_config(role: Role, uplink_filter: bool, ports: TunnelPorts) -> RedirectConfig {
    match role {
        Role::Pod | Role::Host => RedirectConfig {
            redirect_arp: true,
            ..RedirectConfig::default()
        },
        Role::Uplink if uplink_filter => RedirectConfig {
            vxlan_port: ports.vxlan,
            geneve_port: ports.geneve,
            ..RedirectConfig::uplink(None)
        },
        Role::Uplink => RedirectConfig::default(),
    }
}

/// One program per interface: the XSKMAP is keyed by receive queue, so two interfaces sharing
/// a program would fight over its slots; each also has its own [`redirect_config`].
fn attach_all(
    cfg: &DaemonConfig,
    mode: AttachMode,
    pins: Option<&Path>,
) -> Result<Vec<InterfaceXdp>, DaemonError> {
    if let Some(warning) = mode.warning() {
        log(&format!("WARNING: {warning}"));
    }
    let mut out = Vec::with_capacity(cfg.interfaces.len());
    for iface in &cfg.interfaces {
        let xdp_err = |source| DaemonError::Xdp {
            ifname: iface.name.clone(),
            source,
        };
        let mut redirect = redirect_config(iface.role, cfg.uplink_filter, tunnel_ports(cfg));
        if redirect.uplink_filter {
            // Replies to masqueraded flows: the uplink takes them by port.
            redirect.masquerade_ports = masquerade::range(cfg).map(|r| (r.first(), r.last()));
        }
        let ifindex = preflight::ifindex(&iface.name)?;
        let (program, attachment) =
            restart::load_and_attach(&iface.name, ifindex, redirect, mode, pins)
                .map_err(xdp_err)?;
        log(&format!(
            "{}: XDP attached ({mode} mode, {:?} role, ifindex {ifindex}{}{})",
            iface.name,
            iface.role,
            if attachment.is_pinned() {
                ", pinned: stays and drops while no dataplane runs"
            } else {
                ""
            },
            if redirect.uplink_filter {
                ", uplink filter on: the host keeps its own traffic"
            } else if iface.role == Role::Uplink {
                ", uplink filter OFF: every IP frame goes to the dataplane, the host's own traffic is dropped"
            } else {
                ""
            }
        ));
        out.push(InterfaceXdp {
            ifname: iface.name.clone(),
            role: iface.role,
            program: Arc::new(program),
            redirect,
            attachment,
        });
    }
    Ok(out)
}

fn build_worker(
    cfg: &DaemonConfig,
    cli: &Cli,
    section: &WorkerSection,
    masquerade: Option<MasqueradeConfig>,
    first: bool,
    conntrack_state: Option<PathBuf>,
) -> Result<Worker, IoError> {
    let ports = cfg
        .ports_of(section)
        .into_iter()
        .map(|(ifname, queue)| PortSpec::new(ifname, queue))
        .collect();
    Worker::new(WorkerConfig {
        ports,
        core: section.core,
        pipeline: PipelineConfig {
            batch_size: cfg.batch_size,
            conntrack: CtConfig {
                capacity: cfg.conntrack_entries,
                hash_seed: CtConfig::random_seed(),
                ..CtConfig::default()
            },
            complete_l4_checksums: cli.complete_l4_checksums,
            masquerade,
            conntrack_state,
            ..PipelineConfig::default()
        },
        // Interfaces added at run time go to the first worker.
        xsk: if first {
            hot_xsk_config(cfg)
        } else {
            XskConfig::default()
        },
    })
}

/// The uplink program's maps as [`host_path::sync_uplink`] drives them.
struct UplinkMaps {
    program: Arc<XdpProgram>,
    /// The whole configuration, of which only the underlay address changes.
    config: RedirectConfig,
}

/// Why an update of the uplink program's maps failed.
#[derive(Debug, thiserror::Error)]
enum UplinkMapError {
    #[error(transparent)]
    Xdp(#[from] XdpError),
    #[error(transparent)]
    Prefix(#[from] PrefixLengthError),
    #[error(transparent)]
    Port(#[from] PortProtocolError),
}

impl OwnershipMaps for UplinkMaps {
    type Error = UplinkMapError;

    fn set_underlay(&mut self, underlay: Option<Ipv4Addr>) -> Result<(), UplinkMapError> {
        let config = RedirectConfig {
            underlay_ipv4: underlay,
            ..self.config
        };
        self.program.set_config(config)?;
        self.config = config;
        Ok(())
    }

    fn add_prefix(&mut self, prefix: Prefix) -> Result<(), UplinkMapError> {
        Ok(self.program.add_owned_prefix(owned_prefix(prefix)?)?)
    }

    fn remove_prefix(&mut self, prefix: Prefix) -> Result<(), UplinkMapError> {
        Ok(self.program.remove_owned_prefix(owned_prefix(prefix)?)?)
    }

    fn add_port(&mut self, port: UplinkPort) -> Result<(), UplinkMapError> {
        Ok(self.program.add_owned_port(owned_port(port)?)?)
    }

    fn remove_port(&mut self, port: UplinkPort) -> Result<(), UplinkMapError> {
        Ok(self.program.remove_owned_port(owned_port(port)?)?)
    }
}

fn owned_port(port: UplinkPort) -> Result<OwnedPort, PortProtocolError> {
    OwnedPort::new(port.addr, port.proto, port.port)
}

fn owned_prefix(prefix: Prefix) -> Result<OwnedPrefix, PrefixLengthError> {
    OwnedPrefix::new(prefix.addr(), prefix.prefix_len())
}

/// Starts the thread that keeps the uplink program in step with the tables, when there is an
/// uplink whose program filters.
fn start_uplink_sync(
    tables: &TablesHandle,
    xdp: &[InterfaceXdp],
) -> Result<Option<JoinHandle<()>>, DaemonError> {
    let Some(uplink) = xdp
        .iter()
        .find(|x| x.role == Role::Uplink && x.redirect.uplink_filter)
    else {
        return Ok(None);
    };
    let mut maps = UplinkMaps {
        program: Arc::clone(&uplink.program),
        config: uplink.redirect,
    };
    let tables = tables.clone();
    let name = "uplink-sync".to_string();
    let handle = thread::Builder::new()
        .name(name.clone())
        .spawn(move || {
            host_path::sync_uplink(
                &tables,
                &mut maps,
                &SHUTDOWN,
                host_path::SYNC_INTERVAL,
                |report, applied| log(&host_path::describe(report, applied)),
            );
        })
        .map_err(|source| DaemonError::Spawn { name, source })?;
    Ok(Some(handle))
}

/// The host interface, once set up: its two sides.
#[derive(Clone, Copy, Debug)]
struct HostInterface {
    kernel_ifindex: u32,
    link: HostLink,
}

/// Creates the host interface's veth pair when absent, brings both sides up and prepares the
/// kernel's side to take pod-sourced frames (see `dataplane::daemon::host_link`). `None` when
/// the host interface is off.
fn set_up_host_interface(cfg: &DaemonConfig) -> Result<Option<HostInterface>, DaemonError> {
    let Some((kernel, peer)) = cfg.host_interface() else {
        return Ok(None);
    };
    let fail = |reason: String| DaemonError::HostInterface {
        ifname: kernel.to_string(),
        reason,
    };
    let mut nl = Netlink::requests().map_err(|e| fail(e.to_string()))?;
    let created = nl
        .create_veth(kernel, peer, cfg.host_queues())
        .map_err(|e| fail(e.to_string()))?;
    let kernel_ifindex = preflight::ifindex(kernel)?;
    let peer_ifindex = preflight::ifindex(peer)?;
    // The dataplane's side has no address and speaks no IPv6 of its own; the kernel's side
    // receives frames from pod addresses, which strict reverse-path filtering would refuse
    // whenever the kernel routes the pod elsewhere (e.g. a remote pod's reply, natively).
    for (path, value) in [
        (format!("/proc/sys/net/ipv6/conf/{peer}/disable_ipv6"), "1"),
        (format!("/proc/sys/net/ipv4/conf/{kernel}/rp_filter"), "0"),
    ] {
        if let Err(e) = fs::write(&path, value) {
            log(&format!(
                "WARNING: could not write {value} to {path}: {e}; the host path may refuse some \
                 pod traffic"
            ));
        }
    }
    for ifindex in [peer_ifindex, kernel_ifindex] {
        nl.set_link_up(ifindex, None)
            .map_err(|e| fail(e.to_string()))?;
    }
    let kernel_mac = interface_mac(kernel)?;
    log(&format!(
        "host interface: {kernel} (the host's side, {kernel_mac}) / {peer} (the dataplane's){}",
        if created { ", created" } else { ", found" }
    ));
    Ok(Some(HostInterface {
        kernel_ifindex,
        link: HostLink {
            ifindex: peer_ifindex,
            kernel_mac,
        },
    }))
}

/// The kernel side of the host interface as [`host_link::sync_host_link`] drives it.
struct KernelHostStack {
    nl: Netlink,
    host: HostInterface,
}

impl host_link::HostStack for KernelHostStack {
    type Error = NetlinkError;

    fn set_address(&mut self, add: bool, prefix: Prefix) -> Result<(), NetlinkError> {
        self.nl.set_address(add, prefix, self.host.kernel_ifindex)
    }

    fn set_route(&mut self, add: bool, route: host_link::HostRoute) -> Result<(), NetlinkError> {
        self.nl
            .set_route(add, route.dst, route.src, self.host.kernel_ifindex)
    }

    fn node_addresses(&mut self) -> Result<Vec<IpAddr>, NetlinkError> {
        self.nl.all_addresses()
    }

    fn set_mtu(&mut self, mtu: u16) -> Result<(), NetlinkError> {
        for ifindex in [self.host.link.ifindex, self.host.kernel_ifindex] {
            self.nl.set_link_up(ifindex, Some(u32::from(mtu)))?;
        }
        Ok(())
    }
}

/// Starts the thread that keeps the host interface's kernel side in step with the tables,
/// from what the interface holds now (a previous run's addresses and routes).
fn start_host_link_sync(
    tables: &TablesHandle,
    host: Option<HostInterface>,
    running: &mut Running,
) -> Result<(), DaemonError> {
    let Some(host) = host else {
        return Ok(());
    };
    let fail = |e: NetlinkError| DaemonError::HostInterface {
        ifname: format!("ifindex {}", host.kernel_ifindex),
        reason: e.to_string(),
    };
    let mut nl = Netlink::requests().map_err(fail)?;
    let found = host_link::HostStackState {
        addresses: nl
            .addresses_of(host.kernel_ifindex)
            .map_err(fail)?
            .into_iter()
            .collect(),
        routes: nl
            .own_routes_of(host.kernel_ifindex)
            .map_err(fail)?
            .into_iter()
            .map(|(dst, src)| host_link::HostRoute { dst, src })
            .collect(),
        mtu: None,
    };
    let mut stack = KernelHostStack { nl, host };
    let tables = tables.clone();
    let name = "host-link-sync".to_string();
    let handle = thread::Builder::new()
        .name(name.clone())
        .spawn(move || {
            host_link::sync_host_link(
                &tables,
                &mut stack,
                host_link::Reconciler::new(found),
                &SHUTDOWN,
                host_path::SYNC_INTERVAL,
                |report, applied| log(&host_link::describe(report, applied)),
            );
            Ok(())
        })
        .map_err(|source| DaemonError::Spawn {
            name: name.clone(),
            source,
        })?;
    running.aux.push((name, handle));
    Ok(())
}

/// A reader of each socket's `XDP_STATISTICS` for `/metrics` (a socket whose descriptor cannot
/// be duplicated is logged and left out of the metrics; forwarding does not depend on it).
fn stats_readers(worker: &Worker) -> Vec<(String, u32, SocketStatsReader)> {
    let mut readers = Vec::new();
    for socket in worker.sockets() {
        match SocketStatsReader::new(socket.fd) {
            Ok(r) => readers.push((socket.spec.ifname.clone(), socket.spec.queue, r)),
            Err(e) => log(&format!(
                "{} queue {}: no XDP_STATISTICS in /metrics ({e}); raise the open-files limit",
                socket.spec.ifname, socket.spec.queue
            )),
        }
    }
    readers
}

/// What one scrape of `/metrics` shows: the workers' published counters, and the kernel's
/// (every XDP program's counters, the configured interfaces' and those added at run time,
/// every socket's statistics) read now, on the metrics thread.
fn scrape(
    stats: &Arc<StatsRegistry>,
    tables: &TablesHandle,
    (xdp, hot): (&[InterfaceXdp], HotPrograms),
    sockets: Vec<(String, u32, SocketStatsReader)>,
    observed: Observed,
) -> Render {
    let stats = Arc::clone(stats);
    let tables = tables.clone();
    let programs: Vec<(String, Arc<XdpProgram>)> = xdp
        .iter()
        .map(|x| (x.ifname.clone(), Arc::clone(&x.program)))
        .collect();
    Box::new(move || {
        let mut kernel = KernelCounters::default();
        for (ifname, program) in programs.iter().chain(&hot.snapshot()) {
            if let Ok(c) = program.counters() {
                kernel.programs.push((ifname.clone(), c.fields().to_vec()));
            }
        }
        for (ifname, queue, reader) in &sockets {
            if let Ok(s) = reader.read() {
                kernel
                    .sockets
                    .push((ifname.clone(), *queue, s.fields().to_vec()));
            }
        }
        let total = stats.total();
        kernel.interface_names = total
            .interfaces
            .iter()
            .filter_map(|t| Some((t.ifindex, interface_name(t.ifindex)?)))
            .collect();
        let mut text = metrics::render(&total, &stats.per_worker(), &kernel)?;
        text.push_str(&metrics::render_tables(&tables.snapshot())?);
        if let Some(monitor) = &observed.monitor {
            text.push_str(&metrics::render_monitor(monitor)?);
        }
        if let Some(export) = &observed.export {
            text.push_str(&metrics::render_flow_export(export)?);
        }
        Ok(text)
    })
}

/// The kernel's name of interface `ifindex` in the dataplane's namespace (read at scrape time,
/// so a renamed interface shows its new name); `None` when it no longer exists.
fn interface_name(ifindex: u32) -> Option<String> {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: `buf` has IF_NAMESIZE bytes, as if_indextoname requires; it writes a
    // NUL-terminated name there or returns null.
    let name = unsafe { libc::if_indextoname(ifindex, buf.as_mut_ptr()) };
    if name.is_null() {
        return None;
    }
    // SAFETY: non-null: `buf` now holds a NUL-terminated string.
    let name = unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) };
    Some(name.to_string_lossy().into_owned())
}

/// Each socket under its queue, in the XSKMAP of its own interface's program.
fn register_sockets(worker: &Worker, xdp: &[InterfaceXdp]) -> Result<(), DaemonError> {
    for socket in worker.sockets() {
        let Some(iface) = xdp.iter().find(|x| x.ifname == socket.spec.ifname) else {
            continue; // Every port comes from a configured interface: cannot happen.
        };
        iface
            .program
            .register_socket(socket.spec.queue, socket.fd)
            .map_err(|source| DaemonError::Xdp {
                ifname: iface.ifname.clone(),
                source,
            })?;
    }
    Ok(())
}

/// The socket's directory, when it does not exist yet: only the daemon's user may enter it
/// (0700), or its group too (0750) when the socket is open to the group.
fn create_socket_dir(socket: &Path, access: SocketAccess) -> Result<(), DaemonError> {
    let Some(dir) = socket.parent().filter(|d| !d.as_os_str().is_empty()) else {
        return Ok(());
    };
    if dir.exists() {
        return Ok(());
    }
    fs::DirBuilder::new()
        .recursive(true)
        .mode(match access {
            SocketAccess::Owner => 0o700,
            SocketAccess::Group => 0o750,
        })
        .create(dir)
        .map_err(|source| DaemonError::SocketDir {
            path: dir.to_path_buf(),
            source,
        })
}

extern "C" fn on_signal(signal: libc::c_int) {
    // An atomic store is async-signal-safe; everything else happens on the threads.
    if signal == libc::SIGHUP {
        REOPEN_FLOW_EXPORT.store(true, Ordering::Relaxed);
    } else {
        SHUTDOWN.store(true, Ordering::Relaxed);
    }
}

fn install_signal_handlers() -> io::Result<()> {
    for signal in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
        // SAFETY: an all-zero sigaction is a valid value (empty mask, no flags) that is then
        // filled in; the handler only performs an atomic store, which is async-signal-safe.
        let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
        action.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
        // SAFETY: `action` is initialized and outlives the call; no old action is requested.
        if unsafe { libc::sigaction(signal, &action, std::ptr::null_mut()) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Until a signal, or until a thread stops on its own (which is an error: they only stop when
/// asked).
fn wait(running: &Running) -> Result<(), DaemonError> {
    while !SHUTDOWN.load(Ordering::Relaxed) {
        thread::sleep(WAIT_INTERVAL);
        if SHUTDOWN.load(Ordering::Relaxed) {
            break; // The threads may already have seen the flag and returned: that is fine.
        }
        let stopped_worker = running
            .workers
            .iter()
            .find(|(_, h)| h.is_finished())
            .map(|(name, _)| name.clone());
        let stopped_aux = running
            .aux
            .iter()
            .find(|(_, h)| h.is_finished())
            .map(|(name, _)| name.clone());
        let stopped_server = running.server.as_ref().is_some_and(|h| h.is_finished());
        let stopped_sync = running
            .uplink_sync
            .as_ref()
            .is_some_and(|h| h.is_finished());
        let stopped = stopped_worker
            .or(stopped_aux)
            .or(stopped_server.then(|| "control".to_string()))
            .or(stopped_sync.then(|| "uplink-sync".to_string()));
        if let Some(name) = stopped {
            SHUTDOWN.store(true, Ordering::Relaxed);
            return Err(DaemonError::ThreadFailed {
                name,
                reason: "it stopped without being asked".into(),
            });
        }
    }
    log("stopping (signal received)");
    Ok(())
}

/// Stops the threads, removes the socket file, detaches the programs. Returns the first error.
fn stop(running: Running) -> Result<(), DaemonError> {
    SHUTDOWN.store(true, Ordering::Relaxed);
    let mut first: Option<DaemonError> = None;
    let mut note = |e: DaemonError| {
        eprintln!("flagella-dataplane: error: {e}");
        first.get_or_insert(e);
    };
    for (name, handle) in running.workers {
        match handle.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => note(DaemonError::ThreadFailed {
                name,
                reason: e.to_string(),
            }),
            Err(_) => note(DaemonError::ThreadFailed {
                name,
                reason: "it panicked".into(),
            }),
        }
    }
    for (name, handle) in running.aux {
        match handle.join() {
            Ok(Ok(())) => {}
            Ok(Err(reason)) => note(DaemonError::ThreadFailed { name, reason }),
            Err(_) => note(DaemonError::ThreadFailed {
                name,
                reason: "it panicked".into(),
            }),
        }
    }
    if let Some(handle) = running.uplink_sync {
        if handle.join().is_err() {
            note(DaemonError::ThreadFailed {
                name: "uplink-sync".into(),
                reason: "it panicked".into(),
            });
        }
    }
    if let Some(handle) = running.server {
        match handle.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => note(DaemonError::Server(e)),
            Err(_) => note(DaemonError::ThreadFailed {
                name: "control".into(),
                reason: "it panicked".into(),
            }),
        }
    }
    // The server removes its socket when dropped; this covers a server thread that panicked.
    if let Some(socket) = &running.socket {
        match fs::remove_file(socket) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => log(&format!(
                "could not remove {}: {e}; remove it by hand",
                socket.display()
            )),
        }
    }
    for iface in running.xdp {
        if iface.attachment.is_pinned() {
            // The safe state between two processes: the pinned program stays and drops what
            // no socket serves now (`--uninstall` removes it).
            continue;
        }
        if let Err(source) = iface.attachment.detach() {
            note(DaemonError::Xdp {
                ifname: iface.ifname.clone(),
                source,
            });
        }
        drop(iface.program);
    }
    match first {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cli(args: &[&str]) -> Cli {
        Cli::try_parse_from(std::iter::once("flagella-dataplane").chain(args.iter().copied()))
            .unwrap()
    }

    /// A configuration file for one test, removed when dropped (`mkstemp`: a name nobody can
    /// predict and plant first).
    struct TempConfig(PathBuf);

    impl TempConfig {
        fn new(name: &str, text: &str) -> Self {
            let file = tempfile::Builder::new()
                .prefix(&format!("flagella-dataplane-{name}-"))
                .suffix(".toml")
                .tempfile()
                .unwrap();
            let (_, path) = file.keep().unwrap();
            fs::write(&path, text).unwrap();
            TempConfig(path)
        }
    }

    impl Drop for TempConfig {
        fn drop(&mut self) {
            let _ = fs::remove_file(&self.0);
        }
    }

    #[test]
    fn interface_flags_parse_and_bad_ones_are_explained() {
        assert_eq!(parse_interface("lxc1=pod"), Ok(("lxc1".into(), Role::Pod)));
        assert_eq!(
            parse_interface("eth1=uplink"),
            Ok(("eth1".into(), Role::Uplink))
        );
        assert!(parse_interface("eth1").unwrap_err().contains("NAME=pod"));
        assert!(parse_interface("eth1=router")
            .unwrap_err()
            .contains("uplink"));
        assert!(parse_interface("=pod").is_err());
    }

    #[test]
    fn flags_add_to_and_override_the_file() {
        let file = TempConfig::new(
            "merge",
            "batch_size = 32\n[[interface]]\nname = \"eth1\"\nrole = \"pod\"\n",
        );
        let path = file.0.to_str().unwrap();
        let cfg = effective_config(&cli(&[
            "--config",
            path,
            "--interface",
            "eth1=uplink",
            "--interface",
            "lxc1=pod",
            "--socket",
            "/tmp/s.sock",
            "--xdp-mode",
            "generic",
            "--core",
            "1",
        ]))
        .unwrap();
        assert_eq!(cfg.batch_size, 32, "kept from the file");
        assert_eq!(cfg.uplink().map(|i| i.name.as_str()), Some("eth1"));
        assert_eq!(cfg.interfaces.len(), 2);
        assert_eq!(cfg.socket, PathBuf::from("/tmp/s.sock"));
        assert_eq!(cfg.xdp_mode, XdpMode::Generic);
        let workers = cfg.effective_workers();
        assert_eq!(workers.len(), 1);
        assert_eq!(workers[0].core, Some(1));
        assert_eq!(workers[0].interfaces, vec!["eth1", "lxc1"]);
    }

    #[test]
    fn usage_and_configuration_errors_exit_with_2() {
        let empty = TempConfig::new("empty", "");
        let path = empty.0.to_str().unwrap();
        let none =
            effective_config(&cli(&["--config", path, "--hot-interfaces", "0"])).unwrap_err();
        assert!(none.to_string().contains("--interface"), "{none}");
        assert_eq!(none.exit_code(), 2);
        let hosted = effective_config(&cli(&["--config", path, "--host-interface", "off"]));
        assert!(
            hosted.is_err(),
            "nothing to serve without the host interface"
        );
        let pods_later = effective_config(&cli(&["--config", path])).expect("pods added later");
        assert_eq!(pods_later.hot_interfaces, 16);

        let bad = effective_config(&cli(&[
            "--config",
            path,
            "--interface",
            "a=pod",
            "--batch-size",
            "0",
        ]))
        .unwrap_err();
        assert!(bad.to_string().contains("batch_size"), "{bad}");
        assert_eq!(bad.exit_code(), 2);

        let two = TempConfig::new(
            "two-workers",
            "[[interface]]\nname = \"a\"\nrole = \"pod\"\n[[interface]]\nname = \"b\"\nrole = \"pod\"\n\
             [[worker]]\ninterfaces = [\"a\"]\n[[worker]]\ninterfaces = [\"b\"]\n",
        );
        let err = effective_config(&cli(&["--config", two.0.to_str().unwrap(), "--core", "0"]))
            .unwrap_err();
        assert!(err.to_string().contains("core"), "{err}");
        assert_eq!(err.exit_code(), 2);

        let missing =
            effective_config(&cli(&["--config", "/nonexistent/flagella.toml"])).unwrap_err();
        assert_eq!(missing.exit_code(), 2);
        assert!(Cli::try_parse_from(["flagella-dataplane", "--xdp-mode", "fast"]).is_err());
    }

    #[test]
    fn runtime_errors_exit_with_1() {
        let err = DaemonError::ThreadFailed {
            name: "worker-0".into(),
            reason: "x".into(),
        };
        assert_eq!(err.exit_code(), 1);
    }

    #[test]
    fn the_uplink_filters_unless_turned_off_and_pods_do_not() {
        let pod = redirect_config(Role::Pod, true, TunnelPorts::default());
        assert!(pod.redirect_arp && !pod.uplink_filter, "{pod:?}");
        assert_eq!(
            redirect_config(Role::Pod, false, TunnelPorts::default()),
            pod
        );
        let uplink = redirect_config(Role::Uplink, true, TunnelPorts::default());
        assert!(uplink.uplink_filter && !uplink.redirect_arp, "{uplink:?}");
        assert_eq!(uplink.underlay_ipv4, None, "learnt from the tables later");
        assert_eq!(
            (uplink.vxlan_port, uplink.geneve_port),
            (4789, 6081),
            "the ports the pipeline decapsulates by default"
        );
        let ports = TunnelPorts {
            vxlan: 8472,
            geneve: 6082,
        };
        let moved = redirect_config(Role::Uplink, true, ports);
        assert_eq!((moved.vxlan_port, moved.geneve_port), (8472, 6082));
        assert!(!redirect_config(Role::Uplink, false, TunnelPorts::default()).uplink_filter);

        let file = TempConfig::new(
            "filter",
            "[[interface]]\nname = \"eth1\"\nrole = \"uplink\"\n",
        );
        let path = file.0.to_str().unwrap();
        assert!(
            effective_config(&cli(&["--config", path]))
                .unwrap()
                .uplink_filter
        );
        let off = cli(&["--config", path, "--uplink-filter", "false"]);
        assert!(!effective_config(&off).unwrap().uplink_filter);
    }

    #[test]
    fn checksum_completion_is_on_unless_turned_off() {
        assert!(cli(&[]).complete_l4_checksums);
        assert!(!cli(&["--complete-l4-checksums", "false"]).complete_l4_checksums);
    }
}
