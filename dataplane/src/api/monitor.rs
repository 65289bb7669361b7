//! The monitor socket: a Unix socket of its own (next to the control socket, as Cilium's agent
//! has a monitor socket beside its API) that streams the workers' events as JSON lines
//! ([`super::flow`]) to every subscriber.
//!
//! - [`EventHub`] is built before the workers: [`EventHub::sink`] gives each worker its
//!   [`EventSink`] (its own lossy ring, and the shared "someone listens" switch).
//! - [`MonitorServer::run`], on its own thread, accepts subscribers, turns the switch on while
//!   there is at least one, drains the rings, admits at most `rate` events a second for the
//!   subscribers ([`DEFAULT_RATE`]; the rest are counted and reported as `rate_limited`),
//!   encodes each admitted event once (into a reused buffer, [`super::flow::write_flow`]) and
//!   offers the lines, a chunk of up to [`CHUNK_EVENTS`] at a time, to every subscriber's
//!   bounded queue. The rate limit is what keeps the monitor thread's CPU (encoding) and the
//!   client's (decoding) from competing with the workers under a flood of drops. A subscriber has a writer thread of its own, so a slow
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

use super::flow::{lost_json, write_flow, Clock};
use super::flow_export::{FlowExporter, RateLimiter};
use crate::pipeline::event::Event;
use crate::pipeline::event_ring::{
    event_ring, EventConfig, EventSink, RingConsumer, DEFAULT_RING_EVENTS,
};

/// Events a second the subscribers get by default (each gets the same ones); the rest are
/// reported as `rate_limited`. A person reads far fewer; `-o json` into a file or `--pcap`
/// still get a dense sample of a flood; and encoding them costs the monitor thread ~1% of a
/// core (bench/README.md, "monitor cost").
pub const DEFAULT_RATE: u32 = 10_000;
/// Events encoded into one chunk (one queue entry, one allocation) at most.
pub const CHUNK_EVENTS: u64 = 32;
/// Chunks queued for one subscriber before it loses events (with [`CHUNK_EVENTS`], up to
/// 8192 events, as before chunks).
const SUBSCRIBER_QUEUE_CHUNKS: usize = 256;
/// How often rate-limited events are reported in the stream while they go on (a flood must
/// not turn the reports themselves into a flood); at once when the rings run dry.
const RATE_LIMITED_REPORT_EVERY: Duration = Duration::from_secs(1);
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
    /// Events over the rate limit, not encoded (each subscriber is told of them).
    pub rate_limited: AtomicU64,
    /// Events that reached the monitor thread while subscribers listened: offered to them,
    /// or lost for all of them (rate-limited, or every queue full).
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

/// What a broadcast chunk stands for, in events.
#[derive(Clone, Copy, Debug)]
enum Carries {
    /// This many flow lines.
    Events(u64),
    /// A report of this many events lost before the monitor thread encoded them (a worker's
    /// ring was full, or the rate limit refused them).
    Report(u64),
}

/// The subscribers' admission: the rate limit (`None`: none) and what it refused that the
/// subscribers were not told yet.
struct Admission {
    limiter: Option<RateLimiter>,
    untold: u64,
    last_report: Instant,
}

impl Admission {
    fn new(rate: u32) -> Admission {
        let now = Instant::now();
        Admission {
            limiter: (rate > 0).then(|| RateLimiter::new(rate, now)),
            untold: 0,
            last_report: now,
        }
    }

    /// Whether one more event may go to the subscribers at `now`; a refused one is untold.
    fn admit(&mut self, now: Instant) -> bool {
        let admitted = self.limiter.as_mut().is_none_or(|l| l.admit(now));
        if !admitted {
            self.untold += 1;
        }
        admitted
    }

    /// The refused events to report now, if a report is due (`idle`: the rings ran dry, so
    /// tell at once), and marks them told.
    fn due_report(&mut self, now: Instant, idle: bool) -> Option<u64> {
        let due =
            idle || now.saturating_duration_since(self.last_report) >= RATE_LIMITED_REPORT_EVERY;
        if self.untold == 0 || !due {
            return None;
        }
        self.last_report = now;
        Some(std::mem::take(&mut self.untold))
    }
}

