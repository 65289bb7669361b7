//! `monitor-cost`: what a `flagella monitor` client costs forwarding while a flood of denied
//! packets makes every frame a monitor event (issue 13: the allowed transfer must keep at least
//! 90% of its rate with the client subscribed).
//!
//! One run (everything carries the prefix `fmc-<pid>` and is removed on exit, pass, failure
//! or SIGINT):
//! 1. the topology of `forward` (node namespace, pods A and B, [`crate::topo`]) and
//!    `flagella-dataplane` on the pods' veths, configured as `forward` configures it
//!    ([`Flagella::start`]) plus TCP to B's [`TRANSFER_PORT`] allowed both ways;
//! 2. `--rounds` pairs of rounds, alternately without then with the client and with then
//!    without (ABBA, so a drift of the machine's load does not favour either side). A round:
//!    the flood (UDP by `sendmmsg` from A to B's [`FLOOD_PORT`], which A's egress policy
//!    denies: every datagram is a drop event) starts, then A sends `--mib` MiB over TCP to a
//!    sink in B, which acknowledges the last byte; the round's figure is that transfer's rate.
//!    "With" rounds run the real CLI (`flagella -o json monitor --no-labels`, its output read
//!    and tallied by this process) subscribed before the flood starts;
//! 3. the medians of both sides, their ratio, and per pair the ratio, with what the client
//!    read and was told it lost, and the dataplane's monitor counters (`/metrics`).
//!
//! The machine is usually shared (two cores, other builds): the flood, the transfer, the
//! worker's busy polling and the client all compete for it, which is why the figure is a
//! median of alternated rounds rather than one pair.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::cli::MonitorCostArgs;
use crate::forward::{is_root, ScratchDir};
use crate::probe::enter_netns;
use crate::targets::{default_dataplane, wait_for, ChildGuard, DataplaneLaunch, Flagella};
use crate::topo::{Topology, POD_B_IP};
use crate::BenchError;

/// B's TCP port of the measured transfer (allowed A -> B).
pub const TRANSFER_PORT: u16 = 5201;
/// B's UDP port of the flood (denied by A's egress policy).
pub const FLOOD_PORT: u16 = 9001;
/// Datagrams a `sendmmsg` call of the flood.
const FLOOD_BATCH: usize = 64;
/// The flood runs this long before the transfer starts (its steady state is measured).
const FLOOD_LEAD: Duration = Duration::from_millis(300);
/// Where the dataplane serves `/metrics`, inside the node namespace.
const METRICS: &str = "127.0.0.1:9962";

/// The default `flagella` CLI: next to this binary.
pub fn default_cli() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join("flagella")))
        .unwrap_or_else(|| PathBuf::from("flagella"))
}

/// What the monitor client read in one round.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    pub flows: u64,
    /// Told lost, by source.
    pub ring: u64,
    pub rate_limited: u64,
    pub queue: u64,
}

impl Tally {
    /// Counts one line of `flagella -o json monitor`.
    pub fn add_line(&mut self, line: &str) {
        if line.starts_with("{\"flow\"") {
            self.flows += 1;
            return;
        }
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            return;
        };
        let n = v["lost_events"]["num_events_lost"].as_u64().unwrap_or(0);
        match v["lost_events"]["source"].as_str() {
            Some("worker_ring") => self.ring += n,
            Some("rate_limited") => self.rate_limited += n,
            Some(_) => self.queue += n,
            None => {}
        }
    }
}

/// One round's result.
#[derive(Clone, Copy, Debug)]
pub struct Round {
    pub with_client: bool,
    /// The transfer's MB/s (10^6 bytes).
    pub rate: f64,
    /// Flood datagrams a second the kernel took during the round.
    pub flood_pps: f64,
    /// Events a second the client read (with the client).
    pub client: Option<(Tally, f64)>,
}

