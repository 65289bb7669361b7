//! The daemon's configuration: a TOML file (`/etc/flagella/dataplane.toml`) that command-line
//! flags can override.
//!
//! ```toml
//! socket = "/run/flagella/dataplane.sock"   # control socket (mode 0600)
//! socket_group_access = false                # true: mode 0660, the daemon's group may connect
//!                                            # (the agent as another user in that group)
//! batch_size = 64                            # frames per batch, 1..=256
//! conntrack_entries = 131072                 # per worker
//! xdp_mode = "native"                        # or "generic" (slow; for drivers without XDP)
//! uplink_filter = true                       # the uplink hands the dataplane only what it owns
//! vxlan_port = 4789                          # tunnel ports, the same on every node
//! geneve_port = 6081
//! host_interface = "flg_host"                # the host's side of the host veth, or "off"
//! host_interface_peer = "flg_net"            # the dataplane's side
//! masquerade = true                          # pods' flows to the world leave as the node
//! masquerade_ports = "61000-65535"           # their source ports; must not overlap the
//!                                            # node's net.ipv4.ip_local_port_range
//! metrics_address = "127.0.0.1:9962"         # /metrics, or "off"
//! flow_export = "off"                        # or "file:/var/log/flagella/flows.json",
//!                                            # "unix:/run/collector.sock" (docs/monitor.md)
//! flow_export_rate = 10000                   # flows per second at most
//! flow_export_types = ["drop"]               # default []: all (drop, policy-verdict, trace)
//!
//! [[interface]]
//! name = "eth1"
//! role = "uplink"
//!
//! [[interface]]
//! name = "lxc-pod1"
//! role = "pod"
//!
//! [[worker]]
//! core = 1                                   # pin to CPU 1
//! interfaces = ["eth1", "lxc-pod1"]           # default: one worker for every interface
//! ```
//!
//! Or, instead of `[[worker]]` sections, several workers sharing every interface's queues
//! (queue q of each interface to worker q mod N; each flow is processed by the worker that owns
//! it, `pipeline::flow_owner`, whichever queue its frames arrive on):
//!
//! ```toml
//! workers = 2                                # every interface needs queues >= 2
//! cores = [2, 3]                             # optional: worker i pinned to cores[i]
//! hot_interfaces = 0                         # run-time interfaces need one worker
//! [[interface]]
//! name = "lxc-pod1"
//! role = "pod"
//! queues = 2                                 # ip link add ... numrxqueues 2 numtxqueues 2
//! ```
//!
//! Validation happens once, here: every error names the field and says what to write instead.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::api::flow_export::{parse_kinds, ExportConfig, ExportTarget};
use crate::pipeline::MAX_BATCH;

/// Where the configuration file lives unless `--config` says otherwise.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/flagella/dataplane.toml";
/// Where the control socket lives unless the configuration says otherwise.
pub const DEFAULT_SOCKET_PATH: &str = "/run/flagella/dataplane.sock";

/// What an interface is to the dataplane.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// The host side of a pod's veth pair.
    Pod,
    /// The node's link to the underlay (other nodes, the world).
    Uplink,
    /// The dataplane's side of the host interface (`host_interface_peer`): the daemon adds it
    /// itself; treated as a pod interface by its XDP program (all IP and ARP to the dataplane).
    Host,
}

/// How the XDP program is attached.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum XdpMode {
    /// In the driver: the fast path. The default.
    #[default]
    Native,
    /// After the kernel built an skb: works everywhere, slowly. Only when asked.
    Generic,
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InterfaceConfig {
    pub name: String,
    pub role: Role,
    /// Receive queues to open a socket on (default 1: queue 0).
    #[serde(default = "one")]
    pub queues: u32,
}

