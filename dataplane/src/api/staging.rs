//! Staged batches: a change set larger than one request line travels as parts of one
//! transaction (`batch` with `txn`, `part`, `more`: [`StagedPart`]) and is applied as one batch
//! when its last part arrives (issue 14, finding 4: a policy of 10k identities x 22 ports does
//! not fit the 16 MiB line, and its loss left the pod unenforced).
//!
//! Contract:
//! - parts are kept here, on the control thread, unparsed into nothing but their changes, and
//!   never published: the tables change only when the last part commits, all or none;
//! - a transaction is keyed by (client, `txn`): two clients never see each other's parts;
//! - part 0 begins a transaction (replacing an unfinished one of the same key); any other part
//!   must be the next in order, or the transaction is discarded and the part refused: a
//!   transaction with a lost or refused part can never be committed (its later parts, the last
//!   one included, are refused as "no such transaction");
//! - an abandoned transaction is freed: when its client disconnects ([`Staging::abandon`]), or
//!   [`STAGED_TIMEOUT`] after its last part ([`Staging::expire`]);
//! - memory is bounded: at most [`MAX_STAGED_TXNS`] open transactions and [`MAX_STAGED_BYTES`]
//!   bytes of request lines staged in all of them together (a part beyond either is refused and
//!   its transaction discarded).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::protocol::{Change, RequestError, StagedPart};

/// Most bytes of request lines staged in all open transactions together.
pub const MAX_STAGED_BYTES: usize = 256 << 20;
/// Most transactions open at once.
pub const MAX_STAGED_TXNS: usize = 8;
/// A transaction whose next part has not come for this long is discarded.
pub const STAGED_TIMEOUT: Duration = Duration::from_secs(60);

/// Who sent a part: the server's connection number (tests use 0).
pub type ClientId = u64;

/// One open transaction.
#[derive(Debug)]
struct Open {
    next_part: u32,
    changes: Vec<Change>,
    bytes: usize,
    touched: Instant,
}

/// The open transactions of every client.
#[derive(Debug, Default)]
pub struct Staging {
    open: HashMap<(ClientId, u64), Open>,
    bytes: usize,
}

impl Staging {
    /// Adds `part` (whose request line was `line_len` bytes) to its transaction. Returns the
    /// whole transaction's changes, in order, when `part` is the last one (the transaction is
    /// then closed), `None` while more parts are due.
    pub fn stage(
        &mut self,
        client: ClientId,
        part: StagedPart,
        line_len: usize,
        now: Instant,
    ) -> Result<Option<Vec<Change>>, RequestError> {
        let key = (client, part.txn);
        if part.part == 0 {
            self.discard(key);
            if self.open.len() >= MAX_STAGED_TXNS {
                return Err(RequestError::at(
                    "txn",
                    format!(
                        "{MAX_STAGED_TXNS} staged transactions are open already: finish or \
                         abandon one (close its connection), then resend from part 0"
                    ),
                ));
            }
            self.open.insert(
                key,
                Open {
                    next_part: 0,
                    changes: Vec::new(),
                    bytes: 0,
                    touched: now,
                },
            );
        }
        let Some(expected) = self.open.get(&key).map(|o| o.next_part) else {
            return Err(RequestError::at(
                "part",
                format!(
                    "no staged transaction {} is open on this connection (it was never begun, \
                     a part was refused, or it timed out): resend it from part 0",
                    part.txn
                ),
            ));
        };
        if part.part != expected {
            self.discard(key);
            return Err(RequestError::at(
                "part",
                format!(
                    "part {} of transaction {} arrived where part {expected} was due: the \
                     transaction is discarded; resend it from part 0",
                    part.part, part.txn
                ),
            ));
        }
        if self.bytes + line_len > MAX_STAGED_BYTES {
            self.discard(key);
            return Err(RequestError::whole(format!(
                "staged transactions would hold more than {} MiB: the transaction is \
                 discarded; resend it once other transactions are done",
                MAX_STAGED_BYTES >> 20
            )));
        }
        let Some(open) = self.open.get_mut(&key) else {
            return Ok(None); // inserted or found above
        };
        open.next_part = open.next_part.saturating_add(1);
        open.changes.extend(part.changes);
        open.bytes += line_len;
        open.touched = now;
        self.bytes += line_len;
        if part.more {
            return Ok(None);
        }
        Ok(self.remove(key).map(|o| o.changes))
    }

    /// Discards every transaction of `client` (it disconnected).
    pub fn abandon(&mut self, client: ClientId) {
        let keys: Vec<_> = self
            .open
            .keys()
            .filter(|k| k.0 == client)
            .copied()
            .collect();
        for key in keys {
            self.discard(key);
        }
    }

