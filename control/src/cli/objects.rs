//! `flagella endpoint|identity|service|node|namespace`: reports read from etcd, `endpoint
//! create|delete`, `node upsert`, `namespace upsert`, and the flag syntax of `endpoint create`
//! and `service upsert`.
//!
//! Endpoints are reported through the agent's own model ([`ClusterState`]), so the identity
//! shown is the cluster-wide number the dataplanes use, and an endpoint the agents refuse (its
//! node is missing, ...) is reported as skipped rather than listed.
//!
//! Flag syntax of `service upsert` (parsed by [`parse_frontend`] and [`parse_backend`]):
//! `--frontend IP:PORT[/PROTO]` (`10.96.0.10:80/tcp`, `[fd00::10]:53/udp`; protocol `tcp`
//! by default, or `udp`, `sctp`), `--backend IP:PORT[,WEIGHT]` (weight 1 by default, 0 drains).
//! `endpoint create` ([`parse_labels`], [`parse_port`]): `--labels k=v,k=v`,
//! `--port [NAME=]PORT[/PROTO]`.
//!
//! `endpoint create` writes an endpoint *without* addresses, as a CNI plugin does: the agent of
//! its node allocates them from the node's pod CIDR and writes them back
//! ([`crate::endpoint_ipam`]); [`wait_for_address`] waits for that.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use dataplane::Identity;
use serde::Serialize;

use super::{list_decoded, CliError, Skipped};
use crate::identity::FIRST_IDENTITY;
use crate::schema::{
    self, BackendSpec, EndpointSpec, FrontendSpec, NamespaceSpec, NodeSpec, Object, ObjectKey,
    PortSpec, ServiceSpec, TunnelMode,
};
use crate::store::Store;
use crate::sync::ClusterState;

// ---- endpoints -----------------------------------------------------------------------------

/// One endpoint (pod interface), as `endpoint list|get` report it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct EndpointInfo {
    pub namespace: String,
    pub name: String,
    pub node: String,
    /// The cluster-wide identity; `None` until an agent has allocated it.
    pub identity: Option<u32>,
    pub ipv4: Option<Ipv4Addr>,
    pub ipv6: Option<Ipv6Addr>,
    pub interface: String,
    pub labels: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<PortSpec>,
    /// The MTU the pod's interface must have, written by the node's agent with the addresses;
    /// `None` until then (or while the agent has not read its dataplane's uplink MTU).
    pub mtu: Option<u16>,
}

/// Every endpoint the agents accept, sorted by `namespace/name`, optionally of one node.
pub fn endpoints(state: &ClusterState, node: Option<&str>) -> Vec<EndpointInfo> {
    state
        .endpoints()
        .iter()
        .filter(|(_, e)| node.is_none_or(|n| e.node == n))
        .filter_map(|(key, e)| {
            let (namespace, name) = key.split_once('/')?;
            Some(EndpointInfo {
                namespace: namespace.to_string(),
                name: name.to_string(),
                node: e.node.clone(),
                identity: state.pod_identity(key),
                ipv4: e.ipv4,
                ipv6: e.ipv6,
                interface: e.interface.clone(),
                labels: e.labels.clone(),
                ports: e.ports.clone(),
                mtu: e.mtu,
            })
        })
        .collect()
}

/// `endpoint get NAMESPACE/POD`.
pub fn endpoint(
    state: &ClusterState,
    namespace: &str,
    name: &str,
) -> Result<EndpointInfo, CliError> {
    endpoints(state, None)
        .into_iter()
        .find(|e| e.namespace == namespace && e.name == name)
        .ok_or_else(|| CliError::NotFound {
            what: format!("endpoint {namespace}/{name}"),
            hint: "`flagella endpoint list` lists the endpoints the agents accept; a refused one \
                   is printed as a warning with its reason"
                .into(),
        })
}

/// Parses `k=v,k=v` (an empty string is no label).
pub fn parse_labels(s: &str) -> Result<BTreeMap<String, String>, String> {
    let mut out = BTreeMap::new();
    for pair in s.split(',').filter(|p| !p.is_empty()) {
        let (k, v) = pair
            .split_once('=')
            .filter(|(k, _)| !k.is_empty())
            .ok_or_else(|| format!("label `{pair}` is not KEY=VALUE; e.g. app=web,tier=front"))?;
        if out.insert(k.to_string(), v.to_string()).is_some() {
            return Err(format!("label key `{k}` is given twice"));
        }
    }
    Ok(out)
}

