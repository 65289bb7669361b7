//! The monitor socket: a Unix socket of its own (next to the control socket, as Cilium's agent
//! has a monitor socket beside its API) that streams the workers' events as JSON lines
//! ([`super::flow`]) to every subscriber.
//!
//! - [`EventHub`] is built before the workers: [`EventHub::sink`] gives each worker its
//!   [`EventSink`] (its own lossy ring, and the shared "someone listens" switch).
//! - [`MonitorServer::run`], on its own thread, accepts subscribers, turns the switch on while
//!   there is at least one, drains the rings, encodes each event once and offers the line to
//!   every subscriber's bounded queue. A subscriber has a writer thread of its own, so a slow
//!   reader never slows forwarding (the rings are lossy) nor the other subscribers (its queue
//!   is lossy): what it loses is counted and reported to it in the stream
//!   (`{"lost_events": ...}`), as is what the rings lost.
//! - [`MonitorStats`] holds the loss totals for `/metrics`.
//!
//! - A [`FlowExporter`] (flow export to a file or a collector, [`super::flow_export`]) is fed
//!   by the same drain, as one more subscriber with its own type filter and rate limit; the
//!   server then runs even without a socket ([`MonitorServer::without_socket`]).
//!
//! A subscriber sends nothing; it only reads. Filtering is the client's (`flagella monitor`).

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use super::flow::{flow_json, lost_json, Clock};
use super::flow_export::FlowExporter;
use crate::pipeline::event_ring::{
    event_ring, EventConfig, EventSink, RingConsumer, DEFAULT_RING_EVENTS,
};

/// Lines queued for one subscriber before it loses events.
const SUBSCRIBER_QUEUE_LINES: usize = 8192;
/// How long the monitor thread sleeps when the rings were empty.
const IDLE_SLEEP: Duration = Duration::from_millis(5);
/// How long it sleeps while no one listens (it only accepts then).
const NO_LISTENER_SLEEP: Duration = Duration::from_millis(50);

/// Loss totals, for `/metrics`.
#[derive(Debug, Default)]
pub struct MonitorStats {
    /// Events the workers' rings dropped (full ring), summed over workers.
    pub ring_lost: AtomicU64,
    /// Events a subscriber's queue dropped (slow subscriber), summed over subscribers.
    pub subscriber_lost: AtomicU64,
    /// Events encoded and offered to subscribers.
    pub events: AtomicU64,
    /// Subscribers connected now.
    pub subscribers: AtomicUsize,
}

/// The workers' rings and the switch they share; becomes the server's.
#[derive(Debug)]
pub struct EventHub {
    listening: Arc<AtomicBool>,
    cfg: EventConfig,
    ring_events: usize,
    rings: Vec<RingConsumer>,
}

impl EventHub {
    pub fn new(cfg: EventConfig) -> EventHub {
        EventHub {
            listening: Arc::new(AtomicBool::new(false)),
            cfg,
            ring_events: DEFAULT_RING_EVENTS,
            rings: Vec::new(),
        }
    }

    /// A new worker's sink: its own ring (allocated now, once).
    pub fn sink(&mut self) -> EventSink {
        let (producer, consumer) = event_ring(self.ring_events);
        self.rings.push(consumer);
        EventSink::new(producer, Arc::clone(&self.listening), self.cfg)
    }
}

