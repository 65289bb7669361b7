//! What forwarding cost and lost during one `policy` point, over all its searches' trials:
//! flagella's own loss counters (frames its AF_XDP sockets dropped for a full RX ring or an
//! empty fill ring, and the pipeline's drops by reason), so that loss at low offered rates is
//! attributed rather than guessed, and the CPU time per delivered packet of each forwarding
//! thread: flagella's `worker-*` and the kernel's `ksoftirqd/<cpu>` of the generator's and the
//! worker's cores (where the kernel defers receive work it could not finish inline, which is
//! where kernel forwarding's cost shows when it is not charged to the generator itself).
//!
//! Readings are taken before the first search and after the last; [`cost_between`] turns two
//! of them into the report's numbers (pure, tested here).

use serde::Serialize;
use serde_json::Value;

use crate::cputime::{threads_cpu_time, CpuTime};
use crate::ratesearch::SearchResult;
use crate::targets::Flagella;
use crate::BenchError;

/// flagella's counters at one instant (summed over workers).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SocketCounters {
    pub rx_packets: u64,
    pub sock_rx_ring_full: u64,
    pub sock_fill_ring_empty: u64,
    /// The pipeline's drops, every reason summed.
    pub drops: u64,
}

/// Everything read at one instant.
#[derive(Clone, Debug, Default)]
pub struct CostSnapshot {
    /// (thread label, its CPU time) for every forwarding thread found.
    pub threads: Vec<(String, CpuTime)>,
    /// flagella only.
    pub flagella: Option<SocketCounters>,
}

/// flagella's loss over the point, by cause.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct FlagellaLoss {
    pub rx_packets: u64,
    pub sock_rx_ring_full: u64,
    pub sock_fill_ring_empty: u64,
    pub drops: u64,
}

/// One thread's CPU time per delivered packet over the point.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ThreadCost {
    pub thread: String,
    pub user_ns_per_packet: f64,
    pub kernel_ns_per_packet: f64,
}

/// The point's cost and loss accounting.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct PointCost {
    /// Frames the generator sent over the searches' trials.
    pub sent: u64,
    /// Frames the sink counted over them (the denominator of the per-packet figures).
    pub delivered: u64,
    pub flagella: Option<FlagellaLoss>,
    pub threads: Vec<ThreadCost>,
}

impl PointCost {
    /// Frames sent and never counted at the sink (0 when the sink counted more: the XDP sink
    /// also counts the kernel's strays on the pod's link, IPv6 router solicitations).
    pub fn lost(&self) -> u64 {
        self.sent.saturating_sub(self.delivered)
    }
}

/// The sum of the numbers in `status`'s `counters.drops` object (reason -> count).
pub fn total_drops(status: &Value) -> u64 {
    status["counters"]["drops"]
        .as_object()
        .map_or(0, |m| m.values().filter_map(Value::as_u64).sum())
}

/// (sent, delivered) over every trial of `searches`: flat out and each paced step.
pub fn trial_totals(searches: &[SearchResult]) -> (u64, u64) {
    searches
        .iter()
        .flat_map(|s| std::iter::once(&s.flat_out).chain(&s.steps))
        .fold((0, 0), |(sent, got), t| (sent + t.sent, got + t.received))
}

/// The report's numbers from two readings and the searches between them. A thread is kept
/// only when both readings have it; with nothing delivered there is no per-packet figure.
pub fn cost_between(
    start: &CostSnapshot,
    end: &CostSnapshot,
    searches: &[SearchResult],
) -> PointCost {
    let (sent, delivered) = trial_totals(searches);
    let per_packet = |ns: u64| ns as f64 / delivered as f64;
    let threads = if delivered == 0 {
        Vec::new()
    } else {
        end.threads
            .iter()
            .filter_map(|(name, e)| {
                let (_, s) = start.threads.iter().find(|(n, _)| n == name)?;
                let d = e.since(s);
                Some(ThreadCost {
                    thread: name.clone(),
                    user_ns_per_packet: per_packet(d.user_ns),
                    kernel_ns_per_packet: per_packet(d.kernel_ns),
                })
            })
            .collect()
    };
    let flagella = match (start.flagella, end.flagella) {
        (Some(s), Some(e)) => Some(FlagellaLoss {
            rx_packets: e.rx_packets.saturating_sub(s.rx_packets),
            sock_rx_ring_full: e.sock_rx_ring_full.saturating_sub(s.sock_rx_ring_full),
            sock_fill_ring_empty: e
                .sock_fill_ring_empty
                .saturating_sub(s.sock_fill_ring_empty),
            drops: e.drops.saturating_sub(s.drops),
        }),
        _ => None,
    };
    PointCost {
        sent,
        delivered,
        flagella,
        threads,
    }
}

/// The PID of the kernel thread named exactly `comm` (`ksoftirqd/1`), from /proc.
pub fn kernel_thread_pid(comm: &str) -> Option<u32> {
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let name = std::fs::read_to_string(e.path().join("comm")).ok()?;
        (name.trim_end() == comm).then_some(pid)
    })
}

