//! `flagella`: the command-line tool, organised as `flagella <noun> <verb>` as Cilium's is.
//!
//! This file parses the command line (clap) and prints; the commands themselves are
//! `control::cli`. Global flags: `--etcd URL[,URL...]` (default `http://127.0.0.1:2379`) and
//! `-o text|json` (aligned tables for people, JSON for scripts). Exit status: 0 when the
//! command ran (whatever the verdicts of a trace), 1 when something failed (bad input, etcd or
//! the dataplane unreachable, object not found; the message says what to do), 2 for a
//! command-line usage error.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{ArgGroup, Args, Parser, Subcommand, ValueEnum};
use serde::Serialize;

use control::cli::objects::{
    self, backend_text, frontend_text, parse_backend, parse_frontend, parse_labels, parse_port,
    EndpointInfo,
};
use control::cli::policy::{self as cli_policy, as_list};
use control::cli::status;
use control::cli::table::Table;
use control::cli::{connect, labels_text, split_namespaced, CliError, Skipped};
use control::schema::{
    BackendSpec, EndpointSpec, FrontendSpec, NodeSpec, PortSpec, ServiceMode, ServiceSpec,
    TunnelMode,
};
use dataplane::Identity;
use policy_compiler::model::{PolicyId, PolicyKind};
use policy_compiler::trace::{explain, parse_port_proto, parse_probes, trace, Probe, TraceResult};
use policy_compiler::{parse_cluster, parse_policies, PolicyEngine};

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
struct Cli {
    /// etcd client URLs, comma-separated
    #[arg(
        long,
        global = true,
        value_name = "URL[,URL...]",
        value_delimiter = ',',
        default_value = "http://127.0.0.1:2379"
    )]
    etcd: Vec<String>,

    /// Output format: `text` (aligned tables) for people, `json` for scripts
    #[arg(short = 'o', long = "output", global = true, value_enum, default_value_t = Output::Text)]
    output: Output,

    #[command(subcommand)]
    noun: Noun,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Noun {
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
}

/// The policy kinds `--kind` accepts (Cilium's short names too). Named as the API kinds are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
#[allow(clippy::enum_variant_names)]
enum KindArg {
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
enum PolicyVerb {
    /// Store policies in etcd, from a file or stdin (what `kubectl get networkpolicies -A -o yaml` prints)
    #[command(
        long_about = "Store policies in etcd; every node's agent then enforces them.\n\n\
Reads exactly what `kubectl get networkpolicies -A -o yaml` (or `-o json`) prints, a \
CiliumNetworkPolicy or CiliumClusterwideNetworkPolicy manifest, or several `---` documents. \
Every policy is validated first; if any is invalid, nothing is written and the error names the \
document and the field. An existing policy of the same kind, namespace and name is replaced.",
        after_long_help = "EXAMPLES:\n  \
kubectl get networkpolicies -A -o yaml | flagella policy import -f -\n  \
kubectl get ciliumnetworkpolicies -A -o json | flagella policy import -f -\n  \
flagella policy import -f allow-web.yaml --dry-run"
    )]
    Import {
        /// The file to read, or `-` for stdin
        #[arg(short = 'f', long = "file", value_name = "FILE|-")]
        file: String,
        /// Validate only; write nothing
        #[arg(long)]
        dry_run: bool,
    },
    /// Show stored policies: all as a table, or one (NAMESPACE/NAME, or NAME for cluster-wide)
    #[command(
        long_about = "Show stored policies.\n\nWithout an argument, a table of every policy; \
with NAMESPACE/NAME (or NAME for a cluster-wide policy), the object itself. `-o json` prints \
the objects as a kubectl `List`, which `flagella policy import -f -` reads back."
    )]
    Get {
        /// NAMESPACE/NAME, or NAME for a CiliumClusterwideNetworkPolicy
        selector: Option<String>,
        /// Only policies of this kind
        #[arg(long, value_enum)]
        kind: Option<KindArg>,
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
sender's egress policy and the receiver's ingress policy both allow it.",
        after_long_help = "\
CLUSTER FILE (YAML or JSON):
  namespaces:                      # namespace name -> its labels
    x: {team: blue}
  pods:
  - {namespace: x, name: a, labels: {app: web}, ip: 10.0.0.1,
     ports: [{name: http, containerPort: 80, protocol: TCP}]}
  nodes:
  - {name: node-1, ip: 192.168.0.1}

SRC and DST are `namespace/pod` or an IP address. An address that is neither a pod nor a node \
is outside the cluster (identity `world`, or the CIDR identity of the longest matching policy CIDR).

PROBES FILE (JSON): [{\"from\": \"x/a\", \"to\": \"y/b\", \"port\": 80, \"protocol\": \"TCP\"}, ...]

EXAMPLES:
  flagella policy trace --from x/a --to y/b --port 80/TCP          # live, from etcd
  flagella policy trace --policies deny-all.yaml --policies allow-web.yaml \\
      --cluster cluster.yaml --from x/a --to y/b --port 80/TCP
  flagella policy trace --policies policies.yaml --cluster cluster.yaml --probes probes.json -o json

EXIT STATUS:
  0 the trace ran (whatever the verdicts); 1 an input is bad (the message names the file, the \
field and what to fix) or etcd is unreachable; 2 the command line is wrong."
    )]
    Trace(TraceArgs),
}

