//! `scale`: the control plane at cluster scale (issue 16). A synthetic cluster
//! ([`control::synth`]: N endpoints with ~20 labels each, M nodes, the chosen number of
//! identities, 1,000 policies of the common shapes) is written to a real etcd in transactions of
//! 100, then, per `--endpoints` value:
//!
//! 1. **the agent's model in process** (the agent's `ClusterState` for node 0, fed the same keys,
//!    identities numbered locally): initial sync (listing -> every local endpoint's maps),
//!    resident memory it added, the work of one policy change (an app-to-app policy whose
//!    subjects are on this node, rewritten and committed) and of one pod add (remote and local);
//! 2. **real agents** (`flagella-control`, `--agents` of them, each with a stand-in dataplane
//!    socket, [`control::synth::StandIn`]): start until its node's policy is in the dataplane
//!    (every local endpoint sent and its maps equal to a from-scratch compile of what it read),
//!    etcd put of a policy change -> the first request the stand-in receives (Flagella's own
//!    share: put acknowledged -> dataplane told), its RSS;
//! 3. **baselines** in a scratch network namespace (root only): iptables-restore and nft -f
//!    loading the equivalent rules for node 0 (the compiled ingress maps with identities
//!    expanded to addresses, as `converge` does), the same run.
//!
//! Everything carries the prefix `fsc-<pid>-<n>` and is removed on exit.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use control::sync::ClusterState;
use control::synth::mirror::{from_scratch, IdentityBook};
use control::synth::{ScaleCluster, ScaleSpec, StandIn};
use serde_json::Value;

use crate::cli::ScaleArgs;
use crate::converge::{self, SizeResult};
use crate::etcd::{Etcd, EtcdServer, ROOT};
use crate::forward::{is_root, ScratchDir};
use crate::targets::ChildGuard;
use crate::BenchError;

/// Row labels.
pub const MODEL_SYNC: &str = "model: initial sync (list -> local maps)";
pub const MODEL_POLICY: &str = "model: one policy change (commit)";
pub const MODEL_POD_REMOTE: &str = "model: one remote pod added";
pub const MODEL_POD_LOCAL: &str = "model: one local pod added";
pub const AGENT_START: &str = "agent: start -> node's policy in the dataplane";
pub const AGENT_PUT: &str = "agent: policy put acknowledged -> dataplane told";

fn ms_since(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}

/// Resident set size of process `pid` (`self` for this one), in MiB.
pub fn rss_mib(pid: &str) -> Option<f64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = text.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// The spec of one size from the arguments.
pub fn spec(args: &ScaleArgs, prefix: &str, endpoints: usize) -> ScaleSpec {
    ScaleSpec {
        prefix: prefix.to_string(),
        endpoints,
        nodes: args.nodes,
        agents: args.agents.max(1),
        local_pods: args.local_pods,
        namespaces: args.namespaces,
        identities: args.identities,
        policies: args.policies,
    }
}

/// Runs every size; a failed size is reported in its notes and the next one runs.
pub fn scale(args: &ScaleArgs) -> Result<Vec<SizeResult>, BenchError> {
    let mut results = Vec::new();
    for (i, &n) in args.endpoints.iter().enumerate() {
        eprintln!("== {n} endpoints");
        let mut r = SizeResult {
            endpoints: n,
            ..SizeResult::default()
        };
        let prefix = format!("fsc-{}-{i}", std::process::id());
        match one_size(args, &prefix, n, &mut r) {
            Ok(()) => {}
            Err(BenchError::Interrupted) => return Err(BenchError::Interrupted),
            Err(e) => {
                eprintln!("   failed: {e}");
                r.notes.push(format!("failed: {e}"));
            }
        }
        results.push(r);
    }
    Ok(results)
}

fn one_size(
    args: &ScaleArgs,
    prefix: &str,
    n: usize,
    r: &mut SizeResult,
) -> Result<(), BenchError> {
    let cluster = ScaleCluster::generate(&spec(args, prefix, n)).map_err(BenchError::Failed)?;
    let objects = cluster.objects();
    r.label_sets = cluster.label_sets();
    r.remote_nodes = args.nodes - args.agents.max(1);
    r.background_policies = args.policies;
    r.local_endpoints = cluster.endpoints.iter().filter(|e| e.node == 0).count();
    let bytes: usize = objects
        .iter()
        .map(|(k, v)| ROOT.len() + k.len() + v.len())
        .sum();
    r.notes.push(format!(
        "{:.1} MiB under {ROOT}",
        bytes as f64 / (1 << 20) as f64
    ));
    let node = cluster.node_name(0);
    let st = model(args, &cluster, &objects, r);
    if !args.skip_agents {
        with_agents(args, prefix, &cluster, &objects, r)?;
    }
    if !args.skip_baselines {
        if is_root() {
            let rules = converge::ingress_rules(&st, &node);
            let addrs: Vec<Ipv4Addr> = cluster.endpoints.iter().map(|e| e.ip).collect();
            converge::baselines(
                &format!("{prefix}-nf"),
                &rules,
                &addrs,
                args.baseline_reps,
                r,
            )?;
        } else {
            r.notes
                .push("baselines skipped: iptables/nft need root".into());
        }
    }
    Ok(())
}

