//! TCP connection setup rate: many concurrent clients, each in a loop of connect, a small
//! request, the server's small response, close; counted in completed connections per second
//! over a window (the `ingress` benchmark's second figure).
//!
//! The server runs in one namespace ([`Server::start`]), the clients in another
//! ([`run_clients`]), as threads of this process moved there with `setns` (their sockets stay
//! in the namespace they were made in). The server writes its response and closes first, so
//! TIME_WAIT lands on the server's side and a client's source port is free again at once: the
//! clients never run out of ports in a long run. Every blocking call has a timeout, so a
//! connection that the path loses costs its client at most [`IO_TIMEOUT`] and is counted as
//! failed, never hangs the run.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crate::traffic::monotonic_ns;
use crate::BenchError;

/// What a client sends after connecting.
pub const REQUEST: &[u8; 32] = b"flagella-bench connrate request\n";
/// What the server answers before it closes.
pub const RESPONSE: &[u8; 64] =
    b"flagella-bench connrate response; then the server closes first.\n";
/// Connect, read and write timeout of every socket.
pub const IO_TIMEOUT: Duration = Duration::from_secs(1);
/// How long the clients run before the window opens (handshakes of the first wave, ARP).
pub const CONN_WARMUP: Duration = Duration::from_millis(500);

/// Accepting threads of the server: each accepts and serves one connection at a time.
const ACCEPTORS: usize = 4;
/// How often an idle acceptor looks at the stop flag.
const ACCEPT_POLL_MS: i32 = 100;

/// A request/response server on `addr` inside a namespace; stopped and joined on drop.
#[derive(Debug)]
pub struct Server {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Server {
    /// Listens on `addr` in namespace `ns` (backlog: the kernel's somaxconn) and serves with
    /// [`ACCEPTORS`] threads.
    pub fn start(ns: &str, addr: SocketAddrV4) -> Result<Server, BenchError> {
        let listener = listen_in(ns, addr)?;
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for _ in 0..ACCEPTORS {
            let listener = listener
                .try_clone()
                .map_err(|e| BenchError::io("cloning the connrate listener", e))?;
            let stop = stop.clone();
            threads.push(std::thread::spawn(move || serve(&listener, &stop)));
        }
        Ok(Server { stop, threads })
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// A non-blocking listener on `addr`, made inside `ns` by a short-lived thread.
fn listen_in(ns: &str, addr: SocketAddrV4) -> Result<TcpListener, BenchError> {
    let ns = ns.to_string();
    let made = std::thread::spawn(move || -> Result<TcpListener, BenchError> {
        crate::probe::enter_netns(&ns)?;
        let l = TcpListener::bind(addr)
            .map_err(|e| BenchError::io(format!("listening on {addr} in {ns} (port taken?)"), e))?;
        l.set_nonblocking(true)
            .map_err(|e| BenchError::io("non-blocking listener", e))?;
        Ok(l)
    });
    made.join()
        .map_err(|_| BenchError::Failed("the listener thread panicked".into()))?
}

/// One acceptor: waits (with a timeout, to see `stop`) for a connection, serves it, repeats.
fn serve(listener: &TcpListener, stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        let mut pfd = libc::pollfd {
            fd: listener.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd for the duration of the call.
        let ready = unsafe { libc::poll(&mut pfd, 1, ACCEPT_POLL_MS) };
        if ready <= 0 {
            continue;
        }
        // Another acceptor may have taken it (WouldBlock): just poll again.
        if let Ok((stream, _)) = listener.accept() {
            let _ = answer(stream);
        }
    }
}

/// Reads the request, writes the response, closes (first).
fn answer(mut stream: TcpStream) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    stream.set_nodelay(true)?;
    let mut request = [0u8; REQUEST.len()];
    stream.read_exact(&mut request)?;
    stream.write_all(RESPONSE)
}

/// Counts shared by the clients.
#[derive(Debug, Default)]
struct Counts {
    completed: AtomicU64,
    failed: AtomicU64,
}

/// What the clients achieved over the window.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ConnRate {
    /// Connections completed (connect, request, whole response, the server's close) per second.
    pub per_second: f64,
    /// Connections that failed (refused, timed out, short response) inside the window.
    pub failed: u64,
    pub completed: u64,
    pub clients: usize,
}

/// `clients` threads in namespace `ns` connect to `to` in a loop; the window opens after
/// [`CONN_WARMUP`] and lasts `window`. Returns the rate inside the window.
pub fn run_clients(
    ns: &str,
    to: SocketAddrV4,
    clients: usize,
    window: Duration,
) -> Result<ConnRate, BenchError> {
    let counts = Arc::new(Counts::default());
    let stop = Arc::new(AtomicBool::new(false));
    let mut threads = Vec::new();
    for _ in 0..clients {
        let (ns, counts, stop) = (ns.to_string(), counts.clone(), stop.clone());
        threads.push(std::thread::spawn(move || -> Result<(), BenchError> {
            crate::probe::enter_netns(&ns)?;
            while !stop.load(Ordering::Relaxed) {
                match one_connection(to) {
                    Ok(()) => counts.completed.fetch_add(1, Ordering::Relaxed),
                    Err(_) => counts.failed.fetch_add(1, Ordering::Relaxed),
                };
            }
            Ok(())
        }));
    }
    let result = window_of(&counts, window);
    stop.store(true, Ordering::Relaxed);
    let mut entered = Ok(());
    for t in threads {
        match t.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => entered = Err(e),
            Err(_) => entered = Err(BenchError::Failed("a client thread panicked".into())),
        }
    }
    entered?;
    let (completed, failed, seconds) = result?;
    Ok(ConnRate {
        per_second: completed as f64 / seconds.max(1e-9),
        failed,
        completed,
        clients,
    })
}

