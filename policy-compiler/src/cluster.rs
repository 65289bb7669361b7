//! The cluster description `flagella policy trace` works from (YAML or JSON):
//!
//! ```yaml
//! namespaces:            # name -> labels
//!   x: {team: blue}
//! pods:
//! - namespace: x
//!   name: a
//!   labels: {pod: a}
//!   ip: 10.0.0.1
//!   ports: [{name: http, containerPort: 80, protocol: TCP}]   # protocol defaults to TCP
//!   nodeName: node-1               # optional: the node it runs on (its `host`)
//!   serviceAccountName: frontend   # optional: io.cilium.k8s.policy.serviceaccount
//! nodes:
//! - {name: node-1, ip: 192.168.0.1, labels: {role: worker}}   # labels: optional (nodeSelector)
//! ```
//!
//! Invariants after [`parse_cluster`]: every pod's namespace is declared; `(namespace, name)`
//! and every IP address are unique; a pod's `nodeName` is a declared node; every namespace carries `kubernetes.io/metadata.name`
//! (added when absent, as Kubernetes does); no pod label uses a key reserved for identity
//! labels ([`crate::labels::is_reserved_key`]).

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use crate::doc::{split_documents, Node};
use crate::error::Error;
use crate::labels::{
    check_service_account, is_reserved_key, Labels, NAMESPACE_NAME_LABEL, RESERVED_KEY_HINT,
};
use crate::model::Protocol;

/// A container port a named port can resolve to.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ContainerPort {
    pub name: Option<String>,
    pub port: u16,
    /// IP protocol number (6, 17 or 132).
    pub protocol: u8,
}

/// A pod: an endpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pod {
    pub namespace: String,
    pub name: String,
    pub labels: Labels,
    pub ip: IpAddr,
    pub ports: Vec<ContainerPort>,
    /// The node it runs on (Kubernetes' `spec.nodeName`): that node is its `host`, every other
    /// node `remote-node`. `None`: unknown (every node is `remote-node` to it).
    pub node: Option<String>,
    /// Its service account (Kubernetes' `spec.serviceAccountName`), an identity label
    /// ([`crate::labels::SERVICE_ACCOUNT_LABEL`]). `None`: no such label (Kubernetes' API server
    /// would have defaulted it to `default`; write that to mirror a real pod).
    pub service_account: Option<String>,
}

impl Pod {
    /// `namespace/name`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// Its identity labels, given its namespace's labels.
    pub fn identity_labels(&self, namespace_labels: &Labels) -> Labels {
        Labels::for_pod(
            &self.labels,
            &self.namespace,
            namespace_labels,
            self.service_account.as_deref(),
        )
    }
}

/// A node of the cluster (its address has the `remote-node` identity).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterNode {
    pub name: String,
    pub ip: IpAddr,
    /// What host policies' `nodeSelector` matches.
    pub labels: Labels,
}

/// A whole cluster description.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Cluster {
    pub namespaces: BTreeMap<String, Labels>,
    pub pods: Vec<Pod>,
    pub nodes: Vec<ClusterNode>,
}

/// Parses a cluster description; `source` names it in errors.
pub fn parse_cluster(source: &str, text: &str) -> Result<Cluster, Error> {
    let docs = split_documents(source, text)?;
    let [doc] = docs.as_slice() else {
        return Err(Error::Syntax {
            source_name: source.to_string(),
            format: "cluster file",
            reason: format!(
                "expected exactly one object with namespaces, pods and nodes, found {} documents",
                docs.len()
            ),
        });
    };
    let root = Node::root(doc);
    root.fields(&["namespaces", "pods", "nodes"], &[])?;
    let mut cluster = Cluster::default();
    if let Some(ns) = root.with_field("namespaces", parse_namespaces)? {
        cluster.namespaces = ns;
    }
    cluster.pods = root
        .with_field("pods", |n| n.items(parse_pod))?
        .unwrap_or_default();
    cluster.nodes = root
        .with_field("nodes", |n| n.items(parse_node))?
        .unwrap_or_default();
    validate(root, &cluster)?;
    Ok(cluster)
}

