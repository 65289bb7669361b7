//! `policy trace`: is a flow allowed, and which policies and rules decided.
//!
//! The trace resolves both ends to identities the way the dataplane does (a pod is its
//! endpoint; any other address goes through the ipcache, longest prefix first, else `world`,
//! with [`IpCache::identity_of`](dataplane::tables::ipcache::IpCache::identity_of), the
//! dataplane's own lookup over the compiler's ipcache, which is a `dataplane::tables::ipcache`),
//! then asks the sender's egress map and the receiver's ingress map through
//! [`DirectionalPolicy::lookup`](dataplane::tables::policy::DirectionalPolicy::lookup) — the
//! dataplane's own function, over the compiled maps — so the answer is what the dataplane does.
//! The cookie of the deciding entry names the rules. A side that is not a pod of the cluster
//! has no map: that direction is not enforced.
//!
//! The flow is allowed when both directions allow it.
//!
//! Two cases are decided before any map, as the cluster decides them:
//! - **Loopback.** A pod's traffic to its own address (pod A -> A's IP) is carried by the pod's
//!   own loopback and never reaches the network, so no policy can refuse it (the Kubernetes e2e
//!   suite expects it allowed under every policy): the verdict is allowed with the distinct
//!   detail [`LOOPBACK`], and neither map is consulted.
//! - **Whose host.** A node's address is `host` to the pods that run on that node and
//!   `remote-node` to every other pod (Cilium's entities; the dataplane of the pod's node gives
//!   every address of its own node `host` whatever the ipcache says). A map is asked with the
//!   remote identity as the local pod's node sees it; a pod whose node is unknown sees what the
//!   ipcache says (`remote-node`, or `host` for the agent's own node).
//!
//! **Host policies.** With [`trace_with_hosts`], a node's address is an end with a map too: its
//! host policy ([`host_policies`], Cilium's host firewall, from the host policies whose
//! `nodeSelector` selects the node's labels), asked as that node's dataplane asks it: ingress
//! for traffic to the node's address, egress for traffic from it, the other end seen from that
//! node. A node no host policy selects enforces nothing, as before.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::Serialize;

use dataplane::tables::policy::{Decision, Direction, EndpointPolicy, MatchKind};
use dataplane::Identity;

use crate::compile::PolicyEngine;
use crate::doc::{split_documents, Node};
use crate::error::Error;
use crate::icmp::IcmpFamily;
use crate::labels::Labels;
use crate::model::Protocol;

/// The verdict detail of a pod's traffic to its own address.
pub const LOOPBACK: &str = "loopback: never reaches the network";

/// One flow to explain, as written by the user.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Probe {
    /// `namespace/pod`, `node:NAME` or an IP address.
    pub from: String,
    pub to: String,
    /// The destination port; for ICMP and ICMPv6 the message type (what the policy key holds).
    pub port: u16,
    /// IP protocol number (6, 17, 132; 1 and 58 for ICMP and ICMPv6).
    pub protocol: u8,
}

/// Why a probe could not be traced.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TraceError {
    #[error("`{0}` is neither a pod of the cluster (namespace/name), a node (node:NAME) nor an IP address; check the spelling or add it to the cluster file")]
    UnknownEndpoint(String),
    #[error("`{0}` is not PORT/PROTO; write e.g. 80/TCP, 53/UDP or 3868/SCTP, or an ICMP type as 8/ICMP, EchoRequest/ICMPv6")]
    BadPort(String),
}

/// Parses `80/TCP` (protocol TCP, UDP or SCTP, any case; `80` alone means TCP), or an ICMP
/// message type as `8/ICMP`, `EchoRequest/ICMPv6` (a number or Cilium's name of the type).
pub fn parse_port_proto(s: &str) -> Result<(u16, u8), TraceError> {
    let (port, proto) = s.split_once('/').unwrap_or((s, "TCP"));
    parse_probe_port(port, proto).ok_or_else(|| TraceError::BadPort(s.to_string()))
}

/// A probe's port and protocol number from their spellings: a port of TCP, UDP or SCTP, or
/// the type (number or Cilium's name) of ICMP / ICMPv6.
pub fn parse_probe_port(port: &str, protocol: &str) -> Option<(u16, u8)> {
    let (port, protocol) = (port.trim(), protocol.trim());
    if let Some(family) = IcmpFamily::of_protocol_name(protocol) {
        let ty = family.type_of(port)?;
        return Some((u16::from(ty), family.protocol().numbers()[0]));
    }
    let port = port.parse::<u16>().ok()?;
    Some((port, Protocol::parse(protocol, false)?.numbers()[0]))
}

