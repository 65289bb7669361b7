//! The batch pipeline: stages over a batch of frames, their counters and drop reasons.
//!
//! [`Pipeline::process`] runs every stage over the whole batch in turn (VPP-style): parse ->
//! decap -> identity -> service -> conntrack -> policy -> route. A stage skips frames whose
//! verdict is already decided; the verdicts come back in one slice, in frame order. Stages take
//! no locks, allocate nothing, log nothing and return no `Result`: every exit is a counted
//! verdict. See `docs/architecture.md` for the order and its reasons.

pub mod counters;
pub mod drop;
pub mod meta;

mod conntrack;
mod decap;
mod icmp_error;
mod identity;
mod parse;
mod policy;
mod route;
mod service;

pub use counters::{Counters, Stage};
pub use drop::DropReason;
pub use meta::{PacketMeta, Verdict};

use crate::frame::Frame;
use crate::tables::conntrack::{Conntrack, CtConfig};
use crate::tables::endpoints::EndpointId;
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
}

impl Default for PipelineConfig {
    fn default() -> Self {
        PipelineConfig {
            batch_size: DEFAULT_BATCH,
            conntrack: CtConfig::default(),
            ct_gc_sweep_ns: DEFAULT_GC_SWEEP_NS,
            complete_l4_checksums: false,
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
}

/// Where a batch came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Ingress {
    /// A pod's interface.
    Pod(EndpointId),
    /// The node's uplink (underlay).
    Uplink,
    /// An interface nothing is configured for.
    Unknown,
}

/// What every stage gets besides the frames and their metadata.
pub(crate) struct Ctx<'a> {
    pub t: &'a Tables,
    pub c: &'a mut Counters,
    pub ct: &'a mut Conntrack,
    pub ingress: Ingress,
    pub ingress_ifindex: u32,
    pub now: u64,
    pub complete_l4_checksums: bool,
}

impl Ctx<'_> {
    /// Decides a drop: sets the verdict and counts it under `stage`.
    #[inline]
    pub fn drop(&mut self, m: &mut PacketMeta, stage: Stage, reason: DropReason) {
        m.verdict = Verdict::Drop(reason);
        self.c.drop(stage, reason);
    }
}

/// One worker's pipeline: its conntrack table, counters and per-batch scratch space.
#[derive(Debug)]
pub struct Pipeline {
    batch_size: usize,
    gc: GcPacer,
    complete_l4_checksums: bool,
    meta: Vec<PacketMeta>,
    verdicts: Vec<Verdict>,
    ct: Conntrack,
    counters: Counters,
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
        Ok(Pipeline {
            batch_size: cfg.batch_size,
            gc: GcPacer::new(cfg.ct_gc_sweep_ns),
            complete_l4_checksums: cfg.complete_l4_checksums,
            meta: vec![PacketMeta::default(); cfg.batch_size],
            verdicts: Vec::with_capacity(MAX_BATCH),
            ct: Conntrack::new(cfg.conntrack),
            counters: Counters::default(),
        })
    }

    /// Runs the stages over `frames`, all received on interface `ingress_ifindex`, at time `now`
    /// (nanoseconds of a monotonic clock, read once per batch by the caller). Frames may be
    /// rewritten, grown at the front (encapsulation) or shrunk (decapsulation). Returns one
    /// verdict per frame, in order. Pass at most `batch_size` frames to stay allocation-free;
    /// longer slices are processed in chunks.
    pub fn process<B: AsRef<[u8]> + AsMut<[u8]>>(
        &mut self,
        tables: &Tables,
        ingress_ifindex: u32,
        frames: &mut [Frame<B>],
        now: u64,
    ) -> &[Verdict] {
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
    ) -> &[Verdict] {
        self.verdicts.clear();
        let ingress = classify_ingress(tables, ingress_ifindex);
        for chunk in frames.chunks_mut(self.batch_size) {
            let meta = &mut self.meta[..chunk.len()];
            let mut ctx = Ctx {
                t: tables,
                c: &mut self.counters,
                ct: &mut self.ct,
                ingress,
                ingress_ifindex,
                now,
                complete_l4_checksums: self.complete_l4_checksums,
            };
            run_stages(chunk, meta, &mut ctx, last);
            count_verdicts(chunk, meta, ctx.c);
            self.verdicts.extend(meta.iter().map(|m| m.verdict));
        }
        self.maintain(now);
        &self.verdicts
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

    /// Metadata of the frames of the last chunk processed (tests and tracing).
    pub fn last_meta(&self) -> &[PacketMeta] {
        &self.meta
    }

    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    pub fn conntrack(&self) -> &Conntrack {
        &self.ct
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
    } else {
        Ingress::Unknown
    }
}

/// Runs the stages in order, up to and including `last` (`Stage::Route`: all of them).
fn run_stages<B: AsRef<[u8]> + AsMut<[u8]>>(
    frames: &mut [Frame<B>],
    meta: &mut [PacketMeta],
    ctx: &mut Ctx<'_>,
    last: Stage,
) {
    parse::run(frames, meta, ctx);
    if last == Stage::Parse {
        return;
    }
    decap::run(frames, meta, ctx);
    if last == Stage::Decap {
        return;
    }
    identity::run(frames, meta, ctx);
    if last == Stage::Identity {
        return;
    }
    service::run(frames, meta, ctx);
    if last == Stage::Service {
        return;
    }
    conntrack::run(frames, meta, ctx);
    if last == Stage::Conntrack {
        return;
    }
    policy::run(frames, meta, ctx);
    if last == Stage::Policy {
        return;
    }
    route::run(frames, meta, ctx);
}

fn count_verdicts<B: AsRef<[u8]> + AsMut<[u8]>>(
    frames: &[Frame<B>],
    meta: &mut [PacketMeta],
    c: &mut Counters,
) {
    for (f, m) in frames.iter().zip(meta.iter_mut()) {
        match m.verdict {
            Verdict::Tx { .. } => {
                c.tx_packets += 1;
                c.tx_bytes += f.len() as u64;
            }
            Verdict::Pass => c.pass_packets += 1,
            Verdict::Drop(_) => c.drop_packets += 1,
            Verdict::Pending => {
                // A stage forgot to decide: a bug, but never a silent forward.
                m.verdict = Verdict::Drop(DropReason::NoRoute);
                c.drop(Stage::Route, DropReason::NoRoute);
                c.drop_packets += 1;
            }
        }
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