/// Runs the benchmark and returns its report.
pub fn monitor_cost(args: &MonitorCostArgs) -> Result<String, BenchError> {
    if !is_root() {
        return Err(BenchError::NotRoot {
            what: "monitor-cost",
        });
    }
    let cli = args.flagella.clone().unwrap_or_else(default_cli);
    if !cli.exists() {
        return Err(BenchError::Unavailable(format!(
            "{} not found: cargo build --release -p control --bin flagella (or pass --flagella)",
            cli.display()
        )));
    }
    let launch = dataplane_launch(args)?;
    let pid = std::process::id();
    let prefix = format!("fmc-{pid}");
    let dir = ScratchDir(std::env::temp_dir().join(&prefix));
    std::fs::create_dir_all(&dir.0).map_err(|e| BenchError::io(dir.0.display().to_string(), e))?;
    let topo = Topology::build(&prefix, &format!("fmc{pid}"))?;
    let mut dataplane = Flagella::start(&topo, &launch, &dir.0)?;
    allow_transfer(&mut dataplane)?;
    eprintln!("flagella-dataplane PID {}", dataplane.pid());
    let sink = Sink::start(&topo.b.ns)?;
    let mut rounds = Vec::new();
    for pair in 0..args.rounds {
        let order = if pair % 2 == 0 {
            [false, true]
        } else {
            [true, false]
        };
        for with_client in order {
            if crate::signals::stopping() {
                return Err(BenchError::Interrupted);
            }
            let round = run_round(&topo, &cli, &dir.0, args.mib, with_client)?;
            eprintln!("{}", describe(&round));
            rounds.push(round);
        }
    }
    let counters = dataplane_monitor_counters(&topo.node)?;
    drop(sink);
    Ok(render(&rounds, &counters, args))
}

/// The dataplane as `forward` starts it, with `--monitor-rate` when given.
fn dataplane_launch(args: &MonitorCostArgs) -> Result<DataplaneLaunch, BenchError> {
    let binary = args.dataplane.clone().unwrap_or_else(default_dataplane);
    if !binary.exists() {
        return Err(BenchError::Unavailable(format!(
            "{} not found: cargo build --release -p dataplane --features afxdp --bin flagella-dataplane (or pass --dataplane)",
            binary.display()
        )));
    }
    Ok(DataplaneLaunch {
        binary,
        core: args.worker_core,
        nice: 0,
        idle_sleep_us: 0,
        masquerade_ports: None,
        extra_args: args
            .monitor_rate
            .map(|rate| vec!["--monitor-rate".to_string(), rate.to_string()])
            .unwrap_or_default(),
    })
}

/// A -> B TCP on [`TRANSFER_PORT`]: A's egress and B's ingress admit it (the replies are the
/// flow's, admitted by connection tracking).
fn allow_transfer(f: &mut Flagella) -> Result<(), BenchError> {
    f.call(
        json!({"op": "policy.update", "endpoint": 1, "direction": "egress",
        "add": [{"identity": 1002, "proto": "tcp", "port": TRANSFER_PORT, "action": "allow"}]}),
    )?;
    f.call(
        json!({"op": "policy.update", "endpoint": 2, "direction": "ingress",
        "add": [{"identity": 1001, "proto": "tcp", "port": TRANSFER_PORT, "action": "allow"}]}),
    )?;
    Ok(())
}

/// One round: the client (when asked), the flood, the transfer.
fn run_round(
    topo: &Topology,
    cli: &Path,
    dir: &Path,
    mib: u64,
    with_client: bool,
) -> Result<Round, BenchError> {
    let client = match with_client {
        true => Some(MonitorClient::start(cli, &topo.node, dir)?),
        false => None,
    };
    if client.is_some() {
        wait_for(
            "the monitor client to subscribe (flagella_monitor_subscribers 1)",
            Duration::from_secs(10),
            || Ok(metric(&topo.node, "flagella_monitor_subscribers")? == 1.0),
        )?;
    }
    let stop = Arc::new(AtomicBool::new(false));
    let flood = Flood::start(&topo.a.ns, Arc::clone(&stop))?;
    crate::signals::sleep(FLOOD_LEAD)?;
    let started = Instant::now();
    let bytes = transfer(&topo.a.ns, mib << 20)?;
    let seconds = started.elapsed().as_secs_f64();
    let (sent, flood_seconds) = flood.stop();
    let client = client.map(MonitorClient::stop).transpose()?;
    Ok(Round {
        with_client,
        rate: bytes as f64 / seconds / 1e6,
        flood_pps: sent as f64 / flood_seconds,
        client: client.map(|t| (t, t.flows as f64 / flood_seconds)),
    })
}

