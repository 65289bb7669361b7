//! `ingress`'s measurements and table: per round, the ceiling (generator and clients one veth
//! from the router, nothing forwarding), then every scenario through `iptables` and through
//! `flagella` ([`crate::ingress`]), each on a topology of its own; per row (a) the UDP flood's
//! Mpps at the sink ([`crate::forward::measure`]: same generator, sink and window as `forward`)
//! and (b) the TCP connection setup rate ([`crate::connrate`]). The table gives each flagella
//! row's ratio to iptables of the same round and flags rows at the generator's or the clients'
//! ceiling of the same round. The arithmetic is pure and tested; a failed measurement is a
//! row with its reason, never a missing row.

use std::fmt::Write as _;

use crate::cli::{IngressArgs, RunArgs, Scenario};
use crate::connrate::{any, run_clients, ConnRate, Server};
use crate::forward::{measure, prepare, Measurement, Running};
use crate::ingress::{IngressTarget, IngressTopology};
use crate::report::ratio;
use crate::topo::SINK_PORT;
use crate::xnode::median;
use crate::BenchError;

/// A row at or above this share of the ceiling measured what the generator (or the clients)
/// can do, not what the path can: flagged.
pub const CEILING_SHARE: f64 = 0.9;

/// One (scenario, target) of a round; the ceiling has no scenario.
#[derive(Clone, Debug)]
pub struct IngressRow {
    pub scenario: Option<Scenario>,
    pub target: IngressTarget,
    pub udp: Result<Measurement, String>,
    pub tcp: Result<ConnRate, String>,
    pub notes: Vec<String>,
}

impl IngressRow {
    fn label(&self) -> &'static str {
        self.scenario.map_or("-", Scenario::name)
    }

    fn mpps(&self) -> Option<f64> {
        self.udp.as_ref().ok().map(|m| m.sink_pps / 1e6)
    }

    fn conns(&self) -> Option<f64> {
        self.tcp.as_ref().ok().map(|c| c.per_second)
    }
}

/// Stops a report on an interrupt or a missing privilege; any other failure becomes the row's.
fn keep<T>(r: Result<T, BenchError>) -> Result<Result<T, String>, BenchError> {
    match r {
        Err(BenchError::Interrupted) => Err(BenchError::Interrupted),
        Err(e @ BenchError::NotRoot { .. }) => Err(e),
        r => Ok(r.map_err(|e| e.to_string())),
    }
}

/// One row: a fresh topology, the target started, the UDP flood, then the TCP clients, then
/// everything removed (guards, pass or fail).
pub fn measure_row(
    target: IngressTarget,
    scenario: Option<Scenario>,
    args: &IngressArgs,
    run_index: u32,
) -> Result<IngressRow, BenchError> {
    let mut row = IngressRow {
        scenario,
        target,
        udp: Err("not run".into()),
        tcp: Err("not run".into()),
        notes: Vec::new(),
    };
    let names = prepare("ingress", "fin", &args.run, run_index)?;
    let built = keep(IngressTopology::build(&names.prefix, &names.short))?;
    let topo = match built {
        Ok(t) => t,
        Err(e) => {
            row.udp = Err(e.clone());
            row.tcp = Err(e);
            return Ok(row);
        }
    };
    let started = keep(topo.start(
        target,
        scenario,
        &args.run,
        args.masquerade_ports.as_deref(),
        &names.dir.0,
    ))?;
    let mut running = match started {
        Ok(r) => r,
        Err(e) => {
            row.udp = Err(e.clone());
            row.tcp = Err(e);
            return Ok(row);
        }
    };
    let ends = topo.ends(scenario);
    row.udp = keep(measure(&ends, &mut running, args.flows, &args.run))?;
    row.tcp = keep(connection_rate(&topo, scenario, &args.run, args.clients))?;
    if let Running::Flagella(dataplanes) = &mut running {
        for (i, f) in dataplanes.iter_mut().enumerate() {
            if let Ok(drops) = f.drops() {
                if drops != "{}" && drops != "null" {
                    row.notes.push(format!(
                        "node {} drops after both measurements: {drops}",
                        i + 1
                    ));
                }
            }
        }
    }
    drop(running);
    drop(topo);
    Ok(row)
}

/// The server where the sink was, the clients where the generator was, aimed where it aimed.
fn connection_rate(
    topo: &IngressTopology,
    scenario: Option<Scenario>,
    run: &RunArgs,
    clients: u64,
) -> Result<ConnRate, BenchError> {
    let ends = topo.ends(scenario);
    let _server = Server::start(&ends.dst.ns, any(SINK_PORT))?;
    let window = std::time::Duration::from_secs(run.duration);
    let clients = usize::try_from(clients).unwrap_or(1);
    let rate = run_clients(&ends.src.ns, ends.aim, clients, window)?;
    if rate.completed == 0 {
        return Err(BenchError::Failed(format!(
            "no connection to {} completed ({} failed): check the target's log and counters",
            ends.aim, rate.failed
        )));
    }
    Ok(rate)
}

