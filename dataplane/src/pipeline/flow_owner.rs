//! Which worker owns a frame's flow, when several workers share a node's receive queues.
//!
//! The kernel spreads frames over queues by its own hash (a pod's transmit queue on veth, RSS on
//! a NIC), which is not the same for both directions of a flow, and an AF_XDP socket receives
//! only its own queue. Conntrack, NAT and DSR state are per worker, so every frame of a flow,
//! both directions, must be processed by one worker: the receiving worker asks [`FlowOwner`]
//! and hands the frames it does not own to their owner (`pipeline::handoff`, VPP's model).
//!
//! # Contract
//! - **Both directions of a flow have one owner**, before and after every translation the
//!   pipeline makes:
//!   - plain flows (pod <-> pod, through tunnels, DSR on the backend's node): a seeded hash of
//!     the 5-tuple that is the same for both directions (`symmetric_hash`) of the
//!     innermost packet (VXLAN and Geneve are looked through, as the decap stage does);
//!   - a service frontend (VIP, NodePort): the tuple after DNAT, the backend chosen exactly as
//!     the service stage chooses it (the same Maglev table and flow hash), so the backend's
//!     replies hash alike;
//!   - a reply to the node's address on a masquerade port (pod -> world masquerade, NodePort
//!     SNAT): the worker whose share of the range holds the port (`PortRange::share`), the
//!     share that owner allocated it from;
//!   - an ICMP error: the owner of the flow it quotes (turned around: the quoted packet went
//!     the other way).
//! - Frames that belong to no flow (ARP, neighbour discovery, malformed headers) have no owner:
//!   the receiving worker processes them (they create no state, or are dropped and counted).
//! - Allocates nothing, locks nothing; reads the same tables snapshot as the pipeline.

use std::net::IpAddr;

use super::headers;
use super::meta::{Family, IcmpClass, PacketMeta, Tuple};
use crate::tables::services::flow_hash;
use crate::tables::snat::PortRange;
use crate::tables::Tables;
use crate::wire::ethernet::{EtherType, EthernetFrame};
use crate::wire::geneve::GenevePacket;
use crate::wire::ip::Protocol;
use crate::wire::ipv4::Ipv4Packet;
use crate::wire::ipv6::{self, Ipv6Packet};
use crate::wire::udp;
use crate::wire::vxlan;

/// The seed of the ownership hash: any fixed value works (it never leaves the node); fixed so
/// that every worker agrees.
const OWNER_SEED: u64 = 0x5eed_0ff1_0e0a_11f1;

/// Maps frames to the index of the worker that owns their flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowOwner {
    workers: usize,
    /// The node's whole masquerade range, split into one share per worker.
    nat_ports: Option<PortRange>,
}

impl FlowOwner {
    /// Ownership over `workers` workers (at least 1); `nat_ports` is the masquerade range the
    /// workers' `MasqueradeConfig`s share (`None` without masquerade).
    pub fn new(workers: usize, nat_ports: Option<PortRange>) -> FlowOwner {
        FlowOwner {
            workers: workers.max(1),
            nat_ports,
        }
    }

    pub fn workers(&self) -> usize {
        self.workers
    }

    /// The owner of the flow of `frame` (Ethernet first), or `None` when it belongs to no flow
    /// (any worker may process it). Always `Some(0)` or `None` with one worker.
    #[inline]
    pub fn owner(&self, t: &Tables, frame: &[u8]) -> Option<usize> {
        if self.workers == 1 {
            return Some(0);
        }
        let tuple = flow_tuple(t, frame)?;
        Some(self.owner_of(t, &tuple))
    }

    /// The owner of a flow given one of its packets' tuples (as received, before any NAT).
    pub fn owner_of(&self, t: &Tables, tuple: &Tuple) -> usize {
        if let Some(worker) = self.nat_share_owner(t, tuple) {
            return worker;
        }
        self.reduce(symmetric_hash(&after_dnat(t, tuple)))
    }

