//! `report`: every target over every flow count in one run, then a table with each target's
//! Mpps as a ratio of kernel forwarding measured in the same run and with the same flows, and
//! the verdict on the target (flagella at least OVS-with-conntrack's throughput at no
//! more than half its cycles per packet). The arithmetic is pure and tested; a run that failed
//! is a row with its reason, never a missing row. [`render_table`] is the table alone, with
//! the ratios to any baseline (`xnode` uses it with kernel-vxlan).

use std::fmt::Write as _;

use crate::cli::Target;
use crate::forward::Measurement;
use crate::BenchError;

/// One cell of the report: a target over a flow count, measured or failed.
#[derive(Clone, Debug)]
pub struct Row {
    /// The target's name (`Target::name`, `XnodeTarget::name`).
    pub target: &'static str,
    pub flows: u32,
    pub result: Result<Measurement, String>,
}

impl Row {
    /// The row of one measurement of a report: an interrupt or a missing privilege stops the
    /// whole report (returned as the error); any other failure is recorded in the row. Prints
    /// the outcome as it comes.
    pub fn measured(
        target: &'static str,
        flows: u32,
        result: Result<Measurement, BenchError>,
    ) -> Result<Row, BenchError> {
        let result = match result {
            Err(BenchError::Interrupted) => return Err(BenchError::Interrupted),
            Err(e @ BenchError::NotRoot { .. }) => return Err(e),
            r => r.map_err(|e| e.to_string()),
        };
        match &result {
            Ok(m) => eprintln!("   {:.3} Mpps at the sink", m.sink_pps / 1e6),
            Err(e) => eprintln!("   failed: {e}"),
        }
        Ok(Row {
            target,
            flows,
            result,
        })
    }
}

/// `x / base` when both are measured and `base` is positive.
pub fn ratio(x: f64, base: f64) -> Option<f64> {
    (base > 0.0 && x.is_finite()).then(|| x / base)
}

pub fn find<'a>(rows: &'a [Row], target: &str, flows: u32) -> Option<&'a Measurement> {
    rows.iter()
        .find(|r| r.target == target && r.flows == flows)
        .and_then(|r| r.result.as_ref().ok())
}

/// The target over one flow count: (throughput ratio flagella / ovs-ct, cycle ratio
/// flagella / ovs-ct, met).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Verdict {
    pub throughput_ratio: f64,
    pub cycles_ratio: Option<f64>,
    /// Flagella's user-mode CPU time per packet over OVS-with-conntrack's: the forwarders'
    /// own code, without the kernel transmit path they share (not part of `met`).
    pub user_time_ratio: Option<f64>,
    pub met: bool,
}

/// `None` when flagella or ovs-ct was not measured at `flows`.
pub fn verdict(rows: &[Row], flows: u32) -> Option<Verdict> {
    let f = find(rows, Target::Flagella.name(), flows)?;
    let o = find(rows, Target::OvsCt.name(), flows)?;
    let throughput_ratio = ratio(f.sink_pps, o.sink_pps)?;
    let cycles_ratio = match (f.worker_cycles_per_packet, o.worker_cycles_per_packet) {
        (Some(fc), Some(oc)) => ratio(fc, oc),
        _ => None,
    };
    let user_time_ratio = match (f.worker_user_ns_per_packet, o.worker_user_ns_per_packet) {
        (Some(fu), Some(ou)) => ratio(fu, ou),
        _ => None,
    };
    let met = throughput_ratio >= 1.0 && cycles_ratio.is_some_and(|c| c <= 0.5);
    Some(Verdict {
        throughput_ratio,
        cycles_ratio,
        user_time_ratio,
        met,
    })
}

fn opt(v: Option<f64>, decimals: usize) -> String {
    v.map_or_else(|| "-".to_string(), |x| format!("{x:.decimals$}"))
}

/// The table (plain text aligned, or Markdown), then notes and failures, then the verdicts.
pub fn render(rows: &[Row], markdown: bool) -> String {
    let mut out = render_table(rows, Target::Kernel.name(), markdown);
    let mut flows: Vec<u32> = rows.iter().map(|r| r.flows).collect();
    flows.dedup();
    let _ = writeln!(
        out,
        "\nTarget (issue 3): flagella >= ovs-ct throughput at <= 0.5x ovs-ct cycles/packet:"
    );
    for f in flows {
        match verdict(rows, f) {
            Some(v) => {
                let _ = writeln!(
                    out,
                    "- {f} flows: throughput {:.2}x ovs-ct, cycles/packet {}x ovs-ct: {} \
                     (user-mode time/packet {}x ovs-ct)",
                    v.throughput_ratio,
                    opt(v.cycles_ratio, 2),
                    if v.met { "MET" } else { "NOT MET" },
                    opt(v.user_time_ratio, 2),
                );
            }
            None => {
                let _ = writeln!(
                    out,
                    "- {f} flows: not decidable (flagella or ovs-ct not measured)"
                );
            }
        }
    }
    out
}

