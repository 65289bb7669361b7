//! The synthetic cluster `converge` writes into etcd, and the iptables / nftables text that
//! expresses the same policy state (the baselines). Pure: no I/O, no etcd.
//!
//! The cluster ([`Cluster::generate`]), for `N` endpoints:
//! - this node (`<prefix>`, pod CIDR 10.81.0.0/24) with the two real pods A (10.81.0.11) and B
//!   (10.81.0.12) in namespace `<prefix>-bench`, labelled `app=probe-a` / `app=probe-b`;
//! - `N - 2` synthetic pods spread over `nodes + 1` slots round robin; slot 0 is this node
//!   until it holds `max_local` synthetic pods (Kubernetes' default of 110 pods a node, minus
//!   system pods), the other slots are remote nodes `<prefix>-n<i>` (pod CIDR: [`remote_cidr`],
//!   at most 250 pods each);
//! - pod `j` is in namespace `<prefix>-ns<j % namespaces>` with `app=app<(j / namespaces) % apps>`,
//!   so there are `namespaces x apps` distinct label sets (identities; 10 x 100 = 1,000 by
//!   default) once `N` is large enough;
//! - background policies: one "allow from the same namespace" NetworkPolicy per namespace
//!   (selects every pod; its peers are every pod of the namespace, the policy that makes maps
//!   and iptables rule sets grow with `N`), then per-app policies (ingress from two other apps
//!   on TCP 8080 and from one app in any namespace labelled `team=t<k>` on any port), up to
//!   `policies` in all;
//! - B sits under a default-deny ingress policy (`probe-deny`); each measurement iteration
//!   writes [`allow_policy`] (A -> B, any port) under a new name and deletes it.
//!
//! Keys are relative to `/flagella/v1/`; values are what `docs/etcd-schema.md` asks for.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::Ipv4Addr;

use dataplane::wire::ip::Protocol;
use serde_json::{json, Value};

/// Pod A's and B's addresses (bench/src/topo.rs).
pub use crate::topo::{POD_A_IP, POD_B_IP};

/// This node's pod CIDR (holds topo.rs's addresses and the gateway 10.81.0.1).
pub const LOCAL_CIDR: &str = "10.81.0.0/24";
/// First address of the synthetic local pods (10.81.0.20 ..).
const LOCAL_FIRST_HOST: u8 = 20;
/// The real pods' namespace is `<prefix>-bench`.
pub const BENCH_NS_SUFFIX: &str = "bench";

/// What to generate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterSpec {
    /// Unique run prefix: node and namespace names start with it.
    pub prefix: String,
    /// Endpoints in all, A and B included (>= 2).
    pub endpoints: usize,
    /// Remote nodes.
    pub nodes: usize,
    /// Synthetic pods on this node at most (A and B come on top).
    pub max_local: usize,
    pub namespaces: usize,
    pub apps: usize,
    /// Background policies in all (namespace-wide ones first).
    pub policies: usize,
}

impl ClusterSpec {
    /// The defaults of `flagella-bench converge`.
    pub fn new(prefix: &str, endpoints: usize) -> ClusterSpec {
        ClusterSpec {
            prefix: prefix.to_string(),
            endpoints,
            nodes: 100,
            max_local: 98,
            namespaces: 10,
            apps: 100,
            policies: 100,
        }
    }

    /// The largest `endpoints` these settings can place: 250 pods per remote /24.
    pub fn capacity(&self) -> usize {
        2 + self.max_local + self.nodes * 250
    }
}

/// One synthetic or real pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SynthPod {
    pub namespace: String,
    pub name: String,
    pub node: String,
    pub app: String,
    pub ip: Ipv4Addr,
    /// Local pods only: (ifindex, MAC).
    pub local: Option<(u32, String)>,
}

/// The generated cluster.
#[derive(Clone, Debug)]
pub struct Cluster {
    pub spec: ClusterSpec,
    pub node_names: Vec<String>,
    pub namespaces: Vec<String>,
    pub bench_ns: String,
    pub pods: Vec<SynthPod>,
    /// `(key, JSON value)` of the background policies, the deny policy included.
    pub policies: Vec<(String, String)>,
}

/// Pod CIDR of remote node `i`: 10.<82 + i / 256>.<i % 256>.0/24.
pub fn remote_cidr(i: usize) -> (u8, u8) {
    let hi = 82 + (i / 256).min(100);
    (u8::try_from(hi).unwrap_or(182), (i % 256) as u8)
}

/// Underlay address of remote node `i` (this node is 192.168.81.1).
fn remote_underlay(i: usize) -> Ipv4Addr {
    let n = u32::try_from(i).unwrap_or(0) + 2;
    Ipv4Addr::from(u32::from(Ipv4Addr::new(192, 168, 82, 0)) + n)
}

