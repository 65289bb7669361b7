//! Command-line interface: `gen`, `sink`, `forward`, `report`, `converge`, `xnode`, `ingress`,
//! `scale`, `monitor-cost`, `cni-add`, `policy`, `xdp-sink`. Parsing
//! only; the subcommands live in their modules. Every value a user types is validated here
//! (sizes, flow counts, durations), so the rest of the crate can rely on the ranges stated
//! below.

use std::net::SocketAddrV4;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use serde::Serialize;

/// Ethernet (14) + IPv4 (20) + UDP (8): the smallest frame `--size` may ask for.
pub const MIN_FRAME: usize = 42;
/// Largest frame on a 1500-byte MTU.
pub const MAX_FRAME: usize = 1514;

const ABOUT: &str =
    "Pod -> pod UDP forwarding benchmarks (flagella-dataplane vs the kernel vs Open vSwitch \
(AF_XDP)) and policy convergence (vs iptables-restore and nft)";

const AFTER_HELP: &str = "\
Typical use (as root, from the workspace):
  cargo build --release -p dataplane --features afxdp --bin flagella-dataplane
  cargo build --release -p bench
  sudo target/release/flagella-bench report --duration 10
  sudo target/release/flagella-bench forward --target flagella --flows 10000
  sudo target/release/flagella-bench forward --target flagella --generator xdp

`converge` measures policy convergence (etcd write -> first packet decided by it) against
iptables-restore and nft: see `flagella-bench converge --help`. `policy` measures what policy
size costs on the data path, against iptables and nftables: see `flagella-bench policy --help`.

`gen` and `sink` are the traffic ends `forward` starts inside the pod namespaces
(`ip netns exec POD flagella-bench sink --port 9000`); they also work on their own.
Everything `forward` creates carries the prefix fbn-<pid> and is removed on exit, pass or fail.";

#[derive(Debug, Parser)]
#[command(name = "flagella-bench", version, about = ABOUT, after_help = AFTER_HELP)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Send UDP as fast as possible: sendmmsg in batches, one socket (source port) per flow
    /// (or prebuilt frames: --generator packet / xdp).
    Gen(GenArgs),
    /// Receive UDP with recvmmsg and count; prints packets per second.
    Sink(SinkArgs),
    /// Build a node with two pods, forward A -> B through one target, measure at the sink.
    Forward(ForwardArgs),
    /// Run every target over each flow count in one run; print a table with ratios to kernel
    /// forwarding measured in the same run.
    Report(ReportArgs),
    /// Policy convergence: time from the etcd write of a policy to the first packet the
    /// dataplane admits by it, at each endpoint count, next to iptables-restore and nft
    /// loading the same state. Needs root.
    #[command(after_help = CONVERGE_HELP)]
    Converge(ConvergeArgs),
    /// Across nodes: pod A on node 1 -> pod B on node 2 over an underlay veth, through
    /// flagella-dataplane in each node (VXLAN, Geneve, native routing) and through the
    /// kernel's own VXLAN device, in the same run; a table per round with ratios to
    /// kernel-vxlan.
    #[command(after_help = XNODE_HELP)]
    Xnode(XnodeArgs),
    /// Control-plane scale: a synthetic cluster (N endpoints with ~20 labels each, M nodes,
    /// --identities label sets, 1,000 policies of the common shapes) in a real etcd; the
    /// agent's model in process, real agents on stand-in dataplane sockets, and iptables /
    /// nft loading the same rules (root) in the same run.
    #[command(after_help = SCALE_HELP)]
    Scale(ScaleArgs),
    /// Into and out of the cluster: an external client -> node 1's NodePort (DSR, SNAT) and
    /// pod -> world through masquerade; UDP Mpps and TCP connections per second through
    /// flagella-dataplane in each node and through kernel forwarding with kube-proxy's
    /// iptables rules, in the same run; ratios to iptables, generator ceiling flagged.
    #[command(after_help = INGRESS_HELP)]
    Ingress(IngressArgs),
    /// What a `flagella monitor` client costs forwarding: a TCP transfer beside a flood of
    /// denied UDP (every datagram a monitor event), with and without the client in
    /// alternated rounds; medians and their ratio. Needs root.
    #[command(after_help = MONITOR_COST_HELP)]
    MonitorCost(MonitorCostArgs),
    /// CNI ADD latency: for --pods pods, the plugin's run and the time until the pod can send
    /// (its first datagram reaches another pod), p50/p99, flagella-cni (with etcd, the agent
    /// and the dataplane) against Debian's ptp + host-local in the same run. Needs root.
    #[command(after_help = CNI_ADD_HELP)]
    CniAdd(CniAddArgs),
    /// Policy size on the data path: pod -> pod through flagella-dataplane with N policy
    /// entries on the destination, against kernel forwarding with N iptables rules (nft and
    /// legacy backends) and one nftables rule over a set of N; per point an RFC 2544-style
    /// search for the highest rate with loss under a threshold, flat-out throughput, and
    /// latency at fractions of that rate. Writes JSON, Markdown and PNG plots. Needs root.
    #[command(after_help = POLICY_HELP)]
    Policy(PolicyArgs),
    /// Drop every frame on an interface with an XDP program (the `policy` benchmark's
    /// forwarder-level sink), counted by the kernel's per-queue xdp_drops; run it inside a
    /// namespace you made (`ip netns exec NS flagella-bench xdp-sink --dev eth0`).
    XdpSink(XdpSinkArgs),
    /// Dataplane restarts: the delivery gap and the datagrams lost of a UDP stream between two
    /// pods while flagella-dataplane (programs pinned, conntrack kept) is restarted gracefully
    /// and by kill -9, p50/p99 per kind. Needs root.
    Restart(RestartArgs),
}

