//! `flagella-bench restart`: the delivery gap of dataplane restarts (issue 15).
//!
//! The single-node topology (pods A and B, `topo`), flagella-dataplane with its programs pinned
//! in a private bpffs and its conntrack in a state file, and a steady UDP stream A -> B of
//! sequence-numbered datagrams (`--rate` per second). The dataplane is restarted `--restarts`
//! times gracefully (SIGTERM, then a new process) and as many times by kill -9 and a start,
//! alternately; after each start the bench pushes the tables, as the agent would (the agent's
//! own resync is not part of this number: see control/tests/e2e_dataplane.rs). Per restart, from
//! B's arrivals: the longest pause between two datagrams around it (the delivery gap), the
//! datagrams lost in it, and the time from the stop to the new process answering. p50/p99 (of
//! few samples: the p99 is close to the maximum) per kind.

use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use crate::cli::RestartArgs;
use crate::probe::{enter_netns, now_ns};
use crate::targets::{DataplaneLaunch, Flagella};
use crate::topo::{run, Topology, SINK_PORT};
use crate::BenchError;

/// Steady traffic before the first and after each restart.
const SETTLE: Duration = Duration::from_secs(1);

/// A bpffs mounted on a private directory for the run, unmounted on drop.
struct Bpffs {
    dir: PathBuf,
}