fn parse_namespaces(n: Node<'_>) -> Result<BTreeMap<String, Labels>, Error> {
    let map = n
        .value
        .as_object()
        .ok_or_else(|| n.error("expected a map from namespace name to its labels"))?;
    let mut out = BTreeMap::new();
    for name in map.keys() {
        let labels = n.with_field(name, |l| l.string_map())?.unwrap_or_default();
        let mut labels: Labels = labels.into_iter().collect();
        if !labels.contains_key(NAMESPACE_NAME_LABEL) {
            labels.insert(NAMESPACE_NAME_LABEL, name.as_str());
        }
        out.insert(name.clone(), labels);
    }
    Ok(out)
}

fn parse_ip(n: Node<'_>) -> Result<IpAddr, Error> {
    let s = n.str()?;
    s.parse().map_err(|_| {
        n.error(format!(
            "`{s}` is not an IP address (e.g. 10.0.0.1 or fd00::1)"
        ))
    })
}

fn parse_pod(n: Node<'_>) -> Result<Pod, Error> {
    n.fields(
        &[
            "namespace",
            "name",
            "labels",
            "ip",
            "ports",
            "nodeName",
            "serviceAccountName",
        ],
        &[],
    )?;
    let namespace = n.required("namespace", "the pod's namespace", |v| {
        v.str().map(str::to_string)
    })?;
    let name = n.required("name", "the pod's name", |v| v.str().map(str::to_string))?;
    let labels: Labels = n
        .with_field("labels", |l| {
            let pairs = l.string_map()?;
            if let Some((k, _)) = pairs.iter().find(|(k, _)| is_reserved_key(k)) {
                return Err(Error::field(l.doc, &l.child_path(k), RESERVED_KEY_HINT));
            }
            Ok(pairs)
        })?
        .unwrap_or_default()
        .into_iter()
        .collect();
    let ip = n.required("ip", "the pod's IP address", parse_ip)?;
    let ports = n
        .with_field("ports", |p| p.items(parse_container_port))?
        .unwrap_or_default();
    let node = n.with_field("nodeName", |v| v.str().map(str::to_string))?;
    let service_account = n.with_field("serviceAccountName", |v| {
        let s = v.str()?;
        check_service_account(s).map_err(|e| v.error(e))?;
        Ok(s.to_string())
    })?;
    Ok(Pod {
        namespace,
        name,
        labels,
        ip,
        ports,
        node,
        service_account,
    })
}

fn parse_container_port(n: Node<'_>) -> Result<ContainerPort, Error> {
    n.fields(&["name", "containerPort", "protocol"], &[])?;
    let name = n.with_field("name", |v| v.str().map(str::to_string))?;
    let port = n.required("containerPort", "containerPort", |v| v.u16())?;
    let protocol = n
        .with_field("protocol", |v| {
            let s = v.str()?;
            match Protocol::parse(s, false) {
                Some(p) => Ok(p.numbers()[0]),
                None => Err(v.error(format!("unknown protocol `{s}`; use TCP, UDP or SCTP"))),
            }
        })?
        .unwrap_or(Protocol::TCP);
    Ok(ContainerPort {
        name,
        port,
        protocol,
    })
}

fn parse_node(n: Node<'_>) -> Result<ClusterNode, Error> {
    n.fields(&["name", "ip", "labels"], &[])?;
    Ok(ClusterNode {
        name: n.required("name", "the node's name", |v| v.str().map(str::to_string))?,
        ip: n.required("ip", "the node's IP address", parse_ip)?,
        labels: n
            .with_field("labels", |l| l.string_map())?
            .unwrap_or_default()
            .into_iter()
            .collect(),
    })
}

