//! `flagella-bench policy`: what the size of the destination's policy costs on the data path,
//! flagella-dataplane against kernel forwarding filtered by iptables (nft and legacy backends)
//! and by one nftables rule over a set, with the same topology, generator and sink.
//!
//! Per run: the generator's ceiling (flat out into an XDP_DROP on its own first hop), then per
//! entry count and target a fresh topology ([`crate::topo::Topology`], prefix `fbp-<pid>-<n>`)
//! with the target loaded with N entries besides the one that admits the traffic:
//! - flagella: N more allow entries (other identities, udp/9000) in pod B's ingress policy map;
//! - iptables-*: FORWARD policy DROP, N ACCEPT rules for other sources, then pod A's rule;
//! - nft-set: one rule `ip saddr @allowed udp dport 9000 accept` over N + 1 addresses.
//!
//! Then `--trials` rate searches ([`crate::ratesearch`]) counting at the chosen sink, and one
//! latency trial per fraction with the UDP sink and stamped frames ([`crate::trial`]).
//! Everything is torn down by its guard before the next point, pass or fail; a point that
//! fails is reported with its error and the run goes on.

use std::net::Ipv4Addr;
use std::path::Path;
use std::time::Instant;

use serde_json::{json, Value};

use crate::cli::{PolicyArgs, PolicyTarget, SinkKind};
use crate::forward::{is_root, ScratchDir};
use crate::point_cost;
use crate::policy_report::{LatencyPoint, Point, PolicyReport};
use crate::ratesearch::{search, SearchConfig};
use crate::stats::Spread;
use crate::targets::{DataplaneLaunch, Flagella};
use crate::topo::{exec_in, run, Topology, SINK_PORT};
use crate::trial::{Counter, Path as TrialPath, XdpSink};
use crate::BenchError;

/// The first identity of flagella's filler entries (far from the benchmark's 1001/1002).
const FILLER_IDENTITY: u32 = 200_000;
/// Filler entries per `policy.update` request (well under the control socket's line limit).
const ENTRIES_PER_REQUEST: usize = 5000;

/// The `i`-th address that is not pod A: the filler rules' sources (100.64.0.0/10, shared
/// address space, 4M addresses; never on this machine's links).
pub fn filler_address(i: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(100, 64, 0, 0)) + i)
}

/// iptables-restore input: FORWARD drops by default, `n` filler ACCEPT rules, then `a -> b`.
pub fn iptables_rules(a: Ipv4Addr, b: Ipv4Addr, n: u32) -> String {
    let mut s = String::with_capacity(80 * (n as usize + 8));
    s.push_str("*filter\n:INPUT ACCEPT [0:0]\n:FORWARD DROP [0:0]\n:OUTPUT ACCEPT [0:0]\n");
    let rule = |s: &mut String, src: Ipv4Addr| {
        s.push_str(&format!(
            "-A FORWARD -s {src}/32 -d {b}/32 -p udp -m udp --dport {SINK_PORT} -j ACCEPT\n"
        ));
    };
    for i in 0..n {
        rule(&mut s, filler_address(i));
    }
    rule(&mut s, a);
    s.push_str("COMMIT\n");
    s
}

/// `nft -f` input: one forward rule over a set of `n` filler addresses and `a`.
pub fn nft_set_rules(a: Ipv4Addr, b: Ipv4Addr, n: u32) -> String {
    let mut elements: Vec<String> = (0..n).map(|i| filler_address(i).to_string()).collect();
    elements.push(a.to_string());
    format!(
        "table ip fbp {{\n  set allowed {{\n    type ipv4_addr\n    elements = {{ {} }}\n  }}\n  \
         chain forward {{\n    type filter hook forward priority 0; policy drop;\n    \
         ip daddr {b} udp dport {SINK_PORT} ip saddr @allowed accept\n  }}\n}}\n",
        elements.join(", ")
    )
}

/// The program a target loads its rules with, and how to get it.
fn loader(target: PolicyTarget) -> Option<(&'static str, &'static str)> {
    match target {
        PolicyTarget::Flagella => None,
        PolicyTarget::IptablesNft => Some(("iptables-nft-restore", "iptables")),
        PolicyTarget::IptablesLegacy => Some(("iptables-legacy-restore", "iptables")),
        PolicyTarget::NftSet => Some(("nft", "nftables")),
    }
}

