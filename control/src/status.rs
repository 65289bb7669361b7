//! The agent's status: what `flagella status` reads from the status file and the log reports.
//! Its own module because both the agent (which fills it) and `metrics` (which mirrors it into
//! gauges) read it.

use std::collections::BTreeMap;

use serde::Serialize;

/// What `flagella status` and the log report.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Status {
    pub node: String,
    pub etcd_reachable: bool,
    pub dataplane_connected: bool,
    /// Last etcd revision applied.
    pub revision: i64,
    pub endpoints: usize,
    pub policies: usize,
    pub services: usize,
    pub nodes: usize,
    pub malformed_total: u64,
    pub rejected_keys: Vec<String>,
    pub dataplane_refusals: u64,
    /// `interface.add`/`interface.remove` the dataplane refused (an endpoint whose interface
    /// does not exist on the node, a dataplane without room for more): logged with the reason.
    pub interface_refusals: u64,
    pub last_error: Option<String>,
    /// The uplink's MTU, as the dataplane last reported it.
    pub uplink_mtu: Option<u16>,
    /// The MTU this node's pods get (the uplink's minus the tunnel's overhead).
    pub pod_mtu: Option<u16>,
    /// Label sets whose identity could not be resolved (a corrupt `identities/` value, a request
    /// etcd refuses...): `labels -> reason`. Their endpoints stay out of the dataplane; nothing
    /// else waits for them.
    pub identity_errors: BTreeMap<String, String>,
}
