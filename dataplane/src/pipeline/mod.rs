//! The batch pipeline: stages over a batch of frames, their counters and drop reasons.
//!
//! [`Pipeline::process`] runs every stage over the whole batch in turn (VPP-style): parse ->
//! decap -> identity -> service -> conntrack -> policy -> route. A stage is a function over a
//! [`batch::Batch`], which skips frames whose verdict is already decided, counts the frames
//! entering the stage and records its drops. Stages take no locks, allocate nothing, log nothing
//! and return no `Result`: every exit is a counted verdict. See `docs/architecture.md` for the
//! order and its reasons.
//!
//! # Structure
//! - Stages (one file each): `parse`, `decap`, `identity`, `service`, `conntrack`, `policy`,
//!   `route`. A stage never calls another stage: stages communicate only through
//!   [`PacketMeta`] (`tests/layering.rs` checks that no stage file names another).
//! - Helpers several stages need, each in its own module: `headers` (header parsing: parse,
//!   decap), `nat` (DNAT, reverse NAT, undoing them: service, conntrack, `icmp_error`),
//!   `resolve` (destination resolution: identity, service), `l4_checksum` (completion: identity),
//!   `prefetch` (frame headers: the pipeline; policy-map slots: conntrack), `ct_commit`
//!   (conntrack entry of an allowed new flow: policy), `icmp_error` ("too big" errors: route),
//!   `masquerade` (pods' flows to the world leave with the node's address: route; their
//!   replies come back to the pod: identity).
//! - A frame's fate is held in one place, `PacketMeta::verdict`, from the parse stage until the
//!   I/O layer disposes of the frame: [`Pipeline::process`] returns a [`Verdicts`] view of it,
//!   not a copy.
//! - [`publisher`]: what a worker hands to whoever publishes its counters (the control socket
//!   implements it; the I/O layer calls it), so that `io` and `api` need not know each other.

pub mod counters;
pub mod drop;
pub mod event;
pub mod event_ring;
pub mod flow_owner;
pub mod handoff;
pub mod meta;
pub mod publisher;

mod batch;
mod conntrack;
mod ct_commit;
mod decap;
mod headers;
mod icmp_error;
mod identity;
mod l4_checksum;
mod masquerade;
mod nat;
mod parse;
mod policy;
mod prefetch;
mod resolve;
mod route;
mod service;
mod service_snat;

pub use crate::tables::snat::MasqueradeConfig;
pub use counters::{Counters, Direction, InterfaceTraffic, Stage};
pub use drop::DropReason;
pub use meta::{PacketMeta, Verdict};
pub use publisher::{IoSummary, Publisher};

use batch::{Batch, Ctx, Ingress};
use event::Origin;
use event_ring::EventSink;

use crate::frame::Frame;
use crate::tables::conntrack::{Conntrack, CtConfig, Restored};
use crate::tables::snat::Masquerade;
use crate::tables::Tables;

/// Default frames per batch.
pub const DEFAULT_BATCH: usize = 64;
/// Largest batch a pipeline accepts.
pub const MAX_BATCH: usize = 256;

/// A full conntrack GC sweep every 10 s: well under the shortest timeout that matters for
/// memory (FIN, 10 s) times the table's slack, and a few slots per batch at any rate.
pub const DEFAULT_GC_SWEEP_NS: u64 = 10_000_000_000;
/// At most this many slots per GC step, so that a long pause never turns into a long stall.
const MAX_GC_SLOTS_PER_STEP: u64 = 256;

/// How a pipeline is set up.
#[derive(Clone, Debug)]
pub struct PipelineConfig {
    /// Frames per batch, 1..=256.
    pub batch_size: usize,
    pub conntrack: CtConfig,
    /// The conntrack GC examines the whole table once per this many nanoseconds, a few slots
    /// after each batch (and on idle passes, [`Pipeline::maintain`]), whatever the packet rate.
    pub ct_gc_sweep_ns: u64,
    /// Recompute TCP/UDP checksums of frames from pods: AF_XDP frames carry no
    /// CHECKSUM_PARTIAL flag, so a veth pod's frame holds only the pseudo-header sum.
    pub complete_l4_checksums: bool,
    /// Masquerade pods' flows to the world to the node's address (`None`: never).
    pub masquerade: Option<MasqueradeConfig>,
    /// Keep conntrack in this file, mapped shared, so that the next process continues its
    /// flows (`tables::conntrack::state_file`); `None`: in this process's memory only.
    pub conntrack_state: Option<std::path::PathBuf>,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        PipelineConfig {
            batch_size: DEFAULT_BATCH,
            conntrack: CtConfig::default(),
            ct_gc_sweep_ns: DEFAULT_GC_SWEEP_NS,
            complete_l4_checksums: false,
            masquerade: None,
            conntrack_state: None,
        }
    }
}

