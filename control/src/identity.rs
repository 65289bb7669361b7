//! Cluster-wide security identities, allocated with etcd transactions.
//!
//! Keys (under `/flagella/v1/identities/`):
//! - `labels/<label set as canonical JSON>` -> `"<number>"`: the number of a label set;
//! - `id/<number>` -> `{"labels":{...}}`: what a number stands for (the reverse index, read by
//!   `flagella identity list` and by every node's sync);
//! - `next` -> `"<number>"`: the allocation counter (absent means 256);
//! - `refs/<number>/<node>` -> `""`, attached to the node's lease: the node has local
//!   endpoints with this identity.
//!
//! Invariants:
//! - one number per label set: a label set is created only by a transaction that requires its
//!   `labels/` key to be absent, so of two nodes racing, one creates and the other reads the
//!   winner's number on retry;
//! - never one number for two label sets: a number is taken only by a transaction that moves
//!   the counter by compare-and-swap on its `mod_revision` and requires `id/<number>` absent;
//!   the counter only grows, so numbers are never reused, even after release;
//! - numbers are >= 256 ([`FIRST_IDENTITY`]) and below 2^24 (CIDR identities are node-local).
//!
//! Release: a node deletes its `refs/<n>/<node>` key when its last local endpoint with `n`
//! goes; a dead node's refs vanish with its lease. [`IdentityAllocator::collect_garbage`] (run
//! by every node; harmless when several run) deletes an identity whose refs have been absent
//! for a grace period, with a transaction that requires both "no key under `refs/<n>/`" and the
//! `labels/` key still naming `n`. Acquiring a reference is a transaction that requires the
//! `labels/` key to still name `n`; etcd serializes the two, so a reference is never taken on a
//! collected identity (the acquirer retries and allocates a fresh number).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use etcd_client::{Compare, CompareOp, PutOptions, Txn, TxnOp};
use policy_compiler::labels::Labels;

use crate::schema::{IdentitySpec, ROOT};
use crate::store::{Store, StoreError};

/// The first cluster-wide identity number.
pub const FIRST_IDENTITY: u32 = dataplane::Identity::FIRST_CLUSTER_LOCAL;
/// One past the last cluster-wide identity number (CIDR identities start here).
pub const END_IDENTITY: u32 = 1 << 24;
/// Retries of one allocation before giving up (each retry means another node won a race).
const MAX_ATTEMPTS: usize = 64;

/// Why an identity could not be allocated, acquired or released.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("identity allocation for {labels} lost {attempts} races in a row; etcd is overloaded or another writer corrupts {ROOT}identities/")]
    Contention { labels: String, attempts: usize },
    #[error(
        "{key}: `{value}` is not an identity number; delete the key so that it is allocated again"
    )]
    Corrupt { key: String, value: String },
    #[error("the cluster-wide identity range (256..2^24) is exhausted")]
    Exhausted,
}

impl IdentityError {
    /// True for a failure that belongs to one label set (a corrupt value, lost races, an
    /// exhausted range, a request etcd refuses as too large or invalid): the agent logs it and
    /// skips that label set, and everything else keeps converging. False for etcd being
    /// unreachable, which ends the session (fail static, then retry).
    pub fn is_per_label_set(&self) -> bool {
        match self {
            IdentityError::Corrupt { .. }
            | IdentityError::Contention { .. }
            | IdentityError::Exhausted => true,
            IdentityError::Store(StoreError::Etcd {
                source: etcd_client::Error::GRpcStatus(status),
                ..
            }) => {
                // gRPC codes: 3 invalid argument ("request is too large"), 8 resource
                // exhausted, 9 failed precondition, 11 out of range.
                matches!(i32::from(status.code()), 3 | 8 | 9 | 11)
            }
            IdentityError::Store(_) => false,
        }
    }
}

fn prefix() -> String {
    format!("{ROOT}identities/")
}

/// The canonical text of a label set (serde_json writes a BTreeMap in key order).
pub fn canonical(labels: &Labels) -> String {
    serde_json::to_string(labels).unwrap_or_default()
}