/// A `[[worker]]` section of the file: which interfaces one worker serves, on which core. The
/// daemon turns it into an `io::WorkerConfig` (the runtime one: ports, pipeline, socket geometry).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerSection {
    /// CPU to pin the busy-polling thread to.
    pub core: Option<usize>,
    /// Interfaces this worker serves (all of their queues, or its share of them).
    pub interfaces: Vec<String>,
    /// With `workers = N`: this worker serves queue q of each interface when
    /// `q % share.of == share.index`. Not written in the file (derived from `workers`).
    #[serde(skip)]
    pub share: Option<QueueShare>,
}

/// Worker `index` of `of` workers sharing every interface's queues.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueShare {
    pub index: usize,
    pub of: usize,
}

impl WorkerSection {
    /// Whether this worker serves queue `queue` of its interfaces.
    pub fn serves_queue(&self, queue: u32) -> bool {
        self.share
            .is_none_or(|s| queue as usize % s.of.max(1) == s.index)
    }
}

/// Most workers `workers = N` accepts.
pub const MAX_WORKERS: usize = 64;

/// The longest idle sleep accepted: beyond it, the first frame after a pause waits too long.
pub const MAX_IDLE_SLEEP_US: u64 = 10_000;

/// The whole configuration, validated.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DaemonConfig {
    #[serde(default = "default_socket")]
    pub socket: PathBuf,
    /// `false` (default): the control socket is mode 0600, only the daemon's user may connect.
    /// `true`: mode 0660, members of the daemon's group may too, so the agent can run as
    /// another user (which cannot signal or ptrace the dataplane).
    #[serde(default)]
    pub socket_group_access: bool,
    #[serde(default = "default_batch")]
    pub batch_size: usize,
    #[serde(default = "default_conntrack")]
    pub conntrack_entries: usize,
    #[serde(default)]
    pub xdp_mode: XdpMode,
    /// Microseconds an idle worker sleeps between passes (0: spin; see `Worker::set_idle_sleep`).
    #[serde(default)]
    pub idle_sleep_us: u64,
    /// Pod interfaces the first worker can take on while running (`interface.add` on the
    /// control socket: a CNI ADD needs no restart); their frames are reserved in its UMEM at
    /// start. 0: interfaces are fixed at start.
    #[serde(default = "default_hot_interfaces")]
    pub hot_interfaces: u32,
    /// `true` (default): the uplink's XDP program hands the dataplane only what it owns (tunnel
    /// traffic to the node, local pod addresses) and leaves the host's own traffic to the
    /// kernel (`daemon::host_path`). `false`: every IP frame of the uplink goes to the
    /// dataplane, which cannot give the host's traffic back (for a dedicated uplink only).
    #[serde(default = "yes")]
    pub uplink_filter: bool,
    /// The tunnels' UDP ports, the same on every node of the cluster (as Cilium's
    /// `tunnel-port`): what this node sends to, decapsulates and its uplink program takes.
    #[serde(default = "default_vxlan_port")]
    pub vxlan_port: u16,
    #[serde(default = "default_geneve_port")]
    pub geneve_port: u16,
    /// The kernel's side of the host interface (Cilium's `cilium_host`): a veth the daemon
    /// creates when absent, whose peer it serves; `off` for none (pods then cannot reach their
    /// node, nor the node its pods). See `daemon::host_link`.
    #[serde(default = "default_host_interface")]
    pub host_interface: String,
    /// The dataplane's side of that veth pair.
    #[serde(default = "default_host_interface_peer")]
    pub host_interface_peer: String,
    /// `true` (default): with an uplink, pods' flows to the world leave masqueraded to the
    /// node's underlay address (`daemon::masquerade`, `pipeline::masquerade`).
    #[serde(default = "yes")]
    pub masquerade: bool,
    /// Masquerade source ports, `FIRST-LAST`: outside the node's `ip_local_port_range`
    /// (checked at start) and the NodePort range (30000-32767).
    #[serde(default = "default_masquerade_ports")]
    pub masquerade_ports: String,
    /// Where `/metrics` (Prometheus text) is served: `address:port`, or `off`.
    #[serde(default = "default_metrics_address")]
    pub metrics_address: String,
    /// Flow export (docs/monitor.md): `file:PATH` (appended, one JSON flow a line; reopened on
    /// SIGHUP or when the path's inode changes), `unix:PATH` (a collector's Unix stream socket,
    /// reconnected when it comes back), or `off` (default).
    #[serde(default = "off")]
    pub flow_export: String,
    /// Flows exported per second at most (the rest are counted and reported as rate-limited).
    #[serde(default = "default_flow_export_rate")]
    pub flow_export_rate: u32,
    /// The event types exported (`drop`, `policy-verdict`, `trace`); empty (default): all.
    #[serde(default)]
    pub flow_export_types: Vec<String>,
    #[serde(default, rename = "interface")]
    pub interfaces: Vec<InterfaceConfig>,
    #[serde(default, rename = "worker")]
    pub workers: Vec<WorkerSection>,
    /// Workers sharing every interface's queues (default 1); see the module doc. Not with
    /// `[[worker]]` sections.
    #[serde(default = "one_worker", rename = "workers")]
    pub worker_count: usize,
    /// CPUs to pin the `worker_count` workers to, in order (empty: not pinned).
    #[serde(default)]
    pub cores: Vec<usize>,
}

