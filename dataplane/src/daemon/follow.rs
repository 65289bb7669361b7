//! Following the published tables from a thread that mirrors them into the kernel (the uplink's
//! XDP maps, the host interface's addresses and routes): when to reconcile again.
//!
//! Such a thread polls the tables every few milliseconds. It reconciles when the parts of the
//! snapshot it mirrors were replaced (noticed by pointer: every publication that changes a table
//! swaps that table's `Arc`, one that does not shares it), or when a retry of failed kernel
//! operations is due: after [`RETRY_FIRST`], doubling up to [`RETRY_MAX`], so a kernel that keeps
//! refusing is neither hammered nor forgotten.

use std::time::{Duration, Instant};

use crate::tables::Tables;

/// The first retry after a reconciliation with failures.
pub(crate) const RETRY_FIRST: Duration = Duration::from_secs(1);
/// The longest wait between retries.
pub(crate) const RETRY_MAX: Duration = Duration::from_secs(60);

/// The parts of a snapshot a follower mirrors, held (as `Arc` clones, so an address cannot be
/// reused while held) to notice their replacement.
pub(crate) trait Watched: Sized {
    /// The watched parts of `tables`.
    fn of(tables: &Tables) -> Self;
    /// True when `tables` holds another version of any watched part.
    fn differs(&self, tables: &Tables) -> bool;
}

/// When a follower thread must reconcile: on a change of what it watches, or when a retry is due.
pub(crate) struct Follower<W> {
    seen: Option<W>,
    retry: Option<(Instant, Duration)>,
}

impl<W: Watched> Follower<W> {
    pub(crate) fn new() -> Self {
        Follower {
            seen: None,
            retry: None,
        }
    }

    /// True when the follower must reconcile against `tables` now; records `tables` as seen.
    pub(crate) fn due(&mut self, tables: &Tables) -> bool {
        let changed = self.seen.as_ref().is_none_or(|s| s.differs(tables));
        let retry_due = self.retry.is_some_and(|(at, _)| Instant::now() >= at);
        if changed || retry_due {
            self.seen = Some(W::of(tables));
        }
        changed || retry_due
    }

    /// Records a reconciliation's outcome: any failure schedules a retry with backoff, success
    /// cancels the pending one.
    pub(crate) fn reconciled(&mut self, failed: bool) {
        self.retry = if failed {
            let wait = self
                .retry
                .map_or(RETRY_FIRST, |(_, w)| (w * 2).min(RETRY_MAX));
            Some((Instant::now() + wait, wait))
        } else {
            None
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    use crate::tables::nodes::Nodes;
    use crate::tables::services::Services;
    use crate::tables::LocalNode;

    fn tables() -> Tables {
        Tables::empty(LocalNode::default(), Services::new(251, 1).unwrap())
    }

    struct SeenNodes(Arc<Nodes>);

    impl Watched for SeenNodes {
        fn of(tables: &Tables) -> Self {
            SeenNodes(Arc::clone(&tables.nodes))
        }
        fn differs(&self, tables: &Tables) -> bool {
            !Arc::ptr_eq(&self.0, &tables.nodes)
        }
    }

    #[test]
    fn reconciles_first_then_only_on_a_change_of_what_it_watches() {
        let mut follower = Follower::<SeenNodes>::new();
        let tables = tables();
        assert!(follower.due(&tables));
        follower.reconciled(false);
        assert!(!follower.due(&tables));
        let mut other = tables.clone();
        other.endpoints = Arc::new(Default::default());
        assert!(!follower.due(&other), "endpoints are not watched");
        other.nodes = Arc::new(Nodes::default());
        assert!(follower.due(&other));
        assert!(!follower.due(&other));
    }

    #[test]
    fn failures_back_off_from_the_first_retry_to_the_longest() {
        let mut follower = Follower::<SeenNodes>::new();
        let tables = tables();
        assert!(follower.due(&tables));
        follower.reconciled(true);
        assert_eq!(follower.retry.map(|(_, w)| w), Some(RETRY_FIRST));
        assert!(!follower.due(&tables), "the retry is not due yet");
        for _ in 0..10 {
            follower.reconciled(true);
        }
        assert_eq!(follower.retry.map(|(_, w)| w), Some(RETRY_MAX));
        follower.reconciled(false);
        assert!(follower.retry.is_none());
    }
}
