//! The control socket under abuse, against the real `flagella-dataplane` (feature `afxdp`,
//! root): issue 14, findings 9 and 10.
//!
//! Each test starts its own daemon: node namespace `fca<x>-<pid>` with one pod (veth
//! `fca<x><pid>h1`), the daemon serving that veth (so one worker answers conntrack dumps),
//! scratch files in a private `mkdtemp` directory. While a well-behaved client pings every
//! 200 ms on its own connection, one abuse runs:
//!
//! - 300 connections left idle: a new client's `ping` is answered (an idle connection makes
//!   room for it);
//! - one connection streaming `status` requests as fast as the server answers: new clients'
//!   pings are answered meanwhile (clients are served in turns);
//! - 4 clients pipelining 20 000 `status` requests each without reading a reply, then a 16 MiB
//!   line of tiny JSON values: refused, memory bounded;
//! - two conntrack dumps at once from two clients, 20 times: every one is answered `ok` (no
//!   false timeout);
//! - a `policy.update` of 5 000 overlapping port ranges (added, then deleted, 40 times), each
//!   answered `ok` (40 rounds), while a subscriber that never reads falls behind: the server disconnects it.
//!
//! Then every ping of the well-behaved client was answered and the daemon's peak resident
//! memory (`VmHWM`) stayed under [`PEAK_BOUND_MIB`]. Deadlines here (30 s per reply) only say
//! "did not hang"; nothing asserts a speed.
//!
//! Needs root, `ip netns`, BPF and AF_XDP; skips with a message otherwise (a failure under
//! `CI=true`).

#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests: a failed setup stops the test.

mod support;

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::Ipv4Addr;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::daemon::Daemon;
use support::{build_pods, preflight, PodNamespaces};

const DAEMON: &str = env!("CARGO_BIN_EXE_flagella-dataplane");
/// "Did not hang": the longest any single reply may take.
const REPLY_DEADLINE: Duration = Duration::from_secs(30);
/// The daemon's peak resident memory must stay under this.
const PEAK_BOUND_MIB: u64 = 384;
/// Port ranges in the large policy update.
const RANGES: u32 = 5000;

fn skip_or_fail(reason: &str) {
    testkit::skip(&format!("control_abuse: {reason}"));
}

/// A client with a read deadline: one request line, one reply line.
struct Client {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Client {
    fn connect(path: &Path) -> std::io::Result<Client> {
        let writer = UnixStream::connect(path)?;
        writer.set_read_timeout(Some(REPLY_DEADLINE))?;
        let reader = BufReader::new(writer.try_clone()?);
        Ok(Client { reader, writer })
    }

    /// Sends `line` and returns the reply line parsed, or why there is none.
    fn call_raw(&mut self, line: &[u8]) -> Result<Value, String> {
        self.writer
            .write_all(line)
            .and_then(|()| self.writer.write_all(b"\n"))
            .map_err(|e| format!("write: {e}"))?;
        let mut reply = String::new();
        match self.reader.read_line(&mut reply) {
            Ok(0) => Err("the server closed the connection".into()),
            Ok(_) => serde_json::from_str(&reply).map_err(|e| format!("reply `{reply}`: {e}")),
            Err(e) => Err(format!("no reply: {e}")),
        }
    }

    fn call(&mut self, request: &Value) -> Result<Value, String> {
        self.call_raw(request.to_string().as_bytes())
    }