/// `ingress`: per round the ceiling, then each scenario through iptables and flagella; the
/// tables, the medians of the ratios, the machine and the command.
pub fn report(args: &IngressArgs) -> Result<String, BenchError> {
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    let start = crate::machine::describe();
    let mut out = String::new();
    let mut rounds = Vec::new();
    let mut index = 0;
    let mut plan = vec![(IngressTarget::Ceiling, None)];
    for &s in &args.scenarios {
        plan.push((IngressTarget::Iptables, Some(s)));
        plan.push((IngressTarget::Flagella, Some(s)));
    }
    for round in 1..=args.rounds {
        let mut rows = Vec::new();
        for &(target, scenario) in &plan {
            index += 1;
            eprintln!(
                "== round {round}: {} {} ({} flows, {} clients, {} s each)",
                scenario.map_or("ceiling", Scenario::name),
                target.name(),
                args.flows,
                args.clients,
                args.run.duration
            );
            let row = measure_row(target, scenario, args, index)?;
            eprintln!(
                "   {} Mpps, {} connections/s",
                cell(row.mpps(), 3),
                cell(row.conns(), 0)
            );
            rows.push(row);
        }
        if args.rounds > 1 {
            let _ = writeln!(out, "\nRound {round}:\n");
        }
        out.push_str(&render_round(&rows, args.markdown));
        rounds.push(rows);
    }
    out.push_str(&summarize(&rounds, &args.scenarios));
    let _ = writeln!(
        out,
        "\nflagella's masquerade ports: {} (SNAT and masquerade hold one per flow to a server, \
         closed TCP flows for 10 s); a \"bound by\" flag: at least {CEILING_SHARE} of the \
         ceiling of the same round",
        args.masquerade_ports
            .as_deref()
            .unwrap_or("61000-65535, the daemon's default")
    );
    let _ = writeln!(
        out,
        "\nstart: {start}\nend:   {}\ncommand: {command}",
        crate::machine::describe()
    );
    Ok(out)
}

fn cell(v: Option<f64>, decimals: usize) -> String {
    v.map_or_else(|| "-".to_string(), |x| format!("{x:.decimals$}"))
}

fn find(
    rows: &[IngressRow],
    target: IngressTarget,
    scenario: Option<Scenario>,
) -> Option<&IngressRow> {
    rows.iter()
        .find(|r| r.target == target && r.scenario == scenario)
}

/// What limits a row: `generator` when its Mpps is at least [`CEILING_SHARE`] of the
/// ceiling's, `clients` likewise for connections per second; empty when neither.
pub fn bound(row: &IngressRow, ceiling: Option<&IngressRow>) -> String {
    let mut flags = Vec::new();
    if row.target == IngressTarget::Ceiling {
        return "(the ceiling)".into();
    }
    let at_ceiling = |x: Option<f64>, c: Option<f64>| matches!((x, c), (Some(x), Some(c)) if c > 0.0 && x >= CEILING_SHARE * c);
    if at_ceiling(row.mpps(), ceiling.and_then(IngressRow::mpps)) {
        flags.push("generator-bound");
    }
    if at_ceiling(row.conns(), ceiling.and_then(IngressRow::conns)) {
        flags.push("client-bound");
    }
    flags.join(", ")
}

/// One round's table, then its notes and failures.
pub fn render_round(rows: &[IngressRow], markdown: bool) -> String {
    let header = [
        "scenario",
        "target",
        "sink Mpps",
        "sent Mpps",
        "Mpps x iptables",
        "conn/s",
        "conn/s x iptables",
        "failed conns",
        "bound by",
    ];
    let ceiling = find(rows, IngressTarget::Ceiling, None);
    let mut lines: Vec<Vec<String>> = Vec::new();
    let mut notes = Vec::new();
    for row in rows {
        let base = find(rows, IngressTarget::Iptables, row.scenario)
            .filter(|_| row.target == IngressTarget::Flagella);
        let mpps_ratio = base.and_then(|b| ratio(row.mpps()?, b.mpps()?));
        let conn_ratio = base.and_then(|b| ratio(row.conns()?, b.conns()?));
        let sent = row.udp.as_ref().ok().map(|m| m.gen_pps / 1e6);
        lines.push(vec![
            row.label().to_string(),
            row.target.name().to_string(),
            cell(row.mpps(), 3),
            cell(sent, 3),
            cell(mpps_ratio, 2),
            cell(row.conns(), 0),
            cell(conn_ratio, 2),
            row.tcp
                .as_ref()
                .map_or("-".into(), |c| c.failed.to_string()),
            bound(row, ceiling),
        ]);
        let who = format!("{} {}", row.label(), row.target.name());
        if let Err(e) = &row.udp {
            notes.push(format!("{who}: UDP failed: {e}"));
        }
        if let Err(e) = &row.tcp {
            notes.push(format!("{who}: TCP failed: {e}"));
        }
        if let Ok(m) = &row.udp {
            notes.extend(m.notes.iter().map(|n| format!("{who}: {n}")));
        }
        notes.extend(row.notes.iter().map(|n| format!("{who}: {n}")));
    }
    let mut out = table(&header, &lines, markdown);
    for n in notes {
        let _ = writeln!(out, "- {n}");
    }
    out
}

