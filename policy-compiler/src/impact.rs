//! `policy diff`: which flows change verdict between two compiled policy sets (the cluster
//! as it is, and as it would be with a new or changed policy file).
//!
//! Both sides are asked with [`crate::trace::trace_with_hosts`], the same lookup `policy
//! trace` does (the dataplane's own functions over the compiled maps), so a listed change is
//! exactly what the dataplane would do differently. What is enumerated:
//! - **ends**: every pod of the cluster, every node's address (`host` / `remote-node` as the
//!   pod at the other end sees it) and one address per policy CIDR of either side (the block's
//!   first address: what a peer in that block is), plus one address outside every block of
//!   each family in use (`world`); a flow has a pod or a node with a host policy (on either
//!   side) on at least one end, both ends of one address family, and never one end to itself
//!   (loopback is never refused);
//! - **ports**: every protocol's ports are cut into classes at each boundary of a map entry of
//!   either side (a range's first port and the port after its last), so every port of a class
//!   has the same verdict on both sides and one probe per class is exact. TCP and UDP are
//!   always probed; SCTP, ICMP (IPv4 pairs) and ICMPv6 (IPv6 pairs) when a map entry names them.
//!
//! Changes are grouped by (change, source identity, destination identity, protocol, the exact
//! flows), adjacent port classes with the same flows merged into one range, and sorted by
//! blast radius (flows x ports, largest first). With [`diff_with_hosts`], the nodes' host
//! policies of each side are asked too (`trace_with_hosts`).

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde::Serialize;

use dataplane::tables::policy::Direction;

use crate::compile::PolicyEngine;
use crate::model::Protocol;
use crate::trace::{trace_with_hosts, DirectionTrace, HostPolicies, Probe, TraceResult};

/// Addresses of the documentation ranges (RFC 5737, RFC 3849), taken as `world` when no
/// policy CIDR holds them.
const WORLD_V4: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
const WORLD_V6: IpAddr = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1));

/// One group of flows whose verdict changes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ImpactChange {
    /// `newly-allowed` or `newly-denied`.
    pub change: &'static str,
    /// The source's identity (labels, `reserved:world`, `cidr:...`) as the new policies see it.
    pub source: String,
    pub destination: String,
    pub protocol: String,
    /// First and last port (ICMP: type) of the range.
    pub port_from: u16,
    pub port_to: u16,
    /// Pods among the sources / destinations of the flows.
    pub source_pods: usize,
    pub destination_pods: usize,
    /// The flows, `[from, to]` (`namespace/pod` or an address), sorted.
    pub flows: Vec<[String; 2]>,
    /// What decides with the new policies: the rules (`kind namespace/name field`) or
    /// `default-deny at POD (direction)`.
    pub because: Vec<String>,
}

impl ImpactChange {
    /// Flows times ports: what sorts the list.
    pub fn blast_radius(&self) -> u64 {
        self.flows.len() as u64 * (u64::from(self.port_to - self.port_from) + 1)
    }

    /// `80`, `1-79`.
    pub fn ports_text(&self) -> String {
        if self.port_from == self.port_to {
            self.port_from.to_string()
        } else {
            format!("{}-{}", self.port_from, self.port_to)
        }
    }
}

/// One end of the enumerated flows: how `trace` names it, whether it is a pod, and whether it
/// is a node with a host policy.
#[derive(Clone, Debug)]
struct End {
    name: String,
    addr: IpAddr,
    pod: bool,
    host: bool,
}

/// Every flow whose verdict differs between `before` and `after` (pods' maps only), grouped
/// and sorted (see the module doc).
pub fn diff(before: &PolicyEngine, after: &PolicyEngine) -> Vec<ImpactChange> {
    let none = HostPolicies::new();
    diff_with_hosts(before, &none, after, &none)
}

