//! The synthetic cluster: nodes, namespaces, endpoints with realistic labels and 1,000
//! policies of the common shapes, as `(key, value)` pairs relative to [`ROOT`].
//!
//! Shape, for a [`ScaleSpec`]:
//! - nodes `<prefix>-n<i>`, pod CIDR 10.<64 + i / 256>.<i % 256>.0/24, underlay 172.16.0.0/12
//!   from .1 up. The first `agents` nodes are the ones real agents run for: each holds
//!   `local_pods` endpoints with an ifindex and a MAC; the others hold at most 250 each;
//! - endpoint `j` belongs to deployment `d = j % identities`; the deployment's namespace is
//!   `<prefix>-ns<d % namespaces>` and its app `app<d / namespaces>`; every label of a pod (about
//!   20: app, version, pod-template-hash, tier, the `app.kubernetes.io/*` set, Helm's, Istio's)
//!   is a function of its deployment, so there are exactly `min(endpoints, identities)` label
//!   sets. Namespaces carry `team`, `env`, `istio-injection` and `purpose` labels;
//! - policies, `policies` in all: one namespace isolation NetworkPolicy per namespace (ingress
//!   from the same namespace and from namespaces labelled `purpose=monitoring`), then in turn:
//!   app-to-app on ports (NetworkPolicy: two apps on TCP 8080/9090, every `tier=frontend` of
//!   `env=prod` namespaces on 443), CIDR egress (NetworkPolicy: a /24 with an excepted /25 on
//!   TCP 443, the own namespace on any port), and deny rules (CiliumNetworkPolicy
//!   `ingressDeny`: `tier=db` pods on TCP 22 and 23).
//!
//! Everything is deterministic: the same spec gives the same keys and values.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use serde_json::{json, Value};

/// The key prefix every key here is relative to.
pub use crate::schema::ROOT;

/// At most this many pods on a node that no agent runs for (one /24 less network, gateway).
const REMOTE_NODE_PODS: usize = 250;
/// First ifindex of a local pod (far above anything a test namespace holds).
const FIRST_IFINDEX: u32 = 100_000;

/// What to generate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScaleSpec {
    /// Node and namespace names start with it.
    pub prefix: String,
    pub endpoints: usize,
    /// Nodes in all, the agents' included.
    pub nodes: usize,
    /// Nodes run by a real agent (the first ones).
    pub agents: usize,
    /// Endpoints on each agent's node (Kubernetes' default of 110 a node, minus system pods).
    pub local_pods: usize,
    pub namespaces: usize,
    /// Distinct label sets (deployments).
    pub identities: usize,
    pub policies: usize,
}

impl ScaleSpec {
    /// 100 nodes (3 with agents, 100 pods each), 20 namespaces, 2,000 identities, 1,000
    /// policies.
    pub fn new(prefix: &str, endpoints: usize) -> ScaleSpec {
        ScaleSpec {
            prefix: prefix.to_string(),
            endpoints,
            nodes: 100,
            agents: 3,
            local_pods: 100,
            namespaces: 20,
            identities: 2_000,
            policies: 1_000,
        }
    }

    /// The most endpoints these nodes can hold.
    pub fn capacity(&self) -> usize {
        self.agents * self.local_pods
            + (self.nodes - self.agents.min(self.nodes)) * REMOTE_NODE_PODS
    }

    fn check(&self) -> Result<(), String> {
        if self.nodes == 0 || self.namespaces == 0 || self.identities == 0 {
            return Err("nodes, namespaces and identities must be at least 1".into());
        }
        if self.agents > self.nodes || self.nodes > 4096 {
            return Err(format!(
                "{} agents on {} nodes: use at most as many agents as nodes, and at most 4096 nodes",
                self.agents, self.nodes
            ));
        }
        if self.endpoints > self.capacity() {
            return Err(format!(
                "{} endpoints do not fit on {} nodes (at most {}): add nodes with --nodes",
                self.endpoints,
                self.nodes,
                self.capacity()
            ));
        }
        Ok(())
    }
}

/// One endpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SynthEndpoint {
    pub namespace: String,
    pub name: String,
    pub node: usize,
    pub deployment: usize,
    pub ip: Ipv4Addr,
    /// Agents' nodes only: (ifindex, MAC).
    pub local: Option<(u32, String)>,
}

/// The generated cluster.
#[derive(Clone, Debug)]
pub struct ScaleCluster {
    pub spec: ScaleSpec,
    pub endpoints: Vec<SynthEndpoint>,
    /// Endpoints placed on each node so far (the next address of a node).
    per_node: Vec<usize>,
}

