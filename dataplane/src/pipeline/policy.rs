//! Policy stage: new flows are checked against the egress map of the sending endpoint and the
//! ingress map of the receiving endpoint; an allowed new flow gets a conntrack entry.
//!
//! The map slots a lookup probes first are prefetched by the conntrack stage, the moment it
//! finds a packet has no entry ([`prefetch_for_new_flow`]): by the time this stage runs, the
//! misses of the batch's new flows have overlapped each other and the rest of conntrack.
//!
//! Established flows, replies and related ICMP errors skip the lookup (conntrack decided them).
//! Traffic that neither starts nor ends at a local endpoint is not subject to policy here.

use super::meta::{CtMark, Family, PacketMeta, Verdict};
use super::{Ctx, DropReason, Stage};
use crate::frame::Frame;
use crate::tables::conntrack::{CtCreate, CtFlags, FlowDirection, RevNat};
use crate::tables::policy::Decision;

pub(crate) fn run<B: AsRef<[u8]> + AsMut<[u8]>>(
    frames: &mut [Frame<B>],
    meta: &mut [PacketMeta],
    ctx: &mut Ctx<'_>,
) {
    // The conntrack stage started loading what these lookups read (`prefetch_for_new_flow`)
    // as each of them missed: a whole stage ago.
    for (f, m) in frames.iter_mut().zip(meta.iter_mut()) {
        if !needs_policy(m) {
            continue;
        }
        ctx.c.stage_in[Stage::Policy as usize] += 1;
        if let Some(reason) = check(m, ctx) {
            ctx.drop(m, Stage::Policy, reason);
            continue;
        }
        commit_flow(m, f.len() as u32, ctx);
    }
}

/// Starts loading the policy-map slots a new flow's lookups will probe: the egress map of its
/// sender and the ingress map of its receiver. The conntrack stage calls it when a lookup
/// misses, so the loads overlap the rest of that stage instead of stalling this one.
#[inline]
pub(crate) fn prefetch_for_new_flow(m: &PacketMeta, ctx: &Ctx<'_>) {
    let endpoints = &ctx.t.endpoints;
    let t = &m.tuple;
    if let Some(ep) = m.src_slot.and_then(|s| endpoints.by_slot(s)) {
        ep.policy.egress.prefetch(m.dst_identity, t.proto, t.dport);
    }
    if let Some(ep) = m.dst_slot.and_then(|s| endpoints.by_slot(s)) {
        ep.policy.ingress.prefetch(m.src_identity, t.proto, t.dport);
    }
}

/// A new flow not decided yet: the only kind policy looks at.
#[inline]
fn needs_policy(m: &PacketMeta) -> bool {
    m.verdict == Verdict::Pending && m.ct == CtMark::New
}

/// The drop reason if either direction's policy refuses the flow.
fn check(m: &PacketMeta, ctx: &mut Ctx<'_>) -> Option<DropReason> {
    let t = &m.tuple;
    let port = t.dport;
    if let Some(ep) = m.src_slot.and_then(|s| ctx.t.endpoints.by_slot(s)) {
        ctx.c.policy_lookups += 1;
        match ep.policy.egress.lookup(m.dst_identity, t.proto, port) {
            Decision::DeniedByDefault => return Some(DropReason::PolicyDeniedEgress),
            Decision::DeniedByRule { .. } => return Some(DropReason::PolicyDenyRuleEgress),
            Decision::NotEnforced | Decision::Allowed { .. } => {}
        }
    }
    if let Some(ep) = m.dst_slot.and_then(|s| ctx.t.endpoints.by_slot(s)) {
        ctx.c.policy_lookups += 1;
        match ep.policy.ingress.lookup(m.src_identity, t.proto, port) {
            Decision::DeniedByDefault => return Some(DropReason::PolicyDeniedIngress),
            Decision::DeniedByRule { .. } => return Some(DropReason::PolicyDenyRuleIngress),
            Decision::NotEnforced | Decision::Allowed { .. } => {}
        }
    }
    None
}

/// Creates the conntrack entry of an allowed new flow, with the NAT information its replies
/// need: the frontend to restore as their source (SNAT-mode DNAT on this node, or a DSR option
/// consumed here). The DSR load-balancing node keeps no reverse NAT: replies bypass it.
fn commit_flow(m: &mut PacketMeta, bytes: u32, ctx: &mut Ctx<'_>) {
    if !matches!(m.family, Family::Ipv4 | Family::Ipv6) {
        return;
    }
    let Some(key) = m.ct_key else { return };
    let rev_nat = match m.frontend {
        Some(fe) if !m.dsr_out => Some(RevNat::new(fe.addr, fe.port)),
        _ => None,
    };
    let info = CtCreate {
        src_identity: m.src_identity,
        established: false,
        flags: if m.dsr_in {
            CtFlags::DSR
        } else {
            CtFlags::EMPTY
        },
        rev_nat,
        backend: 0,
    };
    ctx.ct.create_counted(
        &key,
        m.ct_hash,
        FlowDirection::Original,
        info,
        ctx.now,
        m.tcp_flags,
        bytes,
    );
    ctx.c.ct_created += 1;
}
