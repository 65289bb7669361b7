//! The stage interface: a [`Batch`] of frames with their metadata, and the [`Ctx`] every stage
//! gets beside it.
//!
//! A stage is `fn run(batch: &mut Batch<'_, B>, ctx: &mut Ctx<'_>)`, VPP's node shape: it walks
//! the batch with [`Batch::for_each`], which owns what every stage used to repeat: skip the
//! frames an earlier stage already decided (and those the stage does not handle), count each
//! frame that enters the stage (`Counters::stage_in`), and turn the step's `Err(reason)` into a
//! drop recorded under that stage and reason. A step decides a frame's fate only by writing
//! `PacketMeta::verdict` (or returning `Err`): that field is the one place a frame's fate is held
//! until the I/O layer reads it ([`super::Verdicts`]).
//!
//! Stages talk to each other only through [`PacketMeta`]; work several stages need (header
//! parsing, NAT rewrites, checksum completion, destination resolution, prefetching, conntrack
//! entry creation) lives in helper modules of its own, never inside a stage.

use super::counters::{drop_direction, Counters, Stage};
use super::drop::DropReason;
use super::event::Origin;
use super::event_ring::EventSink;
use super::meta::{PacketMeta, Verdict};
use crate::frame::Frame;
use crate::tables::conntrack::Conntrack;
use crate::tables::endpoints::EndpointId;
use crate::tables::snat::Masquerade;
use crate::tables::Tables;

/// Where a batch came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Ingress {
    /// A pod's interface.
    Pod(EndpointId),
    /// The node's uplink (underlay).
    Uplink,
    /// The host interface: the node's own network stack (`tables::HostLink`).
    Host,
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
    /// The worker's masquerade state, when it masquerades.
    pub masq: Option<&'a mut Masquerade>,
}

impl Ctx<'_> {
    /// Decides a drop: sets the verdict and counts it under `stage`.
    #[inline]
    pub fn drop(&mut self, m: &mut PacketMeta, stage: Stage, reason: DropReason) {
        m.verdict = Verdict::Drop(reason);
        m.drop_stage = stage as u8;
        let from_pod = matches!(self.ingress, Ingress::Pod(_));
        self.c.drop(stage, reason, drop_direction(reason, from_pod));
    }
}

/// The frames of one batch and their metadata, index for index.
pub(crate) struct Batch<'a, B> {
    frames: &'a mut [Frame<B>],
    meta: &'a mut [PacketMeta],
}

impl<'a, B: AsRef<[u8]> + AsMut<[u8]>> Batch<'a, B> {
    /// `frames[i]` and `meta[i]` describe the same packet; both slices have the same length.
    #[inline]
    pub fn new(frames: &'a mut [Frame<B>], meta: &'a mut [PacketMeta]) -> Self {
        debug_assert_eq!(frames.len(), meta.len());
        let n = frames.len().min(meta.len());
        Batch {
            frames: &mut frames[..n],
            meta: &mut meta[..n],
        }
    }

    /// Starts the batch: every frame's metadata back to [`PacketMeta::EMPTY`] (a copy from
    /// read-only data) and counted as received.
    #[inline]
    pub fn receive(&mut self, c: &mut Counters, ingress_ifindex: u32) {
        let mut bytes = 0;
        for (f, m) in self.frames.iter().zip(self.meta.iter_mut()) {
            *m = PacketMeta::EMPTY;
            bytes += f.len() as u64;
        }
        let packets = self.frames.len() as u64;
        c.rx_packets += packets;
        c.rx_bytes += bytes;
        // One lookup a batch: every frame of a batch came in on one interface.
        let interface = c.interfaces.of(ingress_ifindex);
        interface.rx_packets += packets;
        interface.rx_bytes += bytes;
    }

    pub fn frames(&self) -> &[Frame<B>] {
        self.frames
    }

    /// The metadata alone, for phases that compute keys or prefetch ahead of the per-frame
    /// step (they skip decided frames themselves).
    pub fn meta_mut(&mut self) -> &mut [PacketMeta] {
        self.meta
    }

    /// Runs `step` on every frame whose verdict is still `Pending` and that `want` selects, in
    /// order. Each such frame is counted as entering `stage`; a step that returns `Err(reason)`
    /// has its frame dropped, counted under `stage` and `reason`. `want` sees the metadata as
    /// the previous frames' steps left it.
    #[inline]
    pub fn for_each<'t, W, S>(&mut self, ctx: &mut Ctx<'t>, stage: Stage, want: W, mut step: S)
    where
        W: Fn(&PacketMeta) -> bool,
        S: FnMut(&mut Frame<B>, &mut PacketMeta, &mut Ctx<'t>) -> Result<(), DropReason>,
    {
        for (f, m) in self.frames.iter_mut().zip(self.meta.iter_mut()) {
            if m.verdict != Verdict::Pending || !want(m) {
                continue;
            }
            ctx.c.stage_in[stage as usize] += 1;
            if let Err(reason) = step(f, m, ctx) {
                ctx.drop(m, stage, reason);
            }
        }
    }

    /// Ends the batch: counts every frame's verdict (and transmitted bytes). A frame no stage
    /// decided is a bug, but never a silent forward: it becomes `Drop(NoRoute)`, counted under
    /// the route stage. With `events` (someone listens to the monitor), every frame whose fate
    /// calls for an event (every drop; sampled policy verdicts; traces) is reported there: the
    /// one place every drop passes, so no drop escapes the monitor.
    #[inline]
    pub fn finish(
        &mut self,
        c: &mut Counters,
        from_pod: bool,
        events: Option<(&mut EventSink, &Origin)>,
    ) {
        for (f, m) in self.frames.iter().zip(self.meta.iter_mut()) {
            match m.verdict {
                Verdict::Tx { ifindex } => {
                    c.tx_packets += 1;
                    c.tx_bytes += f.len() as u64;
                    let interface = c.interfaces.of(ifindex);
                    interface.tx_packets += 1;
                    interface.tx_bytes += f.len() as u64;
                }
                Verdict::Pass => c.pass_packets += 1,
                Verdict::Drop(_) => c.drop_packets += 1,
                Verdict::Pending => {
                    m.verdict = Verdict::Drop(DropReason::NoRoute);
                    m.drop_stage = Stage::Route as u8;
                    let direction = drop_direction(DropReason::NoRoute, from_pod);
                    c.drop(Stage::Route, DropReason::NoRoute, direction);
                    c.drop_packets += 1;
                }
            }
        }
        if let Some((sink, origin)) = events {
            sink.record(self.frames, self.meta, origin);
        }
    }
}

/// Every frame: the `want` of stages that handle any undecided frame.
#[inline]
pub(crate) fn any(_: &PacketMeta) -> bool {
    true
}
