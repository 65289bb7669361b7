//! Flow export: the monitor's JSON flows ([`super::flow`], one definition) appended to a file or
//! written to a collector's Unix socket, rate-limited, with the monitor's loss accounting.
//!
//! - [`FlowExporter`] lives on the monitor thread ([`super::monitor::MonitorServer`] drains the
//!   workers' lossy rings for it as for a subscriber): it keeps the event types asked for,
//!   admits at most `rate` flows a second ([`RateLimiter`], a token bucket with one second of
//!   burst), and offers each line to a bounded queue (lossy: a slow or absent collector never
//!   slows the monitor thread, let alone forwarding).
//! - A writer thread of its own empties the queue into the [`ExportTarget`]: a file opened for
//!   appending, reopened on SIGHUP (the daemon sets the flag) or when the path's inode changes
//!   (rotation by rename, or a deleted file); or a Unix stream socket, reconnected every
//!   [`RETRY`] while the collector is away. A line whose write failed is kept and written once
//!   the output is back, so every loss happens at one place, the queue, and is counted there.
//! - Losses are reported in the stream, at most once per [`LOSS_REPORT_EVERY`], as the monitor
//!   reports them (`{"lost_events": {"source": ..., "num_events_lost": N}}`, sources
//!   `worker_ring` (with its worker), `rate_limited`, `export_queue`), and in `/metrics`
//!   ([`ExportStats`]).
//!
//! Why a stream socket rather than datagrams: the output is the same newline-delimited JSON as
//! the file and the monitor socket (collectors such as Vector and Fluent Bit read it as is),
//! a lost collector shows as a failed write (and a reconnect), and nothing is lost silently in
//! a full datagram buffer: every loss is at the queue, counted.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use super::flow::lost_json;
use crate::pipeline::event::EventKind;

/// Lines queued for the writer before flows are lost (as a monitor subscriber's queue).
pub const EXPORT_QUEUE_LINES: usize = 8192;
/// Default flows per second.
pub const DEFAULT_RATE: u32 = 10_000;
/// How often losses are reported in the stream, at most (a flood must not turn the loss
/// reports themselves into a flood).
pub const LOSS_REPORT_EVERY: Duration = Duration::from_secs(1);
/// How long the writer waits before reconnecting or reopening after a failure; also how often
/// it checks a file's inode while idle.
pub const RETRY: Duration = Duration::from_secs(1);

/// Where flows go: `file:PATH` or `unix:PATH`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExportTarget {
    /// Appended, one JSON object per line.
    File(PathBuf),
    /// A collector listening on a Unix stream socket; the same lines.
    Unix(PathBuf),
}

impl FromStr for ExportTarget {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (kind, path) = s.split_once(':').ok_or_else(|| {
            format!("`{s}`: write file:PATH or unix:PATH (e.g. file:/var/log/flagella/flows.json)")
        })?;
        if path.is_empty() {
            return Err(format!(
                "`{s}`: the path is empty; write file:PATH or unix:PATH"
            ));
        }
        match kind {
            "file" => Ok(ExportTarget::File(PathBuf::from(path))),
            "unix" => Ok(ExportTarget::Unix(PathBuf::from(path))),
            other => Err(format!(
                "`{other}:`: unknown export target; write file:PATH or unix:PATH"
            )),
        }
    }
}

impl std::fmt::Display for ExportTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExportTarget::File(p) => write!(f, "file:{}", p.display()),
            ExportTarget::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

/// The event types `name`s (`drop`, `policy-verdict`, `trace`, as `flagella monitor --type`).
pub fn parse_kinds(names: &[String]) -> Result<Vec<EventKind>, String> {
    const ALL: [EventKind; 3] = [EventKind::Drop, EventKind::PolicyVerdict, EventKind::Trace];
    names
        .iter()
        .map(|name| {
            ALL.into_iter()
                .find(|k| k.name() == name.as_str())
                .ok_or_else(|| format!("event type `{name}`: use drop, policy-verdict or trace"))
        })
        .collect()
}

