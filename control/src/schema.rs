//! The etcd key schema under [`ROOT`] (`/flagella/v1/`), its value types and their validation.
//!
//! Contract: [`decode`] turns one `(key, value)` pair into an [`Object`] or a [`SchemaError`]
//! that names the key and says what is wrong. It never panics on any bytes. Checks that need
//! other keys (an endpoint's node must exist) are done by the caller (`sync::ClusterState`),
//! which reports them through the same error type ([`SchemaError::UnknownNode`]).
//!
//! Keys (one object per key; values are JSON; `docs/etcd-schema.md` is the reference):
//! - `namespaces/<name>` -> [`NamespaceSpec`]
//! - `endpoints/<namespace>/<pod>` -> [`EndpointSpec`]; one without any address decodes as
//!   [`Object::PendingEndpoint`]: it waits for its node's agent to give it one
//!   ([`crate::endpoint_ipam`])
//! - `policies/<kind>/<namespace>/<name>` and `policies/CiliumClusterwideNetworkPolicy/<name>`
//!   -> the Kubernetes/Cilium object itself, as `kubectl get -o json` prints it
//! - `services/<namespace>/<name>` -> [`ServiceSpec`]
//! - `nodes/<name>` -> [`NodeSpec`]
//! - `identities/...` and `ipam/...`: owned by [`crate::identity`] and [`crate::ipam`]; the sync
//!   reads them through [`decode`] too ([`Object::Identity`], [`Object::Ignored`]).
//!
//! Invariants of a decoded object: names are DNS-label-like (no `/`, not empty); addresses
//! parse; CIDRs have no host bits set; a policy's kind, namespace and name equal its key's.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use dataplane::tables::nodes::Encap;
use dataplane::{MacAddr, Prefix};
use policy_compiler::model::{Policy, PolicyId, PolicyKind};
use serde::{Deserialize, Serialize};

/// Every key of the schema starts with this.
pub const ROOT: &str = "/flagella/v1/";

/// Why a key's value was refused. Each variant names the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SchemaError {
    #[error("{key}: not a Flagella key (expected {ROOT}<namespaces|endpoints|policies|services|nodes|identities|ipam>/...)")]
    UnknownKind { key: String },
    #[error("{key}: malformed key: {reason}")]
    BadKey { key: String, reason: String },
    #[error("{key}: value is not valid JSON for this kind: {reason}")]
    BadJson { key: String, reason: String },
    #[error("{key}: invalid value: {reason}")]
    Invalid { key: String, reason: String },
    #[error("{key}: endpoint is on node `{node}`, which has no key under {ROOT}nodes/; write the node first")]
    UnknownNode { key: String, node: String },
}

impl SchemaError {
    /// The key the error is about.
    pub fn key(&self) -> &str {
        match self {
            SchemaError::UnknownKind { key }
            | SchemaError::BadKey { key, .. }
            | SchemaError::BadJson { key, .. }
            | SchemaError::Invalid { key, .. }
            | SchemaError::UnknownNode { key, .. } => key,
        }
    }
}

// ---- value types -------------------------------------------------------------------------

/// `namespaces/<name>`: the namespace's labels.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NamespaceSpec {
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// A named container port (for named ports in policies).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub port: u16,
    /// `TCP` (default), `UDP` or `SCTP`.
    #[serde(default = "tcp")]
    pub protocol: String,
}

fn tcp() -> String {
    "TCP".into()
}

/// `endpoints/<namespace>/<pod>`: a pod interface.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointSpec {
    /// The node hosting the pod (a key under `nodes/`).
    pub node: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv4: Option<Ipv4Addr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6: Option<Ipv6Addr>,
    /// Host-side interface name of the pod's veth.
    pub interface: String,
    /// Host-side interface index (the CNI plugin writes it; needed for local endpoints).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ifindex: Option<u32>,
    /// The pod interface's MAC address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<PortSpec>,
    /// The MTU the pod's interface must have: written by the node's agent with the addresses
    /// (the node's uplink MTU minus its tunnel's overhead, [`TunnelMode::pod_mtu`]); absent
    /// while the agent has not yet read the uplink's MTU from its dataplane.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u16>,
    /// The container runtime's id of the pod's sandbox (`CNI_CONTAINERID`), written by the CNI
    /// plugin: its DEL releases only the endpoint of the same container, and its GC keeps only
    /// the endpoints whose container the runtime still lists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_id: Option<String>,
    /// The pod's service account (Kubernetes' `spec.serviceAccountName`): its identity gets
    /// the label `io.cilium.k8s.policy.serviceaccount=<name>`, which policies select on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account: Option<String>,
}

