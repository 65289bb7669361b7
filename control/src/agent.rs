//! The `flagella-control` main loop: list-then-watch etcd, keep the [`ClusterState`], resolve
//! identities, push the changes to the dataplane.
//!
//! Behaviour:
//! - etcd: list `/flagella/v1/` at revision `R`, watch from `R + 1`; on compaction list again
//!   and reconcile; on any etcd error the session ends, the dataplane is left as it is (fail
//!   static), and the agent reconnects with exponential backoff (0.5 s doubling to 30 s),
//!   logging each attempt and showing `etcd_reachable: false` in its status;
//! - dataplane: connected on start and re-tried every second while down; on every
//!   (re)connection the whole state is pushed ([`ClusterState::snapshot`]) so a restarted
//!   dataplane converges; while it is down, changes accumulate in the model only. Every
//!   endpoint goes in one atomic request with its policy ([`crate::sync::requests`]), so a
//!   restarted dataplane never forwards for an endpoint whose policy is not in force yet;
//! - this node's own facts: whenever its `nodes/<name>` entry changes, and after every
//!   (re)connection, the agent reads the dataplane's `local_node`, writes the etcd facts over
//!   it ([`crate::sync::local_node_facts`]: name, underlay, the pods' gateways, encapsulation)
//!   and sends `local_node.set`, so the uplink facts the dataplane read from its interfaces
//!   survive;
//! - identities: local label sets are acquired (referenced), remote ones looked up or allocated;
//!   references no longer needed are released; a garbage-collection pass runs every
//!   `gc_interval`;
//! - addresses: after every listing and watch batch, [`EndpointIpam`] gives this node's
//!   endpoints written without addresses one from the node's pod CIDR and writes it back, and
//!   releases allocations no endpoint holds (`crate::endpoint_ipam`);
//! - pod MTU: the uplink MTU read with the dataplane's `local_node` is handed to the IPAM,
//!   which writes the pod MTU (uplink MTU minus the tunnel's overhead) with the addresses; when
//!   it becomes known or changes, a pass runs at the next tick;
//! - metrics: [`AgentMetrics`] counts etcd events, errors, reconnections and compactions, the
//!   model's sizes (from the status snapshot), and times watch batch -> dataplane, each control
//!   request and each identity resolution (`crate::metrics`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::dataplane_client::{Change, ClientError, DataplaneClient, Request};
use crate::dataplane_client::{DumpTable, LocalNodeMsg};
use crate::endpoint_ipam::EndpointIpam;
use crate::identity::IdentityAllocator;
use crate::metrics::AgentMetrics;
use crate::schema::ROOT;
pub use crate::status::Status;
use crate::store::{Event, Store, StoreError, WatchBatch};
use crate::sync::{fail_closed, interfaces, local_node_facts, log, requests, ClusterState};
use dataplane::api::protocol::InterfaceMsg;

/// The agent's settings.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    pub etcd: Vec<String>,
    pub node: String,
    pub dataplane_socket: PathBuf,
    /// etcd request timeout.
    pub etcd_timeout: Duration,
    /// TTL of the node's identity-reference lease.
    pub lease_ttl: Duration,
    /// How long an identity stays unreferenced before it is deleted.
    pub identity_grace: Duration,
    pub gc_interval: Duration,
    /// Where the status is written as JSON (optional).
    pub status_file: Option<PathBuf>,
}

/// The agent.
#[derive(Debug)]
pub struct Agent {
    cfg: AgentConfig,
    state: ClusterState,
    dataplane: Option<DataplaneClient>,
    /// The uplink's MTU from the dataplane's `local_node`, once read.
    uplink_mtu: Option<u16>,
    /// Interfaces the connected dataplane was asked to serve (`interface.add`).
    interfaces_asked: BTreeSet<String>,
    /// Label sets whose identity failed recently: not asked again on every watch batch.
    identity_failures: IdentityFailures,
    pub status: Arc<Mutex<Status>>,
    metrics: Arc<AgentMetrics>,
}

