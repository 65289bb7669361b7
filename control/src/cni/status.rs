//! STATUS (1.1.0): ready when etcd answers and holds this node's entry (ADD needs both: the
//! endpoint is written there, the gateways come from the node's pod CIDRs).

use super::config::NetConf;
use super::endpoint;
use super::error::{code, CniError};

pub async fn status(conf: &NetConf, node: &str) -> Result<(), CniError> {
    let not_available = |e: CniError| {
        CniError::new(
            code::NOT_AVAILABLE,
            format!("flagella-cni cannot add pods now: {}", e.msg),
            e.details,
        )
    };
    let store = endpoint::connect(&conf.etcd_endpoints)
        .await
        .map_err(not_available)?;
    endpoint::node_spec(&store, node)
        .await
        .map_err(not_available)?;
    Ok(())
}
