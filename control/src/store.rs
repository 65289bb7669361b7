//! A thin layer over the etcd v3 client: connect, list a prefix at one revision, watch a prefix
//! from a revision, and tell compaction apart from other watch failures.
//!
//! Contract of list-then-watch: [`Store::list`] returns every key under the prefix *and* the
//! store revision `R` the listing was read at; [`Store::watch`] from `R + 1` then delivers every
//! change after the listing, none missed and none twice (etcd guarantees a watch replays history
//! from its start revision). If `R + 1` was compacted away meanwhile, the watch reports
//! [`WatchBatch::Compacted`]: the caller lists again and reconciles.

use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, Txn, TxnOp, WatchOptions,
    WatchStream,
};

/// An etcd failure, with what was being done.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("etcd {op}: {source}; check that etcd is reachable at the --etcd URLs")]
    Etcd {
        op: &'static str,
        #[source]
        source: etcd_client::Error,
    },
    #[error("etcd watch stream ended; it is re-established from the last seen revision")]
    WatchClosed,
    #[error("etcd watch was canceled: {reason}")]
    WatchCanceled { reason: String },
}

impl StoreError {
    pub fn etcd(op: &'static str) -> impl FnOnce(etcd_client::Error) -> StoreError {
        move |source| StoreError::Etcd { op, source }
    }
}

/// One key and its value, with the revision that last changed it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Kv {
    pub key: String,
    pub value: Vec<u8>,
    pub mod_revision: i64,
}

/// One change seen by a watch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    Put(Kv),
    Delete { key: String, mod_revision: i64 },
}

/// What a watch delivered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WatchBatch {
    /// Events in revision order; `revision` is the store revision of the response (the next
    /// watch, after a reconnect, starts at `revision + 1`).
    Events { events: Vec<Event>, revision: i64 },
    /// History from the requested revision is gone (compacted up to `compact_revision`):
    /// list again.
    Compacted { compact_revision: i64 },
}

/// A connection to etcd (cheap to clone: the underlying gRPC channel is shared).
#[derive(Clone)]
pub struct Store {
    client: Client,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Store")
    }
}

/// A watch on a prefix.
pub struct Watch {
    stream: WatchStream,
}

impl std::fmt::Debug for Watch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Watch")
    }
}

fn kv(k: &etcd_client::KeyValue) -> Kv {
    Kv {
        key: String::from_utf8_lossy(k.key()).into_owned(),
        value: k.value().to_vec(),
        mod_revision: k.mod_revision(),
    }
}

impl Store {
    /// Connects to any of `endpoints` (`http://127.0.0.1:2379`). Each request times out after
    /// `timeout` so that an unreachable etcd is noticed instead of hanging.
    pub async fn connect(endpoints: &[String], timeout: Duration) -> Result<Store, StoreError> {
        let options = ConnectOptions::new()
            .with_connect_timeout(timeout)
            .with_timeout(timeout)
            .with_keep_alive(Duration::from_secs(5), timeout);
        let client = Client::connect(endpoints, Some(options))
            .await
            .map_err(StoreError::etcd("connect"))?;
        Ok(Store { client })
    }

    /// The client, for transactions and leases.
    pub fn client(&self) -> Client {
        self.client.clone()
    }

    /// Every key under `prefix`, sorted by key, and the revision of the listing.
    pub async fn list(&self, prefix: &str) -> Result<(Vec<Kv>, i64), StoreError> {
        let resp = self
            .client()
            .get(prefix, Some(GetOptions::new().with_prefix()))
            .await
            .map_err(StoreError::etcd("list"))?;
        let revision = resp.header().map_or(0, |h| h.revision());
        Ok((resp.kvs().iter().map(kv).collect(), revision))
    }

    /// Reads one key.
    pub async fn get(&self, key: &str) -> Result<Option<Kv>, StoreError> {
        let resp = self
            .client()
            .get(key, None)
            .await
            .map_err(StoreError::etcd("get"))?;
        Ok(resp.kvs().first().map(kv))
    }

