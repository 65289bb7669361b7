//! Decapsulation stage: VXLAN (UDP 4789) and Geneve (UDP 6081) from other nodes.
//!
//! Only frames from the uplink, addressed to this node's underlay IPv4 address, from a known
//! node, are decapsulated. The VNI carries the sender's security identity; a Geneve DSR option
//! carries a service frontend (the frame is for a DSR backend on this node). The outer headers
//! are pulled off the front of the frame and the inner frame is parsed from scratch
//! (`headers::parse`, the parse stage's own header parsing).

use std::net::IpAddr;

use super::batch::{Batch, Ctx, Ingress};
use super::meta::{Family, FrontendAddr, PacketMeta};
use super::{headers, DropReason, Stage};
use crate::frame::Frame;
use crate::types::Identity;
use crate::wire::geneve::{self, GenevePacket};
use crate::wire::ipv4::Protocol;
use crate::wire::udp;
use crate::wire::vxlan::{self, VxlanPacket};

pub(crate) fn run<B: AsRef<[u8]> + AsMut<[u8]>>(batch: &mut Batch<'_, B>, ctx: &mut Ctx<'_>) {
    if ctx.ingress != Ingress::Uplink {
        return;
    }
    let Some(underlay) = ctx.t.node.underlay_ipv4 else {
        return;
    };
    let ports = ctx.t.node.tunnel_ports;
    let is_tunnel = |m: &PacketMeta| {
        let t = m.tuple;
        m.family == Family::Ipv4
            && t.proto == u8::from(Protocol::Udp)
            && t.dst == IpAddr::V4(underlay)
            && ports.is_tunnel(t.dport)
    };
    batch.for_each(ctx, Stage::Decap, is_tunnel, |f, m, ctx| {
        decapsulate(f, m, ctx)?;
        ctx.c.decapsulated += 1;
        Ok(())
    });
}

/// What the tunnel header said.
struct TunnelInfo {
    identity: Identity,
    frontend: Option<FrontendAddr>,
    header_len: usize,
}

fn decapsulate<B: AsRef<[u8]> + AsMut<[u8]>>(
    f: &mut Frame<B>,
    m: &mut PacketMeta,
    ctx: &mut Ctx<'_>,
) -> Result<(), DropReason> {
    if ctx.t.nodes.by_underlay(m.tuple.src).is_none() {
        return Err(DropReason::TunnelUnknownNode);
    }
    let tunnel_start = usize::from(m.l4) + udp::HEADER_LEN;
    let hdr = f
        .data()
        .get(tunnel_start..)
        .ok_or(DropReason::TunnelMalformed)?;
    let info = if m.tuple.dport == ctx.t.node.tunnel_ports.vxlan {
        read_vxlan(hdr)?
    } else {
        read_geneve(hdr)?
    };
    if !f.pull_front(tunnel_start + info.header_len) {
        return Err(DropReason::TunnelMalformed);
    }
    let mut inner = PacketMeta::default();
    headers::parse(f.data(), &mut inner)?;
    if !matches!(inner.family, Family::Ipv4 | Family::Ipv6) {
        return Err(DropReason::TunnelMalformed);
    }
    *m = inner;
    m.from_tunnel = true;
    m.src_identity = peer_identity(info.identity);
    if let Some(fe) = info.frontend {
        m.frontend = Some(fe);
        m.dsr_in = true;
        ctx.c.dsr_option_consumed += 1;
    }
    Ok(())
}

/// The sender's `host` is not ours: another node's host arrives as `remote-node`, as Cilium's
/// `bpf_overlay` presents it (a peer sends its host's traffic with its own `host` identity).
fn peer_identity(vni_identity: Identity) -> Identity {
    if vni_identity == Identity::HOST {
        Identity::REMOTE_NODE
    } else {
        vni_identity
    }
}

fn read_vxlan(hdr: &[u8]) -> Result<TunnelInfo, DropReason> {
    let vx = VxlanPacket::new_checked(hdr).map_err(|_| DropReason::TunnelMalformed)?;
    Ok(TunnelInfo {
        identity: Identity(vx.vni()),
        frontend: None,
        header_len: vxlan::HEADER_LEN,
    })
}

fn read_geneve(hdr: &[u8]) -> Result<TunnelInfo, DropReason> {
    let gn = GenevePacket::new_checked(hdr).map_err(|_| DropReason::TunnelMalformed)?;
    let known = |class: u16, type_: u8| {
        class == geneve::DSR_OPTION_CLASS && type_ & 0x7f == geneve::DSR_OPTION_TYPE
    };
    if gn
        .has_unknown_critical_option(known)
        .map_err(|_| DropReason::TunnelMalformed)?
    {
        return Err(DropReason::TunnelCriticalOption);
    }
    let frontend = geneve::find_dsr_option(&gn)
        .map_err(|_| DropReason::DsrOptionMalformed)?
        .map(|o| FrontendAddr {
            addr: IpAddr::V4(o.addr),
            port: o.port,
        });
    Ok(TunnelInfo {
        identity: Identity(gn.vni()),
        frontend,
        header_len: gn.header_len(),
    })
}