// ---- 1. the model in process ---------------------------------------------------------------

fn model(
    args: &ScaleArgs,
    cluster: &ScaleCluster,
    objects: &[(String, String)],
    r: &mut SizeResult,
) -> ClusterState {
    let node = cluster.node_name(0);
    let listing: Vec<(String, Vec<u8>)> = objects
        .iter()
        .map(|(k, v)| (format!("{ROOT}{k}"), v.clone().into_bytes()))
        .collect();
    let rss0 = rss_mib("self");
    let t = Instant::now();
    let mut st = ClusterState::new(&node);
    st.set_quiet(true);
    st.set_local_only(true);
    st.put_all(&listing);
    let mut ids = IdentityBook::default();
    ids.resolve(&mut st);
    let first = st.commit();
    let sync = ms_since(t);
    r.initial_sync_ms = sync;
    r.push(MODEL_SYNC, &[sync]);
    if let (Some(a), Some(b)) = (rss0, rss_mib("self")) {
        r.notes.push(format!(
            "model: {:.0} MiB resident added by the model of {} endpoints ({} changes at the first commit)",
            b - a,
            cluster.endpoints.len(),
            first.len()
        ));
    }
    drop(listing);
    // One policy change: an app-to-app policy with subjects on this node, rewritten.
    let reps = args.reps;
    let mut times = Vec::new();
    let (policy, subjects) = cluster.app_policy_on(0).unwrap_or((args.namespaces, 0));
    r.notes.push(format!(
        "the changed policy selects {subjects} endpoints of this node"
    ));
    for i in 0..reps {
        let (k, v) = cluster.policy_object(policy, 1 + (i % 2) as u16);
        let t = Instant::now();
        let _ = st.put(&format!("{ROOT}{k}"), v.as_bytes());
        ids.resolve(&mut st);
        let changes = st.commit();
        times.push(ms_since(t));
        if i == 0 {
            r.notes.push(format!(
                "a policy change: {} dataplane changes",
                changes.len()
            ));
        }
    }
    r.push(MODEL_POLICY, &times);
    let mut pods = cluster.clone();
    for (what, node_index) in [
        (MODEL_POD_REMOTE, pods.spec.nodes - 1),
        (MODEL_POD_LOCAL, 0),
    ] {
        let mut times = Vec::new();
        for i in 0..reps.min(100) {
            let Some(room) = pods.node_with_room(node_index) else {
                break;
            };
            let e = pods.endpoint(10_000_000 + i + node_index, i % pods.spec.identities, room);
            let (k, v) = pods.endpoint_object(&e);
            let t = Instant::now();
            let _ = st.put(&format!("{ROOT}{k}"), v.as_bytes());
            ids.resolve(&mut st);
            let _ = st.commit();
            times.push(ms_since(t));
        }
        r.push(what, &times);
    }
    st
}

// ---- 2. real agents ------------------------------------------------------------------------

struct RealAgent {
    node: String,
    child: ChildGuard,
    standin: StandIn,
    status: PathBuf,
    log: PathBuf,
    started: Instant,
}

fn start_agent(
    control: &Path,
    etcd_url: &str,
    node: &str,
    dir: &Path,
) -> Result<RealAgent, BenchError> {
    let socket = dir.join(format!("{node}.sock"));
    let standin = StandIn::serve(&socket)
        .map_err(|e| BenchError::io(format!("stand-in socket {}", socket.display()), e))?;
    let status = dir.join(format!("{node}.status"));
    let log = dir.join(format!("{node}.log"));
    let logf =
        std::fs::File::create(&log).map_err(|e| BenchError::io(log.display().to_string(), e))?;
    let started = Instant::now();
    let child = ChildGuard::spawn(
        "flagella-control",
        Command::new(control)
            .args([
                "--etcd",
                etcd_url,
                "--node",
                node,
                "--metrics-address",
                "off",
            ])
            .arg("--dataplane-socket")
            .arg(&socket)
            .arg("--status-file")
            .arg(&status)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(logf),
    )?;
    Ok(RealAgent {
        node: node.to_string(),
        child,
        standin,
        status,
        log,
        started,
    })
}

impl RealAgent {
    fn status(&self) -> Value {
        std::fs::read(&self.status)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or(Value::Null)
    }

