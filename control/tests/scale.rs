//! Control-plane scale (issue 16): the agent against a synthetic cluster (`control::synth`),
//! checked by the differential check: the dataplane an agent leaves behind must equal what a
//! from-scratch compile of the same state produces.
//!
//! 1. `incremental_equals_full_recompile_after_1000_random_changes` (no etcd): the agent's model
//!    fed a cluster, then 1,000 seeded random endpoint, namespace-label and policy changes one
//!    watch event at a time; at checkpoints its dataplane (every change it emitted, applied in
//!    order) equals a fresh model's snapshot of the current state.
//!    `batched_catch_up_with_late_identity_keys_equals_full_recompile`: the same changes in
//!    watch batches of up to 40, with the numbers another agent allocated arriving a batch late
//!    (a restarted agent's catch-up, without etcd).
//! 2. `agents_converge_at_20k_endpoints_and_across_a_restart` (real etcd, the real
//!    `flagella-control` binary, stand-in dataplane sockets that apply every request to a
//!    mirror, `control::synth::StandIn`): 20k endpoints with ~20 labels each, 1,000 identities,
//!    300 policies (more than 4 MiB under the prefix) and two agents; each agent's
//!    dataplane converges to the from-scratch compile of etcd's contents (identity numbers read
//!    from etcd). Then one agent is killed and restarted (a fresh dataplane) and converges
//!    again. `agents_converge_after_changes_during_a_restart` writes 400 random changes while
//!    that agent is down and restarting (its catch-up arrives as large watch batches).
//!
//! Skips the etcd test when etcd is not installed. Stops only the processes it started, by PID.

#![cfg(feature = "synth")]
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failure is a failed test

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use common::net::{spawn_agent, Proc};
use control::identity::labels_key;
use control::schema::ROOT;
use control::store::Store;
use control::sync::ClusterState;
use control::synth::mirror::from_scratch;
use control::synth::{
    DataplaneMirror, Differential, Mutation, Mutations, ScaleCluster, ScaleSpec, StandIn,
};
use etcd_client::{Txn, TxnOp};
use serde_json::{json, Value};

// ---- 1. incremental == full recompile ---------------------------------------------------

#[test]
fn incremental_equals_full_recompile_after_1000_random_changes() {
    let mut spec = ScaleSpec::new("fdiff", 1_000);
    spec.nodes = 10;
    spec.agents = 1;
    spec.namespaces = 10;
    spec.identities = 150;
    spec.policies = 200;
    let cluster = ScaleCluster::generate(&spec).unwrap();
    let node = cluster.node_name(0);
    let mut d = Differential::start(&node, &cluster.objects());
    assert!(
        d.mirror.endpoints.len() >= 90,
        "{} local endpoints",
        d.mirror.endpoints.len()
    );
    assert_equal(&mut d, 0);
    let mut changes = Mutations::new(cluster, 16);
    for i in 1..=1_000 {
        match changes.next_mutation() {
            Mutation::Put(k, v) => d.apply(&k, Some(&v)),
            Mutation::Delete(k) => d.apply(&k, None),
        }
        if i % 500 == 0 {
            assert_equal(&mut d, i);
        }
    }
    // The check can fail: the sequence changed the maps, and they are not empty.
    assert!(
        d.mirror.policy_entries() > 500,
        "{}",
        d.mirror.policy_entries()
    );
}

/// Batch sizes of the catch-up test: single events, as the live watch delivers them, up to
/// the large batches of an agent's catch-up after a restart.
const BATCH_SIZES: [usize; 6] = [1, 7, 23, 40, 3, 15];