/// The smallest MTU an endpoint may have: IPv4's minimum (RFC 791).
pub const MIN_ENDPOINT_MTU: u16 = 68;

impl EndpointSpec {
    /// The address the policy engine keys the pod by (IPv4 first).
    pub fn primary_ip(&self) -> Option<IpAddr> {
        self.ipv4
            .map(IpAddr::V4)
            .or_else(|| self.ipv6.map(IpAddr::V6))
    }

    /// Every address of the pod.
    pub fn ips(&self) -> impl Iterator<Item = IpAddr> + '_ {
        self.ipv4
            .map(IpAddr::V4)
            .into_iter()
            .chain(self.ipv6.map(IpAddr::V6))
    }

    /// The MAC, parsed (validated by [`decode`]).
    pub fn mac_addr(&self) -> Option<MacAddr> {
        self.mac.as_deref().and_then(|m| m.parse().ok())
    }
}

/// Load-balancing mode of a service.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ServiceMode {
    #[default]
    Snat,
    Dsr,
}

/// A service frontend (virtual IP, port, protocol), and the node port that opens it on every
/// node's own address (Kubernetes' `nodePort`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FrontendSpec {
    pub ip: IpAddr,
    pub port: u16,
    /// `TCP` (default), `UDP` or `SCTP`.
    #[serde(default = "tcp")]
    pub protocol: String,
    /// The service is also reached at (every node's underlay address, this port, protocol):
    /// within [`NODE_PORT_RANGE`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_port: Option<u16>,
}

/// Node ports a service may claim (Kubernetes' default `--service-node-port-range`).
pub const NODE_PORT_RANGE: std::ops::RangeInclusive<u16> = 30000..=32767;

/// A service backend.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendSpec {
    pub ip: IpAddr,
    pub port: u16,
    /// Relative weight, default 1; 0 drains (no new flows).
    #[serde(default = "one")]
    pub weight: u16,
}

fn one() -> u16 {
    1
}

/// `services/<namespace>/<name>`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceSpec {
    pub frontends: Vec<FrontendSpec>,
    #[serde(default)]
    pub backends: Vec<BackendSpec>,
    #[serde(default)]
    pub mode: ServiceMode,
    /// Addresses routed to the nodes for this service (Kubernetes' `externalIPs`): each is a
    /// frontend with every frontend's port and protocol.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub external_ips: Vec<IpAddr>,
}

impl ServiceSpec {
    /// True when the service is reached from outside the cluster (node ports, external IPs).
    pub fn is_external(&self) -> bool {
        !self.external_ips.is_empty() || self.frontends.iter().any(|f| f.node_port.is_some())
    }
}

/// How traffic to a node's pods travels.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TunnelMode {
    #[default]
    Vxlan,
    Geneve,
    Native,
}

impl TunnelMode {
    pub fn as_str(self) -> &'static str {
        match self {
            TunnelMode::Vxlan => "vxlan",
            TunnelMode::Geneve => "geneve",
            TunnelMode::Native => "native",
        }
    }

    /// The dataplane's encapsulation for this mode.
    pub fn encap(self) -> Encap {
        match self {
            TunnelMode::Vxlan => Encap::Vxlan,
            TunnelMode::Geneve => Encap::Geneve,
            TunnelMode::Native => Encap::Native,
        }
    }

    /// The MTU of a pod on a node of this mode whose uplink has MTU `uplink_mtu`: the
    /// dataplane's own number ([`Encap::pod_mtu`]), the one its route stage checks frames
    /// against, so what a pod is told and what the dataplane forwards cannot drift.
    pub fn pod_mtu(self, uplink_mtu: u16) -> u16 {
        self.encap().pod_mtu(uplink_mtu)
    }
}

/// `nodes/<name>`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSpec {
    pub underlay_ip: IpAddr,
    /// CIDRs the node's pods take addresses from (IPAM's range), as text (`10.1.0.0/24`).
    pub pod_cidrs: Vec<String>,
    #[serde(default)]
    pub tunnel: TunnelMode,
    /// The node's labels (Kubernetes node labels): what host policies' `nodeSelector` selects.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