/// Where the real pods A and B are (their host interfaces' facts).
#[derive(Clone, Debug)]
pub struct RealPod {
    pub ifindex: u32,
    pub mac: String,
    pub interface: String,
}

impl Cluster {
    /// Generates the cluster; `a` and `b` are the real pods' facts. Fails when `endpoints`
    /// does not fit ([`ClusterSpec::capacity`]) or is below 2.
    pub fn generate(spec: &ClusterSpec, a: &RealPod, b: &RealPod) -> Result<Cluster, String> {
        if spec.endpoints < 2 || spec.endpoints > spec.capacity() {
            return Err(format!(
                "{} endpoints: use 2..={} with {} remote nodes",
                spec.endpoints,
                spec.capacity(),
                spec.nodes
            ));
        }
        if spec.namespaces == 0 || spec.apps == 0 || spec.nodes == 0 {
            return Err("namespaces, apps and nodes must be at least 1".into());
        }
        let p = &spec.prefix;
        let node_names: Vec<String> = (0..spec.nodes).map(|i| format!("{p}-n{i}")).collect();
        let namespaces: Vec<String> = (0..spec.namespaces).map(|k| format!("{p}-ns{k}")).collect();
        let bench_ns = format!("{p}-{BENCH_NS_SUFFIX}");
        let mut pods = vec![
            SynthPod {
                namespace: bench_ns.clone(),
                name: "a".into(),
                node: p.clone(),
                app: "probe-a".into(),
                ip: POD_A_IP,
                local: Some((a.ifindex, a.mac.clone())),
            },
            SynthPod {
                namespace: bench_ns.clone(),
                name: "b".into(),
                node: p.clone(),
                app: "probe-b".into(),
                ip: POD_B_IP,
                local: Some((b.ifindex, b.mac.clone())),
            },
        ];
        let mut local = 0usize;
        let mut per_node = vec![0usize; spec.nodes];
        let mut next_remote = 0usize;
        for j in 0..spec.endpoints - 2 {
            let namespace = namespaces[j % spec.namespaces].clone();
            let app = format!("app{}", (j / spec.namespaces) % spec.apps);
            let name = format!("pod{j}");
            let slot = j % (spec.nodes + 1);
            if slot == 0 && local < spec.max_local {
                let host = LOCAL_FIRST_HOST as usize + local;
                let ip = Ipv4Addr::new(10, 81, (host / 256) as u8, (host % 256) as u8);
                let mac = format!("02:81:01:00:{:02x}:{:02x}", local / 256, local % 256);
                let ifindex = 1_000_000 + u32::try_from(local).unwrap_or(0);
                local += 1;
                pods.push(SynthPod {
                    namespace,
                    name,
                    node: p.clone(),
                    app,
                    ip,
                    local: Some((ifindex, mac)),
                });
                continue;
            }
            // Remote: the slot's node, or the next one with room.
            let mut i = if slot == 0 { next_remote } else { slot - 1 };
            while per_node[i] >= 250 {
                i = (i + 1) % spec.nodes;
            }
            next_remote = (i + 1) % spec.nodes;
            let (hi, mid) = remote_cidr(i);
            let host = per_node[i] + 2; // .0 network, .1 gateway
            per_node[i] += 1;
            pods.push(SynthPod {
                namespace,
                name,
                node: node_names[i].clone(),
                app,
                ip: Ipv4Addr::new(10, hi, mid, host as u8),
                local: None,
            });
        }
        let mut cluster = Cluster {
            spec: spec.clone(),
            node_names,
            namespaces,
            bench_ns,
            pods,
            policies: Vec::new(),
        };
        cluster.policies = cluster.background_policies();
        Ok(cluster)
    }

    /// Nodes and namespaces (written first: endpoints refer to them).
    pub fn base_objects(&self) -> Vec<(String, String)> {
        let p = &self.spec.prefix;
        let mut out = vec![(
            format!("nodes/{p}"),
            json!({"underlay_ip": "192.168.81.1", "pod_cidrs": [LOCAL_CIDR]}).to_string(),
        )];
        for (i, n) in self.node_names.iter().enumerate() {
            let (hi, mid) = remote_cidr(i);
            out.push((
                format!("nodes/{n}"),
                json!({"underlay_ip": remote_underlay(i).to_string(),
                       "pod_cidrs": [format!("10.{hi}.{mid}.0/24")]})
                .to_string(),
            ));
        }
        for (k, ns) in self.namespaces.iter().enumerate() {
            out.push((
                format!("namespaces/{ns}"),
                json!({"labels": {"team": format!("t{}", k % 2)}}).to_string(),
            ));
        }
        out.push((
            format!("namespaces/{}", self.bench_ns),
            json!({"labels": {"team": "bench"}}).to_string(),
        ));
        out
    }

