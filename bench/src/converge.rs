//! `converge`: policy convergence — the time from the etcd write of a policy to the first
//! packet the dataplane decides by it — at each `--endpoints` size, with iptables-restore and
//! nftables loading the equivalent state in the same run (issue 5, "Performance").
//!
//! One size, in order (everything carries the prefix `fcv-<pid>-<n>` and is removed on exit,
//! pass, failure or SIGINT):
//! 1. the topology of `forward` (node namespace, pods A and B, [`crate::topo`]); an etcd of our
//!    own unless `--etcd` ([`crate::etcd`]); `flagella-dataplane` on the two pod interfaces;
//! 2. the synthetic cluster ([`crate::synth`]) written to etcd (nodes and namespaces, then the
//!    endpoints, then the background policies and B's default deny), then `flagella-control`
//!    for this node is started and we wait until its status file shows the etcd revision and
//!    the dataplane has B's ingress enforced ("initial sync");
//! 3. the probes ([`crate::probe`]): A sends a new flow to B every `--probe-interval-us`; none
//!    may arrive (B is default-deny);
//! 4. each iteration: arm the receiver, `t0`, etcd put of an A -> B allow policy under a new
//!    name, `t_put` when etcd acknowledged; `t1` = first probe in B; latency = `t1 - t0`. A
//!    subscriber on the dataplane's control socket notes when the `policy.update` adding to
//!    B's ingress was published (`t_dp`). Then the policy is deleted and we wait until no
//!    probe arrived for `max(20 ms, 200 intervals)` (revocation = last probe - delete);
//! 5. the agent's own work for the same change, in process ([`agent_model`]: the agent's
//!    `ClusterState` fed the same keys; put + identity bookkeeping + commit, as `converge()`
//!    in control/src/agent.rs does), and the baselines in a scratch network namespace
//!    ([`baselines`]).
//!
//! The figures are CLOCK_MONOTONIC differences inside this process (the probe threads are
//! threads of it), so the resolution is the probe interval plus the veth transit.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, Ipv4Addr};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use control::sync::ClusterState;
use dataplane::tables::policy::{Action, Direction, PortRange, PROTO_ANY};
use dataplane::Identity;
use serde_json::{json, Value};

use crate::cli::ConvergeArgs;
use crate::etcd::{Etcd, EtcdServer};
use crate::forward::{is_root, ScratchDir};
use crate::probe::{now_ns, Probes};
use crate::synth::{self, Cluster, ClusterSpec, IngressRules, PeerRule, RealPod};
use crate::targets::default_dataplane;
use crate::targets::{pod_interfaces, start_dataplane, tail, ChildGuard, DataplaneLaunch};
use crate::topo::{ip_in, run, Namespaces, Topology, GATEWAY, POD_A_IP, POD_B_IP};
use crate::BenchError;

// ---- statistics ----------------------------------------------------------------------------

/// Nearest-rank percentile `p` (0..=100) of `sorted` (ascending); `None` when empty.
pub fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted.get(rank.clamp(1, sorted.len()) - 1).copied()
}

/// p50, p99 and max of a sample, in the sample's unit.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize)]
pub struct Summary {
    pub n: usize,
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
}

impl Summary {
    /// `None` for an empty sample; NaNs are ignored.
    pub fn of(values: &[f64]) -> Option<Summary> {
        let mut v: Vec<f64> = values.iter().copied().filter(|x| !x.is_nan()).collect();
        v.sort_by(f64::total_cmp);
        Some(Summary {
            n: v.len(),
            p50: percentile(&v, 50.0)?,
            p99: percentile(&v, 99.0)?,
            max: *v.last()?,
        })
    }
}

fn ms(ns: u64) -> f64 {
    ns as f64 / 1e6
}

// ---- results -------------------------------------------------------------------------------

/// One row of the table: a measured quantity at one size, in milliseconds.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Line {
    pub what: String,
    pub summary: Option<Summary>,
}

/// Everything measured at one size.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct SizeResult {
    pub endpoints: usize,
    pub local_endpoints: usize,
    pub label_sets: usize,
    pub remote_nodes: usize,
    pub background_policies: usize,
    pub iptables_rules: usize,
    pub probe_interval_us: f64,
    pub initial_sync_ms: f64,
    pub lines: Vec<Line>,
    pub notes: Vec<String>,
}

impl SizeResult {
    pub(crate) fn push(&mut self, what: impl Into<String>, values: &[f64]) {
        self.lines.push(Line {
            what: what.into(),
            summary: Summary::of(values),
        });
    }

    fn find(&self, prefix: &str) -> Option<Summary> {
        self.lines
            .iter()
            .find(|l| l.what.starts_with(prefix))
            .and_then(|l| l.summary)
    }
}

