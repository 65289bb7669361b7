//! `dump`: which table, and its limits.

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DumpTable {
    Endpoints,
    Ipcache,
    Policy,
    /// The node's own policy (host firewall), as `host_policy.replace` sets it.
    HostPolicy,
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