    /// The endpoints, as the CNI plugin writes them.
    pub fn endpoint_objects(&self) -> Vec<(String, String)> {
        self.pods
            .iter()
            .map(|pod| {
                let mut v = json!({"node": pod.node, "labels": {"app": pod.app},
                    "ipv4": pod.ip.to_string(), "interface": format!("lxc-{}", pod.name)});
                if let Some((ifindex, mac)) = &pod.local {
                    v["ifindex"] = json!(ifindex);
                    v["mac"] = json!(mac);
                }
                (
                    format!("endpoints/{}/{}", pod.namespace, pod.name),
                    v.to_string(),
                )
            })
            .collect()
    }

    /// Namespace-wide "allow from the same namespace" policies, then per-app policies, then
    /// B's default deny.
    fn background_policies(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let n_ns = self.namespaces.len();
        for i in 0..self.spec.policies {
            let ns = &self.namespaces[i % n_ns];
            let (name, spec) = if i < n_ns {
                (
                    "allow-same-namespace".to_string(),
                    json!({"podSelector": {}, "policyTypes": ["Ingress"],
                           "ingress": [{"from": [{"podSelector": {}}]}]}),
                )
            } else {
                let apps = self.spec.apps;
                let app = |d: usize| format!("app{}", (i + d) % apps);
                (
                    format!("app-{i}"),
                    json!({
                        "podSelector": {"matchLabels": {"app": app(0)}},
                        "policyTypes": ["Ingress"],
                        "ingress": [
                            {"from": [{"podSelector": {"matchExpressions": [
                                {"key": "app", "operator": "In", "values": [app(1), app(2)]}]}}],
                             "ports": [{"protocol": "TCP", "port": 8080}]},
                            {"from": [{"namespaceSelector": {"matchLabels": {"team": format!("t{}", i % 2)}},
                                       "podSelector": {"matchLabels": {"app": app(3)}}}]}
                        ]
                    }),
                )
            };
            out.push(network_policy(ns, &name, spec));
        }
        out.push(network_policy(
            &self.bench_ns,
            "probe-deny",
            json!({"podSelector": {"matchLabels": {"app": "probe-b"}}, "policyTypes": ["Ingress"]}),
        ));
        out
    }

    /// Distinct identity label sets (namespace, app) among the pods.
    pub fn label_sets(&self) -> usize {
        self.pods
            .iter()
            .map(|p| (&p.namespace, &p.app))
            .collect::<BTreeSet<_>>()
            .len()
    }

    pub fn local_pods(&self) -> usize {
        self.pods.iter().filter(|p| p.local.is_some()).count()
    }
}

fn network_policy(namespace: &str, name: &str, spec: Value) -> (String, String) {
    (
        format!("policies/NetworkPolicy/{namespace}/{name}"),
        json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
               "metadata": {"name": name, "namespace": namespace}, "spec": spec})
        .to_string(),
    )
}

/// The policy an iteration writes: pods `app=probe-a` may reach `app=probe-b` (any port).
pub fn allow_policy(bench_ns: &str, name: &str) -> (String, String) {
    network_policy(
        bench_ns,
        name,
        json!({"podSelector": {"matchLabels": {"app": "probe-b"}}, "policyTypes": ["Ingress"],
               "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "probe-a"}}}]}]}),
    )
}

// ---- baselines ---------------------------------------------------------------------------

/// One allowed (peer address, protocol, destination ports) of a local endpoint's ingress, the
/// unit an iptables-based CNI without ipsets writes as one rule. `proto` 0 = any protocol;
/// `ports` (0, 0) = any port, else the inclusive range; peer 0.0.0.0 = any source.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct PeerRule {
    pub peer: Ipv4Addr,
    pub proto: u8,
    pub ports: (u16, u16),
}

/// The ingress state of this node's endpoints: endpoint address -> enforced rules (the
/// compiled policy maps with each peer identity expanded to its pods' addresses).
pub type IngressRules = BTreeMap<Ipv4Addr, Vec<PeerRule>>;

/// The iptables name of the protocols a port rule can name (TCP, UDP, SCTP); others by number.
fn proto_name(p: u8) -> Option<&'static str> {
    match Protocol::from(p) {
        p @ (Protocol::Tcp | Protocol::Udp | Protocol::SCTP) => p.name(),
        _ => None,
    }
}

