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
//!
//! Files, one concern each (all re-exported here, so `api::protocol::X` names every type):
//! `request.rs` (the table of ops, [`Request`], [`Change`], [`parse_request`]), `values.rs`
//! (strings, protocols, directions, modes), and one file per table's messages: `endpoints.rs`,
//! `ipcache.rs`, `policy.rs`, `services.rs`, `nodes.rs`, `local_node.rs` (this node's facts and
//! its next hops), `dump.rs` (the `dump` request), and `interfaces.rs` (interfaces added and
//! removed at run time).

mod dump;
mod endpoints;
mod interfaces;
mod ipcache;
mod local_node;
mod nodes;
mod policy;
mod request;
mod services;
mod values;

pub use dump::{DumpRequest, DumpTable, CT_DUMP_DEFAULT_LIMIT, CT_DUMP_MAX_LIMIT};
pub use endpoints::{EndpointMsg, EndpointRef};
pub use interfaces::InterfaceMsg;
pub use ipcache::{IpcacheMsg, PrefixRef};
pub use local_node::{LocalNodeMsg, NextHopMsg, NextHopsMsg, MIN_UPLINK_MTU};
pub use nodes::{NodeMsg, NodeRef};
pub use policy::{HostPolicyReplace, PolicyEntryMsg, PolicyKeyMsg, PolicyReplace, PolicyUpdate};
pub use request::{
    parse_request, Change, Envelope, NoParams, Op, Refusal, Request, StagedPart, OPS,
};
pub use services::{BackendMsg, FrontendMsg, ServiceMsg, ServiceRef};
pub use values::{Proto, Text, WireAction, WireDirection, WireEncap, WireFrontendKind, WireLbMode};

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

    /// This error of the `i`th change of a `batch`: its field as `changes[i].field`.
    pub fn in_batch(self, i: usize) -> Self {
        let place = format!("changes[{i}]");
        RequestError {
            field: Some(join(&place, self.field.as_deref().unwrap_or(""))),
            message: format!("batch: {place}: {}", self.message),
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
