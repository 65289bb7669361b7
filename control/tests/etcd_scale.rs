//! The agent at sizes past one gRPC message, against a real etcd (issue 14, finding 2), with
//! the real `flagella-control` binary pushing to a stand-in dataplane socket that records every
//! request and answers `{"ok":true}` (the dataplane is not under test here; its socket protocol
//! is, as the agent writes it).
//!
//! 1. More than 4 MiB under `/flagella/v1/` before the agent starts (three NetworkPolicies of
//!    ~1.4 MiB each, an endpoint with 1 MiB of labels), a corrupt identity value for one label
//!    set: the agent lists it all (paged), the poisoned and the oversized label sets are
//!    reported in `identity_errors`, and everything else reaches the dataplane (the local pod's
//!    endpoint and its policy admitting the client's cluster-wide identity).
//! 2. The agent stopped (SIGSTOP, by its PID) while more than 5 MiB of changes land (the three
//!    policies rewritten and a fourth one, all admitting a new pod; 500 more endpoints of one
//!    label set), then
//!    resumed (SIGCONT): its watch catches up (or it lists again) and the new state reaches the
//!    dataplane.
//!
//! Before the fix the listing was one unpaged read under the client's 4 MiB limit: the agent
//! logged "etcd unreachable" in a loop and never converged.
//!
//! Skips when etcd is not installed. Stops only the processes it started, by their PID.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failure is a failed test

mod common;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use common::net::{spawn_agent, Proc};
use control::identity::labels_key;
use control::schema::ROOT;
use control::store::Store;
use policy_compiler::labels::Labels;
use serde_json::{json, Value};

const NODE: &str = "n1";
const NS: &str = "default";
/// Long enough for the agent to list and watch a few MiB on a shared 2-core machine.
const CONVERGE: Duration = Duration::from_secs(90);
/// One policy's size: just under etcd's default request limit (1.5 MiB).
const POLICY_BYTES: usize = 1400 << 10;

fn k(s: &str) -> String {
    format!("{ROOT}{s}")
}

/// A stand-in dataplane: records every request line (batches flattened to their changes) and
/// answers ok.
#[derive(Clone, Default)]
struct Recorder {
    requests: Arc<Mutex<Vec<Value>>>,
}

impl Recorder {
    fn serve(&self, path: &Path) {
        let listener = UnixListener::bind(path).unwrap();
        let requests = Arc::clone(&self.requests);
        thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                let requests = Arc::clone(&requests);
                thread::spawn(move || serve_one(stream, &requests));
            }
        });
    }

    fn has(&self, f: impl Fn(&Value) -> bool) -> bool {
        self.requests.lock().unwrap().iter().any(f)
    }
}

fn serve_one(stream: UnixStream, requests: &Mutex<Vec<Value>>) {
    let mut w = stream.try_clone().unwrap();
    for line in BufReader::new(stream).lines() {
        let Ok(line) = line else { return };
        let v: Value = serde_json::from_str(&line).unwrap();
        let reply = json!({"ok": true, "seq": v["seq"].clone()});
        let mut all = requests.lock().unwrap();
        match v["changes"].as_array() {
            Some(changes) if v["op"] == "batch" => all.extend(changes.iter().cloned()),
            _ => all.push(v),
        }
        drop(all);
        if writeln!(w, "{reply}").is_err() {
            return;
        }
    }
}

/// A NetworkPolicy `name`: pods `app: web` admit pods `app: <from>` only; `filler` bytes of
/// annotation make it large (annotations are metadata the compiler ignores).
fn policy(name: &str, from: &str, filler: usize) -> String {
    json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": name, "namespace": NS, "annotations": {"filler": "x".repeat(filler)}},
        "spec": {
            "podSelector": {"matchLabels": {"app": "web"}},
            "policyTypes": ["Ingress"],
            "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": from}}}]}],
        },
    })
    .to_string()
}

fn endpoint(node: &str, labels: Value, ip: &str, ifindex: u32) -> String {
    json!({
        "node": node, "labels": labels, "ipv4": ip, "interface": format!("lxc{ifindex}"),
        "ifindex": ifindex, "mac": format!("02:00:00:00:{:02x}:{:02x}", ifindex >> 8, ifindex & 0xff),
    })
    .to_string()
}