fn rule_line(out: &mut String, chain: &str, r: &PeerRule) {
    let _ = write!(out, "-A {chain}");
    if !r.peer.is_unspecified() {
        let _ = write!(out, " -s {}/32", r.peer);
    }
    match proto_name(r.proto) {
        Some(p) => {
            let _ = write!(out, " -p {p}");
            match r.ports {
                (0, 0) => {}
                (lo, hi) if lo == hi => {
                    let _ = write!(out, " --dport {lo}");
                }
                (lo, hi) => {
                    let _ = write!(out, " --dport {lo}:{hi}");
                }
            }
        }
        None if r.proto != 0 => {
            let _ = write!(out, " -p {}", r.proto);
        }
        None => {}
    }
    out.push_str(" -j ACCEPT\n");
}

/// Chain name of endpoint `i` (iptables chain names: at most 28 characters).
pub fn endpoint_chain(i: usize) -> String {
    format!("FL-EP-{i}")
}

/// `iptables-restore` input of the whole state: a filter table, one chain per enforced local
/// endpoint jumped to from FORWARD by destination address, one ACCEPT rule per (peer address,
/// protocol, port), established replies accepted first, and a final DROP per chain.
pub fn iptables_full(rules: &IngressRules) -> String {
    let mut out =
        String::from("*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n");
    for i in 0..rules.len() {
        let _ = writeln!(out, ":{} - [0:0]", endpoint_chain(i));
    }
    out.push_str("-A FORWARD -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT\n");
    for (i, ep) in rules.keys().enumerate() {
        let _ = writeln!(out, "-A FORWARD -d {ep}/32 -j {}", endpoint_chain(i));
    }
    for (i, list) in rules.values().enumerate() {
        let chain = endpoint_chain(i);
        for r in list {
            rule_line(&mut out, &chain, r);
        }
        let _ = writeln!(out, "-A {chain} -j DROP");
    }
    out.push_str("COMMIT\n");
    out
}

/// `iptables-restore --noflush` input adding `added` at the head of endpoint `index`'s chain
/// (what one new policy costs an iptables CNI).
pub fn iptables_increment(index: usize, added: &[PeerRule]) -> String {
    let chain = endpoint_chain(index);
    let mut out = String::from("*filter\n");
    for r in added {
        let mut line = String::new();
        rule_line(&mut line, &chain, r);
        out.push_str(&line.replacen("-A ", "-I ", 1));
    }
    out.push_str("COMMIT\n");
    out
}

/// Counts the rules [`iptables_full`] writes besides the fixed ones.
pub fn rule_count(rules: &IngressRules) -> usize {
    rules.values().map(|v| v.len() + 1).sum::<usize>() + rules.len()
}

/// `nft -f` input: table `ip <table>` with a set of every endpoint address (the form an
/// nftables CNI gives an identity's members: one set element per pod).
pub fn nft_full(table: &str, addrs: &[Ipv4Addr]) -> String {
    let mut out = format!("table ip {table} {{\n  set peers {{\n    type ipv4_addr\n");
    if !addrs.is_empty() {
        out.push_str("    elements = { ");
        for (i, a) in addrs.iter().enumerate() {
            if i > 0 {
                out.push_str(", ");
            }
            let _ = write!(out, "{a}");
        }
        out.push_str(" }\n");
    }
    out.push_str("  }\n}\n");
    out
}

