//! `local_node.set`: this node's own facts (replaced as a whole), and the `dump` of the next
//! hops the dataplane resolved from the kernel (read only).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde::{Deserialize, Serialize};

use super::{RequestError, Text, WireEncap};
use crate::tables::next_hops::NextHops;
use crate::tables::{LocalNode, TunnelPorts};
use crate::types::MacAddr;

/// `local_node.set`: this node's own facts, replaced as a whole. Absent fields take the
/// defaults of [`LocalNode::default`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LocalNodeMsg {
    pub name: String,
    pub underlay_ipv4: Option<Ipv4Addr>,
    pub router_mac: Text<MacAddr>,
    pub gateway_ipv4: Option<Ipv4Addr>,
    pub gateway_ipv6: Option<Ipv6Addr>,
    pub uplink_ifindex: Option<u32>,
    pub uplink_mac: Text<MacAddr>,
    pub uplink_mtu: u16,
    pub default_encap: WireEncap,
    /// The tunnels' UDP ports: the daemon's configuration (`--vxlan-port`, `--geneve-port`),
    /// shown by `dump`; a `local_node.set` may repeat them but not change them (the uplink's
    /// XDP program was set up with them).
    pub vxlan_port: Option<u16>,
    pub geneve_port: Option<u16>,
}

impl Default for LocalNodeMsg {
    /// [`LocalNode::default`]'s facts; the tunnel ports left out (absent: keep the daemon's).
    fn default() -> Self {
        LocalNodeMsg {
            vxlan_port: None,
            geneve_port: None,
            ..(&LocalNode::default()).into()
        }
    }
}

/// The smallest uplink MTU accepted: IPv6's minimum link MTU.
pub const MIN_UPLINK_MTU: u16 = 1280;

impl LocalNodeMsg {
    pub fn to_local_node(&self) -> Result<LocalNode, RequestError> {
        let router_mac = self.router_mac.0;
        if router_mac.is_multicast() || router_mac == MacAddr::ZERO {
            return Err(RequestError::at(
                "router_mac",
                format!("{router_mac} is all-zero or multicast: give a unicast MAC for the pods' gateway"),
            ));
        }
        if self.uplink_mtu < MIN_UPLINK_MTU {
            return Err(RequestError::at(
                "uplink_mtu",
                format!(
                    "MTU {} is below {MIN_UPLINK_MTU}: give the uplink interface's MTU (e.g. 1500)",
                    self.uplink_mtu
                ),
            ));
        }
        Ok(LocalNode {
            name: self.name.clone(),
            underlay_ipv4: self.underlay_ipv4,
            router_mac,
            gateway_ipv4: self.gateway_ipv4,
            gateway_ipv6: self.gateway_ipv6,
            uplink_ifindex: self.uplink_ifindex,
            uplink_mac: self.uplink_mac.0,
            uplink_mtu: self.uplink_mtu,
            default_encap: self.default_encap.into(),
            // The daemon's own: `apply` keeps the current ones (see `kept_tunnel_ports`).
            tunnel_ports: TunnelPorts::default(),
            host_link: None, // The daemon's too: `apply` keeps the current one.
            host_addresses: Vec::new(),
        })
    }

    /// `current` (the daemon's configured ports) when this message repeats them or leaves them
    /// out; an error naming the field when it asks for others.
    pub fn kept_tunnel_ports(&self, current: TunnelPorts) -> Result<TunnelPorts, RequestError> {
        for (field, asked, have) in [
            ("vxlan_port", self.vxlan_port, current.vxlan),
            ("geneve_port", self.geneve_port, current.geneve),
        ] {
            if let Some(asked) = asked.filter(|p| *p != have) {
                return Err(RequestError::at(
                    field,
                    format!(
                        "the dataplane uses port {have}, not {asked}: the tunnel ports are its \
                         configuration (--vxlan-port, --geneve-port); restart it with the \
                         cluster's ports"
                    ),
                ));
            }
        }
        Ok(current)
    }
}

impl From<&LocalNode> for LocalNodeMsg {
    fn from(n: &LocalNode) -> Self {
        LocalNodeMsg {
            name: n.name.clone(),
            underlay_ipv4: n.underlay_ipv4,
            router_mac: Text(n.router_mac),
            gateway_ipv4: n.gateway_ipv4,
            gateway_ipv6: n.gateway_ipv6,
            uplink_ifindex: n.uplink_ifindex,
            uplink_mac: Text(n.uplink_mac),
            uplink_mtu: n.uplink_mtu,
            default_encap: n.default_encap.into(),
            vxlan_port: Some(n.tunnel_ports.vxlan),
            geneve_port: Some(n.tunnel_ports.geneve),
        }
    }
}

/// `dump` of `next_hops`: the underlay next hops the dataplane resolved from the kernel (read
/// only: there is no request that sets them).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NextHopsMsg {
    pub default_v4: Option<Text<MacAddr>>,
    pub default_v6: Option<Text<MacAddr>>,
    /// Sorted by underlay address.
    pub peers: Vec<NextHopMsg>,
}

/// One resolved peer of [`NextHopsMsg`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NextHopMsg {
    pub underlay: IpAddr,
    pub mac: Text<MacAddr>,
}

impl From<&NextHops> for NextHopsMsg {
    fn from(n: &NextHops) -> Self {
        let mut peers: Vec<NextHopMsg> = n
            .peers()
            .map(|(underlay, mac)| NextHopMsg {
                underlay,
                mac: Text(mac),
            })
            .collect();
        peers.sort_by_key(|p| p.underlay);
        NextHopsMsg {
            default_v4: n.default_v4().map(Text),
            default_v6: n.default_v6().map(Text),
            peers,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_node_validation_names_fields() {
        let ports = TunnelPorts {
            vxlan: 8472,
            geneve: 6081,
        };
        assert_eq!(
            LocalNodeMsg::default().kept_tunnel_ports(ports).unwrap(),
            ports
        );
        let repeated = LocalNodeMsg {
            vxlan_port: Some(8472),
            ..LocalNodeMsg::default()
        };
        assert_eq!(repeated.kept_tunnel_ports(ports).unwrap(), ports);
        let changed = LocalNodeMsg {
            vxlan_port: Some(4789),
            ..LocalNodeMsg::default()
        };
        assert_eq!(
            changed
                .kept_tunnel_ports(ports)
                .unwrap_err()
                .field
                .as_deref(),
            Some("vxlan_port")
        );
        let bad_mtu = LocalNodeMsg {
            uplink_mtu: 100,
            ..Default::default()
        };
        assert_eq!(
            bad_mtu.to_local_node().unwrap_err().field.as_deref(),
            Some("uplink_mtu")
        );
        let bad_mac = LocalNodeMsg {
            router_mac: Text(MacAddr::BROADCAST),
            ..Default::default()
        };
        assert_eq!(
            bad_mac.to_local_node().unwrap_err().field.as_deref(),
            Some("router_mac")
        );
    }
}