/// Parses `[NAME=]PORT[/PROTO]` (`http=80/tcp`, `53/udp`, `8080`; protocol TCP by default).
pub fn parse_port(s: &str) -> Result<PortSpec, String> {
    let (name, rest) = match s.split_once('=') {
        Some((n, r)) if !n.is_empty() => (Some(n.to_string()), r),
        Some(_) => return Err(format!("port `{s}`: the name before `=` is empty")),
        None => (None, s),
    };
    let (port, protocol) = match rest.split_once('/') {
        Some((p, proto)) => (p, protocol_name(proto)?),
        None => (rest, "TCP"),
    };
    let port: u16 = port.parse().ok().filter(|p| *p != 0).ok_or_else(|| {
        format!("port `{s}` is not [NAME=]PORT[/PROTO] with PORT 1..=65535; e.g. http=80/tcp")
    })?;
    Ok(PortSpec {
        name,
        port,
        protocol: protocol.to_string(),
    })
}

fn endpoint_key(namespace: &str, name: &str) -> String {
    ObjectKey::Endpoint {
        namespace: namespace.to_string(),
        name: name.to_string(),
    }
    .to_key()
}

fn endpoint_info(namespace: &str, name: &str, spec: EndpointSpec) -> EndpointInfo {
    EndpointInfo {
        namespace: namespace.to_string(),
        name: name.to_string(),
        node: spec.node,
        identity: None,
        ipv4: spec.ipv4,
        ipv6: spec.ipv6,
        interface: spec.interface,
        labels: spec.labels,
        ports: spec.ports,
        mtu: spec.mtu,
    }
}

/// Endpoints written without addresses that their node's agent has not served yet (not in the
/// agents' model, so not in [`endpoints`]), sorted by `namespace/name`, optionally of one node.
pub async fn pending_endpoints(
    store: &Store,
    node: Option<&str>,
) -> Result<Vec<EndpointInfo>, CliError> {
    let (objects, _) = list_decoded(store, "endpoints/").await?;
    Ok(objects
        .into_iter()
        .filter_map(|(_, o)| match o {
            Object::PendingEndpoint {
                namespace,
                name,
                spec,
            } if node.is_none_or(|n| spec.node == n) => {
                Some(endpoint_info(&namespace, &name, spec))
            }
            _ => None,
        })
        .collect())
}

/// `endpoint create`: validates `spec` (which must carry no address: the node's agent
/// allocates them) as the agents will, then creates the key; refused if it exists.
pub async fn create_endpoint(
    store: &Store,
    namespace: &str,
    name: &str,
    spec: EndpointSpec,
) -> Result<EndpointInfo, CliError> {
    let key = endpoint_key(namespace, name);
    let value = serde_json::to_vec(&spec).map_err(|e| CliError::Other(e.to_string()))?;
    match schema::decode(&key, &value) {
        Ok(Object::PendingEndpoint { .. }) => {}
        Ok(_) => {
            return Err(CliError::Input(format!(
                "endpoint {namespace}/{name}: `endpoint create` writes no address (the agent of node {} allocates it)",
                spec.node
            )))
        }
        Err(e) => return Err(CliError::Input(e.to_string())),
    }
    if store.put_if_unchanged(&key, value, 0).await?.is_none() {
        return Err(CliError::Input(format!(
            "endpoint {namespace}/{name} already exists; delete it first with `flagella endpoint delete {namespace}/{name}`"
        )));
    }
    Ok(endpoint_info(namespace, name, spec))
}

