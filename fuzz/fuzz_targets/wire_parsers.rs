//! libFuzzer target: every wire parser on arbitrary bytes (see `flagella_fuzz::wire`).
#![cfg_attr(fuzzing, no_main)]

#[cfg(fuzzing)]
libfuzzer_sys::fuzz_target!(|data: &[u8]| flagella_fuzz::wire_parsers(data));

/// Without `--cfg fuzzing`: replays the files named on the command line.
#[cfg(not(fuzzing))]
fn main() -> std::process::ExitCode {
    flagella_fuzz::replay::main("wire_parsers", flagella_fuzz::wire_parsers)
}
