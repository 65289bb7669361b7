//! One measurement: build the topology, start the target, run the sink in pod B and the
//! generator in pod A, measure over a window, tear everything down (guards, in reverse order
//! of creation, pass or fail or signal).
//!
//! Timeline (seconds): the sink starts, then the generator; after [`WARMUP`] the window opens
//! (target counters and pod B's `eth0` counter sampled, CLOCK_MONOTONIC noted), and closes
//! `duration` later. The sink's Mpps is computed from its own 100 ms samples that fall inside
//! the window (same clock), so process start-up and shutdown never dilute it. The generator
//! keeps sending for [`TAIL`] after the window so the window never sees it stop.

use std::io::{BufRead, BufReader};
use std::net::SocketAddrV4;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::cli::{Generator, RunArgs, Target};
use crate::cputime::CpuTime;
use crate::targets::{parse_pmd_stats, ChildGuard, DataplaneLaunch, Flagella, Ovs, WorkerSample};
use crate::topo::{exec_in, rx_packets, Pod, Topology, ROUTER_MAC, SINK_PORT};
use crate::traffic::{monotonic_ns, parse_sample, parse_sent};
use crate::BenchError;

/// Time between the generator's start and the window's opening.
pub const WARMUP: Duration = Duration::from_millis(1500);
/// Time the generator keeps sending after the window closes.
pub const TAIL: Duration = Duration::from_millis(1000);

/// What one run measured.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Measurement {
    pub flows: u32,
    /// Packets per second delivered to the sink's socket in pod B, over the window.
    pub sink_pps: f64,
    /// Packets per second received by pod B's eth0 (before the socket; >= sink_pps).
    pub iface_pps: f64,
    /// Packets per second the generator sent, over its whole run.
    pub gen_pps: f64,
    /// The forwarding thread's own time per packet over the window (flagella: busy_ns /
    /// rx_packets; OVS: processing cycles / packet converted with the CPU clock). With a
    /// dataplane in each of two nodes (`xnode`): the sum of both workers' figures, the time the
    /// path costs per packet (each worker's own is in the notes).
    pub worker_ns_per_packet: Option<f64>,
    /// The same in cycles (flagella: ns times the CPU clock; OVS: as it reports).
    pub worker_cycles_per_packet: Option<f64>,
    /// The forwarding threads' user-mode CPU time per packet over the window (both targets
    /// read from /proc the same way, see [`crate::cputime`]).
    pub worker_user_ns_per_packet: Option<f64>,
    /// Their kernel-mode CPU time per packet: for AF_XDP on veth, mostly the copy-mode
    /// transmit and the receiving pod's stack that `sendto` runs.
    pub worker_kernel_ns_per_packet: Option<f64>,
    pub notes: Vec<String>,
}

/// The CPU clock in MHz from /proc/cpuinfo (first CPU), if it says.
pub fn cpu_mhz() -> Option<f64> {
    let text = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    text.lines()
        .find(|l| l.starts_with("cpu MHz"))
        .and_then(|l| l.split(':').nth(1))
        .and_then(|v| v.trim().parse().ok())
}

/// Packets per second between the first sample at or after `t0` and the last at or before
/// `t1` (monotonic ns); `None` with fewer than two such samples.
pub fn window_rate(samples: &[(u64, u64)], t0: u64, t1: u64) -> Option<f64> {
    let first = samples.iter().find(|(t, _)| *t >= t0)?;
    let last = samples.iter().rev().find(|(t, _)| *t <= t1)?;
    if last.0 <= first.0 {
        return None;
    }
    let secs = (last.0 - first.0) as f64 / 1e9;
    Some(last.1.saturating_sub(first.1) as f64 / secs)
}

