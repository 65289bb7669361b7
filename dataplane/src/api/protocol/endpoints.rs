//! `endpoint.upsert` / `endpoint.delete`, and an endpoint's shape in `dump`.

use std::net::{Ipv4Addr, Ipv6Addr};

use serde::{Deserialize, Serialize};

use super::values::real_identity;
use super::{RequestError, Text};
use crate::tables::endpoints::{EndpointId, EndpointSpec};
use crate::types::MacAddr;

/// `endpoint.upsert`; also the shape of an endpoint in `dump`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointMsg {
    pub id: u32,
    /// Host-side interface index of the pod's veth.
    pub ifindex: u32,
    pub mac: Text<MacAddr>,
    #[serde(default)]
    pub ipv4: Option<Ipv4Addr>,
    #[serde(default)]
    pub ipv6: Option<Ipv6Addr>,
    pub identity: u32,
}

impl EndpointMsg {
    pub fn to_spec(&self) -> Result<EndpointSpec, RequestError> {
        Ok(EndpointSpec {
            id: EndpointId(self.id),
            ifindex: self.ifindex,
            mac: self.mac.0,
            ipv4: self.ipv4,
            ipv6: self.ipv6,
            identity: real_identity("identity", self.identity)?,
        })
    }
}

impl From<&EndpointSpec> for EndpointMsg {
    fn from(s: &EndpointSpec) -> Self {
        EndpointMsg {
            id: s.id.0,
            ifindex: s.ifindex,
            mac: Text(s.mac),
            ipv4: s.ipv4,
            ipv6: s.ipv6,
            identity: s.identity.0,
        }
    }
}

/// `endpoint.delete`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointRef {
    pub id: u32,
}
