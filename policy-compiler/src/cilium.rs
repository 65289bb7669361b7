//! `CiliumNetworkPolicy` and `CiliumClusterwideNetworkPolicy` (cilium.io/v2) into the compiler's
//! [`Policy`] model.
//!
//! Semantics, from Cilium's policy-language documentation:
//! - `spec` and/or `specs` (a list): each is a section with its own `endpointSelector`.
//! - Namespace scoping (namespaced kind only): the subject selector gets
//!   `io.kubernetes.pod.namespace = <ns>`, and so does every `fromEndpoints`/`toEndpoints`
//!   selector that does not constrain that key itself. Cluster-wide policies are not scoped.
//! - `ingress`/`ingressDeny` (resp. egress) present and non-empty: the section applies in that
//!   direction; `enableDefaultDeny.<dir>` (default true) says whether that makes the subjects
//!   default-deny. `ingress: []` is the same as no `ingress`.
//! - A rule's peers are the union of its `from*`/`to*` fields. A rule with no peer field but
//!   with `toPorts` applies to every remote; the empty rule `{}` selects nothing (so
//!   `ingress: [{}]` is "default deny, allow nothing").
//! - `toPorts[].ports[]`: `port` a number or a named port, `0`/absent meaning every port;
//!   `endPort`; `protocol` TCP, UDP, SCTP or ANY (the default).
//! - `icmps[].fields[]`: `{family: IPv4 | IPv6, type: number or name}` ([`crate::icmp`]), each
//!   an ICMP or ICMPv6 port spec whose port is the type; a rule has `toPorts` or `icmps`, not
//!   both (Cilium refuses that too); `icmps` that list no type match nothing.
//!
//! - `nodeSelector` (cluster-wide policies only) instead of `endpointSelector`: a host policy,
//!   whose subjects are nodes selected by their labels ([`crate::model::Section::hosts`]).
//!
//! Fields Cilium has but Flagella does not enforce (L7 `rules`, `toFQDNs`, `toServices`,
//! `fromRequires`, ...) are reported as warnings. An *allow* rule that contains one is
//! dropped entirely (fail closed: it allows nothing, rather than more than it says); a *deny*
//! rule that contains one is an error (dropping it would allow what it denies).

use crate::doc::Node;
use crate::error::{Error, Warning};
use crate::icmp::IcmpFamily;
use crate::labels::NAMESPACE_LABEL;
use crate::model::{
    CidrPeer, DirectionRules, Entity, Peer, Peers, Policy, PolicyId, PolicyKind, PortSel, PortSpec,
    Protocol, Rule, Section, Verdict,
};
use crate::policy_fields::{check_except, metadata, parse_cidr, DEFAULT_NAMESPACE};
use crate::selector::{strip_source, Selector};
use dataplane::tables::policy::PortRange;

/// Parses one CiliumNetworkPolicy (`clusterwide == false`) or CiliumClusterwideNetworkPolicy.
pub fn parse_cilium_policy(
    root: Node<'_>,
    clusterwide: bool,
    warnings: &mut Vec<Warning>,
) -> Result<Policy, Error> {
    let (namespace, name) = metadata(root, !clusterwide)?;
    let namespace = if clusterwide {
        None
    } else {
        Some(namespace.unwrap_or_else(|| DEFAULT_NAMESPACE.to_string()))
    };
    let id = PolicyId {
        kind: if clusterwide {
            PolicyKind::CiliumClusterwideNetworkPolicy
        } else {
            PolicyKind::CiliumNetworkPolicy
        },
        namespace: namespace.clone(),
        name,
    };
    let mut cx = Cx {
        namespace: namespace.as_deref(),
        warnings,
    };
    let mut sections = Vec::new();
    if let Some(s) = root.with_field("spec", |n| parse_section(n, &mut cx))? {
        sections.push(s);
    }
    if let Some(list) = root.with_field("specs", |n| n.items(|s| parse_section(s, &mut cx)))? {
        sections.extend(list);
    }
    if sections.is_empty() {
        return Err(root.error("a Cilium policy needs `spec` or `specs`"));
    }
    Ok(Policy { id, sections })
}

struct Cx<'w> {
    /// The policy's namespace; `None` for cluster-wide policies.
    namespace: Option<&'w str>,
    warnings: &'w mut Vec<Warning>,
}