/// What to export and how fast.
#[derive(Clone, Debug)]
pub struct ExportConfig {
    pub target: ExportTarget,
    /// Flows per second, at most (also the burst); 0: none (only loss reports).
    pub rate: u32,
    /// The event types exported; empty: all.
    pub kinds: Vec<EventKind>,
}

/// The export's totals, for `/metrics`.
#[derive(Debug, Default)]
pub struct ExportStats {
    /// Flows queued for the writer.
    pub flows: AtomicU64,
    /// Flows the rate limit refused.
    pub rate_limited: AtomicU64,
    /// Flows the full queue refused (the collector or the disk was slow or away).
    pub queue_lost: AtomicU64,
    /// Lines written to the output.
    pub written: AtomicU64,
    /// Failed writes, opens and connects (each retried).
    pub write_errors: AtomicU64,
    /// Times the file was reopened (rotation, SIGHUP) or the socket (re)connected.
    pub reopens: AtomicU64,
}

/// A token bucket: `rate` admissions a second, up to `rate` at once after an idle second.
/// Pure (time is passed in), so tests drive it.
#[derive(Clone, Debug)]
pub struct RateLimiter {
    rate: u64,
    /// Tokens, in billionths (a token is `NANOS`), so refills need no floating point.
    tokens: u128,
    last: Instant,
}

const NANOS: u128 = 1_000_000_000;

impl RateLimiter {
    /// Full (a burst of `rate` is admitted at once).
    pub fn new(rate: u32, now: Instant) -> RateLimiter {
        RateLimiter {
            rate: u64::from(rate),
            tokens: u128::from(rate) * NANOS,
            last: now,
        }
    }

    /// Whether one more flow may go at `now` (takes a token when it may).
    pub fn admit(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_nanos();
        self.last = self.last.max(now);
        let capacity = u128::from(self.rate) * NANOS;
        // elapsed [ns] * rate [tokens/s] = billionths of tokens.
        self.tokens = (self.tokens + elapsed.min(NANOS) * u128::from(self.rate)).min(capacity);
        if self.tokens >= NANOS {
            self.tokens -= NANOS;
            true
        } else {
            false
        }
    }
}

/// Losses not reported in the stream yet.
#[derive(Debug, Default)]
struct Untold {
    /// Per worker, events its ring lost.
    ring: Vec<u64>,
    rate_limited: u64,
    queue: u64,
}

/// The monitor thread's side of the export (see the module's doc).
pub struct FlowExporter {
    kinds: Vec<EventKind>,
    limiter: RateLimiter,
    queue: SyncSender<Arc<str>>,
    untold: Untold,
    last_report: Instant,
    stats: Arc<ExportStats>,
    /// Set when the exporter is dropped: the writer stops retrying.
    closing: Arc<AtomicBool>,
}

impl std::fmt::Debug for FlowExporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FlowExporter")
            .field("kinds", &self.kinds)
            .finish()
    }
}

/// Why the export could not start. Messages say what to do.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("cannot start the flow export's writer thread: {0}; raise the process's thread limit or turn the export off (flow_export = \"off\")")]
    Spawn(#[source] io::Error),
}

impl FlowExporter {
    /// Starts the writer thread. `reopen`: set (by SIGHUP) to have the file reopened or the
    /// socket reconnected; the writer clears it.
    pub fn start(
        cfg: &ExportConfig,
        reopen: &'static AtomicBool,
    ) -> Result<FlowExporter, ExportError> {
        let (queue, lines) = sync_channel::<Arc<str>>(EXPORT_QUEUE_LINES);
        let stats = Arc::new(ExportStats::default());
        let closing = Arc::new(AtomicBool::new(false));
        let mut writer = Writer {
            output: Output::new(cfg.target.clone()),
            stats: Arc::clone(&stats),
            closing: Arc::clone(&closing),
            reopen,
        };
        thread::Builder::new()
            .name("flow-export".into())
            .spawn(move || writer.run(&lines))
            .map_err(ExportError::Spawn)?;
        Ok(FlowExporter::with_queue(cfg, queue, stats, closing))
    }

