//! Publication: how the control thread hands new tables to the workers, and how workers
//! hand their counters (and, on request, a conntrack snapshot) back.
//!
//! # Tables: read-copy-update
//! [`TablesHandle`] lives with the tables (`crate::tables::handle`, where its contract is
//! written) and is re-exported here: the control thread writes through it, workers read it.
//!
//! # Counters and conntrack: worker-owned, published off the packet path
//! Each worker owns its [`Pipeline`](crate::pipeline::Pipeline) (counters and conntrack are
//! written without locks). It also owns a [`WorkerStats`], registered in the shared
//! [`StatsRegistry`], and calls [`WorkerStats::tick`] once per loop iteration (empty polls
//! included). Every `publish_every` ticks, `tick` copies the counters into the worker's slot with
//! `try_lock`: if the control thread happens to hold the slot, the worker skips this round
//! instead of waiting. The control thread sums the slots for `status`; the sum lags the truth by
//! at most `publish_every` ticks per worker.
//!
//! Conntrack cannot be read from the control thread (it is written by the fast path without
//! synchronization), so a dump is a request/answer: the control thread bumps a generation number
//! ([`StatsRegistry::request_ct_dump`]); at its next publication each worker sees it (one atomic
//! load) and copies at most `limit` live entries into its slot; the control thread collects the
//! answers ([`StatsRegistry::collect_ct_dump`]) once every worker has answered, or gives up after
//! a deadline. Building that copy allocates, on the worker, once per dump request — never on the
//! per-packet path.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use serde::Serialize;

pub use crate::pipeline::IoSummary;
use crate::pipeline::{Counters, Pipeline, Publisher};
use crate::tables::conntrack::{Conntrack, CtStats, FlowDirection};
pub use crate::tables::TablesHandle;

/// Locks `m`, recovering from poisoning: the guarded data are plain values that a panicking
/// holder cannot leave half-written in a way that matters to a reader of counters.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One conntrack entry as a dump shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CtDumpEntry {
    /// Originator `addr:port` (`[v6]:port`).
    pub src: String,
    /// Responder `addr:port`.
    pub dst: String,
    pub proto: u8,
    pub state: &'static str,
    pub src_identity: u32,
    pub packets_original: u64,
    pub packets_reply: u64,
    pub bytes_original: u64,
    pub bytes_reply: u64,
    /// Milliseconds until the entry expires.
    pub expires_in_ms: u64,
    /// Reverse-NAT frontend restored on replies, if any.
    pub rev_nat: Option<String>,
}

/// A worker's answer to a conntrack dump request.
#[derive(Clone, Debug, Default)]
pub struct CtSnapshot {
    /// The request generation this answers (0: none yet).
    pub generation: u64,
    /// At most the requested number of live entries.
    pub entries: Vec<CtDumpEntry>,
    /// Occupied slots of the table (expired entries not yet collected included).
    pub occupied: usize,
    /// True when live entries were left out to respect the limit.
    pub truncated: bool,
}

/// What one worker publishes.
#[derive(Debug)]
struct WorkerSlot {
    name: String,
    counters: Mutex<Counters>,
    /// Number of publications so far (a liveness hint for `status`).
    publications: AtomicU64,
    /// The worker's busy-loop nanoseconds at its last publication (0 when it does not say).
    busy_ns: AtomicU64,
    io: Mutex<IoSummary>,
    ct_answer: Mutex<CtSnapshot>,
    conntrack: Mutex<CtSummary>,
    /// When the worker registered: its running time, of which `busy_ns` was busy.
    started: Instant,
}

/// The workers' publication slots and the conntrack dump request, shared by the control thread
/// and the workers.
#[derive(Debug, Default)]
pub struct StatsRegistry {
    slots: Mutex<Vec<Arc<WorkerSlot>>>,
    /// Generation of the latest conntrack dump request (0: none ever).
    ct_request: AtomicU64,
    /// Entries per worker the latest request asks for.
    ct_limit: AtomicUsize,
}

/// A worker's conntrack table at its last publication (occupancy and the table's counters).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CtSummary {
    /// Occupied slots, expired entries not yet collected included.
    pub entries: u64,
    pub capacity: u64,
    pub stats: CtStats,
}

impl CtSummary {
    fn of(ct: &Conntrack) -> Self {
        CtSummary {
            entries: ct.len() as u64,
            capacity: ct.capacity() as u64,
            stats: ct.stats(),
        }
    }
}

/// The per-worker counters `status` reports.
#[derive(Clone, Debug)]
pub struct WorkerCounters {
    pub name: String,
    pub publications: u64,
    /// Nanoseconds the worker spent in passes that received frames (see
    /// [`WorkerStats::set_busy_ns`]); divided by `counters.rx_packets` it is the cost per packet.
    pub busy_ns: u64,
    /// Nanoseconds since the worker registered; minus `busy_ns`, the time it was idle.
    pub running_ns: u64,
    pub io: IoSummary,
    pub conntrack: CtSummary,
    pub counters: Counters,
}

impl StatsRegistry {
    pub fn new() -> Arc<Self> {
        Arc::new(StatsRegistry::default())
    }

