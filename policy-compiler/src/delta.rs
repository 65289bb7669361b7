//! The engine's output: one change to the dataplane's state ([`Delta`]), as the node agent
//! translates it into control-socket requests.

use dataplane::tables::policy::{Direction, PolicyEntry, PolicyKey};
use dataplane::{Identity, Prefix};

/// One change to the dataplane's state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Delta {
    /// The ipcache maps `prefix` to `identity` (new or changed).
    IpcacheUpsert {
        prefix: Prefix,
        identity: Identity,
    },
    IpcacheRemove {
        prefix: Prefix,
    },
    /// A direction of an endpoint became enforced (default deny) or not.
    Enforce {
        endpoint: String,
        direction: Direction,
        enforced: bool,
    },
    Upsert {
        endpoint: String,
        direction: Direction,
        key: PolicyKey,
        entry: PolicyEntry,
    },
    Remove {
        endpoint: String,
        direction: Direction,
        key: PolicyKey,
    },
    /// The endpoint is gone with its maps.
    EndpointRemoved {
        endpoint: String,
    },
}