    fn with_queue(
        cfg: &ExportConfig,
        queue: SyncSender<Arc<str>>,
        stats: Arc<ExportStats>,
        closing: Arc<AtomicBool>,
    ) -> FlowExporter {
        let now = Instant::now();
        FlowExporter {
            kinds: cfg.kinds.clone(),
            limiter: RateLimiter::new(cfg.rate, now),
            queue,
            untold: Untold::default(),
            last_report: now,
            stats,
            closing,
        }
    }

    /// The totals, shared with `/metrics`.
    pub fn stats(&self) -> Arc<ExportStats> {
        Arc::clone(&self.stats)
    }

    /// Whether an event of this type is exported at all (before the rate limit).
    pub fn wants(&self, kind: EventKind) -> bool {
        self.kinds.is_empty() || self.kinds.contains(&kind)
    }

    /// Whether a wanted event may go now; a refused one is counted as rate-limited.
    pub fn admit(&mut self, now: Instant) -> bool {
        if self.limiter.admit(now) {
            return true;
        }
        self.untold.rate_limited += 1;
        self.stats.rate_limited.fetch_add(1, Ordering::Relaxed);
        false
    }

    /// Queues an admitted flow's line; a full queue loses it (counted).
    pub fn offer(&mut self, line: Arc<str>) {
        match self.queue.try_send(line) {
            Ok(()) => {
                self.stats.flows.fetch_add(1, Ordering::Relaxed);
            }
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.untold.queue += 1;
                self.stats.queue_lost.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// `lost` more events worker `worker`'s ring dropped (counted in the monitor's totals).
    pub fn ring_lost(&mut self, worker: usize, lost: u64) {
        if self.untold.ring.len() <= worker {
            self.untold.ring.resize(worker + 1, 0);
        }
        self.untold.ring[worker] += lost;
    }

    /// Queues the loss records due (at most once per [`LOSS_REPORT_EVERY`]); a record the
    /// queue cannot take now stays untold, for the next report.
    pub fn report_losses(&mut self, now: Instant) {
        if now.saturating_duration_since(self.last_report) < LOSS_REPORT_EVERY {
            return;
        }
        self.last_report = now;
        for worker in 0..self.untold.ring.len() {
            let n = self.untold.ring[worker];
            if n > 0 && self.tell(lost_json("worker_ring", Some(worker), n).to_string()) {
                self.untold.ring[worker] = 0;
            }
        }
        let n = self.untold.rate_limited;
        if n > 0 && self.tell(lost_json("rate_limited", None, n).to_string()) {
            self.untold.rate_limited = 0;
        }
        let n = self.untold.queue;
        if n > 0 && self.tell(lost_json("export_queue", None, n).to_string()) {
            self.untold.queue = 0;
        }
    }

    fn tell(&self, line: String) -> bool {
        self.queue.try_send(Arc::from(line)).is_ok()
    }
}

impl Drop for FlowExporter {
    fn drop(&mut self) {
        self.closing.store(true, Ordering::Relaxed);
    }
}

/// The writer thread: the queue into the output.
struct Writer {
    output: Output,
    stats: Arc<ExportStats>,
    closing: Arc<AtomicBool>,
    reopen: &'static AtomicBool,
}

impl Writer {
    /// Writes lines until the exporter is gone, flushing whenever the queue is empty (batched
    /// writes under load, no delay when idle) and checking for rotation at least every
    /// [`RETRY`].
    fn run(&mut self, lines: &Receiver<Arc<str>>) {
        loop {
            self.maintain();
            match lines.recv_timeout(RETRY) {
                Ok(line) => {
                    self.write_retrying(&line);
                    while let Ok(line) = lines.try_recv() {
                        self.write_retrying(&line);
                    }
                    if self.output.flush().is_err() {
                        self.failed();
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    let _ = self.output.flush();
                    return;
                }
            }
        }
    }

    /// Reopens on SIGHUP or a rotated file.
    fn maintain(&mut self) {
        let asked = self.reopen.swap(false, Ordering::Relaxed);
        if asked || self.output.rotated() {
            let _ = self.output.flush();
            self.output.close();
        }
    }

    /// Writes `line`, retrying (reopening or reconnecting every [`RETRY`]) until it is written
    /// or the exporter is gone: the line in hand is never dropped; the queue is where flows
    /// are lost, and counted.
    fn write_retrying(&mut self, line: &str) {
        while !self.closing.load(Ordering::Relaxed) {
            if !self.output.is_open() {
                match self.output.open() {
                    Ok(()) => {
                        self.stats.reopens.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(_) => {
                        self.failed();
                        continue;
                    }
                }
            }
            match self.output.write_line(line) {
                Ok(()) => {
                    self.stats.written.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                Err(_) => self.failed(),
            }
        }
    }

    fn failed(&mut self) {
        self.stats.write_errors.fetch_add(1, Ordering::Relaxed);
        self.output.close();
        thread::sleep(RETRY);
    }
}

/// The open file or connected socket, if any.
enum Sink {
    Closed,
    /// The file and its (device, inode), to notice rotation.
    File(BufWriter<File>, (u64, u64)),
    Unix(BufWriter<UnixStream>),
}

/// The export's output: its target and what is open of it.
struct Output {
    target: ExportTarget,
    sink: Sink,
    last_rotation_check: Instant,
}

impl Output {
    fn new(target: ExportTarget) -> Output {
        Output {
            target,
            sink: Sink::Closed,
            last_rotation_check: Instant::now(),
        }
    }

    fn is_open(&self) -> bool {
        !matches!(self.sink, Sink::Closed)
    }

    fn open(&mut self) -> io::Result<()> {
        self.sink = match &self.target {
            ExportTarget::File(path) => {
                let file = open_append(path)?;
                let meta = file.metadata()?;
                Sink::File(BufWriter::new(file), (meta.dev(), meta.ino()))
            }
            ExportTarget::Unix(path) => Sink::Unix(BufWriter::new(UnixStream::connect(path)?)),
        };
        Ok(())
    }

    fn close(&mut self) {
        self.sink = Sink::Closed;
    }

    fn write_line(&mut self, line: &str) -> io::Result<()> {
        match &mut self.sink {
            Sink::Closed => Err(io::ErrorKind::NotConnected.into()),
            Sink::File(out, _) => write_line(out, line),
            Sink::Unix(out) => write_line(out, line),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match &mut self.sink {
            Sink::Closed => Ok(()),
            Sink::File(out, _) => out.flush(),
            Sink::Unix(out) => out.flush(),
        }
    }

    /// Whether the open file's path now names another file, or none (checked at most every
    /// [`RETRY`]: a `stat`, off the fast path).
    fn rotated(&mut self) -> bool {
        let Sink::File(_, opened) = &self.sink else {
            return false;
        };
        if self.last_rotation_check.elapsed() < RETRY {
            return false;
        }
        self.last_rotation_check = Instant::now();
        let ExportTarget::File(path) = &self.target else {
            return false;
        };
        match fs::metadata(path) {
            Ok(meta) => (meta.dev(), meta.ino()) != *opened,
            Err(_) => true,
        }
    }
}

/// Opens `path` for appending, creating it (mode 0640: flows name pods and addresses).
fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .open(path)
}

fn write_line(out: &mut impl Write, line: &str) -> io::Result<()> {
    out.write_all(line.as_bytes())?;
    out.write_all(b"\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    #[test]
    fn targets_parse_and_bad_ones_say_what_to_write() {
        assert_eq!(
            "file:/tmp/f.json".parse(),
            Ok(ExportTarget::File("/tmp/f.json".into()))
        );
        assert_eq!(
            "unix:/run/c.sock".parse(),
            Ok(ExportTarget::Unix("/run/c.sock".into()))
        );
        for bad in ["/tmp/f", "tcp:1.2.3.4:5", "file:"] {
            let e = bad.parse::<ExportTarget>().unwrap_err();
            assert!(e.contains("file:PATH or unix:PATH"), "{bad}: {e}");
        }
        assert_eq!(
            parse_kinds(&["drop".into(), "trace".into()]),
            Ok(vec![EventKind::Drop, EventKind::Trace])
        );
        assert!(parse_kinds(&["drops".into()]).is_err());
    }

    #[test]
    fn the_rate_limiter_admits_a_burst_then_the_rate() {
        let t0 = Instant::now();
        let mut limiter = RateLimiter::new(10, t0);
        let admitted = (0..100).filter(|_| limiter.admit(t0)).count();
        assert_eq!(admitted, 10, "one second's worth at once");
        // 100 ms later: one more token.
        let t1 = t0 + Duration::from_millis(100);
        assert!(limiter.admit(t1));
        assert!(!limiter.admit(t1));
        // An hour idle refills to the burst, no more.
        let t2 = t1 + Duration::from_secs(3600);
        assert_eq!((0..100).filter(|_| limiter.admit(t2)).count(), 10);
        // Over 10 s at 1 ms steps: 10 a second, 100 in all (+/- the token in flight).
        let mut limiter = RateLimiter::new(10, t0);
        let _ = (0..10).filter(|_| limiter.admit(t0)).count();
        let steady = (1..=10_000)
            .filter(|ms| limiter.admit(t0 + Duration::from_millis(*ms)))
            .count();
        assert!((99..=101).contains(&steady), "{steady}");
        let mut none = RateLimiter::new(0, t0);
        assert!(!none.admit(t0 + Duration::from_secs(5)));
    }

    fn exporter(
        rate: u32,
        kinds: Vec<EventKind>,
        queue: usize,
    ) -> (FlowExporter, Receiver<Arc<str>>) {
        let (tx, rx) = sync_channel(queue);
        let cfg = ExportConfig {
            target: ExportTarget::File("/nonexistent".into()),
            rate,
            kinds,
        };
        let x =
            FlowExporter::with_queue(&cfg, tx, Arc::default(), Arc::new(AtomicBool::new(false)));
        (x, rx)
    }

    /// The records in the queue: (flows, lost by source).
    fn drain(rx: &Receiver<Arc<str>>) -> (u64, Vec<(String, u64)>) {
        let mut flows = 0;
        let mut lost = Vec::new();
        while let Ok(line) = rx.try_recv() {
            let v: Value = serde_json::from_str(&line).unwrap();
            if v.get("flow").is_some() {
                flows += 1;
            } else {
                let l = &v["lost_events"];
                lost.push((
                    l["source"].as_str().unwrap().to_string(),
                    l["num_events_lost"].as_u64().unwrap(),
                ));
            }
        }
        (flows, lost)
    }

    /// What a monitor thread does with one event.
    fn event(x: &mut FlowExporter, now: Instant) {
        if x.admit(now) {
            x.offer(Arc::from(r#"{"flow":{}}"#));
        }
    }

    #[test]
    fn every_event_is_exported_or_reported_lost_by_rate_limit_queue_or_ring() {
        let (mut x, rx) = exporter(100, Vec::new(), 50);
        let t0 = Instant::now(); // After the exporter's start: its clock begins before.
                                 // 300 events at once: 100 admitted, 200 rate-limited; of the 100, 50 fit the queue.
        for _ in 0..300 {
            event(&mut x, t0);
        }
        x.ring_lost(1, 7);
        let stats = x.stats();
        assert_eq!(stats.flows.load(Ordering::Relaxed), 50);
        assert_eq!(stats.queue_lost.load(Ordering::Relaxed), 50);
        assert_eq!(stats.rate_limited.load(Ordering::Relaxed), 200);
        // Not reported before a second has passed; the full queue then takes no report.
        x.report_losses(t0);
        let (flows, lost) = drain(&rx);
        assert_eq!((flows, lost.len()), (50, 0));
        x.report_losses(t0 + LOSS_REPORT_EVERY);
        let (_, lost) = drain(&rx);
        assert_eq!(
            lost,
            [
                ("worker_ring".to_string(), 7),
                ("rate_limited".to_string(), 200),
                ("export_queue".to_string(), 50)
            ]
        );
        // Told once: the next report has nothing new.
        x.report_losses(t0 + 2 * LOSS_REPORT_EVERY);
        assert_eq!(drain(&rx), (0, Vec::new()));
        // A report the queue refuses stays untold until it fits.
        let (mut x, rx) = exporter(1, Vec::new(), 1);
        let t0 = Instant::now();
        event(&mut x, t0);
        event(&mut x, t0);
        x.report_losses(t0 + LOSS_REPORT_EVERY);
        assert_eq!(drain(&rx), (1, Vec::new()));
        x.report_losses(t0 + 2 * LOSS_REPORT_EVERY);
        assert_eq!(drain(&rx), (0, vec![("rate_limited".to_string(), 1)]));
    }

    #[test]
    fn filters_keep_the_types_asked_for() {
        let (x, _rx) = exporter(10, vec![EventKind::Drop], 1);
        assert!(x.wants(EventKind::Drop));
        assert!(!x.wants(EventKind::PolicyVerdict));
        let (x, _rx) = exporter(10, Vec::new(), 1);
        assert!(x.wants(EventKind::Trace));
    }

    static NO_REOPEN: AtomicBool = AtomicBool::new(false);
    static REOPEN: AtomicBool = AtomicBool::new(false);

    fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !done() {
            assert!(Instant::now() < deadline, "{what}");
            thread::sleep(Duration::from_millis(20));
        }
    }

    #[test]
    fn the_file_is_appended_and_reopened_after_rotation_and_on_sighup() {
        let dir = std::env::temp_dir().join(format!("flow-export-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("flows.json");
        fs::write(&path, "{\"earlier\":1}\n").unwrap();
        let cfg = ExportConfig {
            target: ExportTarget::File(path.clone()),
            rate: 1000,
            kinds: Vec::new(),
        };
        let mut x = FlowExporter::start(&cfg, &REOPEN).unwrap();
        let line = |n: u32| Arc::from(format!("{{\"flow\":{{\"n\":{n}}}}}"));
        x.offer(line(1));
        let read = |p: &Path| fs::read_to_string(p).unwrap_or_default();
        wait_until("the first flow is appended", || {
            read(&path).lines().count() == 2
        });
        assert!(read(&path).starts_with("{\"earlier\":1}\n"), "appended");
        // Rotation by rename: the next flows go to a new file at the path.
        let rotated = dir.join("flows.json.1");
        fs::rename(&path, &rotated).unwrap();
        wait_until("the rotated file is noticed", || {
            x.offer(line(2));
            read(&path).contains("\"n\":2")
        });
        // SIGHUP (the flag): reopened even though the inode is the same.
        let reopens = x.stats().reopens.load(Ordering::Relaxed);
        REOPEN.store(true, Ordering::Relaxed);
        wait_until("the file is reopened on request", || {
            x.offer(line(3));
            x.stats().reopens.load(Ordering::Relaxed) > reopens
        });
        for l in read(&path).lines().chain(read(&rotated).lines()) {
            serde_json::from_str::<Value>(l).unwrap_or_else(|e| panic!("{l}: {e}"));
        }
        drop(x);
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_unix_collector_that_comes_back_is_reconnected() {
        use std::io::{BufRead, BufReader};
        use std::os::unix::net::UnixListener;
        let dir = std::env::temp_dir().join(format!("flow-export-u-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("collector.sock");
        let cfg = ExportConfig {
            target: ExportTarget::Unix(path.clone()),
            rate: 1000,
            kinds: Vec::new(),
        };
        let mut x = FlowExporter::start(&cfg, &NO_REOPEN).unwrap();
        // No collector yet: the line waits (the writer retries), nothing is lost.
        x.offer(Arc::from("{\"flow\":{\"n\":1}}"));
        let read_one = |listener: &UnixListener| {
            let (s, _) = listener.accept().unwrap();
            let mut r = BufReader::new(s);
            let mut l = String::new();
            r.read_line(&mut l).unwrap();
            l
        };
        let listener = UnixListener::bind(&path).unwrap();
        assert_eq!(read_one(&listener), "{\"flow\":{\"n\":1}}\n");
        // The collector goes away and comes back: the writer's failed write reconnects.
        drop(listener);
        fs::remove_file(&path).unwrap();
        let listener = UnixListener::bind(&path).unwrap();
        listener.set_nonblocking(true).unwrap();
        wait_until("the exporter reconnects", || {
            x.offer(Arc::from("{\"flow\":{\"n\":2}}"));
            listener.accept().is_ok()
        });
        assert_eq!(x.stats().queue_lost.load(Ordering::Relaxed), 0);
        drop(x);
        let _ = fs::remove_dir_all(&dir);
    }
}