/// The etcd key of a pod's label set in namespace `default` (no namespace labels).
fn identity_key(app: &str) -> String {
    let pod: Labels = [("app".to_string(), app.to_string())].into_iter().collect();
    labels_key(&Labels::for_pod(&pod, NS, &Labels::default(), None))
}

fn status(path: &Path) -> Value {
    std::fs::read(path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_else(|| json!({}))
}

/// Waits for `done`; on a timeout the failure shows the agent's status and log.
fn wait(what: &str, agent: &Proc, status_file: &Path, mut done: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + CONVERGE;
    while !done() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for: {what}\nstatus: {}\n---- flagella-control log ----\n{}",
            status(status_file),
            agent.log_text()
        );
        thread::sleep(Duration::from_millis(100));
    }
}

fn signal(agent: &Proc, sig: libc::c_int) {
    let pid = agent.pid().expect("the agent runs") as libc::pid_t;
    // SAFETY: a plain syscall on the PID of a child this test started and has not reaped.
    assert_eq!(unsafe { libc::kill(pid, sig) }, 0, "kill({pid}, {sig})");
}

#[test]
fn agent_converges_past_one_message_and_after_a_pause() {
    let Some(etcd) = common::Etcd::start() else {
        return;
    };
    let dir = testkit::private_dir("fetcdscale-");
    let _cleanup = RemoveDirOnDrop(dir.clone());
    let (socket, status_file) = (dir.join("dataplane.sock"), dir.join("status.json"));
    let rt = common::runtime();
    let store = rt
        .block_on(Store::connect(&etcd.urls(), Duration::from_secs(10)))
        .unwrap();
    // Bytes written under the prefix (counted here: a listing of them is what is under test).
    let written = std::cell::Cell::new(0usize);
    let put = |key: &str, value: String| {
        written.set(written.get() + key.len() + value.len());
        rt.block_on(store.put(&k(key), value)).unwrap()
    };
    let revision = || rt.block_on(store.revision()).unwrap();
    let identity_of = |app: &str| -> u64 {
        let kv = rt.block_on(store.get(&identity_key(app))).unwrap();
        let kv = kv.unwrap_or_else(|| panic!("no identity for app={app}"));
        String::from_utf8(kv.value).unwrap().parse().unwrap()
    };

    // 1. The cluster before the agent: more than 4 MiB under the prefix.
    put(
        "nodes/n1",
        json!({"underlay_ip": "192.168.0.1", "pod_cidrs": ["10.1.0.0/24"]}).to_string(),
    );
    put(
        "nodes/n2",
        json!({"underlay_ip": "192.168.0.2", "pod_cidrs": ["10.2.0.0/16"]}).to_string(),
    );
    put(&format!("namespaces/{NS}"), "{}".into());
    put(
        &format!("endpoints/{NS}/web"),
        endpoint(NODE, json!({"app": "web"}), "10.1.0.5", 5),
    );
    put(
        &format!("endpoints/{NS}/client"),
        endpoint("n2", json!({"app": "client"}), "10.2.0.7", 7),
    );
    put(
        &format!("endpoints/{NS}/poison"),
        endpoint(NODE, json!({"app": "poison"}), "10.1.0.6", 6),
    );
    let blob = "y".repeat(1 << 20);
    put(
        &format!("endpoints/{NS}/huge"),
        endpoint(NODE, json!({"app": "huge", "blob": blob}), "10.1.0.8", 8),
    );
    rt.block_on(store.put(&identity_key("poison"), "not-a-number"))
        .unwrap();
    for i in 0..3 {
        put(
            &format!("policies/NetworkPolicy/{NS}/big-{i}"),
            policy(&format!("big-{i}"), "client", POLICY_BYTES),
        );
    }
    let bytes = written.replace(0);
    assert!(bytes > 5 << 20, "only {bytes} bytes under {ROOT}");

    let recorder = Recorder::default();
    recorder.serve(&socket);
    let mut agent = Proc {
        child: None,
        what: "flagella-control",
        log: dir.join("control.log"),
    };
    agent.child = Some(spawn_agent(
        &etcd.url,
        NODE,
        &socket,
        &status_file,
        &agent.log,
    ));
    let log = |agent: &Proc| agent.log_text();

    let started = std::time::Instant::now();
    let r1 = revision();
    wait(
        "the agent lists more than 4 MiB and converges",
        &agent,
        &status_file,
        || {
            let s = status(&status_file);
            s["etcd_reachable"] == true
                && s["revision"].as_i64().unwrap_or(0) >= r1
                && s["policies"] == 3
        },
    );
    let s = status(&status_file);
    assert_eq!(s["endpoints"], 4, "{s}\n{}", log(&agent));
    let errors = s["identity_errors"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    assert_eq!(
        errors.len(),
        2,
        "the poisoned and the oversized label sets: {s}"
    );
    assert!(errors.keys().any(|l| l.contains("poison")), "{s}");
    assert!(errors.keys().any(|l| l.contains("huge")), "{s}");
    assert!(
        errors
            .values()
            .any(|r| r.as_str().is_some_and(|r| r.contains("not-a-number"))),
        "{s}"
    );
    let client = identity_of("client");
    wait(
        "web's endpoint and its policy admitting client",
        &agent,
        &status_file,
        || {
            recorder.has(|r| r["op"] == "endpoint.upsert" && r["ipv4"] == "10.1.0.5")
                && recorder.has(|r| admits(r, client))
        },
    );
    assert!(
        !recorder.has(|r| r["op"] == "endpoint.upsert" && r["ipv4"] != "10.1.0.5"),
        "only web has an identity among the local pods"
    );

    eprintln!("listed and converged: {:?}", started.elapsed());

    // 2. Paused while more than 5 MiB of changes land, then resumed.
    signal(&agent, libc::SIGSTOP);
    put(
        &format!("endpoints/{NS}/late"),
        endpoint("n2", json!({"app": "late"}), "10.2.0.8", 8),
    );
    for i in 0..4 {
        let p = policy(&format!("big-{i}"), "late", POLICY_BYTES);
        put(&format!("policies/NetworkPolicy/{NS}/big-{i}"), p);
    }
    for i in 0..500u32 {
        let ip = format!("10.2.{}.{}", 1 + i / 200, 1 + i % 200);
        let e = endpoint("n2", json!({"app": "bulk"}), &ip, 1000 + i);
        put(&format!("endpoints/{NS}/bulk-{i}"), e);
    }
    let paused_bytes = written.replace(0);
    assert!(
        paused_bytes > 5 << 20,
        "only {paused_bytes} bytes written while paused"
    );
    let r2 = revision();
    eprintln!("written while paused: {:?}", started.elapsed());
    signal(&agent, libc::SIGCONT);
    wait("the resumed agent catches up", &agent, &status_file, || {
        let s = status(&status_file);
        s["etcd_reachable"] == true
            && s["revision"].as_i64().unwrap_or(0) >= r2
            && s["policies"] == 4
    });
    let s = status(&status_file);
    assert_eq!(s["endpoints"], 505, "{s}");
    let late = identity_of("late");
    wait(
        "web's policy admits late, the ipcache knows it",
        &agent,
        &status_file,
        || {
            recorder.has(|r| admits(r, late))
                && recorder.has(|r| {
                    r["op"] == "ipcache.upsert"
                        && r["prefix"] == "10.2.0.8/32"
                        && r["identity"] == late
                })
                && recorder.has(|r| r["op"] == "ipcache.upsert" && r["prefix"] == "10.2.3.100/32")
        },
    );
    eprintln!("caught up: {:?}", started.elapsed());
    eprintln!("---- flagella-control log ----\n{}", log(&agent));
    assert!(agent.running(), "the agent is still running");
}

/// A policy request for web (endpoint 5) that admits `identity`.
fn admits(r: &Value, identity: u64) -> bool {
    let entries = match r["op"].as_str() {
        Some("policy.update") => &r["add"],
        Some("policy.replace") => &r["entries"],
        _ => return false,
    };
    r["endpoint"] == 5
        && entries.as_array().is_some_and(|a| {
            a.iter()
                .any(|e| e["identity"] == identity && e["action"] == "allow")
        })
}

/// Removes a directory tree when dropped.
struct RemoveDirOnDrop(std::path::PathBuf);

impl Drop for RemoveDirOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
