//! Conntrack entry creation: what a new flow's entry remembers, built from its metadata.
//!
//! The policy stage decides a new flow and, when it is allowed, commits it here; the conntrack
//! stage only looks entries up and advances them. This is VPP's shape for a stateful ACL: the
//! ACL node that permits a new session creates it through the session module
//! (`acl_fa_add_session`), rather than through a later node; and Cilium's `bpf_lxc` does the
//! same (`ct_create4` right after the policy verdict). A separate "commit" stage after policy
//! would cost another pass over the batch (and a stage counter of its own) for what is one call
//! per allowed new flow.
//!
//! # Contract
//! - Called once per allowed new IP flow that has a conntrack key (`m.ct_key`, from the
//!   conntrack stage's lookup), at the batch's time; the packet itself is accounted to the new
//!   entry (state machine stepped, bytes counted) in the same write.
//! - The entry carries the NAT information its replies need: the frontend to restore as their
//!   source (a DNAT done on this node in SNAT mode, or a DSR option consumed here); the DSR
//!   load-balancing node keeps no reverse NAT, its backend's replies bypass it.
//! - Uses the conntrack table only through its public API; allocation-free (the table evicts
//!   when a bucket is full, so an allowed flow is never refused).

use super::batch::Ctx;
use super::meta::{Family, PacketMeta};
use crate::tables::conntrack::{CtCreate, CtFlags, FlowDirection, RevNat};

/// Creates the conntrack entry of an allowed new flow (see the module doc).
pub(crate) fn commit_new_flow(m: &PacketMeta, bytes: u32, ctx: &mut Ctx<'_>) {
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
    };
    ctx.ct.create_counted(
        &key,
        m.ct_hash,
        FlowDirection::Original,
        info,
        ctx.now,
        m.tcp,
        bytes,
    );
    ctx.c.ct_created += 1;
}