    fn ok(&mut self, request: &Value) -> Value {
        let reply = self
            .call(request)
            .unwrap_or_else(|e| panic!("{request}: {e}"));
        assert_eq!(reply["ok"], true, "{request} -> {reply}");
        reply
    }
}

/// A `ping` on a new connection.
fn fresh_ping(socket: &Path) -> Result<(), String> {
    let mut c = Client::connect(socket).map_err(|e| format!("connect: {e}"))?;
    let r = c.call(&json!({"op":"ping"}))?;
    if r["ok"] == true {
        Ok(())
    } else {
        Err(format!("ping refused: {r}"))
    }
}

/// Retries [`fresh_ping`] until it succeeds or the deadline passes (the server may need a
/// moment before an idle connection qualifies to make room).
fn fresh_ping_within(socket: &Path, deadline: Duration) -> Result<(), String> {
    let end = Instant::now() + deadline;
    loop {
        match fresh_ping(socket) {
            Ok(()) => return Ok(()),
            Err(e) if Instant::now() >= end => return Err(e),
            Err(_) => thread::sleep(Duration::from_millis(200)),
        }
    }
}

/// The well-behaved client: pings on one connection until stopped; counts answers and
/// failures (a failure ends it: its connection is gone or stuck).
struct Pinger {
    stop: Arc<AtomicBool>,
    answered: Arc<AtomicU64>,
    thread: Option<thread::JoinHandle<Result<(), String>>>,
}

impl Pinger {
    /// Returns once the pinger is connected (so that it is a client before any abuse starts).
    fn start(socket: PathBuf) -> Pinger {
        let stop = Arc::new(AtomicBool::new(false));
        let answered = Arc::new(AtomicU64::new(0));
        let (st, an) = (Arc::clone(&stop), Arc::clone(&answered));
        let (connected_tx, connected_rx) = std::sync::mpsc::channel();
        let thread = thread::spawn(move || {
            let connected = Client::connect(&socket).map_err(|e| format!("connect: {e}"));
            let _ = connected_tx.send(());
            let mut c = connected?;
            let mut seq = 0u64;
            while !st.load(Ordering::Relaxed) {
                seq += 1;
                let r = c.call(&json!({"op":"ping","seq":seq}))?;
                if r["ok"] != true || r["seq"] != seq {
                    return Err(format!("ping {seq}: {r}"));
                }
                an.fetch_add(1, Ordering::Relaxed);
                thread::sleep(Duration::from_millis(200));
            }
            Ok(())
        });
        let _ = connected_rx.recv();
        Pinger {
            stop,
            answered,
            thread: Some(thread),
        }
    }

    /// Stops it; the number of pings answered, or the first failure.
    fn finish(mut self) -> Result<u64, String> {
        self.stop.store(true, Ordering::Relaxed);
        let outcome = self
            .thread
            .take()
            .map(|t| {
                t.join()
                    .unwrap_or_else(|_| Err("the pinger panicked".into()))
            })
            .unwrap_or(Ok(()));
        outcome.map(|()| self.answered.load(Ordering::Relaxed))
    }
}

/// Streams `status` requests and reads the replies, each on its own thread, until stopped.
struct Streamer {
    stop: Arc<AtomicBool>,
    threads: Vec<thread::JoinHandle<()>>,
    replies: Arc<AtomicU64>,
}

impl Streamer {
    fn start(socket: &Path) -> Streamer {
        let stream = UnixStream::connect(socket).unwrap();
        stream
            .set_write_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        stream
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let replies = Arc::new(AtomicU64::new(0));
        let mut writer = stream.try_clone().unwrap();
        let st = Arc::clone(&stop);
        let write = thread::spawn(move || {
            let batch = b"{\"op\":\"status\"}\n".repeat(256);
            while !st.load(Ordering::Relaxed) {
                match writer.write(&batch) {
                    Ok(_) => {}
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                    Err(e) if e.kind() == ErrorKind::TimedOut => {}
                    Err(_) => return,
                }
            }
        });
        let (st, rep) = (Arc::clone(&stop), Arc::clone(&replies));
        let read = thread::spawn(move || {
            let mut reader = BufReader::new(stream);
            let mut line = Vec::new();
            while !st.load(Ordering::Relaxed) {
                match reader.read_until(b'\n', &mut line) {
                    Ok(0) => return,
                    Ok(_) => {
                        if line.ends_with(b"\n") {
                            rep.fetch_add(1, Ordering::Relaxed);
                            line.clear();
                        }
                    }
                    Err(_) => {}
                }
            }
        });
        Streamer {
            stop,
            threads: vec![write, read],
            replies,
        }
    }

    /// Waits (up to `deadline`, only as "did not hang") until the stream is flowing: the
    /// pings that follow must compete with a client that is being answered, not one whose
    /// reader thread has not run yet.
    fn wait_until_answered(&self, deadline: Duration) -> bool {
        let start = std::time::Instant::now();
        while self.replies.load(Ordering::Relaxed) == 0 {
            if start.elapsed() > deadline {
                return false;
            }
            thread::sleep(Duration::from_millis(10));
        }
        true
    }

    fn stop(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            let _ = t.join();
        }
        self.replies.load(Ordering::Relaxed)
    }
}

