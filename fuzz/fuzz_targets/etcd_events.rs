//! libFuzzer target: etcd key/value sequences through the agent's decode, apply and commit (see `flagella_fuzz::etcd_events`).
#![cfg_attr(fuzzing, no_main)]

#[cfg(fuzzing)]
libfuzzer_sys::fuzz_target!(|data: &[u8]| flagella_fuzz::etcd_events(data));

/// Without `--cfg fuzzing`: replays the files named on the command line.
#[cfg(not(fuzzing))]
fn main() -> std::process::ExitCode {
    flagella_fuzz::replay::main("etcd_events", flagella_fuzz::etcd_events)
}
