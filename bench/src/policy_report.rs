//! The `policy` benchmark's results and the Markdown table (one row per target and entry
//! count); [`crate::policy_output`] writes them with the JSON and the plots.
//! The arithmetic (medians, the generator-bound flag) and the rendering are pure and tested.

use serde::Serialize;

use crate::cli::SinkKind;
use crate::point_cost::PointCost;
use crate::ratesearch::{SearchResult, Trial};
use crate::stats::{Latency, Spread};

/// A point at or above this share of the generator's ceiling measured the generator.
pub const GENERATOR_BOUND_SHARE: f64 = 0.9;

/// One latency trial: the UDP sink, stamped frames, a fixed rate.
#[derive(Clone, Debug, Serialize)]
pub struct LatencyPoint {
    /// The fraction of the point's median found rate that was offered.
    pub fraction: f64,
    pub trial: Trial,
    pub latency: Option<Latency>,
}

/// One target at one entry count.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Point {
    pub target: String,
    pub entries: u32,
    /// Every search, in order.
    pub searches: Vec<SearchResult>,
    /// The found rates (packets per second) over the searches.
    pub rate: Option<Spread>,
    /// What flat out delivered (packets per second) over the searches.
    pub flat_out: Option<Spread>,
    pub latency: Vec<LatencyPoint>,
    /// The median rate is at least [`GENERATOR_BOUND_SHARE`] of the ceiling: the generator,
    /// not the forwarder, was the limit.
    pub generator_bound: bool,
    /// Flat out lost nothing in some search (below the ceiling: the first hop's receive work,
    /// kernel forwarding or the XDP redirect into flagella's socket, ran in the generator's
    /// own transmit path and slowed it instead of dropping; the rate is what both reach).
    pub lossless_flat_out: bool,
    /// Loss by cause and CPU time per packet over the searches' trials.
    pub cost: Option<PointCost>,
    /// Why the point has no numbers (a target that could not start, a failed trial).
    pub error: Option<String>,
}

impl Point {
    /// Fills `rate`, `flat_out` and `generator_bound` from the searches.
    pub fn summarise(&mut self, ceiling: Option<&Spread>) {
        let rates: Vec<f64> = self.searches.iter().map(|s| s.rate_pps).collect();
        let flat: Vec<f64> = self
            .searches
            .iter()
            .map(|s| s.flat_out.delivered_pps())
            .collect();
        self.rate = Spread::of(&rates);
        self.flat_out = Spread::of(&flat);
        self.generator_bound = is_generator_bound(self.rate.as_ref(), ceiling);
        self.lossless_flat_out = self.searches.iter().any(|s| s.flat_out_passed);
    }

    /// The table's "bound" cell.
    fn bound(&self) -> &'static str {
        if self.generator_bound {
            "generator"
        } else if self.lossless_flat_out {
            "backpressure"
        } else {
            ""
        }
    }
}

/// See [`Point::generator_bound`].
pub fn is_generator_bound(rate: Option<&Spread>, ceiling: Option<&Spread>) -> bool {
    match (rate, ceiling) {
        (Some(r), Some(c)) => c.median > 0.0 && r.median >= GENERATOR_BOUND_SHARE * c.median,
        _ => false,
    }
}

/// Everything one `policy` run measured.
#[derive(Clone, Debug, Default, Serialize)]
pub struct PolicyReport {
    /// The command line as run.
    pub command: String,
    /// [`crate::machine::describe`] at the start and at the end.
    pub machine_start: String,
    pub machine_end: String,
    pub duration_secs: f64,
    pub sink: Option<SinkKind>,
    pub loss_threshold: f64,
    pub trials: u32,
    pub trial_secs: f64,
    pub flows: u32,
    pub size: usize,
    /// The generator flat out into an XDP_DROP on its own first hop (offered pps).
    pub ceiling: Option<Spread>,
    pub ceiling_error: Option<String>,
    pub points: Vec<Point>,
    /// Plots that could not be drawn, and why.
    pub notes: Vec<String>,
}

fn mpps(pps: f64) -> String {
    format!("{:.3}", pps / 1e6)
}

fn micros(ns: u64) -> String {
    format!("{:.1}", ns as f64 / 1e3)
}

