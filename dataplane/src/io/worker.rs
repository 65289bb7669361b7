//! A busy-polling worker: its sockets, its UMEM, its pipeline, pinned to one core.
//!
//! [`Worker::run`] spins until `shutdown` is set. Each pass over the worker's ports
//! ([`Worker::poll_once`]):
//! 1. reads the monotonic clock once (the pipeline's `now`, and the busy-time accounting);
//! 2. per port: recycles TX completions, refills the fill ring (in batches, early), kicks TX
//!    descriptors the kernel has not taken yet;
//! 3. per port: receives up to one pipeline batch and runs [`Pipeline::process`] on it once,
//!    with that port's interface index; each frame then goes to the TX ring of the socket on
//!    its verdict's interface (same UMEM, no copy) or back to the free list.
//!
//! The tables are loaded from the [`TablesSource`] at most once per pass, and only when a batch
//! arrived; a new snapshot published by the control path is therefore seen by the next batch.
//! The published [`TablesHandle`] is a source; so is any `Fn() -> Arc<Tables>`.
//! Counters are published, off the packet path and without waiting, through the
//! [`Publisher`] given to [`Worker::publish_to`] (the control socket's registry, in the
//! daemon): ticked once per pass, handed the I/O and socket counters about every 100 ms. This
//! module knows the trait only, not who implements it.
//!
//! Invariants: the loop allocates nothing, takes no lock and logs nothing (the publisher's
//! contract: it skips a round rather than wait).

use std::cell::OnceCell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use super::config::XskConfig;
use super::counters::{IoCounters, SocketStats};
use super::umem::{PortChange, PortChanges, PortOpener, SocketInfo, Xsk};
use super::{sys, IoError, PortSpec};
use crate::pipeline::event_ring::EventSink;
use crate::pipeline::handoff::{Dispatch, Handoff, HandoffCounters};
use crate::pipeline::{IoSummary, Pipeline, PipelineConfig, Publisher};
use crate::tables::{Tables, TablesHandle};

/// Where a worker gets the current tables: loaded once per pass that received frames.
///
/// Implemented for every `Fn() -> Arc<Tables>`, so an `ArcSwap` (`|| swap.load_full()`) or any
/// other publication scheme plugs in without this module knowing it.
pub trait TablesSource {
    fn load(&self) -> Arc<Tables>;
}

impl<F: Fn() -> Arc<Tables>> TablesSource for F {
    #[inline]
    fn load(&self) -> Arc<Tables> {
        self()
    }
}

/// The published tables' read-copy-update handle: one `Arc` clone per batch.
impl TablesSource for TablesHandle {
    #[inline]
    fn load(&self) -> Arc<Tables> {
        self.snapshot()
    }
}

/// Everything a worker needs.
#[derive(Clone, Debug)]
pub struct WorkerConfig {
    /// The sockets of this worker; all share one UMEM.
    pub ports: Vec<PortSpec>,
    /// Pin the thread calling [`Worker::run`] to this CPU.
    pub core: Option<usize>,
    pub pipeline: PipelineConfig,
    pub xsk: XskConfig,
}

/// How often a running worker hands its I/O and socket counters to its publisher.
const PUBLISH_INTERVAL_NS: u64 = 100_000_000;
/// Passes between two looks at the publication clock.
const PUBLISH_CHECK_EVERY: u64 = 1024;

/// One busy-polling worker. Build it in the network namespace of its interfaces.
#[derive(Debug)]
pub struct Worker {
    xsk: Xsk,
    pipeline: Pipeline,
    batch: usize,
    core: Option<usize>,
    io: IoCounters,
    /// Reused by each publication, so publishing does not allocate.
    sockets_scratch: Vec<SocketStats>,
    /// Where the counters go (`status`, conntrack dumps), if anywhere.
    publisher: Option<Box<dyn Publisher>>,
    /// Sleep this long between passes once [`IDLE_PASSES`] passes in a row received nothing
    /// (`None`: spin, the default).
    idle_sleep: Option<Duration>,
    /// Sockets to start or stop serving ([`Worker::port_changes`]), looked at every
    /// [`PUBLISH_CHECK_EVERY`] passes: a lock-free `try_recv`, off the per-packet path.
    changes: Option<mpsc::Receiver<PortChange>>,
    /// With several workers sharing the interfaces' queues: the handoff of frames to their
    /// flow's owner, and from the other workers ([`Worker::hand_off`]).
    handoff: Option<Handoff>,
}