/// Writes `count` `status` requests without ever reading; gives up when the server stops
/// taking them (its output for this client is full) or closes the connection.
fn pipeline_without_reading(socket: &Path, count: usize) -> thread::JoinHandle<UnixStream> {
    let stream = UnixStream::connect(socket).unwrap();
    stream
        .set_write_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    thread::spawn(move || {
        let mut s = stream;
        let line = b"{\"op\":\"status\"}\n";
        for _ in 0..count {
            if s.write_all(line).is_err() {
                break;
            }
        }
        s
    })
}

/// The daemon's peak resident memory (`VmHWM`), in MiB.
fn peak_mib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/PID/status");
    kb / 1024
}

/// A `policy.update` of endpoint 1's ingress with [`RANGES`] overlapping TCP port ranges:
/// added, or deleted.
fn big_policy_update(add: bool) -> Value {
    let entries: Vec<Value> = (0..RANGES)
        .map(|i| {
            let lo = (i * 13) % 60_000;
            let hi = lo + i % 97;
            let action = if i % 7 == 0 { "deny" } else { "allow" };
            json!({"identity": 2000 + i % 3, "proto": "tcp", "port": lo, "end_port": hi,
                   "action": action, "cookie": i})
        })
        .collect();
    if add {
        json!({"op":"policy.update","endpoint":1,"direction":"ingress","enforced":true,"add":entries})
    } else {
        let keys: Vec<Value> = entries
            .into_iter()
            .map(|mut e| {
                let m = e.as_object_mut().unwrap();
                m.remove("action");
                m.remove("cookie");
                e
            })
            .collect();
        json!({"op":"policy.update","endpoint":1,"direction":"ingress","delete":keys})
    }
}

/// A line of about 16 MiB whose values are tiny (`[0]`): cheap to send, costly as a tree.
fn tiny_values_line() -> Vec<u8> {
    let mut line = br#"{"op":"ping","pad":["#.to_vec();
    let items = (16 << 20) / 4 - 16;
    for i in 0..items {
        line.extend_from_slice(if i == 0 { b"[0]" } else { b",[0]" });
    }
    line.extend_from_slice(b"]}");
    line
}

/// Reads from `stream` until the server closes it; false if it is still open at the deadline.
fn closed_by_server(mut stream: UnixStream, deadline: Duration) -> bool {
    stream
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let end = Instant::now() + deadline;
    let mut buf = vec![0u8; 1 << 20];
    while Instant::now() < end {
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return true, // reset by the server
        }
    }
    false
}

/// One daemon in its own namespaces, with its well-behaved pinger running.
struct Setup {
    daemon: Daemon,
    socket: PathBuf,
    pinger: Pinger,
    _dir: tempfile::TempDir,
    _namespaces: PodNamespaces,
}

impl Setup {
    /// `None` (after saying why) when the machine cannot run the daemon.
    fn start(prefix: &str, net: u8) -> Option<Setup> {
        if let Err(reason) = preflight() {
            skip_or_fail(&reason);
            return None;
        }
        let namespaces = build_pods(prefix, [10, 78, net], Ipv4Addr::new(10, 78, net, 1), 1)
            .expect("namespaces");
        let pod = &namespaces.pods[0];
        let dir = tempfile::Builder::new()
            .prefix("flagella-ctlabuse-")
            .tempdir()
            .unwrap();
        std::fs::write(dir.path().join("dataplane.toml"), "").unwrap();
        let socket = dir.path().join("dataplane.sock");
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &namespaces.node, DAEMON, "--config"])
            .arg(dir.path().join("dataplane.toml"))
            .arg("--socket")
            .arg(&socket)
            .args(["--interface", &format!("{}=pod", pod.host_if)]);
        let daemon = Daemon::start(cmd, socket.clone(), dir.path().join("daemon.log"));
        Client::connect(&socket)
            .unwrap()
            .ok(&json!({"op":"endpoint.upsert","id":1,
            "ifindex":pod.ifindex,"mac":pod.mac.to_string(),"ipv4":pod.ip.to_string(),
            "identity":1001}));
        let pinger = Pinger::start(socket.clone());
        Some(Setup {
            daemon,
            socket,
            pinger,
            _dir: dir,
            _namespaces: namespaces,
        })
    }

    /// Every ping of the well-behaved client was answered, the daemon's peak memory stayed
    /// bounded, and it stops cleanly.
    fn finish(self, what: &str) {
        let answered = self
            .pinger
            .finish()
            .unwrap_or_else(|e| panic!("{what}: the well-behaved client's ping failed: {e}"));
        assert!(answered > 0, "{what}: no ping answered");
        let peak = peak_mib(self.daemon.pid());
        eprintln!("control_abuse, {what}: daemon VmHWM {peak} MiB, {answered} pings answered");
        assert!(
            peak < PEAK_BOUND_MIB,
            "{what}: the daemon's peak memory was {peak} MiB (bound {PEAK_BOUND_MIB} MiB)"
        );
        let status = self.daemon.terminate();
        assert!(status.success(), "{what}: the daemon exited with {status}");
    }
}

