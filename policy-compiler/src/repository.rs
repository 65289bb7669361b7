//! The rule repository: every policy by name, with a revision that increases on every change
//! (so a consumer can tell whether what it compiled is current).

use std::collections::BTreeMap;

use crate::model::{Policy, PolicyId};

/// Policies by id, ordered (so compilation visits them in a stable order).
#[derive(Clone, Debug, Default)]
pub struct Repository {
    policies: BTreeMap<PolicyId, Policy>,
    revision: u64,
}

impl Repository {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds or replaces a policy; returns the previous version.
    pub fn upsert(&mut self, policy: Policy) -> Option<Policy> {
        self.revision += 1;
        self.policies.insert(policy.id.clone(), policy)
    }

    /// Removes a policy; returns it. The revision moves only when something was removed.
    pub fn delete(&mut self, id: &PolicyId) -> Option<Policy> {
        let removed = self.policies.remove(id);
        if removed.is_some() {
            self.revision += 1;
        }
        removed
    }

    pub fn get(&self, id: &PolicyId) -> Option<&Policy> {
        self.policies.get(id)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Policy> {
        self.policies.values()
    }

    pub fn revision(&self) -> u64 {
        self.revision
    }

    pub fn len(&self) -> usize {
        self.policies.len()
    }

    pub fn is_empty(&self) -> bool {
        self.policies.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::PolicyKind;

    fn policy(name: &str) -> Policy {
        Policy {
            id: PolicyId {
                kind: PolicyKind::NetworkPolicy,
                namespace: Some("x".into()),
                name: name.into(),
            },
            sections: Vec::new(),
        }
    }

    #[test]
    fn revision_moves_on_change() {
        let mut r = Repository::new();
        assert_eq!(r.revision(), 0);
        assert!(r.upsert(policy("a")).is_none());
        assert!(r.upsert(policy("a")).is_some());
        assert_eq!(r.revision(), 2);
        assert!(r.delete(&policy("b").id).is_none());
        assert_eq!(r.revision(), 2);
        assert!(r.delete(&policy("a").id).is_some());
        assert_eq!(r.revision(), 3);
        assert!(r.is_empty());
    }
}
