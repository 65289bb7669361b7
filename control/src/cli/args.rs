//! The `flagella` command line: every noun, verb, flag and help text (clap derive). The
//! binary parses [`Cli`] and hands it to [`super::run`]; the help clap prints from these
//! definitions is the CLI's documentation, so wording changes here are user-visible.

use std::path::PathBuf;

use clap::{ArgGroup, Args, Parser, Subcommand, ValueEnum};
use policy_compiler::model::PolicyKind;

use super::endpoint::{parse_labels, parse_port, parse_service_account};
use super::service::{parse_backend, parse_frontend};
use crate::schema::{BackendSpec, FrontendSpec, PortSpec};

#[derive(Debug, Parser)]
#[command(
    name = "flagella",
    version,
    about = "Flagella command-line tool",
    long_about = "Flagella command-line tool.\n\nCommands are `flagella <noun> <verb>`, e.g. \
                  `flagella policy import -f policies.yaml`. Run `flagella <noun> --help` to see \
                  the verbs.",
    after_help = "EXIT STATUS: 0 ok; 1 the command failed (the message says what to do); \
                  2 the command line is wrong."
)]
pub struct Cli {
    /// etcd client URLs, comma-separated
    #[arg(
        long,
        global = true,
        value_name = "URL[,URL...]",
        value_delimiter = ',',
        default_value = "http://127.0.0.1:2379"
    )]
    pub etcd: Vec<String>,

    /// Output format: `text` (aligned tables) for people, `json` for scripts
    #[arg(short = 'o', long = "output", global = true, value_enum, default_value_t = Output::Text)]
    pub output: Output,

    #[command(subcommand)]
    pub noun: Noun,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Noun {
    /// Network policies (Kubernetes NetworkPolicy, CiliumNetworkPolicy)
    Policy {
        #[command(subcommand)]
        verb: PolicyVerb,
    },
    /// Endpoints (pod interfaces) known to the cluster
    Endpoint {
        #[command(subcommand)]
        verb: EndpointVerb,
    },
    /// Security identities (reserved and allocated from label sets)
    Identity {
        #[command(subcommand)]
        verb: IdentityVerb,
    },
    /// Load-balanced services (frontends, weighted backends, SNAT or DSR)
    Service {
        #[command(subcommand)]
        verb: ServiceVerb,
    },
    /// Nodes of the cluster
    Node {
        #[command(subcommand)]
        verb: NodeVerb,
    },
    /// Namespaces (their labels are part of their pods' identities)
    Namespace {
        #[command(subcommand)]
        verb: NamespaceVerb,
    },
    /// Is etcd reachable, what it holds; with --dataplane-socket, the dataplane's status
    Status(StatusArgs),
    /// Watch the dataplane's drops, policy verdicts and traces live (and capture them to pcap)
    #[command(
        long_about = "Watch the dataplane's events live: every drop (reason, the stage that \
dropped it, direction, interface, both identities with their labels and endpoints, addresses, \
ports, protocol, TCP flags), policy verdicts of admitted new flows (sampled: the dataplane's \
--monitor-policy-sample) and traces (the dataplane's --monitor-trace).\n\n\
Reads the dataplane's monitor socket (run as root on the node). Identity labels come from the \
agent's view, the identities in etcd (--etcd); without etcd, numbers only. Events the \
dataplane could not deliver (a flood filled a worker's ring, or this reader was too slow) are \
reported as LOST lines (`lost_events` in JSON), never silently. Stops when the dataplane \
stops, after --count events, or on ^C.",
        after_long_help = "EXAMPLES:\n  \
flagella monitor --type drop\n  \
flagella monitor -o json --endpoint 12 --reason policy_denied_ingress\n  \
flagella monitor --type drop --pcap drops.pcap   # then: tshark -r drops.pcap"
    )]
    Monitor(MonitorArgs),
    /// Run a capture through the dataplane's pipeline offline: each frame's verdict, stage and drop reason
    #[command(
        long_about = "Run every frame of a capture through the dataplane's own pipeline \
(the code its workers run, with its own conntrack), offline, over the tables of a state \
snapshot, and print each frame's verdict as `flagella monitor` shows it: forwarded (and where), \
passed to the kernel, or dropped with the stage and the reason.\n\n\
The state is --state FILE: one JSON object a line, each a control-socket request (what the \
agent sends: endpoint.upsert, ipcache.upsert, policy.update, service.upsert, local_node.set, \
batch, ...) or a `dump` reply of the dataplane (endpoints, ipcache, services, nodes, local_node, \
policy; each entry becomes its upsert); or --dataplane-socket PATH: the running dataplane's \
tables, dumped now; or --node NAME: what that node's agent would send, read from etcd now. \
--save-state FILE keeps the state used as a --state file.\n\n\
Frames are replayed in file order at their capture times. Frames captured shorter than they \
were (the monitor's pcap keeps 128 bytes) are padded with zeros: headers are judged, payloads \
are not. A frame's ingress interface is --ingress, else the pod interface whose MAC sent it, \
else the state's uplink. The host interface and the kernel's next hops are not part of a \
snapshot; masquerade is off.",
        after_long_help = "\
EXAMPLES:
  flagella monitor --type drop --pcap drops.pcap            # on the node: capture
  flagella replay --pcap drops.pcap --node node-1            # what the agent would set up now
  flagella replay --pcap drops.pcap --dataplane-socket /run/flagella/dataplane.sock \\
      --save-state node-1.state                                # the live tables, kept
  flagella replay --pcap capture.pcap --state state.jsonl -o json
  flagella replay --pcap capture.pcap --state state.jsonl --drops dropped.pcap