const CNI_ADD_HELP: &str = "\
Everything runs in a node namespace fca-<pid> (removed on exit, pass or fail, with every pod
namespace): etcd, flagella-control, flagella-dataplane (--hot-interfaces, --idle-sleep-us
100) and the plugins, called as a runtime calls them (CNI_* variables, the configuration on
stdin, a fresh namespace per pod). flagella-cni's addresses come from the agent's IPAM
(10.93.0.0/24), ptp's from host-local (10.94.0.0/24). Per plugin a receiver pod is added first
(untimed); each measured pod sends a datagram to it every millisecond from the end of ADD
until one arrives.

Typical use (as root, from the workspace; etcd-server and containernetworking-plugins
installed):
  cargo build --release -p dataplane --features afxdp --bin flagella-dataplane
  cargo build --release -p bench -p control
  sudo target/release/flagella-bench cni-add --pods 100";

#[derive(Clone, Debug, Args)]
pub struct CniAddArgs {
    /// Pods added per plugin.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=200))]
    pub pods: u64,
    /// The flagella-cni binary (default: next to this one).
    #[arg(long, value_name = "PATH")]
    pub cni: Option<PathBuf>,
    /// The flagella-control binary (default: next to this one).
    #[arg(long, value_name = "PATH")]
    pub control: Option<PathBuf>,
    /// The flagella-dataplane binary (default: next to this one).
    #[arg(long, value_name = "PATH")]
    pub dataplane: Option<PathBuf>,
}

const MONITOR_COST_HELP: &str = "\
Topology: forward's (node namespace fmc-<pid>, pods A 10.81.0.11 and B 10.81.0.12), removed on
exit, pass or fail; flagella-dataplane on the pods' veths, configured over its control socket;
A -> B TCP 5201 allowed, A -> B UDP 9001 denied by A's egress policy.
A round: the flood (sendmmsg from A to B:9001) starts, then A sends --mib MiB to a sink in B,
which acknowledges the last byte; the figure is the transfer's rate. With the client, the real
CLI (`flagella -o json monitor --no-labels`) is subscribed first and its output tallied.
Rounds alternate: without, with, with, without, ... (--rounds pairs).

Typical use (as root, from the workspace):
  cargo build --release -p dataplane --features afxdp --bin flagella-dataplane
  cargo build --release -p bench -p control --bin flagella-bench --bin flagella
  sudo target/release/flagella-bench monitor-cost --rounds 5 --mib 64";

#[derive(Clone, Debug, Args)]
pub struct MonitorCostArgs {
    /// Pairs of rounds (one without the client, one with it).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=100))]
    pub rounds: u64,
    /// MiB the transfer sends per round.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=16384))]
    pub mib: u64,
    /// flagella-dataplane's --monitor-rate (events a second to subscribers; 0: no limit).
    /// Default: the dataplane's default.
    #[arg(long, value_name = "N")]
    pub monitor_rate: Option<u32>,
    /// The `flagella` CLI (default: next to this binary).
    #[arg(long, value_name = "PATH")]
    pub flagella: Option<PathBuf>,
    /// The flagella-dataplane binary (default: next to this one).
    #[arg(long, value_name = "PATH")]
    pub dataplane: Option<PathBuf>,
    /// CPU of the dataplane's worker.
    #[arg(long, default_value_t = 1)]
    pub worker_core: usize,
}

#[derive(Clone, Debug, Args)]
pub struct RestartArgs {
    /// Restarts of each kind (graceful, kill -9), alternately.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub restarts: u32,
    /// Datagrams per second from pod A to pod B (the gap's resolution is its inverse).
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub rate: u32,
    #[command(flatten)]
    pub run: RunArgs,
}

const INGRESS_HELP: &str = "\
Topology (everything carries the prefix fin-<pid>-<n> and is removed on exit, pass or fail):
  fin-..-x  client / world server 10.78.0.2 <-veth-> xr 10.78.0.1  fin-..-u: the router,
                                                     br0 10.80.0.254  and the underlay bridge
  node 1 (fin-..-n1) eth0 10.80.0.1, pod A 10.81.0.11 | node 2 (fin-..-n2) eth0 10.80.0.2,
  pod B 10.82.0.12 (the service's backend); the nodes' default route is the router.
Scenarios:
  nodeport-dsr    the client sends to 10.80.0.1:30080; node 1 forwards to pod B, node 2
                  answers the client directly (flagella: mode dsr; iptables: DNAT only)
  nodeport-snat   the same, node 1 also translates the client's source (flagella: mode snat;
                  iptables: DNAT and kube-proxy's mark + MASQUERADE)
  masquerade      pod A sends to the world server 10.78.0.2 (flagella: masquerade, the
                  default; iptables: MASQUERADE of the pod CIDR leaving eth0)
Per scenario and target: (a) UDP from the built-in generator over --flows flows into the
sink (Mpps), (b) --clients TCP clients in a loop of connect, 32-byte request, 64-byte
response, close (connections per second). `ceiling` is the generator and the clients one
veth from the router, nothing forwarding: what they can do alone, measured in the same round.

Typical use (as root, from the workspace):
  scripts/install-deps.sh iptables
  cargo build --release -p dataplane --features afxdp --bin flagella-dataplane
  cargo build --release -p bench
  sudo target/release/flagella-bench ingress --duration 3 --rounds 2 --markdown";

/// What `ingress` measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, ValueEnum)]
pub enum Scenario {
    /// External client -> node 1's NodePort, backend on node 2 answering the client directly.
    NodeportDsr,
    /// External client -> node 1's NodePort, client source translated, replies via node 1.
    NodeportSnat,
    /// Pod A -> a server outside the cluster, masqueraded to node 1's address.
    Masquerade,
}

impl Scenario {
    pub const ALL: [Scenario; 3] = [
        Scenario::NodeportDsr,
        Scenario::NodeportSnat,
        Scenario::Masquerade,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Scenario::NodeportDsr => "nodeport-dsr",
            Scenario::NodeportSnat => "nodeport-snat",
            Scenario::Masquerade => "masquerade",
        }
    }
}

