//! Prefetching ahead of the stages that read memory another stage or core wrote: the frames'
//! headers before parsing, and the policy-map slots of new flows before the policy stage.
//!
//! # Contract
//! Hints only: nothing here reads a value, changes state, allocates or can fault, so calling any
//! of it early, late or twice changes no result, only when cache misses are paid.

use super::meta::PacketMeta;
use crate::frame::Frame;
use crate::tables::Tables;

/// Bytes of each frame's front prefetched before parsing: Ethernet with a VLAN tag, IPv6 and
/// TCP fit in two cache lines; tunnelled frames' inner headers are read later, by decap.
const HEADER_PREFETCH_BYTES: usize = 128;

/// Starts loading the headers of every frame of the batch.
///
/// A received frame was written by another core (the kernel's copy into the UMEM runs on the
/// sender's core), so its first read is a cross-core cache miss; asking for the whole batch's
/// headers up front overlaps those misses instead of paying them one by one.
#[inline]
pub(crate) fn headers<B: AsRef<[u8]> + AsMut<[u8]>>(frames: &[Frame<B>]) {
    for f in frames {
        crate::tables::prefetch_bytes(f.data(), HEADER_PREFETCH_BYTES);
    }
}

/// Starts loading the policy-map slots a new flow's lookups will probe: the egress map of its
/// sender and the ingress map of its receiver (keys as the policy stage builds them). The
/// conntrack stage calls it when a lookup misses, so the loads overlap the rest of that stage
/// instead of stalling the policy stage.
#[inline]
pub(crate) fn policy_for_new_flow(m: &PacketMeta, t: &Tables) {
    let endpoints = &t.endpoints;
    let tuple = &m.tuple;
    if let Some(ep) = m.src_slot.and_then(|s| endpoints.by_slot(s)) {
        ep.policy
            .egress
            .prefetch(m.dst_identity, tuple.proto, m.policy_port());
    }
    if let Some(ep) = m.dst_slot.and_then(|s| endpoints.by_slot(s)) {
        ep.policy
            .ingress
            .prefetch(m.src_identity, tuple.proto, m.policy_port());
    }
}