#[derive(Debug, Args)]
#[command(group(ArgGroup::new("flows").required(true).args(["from", "probes"])))]
struct TraceArgs {
    /// Offline: a file of policies (YAML or JSON; one object, several `---` documents or
    /// `kind: List`). Repeat the flag for several files. Requires --cluster.
    #[arg(long = "policies", value_name = "FILE", requires = "cluster")]
    policies: Vec<PathBuf>,

    /// Offline: the cluster description: namespaces with labels, pods, nodes (see below).
    /// Requires --policies.
    #[arg(long, value_name = "FILE", requires = "policies")]
    cluster: Option<PathBuf>,

    /// Source of the flow: `namespace/pod` or an IP address
    #[arg(long, value_name = "SRC", requires_all = ["to", "port"], conflicts_with = "probes")]
    from: Option<String>,

    /// Destination of the flow: `namespace/pod` or an IP address
    #[arg(long, value_name = "DST", requires = "from")]
    to: Option<String>,

    /// Destination port and protocol, e.g. 80/TCP, 53/UDP (protocol defaults to TCP)
    #[arg(long, value_name = "PORT/PROTO", requires = "from")]
    port: Option<String>,

    /// A JSON list of flows to trace instead of --from/--to/--port
    #[arg(long, value_name = "FILE")]
    probes: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
enum EndpointVerb {
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
--interface lxc1 --ifindex 12 --mac 02:00:00:00:00:05 --port http=80/tcp --wait 10"
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
enum IdentityVerb {
    /// List identities: the reserved ones and those allocated for label sets
    List,
    /// Show one identity's labels
    Get {
        /// The identity number
        id: u32,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ModeArg {
    /// The frontend node translates both ways
    Snat,
    /// Direct server return: the backend answers the client directly
    Dsr,
}

#[derive(Debug, Subcommand)]
enum ServiceVerb {
    /// Create or replace a service
    #[command(after_long_help = "EXAMPLES:\n  \
flagella service upsert default/dns --frontend 10.96.0.10:53/udp \\\n      \
--backend 10.1.0.12:53 --backend 10.2.0.7:53,2\n  \
flagella service upsert default/web --frontend 10.96.0.20:80/tcp --backend 10.1.0.5:8080 --mode dsr")]
    Upsert {
        /// NAMESPACE/NAME
        name: String,
        /// IP:PORT[/PROTO] (protocol tcp, udp or sctp; default tcp). Repeat for several.
        #[arg(long, value_name = "IP:PORT[/PROTO]", required = true, value_parser = parse_frontend)]
        frontend: Vec<FrontendSpec>,
        /// IP:PORT[,WEIGHT] (weight default 1; 0 drains). Repeat for several.
        #[arg(long, value_name = "IP:PORT[,WEIGHT]", value_parser = parse_backend)]
        backend: Vec<BackendSpec>,
        /// Forwarding mode
        #[arg(long, value_enum, default_value_t = ModeArg::Snat)]
        mode: ModeArg,
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
enum TunnelArg {
    /// VXLAN to the other nodes (the source identity in the VNI)
    Vxlan,
    /// Geneve to the other nodes
    Geneve,
    /// No encapsulation: the underlay routes the pod CIDRs
    Native,
}

#[derive(Debug, Subcommand)]
enum NodeVerb {
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
--pod-cidr fd00:2::/64 --tunnel geneve"
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
    },
}

#[derive(Debug, Subcommand)]
enum NamespaceVerb {
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
struct StatusArgs {
    /// Also ask the dataplane at this control socket for its status
    #[arg(long, value_name = "PATH")]
    dataplane_socket: Option<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}

async fn run(cli: Cli) -> Result<ExitCode, CliError> {
    let out = cli.output;
    let etcd = &cli.etcd;
    match cli.noun {
        Noun::Policy { verb } => policy(verb, etcd, out).await?,
        Noun::Endpoint { verb } => endpoint(verb, etcd, out).await?,
        Noun::Identity { verb } => identity(verb, etcd, out).await?,
        Noun::Service { verb } => service(verb, etcd, out).await?,
        Noun::Node {
            verb: upsert @ NodeVerb::Upsert { .. },
        } => node_upsert(upsert, etcd, out).await?,
        Noun::Namespace { verb } => namespace(verb, etcd, out).await?,
        Noun::Node {
            verb: NodeVerb::List,
        } => {
            let store = connect(etcd).await?;
            let (state, skipped) = cli_policy::live_state(&store).await?;
            warn(&skipped);
            let nodes = objects::nodes(&state);
            emit(out, &nodes, || {
                let mut t = Table::new(&["NAME", "UNDERLAY", "POD CIDRS", "TUNNEL", "ENDPOINTS"]);
                for n in &nodes {
                    t.row(vec![
                        n.name.clone(),
                        n.underlay_ip.to_string(),
                        n.pod_cidrs.join(","),
                        n.tunnel.as_str().to_string(),
                        n.endpoints.to_string(),
                    ]);
                }
                t.render()
            })?;
        }
        Noun::Status(args) => {
            let report = status::status(etcd, args.dataplane_socket.as_deref()).await;
            emit(out, &report, || status::text(&report))?;
            if !report.healthy() {
                return Ok(ExitCode::from(1));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn node_upsert(verb: NodeVerb, etcd: &[String], out: Output) -> Result<(), CliError> {
    let NodeVerb::Upsert {
        name,
        underlay_ip,
        pod_cidrs,
        tunnel,
    } = verb
    else {
        return Ok(());
    };
    let store = connect(etcd).await?;
    let spec = NodeSpec {
        underlay_ip,
        pod_cidrs,
        tunnel: match tunnel {
            TunnelArg::Vxlan => TunnelMode::Vxlan,
            TunnelArg::Geneve => TunnelMode::Geneve,
            TunnelArg::Native => TunnelMode::Native,
        },
    };
    let spec = objects::upsert_node(&store, &name, spec).await?;
    emit(
        out,
        &serde_json::json!({"name": name, "underlay_ip": spec.underlay_ip,
                            "pod_cidrs": spec.pod_cidrs, "tunnel": spec.tunnel}),
        || {
            format!(
                "node {name} written: underlay {}, pod CIDRs {}, {}\n",
                spec.underlay_ip,
                spec.pod_cidrs.join(","),
                spec.tunnel.as_str()
            )
        },
    )
}

async fn namespace(verb: NamespaceVerb, etcd: &[String], out: Output) -> Result<(), CliError> {
    let store = connect(etcd).await?;
    match verb {
        NamespaceVerb::Upsert { name, labels } => {
            let ns = objects::upsert_namespace(&store, &name, labels).await?;
            emit(out, &ns, || format!("namespace {} written\n", ns.name))
        }
        NamespaceVerb::List => {
            let (list, skipped) = objects::namespaces(&store).await?;
            warn(&skipped);
            emit(out, &list, || {
                let mut t = Table::new(&["NAME", "LABELS"]);
                for ns in &list {
                    t.row(vec![ns.name.clone(), labels_text(&ns.labels)]);
                }
                t.render()
            })
        }
    }
}

/// Prints `value` as JSON, or `text()` for people.
fn emit<T: Serialize>(
    out: Output,
    value: &T,
    text: impl FnOnce() -> String,
) -> Result<(), CliError> {
    let stdout = std::io::stdout();
    let mut w = std::io::BufWriter::new(stdout.lock());
    let written = match out {
        Output::Json => serde_json::to_writer_pretty(&mut w, value)
            .map_err(std::io::Error::from)
            .and_then(|()| writeln!(w)),
        Output::Text => w.write_all(text().as_bytes()),
    };
    written
        .and_then(|()| w.flush())
        .map_err(|e| CliError::Other(format!("cannot write the output: {e}")))
}

/// Keys skipped because their value does not decode (the agents skip them too).
fn warn(skipped: &[Skipped]) {
    for s in skipped {
        let reason = s
            .reason
            .strip_prefix(&format!("{}: ", s.key))
            .unwrap_or(&s.reason);
        eprintln!("warning: skipped {}: {reason}", s.key);
    }
}

fn read_input(file: &str) -> Result<(String, String), CliError> {
    if file == "-" {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .map_err(|source| CliError::Read {
                path: "stdin".into(),
                source,
            })?;
        return Ok(("stdin".into(), text));
    }
    let text = std::fs::read_to_string(file).map_err(|source| CliError::Read {
        path: file.to_string(),
        source,
    })?;
    Ok((file.to_string(), text))
}

fn policy_table(refs: impl IntoIterator<Item = PolicyId>) -> String {
    let mut t = Table::new(&["KIND", "NAMESPACE", "NAME"]);
    for id in refs {
        t.row(vec![
            id.kind.as_str().to_string(),
            id.namespace.unwrap_or_else(|| "-".into()),
            id.name,
        ]);
    }
    t.render()
}

async fn policy(verb: PolicyVerb, etcd: &[String], out: Output) -> Result<(), CliError> {
    match verb {
        PolicyVerb::Import { file, dry_run } => {
            let (source, text) = read_input(&file)?;
            let mut prepared = cli_policy::prepare_import(&source, &text)?;
            prepared.report.dry_run = dry_run;
            if !dry_run {
                let store = connect(etcd).await?;
                cli_policy::write_all(&store, &prepared.writes).await?;
            }
            let report = &prepared.report;
            if out == Output::Text {
                for w in &report.warnings {
                    eprintln!("warning: {w}");
                }
            }
            emit(out, report, || {
                let mut t = Table::new(&["KIND", "NAMESPACE", "NAME", "KEY"]);
                for p in &report.imported {
                    t.row(vec![
                        p.kind.clone(),
                        p.namespace.clone().unwrap_or_else(|| "-".into()),
                        p.name.clone(),
                        p.key.clone(),
                    ]);
                }
                let verb = if dry_run { "would import" } else { "imported" };
                format!(
                    "{}{verb} {} policies from {source}\n",
                    t.render(),
                    report.imported.len()
                )
            })
        }
        PolicyVerb::Get { selector, kind } => {
            let store = connect(etcd).await?;
            let (found, skipped) =
                cli_policy::get(&store, selector.as_deref(), kind.map(Into::into)).await?;
            warn(&skipped);
            match (&selector, found.as_slice()) {
                (Some(_), [one]) => emit(out, &one.object, || {
                    format!(
                        "{}\n",
                        serde_json::to_string_pretty(&one.object).unwrap_or_default()
                    )
                }),
                (Some(_), several) if out == Output::Text && !several.is_empty() => {
                    let text: Vec<String> = several
                        .iter()
                        .map(|p| serde_json::to_string_pretty(&p.object).unwrap_or_default())
                        .collect();
                    emit(out, &(), || format!("{}\n", text.join("\n---\n")))
                }
                _ => emit(out, &as_list(&found), || {
                    policy_table(found.iter().map(|p| p.id.clone()))
                }),
            }
        }
        PolicyVerb::Delete { selector, kind } => {
            let store = connect(etcd).await?;
            let deleted = cli_policy::delete(&store, &selector, kind.map(Into::into)).await?;
            emit(out, &deleted, || {
                format!("deleted {} ({})\n", deleted.name, deleted.key)
            })
        }
        PolicyVerb::Trace(args) => {
            let results = if args.policies.is_empty() {
                trace_live(&args, etcd).await?
            } else {
                trace_offline(&args)?
            };
            emit(out, &results, || {
                results
                    .iter()
                    .map(|r| format!("{}\n", explain(r)))
                    .collect::<String>()
            })
        }
    }
}

fn read(path: &Path, flag: &str) -> Result<String, CliError> {
    std::fs::read_to_string(path).map_err(|source| CliError::Read {
        path: format!("the {flag} file {}", path.display()),
        source,
    })
}

/// The flows asked for: --probes FILE, or --from/--to/--port.
fn probes(args: &TraceArgs) -> Result<Vec<Probe>, CliError> {
    match (&args.probes, &args.from, &args.to, &args.port) {
        (Some(path), _, _, _) => {
            parse_probes(&path.display().to_string(), &read(path, "--probes")?)
                .map_err(|e| CliError::Other(e.to_string()))
        }
        (None, Some(from), Some(to), Some(port)) => {
            let (port, protocol) =
                parse_port_proto(port).map_err(|e| CliError::Other(format!("--port: {e}")))?;
            Ok(vec![Probe {
                from: from.clone(),
                to: to.clone(),
                port,
                protocol,
            }])
        }
        _ => Err(CliError::Other(
            "give --from, --to and --port, or --probes FILE".into(),
        )),
    }
}

fn run_probes(engine: &PolicyEngine, args: &TraceArgs) -> Result<Vec<TraceResult>, CliError> {
    let probes = probes(args)?;
    let mut results = Vec::with_capacity(probes.len());
    for (i, probe) in probes.iter().enumerate() {
        let r = trace(engine, probe).map_err(|e| {
            CliError::Other(match &args.probes {
                Some(path) => format!("{}, probe {}: {e}", path.display(), i + 1),
                None => e.to_string(),
            })
        })?;
        results.push(r);
    }
    Ok(results)
}

fn trace_offline(args: &TraceArgs) -> Result<Vec<TraceResult>, CliError> {
    let mut policies = Vec::new();
    let mut seen: HashMap<PolicyId, String> = HashMap::new();
    for path in &args.policies {
        let name = path.display().to_string();
        let parsed = parse_policies(&name, &read(path, "--policies")?)
            .map_err(|e| CliError::Other(e.to_string()))?;
        for w in &parsed.warnings {
            eprintln!("warning: {w}");
        }
        for p in parsed.policies {
            if let Some(first) = seen.insert(p.id.clone(), name.clone()) {
                return Err(CliError::Other(format!(
                    "{name}: {} is also defined in {first}; remove one of them",
                    p.id
                )));
            }
            policies.push(p);
        }
    }
    let Some(cluster_path) = &args.cluster else {
        return Err(CliError::Other(
            "--policies needs --cluster FILE (or give neither to trace against etcd)".into(),
        ));
    };
    let cluster_name = cluster_path.display().to_string();
    let cluster = parse_cluster(&cluster_name, &read(cluster_path, "--cluster")?)
        .map_err(|e| CliError::Other(e.to_string()))?;
    let engine = PolicyEngine::build(&cluster, &policies)
        .map_err(|e| CliError::Other(format!("{cluster_name}: {e}")))?;
    run_probes(&engine, args)
}

/// Traces against the state in etcd, reporting cluster-wide identity numbers.
async fn trace_live(args: &TraceArgs, etcd: &[String]) -> Result<Vec<TraceResult>, CliError> {
    let store = connect(etcd).await?;
    let (state, skipped) = cli_policy::live_state(&store).await?;
    warn(&skipped);
    // Name a pod missing from etcd in etcd's terms (the compiler speaks of a cluster file).
    for probe in probes(args)? {
        for side in [&probe.from, &probe.to] {
            if side.contains('/') && !state.endpoints().contains_key(side.as_str()) {
                return Err(CliError::NotFound {
                    what: format!("endpoint {side}"),
                    hint: "`flagella endpoint list` lists the endpoints in etcd (a refused one \
                           is printed as a warning with its reason)"
                        .into(),
                });
            }
        }
    }
    let mut results = run_probes(state.engine(), args)?;
    for r in &mut results {
        for remote in [&mut r.egress.remote, &mut r.ingress.remote] {
            match state.cluster_identity(Identity(remote.identity)) {
                Some(id) => remote.identity = id,
                None => remote
                    .description
                    .push_str(" (no cluster-wide identity allocated yet; number is local)"),
            }
        }
    }
    Ok(results)
}

/// `endpoint create|delete`: writes; `None` for the read verbs.
async fn endpoint_write(
    verb: EndpointVerb,
    etcd: &[String],
    out: Output,
) -> Result<Option<EndpointVerb>, CliError> {
    match verb {
        EndpointVerb::Create {
            node,
            namespace,
            name,
            labels,
            interface,
            ifindex,
            mac,
            ports,
            wait,
        } => {
            let store = connect(etcd).await?;
            let spec = EndpointSpec {
                node,
                labels,
                ipv4: None,
                ipv6: None,
                interface,
                ifindex,
                mac,
                ports,
                mtu: None,
            };
            let mut e = objects::create_endpoint(&store, &namespace, &name, spec).await?;
            if let Some(secs) = wait {
                e = objects::wait_for_address(
                    &store,
                    &namespace,
                    &name,
                    std::time::Duration::from_secs(secs),
                )
                .await?;
            }
            emit(out, &e, || created_text(&e))?;
            Ok(None)
        }
        EndpointVerb::Delete { pod } => {
            let store = connect(etcd).await?;
            let (ns, n) = split_namespaced("endpoint", &pod)?;
            let key = objects::delete_endpoint(&store, ns, n).await?;
            emit(
                out,
                &serde_json::json!({"deleted": format!("{ns}/{n}"), "key": key}),
                || format!("deleted endpoint {ns}/{n}; its node's agent releases its addresses\n"),
            )?;
            Ok(None)
        }
        read => Ok(Some(read)),
    }
}

fn created_text(e: &EndpointInfo) -> String {
    let addrs: Vec<String> = e
        .ipv4
        .map(|a| a.to_string())
        .into_iter()
        .chain(e.ipv6.map(|a| a.to_string()))
        .collect();
    if addrs.is_empty() {
        format!(
            "endpoint {}/{} created; the agent of node {} allocates its address\n",
            e.namespace, e.name, e.node
        )
    } else {
        format!(
            "endpoint {}/{} created on node {}: {} {}\n",
            e.namespace,
            e.name,
            e.node,
            addrs.join(" "),
            mtu_text(e.mtu)
        )
    }
}

/// `mtu 1442`, or why there is none yet.
fn mtu_text(mtu: Option<u16>) -> String {
    match mtu {
        Some(m) => format!("mtu {m}"),
        None => {
            "(mtu not known yet: the node's agent has not read its dataplane's uplink MTU)".into()
        }
    }
}

async fn endpoint(verb: EndpointVerb, etcd: &[String], out: Output) -> Result<(), CliError> {
    let Some(verb) = endpoint_write(verb, etcd, out).await? else {
        return Ok(());
    };
    let store = connect(etcd).await?;
    let (state, skipped) = cli_policy::live_state(&store).await?;
    warn(&skipped);
    let id_text = |id: Option<u32>| id.map_or_else(|| "(pending)".into(), |i| i.to_string());
    let ip_text = |ip: Option<String>| ip.unwrap_or_else(|| "-".into());
    match verb {
        EndpointVerb::List { node } => {
            let mut eps = objects::endpoints(&state, node.as_deref());
            eps.extend(objects::pending_endpoints(&store, node.as_deref()).await?);
            eps.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
            emit(out, &eps, || {
                let mut t = Table::new(&[
                    "ENDPOINT",
                    "NODE",
                    "IDENTITY",
                    "IPV4",
                    "IPV6",
                    "INTERFACE",
                    "LABELS",
                ]);
                for e in &eps {
                    t.row(vec![
                        format!("{}/{}", e.namespace, e.name),
                        e.node.clone(),
                        id_text(e.identity),
                        ip_text(e.ipv4.map(|a| a.to_string())),
                        ip_text(e.ipv6.map(|a| a.to_string())),
                        e.interface.clone(),
                        labels_text(&e.labels),
                    ]);
                }
                t.render()
            })
        }
        EndpointVerb::Get { pod } => {
            let (ns, name) = split_namespaced("endpoint", &pod)?;
            let e = match objects::endpoint(&state, ns, name) {
                Ok(e) => e,
                Err(not_found) => objects::pending_endpoints(&store, None)
                    .await?
                    .into_iter()
                    .find(|e| e.namespace == ns && e.name == name)
                    .ok_or(not_found)?,
            };
            emit(out, &e, || {
                let ports: Vec<String> = e
                    .ports
                    .iter()
                    .map(|p| match &p.name {
                        Some(n) => format!("{n}={}/{}", p.port, p.protocol),
                        None => format!("{}/{}", p.port, p.protocol),
                    })
                    .collect();
                let mut t = Table::new(&["FIELD", "VALUE"]);
                for (k, v) in [
                    ("endpoint", format!("{}/{}", e.namespace, e.name)),
                    ("node", e.node.clone()),
                    ("identity", id_text(e.identity)),
                    ("ipv4", ip_text(e.ipv4.map(|a| a.to_string()))),
                    ("ipv6", ip_text(e.ipv6.map(|a| a.to_string()))),
                    ("interface", e.interface.clone()),
                    ("labels", labels_text(&e.labels)),
                    ("ports", ports.join(",")),
                    ("mtu", e.mtu.map_or_else(|| "-".into(), |m| m.to_string())),
                ] {
                    t.row(vec![k.to_string(), v]);
                }
                t.render()
            })
        }
        EndpointVerb::Create { .. } | EndpointVerb::Delete { .. } => Ok(()),
    }
}

async fn identity(verb: IdentityVerb, etcd: &[String], out: Output) -> Result<(), CliError> {
    let store = connect(etcd).await?;
    let ids = match verb {
        IdentityVerb::List => {
            let (ids, skipped) = objects::identities(&store).await?;
            warn(&skipped);
            ids
        }
        IdentityVerb::Get { id } => vec![objects::identity(&store, id).await?],
    };
    let text = || {
        let mut t = Table::new(&["ID", "LABELS"]);
        for i in &ids {
            let labels = if i.reserved {
                i.labels.keys().cloned().collect::<Vec<_>>().join(",")
            } else {
                labels_text(&i.labels)
            };
            t.row(vec![i.id.to_string(), labels]);
        }
        t.render()
    };
    match ids.as_slice() {
        [one] if out == Output::Json => emit(out, one, text),
        _ => emit(out, &ids, text),
    }
}

async fn service(verb: ServiceVerb, etcd: &[String], out: Output) -> Result<(), CliError> {
    let store = connect(etcd).await?;
    match verb {
        ServiceVerb::Upsert {
            name,
            frontend,
            backend,
            mode,
        } => {
            let (ns, n) = split_namespaced("service", &name)?;
            let spec = ServiceSpec {
                frontends: frontend,
                backends: backend,
                mode: match mode {
                    ModeArg::Snat => ServiceMode::Snat,
                    ModeArg::Dsr => ServiceMode::Dsr,
                },
            };
            let s = objects::upsert_service(&store, ns, n, spec).await?;
            emit(out, &s, || format!("service {ns}/{n} written\n"))
        }
        ServiceVerb::List => {
            let (services, skipped) = objects::services(&store).await?;
            warn(&skipped);
            emit(out, &services, || {
                let mut t = Table::new(&["SERVICE", "MODE", "FRONTENDS", "BACKENDS"]);
                for s in &services {
                    let f: Vec<String> = s.spec.frontends.iter().map(frontend_text).collect();
                    let b: Vec<String> = s.spec.backends.iter().map(backend_text).collect();
                    t.row(vec![
                        format!("{}/{}", s.namespace, s.name),
                        match s.spec.mode {
                            ServiceMode::Snat => "snat".into(),
                            ServiceMode::Dsr => "dsr".into(),
                        },
                        f.join(","),
                        if b.is_empty() {
                            "-".into()
                        } else {
                            b.join(" ")
                        },
                    ]);
                }
                t.render()
            })
        }
        ServiceVerb::Delete { name } => {
            let (ns, n) = split_namespaced("service", &name)?;
            let key = objects::delete_service(&store, ns, n).await?;
            emit(
                out,
                &serde_json::json!({"deleted": format!("{ns}/{n}"), "key": key}),
                || format!("deleted service {ns}/{n}\n"),
            )
        }
    }
}
