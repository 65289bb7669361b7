//! `ipcache.upsert` / `ipcache.delete`, and an ipcache entry's shape in `dump`.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use super::values::real_identity;
use super::{RequestError, Text};
use crate::tables::ipcache::IpCacheEntry;
use crate::types::Prefix;

/// `ipcache.upsert`; also the shape of an ipcache entry in `dump`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IpcacheMsg {
    pub prefix: Text<Prefix>,
    pub identity: u32,
    /// Underlay IP of the node hosting the prefix; absent for local pods, host and world.
    #[serde(default)]
    pub tunnel_endpoint: Option<IpAddr>,
}

impl IpcacheMsg {
    pub fn to_entry(&self) -> Result<(Prefix, IpCacheEntry), RequestError> {
        let identity = real_identity("identity", self.identity)?;
        if let Some(tep) = self.tunnel_endpoint {
            if tep.is_unspecified() || tep.is_multicast() {
                return Err(RequestError::at(
                    "tunnel_endpoint",
                    format!(
                        "{tep} is not a node's unicast underlay address: give the hosting \
                         node's underlay IP, or omit the field for local prefixes"
                    ),
                ));
            }
        }
        Ok((
            self.prefix.0,
            IpCacheEntry {
                identity,
                tunnel_endpoint: self.tunnel_endpoint,
            },
        ))
    }
}

/// `ipcache.delete`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrefixRef {
    pub prefix: Text<Prefix>,
}