/// Most batches of handed-off frames a worker takes over per inbox and pass.
const HANDOFF_BATCHES_PER_PASS: usize = 8;

/// Empty passes in a row before an idle worker starts sleeping between passes (when
/// configured): about a millisecond of spinning, so a busy worker never sleeps.
pub const IDLE_PASSES: u32 = 4096;

impl Worker {
    /// Creates the UMEM and the sockets (filling their fill rings) and the pipeline. The
    /// caller then registers [`Worker::sockets`] in the XSKMAP of each interface's program.
    pub fn new(cfg: WorkerConfig) -> Result<Self, IoError> {
        let pipeline = Pipeline::new(cfg.pipeline)?;
        let batch = pipeline.batch_size();
        let xsk = Xsk::new(&cfg.xsk, &cfg.ports, batch)?;
        let sockets_scratch = Vec::with_capacity(xsk.port_count());
        Ok(Worker {
            xsk,
            pipeline,
            batch,
            core: cfg.core,
            io: IoCounters::default(),
            sockets_scratch,
            publisher: None,
            idle_sleep: None,
            changes: None,
            handoff: None,
        })
    }

    /// Trade latency for CPU while idle: after [`IDLE_PASSES`] empty passes in a row, sleep
    /// `sleep` between passes until a frame arrives. For nodes (and test clusters) where a
    /// worker must not hold a whole core while there is no traffic; `None` spins (the
    /// default, lowest latency). The sleep is on the idle path only: no packet waits for it
    /// once a batch was received.
    pub fn set_idle_sleep(&mut self, sleep: Option<Duration>) {
        self.idle_sleep = sleep.filter(|d| !d.is_zero());
    }

    /// Publishes the pipeline counters (and answers conntrack dumps) through `publisher` (the
    /// daemon passes the control socket's `api::WorkerStats`): [`Worker::run`] ticks it once
    /// per pass.
    pub fn publish_to(&mut self, publisher: impl Publisher + 'static) {
        self.publisher = Some(Box::new(publisher));
    }

    /// Shares the interfaces' queues with other workers: each received frame whose flow
    /// another worker owns is copied to that worker's ring (`pipeline::handoff`), and the
    /// frames the others hand to this one are processed here. `handoff` is this worker's
    /// place in a [`mesh`](crate::pipeline::handoff::mesh) of all of them; its masquerade
    /// share must be the one its `FlowOwner` expects (`PortRange::share` of its index).
    pub fn hand_off(&mut self, handoff: Handoff) {
        self.handoff = Some(handoff);
    }

    /// What this worker's handoff did (zero without one).
    pub fn handoff_counters(&self) -> HandoffCounters {
        self.handoff
            .as_ref()
            .map(|h| h.counters)
            .unwrap_or_default()
    }

    /// Reports the pipeline's drops (sampled policy verdicts, traces) to the monitor through
    /// `sink`, this worker's own ring, while someone listens.
    pub fn report_events(&mut self, sink: EventSink) {
        self.pipeline.report_events(sink);
    }

    /// Opens sockets on this worker's UMEM from another thread (the control thread), for
    /// interfaces added while the worker runs; send them with [`Worker::port_changes`].
    pub fn port_opener(&self) -> PortOpener {
        self.xsk.opener()
    }

    /// The channel through which a running worker is handed new sockets and told to drop
    /// others ([`PortChange`]). The worker applies them between passes, without stopping; the
    /// caller registers a new socket in its interface's XSKMAP after sending it.
    pub fn port_changes(&mut self) -> PortChanges {
        let (tx, rx) = mpsc::channel();
        self.changes = Some(rx);
        tx
    }

    /// Applies the port changes sent so far; returns how many.
    pub fn apply_port_changes(&mut self) -> usize {
        let Some(changes) = self.changes.as_ref() else {
            return 0;
        };
        let mut applied = 0;
        while let Ok(change) = changes.try_recv() {
            match change {
                PortChange::Add(port) => {
                    self.xsk.add_port(*port, &mut self.io);
                }
                PortChange::Remove { ifindex } => {
                    self.xsk.remove_ports(ifindex, &mut self.io);
                }
            }
            applied += 1;
        }
        applied
    }