STATE FILE (one JSON object a line; `#` comments):
  {\"op\":\"endpoint.upsert\",\"id\":1,\"ifindex\":12,\"mac\":\"02:00:00:00:00:01\",\"ipv4\":\"10.1.0.5\",\"identity\":1001}
  {\"op\":\"policy.update\",\"endpoint\":1,\"direction\":\"ingress\",\"enforced\":true,\"add\":[...]}
  {\"ok\":true,\"table\":\"ipcache\",\"entries\":[...]}      # a dump reply

EXIT STATUS:
  0 the replay ran (whatever the verdicts); 1 an input is bad (the message names the file and \
line) or etcd is unreachable; 2 the command line is wrong."
    )]
    Replay(ReplayArgs),
}

#[derive(Debug, Args)]
#[command(group(ArgGroup::new("snapshot").required(true).args(["state", "dataplane_socket", "node"])))]
pub struct ReplayArgs {
    /// The capture (classic pcap, Ethernet; what tcpdump and `flagella monitor --pcap` write)
    #[arg(long, value_name = "FILE")]
    pub pcap: PathBuf,

    /// The state snapshot: control-socket requests and dump replies, one a line
    #[arg(long, value_name = "FILE")]
    pub state: Option<PathBuf>,

    /// Instead of --state: the tables of the running dataplane at this control socket (its
    /// dumps)
    #[arg(long, value_name = "PATH")]
    pub dataplane_socket: Option<PathBuf>,

    /// Instead of --state: the state node NAME's agent would give its dataplane, from etcd
    #[arg(long, value_name = "NAME")]
    pub node: Option<String>,

    /// Also write the state used to FILE (a --state file: replay the same state later, elsewhere)
    #[arg(long, value_name = "FILE")]
    pub save_state: Option<PathBuf>,

    /// Every frame arrived on this interface index (default: the pod interface whose MAC sent
    /// it, else the uplink)
    #[arg(long, value_name = "IFINDEX")]
    pub ingress: Option<u32>,

    /// Also write the dropped frames (as captured) to FILE as a pcap
    #[arg(long, value_name = "FILE")]
    pub drops: Option<PathBuf>,
}

/// The policy kinds `--kind` accepts (Cilium's short names too). Named as the API kinds are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
#[allow(clippy::enum_variant_names)]
pub enum KindArg {
    #[value(name = "NetworkPolicy", alias = "networkpolicy", alias = "np")]
    NetworkPolicy,
    #[value(
        name = "CiliumNetworkPolicy",
        alias = "ciliumnetworkpolicy",
        alias = "cnp"
    )]
    CiliumNetworkPolicy,
    #[value(
        name = "CiliumClusterwideNetworkPolicy",
        alias = "ciliumclusterwidenetworkpolicy",
        alias = "ccnp"
    )]
    CiliumClusterwideNetworkPolicy,
}

