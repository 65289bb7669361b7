//! Map state: the entries one endpoint should have in one direction, and how they reach the
//! dataplane's map.
//!
//! Contract:
//! - a [`MapState`] maps a datapath key (remote identity, protocol, port range) to an action
//!   and the rules that produced it; [`merge`] adds one rule's contribution, and when an allow
//!   and a deny produce the same key the deny wins (its origins replace the allows');
//! - [`apply`] makes a [`DirectionalPolicy`] equal to a desired state, in place, and records
//!   every change as a [`Delta`]: enforcement first, then removals in key order, then upserts
//!   in key order (so the output is deterministic).

use std::collections::{BTreeMap, BTreeSet};

use dataplane::tables::policy::{Action, Direction, DirectionalPolicy, PolicyEntry, PolicyKey};

use crate::cookie::RuleOrigin;
use crate::delta::Delta;

/// The desired entries of one endpoint in one direction, with the rules behind each.
pub(crate) type MapState = BTreeMap<PolicyKey, (Action, BTreeSet<RuleOrigin>)>;

/// Adds `origin`'s `action` for `key`: a deny replaces allows, an allow never replaces a deny.
pub(crate) fn merge(map: &mut MapState, key: PolicyKey, action: Action, origin: RuleOrigin) {
    match map.get_mut(&key) {
        None => {
            map.insert(key, (action, [origin].into_iter().collect()));
        }
        Some((existing, origins)) if *existing == action => {
            origins.insert(origin);
        }
        Some((existing, origins)) if action == Action::Deny => {
            *existing = Action::Deny;
            origins.clear();
            origins.insert(origin);
        }
        Some(_) => {}
    }
}

/// Makes `current` equal to (`enforced`, `entries`), recording every change.
pub(crate) fn apply(
    endpoint: &str,
    d: Direction,
    current: &mut DirectionalPolicy,
    enforced: bool,
    entries: Vec<(PolicyKey, PolicyEntry)>,
    deltas: &mut Vec<Delta>,
) {
    if current.enforced != enforced {
        current.enforced = enforced;
        deltas.push(Delta::Enforce {
            endpoint: endpoint.to_string(),
            direction: d,
            enforced,
        });
    }
    let wanted: BTreeMap<PolicyKey, PolicyEntry> = entries.into_iter().collect();
    let mut stale: Vec<PolicyKey> = current
        .map
        .iter()
        .map(|(k, _)| k)
        .filter(|k| !wanted.contains_key(k))
        .collect();
    stale.sort();
    for key in stale {
        current.map.remove(&key);
        deltas.push(Delta::Remove {
            endpoint: endpoint.to_string(),
            direction: d,
            key,
        });
    }
    for (key, entry) in wanted {
        if current.map.get(&key) == Some(entry) {
            continue;
        }
        // Keys are built by `PolicyKey::l3`/`l4` with a protocol whenever ports are narrowed,
        // so the map cannot refuse them; a refusal would be a compiler bug, reported by the
        // map's entry staying absent (and the trace showing it).
        if current.map.insert(key, entry).is_ok() {
            deltas.push(Delta::Upsert {
                endpoint: endpoint.to_string(),
                direction: d,
                key,
                entry,
            });
        }
    }
}
