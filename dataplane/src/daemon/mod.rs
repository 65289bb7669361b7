//! What the `flagella-dataplane` process needs besides the pipeline: its configuration, the
//! checks it makes before touching any interface, and the host path (what the uplink's XDP
//! program hands the dataplane, and what the host interface's kernel side holds, both kept in
//! step with the tables), and masquerade's setup.
//!
//! Kept free of AF_XDP types so it builds and tests everywhere; the daemon binary wires it to
//! `io` (sockets and workers), `xdp-redirect` (the XDP program) and `api` (the control socket).

pub mod config;
mod follow;
pub mod host_link;
pub mod host_path;
pub mod masquerade;
pub mod preflight;
pub mod uplink_frontends;