/// The scratch directory of a run, removed on drop.
pub(crate) struct ScratchDir(pub(crate) PathBuf);

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// What forwards, as far as the measurement is concerned.
#[derive(Debug)]
pub enum Running {
    /// The kernel (nothing to sample).
    Kernel,
    /// One dataplane (`forward`), or one per node (`xnode`, node 1 first).
    Flagella(Vec<Flagella>),
    Ovs(Box<Ovs>),
}

/// The measured path: the generator's pod, the sink's pod, where the generator sends, and the
/// namespaces whose links a run that delivered almost nothing describes in its notes.
#[derive(Debug)]
pub struct Ends<'a> {
    pub src: &'a Pod,
    pub dst: &'a Pod,
    /// The generator's destination: `dst`'s address and [`SINK_PORT`] ([`Ends::direct`]), or
    /// an address that leads there (a NodePort, `crate::ingress`).
    pub aim: SocketAddrV4,
    /// The interface in `dst.ns` whose receive counter is "pod B eth0 Mpps" (`eth0`).
    pub sink_dev: &'a str,
    pub nodes: Vec<&'a str>,
}

impl<'a> Ends<'a> {
    /// `src` sends to `dst`'s own address and the sink's port; `dst` receives on `eth0`.
    pub fn direct(src: &'a Pod, dst: &'a Pod, nodes: Vec<&'a str>) -> Ends<'a> {
        Ends {
            src,
            dst,
            aim: SocketAddrV4::new(dst.ip, SINK_PORT),
            sink_dev: "eth0",
            nodes,
        }
    }
}

/// The window's start: whatever each target needs to compare against at the end.
#[derive(Default)]
struct Opened {
    t: u64,
    iface_rx: u64,
    /// One per dataplane, in [`Running::Flagella`]'s order.
    workers: Vec<WorkerSample>,
    /// One per dataplane, or OVS's.
    cpu: Vec<CpuTime>,
}

pub(crate) fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Names and scratch directory of one run: namespaces `<tag>-<pid>-<run>...`, interfaces
/// `<tag><pid>r<run>...`, files in `$TMPDIR/<prefix>` (removed on drop).
pub(crate) struct RunNames {
    pub prefix: String,
    pub short: String,
    pub dir: ScratchDir,
}

/// What every measurement needs before it builds anything: root, the generator (pktgen), `ip`
/// and `ethtool`; then the run's names and its scratch directory.
pub(crate) fn prepare(
    what: &'static str,
    tag: &str,
    args: &RunArgs,
    run_index: u32,
) -> Result<RunNames, BenchError> {
    if !is_root() {
        return Err(BenchError::NotRoot { what });
    }
    if args.generator == Generator::Pktgen {
        crate::pktgen::available()?;
    }
    for tool in ["ip", "ethtool"] {
        if crate::topo::run("sh", &["-c", &format!("command -v {tool}")]).is_err() {
            return Err(BenchError::Unavailable(format!(
                "`{tool}` is missing: apt-get install -y iproute2 ethtool"
            )));
        }
    }
    let pid = std::process::id();
    let prefix = format!("{tag}-{pid}-{run_index}");
    let dir = std::env::temp_dir().join(&prefix);
    std::fs::create_dir_all(&dir).map_err(|e| BenchError::io(dir.display().to_string(), e))?;
    Ok(RunNames {
        short: format!("{tag}{pid}r{run_index}"),
        prefix,
        dir: ScratchDir(dir),
    })
}

/// Runs `target` over `flows` flows; `run_index` makes names unique within a report.
pub fn forward(
    target: Target,
    flows: u32,
    args: &RunArgs,
    run_index: u32,
) -> Result<Measurement, BenchError> {
    let names = prepare("forward", "fbn", args, run_index)?;
    let topo = Topology::build(&names.prefix, &names.short)?;
    let mut running = start_target(target, &topo, args, &names.dir.0)?;
    let ends = Ends::direct(&topo.a, &topo.b, vec![&topo.node]);
    let result = measure(&ends, &mut running, flows, args);
    drop(running);
    drop(topo);
    result
}

fn start_target(
    target: Target,
    topo: &Topology,
    args: &RunArgs,
    dir: &Path,
) -> Result<Running, BenchError> {
    Ok(match target {
        Target::Kernel => {
            topo.enable_kernel_forwarding()?;
            Running::Kernel
        }
        Target::Flagella => Running::Flagella(vec![Flagella::start(
            topo,
            &DataplaneLaunch::from_run(args)?,
            dir,
        )?]),
        Target::Ovs | Target::OvsCt => Running::Ovs(Box::new(Ovs::start(
            topo,
            dir,
            args.worker_core,
            target == Target::OvsCt,
            args.nice,
        )?)),
    })
}

/// Spawns `flagella-bench <args>` in `ns` with stdout collected by a thread.
pub(crate) fn spawn_self(
    name: &str,
    ns: &str,
    args: &[String],
) -> Result<(ChildGuard, JoinHandle<Vec<String>>), BenchError> {
    let me = std::env::current_exe().map_err(|e| BenchError::io("locating this binary", e))?;
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns])
        .arg(me)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let mut guard = ChildGuard::spawn(name, &mut cmd)?;
    let stdout = guard
        .child
        .stdout
        .take()
        .ok_or_else(|| BenchError::Failed(format!("{name}: no stdout")))?;
    let reader = std::thread::spawn(move || {
        BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .collect::<Vec<_>>()
    });
    Ok((guard, reader))
}