fn validate(root: Node<'_>, c: &Cluster) -> Result<(), Error> {
    let mut names: HashMap<(&str, &str), usize> = HashMap::new();
    let mut ips: HashMap<IpAddr, String> = HashMap::new();
    for (i, pod) in c.pods.iter().enumerate() {
        let path = format!("pods[{i}]");
        if !c.namespaces.contains_key(&pod.namespace) {
            return Err(Error::field(
                root.doc,
                &format!("{path}.namespace"),
                format!(
                    "namespace `{}` is not declared; add it under `namespaces`",
                    pod.namespace
                ),
            ));
        }
        if let Some(node) = pod
            .node
            .as_deref()
            .filter(|n| !c.nodes.iter().any(|d| d.name == *n))
        {
            return Err(Error::field(
                root.doc,
                &format!("{path}.nodeName"),
                format!("node `{node}` is not declared; add it under `nodes` with its address"),
            ));
        }
        if let Some(first) = names.insert((&pod.namespace, &pod.name), i) {
            return Err(Error::field(
                root.doc,
                &path,
                format!("pod {} is already defined at pods[{first}]", pod.key()),
            ));
        }
        if let Some(other) = ips.insert(pod.ip, path.clone()) {
            return Err(Error::field(
                root.doc,
                &format!("{path}.ip"),
                format!("address {} is already used by {other}", pod.ip),
            ));
        }
    }
    for (i, node) in c.nodes.iter().enumerate() {
        let path = format!("nodes[{i}]");
        if let Some(other) = ips.insert(node.ip, path.clone()) {
            return Err(Error::field(
                root.doc,
                &format!("{path}.ip"),
                format!("address {} is already used by {other}", node.ip),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLUSTER: &str = r#"
namespaces:
  x: {team: blue}
  y: {}
pods:
- {namespace: x, name: a, labels: {pod: a}, ip: 10.0.0.1, ports: [{name: http, containerPort: 80}], nodeName: n1, serviceAccountName: web}
- {namespace: y, name: b, ip: 10.0.0.2, ports: [{containerPort: 53, protocol: UDP}]}
nodes:
- {name: n1, ip: 192.168.0.1}
"#;

    #[test]
    fn parses_and_adds_the_name_label() {
        let c = parse_cluster("c.yaml", CLUSTER).unwrap();
        assert_eq!(c.namespaces["x"].get("team"), Some("blue"));
        assert_eq!(c.namespaces["y"].get(NAMESPACE_NAME_LABEL), Some("y"));
        assert_eq!(c.pods[0].ports[0].protocol, 6);
        assert_eq!(c.pods[1].ports[0].protocol, 17);
        assert_eq!(c.nodes[0].name, "n1");
        assert_eq!(c.pods[0].node.as_deref(), Some("n1"));
        assert_eq!(c.pods[0].service_account.as_deref(), Some("web"));
        assert_eq!(c.pods[1].node, None);
        assert_eq!(c.pods[1].service_account, None);
        let labels = c.pods[0].identity_labels(&c.namespaces["x"]);
        assert_eq!(
            labels.get("io.cilium.k8s.policy.serviceaccount"),
            Some("web")
        );
    }

    #[test]
    fn node_and_service_account_are_checked() {
        let bad = CLUSTER.replace("nodeName: n1", "nodeName: n9");
        let e = parse_cluster("c.yaml", &bad).unwrap_err().to_string();
        assert!(
            e.contains("pods[0].nodeName") && e.contains("not declared"),
            "{e}"
        );
        let bad = CLUSTER.replace("serviceAccountName: web", "serviceAccountName: Web_1");
        let e = parse_cluster("c.yaml", &bad).unwrap_err().to_string();
        assert!(
            e.contains("serviceAccountName") && e.contains("not a service account name"),
            "{e}"
        );
        let bad = CLUSTER.replace(
            "labels: {pod: a}",
            "labels: {io.cilium.k8s.policy.serviceaccount: admin}",
        );
        let e = parse_cluster("c.yaml", &bad).unwrap_err().to_string();
        assert!(e.contains("reserved"), "{e}");
    }

    #[test]
    fn errors_name_the_field() {
        let bad = CLUSTER.replace("namespace: y, name: b", "namespace: q, name: b");
        let e = parse_cluster("c.yaml", &bad).unwrap_err().to_string();
        assert!(
            e.contains("pods[1].namespace") && e.contains("not declared"),
            "{e}"
        );
        let bad = CLUSTER.replace("10.0.0.2", "10.0.0.1");
        let e = parse_cluster("c.yaml", &bad).unwrap_err().to_string();
        assert!(
            e.contains("pods[1].ip") && e.contains("already used"),
            "{e}"
        );
        let bad = CLUSTER.replace(
            "labels: {pod: a}",
            "labels: {io.kubernetes.pod.namespace: z}",
        );
        let e = parse_cluster("c.yaml", &bad).unwrap_err().to_string();
        assert!(e.contains("reserved"), "{e}");
        let bad = CLUSTER.replace("ip: 10.0.0.2", "ipp: 10.0.0.2");
        let e = parse_cluster("c.yaml", &bad).unwrap_err().to_string();
        assert!(
            e.contains("pods[1].ipp") && e.contains("unknown field"),
            "{e}"
        );
    }
}
