//! The control socket: a Unix stream socket, driven by mio on the daemon's control thread.
//!
//! Contract:
//! - [`ControlServer::bind`] creates the socket with mode 0600 (owner: the process's user and
//!   group); [`ControlServer::bind_with_access`] with [`SocketAccess::Group`] makes it 0660, so
//!   that members of the process's group may connect too (the agent running as another user).
//!   The mode is set right after `bind`; until then the socket carries the mode the umask gives
//!   it, which with the usual umask (022) already refuses other users' connects (connecting
//!   needs write permission). Put the socket in a directory only those users may enter
//!   (`/run/flagella`, 0700 or 0750) to close even that window.
//! - A socket file left by a dead dataplane is removed; a socket somebody still listens on, or a
//!   path that is not a socket, is never touched: `bind` refuses with an error saying what to do.
//! - Many clients at once. Each sends newline-delimited requests and receives one reply line per
//!   request, in request order. Lines may arrive in any number of pieces; a line longer than
//!   [`MAX_LINE`] gets an error reply and is skipped up to its newline; the connection stays.
//!   Nothing read from a socket can panic the server, and a client's error never closes another
//!   client or stops the dataplane.
//! - Fairness: a client is served in turns of at most [`REQUESTS_PER_TURN`] requests and
//!   [`READS_PER_TURN`] reads; a client with work left is served again after every other ready
//!   client had its turn, so one client streaming requests cannot starve the others.
//! - Memory: a client buffers at most one line of input ([`MAX_LINE`]) and is paused (its
//!   requests wait) once [`MAX_PENDING_OUTPUT`] bytes of replies are queued for it; buffers
//!   shrink back once drained. Above [`BUFFER_BUDGET`] bytes buffered by all clients together,
//!   only clients within their [`CLIENT_ALLOWANCE`] read or get answers until memory is freed,
//!   and a client above its allowance that moved no byte for [`EVICT_AFTER`] is closed.
//!   A subscriber that falls [`MAX_PENDING_OUTPUT`] behind on events is disconnected (it must
//!   resubscribe and re-dump); at most [`MAX_SUBSCRIBERS`] subscribe at once.
//! - Idle clients: a client that moved no byte either way for the idle timeout ([`IDLE_TIMEOUT`]
//!   by default) is closed, unless it is a subscriber with nothing queued (waiting for events is
//!   its job) or waits for a conntrack dump. At [`MAX_CLIENTS`] connections, a new client
//!   replaces the longest-idle one (idle at least [`EVICT_AFTER`], not a subscriber), else it
//!   is closed at once: idle connections cannot lock the agent out.
//! - Staged batches (a change set larger than [`MAX_LINE`] sent as parts): a client's unfinished
//!   ones are freed when it disconnects, and any is freed once its next part is overdue
//!   (`api::staging`).
//! - [`ControlServer::run`] returns when the shutdown flag is set (checked at least every
//!   [`POLL_INTERVAL`]); dropping the server removes the socket file.
//! - Writes to a client that went away fail with `EPIPE`, which closes that client: this relies
//!   on Rust's runtime ignoring `SIGPIPE` (the daemon must not restore its default action).

use std::collections::HashMap;
use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::net::{UnixListener, UnixStream};
use mio::{Events, Interest, Poll, Token};
use serde_json::Value;

use super::control::{error_reply, Control, PendingCtDump};
use super::protocol::RequestError;
use super::publish::{StatsRegistry, TablesHandle};
use super::staging::ClientId;

