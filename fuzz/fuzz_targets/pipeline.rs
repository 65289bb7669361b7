//! libFuzzer target: the whole pipeline on arbitrary frames (see `flagella_fuzz::pipeline`).
#![cfg_attr(fuzzing, no_main)]

#[cfg(fuzzing)]
libfuzzer_sys::fuzz_target!(|data: &[u8]| flagella_fuzz::pipeline(data));

/// Without `--cfg fuzzing`: replays the files named on the command line.
#[cfg(not(fuzzing))]
fn main() -> std::process::ExitCode {
    flagella_fuzz::replay::main("pipeline", flagella_fuzz::pipeline)
}