    /// Writes one key.
    pub async fn put(&self, key: &str, value: impl Into<Vec<u8>>) -> Result<(), StoreError> {
        self.client()
            .put(key, value, None)
            .await
            .map_err(StoreError::etcd("put"))?;
        Ok(())
    }

    /// Deletes one key.
    pub async fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.client()
            .delete(key, None)
            .await
            .map_err(StoreError::etcd("delete"))?;
        Ok(())
    }

    /// Writes `key` only if its `mod_revision` is still `expected` (0: only if it is absent),
    /// so that a concurrent change is never overwritten. The revision of the write, or `None`
    /// when the key had changed (nothing was written).
    pub async fn put_if_unchanged(
        &self,
        key: &str,
        value: impl Into<Vec<u8>>,
        expected: i64,
    ) -> Result<Option<i64>, StoreError> {
        let txn = Txn::new()
            .when([Compare::mod_revision(key, CompareOp::Equal, expected)])
            .and_then([TxnOp::put(key, value, None)]);
        let resp = self
            .client()
            .txn(txn)
            .await
            .map_err(StoreError::etcd("conditional put"))?;
        Ok(resp
            .succeeded()
            .then(|| resp.header().map_or(0, |h| h.revision())))
    }

    /// Deletes `key` only if `guard`'s `mod_revision` is still `expected` (0: only if `guard`
    /// is absent). False when `guard` had changed (nothing was deleted).
    pub async fn delete_if_unchanged(
        &self,
        key: &str,
        guard: &str,
        expected: i64,
    ) -> Result<bool, StoreError> {
        let txn = Txn::new()
            .when([Compare::mod_revision(guard, CompareOp::Equal, expected)])
            .and_then([TxnOp::delete(key, None)]);
        let resp = self
            .client()
            .txn(txn)
            .await
            .map_err(StoreError::etcd("conditional delete"))?;
        Ok(resp.succeeded())
    }

    /// The current store revision (a cheap liveness check too).
    pub async fn revision(&self) -> Result<i64, StoreError> {
        let resp = self
            .client()
            .get("/flagella/v1/", Some(GetOptions::new().with_count_only()))
            .await
            .map_err(StoreError::etcd("revision"))?;
        Ok(resp.header().map_or(0, |h| h.revision()))
    }

    /// Watches `prefix` from `start_revision` (inclusive).
    pub async fn watch(&self, prefix: &str, start_revision: i64) -> Result<Watch, StoreError> {
        let options = WatchOptions::new()
            .with_prefix()
            .with_start_revision(start_revision)
            .with_progress_notify();
        let stream = self
            .client()
            .watch(prefix, Some(options))
            .await
            .map_err(StoreError::etcd("watch"))?;
        Ok(Watch { stream })
    }
}

impl Watch {
    /// The next batch of events (skipping the creation acknowledgement).
    pub async fn next(&mut self) -> Result<WatchBatch, StoreError> {
        loop {
            let msg = self
                .stream
                .message()
                .await
                .map_err(StoreError::etcd("watch"))?
                .ok_or(StoreError::WatchClosed)?;
            if msg.compact_revision() > 0 {
                return Ok(WatchBatch::Compacted {
                    compact_revision: msg.compact_revision(),
                });
            }
            if msg.canceled() {
                return Err(StoreError::WatchCanceled {
                    reason: msg.cancel_reason().to_string(),
                });
            }
            let revision = msg.header().map_or(0, |h| h.revision());
            if msg.created() && msg.events().is_empty() {
                continue;
            }
            let events = msg
                .events()
                .iter()
                .filter_map(|e| {
                    let k = e.kv()?;
                    Some(match e.event_type() {
                        EventType::Put => Event::Put(kv(k)),
                        EventType::Delete => Event::Delete {
                            key: String::from_utf8_lossy(k.key()).into_owned(),
                            mod_revision: k.mod_revision(),
                        },
                    })
                })
                .collect();
            return Ok(WatchBatch::Events { events, revision });
        }
    }
}