/// Longest request line accepted (16 MiB): a large `policy.replace` fits.
pub const MAX_LINE: usize = 16 << 20;
/// Output queued for one client beyond which it is paused (or, for events, dropped).
pub const MAX_PENDING_OUTPUT: usize = 16 << 20;
/// Bytes all clients' buffers may hold together before the server stops reading from, and
/// answering, clients above their [`CLIENT_ALLOWANCE`].
pub const BUFFER_BUDGET: usize = 128 << 20;
/// Buffer bytes (input and output) every client may use whatever the others hold: enough for
/// any small request and its reply, so a `ping` is always answered.
pub const CLIENT_ALLOWANCE: usize = 256 << 10;
/// Most clients connected at once.
pub const MAX_CLIENTS: usize = 256;
/// Most subscribers at once; more `subscribe`s are refused.
pub const MAX_SUBSCRIBERS: usize = 64;
/// A client that moved no byte for this long is closed (see the module doc).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// The least idle time of a client replaced by a new one when the server is full, or closed for
/// holding more than its allowance while all buffers are over budget. Longer than the agent's
/// ping interval (1 s), so a live agent is never the one picked.
pub const EVICT_AFTER: Duration = Duration::from_secs(5);
/// Requests served per client per turn.
pub const REQUESTS_PER_TURN: usize = 64;
/// Socket reads (of up to 64 KiB each) per client per turn.
pub const READS_PER_TURN: usize = 16;
/// Longest wait between two checks of the shutdown flag.
pub const POLL_INTERVAL: Duration = Duration::from_millis(100);
/// Poll interval while a conntrack dump waits for the workers.
const CT_POLL_INTERVAL: Duration = Duration::from_millis(5);

const LISTENER: Token = Token(0);
const READ_CHUNK: usize = 64 << 10;

/// Why the server could not start or stopped. Each says what to do.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("another process is listening on the control socket {path}: stop that dataplane first, or give this one another socket path")]
    InUse { path: PathBuf },
    #[error("{path} exists and is not a socket: remove it or choose another control socket path")]
    NotASocket { path: PathBuf },
    #[error("cannot check the existing control socket {path}: {source}: remove it by hand if no dataplane is running")]
    Probe {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot remove the stale control socket {path}: {source}: remove it by hand")]
    RemoveStale {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot create the control socket {path}: {source}: check that its directory exists and that the dataplane runs as root")]
    Bind {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot set mode {mode:04o} on the control socket {path}: {source}: check the file system allows chmod")]
    Permissions {
        path: PathBuf,
        mode: u32,
        #[source]
        source: io::Error,
    },
    #[error("polling the control socket failed: {source}: restart the dataplane if this repeats")]
    Poll {
        #[source]
        source: io::Error,
    },
}

/// Who may connect to the control socket (its file mode).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SocketAccess {
    /// Mode 0600: the process's user only.
    #[default]
    Owner,
    /// Mode 0660: the process's user and group.
    Group,
}

impl SocketAccess {
    pub fn mode(self) -> u32 {
        match self {
            SocketAccess::Owner => 0o600,
            SocketAccess::Group => 0o660,
        }
    }
}

/// What the server closed or refused, for tests and `status`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServerStats {
    /// Subscribers disconnected for not reading their events.
    pub dropped_subscribers: u64,
    /// Clients closed for moving no byte for the idle timeout.
    pub idle_closed: u64,
    /// Idle clients replaced by a new client while the server was full.
    pub evicted: u64,
    /// Connections closed at once because the server was full of busy clients.
    pub refused: u64,
    /// Stalled clients closed for holding more than their allowance over the budget.
    pub shed: u64,
}

/// One client.
#[derive(Debug)]
struct Conn {
    stream: UnixStream,
    /// Its number (its token's), which keys its staged batches.
    client: ClientId,
    /// Received bytes not yet consumed as lines.
    inbuf: Vec<u8>,
    /// Leading bytes of `inbuf` known to hold no newline (so a long line is scanned once).
    scanned: usize,
    /// Skipping the rest of an over-long line, up to its newline.
    discarding: bool,
    /// The peer closed its writing side: process what is left, flush, close.
    eof: bool,
    out: Vec<u8>,
    /// Bytes of `out` already written.
    written: usize,
    subscribed: bool,
    pending_ct: Option<PendingCtDump>,
    /// When a byte last moved either way (or the client connected).
    last_progress: Instant,
    /// Work was left when its turn ended (lines buffered, or bytes left in the socket): it is
    /// served again without waiting for a socket event.
    more: bool,
}