    /// Registers a worker named `name` (e.g. `worker-0`); its [`WorkerStats`] publishes every
    /// `publish_every` ticks (at least 1).
    pub fn register(self: &Arc<Self>, name: &str, publish_every: u32) -> WorkerStats {
        let slot = Arc::new(WorkerSlot {
            name: name.to_string(),
            counters: Mutex::new(Counters::default()),
            publications: AtomicU64::new(0),
            busy_ns: AtomicU64::new(0),
            io: Mutex::new(IoSummary::default()),
            ct_answer: Mutex::new(CtSnapshot::default()),
            conntrack: Mutex::new(CtSummary::default()),
            started: Instant::now(),
        });
        lock(&self.slots).push(Arc::clone(&slot));
        WorkerStats {
            registry: Arc::clone(self),
            slot,
            every: publish_every.max(1),
            ticks: 0,
            answered: 0,
            busy_ns: 0,
            io: IoSummary::default(),
        }
    }

    /// Number of registered workers.
    pub fn workers(&self) -> usize {
        lock(&self.slots).len()
    }

    /// The last published counters of every worker.
    pub fn per_worker(&self) -> Vec<WorkerCounters> {
        lock(&self.slots)
            .iter()
            .map(|s| WorkerCounters {
                name: s.name.clone(),
                publications: s.publications.load(Ordering::Relaxed),
                busy_ns: s.busy_ns.load(Ordering::Relaxed),
                running_ns: u64::try_from(s.started.elapsed().as_nanos()).unwrap_or(u64::MAX),
                io: *lock(&s.io),
                conntrack: *lock(&s.conntrack),
                counters: lock(&s.counters).clone(),
            })
            .collect()
    }

    /// The sum of every worker's last published counters.
    pub fn total(&self) -> Counters {
        let mut sum = Counters::default();
        for s in lock(&self.slots).iter() {
            sum.merge(&lock(&s.counters));
        }
        sum
    }

    /// Asks every worker for at most `limit` conntrack entries; returns the request's
    /// generation, to pass to [`StatsRegistry::collect_ct_dump`].
    pub fn request_ct_dump(&self, limit: usize) -> u64 {
        self.ct_limit.store(limit, Ordering::Relaxed);
        // Release: a worker that sees the new generation also sees the limit.
        self.ct_request.fetch_add(1, Ordering::Release) + 1
    }

    /// Every worker's answer to request `generation`, by worker name, once all have answered;
    /// `None` while some worker has not yet (or has already answered a newer request).
    pub fn collect_ct_dump(&self, generation: u64) -> Option<Vec<(String, CtSnapshot)>> {
        let slots = lock(&self.slots);
        let mut out = Vec::with_capacity(slots.len());
        for s in slots.iter() {
            let answer = lock(&s.ct_answer);
            if answer.generation != generation {
                return None;
            }
            out.push((s.name.clone(), answer.clone()));
        }
        Some(out)
    }
}

/// A worker's publisher (owned by the worker thread; see the module doc).
#[derive(Debug)]
pub struct WorkerStats {
    registry: Arc<StatsRegistry>,
    slot: Arc<WorkerSlot>,
    every: u32,
    ticks: u32,
    /// Latest conntrack request generation this worker answered.
    answered: u64,
    /// Busy-loop time to publish with the counters (kept locally: setting it shares nothing).
    busy_ns: u64,
    /// The I/O counters to publish with them (likewise).
    io: IoSummary,
}

impl WorkerStats {
    /// Records the worker's busy-loop nanoseconds so far; published with the next counters.
    /// A plain store into the publisher, cheap enough for every pass.
    #[inline]
    pub fn set_busy_ns(&mut self, busy_ns: u64) {
        self.busy_ns = busy_ns;
    }

    /// Records the worker's I/O counters; published with the next counters.
    pub fn set_io(&mut self, io: IoSummary) {
        self.io = io;
    }

    /// Call once per worker loop iteration (after the batch, or after an empty poll). Costs an
    /// increment and a compare, except every `publish_every`-th call, which publishes.
    #[inline]
    pub fn tick(&mut self, pipeline: &Pipeline, now: u64) {
        self.ticks += 1;
        if self.ticks >= self.every {
            self.ticks = 0;
            self.publish(pipeline, now);
        }
    }

    /// Publishes the counters now, and answers a pending conntrack request. Never blocks: a slot
    /// the control thread holds is skipped until the next publication.
    pub fn publish(&mut self, pipeline: &Pipeline, now: u64) {
        if let Ok(mut slot) = self.slot.counters.try_lock() {
            slot.clone_from(pipeline.counters());
            self.slot.busy_ns.store(self.busy_ns, Ordering::Relaxed);
            self.slot.publications.fetch_add(1, Ordering::Relaxed);
        }
        if let Ok(mut io) = self.slot.io.try_lock() {
            *io = self.io;
        }
        if let Ok(mut ct) = self.slot.conntrack.try_lock() {
            *ct = CtSummary::of(pipeline.conntrack());
        }
        let wanted = self.registry.ct_request.load(Ordering::Acquire);
        if wanted != self.answered {
            let limit = self.registry.ct_limit.load(Ordering::Relaxed);
            if let Ok(mut answer) = self.slot.ct_answer.try_lock() {
                *answer = snapshot_conntrack(pipeline.conntrack(), now, limit, wanted);
                self.answered = wanted;
            }
        }
    }
}