/// Why a pipeline could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PipelineError {
    #[error("batch size {0} is out of range: use 1 to {MAX_BATCH} (64 is a good default)")]
    BatchSize(usize),
    #[error("conntrack GC sweep period must be more than 0 ns (10 s is a good default)")]
    GcSweep,
    #[error("{0}")]
    Conntrack(#[from] crate::tables::conntrack::CtError),
}

/// One worker's pipeline: its conntrack table, counters and per-batch scratch space.
#[derive(Debug)]
pub struct Pipeline {
    batch_size: usize,
    gc: GcPacer,
    complete_l4_checksums: bool,
    masq: Option<Masquerade>,
    /// One entry per frame of the current (or last) `process` call: grown only when a call
    /// passes more frames than `batch_size`.
    meta: Vec<PacketMeta>,
    /// Frames of the last `process` call.
    last_len: usize,
    ct: Conntrack,
    /// How the conntrack table of a state file came to be (`None`: not in a file).
    ct_restored: Option<Restored>,
    counters: Counters,
    /// Where the monitor's events go, if the daemon set it up ([`Pipeline::report_events`]).
    events: Option<EventSink>,
}

impl Pipeline {
    /// Allocates everything the pipeline will ever use (conntrack included).
    pub fn new(cfg: PipelineConfig) -> Result<Self, PipelineError> {
        if cfg.batch_size == 0 || cfg.batch_size > MAX_BATCH {
            return Err(PipelineError::BatchSize(cfg.batch_size));
        }
        if cfg.ct_gc_sweep_ns == 0 {
            return Err(PipelineError::GcSweep);
        }
        let (ct, ct_restored) = match &cfg.conntrack_state {
            Some(path) => {
                let (ct, restored) = Conntrack::with_state_file(cfg.conntrack, path)?;
                (ct, Some(restored))
            }
            None => (Conntrack::new(cfg.conntrack), None),
        };
        Ok(Pipeline {
            batch_size: cfg.batch_size,
            gc: GcPacer::new(cfg.ct_gc_sweep_ns),
            complete_l4_checksums: cfg.complete_l4_checksums,
            masq: cfg.masquerade.map(Masquerade::new),
            meta: vec![PacketMeta::EMPTY; cfg.batch_size],
            last_len: 0,
            ct,
            ct_restored,
            counters: Counters::default(),
            events: None,
        })
    }

