//! What the `flagella-dataplane` process needs besides the pipeline: its configuration and the
//! checks it makes before touching any interface.
//!
//! Kept free of AF_XDP types so it builds and tests everywhere; the daemon binary wires it to
//! `io` (sockets and workers), `xdp-redirect` (the XDP program) and `api` (the control socket).

pub mod config;
pub mod preflight;