/// Waits until the agent of the endpoint's node has written its addresses back (polling
/// every 100 ms), at most `timeout`. The pod MTU comes in the same write when the agent knows
/// it; an agent that has not reached its dataplane yet writes the addresses without it.
pub async fn wait_for_address(
    store: &Store,
    namespace: &str,
    name: &str,
    timeout: Duration,
) -> Result<EndpointInfo, CliError> {
    let key = endpoint_key(namespace, name);
    let deadline = Instant::now() + timeout;
    loop {
        let Some(kv) = store.get(&key).await? else {
            return Err(CliError::NotFound {
                what: format!("endpoint {namespace}/{name}"),
                hint: "it was deleted while waiting for its address".into(),
            });
        };
        let node = match schema::decode(&key, &kv.value) {
            Ok(Object::Endpoint { spec, .. }) => return Ok(endpoint_info(namespace, name, spec)),
            Ok(Object::PendingEndpoint { spec, .. }) => spec.node,
            Ok(_) => String::new(),
            Err(e) => return Err(CliError::Other(e.to_string())),
        };
        if Instant::now() >= deadline {
            return Err(CliError::Other(format!(
                "endpoint {namespace}/{name} has no address after {:.0} s: is flagella-control \
                 running for node `{node}`, and does the node have a pod CIDR (`flagella node \
                 list`)? The endpoint stays and gets its address when the agent runs",
                timeout.as_secs_f64()
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `endpoint delete NAMESPACE/POD`: deletes the key; the node's agent then releases its
/// addresses.
pub async fn delete_endpoint(
    store: &Store,
    namespace: &str,
    name: &str,
) -> Result<String, CliError> {
    let key = endpoint_key(namespace, name);
    super::check_key(&key)?;
    if store.get(&key).await?.is_none() {
        return Err(CliError::NotFound {
            what: format!("endpoint {namespace}/{name}"),
            hint: "`flagella endpoint list` lists the endpoints".into(),
        });
    }
    store.delete(&key).await?;
    Ok(key)
}

// ---- identities ----------------------------------------------------------------------------

/// One security identity.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct IdentityInfo {
    pub id: u32,
    pub labels: BTreeMap<String, String>,
    /// Reserved identities (host, world, ...) are the same on every node and not in etcd.
    pub reserved: bool,
}

/// The reserved identities, as `reserved:<name>` labels.
pub fn reserved_identities() -> Vec<IdentityInfo> {
    (1..FIRST_IDENTITY)
        .filter_map(|n| {
            let name = Identity(n).reserved_name()?;
            Some(IdentityInfo {
                id: n,
                labels: BTreeMap::from([(format!("reserved:{name}"), String::new())]),
                reserved: true,
            })
        })
        .collect()
}

/// Reserved identities, then every allocated one, by number.
pub async fn identities(store: &Store) -> Result<(Vec<IdentityInfo>, Vec<Skipped>), CliError> {
    let (objects, skipped) = list_decoded(store, "identities/id/").await?;
    let mut out = reserved_identities();
    out.extend(objects.into_iter().filter_map(|(_, o)| match o {
        Object::Identity(id, spec) => Some(IdentityInfo {
            id,
            labels: spec.labels,
            reserved: false,
        }),
        _ => None,
    }));
    out.sort_by_key(|i| i.id);
    Ok((out, skipped))
}

/// `identity get N`.
pub async fn identity(store: &Store, id: u32) -> Result<IdentityInfo, CliError> {
    let not_found = || CliError::NotFound {
        what: format!("identity {id}"),
        hint: "`flagella identity list` lists the reserved and allocated identities".into(),
    };
    if id < FIRST_IDENTITY {
        return reserved_identities()
            .into_iter()
            .find(|i| i.id == id)
            .ok_or_else(not_found);
    }
    let key = ObjectKey::Identity(id).to_key();
    let kv = store.get(&key).await?.ok_or_else(not_found)?;
    match schema::decode(&key, &kv.value) {
        Ok(Object::Identity(id, spec)) => Ok(IdentityInfo {
            id,
            labels: spec.labels,
            reserved: false,
        }),
        Ok(_) => Err(not_found()),
        Err(e) => Err(CliError::Other(format!(
            "{e}; an agent reallocates it once the key is deleted"
        ))),
    }
}

// ---- services ------------------------------------------------------------------------------

/// One service.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ServiceInfo {
    pub namespace: String,
    pub name: String,
    #[serde(flatten)]
    pub spec: ServiceSpec,
}

/// Parses `IP:PORT[/PROTO]`.
pub fn parse_frontend(s: &str) -> Result<FrontendSpec, String> {
    let (addr, protocol) = match s.rsplit_once('/') {
        Some((addr, proto)) => (addr, protocol_name(proto)?),
        None => (s, "TCP"),
    };
    let sa: SocketAddr = addr.parse().map_err(|_| {
        format!("`{s}` is not IP:PORT[/PROTO]; e.g. 10.96.0.10:80/tcp or [fd00::10]:53/udp")
    })?;
    Ok(FrontendSpec {
        ip: sa.ip(),
        port: sa.port(),
        protocol: protocol.to_string(),
    })
}

fn protocol_name(p: &str) -> Result<&'static str, String> {
    ["TCP", "UDP", "SCTP"]
        .into_iter()
        .find(|n| n.eq_ignore_ascii_case(p))
        .ok_or_else(|| format!("unknown protocol `{p}`: use tcp, udp or sctp"))
}

/// Parses `IP:PORT[,WEIGHT]`.
pub fn parse_backend(s: &str) -> Result<BackendSpec, String> {
    let (addr, weight) = match s.split_once(',') {
        Some((addr, w)) => (
            addr,
            w.parse::<u16>().map_err(|_| {
                format!("weight `{w}` in `{s}` must be a number 0..=65535 (0 drains the backend)")
            })?,
        ),
        None => (s, 1),
    };
    let sa: SocketAddr = addr.parse().map_err(|_| {
        format!("`{s}` is not IP:PORT[,WEIGHT]; e.g. 10.1.0.12:8080 or 10.1.0.12:8080,3")
    })?;
    Ok(BackendSpec {
        ip: sa.ip(),
        port: sa.port(),
        weight,
    })
}

/// `service upsert`: validates the service as the agents will, then writes it.
pub async fn upsert_service(
    store: &Store,
    namespace: &str,
    name: &str,
    spec: ServiceSpec,
) -> Result<ServiceInfo, CliError> {
    let key = ObjectKey::Service {
        namespace: namespace.to_string(),
        name: name.to_string(),
    }
    .to_key();
    put_validated(store, &key, &spec).await?;
    Ok(ServiceInfo {
        namespace: namespace.to_string(),
        name: name.to_string(),
        spec,
    })
}

/// Every service, sorted by `namespace/name`.
pub async fn services(store: &Store) -> Result<(Vec<ServiceInfo>, Vec<Skipped>), CliError> {
    let (objects, skipped) = list_decoded(store, "services/").await?;
    let out = objects
        .into_iter()
        .filter_map(|(_, o)| match o {
            Object::Service {
                namespace,
                name,
                spec,
            } => Some(ServiceInfo {
                namespace,
                name,
                spec,
            }),
            _ => None,
        })
        .collect();
    Ok((out, skipped))
}

/// `service delete NAMESPACE/NAME`.
pub async fn delete_service(
    store: &Store,
    namespace: &str,
    name: &str,
) -> Result<String, CliError> {
    let key = ObjectKey::Service {
        namespace: namespace.to_string(),
        name: name.to_string(),
    }
    .to_key();
    super::check_key(&key)?;
    if store.get(&key).await?.is_none() {
        return Err(CliError::NotFound {
            what: format!("service {namespace}/{name}"),
            hint: "`flagella service list` lists the services".into(),
        });
    }
    store.delete(&key).await?;
    Ok(key)
}

/// `IP:PORT/PROTO` of a frontend (`[v6]:port/proto` for IPv6).
pub fn frontend_text(f: &FrontendSpec) -> String {
    format!(
        "{}/{}",
        SocketAddr::new(f.ip, f.port),
        f.protocol.to_ascii_lowercase()
    )
}

/// `IP:PORT` of a backend, `,WEIGHT` when not 1.
pub fn backend_text(b: &BackendSpec) -> String {
    let addr = SocketAddr::new(b.ip, b.port);
    if b.weight == 1 {
        addr.to_string()
    } else {
        format!("{addr},{}", b.weight)
    }
}

/// Writes `spec` under `key` (creating or replacing it) after validating it with the decoder
/// the agents use, so the agents never see it as a malformed key.
async fn put_validated<T: Serialize>(store: &Store, key: &str, spec: &T) -> Result<(), CliError> {
    let value = serde_json::to_vec(spec).map_err(|e| CliError::Other(e.to_string()))?;
    schema::decode(key, &value).map_err(|e| CliError::Input(e.to_string()))?;
    store.put(key, value).await?;
    Ok(())
}

// ---- nodes ---------------------------------------------------------------------------------

/// `node upsert NAME`: validates the node as the agents will (a unicast underlay address, pod
/// CIDRs without host bits), then writes it. The node's agent allocates its pods' addresses
/// from the first pod CIDR of each family and gives its dataplane the gateway (the first host
/// address).
pub async fn upsert_node(store: &Store, name: &str, spec: NodeSpec) -> Result<NodeSpec, CliError> {
    let key = ObjectKey::Node(name.to_string()).to_key();
    put_validated(store, &key, &spec).await?;
    Ok(spec)
}

/// One node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct NodeInfo {
    pub name: String,
    pub underlay_ip: IpAddr,
    pub pod_cidrs: Vec<String>,
    pub tunnel: TunnelMode,
    /// Endpoints the agents accept on this node.
    pub endpoints: usize,
}

/// Every node, sorted by name.
pub fn nodes(state: &ClusterState) -> Vec<NodeInfo> {
    state
        .nodes()
        .iter()
        .map(|(name, n): (&String, &NodeSpec)| NodeInfo {
            name: name.clone(),
            underlay_ip: n.underlay_ip,
            pod_cidrs: n.pod_cidrs.clone(),
            tunnel: n.tunnel,
            endpoints: state
                .endpoints()
                .values()
                .filter(|e| e.node == *name)
                .count(),
        })
        .collect()
}

// ---- namespaces ----------------------------------------------------------------------------

/// One namespace.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct NamespaceInfo {
    pub name: String,
    pub labels: BTreeMap<String, String>,
}

/// `namespace upsert NAME`: writes the namespace (its labels are part of its pods' identities,
/// `io.cilium.k8s.namespace.labels.*`). Endpoints of a namespace that does not exist are
/// refused by the agents until it is written.
pub async fn upsert_namespace(
    store: &Store,
    name: &str,
    labels: BTreeMap<String, String>,
) -> Result<NamespaceInfo, CliError> {
    let key = ObjectKey::Namespace(name.to_string()).to_key();
    let spec = NamespaceSpec { labels };
    put_validated(store, &key, &spec).await?;
    Ok(NamespaceInfo {
        name: name.to_string(),
        labels: spec.labels,
    })
}

/// Every namespace, sorted by name.
pub async fn namespaces(store: &Store) -> Result<(Vec<NamespaceInfo>, Vec<Skipped>), CliError> {
    let (objects, skipped) = list_decoded(store, "namespaces/").await?;
    let out = objects
        .into_iter()
        .filter_map(|(_, o)| match o {
            Object::Namespace(name, spec) => Some(NamespaceInfo {
                name,
                labels: spec.labels,
            }),
            _ => None,
        })
        .collect();
    Ok((out, skipped))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test
mod tests {
    use super::*;

    #[test]
    fn frontend_and_backend_flags() {
        let f = parse_frontend("10.96.0.10:80/tcp").unwrap();
        assert_eq!(
            (f.ip.to_string(), f.port, f.protocol.as_str()),
            ("10.96.0.10".into(), 80, "TCP")
        );
        let f = parse_frontend("[fd00::10]:53/UDP").unwrap();
        assert_eq!(
            (f.ip.to_string(), f.port, f.protocol.as_str()),
            ("fd00::10".into(), 53, "UDP")
        );
        assert_eq!(parse_frontend("10.96.0.10:80").unwrap().protocol, "TCP");
        assert_eq!(frontend_text(&f), "[fd00::10]:53/udp");
        for bad in [
            "10.96.0.10",
            "10.96.0.10:80/icmp",
            "x:80",
            "10.96.0.10:99999/tcp",
        ] {
            assert!(parse_frontend(bad).is_err(), "{bad}");
        }
        let b = parse_backend("10.1.0.12:8080,3").unwrap();
        assert_eq!((b.port, b.weight), (8080, 3));
        assert_eq!(backend_text(&b), "10.1.0.12:8080,3");
        assert_eq!(parse_backend("10.1.0.12:8080").unwrap().weight, 1);
        let e = parse_backend("10.1.0.12:8080,heavy").unwrap_err();
        assert!(e.contains("weight"), "{e}");
        assert!(parse_backend("10.1.0.12").is_err());
    }

    #[test]
    fn label_and_port_flags() {
        let l = parse_labels("app=web,tier=front,empty=").unwrap();
        assert_eq!(l.len(), 3);
        assert_eq!(l["app"], "web");
        assert_eq!(l["empty"], "");
        assert!(parse_labels("").unwrap().is_empty());
        for bad in ["app", "=web", "a=1,a=2"] {
            assert!(parse_labels(bad).is_err(), "{bad}");
        }
        let p = parse_port("http=80/tcp").unwrap();
        assert_eq!(
            (p.name.as_deref(), p.port, p.protocol.as_str()),
            (Some("http"), 80, "TCP")
        );
        let p = parse_port("53/udp").unwrap();
        assert_eq!((p.name, p.port, p.protocol.as_str()), (None, 53, "UDP"));
        assert_eq!(parse_port("8080").unwrap().protocol, "TCP");
        for bad in ["0", "=80", "http=", "80/icmp", "70000", "x"] {
            assert!(parse_port(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn reserved_identities_are_listed() {
        let r = reserved_identities();
        assert!(r
            .iter()
            .any(|i| i.id == 2 && i.labels.contains_key("reserved:world")));
        assert!(r.iter().all(|i| i.reserved && i.id < FIRST_IDENTITY));
    }
}