    /// The worker's sockets, in port order: register each fd under its queue in the XSKMAP of
    /// the XDP program attached to its interface.
    pub fn sockets(&self) -> Vec<SocketInfo> {
        self.xsk.sockets().collect()
    }

    /// Spins over the ports until `shutdown` is set (pinned to the configured core first),
    /// then publishes its counters a last time.
    pub fn run<S: TablesSource + ?Sized>(
        &mut self,
        tables: &S,
        shutdown: &AtomicBool,
    ) -> Result<(), IoError> {
        if let Some(core) = self.core {
            sys::pin_current_thread(core).map_err(|source| IoError::Pin { core, source })?;
        }
        let mut last_publish = sys::monotonic_ns();
        let mut empty_passes = 0u32;
        while !shutdown.load(Ordering::Relaxed) {
            let now = sys::monotonic_ns();
            if self.poll_once(tables, now) > 0 {
                empty_passes = 0;
            } else {
                empty_passes = empty_passes.saturating_add(1);
                if let Some(sleep) = self.idle_sleep.filter(|_| empty_passes >= IDLE_PASSES) {
                    std::thread::sleep(sleep);
                }
            }
            if let Some(publisher) = self.publisher.as_mut() {
                publisher.set_busy_ns(self.io.busy_ns);
                publisher.tick(&self.pipeline, now);
            }
            if self.io.polls % PUBLISH_CHECK_EVERY == 0 {
                self.apply_port_changes();
                if now.saturating_sub(last_publish) >= PUBLISH_INTERVAL_NS {
                    self.publish_io_summary();
                    last_publish = now;
                }
            }
        }
        self.publish_io_summary();
        if let Some(publisher) = self.publisher.as_mut() {
            publisher.set_busy_ns(self.io.busy_ns);
            publisher.publish(&self.pipeline, sys::monotonic_ns());
        }
        Ok(())
    }

    /// One pass over all ports at time `now` (monotonic nanoseconds); returns the frames
    /// received. [`Worker::run`] calls it in a loop; tests and custom loops may call it.
    #[inline]
    pub fn poll_once<S: TablesSource + ?Sized>(&mut self, tables: &S, now: u64) -> usize {
        self.io.polls += 1;
        // Loaded at most once per pass, by whichever needs it first (the handoff's owner
        // lookup or the pipeline), and only when a frame arrived.
        let snapshot: OnceCell<Arc<Tables>> = OnceCell::new();
        let load = || snapshot.get_or_init(|| tables.load());
        let mut received = 0;
        for p in 0..self.xsk.port_count() {
            self.xsk.service(p, &mut self.io);
            let pipeline = &mut self.pipeline;
            let keep = self.handoff.as_mut().map(|h| {
                move |ifindex: u32, frame: &[u8]| {
                    h.dispatch(load(), ifindex, frame) == Dispatch::Keep
                }
            });
            received +=
                self.xsk
                    .rx_batch(p, self.batch, &mut self.io, keep, move |ifindex, frames| {
                        pipeline.process(load(), ifindex, frames, now)
                    });
        }
        received += self.take_over_handed_off(&load, now);
        if received > 0 {
            // Busy time: from this pass's clock reading to the end of its work.
            self.io.busy_ns += sys::monotonic_ns().saturating_sub(now);
        } else {
            // `process` paces the conntrack GC after each batch; an idle worker does it here.
            self.pipeline.maintain(now);
        }
        received
    }