/// Why the monitor socket could not be served. Messages say what to do.
#[derive(Debug, thiserror::Error)]
pub enum MonitorError {
    #[error("cannot bind the monitor socket {path}: {source}; check the directory exists and is writable, or choose another path with --monitor-socket")]
    Bind {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot set the monitor socket {path}'s permissions: {source}; check the filesystem allows chmod")]
    Permissions {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} exists and is not a socket; remove it or choose another --monitor-socket")]
    NotASocket { path: PathBuf },
}

/// What a broadcast line stands for, in events.
#[derive(Clone, Copy, Debug)]
enum Carries {
    OneEvent,
    /// A report of this many events a worker's ring lost.
    RingLoss(u64),
}

/// One connected reader.
struct Subscriber {
    queue: SyncSender<Arc<str>>,
    /// Lines this subscriber's queue refused since it was last told.
    untold_lost: u64,
}

/// The monitor socket and its drain loop.
pub struct MonitorServer {
    /// The socket and its path; `None` when the server only feeds the flow export.
    listener: Option<(PathBuf, UnixListener)>,
    hub: EventHub,
    subscribers: Vec<Subscriber>,
    exporter: Option<FlowExporter>,
    /// Per ring, its loss count already reported.
    ring_lost_told: Vec<u64>,
    clock: Clock,
    stats: Arc<MonitorStats>,
}

impl std::fmt::Debug for MonitorServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MonitorServer")
            .field("path", &self.path())
            .field("exporter", &self.exporter)
            .finish()
    }
}

impl MonitorServer {
    /// Binds `path` with permissions `mode` (the control socket's: 0600, or 0660 with group
    /// access; a stale socket file is replaced). `monotonic_now_ns` is the workers' clock now
    /// (to date events).
    pub fn bind(
        path: impl AsRef<Path>,
        mode: u32,
        hub: EventHub,
        monotonic_now_ns: u64,
    ) -> Result<MonitorServer, MonitorError> {
        let path = path.as_ref().to_path_buf();
        remove_stale_socket(&path)?;
        let listener = UnixListener::bind(&path).map_err(|source| MonitorError::Bind {
            path: path.clone(),
            source,
        })?;
        let nonblocking = listener.set_nonblocking(true);
        let permissions = fs::set_permissions(&path, fs::Permissions::from_mode(mode));
        if let Err(source) = nonblocking.and(permissions) {
            let _ = fs::remove_file(&path);
            return Err(MonitorError::Permissions { path, source });
        }
        let mut server = MonitorServer::without_socket(hub, monotonic_now_ns);
        server.listener = Some((path, listener));
        Ok(server)
    }

    /// A server with no socket, draining the rings for the flow export only (`--monitor-socket
    /// off` with an export configured).
    pub fn without_socket(hub: EventHub, monotonic_now_ns: u64) -> MonitorServer {
        let ring_lost_told = vec![0; hub.rings.len()];
        MonitorServer {
            listener: None,
            hub,
            subscribers: Vec::new(),
            exporter: None,
            ring_lost_told,
            clock: Clock::new(monotonic_now_ns),
            stats: Arc::new(MonitorStats::default()),
        }
    }

    /// Feeds `exporter` too: the rings are then drained (and events captured) all the time.
    pub fn export_to(&mut self, exporter: FlowExporter) {
        self.exporter = Some(exporter);
    }

    /// The loss totals (for `/metrics`), shared with the running server.
    pub fn stats(&self) -> Arc<MonitorStats> {
        Arc::clone(&self.stats)
    }

    /// The socket's path (`None` without a socket).
    pub fn path(&self) -> Option<&Path> {
        self.listener.as_ref().map(|(path, _)| path.as_path())
    }

    /// Serves until `shutdown` is set, then removes the socket file.
    pub fn run(&mut self, shutdown: &AtomicBool) {
        while !shutdown.load(Ordering::Relaxed) {
            self.accept_all();
            let drained = self.drain_rings();
            self.report_ring_losses();
            self.tell_subscriber_losses();
            if let Some(exporter) = self.exporter.as_mut() {
                exporter.report_losses(Instant::now());
            }
            self.subscribers.retain(|s| !is_gone(s));
            self.set_listening();
            if drained == 0 {
                thread::sleep(if !self.anyone_listens() {
                    NO_LISTENER_SLEEP
                } else {
                    IDLE_SLEEP
                });
            }
        }
        self.hub.listening.store(false, Ordering::Relaxed);
        if let Some((path, _)) = &self.listener {
            let _ = fs::remove_file(path);
        }
    }

    /// Subscribers, or the flow export.
    fn anyone_listens(&self) -> bool {
        !self.subscribers.is_empty() || self.exporter.is_some()
    }

