//! Synthetic clusters for scale benchmarks and differential tests (cargo feature `synth`; the
//! agent's own build does not contain it, as `dataplane`'s `testutil`).
//!
//! - [`cluster`]: a cluster of `N` endpoints with realistic labels (about 20 a pod), `M` nodes,
//!   a chosen number of identities and 1,000 policies of the common shapes, as the etcd keys
//!   and values the CNI plugin and `kubectl` would write;
//! - [`mutations`]: a seeded random sequence of endpoint, namespace-label and policy changes
//!   over such a cluster;
//! - [`mirror`]: what a dataplane holds after a stream of changes, so an incrementally fed
//!   model can be compared with a from-scratch compile of the same state.
//!
//! - [`standin`]: a stand-in dataplane socket that applies what it receives to a mirror.
//!
//! Pure but for `standin`: no etcd. Used by `flagella-bench scale` and `control/tests/scale.rs`.

pub mod cluster;
pub mod mirror;
pub mod mutations;
pub mod standin;

pub use cluster::{ScaleCluster, ScaleSpec};
pub use mirror::{DataplaneMirror, Differential};
pub use mutations::{Mutation, Mutations};
pub use standin::StandIn;