/// What a client may buffer during one turn.
#[derive(Clone, Copy, Debug)]
struct Limits {
    /// Most input bytes buffered (one line, or the allowance while over budget).
    input: usize,
    /// Queued output beyond which requests wait.
    output: usize,
}

impl Limits {
    fn for_budget(over_budget: bool) -> Self {
        if over_budget {
            Limits {
                input: CLIENT_ALLOWANCE,
                output: CLIENT_ALLOWANCE,
            }
        } else {
            Limits {
                input: MAX_LINE + READ_CHUNK,
                output: MAX_PENDING_OUTPUT,
            }
        }
    }
}

impl Conn {
    fn new(stream: UnixStream, client: ClientId, now: Instant) -> Self {
        Conn {
            stream,
            client,
            inbuf: Vec::new(),
            scanned: 0,
            discarding: false,
            eof: false,
            out: Vec::new(),
            written: 0,
            subscribed: false,
            pending_ct: None,
            last_progress: now,
            more: false,
        }
    }

    fn queued(&self) -> usize {
        self.out.len() - self.written
    }

    /// Heap bytes this client's buffers hold.
    fn buffered(&self) -> usize {
        self.inbuf.capacity() + self.out.capacity()
    }

    fn push_line(&mut self, v: &Value) {
        // Serializing a `Value` cannot fail; an empty line would still keep the count right.
        if let Ok(line) = serde_json::to_vec(v) {
            self.out.extend_from_slice(&line);
        }
        self.out.push(b'\n');
    }

    fn push_raw_line(&mut self, line: &[u8]) {
        self.out.extend_from_slice(line);
        self.out.push(b'\n');
    }