const BACKOFF_MIN: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

impl Agent {
    /// An agent that reports to `metrics` (shared with the `/metrics` server, if any).
    pub fn new(cfg: AgentConfig, metrics: Arc<AgentMetrics>) -> Agent {
        let status = Status {
            node: cfg.node.clone(),
            ..Status::default()
        };
        let mut state = ClusterState::new(&cfg.node);
        // Only this node's endpoints need maps: O(local pods) per change, not O(cluster).
        state.set_local_only(true);
        Agent {
            state,
            cfg,
            dataplane: None,
            uplink_mtu: None,
            interfaces_asked: BTreeSet::new(),
            identity_failures: IdentityFailures::default(),
            status: Arc::new(Mutex::new(status)),
            metrics,
        }
    }

    fn set_status(&self, f: impl FnOnce(&mut Status)) {
        let snapshot = {
            let Ok(mut s) = self.status.lock() else {
                return;
            };
            f(&mut s);
            s.endpoints = self.state.endpoints().len();
            s.policies = self.state.policies().len();
            s.services = self.state.services().len();
            s.nodes = self.state.nodes().len();
            s.malformed_total = self.state.malformed_total();
            s.rejected_keys = self.state.rejected().keys().cloned().collect();
            s.dataplane_connected = self.dataplane.is_some();
            s.uplink_mtu = self.uplink_mtu;
            s.pod_mtu = self
                .state
                .own_node()
                .zip(self.uplink_mtu)
                .map(|(n, mtu)| n.tunnel.pod_mtu(mtu));
            s.clone()
        };
        self.metrics
            .set_status(&snapshot, self.state.identities_known());
        if let Some(path) = &self.cfg.status_file {
            if let Ok(text) = serde_json::to_vec_pretty(&snapshot) {
                let tmp = path.with_extension("tmp");
                if std::fs::write(&tmp, text).is_ok() {
                    let _ = std::fs::rename(&tmp, path);
                }
            }
        }
    }