/// [`diff`], with each side's host policies of the nodes (`trace::host_policies`).
pub fn diff_with_hosts(
    before: &PolicyEngine,
    before_hosts: &HostPolicies,
    after: &PolicyEngine,
    after_hosts: &HostPolicies,
) -> Vec<ImpactChange> {
    let ends = ends(before, after, [before_hosts, after_hosts]);
    let classes = port_classes(&[before, after], &[before_hosts, after_hosts]);
    // (protocol, class, change, source identity, destination identity) -> flows, and the
    // explanation of the first flow.
    let mut found: BTreeMap<Found, (BTreeSet<[String; 2]>, Vec<String>)> = BTreeMap::new();
    for src in &ends {
        for dst in &ends {
            if !is_probed(src, dst) {
                continue;
            }
            for (proto, ports) in &classes {
                if !protocol_fits(*proto, src.addr) {
                    continue;
                }
                for (class, &(lo, _)) in ports.iter().enumerate() {
                    let probe = Probe {
                        from: src.name.clone(),
                        to: dst.name.clone(),
                        port: lo,
                        protocol: *proto,
                    };
                    let (Ok(was), Ok(now)) = (
                        trace_with_hosts(before, before_hosts, &probe),
                        trace_with_hosts(after, after_hosts, &probe),
                    ) else {
                        continue; // Both engines hold every end listed; nothing to report.
                    };
                    if was.allowed() == now.allowed() {
                        continue;
                    }
                    let key = Found {
                        proto: *proto,
                        class,
                        allowed: now.allowed(),
                        source: now.ingress.remote.description.clone(),
                        destination: now.egress.remote.description.clone(),
                    };
                    let entry = found
                        .entry(key)
                        .or_insert_with(|| (BTreeSet::new(), because(&now)));
                    entry.0.insert([src.name.clone(), dst.name.clone()]);
                }
            }
        }
    }
    let mut out = merge(found, &classes, &ends);
    out.sort_by(|a, b| {
        b.blast_radius().cmp(&a.blast_radius()).then_with(|| {
            (&a.source, &a.destination, &a.protocol, a.port_from).cmp(&(
                &b.source,
                &b.destination,
                &b.protocol,
                b.port_from,
            ))
        })
    });
    out
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Found {
    proto: u8,
    class: usize,
    allowed: bool,
    source: String,
    destination: String,
}

/// Pods, nodes, a sample address per policy CIDR of either side, and `world`.
fn ends(before: &PolicyEngine, after: &PolicyEngine, hosts: [&HostPolicies; 2]) -> Vec<End> {
    let mut ends: BTreeMap<IpAddr, End> = BTreeMap::new();
    for (key, _) in after.endpoints() {
        if let Some(pod) = after.pod(key) {
            ends.insert(
                pod.ip,
                End {
                    name: key.to_string(),
                    addr: pod.ip,
                    pod: true,
                    host: false,
                },
            );
        }
    }
    let mut others: BTreeSet<IpAddr> = BTreeSet::new();
    let mut hosts_enforcing: BTreeSet<IpAddr> = BTreeSet::new();
    for engine in [before, after] {
        others.extend(engine.nodes().map(|(_, ip)| ip));
        for (name, ip) in engine.nodes() {
            let enforced = |h: &HostPolicies| {
                h.get(name)
                    .is_some_and(|p| p.ingress.enforced || p.egress.enforced)
            };
            if hosts.iter().any(|h| enforced(h)) {
                hosts_enforcing.insert(ip);
            }
        }
        others.extend(engine.ipcache().into_iter().map(|(p, _)| p.addr()));
    }
    if ends.keys().chain(&others).any(IpAddr::is_ipv4) {
        others.insert(WORLD_V4);
    }
    if ends.keys().chain(&others).any(IpAddr::is_ipv6) {
        others.insert(WORLD_V6);
    }
    for addr in others {
        ends.entry(addr).or_insert_with(|| End {
            name: addr.to_string(),
            addr,
            pod: false,
            host: hosts_enforcing.contains(&addr),
        });
    }
    ends.into_values().collect()
}

fn is_probed(src: &End, dst: &End) -> bool {
    let has_map = |e: &End| e.pod || e.host;
    (has_map(src) || has_map(dst))
        && src.addr != dst.addr
        && src.addr.is_ipv4() == dst.addr.is_ipv4()
}

fn protocol_fits(proto: u8, addr: IpAddr) -> bool {
    match proto {
        Protocol::ICMP => addr.is_ipv4(),
        Protocol::ICMPV6 => addr.is_ipv6(),
        _ => true,
    }
}

/// Per protocol, the port classes `(first, last)` over which both sides' maps (pods' and
/// hosts') are constant.
fn port_classes(engines: &[&PolicyEngine], hosts: &[&HostPolicies]) -> Vec<(u8, Vec<(u16, u16)>)> {
    let mut cuts: BTreeMap<u8, BTreeSet<u32>> = BTreeMap::new();
    for proto in [Protocol::TCP, Protocol::UDP] {
        cuts.entry(proto).or_default();
    }
    let pods = engines.iter().flat_map(|e| e.endpoints().map(|(_, ep)| ep));
    let nodes = hosts.iter().flat_map(|h| h.values());
    for ep in pods.chain(nodes) {
        for d in [Direction::Ingress, Direction::Egress] {
            for (key, _) in ep.direction(d).map.iter() {
                if key.proto == 0 {
                    continue; // Every port of every protocol: no boundary.
                }
                let set = cuts.entry(key.proto).or_default();
                set.insert(u32::from(key.ports.lo));
                set.insert(u32::from(key.ports.hi) + 1);
            }
        }
    }
    cuts.into_iter()
        .filter(|(proto, _)| {
            [
                Protocol::TCP,
                Protocol::UDP,
                Protocol::SCTP,
                Protocol::ICMP,
                Protocol::ICMPV6,
            ]
            .contains(proto)
        })
        .map(|(proto, set)| (proto, classes_of(proto, &set)))
        .collect()
}

/// The classes a protocol's cut points make of its domain (ports 1-65535; ICMP types 0-255).
fn classes_of(proto: u8, cuts: &BTreeSet<u32>) -> Vec<(u16, u16)> {
    let (lo, hi) = match proto {
        Protocol::ICMP | Protocol::ICMPV6 => (0u32, 255u32),
        _ => (1, 65535),
    };
    let mut starts: Vec<u32> = std::iter::once(lo)
        .chain(cuts.iter().copied().filter(|c| *c > lo && *c <= hi))
        .collect();
    starts.dedup();
    starts
        .iter()
        .enumerate()
        .map(|(i, &s)| {
            let end = starts.get(i + 1).map_or(hi, |next| next - 1);
            // Both are within 0..=65535 by construction.
            (s as u16, end as u16)
        })
        .collect()
}

/// Why the new policies decide a flow as they do.
fn because(r: &TraceResult) -> Vec<String> {
    let mut out = Vec::new();
    for (dir, d) in [("egress", &r.egress), ("ingress", &r.ingress)] {
        if !deciding(r, d) {
            continue;
        }
        if d.rules.is_empty() {
            if d.reason == "default-deny" {
                let at = d.endpoint.as_deref().unwrap_or("-");
                out.push(format!("default-deny at {at} ({dir})"));
            }
            continue;
        }
        out.extend(
            d.rules
                .iter()
                .map(|rule| format!("{} {} {}", rule.kind, rule.policy, rule.rule)),
        );
    }
    out.dedup();
    out
}

/// The directions that explain the verdict: for a denied flow the denying ones, for an
/// allowed flow the enforced ones.
fn deciding(r: &TraceResult, d: &DirectionTrace) -> bool {
    if r.allowed() {
        d.enforced
    } else {
        d.decision == "denied"
    }
}

/// Groups per port class into rows: equal (change, identities, protocol, flows) over adjacent
/// classes become one port range.
fn merge(
    found: BTreeMap<Found, (BTreeSet<[String; 2]>, Vec<String>)>,
    classes: &[(u8, Vec<(u16, u16)>)],
    ends: &[End],
) -> Vec<ImpactChange> {
    let class_of = |proto: u8, class: usize| {
        classes
            .iter()
            .find(|(p, _)| *p == proto)
            .and_then(|(_, c)| c.get(class).copied())
            .unwrap_or((0, 0))
    };
    let pods: BTreeSet<&str> = ends
        .iter()
        .filter(|e| e.pod)
        .map(|e| e.name.as_str())
        .collect();
    let mut out: Vec<ImpactChange> = Vec::new();
    // `found` is ordered by protocol then class, so a mergeable row is among the earlier
    // ones of the same protocol whose range ends right before this class.
    for (key, (flows, because)) in found {
        let (lo, hi) = class_of(key.proto, key.class);
        let flows: Vec<[String; 2]> = flows.into_iter().collect();
        let change = if key.allowed {
            "newly-allowed"
        } else {
            "newly-denied"
        };
        let protocol = Protocol::name_of(key.proto);
        if let Some(row) = out.iter_mut().find(|r| {
            r.change == change
                && r.protocol == protocol
                && r.source == key.source
                && r.destination == key.destination
                && u32::from(r.port_to) + 1 == u32::from(lo)
                && r.flows == flows
        }) {
            row.port_to = hi;
            continue;
        }
        let count = |side: usize| {
            flows
                .iter()
                .map(|f| f[side].as_str())
                .filter(|n| pods.contains(n))
                .collect::<BTreeSet<_>>()
                .len()
        };
        out.push(ImpactChange {
            change,
            source: key.source,
            destination: key.destination,
            protocol,
            port_from: lo,
            port_to: hi,
            source_pods: count(0),
            destination_pods: count(1),
            flows,
            because,
        });
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test
mod tests {
    use super::*;
    use crate::cluster::parse_cluster;
    use crate::parse::parse_policies;

    const CLUSTER: &str = r#"
namespaces: {x: {}, y: {}}
pods:
- {namespace: x, name: a, labels: {app: a}, ip: 10.1.0.1, nodeName: n1}
- {namespace: y, name: web1, labels: {app: web}, ip: 10.2.0.1, nodeName: n1}
- {namespace: y, name: web2, labels: {app: web}, ip: 10.2.0.2, nodeName: n2}
nodes: [{name: n1, ip: 192.168.0.1}, {name: n2, ip: 192.168.0.2}]
"#;

    const ALLOW_WEB_80: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web, namespace: y}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
  - from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: x}}}]
    ports: [{port: 80, protocol: TCP}]