#[test]
fn idle_clients_do_not_lock_out_a_new_one() {
    let Some(setup) = Setup::start("fcaa", 1) else {
        return;
    };
    let idle: Vec<UnixStream> = (0..300)
        .filter_map(|_| UnixStream::connect(&setup.socket).ok())
        .collect();
    fresh_ping_within(&setup.socket, REPLY_DEADLINE)
        .unwrap_or_else(|e| panic!("with 300 idle clients, a new client's ping: {e}"));
    drop(idle);
    setup.finish("300 idle clients");
}

#[test]
fn a_streaming_client_does_not_starve_the_others() {
    let Some(setup) = Setup::start("fcab", 2) else {
        return;
    };
    let streamer = Streamer::start(&setup.socket);
    assert!(
        streamer.wait_until_answered(REPLY_DEADLINE),
        "the streaming client got no reply at all"
    );
    for i in 0..5 {
        fresh_ping(&setup.socket).unwrap_or_else(|e| panic!("ping {i} while streaming: {e}"));
    }
    let streamed = streamer.stop();
    assert!(streamed > 0, "the streaming client got no reply at all");
    setup.finish("a streaming client");
}

#[test]
fn pipelining_clients_and_a_line_of_tiny_values_keep_memory_bounded() {
    let Some(setup) = Setup::start("fcac", 3) else {
        return;
    };
    let pipeliners: Vec<_> = (0..4)
        .map(|_| pipeline_without_reading(&setup.socket, 20_000))
        .collect();
    let pipeliners: Vec<UnixStream> = pipeliners.into_iter().map(|t| t.join().unwrap()).collect();
    fresh_ping(&setup.socket).unwrap_or_else(|e| panic!("ping beside 4 pipeliners: {e}"));
    let mut tiny = Client::connect(&setup.socket).unwrap();
    let reply = tiny.call_raw(&tiny_values_line()).unwrap();
    assert_eq!(reply["ok"], false, "{reply}");
    drop(tiny);
    fresh_ping(&setup.socket).unwrap_or_else(|e| panic!("ping after the tiny-values line: {e}"));
    drop(pipeliners);
    setup.finish("pipelining clients and a line of tiny values");
}

#[test]
fn concurrent_conntrack_dumps_each_get_their_answer() {
    let Some(setup) = Setup::start("fcad", 4) else {
        return;
    };
    for round in 0..20 {
        let mut a = Client::connect(&setup.socket).unwrap();
        let mut b = Client::connect(&setup.socket).unwrap();
        let dump = b"{\"op\":\"dump\",\"table\":\"conntrack\"}\n";
        a.writer.write_all(dump).unwrap();
        b.writer.write_all(dump).unwrap();
        for (name, c) in [("first", &mut a), ("second", &mut b)] {
            let mut line = String::new();
            c.reader.read_line(&mut line).unwrap();
            let r: Value = serde_json::from_str(&line).unwrap();
            assert_eq!(r["ok"], true, "round {round}, {name} dump: {r}");
        }
    }
    setup.finish("concurrent conntrack dumps");
}

#[test]
fn large_policy_updates_and_a_subscriber_that_never_reads() {
    let Some(setup) = Setup::start("fcae", 5) else {
        return;
    };
    let mut admin = Client::connect(&setup.socket).unwrap();
    let lagging = UnixStream::connect(&setup.socket).unwrap();
    (&lagging).write_all(b"{\"op\":\"subscribe\"}\n").unwrap();
    // About 700 KB of events a round: 40 rounds put the subscriber 28 MB behind.
    for i in 0..40 {
        for add in [true, false] {
            let r = admin
                .call(&big_policy_update(add))
                .unwrap_or_else(|e| panic!("policy update {i} (add {add}): {e}"));
            assert_eq!(r["ok"], true, "{r}");
        }
    }
    assert!(
        closed_by_server(lagging, REPLY_DEADLINE),
        "a subscriber 28 MB behind was not disconnected"
    );
    setup.finish("large policy updates and a lagging subscriber");
}