impl From<KindArg> for PolicyKind {
    fn from(k: KindArg) -> Self {
        match k {
            KindArg::NetworkPolicy => PolicyKind::NetworkPolicy,
            KindArg::CiliumNetworkPolicy => PolicyKind::CiliumNetworkPolicy,
            KindArg::CiliumClusterwideNetworkPolicy => PolicyKind::CiliumClusterwideNetworkPolicy,
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum PolicyVerb {
    /// Store policies in etcd, from a file or stdin (what `kubectl get networkpolicies -A -o yaml` prints)
    #[command(
        long_about = "Store policies in etcd; every node's agent then enforces them.\n\n\
Reads exactly what `kubectl get networkpolicies -A -o yaml` (or `-o json`) prints, a \
CiliumNetworkPolicy or CiliumClusterwideNetworkPolicy manifest, or several `---` documents. \
Every policy is validated first; if any is invalid, nothing is written and the error names the \
document and the field. An existing policy of the same kind, namespace and name is replaced.\n\n\
With --dry-run nothing is written: the command validates the file and prints what importing it \
would change, as `flagella policy diff -f FILE` does (the flows that would be newly allowed or \
newly denied, against the cluster in etcd), with the CIDR peers that would split an identity \
as warnings.",
        after_long_help = "EXAMPLES:\n  \
kubectl get networkpolicies -A -o yaml | flagella policy import -f -\n  \
kubectl get ciliumnetworkpolicies -A -o json | flagella policy import -f -\n  \
flagella policy import -f allow-web.yaml --dry-run"
    )]
    Import {
        /// The file to read, or `-` for stdin
        #[arg(short = 'f', long = "file", value_name = "FILE|-")]
        file: String,
        /// Validate and show what would change (as `policy diff`); write nothing
        #[arg(long)]
        dry_run: bool,
    },
    /// Show stored policies: all as a table, or one (NAMESPACE/NAME, or NAME for cluster-wide)
    #[command(
        long_about = "Show stored policies.\n\nWithout an argument, a table of every policy; \
with NAMESPACE/NAME (or NAME for a cluster-wide policy), the object itself. `-o json` prints \
the objects as a kubectl `List`, which `flagella policy import -f -` reads back.\n\n\
With --host NODE, the node's host policy (Cilium's host firewall) as its agent compiles it: \
the host policies (CiliumClusterwideNetworkPolicy with a nodeSelector) that select the node's \
labels, per direction whether it is enforced, and every entry with its remote identity, \
protocol, ports, action and rules. `flagella policy trace --to node:NODE` explains one flow.",
        after_long_help = "EXAMPLES:\n  \
flagella policy get\n  \
flagella policy get prod/allow-web -o json\n  \
flagella policy get --host node-1\n  \
flagella policy get --host node-1 --policies policies.yaml --cluster cluster.yaml"
    )]
    Get {
        /// NAMESPACE/NAME, or NAME for a CiliumClusterwideNetworkPolicy
        selector: Option<String>,
        /// Only policies of this kind
        #[arg(long, value_enum)]
        kind: Option<KindArg>,
        /// Instead: the host policy of node NODE, as compiled from etcd (or from files, with
        /// --policies and --cluster)
        #[arg(long, value_name = "NODE", conflicts_with_all = ["selector", "kind"])]
        host: Option<String>,
        /// With --host, offline: a file of the policies in force (repeat for several).
        /// Requires --cluster.
        #[arg(long = "policies", value_name = "FILE", requires_all = ["host", "cluster"])]
        policies: Vec<PathBuf>,
        /// With --host, offline: the cluster description (its `nodes` give NODE's labels), as
        /// `policy trace` reads it. Requires --policies.
        #[arg(long, value_name = "FILE", requires_all = ["host", "policies"])]
        cluster: Option<PathBuf>,
    },
    /// Delete a stored policy (NAMESPACE/NAME, or NAME for cluster-wide)
    Delete {
        /// NAMESPACE/NAME, or NAME for a CiliumClusterwideNetworkPolicy
        selector: String,
        /// Needed when several kinds have a policy of that name
        #[arg(long, value_enum)]
        kind: Option<KindArg>,
    },
    /// Explain whether a flow is allowed, and by which policy rules (live from etcd, or offline from files)
    #[command(
        long_about = "Explain whether flows are allowed, and which policies and rules decided.\n\n\
Live (without --policies/--cluster): reads the policies, namespaces, endpoints and nodes from \
etcd, builds the same model the node agents build, and traces against it. Offline (with \
--policies and --cluster): reads the policies and a cluster description from files. Either way \
the policies are compiled into the same per-pod policy maps the dataplane uses and each flow is \
looked up in them with the dataplane's own lookup function. A flow is allowed when the \
sender's egress policy and the receiver's ingress policy both allow it. A pod's traffic to its \
own address is allowed whatever the policies (\"loopback: never reaches the network\"). A \
node's address is `host` to the pods on that node and `remote-node` to the others. Warnings \
name CIDR peers that split an identity (some of its pods inside the block, some outside).",
        after_long_help = "\
CLUSTER FILE (YAML or JSON):
  namespaces:                      # namespace name -> its labels
    x: {team: blue}
  pods:
  - {namespace: x, name: a, labels: {app: web}, ip: 10.0.0.1,
     ports: [{name: http, containerPort: 80, protocol: TCP}],
     nodeName: node-1,               # optional: its node (`host` to it)
     serviceAccountName: web}        # optional: io.cilium.k8s.policy.serviceaccount=web
  nodes:
  - {name: node-1, ip: 192.168.0.1, labels: {role: worker}}   # labels: optional