/// Row labels (the ratios look rows up by these prefixes).
pub const E2E: &str = "flagella: etcd put -> first packet in B";
/// n counts only the iterations in which a probe still arrived after the delete was sent.
pub const REVOKE: &str = "flagella: etcd delete -> last admitted probe";
pub const IPT_FULL: &str = "iptables-restore, full load";
pub const IPT_INCR: &str = "iptables-restore --noflush, one policy";
pub const NFT_FULL: &str = "nft -f, set of every endpoint";
pub const NFT_ADD: &str = "nft -f, add one element";

/// The target: p99 under 50 ms at 10k endpoints.
pub const TARGET_P99_MS: f64 = 50.0;

/// The table (Markdown or aligned text), then per-size notes, ratios and the verdict.
pub fn render(results: &[SizeResult], markdown: bool) -> String {
    let header = ["endpoints", "measured", "n", "p50 ms", "p99 ms", "max ms"];
    let mut rows: Vec<Vec<String>> = Vec::new();
    for r in results {
        for l in &r.lines {
            let mut cells = vec![r.endpoints.to_string(), l.what.clone()];
            match l.summary {
                Some(s) => cells.extend([
                    s.n.to_string(),
                    format!("{:.2}", s.p50),
                    format!("{:.2}", s.p99),
                    format!("{:.2}", s.max),
                ]),
                None => cells.extend(["0".into(), "-".into(), "-".into(), "-".into()]),
            }
            rows.push(cells);
        }
    }
    let mut out = table(&header, &rows, markdown);
    for r in results {
        out.push_str(&format!(
            "\n{} endpoints: {} on this node, {} identities (label sets), {} remote nodes, {} \
             background policies; {} iptables rules; probe interval {:.0} us (achieved); \
             initial sync {:.0} ms\n",
            r.endpoints,
            r.local_endpoints,
            r.label_sets,
            r.remote_nodes,
            r.background_policies,
            r.iptables_rules,
            r.probe_interval_us,
            r.initial_sync_ms
        ));
        if let Some(e) = r.find(E2E) {
            for (label, base) in [
                ("iptables-restore full load", r.find(IPT_FULL)),
                ("iptables-restore --noflush", r.find(IPT_INCR)),
                ("nft -f full set", r.find(NFT_FULL)),
                ("nft add element", r.find(NFT_ADD)),
            ] {
                if let Some(b) = base.filter(|_| e.p50 > 0.0 && e.p99 > 0.0) {
                    out.push_str(&format!(
                        "  {label} / flagella end to end: p50 {:.2}x, p99 {:.2}x\n",
                        b.p50 / e.p50,
                        b.p99 / e.p99
                    ));
                }
            }
            if r.endpoints >= 10_000 {
                let met = e.p99 < TARGET_P99_MS;
                out.push_str(&format!(
                    "  target p99 < {TARGET_P99_MS} ms at {} endpoints: {} (p99 {:.2} ms)\n",
                    r.endpoints,
                    if met { "met" } else { "NOT met" },
                    e.p99
                ));
            }
        }
        for n in &r.notes {
            out.push_str(&format!("  note: {n}\n"));
        }
    }
    out
}

fn table(header: &[&str], rows: &[Vec<String>], markdown: bool) -> String {
    let mut out = String::new();
    if markdown {
        out.push_str(&format!("| {} |\n", header.join(" | ")));
        out.push_str(&format!("|{}\n", "---|".repeat(header.len())));
        for r in rows {
            out.push_str(&format!("| {} |\n", r.join(" | ")));
        }
        return out;
    }
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.len());
        }
    }
    let line = |cells: Vec<&str>| {
        let parts: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        format!("{}\n", parts.join("  ").trim_end())
    };
    out.push_str(&line(header.to_vec()));
    for r in rows {
        out.push_str(&line(r.iter().map(String::as_str).collect()));
    }
    out
}

// ---- the agent's model, in process --------------------------------------------------------

/// The agent's `ClusterState` for this node fed `objects` in the agent's order, with cluster
/// identities numbered locally (as etcd would, from 256) and committed. `local_only` as the
/// agent sets it (maps for this node's pods only); false compiles every pod of the cluster.
pub fn agent_model(node: &str, objects: &[(String, String)], local_only: bool) -> ClusterState {
    let mut st = ClusterState::new(node);
    st.set_quiet(true);
    st.set_local_only(local_only);
    let listing: Vec<(String, Vec<u8>)> = objects
        .iter()
        .map(|(k, v)| (format!("{}{k}", crate::etcd::ROOT), v.clone().into_bytes()))
        .collect();
    st.put_all(&listing);
    let mut next = 256;
    converge_model(&mut st, &mut next);
    st
}