#[derive(Clone, Debug, Args)]
pub struct IngressArgs {
    /// Scenarios, comma-separated.
    #[arg(
        long,
        alias = "scenario",
        value_enum,
        value_delimiter = ',',
        default_value = "nodeport-dsr,nodeport-snat,masquerade"
    )]
    pub scenarios: Vec<Scenario>,
    /// UDP flows of the generator (one source port each).
    #[arg(long, default_value_t = 64, value_parser = parse_flows)]
    pub flows: u32,
    /// Concurrent TCP clients (threads) of the connection-rate measurement.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u64).range(1..=1024))]
    pub clients: u64,
    /// flagella-dataplane's --masquerade-ports (FIRST-LAST) for SNAT and masquerade; absent:
    /// its default, 61000-65535. A range of N ports holds N open flows to one server (a closed
    /// TCP flow's port is recycled when no other is free).
    #[arg(long, value_name = "FIRST-LAST")]
    pub masquerade_ports: Option<String>,
    /// Rounds: the ceiling and every (scenario, target) once per round, in the same order.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub rounds: u32,
    /// Print the tables as Markdown.
    #[arg(long)]
    pub markdown: bool,
    #[command(flatten)]
    pub run: RunArgs,
}

const SCALE_HELP: &str = "\
Measured per --endpoints value (everything carries the prefix fsc-<pid>-<n> and is removed on
exit):
  model:  the agent's ClusterState for node 0 in this process: initial sync (listing -> local
          maps), memory it added, one policy change, one pod added (remote, local);
  agent:  flagella-control for the first --agents nodes, each on a stand-in dataplane socket
          (it applies every request to a mirror): start -> its node's policy in the dataplane
          (checked equal to a from-scratch compile of etcd's contents), policy put
          acknowledged -> first request to the dataplane, resident memory;
  iptables-restore / nft -f: the equivalent rules for node 0 (root only; --skip-baselines).

Typical use (from the workspace):
  cargo build --release -p control --bin flagella-control
  cargo build --release -p bench
  target/release/flagella-bench scale --endpoints 10000,100000 --nodes 1000 --markdown

flagella-control is taken from next to this binary unless --control says otherwise.";

const XNODE_HELP: &str = "\
Topology (everything carries the prefix fxn-<pid>-<n> and is removed on exit, pass or fail):
  fxn-<pid>-<n>-a  eth0 10.81.0.11 <-veth-> node 1 (fxn-<pid>-<n>-n1) eth0 10.80.0.1/24
                                              | underlay veth
  fxn-<pid>-<n>-b  eth0 10.82.0.12 <-veth-> node 2 (fxn-<pid>-<n>-n2) eth0 10.80.0.2/24
The generator runs in pod A, the sink in pod B, as for `forward`. The flagella targets run
flagella-dataplane in each node (--interface eth0=uplink and the pod's veth) and configure it
over its control socket (local_node with underlay_ipv4, the pod's endpoint, ipcache, the peer
node, an egress policy on A and an ingress policy on B); next hops come from the kernel.

Typical use (as root, from the workspace):
  cargo build --release -p dataplane --features afxdp --bin flagella-dataplane
  cargo build --release -p bench
  sudo target/release/flagella-bench xnode --generator xdp --duration 10 --rounds 3 --markdown
  sudo target/release/flagella-bench xnode --target flagella-geneve --flows 10000";

const CONVERGE_HELP: &str = "\
What it does, per --endpoints value (everything it creates carries the prefix fcv-<pid>-<n> and
is removed on exit, pass or fail):
  1. a node namespace with two real pods A and B (veth pairs), flagella-dataplane on them, an
     etcd of its own on loopback (unless --etcd), a synthetic cluster written to etcd (N
     endpoints: A, B, up to 98 more on this node, the rest on --nodes remote nodes; ~1,000
     identities; --policies background policies; B under a default-deny ingress policy), then
     flagella-control for the node, and a wait until it has converged;
  2. A sends a UDP probe to B every --probe-interval-us, each a new flow (new ports), so each is
     decided by policy;
  3. --iterations times: put a policy allowing A -> B, time until the first probe reaches B;
     delete it, wait until probes stop;
  4. iptables-restore (full state and one policy's rules) and nft (a set of N addresses, one
     element added) in a scratch namespace: the same state, the same run.

Typical use (as root, from the workspace):
  cargo build --release -p dataplane --features afxdp --bin flagella-dataplane
  cargo build --release -p control --bin flagella-control
  cargo build --release -p bench
  scripts/install-deps.sh etcd-server iptables nftables
  sudo target/release/flagella-bench converge --endpoints 1000,10000 --markdown

flagella-dataplane and flagella-control are taken from next to this binary unless --dataplane /
--control say otherwise.";

/// How packets are generated.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Generator {
    /// UDP sockets and sendmmsg (works everywhere).
    Socket,
    /// The kernel's pktgen (/proc/net/pktgen), driven by scripts/pktgen/pktgen_udp_flows.sh
    /// (found through FLAGELLA_PKTGEN_SCRIPTS, else the workspace this binary was built in);
    /// refused with what to do where /proc/net/pktgen is absent.
    Pktgen,
    /// Prebuilt Ethernet frames on an AF_PACKET socket (sendmmsg, qdisc bypassed): no UDP/IP
    /// stack per packet, so a cheaper generator than `socket`; needs --dev, --dst-mac, --src.
    Packet,
    /// The same frames from an AF_XDP socket (copy mode, TX only, no XDP program) on --dev
    /// queue 0: the fastest generator here; needs root, --dev, --dst-mac, --src.
    Xdp,
}

