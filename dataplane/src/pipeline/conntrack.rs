//! Conntrack stage: one lookup per IP frame on the canonical 5-tuple (after DNAT), in three
//! phases over the batch: hash every packet and prefetch its bucket's tags; match the tags
//! and prefetch the matching slot; then look up and update.
//!
//! A hit advances the entry's state machine and counters. A TCP RST outside its receiver's
//! window is dropped (`tcp_rst_out_of_window`) and changes nothing: someone off the path
//! guessed the 5-tuple (see `tables::conntrack`'s `tcp_window`). Replies of flows that carry reverse
//! NAT information get their source rewritten back to the service frontend (`nat`). An ICMP
//! error whose quoted packet belongs to a tracked flow, and which goes back to the quoted
//! packet's sender (outer destination = quoted source, as Linux conntrack checks), is "related"
//! and follows that flow. Any other ICMP error is dropped (`icmp_error_unrelated`): it could only
//! carry chosen bytes past policy (quoting a flow of its own sender's to reach anyone), or plant
//! a conntrack entry for a tuple it made up.
//! A miss marks the packet `CtMark::New` for the policy stage, and starts loading the policy-map
//! slots its lookups will read (`prefetch::policy_for_new_flow`); the entry of an allowed new
//! flow is created by the policy stage's verdict (`ct_commit`).

use super::batch::{Batch, Ctx};
use super::meta::{CtMark, Family, IcmpClass, PacketMeta, Verdict};
use super::{nat, prefetch, DropReason, Stage};
use crate::tables::conntrack::{CtEntry, CtFlags, FlowDirection, FlowKey, RevNat};
use crate::wire::ip::Protocol;

const TCP: u8 = Protocol::Tcp.number();

pub(crate) fn run<B: AsRef<[u8]> + AsMut<[u8]>>(batch: &mut Batch<'_, B>, ctx: &mut Ctx<'_>) {
    // Phase 1: keys, hashes, prefetch.
    for m in batch.meta_mut().iter_mut() {
        if m.verdict != Verdict::Pending || !matches!(m.family, Family::Ipv4 | Family::Ipv6) {
            m.ct_key = None;
            continue;
        }
        let t = if m.icmp == IcmpClass::Error {
            &m.inner
        } else {
            &m.tuple
        };
        let key = FlowKey::new(t.src, t.dst, t.sport, t.dport, t.proto);
        m.ct_hash = ctx.ct.hash_key(&key);
        ctx.ct.prefetch(m.ct_hash);
        m.ct_key = Some(key);
    }
    // Phase 2: with the tag lines on their way, start loading each packet's matching slot,
    // which phase 3 compares and updates.
    // A TCP flow's new entry is stored whole (its first segment teaches the sequence
    // tracking): both lines of the slot it would take are loaded.
    for m in batch.meta_mut().iter() {
        if let Some(key) = &m.ct_key {
            ctx.ct.prefetch_match(m.ct_hash, key.proto() == TCP);
        }
    }
    // Phase 3: lookups and state updates (phase 1 gave a key to undecided IP frames only).
    let has_key = |m: &PacketMeta| m.ct_key.is_some();
    batch.for_each(ctx, Stage::Conntrack, has_key, |f, m, ctx| {
        let Some(key) = m.ct_key else { return Ok(()) };
        let Some((h, dir)) = ctx.ct.lookup(&key, m.ct_hash, ctx.now) else {
            if m.icmp == IcmpClass::Error {
                return Err(DropReason::IcmpErrorUnrelated);
            }
            m.ct = CtMark::New;
            prefetch::policy_for_new_flow(m, ctx.t);
            return Ok(());
        };
        if m.icmp == IcmpClass::Error {
            if m.tuple.dst != m.inner.src {
                return Err(DropReason::IcmpErrorUnrelated);
            }
            m.ct = CtMark::Related;
            ctx.c.ct_related += 1;
            // An error from the backend about a NATed flow: the client must see it come from
            // the frontend, about a packet it sent to the frontend.
            if let (FlowDirection::Original, Some(rev)) = (dir, ctx.ct.entry(h).rev_nat()) {
                if m.inner.src != m.tuple.src
                    && nat::reverse_nat_icmp_error(f, m, rev.addr(), rev.port())
                {
                    ctx.c.reverse_nat += 1;
                }
            }
            return Ok(());
        }
        let update = ctx.ct.update(h, dir, m.tcp, f.len() as u32, ctx.now);
        if update.out_of_window {
            return Err(DropReason::TcpRstOutOfWindow);
        }
        if update.dir != dir {
            // A SYN from the reply side reopened a closed flow: it is a new connection, and
            // policy decides it like any other.
            m.ct = CtMark::New;
            return Ok(());
        }
        ctx.c.ct_established += 1;
        match dir {
            FlowDirection::Original => {
                m.ct = CtMark::Established;
                m.snat_port = ctx.ct.entry(h).snat_port();
                keep_frontend_current(m, ctx.ct.entry_mut(h));
            }
            FlowDirection::Reply => {
                m.ct = CtMark::Reply;
                if let Some(rev) = ctx.ct.entry(h).rev_nat() {
                    nat::rewrite_src(f, m, rev.addr(), rev.port());
                    ctx.c.reverse_nat += 1;
                }
            }
        }
        Ok(())
    });
}

/// The frontend this packet was translated for (a DNAT here in SNAT mode, or the DSR option it
/// brought) is the one its replies must come from. An entry can hold another one when a client
/// reused its source port towards the same backend through another frontend (a NodePort, then
/// an external IP) while the old flow's entry was closing: its SYN restarts that entry, and
/// without this the replies would leave from the old frontend, which the client drops.
fn keep_frontend_current(m: &PacketMeta, entry: &mut CtEntry) {
    let Some(fe) = m.frontend.filter(|_| !m.dsr_out) else {
        return;
    };
    let current = Some(RevNat::new(fe.addr, fe.port));
    if entry.rev_nat() != current {
        entry.set_rev_nat(current);
        entry.set_flag(CtFlags::DSR, m.dsr_in);
    }
}
