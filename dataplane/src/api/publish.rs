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
//! synchronization), so a dump is a request/answer: the control thread opens a request with its
//! own generation number and limit ([`StatsRegistry::request_ct_dump`]); at its next publication
//! each worker sees that a newer generation exists (one atomic load), and copies at most `limit`
//! live entries for every open request it has not answered into its slot, tagged with the
//! request's generation; the control thread collects a request's answers
//! ([`StatsRegistry::collect_ct_dump`]) once every worker has answered it, or gives up after a
//! deadline ([`StatsRegistry::cancel_ct_dump`]). Requests are independent: two clients dumping
//! at once each get their own answer (at most [`MAX_CT_DUMPS_IN_FLIGHT`] open at a time, which
//! bounds the memory the copies take). Building a copy allocates, on the worker, once per dump
//! request — never on the per-packet path.

use std::sync::atomic::{AtomicU64, Ordering};
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

/// Conntrack dump requests open at once; more are refused until one is answered or abandoned.
pub const MAX_CT_DUMPS_IN_FLIGHT: usize = 4;

/// An open conntrack dump request.
#[derive(Clone, Copy, Debug)]
struct CtRequest {
    generation: u64,
    limit: usize,
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
    /// Answers to open requests, one per generation, until the control thread collects them.
    ct_answers: Mutex<Vec<CtSnapshot>>,
    conntrack: Mutex<CtSummary>,
    /// When the worker registered: its running time, of which `busy_ns` was busy.
    started: Instant,
}

/// The workers' publication slots and the conntrack dump request, shared by the control thread
/// and the workers.
#[derive(Debug, Default)]
pub struct StatsRegistry {
    slots: Mutex<Vec<Arc<WorkerSlot>>>,
    /// Generation of the latest conntrack dump request (0: none ever): what a worker checks.
    ct_latest: AtomicU64,
    /// The open requests (at most [`MAX_CT_DUMPS_IN_FLIGHT`]).
    ct_requests: Mutex<Vec<CtRequest>>,
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
            ct_answers: Mutex::new(Vec::new()),
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
    /// generation, to pass to [`StatsRegistry::collect_ct_dump`] (and to
    /// [`StatsRegistry::cancel_ct_dump`] when giving up). `None` when
    /// [`MAX_CT_DUMPS_IN_FLIGHT`] requests are open already.
    pub fn request_ct_dump(&self, limit: usize) -> Option<u64> {
        let mut requests = lock(&self.ct_requests);
        if requests.len() >= MAX_CT_DUMPS_IN_FLIGHT {
            return None;
        }
        // Under the lock, so that generations enter the list in order. Release: a worker that
        // sees the new generation and then locks the list finds the request.
        let generation = self.ct_latest.fetch_add(1, Ordering::Release) + 1;
        requests.push(CtRequest { generation, limit });
        Some(generation)
    }

    /// Every worker's answer to request `generation`, by worker name, once all have answered
    /// (the request is then closed); `None` while some worker has not yet.
    pub fn collect_ct_dump(&self, generation: u64) -> Option<Vec<(String, CtSnapshot)>> {
        let mut requests = lock(&self.ct_requests);
        let slots = lock(&self.slots);
        let answered = |s: &Arc<WorkerSlot>| {
            lock(&s.ct_answers)
                .iter()
                .any(|a| a.generation == generation)
        };
        if !slots.iter().all(answered) {
            return None;
        }
        let out = slots
            .iter()
            .map(|s| {
                let mut answers = lock(&s.ct_answers);
                let i = answers.iter().position(|a| a.generation == generation);
                let answer = i.map(|i| answers.swap_remove(i)).unwrap_or_default();
                (s.name.clone(), answer)
            })
            .collect();
        requests.retain(|r| r.generation != generation);
        Some(out)
    }