    /// Runs the stages over `frames`, all received on interface `ingress_ifindex`, at time `now`
    /// (nanoseconds of a monotonic clock, read once per batch by the caller). Frames may be
    /// rewritten, grown at the front (encapsulation) or shrunk (decapsulation). Returns one
    /// verdict per frame, in order: a view of each frame's `PacketMeta::verdict`, valid until
    /// the next call. Pass at most `batch_size` frames to stay allocation-free; longer slices
    /// are processed in chunks (and the metadata array grows to hold them all).
    pub fn process<B: AsRef<[u8]> + AsMut<[u8]>>(
        &mut self,
        tables: &Tables,
        ingress_ifindex: u32,
        frames: &mut [Frame<B>],
        now: u64,
    ) -> Verdicts<'_> {
        self.process_until(tables, ingress_ifindex, frames, now, Stage::Route)
    }

    /// [`process`](Self::process), stopping after stage `last` (benchmarks measure the
    /// cumulative cost of the stages this way). Frames still undecided after `last` come back as
    /// `Drop(NoRoute)` and are counted so: not for forwarding.
    #[doc(hidden)]
    pub fn process_until<B: AsRef<[u8]> + AsMut<[u8]>>(
        &mut self,
        tables: &Tables,
        ingress_ifindex: u32,
        frames: &mut [Frame<B>],
        now: u64,
        last: Stage,
    ) -> Verdicts<'_> {
        let n = frames.len();
        if self.meta.len() < n {
            self.meta.resize(n, PacketMeta::EMPTY);
        }
        let ingress = classify_ingress(tables, ingress_ifindex);
        // One relaxed load per call: nothing more is paid while no one listens.
        let mut events = self.events.as_mut().filter(|sink| sink.listening());
        let origin = Origin {
            ifindex: ingress_ifindex,
            from_pod: matches!(ingress, Ingress::Pod(_)),
            now,
        };
        let metas = self.meta[..n].chunks_mut(self.batch_size);
        for (chunk, meta) in frames.chunks_mut(self.batch_size).zip(metas) {
            let mut batch = Batch::new(chunk, meta);
            let mut ctx = Ctx {
                t: tables,
                c: &mut self.counters,
                ct: &mut self.ct,
                ingress,
                ingress_ifindex,
                now,
                complete_l4_checksums: self.complete_l4_checksums,
                masq: self.masq.as_mut(),
            };
            prefetch::headers(batch.frames());
            batch.receive(ctx.c, ingress_ifindex);
            if let Some(sink) = events.as_deref_mut() {
                sink.keep_received(batch.frames());
            }
            run_stages(&mut batch, &mut ctx, last);
            let events = events.as_deref_mut().map(|sink| (sink, &origin));
            batch.finish(ctx.c, origin.from_pod, events);
        }
        self.last_len = n;
        self.maintain(now);
        Verdicts {
            meta: &self.meta[..n],
        }
    }

    /// Runs the conntrack GC slots due at `now` (paced by time, see
    /// [`PipelineConfig::ct_gc_sweep_ns`]). [`process`](Self::process) calls it after every
    /// batch; a worker calls it on passes that received nothing, so that an idle table is
    /// collected too. Returns the entries freed.
    #[inline]
    pub fn maintain(&mut self, now: u64) -> usize {
        match self.gc.slots_due(now, self.ct.capacity()) {
            0 => 0,
            due => self.ct.gc(now, due),
        }
    }

    /// Metadata of the frames of the last `process` call, in frame order (tests and tracing).
    pub fn last_meta(&self) -> &[PacketMeta] {
        &self.meta[..self.last_len]
    }

    /// Reports drops (and sampled policy verdicts, traces) to `sink` while someone listens to
    /// it: the monitor's per-worker ring.
    pub fn report_events(&mut self, sink: EventSink) {
        self.events = Some(sink);
    }

    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    pub fn conntrack(&self) -> &Conntrack {
        &self.ct
    }

    /// How the conntrack table came to be when it lives in a state file (kept from the
    /// previous process, created, or rebuilt and why); `None` when it does not.
    pub fn conntrack_restored(&self) -> Option<&Restored> {
        self.ct_restored.as_ref()
    }

    pub fn conntrack_mut(&mut self) -> &mut Conntrack {
        &mut self.ct
    }

    pub fn batch_size(&self) -> usize {
        self.batch_size
    }
}

/// Turns elapsed time into conntrack slots to examine: `capacity` slots per `sweep_ns`.
///
/// Pacing by time rather than a fixed number of slots per batch keeps the GC's share of a
/// packet's cost near zero at high rates (a fixed 64 slots per batch cost ~10 ns/packet and
/// swept a 256k-slot table 40 times a second at 10 Mpps) while an idle or slow worker still
/// sweeps the whole table once per period.
#[derive(Debug)]
struct GcPacer {
    sweep_ns: u64,
    last_ns: Option<u64>,
    /// Elapsed nanoseconds times capacity not yet turned into slots (`< sweep_ns` after each
    /// step unless the step was capped; never above one full sweep).
    credit: u128,
}

impl GcPacer {
    fn new(sweep_ns: u64) -> GcPacer {
        GcPacer {
            sweep_ns: sweep_ns.max(1),
            last_ns: None,
            credit: 0,
        }
    }

    fn slots_due(&mut self, now: u64, capacity: usize) -> usize {
        let last = self.last_ns.replace(now).unwrap_or(now);
        let elapsed = now.saturating_sub(last);
        let sweep = u128::from(self.sweep_ns);
        let full = sweep * capacity as u128;
        self.credit = (self.credit + u128::from(elapsed) * capacity as u128).min(full);
        let due = (self.credit / sweep).min(u128::from(MAX_GC_SLOTS_PER_STEP));
        self.credit -= due * sweep;
        due as usize
    }
}

fn classify_ingress(t: &Tables, ifindex: u32) -> Ingress {
    if let Some(ep) = t.endpoints.by_ifindex(ifindex) {
        Ingress::Pod(ep.id())
    } else if t.node.uplink_ifindex == Some(ifindex) {
        Ingress::Uplink
    } else if t.node.host_link.is_some_and(|h| h.ifindex == ifindex) {
        Ingress::Host
    } else {
        Ingress::Unknown
    }
}

