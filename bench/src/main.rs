//! `flagella-bench`: see `flagella-bench --help` and the crate documentation (`bench/src/lib.rs`).
//! Exit codes: 0 success, 1 a failed run, 2 usage (clap), 69 unavailable (pktgen, OVS, root),
//! 130 interrupted.

use std::process::ExitCode;

use bench::cli::{Cli, Command, ReportArgs, Target};
use bench::generator::generate;
use bench::report::{render, Row};
use bench::traffic::{format_sent, sink};
use bench::{
    cni_add, converge, forward, ingress_report, monitor_cost, scale, signals, xnode, BenchError,
};
use clap::Parser;

fn main() -> ExitCode {
    let cli = Cli::parse();
    signals::install();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("flagella-bench: {e}");
            ExitCode::from(match e {
                BenchError::Interrupted => 130,
                BenchError::Unavailable(_) | BenchError::NotRoot { .. } => 69,
                _ => 1,
            })
        }
    }
}

fn run(cli: Cli) -> Result<(), BenchError> {
    match cli.command {
        Command::Gen(args) => {
            let r = generate(&args)?;
            println!("{}", format_sent(&r));
            Ok(())
        }
        Command::Sink(args) => sink(&args, &mut std::io::stdout().lock()).map(|_| ()),
        Command::Forward(args) => {
            let m = forward::forward(args.target, args.flows, &args.run, 0)?;
            let rows = [Row {
                target: args.target.name(),
                flows: args.flows,
                result: Ok(m),
            }];
            print!("{}", render(&rows, false));
            Ok(())
        }
        Command::Report(args) => report(&args),
        Command::Xnode(args) => {
            let text = xnode::report(&args)?;
            print!("{text}");
            Ok(())
        }
        Command::Scale(args) => scale_command(&args),
        Command::Policy(args) => policy_command(&args),
        Command::XdpSink(args) => bench::xdpsink::run(&args.dev, args.duration),
        Command::Ingress(args) => {
            let text = ingress_report::report(&args)?;
            print!("{text}");
            Ok(())
        }
        Command::CniAdd(args) => {
            let before = converge::machine_notes();
            eprintln!("start: {before}");
            let text = cni_add::cni_add(&args)?;
            print!("{text}");
            println!("\nstart: {before}\nend:   {}", converge::machine_notes());
            Ok(())
        }
        Command::MonitorCost(args) => {
            let before = converge::machine_notes();
            eprintln!("start: {before}");
            let text = monitor_cost::monitor_cost(&args)?;
            print!("{text}");
            println!("\nstart: {before}\nend:   {}", converge::machine_notes());
            Ok(())
        }
        Command::Converge(args) => {
            let before = converge::machine_notes();
            eprintln!("start: {before}");
            let results = converge::converge(&args)?;
            print!("{}", converge::render(&results, args.markdown));
            println!("\nstart: {before}\nend:   {}", converge::machine_notes());
            if let Some(path) = &args.json {
                let text = serde_json::to_string_pretty(&results)
                    .map_err(|e| BenchError::Failed(format!("results as JSON: {e}")))?;
                std::fs::write(path, text)
                    .map_err(|e| BenchError::io(path.display().to_string(), e))?;
            }
            if results.iter().any(|r| r.lines.is_empty()) {
                return Err(BenchError::Failed(
                    "at least one endpoint count failed (see its note above)".into(),
                ));
            }
            Ok(())
        }
    }
}

/// `policy`: run, write the report files, print the Markdown and where the files are.
fn policy_command(args: &bench::cli::PolicyArgs) -> Result<(), BenchError> {
    let args = args.effective();
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    let mut report = bench::policybench::policy(&args, command)?;
    let files = bench::policy_output::write(&mut report, &args.out)?;
    print!("{}", bench::policy_report::markdown(&report));
    println!(
        "\nwritten: {}, {}, {}, {}",
        files.json.display(),
        files.markdown.display(),
        files.throughput_png.display(),
        files.latency_png.display()
    );
    if report.points.iter().all(|p| p.error.is_some()) {
        return Err(BenchError::Failed(
            "no point was measured (each one's error is in the table above)".into(),
        ));
    }
    Ok(())
}

/// `scale`: the table, then the machine before and after.
fn scale_command(args: &bench::cli::ScaleArgs) -> Result<(), BenchError> {
    let before = converge::machine_notes();
    eprintln!("start: {before}");
    let results = scale::scale(args)?;
    print!("{}", converge::render(&results, args.markdown));
    println!("\nstart: {before}\nend:   {}", converge::machine_notes());
    Ok(())
}

fn report(args: &ReportArgs) -> Result<(), BenchError> {
    let mut targets = vec![Target::Kernel];
    targets.extend(args.targets.iter().filter(|t| **t != Target::Kernel));
    let mut rows = Vec::new();
    let mut index = 0;
    for &flows in &args.flows {
        for &target in &targets {
            index += 1;
            eprintln!(
                "== {} over {flows} flows ({} s)",
                target.name(),
                args.run.duration
            );
            let result = forward::forward(target, flows, &args.run, index);
            rows.push(Row::measured(target.name(), flows, result)?);
        }
    }
    print!("{}", render(&rows, args.markdown));
    Ok(())
}