/// What forwards between the pods.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, ValueEnum)]
pub enum Target {
    /// flagella-dataplane (AF_XDP), with an ingress and an egress policy and conntrack.
    Flagella,
    /// The kernel's IPv4 forwarding in the node namespace.
    Kernel,
    /// Open vSwitch userspace datapath, AF_XDP ports, one plain forwarding rule each way.
    Ovs,
    /// Open vSwitch as `ovs`, with a conntrack pipeline (ct, ct(commit), +new/+est).
    OvsCt,
}

impl Target {
    pub const ALL: [Target; 4] = [Target::Kernel, Target::Flagella, Target::Ovs, Target::OvsCt];

    pub fn name(self) -> &'static str {
        match self {
            Target::Flagella => "flagella",
            Target::Kernel => "kernel",
            Target::Ovs => "ovs",
            Target::OvsCt => "ovs-ct",
        }
    }
}

#[derive(Clone, Debug, Args)]
pub struct GenArgs {
    /// Destination address and port.
    #[arg(long, value_name = "IP:PORT")]
    pub dst: SocketAddrV4,
    /// Ethernet frame size in bytes, without FCS (42..=1514); the UDP payload is size - 42.
    #[arg(long, default_value_t = 64, value_parser = parse_frame_size)]
    pub size: usize,
    /// Number of flows: one socket, hence one source port, per flow.
    #[arg(long, default_value_t = 64, value_parser = parse_flows)]
    pub flows: u32,
    /// First source port; flows use src-port .. src-port + flows - 1.
    #[arg(long, default_value_t = 20000)]
    pub src_port: u16,
    /// Seconds to send.
    #[arg(long, default_value_t = 10.0, value_parser = parse_seconds)]
    pub duration: f64,
    /// Datagrams per sendmmsg call (1..=1024).
    #[arg(long, default_value_t = 64, value_parser = parse_batch)]
    pub batch: usize,
    /// Pin to this CPU.
    #[arg(long, value_name = "N")]
    pub core: Option<usize>,
    /// `socket` (sendmmsg), `pktgen` (kernel; needs --dev and --dst-mac), `packet` or `xdp`
    /// (prebuilt frames on AF_PACKET or AF_XDP; need --dev, --dst-mac and --src).
    #[arg(long, value_enum, default_value_t = Generator::Socket)]
    pub generator: Generator,
    /// pktgen, packet and xdp: the interface to send on.
    #[arg(long)]
    pub dev: Option<String>,
    /// pktgen, packet and xdp: the destination MAC (the gateway's).
    #[arg(long)]
    pub dst_mac: Option<String>,
    /// packet and xdp: the source IPv4 address (the pod's).
    #[arg(long)]
    pub src: Option<std::net::Ipv4Addr>,
    /// xdp only: offer this many packets per second (paced, at most 64 frames at a time)
    /// instead of sending flat out. `sent` then reports what actually went out.
    #[arg(long, value_name = "PPS", value_parser = parse_rate)]
    pub rate: Option<f64>,
    /// xdp only: write the send time (CLOCK_MONOTONIC ns, little-endian) into the first 8
    /// payload bytes of every frame, for `sink --latency`; the frames then carry no UDP
    /// checksum (0). Needs --size 50 or more.
    #[arg(long)]
    pub stamp: bool,
}

#[derive(Clone, Debug, Args)]
pub struct SinkArgs {
    /// UDP port to receive on (all addresses).
    #[arg(long)]
    pub port: u16,
    /// Seconds to run.
    #[arg(long, default_value_t = 10.0, value_parser = parse_seconds)]
    pub duration: f64,
    /// Datagrams per recvmmsg call (1..=1024).
    #[arg(long, default_value_t = 64, value_parser = parse_batch)]
    pub batch: usize,
    /// Pin to this CPU.
    #[arg(long, value_name = "N")]
    pub core: Option<usize>,
    /// Print `sample <monotonic ns> <packets>` every 100 ms instead of a line per second
    /// (what `forward` reads).
    #[arg(long)]
    pub samples: bool,
    /// Read the send time `gen --stamp` wrote into each datagram and print one-way latency
    /// (p50, p99, p99.9 and a CDF) at the end, as a `latency ...` line. Keeps at most
    /// 4,000,000 samples (the first ones).
    #[arg(long)]
    pub latency: bool,
}

#[derive(Clone, Debug, Args)]
pub struct XdpSinkArgs {
    /// The interface, in this namespace, to drop everything on.
    #[arg(long, default_value = "eth0")]
    pub dev: String,
    /// Seconds to hold the program (it leaves the interface when this process exits).
    #[arg(long, default_value_t = 3600.0, value_parser = parse_seconds)]
    pub duration: f64,
}

/// Options shared by `forward` and `report`.
#[derive(Clone, Debug, Args)]
pub struct RunArgs {
    /// Seconds measured per run (after one second of warm-up).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub duration: u64,
    /// Frame size, as for `gen`.
    #[arg(long, default_value_t = 64, value_parser = parse_frame_size)]
    pub size: usize,
    /// How pod A generates traffic (`xdp` is the only one here fast enough to load a
    /// forwarder; `packet` and `xdp` send to the node's gateway MAC).
    #[arg(long, value_enum, default_value_t = Generator::Socket)]
    pub generator: Generator,
    /// CPU of the generator (it also carries the kernel's veth receive work).
    #[arg(long, default_value_t = 0)]
    pub gen_core: usize,
    /// CPU of the forwarding thread (flagella's worker, OVS's PMD thread).
    #[arg(long, default_value_t = 1)]
    pub worker_core: usize,
    /// CPU of the sink in pod B (default: unpinned, wherever the scheduler puts it; it then
    /// often shares the forwarder's core, which makes runs less repeatable).
    #[arg(long, value_name = "N")]
    pub sink_core: Option<usize>,
    /// Nice value (-20..=19) for the generator, the sink and the forwarder's threads, so a
    /// busy shared machine disturbs the measurement less (negative values take CPU from
    /// everything else; 0 changes nothing).
    #[arg(long, default_value_t = 0, allow_hyphen_values = true,
          value_parser = clap::value_parser!(i32).range(-20..=19))]
    pub nice: i32,
    /// The flagella-dataplane binary (default: next to this one).
    #[arg(long, value_name = "PATH")]
    pub dataplane: Option<PathBuf>,
    /// flagella-dataplane's `--idle-sleep-us`: idle workers sleep this long between passes
    /// (0, the default: they spin, as measurements should).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=100_000))]
    pub idle_sleep_us: u64,
}