    /// Processes the frames other workers handed to this one, in batches of one interface,
    /// until the inboxes are empty or [`HANDOFF_BATCHES_PER_PASS`] batches per inbox were taken
    /// (a batch per pass would fall behind a worker that hands off runs of several interfaces
    /// per pass, and its ring would overflow).
    #[inline]
    fn take_over_handed_off<'t>(&mut self, load: &dyn Fn() -> &'t Arc<Tables>, now: u64) -> usize {
        let Some(handoff) = self.handoff.as_mut() else {
            return 0;
        };
        let mut taken = 0;
        for _ in 0..handoff.inboxes() * HANDOFF_BATCHES_PER_PASS {
            let pipeline = &mut self.pipeline;
            let n = self.xsk.rx_handed_off(
                self.batch,
                &mut self.io,
                |max, sink| handoff.take_over(max, |ifindex, bytes| sink(ifindex, bytes)),
                move |ifindex, frames| pipeline.process(load(), ifindex, frames, now),
            );
            if n == 0 {
                break;
            }
            taken += n;
        }
        taken
    }

    pub fn io_counters(&self) -> &IoCounters {
        &self.io
    }

    pub fn pipeline(&self) -> &Pipeline {
        &self.pipeline
    }

    /// Frames currently on the free list (neither in a ring nor in a batch).
    pub fn free_frames(&self) -> usize {
        self.xsk.free_frames()
    }

    /// Frames in the sockets' fill and RX rings (given to the kernel to receive into, not
    /// consumed yet).
    pub fn filled_frames(&self) -> usize {
        self.xsk.filled_frames()
    }

    /// The kernel's counters of each socket, in port order.
    pub fn socket_stats(&self) -> Vec<SocketStats> {
        let mut out = Vec::new();
        self.xsk.socket_stats(&mut out);
        out
    }
}

impl Worker {
    /// Reads the sockets' counters (a system call each) and hands them, with the I/O
    /// counters, to the publisher.
    fn publish_io_summary(&mut self) {
        if let Some(publisher) = self.publisher.as_mut() {
            self.xsk.socket_stats(&mut self.sockets_scratch);
            let handoff = self
                .handoff
                .as_ref()
                .map(|h| h.counters)
                .unwrap_or_default();
            publisher.set_io(io_summary(&self.io, &self.sockets_scratch, &handoff));
        }
    }
}

