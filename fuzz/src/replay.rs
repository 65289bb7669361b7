//! Replay without libFuzzer: the targets' `main` when built without `--cfg fuzzing`.
//!
//! `cargo run --release --bin <target> -- FILE_OR_DIR...` runs the fuzz body on each file (and
//! on each file of each directory), printing the name before running it, so a panic names the
//! input that caused it. Useful to check a crash artifact or a corpus on a stable toolchain
//! without cargo-fuzz.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Runs `body` on every input named in the process arguments.
pub fn main(target: &str, body: fn(&[u8])) -> ExitCode {
    let args: Vec<PathBuf> = std::env::args_os().skip(1).map(PathBuf::from).collect();
    if args.is_empty() {
        eprintln!("usage: {target} FILE_OR_DIR...   (replays inputs through the fuzz body)");
        return ExitCode::from(2);
    }
    let mut count = 0usize;
    for path in &args {
        match inputs(path) {
            Ok(files) => {
                for file in files {
                    match std::fs::read(&file) {
                        Ok(data) => {
                            eprintln!("{target}: {}", file.display());
                            body(&data);
                            count += 1;
                        }
                        Err(err) => {
                            eprintln!("{target}: cannot read {}: {err}", file.display());
                            return ExitCode::FAILURE;
                        }
                    }
                }
            }
            Err(err) => {
                eprintln!("{target}: cannot list {}: {err}", path.display());
                return ExitCode::FAILURE;
            }
        }
    }
    eprintln!("{target}: {count} inputs ran without a failure");
    ExitCode::SUCCESS
}

/// The file itself, or the files of a directory in name order.
pub fn inputs(path: &Path) -> std::io::Result<Vec<PathBuf>> {
    if !path.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut files = Vec::new();
    for entry in std::fs::read_dir(path)? {
        let entry = entry?;
        if entry.file_type()?.is_file() {
            files.push(entry.path());
        }
    }
    files.sort();
    Ok(files)
}
