//! `service.upsert` / `service.delete`: frontends, weighted backends, the load-balancing
//! mode, and a service's shape in `dump` (with its id).

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use super::{Proto, WireFrontendKind, WireLbMode};
use crate::tables::services::{Backend, Frontend, FrontendKind, LbMode, Service, ServiceSpec};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FrontendMsg {
    pub addr: IpAddr,
    pub port: u16,
    pub proto: Proto,
}

impl From<FrontendMsg> for Frontend {
    fn from(f: FrontendMsg) -> Self {
        Frontend {
            addr: f.addr,
            port: f.port,
            proto: f.proto.0,
        }
    }
}

impl From<&Frontend> for FrontendMsg {
    fn from(f: &Frontend) -> Self {
        FrontendMsg {
            addr: f.addr,
            port: f.port,
            proto: Proto(f.proto),
        }
    }
}

fn is_cluster_ip(kind: &WireFrontendKind) -> bool {
    *kind == WireFrontendKind::ClusterIp
}

fn one() -> u16 {
    1
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendMsg {
    pub addr: IpAddr,
    pub port: u16,
    /// Default 1; 0 keeps the backend known but sends it no new flows.
    #[serde(default = "one")]
    pub weight: u16,
}

/// `service.upsert`; also the shape of a service in `dump` (with its `id`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceMsg {
    pub frontend: FrontendMsg,
    #[serde(default)]
    pub backends: Vec<BackendMsg>,
    #[serde(default)]
    pub mode: WireLbMode,
    /// Who reaches the frontend: decides what the uplink's XDP program hands the dataplane.
    #[serde(default, skip_serializing_if = "is_cluster_ip")]
    pub kind: WireFrontendKind,
    /// Output only: the service id conntrack carries. Ignored on input.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<u32>,
}

impl ServiceMsg {
    pub fn to_spec(&self) -> ServiceSpec {
        ServiceSpec {
            frontend: self.frontend.into(),
            backends: self
                .backends
                .iter()
                .map(|b| Backend {
                    addr: b.addr,
                    port: b.port,
                    weight: b.weight,
                })
                .collect(),
            mode: match self.mode {
                WireLbMode::Snat => LbMode::Snat,
                WireLbMode::Dsr => LbMode::Dsr,
            },
            kind: match self.kind {
                WireFrontendKind::ClusterIp => FrontendKind::ClusterIp,
                WireFrontendKind::NodePort => FrontendKind::NodePort,
                WireFrontendKind::ExternalIp => FrontendKind::ExternalIp,
            },
        }
    }
}

impl From<&Service> for ServiceMsg {
    fn from(s: &Service) -> Self {
        ServiceMsg {
            frontend: s.frontend().into(),
            backends: s
                .backends()
                .iter()
                .map(|b| BackendMsg {
                    addr: b.addr,
                    port: b.port,
                    weight: b.weight,
                })
                .collect(),
            mode: match s.mode() {
                LbMode::Snat => WireLbMode::Snat,
                LbMode::Dsr => WireLbMode::Dsr,
            },
            kind: match s.kind() {
                FrontendKind::ClusterIp => WireFrontendKind::ClusterIp,
                FrontendKind::NodePort => WireFrontendKind::NodePort,
                FrontendKind::ExternalIp => WireFrontendKind::ExternalIp,
            },
            id: Some(s.id().0),
        }
    }
}

/// `service.delete`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceRef {
    pub frontend: FrontendMsg,
}
