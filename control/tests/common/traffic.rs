//! Traffic between pods for the tests that run real dataplanes (`e2e_dataplane.rs`,
//! `cluster.rs`): TCP servers inside a namespace, an echo client, and one request to a
//! dataplane's control socket.

#![allow(dead_code)]
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helper: a failure is a failed test

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::Duration;

use serde_json::Value;

use super::net::spawn_in;

/// A TCP server in namespace `netns` on `addr`: every accepted connection is handed to `serve`
/// on its own thread, until `stop`. Returns once the server listens.
pub fn tcp_server(
    netns: &str,
    addr: SocketAddr,
    stop: &Arc<AtomicBool>,
    serve: impl Fn(TcpStream) + Clone + Send + 'static,
) -> thread::JoinHandle<()> {
    let (ready_tx, ready_rx) = mpsc::channel();
    let stop = Arc::clone(stop);
    let handle = spawn_in(netns, move || {
        let listener = TcpListener::bind(addr).expect("bind in the namespace");
        listener.set_nonblocking(true).expect("nonblocking");
        ready_tx.send(()).expect("ready");
        while !stop.load(Ordering::Relaxed) {
            match listener.accept() {
                Ok((stream, _)) => {
                    let _ = stream.set_nonblocking(false);
                    let serve = serve.clone();
                    thread::spawn(move || serve(stream));
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    thread::sleep(Duration::from_millis(5))
                }
                Err(e) => panic!("accept: {e}"),
            }
        }
    });
    ready_rx.recv().expect("server ready");
    handle
}

/// Sends every byte back as it comes, until the peer closes (or 60 s of silence).
pub fn echo(mut stream: TcpStream) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(60)));
    let mut buf = [0u8; 16 << 10];
    loop {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if stream.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
        }
    }
}

/// From namespace `netns`: a new connection to `addr`, 16 KiB sent and read back intact.
pub fn tcp_echo(netns: &str, addr: SocketAddr, timeout: Duration) -> Result<(), String> {
    spawn_in(netns, move || {
        let mut s =
            TcpStream::connect_timeout(&addr, timeout).map_err(|e| format!("connect: {e}"))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .map_err(|e| e.to_string())?;
        let sent: Vec<u8> = (0..16usize << 10)
            .map(|i| (i * 7 + i / 251) as u8)
            .collect();
        s.write_all(&sent).map_err(|e| format!("write: {e}"))?;
        s.shutdown(Shutdown::Write)
            .map_err(|e| format!("shutdown: {e}"))?;
        let mut got = Vec::new();
        s.read_to_end(&mut got)
            .map_err(|e| format!("read back: {e}"))?;
        (got == sent)
            .then_some(())
            .ok_or_else(|| format!("echo differs: {} bytes back", got.len()))
    })
    .join()
    .unwrap_or_else(|p| std::panic::resume_unwind(p))
}

/// One request to the dataplane's control socket at `socket`; the reply must be ok.
pub fn dataplane_request(socket: &Path, request: &Value) -> Value {
    let stream = UnixStream::connect(socket).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut line = request.to_string();
    line.push('\n');
    (&stream).write_all(line.as_bytes()).unwrap();
    let mut reply = String::new();
    BufReader::new(&stream).read_line(&mut reply).unwrap();
    let v: Value = serde_json::from_str(&reply).unwrap_or_else(|e| panic!("`{reply}`: {e}"));
    assert_eq!(v["ok"], true, "{request} -> {v}");
    v
}

/// Datagrams per `sendmmsg` call of [`udp_flood`].
const FLOOD_BATCH: usize = 64;

/// From namespace `netns`: UDP datagrams to `dst` with `sendmmsg`, 64 a call (the bench's
/// socket generator's method; bench depends on this crate, so it cannot be called from here),
/// until at least `at_least` were sent and `stop` is set. Returns how many the kernel took.
pub fn udp_flood(
    netns: &str,
    dst: SocketAddr,
    at_least: usize,
    stop: Arc<AtomicBool>,
) -> thread::JoinHandle<usize> {
    spawn_in(netns, move || {
        let Ok(socket) = std::net::UdpSocket::bind("0.0.0.0:0") else {
            return 0;
        };
        if socket.connect(dst).is_err() {
            return 0;
        }
        let mut sent = 0;
        while sent < at_least || !stop.load(Ordering::Relaxed) {
            match send_batch(&socket) {
                Some(n) => sent += n,
                None => thread::yield_now(), // ENOBUFS and the like: the flood goes on.
            }
        }
        sent
    })
}

/// One `sendmmsg` of [`FLOOD_BATCH`] 8-byte datagrams on the connected `socket`.
fn send_batch(socket: &std::net::UdpSocket) -> Option<usize> {
    use std::os::fd::AsRawFd;
    let mut payload = [[0x46u8; 8]; FLOOD_BATCH];
    let mut iov: Vec<libc::iovec> = payload
        .iter_mut()
        .map(|p| libc::iovec {
            iov_base: p.as_mut_ptr().cast(),
            iov_len: p.len(),
        })
        .collect();
    let mut msgs: Vec<libc::mmsghdr> = iov
        .iter_mut()
        .map(|v| {
            // SAFETY: an all-zero msghdr is valid (no name, no control data); the iovec is set.
            let mut h: libc::mmsghdr = unsafe { std::mem::zeroed() };
            h.msg_hdr.msg_iov = v;
            h.msg_hdr.msg_iovlen = 1;
            h
        })
        .collect();
    // SAFETY: `msgs` holds FLOOD_BATCH headers whose iovecs point into `payload`, all alive
    // for the call; the socket is connected, so no address is needed.
    let n = unsafe {
        libc::sendmmsg(
            socket.as_raw_fd(),
            msgs.as_mut_ptr(),
            FLOOD_BATCH as libc::c_uint,
            0,
        )
    };
    usize::try_from(n).ok()
}