#[derive(Clone, Debug, Args)]
pub struct ForwardArgs {
    #[arg(long, value_enum)]
    pub target: Target,
    /// Number of flows (source ports).
    #[arg(long, default_value_t = 64, value_parser = parse_flows)]
    pub flows: u32,
    #[command(flatten)]
    pub run: RunArgs,
}

#[derive(Clone, Debug, Args)]
pub struct ReportArgs {
    /// Flow counts, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "64,10000", value_parser = parse_flows)]
    pub flows: Vec<u32>,
    /// Targets, comma-separated (kernel is always measured: the ratios need it).
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "kernel,flagella,ovs,ovs-ct"
    )]
    pub targets: Vec<Target>,
    /// Print the table as Markdown.
    #[arg(long)]
    pub markdown: bool,
    #[command(flatten)]
    pub run: RunArgs,
}

/// What carries pod A's traffic to pod B on the other node (`xnode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, ValueEnum)]
pub enum XnodeTarget {
    /// The kernel routes the pods' traffic through a Linux VXLAN device in each node.
    KernelVxlan,
    /// flagella-dataplane in each node, VXLAN between them (egress policy on A, ingress on B).
    FlagellaVxlan,
    /// The same over Geneve.
    FlagellaGeneve,
    /// The same, natively routed on the underlay (no tunnel).
    FlagellaNative,
}

impl XnodeTarget {
    pub const ALL: [XnodeTarget; 4] = [
        XnodeTarget::KernelVxlan,
        XnodeTarget::FlagellaVxlan,
        XnodeTarget::FlagellaGeneve,
        XnodeTarget::FlagellaNative,
    ];

    pub fn name(self) -> &'static str {
        match self {
            XnodeTarget::KernelVxlan => "kernel-vxlan",
            XnodeTarget::FlagellaVxlan => "flagella-vxlan",
            XnodeTarget::FlagellaGeneve => "flagella-geneve",
            XnodeTarget::FlagellaNative => "flagella-native",
        }
    }
}

#[derive(Clone, Debug, Args)]
pub struct XnodeArgs {
    /// Targets, comma-separated (kernel-vxlan is always measured: the ratios need it).
    #[arg(
        long,
        alias = "target",
        value_enum,
        value_delimiter = ',',
        default_value = "kernel-vxlan,flagella-vxlan,flagella-geneve,flagella-native"
    )]
    pub targets: Vec<XnodeTarget>,
    /// Flow counts, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "64", value_parser = parse_flows)]
    pub flows: Vec<u32>,
    /// Rounds: every target once per round, in the same order, so repeated runs interleave
    /// and each round's ratios compare runs minutes apart at most.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub rounds: u32,
    /// CPU of node 2's dataplane worker (node 1's is --worker-core; default: the same core).
    #[arg(long, value_name = "N")]
    pub node2_worker_core: Option<usize>,
    /// Print the tables as Markdown.
    #[arg(long)]
    pub markdown: bool,
    #[command(flatten)]
    pub run: RunArgs,
}

#[derive(Clone, Debug, Args)]
pub struct ConvergeArgs {
    /// Endpoint counts (pods in the cluster, A and B included), comma-separated; 2..=25100.
    #[arg(long, value_delimiter = ',', default_value = "1000,10000", value_parser = parse_endpoints)]
    pub endpoints: Vec<usize>,
    /// Measured policy put/delete cycles per endpoint count.
    #[arg(long, default_value_t = 150, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub iterations: u64,
    /// Microseconds between two probes from A to B (the measurement's resolution); 10..=100000.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(10..=100_000))]
    pub probe_interval_us: u64,
    /// Use this etcd (URL[,URL...]) instead of starting one; it must have no keys under
    /// /flagella/v1/. The keys the run writes are deleted at the end (identities stay until the
    /// agents' identity collection removes them).
    #[arg(long, value_name = "URL")]
    pub etcd: Option<String>,
    /// Remote nodes the non-local endpoints are spread over.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub nodes: u64,
    /// Background policies (one "allow from the same namespace" per namespace, then per-app
    /// policies).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(0..=10_000))]
    pub policies: u64,
    /// Repetitions of each iptables / nft measurement.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=1000))]
    pub baseline_reps: u64,
    /// Skip the iptables and nftables baselines.
    #[arg(long)]
    pub skip_baselines: bool,
    /// CPU of the dataplane's worker.
    #[arg(long, default_value_t = 1)]
    pub worker_core: usize,
    /// The flagella-dataplane binary (default: next to this one).
    #[arg(long, value_name = "PATH")]
    pub dataplane: Option<PathBuf>,
    /// The flagella-control binary (default: next to this one).
    #[arg(long, value_name = "PATH")]
    pub control: Option<PathBuf>,
    /// Print the table as Markdown.
    #[arg(long)]
    pub markdown: bool,
    /// Also write the results as JSON to this file.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
}