    /// A reply to the node's address on a masquerade port: the worker whose share holds it.
    fn nat_share_owner(&self, t: &Tables, tuple: &Tuple) -> Option<usize> {
        let range = self.nat_ports?;
        let node = t.node.underlay_ipv4.map(IpAddr::V4)?;
        let tcp_or_udp = matches!(Protocol::from(tuple.proto), Protocol::Tcp | Protocol::Udp);
        if tuple.dst != node || !tcp_or_udp || !range.contains(tuple.dport) {
            return None;
        }
        (0..self.workers).find(|&w| {
            range
                .share(w, self.workers)
                .is_some_and(|s| s.contains(tuple.dport))
        })
    }

    /// A hash to a worker index: the high bits, by multiplication (no division per frame).
    #[inline]
    fn reduce(&self, hash: u64) -> usize {
        ((u128::from(hash) * self.workers as u128) >> 64) as usize
    }
}

/// A hash of the flow that is the same for both directions: the endpoints combined by xor
/// (which does not care which is the source), then mixed by two multiply-folds.
///
/// Cheaper than conntrack's `FlowKey` hash (which must resist chosen collisions in a table);
/// here a sender who makes flows collide only puts them on one worker, as it could by sending
/// them from one address, so the spread, not collision resistance, is what matters.
#[inline]
fn symmetric_hash(t: &Tuple) -> u64 {
    let bits = |a: IpAddr| match a {
        IpAddr::V4(v4) => u128::from(v4.to_bits()),
        IpAddr::V6(v6) => v6.to_bits(),
    };
    let addrs = bits(t.src) ^ bits(t.dst);
    let ports = u64::from(t.sport ^ t.dport) | u64::from(t.proto) << 16;
    let h = fold_mul((addrs as u64) ^ OWNER_SEED, MIX_A ^ ports);
    fold_mul(h ^ ((addrs >> 64) as u64), MIX_B)
}

/// Odd constants with well-spread bits (wyhash's).
const MIX_A: u64 = 0xa076_1d64_78bd_642f;
const MIX_B: u64 = 0xe703_7ed1_a0b4_28db;

/// Multiplies to 128 bits and xors the halves.
#[inline]
fn fold_mul(a: u64, b: u64) -> u64 {
    let p = u128::from(a) * u128::from(b);
    (p as u64) ^ ((p >> 64) as u64)
}

/// The tuple ownership is decided on: the innermost IP packet's (through one VXLAN or Geneve
/// header), an ICMP error's quoted flow turned around; `None` for frames of no flow.
///
/// TCP and UDP, nearly every frame, are read by [`transport_tuple`]: just the headers, no
/// checksum (a corrupt frame is dropped by its owner's parse stage, wherever it goes). The rest
/// (ICMP, other protocols) goes through the pipeline's own parser.
fn flow_tuple(t: &Tables, frame: &[u8]) -> Option<Tuple> {
    let tuple = match transport_tuple(frame) {
        Some((tuple, l4)) => tuple_or_inner(t, frame, tuple, l4),
        None => return parsed_tuple(frame),
    };
    Some(tuple)
}

/// A tunnelled packet's inner tuple (when it has one), else `tuple`.
fn tuple_or_inner(t: &Tables, frame: &[u8], tuple: Tuple, l4: usize) -> Tuple {
    if Protocol::from(tuple.proto) != Protocol::Udp {
        return tuple;
    }
    let Some(inner) = tunnel_payload(t, frame, &tuple, l4) else {
        return tuple;
    };
    match transport_tuple(inner) {
        Some((inner_tuple, _)) => inner_tuple,
        None => parsed_tuple(inner).unwrap_or(tuple),
    }
}

/// The tuple as the pipeline's parse stage reads it (ICMP errors: the quoted flow, turned
/// around); `None` for frames of no flow or that the parse stage refuses.
fn parsed_tuple(frame: &[u8]) -> Option<Tuple> {
    let mut m = PacketMeta::default();
    headers::parse(frame, &mut m).ok()?;
    if !matches!(m.family, Family::Ipv4 | Family::Ipv6) {
        return None;
    }
    Some(if m.icmp == IcmpClass::Error {
        turned_around(&m.inner)
    } else {
        m.tuple
    })
}

