//! The selector cache: for every peer or subject selector in use, the sorted set of identities
//! it selects, kept up to date as identities come and go.
//!
//! Contract:
//! - [`SelectorCache::add_user`] / [`SelectorCache::remove_user`] reference-count selectors; a
//!   selector's set is computed once when first used and then only updated incrementally by
//!   [`SelectorCache::identity_changed`], which re-tests one identity against every cached
//!   selector and returns the selectors whose set changed (so the compiler recompiles only the
//!   endpoints whose rules use them).
//! - [`selects`] is the single definition of what a peer selects (see
//!   `docs/policy-semantics.md`):
//!   - endpoint selectors: endpoint identities whose labels match (never reserved or CIDR);
//!   - CIDR peers: CIDR identities whose prefix lies inside `cidr` and inside no `except`;
//!     `reserved:world` when `cidr` is a /0; and, for Kubernetes `ipBlock`s only, endpoint
//!     identities and `remote-node` when *every* address carrying that identity is inside the
//!     block (an identity cannot be split by address);
//!   - entities: see [`crate::model::Entity`]; `all` selects the wildcard `Identity::ANY`.

use std::collections::BTreeSet;
use std::net::IpAddr;

use hashbrown::HashMap;

use dataplane::Identity;

use crate::identity::{IdentityKind, IdentityTable};
use crate::model::{CidrPeer, Entity, Peer};

/// What [`selects`] needs besides the identity itself.
#[derive(Debug, Clone, Copy)]
pub struct SelectionContext<'a> {
    pub identities: &'a IdentityTable,
    /// The addresses carrying each endpoint identity (pod IPs) and `remote-node` (node IPs).
    pub addresses: &'a HashMap<Identity, Vec<IpAddr>>,
}

/// True when `peer` selects identity `id` (of kind `kind`).
pub fn selects(peer: &Peer, id: Identity, kind: &IdentityKind, cx: SelectionContext<'_>) -> bool {
    match peer {
        Peer::Endpoints(sel) => matches!(kind, IdentityKind::Endpoint(l) if sel.matches(l)),
        Peer::Cidr(c) => cidr_selects(c, id, kind, cx),
        Peer::Entity(e) => entity_selects(*e, id, kind),
    }
}

fn cidr_selects(c: &CidrPeer, id: Identity, kind: &IdentityKind, cx: SelectionContext<'_>) -> bool {
    match kind {
        IdentityKind::Cidr(p) => c.cidr.covers(p) && !c.except.iter().any(|e| e.covers(p)),
        IdentityKind::Reserved if id == Identity::WORLD => c.cidr.is_default(),
        IdentityKind::Endpoint(_) | IdentityKind::Reserved
            if c.match_pods && (id == Identity::REMOTE_NODE || !kind_is_reserved(kind)) =>
        {
            let addrs = cx.addresses.get(&id).map_or(&[][..], Vec::as_slice);
            !addrs.is_empty()
                && addrs
                    .iter()
                    .all(|a| c.cidr.contains(*a) && !c.except.iter().any(|e| e.contains(*a)))
        }
        _ => false,
    }
}

fn kind_is_reserved(kind: &IdentityKind) -> bool {
    matches!(kind, IdentityKind::Reserved)
}

fn entity_selects(e: Entity, id: Identity, kind: &IdentityKind) -> bool {
    match e {
        Entity::World => id == Identity::WORLD || matches!(kind, IdentityKind::Cidr(_)),
        Entity::Cluster => {
            matches!(kind, IdentityKind::Endpoint(_))
                || (matches!(kind, IdentityKind::Reserved) && id != Identity::WORLD)
        }
        Entity::Host => id == Identity::HOST,
        Entity::RemoteNode => id == Identity::REMOTE_NODE,
        Entity::Health => id == Identity::HEALTH,
        Entity::Init => id == Identity::INIT,
        Entity::Unmanaged => id == Identity::UNMANAGED,
        // The wildcard is not an identity of the table; see `SelectorCache::add_user`.
        Entity::All => false,
    }
}

