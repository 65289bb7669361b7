//! The rule index: which sections of the repository use which selector, so that a change of a
//! selector's selection (or of a named port) finds the endpoints whose maps may change.
//!
//! Contract:
//! - a section is named by a [`SectionRef`] (policy id, index in `Policy::sections`);
//! - [`RuleIndex::add`] indexes every selector a section uses (its subject, as
//!   `Peer::Endpoints`, unless it is a host policy's node selector, and the peers of its rules)
//!   and returns them, subject first, for the
//!   selector cache to count as users; [`RuleIndex::remove`] undoes it and returns the same
//!   list, so each `add_user` has its `remove_user`;
//! - sections with an egress rule on a named port are listed apart ([`RuleIndex::named_egress`]):
//!   a pod's named ports change what they compile to.

use std::collections::BTreeSet;

use hashbrown::HashMap;

use dataplane::Prefix;

use crate::model::{Peer, Peers, Policy, PolicyId, PortSel, Rule, Section};

/// A section of a policy: (policy, index in `Policy::sections`).
pub(crate) type SectionRef = (PolicyId, usize);

/// Selectors -> the sections that use them. See the module doc.
#[derive(Clone, Debug, Default)]
pub(crate) struct RuleIndex {
    /// Subject selectors (as `Peer::Endpoints`, the selector cache's key) -> their sections.
    subjects: HashMap<Peer, BTreeSet<SectionRef>>,
    peer_users: HashMap<Peer, BTreeSet<SectionRef>>,
    named_egress: BTreeSet<SectionRef>,
}

impl RuleIndex {
    /// Indexes section `sref`; returns the selectors it uses (subject first).
    pub(crate) fn add(&mut self, sref: &SectionRef, section: &Section) -> Vec<Peer> {
        let mut used = Vec::new();
        // A host policy's subject selects nodes, not pod identities: it is no subject here
        // (`Distillery::host_map_state` matches it against the node's labels).
        if !section.hosts {
            let subject = Peer::Endpoints(section.subject.clone());
            self.subjects
                .entry(subject.clone())
                .or_default()
                .insert(sref.clone());
            used.push(subject);
        }
        for peer in section_peers(section) {
            self.peer_users
                .entry(peer.clone())
                .or_default()
                .insert(sref.clone());
            used.push(peer);
        }
        if section.egress.rules.iter().any(rule_has_named_port) {
            self.named_egress.insert(sref.clone());
        }
        used
    }

    /// Removes section `sref` from the index; returns the selectors it used (subject first).
    pub(crate) fn remove(&mut self, sref: &SectionRef, section: &Section) -> Vec<Peer> {
        let mut used = Vec::new();
        if !section.hosts {
            let subject = Peer::Endpoints(section.subject.clone());
            if let Some(set) = self.subjects.get_mut(&subject) {
                set.remove(sref);
                if set.is_empty() {
                    self.subjects.remove(&subject);
                }
            }
            used.push(subject);
        }
        for peer in section_peers(section) {
            if let Some(set) = self.peer_users.get_mut(&peer) {
                set.remove(sref);
                if set.is_empty() {
                    self.peer_users.remove(&peer);
                }
            }
            used.push(peer);
        }
        self.named_egress.remove(sref);
        used
    }

    /// Every subject selector with the sections it is the subject of.
    pub(crate) fn subjects(&self) -> impl Iterator<Item = (&Peer, &BTreeSet<SectionRef>)> {
        self.subjects.iter()
    }

    /// The sections whose rules use `peer`.
    pub(crate) fn peer_users(&self, peer: &Peer) -> Vec<SectionRef> {
        self.peer_users
            .get(peer)
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// The sections with an egress rule on a named port.
    pub(crate) fn named_egress(&self) -> Vec<SectionRef> {
        self.named_egress.iter().cloned().collect()
    }
}

/// What to release after a policy is replaced or removed.
#[derive(Debug, Default)]
pub(crate) struct Released {
    pub(crate) peers: Vec<Peer>,
    pub(crate) prefixes: Vec<Prefix>,
}

fn rule_has_named_port(rule: &Rule) -> bool {
    rule.ports
        .iter()
        .any(|p| matches!(p.port, PortSel::Named(_)))
}

/// Every peer selector a section's rules use.
fn section_peers(section: &Section) -> Vec<Peer> {
    let mut out = Vec::new();
    for rules in [&section.ingress, &section.egress] {
        for rule in &rules.rules {
            if let Peers::Only(list) = &rule.peers {
                out.extend(list.iter().cloned());
            }
        }
    }
    out
}

/// Every prefix a policy needs a CIDR identity for: CIDRs and excepts, but not /0 (the whole
/// address space beyond the known prefixes is `world`).
pub(crate) fn policy_prefixes(policy: &Policy) -> Vec<Prefix> {
    let mut out = Vec::new();
    for section in &policy.sections {
        for peer in section_peers(section) {
            if let Peer::Cidr(c) = peer {
                out.extend(
                    std::iter::once(c.cidr)
                        .chain(c.except.iter().copied())
                        .filter(|p| !p.is_default()),
                );
            }
        }
    }
    out
}