impl NodeSpec {
    /// The pods' gateway of one family: the first host address of the node's first pod CIDR of
    /// that family (the address IPAM never hands out; the dataplane answers for it).
    pub fn pod_gateway(&self, ipv4: bool) -> Option<IpAddr> {
        self.prefixes()
            .into_iter()
            .find(|p| p.is_ipv4() == ipv4 && p.prefix_len() < if ipv4 { 32 } else { 128 })
            .map(|p| match p.addr() {
                IpAddr::V4(a) => IpAddr::V4(u32::from(a).wrapping_add(1).into()),
                IpAddr::V6(a) => IpAddr::V6(u128::from(a).wrapping_add(1).into()),
            })
    }

    /// The pod CIDRs, parsed (validated by [`decode`]).
    pub fn prefixes(&self) -> Vec<Prefix> {
        self.pod_cidrs
            .iter()
            .filter_map(|c| c.parse().ok())
            .collect()
    }
}

/// `identities/id/<number>`: what the identity stands for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentitySpec {
    pub labels: BTreeMap<String, String>,
}

// ---- keys ---------------------------------------------------------------------------------

/// What a key names.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ObjectKey {
    Namespace(String),
    Endpoint {
        namespace: String,
        name: String,
    },
    Policy(PolicyId),
    Service {
        namespace: String,
        name: String,
    },
    Node(String),
    /// `identities/id/<n>`.
    Identity(u32),
    /// Keys the sync does not model (identity allocator internals, IPAM allocations).
    Internal(String),
}

impl ObjectKey {
    /// Order in which a listing is applied: what others refer to first.
    pub fn apply_rank(&self) -> u8 {
        match self {
            ObjectKey::Node(_) => 0,
            ObjectKey::Namespace(_) => 1,
            ObjectKey::Identity(_) => 2,
            ObjectKey::Endpoint { .. } => 3,
            ObjectKey::Service { .. } => 4,
            ObjectKey::Policy(_) => 5,
            ObjectKey::Internal(_) => 6,
        }
    }

    /// The full etcd key.
    pub fn to_key(&self) -> String {
        match self {
            ObjectKey::Namespace(n) => format!("{ROOT}namespaces/{n}"),
            ObjectKey::Endpoint { namespace, name } => {
                format!("{ROOT}endpoints/{namespace}/{name}")
            }
            ObjectKey::Policy(id) => policy_key(id),
            ObjectKey::Service { namespace, name } => format!("{ROOT}services/{namespace}/{name}"),
            ObjectKey::Node(n) => format!("{ROOT}nodes/{n}"),
            ObjectKey::Identity(n) => format!("{ROOT}identities/id/{n}"),
            ObjectKey::Internal(k) => k.clone(),
        }
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_key())
    }
}

/// The key of a policy object.
pub fn policy_key(id: &PolicyId) -> String {
    match &id.namespace {
        Some(ns) => format!("{ROOT}policies/{}/{ns}/{}", id.kind.as_str(), id.name),
        None => format!("{ROOT}policies/{}/{}", id.kind.as_str(), id.name),
    }
}

fn parse_kind(s: &str) -> Option<PolicyKind> {
    [
        PolicyKind::NetworkPolicy,
        PolicyKind::CiliumNetworkPolicy,
        PolicyKind::CiliumClusterwideNetworkPolicy,
    ]
    .into_iter()
    .find(|k| k.as_str() == s)
}

/// A name segment: non-empty, no `/`, printable ASCII without spaces, at most 253 bytes.
fn check_name(key: &str, what: &str, s: &str) -> Result<(), SchemaError> {
    let ok =
        !s.is_empty() && s.len() <= 253 && s.bytes().all(|b| b.is_ascii_graphic() && b != b'/');
    if ok {
        Ok(())
    } else {
        Err(SchemaError::BadKey {
            key: key.to_string(),
            reason: format!("{what} `{s}` must be 1..=253 printable characters without `/`"),
        })
    }
}