impl Cx<'_> {
    fn warn(&mut self, n: Node<'_>, path: String, message: &str) {
        self.warnings.push(Warning {
            doc: n.doc.clone(),
            path,
            message: message.to_string(),
        });
    }

    /// Scopes an endpoint selector to the policy's namespace unless it names one itself.
    fn scope(&self, sel: Selector) -> Selector {
        match self.namespace {
            Some(ns) if !sel.constrains(NAMESPACE_LABEL) => sel.and_equals(NAMESPACE_LABEL, ns),
            _ => sel,
        }
    }
}

fn parse_section(spec: Node<'_>, cx: &mut Cx<'_>) -> Result<Section, Error> {
    let unsupported = spec.fields(
        &[
            "endpointSelector",
            "nodeSelector",
            "ingress",
            "ingressDeny",
            "egress",
            "egressDeny",
            "enableDefaultDeny",
            "labels",
            "description",
        ],
        &["log"],
    )?;
    if let Some(path) = unsupported.first() {
        return Err(crate::error::Error::field(
            spec.doc,
            path,
            "not supported by Flagella (policy logging is not implemented); remove the field",
        ));
    }
    let (subject, hosts) = parse_subject(spec, cx)?;
    let (dd_ingress, dd_egress) = spec
        .with_field("enableDefaultDeny", |n| {
            n.fields(&["ingress", "egress"], &[])?;
            Ok((
                n.with_field("ingress", |b| b.bool())?,
                n.with_field("egress", |b| b.bool())?,
            ))
        })?
        .unwrap_or((None, None));
    let ingress = direction(spec, cx, "ingress", "ingressDeny", "from", dd_ingress)?;
    let egress = direction(spec, cx, "egress", "egressDeny", "to", dd_egress)?;
    Ok(Section {
        path: spec.path().to_string(),
        subject,
        hosts,
        ingress,
        egress,
    })
}

/// The section's subject: `endpointSelector` (pods; scoped to the policy's namespace) or, in a
/// cluster-wide policy, `nodeSelector` (nodes, by their labels: a host policy), exactly one.
fn parse_subject(spec: Node<'_>, cx: &Cx<'_>) -> Result<(Selector, bool), Error> {
    let endpoints = spec.with_field("endpointSelector", |n| Selector::parse(n, &strip_source))?;
    let nodes = spec.with_field("nodeSelector", |n| Selector::parse(n, &strip_source))?;
    match (endpoints, nodes, cx.namespace) {
        (Some(selector), None, Some(ns)) => Ok((selector.and_equals(NAMESPACE_LABEL, ns), false)),
        (Some(selector), None, None) => Ok((selector, false)),
        (None, Some(_), Some(_)) => Err(Error::field(
            spec.doc,
            &spec.child_path("nodeSelector"),
            "a host policy (nodeSelector) must be a CiliumClusterwideNetworkPolicy, as in \
             Cilium; change the kind or use endpointSelector",
        )),
        (None, Some(selector), None) => Ok((selector, true)),
        (Some(_), Some(_), _) => Err(Error::field(
            spec.doc,
            &spec.child_path("nodeSelector"),
            "give endpointSelector (pods) or nodeSelector (nodes), not both",
        )),
        (None, None, _) => Err(spec.error(
            "a section needs endpointSelector ({} selects every endpoint) or, cluster-wide, \
             nodeSelector (a host policy)",
        )),
    }
}

fn direction(
    spec: Node<'_>,
    cx: &mut Cx<'_>,
    allow_field: &str,
    deny_field: &str,
    peer_prefix: &str,
    default_deny: Option<bool>,
) -> Result<DirectionRules, Error> {
    let allow = spec
        .with_field(allow_field, |n| {
            n.items(|r| parse_rule(r, cx, peer_prefix, Verdict::Allow))
        })?
        .unwrap_or_default();
    let deny = spec
        .with_field(deny_field, |n| {
            n.items(|r| parse_rule(r, cx, peer_prefix, Verdict::Deny))
        })?
        .unwrap_or_default();
    let has_rules = !allow.is_empty() || !deny.is_empty();
    let applies = has_rules || default_deny == Some(true);
    Ok(DirectionRules {
        applies,
        default_deny: applies && default_deny.unwrap_or(true),
        rules: allow.into_iter().chain(deny).flatten().collect(),
    })
}