/// Runs the stages in order, up to and including `last` (`Stage::Route`: all of them).
fn run_stages<B: AsRef<[u8]> + AsMut<[u8]>>(
    batch: &mut Batch<'_, B>,
    ctx: &mut Ctx<'_>,
    last: Stage,
) {
    parse::run(batch, ctx);
    if last == Stage::Parse {
        return;
    }
    decap::run(batch, ctx);
    if last == Stage::Decap {
        return;
    }
    identity::run(batch, ctx);
    if last == Stage::Identity {
        return;
    }
    service::run(batch, ctx);
    if last == Stage::Service {
        return;
    }
    conntrack::run(batch, ctx);
    if last == Stage::Conntrack {
        return;
    }
    policy::run(batch, ctx);
    if last == Stage::Policy {
        return;
    }
    route::run(batch, ctx);
}

/// The verdicts of the frames of one [`Pipeline::process`] call, in frame order.
///
/// A view, not a copy: entry `i` is `PacketMeta::verdict` of frame `i`, the one place a frame's
/// fate is held from the parse stage until the I/O layer disposes of the frame. Indexes and
/// iterates like a slice of [`Verdict`]s.
#[derive(Clone, Copy)]
pub struct Verdicts<'a> {
    meta: &'a [PacketMeta],
}

impl<'a> Verdicts<'a> {
    pub fn len(&self) -> usize {
        self.meta.len()
    }

    pub fn is_empty(&self) -> bool {
        self.meta.is_empty()
    }

    /// The verdict of frame `i`, if there is such a frame.
    #[inline]
    pub fn get(&self, i: usize) -> Option<Verdict> {
        self.meta.get(i).map(|m| m.verdict)
    }

    pub fn iter(&self) -> impl ExactSizeIterator<Item = &'a Verdict> + 'a {
        self.meta.iter().map(|m| &m.verdict)
    }

    pub fn to_vec(&self) -> Vec<Verdict> {
        self.iter().copied().collect()
    }

    /// The frames' whole metadata.
    pub fn meta(&self) -> &'a [PacketMeta] {
        self.meta
    }
}

impl std::ops::Index<usize> for Verdicts<'_> {
    type Output = Verdict;

    fn index(&self, i: usize) -> &Verdict {
        &self.meta[i].verdict
    }
}

impl std::fmt::Debug for Verdicts<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl PartialEq<[Verdict]> for Verdicts<'_> {
    fn eq(&self, other: &[Verdict]) -> bool {
        self.len() == other.len() && self.iter().zip(other).all(|(a, b)| a == b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = 1_000_000_000;

    #[test]
    fn gc_pacer_sweeps_the_table_once_per_period_whatever_the_call_rate() {
        let capacity = 1 << 16;
        let mut pacer = GcPacer::new(10 * SEC);
        assert_eq!(
            pacer.slots_due(5 * SEC, capacity),
            0,
            "the first call only starts the clock"
        );
        // 10 s in calls 10 us apart: exactly one sweep in total, a few slots per call.
        let mut total = 0;
        let mut most = 0;
        for i in 1..=1_000_000u64 {
            let due = pacer.slots_due(5 * SEC + i * 10_000, capacity);
            total += due;
            most = most.max(due);
        }
        assert_eq!(total, capacity);
        assert!(most <= 1, "{most} slots in one 10 us step");
    }

    #[test]
    fn gc_pacer_caps_a_step_and_keeps_at_most_one_sweep_of_credit() {
        let capacity = 1 << 16;
        let mut pacer = GcPacer::new(10 * SEC);
        pacer.slots_due(0, capacity);
        // An hour without a call: one capped step, and no more than one sweep owed in all.
        let mut total = pacer.slots_due(3_600 * SEC, capacity);
        assert_eq!(total, MAX_GC_SLOTS_PER_STEP as usize);
        while let due @ 1.. = pacer.slots_due(3_600 * SEC, capacity) {
            total += due;
        }
        assert_eq!(total, capacity);
    }

    #[test]
    fn a_zero_sweep_period_is_refused() {
        let cfg = PipelineConfig {
            ct_gc_sweep_ns: 0,
            ..PipelineConfig::default()
        };
        assert_eq!(Pipeline::new(cfg).err(), Some(PipelineError::GcSweep));
    }
}