/// The table (plain text aligned, or Markdown) with each row's sink Mpps as a ratio of
/// `baseline`'s at the same flow count, then notes and failures.
pub fn render_table(rows: &[Row], baseline: &str, markdown: bool) -> String {
    let ratio_header = format!("x {baseline}");
    let header = [
        "flows",
        "target",
        "sink Mpps",
        ratio_header.as_str(),
        "pod B eth0 Mpps",
        "sent Mpps",
        "worker ns/pkt",
        "worker cycles/pkt",
        "user ns/pkt",
        "kernel ns/pkt",
    ];
    let mut lines: Vec<Vec<String>> = Vec::new();
    let mut notes = Vec::new();
    for r in rows {
        let mut cells = vec![r.flows.to_string(), r.target.to_string()];
        match &r.result {
            Ok(m) => {
                let kernel = find(rows, baseline, r.flows).map(|k| k.sink_pps);
                cells.extend([
                    format!("{:.3}", m.sink_pps / 1e6),
                    opt(kernel.and_then(|k| ratio(m.sink_pps, k)), 2),
                    format!("{:.3}", m.iface_pps / 1e6),
                    format!("{:.3}", m.gen_pps / 1e6),
                    opt(m.worker_ns_per_packet, 0),
                    opt(m.worker_cycles_per_packet, 0),
                    opt(m.worker_user_ns_per_packet, 0),
                    opt(m.worker_kernel_ns_per_packet, 0),
                ]);
                for n in &m.notes {
                    notes.push(format!("{} / {} flows: {n}", r.target, r.flows));
                }
            }
            Err(e) => {
                cells.extend(["failed".to_string()]);
                cells.extend(std::iter::repeat_n("-".to_string(), header.len() - 3));
                notes.push(format!("{} / {} flows FAILED: {e}", r.target, r.flows));
            }
        }
        lines.push(cells);
    }
    let mut out = String::new();
    if markdown {
        let _ = writeln!(out, "| {} |", header.join(" | "));
        let _ = writeln!(out, "|{}", "---|".repeat(header.len()));
        for l in &lines {
            let _ = writeln!(out, "| {} |", l.join(" | "));
        }
    } else {
        let widths: Vec<usize> = (0..header.len())
            .map(|i| {
                lines
                    .iter()
                    .filter_map(|l| l.get(i).map(String::len))
                    .chain([header[i].len()])
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let fmt = |cells: &[String]| {
            cells
                .iter()
                .zip(&widths)
                .map(|(c, w)| format!("{c:>w$}"))
                .collect::<Vec<_>>()
                .join("  ")
        };
        let head: Vec<String> = header.iter().map(|h| h.to_string()).collect();
        let _ = writeln!(out, "{}", fmt(&head));
        for l in &lines {
            let _ = writeln!(out, "{}", fmt(l));
        }
    }
    if !notes.is_empty() {
        let _ = writeln!(out, "\nNotes:");
        for n in &notes {
            let _ = writeln!(out, "- {n}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(target: Target, flows: u32, mpps: f64, cycles: Option<f64>) -> Row {
        Row {
            target: target.name(),
            flows,
            result: Ok(Measurement {
                flows,
                sink_pps: mpps * 1e6,
                worker_cycles_per_packet: cycles,
                ..Measurement::default()
            }),
        }
    }

    #[test]
    fn ratio_guards_zero_and_nan() {
        assert_eq!(ratio(2.0, 1.0), Some(2.0));
        assert_eq!(ratio(1.0, 0.0), None);
        assert_eq!(ratio(f64::NAN, 1.0), None);
    }

    #[test]
    fn verdict_needs_both_throughput_and_half_the_cycles() {
        let rows = vec![
            m(Target::Flagella, 64, 1.6, Some(700.0)),
            m(Target::OvsCt, 64, 1.5, Some(1500.0)),
            m(Target::Flagella, 10000, 1.6, Some(800.0)),
            m(Target::OvsCt, 10000, 1.25, Some(1500.0)),
            m(Target::Flagella, 1, 1.0, Some(100.0)),
            m(Target::OvsCt, 1, 1.5, Some(1500.0)),
        ];
        let v = verdict(&rows, 64).unwrap();
        assert!(v.met);
        assert!((v.throughput_ratio - 1.6 / 1.5).abs() < 1e-9);
        assert!((v.cycles_ratio.unwrap() - 700.0 / 1500.0).abs() < 1e-9);
        assert!(!verdict(&rows, 10000).unwrap().met, "800/1500 > 0.5");
        assert!(!verdict(&rows, 1).unwrap().met, "slower than OVS");
        assert_eq!(verdict(&rows, 7), None);
    }

    #[test]
    fn table_has_kernel_ratios_and_failures() {
        let rows = vec![
            m(Target::Kernel, 64, 2.0, None),
            m(Target::Flagella, 64, 1.0, Some(500.0)),
            Row {
                target: Target::Ovs.name(),
                flows: 64,
                result: Err("AF_XDP port did not come up".into()),
            },
        ];
        let text = render(&rows, true);
        assert!(text.contains("| 64 | flagella | 1.000 | 0.50 |"), "{text}");
        assert!(text.contains("| 64 | kernel | 2.000 | 1.00 |"), "{text}");
        assert!(
            text.contains("ovs / 64 flows FAILED: AF_XDP port did not come up"),
            "{text}"
        );
        assert!(text.contains("64 flows: not decidable"), "{text}");
        let plain = render(&rows, false);
        assert!(plain.lines().next().unwrap().contains("sink Mpps"));
    }
}