/// The restart's catch-up (the etcd test below), in process and fast: the changes arrive in
/// watch batches of up to 40 events, and the identity numbers another agent allocated while
/// it processed them one by one (`identities/id/<n>` keys) arrive a batch later; every batch
/// one identity no agent references is collected (as the etcd test's agents collect the
/// remote-only label sets after the grace period) and numbered anew. It failed on two bugs:
/// a pod relabelled twice in one batch kept its address under the transient label set's
/// number once that number arrived (`control::sync::supersede`), and a policy entry removed
/// while its identity was being renumbered stayed under the old number
/// (`ClusterState::numbers_held` in `control::sync::renumber`).
#[test]
fn batched_catch_up_with_late_identity_keys_equals_full_recompile() {
    let mut spec = ScaleSpec::new("fbatch", 1_000);
    spec.nodes = 10;
    spec.agents = 2;
    spec.namespaces = 10;
    spec.identities = 150;
    spec.policies = 200;
    let cluster = ScaleCluster::generate(&spec).unwrap();
    let mut d = Differential::start(&cluster.node_name(0), &cluster.objects());
    let mut other = other_agent(&cluster.node_name(1), &mut d);
    let mut changes = Mutations::new(cluster, 16);
    // Every number given so far travels as an identity key, one batch late.
    let mut told = 256;
    let mut late: Vec<(String, Option<String>)> = Vec::new();
    let mut done = 0;
    for size in BATCH_SIZES.iter().cycle() {
        if done >= 1_000 {
            break;
        }
        let mut events = std::mem::take(&mut late);
        for _ in 0..*size {
            let event = match changes.next_mutation() {
                Mutation::Put(k, v) => (k, Some(v)),
                Mutation::Delete(k) => (k, None),
            };
            feed(&mut other, &event, &mut d);
            events.push(event);
            done += 1;
        }
        if let Some(event) = collect_one(&mut d, &other, done) {
            feed(&mut other, &event, &mut d);
            events.push(event);
        }
        d.apply_batch(&events);
        late = d
            .ids
            .identity_keys_from(told)
            .into_iter()
            .map(|(k, v)| (k, Some(v)))
            .collect();
        told = d.ids.next_number();
        if done % 250 < *size {
            assert_equal(&mut d, done);
        }
    }
    d.apply_batch(&late);
    assert_equal(&mut d, done);
}

/// The agents' garbage collection: an identity no agent references (the label set of no local
/// endpoint of either model: remote-only label sets, as the etcd test's cluster has hundreds)
/// is deleted; its label set is numbered anew when next resolved. Picks the `pick`-th such
/// identity key `d` holds; returns its deletion.
fn collect_one(
    d: &mut Differential,
    other: &ClusterState,
    pick: usize,
) -> Option<(String, Option<String>)> {
    let referenced = d.model.local_label_sets();
    let referenced_too = other.local_label_sets();
    let prefix = format!("{ROOT}identities/id/");
    let candidates: Vec<u32> = d
        .state
        .keys()
        .filter_map(|k| k.strip_prefix(&prefix)?.parse().ok())
        .collect();
    let n = *candidates.get(pick % candidates.len().max(1))?;
    let labels = d.ids.collect(n)?;
    if referenced.contains(&labels) || referenced_too.contains(&labels) {
        d.ids.restore(labels, n);
        return None;
    }
    Some((format!("identities/id/{n}"), None))
}

/// Another node's agent model over the same listing, numbered from `d`'s book.
fn other_agent(node: &str, d: &mut Differential) -> ClusterState {
    let mut other = ClusterState::new(node);
    other.set_quiet(true);
    other.set_local_only(true);
    let listing: Vec<(String, Vec<u8>)> = d
        .state
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    other.put_all(&listing);
    d.ids.resolve(&mut other);
    other.commit();
    other
}

/// One watch event into the other agent, which resolves its identities at once.
fn feed(other: &mut ClusterState, (key, value): &(String, Option<String>), d: &mut Differential) {
    let full = format!("{ROOT}{key}");
    match value {
        Some(v) => {
            let _ = other.put(&full, v.as_bytes());
        }
        None => other.delete(&full),
    }
    d.ids.resolve(other);
    other.commit();
}

fn assert_equal(d: &mut Differential, after: usize) {
    let diff = d.check(30);
    assert!(
        diff.is_empty(),
        "after {after} changes the incremental dataplane differs from a full recompile:\n{}",
        diff.join("\n")
    );
}

// ---- 2. real etcd, real agents --------------------------------------------------------------

/// How long an agent may take to list 20k endpoints and converge: a debug build on 2 cores
/// under load 20 took 85 s for its first pass.
const CONVERGE: Duration = Duration::from_secs(300);

/// One agent with its stand-in dataplane.
struct Agent {
    node: String,
    proc: Proc,
    socket: StandIn,
    status: PathBuf,
}