/// Parses one rule; `None` when it was dropped for an unsupported field (already warned).
fn parse_rule(
    rule: Node<'_>,
    cx: &mut Cx<'_>,
    prefix: &str,
    verdict: Verdict,
) -> Result<Option<Rule>, Error> {
    let f = |s: &str| format!("{prefix}{s}");
    let (endpoints, cidr, cidr_set, entities) =
        (f("Endpoints"), f("CIDR"), f("CIDRSet"), f("Entities"));
    let (requires, groups, nodes) = (f("Requires"), f("Groups"), f("Nodes"));
    let mut unsupported_fields = vec![
        requires.as_str(),
        groups.as_str(),
        nodes.as_str(),
        "authentication",
    ];
    if prefix == "to" {
        unsupported_fields.extend(["toFQDNs", "toServices"]);
    }
    let mut unsupported = rule.fields(
        &[&endpoints, &cidr, &cidr_set, &entities, "toPorts", "icmps"],
        &unsupported_fields,
    )?;

    let mut peers: Vec<Peer> = Vec::new();
    let mut any_peer_field = false;
    if let Some(sels) = rule.with_field(&endpoints, |n| {
        n.items(|s| Selector::parse(s, &strip_source))
    })? {
        any_peer_field |= !sels.is_empty();
        peers.extend(sels.into_iter().map(|s| Peer::Endpoints(cx.scope(s))));
    }
    if let Some(list) = rule.with_field(&cidr, |n| n.items(parse_cidr))? {
        any_peer_field |= !list.is_empty();
        peers.extend(list.into_iter().map(|cidr| {
            Peer::Cidr(CidrPeer {
                cidr,
                except: Vec::new(),
                match_pods: false,
            })
        }));
    }
    if let Some(list) = rule.with_field(&cidr_set, |n| {
        n.items(|c| parse_cidr_set(c, &mut unsupported))
    })? {
        any_peer_field |= !list.is_empty();
        peers.extend(list.into_iter().flatten().map(Peer::Cidr));
    }
    if let Some(list) = rule.with_field(&entities, |n| {
        n.items(|e| {
            let name = e.str()?;
            match Entity::parse(name) {
                Some(ent) => Ok(Some(ent)),
                None if matches!(name, "kube-apiserver" | "ingress") => {
                    unsupported.push(e.path().to_string());
                    Ok(None)
                }
                None => Err(e.error(format!(
                    "unknown entity `{name}`; use world, cluster, host, remote-node, health, \
                     init, unmanaged or all"
                ))),
            }
        })
    })? {
        any_peer_field |= !list.is_empty();
        peers.extend(list.into_iter().flatten().map(Peer::Entity));
    }
    let ports = rule
        .with_field("toPorts", |n| {
            n.items(|p| parse_port_rule(p, &mut unsupported))
        })?
        .unwrap_or_default();
    let icmp_blocks = rule
        .with_field("icmps", |n| n.items(parse_icmp_rule))?
        .unwrap_or_default();
    if !ports.is_empty() && !icmp_blocks.is_empty() {
        // Cilium refuses the combination too: which one would a packet have to match?
        return Err(Error::field(
            rule.doc,
            &rule.child_path("icmps"),
            "icmps may only be given without toPorts (as in Cilium); put the toPorts in a \
             separate rule",
        ));
    }
    let has_ports = !ports.is_empty() || !icmp_blocks.is_empty();
    let ports: Vec<PortSpec> = ports.into_iter().chain(icmp_blocks).flatten().collect();

    if !unsupported.is_empty() {
        if verdict == Verdict::Deny {
            return Err(Error::field(
                rule.doc,
                &unsupported[0],
                "not supported by Flagella in a deny rule, and ignoring it would allow what the \
                 rule denies; remove the field or the rule",
            ));
        }
        for path in unsupported {
            cx.warn(
                rule,
                path,
                "not supported by Flagella: the whole rule is ignored (it allows nothing)",
            );
        }
        return Ok(None);
    }
    if has_ports && ports.is_empty() {
        // `icmps` whose blocks list no type: an L4 part that matches nothing (Cilium adds no
        // entry either), not the "every port" of a rule without one.
        return Ok(None);
    }
    let peers = if any_peer_field {
        Peers::Only(peers)
    } else if has_ports {
        Peers::All
    } else {
        // The empty rule `{}`: selects no remote.
        Peers::Only(Vec::new())
    };
    Ok(Some(Rule {
        path: rule.path().to_string(),
        verdict,
        peers,
        ports,
    }))
}