/// `nft -f` input adding one element to that set.
pub fn nft_add_element(table: &str, addr: Ipv4Addr) -> String {
    format!("add element ip {table} peers {{ {addr} }}\n")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn real(i: u32) -> RealPod {
        RealPod {
            ifindex: i,
            mac: format!("02:00:00:00:00:0{i}"),
            interface: format!("veth{i}"),
        }
    }

    #[test]
    fn cluster_shape_at_10k() {
        let spec = ClusterSpec::new("fcv-1", 10_000);
        let c = Cluster::generate(&spec, &real(1), &real(2)).unwrap();
        assert_eq!(c.pods.len(), 10_000);
        assert_eq!(c.local_pods(), 2 + 98);
        // 1,000 synthetic label sets + A and B.
        assert_eq!(c.label_sets(), 1_002);
        // Unique addresses, and every remote pod inside its node's /24.
        let ips: BTreeSet<Ipv4Addr> = c.pods.iter().map(|p| p.ip).collect();
        assert_eq!(ips.len(), 10_000);
        for p in c.pods.iter().filter(|p| p.local.is_none()) {
            let i: usize = p.node.rsplit("-n").next().unwrap().parse().unwrap();
            let (hi, mid) = remote_cidr(i);
            assert_eq!(p.ip.octets()[..3], [10, hi, mid], "{p:?}");
            assert!(p.ip.octets()[3] >= 2);
        }
        // Local ifindexes and MACs are unique.
        let macs: BTreeSet<_> = c.pods.iter().filter_map(|p| p.local.clone()).collect();
        assert_eq!(macs.len(), 100);
        // 100 background policies + the deny.
        assert_eq!(c.policies.len(), 101);
        assert!(c.policies.last().unwrap().0.ends_with("/probe-deny"));
        // Every value decodes as the agent will read it.
        for (k, v) in c
            .base_objects()
            .iter()
            .chain(&c.endpoint_objects())
            .chain(&c.policies)
        {
            let key = format!("{}{k}", control::schema::ROOT);
            control::schema::decode(&key, v.as_bytes()).unwrap_or_else(|e| panic!("{k}: {e}"));
        }
    }

    #[test]
    fn small_clusters_and_limits() {
        let c = Cluster::generate(&ClusterSpec::new("p", 1_000), &real(1), &real(2)).unwrap();
        assert_eq!(c.pods.len(), 1_000);
        assert_eq!(c.local_pods(), 2 + 10); // every 101st synthetic pod
        assert_eq!(c.label_sets(), 2 + 998);
        let c = Cluster::generate(&ClusterSpec::new("p", 2), &real(1), &real(2)).unwrap();
        assert_eq!(c.pods.len(), 2);
        let spec = ClusterSpec::new("p", 1);
        assert!(Cluster::generate(&spec, &real(1), &real(2)).is_err());
        let spec = ClusterSpec::new("p", 30_000);
        let e = Cluster::generate(&spec, &real(1), &real(2)).unwrap_err();
        assert!(e.contains("2..=25100"), "{e}");
    }

    #[test]
    fn allow_policy_decodes() {
        let (k, v) = allow_policy("p-bench", "allow-7");
        assert_eq!(k, "policies/NetworkPolicy/p-bench/allow-7");
        let key = format!("{}{k}", control::schema::ROOT);
        control::schema::decode(&key, v.as_bytes()).unwrap();
    }

    #[test]
    fn iptables_text() {
        let mut rules = IngressRules::new();
        let peer = Ipv4Addr::new(10, 0, 0, 1);
        rules.insert(
            Ipv4Addr::new(10, 81, 0, 12),
            vec![
                PeerRule {
                    peer,
                    proto: 6,
                    ports: (8080, 8080),
                },
                PeerRule {
                    peer,
                    proto: 0,
                    ports: (0, 0),
                },
                PeerRule {
                    peer: Ipv4Addr::UNSPECIFIED,
                    proto: 17,
                    ports: (10, 20),
                },
            ],
        );
        rules.insert(Ipv4Addr::new(10, 81, 0, 11), vec![]);
        let text = iptables_full(&rules);
        let expected =
            "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n\
            :FL-EP-0 - [0:0]\n:FL-EP-1 - [0:0]\n\
            -A FORWARD -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT\n\
            -A FORWARD -d 10.81.0.11/32 -j FL-EP-0\n-A FORWARD -d 10.81.0.12/32 -j FL-EP-1\n\
            -A FL-EP-0 -j DROP\n\
            -A FL-EP-1 -s 10.0.0.1/32 -p tcp --dport 8080 -j ACCEPT\n\
            -A FL-EP-1 -s 10.0.0.1/32 -j ACCEPT\n\
            -A FL-EP-1 -p udp --dport 10:20 -j ACCEPT\n-A FL-EP-1 -j DROP\nCOMMIT\n";
        assert_eq!(text, expected);
        assert_eq!(rule_count(&rules), 3 + 2 + 2);
        assert_eq!(
            iptables_increment(
                1,
                &[PeerRule {
                    peer,
                    proto: 17,
                    ports: (9, 9)
                }]
            ),
            "*filter\n-I FL-EP-1 -s 10.0.0.1/32 -p udp --dport 9 -j ACCEPT\nCOMMIT\n"
        );
    }

    #[test]
    fn nft_text() {
        let a = [Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(10, 0, 0, 2)];
        assert_eq!(
            nft_full("t", &a),
            "table ip t {\n  set peers {\n    type ipv4_addr\n    elements = { 10.0.0.1, 10.0.0.2 }\n  }\n}\n"
        );
        assert_eq!(
            nft_full("t", &[]),
            "table ip t {\n  set peers {\n    type ipv4_addr\n  }\n}\n"
        );
        assert_eq!(
            nft_add_element("t", a[0]),
            "add element ip t peers { 10.0.0.1 }\n"
        );
    }
}
