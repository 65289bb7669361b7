//! The control socket end to end: a real Unix socket in a temporary directory, std clients,
//! the published tables, and a worker thread running the pipeline on what was published.

#![allow(clippy::unwrap_used)] // Tests: a failed setup should stop the test loudly.

use std::io::{BufRead, BufReader, Write};
use std::net::IpAddr;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use dataplane::api::publish::{StatsRegistry, TablesHandle};
use dataplane::api::server::{ControlServer, ServerError, SocketAccess};
use dataplane::pipeline::{DropReason, Pipeline, PipelineConfig, Verdict};
use dataplane::tables::endpoints::EndpointId;
use dataplane::tables::services::Services;
use dataplane::tables::{maglev, LocalNode, Tables};
use dataplane::testutil::{PacketBuilder, TCP_SYN};
use dataplane::{Identity, MacAddr};
use serde_json::Value;

/// A private directory (`mkdtemp`: an unpredictable name, mode 0700), removed on drop.
struct TempDir(tempfile::TempDir);

impl TempDir {
    fn new(name: &str) -> Self {
        let dir = tempfile::Builder::new()
            .prefix(&format!("flagella-api-{name}-"))
            .tempdir()
            .unwrap();
        TempDir(dir)
    }

    fn socket(&self) -> PathBuf {
        self.0.path().join("dataplane.sock")
    }
}

/// A server running on its own thread, stopped and joined on drop.
struct Running {
    shutdown: Arc<AtomicBool>,
    thread: Option<JoinHandle<Result<(), ServerError>>>,
    tables: TablesHandle,
    stats: Arc<StatsRegistry>,
    path: PathBuf,
}

impl Running {
    fn start(path: PathBuf) -> Self {
        let tables = TablesHandle::new(Tables::empty(
            LocalNode::default(),
            Services::new(maglev::DEFAULT_M, 42).unwrap(),
        ));
        let stats = StatsRegistry::new();
        let mut server = ControlServer::bind(&path, tables.clone(), Arc::clone(&stats)).unwrap();
        let shutdown = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&shutdown);
        let thread = thread::spawn(move || server.run(&flag));
        Running {
            shutdown,
            thread: Some(thread),
            tables,
            stats,
            path,
        }
    }

    fn client(&self) -> Client {
        Client::connect(&self.path)
    }

    fn stop(&mut self) {
        self.shutdown.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().unwrap().unwrap();
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop();
    }
}

struct Client {
    writer: UnixStream,
    reader: BufReader<UnixStream>,
}

impl Client {
    fn connect(path: &std::path::Path) -> Self {
        let s = UnixStream::connect(path).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        Client {
            writer: s.try_clone().unwrap(),
            reader: BufReader::new(s),
        }
    }

    fn send_raw(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).unwrap();
        self.writer.flush().unwrap();
    }

    fn line(&mut self) -> Value {
        let mut line = String::new();
        self.reader.read_line(&mut line).unwrap();
        assert!(line.ends_with('\n'), "reply line not terminated: {line:?}");
        serde_json::from_str(&line).unwrap()
    }

    fn request(&mut self, req: &str) -> Value {
        self.send_raw(format!("{req}\n").as_bytes());
        self.line()
    }

    fn ok(&mut self, req: &str) -> Value {
        let r = self.request(req);
        assert_eq!(r["ok"], true, "{req} -> {r}");
        r
    }
}

const EP1: &str = r#"{"op":"endpoint.upsert","id":1,"ifindex":11,"mac":"02:00:00:00:00:01","ipv4":"10.1.0.11","identity":1001}"#;
const EP2: &str = r#"{"op":"endpoint.upsert","id":2,"ifindex":12,"mac":"02:00:00:00:00:02","ipv4":"10.1.0.12","identity":1002}"#;

