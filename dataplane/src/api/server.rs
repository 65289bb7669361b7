//! The control socket: a Unix stream socket, driven by mio on the daemon's control thread.
//!
//! Contract:
//! - [`ControlServer::bind`] creates the socket with mode 0600 (owner: the process, root in
//!   production). The mode is set right after `bind`; until then the socket carries the mode the
//!   umask gives it, which with the usual umask (022) already refuses other users' connects
//!   (connecting needs write permission). Put the socket in a root-only directory
//!   (`/run/flagella`, 0700) to close even that window.
//! - A socket file left by a dead dataplane is removed; a socket somebody still listens on, or a
//!   path that is not a socket, is never touched: `bind` refuses with an error saying what to do.
//! - Many clients at once. Each sends newline-delimited requests and receives one reply line per
//!   request, in request order. Lines may arrive in any number of pieces; a line longer than
//!   [`MAX_LINE`] gets an error reply and is skipped up to its newline; the connection stays.
//!   Nothing read from a socket can panic the server, and a client's error never closes another
//!   client or stops the dataplane.
//! - Backpressure: a client that does not read its replies stops being served (its requests
//!   wait) once [`MAX_PENDING_OUTPUT`] bytes are queued for it; a subscriber that falls that far
//!   behind on events is disconnected (it must resubscribe and re-dump).
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

/// Longest request line accepted (16 MiB): a large `policy.replace` fits.
pub const MAX_LINE: usize = 16 << 20;
/// Output queued for one client beyond which it is throttled (or, for events, dropped).
pub const MAX_PENDING_OUTPUT: usize = 64 << 20;
/// Most clients connected at once; more are accepted and closed at once.
pub const MAX_CLIENTS: usize = 256;
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
    #[error("cannot set mode 0600 on the control socket {path}: {source}: check the file system allows chmod")]
    Permissions {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("polling the control socket failed: {source}: restart the dataplane if this repeats")]
    Poll {
        #[source]
        source: io::Error,
    },
}

/// One client.
#[derive(Debug)]
struct Conn {
    stream: UnixStream,
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
}

impl Conn {
    fn queued(&self) -> usize {
        self.out.len() - self.written
    }

    fn push_line(&mut self, v: &Value) {
        // Serializing a `Value` cannot fail; an empty line would still keep the count right.
        if let Ok(line) = serde_json::to_vec(v) {
            self.out.extend_from_slice(&line);
        }
        self.out.push(b'\n');
    }

