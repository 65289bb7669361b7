//! Handing frames between workers: each frame is processed by the worker that owns its flow
//! (`pipeline::flow_owner`), whichever worker's queue received it (VPP's worker handoff).
//!
//! - `ring`: a single-producer single-consumer ring of fixed-size frame slots, allocated once;
//!   one per ordered pair of workers.
//! - `links`: the rings of a set of workers, as each worker holds them (an outbox per other
//!   worker, an inbox from each), and [`Handoff`], what a worker calls per received frame: keep
//!   it, or copy it to its owner's inbox; with its counters.
//!
//! Why a copy into the owner's ring rather than a UMEM descriptor: see docs/architecture.md,
//! "Many workers". In short: each UMEM keeps exactly one owner thread (its free list, its
//! rings), the copy is one `memcpy` of the frame (~20-40 ns for 64-1500 bytes) paid only by
//! the frames that arrived on another worker's queue, and a slow owner can never starve the
//! receiving worker of frames.

mod links;
mod ring;

pub use links::{mesh, Dispatch, Handoff, HandoffCounters, Links};
pub use ring::{ring, Consumer, Producer, PushError};