/// The Markdown report: what was run, on what, then one row per point.
pub fn markdown(r: &PolicyReport) -> String {
    let sink = match r.sink {
        Some(SinkKind::Udp) => "UDP socket in pod B (InDatagrams)",
        _ => "XDP_DROP on pod B's eth0 (xdp_drops)",
    };
    let mut out = format!(
        "# flagella-bench policy\n\n\
         - command: `{}`\n- start: {}\n- end: {}\n- duration: {:.0} s\n\
         - sink: {sink}; loss threshold {}%; {} search(es) per point, {} s trials; {} flows of {}-byte frames\n",
        r.command,
        r.machine_start,
        r.machine_end,
        r.duration_secs,
        r.loss_threshold * 100.0,
        r.trials,
        r.trial_secs,
        r.flows,
        r.size,
    );
    match (&r.ceiling, &r.ceiling_error) {
        (Some(c), _) => out.push_str(&format!(
            "- generator ceiling (flat out into XDP_DROP on its first hop): {} Mpps (min {}, max {})\n",
            mpps(c.median),
            mpps(c.min),
            mpps(c.max)
        )),
        (None, Some(e)) => out.push_str(&format!("- generator ceiling: not measured: {e}\n")),
        (None, None) => out.push_str("- generator ceiling: not measured\n"),
    }
    let fraction = r
        .points
        .iter()
        .find_map(|p| p.latency.first().map(|l| l.fraction));
    let at = fraction.map_or_else(|| "-".into(), |f| format!("{:.0}%", f * 100.0));
    out.push_str(&format!(
        "\n| target | entries | rate Mpps (loss <= {}%) | min-max | flat-out Mpps | p50 µs @{at} | p99 µs | p99.9 µs | bound |\n\
         |---|---|---|---|---|---|---|---|---|\n",
        r.loss_threshold * 100.0
    ));
    for p in &r.points {
        out.push_str(&row(p));
    }
    out.push_str(
        "\nrate: the highest offered rate whose loss stayed under the threshold (median of the \
         searches); flat-out: what arrived with the generator unpaced; latency: one-way, from \
         the generator's payload timestamps to the UDP sink's receive, at the stated fraction \
         of the rate; bound `generator`: the rate is at least 90% of the ceiling, so the \
         forwarder was not shown to be the limit; `backpressure`: flat out lost nothing below \
         the ceiling: the receive work on the first hop (kernel forwarding, or the XDP \
         redirect into flagella's socket) runs in the generator's own transmit path and \
         slowed it instead of dropping, so the rate is what generator and forwarder reach \
         together.\n",
    );
    out.push_str(&cost_table(&r.points));
    for n in &r.notes {
        out.push_str(&format!("\nnote: {n}\n"));
    }
    out
}

/// The second table: per point, what was lost and where, and what each forwarding thread
/// spent per delivered packet.
fn cost_table(points: &[Point]) -> String {
    let mut out = String::from(
        "\n## Loss and CPU per point (all the searches' trials)\n\n\
         | target | entries | sent | delivered | lost | flagella RX ring full | fill ring empty | flagella drops | CPU ns per delivered packet (user + kernel) |\n\
         |---|---|---|---|---|---|---|---|---|\n",
    );
    for p in points {
        let Some(c) = &p.cost else { continue };
        let loss = |f: fn(&crate::point_cost::FlagellaLoss) -> u64| {
            c.flagella
                .as_ref()
                .map_or_else(|| "-".into(), |l| f(l).to_string())
        };
        let threads: Vec<String> = c
            .threads
            .iter()
            .map(|t| {
                format!(
                    "{} {:.0} + {:.0}",
                    t.thread, t.user_ns_per_packet, t.kernel_ns_per_packet
                )
            })
            .collect();
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            p.target,
            p.entries,
            c.sent,
            c.delivered,
            c.lost(),
            loss(|l| l.sock_rx_ring_full),
            loss(|l| l.sock_fill_ring_empty),
            loss(|l| l.drops),
            if threads.is_empty() {
                "-".into()
            } else {
                threads.join("; ")
            },
        ));
    }
    out.push_str(
        "\nlost = sent - delivered over every trial of the point's searches (flat out and each \
         paced step); flagella's columns say how much of it its AF_XDP sockets dropped (RX ring \
         full: the worker fell behind; fill ring empty: no free frame) and its pipeline \
         dropped; the rest was lost before flagella (the veth, the generator's first hop) or \
         after it. CPU: each thread's user and kernel time (/proc, whole ticks) divided by the \
         delivered packets; ksoftirqd/N is the kernel's deferred receive work on CPU N (the \
         generator's and the worker's cores); receive work done inline in the generator's \
         transmit path is charged to the generator and not shown.\n",
    );
    out
}

