//! A thin layer over the etcd v3 client: connect, list a prefix at one revision, watch a prefix
//! from a revision, and tell compaction apart from other watch failures.
//!
//! Contract of list-then-watch: [`Store::list`] returns every key under the prefix *and* the
//! store revision `R` the listing was read at; [`Store::watch`] from `R + 1` then delivers every
//! change after the listing, none missed and none twice (etcd guarantees a watch replays history
//! from its start revision). If `R + 1` was compacted away meanwhile, the watch reports
//! [`WatchBatch::Compacted`]: the caller lists again and reconciles.
//!
//! Size: nothing here reads a prefix in one reply. A listing is paged ([`LIST_PAGE_KEYS`] keys
//! a range request, each page continuing after the previous page's last key, every page read at
//! the first page's revision, so the pages together are one consistent snapshot); a page too
//! large to receive is asked again with half the keys. A watch asks etcd to fragment replies
//! larger than its request limit (a catch-up after a pause can hold thousands of revisions).
//! Replies are received up to [`MAX_REPLY_BYTES`], far above the largest value etcd accepts
//! (`--max-request-bytes`, 1.5 MiB by default), so any one value etcd stored can be read.

use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, KvClient, Txn, TxnOp,
    WatchClient, WatchOptions, WatchStream,
};

/// Keys asked for in one page of a listing (fewer when a page is too large to receive).
pub const LIST_PAGE_KEYS: i64 = 500;

/// The largest reply this client accepts (the gRPC default is 4 MiB, which one watch catch-up
/// or a listing page of three policies of 1.4 MiB already exceeds). etcd refuses to store a
/// request larger than its `--max-request-bytes` (1.5 MiB by default; the etcd docs advise at
/// most 10 MiB), so one value always fits, with room for a page of many.
pub const MAX_REPLY_BYTES: usize = 64 << 20;

/// How many times a listing starts over when its revision is compacted while it pages.
const LIST_ATTEMPTS: usize = 5;

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
    #[error(
        "etcd listing of {prefix}: one key's reply is larger than {MAX_REPLY_BYTES} bytes, \
         this client's limit; find the oversized value under {prefix} and delete or shrink it"
    )]
    ValueTooLarge { prefix: String },
    #[error(
        "etcd listing of {prefix}: its revision was compacted {LIST_ATTEMPTS} times while it \
         was paged; etcd compacts too often for this listing, raise its compaction retention"
    )]
    ListCompacted { prefix: String },
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
    /// The KV and watch clients with the receive limit raised to [`MAX_REPLY_BYTES`].
    kv: KvClient,
    watch: WatchClient,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Store")
    }
}

/// A watch on a prefix.
pub struct Watch {
    /// Batches read by a task of their own, so that the caller can take every batch already
    /// received at once ([`Watch::ready_events`]) without cancelling a read halfway.
    batches: tokio::sync::mpsc::Receiver<Result<WatchBatch, StoreError>>,
    reader: tokio::task::JoinHandle<()>,
    /// A batch taken by [`Watch::ready_events`] that was not events: [`Watch::next`]'s next.
    peeked: Option<Result<WatchBatch, StoreError>>,
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// Batches read ahead of the caller (each up to etcd's request limit, as fragments are).
const WATCH_READ_AHEAD: usize = 16;

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
        let kv = client
            .kv_client()
            .max_decoding_message_size(MAX_REPLY_BYTES);
        let watch = client
            .watch_client()
            .max_decoding_message_size(MAX_REPLY_BYTES);
        Ok(Store { client, kv, watch })
    }

    /// The client, for transactions and leases.
    pub fn client(&self) -> Client {
        self.client.clone()
    }

    /// Every key under `prefix`, sorted by key, and the revision of the listing, read in pages
    /// (see the module doc). A compaction of that revision while paging starts the listing
    /// over at a newer revision.
    pub async fn list(&self, prefix: &str) -> Result<(Vec<Kv>, i64), StoreError> {
        for _ in 0..LIST_ATTEMPTS {
            match self.list_paged(prefix).await {
                Err(StoreError::Etcd { source, .. }) if is_compacted(&source) => continue,
                other => return other,
            }
        }
        Err(StoreError::ListCompacted {
            prefix: prefix.to_string(),
        })
    }

    /// One paged listing attempt: the first page fixes the revision, the others are read at it.
    async fn list_paged(&self, prefix: &str) -> Result<(Vec<Kv>, i64), StoreError> {
        let end = prefix_end(prefix.as_bytes());
        let mut out = Vec::new();
        let mut from = prefix.as_bytes().to_vec();
        let mut revision = 0;
        let mut page = LIST_PAGE_KEYS;
        loop {
            let mut options = GetOptions::new().with_range(end.clone()).with_limit(page);
            if revision > 0 {
                options = options.with_revision(revision);
            }
            let resp = match self.kv.clone().get(from.clone(), Some(options)).await {
                Ok(resp) => resp,
                Err(e) if is_too_large(&e) && page > 1 => {
                    page = (page / 2).max(1);
                    continue;
                }
                Err(e) if is_too_large(&e) => {
                    return Err(StoreError::ValueTooLarge {
                        prefix: prefix.to_string(),
                    })
                }
                Err(source) => return Err(StoreError::Etcd { op: "list", source }),
            };
            if revision == 0 {
                revision = resp.header().map_or(0, |h| h.revision());
            }
            out.extend(resp.kvs().iter().map(kv));
            match resp.kvs().last() {
                Some(last) if resp.more() => from = key_after(last.key()),
                _ => return Ok((out, revision)),
            }
            // A page that had to shrink grows back, so one large value does not slow the rest.
            page = (page * 2).min(LIST_PAGE_KEYS);
        }
    }

    /// Reads one key (any size etcd stores).
    pub async fn get(&self, key: &str) -> Result<Option<Kv>, StoreError> {
        let resp = self
            .kv
            .clone()
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
        // Fragmented: a reply above etcd's request limit comes in pieces, each a whole number
        // of events (each piece is handed on as its own batch).
        let options = WatchOptions::new()
            .with_prefix()
            .with_start_revision(start_revision)
            .with_progress_notify()
            .with_fragment();
        let stream = self
            .watch
            .clone()
            .watch(prefix, Some(options))
            .await
            .map_err(StoreError::etcd("watch"))?;
        Ok(Watch::spawn(stream))
    }
}

