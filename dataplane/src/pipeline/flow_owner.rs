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
//!     the canonical 5-tuple (`conntrack::FlowKey`, the same for both directions) of the
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
use crate::tables::conntrack::FlowKey;
use crate::tables::services::flow_hash;
use crate::tables::snat::PortRange;
use crate::tables::Tables;
use crate::wire::geneve::GenevePacket;
use crate::wire::ip::Protocol;
use crate::wire::udp;
use crate::wire::vxlan;

/// The seed of the ownership hash: any fixed value works (it never leaves the node, and the
/// flow key's hash resists chosen collisions for any seed); fixed so that every worker agrees.
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
        let tuple = after_dnat(t, tuple);
        let key = FlowKey::new(tuple.src, tuple.dst, tuple.sport, tuple.dport, tuple.proto);
        self.reduce(key.hash(OWNER_SEED))
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

/// The tuple ownership is decided on: the innermost IP packet's (through one VXLAN or Geneve
/// header), an ICMP error's quoted flow turned around; `None` for frames of no flow.
fn flow_tuple(t: &Tables, frame: &[u8]) -> Option<Tuple> {
    let mut m = PacketMeta::default();
    headers::parse(frame, &mut m).ok()?;
    if !matches!(m.family, Family::Ipv4 | Family::Ipv6) {
        return None;
    }
    if let Some(inner) = tunnel_payload(t, frame, &m) {
        let mut im = PacketMeta::default();
        if headers::parse(inner, &mut im).is_ok()
            && matches!(im.family, Family::Ipv4 | Family::Ipv6)
        {
            m = im;
        }
    }
    Some(if m.icmp == IcmpClass::Error {
        turned_around(&m.inner)
    } else {
        m.tuple
    })
}

/// The inner Ethernet frame of a VXLAN or Geneve packet to the tunnel ports, if it is one.
fn tunnel_payload<'a>(t: &Tables, frame: &'a [u8], m: &PacketMeta) -> Option<&'a [u8]> {
    if Protocol::from(m.tuple.proto) != Protocol::Udp {
        return None;
    }
    let ports = t.node.tunnel_ports;
    let start = usize::from(m.l4) + udp::HEADER_LEN;
    let hdr = frame.get(start..)?;
    let header_len = if m.tuple.dport == ports.vxlan {
        vxlan::HEADER_LEN
    } else if m.tuple.dport == ports.geneve {
        GenevePacket::new_checked(hdr).ok()?.header_len()
    } else {
        return None;
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
