//! The distillery: from the repository's rules to one endpoint's map state.
//!
//! Contract (the map state of one endpoint in one direction):
//! - no section selecting it applies in that direction: not enforced, empty map;
//! - otherwise enforced; if none of those sections asks for default deny (Cilium
//!   `enableDefaultDeny: false`), an allow-all `(ANY, ANY)` entry is added so that deny rules
//!   still apply while everything else passes (what Cilium does);
//! - an enforced ingress direction always admits the node's own stack: an L3 allow for `host`
//!   (Cilium's default `allow-localhost`, which a Kubernetes user gets: the kubelet's probes
//!   must reach every pod whatever its policy), its origin the first section that enforces
//!   ingress. A deny that covers `host` still wins, as every deny does;
//! - each rule adds keys `peer identity x protocol x port range`: no ports gives an L3 key per
//!   identity; `Peers::All` gives the identity wildcard; protocol ANY expands to TCP, UDP, SCTP;
//!   a named port resolves against the destination pod (ingress: this endpoint; egress: every
//!   pod of the peer identity). When an allow and a deny produce the same key, the deny wins
//!   ([`crate::mapstate::merge`]).
//!
//! A host policy (`nodeSelector`) has its own entry point, [`Distillery::host_map_state`]: the
//! node's labels select its sections, which no pod's map state includes.
//!
//! Read-only over the repository, the rule index, the selector cache and the inputs: it
//! computes, the engine ([`crate::compile`]) applies.

use std::collections::BTreeSet;

use dataplane::tables::policy::{Action, Direction, PolicyKey, PortRange};
use dataplane::Identity;

use crate::cluster::{ContainerPort, Pod};
use crate::cookie::RuleOrigin;
use crate::inputs::Inputs;
use crate::labels::Labels;
use crate::mapstate::{merge, MapState};
use crate::model::{Peers, PortSel, Rule, Verdict};
use crate::repository::Repository;
use crate::rule_index::RuleIndex;
use crate::selector_cache::SelectorCache;

/// What a map state is distilled from (borrowed from the engine).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Distillery<'a> {
    pub(crate) repo: &'a Repository,
    pub(crate) index: &'a RuleIndex,
    pub(crate) cache: &'a SelectorCache,
    pub(crate) inputs: &'a Inputs,
}