/// Parses a key (without looking at its value).
pub fn parse_key(key: &str) -> Result<ObjectKey, SchemaError> {
    let unknown = || SchemaError::UnknownKind {
        key: key.to_string(),
    };
    let rest = key.strip_prefix(ROOT).ok_or_else(unknown)?;
    let parts: Vec<&str> = rest.split('/').collect();
    let bad = |reason: &str| SchemaError::BadKey {
        key: key.to_string(),
        reason: reason.to_string(),
    };
    match parts.as_slice() {
        ["namespaces", name] => {
            check_name(key, "namespace", name)?;
            Ok(ObjectKey::Namespace(name.to_string()))
        }
        ["endpoints", ns, name] => {
            check_name(key, "namespace", ns)?;
            check_name(key, "pod name", name)?;
            Ok(ObjectKey::Endpoint {
                namespace: ns.to_string(),
                name: name.to_string(),
            })
        }
        ["services", ns, name] => {
            check_name(key, "namespace", ns)?;
            check_name(key, "service name", name)?;
            Ok(ObjectKey::Service {
                namespace: ns.to_string(),
                name: name.to_string(),
            })
        }
        ["nodes", name] => {
            check_name(key, "node name", name)?;
            Ok(ObjectKey::Node(name.to_string()))
        }
        ["policies", kind, rest @ ..] => {
            let kind = parse_kind(kind).ok_or_else(|| {
                bad("unknown policy kind: use NetworkPolicy, CiliumNetworkPolicy or CiliumClusterwideNetworkPolicy")
            })?;
            let (namespace, name) = match (kind, rest) {
                (PolicyKind::CiliumClusterwideNetworkPolicy, [name]) => (None, *name),
                (PolicyKind::CiliumClusterwideNetworkPolicy, _) => return Err(bad(
                    "a cluster-wide policy key is policies/CiliumClusterwideNetworkPolicy/<name>",
                )),
                (_, [ns, name]) => {
                    check_name(key, "namespace", ns)?;
                    (Some(ns.to_string()), *name)
                }
                _ => {
                    return Err(bad(
                        "a namespaced policy key is policies/<kind>/<namespace>/<name>",
                    ))
                }
            };
            check_name(key, "policy name", name)?;
            Ok(ObjectKey::Policy(PolicyId {
                kind,
                namespace,
                name: name.to_string(),
            }))
        }
        ["identities", "id", n] => n
            .parse::<u32>()
            .ok()
            .filter(|n| *n >= dataplane::Identity::FIRST_CLUSTER_LOCAL)
            .map(ObjectKey::Identity)
            .ok_or_else(|| bad("identity number must be an integer >= 256")),
        ["identities", ..] | ["ipam", ..] => Ok(ObjectKey::Internal(key.to_string())),
        _ => Err(unknown()),
    }
}

// ---- values -------------------------------------------------------------------------------

/// A decoded key and value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Object {
    Namespace(String, NamespaceSpec),
    Endpoint {
        namespace: String,
        name: String,
        spec: EndpointSpec,
    },
    /// An endpoint written without addresses (`flagella endpoint create`, the CNI plugin):
    /// its node's agent allocates them and writes them back ([`crate::endpoint_ipam`]). Until
    /// then it is not part of the cluster model.
    PendingEndpoint {
        namespace: String,
        name: String,
        spec: EndpointSpec,
    },
    Policy(Box<Policy>),
    Service {
        namespace: String,
        name: String,
        spec: ServiceSpec,
    },
    Node(String, NodeSpec),
    Identity(u32, IdentitySpec),
    /// A key the sync does not model.
    Ignored,
}

/// Reads a JSON object into `T` (serde would also accept an array for a struct: refused here).
fn json<T: for<'de> Deserialize<'de>>(key: &str, value: &[u8]) -> Result<T, SchemaError> {
    let bad = |reason: String| SchemaError::BadJson {
        key: key.to_string(),
        reason,
    };
    let v: serde_json::Value = serde_json::from_slice(value).map_err(|e| bad(e.to_string()))?;
    if !v.is_object() {
        return Err(bad("expected a JSON object".into()));
    }
    serde_json::from_value(v).map_err(|e| bad(e.to_string()))
}

fn invalid(key: &str, reason: impl Into<String>) -> SchemaError {
    SchemaError::Invalid {
        key: key.to_string(),
        reason: reason.into(),
    }
}

