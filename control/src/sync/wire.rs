//! Translation of model objects into the dataplane's wire messages
//! ([`dataplane::api::protocol`]): nodes, services and frontends, directions, encapsulations,
//! and this node's `local_node` facts.

use std::net::IpAddr;

use dataplane::tables::policy::Direction;
use policy_compiler::model::Protocol;

use crate::dataplane_client::{
    BackendMsg, Change, FrontendMsg, LocalNodeMsg, NodeMsg, Proto, ServiceMsg, Text, WireDirection,
    WireEncap, WireFrontendKind, WireLbMode,
};
use crate::schema::{self, NodeSpec, ServiceMode, ServiceSpec, TunnelMode};

pub(super) fn protocol_number(p: &str) -> u8 {
    Protocol::parse(p, false).map_or(Protocol::TCP, |p| p.numbers()[0])
}

/// The dataplane's `local_node` with this node's etcd facts written over it: the name, the
/// underlay IPv4 address, the pods' gateways (the first host address of the first pod CIDR of
/// each family: the address IPAM never hands out) and the default encapsulation. Everything
/// else (the router MAC, the uplink's index, MAC, MTU and gateway MAC, which the dataplane read
/// from its interfaces at start) is kept from `current`, because `local_node.set` replaces the
/// whole record.
pub fn local_node_facts(current: &LocalNodeMsg, name: &str, spec: &NodeSpec) -> LocalNodeMsg {
    let first_host = |v4: bool| spec.pod_gateway(v4);
    LocalNodeMsg {
        name: name.to_string(),
        underlay_ipv4: match spec.underlay_ip {
            IpAddr::V4(a) => Some(a),
            IpAddr::V6(_) => current.underlay_ipv4,
        },
        gateway_ipv4: match first_host(true) {
            Some(IpAddr::V4(a)) => Some(a),
            _ => None,
        },
        gateway_ipv6: match first_host(false) {
            Some(IpAddr::V6(a)) => Some(a),
            _ => None,
        },
        default_encap: wire_encap(spec.tunnel),
        ..current.clone()
    }
}

fn wire_encap(t: TunnelMode) -> WireEncap {
    match t {
        TunnelMode::Vxlan => WireEncap::Vxlan,
        TunnelMode::Geneve => WireEncap::Geneve,
        TunnelMode::Native => WireEncap::Native,
    }
}

pub(super) fn wire_direction(d: Direction) -> WireDirection {
    match d {
        Direction::Ingress => WireDirection::Ingress,
        Direction::Egress => WireDirection::Egress,
    }
}

pub(super) fn node_upsert(name: &str, n: &NodeSpec) -> Change {
    Change::NodeUpsert(NodeMsg {
        name: name.to_string(),
        underlay: n.underlay_ip,
        pod_cidrs: n.prefixes().into_iter().map(Text).collect(),
        encap: wire_encap(n.tunnel),
    })
}

pub(super) fn frontend_msg(f: &schema::FrontendSpec) -> FrontendMsg {
    FrontendMsg {
        addr: f.ip,
        port: f.port,
        proto: Proto(protocol_number(&f.protocol)),
    }
}

/// `service.upsert` of one of the service's frontends on this node (`sync::frontends`).
pub(super) fn service_upsert(
    frontend: FrontendMsg,
    kind: WireFrontendKind,
    s: &ServiceSpec,
) -> Change {
    Change::ServiceUpsert(ServiceMsg {
        frontend,
        backends: s
            .backends
            .iter()
            .map(|b| BackendMsg {
                addr: b.ip,
                port: b.port,
                weight: b.weight,
            })
            .collect(),
        mode: match s.mode {
            ServiceMode::Snat => WireLbMode::Snat,
            ServiceMode::Dsr => WireLbMode::Dsr,
        },
        kind,
        id: None,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test
mod tests {
    use super::super::test_support::{base, k};
    use super::super::ClusterState;
    use super::local_node_facts;
    use crate::dataplane_client::{LocalNodeMsg, Text, WireEncap};

    /// Regression: the agent never sent `local_node.set`, so a dataplane fed only by the agent
    /// had no gateway address and pods could not resolve their default route's next hop.
    #[test]
    fn own_node_entry_makes_local_node_due_and_keeps_the_uplink_facts() {
        let mut s = ClusterState::new("n1");
        assert!(!s.take_local_node_due());
        base(&mut s);
        assert!(s.take_local_node_due(), "own node written");
        assert!(!s.take_local_node_due(), "once");
        // Another node, or the same own value again: nothing due.
        s.put(
            &k("nodes/n2"),
            br#"{"underlay_ip":"192.168.0.9","pod_cidrs":["10.2.0.0/24"]}"#,
        )
        .unwrap();
        s.put(
            &k("nodes/n1"),
            br#"{"underlay_ip":"192.168.0.1","pod_cidrs":["10.1.0.0/24"]}"#,
        )
        .unwrap();
        assert!(!s.take_local_node_due());
        s.put(
            &k("nodes/n1"),
            br#"{"underlay_ip":"192.168.0.1","pod_cidrs":["10.1.0.0/24","fd00:1::/64"],"tunnel":"geneve"}"#,
        )
        .unwrap();
        assert!(s.take_local_node_due(), "own node changed");
        let _ = s.snapshot();
        assert!(s.take_local_node_due(), "after a dataplane (re)connection");

        let current = LocalNodeMsg {
            router_mac: Text("02:aa:00:00:00:01".parse().unwrap()),
            uplink_ifindex: Some(4),
            uplink_mac: Text("02:bb:00:00:00:02".parse().unwrap()),
            uplink_mtu: 9000,
            ..LocalNodeMsg::default()
        };
        let facts = local_node_facts(&current, "n1", s.own_node().unwrap());
        assert_eq!(facts.name, "n1");
        assert_eq!(facts.underlay_ipv4, Some("192.168.0.1".parse().unwrap()));
        assert_eq!(facts.gateway_ipv4, Some("10.1.0.1".parse().unwrap()));
        assert_eq!(facts.gateway_ipv6, Some("fd00:1::1".parse().unwrap()));
        assert_eq!(facts.default_encap, WireEncap::Geneve);
        assert_eq!(facts.router_mac, current.router_mac);
        assert_eq!(facts.uplink_ifindex, Some(4));
        assert_eq!(facts.uplink_mac, current.uplink_mac);
        assert_eq!(facts.uplink_mtu, 9000);
        // What the dataplane accepts.
        facts.to_local_node().unwrap();
    }
}