/// The I/O layer's view of this publisher (`io::Worker::publish_to`).
impl Publisher for WorkerStats {
    #[inline]
    fn set_busy_ns(&mut self, busy_ns: u64) {
        WorkerStats::set_busy_ns(self, busy_ns);
    }

    fn set_io(&mut self, io: IoSummary) {
        WorkerStats::set_io(self, io);
    }

    #[inline]
    fn tick(&mut self, pipeline: &Pipeline, now: u64) {
        WorkerStats::tick(self, pipeline, now);
    }

    fn publish(&mut self, pipeline: &Pipeline, now: u64) {
        WorkerStats::publish(self, pipeline, now);
    }
}

/// At most `limit` live entries of `ct`, for dump request `generation`.
fn snapshot_conntrack(ct: &Conntrack, now: u64, limit: usize, generation: u64) -> CtSnapshot {
    let mut live = ct.iter().filter(|(_, e)| !e.is_expired(now));
    let entries: Vec<CtDumpEntry> = live
        .by_ref()
        .take(limit)
        .map(|(k, e)| {
            let (sa, sp) = k.src();
            let (da, dp) = k.dst();
            CtDumpEntry {
                src: std::net::SocketAddr::new(sa, sp).to_string(),
                dst: std::net::SocketAddr::new(da, dp).to_string(),
                proto: k.proto(),
                state: e.state().as_str(),
                src_identity: e.src_identity.0,
                packets_original: e.packets(FlowDirection::Original),
                packets_reply: e.packets(FlowDirection::Reply),
                bytes_original: e.bytes(FlowDirection::Original),
                bytes_reply: e.bytes(FlowDirection::Reply),
                expires_in_ms: e.expires().saturating_sub(now) / 1_000_000,
                rev_nat: e
                    .rev_nat()
                    .map(|r| std::net::SocketAddr::new(r.addr(), r.port()).to_string()),
            }
        })
        .collect();
    CtSnapshot {
        generation,
        truncated: live.next().is_some(),
        entries,
        occupied: ct.len(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::PipelineConfig;
    use crate::tables::services::Services;
    use crate::tables::{LocalNode, Tables};

    fn empty() -> Tables {
        Tables::empty(LocalNode::default(), Services::new(251, 1).unwrap())
    }

    #[test]
    fn worker_publishes_every_n_ticks_and_totals_sum() {
        let registry = StatsRegistry::new();
        let mut w0 = registry.register("worker-0", 3);
        let mut w1 = registry.register("worker-1", 1);
        let mut p = Pipeline::new(PipelineConfig::default()).unwrap();
        w0.tick(&p, 0);
        w0.tick(&p, 0);
        assert_eq!(registry.per_worker()[0].publications, 0);
        w0.tick(&p, 0);
        assert_eq!(registry.per_worker()[0].publications, 1);
        w1.tick(&p, 0);
        assert_eq!(registry.per_worker()[1].publications, 1);
        // Process one frame so rx counts move, then publish.
        let mut frames = [crate::testutil::frame(&[0u8; 10])];
        p.process(&empty(), 1, &mut frames, 0);
        w0.publish(&p, 0);
        w1.publish(&p, 0);
        assert_eq!(registry.total().rx_packets, 2 * p.counters().rx_packets);
        assert!(p.counters().rx_packets > 0);
    }

    #[test]
    fn busy_time_is_published_with_the_counters_not_before() {
        let registry = StatsRegistry::new();
        let mut w = registry.register("worker-0", 1);
        let p = Pipeline::new(PipelineConfig::default()).unwrap();
        w.set_busy_ns(1234);
        let io = IoSummary {
            polls: 9,
            sock_fill_ring_empty: 3,
            ..IoSummary::default()
        };
        w.set_io(io);
        assert_eq!(registry.per_worker()[0].busy_ns, 0);
        assert_eq!(registry.per_worker()[0].io, IoSummary::default());
        w.publish(&p, 0);
        assert_eq!(registry.per_worker()[0].busy_ns, 1234);
        assert_eq!(registry.per_worker()[0].io, io);
    }

    #[test]
    fn ct_dump_is_collected_once_every_worker_answered() {
        let registry = StatsRegistry::new();
        let mut w0 = registry.register("worker-0", 1);
        let mut w1 = registry.register("worker-1", 1);
        let p = Pipeline::new(PipelineConfig::default()).unwrap();
        let generation = registry.request_ct_dump(10);
        assert!(registry.collect_ct_dump(generation).is_none());
        w0.tick(&p, 0);
        assert!(registry.collect_ct_dump(generation).is_none());
        w1.tick(&p, 0);
        let answers = registry.collect_ct_dump(generation).unwrap();
        assert_eq!(answers.len(), 2);
        assert!(answers.iter().all(|(_, s)| s.entries.is_empty()));
    }
}
