//! The node agent (`flagella-control`) and the `flagella` CLI.
//!
//! Not built yet: the control-process issue fills this crate (etcd sync, identity allocation,
//! IPAM, policy compilation, pushing deltas to the dataplane's control socket).
