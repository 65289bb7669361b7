//! Numeric identities: reserved ones, endpoint (label-set) identities and CIDR identities.
//!
//! Ranges:
//! - 1..=255 reserved ([`Identity::HOST`], [`Identity::WORLD`], ...), always present;
//! - [`Identity::FIRST_CLUSTER_LOCAL`] (256) ..< [`FIRST_CIDR_IDENTITY`]: one per distinct pod
//!   identity label set (namespace labels folded in, see [`crate::labels`]);
//! - [`FIRST_CIDR_IDENTITY`] (2^24, Cilium's node-local scope) and up: one per prefix that a
//!   policy names (CIDRs and their `except` blocks). CIDR identities are node-local: the
//!   ipcache maps each prefix to its identity, so they never travel between nodes.
//!
//! Identities are reference counted (pods per label set, peer selectors per prefix) and
//! released at zero. Numbers are handed out in increasing order and never reused by one table,
//! so a stale policy-map entry can never grant access to a newcomer that got a recycled number.
//! (In the cluster, endpoint identities are allocated through etcd; this table is the offline
//! stand-in with the same ranges.)

use hashbrown::HashMap;

use dataplane::{Identity, Prefix};

use crate::labels::Labels;

/// First CIDR identity (Cilium's local-scope identities start at 2^24 as well).
pub const FIRST_CIDR_IDENTITY: u32 = 1 << 24;
/// One past the last CIDR identity.
const END_CIDR_IDENTITY: u32 = 1 << 25;

/// What an identity stands for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IdentityKind {
    /// One of the reserved identities (host, world, ...).
    Reserved,
    /// A cluster endpoint's identity labels.
    Endpoint(Labels),
    /// Addresses whose longest ipcache prefix is this one.
    Cidr(Prefix),
}

/// Why an identity could not be allocated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    #[error("the {range} identity range is exhausted; restart the compiler to renumber")]
    Exhausted { range: &'static str },
}

#[derive(Clone, Debug)]
struct Slot {
    kind: IdentityKind,
    refs: u32,
}

/// Allocates and names identities.
#[derive(Clone, Debug)]
pub struct IdentityTable {
    by_labels: HashMap<Labels, Identity>,
    by_prefix: HashMap<Prefix, Identity>,
    slots: HashMap<Identity, Slot>,
    next_endpoint: u32,
    next_cidr: u32,
}

impl Default for IdentityTable {
    fn default() -> Self {
        Self::new()
    }
}

/// The reserved identities every table knows.
pub const RESERVED: [Identity; 6] = [
    Identity::HOST,
    Identity::WORLD,
    Identity::UNMANAGED,
    Identity::HEALTH,
    Identity::INIT,
    Identity::REMOTE_NODE,
];

impl IdentityTable {
    pub fn new() -> Self {
        let slots = RESERVED
            .iter()
            .map(|id| {
                (
                    *id,
                    Slot {
                        kind: IdentityKind::Reserved,
                        refs: 1,
                    },
                )
            })
            .collect();
        IdentityTable {
            by_labels: HashMap::new(),
            by_prefix: HashMap::new(),
            slots,
            next_endpoint: Identity::FIRST_CLUSTER_LOCAL,
            next_cidr: FIRST_CIDR_IDENTITY,
        }
    }

    /// Takes a reference on the identity of `labels`; `true` when it was just created.
    pub fn acquire_labels(&mut self, labels: &Labels) -> Result<(Identity, bool), IdentityError> {
        if let Some(id) = self.by_labels.get(labels) {
            if let Some(slot) = self.slots.get_mut(id) {
                slot.refs += 1;
            }
            return Ok((*id, false));
        }
        if self.next_endpoint >= FIRST_CIDR_IDENTITY {
            return Err(IdentityError::Exhausted { range: "endpoint" });
        }
        let id = Identity(self.next_endpoint);
        self.next_endpoint += 1;
        self.by_labels.insert(labels.clone(), id);
        self.slots.insert(
            id,
            Slot {
                kind: IdentityKind::Endpoint(labels.clone()),
                refs: 1,
            },
        );
        Ok((id, true))
    }

