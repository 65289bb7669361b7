//! The sync against a real etcd: list-then-watch, compaction, malformed keys, and the agent
//! pushing to a stand-in dataplane socket (a Unix listener that records requests and answers
//! `{"ok":true}`), including a resync after the dataplane restarts.
#![allow(clippy::unwrap_used)] // a test: a failed unwrap is a failed test

mod common;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use control::agent::{Agent, AgentConfig};
use control::schema::ROOT;
use control::store::{Event, Store, WatchBatch};

fn k(s: &str) -> String {
    format!("{ROOT}{s}")
}

/// A change written between the listing and the watch is seen by the watch (it starts at the
/// listed revision + 1); a watch from a compacted revision reports the compaction.
#[test]
fn list_then_watch_sees_the_gap_and_compaction_is_reported() {
    let Some(etcd) = common::Etcd::start() else {
        return;
    };
    common::runtime().block_on(async {
        let s = Store::connect(&etcd.urls(), Duration::from_secs(5)).await.unwrap();
        s.put(&k("nodes/n1"), "{}").await.unwrap();
        let (kvs, rev) = s.list(ROOT).await.unwrap();
        assert_eq!(kvs.len(), 1);
        // The gap: written after the listing, before the watch exists.
        s.put(&k("nodes/n2"), "gap").await.unwrap();
        let mut w = s.watch(ROOT, rev + 1).await.unwrap();
        let batch = tokio::time::timeout(Duration::from_secs(5), w.next()).await.unwrap().unwrap();
        match batch {
            WatchBatch::Events { events, .. } => {
                assert!(matches!(&events[0], Event::Put(kv) if kv.key == k("nodes/n2") && kv.value == b"gap"), "{events:?}");
            }
            b => panic!("{b:?}"),
        }
        // Compaction: history up to now is gone; a watch from the old revision is told so.
        s.put(&k("nodes/n3"), "x").await.unwrap();
        let now = s.revision().await.unwrap();
        s.client().compact(now, None).await.unwrap();
        let mut w = s.watch(ROOT, rev + 1).await.unwrap();
        let batch = tokio::time::timeout(Duration::from_secs(5), w.next()).await.unwrap().unwrap();
        assert!(matches!(batch, WatchBatch::Compacted { compact_revision } if compact_revision == now), "{batch:?}");
    });
}

/// The stand-in dataplane: records every request; `generation` counts connections.
#[derive(Clone, Default)]
struct FakeDataplane {
    requests: Arc<Mutex<Vec<Value>>>,
    /// Set to "crash": every connection closes at its next request.
    dead: Arc<std::sync::atomic::AtomicBool>,
}

impl FakeDataplane {
    fn serve(&self, path: PathBuf) -> tokio::task::JoinHandle<()> {
        let _ = std::fs::remove_file(&path);
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        let requests = self.requests.clone();
        let dead = self.dead.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let requests = requests.clone();
                let dead = dead.clone();
                tokio::spawn(async move {
                    let (r, mut w) = stream.into_split();
                    let mut lines = BufReader::new(r).lines();
                    while let Ok(Some(line)) = lines.next_line().await {
                        if dead.load(std::sync::atomic::Ordering::Relaxed) {
                            return;
                        }
                        let v: Value = serde_json::from_str(&line).unwrap();
                        let seq = v["seq"].clone();
                        // A batch is recorded as its changes (an endpoint with its policy).
                        match v["changes"].as_array() {
                            Some(changes) if v["op"] == "batch" => {
                                requests.lock().unwrap().extend(changes.iter().cloned())
                            }
                            _ => requests.lock().unwrap().push(v),
                        }
                        let reply = serde_json::json!({"ok": true, "seq": seq});
                        if w.write_all(format!("{reply}\n").as_bytes()).await.is_err() {
                            return;
                        }
                    }
                });
            }
        })
    }

    fn has(&self, f: impl Fn(&Value) -> bool) -> bool {
        self.requests.lock().unwrap().iter().any(f)
    }

    fn clear(&self) {
        self.requests.lock().unwrap().clear();
    }
}

