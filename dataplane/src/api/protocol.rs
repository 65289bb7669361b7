//! The control protocol: newline-delimited JSON requests and replies (see
//! `docs/control-socket.md` for one example per op).
//!
//! A request is one JSON object on one line, with an `op` tag and, optionally, a `seq` (any
//! number or string) that the reply echoes. Parsing is two-staged so that every error names the
//! field at fault: the line is first read as a JSON object and its `op` picked out; the rest of
//! the object is then deserialized into that op's struct through `serde_path_to_error`, which
//! records the path (`add[2].port`). Unknown fields are errors (a typo must not silently mean
//! "absent").
//!
//! Some rules JSON types cannot express (a port range needs a protocol, `end_port >= port`,
//! identity 0 is the wildcard) are checked by the `to_*` conversions here, before anything is
//! applied; the tables check the rest (address conflicts, overlapping pod CIDRs) and
//! [`super::apply`] maps their errors to fields.
//!
//! Wire types derive both `Deserialize` and `Serialize`: dumps and events are written in the
//! same shapes as the requests, so a dump can be replayed as upserts.

use std::fmt;
use std::marker::PhantomData;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use serde::de::{self, DeserializeOwned, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};

use crate::tables::endpoints::{EndpointId, EndpointSpec};
use crate::tables::ipcache::IpCacheEntry;
use crate::tables::next_hops::NextHops;
use crate::tables::nodes::{Encap, Node};
use crate::tables::policy::{self, Action, PolicyEntry, PolicyKey, PortRange, PROTO_ANY};
use crate::tables::services::{Backend, Frontend, LbMode, Service, ServiceSpec};
use crate::tables::{LocalNode, TunnelPorts};
use crate::types::{Identity, MacAddr, Prefix};
use crate::wire::ip;

/// Every op, as the `op` field spells it.
pub const OPS: [&str; 16] = [
    "status",
    "endpoint.upsert",
    "endpoint.delete",
    "ipcache.upsert",
    "ipcache.delete",
    "policy.update",
    "policy.replace",
    "service.upsert",
    "service.delete",
    "node.upsert",
    "node.delete",
    "local_node.set",
    "dump",
    "subscribe",
    "ping",
    "unsubscribe",
];

/// A request that was refused: what is wrong, where, and what to do. Nothing was changed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct RequestError {
    /// Path of the offending field (`frontend.port`, `add[1].end_port`); `None` when the
    /// request as a whole is at fault (not JSON, too long).
    pub field: Option<String>,
    /// A sentence that says what is wrong and what to do.
    pub message: String,
}

impl RequestError {
    pub fn at(field: impl Into<String>, message: impl Into<String>) -> Self {
        RequestError {
            field: Some(field.into()),
            message: message.into(),
        }
    }

    pub fn whole(message: impl Into<String>) -> Self {
        RequestError {
            field: None,
            message: message.into(),
        }
    }
}

/// `base.name`, or `name` when `base` is the root, or `base` when `name` is empty.
pub fn join(base: &str, name: &str) -> String {
    if name.is_empty() {
        base.to_string()
    } else if base.is_empty() || base == "." {
        name.to_string()
    } else {
        format!("{base}.{name}")
    }
}

// ---- value types ---------------------------------------------------------------------------

/// A value written as a string in JSON through its `FromStr`/`Display` (MACs, prefixes).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Text<T>(pub T);

impl<T: fmt::Display> Serialize for Text<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.0)
    }
}

impl<'de, T> Deserialize<'de> for Text<T>
where
    T: FromStr,
    T::Err: fmt::Display,
{
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct TextVisitor<T>(PhantomData<T>);
        impl<T> Visitor<'_> for TextVisitor<T>
        where
            T: FromStr,
            T::Err: fmt::Display,
        {
            type Value = Text<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                v.parse().map(Text).map_err(E::custom)
            }
        }
        d.deserialize_str(TextVisitor(PhantomData))
    }
}

/// An IP protocol: a name (`tcp`, `udp`, `icmp`, `icmpv6`, `sctp`, `any`) or a number 0..=255.
/// The names are [`ip::Protocol`]'s, plus `any` for the policy wildcard [`PROTO_ANY`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Proto(pub u8);

/// The name of the policy wildcard [`PROTO_ANY`].
const ANY_NAME: &str = "any";