"#;

    fn engine(policies: &str) -> PolicyEngine {
        let cluster = parse_cluster("c.yaml", CLUSTER).unwrap();
        let parsed = parse_policies("p.yaml", policies).unwrap();
        PolicyEngine::build(&cluster, &parsed.policies).unwrap()
    }

    #[test]
    fn nothing_changes_between_equal_sets() {
        assert!(diff(&engine(ALLOW_WEB_80), &engine(ALLOW_WEB_80)).is_empty());
    }

    #[test]
    fn isolating_the_web_pods_denies_all_but_port_80_from_x() {
        let changes = diff(&engine(""), &engine(ALLOW_WEB_80));
        assert!(
            changes.iter().all(|c| c.change == "newly-denied"),
            "{changes:#?}"
        );
        // x/a may still reach the web pods on 80/TCP and only there.
        let mut from_a_tcp: Vec<_> = changes
            .iter()
            .filter(|c| c.protocol == "TCP" && c.flows.iter().any(|f| f[0] == "x/a"))
            .map(|c| (c.port_from, c.port_to))
            .collect();
        from_a_tcp.sort();
        assert_eq!(from_a_tcp, [(1, 79), (81, 65535)], "{changes:#?}");
        let big = &changes[0];
        assert_eq!(big.destination_pods, 2);
        assert!(big
            .because
            .iter()
            .any(|b| b.starts_with("default-deny at y/web")));
        // Egress is not enforced: the web pods still reach anything.
        assert!(changes
            .iter()
            .all(|c| c.flows.iter().all(|f| f[1].starts_with("y/"))));
    }

    #[test]
    fn removing_the_policy_is_the_mirror_image() {
        let there = diff(&engine(""), &engine(ALLOW_WEB_80));
        let back = diff(&engine(ALLOW_WEB_80), &engine(""));
        assert_eq!(there.len(), back.len());
        assert!(back.iter().all(|c| c.change == "newly-allowed"));
        let flows = |v: &[ImpactChange]| {
            v.iter()
                .map(|c| (c.flows.clone(), c.protocol.clone(), c.port_from, c.port_to))
                .collect::<BTreeSet<_>>()
        };
        assert_eq!(flows(&there), flows(&back));
    }

    #[test]
    fn port_classes_cut_at_range_edges() {
        let cuts: BTreeSet<u32> = [80, 81, 8000, 8081].into_iter().collect();
        assert_eq!(
            classes_of(Protocol::TCP, &cuts),
            [(1, 79), (80, 80), (81, 7999), (8000, 8080), (8081, 65535)]
        );
        let icmp: BTreeSet<u32> = [8, 9].into_iter().collect();
        assert_eq!(
            classes_of(Protocol::ICMP, &icmp),
            [(0, 7), (8, 8), (9, 255)]
        );
    }
}