impl Bpffs {
    fn mount() -> Result<Bpffs, BenchError> {
        let dir = std::env::temp_dir().join(format!("fbr-bpffs-{}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| BenchError::io(dir.display().to_string(), e))?;
        let path = dir.to_string_lossy().into_owned();
        run("mount", &["-t", "bpf", "bpf", &path])?;
        Ok(Bpffs { dir })
    }
}

impl Drop for Bpffs {
    fn drop(&mut self) {
        let path = self.dir.to_string_lossy().into_owned();
        if run("umount", &["-l", &path]).is_err() || std::fs::remove_dir(&self.dir).is_err() {
            eprintln!(
                "WARNING: could not remove the bpffs at {path}: umount -l {path}; rmdir {path}"
            );
        }
    }
}

/// `(sequence number, arrival ns)` of each datagram B received, in arrival order.
type Arrivals = Vec<(u64, u64)>;

/// One restart: its kind, when the old process was told to stop, when the new one answered.
#[derive(Clone, Copy, Debug)]
struct Restart {
    graceful: bool,
    stopped_ns: u64,
    ready_ns: u64,
}

/// What one restart cost.
#[derive(Clone, Copy, Debug)]
struct Cost {
    gap_ns: u64,
    lost: u64,
    back_ns: u64,
}

/// Runs the benchmark and returns its report.
pub fn restart(args: &RestartArgs) -> Result<String, BenchError> {
    let pid = std::process::id();
    let topo = Topology::build(&format!("fbr-{pid}"), &format!("fbr{pid}"))?;
    let bpffs = Bpffs::mount()?;
    let dir = std::env::temp_dir().join(format!("fbr-{pid}"));
    std::fs::create_dir_all(&dir).map_err(|e| BenchError::io(dir.display().to_string(), e))?;
    let result = measure(args, &topo, &bpffs, &dir);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn measure(
    args: &RestartArgs,
    topo: &Topology,
    bpffs: &Bpffs,
    dir: &Path,
) -> Result<String, BenchError> {
    let mut launch = DataplaneLaunch::from_run(&args.run)?;
    launch.extra_args = vec![
        "--bpf-pin-dir".into(),
        bpffs.dir.join("flagella").to_string_lossy().into_owned(),
        "--state-dir".into(),
        dir.join("state").to_string_lossy().into_owned(),
    ];
    let mut dataplane = Some(Flagella::start(topo, &launch, dir)?);
    let stop = Arc::new(AtomicBool::new(false));
    let receiver = start_receiver(&topo.b.ns, SocketAddr::from((topo.b.ip, SINK_PORT)), &stop)?;
    let sender = start_sender(
        &topo.a.ns,
        SocketAddr::from((topo.b.ip, SINK_PORT)),
        args.rate,
        &stop,
    );
    thread::sleep(SETTLE);
    let mut restarts = Vec::new();
    for i in 0..2 * args.restarts {
        let graceful = i % 2 == 0;
        let stopped_ns = now_ns();
        match dataplane.take() {
            Some(f) if graceful => drop(f), // SIGTERM, then waits for the exit
            Some(f) => f.kill9(),
            None => {}
        }
        dataplane = Some(Flagella::start(topo, &launch, dir)?);
        restarts.push(Restart {
            graceful,
            stopped_ns,
            ready_ns: now_ns(),
        });
        thread::sleep(SETTLE);
    }
    stop.store(true, Ordering::Relaxed);
    let sent = sender
        .join()
        .map_err(|_| BenchError::Failed("the sender panicked".into()))??;
    let arrivals = receiver
        .join()
        .map_err(|_| BenchError::Failed("the receiver panicked".into()))??;
    drop(dataplane);
    if arrivals.is_empty() {
        return Err(BenchError::Failed(
            "pod B received nothing: check the dataplane's log".into(),
        ));
    }
    let costs: Vec<(bool, Cost)> = restarts
        .iter()
        .map(|r| (r.graceful, cost(r, &arrivals)))
        .collect();
    Ok(render(args, sent, arrivals.len() as u64, &costs))
}

/// In `ns`: receives datagrams on `addr` until `stop`; `(sequence number, arrival ns)` each.
fn start_receiver(
    ns: &str,
    addr: SocketAddr,
    stop: &Arc<AtomicBool>,
) -> Result<thread::JoinHandle<Result<Arrivals, BenchError>>, BenchError> {
    let (ns, stop) = (ns.to_string(), Arc::clone(stop));
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let handle = thread::spawn(move || {
        enter_netns(&ns)?;
        let socket = UdpSocket::bind(addr).map_err(|e| BenchError::io("bind the receiver", e))?;
        socket
            .set_read_timeout(Some(Duration::from_millis(50)))
            .map_err(|e| BenchError::io("receiver timeout", e))?;
        let _ = ready_tx.send(());
        let mut arrivals = Vec::with_capacity(1 << 20);
        let mut buf = [0u8; 64];
        while !stop.load(Ordering::Relaxed) {
            if let Ok(n) = socket.recv(&mut buf) {
                if let Some(seq) = buf.get(..8).filter(|_| n >= 8) {
                    let mut word = [0u8; 8];
                    word.copy_from_slice(seq);
                    arrivals.push((u64::from_le_bytes(word), now_ns()));
                }
            }
        }
        Ok(arrivals)
    });
    ready_rx
        .recv_timeout(Duration::from_secs(5))
        .map_err(|_| BenchError::Failed("the receiver did not start".into()))?;
    Ok(handle)
}

/// In `ns`: sends a datagram carrying its sequence number to `to`, `rate` a second, until
/// `stop`; returns how many it sent.
fn start_sender(
    ns: &str,
    to: SocketAddr,
    rate: u32,
    stop: &Arc<AtomicBool>,
) -> thread::JoinHandle<Result<u64, BenchError>> {
    let (ns, stop) = (ns.to_string(), Arc::clone(stop));
    let interval = 1_000_000_000 / u64::from(rate.max(1));
    thread::spawn(move || {
        enter_netns(&ns)?;
        let socket = UdpSocket::bind("0.0.0.0:0").map_err(|e| BenchError::io("sender", e))?;
        socket
            .connect(to)
            .map_err(|e| BenchError::io("sender connect", e))?;
        let mut payload = [0u8; 64];
        let (mut seq, mut next) = (0u64, now_ns());
        while !stop.load(Ordering::Relaxed) {
            payload[..8].copy_from_slice(&seq.to_le_bytes());
            // A dropped datagram is the measurement; a send error (no route yet) is too.
            let _ = socket.send(&payload);
            seq += 1;
            next += interval;
            let now = now_ns();
            if next > now {
                thread::sleep(Duration::from_nanos(next - now));
            }
        }
        Ok(seq)
    })
}

/// The delivery gap and losses of restart `r`: from the last datagram B received before the
/// stop to one second after the new process answered.
fn cost(r: &Restart, arrivals: &[(u64, u64)]) -> Cost {
    let end_ns = r.ready_ns + SETTLE.as_nanos() as u64 / 2;
    let first = arrivals
        .iter()
        .rposition(|(_, t)| *t <= r.stopped_ns)
        .unwrap_or(0);
    let last = arrivals
        .iter()
        .rposition(|(_, t)| *t <= end_ns)
        .unwrap_or(first)
        .max(first);
    let window = &arrivals[first..=last];
    let gap_ns = window
        .windows(2)
        .map(|w| w[1].1.saturating_sub(w[0].1))
        .max()
        .unwrap_or(0);
    let span = window[window.len() - 1].0.saturating_sub(window[0].0) + 1;
    Cost {
        gap_ns,
        lost: span.saturating_sub(window.len() as u64),
        back_ns: r.ready_ns.saturating_sub(r.stopped_ns),
    }
}

/// The `q` quantile (0..=1) of `values`, nearest rank.
fn quantile(values: &mut [u64], q: f64) -> u64 {
    if values.is_empty() {
        return 0;
    }
    values.sort_unstable();
    let rank = ((q * values.len() as f64).ceil() as usize).clamp(1, values.len());
    values[rank - 1]
}

fn render(args: &RestartArgs, sent: u64, received: u64, costs: &[(bool, Cost)]) -> String {
    let mut out = format!(
        "dataplane restarts: UDP A -> B at {} datagrams/s, {} graceful and {} kill -9 \
         restarts, alternately; tables pushed by the bench after each start\n\
         {:<10} {:>13} {:>13} {:>10} {:>10} {:>14} {:>14}\n",
        args.rate,
        args.restarts,
        args.restarts,
        "kind",
        "gap p50 ms",
        "gap p99 ms",
        "lost p50",
        "lost p99",
        "back p50 ms",
        "back p99 ms"
    );
    for (graceful, name) in [(true, "graceful"), (false, "kill -9")] {
        let of_kind: Vec<Cost> = costs
            .iter()
            .filter(|(g, _)| *g == graceful)
            .map(|(_, c)| *c)
            .collect();
        let mut gaps: Vec<u64> = of_kind.iter().map(|c| c.gap_ns).collect();
        let mut lost: Vec<u64> = of_kind.iter().map(|c| c.lost).collect();
        let mut back: Vec<u64> = of_kind.iter().map(|c| c.back_ns).collect();
        let ms = |ns: u64| ns as f64 / 1e6;
        out.push_str(&format!(
            "{:<10} {:>13.1} {:>13.1} {:>10} {:>10} {:>14.1} {:>14.1}\n",
            name,
            ms(quantile(&mut gaps, 0.5)),
            ms(quantile(&mut gaps, 0.99)),
            quantile(&mut lost, 0.5),
            quantile(&mut lost, 0.99),
            ms(quantile(&mut back, 0.5)),
            ms(quantile(&mut back, 0.99)),
        ));
    }
    out.push_str(&format!(
        "datagrams: {sent} sent, {received} received ({} lost in all)\n",
        sent.saturating_sub(received)
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_restart_costs_its_longest_pause_and_the_sequence_numbers_missing() {
        // One datagram a millisecond; 5..=9 lost in a 6 ms pause around the stop at 4.5 ms.
        let arrivals: Vec<(u64, u64)> = (0..5)
            .chain(10..20)
            .map(|seq| (seq, seq * 1_000_000))
            .collect();
        let r = Restart {
            graceful: true,
            stopped_ns: 4_500_000,
            ready_ns: 9_000_000,
        };
        let c = cost(&r, &arrivals);
        assert_eq!(c.gap_ns, 6_000_000);
        assert_eq!(c.lost, 5);
        assert_eq!(c.back_ns, 4_500_000);
    }

    #[test]
    fn quantiles_by_nearest_rank() {
        let mut v = vec![5, 1, 4, 2, 3];
        assert_eq!(quantile(&mut v, 0.5), 3);
        assert_eq!(quantile(&mut v, 0.99), 5);
        assert_eq!(quantile(&mut [], 0.5), 0);
    }
}