/// What the agent does after every watch batch (control/src/agent.rs `converge`), minus the
/// etcd round trips: identities for new label sets, the local label sets, commit.
fn converge_model(st: &mut ClusterState, next: &mut u32) -> usize {
    for (labels, _) in st.needed_identities() {
        st.set_identity(labels, *next);
        *next += 1;
    }
    let _ = st.local_label_sets();
    st.commit().len()
}

/// Milliseconds of the agent's own work for one policy put and its delete, `reps` times.
pub fn agent_policy_cost(
    st: &mut ClusterState,
    bench_ns: &str,
    reps: usize,
) -> (Vec<f64>, Vec<f64>) {
    let mut next = 1_000_000;
    let (mut put, mut del) = (Vec::new(), Vec::new());
    for i in 0..reps {
        let (k, v) = synth::allow_policy(bench_ns, &format!("model-{i}"));
        let key = format!("{}{k}", crate::etcd::ROOT);
        let t = Instant::now();
        let _ = st.put(&key, v.as_bytes());
        converge_model(st, &mut next);
        put.push(t.elapsed().as_secs_f64() * 1e3);
        let t = Instant::now();
        st.delete(&key);
        converge_model(st, &mut next);
        del.push(t.elapsed().as_secs_f64() * 1e3);
    }
    (put, del)
}

/// This node's compiled ingress maps with every peer identity expanded to its pods' IPv4
/// addresses: what an iptables CNI without ipsets writes (allow entries; the generated
/// policies have no deny rules).
pub fn ingress_rules(st: &ClusterState, node: &str) -> IngressRules {
    let mut members: HashMap<Identity, Vec<Ipv4Addr>> = HashMap::new();
    for (key, spec) in st.endpoints() {
        if let (Some(id), Some(ip)) = (st.engine().pod_identity(key), spec.ipv4) {
            members.entry(id).or_default().push(ip);
        }
    }
    let mut out = IngressRules::new();
    for (key, spec) in st.endpoints().iter().filter(|(_, s)| s.node == node) {
        let (Some(ep), Some(ip)) = (st.engine().endpoint(key), spec.ipv4) else {
            continue;
        };
        let dir = ep.direction(Direction::Ingress);
        if !dir.enforced {
            continue;
        }
        let mut rules = Vec::new();
        for (k, e) in dir.map.iter() {
            if e.action != Action::Allow {
                continue;
            }
            let proto = if k.proto == PROTO_ANY { 0 } else { k.proto };
            let ports = if k.ports == PortRange::ANY {
                (0, 0)
            } else {
                (k.ports.lo, k.ports.hi)
            };
            let peers: Vec<Ipv4Addr> = if k.identity == Identity::ANY {
                vec![Ipv4Addr::UNSPECIFIED]
            } else {
                members.get(&k.identity).cloned().unwrap_or_default()
            };
            rules.extend(
                peers
                    .into_iter()
                    .map(|peer| PeerRule { peer, proto, ports }),
            );
        }
        rules.sort();
        out.insert(ip, rules);
    }
    out
}

// ---- baselines -----------------------------------------------------------------------------

/// Runs `f` on a thread that entered network namespace `ns` (children it spawns are born
/// there, without `ip netns exec`).
fn in_netns<T: Send>(
    ns: &str,
    f: impl FnOnce() -> Result<T, BenchError> + Send,
) -> Result<T, BenchError> {
    std::thread::scope(|s| {
        s.spawn(|| {
            crate::probe::enter_netns(ns)?;
            f()
        })
        .join()
        .unwrap_or_else(|_| Err(BenchError::Failed(format!("a thread in {ns} panicked"))))
    })
}

/// Milliseconds from spawning `program args` with `input` on stdin to its successful exit.
fn timed(program: &str, args: &[&str], input: &str) -> Result<f64, BenchError> {
    let t = Instant::now();
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            BenchError::io(
                format!("running {program} (apt-get install -y iptables nftables)"),
                e,
            )
        })?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(input.as_bytes())
            .map_err(|e| BenchError::io(format!("writing to {program}"), e))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| BenchError::io(format!("waiting for {program}"), e))?;
    let elapsed = t.elapsed().as_secs_f64() * 1e3;
    if !out.status.success() {
        return Err(BenchError::Command {
            command: format!("{program} {}", args.join(" ")),
            detail: tail(String::from_utf8_lossy(&out.stderr).trim(), 5),
        });
    }
    Ok(elapsed)
}

