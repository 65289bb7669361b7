//! What a worker hands to whoever publishes its state: the [`Publisher`] trait and the
//! [`IoSummary`] it carries.
//!
//! The I/O layer (`io::Worker`) owns a pipeline and calls a `Publisher` once per pass; the
//! control socket's `api::publish::WorkerStats` implements it. Defining the contract here, below
//! both, keeps `io` and `api` side by side: neither imports the other, and the daemon wires
//! them together.
//!
//! # Contract
//! Every method is called on the worker thread, off the per-packet path: [`Publisher::tick`]
//! and [`Publisher::set_busy_ns`] once per pass, [`Publisher::set_io`] about every 100 ms,
//! [`Publisher::publish`] when the worker stops. An implementation must never block the worker
//! (skip a round rather than wait for a lock) and must not allocate in `tick` except when it
//! answers a rare request (a conntrack dump).

use serde::Serialize;

use super::Pipeline;

/// Publishes a worker's pipeline counters (and whatever else it answers for) off the packet
/// path. See the module doc for when each method is called.
pub trait Publisher: std::fmt::Debug + Send {
    /// Records the worker's busy-loop nanoseconds so far; published with the next counters.
    fn set_busy_ns(&mut self, busy_ns: u64);

    /// Records the worker's I/O counters; published with the next counters.
    fn set_io(&mut self, io: IoSummary);

    /// Once per worker loop iteration (after the batch, or after an empty poll).
    fn tick(&mut self, pipeline: &Pipeline, now: u64);

    /// Publishes now (the worker's last word when it stops).
    fn publish(&mut self, pipeline: &Pipeline, now: u64);
}

/// What a worker's AF_XDP layer did, as `status` reports it per worker: the I/O counters
/// that explain a throughput figure (how full the batches are, how often the kernel is woken,
/// where frames were lost). The worker sets it about every 100 ms (reading the sockets'
/// counters costs a system call, so never per pass); all zero for a worker without sockets.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct IoSummary {
    /// Passes over the ports, and those that received something (batches).
    pub polls: u64,
    pub rx_batches: u64,
    /// `sendto` kicks of the TX rings and `poll` wakeups of the fill rings.
    pub tx_wakeups: u64,
    pub fill_wakeups: u64,
    /// Refills that found no free frame; frames recycled because a TX ring was full.
    pub fill_starved: u64,
    pub tx_ring_full: u64,
    /// The kernel's socket counters (`XDP_STATISTICS`), summed over the worker's sockets:
    /// frames it dropped, of which for a full RX ring and for an empty fill ring.
    pub sock_rx_dropped: u64,
    pub sock_rx_ring_full: u64,
    pub sock_fill_ring_empty: u64,
    /// Workers sharing queues (`pipeline::handoff`): frames this worker received for a flow
    /// another worker owns and copied to it; frames handed to this worker and processed here;
    /// frames lost on the way (the owner's ring full, too long for a slot, no free frame).
    pub handed_off: u64,
    pub taken_over: u64,
    pub handoff_dropped: u64,
}