/// Sink in `ends.dst`, generator in `ends.src` towards it (through the gateway, MAC
/// [`ROUTER_MAC`]), the window, the forwarder's counters over it.
pub(crate) fn measure(
    ends: &Ends,
    running: &mut Running,
    flows: u32,
    args: &RunArgs,
) -> Result<Measurement, BenchError> {
    let window = Duration::from_secs(args.duration);
    let gen_secs = (WARMUP + window + TAIL).as_secs_f64();
    let mut sink_args: Vec<String> = [
        "sink",
        "--port",
        &SINK_PORT.to_string(),
        "--duration",
        &format!("{:.1}", gen_secs + 1.0),
        "--samples",
    ]
    .map(String::from)
    .to_vec();
    if let Some(core) = args.sink_core {
        sink_args.extend(["--core".into(), core.to_string()]);
    }
    let (mut sink, sink_out) = spawn_self("sink", &ends.dst.ns, &sink_args)?;
    sink.renice(args.nice)?;
    crate::signals::sleep(Duration::from_millis(300))?;
    let mut gen_args: Vec<String> = vec![
        "gen".into(),
        "--dst".into(),
        ends.aim.to_string(),
        "--size".into(),
        args.size.to_string(),
        "--flows".into(),
        flows.to_string(),
        "--duration".into(),
        format!("{gen_secs:.1}"),
        "--core".into(),
        args.gen_core.to_string(),
    ];
    let l2 = ["--dev", "eth0", "--dst-mac", ROUTER_MAC].map(String::from);
    match args.generator {
        Generator::Socket => {}
        Generator::Pktgen => {
            gen_args.extend(["--generator".into(), "pktgen".into()]);
            gen_args.extend(l2);
        }
        Generator::Packet | Generator::Xdp => {
            let name = if args.generator == Generator::Xdp {
                "xdp"
            } else {
                "packet"
            };
            gen_args.extend(["--generator".into(), name.into()]);
            gen_args.extend(l2);
            gen_args.extend(["--src".into(), ends.src.ip.to_string()]);
        }
    }
    let (mut gen, gen_out) = spawn_self("gen", &ends.src.ns, &gen_args)?;
    gen.renice(args.nice)?;

    crate::signals::sleep(WARMUP)?;
    let opened = open_window(&ends.dst.ns, ends.sink_dev, running)?;
    crate::signals::sleep(window)?;
    let t1 = monotonic_ns();
    let iface_rx1 = rx_packets(&ends.dst.ns, ends.sink_dev)?;
    let mut m = Measurement {
        flows,
        iface_pps: iface_rx1.saturating_sub(opened.iface_rx) as f64
            / ((t1 - opened.t) as f64 / 1e9),
        ..Measurement::default()
    };
    close_window(running, &opened, &mut m)?;

    let gen_status = wait_child(&mut gen, Duration::from_secs(10))?;
    let sink_status = wait_child(&mut sink, Duration::from_secs(10))?;
    let gen_lines = gen_out.join().unwrap_or_default();
    let sink_lines = sink_out.join().unwrap_or_default();
    if !gen_status || !sink_status {
        return Err(BenchError::Failed(format!(
            "the generator or the sink failed (generator ok: {gen_status}, sink ok: {sink_status}); their messages are above"
        )));
    }
    if let Some(sent) = gen_lines.iter().rev().find_map(|l| parse_sent(l)) {
        m.gen_pps = sent.sent as f64 / sent.seconds.max(1e-9);
        if sent.send_errors > 0 {
            m.notes
                .push(format!("{} generator send calls failed", sent.send_errors));
        }
    }
    let samples: Vec<(u64, u64)> = sink_lines.iter().filter_map(|l| parse_sample(l)).collect();
    m.sink_pps = window_rate(&samples, opened.t, t1).ok_or_else(|| {
        BenchError::Failed("the sink reported no samples inside the window".into())
    })?;
    if m.sink_pps < 1000.0 {
        for ns in &ends.nodes {
            let links = exec_in(ns, "ip", &["-br", "link"]).unwrap_or_default();
            m.notes.push(format!(
                "almost nothing arrived; links in {ns}: {}",
                links.trim().replace('\n', "; ")
            ));
        }
    }
    Ok(m)
}