/// `Err` with what to install when `target` cannot run here.
fn available(target: PolicyTarget, args: &PolicyArgs) -> Result<(), BenchError> {
    if let Some((program, package)) = loader(target) {
        if run("sh", &["-c", &format!("command -v {program}")]).is_err() {
            return Err(BenchError::Unavailable(format!(
                "{program} is missing: apt-get install -y {package}"
            )));
        }
    }
    if target == PolicyTarget::Flagella {
        launch(args)?;
    }
    Ok(())
}

fn launch(args: &PolicyArgs) -> Result<DataplaneLaunch, BenchError> {
    DataplaneLaunch::new(
        args.dataplane.clone(),
        args.worker_core,
        args.nice,
        args.idle_sleep_us,
    )
}

/// What forwards during a point (kept alive until the point ends; dropping it stops it).
enum Forwarder {
    Flagella { daemon: Box<Flagella> },
    Kernel,
}

impl Forwarder {
    /// The dataplane, for its counters and threads (none for kernel forwarding).
    fn flagella(&mut self) -> Option<&mut Flagella> {
        match self {
            Forwarder::Flagella { daemon } => Some(daemon),
            Forwarder::Kernel => None,
        }
    }
}

/// Starts `target` on `topo` with `n` filler entries.
fn start(
    target: PolicyTarget,
    topo: &Topology,
    n: u32,
    args: &PolicyArgs,
    dir: &Path,
) -> Result<Forwarder, BenchError> {
    if target == PolicyTarget::Flagella {
        let mut f = Flagella::start(topo, &launch(args)?, dir)?;
        add_filler_entries(&mut f, n)?;
        return Ok(Forwarder::Flagella {
            daemon: Box::new(f),
        });
    }
    topo.enable_kernel_forwarding()?;
    let (text, file) = if target == PolicyTarget::NftSet {
        (
            nft_set_rules(topo.a.ip, topo.b.ip, n),
            dir.join("rules.nft"),
        )
    } else {
        (
            iptables_rules(topo.a.ip, topo.b.ip, n),
            dir.join("rules.iptables"),
        )
    };
    std::fs::write(&file, text).map_err(|e| BenchError::io(file.display().to_string(), e))?;
    let file = file.display().to_string();
    match loader(target) {
        Some(("nft", _)) => exec_in(&topo.node, "nft", &["-f", &file])?,
        Some((restore, _)) => exec_in(&topo.node, restore, &[&file])?,
        None => String::new(),
    };
    Ok(Forwarder::Kernel)
}

/// `n` allow entries for identities nobody has, in pod B's (endpoint 2's) ingress map.
fn add_filler_entries(f: &mut Flagella, n: u32) -> Result<(), BenchError> {
    let ids: Vec<u32> = (0..n).map(|i| FILLER_IDENTITY + i).collect();
    for chunk in ids.chunks(ENTRIES_PER_REQUEST) {
        let add: Vec<Value> = chunk
            .iter()
            .map(|id| json!({"identity": id, "proto": "udp", "port": SINK_PORT, "action": "allow"}))
            .collect();
        f.call(
            json!({"op": "policy.update", "endpoint": 2, "direction": "ingress",
            "enforced": true, "add": add}),
        )?;
    }
    Ok(())
}

/// Names and scratch directory of point `index`: namespaces `fbp-<pid>-<index>...`.
fn names(index: u32) -> Result<(String, String, ScratchDir), BenchError> {
    let pid = std::process::id();
    let prefix = format!("fbp-{pid}-{index}");
    let dir = std::env::temp_dir().join(&prefix);
    std::fs::create_dir_all(&dir).map_err(|e| BenchError::io(dir.display().to_string(), e))?;
    Ok((prefix, format!("fbp{pid}r{index}"), ScratchDir(dir)))
}

fn trial_path(topo: &Topology, args: &PolicyArgs, counter: Counter) -> TrialPath {
    TrialPath {
        src_ns: topo.a.ns.clone(),
        src_ip: topo.a.ip,
        dst_ip: topo.b.ip,
        size: args.size,
        flows: args.flows,
        gen_core: args.gen_core,
        nice: args.nice,
        counter,
    }
}

fn search_config(args: &PolicyArgs) -> SearchConfig {
    SearchConfig {
        loss_threshold: args.loss,
        resolution: args.resolution,
        max_steps: args.max_steps,
    }
}