#[derive(Clone, Debug, Args)]
pub struct ScaleArgs {
    /// Endpoint counts, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "10000")]
    pub endpoints: Vec<usize>,
    /// Nodes in all (the agents' included); at most 250 endpoints on each other node.
    #[arg(long, default_value_t = 100, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=4096))]
    pub nodes: usize,
    /// Nodes run by a real flagella-control (the first ones).
    #[arg(long, default_value_t = 1, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=16))]
    pub agents: usize,
    /// Endpoints on each agent's node.
    #[arg(long, default_value_t = 100, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=250))]
    pub local_pods: usize,
    #[arg(long, default_value_t = 20, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=10_000))]
    pub namespaces: usize,
    /// Distinct label sets (deployments).
    #[arg(long, default_value_t = 2000, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=100_000))]
    pub identities: usize,
    /// Policies: one namespace isolation per namespace, then app-to-app on ports, CIDR egress
    /// and deny rules in turn.
    #[arg(long, default_value_t = 1000, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(0..=100_000))]
    pub policies: usize,
    /// Repetitions of each per-change measurement.
    #[arg(long, default_value_t = 50, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=10_000))]
    pub reps: usize,
    /// Repetitions of each iptables / nft measurement.
    #[arg(long, default_value_t = 3, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=1000))]
    pub baseline_reps: usize,
    /// Use this etcd URL instead of starting one (the keys the run writes are deleted after).
    #[arg(long, value_name = "URL")]
    pub etcd: Option<String>,
    /// The flagella-control binary (default: next to this one).
    #[arg(long, value_name = "PATH")]
    pub control: Option<PathBuf>,
    /// Only the in-process model (no etcd, no agents).
    #[arg(long)]
    pub skip_agents: bool,
    /// Skip the iptables and nftables baselines.
    #[arg(long)]
    pub skip_baselines: bool,
    /// Print the table as Markdown.
    #[arg(long)]
    pub markdown: bool,
}

const POLICY_HELP: &str = "\
Topology (prefix fbp-<pid>-<n>, removed on exit, pass or fail): a node namespace and two pods
(A 10.81.0.11, B 10.81.0.12) on veths, as `forward` builds it; pod A sends UDP from the
built-in AF_XDP generator (--generator xdp) to B:9000, every target in its own topology.
Targets, each with N entries (--entries) besides the one that admits A -> B:
  flagella         flagella-dataplane; N more entries (other identities, udp/9000, allow) in
                   B's ingress policy map, conntrack on as always
  iptables-nft     kernel forwarding; FORWARD policy DROP, N non-matching ACCEPT rules
  iptables-legacy  (other sources), then A's rule last: the chain is walked per packet
  nft-set          kernel forwarding; one nftables rule `ip saddr @allowed accept` over a set of
                   N + 1 addresses
  ceiling          (always) the generator into an XDP_DROP on its own first hop: what it can
                   send at all; a point at 90% of it or more is flagged generator-bound
Sinks: --sink xdp (default) counts at pod B's eth0 with an XDP_DROP program (the kernel's
xdp_drops: what the forwarder delivered); --sink udp counts datagrams delivered to a UDP socket
in pod B (/proc/net/snmp InDatagrams: what an application gets). Latency always uses the UDP
sink: the generator stamps each frame (CLOCK_MONOTONIC), the sink reads the stamps.
Method: per point, --trials searches; each runs flat out, then bisects the offered rate until
the loss is at most --loss (fraction) within --resolution; median, minimum and maximum of the
found rates; then one latency trial per --latency-fractions of the median rate.
Output in --out: report.json, report.md, throughput.png (found rate vs entries per target),
latency.png (latency CDF per target at the largest entry count).

Typical use (as root, from the workspace):
  scripts/install-deps.sh iptables nftables ethtool
  cargo build --release -p dataplane --features afxdp --bin flagella-dataplane
  cargo build --release -p bench
  sudo target/release/flagella-bench policy --quick              # under 2 minutes
  sudo target/release/flagella-bench policy --entries 0,1000,10000,100000";

/// What forwards in the `policy` benchmark.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum PolicyTarget {
    /// flagella-dataplane with N extra entries in the destination's ingress policy map.
    Flagella,
    /// Kernel forwarding with N iptables rules before the matching one (nft backend).
    IptablesNft,
    /// The same with the legacy (x_tables) backend.
    IptablesLegacy,
    /// Kernel forwarding with one nftables rule over a set of N + 1 source addresses.
    NftSet,
}

impl PolicyTarget {
    pub fn name(self) -> &'static str {
        match self {
            PolicyTarget::Flagella => "flagella",
            PolicyTarget::IptablesNft => "iptables-nft",
            PolicyTarget::IptablesLegacy => "iptables-legacy",
            PolicyTarget::NftSet => "nft-set",
        }
    }
}

/// Where the `policy` benchmark counts what arrived.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SinkKind {
    /// XDP_DROP on pod B's eth0, counted by the kernel (forwarder-level truth).
    Xdp,
    /// A UDP socket in pod B, counted by the namespace's InDatagrams (application-level truth).
    Udp,
}

