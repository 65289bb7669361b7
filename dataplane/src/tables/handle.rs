//! The published [`Tables`]: one read-copy-update handle shared by the workers, which read a
//! snapshot per batch, and the control path (the control socket, the next-hop resolver), which
//! writes.
//!
//! A [`TablesHandle`] holds the current snapshot in an [`ArcSwap`]. The contract:
//! - **Workers** call [`TablesHandle::load`] once per batch and use that guard for the whole
//!   batch. A load is a few atomic operations: no lock, no allocation, and it never waits for
//!   the control thread. A batch therefore sees exactly one snapshot, old or new, never a mix.
//! - **Writers** go through [`TablesHandle::update`]: it takes a writer mutex (workers never
//!   touch it), clones the current `Tables` (one `Arc` clone per table), lets the caller change
//!   the clone — `Arc::make_mut` copies only the tables the request touches — and stores the
//!   result only if the caller returned `Ok`. So one request is applied atomically: either every
//!   change of it is visible to the next batch, or (on error) none is and the last good state
//!   stays in force. Writers are serialized, so no update is lost to a concurrent one.
//! - An old snapshot lives as long as some batch still holds its guard; it is freed by the last
//!   holder, on whichever thread that is.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use arc_swap::{ArcSwap, Guard};

use super::Tables;

/// The published [`Tables`]: cheap to clone, shared by the workers and the control thread.
#[derive(Clone, Debug)]
pub struct TablesHandle {
    current: Arc<ArcSwap<Tables>>,
    /// Serializes writers (read-modify-write of the snapshot). Never taken by workers.
    writer: Arc<Mutex<()>>,
}

impl TablesHandle {
    /// Publishes `initial` as the first snapshot.
    pub fn new(initial: Tables) -> Self {
        TablesHandle {
            current: Arc::new(ArcSwap::from_pointee(initial)),
            writer: Arc::new(Mutex::new(())),
        }
    }

    /// The current snapshot, for one batch. Lock-free; hold it no longer than a batch, or the
    /// old tables stay alive.
    #[inline]
    pub fn load(&self) -> Guard<Arc<Tables>> {
        self.current.load()
    }

    /// The current snapshot as an owned `Arc` (control path, tests).
    pub fn snapshot(&self) -> Arc<Tables> {
        self.current.load_full()
    }

    /// Applies `change` to a copy of the current tables and publishes the copy if `change`
    /// returns `Ok`; on `Err` nothing is published. Writers are serialized.
    pub fn update<R, E>(&self, change: impl FnOnce(&mut Tables) -> Result<R, E>) -> Result<R, E> {
        let _writer = lock(&self.writer);
        let mut next = Tables::clone(&self.current.load());
        let result = change(&mut next)?;
        self.current.store(Arc::new(next));
        Ok(result)
    }

    /// Replaces the snapshot wholesale (startup, tests).
    pub fn store(&self, tables: Tables) {
        let _writer = lock(&self.writer);
        self.current.store(Arc::new(tables));
    }
}

/// Locks the writer mutex, recovering from poisoning: it guards no data, only the order of
/// writers.
fn lock(m: &Mutex<()>) -> MutexGuard<'_, ()> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tables::endpoints::{EndpointId, EndpointSpec};
    use crate::tables::services::Services;
    use crate::tables::LocalNode;
    use crate::types::{Identity, MacAddr};

    fn empty() -> Tables {
        Tables::empty(LocalNode::default(), Services::new(251, 1).unwrap())
    }

    fn spec(id: u32) -> EndpointSpec {
        EndpointSpec {
            id: EndpointId(id),
            ifindex: 10 + id,
            mac: MacAddr([2, 0, 0, 0, 0, id as u8]),
            ipv4: Some(std::net::Ipv4Addr::new(10, 0, 0, id as u8)),
            ipv6: None,
            identity: Identity(1000 + id),
        }
    }

    #[test]
    fn reader_keeps_its_snapshot_while_a_new_one_is_stored() {
        let handle = TablesHandle::new(empty());
        let held = handle.load();
        handle
            .update(|t| std::sync::Arc::make_mut(&mut t.endpoints).upsert(spec(1)))
            .unwrap();
        assert_eq!(held.endpoints.len(), 0, "the old snapshot must not change");
        assert_eq!(handle.load().endpoints.len(), 1);
        // Untouched tables are shared, not copied.
        assert!(Arc::ptr_eq(&held.ipcache, &handle.load().ipcache));
        assert!(!Arc::ptr_eq(&held.endpoints, &handle.load().endpoints));
    }

    #[test]
    fn failed_update_publishes_nothing() {
        let handle = TablesHandle::new(empty());
        let before = handle.snapshot();
        let r: Result<(), &str> = handle.update(|t| {
            std::sync::Arc::make_mut(&mut t.endpoints)
                .upsert(spec(1))
                .unwrap();
            Err("second half failed")
        });
        assert!(r.is_err());
        assert!(Arc::ptr_eq(&before, &handle.snapshot()));
        assert_eq!(handle.load().endpoints.len(), 0);
    }
}