/// The 5-tuple of an unfragmented TCP or UDP packet (IPv4, or IPv6 after its extension
/// headers) and the offset of its transport header; `None` for anything else.
#[inline]
fn transport_tuple(frame: &[u8]) -> Option<(Tuple, usize)> {
    let eth = EthernetFrame::new_checked(frame).ok()?;
    let l3 = eth.header_len();
    let ip = frame.get(l3..)?;
    let (src, dst, proto, l4) = match eth.inner_ethertype() {
        EtherType::Ipv4 => {
            let p = Ipv4Packet::new_checked(ip).ok()?;
            if p.is_fragment() {
                return None;
            }
            let (src, dst) = (IpAddr::V4(p.src_addr()), IpAddr::V4(p.dst_addr()));
            (src, dst, p.protocol(), l3 + p.header_len())
        }
        EtherType::Ipv6 => {
            let p = Ipv6Packet::new_checked(ip).ok()?;
            let walk = ipv6::walk_extension_headers(p.next_header(), p.payload()).ok()?;
            if walk.fragment.is_some() {
                return None;
            }
            let (src, dst) = (IpAddr::V6(p.src_addr()), IpAddr::V6(p.dst_addr()));
            (src, dst, walk.protocol, l3 + ipv6::HEADER_LEN + walk.offset)
        }
        _ => return None,
    };
    if !matches!(proto, Protocol::Tcp | Protocol::Udp) {
        return None;
    }
    // Both transport headers start with the two ports.
    let ports = frame.get(l4..l4 + 4)?;
    let tuple = Tuple {
        src,
        dst,
        sport: u16::from_be_bytes([ports[0], ports[1]]),
        dport: u16::from_be_bytes([ports[2], ports[3]]),
        proto: proto.into(),
    };
    Some((tuple, l4))
}

/// The inner Ethernet frame of a VXLAN or Geneve packet to the tunnel ports of this node's
/// underlay address, if it is one: only those are decapsulated (`decap`). A pod's own UDP to
/// port 4789 of another pod is a plain flow, owned by its outer tuple like its replies.
fn tunnel_payload<'a>(t: &Tables, frame: &'a [u8], tuple: &Tuple, l4: usize) -> Option<&'a [u8]> {
    let ports = t.node.tunnel_ports;
    if tuple.dport != ports.vxlan && tuple.dport != ports.geneve {
        return None;
    }
    if t.node.underlay_ipv4.map(IpAddr::V4) != Some(tuple.dst) {
        return None;
    }
    let hdr = frame.get(l4 + udp::HEADER_LEN..)?;
    let header_len = if tuple.dport == ports.vxlan {
        vxlan::HEADER_LEN
    } else {
        GenevePacket::new_checked(hdr).ok()?.header_len()
    };
    hdr.get(header_len..)
}

/// The quoted packet went the other way: its destination is the error's flow's source.
fn turned_around(q: &Tuple) -> Tuple {
    Tuple {
        src: q.dst,
        dst: q.src,
        sport: q.dport,
        dport: q.sport,
        proto: q.proto,
    }
}