    /// Discards the transactions untouched for [`STAGED_TIMEOUT`]; returns how many.
    pub fn expire(&mut self, now: Instant) -> usize {
        let stale: Vec<_> = self
            .open
            .iter()
            .filter(|(_, o)| now.duration_since(o.touched) >= STAGED_TIMEOUT)
            .map(|(k, _)| *k)
            .collect();
        for key in &stale {
            self.discard(*key);
        }
        stale.len()
    }

    /// Open transactions.
    pub fn open(&self) -> usize {
        self.open.len()
    }

    /// Bytes of request lines staged.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    fn discard(&mut self, key: (ClientId, u64)) {
        let _ = self.remove(key);
    }

    fn remove(&mut self, key: (ClientId, u64)) -> Option<Open> {
        let open = self.open.remove(&key)?;
        self.bytes = self.bytes.saturating_sub(open.bytes);
        if self.open.is_empty() {
            self.open.shrink_to_fit();
        }
        Some(open)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test
mod tests {
    use super::*;
    use crate::api::protocol::EndpointRef;

    fn part(txn: u64, part: u32, more: bool, ids: &[u32]) -> StagedPart {
        StagedPart {
            txn,
            part,
            more,
            changes: ids
                .iter()
                .map(|id| Change::EndpointDelete(EndpointRef { id: *id }))
                .collect(),
        }
    }

    #[test]
    fn parts_in_order_commit_all_changes_once() {
        let (mut s, now) = (Staging::default(), Instant::now());
        assert_eq!(s.stage(1, part(7, 0, true, &[1, 2]), 10, now), Ok(None));
        assert_eq!(s.stage(1, part(7, 1, true, &[3]), 10, now), Ok(None));
        assert_eq!((s.open(), s.bytes()), (1, 20));
        let all = s
            .stage(1, part(7, 2, false, &[4]), 10, now)
            .unwrap()
            .unwrap();
        assert_eq!(all, part(0, 0, false, &[1, 2, 3, 4]).changes);
        assert_eq!((s.open(), s.bytes()), (0, 0));
    }

    /// A lost part discards the transaction: its last part can never commit what is left.
    #[test]
    fn a_part_out_of_order_discards_the_transaction() {
        let (mut s, now) = (Staging::default(), Instant::now());
        s.stage(1, part(7, 0, true, &[1]), 10, now).unwrap();
        let e = s.stage(1, part(7, 2, true, &[3]), 10, now).unwrap_err();
        assert!(e.message.contains("part 0"), "{}", e.message);
        assert_eq!((s.open(), s.bytes()), (0, 0));
        let e = s.stage(1, part(7, 3, false, &[4]), 10, now).unwrap_err();
        assert!(e.message.contains("resend it from part 0"), "{}", e.message);
        // Never begun: refused too.
        assert!(s.stage(1, part(8, 1, false, &[4]), 10, now).is_err());
    }

    #[test]
    fn clients_do_not_share_transactions() {
        let (mut s, now) = (Staging::default(), Instant::now());
        s.stage(1, part(7, 0, true, &[1]), 10, now).unwrap();
        assert!(s.stage(2, part(7, 1, false, &[2]), 10, now).is_err());
        assert_eq!(s.open(), 1);
        s.stage(2, part(7, 0, true, &[2]), 10, now).unwrap();
        s.abandon(1);
        assert_eq!((s.open(), s.bytes()), (1, 10));
        let all = s.stage(2, part(7, 1, false, &[]), 5, now).unwrap().unwrap();
        assert_eq!(all.len(), 1);
    }

    #[test]
    fn abandoned_transactions_expire() {
        let (mut s, now) = (Staging::default(), Instant::now());
        s.stage(1, part(7, 0, true, &[1]), 10, now).unwrap();
        s.stage(1, part(8, 0, true, &[1]), 10, now + STAGED_TIMEOUT)
            .unwrap();
        assert_eq!(s.expire(now + STAGED_TIMEOUT), 1);
        assert_eq!((s.open(), s.bytes()), (1, 10));
        assert!(s.stage(1, part(7, 1, false, &[]), 1, now).is_err());
    }

    #[test]
    fn memory_and_transactions_are_bounded() {
        let (mut s, now) = (Staging::default(), Instant::now());
        for txn in 0..MAX_STAGED_TXNS as u64 {
            s.stage(1, part(txn, 0, true, &[]), 1, now).unwrap();
        }
        assert!(s.stage(1, part(99, 0, true, &[]), 1, now).is_err());
        // Restarting an open transaction is no new one.
        s.stage(1, part(0, 0, true, &[]), 1, now).unwrap();
        let e = s.stage(1, part(1, 1, true, &[]), MAX_STAGED_BYTES, now);
        assert!(e.is_err());
        assert_eq!(
            s.open(),
            MAX_STAGED_TXNS - 1,
            "the refused one is discarded"
        );
    }
}