impl Proto {
    fn name(self) -> Option<&'static str> {
        if self.0 == PROTO_ANY {
            Some(ANY_NAME)
        } else {
            ip::Protocol::from(self.0).name()
        }
    }

    fn from_name(name: &str) -> Option<Proto> {
        if name.eq_ignore_ascii_case(ANY_NAME) {
            Some(Proto(PROTO_ANY))
        } else {
            ip::Protocol::from_name(name).map(|p| Proto(p.number()))
        }
    }
}

impl Serialize for Proto {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.name() {
            Some(name) => s.serialize_str(name),
            None => s.serialize_u8(self.0),
        }
    }
}

impl<'de> Deserialize<'de> for Proto {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct ProtoVisitor;
        impl Visitor<'_> for ProtoVisitor {
            type Value = Proto;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a protocol name (tcp, udp, icmp, icmpv6, sctp, any) or number 0..=255")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Proto, E> {
                u8::try_from(v)
                    .map(Proto)
                    .map_err(|_| E::custom(format!("protocol number {v} is above 255")))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Proto, E> {
                u64::try_from(v)
                    .map_err(|_| E::custom(format!("protocol number {v} is negative")))
                    .and_then(|v| self.visit_u64(v))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Proto, E> {
                Proto::from_name(v).ok_or_else(|| {
                    E::custom(format!(
                        "unknown protocol `{v}`: use tcp, udp, icmp, icmpv6, sctp, any or a number"
                    ))
                })
            }
        }
        d.deserialize_any(ProtoVisitor)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WireDirection {
    Ingress,
    Egress,
}

impl From<WireDirection> for policy::Direction {
    fn from(d: WireDirection) -> Self {
        match d {
            WireDirection::Ingress => policy::Direction::Ingress,
            WireDirection::Egress => policy::Direction::Egress,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WireAction {
    Allow,
    Deny,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WireLbMode {
    #[default]
    Snat,
    Dsr,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WireEncap {
    #[default]
    Vxlan,
    Geneve,
    Native,
}

impl From<WireEncap> for Encap {
    fn from(e: WireEncap) -> Self {
        match e {
            WireEncap::Vxlan => Encap::Vxlan,
            WireEncap::Geneve => Encap::Geneve,
            WireEncap::Native => Encap::Native,
        }
    }
}

impl From<Encap> for WireEncap {
    fn from(e: Encap) -> Self {
        match e {
            Encap::Vxlan => WireEncap::Vxlan,
            Encap::Geneve => WireEncap::Geneve,
            Encap::Native => WireEncap::Native,
        }
    }
}

/// A security identity that must be a real one (not 0, the wildcard).
fn real_identity(field: &str, id: u32) -> Result<Identity, RequestError> {
    if id == 0 {
        return Err(RequestError::at(
            field,
            "identity 0 is the wildcard and cannot be assigned: give the security identity \
             allocated for the pod or prefix",
        ));
    }
    Ok(Identity(id))
}

// ---- endpoints and ipcache ----------------------------------------------------------------

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

// ---- policy --------------------------------------------------------------------------------

/// The key part of a policy-map entry, as a `delete` item names it.
///
/// `identity` 0 (the default) is any identity; `proto` `any` (the default) is any protocol and
/// then no port may be given. `port` absent (or 0 without `end_port`) is any port; `end_port`
/// makes `port..=end_port` a range.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyKeyMsg {
    #[serde(default)]
    pub identity: u32,
    #[serde(default)]
    pub proto: Proto,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_port: Option<u16>,
}

impl PolicyKeyMsg {
    /// The datapath key; `path` prefixes the field names of errors (`add[2]`).
    pub fn to_key(&self, path: &str) -> Result<PolicyKey, RequestError> {
        let ports = match (self.port, self.end_port) {
            (None, None) | (Some(0), None) => PortRange::ANY,
            (None, Some(_)) => {
                return Err(RequestError::at(
                    join(path, "end_port"),
                    "end_port without port: give port (the first port of the range) too",
                ))
            }
            (Some(p), None) => PortRange::single(p),
            (Some(lo), Some(hi)) => PortRange::new(lo, hi).ok_or_else(|| {
                RequestError::at(
                    join(path, "end_port"),
                    format!("end_port {hi} is below port {lo}: give end_port >= port"),
                )
            })?,
        };
        if self.proto.0 == PROTO_ANY && !ports.is_any() {
            return Err(RequestError::at(
                join(path, "port"),
                "a port needs a protocol: set proto (tcp, udp, ...) or remove the port",
            ));
        }
        Ok(PolicyKey::l4(Identity(self.identity), self.proto.0, ports))
    }
}

impl From<PolicyKey> for PolicyKeyMsg {
    fn from(k: PolicyKey) -> Self {
        let (port, end_port) = if k.ports.is_any() {
            (None, None)
        } else if k.ports.lo == k.ports.hi {
            (Some(k.ports.lo), None)
        } else {
            (Some(k.ports.lo), Some(k.ports.hi))
        };
        PolicyKeyMsg {
            identity: k.identity.0,
            proto: Proto(k.proto),
            port,
            end_port,
        }
    }
}

/// A policy-map entry (`add` items, `policy.replace` entries, `dump` of a policy): the key
/// fields of [`PolicyKeyMsg`] plus an action and a cookie. (Written out rather than
/// `#[serde(flatten)]`ed: flatten would lose unknown-field checks and error paths.)
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyEntryMsg {
    #[serde(default)]
    pub identity: u32,
    #[serde(default)]
    pub proto: Proto,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_port: Option<u16>,
    pub action: WireAction,
    /// Opaque rule reference, printed by monitor and trace.
    #[serde(default)]
    pub cookie: u32,
}

impl PolicyEntryMsg {
    /// The key fields alone.
    pub fn key(&self) -> PolicyKeyMsg {
        PolicyKeyMsg {
            identity: self.identity,
            proto: self.proto,
            port: self.port,
            end_port: self.end_port,
        }
    }

    pub fn to_entry(&self, path: &str) -> Result<(PolicyKey, PolicyEntry), RequestError> {
        let key = self.key().to_key(path)?;
        let action = match self.action {
            WireAction::Allow => Action::Allow,
            WireAction::Deny => Action::Deny,
        };
        Ok((
            key,
            PolicyEntry {
                action,
                cookie: self.cookie,
            },
        ))
    }
}

impl From<(PolicyKey, PolicyEntry)> for PolicyEntryMsg {
    fn from((k, e): (PolicyKey, PolicyEntry)) -> Self {
        let key = PolicyKeyMsg::from(k);
        PolicyEntryMsg {
            identity: key.identity,
            proto: key.proto,
            port: key.port,
            end_port: key.end_port,
            action: match e.action {
                Action::Allow => WireAction::Allow,
                Action::Deny => WireAction::Deny,
            },
            cookie: e.cookie,
        }
    }
}

/// `policy.update`: a batch of changes to one endpoint's policy in one direction, applied
/// atomically: deletes first, then adds (so a batch can replace an entry), then `enforced`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyUpdate {
    pub endpoint: u32,
    pub direction: WireDirection,
    /// Absent: the direction's enforcement is left as it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enforced: Option<bool>,
    #[serde(default)]
    pub add: Vec<PolicyEntryMsg>,
    #[serde(default)]
    pub delete: Vec<PolicyKeyMsg>,
}

fn yes() -> bool {
    true
}

/// `policy.replace`: the whole map of one endpoint and direction.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyReplace {
    pub endpoint: u32,
    pub direction: WireDirection,
    /// Default true: a direction some policy selects is default-deny.
    #[serde(default = "yes")]
    pub enforced: bool,
    #[serde(default)]
    pub entries: Vec<PolicyEntryMsg>,
}

// ---- services ------------------------------------------------------------------------------

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

// ---- nodes ---------------------------------------------------------------------------------

/// `node.upsert`; also the shape of a node in `dump`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeMsg {
    pub name: String,
    pub underlay: IpAddr,
    #[serde(default)]
    pub pod_cidrs: Vec<Text<Prefix>>,
    #[serde(default)]
    pub encap: WireEncap,
}

impl NodeMsg {
    pub fn to_node(&self) -> Node {
        Node {
            name: self.name.clone(),
            underlay: self.underlay,
            pod_cidrs: self.pod_cidrs.iter().map(|p| p.0).collect(),
            encap: self.encap.into(),
        }
    }
}

impl From<&Node> for NodeMsg {
    fn from(n: &Node) -> Self {
        NodeMsg {
            name: n.name.clone(),
            underlay: n.underlay,
            pod_cidrs: n.pod_cidrs.iter().copied().map(Text).collect(),
            encap: n.encap.into(),
        }
    }
}

/// `node.delete`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeRef {
    pub name: String,
}

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

// ---- queries -------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DumpTable {
    Endpoints,
    Ipcache,
    Policy,
    Services,
    Nodes,
    LocalNode,
    NextHops,
    Conntrack,
}