/// The generator flat out into an XDP_DROP on pod A's host veth: offered pps per trial.
fn ceiling(args: &PolicyArgs) -> Result<Spread, BenchError> {
    let (prefix, short, _dir) = names(0)?;
    let topo = Topology::build(&prefix, &short)?;
    let _sink = XdpSink::start(&topo.node, &topo.a.host_if)?;
    let counter = Counter::XdpDrops {
        ns: topo.node.clone(),
        dev: topo.a.host_if.clone(),
    };
    let path = trial_path(&topo, args, counter);
    let mut rates = Vec::new();
    for _ in 0..args.trials {
        let (t, _) = crate::trial::run(&path, None, args.trial_secs, false)?;
        rates.push(t.offered_pps());
    }
    Spread::of(&rates).ok_or_else(|| BenchError::Failed("the ceiling ran no trial".into()))
}

/// One point: the target with `n` entries, its searches and latency trials.
fn point(
    target: PolicyTarget,
    n: u32,
    index: u32,
    args: &PolicyArgs,
    ceiling: Option<&Spread>,
) -> Result<Point, BenchError> {
    let mut p = Point {
        target: target.name().into(),
        entries: n,
        ..Point::default()
    };
    let (prefix, short, dir) = names(index)?;
    let topo = Topology::build(&prefix, &short)?;
    let mut forwarder = start(target, &topo, n, args, &dir.0)?;
    let cfg = search_config(args);
    let cpus = [args.gen_core, args.worker_core];
    let before = point_cost::snapshot(forwarder.flagella(), &cpus)?;
    {
        let (_xdp, counter) = match args.sink {
            SinkKind::Xdp => (
                Some(XdpSink::start(&topo.b.ns, "eth0")?),
                Counter::XdpDrops {
                    ns: topo.b.ns.clone(),
                    dev: "eth0".into(),
                },
            ),
            SinkKind::Udp => (
                None,
                Counter::UdpDelivered {
                    ns: topo.b.ns.clone(),
                },
            ),
        };
        let path = trial_path(&topo, args, counter);
        for _ in 0..args.trials {
            let s = search(&cfg, |rate| {
                crate::trial::run(&path, rate, args.trial_secs, false).map(|(t, _)| t)
            })?;
            p.searches.push(s);
        }
    }
    let after = point_cost::snapshot(forwarder.flagella(), &cpus)?;
    p.cost = Some(point_cost::cost_between(&before, &after, &p.searches));
    p.summarise(ceiling);
    let udp = trial_path(
        &topo,
        args,
        Counter::UdpDelivered {
            ns: topo.b.ns.clone(),
        },
    );
    let median = p.rate.map_or(0.0, |r| r.median);
    for &fraction in &args.latency_fractions {
        let rate = fraction * median;
        if rate < 1.0 {
            continue;
        }
        let (trial, latency) = crate::trial::run(&udp, Some(rate), args.latency_secs, true)?;
        p.latency.push(LatencyPoint {
            fraction,
            trial,
            latency,
        });
    }
    Ok(p)
}

/// Seconds the run takes at most (every search using all its steps), for the plan line.
pub fn estimate_secs(args: &PolicyArgs) -> f64 {
    const SETUP: f64 = 3.0;
    const PER_TRIAL: f64 = 1.0;
    let searches =
        f64::from(args.trials) * f64::from(args.max_steps + 1) * (args.trial_secs + PER_TRIAL);
    let latency = args.latency_fractions.len() as f64 * (args.latency_secs + PER_TRIAL + 0.3);
    let points = (args.entries.len() * args.targets.len()) as f64;
    let ceiling = SETUP + f64::from(args.trials) * (args.trial_secs + PER_TRIAL);
    ceiling + points * (SETUP + searches + latency)
}