/// Parses a CIDR strictly: no host bits may be set (`10.1.0.5/24` is refused).
pub fn parse_cidr(text: &str) -> Result<Prefix, String> {
    let p: Prefix = text
        .parse()
        .map_err(|e| format!("`{text}` is not a CIDR ({e}); write e.g. 10.1.0.0/24"))?;
    let given: IpAddr = text
        .split('/')
        .next()
        .and_then(|a| a.parse().ok())
        .ok_or_else(|| format!("`{text}` is not a CIDR; write e.g. 10.1.0.0/24"))?;
    if !text.contains('/') {
        return Err(format!(
            "`{text}` has no prefix length; write e.g. {text}/24"
        ));
    }
    if given != p.addr() {
        return Err(format!(
            "`{text}` has host bits set; did you mean {}/{}?",
            p.addr(),
            p.prefix_len()
        ));
    }
    Ok(p)
}

fn check_protocol(key: &str, field: &str, p: &str) -> Result<(), SchemaError> {
    match p.to_ascii_uppercase().as_str() {
        "TCP" | "UDP" | "SCTP" => Ok(()),
        _ => Err(invalid(
            key,
            format!("{field}: unknown protocol `{p}`; use TCP, UDP or SCTP"),
        )),
    }
}

fn check_labels(key: &str, labels: &BTreeMap<String, String>) -> Result<(), SchemaError> {
    for k in labels.keys() {
        if k.is_empty() {
            return Err(invalid(key, "labels: a label key is empty"));
        }
        if policy_compiler::labels::is_reserved_key(k) {
            return Err(invalid(
                key,
                format!("labels.{k}: {}", policy_compiler::labels::RESERVED_KEY_HINT),
            ));
        }
    }
    Ok(())
}

fn check_endpoint(key: &str, spec: &EndpointSpec) -> Result<(), SchemaError> {
    check_name(key, "node", &spec.node)?;
    check_labels(key, &spec.labels)?;
    if let Some(id) = &spec.container_id {
        check_name(key, "container_id", id)?;
    }
    if let Some(sa) = &spec.service_account {
        policy_compiler::labels::check_service_account(sa)
            .map_err(|e| invalid(key, format!("service_account: {e}")))?;
    }
    if spec
        .ips()
        .any(|ip| ip.is_unspecified() || ip.is_multicast())
    {
        return Err(invalid(key, "endpoint addresses must be unicast"));
    }
    if spec.interface.is_empty() || spec.interface.len() > 15 {
        return Err(invalid(
            key,
            "interface: a Linux interface name has 1..=15 characters",
        ));
    }
    if let Some(m) = &spec.mac {
        m.parse::<MacAddr>().map_err(|_| {
            invalid(
                key,
                format!("mac: `{m}` is not a MAC address (02:00:00:00:00:01)"),
            )
        })?;
    }
    for (i, p) in spec.ports.iter().enumerate() {
        check_protocol(key, &format!("ports[{i}].protocol"), &p.protocol)?;
    }
    if let Some(mtu) = spec.mtu.filter(|m| *m < MIN_ENDPOINT_MTU) {
        return Err(invalid(
            key,
            format!("mtu: {mtu} is below IPv4's minimum of {MIN_ENDPOINT_MTU}; leave it out and the node's agent writes the pod MTU"),
        ));
    }
    Ok(())
}

fn check_service(key: &str, spec: &ServiceSpec) -> Result<(), SchemaError> {
    if spec.frontends.is_empty() {
        return Err(invalid(
            key,
            "frontends: a service needs at least one frontend",
        ));
    }
    for (i, f) in spec.frontends.iter().enumerate() {
        check_protocol(key, &format!("frontends[{i}].protocol"), &f.protocol)?;
        if f.port == 0 {
            return Err(invalid(
                key,
                format!("frontends[{i}].port: port 0 is not a port"),
            ));
        }
        if let Some(np) = f.node_port.filter(|p| !NODE_PORT_RANGE.contains(p)) {
            return Err(invalid(
                key,
                format!(
                    "frontends[{i}].node_port: {np} is outside the node port range {}-{}; pick a port in it or leave node_port out",
                    NODE_PORT_RANGE.start(),
                    NODE_PORT_RANGE.end()
                ),
            ));
        }
        let same_node_port = |g: &FrontendSpec| {
            g.node_port.is_some() && g.node_port == f.node_port && g.protocol == f.protocol
        };
        if spec.frontends[..i].iter().any(same_node_port) {
            return Err(invalid(
                key,
                format!("frontends[{i}].node_port: the service already uses this node port and protocol; give each frontend its own"),
            ));
        }
    }
    for (i, a) in spec.external_ips.iter().enumerate() {
        if a.is_unspecified() || a.is_multicast() || a.is_loopback() {
            return Err(invalid(
                key,
                format!("external_ips[{i}]: {a} is not a unicast address a client can reach"),
            ));
        }
    }
    for (i, b) in spec.backends.iter().enumerate() {
        if b.port == 0 {
            return Err(invalid(
                key,
                format!("backends[{i}].port: port 0 is not a port"),
            ));
        }
    }
    Ok(())
}