fn open_window(sink_ns: &str, sink_dev: &str, running: &mut Running) -> Result<Opened, BenchError> {
    let mut opened = Opened::default();
    match running {
        Running::Kernel => {}
        Running::Flagella(dataplanes) => {
            for f in dataplanes.iter_mut() {
                opened.workers.push(f.sample()?);
                opened.cpu.push(f.cpu_time()?);
            }
        }
        Running::Ovs(o) => {
            o.clear_pmd_stats()?;
            opened.cpu.push(o.cpu_time()?);
        }
    }
    opened.t = monotonic_ns();
    opened.iface_rx = rx_packets(sink_ns, sink_dev)?;
    Ok(opened)
}

fn close_window(
    running: &mut Running,
    opened: &Opened,
    m: &mut Measurement,
) -> Result<(), BenchError> {
    let mhz = cpu_mhz();
    match running {
        Running::Kernel => {}
        Running::Flagella(dataplanes) => {
            let several = dataplanes.len() > 1;
            let (mut busy, mut user, mut kernel) = (None::<f64>, None::<f64>, None::<f64>);
            for (i, f) in dataplanes.iter_mut().enumerate() {
                let label = if several {
                    format!("node {}: ", i + 1)
                } else {
                    String::new()
                };
                let end = f.sample()?;
                let start = opened.workers.get(i).copied().unwrap_or_default();
                let packets = end.rx_packets.saturating_sub(start.rx_packets);
                if packets > 0 {
                    let ns = end.busy_ns.saturating_sub(start.busy_ns) as f64 / packets as f64;
                    *busy.get_or_insert(0.0) += ns;
                    if several {
                        m.notes.push(format!("{label}worker {ns:.0} ns/pkt busy"));
                    }
                }
                if let Some((u, k)) = cpu_per_packet(opened.cpu.get(i), f.cpu_time()?, packets) {
                    *user.get_or_insert(0.0) += u;
                    *kernel.get_or_insert(0.0) += k;
                }
                if let Some(note) = io_note(&start, &end) {
                    m.notes.push(format!("{label}{note}"));
                }
                if end.busy_ns == 0 {
                    m.notes.push(format!(
                        "{label}the dataplane reports no busy_ns (older binary?)"
                    ));
                }
                let drops = f.drops()?;
                if drops != "{}" && drops != "null" {
                    m.notes.push(format!("{label}flagella drops: {drops}"));
                }
            }
            m.worker_ns_per_packet = busy;
            m.worker_cycles_per_packet = busy.and_then(|ns| mhz.map(|mhz| ns * mhz / 1000.0));
            m.worker_user_ns_per_packet = user;
            m.worker_kernel_ns_per_packet = kernel;
        }
        Running::Ovs(o) => {
            let cpu = o.cpu_time()?;
            let stats = o.pmd_stats()?;
            if let Some((packets, cycles)) = parse_pmd_stats(&stats) {
                m.worker_cycles_per_packet = Some(cycles);
                m.worker_ns_per_packet = mhz.map(|mhz| cycles * 1000.0 / mhz);
                if let Some((u, k)) = cpu_per_packet(opened.cpu.first(), cpu, packets) {
                    m.worker_user_ns_per_packet = Some(u);
                    m.worker_kernel_ns_per_packet = Some(k);
                }
            } else {
                m.notes
                    .push(format!("no PMD statistics: {}", stats.replace('\n', "; ")));
            }
        }
    }
    Ok(())
}