/// Runs the benchmark (`args` already `effective()`); the report is not yet written.
pub fn policy(args: &PolicyArgs, command: String) -> Result<PolicyReport, BenchError> {
    if !is_root() {
        return Err(BenchError::NotRoot { what: "policy" });
    }
    for tool in ["ip", "ethtool"] {
        if run("sh", &["-c", &format!("command -v {tool}")]).is_err() {
            return Err(BenchError::Unavailable(format!(
                "`{tool}` is missing: apt-get install -y iproute2 ethtool"
            )));
        }
    }
    let started = Instant::now();
    let mut report = PolicyReport {
        command,
        machine_start: crate::machine::describe(),
        sink: Some(args.sink),
        loss_threshold: args.loss,
        trials: args.trials,
        trial_secs: args.trial_secs,
        flows: args.flows,
        size: args.size,
        ..PolicyReport::default()
    };
    let total = args.entries.len() * args.targets.len();
    eprintln!(
        "policy: the ceiling, then {total} points ({} entry counts x {} targets); at most about {:.0} s",
        args.entries.len(),
        args.targets.len(),
        estimate_secs(args)
    );
    match ceiling(args) {
        Ok(c) => report.ceiling = Some(c),
        Err(BenchError::Interrupted) => return Err(BenchError::Interrupted),
        Err(e) => report.ceiling_error = Some(e.to_string()),
    }
    let mut index = 0;
    for &n in &args.entries {
        for &target in &args.targets {
            index += 1;
            eprintln!(
                "[{index}/{total}, {:.0} s] {} with {n} entries",
                started.elapsed().as_secs_f64(),
                target.name()
            );
            let result = available(target, args)
                .and_then(|()| point(target, n, index, args, report.ceiling.as_ref()));
            let p = match result {
                Ok(p) => p,
                Err(BenchError::Interrupted) => return Err(BenchError::Interrupted),
                Err(e) => Point {
                    target: target.name().into(),
                    entries: n,
                    error: Some(e.to_string()),
                    ..Point::default()
                },
            };
            eprintln!("    {}", summary_line(&p));
            report.points.push(p);
        }
    }
    report.duration_secs = started.elapsed().as_secs_f64();
    report.machine_end = crate::machine::describe();
    Ok(report)
}

/// The progress line after a point.
fn summary_line(p: &Point) -> String {
    if let Some(e) = &p.error {
        return format!("error: {e}");
    }
    let mpps =
        |s: Option<Spread>| s.map_or_else(|| "-".into(), |s| format!("{:.3}", s.median / 1e6));
    format!(
        "rate {} Mpps, flat out {} Mpps{}",
        mpps(p.rate),
        mpps(p.flat_out),
        if p.generator_bound {
            " (generator-bound)"
        } else if p.lossless_flat_out {
            " (flat out lossless: backpressure)"
        } else {
            ""
        }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: Ipv4Addr = Ipv4Addr::new(10, 81, 0, 11);
    const B: Ipv4Addr = Ipv4Addr::new(10, 81, 0, 12);

    #[test]
    fn filler_addresses_are_distinct_and_never_pod_a() {
        assert_eq!(filler_address(0), Ipv4Addr::new(100, 64, 0, 0));
        assert_eq!(filler_address(100_000), Ipv4Addr::new(100, 65, 134, 160));
        assert!((0..100_000).all(|i| filler_address(i) != A));
    }

    #[test]
    fn iptables_rules_put_pod_a_last() {
        let text = iptables_rules(A, B, 2);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[2], ":FORWARD DROP [0:0]");
        assert_eq!(
            lines[4],
            "-A FORWARD -s 100.64.0.0/32 -d 10.81.0.12/32 -p udp -m udp --dport 9000 -j ACCEPT"
        );
        assert_eq!(
            lines[6],
            "-A FORWARD -s 10.81.0.11/32 -d 10.81.0.12/32 -p udp -m udp --dport 9000 -j ACCEPT"
        );
        assert_eq!(lines.last(), Some(&"COMMIT"));
        assert_eq!(iptables_rules(A, B, 0).matches("-A FORWARD").count(), 1);
        assert_eq!(
            iptables_rules(A, B, 1000).matches("-A FORWARD").count(),
            1001
        );
    }

    #[test]
    fn the_nft_set_holds_the_fillers_and_pod_a() {
        let text = nft_set_rules(A, B, 2);
        assert!(
            text.contains("elements = { 100.64.0.0, 100.64.0.1, 10.81.0.11 }"),
            "{text}"
        );
        assert!(text.contains("policy drop;"));
        assert!(text.contains("ip daddr 10.81.0.12 udp dport 9000 ip saddr @allowed accept"));
        assert!(nft_set_rules(A, B, 0).contains("elements = { 10.81.0.11 }"));
    }

    #[test]
    fn quick_is_estimated_under_two_minutes() {
        use clap::Parser;
        let cli = crate::cli::Cli::try_parse_from([
            "flagella-bench",
            "policy",
            "--quick",
            "--targets",
            "flagella,iptables-nft,nft-set",
        ])
        .unwrap();
        let crate::cli::Command::Policy(args) = cli.command else {
            panic!("not policy");
        };
        let args = args.effective();
        assert_eq!(args.entries, vec![0, 1000]);
        assert!(estimate_secs(&args) < 120.0, "{}", estimate_secs(&args));
    }
}