fn parse_cidr_set(n: Node<'_>, unsupported: &mut Vec<String>) -> Result<Option<CidrPeer>, Error> {
    let found = n.fields(&["cidr", "except"], &["cidrGroupRef", "cidrGroupSelector"])?;
    if !found.is_empty() {
        unsupported.extend(found);
        return Ok(None);
    }
    let cidr = n.required("cidr", "the CIDR (e.g. 10.0.0.0/16)", parse_cidr)?;
    let except = n
        .with_field("except", |e| e.items(parse_cidr))?
        .unwrap_or_default();
    check_except(n, &cidr, &except)?;
    Ok(Some(CidrPeer {
        cidr,
        except,
        match_pods: false,
    }))
}

/// One `toPorts` item: its port specs (an empty `ports` list means every port).
fn parse_port_rule(n: Node<'_>, unsupported: &mut Vec<String>) -> Result<Vec<PortSpec>, Error> {
    let found = n.fields(
        &["ports"],
        &[
            "rules",
            "terminatingTLS",
            "originatingTLS",
            "serverNames",
            "listener",
        ],
    )?;
    unsupported.extend(found);
    let ports = n
        .with_field("ports", |p| p.items(parse_port_protocol))?
        .unwrap_or_default();
    if ports.is_empty() {
        return Ok(vec![PortSpec {
            protocol: Protocol::Any,
            port: PortSel::All,
        }]);
    }
    Ok(ports)
}

/// One `icmps` item: `fields`, a list of `{family: IPv4 | IPv6 (default IPv4), type: number or
/// Cilium's name}`; each is the message type in the port of an ICMP or ICMPv6 key.
fn parse_icmp_rule(n: Node<'_>) -> Result<Vec<PortSpec>, Error> {
    n.fields(&["fields"], &[])?;
    Ok(n.with_field("fields", |f| f.items(parse_icmp_field))?
        .unwrap_or_default())
}

fn parse_icmp_field(n: Node<'_>) -> Result<PortSpec, Error> {
    n.fields(&["family", "type"], &[])?;
    let family = n
        .with_field("family", |f| {
            let s = f.str()?;
            IcmpFamily::parse(s)
                .ok_or_else(|| f.error(format!("unknown family `{s}`; use IPv4 or IPv6")))
        })?
        .unwrap_or(IcmpFamily::V4);
    let ty = n.required(
        "type",
        "the ICMP type (a number 0-255 or a name such as EchoRequest)",
        |t| {
            let text = match t.value {
                serde_json::Value::Number(num) => num.to_string(),
                _ => t.str()?.to_string(),
            };
            family.type_of(&text).ok_or_else(|| {
                t.error(format!(
                    "unknown ICMP type `{text}` for {}; use a number 0-255 or one of \
                     {}",
                    family.name(),
                    family.name_list()
                ))
            })
        },
    )?;
    Ok(PortSpec {
        protocol: family.protocol(),
        port: PortSel::Range(PortRange::single(u16::from(ty))),
    })
}

fn parse_port_protocol(n: Node<'_>) -> Result<PortSpec, Error> {
    n.fields(&["port", "endPort", "protocol"], &[])?;
    let protocol = n
        .with_field("protocol", |p| {
            let s = p.str()?;
            Protocol::parse(s, true).ok_or_else(|| {
                p.error(format!("unknown protocol `{s}`; use TCP, UDP, SCTP or ANY"))
            })
        })?
        .unwrap_or(Protocol::Any);
    let port = n.with_field("port", |p| match p.value {
        serde_json::Value::String(s) if s.parse::<u16>().is_err() => {
            if s.is_empty() {
                Ok(PortSel::All)
            } else {
                Ok(PortSel::Named(s.clone()))
            }
        }
        _ => p.u16().map(|v| {
            if v == 0 {
                PortSel::All
            } else {
                PortSel::Range(PortRange::single(v))
            }
        }),
    })?;
    let end = n.with_field("endPort", |p| p.u16())?;
    let port = match (port.unwrap_or(PortSel::All), end) {
        (p, None) | (p @ PortSel::All, Some(0)) => p,
        (PortSel::Range(r), Some(end)) => PortRange::new(r.lo, end)
            .map(PortSel::Range)
            .ok_or_else(|| n.error(format!("endPort {end} is below port {}", r.lo)))?,
        (_, Some(_)) => return Err(n.error("endPort needs a numeric, non-zero `port`")),
    };
    Ok(PortSpec { protocol, port })
}

#[cfg(test)]
mod tests {
    use crate::labels::NAMESPACE_LABEL;
    use crate::model::{Entity, Peer, Peers, PortSel, Protocol, Verdict};
    use crate::parse::{parse_policies, ParsedPolicies};
    use dataplane::tables::policy::PortRange;