/// Parses a probes file: a list of `{"from", "to", "port", "protocol"}` (protocol defaults to
/// TCP; for `ICMP` / `ICMPv6` the port is the message type).
pub fn parse_probes(source: &str, text: &str) -> Result<Vec<Probe>, Error> {
    let docs = split_documents(source, text)?;
    let mut out = Vec::with_capacity(docs.len());
    for doc in &docs {
        let n = Node::root(doc);
        n.fields(&["from", "to", "port", "protocol"], &[])?;
        let from = n.required("from", "the source (namespace/pod or IP)", |v| {
            v.str().map(str::to_string)
        })?;
        let to = n.required("to", "the destination (namespace/pod or IP)", |v| {
            v.str().map(str::to_string)
        })?;
        let port = n.required("port", "the destination port (ICMP: the type)", |v| v.u16())?;
        let protocol = n
            .with_field("protocol", |v| {
                let s = v.str()?;
                Protocol::parse(s, false)
                    .map(|p| p.numbers()[0])
                    .or_else(|| IcmpFamily::of_protocol_name(s).map(|f| f.protocol().numbers()[0]))
                    .ok_or_else(|| {
                        v.error(format!(
                            "unknown protocol `{s}`; use TCP, UDP, SCTP, ICMP or ICMPv6"
                        ))
                    })
            })?
            .unwrap_or(Protocol::TCP);
        if port > u16::from(u8::MAX) && (protocol == Protocol::ICMP || protocol == Protocol::ICMPV6)
        {
            return Err(n.error(format!(
                "port {port} is not an ICMP type; for ICMP the port is the type (0-255)"
            )));
        }
        out.push(Probe {
            from,
            to,
            port,
            protocol,
        });
    }
    Ok(out)
}

/// A rule that decided, for output.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RuleRef {
    pub kind: &'static str,
    /// `namespace/name`, or `name` for cluster-wide policies.
    pub policy: String,
    /// Field path of the rule in the policy (`spec.ingress[0]`).
    pub rule: String,
}

/// The remote side as the deciding map sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Remote {
    pub identity: u32,
    /// Labels, `reserved:world`, `cidr:10.0.0.0/8`, ...
    pub description: String,
}

/// One direction's answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DirectionTrace {
    /// The endpoint whose map was consulted (`namespace/pod`, or `node:NAME` for a node's host
    /// policy); `None` when that side has no map.
    pub endpoint: Option<String>,
    pub enforced: bool,
    /// `allowed` or `denied`.
    pub decision: &'static str,
    /// `not-enforced`, `allow-rule`, `deny-rule`, `default-deny` or `loopback`.
    pub reason: &'static str,
    /// Which lookup class matched: `l3-l4`, `l4-only`, `l3-only`, `allow-all`.
    #[serde(rename = "match")]
    pub match_kind: Option<&'static str>,
    pub remote: Remote,
    /// The policies and rules behind the deciding entry (empty for default deny and not
    /// enforced).
    pub rules: Vec<RuleRef>,
}

/// The answer for one probe (the `-o json` element).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TraceResult {
    pub from: String,
    pub to: String,
    pub port: u16,
    pub protocol: String,
    /// `allowed` or `denied`.
    pub verdict: &'static str,
    /// Why the verdict needed no map, when it did not ([`LOOPBACK`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<&'static str>,
    pub egress: DirectionTrace,
    pub ingress: DirectionTrace,
}

impl TraceResult {
    pub fn allowed(&self) -> bool {
        self.verdict == "allowed"
    }
}

/// One end of a flow, resolved.
struct Side {
    /// The pod, when the end is a pod of the cluster.
    pod: Option<String>,
    /// The node the pod runs on, when known.
    pod_node: Option<String>,
    /// The node whose address this end is, when it is one.
    node_address_of: Option<String>,
    /// As the ipcache resolves it.
    identity: Identity,
}

fn resolve(engine: &PolicyEngine, who: &str) -> Result<Side, TraceError> {
    if let Some(node) = who.strip_prefix("node:") {
        let ip = engine
            .nodes()
            .find(|(n, _)| *n == node)
            .map(|(_, ip)| ip)
            .ok_or_else(|| TraceError::UnknownEndpoint(who.to_string()))?;
        return resolve(engine, &ip.to_string());
    }
    if let Ok(addr) = who.parse::<IpAddr>() {
        if let Some(pod) = engine.pod_by_ip(addr) {
            return resolve(engine, pod);
        }
        // The dataplane's identity stage: `IpCache::identity_of` over the compiled ipcache.
        let identity = engine.ipcache_table().identity_of(addr);
        return Ok(Side {
            pod: None,
            pod_node: None,
            node_address_of: engine.node_by_ip(addr).map(str::to_string),
            identity,
        });
    }
    let pod = engine
        .pod(who)
        .ok_or_else(|| TraceError::UnknownEndpoint(who.to_string()))?;
    let identity = engine
        .pod_identity(who)
        .ok_or_else(|| TraceError::UnknownEndpoint(who.to_string()))?;
    Ok(Side {
        pod: Some(who.to_string()),
        pod_node: pod.node.clone(),
        node_address_of: None,
        identity,
    })
}