impl ScaleCluster {
    /// Places the endpoints; fails when they do not fit or the spec is degenerate.
    pub fn generate(spec: &ScaleSpec) -> Result<ScaleCluster, String> {
        spec.check()?;
        let mut c = ScaleCluster {
            spec: spec.clone(),
            endpoints: Vec::with_capacity(spec.endpoints),
            per_node: vec![0; spec.nodes],
        };
        for j in 0..spec.endpoints {
            let node = c
                .node_with_room(j % spec.nodes)
                .ok_or_else(|| format!("no room for endpoint {j}"))?;
            let e = c.endpoint(j, j % spec.identities, node);
            c.endpoints.push(e);
        }
        Ok(c)
    }

    /// The first node from `start` on (round robin) with room for one more endpoint.
    pub fn node_with_room(&self, start: usize) -> Option<usize> {
        (0..self.spec.nodes)
            .map(|k| (start + k) % self.spec.nodes)
            .find(|&i| self.per_node[i] < self.node_capacity(i))
    }

    fn node_capacity(&self, i: usize) -> usize {
        if i < self.spec.agents {
            self.spec.local_pods.min(REMOTE_NODE_PODS)
        } else {
            REMOTE_NODE_PODS
        }
    }

    /// A new endpoint named `pod<serial>` of `deployment` on `node` (which must have room).
    pub fn endpoint(&mut self, serial: usize, deployment: usize, node: usize) -> SynthEndpoint {
        let slot = self.per_node[node];
        self.per_node[node] += 1;
        let (hi, mid) = node_cidr(node);
        let host = slot + 2; // .0 network, .1 gateway
        let local = (node < self.spec.agents).then(|| {
            let n = u32::try_from(node * 256 + slot).unwrap_or(0);
            let mac = format!(
                "02:16:{:02x}:{:02x}:00:{:02x}",
                node >> 8,
                node & 0xff,
                slot
            );
            (FIRST_IFINDEX + n, mac)
        });
        SynthEndpoint {
            namespace: self.namespace(deployment % self.spec.namespaces),
            name: format!("pod{serial}"),
            node,
            deployment,
            ip: Ipv4Addr::new(10, hi, mid, u8::try_from(host).unwrap_or(255)),
            local,
        }
    }

    pub fn node_name(&self, i: usize) -> String {
        format!("{}-n{i}", self.spec.prefix)
    }

    pub fn namespace(&self, k: usize) -> String {
        format!("{}-ns{k}", self.spec.prefix)
    }

    /// Apps per namespace (deployments are numbered across namespaces).
    fn apps(&self) -> usize {
        self.spec.identities.div_ceil(self.spec.namespaces).max(1)
    }

