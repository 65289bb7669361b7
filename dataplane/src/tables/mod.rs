//! The state the fast path reads.
//!
//! Every table has an insert/delete API for the control socket and a lookup API for the
//! pipeline. Lookups never allocate and never lock; the daemon publishes whole [`Tables`]
//! snapshots (read-copy-update) so a worker never sees half an update. Conntrack is the
//! exception: it is written by the fast path, so each worker owns its own (see
//! `docs/architecture.md`, "Threading").

pub mod conntrack;
pub mod endpoints;
pub mod ipcache;
pub mod lpm;
pub mod maglev;
pub mod nodes;
pub mod policy;
pub mod services;