    /// Writes as much as the socket takes. `Err` when the connection is dead.
    fn flush(&mut self) -> io::Result<()> {
        while self.written < self.out.len() {
            match self.stream.write(&self.out[self.written..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.written += n,
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

    /// Reads what the socket has (at most a chunk); returns the bytes read. `Err` when the
    /// connection is dead.
    fn fill(&mut self) -> io::Result<usize> {
        let mut chunk = [0u8; 4096];
        let mut got = 0;
        // Never buffer much more than one maximal line: the rest stays in the kernel until
        // lines are consumed (the caller reads again then).
        while !self.eof && got < READ_CHUNK && self.inbuf.len() <= MAX_LINE + READ_CHUNK {
            match self.stream.read(&mut chunk) {
                Ok(0) => self.eof = true,
                Ok(n) => {
                    self.inbuf
                        .extend_from_slice(chunk.get(..n).unwrap_or_default());
                    got += n;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
        Ok(got)
    }

    /// True while this client's requests should wait (a dump pending, replies unread).
    fn paused(&self) -> bool {
        self.pending_ct.is_some() || self.queued() > MAX_PENDING_OUTPUT
    }

    fn done(&self) -> bool {
        self.eof && self.inbuf.is_empty() && self.pending_ct.is_none() && self.queued() == 0
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
    /// Subscribers disconnected for falling behind.
    dropped_subscribers: u64,
}

impl ControlServer {
    /// Creates the socket at `path` (mode 0600) serving `tables` and the workers' `stats`.
    pub fn bind(
        path: impl AsRef<Path>,
        tables: TablesHandle,
        stats: Arc<StatsRegistry>,
    ) -> Result<Self, ServerError> {
        let path = path.as_ref().to_path_buf();
        remove_stale_socket(&path)?;
        let mut listener = UnixListener::bind(&path).map_err(|source| ServerError::Bind {
            path: path.clone(),
            source,
        })?;
        if let Err(source) = fs::set_permissions(&path, fs::Permissions::from_mode(0o600)) {
            let _ = fs::remove_file(&path);
            return Err(ServerError::Permissions { path, source });
        }
        let poll = Poll::new().map_err(|source| ServerError::Poll { source })?;
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)
            .map_err(|source| ServerError::Poll { source })?;
        Ok(ControlServer {
            path,
            poll,
            listener,
            conns: HashMap::new(),
            next_token: 1,
            control: Control::new(tables, stats),
            dropped_subscribers: 0,
        })
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
        self.dropped_subscribers
    }

    /// Serves until `shutdown` is set.
    pub fn run(&mut self, shutdown: &AtomicBool) -> Result<(), ServerError> {
        while !shutdown.load(Ordering::Relaxed) {
            self.poll_once(POLL_INTERVAL)?;
        }
        Ok(())
    }

    /// Waits at most `timeout` for socket activity and serves it (for daemons with their own
    /// loop). Waits less while a conntrack dump is pending.
    pub fn poll_once(&mut self, timeout: Duration) -> Result<(), ServerError> {
        let timeout = if self.conns.values().any(|c| c.pending_ct.is_some()) {
            timeout.min(CT_POLL_INTERVAL)
        } else {
            timeout
        };
        let mut events = Events::with_capacity(64);
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
        // Pending dumps are checked on every wakeup, socket activity or not.
        ready.extend(
            self.conns
                .iter()
                .filter(|(_, c)| c.pending_ct.is_some())
                .map(|(t, _)| *t),
        );
        for token in ready {
            self.drive(token);
        }
        Ok(())
    }

    fn accept(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((mut stream, _)) => {
                    if self.conns.len() >= MAX_CLIENTS {
                        continue; // dropped: closes the connection
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
                        continue;
                    }
                    self.conns.insert(
                        token,
                        Conn {
                            stream,
                            inbuf: Vec::new(),
                            scanned: 0,
                            discarding: false,
                            eof: false,
                            out: Vec::new(),
                            written: 0,
                            subscribed: false,
                            pending_ct: None,
                        },
                    );
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // WouldBlock: all accepted. Other errors (EMFILE...): retry on the next event.
                Err(_) => return,
            }
        }
    }

    /// Reads, serves and writes one client until it would block; closes it when it is done or
    /// broken.
    fn drive(&mut self, token: Token) {
        let mut events = Vec::new();
        let alive = match self.conns.get_mut(&token) {
            Some(conn) => serve(&mut self.control, conn, &mut events).is_ok() && !conn.done(),
            None => return,
        };
        if !alive {
            self.close(token);
        }
        for event in events {
            self.broadcast(&event);
        }
    }

    fn broadcast(&mut self, event: &Value) {
        let mut lagging = Vec::new();
        for (token, conn) in self.conns.iter_mut().filter(|(_, c)| c.subscribed) {
            conn.push_line(event);
            if conn.flush().is_err() || conn.queued() > MAX_PENDING_OUTPUT {
                lagging.push(*token);
            }
        }
        for token in lagging {
            self.dropped_subscribers += 1;
            self.close(token);
        }
    }

    fn close(&mut self, token: Token) {
        if let Some(mut conn) = self.conns.remove(&token) {
            let _ = self.poll.registry().deregister(&mut conn.stream);
        }
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

/// One round for one client: finish a pending dump, read, handle complete lines, write.
/// Change events go to `events` (for every subscriber, this client included).
fn serve(control: &mut Control, conn: &mut Conn, events: &mut Vec<Value>) -> io::Result<()> {
    loop {
        if let Some(p) = &conn.pending_ct {
            match control.finish_ct_dump(p, Instant::now()) {
                Some(reply) => {
                    conn.pending_ct = None;
                    conn.push_line(&reply);
                }
                None => break,
            }
        }
        conn.flush()?;
        if conn.paused() {
            break;
        }
        // Edge-triggered: keep reading until the socket is drained and no line is left.
        let got = conn.fill()?;
        let before = conn.inbuf.len();
        handle_lines(control, conn, events);
        conn.flush()?;
        if conn.paused() || (got == 0 && conn.inbuf.len() == before) {
            break;
        }
    }
    Ok(())
}

/// Handles every complete line in `conn.inbuf` (and, at end of file, the unterminated rest),
/// stopping early when the client must wait.
fn handle_lines(control: &mut Control, conn: &mut Conn, events: &mut Vec<Value>) {
    // Taken out so that replies can be queued on `conn` while lines borrow the buffer.
    let mut inbuf = std::mem::take(&mut conn.inbuf);
    let mut start = 0;
    let mut scan_from = conn.scanned;
    while !conn.paused() && start < inbuf.len() {
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
        let outcome = control.handle_line(line);
        if let Some(reply) = outcome.reply {
            conn.push_line(&reply);
        }
        if let Some(on) = outcome.subscribe {
            conn.subscribed = on;
        }
        conn.pending_ct = outcome.pending_ct;
        events.extend(outcome.event);
    }
    let start = start.min(inbuf.len());
    inbuf.drain(..start);
    conn.scanned = scan_from.saturating_sub(start).min(inbuf.len());
    // An unterminated line already longer than the limit: answer now, drop what we have and
    // skip the rest of it as it arrives.
    if inbuf.len() > MAX_LINE && !conn.paused() {
        inbuf.clear();
        conn.scanned = 0;
        if !std::mem::replace(&mut conn.discarding, true) {
            conn.push_line(&too_long());
        }
    }
    conn.inbuf = inbuf;
}

fn too_long() -> Value {
    error_reply(
        None,
        &RequestError::whole(format!(
            "request line longer than {MAX_LINE} bytes: split it (e.g. several policy.update \
             batches, or policy.replace per direction)"
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