SRC and DST are `namespace/pod`, `node:NAME` or an IP address. An address that is neither a pod \
nor a node is outside the cluster (identity `world`, or the CIDR identity of the longest matching \
policy CIDR). A node's address meets its host policy (host policies whose nodeSelector selects \
the node's labels; `flagella policy get --host NAME` shows it): ingress for traffic to it, \
egress for traffic from it.

PROBES FILE (JSON): [{\"from\": \"x/a\", \"to\": \"y/b\", \"port\": 80, \"protocol\": \"TCP\"}, ...]
(for \"protocol\": \"ICMP\" or \"ICMPv6\", \"port\" is the ICMP type, as the policy maps key it)

EXAMPLES:
  flagella policy trace --from x/a --to y/b --port 80/TCP          # live, from etcd
  flagella policy trace --policies deny-all.yaml --policies allow-web.yaml \\
      --cluster cluster.yaml --from x/a --to y/b --port 80/TCP
  flagella policy trace --policies policies.yaml --cluster cluster.yaml --probes probes.json -o json
  flagella policy trace --from x/a --to y/b --protocol icmp --icmp-type 8     # ping (IPv4)
  flagella policy trace --from x/a --to y/b --protocol icmpv6 --icmp-type EchoRequest

EXIT STATUS:
  0 the trace ran (whatever the verdicts); 1 an input is bad (the message names the file, the \
field and what to fix) or etcd is unreachable; 2 the command line is wrong."
    )]
    Trace(TraceArgs),
    /// Preview a policy file: which flows it would newly allow or deny (live from etcd, or offline from files)
    #[command(
        long_about = "Preview a new or changed policy file before applying it: which flows \
(source identity, destination identity, port) would change verdict, with the pods on each side, \
largest blast radius (pairs x ports) first. Nothing is written.\n\n\
Live (without --cluster): the cluster and policies in etcd, as the agents model them, against \
the same with the file imported (a policy of the same kind, namespace and name is replaced). \
Offline (with --cluster, and --policies for the policies in force): the same from files. \
Both sides are traced with `flagella policy trace`'s lookup (the dataplane's own, over the \
compiled maps) for every pair of ends (pods, nodes, one address per policy CIDR, and a `world` \
address; at least one end a pod or a node with a host policy) and every port class the maps distinguish, so the list is \
exact: applying the file changes these verdicts and no others. Nodes' host policies are \
compared too (node labels from etcd, or the cluster file's `labels`).",
        after_long_help = "\
EXAMPLES:
  flagella policy diff -f allow-web.yaml                       # against etcd
  flagella policy diff -f allow-web.yaml -o json | jq '.changes[].flows'
  flagella policy diff -f new.yaml --policies current.yaml --cluster cluster.yaml

The cluster file is `flagella policy trace`'s (see `flagella policy trace --help`).

EXIT STATUS:
  0 the preview ran (whatever it found); 1 an input is bad (the message names the file, the \
field and what to fix) or etcd is unreachable; 2 the command line is wrong."
    )]
    Diff(DiffArgs),
}