impl Agent {
    fn start(etcd_url: &str, node: &str, dir: &Path, run: usize) -> Agent {
        let socket_path = dir.join(format!("{node}-{run}.sock"));
        let socket = StandIn::serve(&socket_path).unwrap();
        let status = dir.join(format!("{node}-{run}.status"));
        let log = dir.join(format!("{node}-{run}.log"));
        let child = spawn_agent(etcd_url, node, &socket_path, &status, &log);
        Agent {
            node: node.to_string(),
            proc: Proc {
                child: Some(child),
                what: "flagella-control",
                log,
            },
            socket,
            status,
        }
    }

    fn status(&self) -> Value {
        std::fs::read(&self.status)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_else(|| json!({}))
    }
}

/// etcd's current contents (full keys) and its revision.
struct Etcd<'a> {
    rt: &'a tokio::runtime::Runtime,
    store: Store,
}

impl Etcd<'_> {
    fn state(&self) -> (BTreeMap<String, Vec<u8>>, i64) {
        let (kvs, rev) = self.rt.block_on(self.store.list(ROOT)).unwrap();
        (kvs.into_iter().map(|kv| (kv.key, kv.value)).collect(), rev)
    }

    /// Writes `items` (keys relative to ROOT) in transactions of 100; returns the bytes.
    fn put_many(&self, items: &[(String, String)]) -> usize {
        let mut bytes = 0;
        for chunk in items.chunks(100) {
            let ops: Vec<TxnOp> = chunk
                .iter()
                .map(|(k, v)| {
                    bytes += ROOT.len() + k.len() + v.len();
                    TxnOp::put(format!("{ROOT}{k}"), v.as_str(), None)
                })
                .collect();
            let mut c = self.store.client();
            self.rt.block_on(c.txn(Txn::new().and_then(ops))).unwrap();
        }
        bytes
    }

    fn apply(&self, m: &Mutation) {
        match m {
            Mutation::Put(k, v) => self
                .rt
                .block_on(self.store.put(&format!("{ROOT}{k}"), v.as_str())),
            Mutation::Delete(k) => self.rt.block_on(self.store.delete(&format!("{ROOT}{k}"))),
        }
        .unwrap();
    }

    /// The dataplane a fresh model of `node` compiles from etcd's contents now, with the
    /// cluster-wide identity numbers etcd holds.
    fn compiled_from_scratch(&self, node: &str) -> DataplaneMirror {
        let (state, _) = self.state();
        from_scratch(node, &state, |labels| {
            let raw = state.get(&labels_key(labels))?;
            std::str::from_utf8(raw).ok()?.parse().ok()
        })
    }
}

/// Waits until `agent`'s dataplane equals the from-scratch compile of etcd's contents at a
/// revision it has seen; on a timeout the failure shows the differences and the agent's log.
fn wait_equal(etcd: &Etcd<'_>, agent: &Agent, what: &str) {
    let deadline = Instant::now() + CONVERGE;
    loop {
        let (_, revision) = etcd.state();
        let s = agent.status();
        let caught_up = s["revision"].as_i64().unwrap_or(0) >= revision;
        let diff = if caught_up {
            let expected = etcd.compiled_from_scratch(&agent.node);
            // Cookies are the agent's own numbers: compared without them.
            let expected = expected.without_cookies();
            agent.socket.mirror().without_cookies().diff(&expected, 20)
        } else {
            vec![format!("agent at revision {} of {revision}", s["revision"])]
        };
        if diff.is_empty() {
            let mirror = agent.socket.mirror();
            assert!(
                mirror.endpoints.len() >= 90,
                "{what}: {} endpoints",
                mirror.endpoints.len()
            );
            assert!(
                mirror.policy_entries() > 1_000,
                "{what}: {}",
                mirror.policy_entries()
            );
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: the agent's dataplane does not equal a full recompile:\n{}\nstatus: {s}\n\
             identities named, as etcd holds them:\n{}\n---- flagella-control log ----\n{}",
            diff.join("\n"),
            identities_named(&diff, &etcd.state().0),
            agent.proc.log_text()
        );
        thread::sleep(Duration::from_millis(500));
    }
}