fn describe(r: &Round) -> String {
    let mut s = format!(
        "   {} client: {:.1} MB/s beside {:.0} kpps of denied UDP",
        if r.with_client { "with   " } else { "without" },
        r.rate,
        r.flood_pps / 1e3
    );
    if let Some((t, per_s)) = r.client {
        s.push_str(&format!(
            "; client read {} flows ({per_s:.0}/s), told lost: {} rate-limited, {} ring, {} queue",
            t.flows, t.rate_limited, t.ring, t.queue
        ));
    }
    s
}

/// The median of `values` (the mean of the middle two for an even count); `None` when empty.
pub fn median(values: &[f64]) -> Option<f64> {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    match v.len() {
        0 => None,
        n if n % 2 == 1 => v.get(mid).copied(),
        _ => Some((v[mid - 1] + v[mid]) / 2.0),
    }
}

/// The table: medians, their ratio, the per-pair ratios.
pub fn render(rounds: &[Round], counters: &str, args: &MonitorCostArgs) -> String {
    let rates = |with: bool| -> Vec<f64> {
        rounds
            .iter()
            .filter(|r| r.with_client == with)
            .map(|r| r.rate)
            .collect()
    };
    let (without, with) = (rates(false), rates(true));
    let med = |v: &[f64]| median(v).unwrap_or(f64::NAN);
    let pairs: Vec<String> = rounds
        .chunks(2)
        .filter_map(|p| {
            let w = p.iter().find(|r| r.with_client)?;
            let wo = p.iter().find(|r| !r.with_client)?;
            Some(format!("{:.0}%", 100.0 * w.rate / wo.rate))
        })
        .collect();
    let flows_per_s: Vec<f64> = rounds
        .iter()
        .filter_map(|r| r.client.map(|(_, s)| s))
        .collect();
    let mut out = String::new();
    out.push_str(&format!(
        "monitor-cost: a {} MiB TCP transfer A -> B beside a flood of denied UDP from A, {} \
         rounds each way (alternated)\n",
        args.mib, args.rounds
    ));
    out.push_str(&format!(
        "| without client MB/s (median) | with client MB/s (median) | with / without | per pair | client flows/s (median) |\n\
         |---|---|---|---|---|\n\
         | {:.1} | {:.1} | {:.0}% | {} | {:.0} |\n",
        med(&without),
        med(&with),
        100.0 * med(&with) / med(&without),
        pairs.join(" "),
        med(&flows_per_s),
    ));
    out.push_str(&format!("dataplane monitor counters: {counters}\n"));
    out
}

// ---- the pieces ----------------------------------------------------------------------------

/// `flagella -o json monitor --no-labels` in the node namespace, its output tallied by a
/// thread of this process.
struct MonitorClient {
    child: ChildGuard,
    reader: JoinHandle<Tally>,
}

impl MonitorClient {
    fn start(cli: &Path, node: &str, dir: &Path) -> Result<MonitorClient, BenchError> {
        let socket = dir.join("dataplane-monitor.sock");
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", node])
            .arg(cli)
            .args(["-o", "json", "monitor", "--no-labels", "--socket"])
            .arg(&socket)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let mut child = ChildGuard::spawn("flagella monitor", &mut cmd)?;
        let stdout = child
            .child
            .stdout
            .take()
            .ok_or_else(|| BenchError::Failed("flagella monitor has no stdout".into()))?;
        let reader = thread::spawn(move || {
            let mut tally = Tally::default();
            let mut lines = BufReader::new(stdout);
            let mut line = String::new();
            while lines.read_line(&mut line).is_ok_and(|n| n > 0) {
                tally.add_line(&line);
                line.clear();
            }
            tally
        });
        Ok(MonitorClient { child, reader })
    }

    /// Stops the client (SIGTERM, by its PID) and returns what it read.
    fn stop(self) -> Result<Tally, BenchError> {
        drop(self.child);
        self.reader
            .join()
            .map_err(|_| BenchError::Failed("the monitor client's reader panicked".into()))
    }
}

/// The flood: a thread in pod A sending 8-byte datagrams to B's [`FLOOD_PORT`] by `sendmmsg`
/// until stopped.
struct Flood {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    started: Instant,
    thread: JoinHandle<()>,
}