#[test]
fn control_socket_end_to_end() {
    let dir = TempDir::new("e2e");
    let mut server = Running::start(dir.socket());
    let mode = std::fs::metadata(dir.socket())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "socket mode {mode:o}");

    let mut events = server.client();
    let sub = events.ok(r#"{"op":"subscribe","seq":"sub"}"#);
    assert_eq!(sub["subscribed"], true);
    assert_eq!(sub["seq"], "sub");

    let mut c = server.client();
    assert_eq!(c.ok(r#"{"op":"status"}"#)["revision"], 0);
    c.ok(EP1);
    assert_eq!(c.ok(EP2)["revision"], 2);

    // Malformed requests: error replies naming the field; the connection stays up.
    let r = c.request(r#"{"op":"endpoint.upsert","id":3"#);
    assert_eq!(r["ok"], false);
    assert!(r.get("field").is_none());
    assert!(r["error"]
        .as_str()
        .unwrap()
        .contains("one JSON object per line"));
    let r = c.request(r#"{"op":"ipcache.upsert","prefix":"10.1.0.0/33","identity":7,"seq":9}"#);
    assert_eq!(
        (r["ok"].clone(), r["field"].clone(), r["seq"].clone()),
        (Value::from(false), Value::from("prefix"), Value::from(9))
    );
    let r = c.request(r#"{"op":"policy.update","endpoint":2,"direction":"ingress","enforced":true,"add":[{"identity":1001,"proto":"tcp","port":80,"action":"allow"},{"identity":7,"port":22,"action":"deny"}]}"#);
    assert_eq!(r["field"], "add[1].port", "{r}");
    let t = server.tables.snapshot();
    let p = &t.endpoints.get(EndpointId(2)).unwrap().policy.ingress;
    assert!(
        !p.enforced && p.map.is_empty(),
        "a refused batch must change nothing"
    );

    // A request split across two writes.
    c.send_raw(br#"{"op":"ipcache.upsert","prefix":"10.1.0.11","#);
    thread::sleep(Duration::from_millis(50));
    c.send_raw(b"\"identity\":1001}\n");
    assert_eq!(c.line()["revision"], 3);
    // Two requests in one write: two replies, in order.
    c.send_raw(
        b"{\"op\":\"ping\",\"seq\":1}\n{\"op\":\"ipcache.upsert\",\"prefix\":\"10.1.0.12\",\"identity\":1002,\"seq\":2}\n",
    );
    assert_eq!(c.line()["seq"], 1);
    assert_eq!(c.line()["seq"], 2);

    // A line over the limit gets an error; the connection serves the next request.
    let mut long = vec![b' '; dataplane::api::server::MAX_LINE + 10];
    long.push(b'\n');
    c.send_raw(&long);
    let r = c.line();
    assert_eq!(r["ok"], false);
    assert!(r["error"].as_str().unwrap().contains("longer than"), "{r}");
    assert_eq!(c.ok(r#"{"op":"status"}"#)["tables"]["ipcache"], 2);
    // An unterminated line past the limit is answered before its end arrives; its tail is
    // skipped up to the newline.
    c.send_raw(&vec![b'x'; dataplane::api::server::MAX_LINE + 200_000]);
    let r = c.line();
    assert!(r["error"].as_str().unwrap().contains("longer than"), "{r}");
    c.send_raw(b"still the same long line\n");
    assert_eq!(c.ok(r#"{"op":"ping","seq":"after"}"#)["seq"], "after");

    // The published tables hold what was applied.
    let t = server.tables.snapshot();
    assert_eq!(t.endpoints.len(), 2);
    assert_eq!(
        t.ipcache.identity_of("10.1.0.12".parse().unwrap()),
        Identity(1002)
    );
    let dump = c.ok(r#"{"op":"dump","table":"endpoints"}"#);
    assert_eq!(dump["entries"][1]["mac"], "02:00:00:00:00:02");

    // The subscriber saw every applied change, in order, and nothing for refused ones.
    let ops: Vec<(Value, Value)> = (0..4)
        .map(|_| {
            let e = events.line();
            assert_eq!(e["event"], "change");
            (e["revision"].clone(), e["op"].clone())
        })
        .collect();
    assert_eq!(
        ops,
        vec![
            (Value::from(1), Value::from("endpoint.upsert")),
            (Value::from(2), Value::from("endpoint.upsert")),
            (Value::from(3), Value::from("ipcache.upsert")),
            (Value::from(4), Value::from("ipcache.upsert")),
        ]
    );

    server.stop();
    assert!(
        !dir.socket().exists(),
        "the socket file is removed on shutdown"
    );
}

#[test]
fn bind_refuses_a_live_socket_and_replaces_a_stale_one() {
    let dir = TempDir::new("bind");
    let path = dir.socket();
    let tables = || {
        TablesHandle::new(Tables::empty(
            LocalNode::default(),
            Services::new(maglev::DEFAULT_M, 1).unwrap(),
        ))
    };
    // Stale: a socket file nobody listens on any more.
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    assert!(path.exists());
    let live = ControlServer::bind(&path, tables(), StatsRegistry::new()).unwrap();
    // Live: refused, and the running server's socket is left alone.
    let err = ControlServer::bind(&path, tables(), StatsRegistry::new()).unwrap_err();
    assert!(matches!(err, ServerError::InUse { .. }), "{err}");
    assert!(err.to_string().contains("stop that dataplane first"));
    assert!(UnixStream::connect(&path).is_ok());
    drop(live);
    // Not a socket: refused, file untouched.
    std::fs::write(&path, b"precious").unwrap();
    let err = ControlServer::bind(&path, tables(), StatsRegistry::new()).unwrap_err();
    assert!(matches!(err, ServerError::NotASocket { .. }), "{err}");
    assert_eq!(std::fs::read(&path).unwrap(), b"precious");
}

/// Connects to `path` from a thread that runs as user `nobody` with `groups` as its only
/// groups, and returns the outcome. Linux credentials belong to a thread: the raw syscalls
/// below (unlike libc's wrappers, which change every thread) leave the test's other threads
/// root.
fn connect_as_nobody(path: PathBuf, groups: Vec<libc::gid_t>) -> std::io::Result<()> {
    thread::spawn(move || {
        const NOBODY: libc::uid_t = 65534;
        // SAFETY: plain syscalls on integers and on `groups`, which outlives the call; they
        // change this thread's credentials only, and the thread ends right after.
        let failed = unsafe {
            libc::syscall(libc::SYS_setgroups, groups.len(), groups.as_ptr()) != 0
                || libc::syscall(libc::SYS_setresgid, NOBODY, NOBODY, NOBODY) != 0
                || libc::syscall(libc::SYS_setresuid, NOBODY, NOBODY, NOBODY) != 0
        };
        assert!(
            !failed,
            "dropping privileges: {}",
            std::io::Error::last_os_error()
        );
        UnixStream::connect(&path).map(drop)
    })
    .join()
    .unwrap()
}

/// Issue 14, finding 11: the agent may run as another user than the dataplane when the socket
/// is open to the dataplane's group (mode 0660); nobody else may connect, and by default only
/// the owner may.
#[test]
fn socket_access_decides_who_may_connect() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        testkit::skip("needs root to connect as another user");
        return;
    }
    let dir = TempDir::new("access");
    // Let `nobody` reach the socket; the socket's own mode decides the rest.
    std::fs::set_permissions(dir.0.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let tables = || {
        TablesHandle::new(Tables::empty(
            LocalNode::default(),
            Services::new(maglev::DEFAULT_M, 1).unwrap(),
        ))
    };
    // SAFETY: getegid has no preconditions.
    let group = unsafe { libc::getegid() };
    let path = dir.socket();
    let server =
        ControlServer::bind_with_access(&path, SocketAccess::Group, tables(), StatsRegistry::new())
            .unwrap();
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o660);
    connect_as_nobody(path.clone(), vec![group]).expect("a member of the group connects");
    let outsider = connect_as_nobody(path.clone(), vec![65534]).unwrap_err();
    assert_eq!(outsider.kind(), std::io::ErrorKind::PermissionDenied);
    drop(server);
    let _owner_only = ControlServer::bind(&path, tables(), StatsRegistry::new()).unwrap();
    let member = connect_as_nobody(path.clone(), vec![group]).unwrap_err();
    assert_eq!(member.kind(), std::io::ErrorKind::PermissionDenied);
}

// ---- a worker running the pipeline on the published tables ----------------------------------

const ROUTER_MAC: MacAddr = MacAddr([0x02, 0, 0, 0, 0xff, 0x01]);
const POD1_MAC: MacAddr = MacAddr([0x02, 0, 0, 0, 0, 1]);

/// The test's handles on a worker: frames in (ingress ifindex, bytes), verdicts out.
type Worker = (
    mpsc::Sender<(u32, Vec<u8>)>,
    mpsc::Receiver<Verdict>,
    JoinHandle<()>,
);

/// A worker thread: loads the tables once per "batch" (one frame here), runs the pipeline,
/// ticks its stats publisher on every loop iteration, as the AF_XDP worker will.
fn spawn_worker(tables: TablesHandle, stats: &Arc<StatsRegistry>, stop: Arc<AtomicBool>) -> Worker {
    let (frames_tx, frames_rx) = mpsc::channel::<(u32, Vec<u8>)>();
    let (verdicts_tx, verdicts_rx) = mpsc::channel();
    let mut publisher = stats.register("worker-0", 4);
    let thread = thread::spawn(move || {
        let mut pipeline = Pipeline::new(PipelineConfig::default()).unwrap();
        let mut now = 1_000_000_000u64;
        while !stop.load(Ordering::Relaxed) {
            if let Ok((ifindex, bytes)) = frames_rx.try_recv() {
                let t = tables.load();
                let mut frames = [dataplane::testutil::frame(&bytes)];
                let v = pipeline.process(&t, ifindex, &mut frames, now)[0];
                verdicts_tx.send(v).unwrap();
            }
            publisher.tick(&pipeline, now);
            now += 1_000;
            thread::sleep(Duration::from_micros(200));
        }
    });
    (frames_tx, verdicts_rx, thread)
}

fn syn(sport: u16) -> Vec<u8> {
    let src: IpAddr = "10.1.0.11".parse().unwrap();
    let dst: IpAddr = "10.1.0.12".parse().unwrap();
    PacketBuilder::tcp(src, sport, dst, 80, TCP_SYN)
        .macs(POD1_MAC, ROUTER_MAC)
        .build()
}

#[test]
fn policy_update_through_the_socket_drops_a_flow() {
    let dir = TempDir::new("pipeline");
    let server = Running::start(dir.socket());
    let mut c = server.client();
    c.ok(r#"{"op":"local_node.set","name":"node-1","underlay_ipv4":"192.168.0.1","router_mac":"02:00:00:00:ff:01","gateway_ipv4":"10.1.0.1"}"#);
    c.ok(EP1);
    c.ok(EP2);
    c.ok(r#"{"op":"ipcache.upsert","prefix":"10.1.0.11/32","identity":1001}"#);
    c.ok(r#"{"op":"ipcache.upsert","prefix":"10.1.0.12/32","identity":1002}"#);

    let stop = Arc::new(AtomicBool::new(false));
    let (frames, verdicts, worker) =
        spawn_worker(server.tables.clone(), &server.stats, Arc::clone(&stop));
    let send = |sport| {
        frames.send((11, syn(sport))).unwrap();
        verdicts.recv_timeout(Duration::from_secs(5)).unwrap()
    };
    assert_eq!(send(40000), Verdict::Tx { ifindex: 12 }, "no policy yet");

    // Pod 2 admits only identity 1003 on port 80: pod 1 (1001) is denied for new flows.
    c.ok(r#"{"op":"policy.update","endpoint":2,"direction":"ingress","enforced":true,"add":[{"identity":1003,"proto":"tcp","port":80,"action":"allow","cookie":1}]}"#);
    assert_eq!(send(40001), Verdict::Drop(DropReason::PolicyDeniedIngress));

    // The conntrack dump comes from the worker: the allowed flow is there.
    let ct = c.ok(r#"{"op":"dump","table":"conntrack","limit":10}"#);
    let entries = &ct["workers"][0]["entries"];
    assert_eq!(entries.as_array().unwrap().len(), 1, "{ct}");
    assert_eq!(entries[0]["src"], "10.1.0.11:40000");
    assert_eq!(entries[0]["src_identity"], 1001);

    // The drop is counted by reason in status (the worker publishes every 4 ticks).
    let mut drops = Value::Null;
    for _ in 0..200 {
        let s = c.ok(r#"{"op":"status"}"#);
        drops = s["counters"]["drops"]["policy_denied_ingress"].clone();
        if drops == 1 {
            break;
        }
        thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(drops, 1);

    // Deleting the rule set (not enforced any more) lets a new flow through.
    c.ok(r#"{"op":"policy.replace","endpoint":2,"direction":"ingress","enforced":false,"entries":[]}"#);
    assert_eq!(send(40002), Verdict::Tx { ifindex: 12 });

    stop.store(true, Ordering::Relaxed);
    worker.join().unwrap();
}

/// Issue 14, finding 4: a staged batch over the socket is published only by its last part; a
/// client that disconnects in the middle of one leaves nothing published and nothing staged.
#[test]
fn staged_batch_over_the_socket_and_its_abandonment() {
    let dir = TempDir::new("staged");
    let running = Running::start(dir.socket());
    let part = |txn: u32, part: u32, more: bool, change: &str| {
        format!(r#"{{"op":"batch","txn":{txn},"part":{part},"more":{more},"changes":[{change}]}}"#)
    };
    let mut a = running.client();
    let r = a.ok(&part(1, 0, true, EP1));
    assert_eq!(r["staged"], 0);
    assert_eq!(
        running.tables.load().endpoints.len(),
        0,
        "half-sent: not published"
    );
    let r = a.ok(r#"{"op":"status"}"#);
    assert_eq!(r["staged"]["transactions"], 1, "{r}");
    let r = a.ok(&part(1, 1, false, EP2));
    assert_eq!(r["applied"], 2);
    assert_eq!(running.tables.load().endpoints.len(), 2);

    // Begun, then the client goes away: its part is never published and is freed.
    let mut b = running.client();
    b.ok(&part(1, 0, true, r#"{"op":"endpoint.delete","id":1}"#));
    assert_eq!(a.ok(r#"{"op":"status"}"#)["staged"]["transactions"], 1);
    drop(b);
    // The server notices the hang-up on its next turn; every status is answered after it.
    let freed = (0..1000).any(|_| {
        thread::sleep(Duration::from_millis(10));
        a.ok(r#"{"op":"status"}"#)["staged"]["transactions"] == 0
    });
    assert!(freed, "the departed client's transaction is still staged");
    assert!(running.tables.load().endpoints.get(EndpointId(1)).is_some());
}