    fn cnp(spec: &str) -> Result<ParsedPolicies, crate::Error> {
        let text = format!(
            "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {{name: p, namespace: x}}\nspec:\n  endpointSelector: {{}}\n{spec}"
        );
        parse_policies("p.yaml", &text)
    }

    #[test]
    fn empty_rule_selects_nothing_empty_list_does_not_apply() {
        let p = cnp("  ingress: [{}]\n").unwrap();
        let s = &p.policies[0].sections[0];
        assert!(s.ingress.applies && s.ingress.default_deny);
        assert_eq!(s.ingress.rules[0].peers, Peers::Only(vec![]));
        let p = cnp("  ingress: []\n").unwrap();
        assert!(!p.policies[0].sections[0].ingress.applies);
    }

    #[test]
    fn ports_only_rule_applies_to_every_peer() {
        let p = cnp("  ingress:\n  - toPorts: [{ports: [{port: '80'}]}]\n").unwrap();
        let r = &p.policies[0].sections[0].ingress.rules[0];
        assert_eq!(r.peers, Peers::All);
        assert_eq!(r.ports[0].protocol, Protocol::Any);
        assert!(matches!(r.ports[0].port, PortSel::Range(p) if p.lo == 80));
    }

    #[test]
    fn namespace_scoping() {
        let p = cnp(
            "  ingress:\n  - fromEndpoints:\n    - {}\n    - matchLabels: {'k8s:io.kubernetes.pod.namespace': y}\n",
        )
        .unwrap();
        let s = &p.policies[0].sections[0];
        assert_eq!(s.subject.to_string(), format!("{NAMESPACE_LABEL}=x"));
        let Peers::Only(peers) = &s.ingress.rules[0].peers else {
            panic!()
        };
        let names: Vec<String> = peers
            .iter()
            .map(|p| match p {
                Peer::Endpoints(s) => s.to_string(),
                _ => panic!(),
            })
            .collect();
        assert_eq!(
            names,
            vec![
                format!("{NAMESPACE_LABEL}=x"),
                format!("{NAMESPACE_LABEL}=y")
            ]
        );
        // Cluster-wide policies are not scoped.
        let ccnp = "apiVersion: cilium.io/v2\nkind: CiliumClusterwideNetworkPolicy\nmetadata: {name: c}\nspec:\n  endpointSelector: {}\n  egress:\n  - toEndpoints: [{}]\n";
        let p = parse_policies("c.yaml", ccnp).unwrap();
        let s = &p.policies[0].sections[0];
        assert!(s.subject.is_everything());
        assert_eq!(
            s.egress.rules[0].peers,
            Peers::Only(vec![Peer::Endpoints(Default::default())])
        );
    }

    #[test]
    fn enable_default_deny_and_deny_rules() {
        let p = cnp(
            "  enableDefaultDeny: {ingress: false}\n  ingressDeny:\n  - fromEntities: [world]\n",
        )
        .unwrap();
        let s = &p.policies[0].sections[0];
        assert!(s.ingress.applies && !s.ingress.default_deny);
        assert_eq!(s.ingress.rules[0].verdict, Verdict::Deny);
        assert_eq!(
            s.ingress.rules[0].peers,
            Peers::Only(vec![Peer::Entity(Entity::World)])
        );
    }

    #[test]
    fn unsupported_fields_warn_and_drop_the_allow_rule() {
        let p = cnp(
            "  egress:\n  - toFQDNs: [{matchName: example.com}]\n    toPorts: [{ports: [{port: '443'}]}]\n  - toEntities: [world]\n",
        )
        .unwrap();
        assert_eq!(p.warnings.len(), 1);
        assert_eq!(p.warnings[0].path, "spec.egress[0].toFQDNs");
        let rules = &p.policies[0].sections[0].egress.rules;
        assert_eq!(rules.len(), 1, "the FQDN rule is dropped, the other kept");
        assert_eq!(rules[0].path, "spec.egress[1]");
        let p = cnp("  ingress:\n  - toPorts: [{ports: [{port: '80'}], rules: {http: [{}]}}]\n")
            .unwrap();
        assert_eq!(p.warnings[0].path, "spec.ingress[0].toPorts[0].rules");
        assert!(p.policies[0].sections[0].ingress.applies);
        assert!(p.policies[0].sections[0].ingress.rules.is_empty());
    }