    /// Nodes and namespaces (endpoints refer to them: write these first).
    pub fn base_objects(&self) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = (0..self.spec.nodes)
            .map(|i| {
                let (hi, mid) = node_cidr(i);
                let underlay = Ipv4Addr::from(0xac10_0000 + u32::try_from(i).unwrap_or(0) + 1);
                (
                    format!("nodes/{}", self.node_name(i)),
                    json!({"underlay_ip": underlay.to_string(),
                           "pod_cidrs": [format!("10.{hi}.{mid}.0/24")]})
                    .to_string(),
                )
            })
            .collect();
        for k in 0..self.spec.namespaces {
            out.push(self.namespace_object(k, k % 2 == 0));
        }
        out
    }

    /// Namespace `k` with its labels; `prod` chooses its `env`.
    pub fn namespace_object(&self, k: usize, prod: bool) -> (String, String) {
        let labels = json!({
            "team": format!("t{}", k % 8),
            "env": if prod { "prod" } else { "staging" },
            "istio-injection": "enabled",
            "purpose": if k == 0 { "monitoring" } else { "apps" },
        });
        (
            format!("namespaces/{}", self.namespace(k)),
            json!({ "labels": labels }).to_string(),
        )
    }

    /// The endpoints, as the CNI plugin writes them.
    pub fn endpoint_objects(&self) -> Vec<(String, String)> {
        self.endpoints
            .iter()
            .map(|e| self.endpoint_object(e))
            .collect()
    }

    /// One endpoint's key and value.
    pub fn endpoint_object(&self, e: &SynthEndpoint) -> (String, String) {
        self.endpoint_object_with(e, None)
    }

    /// [`Self::endpoint_object`] with the `version` label replaced.
    pub fn endpoint_object_with(
        &self,
        e: &SynthEndpoint,
        version: Option<&str>,
    ) -> (String, String) {
        let mut labels = pod_labels(e.deployment, self.spec.namespaces, self.apps());
        if let Some(v) = version {
            labels["version"] = json!(v);
        }
        let mut v = json!({"node": self.node_name(e.node), "labels": labels,
            "ipv4": e.ip.to_string(), "interface": format!("lxc{}", e.name)});
        if let Some((ifindex, mac)) = &e.local {
            v["ifindex"] = json!(ifindex);
            v["mac"] = json!(mac);
        }
        (
            format!("endpoints/{}/{}", e.namespace, e.name),
            v.to_string(),
        )
    }

    /// The policies, `spec.policies` of them.
    pub fn policy_objects(&self) -> Vec<(String, String)> {
        (0..self.spec.policies)
            .map(|i| self.policy_object(i, 0))
            .collect()
    }

    /// Policy `i`; `variant` changes its ports (a policy update keeping its name).
    pub fn policy_object(&self, i: usize, variant: u16) -> (String, String) {
        let n_ns = self.spec.namespaces;
        let ns = self.namespace(i % n_ns);
        if i < n_ns {
            return network_policy(&ns, "isolate", isolation());
        }
        let apps = self.apps();
        let app = |d: usize| format!("app{}", (i / n_ns + d) % apps);
        match i % 3 {
            0 => network_policy(&ns, &format!("app-{i}"), app_to_app(&app, variant)),
            1 => network_policy(
                &ns,
                &format!("egress-{i}"),
                cidr_egress(&app(0), i, variant),
            ),
            _ => cilium_policy(&ns, &format!("deny-{i}"), deny(&app(0), variant)),
        }
    }

    /// The first app-to-app policy with subjects on `node`, and how many endpoints there it
    /// selects (the policy a per-change measurement rewrites).
    pub fn app_policy_on(&self, node: usize) -> Option<(usize, usize)> {
        let n_ns = self.spec.namespaces;
        (n_ns..self.spec.policies)
            .filter(|i| i % 3 == 0)
            .map(|i| {
                let app = (i / n_ns) % self.apps();
                let subjects = self
                    .endpoints
                    .iter()
                    .filter(|e| e.node == node)
                    .filter(|e| e.deployment % n_ns == i % n_ns && e.deployment / n_ns == app)
                    .count();
                (i, subjects)
            })
            .find(|(_, subjects)| *subjects > 0)
    }

    /// Distinct label sets among the endpoints.
    pub fn label_sets(&self) -> usize {
        self.endpoints
            .iter()
            .map(|e| e.deployment)
            .collect::<BTreeSet<_>>()
            .len()
    }

    /// Every object, in the order to write them (nodes and namespaces, endpoints, policies).
    pub fn objects(&self) -> Vec<(String, String)> {
        let mut out = self.base_objects();
        out.extend(self.endpoint_objects());
        out.extend(self.policy_objects());
        out
    }
}

/// Pod CIDR of node `i`: 10.<64 + i / 256>.<i % 256>.0/24.
pub fn node_cidr(i: usize) -> (u8, u8) {
    (u8::try_from(64 + i / 256).unwrap_or(255), (i % 256) as u8)
}

