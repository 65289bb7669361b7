//! CHECK: the pod's networking is still as ADD left it (`prevResult`): the veth pair, the pod
//! side's MAC and addresses, a default route through the gateway per family, and the endpoint
//! in etcd holding those addresses for this container. Nothing is changed.

use std::net::IpAddr;

use super::config::NetConf;
use super::endpoint;
use super::env::Invocation;
use super::error::{code, CniError};
use super::result::expected;
use super::{link, naming};

pub async fn check(inv: &Invocation, conf: &NetConf, node: &str) -> Result<(), CniError> {
    if !conf.version.has_check() {
        return Err(CniError::new(
            code::INCOMPATIBLE_VERSION,
            format!(
                "CHECK does not exist in cniVersion {}",
                conf.version.as_str()
            ),
            "use cniVersion 0.4.0 or later",
        ));
    }
    let prev = conf.prev_result.as_ref().ok_or_else(|| {
        CniError::new(
            code::INVALID_CONFIG,
            "CHECK needs `prevResult`",
            "the runtime must pass the result of the ADD (CNI spec, CHECK)",
        )
    })?;
    let netns = inv.netns.as_deref().unwrap_or(std::path::Path::new(""));
    if !link::netns_exists(netns) {
        return Err(CniError::new(
            code::UNKNOWN_CONTAINER,
            format!("the network namespace `{}` does not exist", netns.display()),
            "the container is gone; DEL it",
        ));
    }
    let host = naming::host_ifname(&inv.container_id);
    if !link::host_link_exists(&host) {
        return Err(failed(format!(
            "the host side {host} of the pod's veth is missing"
        )));
    }
    let want = expected(prev, &inv.ifname);
    let mac = link::mac_of(&inv.ifname, Some(netns))
        .map_err(|_| failed(format!("the pod has no interface {}", inv.ifname)))?;
    if want
        .pod_mac
        .as_deref()
        .is_some_and(|m| !m.eq_ignore_ascii_case(&mac))
    {
        return Err(failed(format!(
            "{} has MAC {mac}, the ADD gave {}",
            inv.ifname,
            want.pod_mac.unwrap_or_default()
        )));
    }
    let have = link::pod_addresses(netns, &inv.ifname)?;
    for a in &want.addresses {
        if !have.contains(a) {
            return Err(failed(format!("{} lost its address {a}", inv.ifname)));
        }
    }
    let store = endpoint::connect(&conf.etcd_endpoints).await?;
    let node_spec = endpoint::node_spec(&store, node).await?;
    let ours = endpoint::endpoints_of_container(&store, node, &inv.container_id).await?;
    let Some(ep) = ours.first() else {
        return Err(failed(format!(
            "no endpoint of container {} in etcd",
            inv.container_id
        )));
    };
    for ip in ep.spec.ips() {
        let prefix = match ip {
            IpAddr::V4(a) => format!("{a}/32"),
            IpAddr::V6(a) => format!("{a}/128"),
        };
        if !want.addresses.contains(&prefix) {
            return Err(failed(format!(
                "the endpoint holds {ip}, which the ADD's result does not list"
            )));
        }
        if let Some(gw) = node_spec.pod_gateway(ip.is_ipv4()) {
            if !link::has_default_route(netns, ip.is_ipv4(), gw)? {
                return Err(failed(format!("no default route through the gateway {gw}")));
            }
        }
    }
    Ok(())
}

fn failed(msg: String) -> CniError {
    CniError::new(
        code::CHECK_FAILED,
        msg,
        "the pod's networking was changed after ADD; recreate the pod (DEL, then ADD)",
    )
}
