//! Masquerade: pods' flows to the world leave with the node's address, and their replies come
//! back to the pod (Cilium's BPF masquerading). The state is SNAT state in the worker's
//! conntrack table (`tables::snat`); this module applies it to packets.
//!
//! - [`egress`] (route stage, on the path to the default gateway): a frame from a local pod in
//!   a flow it opened (`CtMark::New` or `Established`) gets the node's underlay IPv4 address
//!   and a source port from the worker's share of the range: the port its conntrack entry
//!   records (`m.snat_port`, set by the conntrack stage), or a newly allocated one, which is
//!   then recorded there. Policy has already decided on the pod's own address.
//! - [`reverse`] (identity stage, before the destination is resolved): TCP/UDP from the uplink
//!   to the node's address on a port of the range is a reply to a masqueraded flow; its
//!   destination is turned back into the pod's address and port, so every later stage (and
//!   the flow's own conntrack entry) sees the packet as the pod's flow's reply. An ICMPv4
//!   error about a packet that left masqueraded (a router's "fragmentation needed" on the way)
//!   goes on to the pod the same way, its quote turned back into the packet the pod sent.
//!
//! # Decisions
//! - IPv4 only (the node's underlay address is IPv4); IPv6 leaves untranslated.
//! - TCP and UDP only. ICMP echo is not masqueraded: its replies carry only the identifier,
//!   which the host's own `ping` chooses freely, so the uplink program could not redirect them
//!   without stealing the host's pings. A pod's new non-TCP/UDP flow to the world is dropped
//!   (`masquerade_unsupported_protocol`) rather than sent with an address the world cannot
//!   answer.
//! - Replies and related ICMP errors of flows the world opened are never translated.
//!
//! Allocation-free; every rewrite is `nat`'s (checksums patched incrementally).

use std::net::IpAddr;

use super::batch::Ctx;
use super::meta::{CtMark, IcmpClass, PacketMeta, Verdict};
use super::{nat, DropReason, MAX_BATCH};
use crate::frame::Frame;
use crate::tables::conntrack::Conntrack;
use crate::tables::snat::{self, ReplyRefused, SnatFlow};
use crate::wire::ip::Protocol;

/// Translates a pod's packet to the world (see the module doc); a no-op for anything else.
pub(crate) fn egress<B: AsRef<[u8]> + AsMut<[u8]>>(
    f: &mut Frame<B>,
    m: &mut PacketMeta,
    ctx: &mut Ctx<'_>,
) -> Result<(), DropReason> {
    let opened_by_pod = matches!(m.ct, CtMark::New | CtMark::Established);
    if ctx.masq.is_none() || m.src_ep.is_none() || !opened_by_pod || !m.tuple.src.is_ipv4() {
        return Ok(());
    }
    if !matches!(Protocol::from(m.tuple.proto), Protocol::Tcp | Protocol::Udp) {
        return Err(DropReason::MasqueradeUnsupportedProtocol);
    }
    snat_to_node(f, m, ctx)
}

/// SNAT of a TCP/UDP IPv4 packet in the original direction of its flow (`m.ct` `New` or
/// `Established`, with its conntrack key): the source becomes the node's underlay address and
/// the flow's port from the worker's share of the masquerade range, allocated and recorded in
/// the flow's entry on its first packet. Its replies are reversed by [`reverse`]. Masquerade's
/// egress step; any other SNAT that must bring replies back through this node (NodePort's SNAT
/// mode) calls it the same way. The caller checked the protocol; a pipeline that does not
/// masquerade (no range configured) leaves the packet as it is.
pub(crate) fn snat_to_node<B: AsRef<[u8]> + AsMut<[u8]>>(
    f: &mut Frame<B>,
    m: &mut PacketMeta,
    ctx: &mut Ctx<'_>,
) -> Result<(), DropReason> {
    let Some(masq) = ctx.masq.as_deref_mut() else {
        return Ok(());
    };
    // No address to leave with yet (the agent has not told the dataplane its node's address):
    // the original address would leak, and nobody could answer it.
    let nat_addr = IpAddr::V4(ctx.t.node.underlay_ipv4.ok_or(DropReason::NoRoute)?);
    let flow = flow_of(m, nat_addr);
    let bytes = f.len() as u32;
    // A new flow's later packets in the same batch find the port its first one recorded.
    let recorded = m.snat_port.or_else(|| recorded_port(m, ctx.ct, ctx.now));
    let kept = recorded.filter(|&p| snat::refresh(ctx.ct, &flow, p, m.tcp, bytes, ctx.now));
    let port = match kept {
        Some(port) => port,
        None => {
            let port = masq
                .allocator()
                .allocate(ctx.ct, &flow, m.tcp, bytes, ctx.now)
                .ok_or(DropReason::MasqueradePortsExhausted)?;
            record_port(m, ctx, port);
            ctx.c.masquerade_ports_allocated += 1;
            port
        }
    };
    nat::rewrite_src(f, m, nat_addr, port);
    m.snat_port = Some(port);
    ctx.c.masquerade_translated += 1;
    Ok(())
}