#[derive(Clone, Debug, Args)]
pub struct PolicyArgs {
    /// Policy entries on the destination, comma-separated (0..=100000).
    #[arg(long, value_delimiter = ',', default_value = "0,1000,10000", value_parser = parse_entries)]
    pub entries: Vec<u32>,
    /// Targets, comma-separated (the generator's ceiling is always measured).
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "flagella,iptables-nft,iptables-legacy,nft-set"
    )]
    pub targets: Vec<PolicyTarget>,
    /// Where arrivals are counted during the rate search.
    #[arg(long, value_enum, default_value_t = SinkKind::Xdp)]
    pub sink: SinkKind,
    /// Highest loss that passes, as a fraction (0.001 = 0.1%).
    #[arg(long, default_value_t = 0.001, value_parser = parse_fraction)]
    pub loss: f64,
    /// Searches per point (median and spread are over these).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=50))]
    pub trials: u32,
    /// Seconds of each trial (one offered rate).
    #[arg(long, default_value_t = 2.0, value_parser = parse_seconds)]
    pub trial_secs: f64,
    /// The search stops when its bracket is narrower than this fraction of its top.
    #[arg(long, default_value_t = 0.05, value_parser = parse_fraction)]
    pub resolution: f64,
    /// Paced trials per search at most (after the flat-out one).
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=50))]
    pub max_steps: u32,
    /// Fractions of the found rate at which latency is measured, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "0.5,0.9", value_parser = parse_fraction)]
    pub latency_fractions: Vec<f64>,
    /// Seconds of each latency trial.
    #[arg(long, default_value_t = 3.0, value_parser = parse_seconds)]
    pub latency_secs: f64,
    /// Flows (source ports) of the generator.
    #[arg(long, default_value_t = 64, value_parser = parse_flows)]
    pub flows: u32,
    /// Frame size (50 or more: the latency stamp needs 8 payload bytes).
    #[arg(long, default_value_t = 64, value_parser = parse_frame_size)]
    pub size: usize,
    /// Directory for report.json, report.md, throughput.png and latency.png.
    #[arg(long, default_value = "flagella-bench-policy")]
    pub out: PathBuf,
    /// Under 2 minutes: entries 0,1000, one search per point of 0.5 s trials and at most 4
    /// steps, one latency trial (0.5 of the rate, 1 s). Explicit options given with it are
    /// overridden.
    #[arg(long)]
    pub quick: bool,
    /// CPU of the generator.
    #[arg(long, default_value_t = 0)]
    pub gen_core: usize,
    /// CPU of flagella's worker.
    #[arg(long, default_value_t = 1)]
    pub worker_core: usize,
    /// Nice value (-20..=19) for the generator, the sinks and flagella-dataplane.
    #[arg(long, default_value_t = 0, allow_hyphen_values = true,
          value_parser = clap::value_parser!(i32).range(-20..=19))]
    pub nice: i32,
    /// The flagella-dataplane binary (default: next to this one).
    #[arg(long, value_name = "PATH")]
    pub dataplane: Option<PathBuf>,
    /// flagella-dataplane's --idle-sleep-us (0, the default: the worker spins).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=100_000))]
    pub idle_sleep_us: u64,
}

impl PolicyArgs {
    /// `--quick`'s settings applied.
    pub fn effective(&self) -> PolicyArgs {
        let mut a = self.clone();
        if a.quick {
            a.entries = vec![0, 1000];
            a.trials = 1;
            a.trial_secs = 0.5;
            a.max_steps = 4;
            a.resolution = a.resolution.max(0.1);
            a.latency_fractions = vec![0.5];
            a.latency_secs = 1.0;
        }
        a
    }
}

fn parse_entries(s: &str) -> Result<u32, String> {
    let n: u32 = s.parse().map_err(|e| format!("`{s}`: {e}"))?;
    if n <= 100_000 {
        Ok(n)
    } else {
        Err(format!("{n} entries: use 0..=100000"))
    }
}

fn parse_fraction(s: &str) -> Result<f64, String> {
    let x: f64 = s.parse().map_err(|e| format!("`{s}`: {e}"))?;
    if x.is_finite() && x > 0.0 && x <= 1.0 {
        Ok(x)
    } else {
        Err(format!(
            "{s}: use a fraction in (0, 1], e.g. 0.001 for 0.1%"
        ))
    }
}

fn parse_endpoints(s: &str) -> Result<usize, String> {
    let n: usize = s.parse().map_err(|e| format!("`{s}`: {e}"))?;
    if (2..=25_100).contains(&n) {
        Ok(n)
    } else {
        Err(format!(
            "{n} endpoints: use 2..=25100 (A and B, 98 more local pods, 250 per remote node)"
        ))
    }
}

fn parse_frame_size(s: &str) -> Result<usize, String> {
    let n: usize = s.parse().map_err(|e| format!("`{s}`: {e}"))?;
    if (MIN_FRAME..=MAX_FRAME).contains(&n) {
        Ok(n)
    } else {
        Err(format!(
            "{n} bytes: a UDP/IPv4 frame is {MIN_FRAME}..={MAX_FRAME} bytes (without FCS)"
        ))
    }
}

/// 1..=60000 flows: one socket each, and source ports must stay below 65536.
fn parse_flows(s: &str) -> Result<u32, String> {
    let n: u32 = s.parse().map_err(|e| format!("`{s}`: {e}"))?;
    if (1..=60_000).contains(&n) {
        Ok(n)
    } else {
        Err(format!("{n} flows: use 1..=60000 (one source port each)"))
    }
}

fn parse_seconds(s: &str) -> Result<f64, String> {
    let x: f64 = s.parse().map_err(|e| format!("`{s}`: {e}"))?;
    if x.is_finite() && x > 0.0 && x <= 86_400.0 {
        Ok(x)
    } else {
        Err(format!("{s} seconds: use a number in (0, 86400]"))
    }
}

fn parse_rate(s: &str) -> Result<f64, String> {
    let x: f64 = s.parse().map_err(|e| format!("`{s}`: {e}"))?;
    if x.is_finite() && (1.0..=100e6).contains(&x) {
        Ok(x)
    } else {
        Err(format!("{s} packets per second: use 1..=100000000"))
    }
}

