//! Destination resolution: which endpoint, identity and tunnel endpoint a packet's destination
//! address names. The identity stage resolves every IP packet's destination; the service stage
//! resolves it again after a DNAT changed the destination to a backend.
//!
//! # Contract
//! Writes `dst_ep`, `dst_slot`, `dst_identity` and `tunnel_endpoint` from `m.tuple.dst` alone,
//! in this precedence: a local endpoint (exact address), then one of this node's own addresses
//! (`host`, whatever the ipcache says: `LocalNode::is_local_addr`, the route stage's own test
//! for frames to the host), then the ipcache's longest prefix (which names the node of a remote
//! pod), then `world`. Reads the batch's tables snapshot, never
//! the frame; allocation-free.

use super::meta::PacketMeta;
use crate::tables::Tables;
use crate::types::Identity;

/// Sets the destination endpoint, identity and tunnel endpoint from the destination address.
pub(crate) fn destination(m: &mut PacketMeta, t: &Tables) {
    if let Some((slot, ep)) = t.endpoints.slot_by_ip(m.tuple.dst) {
        m.dst_ep = Some(ep.id());
        m.dst_slot = Some(slot);
        m.dst_identity = ep.identity();
        m.tunnel_endpoint = None;
        return;
    }
    m.dst_ep = None;
    m.dst_slot = None;
    if t.node.is_local_addr(m.tuple.dst) {
        m.dst_identity = Identity::HOST;
        m.tunnel_endpoint = None;
        return;
    }
    match t.ipcache.lookup(m.tuple.dst) {
        Some(e) => {
            m.dst_identity = e.identity;
            m.tunnel_endpoint = e.tunnel_endpoint;
        }
        None => {
            m.dst_identity = Identity::WORLD;
            m.tunnel_endpoint = None;
        }
    }
}