    /// Runs forever (until the task is dropped).
    pub async fn run(&mut self) {
        let mut backoff = BACKOFF_MIN;
        let mut allocator: Option<IdentityAllocator> = None;
        loop {
            self.connect_dataplane().await;
            match self.session(&mut allocator).await {
                Ok(()) => backoff = BACKOFF_MIN,
                Err(e) => {
                    self.metrics.etcd_errors.inc();
                    self.set_status(|s| {
                        s.etcd_reachable = false;
                        s.last_error = Some(e.to_string());
                    });
                    log(format!(
                        "etcd unreachable ({e}); the dataplane keeps its last state (fail static); retrying in {:.1}s",
                        backoff.as_secs_f64()
                    ));
                    self.sleep_keeping_dataplane(backoff).await;
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
            }
        }
    }

    /// Sleeps, reconnecting (and resyncing) the dataplane meanwhile if it comes back.
    async fn sleep_keeping_dataplane(&mut self, d: Duration) {
        let end = Instant::now() + d;
        while Instant::now() < end {
            tokio::time::sleep(Duration::from_millis(250).min(d)).await;
            self.check_dataplane().await;
            self.connect_dataplane().await;
        }
    }

    async fn connect_dataplane(&mut self) {
        if self.dataplane.is_some() {
            return;
        }
        match DataplaneClient::connect(&self.cfg.dataplane_socket).await {
            Ok(c) => {
                log(format!(
                    "dataplane connected at {}; pushing the whole state",
                    self.cfg.dataplane_socket.display()
                ));
                self.dataplane = Some(c);
                self.interfaces_asked.clear();
                let snapshot = self.state.snapshot();
                self.push(snapshot).await;
                self.push_local_node().await;
            }
            Err(_) => {
                self.set_status(|_| {});
            }
        }
    }

    /// Pings the dataplane so that a restart is noticed even when nothing changes.
    async fn check_dataplane(&mut self) {
        if let Some(dp) = self.dataplane.as_mut() {
            if let Err(e) = dp.ping().await {
                log(format!(
                    "dataplane connection lost ({e}); will resync on reconnection"
                ));
                self.dataplane = None;
            }
        }
    }

    /// Sends changes, each endpoint in one request with its policy ([`requests`]; one too large
    /// for a line as the parts of a staged batch); a lost connection drops them (the snapshot
    /// at reconnection covers them). A refused request's endpoints get their policy shut
    /// ([`fail_closed`]): never less enforced than their policy says.
    async fn push(&mut self, changes: Vec<Change>) {
        let mut refusals = 0;
        let mut refused_txn = None;
        let mut shut = Vec::new();
        for request in requests(changes) {
            if let Request::Staged(p) = &request {
                if refused_txn == Some(p.txn) {
                    continue; // an earlier part was refused: the dataplane discarded it all
                }
            }
            let Some(dp) = self.dataplane.as_mut() else {
                break;
            };
            let sent = Instant::now();
            let result = dp.send_request(&request).await;
            if matches!(result, Ok(_) | Err(ClientError::Refused { .. })) {
                AgentMetrics::observe(&self.metrics.dataplane_request, sent.elapsed());
            }
            match result {
                Ok(_) => {}
                Err(ClientError::Refused { op, message }) => {
                    refusals += 1;
                    log(format!("dataplane refused {op}: {message}"));
                    if let Request::Staged(p) = &request {
                        refused_txn = Some(p.txn);
                    }
                    shut.extend(fail_closed(&request));
                }
                Err(e) => {
                    log(format!(
                        "dataplane connection lost ({e}); will resync on reconnection"
                    ));
                    self.dataplane = None;
                }
            }
        }
        self.shut_policies(shut).await;
        let interface_refusals = self.push_interfaces().await;
        self.set_status(|s| {
            s.dataplane_refusals += refusals;
            s.interface_refusals += interface_refusals;
        });
    }

    /// Asks the dataplane to serve the interfaces of new local endpoints and to stop serving
    /// those of deleted ones ([`crate::sync::interfaces`]); returns the refusals.
    async fn push_interfaces(&mut self) -> u64 {
        let plan = interfaces::plan(&self.state.local_interfaces(), &self.interfaces_asked);
        let mut refusals = 0;
        let asks = plan
            .add
            .into_iter()
            .map(|i| (true, i))
            .chain(plan.remove.into_iter().map(|i| (false, i)));
        for (add, ifname) in asks {
            let Some(dp) = self.dataplane.as_mut() else {
                break;
            };
            let msg = InterfaceMsg {
                ifname: ifname.clone(),
            };
            let request = if add {
                Request::InterfaceAdd(msg)
            } else {
                Request::InterfaceRemove(msg)
            };
            match dp.send_request(&request).await {
                Ok(_) if add => {
                    self.interfaces_asked.insert(ifname);
                }
                Ok(_) => {
                    self.interfaces_asked.remove(&ifname);
                }
                Err(ClientError::Refused { op, message }) => {
                    // Counted and logged once: asked again only after a reconnection (a
                    // dataplane that cannot add interfaces would refuse every push).
                    refusals += 1;
                    log(format!("dataplane refused {op} {ifname}: {message}"));
                    if add {
                        self.interfaces_asked.insert(ifname);
                    } else {
                        self.interfaces_asked.remove(&ifname);
                    }
                }
                Err(e) => {
                    log(format!(
                        "dataplane connection lost ({e}); will resync on reconnection"
                    ));
                    self.dataplane = None;
                }
            }
        }
        refusals
    }

    /// Shuts the policies of endpoints whose push was refused (see [`fail_closed`]).
    async fn shut_policies(&mut self, shut: Vec<Change>) {
        for change in shut {
            let Some(dp) = self.dataplane.as_mut() else {
                return;
            };
            let what = match &change {
                Change::PolicyReplace(m) => format!("endpoint {} ({:?})", m.endpoint, m.direction),
                other => other.op().to_string(),
            };
            match dp.send(&change).await {
                Ok(()) => log(format!(
                    "shut the policy of {what} (nothing admitted) until its policy can be \
                     pushed whole: fix what the dataplane refused, then restart flagella-control"
                )),
                // The endpoint itself was refused (it is not in the dataplane: no traffic).
                Err(ClientError::Refused { .. }) => {}
                Err(e) => {
                    log(format!(
                        "dataplane connection lost ({e}); will resync on reconnection"
                    ));
                    self.dataplane = None;
                }
            }
        }
    }

    /// Sends `local_node.set` when this node's facts are due (see the module doc). A lost
    /// connection makes them due again at the reconnection (the snapshot marks them).
    async fn push_local_node(&mut self) {
        if self.dataplane.is_none() || !self.state.take_local_node_due() {
            return;
        }
        let Some(spec) = self.state.own_node().cloned() else {
            return;
        };
        let Some(dp) = self.dataplane.as_mut() else {
            return;
        };
        let current = match dp.dump(DumpTable::LocalNode).await {
            Ok(reply) => serde_json::from_value::<LocalNodeMsg>(reply["local_node"].clone()),
            Err(e) => {
                log(format!(
                    "dataplane: cannot read local_node ({e}); will retry on reconnection"
                ));
                self.dataplane = None;
                return;
            }
        };
        let current = match current {
            Ok(c) => c,
            Err(e) => {
                log(format!(
                    "dataplane sent a local_node this agent does not understand: {e}"
                ));
                return;
            }
        };
        self.uplink_mtu = Some(current.uplink_mtu);
        let facts = local_node_facts(&current, &self.cfg.node, &spec);
        if facts != current {
            self.push(vec![Change::LocalNodeSet(facts)]).await;
        }
    }

    /// One etcd session: connect, list, watch until an error.
    async fn session(
        &mut self,
        allocator: &mut Option<IdentityAllocator>,
    ) -> Result<(), SessionError> {
        let store = Store::connect(&self.cfg.etcd, self.cfg.etcd_timeout).await?;
        match allocator {
            Some(a) => {
                let changed = a.reassert().await?;
                for (old, new) in changed {
                    log(format!(
                        "identity {old} was collected while etcd was away; now {new}"
                    ));
                }
            }
            None => {
                *allocator = Some(
                    IdentityAllocator::new(store.clone(), &self.cfg.node, self.cfg.lease_ttl)
                        .await?,
                );
            }
        }
        let Some(alloc) = allocator.as_mut() else {
            return Ok(());
        };
        let mut ipam = EndpointIpam::new(&self.cfg.node);
        let mut revision = self.list_and_reconcile(&store, alloc, &mut ipam).await?;
        log(format!(
            "etcd connected; state listed at revision {revision}"
        ));
        self.metrics.note_session();
        let mut watch = store.watch(ROOT, revision + 1).await?;
        let mut last_gc = Instant::now();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                batch = watch.next() => match batch? {
                    WatchBatch::Events { mut events, revision: mut r } => {
                        let received = Instant::now();
                        let timed_before = self.metrics.requests_timed();
                        // Every batch already received converges at once (a catch-up after a
                        // pause delivers hundreds of small batches).
                        while let Some((more, more_revision)) = watch.ready_events() {
                            events.extend(more);
                            r = r.max(more_revision);
                        }
                        self.metrics.note_events(&events);
                        for e in events {
                            ipam.observe(&e);
                            match e {
                                Event::Put(kv) => { let _ = self.state.put(&kv.key, &kv.value); }
                                Event::Delete { key, .. } => self.state.delete(&key),
                            }
                        }
                        revision = revision.max(r);
                        self.converge(alloc, revision).await?;
                        if self.metrics.requests_timed() > timed_before {
                            AgentMetrics::observe(&self.metrics.etcd_to_dataplane, received.elapsed());
                        }
                        ipam.set_uplink_mtu(self.uplink_mtu);
                        ipam.converge_and_log(&store).await?;
                    }
                    WatchBatch::Compacted { compact_revision } => {
                        self.metrics.etcd_compactions.inc();
                        log(format!("watch history compacted at {compact_revision}; listing again"));
                        revision = self.list_and_reconcile(&store, alloc, &mut ipam).await?;
                        watch = store.watch(ROOT, revision + 1).await?;
                    }
                },
                _ = tick.tick() => {
                    self.check_dataplane().await;
                    self.connect_dataplane().await;
                    if ipam.set_uplink_mtu(self.uplink_mtu) {
                        ipam.converge_and_log(&store).await?;
                    }
                    if !alloc.lease_alive() {
                        return Err(SessionError::LeaseLost);
                    }
                    if last_gc.elapsed() >= self.cfg.gc_interval {
                        last_gc = Instant::now();
                        let gone = alloc.collect_garbage(self.cfg.identity_grace).await?;
                        if !gone.is_empty() {
                            log(format!("released unused identities {gone:?}"));
                        }
                    }
                }
            }
        }
    }

    async fn list_and_reconcile(
        &mut self,
        store: &Store,
        alloc: &mut IdentityAllocator,
        ipam: &mut EndpointIpam,
    ) -> Result<i64, SessionError> {
        let (kvs, revision) = store.list(ROOT).await?;
        ipam.reset(&kvs);
        let listing: Vec<(String, Vec<u8>)> =
            kvs.into_iter().map(|kv| (kv.key, kv.value)).collect();
        self.state.reconcile(&listing);
        self.converge(alloc, revision).await?;
        ipam.set_uplink_mtu(self.uplink_mtu);
        // Also the reconciliation on start: allocations whose owner is gone are released.
        ipam.converge_and_log(store).await?;
        Ok(revision)
    }

    /// Resolves identities, commits and pushes.
    async fn converge(
        &mut self,
        alloc: &mut IdentityAllocator,
        revision: i64,
    ) -> Result<(), SessionError> {
        let mut failed = BTreeMap::new();
        for (labels, local) in self.state.needed_identities() {
            if let Some(reason) = self.identity_failures.waiting(&labels) {
                failed.insert(crate::identity::canonical(&labels), reason);
                continue;
            }
            let started = Instant::now();
            let id = if local {
                alloc.acquire(&labels).await
            } else {
                alloc.lookup_or_allocate(&labels).await
            };
            AgentMetrics::observe(&self.metrics.identity_allocation, started.elapsed());
            match id {
                Ok(id) => self.state.set_identity(labels, id),
                Err(e) if e.is_per_label_set() => {
                    self.identity_failures.failed(&labels, e.to_string());
                    failed.insert(crate::identity::canonical(&labels), e.to_string());
                }
                Err(e) => return Err(e.into()),
            }
        }
        self.identity_failures.forget_all_but(&failed);
        // Local label sets that became local after their number was known need a reference.
        let local = self.state.local_label_sets();
        let held: Vec<(u32, policy_compiler::labels::Labels)> =
            alloc.held().map(|(i, l)| (i, l.clone())).collect();
        for labels in &local {
            let canonical = crate::identity::canonical(labels);
            if !held.iter().any(|(_, l)| l == labels) && !failed.contains_key(&canonical) {
                let started = Instant::now();
                let id = alloc.acquire(labels).await;
                AgentMetrics::observe(&self.metrics.identity_allocation, started.elapsed());
                match id {
                    Ok(id) => self.state.set_identity(labels.clone(), id),
                    Err(e) if e.is_per_label_set() => {
                        failed.insert(canonical, e.to_string());
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        }
        self.note_identity_errors(failed);
        for (id, labels) in held {
            if !local.contains(&labels) {
                alloc.release(id).await?;
            }
        }
        let changes = self.state.commit();
        self.push(changes).await;
        if self.state.commit_due() {
            // A renumbered identity's second step (see `sync::renumber`).
            let changes = self.state.commit();
            self.push(changes).await;
        }
        self.push_local_node().await;
        self.set_status(|s| {
            s.etcd_reachable = true;
            s.revision = revision;
            s.last_error = None;
        });
        Ok(())
    }
}

impl Agent {
    /// Logs each label set whose identity failed (once per distinct reason) and publishes the
    /// current set in the status; they are skipped, everything else converges.
    fn note_identity_errors(&mut self, failed: BTreeMap<String, String>) {
        // Shortened: a label set (or a reason quoting its key) may be as large as etcd allows,
        // and the status is rewritten on every batch.
        let failed: BTreeMap<String, String> = failed
            .iter()
            .map(|(labels, reason)| (shortened(labels), shortened(reason)))
            .collect();
        let before = self
            .status
            .lock()
            .map(|s| s.identity_errors.clone())
            .unwrap_or_default();
        for (labels, reason) in &failed {
            if before.get(labels) != Some(reason) {
                log(format!(
                    "identity of label set {labels}: {reason}; its endpoints stay out of the \
                     dataplane until this is fixed, everything else goes on"
                ));
            }
        }
        if before != failed {
            self.set_status(|s| s.identity_errors = failed);
        }
    }
}

/// Texts longer than this are shortened in the status and the log.
const SHOWN_BYTES: usize = 512;

/// `text`, or its first [`SHOWN_BYTES`] bytes (at a character boundary) and its length.
fn shortened(text: &str) -> String {
    if text.len() <= SHOWN_BYTES {
        return text.to_string();
    }
    let mut end = SHOWN_BYTES;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}... ({} bytes)", &text[..end], text.len())
}

/// How long a label set whose identity failed waits before it is asked again. A failure is
/// rarely fixed within seconds (a corrupt value, a label set too large for etcd), and asking on
/// every watch batch costs a round trip each (an oversized request is sent whole before etcd
/// refuses it): a cluster's worth of changes would queue behind it.
const IDENTITY_RETRY: Duration = Duration::from_secs(10);

/// Label sets whose identity failed, with when and why.
#[derive(Debug, Default)]
struct IdentityFailures {
    by_labels: BTreeMap<String, (Instant, String)>,
}

impl IdentityFailures {
    /// The last reason of `labels`' failure while it waits for its retry; `None` when it may
    /// be asked.
    fn waiting(&self, labels: &policy_compiler::labels::Labels) -> Option<String> {
        let (when, reason) = self.by_labels.get(&crate::identity::canonical(labels))?;
        (when.elapsed() < IDENTITY_RETRY).then(|| reason.clone())
    }

    fn failed(&mut self, labels: &policy_compiler::labels::Labels, reason: String) {
        let canonical = crate::identity::canonical(labels);
        self.by_labels.insert(canonical, (Instant::now(), reason));
    }

    /// Drops label sets that no longer fail (resolved, or no longer needed).
    fn forget_all_but(&mut self, failing: &BTreeMap<String, String>) {
        self.by_labels
            .retain(|labels, _| failing.contains_key(labels));
    }
}

/// Why an etcd session ended.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Identity(#[from] crate::identity::IdentityError),
    #[error("the identity lease could not be renewed")]
    LeaseLost,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_texts_are_shortened_at_a_character_boundary() {
        assert_eq!(shortened("short"), "short");
        let long = "é".repeat(SHOWN_BYTES);
        let s = shortened(&long);
        assert!(s.len() < SHOWN_BYTES + 32, "{}", s.len());
        assert!(s.ends_with(&format!("... ({} bytes)", long.len())), "{s}");
    }
}
