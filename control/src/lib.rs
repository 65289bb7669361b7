//! The node agent (`flagella-control`) and the `flagella` CLI.
//!
//! - [`schema`]: the etcd key schema under `/flagella/v1/` and the validation of its values;
//! - [`store`]: the etcd client (list with revision, watch from a revision, compaction);
//! - [`identity`]: cluster-wide identity allocation with etcd transactions;
//! - [`ipam`]: host-scope IPAM from the node's pod CIDR, persisted in etcd;
//! - [`endpoint_ipam`]: IPAM's caller: the agent gives addresses to its node's endpoints
//!   written without any, and releases those no endpoint holds;
//! - [`sync`]: the in-memory cluster model built from etcd, fed to the policy compiler, and
//!   the dataplane changes it implies;
//! - [`dataplane_client`]: the dataplane control-socket client;
//! - [`agent`]: the `flagella-control` main loop (sync, push, resync, fail static);
//! - [`metrics`]: the agent's `/metrics` (etcd, the model, the dataplane, latencies);
//! - `synth` (feature `synth`): synthetic clusters and the differential check of the scale
//!   benchmark and tests;
//! - [`cni`]: `flagella-cni`, the CNI plugin (ADD/DEL/CHECK/VERSION/STATUS/GC);
//! - [`cli`]: the commands of the `flagella` CLI (the binary parses the flags and prints).
//!
//! `docs/etcd-schema.md` documents the keys and the allocation protocols.

pub mod agent;
pub mod cli;
pub mod cni;
pub mod dataplane_client;
pub mod endpoint_ipam;
pub mod identity;
pub mod ipam;
pub mod metrics;
pub mod schema;
pub mod status;
pub mod store;
pub mod sync;
#[cfg(feature = "synth")]
pub mod synth;
