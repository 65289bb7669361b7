//! `flagella endpoint list|get|create|delete`, and the flag syntax of `endpoint create`
//! ([`parse_labels`]: `--labels k=v,k=v`; [`parse_port`]: `--port [NAME=]PORT[/PROTO]`).
//!
//! Endpoints are reported through the agent's own model ([`ClusterState`]), so the identity
//! shown is the cluster-wide number the dataplanes use, and an endpoint the agents refuse (its
//! node is missing, ...) is reported as skipped rather than listed.
//!
//! `endpoint create` writes an endpoint *without* addresses, as a CNI plugin does: the agent of
//! its node allocates them from the node's pod CIDR and writes them back
//! ([`crate::endpoint_ipam`]); [`wait_for_address`] waits for that.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::args::{EndpointVerb, Output};
use super::render::{emit, warn};
use super::service::protocol_name;
use super::table::Table;
use super::{connect, labels_text, list_decoded, split_namespaced, CliError};
use crate::schema::{self, EndpointSpec, Object, ObjectKey, PortSpec};
use crate::store::Store;
use crate::sync::ClusterState;

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

/// Checks a `--service-account` name as Kubernetes does (a DNS subdomain).
pub fn parse_service_account(s: &str) -> Result<String, String> {
    policy_compiler::labels::check_service_account(s)?;
    Ok(s.to_string())
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

// ---- the command ----------------------------------------------------------------------

/// `endpoint create|delete`: writes; `None` for the read verbs.
async fn endpoint_write(
    verb: EndpointVerb,
    etcd: &[String],
    out: Output,
) -> Result<Option<EndpointVerb>, CliError> {
    match verb {
        EndpointVerb::Create {
            node,
            namespace,
            name,
            labels,
            interface,
            ifindex,
            mac,
            ports,
            service_account,
            wait,
        } => {
            let store = connect(etcd).await?;
            let spec = EndpointSpec {
                node,
                labels,
                ipv4: None,
                ipv6: None,
                interface,
                ifindex,
                mac,
                ports,
                mtu: None,
                container_id: None,
                service_account,
            };
            let mut e = create_endpoint(&store, &namespace, &name, spec).await?;
            if let Some(secs) = wait {
                e = wait_for_address(
                    &store,
                    &namespace,
                    &name,
                    std::time::Duration::from_secs(secs),
                )
                .await?;
            }
            emit(out, &e, || created_text(&e))?;
            Ok(None)
        }
        EndpointVerb::Delete { pod } => {
            let store = connect(etcd).await?;
            let (ns, n) = split_namespaced("endpoint", &pod)?;
            let key = delete_endpoint(&store, ns, n).await?;
            emit(
                out,
                &serde_json::json!({"deleted": format!("{ns}/{n}"), "key": key}),
                || format!("deleted endpoint {ns}/{n}; its node's agent releases its addresses\n"),
            )?;
            Ok(None)
        }
        read => Ok(Some(read)),
    }
}

fn created_text(e: &EndpointInfo) -> String {
    let addrs: Vec<String> = e
        .ipv4
        .map(|a| a.to_string())
        .into_iter()
        .chain(e.ipv6.map(|a| a.to_string()))
        .collect();
    if addrs.is_empty() {
        format!(
            "endpoint {}/{} created; the agent of node {} allocates its address\n",
            e.namespace, e.name, e.node
        )
    } else {
        format!(
            "endpoint {}/{} created on node {}: {} {}\n",
            e.namespace,
            e.name,
            e.node,
            addrs.join(" "),
            mtu_text(e.mtu)
        )
    }
}

/// `mtu 1442`, or why there is none yet.
fn mtu_text(mtu: Option<u16>) -> String {
    match mtu {
        Some(m) => format!("mtu {m}"),
        None => {
            "(mtu not known yet: the node's agent has not read its dataplane's uplink MTU)".into()
        }
    }
}

pub async fn run(verb: EndpointVerb, etcd: &[String], out: Output) -> Result<(), CliError> {
    let Some(verb) = endpoint_write(verb, etcd, out).await? else {
        return Ok(());
    };
    let store = connect(etcd).await?;
    let (state, skipped) = super::policy::live_state(&store).await?;
    warn(&skipped);
    let id_text = |id: Option<u32>| id.map_or_else(|| "(pending)".into(), |i| i.to_string());
    let ip_text = |ip: Option<String>| ip.unwrap_or_else(|| "-".into());
    match verb {
        EndpointVerb::List { node } => {
            let mut eps = endpoints(&state, node.as_deref());
            eps.extend(pending_endpoints(&store, node.as_deref()).await?);
            eps.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
            emit(out, &eps, || {
                let mut t = Table::new(&[
                    "ENDPOINT",
                    "NODE",
                    "IDENTITY",
                    "IPV4",
                    "IPV6",
                    "INTERFACE",
                    "LABELS",
                ]);
                for e in &eps {
                    t.row(vec![
                        format!("{}/{}", e.namespace, e.name),
                        e.node.clone(),
                        id_text(e.identity),
                        ip_text(e.ipv4.map(|a| a.to_string())),
                        ip_text(e.ipv6.map(|a| a.to_string())),
                        e.interface.clone(),
                        labels_text(&e.labels),
                    ]);
                }
                t.render()
            })
        }
        EndpointVerb::Get { pod } => {
            let (ns, name) = split_namespaced("endpoint", &pod)?;
            let e = match endpoint(&state, ns, name) {
                Ok(e) => e,
                Err(not_found) => pending_endpoints(&store, None)
                    .await?
                    .into_iter()
                    .find(|e| e.namespace == ns && e.name == name)
                    .ok_or(not_found)?,
            };
            emit(out, &e, || {
                let ports: Vec<String> = e
                    .ports
                    .iter()
                    .map(|p| match &p.name {
                        Some(n) => format!("{n}={}/{}", p.port, p.protocol),
                        None => format!("{}/{}", p.port, p.protocol),
                    })
                    .collect();
                let mut t = Table::new(&["FIELD", "VALUE"]);
                for (k, v) in [
                    ("endpoint", format!("{}/{}", e.namespace, e.name)),
                    ("node", e.node.clone()),
                    ("identity", id_text(e.identity)),
                    ("ipv4", ip_text(e.ipv4.map(|a| a.to_string()))),
                    ("ipv6", ip_text(e.ipv6.map(|a| a.to_string()))),
                    ("interface", e.interface.clone()),
                    ("labels", labels_text(&e.labels)),
                    ("ports", ports.join(",")),
                    ("mtu", e.mtu.map_or_else(|| "-".into(), |m| m.to_string())),
                ] {
                    t.row(vec![k.to_string(), v]);
                }
                t.render()
            })
        }
        EndpointVerb::Create { .. } | EndpointVerb::Delete { .. } => Ok(()),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test
mod tests {
    use super::*;

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
}
