//! DEL: idempotent. Removes the veth pair (named from the container id, so found even when the
//! pod's namespace is gone; the kernel takes the pod side and its addresses with it) and the
//! container's endpoints (the agent then releases their addresses). Missing pieces are not an
//! error; only an unreachable etcd is (error 11: the runtime retries, and the addresses are not
//! leaked).

use super::config::NetConf;
use super::endpoint;
use super::env::Invocation;
use super::error::CniError;
use super::{link, naming};

pub async fn del(inv: &Invocation, conf: &NetConf, node: &str) -> Result<(), CniError> {
    link::delete_host_link(&naming::host_ifname(&inv.container_id))?;
    let store = endpoint::connect(&conf.etcd_endpoints).await?;
    for e in endpoint::endpoints_of_container(&store, node, &inv.container_id).await? {
        endpoint::delete(&store, &e).await?;
    }
    Ok(())
}