/// Default and largest number of conntrack entries a dump returns per worker.
pub const CT_DUMP_DEFAULT_LIMIT: usize = 1000;
pub const CT_DUMP_MAX_LIMIT: usize = 100_000;

/// `dump`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DumpRequest {
    pub table: DumpTable,
    /// `policy` only: whose policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<u32>,
    /// `conntrack` only: entries per worker (default 1000, at most 100000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
}

/// A request without parameters (`status`, `subscribe`, ...): any field is a mistake.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoParams {}

// ---- requests ------------------------------------------------------------------------------

/// A change to the tables. Applied atomically by [`super::apply::apply`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    EndpointUpsert(EndpointMsg),
    EndpointDelete(EndpointRef),
    IpcacheUpsert(IpcacheMsg),
    IpcacheDelete(PrefixRef),
    PolicyUpdate(PolicyUpdate),
    PolicyReplace(PolicyReplace),
    ServiceUpsert(ServiceMsg),
    ServiceDelete(ServiceRef),
    NodeUpsert(NodeMsg),
    NodeDelete(NodeRef),
    LocalNodeSet(LocalNodeMsg),
}

impl Change {
    pub fn op(&self) -> &'static str {
        match self {
            Change::EndpointUpsert(_) => "endpoint.upsert",
            Change::EndpointDelete(_) => "endpoint.delete",
            Change::IpcacheUpsert(_) => "ipcache.upsert",
            Change::IpcacheDelete(_) => "ipcache.delete",
            Change::PolicyUpdate(_) => "policy.update",
            Change::PolicyReplace(_) => "policy.replace",
            Change::ServiceUpsert(_) => "service.upsert",
            Change::ServiceDelete(_) => "service.delete",
            Change::NodeUpsert(_) => "node.upsert",
            Change::NodeDelete(_) => "node.delete",
            Change::LocalNodeSet(_) => "local_node.set",
        }
    }

    /// The change as a JSON object with its `op`: the body of a change event.
    pub fn to_json(&self) -> Map<String, Value> {
        let body = match self {
            Change::EndpointUpsert(m) => serde_json::to_value(m),
            Change::EndpointDelete(m) => serde_json::to_value(m),
            Change::IpcacheUpsert(m) => serde_json::to_value(m),
            Change::IpcacheDelete(m) => serde_json::to_value(m),
            Change::PolicyUpdate(m) => serde_json::to_value(m),
            Change::PolicyReplace(m) => serde_json::to_value(m),
            Change::ServiceUpsert(m) => serde_json::to_value(m),
            Change::ServiceDelete(m) => serde_json::to_value(m),
            Change::NodeUpsert(m) => serde_json::to_value(m),
            Change::NodeDelete(m) => serde_json::to_value(m),
            Change::LocalNodeSet(m) => serde_json::to_value(m),
        };
        let mut map = match body {
            Ok(Value::Object(map)) => map,
            // Every message is a struct of plain values, which serializes to an object.
            _ => Map::new(),
        };
        map.insert("op".into(), Value::from(self.op()));
        map
    }
}

