//! `policy.update` / `policy.replace` (an endpoint's maps), `host_policy.replace` (the node's
//! own): policy-map keys and entries, and a policy's shape in `dump`. The rules JSON cannot express (a port needs a protocol, `end_port >= port`) are
//! checked by [`PolicyKeyMsg::to_key`].

use serde::{Deserialize, Serialize};

use super::{join, Proto, RequestError, WireAction, WireDirection};
use crate::tables::policy::{Action, PolicyEntry, PolicyKey, PortRange, PROTO_ANY};
use crate::types::Identity;

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

/// `host_policy.replace`: the whole map of the node's own policy (host firewall) in one
/// direction; `enforced` false (the default) when no host policy selects the node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostPolicyReplace {
    pub direction: WireDirection,
    #[serde(default)]
    pub enforced: bool,
    #[serde(default)]
    pub entries: Vec<PolicyEntryMsg>,
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