/// The first key after every key that starts with `prefix` (etcd's range end for a prefix);
/// `\0` (to the end of the keyspace) when `prefix` is all `0xff` bytes.
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// The smallest key after `key`: where the next page starts.
fn key_after(key: &[u8]) -> Vec<u8> {
    let mut next = key.to_vec();
    next.push(0);
    next
}

/// gRPC's OUT_OF_RANGE: both "reply too large to receive" and etcd's "compacted".
const GRPC_OUT_OF_RANGE: i32 = 11;

/// True for an OUT_OF_RANGE status whose message says `what`.
fn out_of_range(e: &etcd_client::Error, what: &str) -> bool {
    matches!(e, etcd_client::Error::GRpcStatus(s)
        if i32::from(s.code()) == GRPC_OUT_OF_RANGE && s.message().contains(what))
}

/// A reply this client refused to receive (tonic: "decoded message length too large").
fn is_too_large(e: &etcd_client::Error) -> bool {
    out_of_range(e, "too large")
}

/// etcd's "required revision has been compacted".
fn is_compacted(e: &etcd_client::Error) -> bool {
    out_of_range(e, "compacted")
}

impl Watch {
    fn spawn(stream: WatchStream) -> Watch {
        let (tx, batches) = tokio::sync::mpsc::channel(WATCH_READ_AHEAD);
        let reader = tokio::spawn(async move {
            let mut stream = stream;
            loop {
                let batch = read_batch(&mut stream).await;
                let end = batch.is_err();
                if tx.send(batch).await.is_err() || end {
                    return;
                }
            }
        });
        Watch {
            batches,
            reader,
            peeked: None,
        }
    }

    /// The next batch of events (skipping the creation acknowledgement).
    pub async fn next(&mut self) -> Result<WatchBatch, StoreError> {
        if let Some(batch) = self.peeked.take() {
            return batch;
        }
        self.batches
            .recv()
            .await
            .unwrap_or(Err(StoreError::WatchClosed))
    }

    /// The events of the next batch if it has already arrived (`None` otherwise, or when the
    /// next is not events: [`Watch::next`] returns it). A caller catching up after a pause
    /// applies many batches at once instead of converging after each.
    pub fn ready_events(&mut self) -> Option<(Vec<Event>, i64)> {
        if self.peeked.is_some() {
            return None;
        }
        match self.batches.try_recv() {
            Ok(Ok(WatchBatch::Events { events, revision })) => Some((events, revision)),
            Ok(other) => {
                self.peeked = Some(other);
                None
            }
            Err(_) => None,
        }
    }
}

/// Reads the next batch of events from `stream` (skipping the creation acknowledgement).
async fn read_batch(stream: &mut WatchStream) -> Result<WatchBatch, StoreError> {
    loop {
        let msg = stream
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_bounds() {
        assert_eq!(prefix_end(b"/flagella/v1/"), b"/flagella/v10".to_vec());
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
        assert_eq!(prefix_end(b"\xff\xff"), vec![0]);
        assert_eq!(key_after(b"/k"), b"/k\0".to_vec());
        // The next page starts after the last key and before any key that extends it.
        assert!(key_after(b"/k").as_slice() > b"/k".as_slice());
        assert!(key_after(b"/k").as_slice() < b"/k\x01".as_slice());
    }
}
