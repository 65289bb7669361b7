//! ADD: the veth pair, the pending endpoint, the agent's addresses, the pod's configuration,
//! the result. Anything done before a failure is undone, so a failed ADD leaves nothing (the
//! runtime's DEL would clean it too).

use std::net::IpAddr;
use std::path::Path;

use serde_json::Value;

use crate::schema::EndpointSpec;
use crate::store::Store;

use super::config::NetConf;
use super::endpoint::{self, NodeEndpoint};
use super::env::Invocation;
use super::error::{code, CniError};
use super::result::{add_result, Attached};
use super::{link, naming};

/// Runs ADD; the result JSON on success.
pub async fn add(inv: &Invocation, conf: &NetConf, node: &str) -> Result<Value, CniError> {
    let netns = inv.netns.as_deref().ok_or_else(|| missing_netns(""))?;
    if !link::netns_exists(netns) {
        return Err(missing_netns(&netns.display().to_string()));
    }
    let store = endpoint::connect(&conf.etcd_endpoints).await?;
    let node_spec = endpoint::node_spec(&store, node).await?;
    let host = naming::host_ifname(&inv.container_id);
    if link::host_link_exists(&host) {
        return Err(CniError::new(
            code::ENDPOINT_TAKEN,
            format!(
                "interface {host} for container {} exists already",
                inv.container_id
            ),
            "the runtime must DEL a container before adding it again",
        ));
    }
    link::create_veth(&host, &inv.ifname, netns)?;
    let addressed = match attach(inv, conf, node, &store, &host, netns).await {
        Ok(a) => a,
        Err(e) => {
            let _ = link::delete_host_link(&host);
            return Err(e);
        }
    };
    let with_gateway = |ip: IpAddr| (ip, node_spec.pod_gateway(ip.is_ipv4()));
    let result = Attached {
        host_mac: link::mac_of(&host, None).unwrap_or_default(),
        host_ifname: host.clone(),
        pod_ifname: inv.ifname.clone(),
        pod_mac: addressed.pod_mac.clone(),
        sandbox: netns.display().to_string(),
        mtu: addressed.mtu,
        ips: addressed.ips.iter().copied().map(with_gateway).collect(),
    };
    if let Err(e) = link::configure_pod(netns, &inv.ifname, result.mtu, &result.ips) {
        let _ = endpoint::delete(&store, &addressed.endpoint).await;
        let _ = link::delete_host_link(&host);
        return Err(e);
    }
    Ok(add_result(&result, conf.version))
}

/// The pod's service account: `K8S_POD_SERVICE_ACCOUNT`, else `runtimeConfig.serviceAccount`;
/// checked as the agents check it (error 7), so the endpoint written is never refused.
fn service_account(inv: &Invocation, conf: &NetConf) -> Result<Option<String>, CniError> {
    let Some(sa) = inv
        .pod
        .service_account
        .clone()
        .or_else(|| conf.service_account.clone())
    else {
        return Ok(None);
    };
    policy_compiler::labels::check_service_account(&sa).map_err(|e| {
        CniError::new(
            code::INVALID_CONFIG,
            format!("service account `{sa}` is invalid: {e}"),
            "pass a Kubernetes service account name (lower-case DNS subdomain)",
        )
    })?;
    Ok(Some(sa))
}

fn missing_netns(path: &str) -> CniError {
    CniError::new(
        code::UNKNOWN_CONTAINER,
        format!("the container's network namespace `{path}` does not exist"),
        "the container is gone or CNI_NETNS is wrong; nothing was set up",
    )
}

/// What the agent gave the pod, and what the plugin wrote.
struct Addressed {
    /// IPv4 first.
    ips: Vec<IpAddr>,
    mtu: Option<u16>,
    pod_mac: String,
    endpoint: NodeEndpoint,
}

/// Writes the endpoint and waits for its addresses; deletes it again on failure.
async fn attach(
    inv: &Invocation,
    conf: &NetConf,
    node: &str,
    store: &Store,
    host: &str,
    netns: &Path,
) -> Result<Addressed, CniError> {
    let pod_mac = link::mac_of(&inv.ifname, Some(netns))?;
    let spec = EndpointSpec {
        node: node.to_string(),
        labels: conf.labels.clone(),
        ipv4: None,
        ipv6: None,
        interface: host.to_string(),
        ifindex: Some(link::host_ifindex(host)?),
        mac: Some(pod_mac.clone()),
        ports: Vec::new(),
        mtu: None,
        container_id: Some(inv.container_id.clone()),
        service_account: service_account(inv, conf)?,
    };
    let written = NodeEndpoint {
        namespace: inv
            .pod
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into()),
        name: inv
            .pod
            .name
            .clone()
            .unwrap_or_else(|| naming::fallback_pod_name(&inv.container_id)),
        spec: spec.clone(),
    };
    let info = endpoint::create_and_wait(
        store,
        &written.namespace,
        &written.name,
        spec,
        conf.address_timeout,
    )
    .await;
    match info {
        Ok(info) => Ok(Addressed {
            ips: info
                .ipv4
                .map(IpAddr::V4)
                .into_iter()
                .chain(info.ipv6.map(IpAddr::V6))
                .collect(),
            mtu: info.mtu,
            pod_mac,
            endpoint: written,
        }),
        Err(e) => {
            if e.code != code::ENDPOINT_TAKEN {
                let _ = endpoint::delete(store, &written).await;
            }
            Err(e)
        }
    }
}