/// `ksoftirqd/<cpu>`'s CPU time for each of `cpus` (each once; a missing thread is skipped:
/// a kernel with threaded softirqs elsewhere simply has no such figure).
pub fn softirq_threads(cpus: &[usize]) -> Vec<(String, CpuTime)> {
    let mut seen = Vec::new();
    let mut out = Vec::new();
    for &cpu in cpus {
        if seen.contains(&cpu) {
            continue;
        }
        seen.push(cpu);
        let name = format!("ksoftirqd/{cpu}");
        let time =
            kernel_thread_pid(&name).and_then(|pid| threads_cpu_time(pid, "ksoftirqd/").ok());
        if let Some(t) = time {
            out.push((name, t));
        }
    }
    out
}

/// Reads everything: flagella's worker threads and counters when `flagella` is given, and the
/// softirq threads of `cpus`.
pub fn snapshot(
    flagella: Option<&mut Flagella>,
    cpus: &[usize],
) -> Result<CostSnapshot, BenchError> {
    let mut snap = CostSnapshot {
        threads: Vec::new(),
        flagella: None,
    };
    if let Some(f) = flagella {
        snap.threads
            .push(("flagella worker-*".into(), f.cpu_time()?));
        let s = f.sample()?;
        snap.flagella = Some(SocketCounters {
            rx_packets: s.rx_packets,
            sock_rx_ring_full: s.sock_rx_ring_full,
            sock_fill_ring_empty: s.sock_fill_ring_empty,
            drops: total_drops(&f.call(serde_json::json!({"op": "status"}))?),
        });
    }
    snap.threads.extend(softirq_threads(cpus));
    Ok(snap)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ratesearch::Trial;

    fn trial(sent: u64, received: u64) -> Trial {
        Trial {
            asked_pps: None,
            sent,
            received,
            seconds: 1.0,
        }
    }

    fn cpu(user_ns: u64, kernel_ns: u64) -> CpuTime {
        CpuTime { user_ns, kernel_ns }
    }

    fn searches() -> Vec<SearchResult> {
        vec![SearchResult {
            rate_pps: 1000.0,
            flat_out: trial(1000, 600),
            steps: vec![trial(500, 400)],
            flat_out_passed: false,
        }]
    }

    #[test]
    fn totals_count_flat_out_and_every_step() {
        assert_eq!(trial_totals(&searches()), (1500, 1000));
        assert_eq!(trial_totals(&[]), (0, 0));
    }

    #[test]
    fn cost_is_per_delivered_packet_and_loss_by_cause() {
        let start = CostSnapshot {
            threads: vec![
                ("flagella worker-*".into(), cpu(1_000, 2_000)),
                ("ksoftirqd/0".into(), cpu(0, 0)),
            ],
            flagella: Some(SocketCounters {
                rx_packets: 10,
                sock_rx_ring_full: 5,
                sock_fill_ring_empty: 1,
                drops: 2,
            }),
        };
        let end = CostSnapshot {
            threads: vec![
                ("flagella worker-*".into(), cpu(101_000, 52_000)),
                ("ksoftirqd/0".into(), cpu(0, 30_000)),
                // Only in the second reading: no difference to take.
                ("ksoftirqd/1".into(), cpu(0, 99)),
            ],
            flagella: Some(SocketCounters {
                rx_packets: 1_010,
                sock_rx_ring_full: 405,
                sock_fill_ring_empty: 1,
                drops: 102,
            }),
        };
        let c = cost_between(&start, &end, &searches());
        assert_eq!((c.sent, c.delivered, c.lost()), (1500, 1000, 500));
        assert_eq!(
            c.flagella,
            Some(FlagellaLoss {
                rx_packets: 1000,
                sock_rx_ring_full: 400,
                sock_fill_ring_empty: 0,
                drops: 100,
            })
        );
        assert_eq!(
            c.threads,
            vec![
                ThreadCost {
                    thread: "flagella worker-*".into(),
                    user_ns_per_packet: 100.0,
                    kernel_ns_per_packet: 50.0,
                },
                ThreadCost {
                    thread: "ksoftirqd/0".into(),
                    user_ns_per_packet: 0.0,
                    kernel_ns_per_packet: 30.0,
                },
            ]
        );
    }

    #[test]
    fn nothing_delivered_has_no_per_packet_figure() {
        let snap = CostSnapshot {
            threads: vec![("ksoftirqd/0".into(), cpu(0, 0))],
            flagella: None,
        };
        let none = [SearchResult {
            flat_out: trial(100, 0),
            ..SearchResult::default()
        }];
        let c = cost_between(&snap, &snap, &none);
        assert!(c.threads.is_empty());
        assert_eq!(c.flagella, None);
        assert_eq!(c.lost(), 100);
    }

    #[test]
    fn drops_are_summed_over_reasons() {
        let status =
            serde_json::json!({"counters": {"drops": {"policy_denied": 3, "no_route": 4}}});
        assert_eq!(total_drops(&status), 7);
        assert_eq!(total_drops(&serde_json::json!({"counters": {}})), 0);
        assert_eq!(total_drops(&serde_json::json!(null)), 0);
    }

    #[test]
    fn softirq_threads_are_found_on_this_machine() {
        // Every Linux kernel has ksoftirqd/0 (softirqs deferred from CPU 0).
        assert_eq!(kernel_thread_pid("no-such-kernel-thread/0"), None);
        if kernel_thread_pid("ksoftirqd/0").is_some() {
            let found = softirq_threads(&[0, 0]);
            assert_eq!(found.len(), 1, "each CPU once");
            assert_eq!(found[0].0, "ksoftirqd/0");
        }
    }
}
