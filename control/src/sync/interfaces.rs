//! Which pod interfaces the node's dataplane must serve: the host sides of this node's
//! endpoints. The agent asks the dataplane to add the ones it has not asked for yet
//! (`interface.add`, idempotent) and to remove the ones whose endpoint is gone
//! (`interface.remove`): a pod added by the CNI plugin needs no dataplane restart.

use std::collections::BTreeSet;

use super::ClusterState;

/// The interfaces to add and to remove.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct InterfacePlan {
    pub add: Vec<String>,
    pub remove: Vec<String>,
}

impl ClusterState {
    /// The host-side interfaces of this node's endpoints that the dataplane can serve (those
    /// with an interface index: a veth that exists).
    pub fn local_interfaces(&self) -> BTreeSet<String> {
        self.endpoints()
            .values()
            .filter(|e| e.node == self.node && e.ifindex.is_some())
            .map(|e| e.interface.clone())
            .collect()
    }
}

/// What to ask, given what is wanted and what was asked already.
pub fn plan(wanted: &BTreeSet<String>, asked: &BTreeSet<String>) -> InterfacePlan {
    InterfacePlan {
        add: wanted.difference(asked).cloned().collect(),
        remove: asked.difference(wanted).cloned().collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|n| n.to_string()).collect()
    }

    #[test]
    fn new_endpoints_are_added_and_gone_ones_removed() {
        let p = plan(&set(&["a", "b"]), &set(&["b", "c"]));
        assert_eq!(p.add, vec!["a".to_string()]);
        assert_eq!(p.remove, vec!["c".to_string()]);
        assert_eq!(plan(&set(&["a"]), &set(&["a"])), InterfacePlan::default());
    }
}
