//! Differential test: on random clusters and random Kubernetes NetworkPolicies, the verdicts
//! read from the compiled maps (through `trace`, i.e. the dataplane's lookup) equal those of a
//! small reference evaluator written straight from the NetworkPolicy API documentation, which
//! works on pods and addresses directly (no identities, no maps).
//!
//! The generators stay inside what identity-based enforcement can express exactly: ipBlocks
//! are namespace-granular (an identity never straddles a block boundary) and a named port's
//! number is a function of the pod's labels (pods sharing an identity agree on it). Both limits
//! are documented in docs/policy-semantics.md and tested on their own in the unit tests.

#![allow(clippy::unwrap_used)] // a test: a failed unwrap is a failed test

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use proptest::prelude::*;
use serde_json::{json, Value};

use policy_compiler::trace::{trace, Probe};
use policy_compiler::{parse_cluster, parse_policies, PolicyEngine};

const NAMESPACES: [&str; 3] = ["n0", "n1", "n2"];

#[derive(Clone, Debug)]
struct Pod {
    ns: usize,
    name: String,
    labels: BTreeMap<String, String>,
    ip: Ipv4Addr,
}

impl Pod {
    /// The number behind the named port `p` (TCP): a function of the labels.
    fn named_port(&self) -> u16 {
        if self.labels.get("tier").map(String::as_str) == Some("x") {
            80
        } else {
            81
        }
    }
}

#[derive(Clone, Debug)]
enum Op {
    In(Vec<String>),
    NotIn(Vec<String>),
    Exists,
    DoesNotExist,
}

#[derive(Clone, Debug)]
struct Sel {
    match_labels: BTreeMap<String, String>,
    expr: Option<(String, Op)>,
}

impl Sel {
    fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.match_labels
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
            && self.expr.as_ref().is_none_or(|(k, op)| {
                let v = labels.get(k);
                match op {
                    Op::In(vs) => v.is_some_and(|v| vs.contains(v)),
                    Op::NotIn(vs) => v.is_none_or(|v| !vs.contains(v)),
                    Op::Exists => v.is_some(),
                    Op::DoesNotExist => v.is_none(),
                }
            })
    }

    fn to_json(&self) -> Value {
        let mut o = serde_json::Map::new();
        if !self.match_labels.is_empty() {
            o.insert("matchLabels".into(), json!(self.match_labels));
        }
        if let Some((k, op)) = &self.expr {
            let (name, values) = match op {
                Op::In(v) => ("In", Some(v)),
                Op::NotIn(v) => ("NotIn", Some(v)),
                Op::Exists => ("Exists", None),
                Op::DoesNotExist => ("DoesNotExist", None),
            };
            let mut e = json!({"key": k, "operator": name});
            if let Some(v) = values {
                e["values"] = json!(v);
            }
            o.insert("matchExpressions".into(), json!([e]));
        }
        Value::Object(o)
    }
}

#[derive(Clone, Debug)]
enum Peer {
    Pods(Sel),
    Namespaces(Sel),
    Both(Sel, Sel),
    /// 10.0.0.0/16 except the given namespaces' /24s, or one namespace's /24.
    Block {
        ns: Option<usize>,
        except: Vec<usize>,
    },
}

#[derive(Clone, Debug)]
enum PortSel {
    Number(u16),
    Range(u16, u16),
    Named,
    All,
}

#[derive(Clone, Debug)]
struct PortSpec {
    udp: bool,
    port: PortSel,
}

#[derive(Clone, Debug)]
struct Rule {
    peers: Option<Vec<Peer>>,
    ports: Option<Vec<PortSpec>>,
}

#[derive(Clone, Debug)]
struct Policy {
    ns: usize,
    subject: Sel,
    types: Option<(bool, bool)>,
    ingress: Option<Vec<Rule>>,
    egress: Option<Vec<Rule>>,
}

impl Policy {
    /// policyTypes as the API server defaults them.
    fn types(&self) -> (bool, bool) {
        match self.types {
            Some(t) if t.0 || t.1 => t,
            _ => (true, self.egress.as_ref().is_some_and(|e| !e.is_empty())),
        }
    }
}

// ---- the reference evaluator: the API documentation, read literally --------------------

/// One end of a flow: a pod, or an address outside the cluster.
#[derive(Clone, Debug)]
enum End {
    Pod(usize),
    Outside(Ipv4Addr),
}

#[derive(Clone, Debug)]
struct Cluster {
    ns_labels: Vec<BTreeMap<String, String>>,
    pods: Vec<Pod>,
}

