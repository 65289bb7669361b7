//! The etcd side of the plugin: the pod's endpoint (written without addresses, which the
//! node's agent fills in: `crate::endpoint_ipam`), its node's gateways, and the listings DEL
//! and GC need. Writes go through the same functions as `flagella endpoint create`, so the
//! plugin never writes a value the agents would refuse.

use std::time::Duration;

use crate::cli::endpoint::{create_endpoint, wait_for_address, EndpointInfo};
use crate::cli::{list_decoded, CliError, ETCD_TIMEOUT};
use crate::schema::{self, EndpointSpec, NodeSpec, Object, ROOT};
use crate::store::Store;

use super::error::{code, CniError};

/// One endpoint of a node, with the key it is under.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeEndpoint {
    pub namespace: String,
    pub name: String,
    pub spec: EndpointSpec,
}

impl NodeEndpoint {
    pub fn key(&self) -> String {
        format!("{ROOT}endpoints/{}/{}", self.namespace, self.name)
    }
}

/// etcd, or error 11 (try again: etcd may be starting with the node).
pub async fn connect(endpoints: &[String]) -> Result<Store, CniError> {
    Store::connect(endpoints, ETCD_TIMEOUT)
        .await
        .map_err(|e| unavailable(&e.to_string()))
}

fn unavailable(why: &str) -> CniError {
    CniError::new(
        code::TRY_AGAIN_LATER,
        format!("etcd is not reachable: {why}"),
        "check `etcdEndpoints` in the conflist and that etcd runs; the runtime retries",
    )
}

fn from_cli(e: CliError) -> CniError {
    match e {
        CliError::Store(s) => unavailable(&s.to_string()),
        CliError::Input(msg) => CniError::new(code::ENDPOINT_TAKEN, msg, "DEL the old pod first"),
        other => CniError::new(
            code::TRY_AGAIN_LATER,
            other.to_string(),
            "check that flagella-control runs on this node (`systemctl status flagella-control`)",
        ),
    }
}

/// The node's entry: its pod CIDRs give the pods' gateways. Error 7 if the node is unknown.
pub async fn node_spec(store: &Store, node: &str) -> Result<NodeSpec, CniError> {
    let key = format!("{ROOT}nodes/{node}");
    let kv = store
        .get(&key)
        .await
        .map_err(|e| unavailable(&e.to_string()))?;
    let unknown = |why: String| {
        CniError::new(
            code::INVALID_CONFIG,
            format!("node `{node}` has no usable entry in etcd: {why}"),
            "write the node first (`flagella node add`), or set `node` in the conflist to this node's name",
        )
    };
    let kv = kv.ok_or_else(|| unknown(format!("{key} does not exist")))?;
    match schema::decode(&key, &kv.value) {
        Ok(Object::Node(_, spec)) => Ok(spec),
        Ok(_) => Err(unknown("not a node".into())),
        Err(e) => Err(unknown(e.to_string())),
    }
}

/// Writes the pending endpoint (refused, error 100, when the key exists) and waits at most
/// `timeout` for the agent's addresses.
pub async fn create_and_wait(
    store: &Store,
    namespace: &str,
    name: &str,
    spec: EndpointSpec,
    timeout: Duration,
) -> Result<EndpointInfo, CniError> {
    create_endpoint(store, namespace, name, spec)
        .await
        .map_err(from_cli)?;
    wait_for_address(store, namespace, name, timeout)
        .await
        .map_err(from_cli)
}

/// Every endpoint of `node` (pending or addressed) that decodes.
pub async fn endpoints_of(store: &Store, node: &str) -> Result<Vec<NodeEndpoint>, CniError> {
    let (objects, _skipped) = list_decoded(store, "endpoints/").await.map_err(from_cli)?;
    Ok(objects
        .into_iter()
        .filter_map(|(_, o)| match o {
            Object::Endpoint {
                namespace,
                name,
                spec,
            }
            | Object::PendingEndpoint {
                namespace,
                name,
                spec,
            } => Some(NodeEndpoint {
                namespace,
                name,
                spec,
            }),
            _ => None,
        })
        .filter(|e| e.spec.node == node)
        .collect())
}

/// The endpoints of `node` that belong to `container_id`.
pub async fn endpoints_of_container(
    store: &Store,
    node: &str,
    container_id: &str,
) -> Result<Vec<NodeEndpoint>, CniError> {
    Ok(endpoints_of(store, node)
        .await?
        .into_iter()
        .filter(|e| e.spec.container_id.as_deref() == Some(container_id))
        .collect())
}

/// Deletes one endpoint if it is still the value read (a newer pod under the same name keeps
/// its key); the agent then releases its addresses.
pub async fn delete(store: &Store, endpoint: &NodeEndpoint) -> Result<(), CniError> {
    let key = endpoint.key();
    let Some(kv) = store
        .get(&key)
        .await
        .map_err(|e| unavailable(&e.to_string()))?
    else {
        return Ok(());
    };
    let still_ours = match schema::decode(&key, &kv.value) {
        Ok(Object::Endpoint { spec, .. } | Object::PendingEndpoint { spec, .. }) => {
            spec.container_id == endpoint.spec.container_id
        }
        _ => false,
    };
    if still_ours {
        store
            .delete_if_unchanged(&key, &key, kv.mod_revision)
            .await
            .map_err(|e| unavailable(&e.to_string()))?;
    }
    Ok(())
}