/// The netfilter baselines in a scratch namespace `ns` (created and deleted here): full
/// iptables-restore of `rules` and `--noflush` of the rules the A -> B policy adds (one
/// ACCEPT at the head of B's chain), `reps` times each; nft: a set of `addrs`, then adding
/// one element.
pub fn baselines(
    ns: &str,
    rules: &IngressRules,
    addrs: &[Ipv4Addr],
    reps: usize,
    result: &mut SizeResult,
) -> Result<(), BenchError> {
    let mut namespaces = Namespaces::default();
    namespaces.add(ns)?;
    let full = synth::iptables_full(rules);
    let b_index = rules.keys().position(|ip| *ip == POD_B_IP).unwrap_or(0);
    let allow_a = [PeerRule {
        peer: POD_A_IP,
        proto: 0,
        ports: (0, 0),
    }];
    let incr = synth::iptables_increment(b_index, &allow_a);
    let table = "fcv";
    let mut nft_text = format!("table ip {table} {{}}\ndelete table ip {table}\n");
    nft_text.push_str(&synth::nft_full(table, addrs));
    let (ipt_full, ipt_incr, nft_full, nft_add) = in_netns(ns, || {
        let (mut a, mut b, mut c, mut d) = (vec![], vec![], vec![], vec![]);
        for _ in 0..reps {
            a.push(timed("iptables-restore", &[], &full)?);
        }
        for _ in 0..reps {
            b.push(timed("iptables-restore", &["--noflush"], &incr)?);
        }
        for _ in 0..reps {
            c.push(timed("nft", &["-f", "-"], &nft_text)?);
        }
        for i in 0..reps {
            let extra = Ipv4Addr::new(10, 250, (i / 256) as u8, (i % 256) as u8);
            d.push(timed(
                "nft",
                &["-f", "-"],
                &synth::nft_add_element(table, extra),
            )?);
        }
        Ok((a, b, c, d))
    })?;
    result.iptables_rules = synth::rule_count(rules);
    result.push(
        format!("{IPT_FULL} ({} rules)", synth::rule_count(rules)),
        &ipt_full,
    );
    result.push(format!("{IPT_INCR} (1 rule)"), &ipt_incr);
    result.push(format!("{NFT_FULL} ({} elements)", addrs.len()), &nft_full);
    result.push(NFT_ADD, &nft_add);
    Ok(())
}

/// Where and when: UTC time, load average, CPUs, and the versions of the tools measured.
pub fn machine_notes() -> String {
    use crate::machine::first_line;
    format!(
        "{}; {}; {}; {}",
        crate::machine::describe(),
        first_line("iptables", &["-V"]),
        first_line("nft", &["-v"]),
        first_line("etcd", &["--version"]),
    )
}

// ---- the dataplane's change stream --------------------------------------------------------

/// When B's ingress last gained (`allow_ns`) or lost (`revoke_ns`) entries, seen on the
/// dataplane's `subscribe` stream.
#[derive(Debug, Default)]
struct DataplaneEvents {
    allow_ns: AtomicU64,
    revoke_ns: AtomicU64,
}

struct Subscriber {
    events: Arc<DataplaneEvents>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Subscriber {
    fn start(socket: &Path, endpoint: u64) -> Result<Subscriber, BenchError> {
        let stream = UnixStream::connect(socket)
            .map_err(|e| BenchError::io(format!("connecting to {}", socket.display()), e))?;
        stream
            .set_read_timeout(Some(Duration::from_millis(100)))
            .map_err(|e| BenchError::io("socket timeout", e))?;
        (&stream)
            .write_all(b"{\"op\":\"subscribe\"}\n")
            .map_err(|e| BenchError::io("subscribing to the dataplane", e))?;
        let events = Arc::new(DataplaneEvents::default());
        let stop = Arc::new(AtomicBool::new(false));
        let (ev, st) = (events.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut reader = BufReader::new(stream);
            let mut line = String::new();
            while !st.load(Ordering::Relaxed) {
                match reader.read_line(&mut line) {
                    Ok(0) => break,
                    Ok(_) if line.ends_with('\n') => {
                        let t = now_ns();
                        note_event(&line, endpoint, t, &ev);
                        line.clear();
                    }
                    // A timeout keeps what was read so far in `line`.
                    _ => {}
                }
            }
        });
        Ok(Subscriber {
            events,
            stop,
            thread: Some(thread),
        })
    }
}

fn note_event(line: &str, endpoint: u64, t: u64, ev: &DataplaneEvents) {
    let Ok(v) = serde_json::from_str::<Value>(line) else {
        return;
    };
    if v["op"] != "policy.update" || v["endpoint"] != endpoint || v["direction"] != "ingress" {
        return;
    }
    let nonempty = |k: &str| v[k].as_array().is_some_and(|a| !a.is_empty());
    if nonempty("add") {
        ev.allow_ns.store(t, Ordering::SeqCst);
    }
    if nonempty("delete") {
        ev.revoke_ns.store(t, Ordering::SeqCst);
    }
}

// ---- one size ------------------------------------------------------------------------------

fn to_usize(v: u64) -> usize {
    usize::try_from(v).unwrap_or(usize::MAX)
}