/// A parsed request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    Status,
    /// Answers `{"ok":true}`: a liveness check.
    Ping,
    Dump(DumpRequest),
    /// From now on the connection also receives one event line per applied change.
    Subscribe,
    Unsubscribe,
    Change(Change),
}

/// A parsed request and the `seq` to echo.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Envelope {
    pub seq: Option<Value>,
    pub request: Request,
}

/// A refused request: the error and the `seq` to echo (when it could be read).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub seq: Option<Value>,
    pub error: RequestError,
}

/// Parses one request line (without its newline).
pub fn parse_request(line: &[u8]) -> Result<Envelope, Refusal> {
    let refuse = |seq: Option<Value>, error| Refusal { seq, error };
    let value: Value = serde_json::from_slice(line).map_err(|e| {
        refuse(
            None,
            RequestError::whole(format!(
                "not valid JSON ({e}): send one JSON object per line, e.g. {{\"op\":\"status\"}}"
            )),
        )
    })?;
    let Value::Object(mut map) = value else {
        return Err(refuse(
            None,
            RequestError::whole(
                "a request is a JSON object with an `op` field, e.g. {\"op\":\"status\"}",
            ),
        ));
    };
    let seq = match map.remove("seq") {
        None => None,
        Some(v @ (Value::Number(_) | Value::String(_))) => Some(v),
        Some(_) => {
            return Err(refuse(
                None,
                RequestError::at(
                    "seq",
                    "`seq` must be a number or a string: it is echoed back in the reply",
                ),
            ))
        }
    };
    let op = match map.remove("op") {
        Some(Value::String(op)) => op,
        Some(_) => {
            return Err(refuse(
                seq,
                RequestError::at(
                    "op",
                    format!(
                        "`op` must be a string naming the request: one of {}",
                        OPS.join(", ")
                    ),
                ),
            ))
        }
        None => {
            return Err(refuse(
                seq,
                RequestError::at(
                    "op",
                    format!("missing `op`: say what to do, one of {}", OPS.join(", ")),
                ),
            ))
        }
    };
    match parse_op(&op, map) {
        Ok(request) => Ok(Envelope { seq, request }),
        Err(error) => Err(refuse(seq, error)),
    }
}

