//! The compiler's own policy model, into which both Kubernetes and Cilium policies are parsed.
//!
//! A [`Policy`] has one or more [`Section`]s (a Cilium `specs` list has several; everything else
//! one). A section selects its subject endpoints with a [`Selector`] over identity labels
//! (namespace scoping already folded in) and has an ingress and an egress
//! [`DirectionRules`]:
//! - `applies`: the section selects its subjects in this direction at all;
//! - `default_deny`: selecting an endpoint puts it in default deny in this direction
//!   (Kubernetes: always; Cilium: `enableDefaultDeny`, default true);
//! - `rules`: allow and deny rules, each with its peers and ports.
//!
//! Peers: [`Peers::All`] is "every remote, inside or outside the cluster" (Kubernetes: no
//! `from`/`to`; Cilium: only `toPorts`); [`Peers::Only`] with an empty list selects nothing.

use std::fmt;

use dataplane::tables::policy::{Direction, PortRange};
use dataplane::wire::ip;
use dataplane::Prefix;

use crate::selector::Selector;

/// Which API an object came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PolicyKind {
    NetworkPolicy,
    CiliumNetworkPolicy,
    CiliumClusterwideNetworkPolicy,
}

impl PolicyKind {
    pub fn as_str(self) -> &'static str {
        match self {
            PolicyKind::NetworkPolicy => "NetworkPolicy",
            PolicyKind::CiliumNetworkPolicy => "CiliumNetworkPolicy",
            PolicyKind::CiliumClusterwideNetworkPolicy => "CiliumClusterwideNetworkPolicy",
        }
    }
}

/// The name of a policy object: kind, namespace (none for cluster-wide) and name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PolicyId {
    pub kind: PolicyKind,
    pub namespace: Option<String>,
    pub name: String,
}

impl PolicyId {
    /// `namespace/name`, or `name` for cluster-wide policies.
    pub fn qualified_name(&self) -> String {
        match &self.namespace {
            Some(ns) => format!("{ns}/{}", self.name),
            None => self.name.clone(),
        }
    }
}

impl fmt::Display for PolicyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.kind.as_str(), self.qualified_name())
    }
}

/// A parsed policy object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    pub id: PolicyId,
    pub sections: Vec<Section>,
}

/// One subject selector with its rules.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Section {
    /// Field path of the section (`spec`, `specs[1]`), for traces.
    pub path: String,
    pub subject: Selector,
    /// A host policy (Cilium's `nodeSelector`): `subject` selects nodes by their labels, and
    /// the rules apply to the nodes' own traffic through the dataplane, not to pods.
    pub hosts: bool,
    pub ingress: DirectionRules,
    pub egress: DirectionRules,
}

impl Section {
    pub fn direction(&self, dir: Direction) -> &DirectionRules {
        match dir {
            Direction::Ingress => &self.ingress,
            Direction::Egress => &self.egress,
        }
    }
}

/// A section's rules in one direction.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DirectionRules {
    /// The section selects its subjects in this direction.
    pub applies: bool,
    /// Selected endpoints are default-deny in this direction.
    pub default_deny: bool,
    pub rules: Vec<Rule>,
}

/// Allow or deny.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Verdict {
    Allow,
    Deny,
}

/// One ingress or egress rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    /// Field path of the rule in its document (`spec.ingress[0]`), for traces.
    pub path: String,
    pub verdict: Verdict,
    pub peers: Peers,
    /// Empty: every protocol and port.
    pub ports: Vec<PortSpec>,
}

/// The remotes a rule applies to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Peers {
    /// Every remote identity (the policy-map identity wildcard).
    All,
    /// The union of these; empty selects nothing.
    Only(Vec<Peer>),
}

/// One peer selector.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Peer {
    /// Cluster endpoints (pods) whose identity labels match.
    Endpoints(Selector),
    /// Addresses in `cidr` but in none of `except`.
    Cidr(CidrPeer),
    /// A Cilium entity.
    Entity(Entity),
}

/// A CIDR peer. `match_pods` is the Kubernetes `ipBlock` semantics (pod and node addresses in
/// the block match); Cilium CIDR rules never match cluster endpoints.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CidrPeer {
    pub cidr: Prefix,
    pub except: Vec<Prefix>,
    pub match_pods: bool,
}