impl Flood {
    fn start(ns: &str, stop: Arc<AtomicBool>) -> Result<Flood, BenchError> {
        let ns = ns.to_string();
        let sent = Arc::new(AtomicU64::new(0));
        let (stop_t, sent_t) = (Arc::clone(&stop), Arc::clone(&sent));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = thread::spawn(move || {
            let socket = enter_netns(&ns).and_then(|()| {
                let s =
                    UdpSocket::bind("0.0.0.0:0").map_err(|e| BenchError::io("flood socket", e))?;
                s.connect(SocketAddrV4::new(POD_B_IP, FLOOD_PORT))
                    .map_err(|e| BenchError::io("flood connect", e))?;
                Ok(s)
            });
            let socket = match socket {
                Ok(s) => {
                    let _ = ready_tx.send(Ok(()));
                    s
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            while !stop_t.load(Ordering::Relaxed) {
                sent_t.fetch_add(send_batch(&socket), Ordering::Relaxed);
            }
        });
        ready_rx
            .recv()
            .map_err(|_| BenchError::Failed("the flood thread died".into()))??;
        Ok(Flood {
            stop,
            sent,
            started: Instant::now(),
            thread,
        })
    }

    /// Stops the flood; datagrams sent and seconds.
    fn stop(self) -> (u64, f64) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.thread.join();
        (
            self.sent.load(Ordering::Relaxed),
            self.started.elapsed().as_secs_f64(),
        )
    }
}

/// One `sendmmsg` of [`FLOOD_BATCH`] datagrams on the connected `socket`; how many the
/// kernel took (0 on ENOBUFS and the like: the flood goes on).
fn send_batch(socket: &UdpSocket) -> u64 {
    let mut payload = [0x46u8; 8];
    let mut iov = libc::iovec {
        iov_base: payload.as_mut_ptr().cast(),
        iov_len: payload.len(),
    };
    // SAFETY: an all-zero mmsghdr is valid (no name, no control data); the iovec is set below
    // and, with the payload, outlives the call.
    let mut msgs: [libc::mmsghdr; FLOOD_BATCH] = unsafe { std::mem::zeroed() };
    for m in &mut msgs {
        m.msg_hdr.msg_iov = &mut iov;
        m.msg_hdr.msg_iovlen = 1;
    }
    // SAFETY: `msgs` holds FLOOD_BATCH initialised headers pointing at live buffers.
    let n = unsafe {
        libc::sendmmsg(
            socket.as_raw_fd(),
            msgs.as_mut_ptr(),
            FLOOD_BATCH as libc::c_uint,
            0,
        )
    };
    u64::try_from(n).unwrap_or(0)
}

/// B's TCP sink on [`TRANSFER_PORT`]: reads each connection to its end, then answers one
/// byte (so the sender's clock stops when everything arrived). Stopped on drop.
struct Sink {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Sink {
    fn start(ns: &str) -> Result<Sink, BenchError> {
        let ns = ns.to_string();
        let stop = Arc::new(AtomicBool::new(false));
        let stop_t = Arc::clone(&stop);
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = thread::spawn(move || {
            let listener = enter_netns(&ns).and_then(|()| {
                let l = TcpListener::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, TRANSFER_PORT))
                    .map_err(|e| BenchError::io("sink listen", e))?;
                l.set_nonblocking(true)
                    .map_err(|e| BenchError::io("sink listen", e))?;
                Ok(l)
            });
            let listener = match listener {
                Ok(l) => {
                    let _ = ready_tx.send(Ok(()));
                    l
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            while !stop_t.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((conn, _)) => drain_and_ack(conn),
                    Err(_) => thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        ready_rx
            .recv()
            .map_err(|_| BenchError::Failed("the sink thread died".into()))??;
        Ok(Sink {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn drain_and_ack(mut conn: TcpStream) {
    let _ = conn.set_nonblocking(false);
    let _ = conn.set_read_timeout(Some(Duration::from_secs(30)));
    let mut buf = vec![0u8; 256 << 10];
    while conn.read(&mut buf).is_ok_and(|n| n > 0) {}
    let _ = conn.write_all(b"k");
}

/// From pod `ns`: `bytes` to B's sink, then its acknowledgement; returns the bytes sent.
fn transfer(ns: &str, bytes: u64) -> Result<u64, BenchError> {
    let ns = ns.to_string();
    thread::spawn(move || -> Result<u64, BenchError> {
        enter_netns(&ns)?;
        let to = SocketAddrV4::new(POD_B_IP, TRANSFER_PORT);
        let mut s =
            TcpStream::connect_timeout(&to.into(), Duration::from_secs(5)).map_err(|e| {
                BenchError::io(format!("connecting to {to} (policy, or the dataplane)"), e)
            })?;
        s.set_read_timeout(Some(Duration::from_secs(60)))
            .map_err(|e| BenchError::io("transfer timeout", e))?;
        let chunk = vec![0x5au8; 256 << 10];
        let mut left = bytes;
        while left > 0 {
            let n = left.min(chunk.len() as u64) as usize;
            s.write_all(&chunk[..n])
                .map_err(|e| BenchError::io("transfer write", e))?;
            left -= n as u64;
        }
        s.shutdown(std::net::Shutdown::Write)
            .map_err(|e| BenchError::io("transfer shutdown", e))?;
        let mut ack = [0u8; 1];
        s.read_exact(&mut ack)
            .map_err(|e| BenchError::io("waiting for the sink's acknowledgement", e))?;
        Ok(bytes)
    })
    .join()
    .map_err(|_| BenchError::Failed("the transfer thread panicked".into()))?
}

/// `/metrics` of the dataplane (in namespace `node`).
fn scrape(node: &str) -> Result<String, BenchError> {
    let node = node.to_string();
    thread::spawn(move || -> Result<String, BenchError> {
        enter_netns(&node)?;
        let mut s = TcpStream::connect(METRICS).map_err(|e| {
            BenchError::io(
                format!("connecting to the dataplane's /metrics at {METRICS}"),
                e,
            )
        })?;
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .map_err(|e| BenchError::io("/metrics timeout", e))?;
        s.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
            .map_err(|e| BenchError::io("/metrics request", e))?;
        let mut text = String::new();
        s.read_to_string(&mut text)
            .map_err(|e| BenchError::io("/metrics response", e))?;
        Ok(text)
    })
    .join()
    .map_err(|_| BenchError::Failed("the /metrics thread panicked".into()))?
}

/// The value of sample `name` (with its labels, as written) in `/metrics`; 0 when absent.
fn metric(node: &str, name: &str) -> Result<f64, BenchError> {
    Ok(sample(&scrape(node)?, name).unwrap_or(0.0))
}

/// The value of sample `name` in Prometheus text.
pub fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// The monitor's counters, one line.
fn dataplane_monitor_counters(node: &str) -> Result<String, BenchError> {
    let text = scrape(node)?;
    let parts: Vec<String> = text
        .lines()
        .filter(|l| l.starts_with("flagella_monitor_events"))
        .map(|l| l.trim_start_matches("flagella_monitor_").to_string())
        .collect();
    Ok(parts.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tally_counts_flows_and_losses_by_source() {
        let mut t = Tally::default();
        for line in [
            r#"{"flow":{"verdict":"DROPPED"}}"#,
            r#"{"flow":{"verdict":"DROPPED"}}"#,
            r#"{"lost_events":{"source":"rate_limited","num_events_lost":7}}"#,
            r#"{"lost_events":{"source":"worker_ring","worker":0,"num_events_lost":3}}"#,
            r#"{"lost_events":{"source":"subscriber_queue","num_events_lost":2}}"#,
            "not json",
        ] {
            t.add_line(line);
        }
        assert_eq!(
            t,
            Tally {
                flows: 2,
                ring: 3,
                rate_limited: 7,
                queue: 2
            }
        );
    }

    #[test]
    fn the_median_of_an_even_count_is_the_mean_of_the_middle_two() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(median(&[]), None);
    }

    #[test]
    fn samples_are_read_by_name_and_labels() {
        let text = "# HELP x\nflagella_monitor_subscribers 1\nflagella_monitor_events_total 12\n";
        assert_eq!(sample(text, "flagella_monitor_subscribers"), Some(1.0));
        assert_eq!(sample(text, "flagella_monitor_events_total"), Some(12.0));
        assert_eq!(sample(text, "flagella_monitor_events"), None);
    }
}