/// Aligned plain text, or Markdown.
fn table(header: &[&str], lines: &[Vec<String>], markdown: bool) -> String {
    let mut out = String::new();
    if markdown {
        let _ = writeln!(out, "| {} |", header.join(" | "));
        let _ = writeln!(out, "|{}", "---|".repeat(header.len()));
        for l in lines {
            let _ = writeln!(out, "| {} |", l.join(" | "));
        }
        return out;
    }
    let widths: Vec<usize> = (0..header.len())
        .map(|i| {
            lines
                .iter()
                .map(|l| l[i].len())
                .chain([header[i].len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: Vec<&str>| {
        cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
    };
    let _ = writeln!(out, "{}", line(header.to_vec()));
    for l in lines {
        let _ = writeln!(out, "{}", line(l.iter().map(String::as_str).collect()));
    }
    out
}

/// Per scenario: flagella's Mpps and conn/s over iptables' in each round, and their medians.
pub fn summarize(rounds: &[Vec<IngressRow>], scenarios: &[Scenario]) -> String {
    let mut out = String::from("\nflagella / iptables in the same round (per round; median):\n");
    for &s in scenarios {
        let per = |value: fn(&IngressRow) -> Option<f64>| -> (String, Option<f64>) {
            let ratios: Vec<Option<f64>> = rounds
                .iter()
                .map(|rows| {
                    let f = find(rows, IngressTarget::Flagella, Some(s))?;
                    let k = find(rows, IngressTarget::Iptables, Some(s))?;
                    ratio(value(f)?, value(k)?)
                })
                .collect();
            let measured: Vec<f64> = ratios.iter().flatten().copied().collect();
            let cells: Vec<String> = ratios.iter().map(|r| cell(*r, 2)).collect();
            (cells.join(", "), median(&measured))
        };
        let (mpps, mpps_median) = per(IngressRow::mpps);
        let (conns, conns_median) = per(IngressRow::conns);
        let _ = writeln!(
            out,
            "- {}: Mpps {mpps}; median {}. conn/s {conns}; median {}",
            s.name(),
            cell(mpps_median, 2),
            cell(conns_median, 2)
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(target: IngressTarget, scenario: Option<Scenario>, mpps: f64, conns: f64) -> IngressRow {
        IngressRow {
            scenario,
            target,
            udp: Ok(Measurement {
                sink_pps: mpps * 1e6,
                gen_pps: 2.0 * mpps * 1e6,
                ..Measurement::default()
            }),
            tcp: Ok(ConnRate {
                per_second: conns,
                ..ConnRate::default()
            }),
            notes: Vec::new(),
        }
    }

    fn round(flagella_mpps: f64) -> Vec<IngressRow> {
        let s = Some(Scenario::NodeportDsr);
        vec![
            row(IngressTarget::Ceiling, None, 1.0, 1000.0),
            row(IngressTarget::Iptables, s, 0.2, 800.0),
            row(IngressTarget::Flagella, s, flagella_mpps, 950.0),
        ]
    }

    #[test]
    fn the_table_has_ratios_to_iptables_and_flags_the_ceiling() {
        let text = render_round(&round(0.3), true);
        let flagella = text
            .lines()
            .find(|l| l.contains("| flagella |"))
            .expect("a flagella line");
        assert_eq!(
            flagella,
            "| nodeport-dsr | flagella | 0.300 | 0.600 | 1.50 | 950 | 1.19 | 0 | client-bound |"
        );
        let iptables = text.lines().find(|l| l.contains("| iptables |")).unwrap();
        assert!(
            iptables.contains("| 0.200 | 0.400 | - | 800 | - |"),
            "{iptables}"
        );
        let text = render_round(&round(0.95), false);
        assert!(text.contains("generator-bound, client-bound"), "{text}");
    }

    #[test]
    fn failures_are_rows_with_reasons() {
        let mut rows = round(0.3);
        rows[2].tcp = Err("no connection completed".into());
        let text = render_round(&rows, true);
        assert!(
            text.contains("| nodeport-dsr | flagella | 0.300 | 0.600 | 1.50 | - | - | - |"),
            "{text}"
        );
        assert!(
            text.contains("- nodeport-dsr flagella: TCP failed: no connection completed"),
            "{text}"
        );
    }

    #[test]
    fn summary_has_each_rounds_ratio_and_the_median() {
        let text = summarize(
            &[round(0.3), round(0.1), round(0.2)],
            &[Scenario::NodeportDsr, Scenario::Masquerade],
        );
        assert!(
            text.contains("- nodeport-dsr: Mpps 1.50, 0.50, 1.00; median 1.00. conn/s 1.19, 1.19, 1.19; median 1.19"),
            "{text}"
        );
        assert!(
            text.contains("- masquerade: Mpps -, -, -; median -."),
            "{text}"
        );
    }
}