/// Cilium entities.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Entity {
    /// Outside the cluster: `reserved:world` and every CIDR identity.
    World,
    /// Inside the cluster: every pod identity, host, remote-node, health, init, unmanaged.
    Cluster,
    Host,
    RemoteNode,
    Health,
    Init,
    Unmanaged,
    /// Everything (the identity wildcard).
    All,
}

impl Entity {
    pub fn parse(name: &str) -> Option<Entity> {
        Some(match name {
            "world" => Entity::World,
            "cluster" => Entity::Cluster,
            "host" => Entity::Host,
            "remote-node" => Entity::RemoteNode,
            "health" => Entity::Health,
            "init" => Entity::Init,
            "unmanaged" => Entity::Unmanaged,
            "all" => Entity::All,
            _ => return None,
        })
    }
}

/// An L4 protocol of a port rule: one IP protocol, or Cilium's `ANY`. The numbers and names are
/// [`ip::Protocol`]'s; this type only adds which ones a port rule may name, and `ANY`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
    /// Cilium's `ANY`: TCP, UDP and SCTP.
    Any,
    /// ICMP (IPv4) of an `icmps` rule: the port is the message type, as the dataplane keys it.
    Icmp,
    /// ICMPv6 of an `icmps` rule (`family: IPv6`): the port is the message type.
    Icmpv6,
}

impl Protocol {
    pub const TCP: u8 = ip::Protocol::Tcp.number();
    pub const UDP: u8 = ip::Protocol::Udp.number();
    pub const SCTP: u8 = ip::Protocol::SCTP.number();
    pub const ICMP: u8 = ip::Protocol::Icmp.number();
    pub const ICMPV6: u8 = ip::Protocol::Icmpv6.number();

    /// The IP protocol numbers this stands for.
    pub fn numbers(self) -> &'static [u8] {
        match self {
            Protocol::Tcp => &[Self::TCP],
            Protocol::Udp => &[Self::UDP],
            Protocol::Sctp => &[Self::SCTP],
            Protocol::Any => &[Self::TCP, Self::UDP, Self::SCTP],
            Protocol::Icmp => &[Self::ICMP],
            Protocol::Icmpv6 => &[Self::ICMPV6],
        }
    }

    /// The port-rule protocol of one IP protocol: TCP, UDP or SCTP.
    fn of(protocol: ip::Protocol) -> Option<Protocol> {
        match protocol {
            ip::Protocol::Tcp => Some(Protocol::Tcp),
            ip::Protocol::Udp => Some(Protocol::Udp),
            ip::Protocol::SCTP => Some(Protocol::Sctp),
            _ => None,
        }
    }

    /// Parses `TCP`, `UDP`, `SCTP` (and `ANY` when `allow_any`), case-insensitively.
    pub fn parse(s: &str, allow_any: bool) -> Option<Protocol> {
        if allow_any && s.eq_ignore_ascii_case("ANY") {
            return Some(Protocol::Any);
        }
        ip::Protocol::from_name(s).and_then(Protocol::of)
    }

    /// The name of an IP protocol number, for output: `TCP`, `UDP`, `SCTP` (upper case, as
    /// Kubernetes spells them), `ICMP`, `ICMPv6`, else the number.
    pub fn name_of(number: u8) -> String {
        let protocol = ip::Protocol::from(number);
        match protocol {
            ip::Protocol::Icmp => return "ICMP".to_string(),
            ip::Protocol::Icmpv6 => return "ICMPv6".to_string(),
            _ => {}
        }
        match (Protocol::of(protocol), protocol.name()) {
            (Some(_), Some(name)) => name.to_ascii_uppercase(),
            _ => number.to_string(),
        }
    }
}

/// Which destination ports a port rule covers.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PortSel {
    /// Every port of the protocol.
    All,
    Range(PortRange),
    /// A container port name, resolved against the destination pod.
    Named(String),
}

/// One port rule.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortSpec {
    pub protocol: Protocol,
    pub port: PortSel,
}