fn one() -> u32 {
    1
}
fn one_worker() -> usize {
    1
}
fn yes() -> bool {
    true
}
fn default_socket() -> PathBuf {
    PathBuf::from(DEFAULT_SOCKET_PATH)
}
fn default_hot_interfaces() -> u32 {
    16
}
/// Most interfaces a worker takes on at run time.
pub const MAX_HOT_INTERFACES: u32 = 1024;
fn default_batch() -> usize {
    crate::pipeline::DEFAULT_BATCH
}
fn default_conntrack() -> usize {
    1 << 17
}
fn off() -> String {
    "off".to_string()
}
fn default_flow_export_rate() -> u32 {
    crate::api::flow_export::DEFAULT_RATE
}
fn default_metrics_address() -> String {
    crate::api::metrics::DEFAULT_ADDRESS.to_string()
}
fn default_host_interface() -> String {
    crate::daemon::host_link::DEFAULT_KERNEL_SIDE.to_string()
}
fn default_host_interface_peer() -> String {
    crate::daemon::host_link::DEFAULT_DATAPLANE_SIDE.to_string()
}
fn default_masquerade_ports() -> String {
    crate::tables::snat::DEFAULT_PORTS.to_string()
}
fn default_vxlan_port() -> u16 {
    crate::wire::vxlan::UDP_PORT
}
fn default_geneve_port() -> u16 {
    crate::wire::geneve::UDP_PORT
}

impl Default for DaemonConfig {
    fn default() -> Self {
        DaemonConfig {
            socket: default_socket(),
            socket_group_access: false,
            batch_size: default_batch(),
            conntrack_entries: default_conntrack(),
            xdp_mode: XdpMode::Native,
            idle_sleep_us: 0,
            hot_interfaces: default_hot_interfaces(),
            uplink_filter: true,
            vxlan_port: default_vxlan_port(),
            geneve_port: default_geneve_port(),
            host_interface: default_host_interface(),
            host_interface_peer: default_host_interface_peer(),
            masquerade: true,
            masquerade_ports: default_masquerade_ports(),
            metrics_address: default_metrics_address(),
            flow_export: off(),
            flow_export_rate: default_flow_export_rate(),
            flow_export_types: Vec::new(),
            interfaces: Vec::new(),
            workers: Vec::new(),
            worker_count: 1,
            cores: Vec::new(),
        }
    }
}

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}; pass --config with the right path or create the file")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error("{field}: {reason}")]
    Invalid { field: String, reason: String },
}

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field: field.into(),
        reason: reason.into(),
    }
}

