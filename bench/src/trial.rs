//! One trial of the `policy` benchmark: the AF_XDP generator in pod A offers a fixed rate (or
//! flat out) for a fixed time; a counter at the far end says how much arrived.
//!
//! - Counters are read before the generator starts and [`DRAIN`] after it ends, so they cover
//!   every frame it sent and nothing else of ours: [`Counter::XdpDrops`] is the kernel's
//!   per-queue `xdp_drops` of the interface an [`XdpSink`] drops on; [`Counter::UdpDelivered`]
//!   is `Udp: InDatagrams` of the sink's namespace (datagrams a socket received; a full
//!   receive buffer is loss).
//! - With the UDP counter a `flagella-bench sink` runs for the trial (started first, stopped
//!   by SIGTERM after the second reading); with `stamp` the generator stamps its frames and the
//!   sink's `latency` line is the trial's latency.
//! - Every process is stopped by PID through its guard, pass or fail.

use std::net::Ipv4Addr;
use std::time::Duration;

use crate::forward::{spawn_self, wait_child};
use crate::ratesearch::Trial;
use crate::stats::Latency;
use crate::targets::{wait_for, ChildGuard};
use crate::topo::{exec_in, ROUTER_MAC, SINK_PORT};
use crate::traffic::parse_sent;
use crate::xdpsink::xdp_drops;
use crate::BenchError;

/// Time between the generator's end and the second counter reading: frames still queued
/// (a forwarder's RX ring while its worker waits for its core) arrive late, not never, and
/// count as received (RFC 2544 waits 2 s; 500 ms covers what a loaded 2-core machine holds).
pub const DRAIN: Duration = Duration::from_millis(500);
/// Time the UDP sink gets to bind before the generator starts.
const SINK_START: Duration = Duration::from_millis(300);

/// Where arrivals are counted.
#[derive(Clone, Debug)]
pub enum Counter {
    /// The XDP_DROP program's drops on `dev` in `ns`.
    XdpDrops { ns: String, dev: String },
    /// Datagrams delivered to UDP sockets in `ns` (a sink runs during the trial).
    UdpDelivered { ns: String },
}

impl Counter {
    pub fn read(&self) -> Result<u64, BenchError> {
        match self {
            Counter::XdpDrops { ns, dev } => xdp_drops(ns, dev),
            Counter::UdpDelivered { ns } => {
                let text = exec_in(ns, "cat", &["/proc/net/snmp"])?;
                udp_in_datagrams(&text).ok_or_else(|| {
                    BenchError::Failed(format!("no Udp InDatagrams in {ns}'s /proc/net/snmp"))
                })
            }
        }
    }
}

/// `Udp: InDatagrams` from /proc/net/snmp's text (a header line, then a values line).
pub fn udp_in_datagrams(snmp: &str) -> Option<u64> {
    let mut udp = snmp.lines().filter(|l| l.starts_with("Udp: "));
    let header = udp.next()?;
    let values = udp.next()?;
    let column = header.split_whitespace().position(|w| w == "InDatagrams")?;
    values.split_whitespace().nth(column)?.parse().ok()
}

/// The generator's side of a trial.
#[derive(Clone, Debug)]
pub struct Path {
    /// Pod A's namespace (the generator sends on its `eth0`).
    pub src_ns: String,
    pub src_ip: Ipv4Addr,
    pub dst_ip: Ipv4Addr,
    pub size: usize,
    pub flows: u32,
    pub gen_core: usize,
    pub nice: i32,
    pub counter: Counter,
}

/// Runs one trial; `stamp` (UDP counter only) also returns the sink's latency.
pub fn run(
    path: &Path,
    rate: Option<f64>,
    secs: f64,
    stamp: bool,
) -> Result<(Trial, Option<Latency>), BenchError> {
    let sink = match &path.counter {
        Counter::UdpDelivered { ns } => Some(start_udp_sink(ns, stamp, path.nice)?),
        Counter::XdpDrops { .. } => None,
    };
    let before = path.counter.read()?;
    let sent = generate(path, rate, secs, stamp)?;
    crate::signals::sleep(DRAIN)?;
    let after = path.counter.read()?;
    let latency = match sink {
        Some(s) => stop_udp_sink(s)?,
        None => None,
    };
    let trial = Trial {
        asked_pps: rate,
        sent: sent.sent,
        received: after.saturating_sub(before),
        seconds: sent.seconds,
    };
    Ok((trial, latency))
}