/// One request to the dataplane's control socket.
fn dp_call(socket: &Path, request: &Value) -> Result<Value, BenchError> {
    let stream = UnixStream::connect(socket)
        .map_err(|e| BenchError::io(format!("connecting to {}", socket.display()), e))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| BenchError::io("socket timeout", e))?;
    let mut line = request.to_string();
    line.push('\n');
    (&stream)
        .write_all(line.as_bytes())
        .map_err(|e| BenchError::io("writing to the dataplane", e))?;
    let mut reply = String::new();
    BufReader::new(&stream)
        .read_line(&mut reply)
        .map_err(|e| BenchError::io("reading the dataplane", e))?;
    serde_json::from_str(&reply)
        .map_err(|e| BenchError::Failed(format!("dataplane reply `{reply}`: {e}")))
}

/// The default flagella-control: next to this binary.
pub fn default_control() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join("flagella-control")))
        .unwrap_or_else(|| PathBuf::from("flagella-control"))
}

fn check_binary(path: &Path, build: &str) -> Result<(), BenchError> {
    if path.exists() {
        return Ok(());
    }
    Err(BenchError::Unavailable(format!(
        "{} not found: build it with `{build}` or pass its path",
        path.display()
    )))
}

/// Runs every size; failures of one size are reported in its notes and the next size runs.
pub fn converge(args: &ConvergeArgs) -> Result<Vec<SizeResult>, BenchError> {
    if !is_root() {
        return Err(BenchError::NotRoot { what: "converge" });
    }
    let dataplane = args.dataplane.clone().unwrap_or_else(default_dataplane);
    let control = args.control.clone().unwrap_or_else(default_control);
    check_binary(
        &dataplane,
        "cargo build --release -p dataplane --features afxdp --bin flagella-dataplane",
    )?;
    check_binary(
        &control,
        "cargo build --release -p control --bin flagella-control",
    )?;
    if args.etcd.is_none() {
        run("sh", &["-c", "command -v etcd"]).map_err(|_| {
            BenchError::Unavailable(
                "etcd is not installed: apt-get install -y etcd-server (or pass --etcd URL)".into(),
            )
        })?;
    }
    if !args.skip_baselines {
        for tool in ["iptables-restore", "nft"] {
            run("sh", &["-c", &format!("command -v {tool}")]).map_err(|_| {
                BenchError::Unavailable(format!(
                    "`{tool}` is missing: scripts/install-deps.sh iptables nftables (or pass \
                     --skip-baselines)"
                ))
            })?;
        }
    }
    let mut results = Vec::new();
    for (i, &n) in args.endpoints.iter().enumerate() {
        eprintln!("== {n} endpoints");
        let mut r = SizeResult {
            endpoints: n,
            ..SizeResult::default()
        };
        match one_size(args, n, i, &dataplane, &control, &mut r) {
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
    args: &ConvergeArgs,
    n: usize,
    index: usize,
    dataplane: &Path,
    control: &Path,
    r: &mut SizeResult,
) -> Result<(), BenchError> {
    let pid = std::process::id();
    let prefix = format!("fcv-{pid}-{index}");
    let short = format!("fcv{pid}r{index}");
    let dir = std::env::temp_dir().join(&prefix);
    std::fs::create_dir_all(&dir).map_err(|e| BenchError::io(dir.display().to_string(), e))?;
    let _scratch = ScratchDir(dir.clone());

    // Topology and the cluster.
    let topo = Topology::build(&prefix, &short)?;
    let real = |pod: &crate::topo::Pod| RealPod {
        ifindex: u32::try_from(pod.host_ifindex).unwrap_or(0),
        mac: pod.mac.clone(),
        interface: pod.host_if.clone(),
    };
    let mut spec = ClusterSpec::new(&prefix, n);
    spec.nodes = to_usize(args.nodes);
    spec.policies = to_usize(args.policies);
    let cluster = Cluster::generate(&spec, &real(&topo.a), &real(&topo.b))
        .map_err(|e| BenchError::Failed(format!("--endpoints: {e}")))?;
    r.local_endpoints = cluster.local_pods();
    r.label_sets = cluster.label_sets();
    r.remote_nodes = cluster.node_names.len();
    r.background_policies = cluster.policies.len().saturating_sub(1);
    let mut objects = cluster.base_objects();
    objects.extend(cluster.endpoint_objects());
    objects.extend(cluster.policies.iter().cloned());

    // etcd, the dataplane, the agent (dropped in reverse: agent, dataplane, etcd).
    let server = match &args.etcd {
        Some(_) => None,
        None => Some(EtcdServer::start(&prefix, &dir)?),
    };
    let urls: Vec<String> = match (&args.etcd, &server) {
        (Some(u), _) => u.split(',').map(str::to_string).collect(),
        (None, Some(s)) => vec![s.url.clone()],
        (None, None) => Vec::new(),
    };
    let mut etcd = Etcd::connect(&urls)?;
    if etcd.count_root()? != 0 {
        return Err(BenchError::Failed(format!(
            "etcd at {} already has keys under {}: give converge an empty etcd (or none: it \
             starts its own)",
            urls.join(","),
            crate::etcd::ROOT
        )));
    }
    let ctx = SizeContext {
        args,
        topo: &topo,
        cluster: &cluster,
        objects: &objects,
        etcd_urls: urls.join(","),
        dir: &dir,
        dataplane,
        control,
    };
    let result = with_etcd(&ctx, &mut etcd, r);
    if args.etcd.is_some() {
        if let Err(e) = etcd.delete_written() {
            eprintln!("WARNING: could not delete this run's keys from etcd: {e}");
        }
    }
    drop(etcd);
    drop(server);
    drop(topo);
    result
}

/// What one size runs with.
struct SizeContext<'a> {
    args: &'a ConvergeArgs,
    topo: &'a Topology,
    cluster: &'a Cluster,
    objects: &'a [(String, String)],
    etcd_urls: String,
    dir: &'a Path,
    dataplane: &'a Path,
    control: &'a Path,
}

fn with_etcd(ctx: &SizeContext, etcd: &mut Etcd, r: &mut SizeResult) -> Result<(), BenchError> {
    let SizeContext {
        args,
        topo,
        cluster,
        objects,
        dir,
        dataplane,
        control,
        ..
    } = *ctx;
    let launch = DataplaneLaunch {
        binary: dataplane.to_path_buf(),
        core: args.worker_core,
        nice: 0,
        idle_sleep_us: 0,
        masquerade_ports: None,
        extra_args: Vec::new(),
    };
    let (_dp, socket) = start_dataplane(&topo.node, &pod_interfaces(topo), &launch, dir)?;
    let t = Instant::now();
    etcd.put_many(objects)?;
    eprintln!(
        "   wrote {} keys to etcd in {:.1} s",
        objects.len(),
        t.elapsed().as_secs_f64()
    );
    let revision = etcd.revision()?;
    let status_file = dir.join("control-status.json");
    let log = dir.join("control.log");
    let logf =
        std::fs::File::create(&log).map_err(|e| BenchError::io(log.display().to_string(), e))?;
    let started = Instant::now();
    let mut agent = ChildGuard::spawn(
        "flagella-control",
        Command::new(control)
            .arg("--etcd")
            .arg(&ctx.etcd_urls)
            .args(["--node", &topo.prefix])
            .arg("--dataplane-socket")
            .arg(&socket)
            .arg("--status-file")
            .arg(&status_file)
            // Not measured here, and the default port may be another agent's on this host.
            .args(["--metrics-address", "off"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(logf),
    )?;
    let b_id = wait_initial_sync(&mut agent, &log, &status_file, &socket, revision)?;
    r.initial_sync_ms = started.elapsed().as_secs_f64() * 1e3;
    eprintln!("   agent converged in {:.0} ms", r.initial_sync_ms);
    point_pods_at_router(topo, &socket)?;

    let sub = Subscriber::start(&socket, b_id)?;
    let interval = Duration::from_micros(args.probe_interval_us);
    let probes = Probes::start(&topo.a.ns, &topo.b.ns, POD_A_IP, POD_B_IP, interval)?;
    crate::signals::sleep(Duration::from_millis(500))?;
    if probes.arrivals.count.load(Ordering::SeqCst) != 0 {
        return Err(BenchError::Failed(
            "probes reach pod B before any allow policy: B's default deny is not enforced \
             (see the dataplane's `dump policy`)"
                .into(),
        ));
    }
    if probes.sent.count.load(Ordering::SeqCst) == 0 {
        return Err(BenchError::Failed(
            "the probe sender in pod A sends nothing".into(),
        ));
    }
    let quiet_ns = (200 * u64::try_from(interval.as_nanos()).unwrap_or(100_000)).max(20_000_000);
    let (mut e2e, mut put_ack, mut dp_pub, mut revoke) = (vec![], vec![], vec![], vec![]);
    let mut ack_to_dp = Vec::new();
    let mut timeouts = 0;
    for i in 0..to_usize(args.iterations) {
        crate::signals::sleep(Duration::ZERO)?;
        let (key, value) = synth::allow_policy(&cluster.bench_ns, &format!("allow-{i}"));
        probes.arm();
        let t0 = now_ns();
        etcd.put(&key, &value)?;
        let t_put = now_ns();
        let deadline = Instant::now() + Duration::from_secs(10);
        let first = loop {
            if let Some(f) = probes.first() {
                break Some(f);
            }
            if Instant::now() > deadline {
                break None;
            }
            if crate::signals::stopping() {
                return Err(BenchError::Interrupted);
            }
            std::thread::sleep(Duration::from_micros(200));
        };
        match first {
            Some((t1, _seq)) => {
                e2e.push(ms(t1.saturating_sub(t0)));
                put_ack.push(ms(t_put - t0));
                // The subscriber's thread may read the event a little after the probe came.
                let wait = Instant::now() + Duration::from_millis(200);
                let mut t_dp = sub.events.allow_ns.load(Ordering::SeqCst);
                while t_dp < t0 && Instant::now() < wait {
                    std::thread::sleep(Duration::from_micros(200));
                    t_dp = sub.events.allow_ns.load(Ordering::SeqCst);
                }
                if t_dp >= t0 {
                    dp_pub.push(ms(t_dp - t0));
                    // Signed: etcd may notify the watch before the put's reply arrives here.
                    ack_to_dp.push((t_dp as f64 - t_put as f64) / 1e6);
                }
            }
            None => timeouts += 1,
        }
        let t_del = now_ns();
        etcd.delete(&key)?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let now = now_ns();
            let last = probes.last_arrival_ns();
            if now.saturating_sub(last.max(t_del)) >= quiet_ns {
                if last > t_del {
                    revoke.push(ms(last - t_del));
                }
                break;
            }
            if Instant::now() > deadline {
                return Err(BenchError::Failed(
                    "probes still arrive 10 s after the allow policy was deleted: the \
                     deletion did not converge (see the agent's log)"
                        .into(),
                ));
            }
            if crate::signals::stopping() {
                return Err(BenchError::Interrupted);
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    r.probe_interval_us = probes.achieved_interval_ns().unwrap_or(f64::NAN) / 1e3;
    drop(probes);
    drop(sub);
    if timeouts > 0 {
        r.notes.push(format!(
            "{timeouts} of {} iterations saw no probe within 10 s",
            args.iterations
        ));
    }
    r.push(E2E, &e2e);
    r.push("  of which: etcd put acknowledged", &put_ack);
    r.push("  of which: dataplane published B's new ingress", &dp_pub);
    r.push(
        "  put acknowledged -> dataplane published (watch, agent, socket)",
        &ack_to_dp,
    );
    r.push(REVOKE, &revoke);
    agent.check_alive(&log)?;
    drop(agent);

    // The agent's own work, in process, on the same objects.
    let mut model = agent_model(&topo.prefix, objects, true);
    let (put, del) = agent_policy_cost(&mut model, &cluster.bench_ns, 20);
    r.push("agent model in process: policy put + commit", &put);
    r.push("agent model in process: policy delete + commit", &del);
    if !args.skip_baselines {
        let rules = ingress_rules(&model, &topo.prefix);
        let addrs: Vec<Ipv4Addr> = cluster.pods.iter().map(|p| p.ip).collect();
        baselines(
            &format!("{}-nf", topo.prefix),
            &rules,
            &addrs,
            to_usize(args.baseline_reps),
            r,
        )?;
    }
    Ok(())
}

/// Waits until the agent's status shows `revision`, its dataplane connected, and the dataplane
/// has pod B's ingress enforced; returns B's dataplane endpoint id.
fn wait_initial_sync(
    agent: &mut ChildGuard,
    log: &Path,
    status_file: &Path,
    socket: &Path,
    revision: i64,
) -> Result<u64, BenchError> {
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        agent.check_alive(log)?;
        let status: Value = std::fs::read(status_file)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_else(|| json!({}));
        let synced = status["revision"].as_i64().is_some_and(|r| r >= revision)
            && status["dataplane_connected"] == true;
        if synced {
            if let Some(id) = b_enforced(socket)? {
                return Ok(id);
            }
        }
        if Instant::now() > deadline {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            return Err(BenchError::Failed(format!(
                "flagella-control did not converge within 600 s (status {status}); its log:\n{}",
                tail(&text, 15)
            )));
        }
        crate::signals::sleep(Duration::from_millis(20))?;
    }
}

/// B's endpoint id once its ingress is enforced.
fn b_enforced(socket: &Path) -> Result<Option<u64>, BenchError> {
    let eps = dp_call(socket, &json!({"op": "dump", "table": "endpoints"}))?;
    let b = POD_B_IP.to_string();
    let Some(id) = eps["entries"]
        .as_array()
        .and_then(|a| a.iter().find(|e| e["ipv4"] == b.as_str()))
        .and_then(|e| e["id"].as_u64())
    else {
        return Ok(None);
    };
    let pol = dp_call(
        socket,
        &json!({"op": "dump", "table": "policy", "endpoint": id}),
    )?;
    Ok((pol["ingress"]["enforced"] == true).then_some(id))
}

/// topo.rs gives the pods a static gateway neighbour for the other targets' router MAC; here
/// the gateway is the dataplane's router MAC (as the agent left it in `local_node`).
fn point_pods_at_router(topo: &Topology, socket: &Path) -> Result<(), BenchError> {
    let ln = dp_call(socket, &json!({"op": "dump", "table": "local_node"}))?;
    let mac = ln["local_node"]["router_mac"]
        .as_str()
        .ok_or_else(|| {
            BenchError::Failed(format!(
                "the dataplane's local_node has no router_mac: {ln}"
            ))
        })?
        .to_string();
    let gw = IpAddr::V4(GATEWAY).to_string();
    for pod in [&topo.a, &topo.b] {
        ip_in(
            &pod.ns,
            &[
                "neigh",
                "replace",
                &gw,
                "lladdr",
                &mac,
                "dev",
                "eth0",
                "nud",
                "permanent",
            ],
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), Some(50.0));
        assert_eq!(percentile(&v, 99.0), Some(99.0));
        assert_eq!(percentile(&v, 100.0), Some(100.0));
        assert_eq!(percentile(&v, 0.0), Some(1.0));
        assert_eq!(percentile(&[7.0], 99.0), Some(7.0));
        assert_eq!(percentile(&[], 50.0), None);
        // 150 samples: p99 is the 149th (ceil(148.5)).
        let v: Vec<f64> = (1..=150).map(f64::from).collect();
        assert_eq!(percentile(&v, 99.0), Some(149.0));
        let s = Summary::of(&[3.0, 1.0, f64::NAN, 2.0]).unwrap();
        assert_eq!(
            s,
            Summary {
                n: 3,
                p50: 2.0,
                p99: 3.0,
                max: 3.0
            }
        );
        assert_eq!(Summary::of(&[]), None);
    }

    fn small_cluster() -> (Cluster, Vec<(String, String)>) {
        let real = |i: u32| RealPod {
            ifindex: i,
            mac: format!("02:00:00:00:00:0{i}"),
            interface: format!("v{i}"),
        };
        let mut spec = ClusterSpec::new("t", 2_000);
        spec.nodes = 10;
        let c = Cluster::generate(&spec, &real(1), &real(2)).unwrap();
        let mut objects = c.base_objects();
        objects.extend(c.endpoint_objects());
        objects.extend(c.policies.iter().cloned());
        (c, objects)
    }

    #[test]
    fn model_and_iptables_equivalent() {
        let (c, objects) = small_cluster();
        let mut st = agent_model("t", &objects, true);
        assert_eq!(st.malformed_total(), 0, "{:?}", st.rejected());
        let rules = ingress_rules(&st, "t");
        // Every local endpoint is selected (the namespace-wide policies, B's deny); A is not.
        assert_eq!(rules.len(), c.local_pods() - 1);
        assert!(rules[&POD_B_IP].is_empty(), "B is default deny");
        assert!(!rules.contains_key(&POD_A_IP));
        // A local synthetic pod admits at least every pod of its namespace.
        let (ip, list) = rules.iter().find(|(ip, _)| **ip != POD_B_IP).unwrap();
        let pod = c.pods.iter().find(|p| p.ip == *ip).unwrap();
        let same_ns = c
            .pods
            .iter()
            .filter(|p| p.namespace == pod.namespace)
            .count();
        assert!(list.len() >= same_ns, "{} < {same_ns}", list.len());
        // The allow policy opens B to A, and its deletion closes it again.
        let (put, del) = agent_policy_cost(&mut st, &c.bench_ns, 2);
        assert_eq!((put.len(), del.len()), (2, 2));
        let (k, v) = synth::allow_policy(&c.bench_ns, "x");
        st.put(&format!("{}{k}", crate::etcd::ROOT), v.as_bytes())
            .unwrap();
        let mut next = 5_000_000;
        converge_model(&mut st, &mut next);
        let rules = ingress_rules(&st, "t");
        assert_eq!(
            rules[&POD_B_IP],
            vec![PeerRule {
                peer: POD_A_IP,
                proto: 0,
                ports: (0, 0)
            }]
        );
    }

    #[test]
    fn render_has_rows_ratios_and_verdict() {
        let mut r = SizeResult {
            endpoints: 10_000,
            ..SizeResult::default()
        };
        r.push(E2E, &[10.0, 20.0, 60.0]);
        r.push(format!("{IPT_FULL} (5 rules)"), &[100.0]);
        r.push(NFT_ADD, &[]);
        let text = render(&[r], true);
        assert!(text.starts_with("| endpoints | measured |"), "{text}");
        assert!(text.contains(&format!("| 10000 | {E2E} | 3 | 20.00 | 60.00 | 60.00 |")));
        assert!(text.contains(&format!("| 10000 | {NFT_ADD} | 0 | - | - | - |")));
        assert!(
            text.contains("iptables-restore full load / flagella end to end: p50 5.00x, p99 1.67x"),
            "{text}"
        );
        assert!(text.contains("NOT met (p99 60.00 ms)"), "{text}");
    }
}
