//! L4 checksum completion for frames from pods (and from the host interface, a veth as well).
//!
//! A veth pod's kernel leaves TCP and UDP checksums to the device (CHECKSUM_PARTIAL): the field
//! holds only the pseudo-header sum. AF_XDP hands user space the bytes without that flag, so when
//! the pipeline is configured to (`PipelineConfig::complete_l4_checksums`) the identity stage
//! completes the checksum of every frame from a pod, once its sender is known to be the pod's
//! endpoint, and before any stage patches the checksum incrementally (DNAT, reverse NAT, TTL):
//! an incremental update of a partial sum would stay partial.
//!
//! Contract: rewrites only the TCP/UDP checksum field, over `m.l4..m.l4_end` and the tuple's
//! addresses; a UDP/IPv4 checksum of zero ("no checksum", RFC 768) is left alone.

use std::net::IpAddr;

use super::meta::PacketMeta;
use crate::frame::Frame;
use crate::wire::ipv4::Protocol;
use crate::wire::{tcp::TcpPacket, udp::UdpPacket};

/// Recomputes the TCP/UDP checksum of a frame whose field holds only the pseudo-header sum.
/// Returns true when it wrote one. A UDP/IPv4 field of zero ("no checksum") is left alone.
pub(crate) fn complete<B: AsRef<[u8]> + AsMut<[u8]>>(f: &mut Frame<B>, m: &PacketMeta) -> bool {
    let (l4, end) = (usize::from(m.l4), usize::from(m.l4_end));
    let (src, dst) = (m.tuple.src, m.tuple.dst);
    let Some(seg) = f.data_mut().get_mut(l4..end) else {
        return false;
    };
    match Protocol::from(m.tuple.proto) {
        Protocol::Tcp => {
            let mut p = TcpPacket::new_unchecked(seg);
            match (src, dst) {
                (IpAddr::V4(s), IpAddr::V4(d)) => p.fill_checksum_v4(s, d),
                (IpAddr::V6(s), IpAddr::V6(d)) => p.fill_checksum_v6(s, d),
                _ => return false,
            }
            true
        }
        Protocol::Udp => {
            let mut p = UdpPacket::new_unchecked(seg);
            match (src, dst) {
                (IpAddr::V4(_), _) if p.checksum() == 0 => return false,
                (IpAddr::V4(s), IpAddr::V4(d)) => p.fill_checksum_v4(s, d),
                (IpAddr::V6(s), IpAddr::V6(d)) => p.fill_checksum_v6(s, d),
                _ => return false,
            }
            true
        }
        _ => false,
    }
}