    fn accept_all(&mut self) {
        let Some((_, listener)) = &self.listener else {
            return;
        };
        loop {
            match listener.accept() {
                Ok((stream, _)) => {
                    if let Some(s) = spawn_writer(stream) {
                        self.subscribers.push(s);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return, // WouldBlock, or a transient accept error: next round.
            }
        }
    }

    /// Moves every queued event to the subscribers; returns how many.
    fn drain_rings(&mut self) -> usize {
        let mut drained = 0;
        let deadline = Instant::now() + Duration::from_millis(50);
        for worker in 0..self.hub.rings.len() {
            while let Some(event) = self.hub.rings[worker].pop() {
                drained += 1;
                let now = Instant::now();
                let export = self
                    .exporter
                    .as_mut()
                    .is_some_and(|x| x.wants(event.kind) && x.admit(now));
                let listened = !self.subscribers.is_empty();
                let to_subscribers = listened && !self.every_queue_full();
                if listened && !to_subscribers {
                    // Every subscriber would lose it: lost without the cost of encoding it
                    // (under a flood this keeps the monitor thread's CPU for what is read).
                    self.lose_for_every_subscriber();
                    self.stats.events.fetch_add(1, Ordering::Relaxed);
                }
                if !to_subscribers && !export {
                    continue; // Nobody to tell (left over from the last subscriber, or not exported).
                }
                let line: Arc<str> = Arc::from(flow_json(&event, worker, &self.clock).to_string());
                if to_subscribers {
                    self.broadcast(&line, Carries::OneEvent);
                    self.stats.events.fetch_add(1, Ordering::Relaxed);
                }
                if let (true, Some(exporter)) = (export, self.exporter.as_mut()) {
                    exporter.offer(line);
                }
                if now > deadline {
                    break; // Let the other rings, accepts and loss reports have a turn.
                }
            }
        }
        drained
    }

    /// Whether every subscriber's queue is full: each that lost lines is offered its loss
    /// report first, and one whose report still does not fit has no room.
    fn every_queue_full(&mut self) -> bool {
        self.subscribers.iter_mut().all(|s| {
            tell_losses(s);
            s.untold_lost > 0
        })
    }

    /// One event lost by every subscriber (their queues are full), counted as `broadcast`
    /// counts a line a full queue refuses.
    fn lose_for_every_subscriber(&mut self) {
        for s in &mut self.subscribers {
            s.untold_lost += 1;
        }
        let n = self.subscribers.len() as u64;
        self.stats.subscriber_lost.fetch_add(n, Ordering::Relaxed);
    }

    fn report_ring_losses(&mut self) {
        for worker in 0..self.hub.rings.len() {
            let lost = self.hub.rings[worker].lost();
            let new = lost.saturating_sub(self.ring_lost_told[worker]);
            if new == 0 {
                continue;
            }
            self.ring_lost_told[worker] = lost;
            self.stats.ring_lost.fetch_add(new, Ordering::Relaxed);
            if let Some(exporter) = self.exporter.as_mut() {
                exporter.ring_lost(worker, new);
            }
            let line: Arc<str> = Arc::from(lost_json("worker_ring", Some(worker), new).to_string());
            self.broadcast(&line, Carries::RingLoss(new));
        }
    }

    /// Tells each subscriber that lost lines how many, as soon as its queue has room (also
    /// when no further event comes).
    fn tell_subscriber_losses(&mut self) {
        for s in &mut self.subscribers {
            tell_losses(s);
        }
    }

    /// Offers `line` to every subscriber, first telling one that lost lines how many. A
    /// subscriber whose queue is full loses what `line` carries: one event, or the report of
    /// events a ring lost (which then count as lost for it).
    fn broadcast(&mut self, line: &Arc<str>, carries: Carries) {
        for s in &mut self.subscribers {
            tell_losses(s);
            match s.queue.try_send(Arc::clone(line)) {
                Ok(()) => {}
                Err(TrySendError::Full(_)) => match carries {
                    Carries::OneEvent => {
                        s.untold_lost += 1;
                        self.stats.subscriber_lost.fetch_add(1, Ordering::Relaxed);
                    }
                    // Already counted in `ring_lost`: told to this subscriber, not counted twice.
                    Carries::RingLoss(n) => s.untold_lost += n,
                },
                Err(TrySendError::Disconnected(_)) => {}
            }
        }
    }

    fn set_listening(&self) {
        self.stats
            .subscribers
            .store(self.subscribers.len(), Ordering::Relaxed);
        self.hub
            .listening
            .store(self.anyone_listens(), Ordering::Relaxed);
    }
}

/// Queues the lost-events record of a subscriber that lost lines, if its queue has room.
fn tell_losses(s: &mut Subscriber) {
    if s.untold_lost == 0 {
        return;
    }
    let told = lost_json("subscriber_queue", None, s.untold_lost).to_string();
    if s.queue.try_send(Arc::from(told)).is_ok() {
        s.untold_lost = 0;
    }
}

/// A subscriber whose writer thread stopped (it hung up).
fn is_gone(s: &Subscriber) -> bool {
    // A channel says `Disconnected` only on a send: the probe is an empty line, which the
    // writer flushes but never writes.
    matches!(
        s.queue.try_send(Arc::from("")),
        Err(TrySendError::Disconnected(_))
    )
}

/// The subscriber's writer thread, which writes its queued lines until it hangs up.
fn spawn_writer(stream: UnixStream) -> Option<Subscriber> {
    let (queue, lines) = sync_channel::<Arc<str>>(SUBSCRIBER_QUEUE_LINES);
    // Accepted sockets may inherit non-blocking mode from the listener on some systems.
    stream.set_nonblocking(false).ok()?;
    thread::Builder::new()
        .name("monitor-subscriber".into())
        .spawn(move || write_lines(stream, lines))
        .ok()?;
    Some(Subscriber {
        queue,
        untold_lost: 0,
    })
}

/// Writes what is queued, then flushes once the queue is empty: batches writes under load,
/// no delay when idle. An empty line is the liveness probe: never written, only flushed.
fn write_lines(stream: UnixStream, lines: Receiver<Arc<str>>) {
    let mut out = io::BufWriter::new(stream);
    while let Ok(first) = lines.recv() {
        let mut next = Some(first);
        while let Some(line) = next {
            // The probe: a subscriber that hung up while no event came would otherwise stay
            // counted (and listening) until the next event's write failed.
            if line.is_empty() && hung_up(out.get_ref()) {
                return;
            }
            if !line.is_empty() && write_line(&mut out, &line).is_err() {
                return;
            }
            next = lines.try_recv().ok();
        }
        if out.flush().is_err() {
            return;
        }
    }
}

/// Whether the subscriber closed its end: it never sends, so a non-blocking peek that reads
/// end-of-file means it is gone (nothing to read means it is still there).
fn hung_up(stream: &UnixStream) -> bool {
    use std::os::fd::AsRawFd;
    let mut byte = 0u8;
    // SAFETY: `byte` is a valid 1-byte buffer for the call; the descriptor is the stream's,
    // open for the call's duration; MSG_PEEK leaves any data queued, MSG_DONTWAIT never blocks.
    let n = unsafe {
        libc::recv(
            stream.as_raw_fd(),
            (&mut byte as *mut u8).cast(),
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    n == 0
}

fn write_line(out: &mut impl Write, line: &str) -> io::Result<()> {
    out.write_all(line.as_bytes())?;
    out.write_all(b"\n")
}

/// Removes a socket file left by a previous run; refuses to remove anything else.
fn remove_stale_socket(path: &Path) -> Result<(), MonitorError> {
    use std::os::unix::fs::FileTypeExt;
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            let _ = fs::remove_file(path);
            Ok(())
        }
        Ok(_) => Err(MonitorError::NotASocket {
            path: path.to_path_buf(),
        }),
        Err(_) => Ok(()),
    }
}