pub fn labels_key(labels: &Labels) -> String {
    format!("{}labels/{}", prefix(), canonical(labels))
}

pub fn id_key(id: u32) -> String {
    format!("{}id/{id}", prefix())
}

fn next_key() -> String {
    format!("{}next", prefix())
}

fn refs_prefix(id: u32) -> String {
    format!("{}refs/{id}/", prefix())
}

fn ref_key(id: u32, node: &str) -> String {
    format!("{}{node}", refs_prefix(id))
}

fn parse_number(key: &str, value: &[u8]) -> Result<u32, IdentityError> {
    std::str::from_utf8(value)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .ok_or_else(|| IdentityError::Corrupt {
            key: key.to_string(),
            value: String::from_utf8_lossy(value).into_owned(),
        })
}

/// One node's identity allocator. Holds the node's lease (kept alive by a background task) and
/// the identities the node references.
#[derive(Debug)]
pub struct IdentityAllocator {
    store: Store,
    node: String,
    lease_ttl: Duration,
    lease: i64,
    lease_lost: Arc<AtomicBool>,
    keepalive: Option<tokio::task::JoinHandle<()>>,
    /// Identities this node holds a reference on.
    held: HashMap<u32, Labels>,
    /// When each unreferenced identity was first seen unreferenced (garbage collection).
    unreferenced_since: HashMap<u32, Instant>,
}

impl Drop for IdentityAllocator {
    fn drop(&mut self) {
        if let Some(task) = self.keepalive.take() {
            task.abort();
        }
    }
}

impl IdentityAllocator {
    /// Creates the allocator of `node` with a lease of `lease_ttl` (its references vanish that
    /// long after the node stops renewing).
    pub async fn new(
        store: Store,
        node: &str,
        lease_ttl: Duration,
    ) -> Result<IdentityAllocator, IdentityError> {
        let mut a = IdentityAllocator {
            store,
            node: node.to_string(),
            lease_ttl,
            lease: 0,
            lease_lost: Arc::new(AtomicBool::new(true)),
            keepalive: None,
            held: HashMap::new(),
            unreferenced_since: HashMap::new(),
        };
        a.renew_lease().await?;
        Ok(a)
    }

    /// Grants a fresh lease and starts keeping it alive.
    async fn renew_lease(&mut self) -> Result<(), IdentityError> {
        if let Some(task) = self.keepalive.take() {
            task.abort();
        }
        let ttl = i64::try_from(self.lease_ttl.as_secs().max(2)).unwrap_or(60);
        let mut client = self.store.client();
        let grant = client
            .lease_grant(ttl, None)
            .await
            .map_err(StoreError::etcd("lease grant"))?;
        self.lease = grant.id();
        let lost = Arc::new(AtomicBool::new(false));
        self.lease_lost = lost.clone();
        let (mut keeper, mut responses) = client
            .lease_keep_alive(grant.id())
            .await
            .map_err(StoreError::etcd("lease keep-alive"))?;
        let period = Duration::from_secs(u64::try_from(ttl).unwrap_or(60) / 3)
            .max(Duration::from_millis(500));
        self.keepalive = Some(tokio::spawn(async move {
            loop {
                tokio::time::sleep(period).await;
                let ok = keeper.keep_alive().await.is_ok()
                    && matches!(responses.message().await, Ok(Some(r)) if r.ttl() > 0);
                if !ok {
                    lost.store(true, Ordering::Relaxed);
                    return;
                }
            }
        }));
        Ok(())
    }

    /// False once the lease could not be renewed (etcd unreachable longer than a renewal).
    pub fn lease_alive(&self) -> bool {
        !self.lease_lost.load(Ordering::Relaxed)
    }