impl Cluster {
    fn ip(&self, e: &End) -> Ipv4Addr {
        match e {
            End::Pod(i) => self.pods[*i].ip,
            End::Outside(a) => *a,
        }
    }

    fn ns_block(ns: usize) -> (u32, u32) {
        (u32::from(Ipv4Addr::new(10, 0, ns as u8, 0)), 24)
    }

    fn in_block(ip: Ipv4Addr, (net, len): (u32, u32)) -> bool {
        let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
        u32::from(ip) & mask == net & mask
    }

    /// Does `peer` (in a policy of namespace `policy_ns`) match the remote end `e`?
    fn peer_matches(&self, peer: &Peer, policy_ns: usize, e: &End) -> bool {
        match (peer, e) {
            (Peer::Pods(s), End::Pod(i)) => {
                self.pods[*i].ns == policy_ns && s.matches(&self.pods[*i].labels)
            }
            (Peer::Namespaces(s), End::Pod(i)) => s.matches(&self.ns_labels[self.pods[*i].ns]),
            (Peer::Both(p, n), End::Pod(i)) => {
                p.matches(&self.pods[*i].labels) && n.matches(&self.ns_labels[self.pods[*i].ns])
            }
            (Peer::Block { ns, except }, _) => {
                let ip = self.ip(e);
                let cidr = match ns {
                    Some(n) => Self::ns_block(*n),
                    None => (u32::from(Ipv4Addr::new(10, 0, 0, 0)), 16),
                };
                Self::in_block(ip, cidr)
                    && !except
                        .iter()
                        .any(|x| Self::in_block(ip, Self::ns_block(*x)))
            }
            _ => false,
        }
    }

    /// Does a rule's port list admit (`port`, `udp`) towards destination `dst`?
    fn port_matches(&self, ports: &Option<Vec<PortSpec>>, dst: &End, port: u16, udp: bool) -> bool {
        let Some(ports) = ports.as_ref().filter(|p| !p.is_empty()) else {
            return true;
        };
        ports.iter().any(|p| {
            p.udp == udp
                && match p.port {
                    PortSel::All => true,
                    PortSel::Number(n) => n == port,
                    PortSel::Range(lo, hi) => lo <= port && port <= hi,
                    // Named ports are TCP in the generated pods.
                    PortSel::Named => match dst {
                        End::Pod(i) => !udp && self.pods[*i].named_port() == port,
                        End::Outside(_) => false,
                    },
                }
        })
    }

    /// Is the direction (`ingress` at `local`, or egress) allowed for traffic with `remote`?
    fn direction_allows(
        &self,
        policies: &[Policy],
        local: &End,
        remote: &End,
        ingress: bool,
        dst: &End,
        (port, udp): (u16, bool),
    ) -> bool {
        let End::Pod(i) = local else {
            return true; // not a pod: no policy applies
        };
        let pod = &self.pods[*i];
        let selecting: Vec<&Policy> = policies
            .iter()
            .filter(|p| p.ns == pod.ns && p.subject.matches(&pod.labels))
            .filter(|p| if ingress { p.types().0 } else { p.types().1 })
            .collect();
        if selecting.is_empty() {
            return true;
        }
        selecting.iter().any(|p| {
            let rules = if ingress { &p.ingress } else { &p.egress };
            rules.iter().flatten().any(|r| {
                let peer_ok = match r.peers.as_ref().filter(|l| !l.is_empty()) {
                    None => true,
                    Some(list) => list
                        .iter()
                        .any(|peer| self.peer_matches(peer, p.ns, remote)),
                };
                peer_ok && self.port_matches(&r.ports, dst, port, udp)
            })
        })
    }

    fn allowed(&self, policies: &[Policy], src: &End, dst: &End, port: u16, udp: bool) -> bool {
        // A pod's traffic to its own address goes over its loopback: no policy sees it.
        if matches!((src, dst), (End::Pod(a), End::Pod(b)) if a == b) {
            return true;
        }
        self.direction_allows(policies, src, dst, false, dst, (port, udp))
            && self.direction_allows(policies, dst, src, true, dst, (port, udp))
    }
}

// ---- generators ----------------------------------------------------------------------

fn arb_labels() -> impl Strategy<Value = BTreeMap<String, String>> {
    (
        prop::option::of(prop_oneof![Just("a"), Just("b"), Just("c")]),
        prop::option::of(prop_oneof![Just("x"), Just("y")]),
    )
        .prop_map(|(app, tier)| {
            let mut m = BTreeMap::new();
            if let Some(a) = app {
                m.insert("app".to_string(), a.to_string());
            }
            if let Some(t) = tier {
                m.insert("tier".to_string(), t.to_string());
            }
            m
        })
}

