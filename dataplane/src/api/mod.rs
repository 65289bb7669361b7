//! The control plane of the dataplane process: the control socket and what it publishes.
//!
//! The daemon runs [`server::ControlServer`] on its own control thread. Clients (the node agent,
//! the `flagella` CLI) send newline-delimited JSON requests ([`protocol`]); each change is
//! applied atomically to a copy of the tables ([`apply`]) and published to the workers by
//! read-copy-update ([`TablesHandle`], defined with the tables and re-exported here), so workers
//! never stop and no packet sees half of a request. Workers publish their counters back off the
//! packet path ([`publish::WorkerStats`], which implements the pipeline's
//! [`Publisher`](crate::pipeline::Publisher) that the I/O layer calls). [`control::Control`] ties these together without any I/O.
//!
//! Wiring in a daemon:
//! ```no_run
//! # use std::sync::atomic::AtomicBool;
//! # use dataplane::api::{publish::{StatsRegistry, TablesHandle}, server::ControlServer};
//! # use dataplane::tables::{LocalNode, Tables, services::Services, maglev};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let tables = TablesHandle::new(Tables::empty(LocalNode::default(), Services::new(maglev::DEFAULT_M, 42)?));
//! let stats = StatsRegistry::new();
//! let mut worker_stats = stats.register("worker-0", 64); // moved to the worker thread
//! let mut server = ControlServer::bind("/run/flagella/dataplane.sock", tables.clone(), stats)?;
//! let shutdown = AtomicBool::new(false);
//! server.run(&shutdown)?; // on the control thread; set `shutdown` from the signal handler
//! # Ok(()) }
//! ```
//! A worker loop: `let t = tables.load(); pipeline.process(&t, ifindex, &mut frames, now);
//! worker_stats.tick(&pipeline, now);`.
//!
//! See `docs/control-socket.md` for the protocol. A change set larger than one line travels as
//! the parts of a staged batch, kept unpublished by [`staging`] until its last part commits.

pub mod apply;
pub mod control;
pub mod flow;
pub mod flow_export;
pub mod interfaces;
pub mod metrics;
pub mod monitor;
pub mod protocol;
pub mod publish;
pub mod server;
pub mod staging;

pub use control::Control;
pub use interfaces::Interfaces;
pub use protocol::{Request, RequestError};
pub use publish::{IoSummary, StatsRegistry, TablesHandle, WorkerStats};
pub use server::{ControlServer, ServerError, SocketAccess};
