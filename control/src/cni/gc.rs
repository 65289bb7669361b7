//! GC (1.1.0): removes this node's endpoints, and their veths, whose container the runtime no
//! longer lists in `cni.dev/valid-attachments`. Endpoints without a container id (written by
//! `flagella endpoint create`, not by this plugin) are never touched.

use std::collections::BTreeSet;

use super::config::NetConf;
use super::endpoint;
use super::error::{code, CniError};
use super::{link, naming};

/// Returns the keys of the endpoints removed.
pub async fn gc(conf: &NetConf, node: &str) -> Result<Vec<String>, CniError> {
    let valid: BTreeSet<&str> = conf
        .valid_attachments
        .as_ref()
        .ok_or_else(|| {
            CniError::new(
                code::INVALID_CONFIG,
                "GC needs `cni.dev/valid-attachments`",
                "the runtime must list the attachments still in use (CNI spec 1.1, GC)",
            )
        })?
        .iter()
        .map(|a| a.container_id.as_str())
        .collect();
    let store = endpoint::connect(&conf.etcd_endpoints).await?;
    let mut removed = Vec::new();
    for e in endpoint::endpoints_of(&store, node).await? {
        let Some(id) = e.spec.container_id.as_deref() else {
            continue;
        };
        if valid.contains(id) {
            continue;
        }
        link::delete_host_link(&naming::host_ifname(id))?;
        endpoint::delete(&store, &e).await?;
        removed.push(e.key());
    }
    Ok(removed)
}