fn arb_sel() -> impl Strategy<Value = Sel> {
    let key = prop_oneof![Just("app"), Just("tier"), Just("team")];
    let value = prop_oneof![Just("a"), Just("b"), Just("x"), Just("y")];
    let values = prop::collection::vec(value.clone(), 1..3)
        .prop_map(|v| v.into_iter().map(String::from).collect::<Vec<_>>());
    let op = prop_oneof![
        values.clone().prop_map(Op::In),
        values.prop_map(Op::NotIn),
        Just(Op::Exists),
        Just(Op::DoesNotExist),
    ];
    (
        prop::collection::btree_map(
            key.clone().prop_map(String::from),
            value.prop_map(String::from),
            0..2,
        ),
        prop::option::weighted(0.4, (key.prop_map(String::from), op)),
    )
        .prop_map(|(match_labels, expr)| Sel { match_labels, expr })
}

fn arb_peer() -> impl Strategy<Value = Peer> {
    prop_oneof![
        arb_sel().prop_map(Peer::Pods),
        arb_sel().prop_map(Peer::Namespaces),
        (arb_sel(), arb_sel()).prop_map(|(p, n)| Peer::Both(p, n)),
        (
            prop::option::of(0usize..3),
            prop::collection::vec(0usize..3, 0..2)
        )
            .prop_map(|(ns, except)| {
                // An except must lie inside the cidr: only the /16 takes excepts.
                let except = if ns.is_some() { Vec::new() } else { except };
                Peer::Block { ns, except }
            }),
    ]
}

fn arb_port() -> impl Strategy<Value = PortSpec> {
    (
        any::<bool>(),
        prop_oneof![
            (80u16..82).prop_map(PortSel::Number),
            Just(PortSel::Range(80, 81)),
            Just(PortSel::Named),
            Just(PortSel::All),
        ],
    )
        .prop_map(|(udp, port)| PortSpec { udp, port })
}

fn arb_rule() -> impl Strategy<Value = Rule> {
    (
        prop::option::of(prop::collection::vec(arb_peer(), 0..3)),
        prop::option::of(prop::collection::vec(arb_port(), 0..3)),
    )
        .prop_map(|(peers, ports)| Rule { peers, ports })
}

fn arb_policy() -> impl Strategy<Value = Policy> {
    (
        0usize..3,
        arb_sel(),
        prop::option::of((any::<bool>(), any::<bool>())),
        prop::option::of(prop::collection::vec(arb_rule(), 0..3)),
        prop::option::of(prop::collection::vec(arb_rule(), 0..3)),
    )
        .prop_map(|(ns, subject, types, ingress, egress)| Policy {
            ns,
            subject,
            types,
            ingress,
            egress,
        })
}

fn arb_world() -> impl Strategy<Value = (Cluster, Vec<Policy>)> {
    (
        prop::collection::vec(
            prop::collection::btree_map(
                prop_oneof![Just("team"), Just("env")].prop_map(String::from),
                prop_oneof![Just("a"), Just("b")].prop_map(String::from),
                0..2,
            ),
            3,
        ),
        prop::collection::vec((0usize..3, arb_labels()), 1..7),
        prop::collection::vec(arb_policy(), 1..4),
    )
        .prop_map(|(ns_labels, pods, policies)| {
            let pods = pods
                .into_iter()
                .enumerate()
                .map(|(i, (ns, labels))| Pod {
                    ns,
                    name: format!("p{i}"),
                    labels,
                    ip: Ipv4Addr::new(10, 0, ns as u8, i as u8 + 1),
                })
                .collect();
            (Cluster { ns_labels, pods }, policies)
        })
}

// ---- rendering to the real input formats ------------------------------------------------

fn cluster_json(c: &Cluster) -> String {
    let namespaces: serde_json::Map<String, Value> = NAMESPACES
        .iter()
        .zip(&c.ns_labels)
        .map(|(n, l)| (n.to_string(), json!(l)))
        .collect();
    let pods: Vec<Value> = c
        .pods
        .iter()
        .map(|p| {
            json!({"namespace": NAMESPACES[p.ns], "name": p.name, "labels": p.labels,
                   "ip": p.ip.to_string(),
                   "ports": [{"name": "p", "containerPort": p.named_port(), "protocol": "TCP"}]})
        })
        .collect();
    json!({"namespaces": namespaces, "pods": pods, "nodes": []}).to_string()
}

