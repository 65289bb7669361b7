//! The tiny XDP program that redirects pod traffic into AF_XDP sockets, and its loader.
//!
//! Not built yet: the AF_XDP daemon issue fills this crate (C program under `src/bpf/`, built by
//! libbpf-cargo, plus attach/detach/register APIs). Until then it only names the contract the
//! dataplane relies on.

/// The XSKMAP is indexed by the receive queue of the frame (`ctx->rx_queue_index`); a queue with
/// no registered socket falls back to `XDP_PASS`, so the kernel keeps working.
pub const XSKMAP_KEYED_BY: &str = "rx_queue_index";