/// (completed, failed, seconds) between the window's opening and its end.
fn window_of(counts: &Counts, window: Duration) -> Result<(u64, u64, f64), BenchError> {
    crate::signals::sleep(CONN_WARMUP)?;
    let (c0, f0, t0) = (
        counts.completed.load(Ordering::Relaxed),
        counts.failed.load(Ordering::Relaxed),
        monotonic_ns(),
    );
    crate::signals::sleep(window)?;
    let (c1, f1, t1) = (
        counts.completed.load(Ordering::Relaxed),
        counts.failed.load(Ordering::Relaxed),
        monotonic_ns(),
    );
    Ok((c1 - c0, f1 - f0, (t1 - t0) as f64 / 1e9))
}

/// Connect, send [`REQUEST`], read until the server closes; `Err` unless the whole
/// [`RESPONSE`] came back.
fn one_connection(to: SocketAddrV4) -> std::io::Result<()> {
    let mut s = TcpStream::connect_timeout(&SocketAddr::V4(to), IO_TIMEOUT)?;
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    s.set_write_timeout(Some(IO_TIMEOUT))?;
    s.set_nodelay(true)?;
    s.write_all(REQUEST)?;
    let mut response = Vec::with_capacity(RESPONSE.len());
    s.read_to_end(&mut response)?;
    if response.as_slice() == RESPONSE {
        Ok(())
    } else {
        Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{} of {} response bytes", response.len(), RESPONSE.len()),
        ))
    }
}

/// Where a server listens: every address of its namespace, `port`.
pub fn any(port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The loop itself on loopback (no namespace: the current one): connections complete and
    /// none fail.
    #[test]
    fn clients_complete_connections_on_loopback() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let server = {
            let stop = stop.clone();
            std::thread::spawn(move || serve(&listener, &stop))
        };
        let to = SocketAddrV4::new(Ipv4Addr::LOCALHOST, port);
        for _ in 0..20 {
            one_connection(to).unwrap();
        }
        stop.store(true, Ordering::Relaxed);
        server.join().unwrap();
        assert!(one_connection(to).is_err(), "nobody listens any more");
    }
}