fn parse_op(op: &str, body: Map<String, Value>) -> Result<Request, RequestError> {
    let request = match op {
        "status" => fields::<NoParams>(op, body).map(|_| Request::Status)?,
        "ping" => fields::<NoParams>(op, body).map(|_| Request::Ping)?,
        "subscribe" => fields::<NoParams>(op, body).map(|_| Request::Subscribe)?,
        "unsubscribe" => fields::<NoParams>(op, body).map(|_| Request::Unsubscribe)?,
        "dump" => Request::Dump(fields(op, body)?),
        "endpoint.upsert" => Request::Change(Change::EndpointUpsert(fields(op, body)?)),
        "endpoint.delete" => Request::Change(Change::EndpointDelete(fields(op, body)?)),
        "ipcache.upsert" => Request::Change(Change::IpcacheUpsert(fields(op, body)?)),
        "ipcache.delete" => Request::Change(Change::IpcacheDelete(fields(op, body)?)),
        "policy.update" => Request::Change(Change::PolicyUpdate(fields(op, body)?)),
        "policy.replace" => Request::Change(Change::PolicyReplace(fields(op, body)?)),
        "service.upsert" => Request::Change(Change::ServiceUpsert(fields(op, body)?)),
        "service.delete" => Request::Change(Change::ServiceDelete(fields(op, body)?)),
        "node.upsert" => Request::Change(Change::NodeUpsert(fields(op, body)?)),
        "node.delete" => Request::Change(Change::NodeDelete(fields(op, body)?)),
        "local_node.set" => Request::Change(Change::LocalNodeSet(fields(op, body)?)),
        other => {
            return Err(RequestError::at(
                "op",
                format!("unknown op `{other}`: use one of {}", OPS.join(", ")),
            ))
        }
    };
    Ok(request)
}

/// Deserializes the fields of an `op` request, naming the field at fault on error.
fn fields<T: DeserializeOwned>(op: &str, body: Map<String, Value>) -> Result<T, RequestError> {
    serde_path_to_error::deserialize(Value::Object(body)).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner().to_string();
        // serde reports a missing field at the enclosing object: name the field itself. (An
        // unknown field's path already ends with its name.)
        let named = inner
            .strip_prefix("missing field `")
            .and_then(|rest| rest.split('`').next());
        let field = match named {
            Some(name) => join(&path, name),
            None if path == "." => String::new(),
            None => path,
        };
        let hint = if inner.starts_with("unknown field") {
            "remove it or fix its spelling"
        } else {
            "fix this field and resend"
        };
        RequestError {
            message: format!("{op}: {}: {inner}: {hint}", display_field(&field)),
            field: (!field.is_empty()).then_some(field),
        }
    })
}

