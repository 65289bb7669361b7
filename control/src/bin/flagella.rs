//! `flagella`: the command-line tool, organised as `flagella <noun> <verb>` as Cilium's is.
//!
//! This file only starts the runtime: the arguments are `control::cli::args`, each noun's
//! command is `control::cli::<noun>`, and the rendering is `control::cli::render`. Global
//! flags: `--etcd URL[,URL...]` (default `http://127.0.0.1:2379`) and `-o text|json` (aligned
//! tables for people, JSON for scripts). Exit status: 0 when the command ran (whatever the
//! verdicts of a trace), 1 when something failed (bad input, etcd or the dataplane
//! unreachable, object not found; the message says what to do), 2 for a command-line usage
//! error.

use std::process::ExitCode;

use clap::Parser;

use control::cli::args::Cli;
use control::cli::run;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}