impl Distillery<'_> {
    /// The map state endpoint `pod` (identity `id`) should have in direction `d`, and whether
    /// that direction is enforced.
    pub(crate) fn map_state(&self, pod: &Pod, id: Identity, d: Direction) -> (bool, MapState) {
        let mut map = MapState::new();
        let mut applies = false;
        let mut default_deny = false;
        let mut default_allow_origins = BTreeSet::new();
        let mut localhost_origin: Option<RuleOrigin> = None;
        for (subject, refs) in self.index.subjects() {
            if !self.cache.selection(subject).contains(&id) {
                continue;
            }
            for (pid, idx) in refs {
                let Some(policy) = self.repo.get(pid) else {
                    continue;
                };
                let Some(section) = policy.sections.get(*idx) else {
                    continue;
                };
                let rules = section.direction(d);
                if !rules.applies {
                    continue;
                }
                applies = true;
                default_deny |= rules.default_deny;
                if d == Direction::Ingress {
                    // The least origin, not the first seen: the subject index iterates in
                    // hash order, which differs between an incremental and a full compile of
                    // the same state (the differential check of control/tests/scale.rs).
                    let origin = RuleOrigin {
                        policy: pid.clone(),
                        rule: format!("{} (allow-localhost)", section.path),
                    };
                    if localhost_origin.as_ref().is_none_or(|o| origin < *o) {
                        localhost_origin = Some(origin);
                    }
                }
                if !rules.default_deny {
                    default_allow_origins.insert(RuleOrigin {
                        policy: pid.clone(),
                        rule: default_deny_path(&section.path, d),
                    });
                }
                for rule in &rules.rules {
                    let origin = RuleOrigin {
                        policy: pid.clone(),
                        rule: rule.path.clone(),
                    };
                    self.expand_rule(&pod.ports, d, rule, &origin, &mut map);
                }
            }
        }
        if !applies {
            return (false, MapState::new());
        }
        if !default_deny {
            for o in default_allow_origins {
                merge(&mut map, PolicyKey::l3(Identity::ANY), Action::Allow, o);
            }
        }
        if let Some(o) = localhost_origin {
            merge(&mut map, PolicyKey::l3(Identity::HOST), Action::Allow, o);
        }
        (true, map)
    }

    /// The map state of the host of a node labelled `node_labels` in direction `d`: the
    /// sections of host policies (`Section::hosts`) whose node selector matches, with the same
    /// contract as [`Self::map_state`] except that there is no allow-localhost entry (the host
    /// is the subject) and no named port (a node has no container ports).
    pub(crate) fn host_map_state(&self, node_labels: &Labels, d: Direction) -> (bool, MapState) {
        let mut map = MapState::new();
        let (mut applies, mut default_deny) = (false, false);
        let mut default_allow_origins = BTreeSet::new();
        for policy in self.repo.iter() {
            for section in &policy.sections {
                if !section.hosts || !section.subject.matches(node_labels) {
                    continue;
                }
                let rules = section.direction(d);
                if !rules.applies {
                    continue;
                }
                applies = true;
                default_deny |= rules.default_deny;
                if !rules.default_deny {
                    default_allow_origins.insert(RuleOrigin {
                        policy: policy.id.clone(),
                        rule: default_deny_path(&section.path, d),
                    });
                }
                for rule in &rules.rules {
                    let origin = RuleOrigin {
                        policy: policy.id.clone(),
                        rule: rule.path.clone(),
                    };
                    self.expand_rule(&[], d, rule, &origin, &mut map);
                }
            }
        }
        if !applies {
            return (false, MapState::new());
        }
        if !default_deny {
            for o in default_allow_origins {
                merge(&mut map, PolicyKey::l3(Identity::ANY), Action::Allow, o);
            }
        }
        (true, map)
    }

    /// One rule's keys; `local_ports` are the subject's container ports (ingress named ports).
    fn expand_rule(
        &self,
        local_ports: &[ContainerPort],
        d: Direction,
        rule: &Rule,
        origin: &RuleOrigin,
        map: &mut MapState,
    ) {
        let action = match rule.verdict {
            Verdict::Allow => Action::Allow,
            Verdict::Deny => Action::Deny,
        };
        let mut peers: BTreeSet<Identity> = BTreeSet::new();
        match &rule.peers {
            Peers::All => {
                peers.insert(Identity::ANY);
            }
            Peers::Only(list) => {
                for p in list {
                    peers.extend(self.cache.selection(p).iter().copied());
                }
            }
        }
        if peers.is_empty() {
            return;
        }
        if rule.ports.is_empty() {
            for id in &peers {
                merge(map, PolicyKey::l3(*id), action, origin.clone());
            }
            return;
        }
        for spec in &rule.ports {
            for &proto in spec.protocol.numbers() {
                match &spec.port {
                    PortSel::All => {
                        for id in &peers {
                            merge(
                                map,
                                PolicyKey::l4(*id, proto, PortRange::ANY),
                                action,
                                origin.clone(),
                            );
                        }
                    }
                    PortSel::Range(r) => {
                        for id in &peers {
                            merge(map, PolicyKey::l4(*id, proto, *r), action, origin.clone());
                        }
                    }
                    PortSel::Named(name) => match d {
                        Direction::Ingress => {
                            for port in named_ports(local_ports, name, proto) {
                                for id in &peers {
                                    let key = PolicyKey::l4(*id, proto, PortRange::single(port));
                                    merge(map, key, action, origin.clone());
                                }
                            }
                        }
                        Direction::Egress => {
                            self.expand_named_egress(&peers, name, proto, action, origin, map)
                        }
                    },
                }
            }
        }
    }

    /// Egress to a named port: the port of each destination pod, per destination identity (the
    /// wildcard expands to every pod identity that has such a port).
    fn expand_named_egress(
        &self,
        peers: &BTreeSet<Identity>,
        name: &str,
        proto: u8,
        action: Action,
        origin: &RuleOrigin,
        map: &mut MapState,
    ) {
        let mut add = |id: Identity, pods: &BTreeSet<String>| {
            for key in pods {
                if let Some(state) = self.inputs.pods.get(key) {
                    for port in named_ports(&state.pod.ports, name, proto) {
                        let k = PolicyKey::l4(id, proto, PortRange::single(port));
                        merge(map, k, action, origin.clone());
                    }
                }
            }
        };
        if peers.contains(&Identity::ANY) {
            for (id, pods) in &self.inputs.pods_by_identity {
                add(*id, pods);
            }
        } else {
            for id in peers {
                if let Some(pods) = self.inputs.pods_by_identity.get(id) {
                    add(*id, pods);
                }
            }
        }
    }
}

fn named_ports<'a>(
    ports: &'a [ContainerPort],
    name: &'a str,
    proto: u8,
) -> impl Iterator<Item = u16> + 'a {
    ports
        .iter()
        .filter(move |p| p.protocol == proto && p.name.as_deref() == Some(name))
        .map(|p| p.port)
}

/// Where the "no default deny" of a section is written, for the trace.
fn default_deny_path(section: &str, d: Direction) -> String {
    let dir = match d {
        Direction::Ingress => "ingress",
        Direction::Egress => "egress",
    };
    format!("{section}.enableDefaultDeny.{dir}")
}