#[derive(Clone, Debug)]
struct Entry {
    users: u32,
    selected: BTreeSet<Identity>,
}

/// Selector -> selected identities.
#[derive(Clone, Debug, Default)]
pub struct SelectorCache {
    entries: HashMap<Peer, Entry>,
}

static EMPTY: BTreeSet<Identity> = BTreeSet::new();

impl SelectorCache {
    pub fn new() -> Self {
        Self::default()
    }

    /// Takes a reference on `peer`, computing its selection when it is new.
    pub fn add_user(&mut self, peer: &Peer, cx: SelectionContext<'_>) {
        if let Some(e) = self.entries.get_mut(peer) {
            e.users += 1;
            return;
        }
        let selected = if *peer == Peer::Entity(Entity::All) {
            [Identity::ANY].into_iter().collect()
        } else {
            cx.identities
                .iter()
                .filter(|(id, kind)| selects(peer, *id, kind, cx))
                .map(|(id, _)| id)
                .collect()
        };
        self.entries
            .insert(peer.clone(), Entry { users: 1, selected });
    }

    /// Drops a reference on `peer`, forgetting it at zero.
    pub fn remove_user(&mut self, peer: &Peer) {
        if let Some(e) = self.entries.get_mut(peer) {
            e.users = e.users.saturating_sub(1);
            if e.users == 0 {
                self.entries.remove(peer);
            }
        }
    }

    /// The identities `peer` selects (empty when it is not cached).
    pub fn selection(&self, peer: &Peer) -> &BTreeSet<Identity> {
        self.entries.get(peer).map_or(&EMPTY, |e| &e.selected)
    }

    /// Re-tests identity `id` (just created, changed or, when the table no longer has it,
    /// removed) against every selector; returns the selectors whose selection changed.
    pub fn identity_changed(&mut self, id: Identity, cx: SelectionContext<'_>) -> Vec<Peer> {
        let kind = cx.identities.kind(id);
        let mut changed = Vec::new();
        for (peer, entry) in self.entries.iter_mut() {
            let now = kind.is_some_and(|k| selects(peer, id, k, cx));
            let was = entry.selected.contains(&id);
            if now != was {
                if now {
                    entry.selected.insert(id);
                } else {
                    entry.selected.remove(&id);
                }
                changed.push(peer.clone());
            }
        }
        changed
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::labels::Labels;
    use crate::selector::{Requirement, Selector};
    use dataplane::Prefix;

    fn p(s: &str) -> Prefix {
        s.parse().unwrap()
    }

    struct World {
        ids: IdentityTable,
        addrs: HashMap<Identity, Vec<IpAddr>>,
    }

    impl World {
        fn cx(&self) -> SelectionContext<'_> {
            SelectionContext {
                identities: &self.ids,
                addresses: &self.addrs,
            }
        }
    }

    fn cidr(c: &str, except: &[&str], match_pods: bool) -> Peer {
        Peer::Cidr(CidrPeer {
            cidr: p(c),
            except: except.iter().map(|e| p(e)).collect(),
            match_pods,
        })
    }

    #[test]
    fn cidr_selects_covered_prefixes_minus_except() {
        let mut w = World {
            ids: IdentityTable::new(),
            addrs: HashMap::new(),
        };
        let (p8, _) = w.ids.acquire_prefix(p("10.0.0.0/8")).unwrap();
        let (p16, _) = w.ids.acquire_prefix(p("10.1.0.0/16")).unwrap();
        let (p24, _) = w.ids.acquire_prefix(p("10.1.2.0/24")).unwrap();
        let (other, _) = w.ids.acquire_prefix(p("11.0.0.0/8")).unwrap();
        let mut cache = SelectorCache::new();
        let peer = cidr("10.0.0.0/8", &["10.1.0.0/16"], false);
        cache.add_user(&peer, w.cx());
        let sel = cache.selection(&peer);
        assert!(sel.contains(&p8));
        assert!(!sel.contains(&p16) && !sel.contains(&p24) && !sel.contains(&other));
        assert!(!sel.contains(&Identity::WORLD));
        let all = cidr("0.0.0.0/0", &[], false);
        cache.add_user(&all, w.cx());
        assert!(cache.selection(&all).contains(&Identity::WORLD));
        assert_eq!(cache.selection(&all).len(), 5);
    }