/// `remote`'s identity as `local`'s node sees it: a node's address is `host` on that node
/// and `remote-node` on the others (see the module doc).
fn seen_from(local: &Side, remote: &Side) -> Identity {
    let here = local.pod_node.as_ref().or(local.node_address_of.as_ref());
    match (here, &remote.node_address_of) {
        (Some(here), Some(there)) if here == there => Identity::HOST,
        (Some(_), Some(_)) => Identity::REMOTE_NODE,
        _ => remote.identity,
    }
}

/// True when the flow is a pod's traffic to its own address.
fn is_loopback(src: &Side, dst: &Side) -> bool {
    src.pod.is_some() && src.pod == dst.pod
}

/// The host policies of nodes, by node name (see the module doc).
pub type HostPolicies = BTreeMap<String, EndpointPolicy>;

/// Every node's host policy, from its name and labels.
pub fn host_policies<'a>(
    engine: &mut PolicyEngine,
    nodes: impl IntoIterator<Item = (&'a str, &'a Labels)>,
) -> HostPolicies {
    nodes
        .into_iter()
        .map(|(name, labels)| (name.to_string(), engine.host_policy(labels)))
        .collect()
}

/// How a node's host policy is named where a pod's name would be: `node:NAME`.
pub fn host_endpoint_name(node: &str) -> String {
    format!("node:{node}")
}

/// Traces one probe through the compiled maps (nodes' addresses enforce nothing).
pub fn trace(engine: &PolicyEngine, probe: &Probe) -> Result<TraceResult, TraceError> {
    trace_with_hosts(engine, &HostPolicies::new(), probe)
}

/// Traces one probe through the compiled maps and the nodes' host policies `hosts`.
pub fn trace_with_hosts(
    engine: &PolicyEngine,
    hosts: &HostPolicies,
    probe: &Probe,
) -> Result<TraceResult, TraceError> {
    let src = resolve(engine, &probe.from)?;
    let dst = resolve(engine, &probe.to)?;
    if is_loopback(&src, &dst) {
        return Ok(loopback(engine, probe, &src));
    }
    let egress = direction(engine, hosts, &src, &dst, Direction::Egress, probe);
    let ingress = direction(engine, hosts, &dst, &src, Direction::Ingress, probe);
    let allowed = egress.decision == "allowed" && ingress.decision == "allowed";
    Ok(TraceResult {
        from: probe.from.clone(),
        to: probe.to.clone(),
        port: probe.port,
        protocol: Protocol::name_of(probe.protocol),
        verdict: if allowed { "allowed" } else { "denied" },
        detail: None,
        egress,
        ingress,
    })
}

/// The answer for a pod's traffic to itself: allowed, no map consulted.
fn loopback(engine: &PolicyEngine, probe: &Probe, pod: &Side) -> TraceResult {
    let enforced = |d| {
        pod.pod
            .as_deref()
            .and_then(|p| engine.endpoint(p))
            .is_some_and(|ep| ep.direction(d).enforced)
    };
    let side = |d| DirectionTrace {
        endpoint: pod.pod.clone(),
        enforced: enforced(d),
        decision: "allowed",
        reason: "loopback",
        match_kind: None,
        remote: Remote {
            identity: pod.identity.0,
            description: engine.identities().describe(pod.identity),
        },
        rules: Vec::new(),
    };
    TraceResult {
        from: probe.from.clone(),
        to: probe.to.clone(),
        port: probe.port,
        protocol: Protocol::name_of(probe.protocol),
        verdict: "allowed",
        detail: Some(LOOPBACK),
        egress: side(Direction::Egress),
        ingress: side(Direction::Ingress),
    }
}