/// The tuple after the service stage's DNAT: a frontend's backend as Maglev picks it.
fn after_dnat(t: &Tables, tuple: &Tuple) -> Tuple {
    if !matches!(Protocol::from(tuple.proto), Protocol::Tcp | Protocol::Udp) {
        return *tuple;
    }
    // The VIP set first: most frames are not for a service, and it is a smaller table.
    if !t.services.is_frontend_addr(tuple.dst) {
        return *tuple;
    }
    let Some(svc) = t.services.lookup(tuple.dst, tuple.dport, tuple.proto) else {
        return *tuple;
    };
    let hash = flow_hash(
        tuple.src,
        tuple.dst,
        tuple.sport,
        tuple.dport,
        tuple.proto,
        t.services.seed(),
    );
    match svc.select(hash) {
        Some(b) => Tuple {
            dst: b.addr,
            dport: b.port,
            ..*tuple
        },
        None => *tuple,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use super::*;
    use crate::tables::maglev::DEFAULT_M;
    use crate::tables::services::{Backend, Frontend, FrontendKind, LbMode, ServiceSpec, Services};
    use crate::tables::LocalNode;
    use crate::testutil::{PacketBuilder, TunnelBuilder, L4, TCP_ACK, TCP_SYN};
    use crate::types::MacAddr;

    const NODE: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 10);
    const VIP: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 96, 0, 10));

    fn ip(last: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(10, 0, 0, last))
    }

    fn world(last: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(203, 0, 113, last))
    }

    fn tables() -> Tables {
        let node = LocalNode {
            underlay_ipv4: Some(NODE),
            ..LocalNode::default()
        };
        let mut services = Services::new(DEFAULT_M, 7).unwrap();
        services
            .upsert(ServiceSpec {
                frontend: Frontend {
                    addr: VIP,
                    port: 80,
                    proto: 6,
                },
                backends: (20..24)
                    .map(|b| Backend {
                        addr: ip(b),
                        port: 8080,
                        weight: 1,
                    })
                    .collect(),
                mode: LbMode::Snat,
                kind: FrontendKind::ClusterIp,
            })
            .unwrap();
        Tables::empty(node, services)
    }

    fn nat() -> PortRange {
        PortRange::new(61000, 65535).unwrap()
    }

    #[test]
    fn both_directions_of_many_flows_have_one_owner_and_the_owners_spread() {
        let t = tables();
        let owner = FlowOwner::new(4, Some(nat()));
        let mut per_worker = [0usize; 4];
        for sport in 1000..3000u16 {
            let a = PacketBuilder::tcp(ip(2), sport, ip(3), 80, TCP_SYN).build();
            let b = PacketBuilder::tcp(ip(3), 80, ip(2), sport, TCP_ACK).build();
            let (oa, ob) = (owner.owner(&t, &a).unwrap(), owner.owner(&t, &b).unwrap());
            assert_eq!(oa, ob, "port {sport}");
            per_worker[oa] += 1;
            let u = PacketBuilder::udp(ip(2), sport, ip(4), 53).build();
            let v = PacketBuilder::udp(ip(4), 53, ip(2), sport).build();
            assert_eq!(owner.owner(&t, &u), owner.owner(&t, &v));
        }
        assert!(per_worker.iter().all(|&n| n > 350), "{per_worker:?}");
    }

    #[test]
    fn echo_requests_and_replies_have_one_owner() {
        let t = tables();
        let owner = FlowOwner::new(2, None);
        for ident in 0..200 {
            let q = PacketBuilder::echo(ip(2), ip(3), true, ident).build();
            let r = PacketBuilder::echo(ip(3), ip(2), false, ident).build();
            assert_eq!(owner.owner(&t, &q), owner.owner(&t, &r));
        }
    }

    #[test]
    fn a_service_flow_is_owned_by_its_post_dnat_tuple() {
        let t = tables();
        let owner = FlowOwner::new(4, Some(nat()));
        for sport in 1000..1500u16 {
            let to_vip = PacketBuilder::tcp(ip(2), sport, VIP, 80, TCP_SYN).build();
            let hash = flow_hash(ip(2), VIP, sport, 80, 6, t.services.seed());
            let svc = t.services.lookup(VIP, 80, 6).unwrap();
            let backend = svc.select(hash).unwrap();
            let reply = PacketBuilder::tcp(backend.addr, 8080, ip(2), sport, TCP_ACK).build();
            assert_eq!(
                owner.owner(&t, &to_vip),
                owner.owner(&t, &reply),
                "port {sport}"
            );
        }
    }

    #[test]
    fn a_masquerade_reply_goes_to_the_share_that_allocated_its_port() {
        let t = tables();
        let owner = FlowOwner::new(3, Some(nat()));
        for w in 0..3 {
            let share = nat().share(w, 3).unwrap();
            for port in [share.first(), share.last()] {
                let reply = PacketBuilder::udp(world(9), 443, IpAddr::V4(NODE), port).build();
                assert_eq!(owner.owner(&t, &reply), Some(w), "port {port}");
            }
        }
        // The same port on another address is an ordinary flow.
        let other = PacketBuilder::udp(world(9), 443, world(10), 61000).build();
        let back = PacketBuilder::udp(world(10), 61000, world(9), 443).build();
        assert_eq!(owner.owner(&t, &other), owner.owner(&t, &back));
    }

    #[test]
    fn a_tunnelled_packet_is_owned_by_its_inner_flow() {
        let t = tables();
        let owner = FlowOwner::new(4, None);
        let tunnel = |sport, geneve: bool| TunnelBuilder {
            src_mac: MacAddr([2, 0, 0, 0, 0, 2]),
            dst_mac: MacAddr([2, 0, 0, 0, 0, 3]),
            src: Ipv4Addr::new(192, 168, 1, 20),
            dst: NODE,
            sport,
            vni: 300,
            geneve_options: geneve.then(Vec::new),
        };
        for sport in 1000..1200u16 {
            let out = PacketBuilder::tcp(ip(2), sport, ip(130), 80, TCP_SYN).build();
            let inner = PacketBuilder::tcp(ip(130), 80, ip(2), sport, TCP_ACK).build();
            // The outer source port differs per packet: only the inner flow may count.
            let vx = tunnel(sport.wrapping_mul(7), false).wrap(&inner);
            let gn = tunnel(sport.wrapping_mul(13), true).wrap(&inner);
            assert_eq!(owner.owner(&t, &out), owner.owner(&t, &vx), "port {sport}");
            assert_eq!(owner.owner(&t, &out), owner.owner(&t, &gn), "port {sport}");
        }
    }

    #[test]
    fn udp_to_a_tunnel_port_of_a_pod_is_a_plain_flow_owned_with_its_replies() {
        let t = tables();
        let owner = FlowOwner::new(4, None);
        for sport in 1000..1200u16 {
            // A pod's own VXLAN-looking datagram to another pod, quoting a chosen inner flow.
            let inner = PacketBuilder::tcp(ip(130), 80, ip(2), sport, TCP_ACK).build();
            let mut sent = PacketBuilder::udp(ip(2), sport, ip(3), 4789).build();
            sent.extend_from_slice(&[0x08, 0, 0, 0, 0, 0, 0x01, 0]);
            sent.extend_from_slice(&inner);
            let reply = PacketBuilder::udp(ip(3), 4789, ip(2), sport).build();
            assert_eq!(
                owner.owner(&t, &sent),
                owner.owner(&t, &reply),
                "port {sport}"
            );
        }
    }

    #[test]
    fn an_icmp_error_goes_to_the_owner_of_the_flow_it_quotes() {
        let t = tables();
        let owner = FlowOwner::new(4, None);
        for sport in 1000..1100u16 {
            let sent = PacketBuilder::udp(ip(2), sport, world(9), 53).build();
            // Destination unreachable from the world, quoting the IP header and 8 bytes.
            let quoted = sent.get(14..14 + 28).unwrap().to_vec();
            let mut icmp = vec![3u8, 3, 0, 0, 0, 0, 0, 0];
            icmp.extend_from_slice(&quoted);
            let raw = L4::Raw { proto: 1 };
            let err = PacketBuilder::new(MacAddr::ZERO, MacAddr::ZERO, world(9), ip(2), raw)
                .payload(&icmp)
                .build();
            assert_eq!(
                owner.owner(&t, &sent),
                owner.owner(&t, &err),
                "port {sport}"
            );
        }
    }

    #[test]
    fn frames_of_no_flow_have_no_owner_and_one_worker_owns_everything() {
        let t = tables();
        let arp = crate::testutil::arp_request(
            MacAddr([2, 0, 0, 0, 0, 2]),
            Ipv4Addr::new(10, 0, 0, 2),
            Ipv4Addr::new(10, 0, 0, 1),
        );
        assert_eq!(FlowOwner::new(2, None).owner(&t, &arp), None);
        assert_eq!(FlowOwner::new(2, None).owner(&t, &[1, 2, 3]), None);
        assert_eq!(FlowOwner::new(1, None).owner(&t, &arp), Some(0));
        assert_eq!(FlowOwner::new(0, None).workers(), 1);
    }
}