fn check_node(key: &str, spec: &NodeSpec) -> Result<(), SchemaError> {
    if spec.underlay_ip.is_unspecified() || spec.underlay_ip.is_multicast() {
        return Err(invalid(key, "underlay_ip must be a unicast address"));
    }
    for (i, c) in spec.pod_cidrs.iter().enumerate() {
        parse_cidr(c).map_err(|r| invalid(key, format!("pod_cidrs[{i}]: {r}")))?;
    }
    Ok(())
}

fn decode_policy(key: &str, id: PolicyId, value: &[u8]) -> Result<Object, SchemaError> {
    let text = std::str::from_utf8(value).map_err(|_| SchemaError::BadJson {
        key: key.to_string(),
        reason: "not UTF-8".into(),
    })?;
    // JSON only (YAML is a superset and would accept more): etcd holds what `kubectl -o json` prints.
    let _: serde_json::Value = json(key, value)?;
    let parsed =
        policy_compiler::parse_policies(key, text).map_err(|e| invalid(key, e.to_string()))?;
    let [policy] = <[Policy; 1]>::try_from(parsed.policies).map_err(|v| {
        invalid(
            key,
            format!("a policy key holds exactly one object, found {}", v.len()),
        )
    })?;
    if policy.id != id {
        return Err(invalid(
            key,
            format!(
                "the object is {} but the key names {}; write it under {}",
                policy.id,
                id,
                policy_key(&policy.id)
            ),
        ));
    }
    Ok(Object::Policy(Box::new(policy)))
}