/// The labels of deployment `d`'s pods (about 20, all a function of `d`).
fn pod_labels(d: usize, namespaces: usize, apps: usize) -> Value {
    let a = d / namespaces;
    let app = format!("app{a}");
    let version = format!("v{}", d % 3);
    let tier = ["frontend", "backend", "db"][a % 3];
    let hash = format!(
        "{:010x}",
        (d as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 24
    );
    json!({
        "app": app,
        "version": version,
        "pod-template-hash": hash,
        "tier": tier,
        "component": format!("{tier}-{}", a % 5),
        "team": format!("t{}", a % 8),
        "release": format!("rel-{app}"),
        "chart": format!("{app}-1.{}", d % 3),
        "heritage": "Helm",
        "track": "stable",
        "app.kubernetes.io/name": app,
        "app.kubernetes.io/instance": format!("{app}-{}", apps),
        "app.kubernetes.io/version": version,
        "app.kubernetes.io/component": tier,
        "app.kubernetes.io/part-of": format!("system{}", a % 10),
        "app.kubernetes.io/managed-by": "Helm",
        "helm.sh/chart": format!("{app}-1.{}", d % 3),
        "security.istio.io/tlsMode": "istio",
        "service.istio.io/canonical-name": app,
        "service.istio.io/canonical-revision": version,
    })
}

fn isolation() -> Value {
    json!({"podSelector": {}, "policyTypes": ["Ingress"], "ingress": [{"from": [
        {"podSelector": {}},
        {"namespaceSelector": {"matchLabels": {"purpose": "monitoring"}}}]}]})
}

fn app_to_app(app: &dyn Fn(usize) -> String, variant: u16) -> Value {
    json!({
        "podSelector": {"matchLabels": {"app": app(0)}},
        "policyTypes": ["Ingress"],
        "ingress": [
            {"from": [{"podSelector": {"matchExpressions": [
                {"key": "app", "operator": "In", "values": [app(1), app(2)]}]}}],
             "ports": [{"protocol": "TCP", "port": 8080 + variant}, {"protocol": "TCP", "port": 9090}]},
            {"from": [{"namespaceSelector": {"matchLabels": {"env": "prod"}},
                       "podSelector": {"matchLabels": {"tier": "frontend"}}}],
             "ports": [{"protocol": "TCP", "port": 443}]}
        ]
    })
}

fn cidr_egress(app: &str, i: usize, variant: u16) -> Value {
    let (b, c) = ((i / 256) % 256, i % 256);
    json!({
        "podSelector": {"matchLabels": {"app": app}},
        "policyTypes": ["Egress"],
        "egress": [
            {"to": [{"ipBlock": {"cidr": format!("198.{}.{c}.0/24", 18 + b),
                                 "except": [format!("198.{}.{c}.128/25", 18 + b)]}}],
             "ports": [{"protocol": "TCP", "port": 443 + variant}]},
            {"to": [{"podSelector": {}}]}
        ]
    })
}

fn deny(app: &str, variant: u16) -> Value {
    json!({
        "endpointSelector": {"matchLabels": {"app": app}},
        "ingressDeny": [{"fromEndpoints": [{"matchLabels": {"tier": "db"}}],
            "toPorts": [{"ports": [{"port": (22 + variant).to_string(), "protocol": "TCP"},
                                   {"port": "23", "protocol": "TCP"}]}]}]
    })
}

fn network_policy(namespace: &str, name: &str, spec: Value) -> (String, String) {
    (
        format!("policies/NetworkPolicy/{namespace}/{name}"),
        json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
               "metadata": {"name": name, "namespace": namespace}, "spec": spec})
        .to_string(),
    )
}

fn cilium_policy(namespace: &str, name: &str, spec: Value) -> (String, String) {
    (
        format!("policies/CiliumNetworkPolicy/{namespace}/{name}"),
        json!({"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
               "metadata": {"name": name, "namespace": namespace}, "spec": spec})
        .to_string(),
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn shape_at_20k() {
        let c = ScaleCluster::generate(&ScaleSpec::new("s", 20_000)).unwrap();
        assert_eq!(c.endpoints.len(), 20_000);
        assert_eq!(c.label_sets(), 2_000);
        let local = c.endpoints.iter().filter(|e| e.local.is_some()).count();
        assert_eq!(local, 300);
        let ips: BTreeSet<Ipv4Addr> = c.endpoints.iter().map(|e| e.ip).collect();
        assert_eq!(ips.len(), 20_000);
        let macs: BTreeSet<_> = c.endpoints.iter().filter_map(|e| e.local.clone()).collect();
        assert_eq!(macs.len(), 300);
        let objects = c.objects();
        assert_eq!(objects.len(), 100 + 20 + 20_000 + 1_000);
        let bytes: usize = objects.iter().map(|(k, v)| k.len() + v.len()).sum();
        assert!(bytes > 4 << 20, "{bytes} bytes");
        for (k, v) in &objects {
            crate::schema::decode(&format!("{ROOT}{k}"), v.as_bytes())
                .unwrap_or_else(|e| panic!("{k}: {e}"));
        }
        let (_, v) = c.endpoint_object(&c.endpoints[7]);
        let v: Value = serde_json::from_str(&v).unwrap();
        assert_eq!(v["labels"].as_object().unwrap().len(), 20);
    }

    #[test]
    fn every_policy_compiles() {
        let c = ScaleCluster::generate(&ScaleSpec::new("s", 100)).unwrap();
        for (k, v) in c.policy_objects().iter().take(30) {
            let parsed =
                policy_compiler::parse_policies(k, v).unwrap_or_else(|e| panic!("{k}: {e}"));
            assert!(parsed.warnings.is_empty(), "{k}: {:?}", parsed.warnings);
        }
    }

    #[test]
    fn refuses_what_does_not_fit() {
        let mut spec = ScaleSpec::new("s", 30_000);
        spec.nodes = 100;
        let e = ScaleCluster::generate(&spec).unwrap_err();
        assert!(e.contains("--nodes"), "{e}");
        spec.agents = 101;
        assert!(ScaleCluster::generate(&spec).is_err());
    }
}
