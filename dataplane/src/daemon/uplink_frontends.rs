//! Which service frontends the uplink's XDP program must hand the dataplane: those reached
//! from outside the cluster (Cilium's NodePort and externalIPs), never the cluster IPs.
//!
//! - A NodePort frontend is the node's own address and one port: the uplink owns exactly that
//!   (address, protocol, port) ([`UplinkPort`], the program's `owned_ports` hash), and the
//!   node's SSH, etcd and every other port on the address stay the kernel's.
//! - An external IP is an address routed to the node for the service alone: the uplink owns
//!   the whole address (a host prefix in `owned_v4` / `owned_v6`), as it owns a local pod's.
//! - A cluster IP is reached only from pods (their frames come in on pod interfaces, which the
//!   dataplane owns whole): nothing to own on the uplink.
//!
//! Pure functions of one services table; `host_path` applies the result.

use std::collections::BTreeSet;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr};

use crate::tables::services::{FrontendKind, Services, PROTO_TCP};
use crate::types::Prefix;

/// An exact IPv4 (destination, protocol, destination port) the uplink hands the dataplane.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct UplinkPort {
    pub addr: Ipv4Addr,
    /// IP protocol number: TCP or UDP (the only protocols a service frontend has).
    pub proto: u8,
    pub port: u16,
}

impl fmt::Display for UplinkPort {
    /// `192.168.0.1:30080/tcp`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let proto = if self.proto == PROTO_TCP {
            "tcp"
        } else {
            "udp"
        };
        write!(f, "{}:{}/{proto}", self.addr, self.port)
    }
}

/// The NodePort frontends, as exact ports. An IPv6 NodePort frontend has no port map to go to
/// (the program matches ports of IPv4 only) and is left out: its traffic stays the kernel's.
pub fn owned_ports(services: &Services) -> BTreeSet<UplinkPort> {
    services
        .iter()
        .filter(|s| s.kind() == FrontendKind::NodePort)
        .filter_map(|s| match s.frontend().addr {
            IpAddr::V4(addr) => Some(UplinkPort {
                addr,
                proto: s.frontend().proto,
                port: s.frontend().port,
            }),
            IpAddr::V6(_) => None,
        })
        .collect()
}

/// The external IPs, as host prefixes; never the node's own address (`node`), which would
/// hand the dataplane all of the host's traffic (the agent refuses such a service; this is the
/// dataplane's own guard against a control request that says otherwise).
pub fn owned_external_ips(
    services: &Services,
    node: Option<Ipv4Addr>,
) -> impl Iterator<Item = Prefix> + '_ {
    services
        .iter()
        .filter(|s| s.kind() == FrontendKind::ExternalIp)
        .map(|s| s.frontend().addr)
        .filter(move |a| node.is_none_or(|n| *a != IpAddr::V4(n)))
        .map(Prefix::host)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tables::services::{Backend, Frontend, LbMode, ServiceSpec, PROTO_UDP};

    fn spec(addr: &str, port: u16, proto: u8, kind: FrontendKind) -> ServiceSpec {
        let addr: IpAddr = addr.parse().unwrap();
        let backend = if addr.is_ipv4() {
            "10.1.0.5"
        } else {
            "fd00::5"
        };
        ServiceSpec {
            frontend: Frontend { addr, port, proto },
            backends: vec![Backend {
                addr: backend.parse().unwrap(),
                port: 8080,
                weight: 1,
            }],
            mode: LbMode::Dsr,
            kind,
        }
    }

    #[test]
    fn node_ports_are_exact_ports_external_ips_whole_addresses_cluster_ips_nothing() {
        let mut s = Services::new(251, 1).unwrap();
        s.upsert(spec("10.96.0.10", 80, PROTO_TCP, FrontendKind::ClusterIp))
            .unwrap();
        s.upsert(spec(
            "192.168.0.1",
            30080,
            PROTO_TCP,
            FrontendKind::NodePort,
        ))
        .unwrap();
        s.upsert(spec(
            "192.168.0.1",
            30053,
            PROTO_UDP,
            FrontendKind::NodePort,
        ))
        .unwrap();
        s.upsert(spec("fd00::1", 30080, PROTO_TCP, FrontendKind::NodePort))
            .unwrap();
        s.upsert(spec("203.0.113.7", 80, PROTO_TCP, FrontendKind::ExternalIp))
            .unwrap();
        s.upsert(spec("2001:db8::7", 80, PROTO_TCP, FrontendKind::ExternalIp))
            .unwrap();
        s.upsert(spec("192.168.0.1", 80, PROTO_TCP, FrontendKind::ExternalIp))
            .unwrap();
        let node: Ipv4Addr = "192.168.0.1".parse().unwrap();
        let ports: Vec<String> = owned_ports(&s).iter().map(|p| p.to_string()).collect();
        assert_eq!(ports, ["192.168.0.1:30080/tcp", "192.168.0.1:30053/udp"]);
        assert!(owned_ports(&s).iter().all(|p| p.addr == node));
        let ips: BTreeSet<Prefix> = owned_external_ips(&s, Some(node)).collect();
        let expected: BTreeSet<Prefix> = ["203.0.113.7", "2001:db8::7"]
            .iter()
            .map(|a| Prefix::host(a.parse().unwrap()))
            .collect();
        assert_eq!(ips, expected, "never the node's own address");
    }
}