#[derive(Debug, Args)]
pub struct DiffArgs {
    /// The new or changed policies (YAML or JSON, as `policy import` reads), or `-` for stdin
    #[arg(short = 'f', long = "file", value_name = "FILE|-")]
    pub file: String,

    /// Offline: a file of the policies in force (repeat for several). Requires --cluster.
    #[arg(long = "policies", value_name = "FILE", requires = "cluster")]
    pub policies: Vec<PathBuf>,

    /// Offline: the cluster description (namespaces, pods, nodes), as `policy trace` reads it
    #[arg(long, value_name = "FILE")]
    pub cluster: Option<PathBuf>,
}

#[derive(Debug, Args)]
#[command(group(ArgGroup::new("flows").required(true).args(["from", "probes"])))]
pub struct TraceArgs {
    /// Offline: a file of policies (YAML or JSON; one object, several `---` documents or
    /// `kind: List`). Repeat the flag for several files. Requires --cluster.
    #[arg(long = "policies", value_name = "FILE", requires = "cluster")]
    pub policies: Vec<PathBuf>,

    /// Offline: the cluster description: namespaces with labels, pods, nodes (see below).
    /// Requires --policies.
    #[arg(long, value_name = "FILE", requires = "policies")]
    pub cluster: Option<PathBuf>,

    /// Source of the flow: `namespace/pod`, `node:NAME` or an IP address
    #[arg(long, value_name = "SRC", requires = "to", conflicts_with = "probes")]
    pub from: Option<String>,

    /// Destination of the flow: `namespace/pod`, `node:NAME` or an IP address
    #[arg(long, value_name = "DST", requires = "from")]
    pub to: Option<String>,

