//! `flagella policy trace`: which flows the policies allow, and which rules decided. Offline
//! from files (policies and a cluster description) or live from etcd (the agents' own model,
//! [`super::policy::live_state`], with cluster-wide identity numbers). Either way each probe is
//! looked up in the compiled per-pod maps with the dataplane's own lookup
//! ([`policy_compiler::trace`]).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use dataplane::Identity;
use policy_compiler::icmp::IcmpFamily;
use policy_compiler::model::{Policy, PolicyId};
use policy_compiler::trace::{
    host_policies, parse_port_proto, parse_probe_port, parse_probes, trace_with_hosts,
    HostPolicies, Probe, TraceResult,
};
use policy_compiler::{parse_cluster, parse_policies, Cluster, PolicyEngine};

use super::args::TraceArgs;
use super::render::warn;
use super::{connect, CliError};

pub(super) fn read(path: &Path, flag: &str) -> Result<String, CliError> {
    std::fs::read_to_string(path).map_err(|source| CliError::Read {
        path: format!("the {flag} file {}", path.display()),
        source,
    })
}

/// The flows asked for: --probes FILE, or --from/--to with --port or --icmp-type.
fn probes(args: &TraceArgs) -> Result<Vec<Probe>, CliError> {
    match (&args.probes, &args.from, &args.to) {
        (Some(path), _, _) => parse_probes(&path.display().to_string(), &read(path, "--probes")?)
            .map_err(|e| CliError::Other(e.to_string())),
        (None, Some(from), Some(to)) => {
            let (port, protocol) = probe_port(args)?;
            Ok(vec![Probe {
                from: from.clone(),
                to: to.clone(),
                port,
                protocol,
            }])
        }
        _ => Err(CliError::Other(
            "give --from, --to and --port (or --icmp-type), or --probes FILE".into(),
        )),
    }
}

/// The probe's port (ICMP: type) and protocol number from --port, --protocol, --icmp-type.
fn probe_port(args: &TraceArgs) -> Result<(u16, u8), CliError> {
    let protocol = args.protocol.as_deref();
    match (&args.port, &args.icmp_type) {
        (Some(port), None) => match protocol {
            None => parse_port_proto(port).map_err(|e| CliError::Other(format!("--port: {e}"))),
            Some(proto) => parse_probe_port(port, proto).ok_or_else(|| {
                CliError::Other(format!(
                    "--port {port} --protocol {proto}: give a port 0-65535 and tcp, udp or sctp \
                     (or an ICMP type with icmp / icmpv6)"
                ))
            }),
        },
        (None, Some(ty)) => {
            let proto = protocol.unwrap_or("icmp");
            if IcmpFamily::of_protocol_name(proto).is_none() {
                return Err(CliError::Other(format!(
                    "--icmp-type needs --protocol icmp or icmpv6, not `{proto}`"
                )));
            }
            parse_probe_port(ty, proto).ok_or_else(|| {
                CliError::Other(format!(
                    "--icmp-type {ty}: not an ICMP type of {proto}; give a number 0-255 or a \
                     name such as EchoRequest, TimeExceeded, DestinationUnreachable"
                ))
            })
        }
        _ => Err(CliError::Other(
            "give --port PORT/PROTO or --icmp-type TYPE with --from and --to".into(),
        )),
    }
}

fn run_probes(
    engine: &PolicyEngine,
    hosts: &HostPolicies,
    args: &TraceArgs,
) -> Result<Vec<TraceResult>, CliError> {
    let probes = probes(args)?;
    // A block that splits an identity explains verdicts that look wrong by address.
    for w in engine.split_warnings() {
        eprintln!("warning: {w}");
    }
    let mut results = Vec::with_capacity(probes.len());
    for (i, probe) in probes.iter().enumerate() {
        let r = trace_with_hosts(engine, hosts, probe).map_err(|e| {
            CliError::Other(match &args.probes {
                Some(path) => format!("{}, probe {}: {e}", path.display(), i + 1),
                None => e.to_string(),
            })
        })?;
        results.push(r);
    }
    Ok(results)
}

/// The policies of --policies files, each file's warnings printed (a policy defined in two
/// files is refused).
pub(super) fn read_policy_files(paths: &[PathBuf]) -> Result<Vec<Policy>, CliError> {
    let mut policies = Vec::new();
    let mut seen: HashMap<PolicyId, String> = HashMap::new();
    for path in paths {
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
    Ok(policies)
}

/// The --cluster file.
pub(super) fn read_cluster(path: &Path) -> Result<Cluster, CliError> {
    parse_cluster(&path.display().to_string(), &read(path, "--cluster")?)
        .map_err(|e| CliError::Other(e.to_string()))
}

pub fn trace_offline(args: &TraceArgs) -> Result<Vec<TraceResult>, CliError> {
    let policies = read_policy_files(&args.policies)?;
    let Some(cluster_path) = &args.cluster else {
        return Err(CliError::Other(
            "--policies needs --cluster FILE (or give neither to trace against etcd)".into(),
        ));
    };
    let cluster = read_cluster(cluster_path)?;
    let mut engine = PolicyEngine::build(&cluster, &policies)
        .map_err(|e| CliError::Other(format!("{}: {e}", cluster_path.display())))?;
    let nodes = cluster.nodes.iter().map(|n| (n.name.as_str(), &n.labels));
    let hosts = host_policies(&mut engine, nodes);
    run_probes(&engine, &hosts, args)
}

/// Traces against the state in etcd, reporting cluster-wide identity numbers.
pub async fn trace_live(args: &TraceArgs, etcd: &[String]) -> Result<Vec<TraceResult>, CliError> {
    let store = connect(etcd).await?;
    let (mut state, skipped) = super::policy::live_state(&store).await?;
    let hosts = state.host_policies();
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
    let mut results = run_probes(state.engine(), &hosts, args)?;
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