    /// Abandons request `generation` (its deadline passed, or its client left): closes it and
    /// drops whatever answers arrived, and any answer to a request no longer open.
    pub fn cancel_ct_dump(&self, generation: u64) {
        let mut requests = lock(&self.ct_requests);
        requests.retain(|r| r.generation != generation);
        for s in lock(&self.slots).iter() {
            lock(&s.ct_answers).retain(|a| requests.iter().any(|r| r.generation == a.generation));
        }
    }

    /// Open conntrack dump requests.
    pub fn ct_dumps_in_flight(&self) -> usize {
        lock(&self.ct_requests).len()
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
        let latest = self.registry.ct_latest.load(Ordering::Acquire);
        if latest != self.answered {
            self.answer_ct_dumps(pipeline, now, latest);
        }
    }

    /// Answers every open conntrack request newer than the last one answered. Skipped (and
    /// retried at the next publication) when the control thread holds a lock.
    fn answer_ct_dumps(&mut self, pipeline: &Pipeline, now: u64, latest: u64) {
        let open: Vec<CtRequest> = match self.registry.ct_requests.try_lock() {
            Ok(requests) => requests
                .iter()
                .filter(|r| r.generation > self.answered)
                .copied()
                .collect(),
            Err(_) => return,
        };
        let Ok(mut answers) = self.slot.ct_answers.try_lock() else {
            return;
        };
        for r in &open {
            let snapshot = snapshot_conntrack(pipeline.conntrack(), now, r.limit, r.generation);
            answers.push(snapshot);
        }
        // Requests closed meanwhile are not in `open`: they need no answer.
        let newest = open.iter().map(|r| r.generation).max().unwrap_or(0);
        self.answered = newest.max(latest);
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
        let generation = registry.request_ct_dump(10).unwrap();
        assert!(registry.collect_ct_dump(generation).is_none());
        w0.tick(&p, 0);
        assert!(registry.collect_ct_dump(generation).is_none());
        w1.tick(&p, 0);
        let answers = registry.collect_ct_dump(generation).unwrap();
        assert_eq!(answers.len(), 2);
        assert!(answers.iter().all(|(_, s)| s.entries.is_empty()));
        assert_eq!(registry.ct_dumps_in_flight(), 0);
    }

    #[test]
    fn concurrent_ct_dumps_each_get_their_answer() {
        // Finding 10 of issue 14: one shared generation made the older of two dumps wait for
        // an answer that never came.
        let registry = StatsRegistry::new();
        let mut w = registry.register("worker-0", 1);
        let p = Pipeline::new(PipelineConfig::default()).unwrap();
        let first = registry.request_ct_dump(10).unwrap();
        w.tick(&p, 0);
        let second = registry.request_ct_dump(5).unwrap();
        w.tick(&p, 0);
        let b = registry.collect_ct_dump(second).unwrap();
        assert_eq!(b[0].1.generation, second);
        let a = registry.collect_ct_dump(first).unwrap();
        assert_eq!(a[0].1.generation, first);
        assert_eq!(registry.ct_dumps_in_flight(), 0);
    }

    #[test]
    fn ct_dumps_in_flight_are_bounded_and_cancelling_frees_them() {
        let registry = StatsRegistry::new();
        let mut w = registry.register("worker-0", 1);
        let p = Pipeline::new(PipelineConfig::default()).unwrap();
        let open: Vec<u64> = (0..MAX_CT_DUMPS_IN_FLIGHT)
            .map(|_| registry.request_ct_dump(1).unwrap())
            .collect();
        assert!(registry.request_ct_dump(1).is_none());
        w.tick(&p, 0);
        for g in &open {
            registry.cancel_ct_dump(*g);
        }
        assert_eq!(registry.ct_dumps_in_flight(), 0);
        assert!(lock(&registry.slots)[0]
            .ct_answers
            .lock()
            .unwrap()
            .is_empty());
        assert!(registry.request_ct_dump(1).is_some());
    }
}
