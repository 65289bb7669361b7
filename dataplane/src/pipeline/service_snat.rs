//! SNAT mode of a service reached from outside (NodePort, external IP): the client's source is
//! rewritten to this node's address and a port of the masquerade range, so the backend's node
//! answers this node, which turns the reply back (Cilium's NodePort SNAT mode, the fallback to
//! DSR).
//!
//! - [`to_remote_backend`] (route stage, before the frame leaves for the backend's node): a
//!   frame this node DNATed to a backend on another node (`m.frontend` set here, not DSR), of
//!   a flow the client opened (`CtMark::New` / `Established`), from anything but a local pod
//!   (a local pod's replies come back through this node anyway), IPv4 TCP/UDP: its source
//!   becomes (the node's underlay address, a port from the worker's share of the masquerade
//!   range), through `masquerade::snat_to_node`, so the one allocator hands out every port
//!   and the translated conntrack entry reserves it.
//! - The reply comes back to the node's address on that port: the uplink program owns the
//!   masquerade range, `masquerade::reverse` (identity stage) restores the client's address
//!   and port, conntrack's reverse NAT restores the frontend as the source, and the route stage
//!   sends the reply out of the uplink towards the client (a conntrack reply from the uplink).
//!
//! The backend sees the node's address, not the client's (the known cost of SNAT mode; DSR
//! keeps it). Without masquerade state (`--masquerade off`) nothing is translated.

use super::batch::Ctx;
use super::meta::{CtMark, PacketMeta};
use super::{masquerade, DropReason};
use crate::frame::Frame;
use crate::wire::ip::Protocol;

/// Translates the source of a frame DNATed here towards a backend on another node (see the
/// module doc); a no-op for anything else.
pub(crate) fn to_remote_backend<B: AsRef<[u8]> + AsMut<[u8]>>(
    f: &mut Frame<B>,
    m: &mut PacketMeta,
    ctx: &mut Ctx<'_>,
) -> Result<(), DropReason> {
    let dnated_here = m.frontend.is_some() && !m.dsr_in && !m.dsr_out;
    let opened_by_client = matches!(m.ct, CtMark::New | CtMark::Established);
    let tcp_or_udp = matches!(Protocol::from(m.tuple.proto), Protocol::Tcp | Protocol::Udp);
    if !dnated_here || !opened_by_client || m.src_ep.is_some() || !tcp_or_udp {
        return Ok(());
    }
    if !m.tuple.src.is_ipv4() {
        return Ok(());
    }
    masquerade::snat_to_node(f, m, ctx)
}
