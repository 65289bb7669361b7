//! Policy-map cookies: the number a map entry carries to name the rules behind it.
//!
//! Contract: a cookie stands for one sorted set of [`RuleOrigin`]s; equal sets get the same
//! cookie for the life of the table (cookies are never reused or renumbered, so an entry sent
//! to the dataplane keeps its meaning); `0` means "no rule" and names the empty set.

use hashbrown::HashMap;

use crate::model::PolicyId;

/// The rule an entry came from: its policy and the rule's field path (`spec.ingress[0]`); for
/// the allow-all entry of `enableDefaultDeny: false`, the path of that setting.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RuleOrigin {
    pub policy: PolicyId,
    pub rule: String,
}

/// Interned sets of rule origins; the cookie is the index + 1 (0 means "no rule").
#[derive(Clone, Debug, Default)]
pub(crate) struct CookieTable {
    by_set: HashMap<Vec<RuleOrigin>, u32>,
    sets: Vec<Vec<RuleOrigin>>,
}

impl CookieTable {
    pub(crate) fn intern(&mut self, origins: Vec<RuleOrigin>) -> u32 {
        if let Some(c) = self.by_set.get(&origins) {
            return *c;
        }
        self.sets.push(origins.clone());
        let cookie = u32::try_from(self.sets.len()).unwrap_or(u32::MAX);
        self.by_set.insert(origins, cookie);
        cookie
    }

    pub(crate) fn get(&self, cookie: u32) -> &[RuleOrigin] {
        cookie
            .checked_sub(1)
            .and_then(|i| self.sets.get(i as usize))
            .map_or(&[], Vec::as_slice)
    }
}