/// The identities the first lines of `diff` name (`"identity":N`), with etcd's `id/N` value:
/// which labels differ between the agent's number and the expected one.
fn identities_named(diff: &[String], state: &BTreeMap<String, Vec<u8>>) -> String {
    let mut numbers: Vec<u32> = Vec::new();
    for line in diff.iter().take(4) {
        for part in line.split("\"identity\":").skip(1) {
            let digits: String = part.chars().take_while(char::is_ascii_digit).collect();
            if let Ok(n) = digits.parse() {
                if !numbers.contains(&n) {
                    numbers.push(n);
                }
            }
        }
    }
    numbers
        .iter()
        .map(|n| {
            let value = state
                .get(&control::identity::id_key(*n))
                .map_or("(absent)".into(), |v| {
                    String::from_utf8_lossy(v).into_owned()
                });
            format!("{n}: {value}")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn agents_converge_at_20k_endpoints_and_across_a_restart() {
    agents_at(spec_20k(), 0);
}

/// Found a divergence (2026-12-07; fixed 2026-12-08, see
/// `batched_catch_up_with_late_identity_keys_equals_full_recompile`, which reproduces it in
/// process): deltas held back for want of an identity number were sent after newer ones, and
/// entries removed during a renumbering (this test runs past the 300 s identity grace, so the
/// agents collect and renumber the label sets only remote pods carry) stayed under the old
/// number.
#[test]
fn agents_converge_after_changes_during_a_restart() {
    agents_at(spec_20k(), 400);
}

/// 20k endpoints as in the issue; fewer identities and policies than the benchmark's 2,000
/// and 1,000, so a debug agent lists and compiles within the time on a loaded machine.
fn spec_20k() -> ScaleSpec {
    let mut spec = ScaleSpec::new("fscale", 20_000);
    spec.agents = 2;
    spec.identities = 1_000;
    spec.policies = 300;
    spec
}

/// 20k endpoints, two agents; then agent 0 killed, `changes` random changes written, the agent
/// restarted half way through them; both agents must equal a full recompile.
fn agents_at(spec: ScaleSpec, changes: usize) {
    let Some(etcd_server) = common::Etcd::start() else {
        return;
    };
    let dir = testkit::private_dir("fscale-");
    let _cleanup = RemoveDirOnDrop(dir.clone());
    let rt = common::runtime();
    let store = rt
        .block_on(Store::connect(&etcd_server.urls(), Duration::from_secs(10)))
        .unwrap();
    let etcd = Etcd { rt: &rt, store };
    let cluster = ScaleCluster::generate(&spec).unwrap();
    let started = Instant::now();
    let bytes = etcd.put_many(&cluster.objects());
    assert!(bytes > 4 << 20, "only {bytes} bytes under {ROOT}");
    eprintln!("wrote {bytes} bytes: {:?}", started.elapsed());

    let mut agents: Vec<Agent> = (0..2)
        .map(|i| Agent::start(&etcd_server.url, &cluster.node_name(i), &dir, 0))
        .collect();
    for a in &agents {
        wait_equal(&etcd, a, &format!("{} after the initial sync", a.node));
        eprintln!("{} converged: {:?}", a.node, started.elapsed());
    }

    // Agent 0 killed; changes land; restarted half way; more changes land.
    agents[0].proc.kill9();
    let mut sequence = Mutations::new(cluster.clone(), 99);
    for i in 0..changes.max(1) {
        if i == changes / 2 {
            agents[0] = Agent::start(&etcd_server.url, &cluster.node_name(0), &dir, 1);
        }
        if i < changes {
            etcd.apply(&sequence.next_mutation());
        }
    }
    for a in &agents {
        wait_equal(
            &etcd,
            a,
            &format!("{} after a restart and {changes} changes", a.node),
        );
        assert!(a.proc.child.is_some(), "{} runs", a.node);
    }
    eprintln!("both converged after the changes: {:?}", started.elapsed());
    for a in &mut agents {
        assert!(
            a.proc.running(),
            "{} still runs\n{}",
            a.node,
            a.proc.log_text()
        );
    }
}

/// Removes a directory tree when dropped.
struct RemoveDirOnDrop(PathBuf);

impl Drop for RemoveDirOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
