//! Value types of the wire format: a value written as a string ([`Text`]), IP protocols by
//! name or number ([`Proto`]), and the enums spelled in lowercase (directions, actions, load
//! balancing modes, encapsulations), with their conversions to the tables' types.

use std::fmt;
use std::marker::PhantomData;
use std::str::FromStr;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::RequestError;
use crate::tables::nodes::Encap;
use crate::tables::policy::{self, PROTO_ANY};
use crate::types::Identity;
use crate::wire::ip;

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

/// Who reaches a frontend (`tables::services::FrontendKind`): `cluster_ip` (default),
/// `node_port`, `external_ip`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WireFrontendKind {
    #[default]
    ClusterIp,
    NodePort,
    ExternalIp,
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
pub(super) fn real_identity(field: &str, id: u32) -> Result<Identity, RequestError> {
    if id == 0 {
        return Err(RequestError::at(
            field,
            "identity 0 is the wildcard and cannot be assigned: give the security identity \
             allocated for the pod or prefix",
        ));
    }
    Ok(Identity(id))
}