fn display_field(field: &str) -> &str {
    if field.is_empty() {
        "request"
    } else {
        field
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(line: &str) -> RequestError {
        match parse_request(line.as_bytes()) {
            Ok(e) => panic!("{line} parsed as {e:?}"),
            Err(r) => r.error,
        }
    }

    fn field_of(line: &str) -> Option<String> {
        refused(line).field
    }

    #[test]
    fn parses_every_op() {
        let lines = [
            r#"{"op":"status"}"#,
            r#"{"op":"ping","seq":1}"#,
            r#"{"op":"subscribe"}"#,
            r#"{"op":"unsubscribe"}"#,
            r#"{"op":"dump","table":"policy","endpoint":3}"#,
            r#"{"op":"endpoint.upsert","id":1,"ifindex":5,"mac":"02:00:00:00:00:01","ipv4":"10.0.0.1","identity":1000}"#,
            r#"{"op":"endpoint.delete","id":1}"#,
            r#"{"op":"ipcache.upsert","prefix":"10.0.0.0/24","identity":2000,"tunnel_endpoint":"192.168.0.2"}"#,
            r#"{"op":"ipcache.delete","prefix":"10.0.0.0/24"}"#,
            r#"{"op":"policy.update","endpoint":1,"direction":"ingress","enforced":true,"add":[{"identity":1001,"proto":"tcp","port":80,"action":"allow","cookie":7}],"delete":[{"identity":9}]}"#,
            r#"{"op":"policy.replace","endpoint":1,"direction":"egress","entries":[]}"#,
            r#"{"op":"service.upsert","frontend":{"addr":"10.96.0.10","port":80,"proto":"tcp"},"backends":[{"addr":"10.0.0.1","port":8080}],"mode":"dsr"}"#,
            r#"{"op":"service.delete","frontend":{"addr":"10.96.0.10","port":80,"proto":6}}"#,
            r#"{"op":"node.upsert","name":"b","underlay":"192.168.0.2","pod_cidrs":["10.2.0.0/24"],"encap":"geneve"}"#,
            r#"{"op":"node.delete","name":"b"}"#,
            r#"{"op":"local_node.set","name":"a","underlay_ipv4":"192.168.0.1","uplink_ifindex":2}"#,
        ];
        assert_eq!(lines.len(), OPS.len());
        for line in lines {
            let env = parse_request(line.as_bytes()).unwrap_or_else(|e| panic!("{line}: {e:?}"));
            if let Request::Change(c) = &env.request {
                assert!(line.contains(c.op()));
            }
        }
    }

    #[test]
    fn seq_is_echoed_even_on_error() {
        let r = parse_request(br#"{"op":"endpoint.delete","seq":"abc"}"#).unwrap_err();
        assert_eq!(r.seq, Some(Value::from("abc")));
        assert_eq!(r.error.field.as_deref(), Some("id"));
    }

    #[test]
    fn each_error_names_its_field() {
        let cases = [
            (r#"{"seq":1}"#, "op"),
            (r#"{"op":7}"#, "op"),
            (r#"{"op":"endpoint.frobnicate"}"#, "op"),
            (
                r#"{"op":"endpoint.upsert","id":1,"ifindex":5,"mac":"zz","identity":1}"#,
                "mac",
            ),
            (
                r#"{"op":"endpoint.upsert","id":1,"ifindex":5,"identity":1}"#,
                "mac",
            ),
            (
                r#"{"op":"endpoint.upsert","id":-1,"ifindex":5,"mac":"02:00:00:00:00:01","identity":1}"#,
                "id",
            ),
            (
                r#"{"op":"endpoint.upsert","id":1,"ifindex":5,"mac":"02:00:00:00:00:01","identity":1,"ipv4":"10.0.0.300"}"#,
                "ipv4",
            ),
            (
                r#"{"op":"endpoint.upsert","id":1,"ifindex":5,"mac":"02:00:00:00:00:01","identity":1,"identiy":2}"#,
                "identiy",
            ),
            (
                r#"{"op":"ipcache.upsert","prefix":"10.0.0.0/33","identity":5}"#,
                "prefix",
            ),
            (
                r#"{"op":"policy.update","endpoint":1,"direction":"sideways"}"#,
                "direction",
            ),
            (
                r#"{"op":"policy.update","endpoint":1,"direction":"ingress","add":[{"action":"allow"},{"proto":"tcp","port":70000,"action":"allow"}]}"#,
                "add[1].port",
            ),
            (
                r#"{"op":"policy.update","endpoint":1,"direction":"ingress","add":[{"proto":"bogus","action":"allow"}]}"#,
                "add[0].proto",
            ),
            (
                r#"{"op":"policy.update","endpoint":1,"direction":"ingress","add":[{"proto":"tcp"}]}"#,
                "add[0].action",
            ),
            (
                r#"{"op":"service.upsert","frontend":{"addr":"10.96.0.10","port":80},"backends":[]}"#,
                "frontend.proto",
            ),
            (
                r#"{"op":"service.upsert","frontend":{"addr":"10.96.0.10","port":80,"proto":"tcp"},"backends":[{"addr":"x","port":1}]}"#,
                "backends[0].addr",
            ),
            (
                r#"{"op":"node.upsert","name":"b","underlay":"192.168.0.2","pod_cidrs":["10.2.0.0/24","nope"]}"#,
                "pod_cidrs[1]",
            ),
            (r#"{"op":"dump","table":"everything"}"#, "table"),
            (r#"{"op":"status","verbose":true}"#, "verbose"),
            (
                r#"{"op":"service.delete","frontend":{"addr":"10.96.0.10","port":80,"proto":6,"vip":1}}"#,
                "frontend.vip",
            ),
            (
                r#"{"op":"service.upsert","frontend":{"addr":"10.96.0.10","proto":6}}"#,
                "frontend.port",
            ),
            (r#"{"op":"ping","seq":[1]}"#, "seq"),
        ];
        for (line, field) in cases {
            let e = refused(line);
            assert_eq!(e.field.as_deref(), Some(field), "{line}: {}", e.message);
            assert!(e.message.contains(':'), "{}", e.message);
        }
    }

    #[test]
    fn whole_request_errors_have_no_field() {
        assert_eq!(field_of("not json"), None);
        assert_eq!(field_of("[1,2]"), None);
        assert!(refused("{\"op\":")
            .message
            .contains("one JSON object per line"));
    }

    #[test]
    fn policy_key_rules() {
        let key = |k: PolicyKeyMsg| k.to_key("add[3]");
        let tcp = Proto(6);
        assert_eq!(
            key(PolicyKeyMsg::default()).unwrap(),
            PolicyKey::l3(Identity::ANY)
        );
        assert_eq!(
            key(PolicyKeyMsg {
                identity: 5,
                proto: tcp,
                port: Some(80),
                end_port: Some(90)
            })
            .unwrap(),
            PolicyKey::l4(Identity(5), 6, PortRange::new(80, 90).unwrap())
        );
        let e = key(PolicyKeyMsg {
            port: Some(80),
            ..Default::default()
        })
        .unwrap_err();
        assert_eq!(e.field.as_deref(), Some("add[3].port"));
        let e = key(PolicyKeyMsg {
            proto: tcp,
            end_port: Some(80),
            ..Default::default()
        })
        .unwrap_err();
        assert_eq!(e.field.as_deref(), Some("add[3].end_port"));
        let e = key(PolicyKeyMsg {
            proto: tcp,
            port: Some(90),
            end_port: Some(80),
            ..Default::default()
        })
        .unwrap_err();
        assert_eq!(e.field.as_deref(), Some("add[3].end_port"));
    }

    #[test]
    fn wire_shapes_round_trip() {
        let entry = PolicyEntryMsg {
            identity: 7,
            proto: Proto(17),
            port: Some(53),
            end_port: None,
            action: WireAction::Deny,
            cookie: 3,
        };
        let json = serde_json::to_string(&entry).unwrap();
        assert_eq!(
            json,
            r#"{"identity":7,"proto":"udp","port":53,"action":"deny","cookie":3}"#
        );
        assert_eq!(
            serde_json::from_str::<PolicyEntryMsg>(&json).unwrap(),
            entry
        );
        let node = LocalNodeMsg::default();
        let back: LocalNodeMsg =
            serde_json::from_str(&serde_json::to_string(&node).unwrap()).unwrap();
        assert_eq!(back, node);
        assert!(node.to_local_node().is_ok());
    }

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