/// What flagella's AF_XDP layer did over the window: the mean batch, `sendto` kicks per
/// packet, and frames the kernel dropped before the worker saw them, by cause. `None` when the
/// binary does not report I/O counters.
fn io_note(start: &WorkerSample, end: &WorkerSample) -> Option<String> {
    let d = |f: fn(&WorkerSample) -> u64| f(end).saturating_sub(f(start));
    let (packets, batches) = (d(|s| s.rx_packets), d(|s| s.rx_batches));
    if batches == 0 {
        return None;
    }
    Some(format!(
        "flagella I/O: mean batch {:.1}, {:.3} sendto per packet, socket drops: {} for a full RX ring, {} for an empty fill ring",
        packets as f64 / batches as f64,
        d(|s| s.tx_wakeups) as f64 / packets.max(1) as f64,
        d(|s| s.sock_rx_ring_full),
        d(|s| s.sock_fill_ring_empty),
    ))
}

/// The forwarding threads' (user, kernel) time per packet between `start` and `end`.
fn cpu_per_packet(start: Option<&CpuTime>, end: CpuTime, packets: u64) -> Option<(f64, f64)> {
    let start = start.filter(|_| packets > 0)?;
    let d = end.since(start);
    Some((
        d.user_ns as f64 / packets as f64,
        d.kernel_ns as f64 / packets as f64,
    ))
}

/// Waits for a child up to `timeout`; true when it exited successfully.
pub(crate) fn wait_child(c: &mut ChildGuard, timeout: Duration) -> Result<bool, BenchError> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Some(status) = c
            .child
            .try_wait()
            .map_err(|e| BenchError::io(format!("waiting for {}", c.name), e))?
        {
            return Ok(status.success());
        }
        if std::time::Instant::now() >= deadline {
            return Ok(false);
        }
        crate::signals::sleep(Duration::from_millis(20))?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_rate_uses_samples_inside_the_window() {
        let s = [
            (0, 0),
            (1_000_000_000, 100),
            (2_000_000_000, 1100),
            (3_000_000_000, 2100),
            (4_000_000_000, 2200),
        ];
        // Window 0.5 s .. 3.5 s: samples at 1 s and 3 s, 2000 packets in 2 s.
        assert_eq!(window_rate(&s, 500_000_000, 3_500_000_000), Some(1000.0));
        assert_eq!(window_rate(&s, 3_500_000_000, 3_600_000_000), None);
        assert_eq!(window_rate(&[], 0, 10), None);
    }
}