    /// Destination port and protocol, e.g. 80/TCP, 53/UDP (protocol defaults to TCP); an ICMP
    /// type as 8/ICMP or EchoRequest/ICMPv6 (or use --icmp-type)
    #[arg(
        long,
        value_name = "PORT/PROTO",
        requires = "from",
        conflicts_with = "icmp_type"
    )]
    pub port: Option<String>,

    /// The protocol of --port or --icmp-type: tcp, udp, sctp, icmp, icmpv6 (with --icmp-type the
    /// default is icmp)
    #[arg(long, value_name = "PROTO", requires = "from")]
    pub protocol: Option<String>,

    /// An ICMP message type instead of a port: a number (8: echo request) or Cilium's name
    /// (EchoRequest, TimeExceeded, ...); the family is --protocol's (icmp or icmpv6)
    #[arg(long, value_name = "TYPE", requires = "from")]
    pub icmp_type: Option<String>,

    /// A JSON list of flows to trace instead of --from/--to/--port
    #[arg(long, value_name = "FILE")]
    pub probes: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum EndpointVerb {
    /// List endpoints: pod, node, identity, addresses, labels (an endpoint still waiting for its address shows `-`)
    List {
        /// Only the endpoints of this node
        #[arg(long, value_name = "NAME")]
        node: Option<String>,
    },
    /// Show one endpoint
    Get {
        /// NAMESPACE/POD
        pod: String,
    },
    /// Create an endpoint without addresses; the agent of its node allocates them (as a CNI plugin does)
    #[command(
        long_about = "Create an endpoint (a pod interface) without addresses, as a CNI plugin \
does.\n\nThe agent (flagella-control) of node --node allocates one address from the node's \
first IPv4 pod CIDR (and one from its first IPv6 pod CIDR, if it has one), writes them into the \
endpoint with the pod's MTU (the node's uplink MTU minus its tunnel's overhead; the pod's \
interface must be given it), and then pushes the endpoint to its dataplane. With --wait the \
command waits for the addresses and prints them with the MTU. Refused if the endpoint exists. The dataplane needs --ifindex (the \
host-side interface's index) and --mac (the pod interface's MAC); the node's agent refuses an \
endpoint of its own node without them.",
        after_long_help = "EXAMPLES:\n  \
flagella endpoint create --node node-1 --namespace default --name web-1 --labels app=web \\\n      \
--interface lxc1 --ifindex 12 --mac 02:00:00:00:00:05 --port http=80/tcp \\\n      \
--service-account web --wait 10"
    )]
    Create {
        /// The node hosting the pod (its agent allocates the addresses)
        #[arg(long, value_name = "NAME")]
        node: String,
        #[arg(long, value_name = "NS")]
        namespace: String,
        /// The pod's name
        #[arg(long, value_name = "POD")]
        name: String,
        /// The pod's labels
        #[arg(long, value_name = "K=V[,K=V...]", default_value = "", value_parser = parse_labels)]
        labels: std::collections::BTreeMap<String, String>,
        /// Host-side interface name of the pod's veth
        #[arg(long, value_name = "IF")]
        interface: String,
        /// Host-side interface index
        #[arg(long, value_name = "N")]
        ifindex: Option<u32>,
        /// The pod interface's MAC address
        #[arg(long, value_name = "MAC")]
        mac: Option<String>,
        /// A named container port, [NAME=]PORT[/PROTO]. Repeat for several.
        #[arg(long = "port", value_name = "[NAME=]PORT[/PROTO]", value_parser = parse_port)]
        ports: Vec<PortSpec>,
        /// The pod's service account: its identity gets the label
        /// io.cilium.k8s.policy.serviceaccount=NAME, which policies select on
        #[arg(long, value_name = "NAME", value_parser = parse_service_account)]
        service_account: Option<String>,
        /// Wait this many seconds for the addresses and print them, with the pod's MTU
        #[arg(long, value_name = "SECONDS")]
        wait: Option<u64>,
    },
    /// Delete an endpoint; the agent of its node releases its addresses
    Delete {
        /// NAMESPACE/POD
        pod: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum IdentityVerb {
    /// List identities: the reserved ones and those allocated for label sets
    List,
    /// Show one identity's labels
    Get {
        /// The identity number
        id: u32,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ModeArg {
    /// The frontend node translates both ways
    Snat,
    /// Direct server return: the backend answers the client directly
    Dsr,
}

#[derive(Debug, Subcommand)]
pub enum ServiceVerb {
    /// Create or replace a service
    #[command(after_long_help = "EXAMPLES:\n  \
flagella service upsert default/dns --frontend 10.96.0.10:53/udp \\\n      \
--backend 10.1.0.12:53 --backend 10.2.0.7:53,2\n  \
flagella service upsert default/web --frontend 10.96.0.20:80/tcp --backend 10.1.0.5:8080 --mode dsr\n  \
flagella service upsert default/shop --frontend 10.96.0.30:80/tcp,nodeport=30080 \\\n      \
--external-ip 203.0.113.7 --backend 10.2.0.5:8080 --backend 10.3.0.5:8080 --mode dsr")]
    Upsert {
        /// NAMESPACE/NAME
        name: String,
        /// IP:PORT[/PROTO][,nodeport=N] (protocol tcp, udp or sctp; default tcp). With a node
        /// port (30000-32767), every node also serves it at its own address and port N, for
        /// clients outside the cluster. Repeat for several.
        #[arg(long, value_name = "IP:PORT[/PROTO][,nodeport=N]", required = true, value_parser = parse_frontend)]
        frontend: Vec<FrontendSpec>,
        /// IP:PORT[,WEIGHT] (weight default 1; 0 drains). Repeat for several.
        #[arg(long, value_name = "IP:PORT[,WEIGHT]", value_parser = parse_backend)]
        backend: Vec<BackendSpec>,
        /// Forwarding mode
        #[arg(long, value_enum, default_value_t = ModeArg::Snat)]
        mode: ModeArg,
        /// An address routed to the nodes for this service (Kubernetes' externalIPs): served
        /// with every frontend's port and protocol. Repeat for several.
        #[arg(long, value_name = "IP")]
        external_ip: Vec<std::net::IpAddr>,
    },
    /// List services
    List,
    /// Delete a service
    Delete {
        /// NAMESPACE/NAME
        name: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TunnelArg {
    /// VXLAN to the other nodes (the source identity in the VNI)
    Vxlan,
    /// Geneve to the other nodes
    Geneve,
    /// No encapsulation: the underlay routes the pod CIDRs
    Native,
}

#[derive(Debug, Subcommand)]
pub enum NodeVerb {
    /// List nodes: underlay address, pod CIDRs, tunnel mode, endpoints
    List,
    /// Create or replace a node: its underlay address and the pod CIDRs its agent allocates from
    #[command(
        long_about = "Create or replace a node (what registering a node with the cluster \
writes).\n\nIts agent (flagella-control --node NAME) allocates its pods' addresses from the \
first IPv4 (and first IPv6) --pod-cidr, and gives its dataplane the pods' gateway: the first \
host address of that CIDR. Other nodes reach its pods through --underlay-ip.",
        after_long_help = "EXAMPLES:\n  \
flagella node upsert node-1 --underlay-ip 192.168.0.1 --pod-cidr 10.1.0.0/24\n  \
flagella node upsert node-2 --underlay-ip 192.168.0.2 --pod-cidr 10.2.0.0/24 \\\n      \
--pod-cidr fd00:2::/64 --tunnel geneve --labels role=worker"
    )]
    Upsert {
        /// The node's name (what its agent's --node says)
        name: String,
        /// The node's address on the underlay network
        #[arg(long, value_name = "IP")]
        underlay_ip: std::net::IpAddr,
        /// A CIDR its pods take addresses from, without host bits. Repeat for several.
        #[arg(long = "pod-cidr", value_name = "CIDR", required = true)]
        pod_cidrs: Vec<String>,
        /// How traffic reaches its pods from other nodes
        #[arg(long, value_enum, default_value_t = TunnelArg::Vxlan)]
        tunnel: TunnelArg,
        /// The node's labels (host policies' nodeSelector matches them)
        #[arg(long, value_name = "K=V[,K=V...]", default_value = "", value_parser = parse_labels)]
        labels: std::collections::BTreeMap<String, String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum NamespaceVerb {
    /// List namespaces and their labels
    List,
    /// Create or replace a namespace (endpoints need theirs to exist)
    #[command(after_long_help = "EXAMPLES:\n  flagella namespace upsert shop --labels team=web")]
    Upsert {
        /// The namespace's name
        name: String,
        /// Its labels (namespaceSelector matches them)
        #[arg(long, value_name = "K=V[,K=V...]", default_value = "", value_parser = parse_labels)]
        labels: std::collections::BTreeMap<String, String>,
    },
}

#[derive(Debug, Args)]
pub struct MonitorArgs {
    /// The dataplane's monitor socket
    #[arg(
        long,
        value_name = "PATH",
        default_value = "/run/flagella/dataplane-monitor.sock"
    )]
    pub socket: PathBuf,

    /// Only events of this type (repeat for several); `policy-verdict` includes policy drops
    #[arg(long = "type", value_enum, value_name = "TYPE")]
    pub types: Vec<EventTypeArg>,

    /// Only events from or to this endpoint id (repeatable)
    #[arg(long, value_name = "ID")]
    pub endpoint: Vec<u32>,

    /// Only events from or to this security identity (repeatable)
    #[arg(long, value_name = "N")]
    pub identity: Vec<u32>,

    /// Only drops for this reason, by name (policy_denied_ingress) or number (repeatable)
    #[arg(long, value_name = "REASON")]
    pub reason: Vec<String>,

    /// Also write the frames of the shown events (their first 128 bytes) to FILE as a pcap
    /// (tshark, tcpdump and Wireshark open it)
    #[arg(long, value_name = "FILE")]
    pub pcap: Option<PathBuf>,

    /// Stop after N events shown (lost-event lines not counted)
    #[arg(long, value_name = "N")]
    pub count: Option<u64>,

    /// Do not read identity labels from etcd
    #[arg(long)]
    pub no_labels: bool,
}

/// Event types of `flagella monitor --type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum EventTypeArg {
    Drop,
    PolicyVerdict,
    Trace,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Also ask the dataplane at this control socket for its status
    #[arg(long, value_name = "PATH")]
    pub dataplane_socket: Option<PathBuf>,
}