fn peer_json(p: &Peer) -> Value {
    match p {
        Peer::Pods(s) => json!({"podSelector": s.to_json()}),
        Peer::Namespaces(s) => json!({"namespaceSelector": s.to_json()}),
        Peer::Both(p, n) => json!({"podSelector": p.to_json(), "namespaceSelector": n.to_json()}),
        Peer::Block { ns: Some(n), .. } => json!({"ipBlock": {"cidr": format!("10.0.{n}.0/24")}}),
        Peer::Block { ns: None, except } => json!({"ipBlock": {
            "cidr": "10.0.0.0/16",
            "except": except.iter().map(|x| format!("10.0.{x}.0/24")).collect::<Vec<_>>()}}),
    }
}

fn rule_json(r: &Rule, peers_field: &str) -> Value {
    let mut o = serde_json::Map::new();
    if let Some(peers) = &r.peers {
        o.insert(peers_field.into(), peers.iter().map(peer_json).collect());
    }
    if let Some(ports) = &r.ports {
        let list: Vec<Value> = ports
            .iter()
            .map(|p| {
                let proto = if p.udp { "UDP" } else { "TCP" };
                match p.port {
                    PortSel::Number(n) => json!({"protocol": proto, "port": n}),
                    PortSel::Range(lo, hi) => json!({"protocol": proto, "port": lo, "endPort": hi}),
                    PortSel::Named => json!({"protocol": proto, "port": "p"}),
                    PortSel::All => json!({"protocol": proto}),
                }
            })
            .collect();
        o.insert("ports".into(), Value::Array(list));
    }
    Value::Object(o)
}

fn policies_json(policies: &[Policy]) -> String {
    let items: Vec<Value> = policies
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let mut spec = json!({"podSelector": p.subject.to_json()});
            if let Some((ing, eg)) = p.types {
                let mut t = Vec::new();
                if ing {
                    t.push("Ingress");
                }
                if eg {
                    t.push("Egress");
                }
                spec["policyTypes"] = json!(t);
            }
            if let Some(rules) = &p.ingress {
                spec["ingress"] = rules.iter().map(|r| rule_json(r, "from")).collect();
            }
            if let Some(rules) = &p.egress {
                spec["egress"] = rules.iter().map(|r| rule_json(r, "to")).collect();
            }
            json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                   "metadata": {"name": format!("p{i}"), "namespace": NAMESPACES[p.ns]},
                   "spec": spec})
        })
        .collect();
    json!({"apiVersion": "v1", "kind": "List", "items": items}).to_string()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn compiled_maps_agree_with_the_reference((cluster, policies) in arb_world()) {
        let parsed_cluster = parse_cluster("cluster.json", &cluster_json(&cluster)).unwrap();
        let parsed = parse_policies("policies.json", &policies_json(&policies)).unwrap();
        let engine = PolicyEngine::build(&parsed_cluster, &parsed.policies).unwrap();

        let mut ends: Vec<End> = (0..cluster.pods.len()).map(End::Pod).collect();
        ends.push(End::Outside(Ipv4Addr::new(10, 0, 9, 9))); // inside 10.0.0.0/16, no namespace
        ends.push(End::Outside(Ipv4Addr::new(10, 0, 1, 200))); // inside n1's block, not a pod
        ends.push(End::Outside(Ipv4Addr::new(8, 8, 8, 8)));
        let name = |e: &End| match e {
            End::Pod(i) => format!("{}/{}", NAMESPACES[cluster.pods[*i].ns], cluster.pods[*i].name),
            End::Outside(a) => a.to_string(),
        };
        for src in &ends {
            for dst in &ends {
                if matches!((src, dst), (End::Outside(_), End::Outside(_))) {
                    continue;
                }
                for (port, udp) in [(80u16, false), (81, false), (80, true), (81, true)] {
                    let probe = Probe { from: name(src), to: name(dst), port, protocol: if udp { 17 } else { 6 } };
                    let got = trace(&engine, &probe).unwrap();
                    let want = cluster.allowed(&policies, src, dst, port, udp);
                    prop_assert_eq!(
                        got.allowed(), want,
                        "{} -> {} {}/{}\npolicies: {}\ncluster: {}\ntrace: {:?}",
                        probe.from, probe.to, port, if udp { "UDP" } else { "TCP" },
                        policies_json(&policies), cluster_json(&cluster), got
                    );
                }
            }
        }
    }
}
