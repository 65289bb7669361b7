//! Flagella's dataplane as a library: wire formats, the tables the fast path reads, and the
//! batch pipeline that turns received frames into verdicts.
//!
//! The pipeline never talks to the kernel: frames are plain byte buffers with headroom
//! ([`frame::Frame`]), so every stage can be unit-tested, fuzzed and benchmarked anywhere.
//! `io` (feature `afxdp`) plugs AF_XDP UMEM frames into the same types.
//!
//! Layout:
//! - [`wire`]: zero-copy views and `Repr`s for every header the dataplane touches;
//! - [`tables`]: ipcache, endpoints, policy maps, conntrack, services (Maglev), nodes;
//! - [`pipeline`]: the stages over a batch, their counters and drop reasons;
//! - [`frame`]: the frame buffer abstraction shared by UMEM and tests;
//! - [`api`]: the control socket, and how tables and counters are published between threads;
//! - [`daemon`]: the daemon's configuration and preflight checks;
//! - [`nexthop`]: the underlay next hops, resolved from the kernel's routes and neighbours;
//! - `io` (feature `afxdp`): AF_XDP sockets, UMEM and busy-polling workers;
//! - `testutil` (feature `testutil`, and in this crate's tests): frame builders for tests, fuzz
//!   seeds and benchmarks.
//!
//! Dependencies go one way (`tests/layering.rs` checks it): `types` <- `wire`, `frame` <-
//! `tables` (with the published snapshot handle, `tables::TablesHandle`) <- `pipeline` <- `io`,
//! `api` and `nexthop` side by side (none imports another) <- `daemon` and the binary.

pub mod api;
pub mod daemon;
pub mod frame;
#[cfg(feature = "afxdp")]
pub mod io;
pub mod nexthop;
pub mod pipeline;
pub mod tables;
#[cfg(any(test, feature = "testutil"))]
pub mod testutil;
pub mod types;
pub mod wire;

pub use types::{Identity, MacAddr, Prefix, PrefixError};