/// Looks up `local`'s map (a pod's, or a node's host policy) in direction `d` for traffic
/// with `remote`.
fn direction(
    engine: &PolicyEngine,
    hosts: &HostPolicies,
    local: &Side,
    remote: &Side,
    d: Direction,
    probe: &Probe,
) -> DirectionTrace {
    let host = local
        .node_address_of
        .as_deref()
        .filter(|_| local.pod.is_none())
        .and_then(|n| hosts.get(n).map(|p| (n, p)));
    let policy = match (&local.pod, host) {
        (Some(pod), _) => engine.endpoint(pod),
        (None, Some((_, p))) => Some(p),
        (None, None) => None,
    }
    .map(|ep| ep.direction(d));
    let endpoint = local
        .pod
        .clone()
        .or_else(|| host.map(|(n, _)| host_endpoint_name(n)));
    let remote_identity = seen_from(local, remote);
    let decision = match policy {
        Some(p) => p.lookup(remote_identity, probe.protocol, probe.port),
        None => Decision::NotEnforced,
    };
    let (verdict, reason, match_kind, cookie) = match decision {
        Decision::NotEnforced => ("allowed", "not-enforced", None, None),
        Decision::Allowed { cookie, by } => ("allowed", "allow-rule", Some(by), Some(cookie)),
        Decision::DeniedByRule { cookie, by } => ("denied", "deny-rule", Some(by), Some(cookie)),
        Decision::DeniedByDefault => ("denied", "default-deny", None, None),
    };
    let rules = cookie
        .map(|c| {
            engine
                .cookie_origins(c)
                .iter()
                .map(|o| RuleRef {
                    kind: o.policy.kind.as_str(),
                    policy: o.policy.qualified_name(),
                    rule: o.rule.clone(),
                })
                .collect()
        })
        .unwrap_or_default();
    DirectionTrace {
        endpoint,
        enforced: policy.is_some_and(|p| p.enforced),
        decision: verdict,
        reason,
        match_kind: match_kind.map(match_name),
        remote: Remote {
            identity: remote_identity.0,
            description: engine.identities().describe(remote_identity),
        },
        rules,
    }
}

fn match_name(m: MatchKind) -> &'static str {
    match m {
        MatchKind::L3L4 => "l3-l4",
        MatchKind::L4Only => "l4-only",
        MatchKind::L3Only => "l3-only",
        MatchKind::AllowAll => "allow-all",
    }
}

/// A readable explanation of one result (several lines, no trailing newline).
pub fn explain(r: &TraceResult) -> String {
    let mut out = format!(
        "{} -> {} {}/{}: {}",
        r.from,
        r.to,
        r.port,
        r.protocol,
        r.verdict.to_uppercase()
    );
    if let Some(detail) = r.detail {
        out.push_str(&format!(" ({detail})"));
    }
    for (name, d) in [("egress ", &r.egress), ("ingress", &r.ingress)] {
        out.push_str(&format!("\n  {name} {}", explain_direction(name.trim(), d)));
    }
    out
}

fn explain_direction(dir: &str, d: &DirectionTrace) -> String {
    let at = d.endpoint.as_deref().unwrap_or("-");
    let remote = format!(
        "remote identity {} ({})",
        d.remote.identity, d.remote.description
    );
    let rules = d
        .rules
        .iter()
        .map(|r| format!("{} {} {}", r.kind, r.policy, r.rule))
        .collect::<Vec<_>>()
        .join("; ");
    let how = d.match_kind.unwrap_or("");
    match (d.reason, &d.endpoint) {
        ("not-enforced", None) => {
            format!("allowed: not a pod of the cluster, no {dir} policy applies")
        }
        ("not-enforced", Some(_)) => {
            format!("allowed at {at}: no policy selects {at} for {dir}")
        }
        ("loopback", _) => format!("allowed at {at}: {LOOPBACK}, no {dir} policy is consulted"),
        ("allow-rule", _) => format!("allowed at {at} by {rules} [{how} entry, {remote}]"),
        ("deny-rule", _) => format!("DENIED at {at} by {rules} [{how} entry, {remote}]"),
        _ => format!(
            "DENIED at {at}: {dir} is default-deny and no rule allows {remote} on this port"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_proto_parsing() {
        assert_eq!(parse_port_proto("80/TCP").unwrap(), (80, 6));
        assert_eq!(parse_port_proto("53/udp").unwrap(), (53, 17));
        assert_eq!(parse_port_proto("81").unwrap(), (81, 6));
        assert_eq!(parse_port_proto("3868/SCTP").unwrap(), (3868, 132));
        assert_eq!(parse_port_proto("8/ICMP").unwrap(), (8, 1));
        assert_eq!(parse_port_proto("EchoRequest/icmpv6").unwrap(), (128, 58));
        assert_eq!(parse_port_proto("Timestamp/ICMP").unwrap(), (13, 1));
        assert!(parse_port_proto("300/ICMP").is_err());
        assert!(parse_port_proto("http/TCP").is_err());
    }

    #[test]
    fn probes_file() {
        let p = parse_probes(
            "p.json",
            r#"[{"from":"x/a","to":"10.0.0.1","port":80,"protocol":"UDP"},{"from":"x/a","to":"y/b","port":81}]"#,
        )
        .unwrap();
        assert_eq!(p.len(), 2);
        assert_eq!(p[0].protocol, 17);
        assert_eq!(p[1].protocol, 6);
        let e = parse_probes("p.json", r#"[{"from":"x/a","to":"y/b"}]"#).unwrap_err();
        assert!(
            e.to_string().contains("document 1") && e.to_string().contains("`port`"),
            "{e}"
        );
    }
}