    #[test]
    fn icmp_rules_by_number_and_name_in_both_families() {
        let p = cnp(
            "  ingress:\n  - fromEndpoints: [{}]\n    icmps:\n    - fields:\n      - {type: 8, family: IPv4}\n      - {type: EchoRequest, family: IPv6}\n      - {type: '13'}\n",
        )
        .unwrap();
        assert!(p.warnings.is_empty(), "{:?}", p.warnings);
        let r = &p.policies[0].sections[0].ingress.rules[0];
        let specs: Vec<(Protocol, PortSel)> = r
            .ports
            .iter()
            .map(|s| (s.protocol, s.port.clone()))
            .collect();
        let one = |t| PortSel::Range(PortRange::single(t));
        assert_eq!(
            specs,
            vec![
                (Protocol::Icmp, one(8)),
                (Protocol::Icmpv6, one(128)),
                (Protocol::Icmp, one(13)),
            ]
        );
        // Without a peer field, like toPorts alone: every remote.
        let p = cnp("  egressDeny:\n  - icmps: [{fields: [{type: TimeExceeded}]}]\n").unwrap();
        let r = &p.policies[0].sections[0].egress.rules[0];
        assert_eq!((r.verdict, &r.peers), (Verdict::Deny, &Peers::All));
        assert_eq!(r.ports[0].port, one(11));
    }

    #[test]
    fn icmp_rules_that_list_no_type_allow_nothing() {
        let p = cnp("  ingress:\n  - fromEndpoints: [{}]\n    icmps: [{fields: []}]\n").unwrap();
        let s = &p.policies[0].sections[0];
        assert!(s.ingress.applies && s.ingress.default_deny);
        assert!(s.ingress.rules.is_empty(), "not an L3 allow of every port");
    }

    #[test]
    fn bad_icmp_rules_are_errors() {
        for (spec, expect) in [
            (
                "icmps: [{fields: [{type: 256}]}]",
                "unknown ICMP type `256`",
            ),
            (
                "icmps: [{fields: [{type: NeighborSolicitation}]}]",
                "for IPv4",
            ),
            (
                "icmps: [{fields: [{type: 8, family: ipv4}]}]",
                "unknown family",
            ),
            ("icmps: [{fields: [{family: IPv4}]}]", "fields[0].type"),
            ("icmps: [{fields: [{type: 8, code: 0}]}]", "code"),
            (
                "icmps: [{fields: [{type: 8}]}]\n    toPorts: [{ports: [{port: '80'}]}]",
                "without toPorts",
            ),
        ] {
            let e = cnp(&format!("  ingress:\n  - {spec}\n")).unwrap_err();
            assert!(e.to_string().contains(expect), "{spec}: {e}");
        }
    }

    #[test]
    fn unsupported_fields_in_deny_rules_are_errors() {
        let e = cnp("  egressDeny:\n  - toEntities: [kube-apiserver]\n").unwrap_err();
        assert!(
            e.to_string().contains("spec.egressDeny[0].toEntities[0]"),
            "{e}"
        );
    }

    #[test]
    fn bad_input_errors() {
        let e = cnp("  ingress:\n  - fromEntities: [moon]\n").unwrap_err();
        assert!(e.to_string().contains("unknown entity"), "{e}");
        let e = cnp("  ingress:\n  - fromEndpoint: [{}]\n").unwrap_err();
        assert!(
            e.to_string().contains("spec.ingress[0].fromEndpoint")
                && e.to_string().contains("unknown field"),
            "{e}"
        );
        let e =
            cnp("  ingress:\n  - toPorts: [{ports: [{port: '80', endPort: 70}]}]\n").unwrap_err();
        assert!(e.to_string().contains("endPort 70 is below"), "{e}");
        let e = parse_policies("c.yaml", "apiVersion: cilium.io/v2\nkind: CiliumClusterwideNetworkPolicy\nmetadata: {name: c, namespace: x}\nspec: {endpointSelector: {}}\n").unwrap_err();
        assert!(e.to_string().contains("metadata.namespace"), "{e}");
    }

    #[test]
    fn specs_list_gives_sections_with_paths() {
        let text = "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: p, namespace: x}\nspecs:\n- endpointSelector: {}\n  ingress: [{}]\n- endpointSelector: {matchLabels: {a: b}}\n  egress: [{}]\n";
        let p = parse_policies("p.yaml", text).unwrap();
        let paths: Vec<&str> = p.policies[0]
            .sections
            .iter()
            .map(|s| s.path.as_str())
            .collect();
        assert_eq!(paths, vec!["specs[0]", "specs[1]"]);
    }
}