impl DaemonConfig {
    /// Reads and validates a TOML file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(path, &text)
    }

    /// Parses and validates TOML text (`path` only names it in errors).
    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
        let cfg: DaemonConfig = toml::from_str(text).map_err(|e| ConfigError::Syntax {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks what serde cannot: ranges, references between sections, duplicates.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.batch_size == 0 || self.batch_size > MAX_BATCH {
            return Err(invalid(
                "batch_size",
                format!(
                    "{} is out of range: use 1 to {MAX_BATCH} (64 is a good default)",
                    self.batch_size
                ),
            ));
        }
        if self.conntrack_entries < 1024 {
            return Err(invalid(
                "conntrack_entries",
                "use at least 1024 (131072 is the default)",
            ));
        }
        if self.hot_interfaces > MAX_HOT_INTERFACES {
            return Err(invalid(
                "hot_interfaces",
                format!("use 0 (interfaces fixed at start) to {MAX_HOT_INTERFACES}"),
            ));
        }
        if self.idle_sleep_us > MAX_IDLE_SLEEP_US {
            return Err(invalid(
                "idle_sleep_us",
                format!("use 0 (spin) to {MAX_IDLE_SLEEP_US}; 50 to 200 keeps latency low"),
            ));
        }
        if self.vxlan_port == 0 || self.geneve_port == 0 || self.vxlan_port == self.geneve_port {
            return Err(invalid(
                "vxlan_port",
                format!(
                    "the tunnel ports ({} for VXLAN, {} for Geneve) must be distinct and non-zero: \
                     use the cluster's (default 4789 and 6081)",
                    self.vxlan_port, self.geneve_port
                ),
            ));
        }
        if let Err(e) = self
            .masquerade_ports
            .parse::<crate::tables::snat::PortRange>()
        {
            return Err(invalid("masquerade_ports", e.to_string()));
        }
        if self.metrics().is_err() {
            return Err(invalid(
                "metrics_address",
                format!(
                    "`{}` is neither ADDRESS:PORT nor `off`: e.g. 127.0.0.1:9962",
                    self.metrics_address
                ),
            ));
        }
        if let Err(e) = self.flow_export() {
            return Err(invalid("flow_export", e));
        }
        if let Some((kernel, peer)) = self.host_interface() {
            for (field, name) in [("host_interface", kernel), ("host_interface_peer", peer)] {
                if name.is_empty() || name.len() > 15 {
                    return Err(invalid(
                        field,
                        "an interface name has 1 to 15 characters (or host_interface = \"off\")",
                    ));
                }
                if self
                    .interfaces
                    .iter()
                    .any(|i| i.name == name && i.role != Role::Host)
                {
                    return Err(invalid(
                        field,
                        format!("`{name}` is also an [[interface]]: name the host veth otherwise"),
                    ));
                }
            }
            if kernel == peer {
                return Err(invalid(
                    "host_interface_peer",
                    "the two sides of the host veth need different names (default flg_host / flg_net)",
                ));
            }
        }
        let mut uplinks = 0;
        for (i, iface) in self.interfaces.iter().enumerate() {
            let field = format!("interface[{i}]");
            if iface.name.is_empty() || iface.name.len() > 15 {
                return Err(invalid(
                    format!("{field}.name"),
                    "an interface name has 1 to 15 characters (see `ip link`)",
                ));
            }
            if iface.queues == 0 {
                return Err(invalid(format!("{field}.queues"), "use at least 1"));
            }
            if self.interfaces[..i].iter().any(|o| o.name == iface.name) {
                return Err(invalid(
                    format!("{field}.name"),
                    format!("`{}` is listed twice", iface.name),
                ));
            }
            uplinks += usize::from(iface.role == Role::Uplink);
        }
        if uplinks > 1 {
            return Err(invalid(
                "interface",
                "at most one interface can have role = \"uplink\"",
            ));
        }
        for (i, w) in self.workers.iter().enumerate() {
            for name in &w.interfaces {
                if !self.interfaces.iter().any(|x| &x.name == name) {
                    return Err(invalid(
                        format!("worker[{i}].interfaces"),
                        format!("`{name}` is not declared in an [[interface]] section"),
                    ));
                }
            }
        }
        // With [[worker]] sections, every interface needs one: the XDP program of an interface
        // no worker serves would pass its frames to the kernel, past the dataplane's policy.
        if !self.workers.is_empty() {
            for (i, iface) in self.interfaces.iter().enumerate() {
                if !self
                    .workers
                    .iter()
                    .any(|w| w.interfaces.contains(&iface.name))
                {
                    return Err(invalid(
                        format!("interface[{i}]"),
                        format!(
                            "`{}` is served by no [[worker]]: add it to one worker's `interfaces`",
                            iface.name
                        ),
                    ));
                }
            }
        }
        self.validate_shared_workers()?;
        self.validate_every_queue_served_once()
    }

    /// `workers = N`: no `[[worker]]` sections beside it, a core for each worker if any,
    /// enough queues on every interface for each worker to receive and transmit on it.
    fn validate_shared_workers(&self) -> Result<(), ConfigError> {
        let n = self.worker_count;
        if n == 0 || n > MAX_WORKERS {
            return Err(invalid(
                "workers",
                format!(
                    "{n} is out of range: use 1 to {MAX_WORKERS} (one per core you give the dataplane)"
                ),
            ));
        }
        if !self.cores.is_empty() && self.cores.len() != n {
            return Err(invalid(
                "cores",
                format!(
                    "{} core(s) for {n} worker(s): list one core per worker, or none",
                    self.cores.len()
                ),
            ));
        }
        if n == 1 {
            return Ok(());
        }
        if !self.workers.is_empty() {
            return Err(invalid(
                "workers",
                "`workers = N` shares every interface's queues among N workers and [[worker]] \
                 sections give interfaces to workers: use one or the other",
            ));
        }
        if self.hot_interfaces > 0 {
            return Err(invalid(
                "hot_interfaces",
                format!(
                    "interfaces added at run time are served by the first worker only, so the \
                     other {} worker(s) could not transmit to them: with workers = {n}, set \
                     hot_interfaces = 0 (--hot-interfaces 0) and list the interfaces",
                    n - 1
                ),
            ));
        }
        for (i, iface) in self.interfaces.iter().enumerate() {
            if (iface.queues as usize) < n {
                return Err(invalid(
                    format!("interface[{i}].queues"),
                    format!(
                        "`{}` has {} queue(s) for {n} workers: every worker needs a queue of \
                         every interface to receive and transmit on; give it at least {n} \
                         (veth: `ip link add ... numrxqueues {n} numtxqueues {n}`; a NIC: \
                         `ethtool -L`) and set queues = {n}, or use fewer workers",
                        iface.name, iface.queues
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Every queue of every interface is served by exactly one worker: a queue nobody serves
    /// would leave its frames to the XDP program's fallback (the kernel), past the policy; one
    /// served twice cannot be bound twice.
    fn validate_every_queue_served_once(&self) -> Result<(), ConfigError> {
        let workers = self.effective_workers();
        for (i, iface) in self.interfaces.iter().enumerate() {
            for queue in 0..iface.queues {
                let serving = workers
                    .iter()
                    .filter(|w| w.interfaces.contains(&iface.name) && w.serves_queue(queue))
                    .count();
                if serving != 1 {
                    return Err(invalid(
                        format!("interface[{i}]"),
                        format!(
                            "queue {queue} of `{}` is served by {serving} workers: list each \
                             interface in exactly one [[worker]] section (or use `workers = N`)",
                            iface.name
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    /// The (interface, queue) pairs worker `section` opens a socket on, in order.
    pub fn ports_of(&self, section: &WorkerSection) -> Vec<(String, u32)> {
        section
            .interfaces
            .iter()
            .filter_map(|name| self.interfaces.iter().find(|i| &i.name == name))
            .flat_map(|i| {
                (0..i.queues)
                    .filter(|&q| section.serves_queue(q))
                    .map(|q| (i.name.clone(), q))
            })
            .collect()
    }

    /// Where to serve `/metrics`: `None` for `off`.
    pub fn metrics(&self) -> Result<Option<std::net::SocketAddr>, std::net::AddrParseError> {
        if self.metrics_address.eq_ignore_ascii_case("off") {
            return Ok(None);
        }
        self.metrics_address.parse().map(Some)
    }

    /// The flow export: `None` for `off`; an error (what to write) for a bad target or type.
    pub fn flow_export(&self) -> Result<Option<ExportConfig>, String> {
        if self.flow_export.eq_ignore_ascii_case("off") {
            return Ok(None);
        }
        Ok(Some(ExportConfig {
            target: self.flow_export.parse::<ExportTarget>()?,
            rate: self.flow_export_rate,
            kinds: parse_kinds(&self.flow_export_types)?,
        }))
    }

    /// The workers to run: as configured; `workers = N` workers sharing every interface's
    /// queues; or one worker for every interface (pinned to the one core of `cores`, if any).
    pub fn effective_workers(&self) -> Vec<WorkerSection> {
        let all: Vec<String> = self.interfaces.iter().map(|i| i.name.clone()).collect();
        if self.worker_count > 1 {
            let of = self.worker_count;
            return (0..of)
                .map(|index| WorkerSection {
                    core: self.cores.get(index).copied(),
                    interfaces: all.clone(),
                    share: Some(QueueShare { index, of }),
                })
                .collect();
        }
        if self.workers.is_empty() {
            vec![WorkerSection {
                core: self.cores.first().copied(),
                interfaces: all,
                share: None,
            }]
        } else {
            self.workers.clone()
        }
    }

    /// The host interface's (kernel side, dataplane side) names, unless it is `off`.
    pub fn host_interface(&self) -> Option<(&str, &str)> {
        (!self.host_interface.eq_ignore_ascii_case("off")).then_some((
            self.host_interface.as_str(),
            self.host_interface_peer.as_str(),
        ))
    }

    /// This configuration with the host interface's dataplane side as an interface (role
    /// `host`, one queue), served by the first worker when workers are listed; unchanged when
    /// the host interface is off or already there.
    pub fn with_host_interface(&self) -> DaemonConfig {
        let mut cfg = self.clone();
        let Some((_, peer)) = self.host_interface() else {
            return cfg;
        };
        if cfg.interfaces.iter().any(|i| i.name == peer) {
            return cfg;
        }
        cfg.interfaces.push(InterfaceConfig {
            name: peer.to_string(),
            role: Role::Host,
            // The daemon creates the host veth with a queue per worker (`host_queues`).
            queues: self.host_queues(),
        });
        if let Some(first) = cfg.workers.first_mut() {
            first.interfaces.push(peer.to_string());
        }
        cfg
    }

    /// Queues of the host veth the daemon creates: one per worker sharing the queues.
    pub fn host_queues(&self) -> u32 {
        u32::try_from(self.worker_count.max(1)).unwrap_or(1)
    }

    /// The uplink, if one is configured.
    pub fn uplink(&self) -> Option<&InterfaceConfig> {
        self.interfaces.iter().find(|i| i.role == Role::Uplink)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<DaemonConfig, ConfigError> {
        DaemonConfig::parse(Path::new("test.toml"), text)
    }

    #[test]
    fn defaults_and_full_example() {
        let cfg = parse("").unwrap();
        assert_eq!(cfg, DaemonConfig::default());
        let cfg = parse(
            r#"
            socket = "/tmp/x.sock"
            batch_size = 128
            xdp_mode = "generic"
            [[interface]]
            name = "eth1"
            role = "uplink"
            [[interface]]
            name = "lxc1"
            role = "pod"
            queues = 2
            [[worker]]
            core = 1
            interfaces = ["eth1", "lxc1"]
            "#,
        )
        .unwrap();
        assert_eq!(cfg.batch_size, 128);
        assert_eq!(cfg.xdp_mode, XdpMode::Generic);
        assert!(cfg.uplink_filter, "on unless turned off");
        assert_eq!(cfg.uplink().map(|i| i.name.as_str()), Some("eth1"));
        assert_eq!(cfg.interfaces[1].queues, 2);
        assert_eq!(cfg.effective_workers()[0].core, Some(1));
    }

    #[test]
    fn the_uplink_filter_can_be_turned_off() {
        assert!(DaemonConfig::default().uplink_filter);
        assert!(!parse("uplink_filter = false").unwrap().uplink_filter);
        assert!(matches!(
            parse("uplink_filter = 1"),
            Err(ConfigError::Syntax { .. })
        ));
    }

    #[test]
    fn the_host_interface_is_on_by_default_and_served_by_the_first_worker() {
        let cfg = parse("[[interface]]\nname = \"a\"\nrole = \"pod\"\n[[worker]]\ninterfaces = [\"a\"]\n[[worker]]\ninterfaces = []\n").unwrap();
        assert_eq!(cfg.host_interface(), Some(("flg_host", "flg_net")));
        let full = cfg.with_host_interface();
        assert_eq!(full.interfaces.len(), 2);
        assert_eq!(full.interfaces[1].role, Role::Host);
        assert_eq!(full.workers[0].interfaces, vec!["a", "flg_net"]);
        full.validate().unwrap();
        assert_eq!(full.with_host_interface(), full, "added once");

        let off = parse("host_interface = \"off\"").unwrap();
        assert_eq!(off.host_interface(), None);
        assert_eq!(off.with_host_interface(), off);
        let renamed = parse("host_interface = \"hst0\"\nhost_interface_peer = \"hst1\"").unwrap();
        assert_eq!(renamed.host_interface(), Some(("hst0", "hst1")));
    }

    #[test]
    fn one_default_worker_serves_every_interface() {
        let cfg = parse("[[interface]]\nname = \"a\"\nrole = \"pod\"\n[[interface]]\nname = \"b\"\nrole = \"pod\"\n").unwrap();
        let w = cfg.effective_workers();
        assert_eq!(w.len(), 1);
        assert_eq!(w[0].interfaces, vec!["a", "b"]);
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            ("batch_size = 0", "batch_size"),
            ("batch_size = 300", "batch_size"),
            ("conntrack_entries = 10", "conntrack_entries"),
            ("[[interface]]\nname = \"\"\nrole = \"pod\"", "interface[0].name"),
            ("[[interface]]\nname = \"a\"\nrole = \"pod\"\nqueues = 0", "interface[0].queues"),
            ("[[interface]]\nname = \"a\"\nrole = \"pod\"\n[[interface]]\nname = \"a\"\nrole = \"pod\"", "interface[1].name"),
            ("[[interface]]\nname = \"a\"\nrole = \"uplink\"\n[[interface]]\nname = \"b\"\nrole = \"uplink\"", "interface"),
            ("[[worker]]\ninterfaces = [\"nope\"]", "worker[0].interfaces"),
            ("masquerade_ports = \"65535-61000\"", "masquerade_ports"),
            ("masquerade_ports = \"61000\"", "masquerade_ports"),
            (
                "[[interface]]\nname = \"a\"\nrole = \"pod\"\n[[interface]]\nname = \"b\"\nrole = \"pod\"\n[[worker]]\ninterfaces = [\"a\"]",
                "interface[1]",
            ),
            ("vxlan_port = 6081", "vxlan_port"),
            ("metrics_address = \"nowhere\"", "metrics_address"),
            ("flow_export = \"/tmp/flows\"", "flow_export"),
            ("flow_export = \"file:/f\"\nflow_export_types = [\"drops\"]", "flow_export"),
            ("host_interface_peer = \"flg_host\"", "host_interface_peer"),
            ("host_interface = \"a-very-long-interface-name\"", "host_interface"),
            ("[[interface]]\nname = \"flg_net\"\nrole = \"pod\"", "host_interface_peer"),
        ];
        for (text, field) in cases {
            match parse(text) {
                Err(ConfigError::Invalid { field: f, .. }) => assert_eq!(f, field, "{text}"),
                other => panic!("{text}: expected an error on {field}, got {other:?}"),
            }
        }
    }

    const TWO_QUEUES: &str = "[[interface]]\nname = \"a\"\nrole = \"pod\"\nqueues = 2\n\
                              [[interface]]\nname = \"up\"\nrole = \"uplink\"\nqueues = 3\n";

    #[test]
    fn shared_workers_serve_every_queue_of_every_interface_once() {
        let text = format!("workers = 2\ncores = [4, 5]\nhot_interfaces = 0\n{TWO_QUEUES}");
        let cfg = parse(&text).unwrap();
        let workers = cfg.effective_workers();
        assert_eq!(workers.len(), 2);
        assert_eq!((workers[0].core, workers[1].core), (Some(4), Some(5)));
        let ports = |w: &WorkerSection| cfg.ports_of(w);
        let name = |n: &str, q| (n.to_string(), q);
        assert_eq!(
            ports(&workers[0]),
            vec![name("a", 0), name("up", 0), name("up", 2)]
        );
        assert_eq!(ports(&workers[1]), vec![name("a", 1), name("up", 1)]);
        // The host veth the daemon adds gets a queue per worker, shared like the others.
        let with_host = cfg.with_host_interface();
        let host = with_host.interfaces.last().unwrap();
        assert_eq!((host.role, host.queues), (Role::Host, 2));
        assert!(with_host.validate().is_ok());
        // One worker (the default) serves every queue.
        let one = parse(TWO_QUEUES).unwrap();
        assert_eq!(one.ports_of(&one.effective_workers()[0]).len(), 5);
    }

    #[test]
    fn shared_workers_refuse_what_they_cannot_serve() {
        let cases = [
            (format!("workers = 0\n{TWO_QUEUES}"), "workers"),
            (format!("workers = 65\nhot_interfaces = 0\n{TWO_QUEUES}"), "workers"),
            (format!("workers = 3\nhot_interfaces = 0\n{TWO_QUEUES}"), "interface[0].queues"),
            (format!("workers = 2\n{TWO_QUEUES}"), "hot_interfaces"),
            (format!("workers = 2\nhot_interfaces = 0\ncores = [1]\n{TWO_QUEUES}"), "cores"),
            (
                format!("workers = 2\nhot_interfaces = 0\n{TWO_QUEUES}[[worker]]\ninterfaces = [\"a\", \"up\"]\n"),
                "workers",
            ),
            (
                format!("{TWO_QUEUES}[[worker]]\ninterfaces = [\"a\", \"up\"]\n[[worker]]\ninterfaces = [\"a\"]\n"),
                "interface[0]",
            ),
        ];
        for (text, field) in cases {
            match parse(&text) {
                Err(ConfigError::Invalid { field: f, reason }) => {
                    assert_eq!(f, field, "{text}: {reason}");
                    assert!(reason.len() > 30, "the message says what to do: {reason}");
                }
                other => panic!("{text}: expected an error on {field}, got {other:?}"),
            }
        }
    }

    #[test]
    fn syntax_errors_and_unknown_fields_are_refused() {
        assert!(matches!(
            parse("batch_size = "),
            Err(ConfigError::Syntax { .. })
        ));
        assert!(matches!(
            parse("batch = 64"),
            Err(ConfigError::Syntax { .. })
        ));
        assert!(matches!(
            parse("[[interface]]\nname = \"a\"\nrole = \"router\""),
            Err(ConfigError::Syntax { .. })
        ));
        let err = DaemonConfig::load(Path::new("/nonexistent/flagella.toml")).unwrap_err();
        assert!(err.to_string().contains("--config"), "{err}");
    }
}
