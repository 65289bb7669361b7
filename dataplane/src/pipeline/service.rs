//! Service stage: load balancing to a Maglev-chosen backend (DNAT), and the DSR option on the
//! backend's node.
//!
//! - A frame addressed to a service frontend (VIP, port, protocol) is DNATed to the backend
//!   that Maglev picks for its flow hash; the hash and the seed are the same on every node, so
//!   every node picks the same backend for a flow. The original frontend is remembered for the
//!   conntrack entry (reverse NAT of replies) and, for a DSR service whose backend is on another
//!   node, for the DSR option the route stage writes.
//! - A frame that carries a DSR IPv4 option arrives on the backend's node: the option is
//!   removed (the pod sees a plain packet) and its frontend is remembered so that the backend's
//!   replies leave with the VIP as their source, straight to the client. A Geneve DSR option
//!   was already taken by the decap stage.
//!
//! The rewrite itself is `nat::rewrite_dst` (checksums updated incrementally, RFC 1624); the
//! backend's endpoint and identity come from `resolve::destination`, as in the identity stage.

use std::net::IpAddr;

use super::batch::{Batch, Ctx, Ingress};
use super::meta::{FrontendAddr, PacketMeta};
use super::{nat, resolve, DropReason, Stage};
use crate::frame::Frame;
use crate::tables::services::{flow_hash, LbMode};
use crate::types::MacAddr;
use crate::wire::ipv4::{self, Ipv4Packet, Protocol};

pub(crate) fn run<B: AsRef<[u8]> + AsMut<[u8]>>(batch: &mut Batch<'_, B>, ctx: &mut Ctx<'_>) {
    let has_l4 = |m: &PacketMeta| m.l4 != 0;
    batch.for_each(ctx, Stage::Service, has_l4, |f, m, ctx| {
        if m.dsr_option_offset != 0 {
            if !dsr_option_trusted(f, m, ctx) {
                return Err(DropReason::DsrOptionUntrusted);
            }
            consume_dsr_option(f, m)?;
            ctx.c.dsr_option_consumed += 1;
        }
        if m.frontend.is_some() {
            return Ok(()); // DSR traffic on the backend's node: already addressed to the backend.
        }
        let t = m.tuple;
        if !matches!(Protocol::from(t.proto), Protocol::Tcp | Protocol::Udp) {
            return Ok(());
        }
        let Some(svc) = ctx.t.services.lookup(t.dst, t.dport, t.proto) else {
            return Ok(());
        };
        let hash = flow_hash(
            t.src,
            t.dst,
            t.sport,
            t.dport,
            t.proto,
            ctx.t.services.seed(),
        );
        let backend = svc.select(hash).ok_or(DropReason::NoServiceBackend)?;
        let (addr, port, mode) = (backend.addr, backend.port, svc.mode());
        if !nat::rewrite_dst(f, m, addr, port) {
            return Err(DropReason::L4Malformed);
        }
        m.frontend = Some(FrontendAddr {
            addr: t.dst,
            port: t.dport,
        });
        ctx.c.dnat += 1;
        resolve::destination(m, ctx.t);
        m.dsr_out = mode == LbMode::Dsr && m.dst_ep.is_none() && addr.is_ipv4();
        Ok(())
    });
}

/// Removes the DSR IPv4 option found by the parse stage and remembers its frontend.
/// A DSR option is a node's word to a node: it is honoured only on a frame that came through a
/// tunnel from a known node (decap checked it) or, natively routed, on the uplink from the MAC
/// of a peer node's next hop. From a pod or the world it would let the sender choose the source
/// address of another pod's replies.
fn dsr_option_trusted<B: AsRef<[u8]> + AsMut<[u8]>>(
    f: &Frame<B>,
    m: &PacketMeta,
    ctx: &Ctx<'_>,
) -> bool {
    if m.from_tunnel {
        return true;
    }
    if ctx.ingress != Ingress::Uplink {
        return false;
    }
    f.data()
        .get(6..12)
        .and_then(|b| <[u8; 6]>::try_from(b).ok())
        .is_some_and(|src| ctx.t.next_hops.is_peer_mac(MacAddr(src)))
}

fn consume_dsr_option<B: AsRef<[u8]> + AsMut<[u8]>>(
    f: &mut Frame<B>,
    m: &mut PacketMeta,
) -> Result<(), DropReason> {
    use crate::wire::ipv4::DsrOption;
    let l3 = usize::from(m.l3);
    let at = l3 + usize::from(m.dsr_option_offset);
    let option = f
        .data()
        .get(at..at + ipv4::DSR_OPTION_LEN)
        .and_then(|b| DsrOption::parse_ipv4(b).ok())
        .ok_or(DropReason::DsrOptionMalformed)?;
    if !f.remove_range(at, ipv4::DSR_OPTION_LEN) {
        return Err(DropReason::DsrOptionMalformed);
    }
    let mut ip = Ipv4Packet::new_unchecked(f.data_mut().get_mut(l3..).unwrap_or_default());
    let ihl = ip.header_len() - ipv4::DSR_OPTION_LEN;
    ip.set_header_len(ihl);
    let total = ip.total_len() - ipv4::DSR_OPTION_LEN as u16;
    ip.set_total_len(total);
    ip.fill_checksum();
    m.l4 -= ipv4::DSR_OPTION_LEN as u16;
    m.l4_end -= ipv4::DSR_OPTION_LEN as u16;
    m.dsr_option_offset = 0;
    m.frontend = Some(FrontendAddr {
        addr: IpAddr::V4(option.addr),
        port: option.port,
    });
    m.dsr_in = true;
    Ok(())
}