    #[test]
    fn ip_block_selects_pods_only_when_all_their_addresses_are_inside() {
        let mut w = World {
            ids: IdentityTable::new(),
            addrs: HashMap::new(),
        };
        let labels: Labels = [("app", "a")].into_iter().collect();
        let (a, _) = w.ids.acquire_labels(&labels).unwrap();
        w.addrs.insert(a, vec!["10.0.0.1".parse().unwrap()]);
        let mut cache = SelectorCache::new();
        let k8s = cidr("10.0.0.0/24", &[], true);
        let cil = cidr("10.0.0.0/24", &[], false);
        cache.add_user(&k8s, w.cx());
        cache.add_user(&cil, w.cx());
        assert!(cache.selection(&k8s).contains(&a));
        assert!(!cache.selection(&cil).contains(&a));
        // A second pod of the same identity outside the block: the identity is no longer wholly
        // inside, so it is not selected (fail closed).
        w.addrs
            .get_mut(&a)
            .unwrap()
            .push("10.9.0.1".parse().unwrap());
        let changed = cache.identity_changed(a, w.cx());
        assert_eq!(changed, vec![k8s.clone()]);
        assert!(!cache.selection(&k8s).contains(&a));
    }

    #[test]
    fn endpoint_selectors_follow_identity_churn() {
        let mut w = World {
            ids: IdentityTable::new(),
            addrs: HashMap::new(),
        };
        let mut cache = SelectorCache::new();
        let peer = Peer::Endpoints(Selector::from_requirements([Requirement::equals(
            "app", "a",
        )]));
        let everything = Peer::Endpoints(Selector::everything());
        cache.add_user(&peer, w.cx());
        cache.add_user(&everything, w.cx());
        assert!(
            cache.selection(&everything).is_empty(),
            "reserved identities are not endpoints"
        );
        let labels: Labels = [("app", "a")].into_iter().collect();
        let (a, _) = w.ids.acquire_labels(&labels).unwrap();
        let mut changed = cache.identity_changed(a, w.cx());
        changed.sort();
        assert_eq!(changed.len(), 2);
        w.ids.release(a);
        cache.identity_changed(a, w.cx());
        assert!(cache.selection(&peer).is_empty());
        cache.remove_user(&peer);
        assert_eq!(cache.len(), 1);
    }

    #[test]
    fn entities() {
        let mut w = World {
            ids: IdentityTable::new(),
            addrs: HashMap::new(),
        };
        let (c, _) = w.ids.acquire_prefix(p("1.2.3.0/24")).unwrap();
        let mut cache = SelectorCache::new();
        let world = Peer::Entity(Entity::World);
        let cluster = Peer::Entity(Entity::Cluster);
        let all = Peer::Entity(Entity::All);
        for e in [&world, &cluster, &all] {
            cache.add_user(e, w.cx());
        }
        assert_eq!(
            cache.selection(&world).iter().copied().collect::<Vec<_>>(),
            vec![Identity::WORLD, c]
        );
        assert!(cache.selection(&cluster).contains(&Identity::HOST));
        assert!(!cache.selection(&cluster).contains(&Identity::WORLD));
        assert_eq!(
            cache.selection(&all).iter().copied().collect::<Vec<_>>(),
            vec![Identity::ANY]
        );
    }
}
