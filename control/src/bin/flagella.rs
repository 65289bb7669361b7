//! `flagella`: the command-line tool, organised as `flagella <noun> <verb>`.
//!
//! Only `flagella policy trace` exists so far; it works offline from files. Exit status: 0 when
//! the command ran (whatever the verdicts), 1 when an input is bad (unreadable file, invalid
//! policy, unknown pod), 2 for a command-line usage error.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{ArgGroup, Args, Parser, Subcommand, ValueEnum};

use policy_compiler::model::PolicyId;
use policy_compiler::trace::{explain, parse_port_proto, parse_probes, trace, Probe};
use policy_compiler::{parse_cluster, parse_policies, PolicyEngine};

#[derive(Debug, Parser)]
#[command(
    name = "flagella",
    version,
    about = "Flagella command-line tool",
    long_about = "Flagella command-line tool.\n\nCommands are `flagella <noun> <verb>`, e.g. \
                  `flagella policy trace`. Run `flagella <noun> --help` to see the verbs."
)]
struct Cli {
    #[command(subcommand)]
    noun: Noun,
}

#[derive(Debug, Subcommand)]
enum Noun {
    /// Network policies (Kubernetes NetworkPolicy, CiliumNetworkPolicy)
    Policy {
        #[command(subcommand)]
        verb: PolicyVerb,
    },
}

#[derive(Debug, Subcommand)]
enum PolicyVerb {
    /// Explain whether a flow is allowed, and by which policy rules (offline, from files)
    #[command(
        long_about = "Explain whether flows are allowed, and which policies and rules decided.\n\n\
Works offline: it reads the policies and a cluster description, compiles them into the same \
per-pod policy maps the dataplane uses and looks each flow up in them with the dataplane's own \
lookup function. A flow is allowed when the sender's egress policy and the receiver's ingress \
policy both allow it.",
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
  flagella policy trace --policies deny-all.yaml --policies allow-web.yaml \\
      --cluster cluster.yaml --from x/a --to y/b --port 80/TCP
  flagella policy trace --policies policies.yaml --cluster cluster.yaml --probes probes.json -o json

EXIT STATUS:
  0 the trace ran (whatever the verdicts); 1 an input is bad (the message names the file, the \
field and what to fix); 2 the command line is wrong."
    )]
    Trace(TraceArgs),
}

#[derive(Debug, Args)]
#[command(group(ArgGroup::new("flows").required(true).args(["from", "probes"])))]
struct TraceArgs {
    /// A file of policies (YAML or JSON; one object, several `---` documents or `kind: List`).
    /// Repeat the flag for several files.
    #[arg(long = "policies", value_name = "FILE", required = true)]
    policies: Vec<PathBuf>,

    /// The cluster description: namespaces with labels, pods, nodes (see below)
    #[arg(long, value_name = "FILE")]
    cluster: PathBuf,

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

    /// Output format: `text` for people, `json` for scripts
    #[arg(short = 'o', long = "output", value_enum, default_value_t = Output::Text)]
    output: Output,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    Text,
    Json,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.noun {
        Noun::Policy {
            verb: PolicyVerb::Trace(args),
        } => policy_trace(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::from(1)
        }
    }
}

fn read(path: &Path, flag: &str) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| {
        format!(
            "cannot read the {flag} file {}: {e}; check the path and permissions",
            path.display()
        )
    })
}

fn policy_trace(args: &TraceArgs) -> Result<(), String> {
    let mut policies = Vec::new();
    let mut seen: HashMap<PolicyId, String> = HashMap::new();
    for path in &args.policies {
        let name = path.display().to_string();
        let parsed =
            parse_policies(&name, &read(path, "--policies")?).map_err(|e| e.to_string())?;
        for w in &parsed.warnings {
            eprintln!("warning: {w}");
        }
        for p in parsed.policies {
            if let Some(first) = seen.insert(p.id.clone(), name.clone()) {
                return Err(format!(
                    "{name}: {} is also defined in {first}; remove one of them",
                    p.id
                ));
            }
            policies.push(p);
        }
    }
    let cluster_name = args.cluster.display().to_string();
    let cluster = parse_cluster(&cluster_name, &read(&args.cluster, "--cluster")?)
        .map_err(|e| e.to_string())?;
    let engine =
        PolicyEngine::build(&cluster, &policies).map_err(|e| format!("{cluster_name}: {e}"))?;

    let probes = match (&args.probes, &args.from, &args.to, &args.port) {
        (Some(path), _, _, _) => {
            parse_probes(&path.display().to_string(), &read(path, "--probes")?)
                .map_err(|e| e.to_string())?
        }
        (None, Some(from), Some(to), Some(port)) => {
            let (port, protocol) = parse_port_proto(port).map_err(|e| format!("--port: {e}"))?;
            vec![Probe {
                from: from.clone(),
                to: to.clone(),
                port,
                protocol,
            }]
        }
        _ => return Err("give --from, --to and --port, or --probes FILE".into()),
    };

    let mut results = Vec::with_capacity(probes.len());
    for (i, probe) in probes.iter().enumerate() {
        let r = trace(&engine, probe).map_err(|e| match &args.probes {
            Some(path) => format!("{}, probe {}: {e}", path.display(), i + 1),
            None => e.to_string(),
        })?;
        results.push(r);
    }

    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let written = match args.output {
        Output::Json => serde_json::to_writer_pretty(&mut out, &results)
            .map_err(|e| e.to_string())
            .and_then(|()| writeln!(out).map_err(|e| e.to_string())),
        Output::Text => results
            .iter()
            .try_for_each(|r| writeln!(out, "{}", explain(r)))
            .map_err(|e| e.to_string()),
    };
    written
        .and_then(|()| out.flush().map_err(|e| e.to_string()))
        .map_err(|e| format!("cannot write the output: {e}"))
}
