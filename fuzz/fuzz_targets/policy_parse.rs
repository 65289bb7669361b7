//! libFuzzer target: policy parsing, YAML and JSON (see `flagella_fuzz::policy`).
#![cfg_attr(fuzzing, no_main)]

#[cfg(fuzzing)]
libfuzzer_sys::fuzz_target!(|data: &[u8]| flagella_fuzz::policy_parse(data));

/// Without `--cfg fuzzing`: replays the files named on the command line.
#[cfg(not(fuzzing))]
fn main() -> std::process::ExitCode {
    flagella_fuzz::replay::main("policy_parse", flagella_fuzz::policy_parse)
}