/// The generator, to completion.
fn generate(
    path: &Path,
    rate: Option<f64>,
    secs: f64,
    stamp: bool,
) -> Result<crate::traffic::GenResult, BenchError> {
    let mut args: Vec<String> = [
        "gen",
        "--generator",
        "xdp",
        "--dev",
        "eth0",
        "--dst-mac",
        ROUTER_MAC,
    ]
    .map(String::from)
    .to_vec();
    args.extend([
        "--src".into(),
        path.src_ip.to_string(),
        "--dst".into(),
        format!("{}:{SINK_PORT}", path.dst_ip),
        "--size".into(),
        path.size.to_string(),
        "--flows".into(),
        path.flows.to_string(),
        "--duration".into(),
        format!("{secs:.3}"),
        "--core".into(),
        path.gen_core.to_string(),
    ]);
    if let Some(r) = rate {
        args.extend(["--rate".into(), format!("{r:.0}")]);
    }
    if stamp {
        args.push("--stamp".into());
    }
    let (mut gen, out) = spawn_self("gen", &path.src_ns, &args)?;
    gen.renice(path.nice)?;
    let ok = wait_child(&mut gen, Duration::from_secs_f64(secs + 15.0))?;
    drop(gen);
    let lines = out.join().unwrap_or_default();
    let sent = lines.iter().rev().find_map(|l| parse_sent(l));
    match (ok, sent) {
        (true, Some(sent)) => Ok(sent),
        _ => Err(BenchError::Failed(
            "the generator failed or printed no `sent` line (its messages are above)".into(),
        )),
    }
}

/// A UDP sink in `ns` with its output reader.
struct UdpSink {
    guard: ChildGuard,
    out: std::thread::JoinHandle<Vec<String>>,
}

fn start_udp_sink(ns: &str, latency: bool, nice: i32) -> Result<UdpSink, BenchError> {
    let mut args: Vec<String> = [
        "sink",
        "--port",
        &SINK_PORT.to_string(),
        "--duration",
        "3600",
    ]
    .map(String::from)
    .to_vec();
    if latency {
        args.push("--latency".into());
    }
    let (guard, out) = spawn_self("sink", ns, &args)?;
    guard.renice(nice)?;
    crate::signals::sleep(SINK_START)?;
    Ok(UdpSink { guard, out })
}

/// SIGTERM, then the sink's `latency` line (it prints it on its way out).
fn stop_udp_sink(mut sink: UdpSink) -> Result<Option<Latency>, BenchError> {
    if let Ok(pid) = i32::try_from(sink.guard.pid()) {
        // SAFETY: kill takes plain integers; the PID is our own child, not yet reaped.
        unsafe { libc::kill(pid, libc::SIGTERM) };
    }
    wait_child(&mut sink.guard, Duration::from_secs(5))?;
    drop(sink.guard);
    let lines = sink.out.join().unwrap_or_default();
    Ok(lines.iter().find_map(|l| Latency::parse_line(l)))
}

/// `flagella-bench xdp-sink` holding an XDP_DROP program on `dev` in `ns`; stopped by PID on
/// drop, which detaches the program.
#[derive(Debug)]
pub struct XdpSink {
    _guard: ChildGuard,
    _out: std::thread::JoinHandle<Vec<String>>,
}

impl XdpSink {
    /// Starts it and waits until `ip link` shows the program on `dev`.
    pub fn start(ns: &str, dev: &str) -> Result<XdpSink, BenchError> {
        let args = ["xdp-sink", "--dev", dev].map(String::from);
        let (mut guard, out) = spawn_self("xdp-sink", ns, &args)?;
        let attached = wait_for(
            &format!("the XDP_DROP sink to attach to {dev} in {ns}"),
            Duration::from_secs(10),
            || {
                if let Ok(Some(status)) = guard.child.try_wait() {
                    return Err(BenchError::Failed(format!(
                        "xdp-sink on {dev} in {ns} exited ({status}); its message is above"
                    )));
                }
                let link = exec_in(ns, "ip", &["-d", "link", "show", "dev", dev])?;
                Ok(link.contains("prog/xdp"))
            },
        );
        attached?;
        Ok(XdpSink {
            _guard: guard,
            _out: out,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_datagrams_from_snmp() {
        let text = "Ip: Forwarding DefaultTTL\nIp: 1 64\n\
                    Udp: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors\n\
                    Udp: 1234 5 6 7 8\nUdpLite: InDatagrams NoPorts\nUdpLite: 0 0\n";
        assert_eq!(udp_in_datagrams(text), Some(1234));
        assert_eq!(udp_in_datagrams("Ip: 1 64\n"), None);
        assert_eq!(udp_in_datagrams("Udp: NoPorts\nUdp: 3\n"), None);
    }
}