/// One connected reader. Its queue holds chunks of whole lines, each ending in a newline.
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
    admission: Admission,
    /// The lines of admitted events not offered yet, and how many events.
    chunk: String,
    chunk_events: u64,
    /// The current event's line (reused: encoding allocates nothing once it has grown).
    line: String,
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
            admission: Admission::new(DEFAULT_RATE),
            chunk: String::new(),
            chunk_events: 0,
            line: String::new(),
            clock: Clock::new(monotonic_now_ns),
            stats: Arc::new(MonitorStats::default()),
        }
    }

    /// At most `events_per_second` events a second for the subscribers (0: no limit); the
    /// rest are counted and reported as `rate_limited`. Default [`DEFAULT_RATE`].
    pub fn limit_rate(&mut self, events_per_second: u32) {
        self.admission = Admission::new(events_per_second);
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
            self.report_rate_limited(drained == 0);
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
        while let Some(stream) = self.accept_one() {
            // What the earlier subscribers lost is theirs, not the newcomer's.
            self.report_rate_limited(true);
            if let Some(s) = spawn_writer(stream) {
                self.subscribers.push(s);
            }
        }
    }

    /// A pending connection, if any (`None` also on a transient accept error: next round).
    fn accept_one(&self) -> Option<UnixStream> {
        let (_, listener) = self.listener.as_ref()?;
        loop {
            match listener.accept() {
                Ok((stream, _)) => return Some(stream),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return None,
            }
        }
    }

    /// Moves every queued event to the subscribers and the export; returns how many.
    fn drain_rings(&mut self) -> usize {
        let mut drained = 0;
        let deadline = Instant::now() + Duration::from_millis(50);
        for worker in 0..self.hub.rings.len() {
            while let Some(event) = self.hub.rings[worker].pop() {
                drained += 1;
                let now = Instant::now();
                self.dispatch(&event, worker, now);
                if now > deadline {
                    break; // Let the other rings, accepts and loss reports have a turn.
                }
            }
        }
        self.offer_chunk();
        drained
    }

    /// One event: to the subscribers (unless the rate limit refuses it or every queue is
    /// full: then counted lost for each, without the cost of encoding it) and to the export
    /// (its own type filter and rate limit). Encoded once, for both, only when someone takes it.
    fn dispatch(&mut self, event: &Event, worker: usize, now: Instant) {
        let export = self
            .exporter
            .as_mut()
            .is_some_and(|x| x.wants(event.kind) && x.admit(now));
        let listened = !self.subscribers.is_empty();
        if listened {
            self.stats.events.fetch_add(1, Ordering::Relaxed);
        }
        let to_subscribers = listened && self.admit_for_subscribers(now);
        if !to_subscribers && !export {
            return;
        }
        self.line.clear();
        write_flow(&mut self.line, event, worker, &self.clock);
        if to_subscribers {
            self.chunk.push_str(&self.line);
            self.chunk.push('\n');
            self.chunk_events += 1;
            if self.chunk_events >= CHUNK_EVENTS {
                self.offer_chunk();
            }
        }
        if let (true, Some(exporter)) = (export, self.exporter.as_mut()) {
            exporter.offer(Arc::from(self.line.as_str()));
        }
    }

    /// Whether the subscribers take one more event now: within the rate limit (else counted
    /// `rate_limited`), and some queue has room (else counted lost for each subscriber).
    fn admit_for_subscribers(&mut self, now: Instant) -> bool {
        if !self.admission.admit(now) {
            self.stats.rate_limited.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        if self.chunk_events == 0 && self.every_queue_full() {
            self.lose_for_every_subscriber();
            return false;
        }
        true
    }

    /// Offers the chunk of encoded lines to every subscriber (nothing when empty).
    fn offer_chunk(&mut self) {
        if self.chunk_events == 0 {
            return;
        }
        let chunk: Arc<str> = Arc::from(self.chunk.as_str());
        self.broadcast(&chunk, Carries::Events(self.chunk_events));
        self.chunk.clear();
        self.chunk_events = 0;
    }

    /// Tells every subscriber how many events the rate limit refused, when a report is due
    /// (`now_anyway`: the rings ran dry, or a subscriber is about to join).
    fn report_rate_limited(&mut self, now_anyway: bool) {
        if let Some(n) = self.admission.due_report(Instant::now(), now_anyway) {
            let line = lost_line("rate_limited", None, n);
            self.broadcast(&line, Carries::Report(n));
        }
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
            let line = lost_line("worker_ring", Some(worker), new);
            self.broadcast(&line, Carries::Report(new));
        }
    }

    /// Tells each subscriber that lost lines how many, as soon as its queue has room (also
    /// when no further event comes).
    fn tell_subscriber_losses(&mut self) {
        for s in &mut self.subscribers {
            tell_losses(s);
        }
    }

    /// Offers `chunk` to every subscriber, first telling one that lost lines how many. A
    /// subscriber whose queue is full loses what `chunk` carries: its events, or a report of
    /// events lost earlier (which then count as lost for it).
    fn broadcast(&mut self, chunk: &Arc<str>, carries: Carries) {
        for s in &mut self.subscribers {
            tell_losses(s);
            match s.queue.try_send(Arc::clone(chunk)) {
                Ok(()) => {}
                Err(TrySendError::Full(_)) => match carries {
                    Carries::Events(n) => {
                        s.untold_lost += n;
                        self.stats.subscriber_lost.fetch_add(n, Ordering::Relaxed);
                    }
                    // Already counted where it was lost: told to this subscriber, not counted twice.
                    Carries::Report(n) => s.untold_lost += n,
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
    let told = lost_line("subscriber_queue", None, s.untold_lost);
    if s.queue.try_send(told).is_ok() {
        s.untold_lost = 0;
    }
}

/// A lost-events record as a queue entry (a line with its newline).
fn lost_line(source: &str, worker: Option<usize>, lost: u64) -> Arc<str> {
    Arc::from(format!("{}\n", lost_json(source, worker, lost)))
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
    let (queue, lines) = sync_channel::<Arc<str>>(SUBSCRIBER_QUEUE_CHUNKS);
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

/// Writes what is queued (chunks of whole lines), then flushes once the queue is empty:
/// batches writes under load, no delay when idle. An empty chunk is the liveness probe: never
/// written, only flushed.
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
            if out.write_all(line.as_bytes()).is_err() {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::event_ring::RingProducer;
    use crate::pipeline::{DropReason, Verdict};
    use serde_json::Value;
    use std::io::{BufRead, BufReader};

    /// A server without a socket, one ring, and one subscriber at the other end of a pair.
    fn server_with_subscriber(rate: u32) -> (MonitorServer, RingProducer, BufReader<UnixStream>) {
        let (producer, consumer) = event_ring(1 << 16);
        let mut hub = EventHub::new(EventConfig::default());
        hub.rings.push(consumer);
        let mut server = MonitorServer::without_socket(hub, 0);
        server.limit_rate(rate);
        let (ours, theirs) = UnixStream::pair().unwrap();
        server.subscribers.push(spawn_writer(ours).unwrap());
        theirs
            .set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        (server, producer, BufReader::new(theirs))
    }

    fn push_drops(ring: &mut RingProducer, n: u64) {
        for i in 0..n {
            ring.push_with(|e| {
                e.kind = crate::pipeline::event::EventKind::Drop;
                e.verdict = Verdict::Drop(DropReason::PolicyDeniedIngress);
                e.time_ns = i;
            });
        }
    }

    /// Flow lines and lost events by source, read until the stream is quiet.
    fn read_stream(reader: &mut BufReader<UnixStream>) -> (u64, Vec<(String, u64)>) {
        let (mut flows, mut lost) = (0, Vec::new());
        let mut line = String::new();
        while reader.read_line(&mut line).is_ok_and(|n| n > 0) {
            let v: Value = serde_json::from_str(&line).unwrap();
            if v.get("flow").is_some() {
                flows += 1;
            } else {
                let record = &v["lost_events"];
                let source = record["source"].as_str().unwrap().to_string();
                lost.push((source, record["num_events_lost"].as_u64().unwrap()));
            }
            line.clear();
        }
        (flows, lost)
    }

    #[test]
    fn admission_takes_a_burst_then_refuses_and_reports_the_refused_once_due() {
        let mut a = Admission::new(3);
        let t0 = a.last_report;
        let admitted = (0..10).filter(|_| a.admit(t0)).count();
        assert_eq!(admitted, 3, "a burst of the rate");
        assert_eq!(a.due_report(t0, false), None, "not due within the second");
        assert_eq!(a.due_report(t0, true), Some(7), "due at once when idle");
        assert_eq!(a.due_report(t0, true), None, "told once");
        assert!(!a.admit(t0));
        let later = t0 + RATE_LIMITED_REPORT_EVERY;
        assert_eq!(a.due_report(later, false), Some(1), "due after a second");
        assert!(a.admit(later), "refilled");
    }

    #[test]
    fn no_limit_admits_everything() {
        let mut a = Admission::new(0);
        let now = Instant::now();
        assert!((0..100_000).all(|_| a.admit(now)));
        assert_eq!(a.due_report(now, true), None);
    }

    #[test]
    fn a_subscriber_gets_the_rate_and_is_told_the_rest_were_rate_limited() {
        const N: u64 = 5000;
        const RATE: u32 = 100;
        let (mut server, mut ring, mut reader) = server_with_subscriber(RATE);
        push_drops(&mut ring, N);
        let start = Instant::now();
        assert_eq!(server.drain_rings(), N as usize);
        // The bucket refills while the drain runs (slowly, on a loaded machine).
        let refill = (start.elapsed().as_secs_f64() * f64::from(RATE)).ceil() as u64;
        server.report_rate_limited(true);
        let (flows, lost) = read_stream(&mut reader);
        let rate_limited: u64 = lost
            .iter()
            .filter(|(source, _)| source == "rate_limited")
            .map(|(_, n)| n)
            .sum();
        assert!(
            (u64::from(RATE)..=u64::from(RATE) + refill).contains(&flows),
            "a burst of the rate, and what the drain's time refilled ({refill}): {flows} flows"
        );
        assert_eq!(flows + rate_limited, N, "every event read or told lost");
        assert_eq!(lost.len(), 1, "one report: {lost:?}");
        let stats = server.stats();
        assert_eq!(stats.rate_limited.load(Ordering::Relaxed), rate_limited);
        assert_eq!(stats.events.load(Ordering::Relaxed), N);
    }

    #[test]
    fn without_a_limit_every_event_is_sent_in_chunks() {
        const N: u64 = 1000;
        let (mut server, mut ring, mut reader) = server_with_subscriber(0);
        push_drops(&mut ring, N);
        server.drain_rings();
        server.report_rate_limited(true);
        let (flows, lost) = read_stream(&mut reader);
        assert_eq!((flows, lost), (N, vec![]));
        assert_eq!(server.stats().rate_limited.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn a_subscriber_that_joins_is_not_told_what_the_others_lost_before() {
        let (mut server, mut ring, mut first) = server_with_subscriber(10);
        let dir = std::env::temp_dir().join(format!("flagella-monitor-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("m.sock");
        let _ = fs::remove_file(&path);
        let listener = UnixListener::bind(&path).unwrap();
        listener.set_nonblocking(true).unwrap();
        server.listener = Some((path.clone(), listener));
        push_drops(&mut ring, 50);
        server.drain_rings();
        let newcomer = UnixStream::connect(&path).unwrap();
        newcomer
            .set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        server.accept_all();
        assert_eq!(server.subscribers.len(), 2);
        server.report_rate_limited(true);
        let (flows, lost) = read_stream(&mut first);
        assert_eq!((flows, lost), (10, vec![("rate_limited".to_string(), 40)]));
        let seen = read_stream(&mut BufReader::new(newcomer));
        let _ = fs::remove_dir_all(&dir);
        assert_eq!(seen, (0, vec![]), "nothing for the newcomer");
    }
}
