//! libFuzzer target: request lines through the dataplane's control handler (see `flagella_fuzz::control_requests`).
#![cfg_attr(fuzzing, no_main)]

#[cfg(fuzzing)]
libfuzzer_sys::fuzz_target!(|data: &[u8]| flagella_fuzz::control_requests(data));

/// Without `--cfg fuzzing`: replays the files named on the command line.
#[cfg(not(fuzzing))]
fn main() -> std::process::ExitCode {
    flagella_fuzz::replay::main("control_requests", flagella_fuzz::control_requests)
}