fn parse_batch(s: &str) -> Result<usize, String> {
    let n: usize = s.parse().map_err(|e| format!("`{s}`: {e}"))?;
    if (1..=1024).contains(&n) {
        Ok(n)
    } else {
        Err(format!("batch {n}: use 1..=1024"))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("flagella-bench").chain(args.iter().copied()))
    }

    #[test]
    fn gen_defaults_and_values() {
        let cli = parse(&["gen", "--dst", "10.81.0.12:9000", "--flows", "10000"]).unwrap();
        let Command::Gen(g) = cli.command else {
            panic!("not gen")
        };
        assert_eq!(g.dst, "10.81.0.12:9000".parse().unwrap());
        assert_eq!((g.size, g.flows, g.batch), (64, 10000, 64));
        assert_eq!(g.duration, 10.0);
        assert_eq!(g.generator, Generator::Socket);
        let cli = parse(&[
            "gen",
            "--dst",
            "10.0.0.1:9",
            "--generator",
            "packet",
            "--src",
            "10.0.0.2",
        ]);
        let Command::Gen(g) = cli.unwrap().command else {
            panic!("not gen")
        };
        assert_eq!(g.generator, Generator::Packet);
        assert_eq!(g.src, Some("10.0.0.2".parse().unwrap()));
    }

    #[test]
    fn gen_rejects_bad_values() {
        assert!(parse(&["gen", "--dst", "10.0.0.1:1", "--size", "41"]).is_err());
        assert!(parse(&["gen", "--dst", "10.0.0.1:1", "--size", "1515"]).is_err());
        assert!(parse(&["gen", "--dst", "10.0.0.1:1", "--flows", "0"]).is_err());
        assert!(parse(&["gen", "--dst", "10.0.0.1:1", "--flows", "60001"]).is_err());
        assert!(parse(&["gen", "--dst", "10.0.0.1:1", "--duration", "-1"]).is_err());
        assert!(parse(&["gen", "--dst", "10.0.0.1:1", "--duration", "NaN"]).is_err());
        assert!(
            parse(&["gen", "--dst", "10.0.0.1"]).is_err(),
            "port missing"
        );
        assert!(parse(&["gen"]).is_err(), "--dst is required");
    }

    #[test]
    fn sink_parses() {
        let cli = parse(&["sink", "--port", "9000", "--duration", "2.5", "--samples"]).unwrap();
        let Command::Sink(s) = cli.command else {
            panic!("not sink")
        };
        assert_eq!((s.port, s.duration, s.samples), (9000, 2.5, true));
    }

    #[test]
    fn forward_targets_and_defaults() {
        let cli = parse(&["forward", "--target", "ovs-ct", "--flows", "10000"]).unwrap();
        let Command::Forward(f) = cli.command else {
            panic!("not forward")
        };
        assert_eq!(f.target, Target::OvsCt);
        assert_eq!(f.flows, 10000);
        assert_eq!(
            (f.run.duration, f.run.gen_core, f.run.worker_core),
            (10, 0, 1)
        );
        assert!(parse(&["forward", "--target", "vpp"]).is_err());
        assert!(parse(&["forward", "--target", "kernel", "--duration", "0"]).is_err());
    }

    #[test]
    fn converge_defaults_and_limits() {
        let Command::Converge(c) = parse(&["converge"]).unwrap().command else {
            panic!("not converge")
        };
        assert_eq!(c.endpoints, vec![1000, 10000]);
        assert_eq!(
            (c.iterations, c.probe_interval_us, c.nodes),
            (150, 100, 100)
        );
        assert!(c.etcd.is_none() && !c.skip_baselines && !c.markdown);
        let Command::Converge(c) = parse(&[
            "converge",
            "--endpoints",
            "2,500",
            "--etcd",
            "http://127.0.0.1:1",
        ])
        .unwrap()
        .command
        else {
            panic!("not converge")
        };
        assert_eq!(c.endpoints, vec![2, 500]);
        assert_eq!(c.etcd.as_deref(), Some("http://127.0.0.1:1"));
        assert!(parse(&["converge", "--endpoints", "1"]).is_err());
        assert!(parse(&["converge", "--endpoints", "30000"]).is_err());
        assert!(parse(&["converge", "--probe-interval-us", "5"]).is_err());
        assert!(parse(&["converge", "--iterations", "0"]).is_err());
    }

    #[test]
    fn xnode_defaults_and_target_alias() {
        let Command::Xnode(x) = parse(&["xnode"]).unwrap().command else {
            panic!("not xnode")
        };
        assert_eq!(x.targets, XnodeTarget::ALL.to_vec());
        assert_eq!((x.flows, x.rounds), (vec![64], 1));
        assert_eq!((x.node2_worker_core, x.run.idle_sleep_us), (None, 0));
        let Command::Xnode(x) = parse(&[
            "xnode",
            "--target",
            "flagella-geneve",
            "--flows",
            "10000",
            "--rounds",
            "3",
            "--node2-worker-core",
            "0",
        ])
        .unwrap()
        .command
        else {
            panic!("not xnode")
        };
        assert_eq!(x.targets, vec![XnodeTarget::FlagellaGeneve]);
        assert_eq!((x.flows, x.rounds), (vec![10000], 3));
        assert_eq!(x.node2_worker_core, Some(0));
        assert!(parse(&["xnode", "--target", "kernel"]).is_err());
        assert!(parse(&["xnode", "--rounds", "0"]).is_err());
        let names: Vec<&str> = XnodeTarget::ALL.iter().map(|t| t.name()).collect();
        assert_eq!(
            names,
            [
                "kernel-vxlan",
                "flagella-vxlan",
                "flagella-geneve",
                "flagella-native"
            ]
        );
    }

    #[test]
    fn report_lists() {
        let cli = parse(&["report"]).unwrap();
        let Command::Report(r) = cli.command else {
            panic!("not report")
        };
        assert_eq!(r.flows, vec![64, 10000]);
        assert_eq!(r.targets, Target::ALL.to_vec());
        let cli = parse(&["report", "--flows", "1,2", "--targets", "flagella"]).unwrap();
        let Command::Report(r) = cli.command else {
            panic!("not report")
        };
        assert_eq!((r.flows, r.targets), (vec![1, 2], vec![Target::Flagella]));
    }
}