/// Starts loading the translated entries [`egress`] will read and step for the batch's
/// established masqueraded flows (`m.snat_port` known), in the conntrack stage's two phases:
/// every bucket's tags, then the slots whose tag matches. Without it each such packet waits
/// for a cache miss of its own; with it the batch's misses overlap.
pub(crate) fn prefetch_translated(metas: &[PacketMeta], ctx: &Ctx<'_>) {
    let (Some(_), Some(node)) = (ctx.masq.as_deref(), ctx.t.node.underlay_ipv4) else {
        return;
    };
    let mut hashes = [0u64; MAX_BATCH];
    let mut n = 0;
    let pending = metas.iter().filter(|m| m.verdict == Verdict::Pending);
    for (m, port) in pending
        .filter_map(|m| Some((m, m.snat_port?)))
        .take(MAX_BATCH)
    {
        let key = flow_of(m, IpAddr::V4(node)).translated_key(port);
        let hash = ctx.ct.hash_key(&key);
        ctx.ct.prefetch(hash);
        hashes[n] = hash;
        n += 1;
    }
    // A translated entry holds the original source (NAT information): stored whole.
    for &hash in &hashes[..n] {
        ctx.ct.prefetch_match(hash, true);
    }
}

/// The packet's flow as SNAT sees it, leaving with `nat_addr`.
fn flow_of(m: &PacketMeta, nat_addr: IpAddr) -> SnatFlow {
    SnatFlow {
        original: (m.tuple.src, m.tuple.sport),
        remote: (m.tuple.dst, m.tuple.dport),
        nat_addr,
        proto: m.tuple.proto,
        identity: m.src_identity,
    }
}

/// The port already recorded in a new flow's own entry (by an earlier packet of the batch).
fn recorded_port(m: &PacketMeta, ct: &Conntrack, now: u64) -> Option<u16> {
    if m.ct != CtMark::New {
        return None;
    }
    let key = m.ct_key?;
    let (h, _) = ct.lookup(&key, m.ct_hash, now)?;
    ct.entry(h).snat_port()
}

/// Remembers the port in the flow's own entry, for its later packets. The entry may be gone
/// (evicted by the translated entry's creation in a full bucket): the next packet is then a
/// new flow again, and policy decides it again.
fn record_port(m: &PacketMeta, ctx: &mut Ctx<'_>, port: u16) {
    let Some(key) = m.ct_key else { return };
    if let Some((h, _)) = ctx.ct.lookup(&key, m.ct_hash, ctx.now) {
        ctx.ct.entry_mut(h).set_snat_port(Some(port));
    }
}

/// Turns a reply to a masqueraded flow back into a packet to the pod (see the module doc); a
/// no-op for anything else. A packet to a masquerade port that no live flow of this worker's
/// left with is dropped (`masquerade_no_mapping`): nothing on the node listens there.
pub(crate) fn reverse<B: AsRef<[u8]> + AsMut<[u8]>>(
    f: &mut Frame<B>,
    m: &mut PacketMeta,
    ctx: &mut Ctx<'_>,
) -> Result<(), DropReason> {
    let Some(masq) = ctx.masq.as_deref() else {
        return Ok(());
    };
    let Some(node) = ctx.t.node.underlay_ipv4 else {
        return Ok(());
    };
    if m.icmp == IcmpClass::Error {
        return reverse_icmp_error(f, m, ctx, IpAddr::V4(node));
    }
    let t = m.tuple;
    let to_masquerade_port = t.dst == IpAddr::V4(node)
        && matches!(Protocol::from(t.proto), Protocol::Tcp | Protocol::Udp)
        && masq.ports().contains(t.dport);
    if !to_masquerade_port {
        return Ok(());
    }
    let (addr, port) = snat::original_of(
        ctx.ct,
        (t.src, t.sport),
        (t.dst, t.dport),
        t.proto,
        m.tcp,
        f.len() as u32,
        ctx.now,
    )
    .map_err(|refused| match refused {
        ReplyRefused::NoMapping => DropReason::MasqueradeNoMapping,
        ReplyRefused::RstOutOfWindow => DropReason::TcpRstOutOfWindow,
    })?;
    if !nat::rewrite_dst(f, m, addr, port) {
        return Err(DropReason::L4Malformed);
    }
    ctx.c.masquerade_reversed += 1;
    Ok(())
}

/// An ICMPv4 error to the node's address about a packet that left masqueraded (a router's
/// "fragmentation needed", "TTL exceeded" on the way): sent on to the pod, about the packet as
/// the pod sent it. An error quoting a masquerade port that no live flow holds is dropped
/// (`masquerade_no_mapping`); any other error is left alone (the conntrack stage judges it).
fn reverse_icmp_error<B: AsRef<[u8]> + AsMut<[u8]>>(
    f: &mut Frame<B>,
    m: &mut PacketMeta,
    ctx: &mut Ctx<'_>,
    node: IpAddr,
) -> Result<(), DropReason> {
    let (Some(masq), q) = (ctx.masq.as_deref(), m.inner) else {
        return Ok(());
    };
    let about_masquerade_port = m.tuple.dst == node
        && q.src == node
        && matches!(Protocol::from(q.proto), Protocol::Tcp | Protocol::Udp)
        && masq.ports().contains(q.sport);
    if !about_masquerade_port {
        return Ok(());
    }
    let (addr, port) =
        snat::original_of_quoted(ctx.ct, (q.src, q.sport), (q.dst, q.dport), q.proto, ctx.now)
            .ok_or(DropReason::MasqueradeNoMapping)?;
    if !nat::unsnat_icmp_error(f, m, addr, port) {
        return Err(DropReason::L4Malformed);
    }
    ctx.c.masquerade_reversed += 1;
    Ok(())
}
