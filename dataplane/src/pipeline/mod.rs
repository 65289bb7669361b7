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

/// How a pipeline is set up.
#[derive(Clone, Debug)]
pub struct PipelineConfig {
    /// Frames per batch, 1..=256.
    pub batch_size: usize,
    pub conntrack: CtConfig,
    /// Conntrack slots examined by the incremental GC after each batch.
    pub ct_gc_slots_per_batch: usize,
    /// Recompute TCP/UDP checksums of frames from pods: AF_XDP frames carry no
    /// CHECKSUM_PARTIAL flag, so a veth pod's frame holds only the pseudo-header sum.
    pub complete_l4_checksums: bool,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        PipelineConfig {
            batch_size: DEFAULT_BATCH,
            conntrack: CtConfig::default(),
            ct_gc_slots_per_batch: 64,
            complete_l4_checksums: false,
        }
    }
}

/// Why a pipeline could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PipelineError {
    #[error("batch size {0} is out of range: use 1 to {MAX_BATCH} (64 is a good default)")]
    BatchSize(usize),
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
    gc_slots: usize,
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
        Ok(Pipeline {
            batch_size: cfg.batch_size,
            gc_slots: cfg.ct_gc_slots_per_batch,
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
        self.ct.gc(now, self.gc_slots);
        &self.verdicts
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