    /// Waits until the stand-in holds every local endpoint with the maps a from-scratch
    /// compile of etcd's contents gives; returns the milliseconds since the start.
    fn wait_converged(&mut self, etcd: &Etcd, local: usize) -> Result<f64, BenchError> {
        let deadline = Instant::now() + Duration::from_secs(900);
        loop {
            self.child.check_alive(&self.log)?;
            let endpoints = self.standin.with_mirror(|m| m.endpoints.len());
            let revision = etcd.revision()?;
            let caught_up = self.status()["revision"]
                .as_i64()
                .is_some_and(|r| r >= revision);
            if endpoints >= local && caught_up {
                let done = ms_since(self.started);
                let diff = self.differential(etcd)?;
                if diff.is_empty() {
                    return Ok(done);
                }
            }
            if Instant::now() > deadline {
                return Err(BenchError::Failed(format!(
                    "flagella-control for {} did not converge within 900 s; see {}",
                    self.node,
                    self.log.display()
                )));
            }
            crate::signals::sleep(Duration::from_millis(5))?;
        }
    }

    fn differential(&self, etcd: &Etcd) -> Result<Vec<String>, BenchError> {
        let state: BTreeMap<String, Vec<u8>> = etcd.list_root()?.into_iter().collect();
        let expected = from_scratch(&self.node, &state, |labels| {
            let raw = state.get(&control::identity::labels_key(labels))?;
            std::str::from_utf8(raw).ok()?.parse().ok()
        });
        Ok(self
            .standin
            .mirror()
            .without_cookies()
            .diff(&expected.without_cookies(), 10))
    }
}

fn with_agents(
    args: &ScaleArgs,
    prefix: &str,
    cluster: &ScaleCluster,
    objects: &[(String, String)],
    r: &mut SizeResult,
) -> Result<(), BenchError> {
    let control = args
        .control
        .clone()
        .unwrap_or_else(converge::default_control);
    let path = std::env::temp_dir().join(prefix);
    std::fs::create_dir_all(&path).map_err(|e| BenchError::io(path.display().to_string(), e))?;
    let dir = ScratchDir(path);
    let server;
    let url = match &args.etcd {
        Some(u) => u.clone(),
        None => {
            server = EtcdServer::start(prefix, &dir.0)?;
            server.url.clone()
        }
    };
    let mut etcd = Etcd::connect(std::slice::from_ref(&url))?;
    let t = Instant::now();
    etcd.put_many(objects)?;
    r.notes.push(format!(
        "etcd: {} keys written in {:.0} ms (transactions of 100)",
        objects.len(),
        ms_since(t)
    ));
    let result = measure_agents(args, &control, &url, &mut etcd, cluster, &dir.0, r);
    if args.etcd.is_some() {
        etcd.delete_written()?;
    }
    result
}

fn measure_agents(
    args: &ScaleArgs,
    control: &Path,
    url: &str,
    etcd: &mut Etcd,
    cluster: &ScaleCluster,
    dir: &Path,
    r: &mut SizeResult,
) -> Result<(), BenchError> {
    let mut agents = Vec::new();
    for i in 0..args.agents.max(1) {
        agents.push(start_agent(control, url, &cluster.node_name(i), dir)?);
    }
    let mut starts = Vec::new();
    for (i, a) in agents.iter_mut().enumerate() {
        let local = cluster.endpoints.iter().filter(|e| e.node == i).count();
        starts.push(a.wait_converged(etcd, local)?);
    }
    r.push(AGENT_START, &starts);
    // Policy puts that change node 0's maps: the stand-in's first request after the ack.
    let mut puts = Vec::new();
    let (policy, _) = cluster.app_policy_on(0).unwrap_or((args.namespaces, 0));
    for i in 0..args.reps {
        let (k, v) = cluster.policy_object(policy, 1 + (i % 2) as u16);
        let (before, _) = agents[0].standin.progress();
        etcd.put(&k, &v)?;
        let acked = Instant::now();
        let deadline = acked + Duration::from_secs(30);
        loop {
            if let (n, Some(at)) = agents[0].standin.progress() {
                if n > before {
                    puts.push(at.saturating_duration_since(acked).as_secs_f64() * 1e3);
                    break;
                }
            }
            if Instant::now() > deadline {
                r.notes
                    .push(format!("policy put {i}: no request within 30 s"));
                break;
            }
            std::thread::yield_now();
        }
    }
    r.push(AGENT_PUT, &puts);
    for a in &agents {
        if let Some(rss) = rss_mib(&a.child.pid().to_string()) {
            r.notes
                .push(format!("agent {}: {rss:.0} MiB resident", a.node));
        }
    }
    Ok(())
}