fn io_summary(io: &IoCounters, sockets: &[SocketStats], handoff: &HandoffCounters) -> IoSummary {
    let sum = |f: fn(&SocketStats) -> u64| sockets.iter().map(f).sum::<u64>();
    IoSummary {
        polls: io.polls,
        rx_batches: io.rx_batches,
        tx_wakeups: io.tx_wakeups,
        fill_wakeups: io.fill_wakeups,
        fill_starved: io.fill_starved,
        tx_ring_full: io.tx_ring_full,
        sock_rx_dropped: sum(|s| s.rx_dropped),
        sock_rx_ring_full: sum(|s| s.rx_ring_full),
        sock_fill_ring_empty: sum(|s| s.rx_fill_ring_empty_descs),
        handed_off: handoff.handed_off,
        taken_over: io.handoff_frames,
        handoff_dropped: handoff.ring_full + handoff.too_long + io.handoff_no_frame,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::DEFAULT_HEADROOM;

    #[test]
    fn the_io_summary_sums_the_sockets() {
        let io = IoCounters {
            polls: 10,
            rx_batches: 4,
            tx_wakeups: 3,
            ..IoCounters::default()
        };
        let socket = |full, empty| SocketStats {
            rx_dropped: full + empty,
            rx_ring_full: full,
            rx_fill_ring_empty_descs: empty,
            ..SocketStats::default()
        };
        let handoff = HandoffCounters {
            handed_off: 6,
            ring_full: 2,
            too_long: 1,
            ..HandoffCounters::default()
        };
        let s = io_summary(&io, &[socket(5, 1), socket(2, 0)], &handoff);
        assert_eq!((s.handed_off, s.handoff_dropped), (6, 3));
        assert_eq!((s.polls, s.rx_batches, s.tx_wakeups), (10, 4, 3));
        assert_eq!(s.sock_rx_ring_full, 7);
        assert_eq!(s.sock_fill_ring_empty, 1);
        assert_eq!(s.sock_rx_dropped, 8);
    }

    #[test]
    fn a_worker_can_move_to_its_thread() {
        fn send<T: Send>() {}
        send::<Worker>();
    }

    #[test]
    fn a_closure_is_a_tables_source() {
        let tables = Arc::new(Tables::empty(
            Default::default(),
            crate::tables::services::Services::new(crate::tables::maglev::DEFAULT_M, 1)
                .expect("services"),
        ));
        let source = {
            let tables = Arc::clone(&tables);
            move || Arc::clone(&tables)
        };
        let dynamic: &dyn TablesSource = &source;
        assert!(Arc::ptr_eq(&dynamic.load(), &tables));
    }

    #[test]
    fn the_control_socket_handle_is_a_tables_source() {
        let empty = || {
            Tables::empty(
                Default::default(),
                crate::tables::services::Services::new(crate::tables::maglev::DEFAULT_M, 1)
                    .expect("services"),
            )
        };
        let handle = TablesHandle::new(empty());
        let before = TablesSource::load(&handle);
        handle.store(empty());
        let after = TablesSource::load(&handle);
        assert!(
            !Arc::ptr_eq(&before, &after),
            "a store is seen by the next load"
        );
    }

    #[test]
    fn default_geometry_is_valid_and_generous() {
        let cfg = XskConfig::default();
        for size in [
            cfg.frame_size,
            cfg.fill_size,
            cfg.comp_size,
            cfg.rx_size,
            cfg.tx_size,
        ] {
            assert!(size.is_power_of_two(), "{size}");
        }
        assert_eq!(cfg.frame_headroom as usize, DEFAULT_HEADROOM);
        // Enough frames to keep the fill ring full while the RX and TX rings are full too.
        assert!(cfg.frames_per_port >= cfg.fill_size + cfg.rx_size + cfg.tx_size);
    }

    #[test]
    fn a_worker_without_ports_is_refused() {
        let err = Worker::new(WorkerConfig {
            ports: Vec::new(),
            core: None,
            pipeline: PipelineConfig::default(),
            xsk: XskConfig::default(),
        })
        .unwrap_err();
        assert!(matches!(err, IoError::NoPorts), "{err}");
    }

    #[test]
    fn duplicate_ports_and_bad_geometry_are_refused_before_any_socket() {
        let cfg = |ports: Vec<PortSpec>, xsk: XskConfig| WorkerConfig {
            ports,
            core: None,
            pipeline: PipelineConfig::default(),
            xsk,
        };
        let lo = || PortSpec::new("lo", 0);
        let err = Worker::new(cfg(vec![lo(), lo()], XskConfig::default())).unwrap_err();
        assert!(matches!(err, IoError::DuplicatePort { .. }), "{err}");

        let odd = XskConfig {
            fill_size: 1000,
            ..XskConfig::default()
        };
        let err = Worker::new(cfg(vec![lo()], odd)).unwrap_err();
        assert!(
            matches!(
                err,
                IoError::Config {
                    field: "fill_size",
                    ..
                }
            ),
            "{err}"
        );

        let tiny = XskConfig {
            frame_size: 1024,
            ..XskConfig::default()
        };
        let err = Worker::new(cfg(vec![lo()], tiny)).unwrap_err();
        assert!(
            matches!(
                err,
                IoError::Config {
                    field: "frame_size",
                    ..
                }
            ),
            "{err}"
        );

        let no_frames = XskConfig {
            frames_per_port: 0,
            ..XskConfig::default()
        };
        let err = Worker::new(cfg(vec![lo()], no_frames)).unwrap_err();
        assert!(
            matches!(
                err,
                IoError::Config {
                    field: "frames_per_port",
                    ..
                }
            ),
            "{err}"
        );

        let batch = PipelineConfig {
            batch_size: 0,
            ..PipelineConfig::default()
        };
        let err = Worker::new(WorkerConfig {
            pipeline: batch,
            ..cfg(vec![lo()], XskConfig::default())
        })
        .unwrap_err();
        assert!(matches!(err, IoError::Pipeline(_)), "{err}");
    }

    #[test]
    fn a_missing_interface_is_named() {
        let err = Worker::new(WorkerConfig {
            ports: vec![PortSpec::new("fio-missing0", 0)],
            core: None,
            pipeline: PipelineConfig::default(),
            xsk: XskConfig::default(),
        })
        .unwrap_err();
        match err {
            IoError::NoSuchInterface { ifname } => assert_eq!(ifname, "fio-missing0"),
            // Without the privilege to lock the UMEM the error comes first from there.
            IoError::Umem { .. } => {}
            other => panic!("{other}"),
        }
    }
}