fn row(p: &Point) -> String {
    if let Some(e) = &p.error {
        return format!(
            "| {} | {} | - | - | - | - | - | - | error: {} |\n",
            p.target,
            p.entries,
            e.replace('|', "/").replace('\n', " ")
        );
    }
    let rate = p.rate.as_ref();
    let lat = p.latency.first().and_then(|l| l.latency.as_ref());
    let cell = |f: &dyn Fn(&Latency) -> u64| lat.map_or_else(|| "-".into(), |l| micros(f(l)));
    format!(
        "| {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
        p.target,
        p.entries,
        rate.map_or_else(|| "-".into(), |s| mpps(s.median)),
        rate.map_or_else(
            || "-".into(),
            |s| format!("{}-{}", mpps(s.min), mpps(s.max))
        ),
        p.flat_out
            .as_ref()
            .map_or_else(|| "-".into(), |s| mpps(s.median)),
        cell(&|l| l.p50_ns),
        cell(&|l| l.p99_ns),
        cell(&|l| l.p999_ns),
        p.bound(),
    )
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn search(rate: f64, flat_delivered: u64, passed: bool) -> SearchResult {
        SearchResult {
            rate_pps: rate,
            flat_out: Trial {
                asked_pps: None,
                sent: 1_000_000,
                received: flat_delivered,
                seconds: 1.0,
            },
            steps: vec![],
            flat_out_passed: passed,
        }
    }

    fn ceiling(median: f64) -> Spread {
        Spread {
            median,
            min: median,
            max: median,
            n: 1,
        }
    }

    pub(crate) fn sample_report() -> PolicyReport {
        let mut flagella = Point {
            target: "flagella".into(),
            entries: 1000,
            searches: vec![
                search(400_000.0, 420_000, false),
                search(500_000.0, 510_000, false),
            ],
            ..Point::default()
        };
        let mut samples: Vec<u64> = (1..=1000).map(|i| i * 100).collect();
        flagella.latency.push(LatencyPoint {
            fraction: 0.5,
            trial: Trial::default(),
            latency: Latency::of(&mut samples),
        });
        flagella.cost = Some(PointCost {
            sent: 2_000_000,
            delivered: 930_000,
            flagella: Some(crate::point_cost::FlagellaLoss {
                rx_packets: 1_000_000,
                sock_rx_ring_full: 1_000_000,
                sock_fill_ring_empty: 0,
                drops: 70_000,
            }),
            threads: vec![crate::point_cost::ThreadCost {
                thread: "flagella worker-*".into(),
                user_ns_per_packet: 120.4,
                kernel_ns_per_packet: 300.6,
            }],
        });
        flagella.summarise(Some(&ceiling(1_000_000.0)));
        let mut iptables = Point {
            target: "iptables-nft".into(),
            entries: 1000,
            searches: vec![search(950_000.0, 1_000_000, true)],
            ..Point::default()
        };
        iptables.summarise(Some(&ceiling(1_000_000.0)));
        PolicyReport {
            command: "flagella-bench policy --quick".into(),
            machine_start: "start".into(),
            machine_end: "end".into(),
            duration_secs: 90.0,
            sink: Some(SinkKind::Xdp),
            loss_threshold: 0.001,
            trials: 2,
            trial_secs: 0.5,
            flows: 64,
            size: 64,
            ceiling: Some(ceiling(1_000_000.0)),
            ceiling_error: None,
            points: vec![
                flagella,
                iptables,
                Point {
                    target: "nft-set".into(),
                    entries: 0,
                    error: Some("nft | missing".into()),
                    ..Point::default()
                },
            ],
            notes: vec![],
        }
    }

    #[test]
    fn summary_takes_medians_and_flags_the_generator() {
        let r = sample_report();
        let f = &r.points[0];
        assert_eq!(f.rate.unwrap().median, 450_000.0);
        assert_eq!(f.flat_out.unwrap().median, 465_000.0);
        assert!(!f.generator_bound && !f.lossless_flat_out);
        assert!(r.points[1].generator_bound, "95% of the ceiling");
        assert!(r.points[1].lossless_flat_out, "flat out passed");
        let rate = Spread::of(&[950_000.0]);
        assert!(is_generator_bound(rate.as_ref(), Some(&ceiling(1e6))));
        assert!(!is_generator_bound(rate.as_ref(), Some(&ceiling(2e6))));
        assert!(!is_generator_bound(rate.as_ref(), None));
    }

    #[test]
    fn markdown_has_a_row_per_point_with_numbers() {
        let md = markdown(&sample_report());
        assert!(
            md.contains(
                "| flagella | 1000 | 0.450 | 0.400-0.500 | 0.465 | 50.0 | 99.0 | 99.9 |  |"
            ),
            "{md}"
        );
        assert!(md.contains("| iptables-nft | 1000 | 0.950 |"), "{md}");
        assert!(md.contains("| generator |"), "{md}");
        assert!(md.contains("error: nft / missing"), "{md}");
        assert!(
            md.contains("generator ceiling (flat out into XDP_DROP on its first hop): 1.000 Mpps")
        );
        assert!(md.contains("p50 µs @50%"));
        assert!(
            md.contains(
                "| flagella | 1000 | 2000000 | 930000 | 1070000 | 1000000 | 0 | 70000 | flagella worker-* 120 + 301 |"
            ),
            "{md}"
        );
        assert!(md.contains("## Loss and CPU per point"), "{md}");
        assert!(
            !md.contains("| iptables-nft | 1000 | 0 |"),
            "no cost, no row: {md}"
        );
    }
}