/// Decodes one key and its value. See the module doc.
pub fn decode(key: &str, value: &[u8]) -> Result<Object, SchemaError> {
    match parse_key(key)? {
        ObjectKey::Namespace(name) => {
            let spec: NamespaceSpec = json(key, value)?;
            check_labels(key, &spec.labels)?;
            Ok(Object::Namespace(name, spec))
        }
        ObjectKey::Endpoint { namespace, name } => {
            let spec: EndpointSpec = json(key, value)?;
            check_endpoint(key, &spec)?;
            if spec.primary_ip().is_none() {
                return Ok(Object::PendingEndpoint {
                    namespace,
                    name,
                    spec,
                });
            }
            Ok(Object::Endpoint {
                namespace,
                name,
                spec,
            })
        }
        ObjectKey::Policy(id) => decode_policy(key, id, value),
        ObjectKey::Service { namespace, name } => {
            let spec: ServiceSpec = json(key, value)?;
            check_service(key, &spec)?;
            Ok(Object::Service {
                namespace,
                name,
                spec,
            })
        }
        ObjectKey::Node(name) => {
            let spec: NodeSpec = json(key, value)?;
            check_node(key, &spec)?;
            check_labels(key, &spec.labels)?;
            Ok(Object::Node(name, spec))
        }
        ObjectKey::Identity(n) => Ok(Object::Identity(n, json(key, value)?)),
        ObjectKey::Internal(_) => Ok(Object::Ignored),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test
mod tests {
    use super::*;

    fn k(s: &str) -> String {
        format!("{ROOT}{s}")
    }

    #[test]
    fn decodes_each_kind() {
        let ep = br#"{"node":"n1","labels":{"app":"web"},"ipv4":"10.1.0.5","interface":"lxc1","ifindex":7,"mac":"02:00:00:00:00:05"}"#;
        match decode(&k("endpoints/default/web-1"), ep).unwrap() {
            Object::Endpoint {
                namespace,
                name,
                spec,
            } => {
                assert_eq!((namespace.as_str(), name.as_str()), ("default", "web-1"));
                assert_eq!(spec.primary_ip(), Some("10.1.0.5".parse().unwrap()));
                assert!(spec.mac_addr().is_some());
            }
            o => panic!("{o:?}"),
        }
        let node =
            br#"{"underlay_ip":"192.168.0.1","pod_cidrs":["10.1.0.0/24"],"tunnel":"geneve"}"#;
        assert!(
            matches!(decode(&k("nodes/n1"), node), Ok(Object::Node(n, s)) if n == "n1" && s.tunnel == TunnelMode::Geneve)
        );
        let svc = br#"{"frontends":[{"ip":"10.96.0.1","port":80}],"backends":[{"ip":"10.1.0.5","port":8080,"weight":2}],"mode":"dsr"}"#;
        assert!(
            matches!(decode(&k("services/default/web"), svc), Ok(Object::Service { spec, .. }) if spec.mode == ServiceMode::Dsr && spec.backends[0].weight == 2)
        );
        assert!(matches!(
            decode(&k("namespaces/default"), br#"{"labels":{"team":"a"}}"#),
            Ok(Object::Namespace(..))
        ));
        let np = br#"{"apiVersion":"networking.k8s.io/v1","kind":"NetworkPolicy","metadata":{"name":"deny","namespace":"default"},"spec":{"podSelector":{}}}"#;
        assert!(matches!(
            decode(&k("policies/NetworkPolicy/default/deny"), np),
            Ok(Object::Policy(_))
        ));
        assert_eq!(
            decode(&k("ipam/n1/10.1.0.5"), b"anything"),
            Ok(Object::Ignored)
        );
    }

    #[test]
    fn refuses_with_key_and_reason() {
        let e = decode(&k("nodes/n1"), b"{not json").unwrap_err();
        assert!(matches!(e, SchemaError::BadJson { .. }));
        assert_eq!(e.key(), k("nodes/n1"));
        let e = decode(&k("widgets/x"), b"{}").unwrap_err();
        assert!(matches!(e, SchemaError::UnknownKind { .. }), "{e}");
        let e = decode(
            &k("nodes/n1"),
            br#"{"underlay_ip":"192.168.0.1","pod_cidrs":["10.1.0.5/24"]}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("host bits") && e.contains("nodes/n1"), "{e}");
        let e = decode(
            &k("nodes/n1"),
            br#"{"underlay_ip":"192.168.0.1","pod_cidrs":["10.1.0.0/40"]}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("pod_cidrs[0]"), "{e}");
        // Without addresses: valid, and waiting for the node's IPAM.
        assert!(matches!(
            decode(
                &k("endpoints/default/a"),
                br#"{"node":"n1","interface":"lxc1"}"#,
            ),
            Ok(Object::PendingEndpoint { namespace, name, spec })
                if namespace == "default" && name == "a" && spec.node == "n1"
        ));
        let e = decode(
            &k("endpoints/default/a"),
            br#"{"node":"n1","interface":"lxc1","ipv4":"0.0.0.0"}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("unicast"), "{e}");
        let e = decode(
            &k("endpoints/default/a"),
            br#"{"node":"n1","interface":"lxc1","ipv4":"10.0.0.1","colour":"red"}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("unknown field"), "{e}");
        let e = decode(
            &k("endpoints/default/a"),
            br#"{"node":"n1","interface":"lxc1","ipv4":"10.0.0.1","mtu":67}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("mtu: 67"), "{e}");
        let np = br#"{"apiVersion":"networking.k8s.io/v1","kind":"NetworkPolicy","metadata":{"name":"other","namespace":"default"},"spec":{"podSelector":{}}}"#;
        let e = decode(&k("policies/NetworkPolicy/default/deny"), np)
            .unwrap_err()
            .to_string();
        assert!(e.contains("key names"), "{e}");
        let e = decode(&k("policies/Gadget/default/deny"), np)
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown policy kind"), "{e}");
        let e = decode(
            &k("policies/NetworkPolicy/default/deny"),
            br#"{"kind":"Gadget"}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("policies/NetworkPolicy/default/deny"), "{e}");
        let e = decode(&k("identities/id/12"), br#"{"labels":{}}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains(">= 256"), "{e}");
    }

    #[test]
    fn endpoint_mtu_is_optional_and_round_trips() {
        let key = k("endpoints/default/a");
        let with = br#"{"node":"n1","interface":"lxc1","ipv4":"10.1.0.2","mtu":1442}"#;
        let Ok(Object::Endpoint { spec, .. }) = decode(&key, with) else {
            panic!("not an endpoint");
        };
        assert_eq!(spec.mtu, Some(1442));
        let text = serde_json::to_string(&spec).unwrap();
        assert!(text.contains(r#""mtu":1442"#), "{text}");
        // Absent: nothing written (values written before the field existed stay the same).
        let without = br#"{"node":"n1","interface":"lxc1","ipv4":"10.1.0.2"}"#;
        let Ok(Object::Endpoint { spec, .. }) = decode(&key, without) else {
            panic!("not an endpoint");
        };
        assert_eq!(spec.mtu, None);
        assert!(!serde_json::to_string(&spec).unwrap().contains("mtu"));
        // A pending endpoint may carry one too; it stays pending.
        let pending = br#"{"node":"n1","interface":"lxc1","mtu":1500}"#;
        assert!(matches!(
            decode(&key, pending),
            Ok(Object::PendingEndpoint { .. })
        ));
    }

    #[test]
    fn endpoint_service_account_is_optional_and_checked() {
        let key = k("endpoints/default/a");
        let with = br#"{"node":"n1","interface":"lxc1","ipv4":"10.1.0.2","service_account":"web"}"#;
        let Ok(Object::Endpoint { spec, .. }) = decode(&key, with) else {
            panic!("not an endpoint");
        };
        assert_eq!(spec.service_account.as_deref(), Some("web"));
        let text = serde_json::to_string(&spec).unwrap();
        assert!(text.contains(r#""service_account":"web""#), "{text}");
        let without = br#"{"node":"n1","interface":"lxc1","ipv4":"10.1.0.2"}"#;
        let Ok(Object::Endpoint { spec, .. }) = decode(&key, without) else {
            panic!("not an endpoint");
        };
        assert_eq!(spec.service_account, None);
        assert!(!serde_json::to_string(&spec)
            .unwrap()
            .contains("service_account"));
        for bad in [
            r#""service_account":"Web""#,
            r#""service_account":"""#,
            r#""service_account":7"#,
            r#""labels":{"io.cilium.k8s.policy.serviceaccount":"admin"}"#,
        ] {
            let value = format!(r#"{{"node":"n1","interface":"lxc1","ipv4":"10.1.0.2",{bad}}}"#);
            let e = decode(&key, value.as_bytes()).unwrap_err().to_string();
            assert!(e.contains("endpoints/default/a"), "{bad}: {e}");
        }
    }

    #[test]
    fn pod_mtu_per_tunnel_mode_is_the_dataplanes() {
        assert_eq!(TunnelMode::Vxlan.pod_mtu(1500), 1442);
        assert_eq!(TunnelMode::Geneve.pod_mtu(1500), 1438);
        assert_eq!(TunnelMode::Native.pod_mtu(9000), 8992);
        for t in [TunnelMode::Vxlan, TunnelMode::Geneve, TunnelMode::Native] {
            assert_eq!(t.pod_mtu(1500), t.encap().pod_mtu(1500));
            assert_eq!(t.encap().as_str(), t.as_str());
        }
    }

    #[test]
    fn key_round_trip() {
        for s in [
            "namespaces/a",
            "endpoints/a/b",
            "services/a/b",
            "nodes/n",
            "policies/CiliumNetworkPolicy/a/b",
            "policies/CiliumClusterwideNetworkPolicy/b",
            "identities/id/300",
        ] {
            let key = k(s);
            assert_eq!(parse_key(&key).unwrap().to_key(), key);
        }
    }

    #[test]
    fn decode_never_panics_on_garbage() {
        for v in [
            &b""[..],
            b"\xff\xfe",
            b"null",
            b"[]",
            b"1e999",
            b"{\"node\":1}",
        ] {
            for key in [
                "endpoints/a/b",
                "nodes/n",
                "policies/NetworkPolicy/a/b",
                "services/a/b",
                "namespaces/x",
            ] {
                assert!(decode(&k(key), v).is_err(), "{key} {v:?}");
            }
        }
    }
}
