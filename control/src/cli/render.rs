//! Output: a report as pretty JSON (`-o json`, for scripts) or as text for people (aligned
//! tables from [`super::table`]), and the warnings for keys skipped because they do not decode.

use std::io::Write;

use serde::Serialize;

use super::args::Output;
use super::{CliError, Skipped};

/// Prints `value` as JSON, or `text()` for people.
pub fn emit<T: Serialize>(
    out: Output,
    value: &T,
    text: impl FnOnce() -> String,
) -> Result<(), CliError> {
    let stdout = std::io::stdout();
    let mut w = std::io::BufWriter::new(stdout.lock());
    let written = match out {
        Output::Json => serde_json::to_writer_pretty(&mut w, value)
            .map_err(std::io::Error::from)
            .and_then(|()| writeln!(w)),
        Output::Text => w.write_all(text().as_bytes()),
    };
    written
        .and_then(|()| w.flush())
        .map_err(|e| CliError::Other(format!("cannot write the output: {e}")))
}

/// Keys skipped because their value does not decode (the agents skip them too).
pub fn warn(skipped: &[Skipped]) {
    for s in skipped {
        let reason = s
            .reason
            .strip_prefix(&format!("{}: ", s.key))
            .unwrap_or(&s.reason);
        eprintln!("warning: skipped {}: {reason}", s.key);
    }
}