    /// Writes as much as the socket takes. `Err` when the connection is dead.
    fn flush(&mut self) -> io::Result<()> {
        while self.written < self.out.len() {
            match self.stream.write(&self.out[self.written..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    self.written += n;
                    self.last_progress = Instant::now();
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
        if self.written == self.out.len() {
            self.out.clear();
            self.written = 0;
        }
        Ok(())
    }

    /// Reads what the socket has, at most a chunk and never beyond `cap` buffered bytes.
    /// Returns true when the socket may hold more (the read stopped at a limit, not because
    /// the socket was drained). `Err` when the connection is dead.
    fn fill(&mut self, cap: usize) -> io::Result<bool> {
        let mut chunk = [0u8; 4096];
        let mut got = 0;
        loop {
            if self.eof {
                return Ok(false);
            }
            if got >= READ_CHUNK || self.inbuf.len() >= cap {
                return Ok(true);
            }
            match self.stream.read(&mut chunk) {
                Ok(0) => self.eof = true,
                Ok(n) => {
                    self.inbuf
                        .extend_from_slice(chunk.get(..n).unwrap_or_default());
                    got += n;
                    self.last_progress = Instant::now();
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Gives memory back once a large line or reply is gone.
    fn shrink(&mut self) {
        shrink_vec(&mut self.inbuf);
        if self.written == 0 {
            shrink_vec(&mut self.out);
        }
    }

    /// True while this client's requests should wait (a dump pending, replies unread).
    fn paused(&self, limits: Limits) -> bool {
        self.pending_ct.is_some() || self.queued() > limits.output
    }

    fn done(&self) -> bool {
        self.eof && self.inbuf.is_empty() && self.pending_ct.is_none() && self.queued() == 0
    }

    /// Whether the idle timeout applies: a subscriber waiting with nothing queued and a client
    /// waiting for a dump are not idle.
    fn may_time_out(&self) -> bool {
        self.pending_ct.is_none() && !(self.subscribed && self.queued() == 0)
    }
}

/// Keeps a buffer's capacity within twice its contents (and at least one read chunk).
fn shrink_vec(v: &mut Vec<u8>) {
    let keep = v.len().max(READ_CHUNK);
    if v.capacity() > 2 * keep {
        v.shrink_to(keep);
    }
}

/// The control socket server (see the module doc).
#[derive(Debug)]
pub struct ControlServer {
    path: PathBuf,
    poll: Poll,
    listener: UnixListener,
    conns: HashMap<Token, Conn>,
    next_token: usize,
    control: Control,
    subscribers: usize,
    idle_timeout: Duration,
    stats: ServerStats,
}

impl ControlServer {
    /// Creates the socket at `path` (mode 0600) serving `tables` and the workers' `stats`.
    pub fn bind(
        path: impl AsRef<Path>,
        tables: TablesHandle,
        stats: Arc<StatsRegistry>,
    ) -> Result<Self, ServerError> {
        Self::bind_with_access(path, SocketAccess::Owner, tables, stats)
    }

    /// [`ControlServer::bind`] with the socket's mode chosen by `access`.
    /// Serves `interface.add`/`interface.remove` through `interfaces` (the daemon's workers and
    /// XDP programs).
    pub fn set_interfaces(&mut self, interfaces: Box<dyn super::Interfaces>) {
        self.control.set_interfaces(interfaces);
    }

    pub fn bind_with_access(
        path: impl AsRef<Path>,
        access: SocketAccess,
        tables: TablesHandle,
        stats: Arc<StatsRegistry>,
    ) -> Result<Self, ServerError> {
        let path = path.as_ref().to_path_buf();
        remove_stale_socket(&path)?;
        let mut listener = UnixListener::bind(&path).map_err(|source| ServerError::Bind {
            path: path.clone(),
            source,
        })?;
        let mode = access.mode();
        if let Err(source) = fs::set_permissions(&path, fs::Permissions::from_mode(mode)) {
            let _ = fs::remove_file(&path);
            return Err(ServerError::Permissions { path, mode, source });
        }
        let poll = Poll::new().map_err(|source| ServerError::Poll { source })?;
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)
            .map_err(|source| ServerError::Poll { source })?;
        let mut control = Control::new(tables, stats);
        control.set_events_wanted(false);
        Ok(ControlServer {
            path,
            poll,
            listener,
            conns: HashMap::new(),
            next_token: 1,
            control,
            subscribers: 0,
            idle_timeout: IDLE_TIMEOUT,
            stats: ServerStats::default(),
        })
    }

    /// Replaces [`IDLE_TIMEOUT`] (tests use a short one).
    pub fn set_idle_timeout(&mut self, timeout: Duration) {
        self.idle_timeout = timeout;
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn control(&self) -> &Control {
        &self.control
    }

    /// Connected clients.
    pub fn clients(&self) -> usize {
        self.conns.len()
    }

    /// Subscribers disconnected so far for not reading their events.
    pub fn dropped_subscribers(&self) -> u64 {
        self.stats.dropped_subscribers
    }

    /// What the server closed or refused so far.
    pub fn stats(&self) -> ServerStats {
        self.stats
    }

    /// Heap bytes all clients' buffers hold.
    pub fn buffered(&self) -> usize {
        self.conns.values().map(Conn::buffered).sum()
    }

    /// Serves until `shutdown` is set.
    pub fn run(&mut self, shutdown: &AtomicBool) -> Result<(), ServerError> {
        while !shutdown.load(Ordering::Relaxed) {
            self.poll_once(POLL_INTERVAL)?;
        }
        Ok(())
    }

    /// Waits at most `timeout` for socket activity and serves it (for daemons with their own
    /// loop). Waits less while a conntrack dump is pending, and not at all while a client has
    /// work left from its last turn.
    pub fn poll_once(&mut self, timeout: Duration) -> Result<(), ServerError> {
        let over_budget = self.buffered() > BUFFER_BUDGET;
        let timeout = self.next_timeout(timeout, over_budget);
        let mut events = Events::with_capacity(256);
        match self.poll.poll(&mut events, Some(timeout)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(()),
            Err(source) => return Err(ServerError::Poll { source }),
        }
        let mut ready = Vec::new();
        for event in events.iter() {
            if event.token() == LISTENER {
                self.accept();
            } else {
                ready.push(event.token());
            }
        }
        // Pending dumps are checked on every wakeup, socket activity or not; clients with work
        // left get their next turn.
        ready.extend(
            self.conns
                .iter()
                .filter(|(_, c)| c.pending_ct.is_some() || c.more)
                .map(|(t, _)| *t),
        );
        ready.sort_unstable();
        ready.dedup();
        let limits = Limits::for_budget(over_budget);
        for token in ready {
            self.drive(token, limits);
        }
        let now = Instant::now();
        self.close_idle(now);
        self.control.expire_staged(now);
        if over_budget {
            self.shed_stalled(now);
        }
        Ok(())
    }

    /// Over the budget: closes the clients that hold more than their allowance and moved no
    /// byte for [`EVICT_AFTER`] (replies nobody reads, a line that never ends), so that the
    /// memory goes back to the clients that use it.
    fn shed_stalled(&mut self, now: Instant) {
        let stalled: Vec<Token> = self
            .conns
            .iter()
            // A client waiting for its next turn (`more`) is stalled by the server, not by
            // its peer: it is not the one to close.
            .filter(|(_, c)| {
                c.queued() > CLIENT_ALLOWANCE || (c.inbuf.len() > CLIENT_ALLOWANCE && !c.more)
            })
            .filter(|(_, c)| now.duration_since(c.last_progress) >= EVICT_AFTER)
            .map(|(t, _)| *t)
            .collect();
        for token in stalled {
            self.stats.shed += 1;
            self.close(token);
        }
    }

    /// How long the next poll may wait.
    fn next_timeout(&self, timeout: Duration, over_budget: bool) -> Duration {
        let mut timeout = timeout;
        if self.conns.values().any(|c| c.pending_ct.is_some()) {
            timeout = timeout.min(CT_POLL_INTERVAL);
        }
        if self.conns.values().any(|c| c.more) {
            // Over budget, waiting clients are retried at the poll interval (memory frees as
            // other clients read); otherwise at once.
            timeout = if over_budget {
                timeout.min(POLL_INTERVAL)
            } else {
                Duration::ZERO
            };
        }
        timeout
    }

    fn accept(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => self.admit(stream),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // WouldBlock: all accepted. Other errors (EMFILE...): retry on the next event.
                Err(_) => return,
            }
        }
    }

    /// Registers a new client, making room by closing the longest-idle one when full.
    fn admit(&mut self, mut stream: UnixStream) {
        let now = Instant::now();
        if self.conns.len() >= MAX_CLIENTS {
            match self.longest_idle(now) {
                Some(victim) => {
                    self.stats.evicted += 1;
                    self.close(victim);
                }
                None => {
                    self.stats.refused += 1;
                    return; // dropped: closes the connection
                }
            }
        }
        let token = Token(self.next_token);
        self.next_token += 1;
        let interest = Interest::READABLE | Interest::WRITABLE;
        if self
            .poll
            .registry()
            .register(&mut stream, token, interest)
            .is_err()
        {
            return;
        }
        self.conns
            .insert(token, Conn::new(stream, token.0 as ClientId, now));
    }

    /// The client idle longest, if any has been idle for [`EVICT_AFTER`] and may be closed.
    fn longest_idle(&self, now: Instant) -> Option<Token> {
        self.conns
            .iter()
            .filter(|(_, c)| !c.subscribed && c.pending_ct.is_none())
            .filter(|(_, c)| now.duration_since(c.last_progress) >= EVICT_AFTER)
            .min_by_key(|(_, c)| c.last_progress)
            .map(|(t, _)| *t)
    }

    /// Closes the clients that moved no byte for the idle timeout.
    fn close_idle(&mut self, now: Instant) {
        let idle: Vec<Token> = self
            .conns
            .iter()
            .filter(|(_, c)| c.may_time_out())
            .filter(|(_, c)| now.duration_since(c.last_progress) >= self.idle_timeout)
            .map(|(t, _)| *t)
            .collect();
        for token in idle {
            self.stats.idle_closed += 1;
            self.close(token);
        }
    }

    /// Gives one client its turn: reads, serves and writes until it would block or its turn is
    /// over; closes it when it is done or broken.
    fn drive(&mut self, token: Token, limits: Limits) {
        let mut events = Vec::new();
        let alive = match self.conns.get_mut(&token) {
            Some(conn) => {
                let mut turn = Turn {
                    control: &mut self.control,
                    events: &mut events,
                    subscribers: &mut self.subscribers,
                    limits,
                };
                // A client that ends here while subscribed is counted out by `close`.
                serve(&mut turn, conn).is_ok() && !conn.done()
            }
            None => return,
        };
        if !alive {
            self.close(token);
        }
        for event in events {
            self.broadcast(&event);
        }
        self.control.set_events_wanted(self.subscribers > 0);
    }

    fn broadcast(&mut self, event: &[u8]) {
        let mut lagging = Vec::new();
        for (token, conn) in self.conns.iter_mut().filter(|(_, c)| c.subscribed) {
            conn.push_raw_line(event);
            if conn.flush().is_err() || conn.queued() > MAX_PENDING_OUTPUT {
                lagging.push(*token);
            }
        }
        for token in lagging {
            self.stats.dropped_subscribers += 1;
            self.close(token);
        }
    }

    fn close(&mut self, token: Token) {
        if let Some(mut conn) = self.conns.remove(&token) {
            let _ = self.poll.registry().deregister(&mut conn.stream);
            if let Some(p) = &conn.pending_ct {
                self.control.cancel_ct_dump(p);
            }
            self.control.abandon_staged(conn.client);
            if conn.subscribed {
                self.subscribers = self.subscribers.saturating_sub(1);
                self.control.set_events_wanted(self.subscribers > 0);
            }
        }
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

/// What one client's turn works with besides the client.
struct Turn<'a> {
    control: &'a mut Control,
    /// Change events produced (for every subscriber, this client included).
    events: &'a mut Vec<Vec<u8>>,
    /// Subscribers connected (kept in step as this client subscribes or unsubscribes).
    subscribers: &'a mut usize,
    limits: Limits,
}

/// One turn for one client: finish a pending dump, then read, handle complete lines and write,
/// up to the turn's limits. Sets `conn.more` when work is left for a later turn.
fn serve(turn: &mut Turn<'_>, conn: &mut Conn) -> io::Result<()> {
    conn.more = false;
    if let Some(p) = &conn.pending_ct {
        match turn.control.finish_ct_dump(p, Instant::now()) {
            Some(reply) => {
                conn.pending_ct = None;
                conn.push_line(&reply);
            }
            None => return Ok(()),
        }
    }
    conn.flush()?;
    let mut handled = 0;
    let mut reads = 0;
    while !conn.paused(turn.limits) {
        if reads == READS_PER_TURN || handled >= REQUESTS_PER_TURN {
            conn.more = true;
            break;
        }
        reads += 1;
        let unread = conn.fill(turn.limits.input)?;
        handled += handle_lines(turn, conn, REQUESTS_PER_TURN - handled);
        conn.flush()?;
        if handled >= REQUESTS_PER_TURN && !conn.paused(turn.limits) {
            conn.more = true;
            break;
        }
        if !unread {
            break; // drained: the next event brings more
        }
        if conn.inbuf.len() >= turn.limits.input {
            // Over the budget with a partial line: retried when memory frees.
            conn.more = true;
            break;
        }
    }
    conn.shrink();
    Ok(())
}

/// Handles at most `max` complete lines in `conn.inbuf` (and, at end of file, the unterminated
/// rest), stopping early when the client must wait. Returns the number of lines handled.
fn handle_lines(turn: &mut Turn<'_>, conn: &mut Conn, max: usize) -> usize {
    // Taken out so that replies can be queued on `conn` while lines borrow the buffer.
    let mut inbuf = std::mem::take(&mut conn.inbuf);
    let mut start = 0;
    let mut scan_from = conn.scanned;
    let mut handled = 0;
    while handled < max && !conn.paused(turn.limits) && start < inbuf.len() {
        let from = start.max(scan_from);
        let rest = inbuf.get(from..).unwrap_or_default();
        let (line_end, next) = match rest.iter().position(|b| *b == b'\n') {
            Some(i) => (from + i, from + i + 1),
            None if conn.eof => (inbuf.len(), inbuf.len()),
            None => {
                scan_from = inbuf.len();
                break;
            }
        };
        let line = inbuf.get(start..line_end).unwrap_or_default();
        start = next;
        if std::mem::take(&mut conn.discarding) {
            continue; // the tail of an over-long line, already answered
        }
        if line.len() > MAX_LINE {
            conn.push_line(&too_long());
            continue;
        }
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        handled += 1;
        handle_line(turn, conn, line);
    }
    let start = start.min(inbuf.len());
    inbuf.drain(..start);
    conn.scanned = scan_from.saturating_sub(start).min(inbuf.len());
    // An unterminated line already longer than the limit: answer now, drop what we have and
    // skip the rest of it as it arrives.
    if inbuf.len() > MAX_LINE && !conn.paused(turn.limits) {
        inbuf.clear();
        conn.scanned = 0;
        if !std::mem::replace(&mut conn.discarding, true) {
            conn.push_line(&too_long());
        }
    }
    conn.inbuf = inbuf;
    handled
}

/// One request: its reply queued on `conn`, its event (if any) added to the turn's.
fn handle_line(turn: &mut Turn<'_>, conn: &mut Conn, line: &[u8]) {
    let outcome = turn.control.handle_client_line(conn.client, line);
    match outcome.subscribe {
        Some(true) if !conn.subscribed && *turn.subscribers >= MAX_SUBSCRIBERS => {
            conn.push_line(&too_many_subscribers(line));
            return;
        }
        Some(on) if on != conn.subscribed => {
            conn.subscribed = on;
            if on {
                *turn.subscribers += 1;
            } else {
                *turn.subscribers = turn.subscribers.saturating_sub(1);
            }
            // Events from the next change on (this client's own included).
            turn.control.set_events_wanted(*turn.subscribers > 0);
        }
        _ => {}
    }
    if let Some(reply) = outcome.reply {
        conn.push_line(&reply);
    }
    conn.pending_ct = outcome.pending_ct;
    turn.events.extend(outcome.event);
}

fn too_many_subscribers(line: &[u8]) -> Value {
    let seq = super::protocol::parse_request(line)
        .ok()
        .and_then(|e| e.seq);
    error_reply(
        seq.as_ref(),
        &RequestError::whole(format!(
            "{MAX_SUBSCRIBERS} clients are subscribed already: retry later, or close an idle \
             `flagella monitor`"
        )),
    )
}

fn too_long() -> Value {
    error_reply(
        None,
        &RequestError::whole(format!(
            "request line longer than {MAX_LINE} bytes: split it into the parts of a staged \
             batch (`batch` with `txn`, `part`, `more`; see docs/control-socket.md)"
        )),
    )
}

/// Makes `path` free for a new socket: absent is fine; a socket nobody listens on is removed;
/// anything else is refused.
fn remove_stale_socket(path: &Path) -> Result<(), ServerError> {
    let meta = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(ServerError::Probe {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    if !meta.file_type().is_socket() {
        return Err(ServerError::NotASocket {
            path: path.to_path_buf(),
        });
    }
    match std::os::unix::net::UnixStream::connect(path) {
        Ok(_) => Err(ServerError::InUse {
            path: path.to_path_buf(),
        }),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
            fs::remove_file(path).map_err(|source| ServerError::RemoveStale {
                path: path.to_path_buf(),
                source,
            })
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(ServerError::Probe {
            path: path.to_path_buf(),
            source,
        }),
    }
}