    /// The number of `labels`, allocating one if the cluster has none. Takes no reference.
    pub async fn lookup_or_allocate(&self, labels: &Labels) -> Result<u32, IdentityError> {
        let lkey = labels_key(labels);
        let nkey = next_key();
        let mut client = self.store.client();
        for _ in 0..MAX_ATTEMPTS {
            if let Some(kv) = self.store.get(&lkey).await? {
                return parse_number(&lkey, &kv.value);
            }
            let counter = self.store.get(&nkey).await?;
            let (candidate, counter_cmp) = match &counter {
                Some(kv) => (
                    parse_number(&nkey, &kv.value)?.max(FIRST_IDENTITY),
                    Compare::mod_revision(nkey.as_str(), CompareOp::Equal, kv.mod_revision),
                ),
                None => (
                    FIRST_IDENTITY,
                    Compare::create_revision(nkey.as_str(), CompareOp::Equal, 0),
                ),
            };
            if candidate >= END_IDENTITY {
                return Err(IdentityError::Exhausted);
            }
            let spec = serde_json::to_vec(&IdentitySpec {
                labels: labels.clone().into(),
            })
            .unwrap_or_default();
            let txn = Txn::new()
                .when([
                    Compare::create_revision(lkey.as_str(), CompareOp::Equal, 0),
                    counter_cmp.clone(),
                    Compare::create_revision(id_key(candidate), CompareOp::Equal, 0),
                ])
                .and_then([
                    TxnOp::put(lkey.as_str(), candidate.to_string(), None),
                    TxnOp::put(id_key(candidate), spec, None),
                    TxnOp::put(nkey.as_str(), (candidate + 1).to_string(), None),
                ]);
            let resp = client
                .txn(txn)
                .await
                .map_err(StoreError::etcd("identity allocation"))?;
            if resp.succeeded() {
                return Ok(candidate);
            }
            // Lost a race: another node created this label set (read it on the next turn) or
            // took the number (the counter moved). A number whose `id/` key exists although the
            // counter points at it is skipped by moving the counter past it.
            if self.store.get(&id_key(candidate)).await?.is_some() {
                let skip = Txn::new().when([counter_cmp]).and_then([TxnOp::put(
                    nkey.as_str(),
                    (candidate + 1).to_string(),
                    None,
                )]);
                client
                    .txn(skip)
                    .await
                    .map_err(StoreError::etcd("identity counter"))?;
            }
        }
        Err(IdentityError::Contention {
            labels: canonical(labels),
            attempts: MAX_ATTEMPTS,
        })
    }

    /// The number of `labels`, with a reference held by this node (allocating when needed).
    pub async fn acquire(&mut self, labels: &Labels) -> Result<u32, IdentityError> {
        let lkey = labels_key(labels);
        let mut client = self.store.client();
        for _ in 0..MAX_ATTEMPTS {
            let id = self.lookup_or_allocate(labels).await?;
            let txn = Txn::new()
                .when([Compare::value(
                    lkey.as_str(),
                    CompareOp::Equal,
                    id.to_string(),
                )])
                .and_then([TxnOp::put(
                    ref_key(id, &self.node),
                    "",
                    Some(PutOptions::new().with_lease(self.lease)),
                )]);
            let resp = client
                .txn(txn)
                .await
                .map_err(StoreError::etcd("identity reference"))?;
            if resp.succeeded() {
                self.held.insert(id, labels.clone());
                return Ok(id);
            }
            // Collected between lookup and reference: allocate again.
        }
        Err(IdentityError::Contention {
            labels: canonical(labels),
            attempts: MAX_ATTEMPTS,
        })
    }

    /// Drops this node's reference on `id` (the identity itself goes after the grace period
    /// if no node references it).
    pub async fn release(&mut self, id: u32) -> Result<(), IdentityError> {
        self.store.delete(&ref_key(id, &self.node)).await?;
        self.held.remove(&id);
        Ok(())
    }

    /// Identities this node holds a reference on.
    pub fn held(&self) -> impl Iterator<Item = (u32, &Labels)> {
        self.held.iter().map(|(id, l)| (*id, l))
    }