    /// Takes a reference on the CIDR identity of `prefix`; `true` when it was just created.
    pub fn acquire_prefix(&mut self, prefix: Prefix) -> Result<(Identity, bool), IdentityError> {
        if let Some(id) = self.by_prefix.get(&prefix) {
            if let Some(slot) = self.slots.get_mut(id) {
                slot.refs += 1;
            }
            return Ok((*id, false));
        }
        if self.next_cidr >= END_CIDR_IDENTITY {
            return Err(IdentityError::Exhausted { range: "CIDR" });
        }
        let id = Identity(self.next_cidr);
        self.next_cidr += 1;
        self.by_prefix.insert(prefix, id);
        self.slots.insert(
            id,
            Slot {
                kind: IdentityKind::Cidr(prefix),
                refs: 1,
            },
        );
        Ok((id, true))
    }

    /// Drops a reference; returns the identity and whether it was released (refcount zero).
    /// Reserved identities are never released.
    pub fn release(&mut self, id: Identity) -> Option<bool> {
        let slot = self.slots.get_mut(&id)?;
        if slot.kind == IdentityKind::Reserved {
            return Some(false);
        }
        slot.refs = slot.refs.saturating_sub(1);
        if slot.refs > 0 {
            return Some(false);
        }
        if let Some(slot) = self.slots.remove(&id) {
            match slot.kind {
                IdentityKind::Endpoint(l) => {
                    self.by_labels.remove(&l);
                }
                IdentityKind::Cidr(p) => {
                    self.by_prefix.remove(&p);
                }
                IdentityKind::Reserved => {}
            }
        }
        Some(true)
    }

    pub fn kind(&self, id: Identity) -> Option<&IdentityKind> {
        self.slots.get(&id).map(|s| &s.kind)
    }

    pub fn by_labels(&self, labels: &Labels) -> Option<Identity> {
        self.by_labels.get(labels).copied()
    }

    pub fn by_prefix(&self, prefix: &Prefix) -> Option<Identity> {
        self.by_prefix.get(prefix).copied()
    }

    /// Every live identity, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (Identity, &IdentityKind)> {
        self.slots.iter().map(|(id, s)| (*id, &s.kind))
    }

    /// Every CIDR identity's prefix.
    pub fn prefixes(&self) -> impl Iterator<Item = (Prefix, Identity)> + '_ {
        self.by_prefix.iter().map(|(p, id)| (*p, *id))
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// A short description for traces: `reserved:world`, `cidr:10.0.0.0/8`, or the labels
    /// (without the folded-in namespace labels).
    pub fn describe(&self, id: Identity) -> String {
        if id == Identity::ANY {
            return "any".into();
        }
        match self.kind(id) {
            Some(IdentityKind::Reserved) => {
                format!("reserved:{}", id.reserved_name().unwrap_or("unknown"))
            }
            Some(IdentityKind::Cidr(p)) => format!("cidr:{p}"),
            // The folded-in namespace labels are implied by the namespace: leave them out.
            Some(IdentityKind::Endpoint(l)) => l
                .iter()
                .filter(|(k, _)| !k.starts_with(crate::labels::NAMESPACE_LABELS_PREFIX))
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(","),
            None => "unknown".into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(v: &str) -> Labels {
        [("app", v)].into_iter().collect()
    }

    #[test]
    fn same_labels_same_identity_refcounted() {
        let mut t = IdentityTable::new();
        let (a, created) = t.acquire_labels(&labels("a")).unwrap();
        assert!(created);
        assert_eq!(a, Identity(256));
        let (a2, created) = t.acquire_labels(&labels("a")).unwrap();
        assert_eq!((a2, created), (a, false));
        let (b, _) = t.acquire_labels(&labels("b")).unwrap();
        assert_eq!(b, Identity(257));
        assert_eq!(t.release(a), Some(false));
        assert_eq!(t.release(a), Some(true));
        assert_eq!(t.by_labels(&labels("a")), None);
        // Numbers are not reused.
        let (a3, _) = t.acquire_labels(&labels("a")).unwrap();
        assert_eq!(a3, Identity(258));
    }

    #[test]
    fn cidr_identities_live_in_their_own_range() {
        let mut t = IdentityTable::new();
        let p: Prefix = "10.0.0.0/8".parse().unwrap();
        let (id, _) = t.acquire_prefix(p).unwrap();
        assert_eq!(id.0, FIRST_CIDR_IDENTITY);
        assert_eq!(t.describe(id), "cidr:10.0.0.0/8");
        assert_eq!(t.kind(id), Some(&IdentityKind::Cidr(p)));
    }

    #[test]
    fn reserved_identities_are_never_released() {
        let mut t = IdentityTable::new();
        assert_eq!(t.release(Identity::WORLD), Some(false));
        assert_eq!(t.describe(Identity::WORLD), "reserved:world");
        assert_eq!(t.len(), 6);
    }
}
