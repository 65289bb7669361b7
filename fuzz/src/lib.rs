//! Fuzz bodies for Flagella's dataplane and policy compiler, as plain functions.
//!
//! The libFuzzer targets in `fuzz_targets/` are one-line wrappers around these functions, so the
//! same code runs three ways:
//! - under cargo-fuzz (`cargo fuzz run <target>`, see `README.md`), coverage-guided;
//! - in `tests/seeds.rs`, a plain `cargo test` that replays the seed corpus and a few thousand
//!   pseudo-random inputs on a stable toolchain, without cargo-fuzz or libFuzzer;
//! - as replay binaries (`cargo run --bin <target> -- FILE...`) when built without `--cfg
//!   fuzzing`.
//!
//! Contract: each function accepts any byte string and returns normally; it panics only when
//! a property of the dataplane is broken (a crash, a failed round trip, an inconsistent
//! counter), which is what the fuzzer reports.

pub mod control_requests;
pub mod etcd_events;
pub mod pipeline;
pub mod policy;
pub mod policy_oracle;
pub mod replay;
pub mod wire;

pub use control_requests::control_requests;
pub use etcd_events::etcd_events;
pub use pipeline::pipeline;
pub use policy::policy_parse;
pub use wire::wire_parsers;