    /// After etcd was unreachable: renews the lease if it was lost and re-takes every held
    /// reference. Returns the identities whose number changed (collected meanwhile), as
    /// `(old, new)`.
    pub async fn reassert(&mut self) -> Result<Vec<(u32, u32)>, IdentityError> {
        if !self.lease_alive() {
            self.renew_lease().await?;
        }
        let held: Vec<(u32, Labels)> = self.held.drain().collect();
        let mut changed = Vec::new();
        for (old, labels) in held {
            let new = self.acquire(&labels).await?;
            if new != old {
                changed.push((old, new));
            }
        }
        Ok(changed)
    }

    /// Every identity in the cluster: number -> labels.
    pub async fn list(&self) -> Result<BTreeMap<u32, Labels>, IdentityError> {
        let (kvs, _) = self.store.list(&format!("{}id/", prefix())).await?;
        Ok(kvs
            .into_iter()
            .filter_map(|kv| {
                let n = kv.key.rsplit('/').next()?.parse().ok()?;
                let spec: IdentitySpec = serde_json::from_slice(&kv.value).ok()?;
                Some((n, spec.labels.into()))
            })
            .collect())
    }

    /// One garbage-collection pass: deletes identities unreferenced for at least `grace`
    /// (as seen by this node's earlier passes). Returns the numbers deleted.
    pub async fn collect_garbage(&mut self, grace: Duration) -> Result<Vec<u32>, IdentityError> {
        let mut client = self.store.client();
        // Paged (the identities of a large cluster, or a few large label sets, exceed one reply).
        let (kvs, _) = self.store.list(&prefix()).await?;
        let mut labels_of: HashMap<u32, String> = HashMap::new();
        let mut referenced: std::collections::HashSet<u32> = Default::default();
        let id_prefix = format!("{}id/", prefix());
        let ref_prefix = format!("{}refs/", prefix());
        for kv in &kvs {
            let key = kv.key.as_str();
            if let Some(n) = key.strip_prefix(&id_prefix).and_then(|n| n.parse().ok()) {
                if let Ok(spec) = serde_json::from_slice::<IdentitySpec>(&kv.value) {
                    labels_of.insert(n, labels_key(&spec.labels.into()));
                }
            } else if let Some(rest) = key.strip_prefix(&ref_prefix) {
                if let Some(n) = rest.split('/').next().and_then(|n| n.parse().ok()) {
                    referenced.insert(n);
                }
            }
        }
        let now = Instant::now();
        self.unreferenced_since
            .retain(|n, _| labels_of.contains_key(n) && !referenced.contains(n));
        let mut deleted = Vec::new();
        for (n, lkey) in &labels_of {
            if referenced.contains(n) {
                continue;
            }
            let since = *self.unreferenced_since.entry(*n).or_insert(now);
            if now.duration_since(since) < grace {
                continue;
            }
            let txn = Txn::new()
                .when([
                    Compare::create_revision(refs_prefix(*n), CompareOp::Equal, 0).with_prefix(),
                    Compare::value(lkey.as_str(), CompareOp::Equal, n.to_string()),
                ])
                .and_then([
                    TxnOp::delete(lkey.as_str(), None),
                    TxnOp::delete(id_key(*n), None),
                ]);
            let resp = client
                .txn(txn)
                .await
                .map_err(StoreError::etcd("identity collection"))?;
            if resp.succeeded() {
                deleted.push(*n);
                self.unreferenced_since.remove(n);
            }
        }
        deleted.sort_unstable();
        Ok(deleted)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test
mod tests {
    use super::*;

    #[test]
    fn keys_are_canonical() {
        let a: Labels = [("b", "2"), ("a", "1")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert_eq!(canonical(&a), r#"{"a":"1","b":"2"}"#);
        assert_eq!(
            labels_key(&a),
            r#"/flagella/v1/identities/labels/{"a":"1","b":"2"}"#
        );
        assert_eq!(ref_key(300, "n1"), "/flagella/v1/identities/refs/300/n1");
        assert!(parse_number("k", b"x").is_err());
        assert_eq!(parse_number("k", b"257").unwrap(), 257);
    }
}
