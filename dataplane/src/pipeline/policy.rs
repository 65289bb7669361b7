//! Policy stage: new flows are checked against the egress map of the sending endpoint and the
//! ingress map of the receiving endpoint; an allowed new flow gets a conntrack entry
//! (`ct_commit::commit_new_flow`, see there why this stage commits it).
//!
//! The map slots a lookup probes first are prefetched by the conntrack stage, the moment it
//! finds a packet has no entry (`prefetch::policy_for_new_flow`): by the time this stage runs,
//! the misses of the batch's new flows have overlapped each other and the rest of conntrack.
//!
//! Established flows, replies and related ICMP errors skip the lookup (conntrack decided them).
//! Traffic that neither starts nor ends at a local endpoint or at the node itself is not subject
//! to policy here. The node's own traffic through the dataplane (the host interface, tunnels)
//! meets the host's policy (`Endpoints::host_policy`, from host policies), as Cilium's host
//! firewall does; what the kernel exchanges on the uplink without the dataplane does not.
//!
//! The key's port is `PacketMeta::policy_port`: the destination port, or the ICMP type (Cilium's
//! `icmps` rules), so ICMP costs the same one probe per class as a TCP port.

use super::batch::{Batch, Ctx};
use super::meta::{CtMark, PacketMeta};
use super::{ct_commit, DropReason, Stage};
use crate::tables::policy::Decision;
use crate::types::Identity;

pub(crate) fn run<B: AsRef<[u8]> + AsMut<[u8]>>(batch: &mut Batch<'_, B>, ctx: &mut Ctx<'_>) {
    batch.for_each(ctx, Stage::Policy, is_new_flow, |f, m, ctx| {
        if let Some(reason) = check(m, ctx) {
            return Err(reason);
        }
        ct_commit::commit_new_flow(m, f.len() as u32, ctx);
        Ok(())
    });
}

/// A new flow (not decided yet: the batch skips decided frames): the only kind policy looks at.
#[inline]
fn is_new_flow(m: &PacketMeta) -> bool {
    m.ct == CtMark::New
}

/// The drop reason if either direction's policy refuses the flow. The sender's egress map is
/// its endpoint's, or the host's when the node itself sends (identity `host`); the receiver's
/// ingress map likewise (the destination is one of the node's own addresses): Cilium's host
/// firewall, not enforced until a host policy selects the node.
fn check(m: &PacketMeta, ctx: &mut Ctx<'_>) -> Option<DropReason> {
    let (proto, port) = (m.tuple.proto, m.policy_port());
    let endpoints = &ctx.t.endpoints;
    let egress = match m.src_slot.and_then(|s| endpoints.by_slot(s)) {
        Some(ep) => Some(&ep.policy.egress),
        None if m.src_identity == Identity::HOST => Some(&endpoints.host_policy().egress),
        None => None,
    };
    if let Some(policy) = egress {
        ctx.c.policy_lookups += 1;
        match policy.lookup(m.dst_identity, proto, port) {
            Decision::DeniedByDefault => return Some(DropReason::PolicyDeniedEgress),
            Decision::DeniedByRule { .. } => return Some(DropReason::PolicyDenyRuleEgress),
            Decision::NotEnforced | Decision::Allowed { .. } => {}
        }
    }
    let ingress = match m.dst_slot.and_then(|s| endpoints.by_slot(s)) {
        Some(ep) => Some(&ep.policy.ingress),
        None if m.dst_identity == Identity::HOST => Some(&endpoints.host_policy().ingress),
        None => None,
    };
    if let Some(policy) = ingress {
        ctx.c.policy_lookups += 1;
        match policy.lookup(m.src_identity, proto, port) {
            Decision::DeniedByDefault => return Some(DropReason::PolicyDeniedIngress),
            Decision::DeniedByRule { .. } => return Some(DropReason::PolicyDenyRuleIngress),
            Decision::NotEnforced | Decision::Allowed { .. } => {}
        }
    }
    None
}
