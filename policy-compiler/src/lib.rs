//! Compiles Kubernetes NetworkPolicy and CiliumNetworkPolicy / CiliumClusterwideNetworkPolicy
//! into Flagella's identity-based policy maps, and explains verdicts (`policy trace`).
//!
//! A library without I/O: callers hand it text and get typed results.
//!
//! Pipeline:
//! 1. [`parse::parse_policies`] reads YAML/JSON (single object, multi-document, `kind: List`)
//!    into the [`model`] (Kubernetes in [`k8s`], Cilium in [`cilium`], what both read in
//!    [`policy_fields`]; neither imports the other), reporting unsupported
//!    fields as [`error::Warning`]s and anything invalid as an [`error::Error`] with the
//!    document, field path and reason;
//! 2. [`cluster::parse_cluster`] reads the namespaces, pods and nodes;
//! 3. [`compile::PolicyEngine`] derives identities ([`identity`], from [`labels`]), keeps the
//!    [`repository`] and the [`selector_cache`], and compiles per-endpoint maps in the
//!    dataplane's format (`dataplane::tables::policy`), incrementally ([`compile::Delta`]).
//!    The engine is a composition of one-concern modules, as Cilium's pkg/policy:
//!    `inputs` (namespaces, pods, nodes), `rule_index` (selector -> sections), `distillery`
//!    (rules -> an endpoint's map state), `mapstate` (deny-wins merge, diff into the map as
//!    deltas), `cookie` (the rules behind an entry), `delta` (the output); its ipcache is the
//!    dataplane's `tables::ipcache::IpCache`;
//!    [`splits`] warns of CIDR peers that split an identity (some of its pods inside, some
//!    outside), from the same state;
//! 4. [`trace`] answers "is this flow allowed, and why" by looking up those same maps and that
//!    ipcache with the dataplane's own lookup functions; [`impact`] (`policy diff`) lists the
//!    flows whose trace changes between two policy sets.
//!
//! Dependencies between modules go one way (`tests/module_graph.rs` fails on a cycle).
//!
//! Semantic decisions are written down in `docs/policy-semantics.md`.

pub mod cilium;
pub mod cluster;
pub mod compile;
mod cookie;
mod delta;
mod distillery;
pub mod doc;
pub mod error;
pub mod icmp;
pub mod identity;
pub mod impact;
mod inputs;
pub mod k8s;
pub mod labels;
mod mapstate;
pub mod model;
pub mod parse;
pub mod policy_fields;
pub mod repository;
mod rule_index;
pub mod selector;
pub mod selector_cache;
pub mod splits;
pub mod trace;

pub use cluster::{parse_cluster, Cluster};
pub use compile::{Delta, EngineError, PolicyEngine, RuleOrigin};
pub use error::{Error, Warning};
pub use parse::{parse_policies, ParsedPolicies};