async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    for _ in 0..100 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out waiting for: {what}");
}

const NP_DENY_B: &str = r#"{"apiVersion":"networking.k8s.io/v1","kind":"NetworkPolicy","metadata":{"name":"only-b","namespace":"default"},"spec":{"podSelector":{"matchLabels":{"app":"a"}},"ingress":[{"from":[{"podSelector":{"matchLabels":{"app":"b"}}}]}]}}"#;

/// The agent converges from etcd to the (stand-in) dataplane; a malformed key is logged,
/// counted and skipped while everything else converges; a dataplane restart gets the whole
/// state again; etcd stopped leaves the dataplane untouched and the status says so; after etcd
/// returns a new policy is pushed.
#[test]
fn agent_converges_skips_malformed_and_resyncs() {
    let Some(mut etcd) = common::Etcd::start() else {
        return;
    };
    let sock = etcd.dir.with_extension("sock");
    // The socket and the status file sit next to etcd's data directory: remove them too, pass
    // or fail.
    let _cleanup = RemoveOnDrop(vec![sock.clone(), etcd.dir.with_extension("status.json")]);
    common::runtime().block_on(async {
        let s = Store::connect(&etcd.urls(), Duration::from_secs(5)).await.unwrap();
        s.put(&k("nodes/n1"), r#"{"underlay_ip":"192.168.0.1","pod_cidrs":["10.1.0.0/24"]}"#).await.unwrap();
        s.put(&k("nodes/n2"), r#"{"underlay_ip":"192.168.0.2","pod_cidrs":["10.2.0.0/24"]}"#).await.unwrap();
        s.put(&k("namespaces/default"), "{}").await.unwrap();
        s.put(&k("endpoints/default/a"), r#"{"node":"n1","labels":{"app":"a"},"ipv4":"10.1.0.5","interface":"lxc5","ifindex":5,"mac":"02:00:00:00:00:05"}"#).await.unwrap();
        // Malformed: bad JSON, invalid CIDR, unknown node.
        s.put(&k("endpoints/default/bad"), "{not json").await.unwrap();
        s.put(&k("nodes/n9"), r#"{"underlay_ip":"192.168.0.9","pod_cidrs":["10.9.0.1/24"]}"#).await.unwrap();
        s.put(&k("endpoints/default/lost"), r#"{"node":"nowhere","ipv4":"10.7.0.1","interface":"x"}"#).await.unwrap();

        let dp = FakeDataplane::default();
        let server = dp.serve(sock.clone());
        let status_file = etcd.dir.with_extension("status.json");
        let metrics = std::sync::Arc::new(control::metrics::AgentMetrics::new().unwrap());
        let mut agent = Agent::new(AgentConfig {
            etcd: etcd.urls(),
            node: "n1".into(),
            dataplane_socket: sock.clone(),
            etcd_timeout: Duration::from_secs(2),
            lease_ttl: Duration::from_secs(10),
            identity_grace: Duration::from_secs(60),
            gc_interval: Duration::from_secs(60),
            status_file: Some(status_file.clone()),
        }, metrics.clone());
        let status = agent.status.clone();
        let task = tokio::spawn(async move { agent.run().await });

        eventually("endpoint a pushed", || dp.has(|r| r["op"] == "endpoint.upsert" && r["id"] == 5)).await;
        // Written after the agent started: remote pod b and a policy.
        s.put(&k("endpoints/default/b"), r#"{"node":"n2","labels":{"app":"b"},"ipv4":"10.2.0.7","interface":"lxc7"}"#).await.unwrap();
        s.put(&k("policies/NetworkPolicy/default/only-b"), NP_DENY_B).await.unwrap();
        eventually("remote ipcache entry", || dp.has(|r| r["op"] == "ipcache.upsert" && r["prefix"] == "10.2.0.7/32" && r["tunnel_endpoint"] == "192.168.0.2")).await;
        eventually("policy for a", || dp.has(|r| r["op"] == "policy.update" && r["endpoint"] == 5 && r["enforced"] == true && r["add"].as_array().is_some_and(|a| !a.is_empty()))).await;
        {
            let st = status.lock().unwrap().clone();
            assert_eq!(st.malformed_total, 3, "{st:?}");
            assert!(st.rejected_keys.contains(&k("endpoints/default/bad")));
            assert!(st.rejected_keys.contains(&k("nodes/n9")));
            assert!(st.rejected_keys.contains(&k("endpoints/default/lost")));
            assert!(st.etcd_reachable && st.dataplane_connected);
        }
        assert!(!dp.has(|r| r["op"] == "node.upsert" && r["name"] == "n9"));
        // The identity of b in the policy is the cluster-wide one.
        let ids = control::identity::IdentityAllocator::new(s.clone(), "probe", Duration::from_secs(10)).await.unwrap().list().await.unwrap();
        let b_id = ids.iter().find(|(_, l)| l.get("app") == Some("b")).map(|(n, _)| *n).unwrap();
        assert!(dp.has(|r| r["op"] == "policy.update" && r["add"].as_array().is_some_and(|a| a.iter().any(|e| e["identity"] == b_id))));

        // Dataplane restart: a new instance gets everything again.
        server.abort();
        dp.dead.store(true, std::sync::atomic::Ordering::Relaxed);
        dp.clear();
        let dp2 = FakeDataplane::default();
        let _server2 = dp2.serve(sock.clone());
        eventually("full resync after restart", || {
            dp2.has(|r| r["op"] == "endpoint.upsert" && r["id"] == 5)
                && dp2.has(|r| r["op"] == "policy.replace" && r["endpoint"] == 5 && r["direction"] == "ingress" && r["enforced"] == true)
        }).await;

        // etcd down: fail static, status says so; nothing is deleted in the dataplane.
        dp2.clear();
        etcd.stop();
        eventually("status shows etcd unreachable", || !status.lock().unwrap().etcd_reachable).await;
        assert!(!dp2.has(|r| r["op"].as_str().is_some_and(|o| o.ends_with(".delete"))));
        let text = std::fs::read_to_string(&status_file).unwrap();
        assert!(text.contains("\"etcd_reachable\": false"), "{text}");
        // etcd back: a policy written now reaches the dataplane.
        etcd.restart();
        let s = Store::connect(&etcd.urls(), Duration::from_secs(5)).await.unwrap();
        s.delete(&k("policies/NetworkPolicy/default/only-b")).await.unwrap();
        eventually("policy deletion after etcd returns", || dp2.has(|r| r["op"] == "policy.update" && r["endpoint"] == 5 && r["enforced"] == false)).await;
        task.abort();

        // The agent's metrics saw all of it: the outage, the reconnection, the refused keys,
        // the watched puts, and timed requests, convergences and allocations.
        let m = &metrics;
        assert!(m.etcd_errors.get() >= 1 && m.etcd_reconnects.get() >= 1);
        // Each refusal counts, the re-listing's after the reconnection too (as in the status).
        assert_eq!(m.malformed_keys.get(), status.lock().unwrap().malformed_total);
        assert!(m.malformed_keys.get() >= 3);
        assert_eq!(m.rejected_keys.get(), 3);
        assert!(m.etcd_events.with_label_values(&["put"]).get() >= 2);
        assert_eq!(m.endpoints.get(), 2);
        assert!(m.dataplane_request.get_sample_count() > 0);
        assert!(m.etcd_to_dataplane.get_sample_count() > 0);
        assert!(m.identity_allocation.get_sample_count() > 0);
    });
}

/// Removes files when dropped.
struct RemoveOnDrop(Vec<PathBuf>);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        for path in &self.0 {
            let _ = std::fs::remove_file(path);
        }
    }
}
