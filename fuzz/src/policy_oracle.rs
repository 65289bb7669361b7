//! The policy oracle of the `pipeline` fuzz body: every frame the pipeline transmits to or from
//! an enforced endpoint of the fuzzed node must be one that the node's policy admits.
//!
//! The enforced endpoints are POD2 (ingress) and POD3 (egress); see
//! [`crate::pipeline`]'s `install_policies`. A frame delivered to POD2, or sent by POD3 and
//! transmitted anywhere, must be one of:
//! - a new flow that the fixture's policy allows, evaluated here from a hand-written copy of
//!   that policy ([`ingress_of_server_allows`], [`egress_of_db_allows`]), not from the
//!   pipeline's maps;
//! - a packet of a flow admitted in an earlier round (either direction: established or reply),
//!   from this module's own record of admitted flows, never from the pipeline's conntrack;
//! - an ICMP error whose outer destination is the quoted packet's source and whose quoted
//!   flow was admitted earlier (the check Linux conntrack makes; issue 14, finding 1: without
//!   it a pod quotes a flow of its own to carry chosen bytes to anyone).
//!
//! Flows are compared by their addresses, protocol and ports as the frames show them, before
//! the pipeline (the input) and after it (the output, decapsulated when this node tunnelled
//! it): NAT changes one or the other, and a flow counts as admitted under both. The model is
//! deliberately a little generous where it cannot know what the pipeline knows (a flow a
//! frame committed and a later stage dropped); it is never generous about policy itself.
//!
//! Limits: frames that are not IP, the router's own answers to a pod (a Neighbor
//! Advertisement for the gateway, back on the pod's interface), IP fragments (the pipeline drops them) and frames whose
//! transport header the oracle cannot read are not judged. `Pass` verdicts (to the kernel)
//! are not judged either: only what the dataplane itself delivers.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use dataplane::pipeline::Verdict;
use dataplane::wire::{icmpv4, icmpv6, ipv6};
use dataplane::Identity;

use crate::pipeline::{
    underlay, ID_CLIENT, ID_DB, ID_SERVER, ID_WORLD_CIDR, POD2, POD3, PODS, UPLINK,
};

/// The DNS server of the world prefix that POD3 may query (its egress policy's second entry).
pub const WORLD_DNS: Ipv4Addr = Ipv4Addr::new(172, 16, 0, 53);

const TCP: u8 = 6;
const UDP: u8 = 17;
const ICMP: u8 = 1;
const ICMPV6: u8 = 58;
const VXLAN_PORT: u16 = 4789;
const GENEVE_PORT: u16 = 6081;

/// Addresses, protocol and ports of a packet, as policy and conntrack read them: for ICMP
/// echo the identifier in both ports, for other ICMP the type in `dport`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Flow {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub proto: u8,
    pub sport: u16,
    pub dport: u16,
}

impl Flow {
    fn reversed(self) -> Flow {
        Flow {
            src: self.dst,
            dst: self.src,
            sport: self.dport,
            dport: self.sport,
            ..self
        }
    }
}

/// What the oracle reads in an IP packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Packet {
    Plain(Flow),
    /// An ICMP error: its own addresses, and the flow of the packet it quotes.
    Error {
        outer: Flow,
        quoted: Flow,
    },
}

/// What the oracle knows across the two rounds of one input.
#[derive(Debug, Default)]
pub struct PolicyOracle {
    /// Flows admitted by an earlier round, in the direction they were seen.
    admitted: HashSet<Flow>,
    /// Flows this round admits, which the next round may treat as established.
    admitting: Vec<Flow>,
}

impl PolicyOracle {
    /// Checks one round's verdicts; panics on a frame policy refuses. `inputs` are the frames
    /// as they entered the pipeline, `outputs` as they left it.
    pub fn check_round(
        &mut self,
        ingress: u32,
        inputs: &[&[u8]],
        outputs: &[&[u8]],
        verdicts: &[Verdict],
    ) {
        for ((input, output), verdict) in inputs.iter().zip(outputs).zip(verdicts) {
            self.check_frame(ingress, input, output, *verdict);
        }
        self.admitted.extend(self.admitting.drain(..));
    }

    fn check_frame(&mut self, ingress: u32, input: &[u8], output: &[u8], verdict: Verdict) {
        let Some((sender, input)) = received_packet(ingress, input) else {
            return;
        };
        // A round's new flows the model allows become established for the next round
        // whatever happened to the frame after policy (the pipeline commits at policy).
        if let Packet::Plain(flow) = input {
            if model_allows(ingress, sender, flow) {
                self.admitting.push(flow);
            }
        }
        let Verdict::Tx { ifindex } = verdict else {
            return;
        };
        let to_server = ifindex == POD2.ifindex;
        let from_db = ingress == POD3.ifindex;
        if !to_server && !from_db {
            return;
        }
        let output = transmitted_packet(ifindex, output);
        if ifindex == ingress && output.is_some_and(is_neighbor_advert) {
            return; // The router answering a pod's neighbor solicitation: no delivery.
        }
        let admitted = match (input, output) {
            (Packet::Error { .. }, _) | (_, Some(Packet::Error { .. })) => {
                self.error_is_related(input) || output.is_some_and(|o| self.error_is_related(o))
            }
            (Packet::Plain(flow), output) => {
                let out_flow = match output {
                    Some(Packet::Plain(f)) => Some(f),
                    _ => None,
                };
                self.is_established(flow)
                    || out_flow.is_some_and(|f| self.is_established(f))
                    || out_flow.is_some_and(|f| model_allows(ingress, sender, f))
            }
        };
        assert!(
            admitted,
            "policy oracle: frame transmitted on {ifindex} from ingress {ingress} (sender \
             identity {}) is no allowed new flow, no established flow or reply and no related \
             ICMP error: in {input:?}, out {output:?}",
            sender.0
        );
        if let (Packet::Plain(flow), Some(Packet::Plain(out))) = (input, output) {
            self.admitting.push(flow);
            self.admitting.push(out);
        }
    }

    fn is_established(&self, flow: Flow) -> bool {
        self.admitted.contains(&flow) || self.admitted.contains(&flow.reversed())
    }

    /// Goes back to the quoted packet's sender, and quotes a flow admitted earlier.
    fn error_is_related(&self, packet: Packet) -> bool {
        match packet {
            Packet::Error { outer, quoted } => {
                outer.dst == quoted.src && self.is_established(quoted)
            }
            Packet::Plain(_) => false,
        }
    }
}

/// An ICMPv6 Neighbor Advertisement, which the pipeline sends for the gateway.
fn is_neighbor_advert(packet: Packet) -> bool {
    matches!(packet, Packet::Plain(f) if f.proto == ICMPV6 && f.dport == 136)
}

/// Whether the fixture's policy admits `flow` as a new flow from `sender` received on
/// `ingress`: POD3's egress when POD3 sent it, POD2's ingress when it goes to POD2.
pub fn model_allows(ingress: u32, sender: Identity, flow: Flow) -> bool {
    let to_server = flow.dst == IpAddr::V4(POD2.v4) || flow.dst == IpAddr::V6(POD2.v6);
    let egress = ingress != POD3.ifindex || egress_of_db_allows(identity_of(flow.dst), flow);
    let ingress = !to_server || ingress_of_server_allows(sender, flow);
    egress && ingress
}

/// POD2's ingress: the db on TCP 80, the client on TCP 8080 and UDP 53; TCP 22 denied to all.
pub fn ingress_of_server_allows(from: Identity, flow: Flow) -> bool {
    if flow.proto == TCP && flow.dport == 22 {
        return false;
    }
    matches!(
        (from, flow.proto, flow.dport),
        (ID_DB, TCP, 80) | (ID_CLIENT, TCP, 8080) | (ID_CLIENT, UDP, 53)
    )
}

/// POD3's egress: anything to the server, and DNS (UDP 53) to the world prefix.
pub fn egress_of_db_allows(to: Identity, flow: Flow) -> bool {
    to == ID_SERVER || (to == ID_WORLD_CIDR && flow.proto == UDP && flow.dport == 53)
}

/// The identity of an address, from the fixture's own list (not the pipeline's ipcache).
pub fn identity_of(addr: IpAddr) -> Identity {
    if let Some(pod) = PODS
        .iter()
        .find(|p| addr == IpAddr::V4(p.v4) || addr == IpAddr::V6(p.v6))
    {
        return pod.identity;
    }
    match addr {
        IpAddr::V4(a) if a.octets()[..2] == [172, 16] => ID_WORLD_CIDR,
        _ => Identity::WORLD,
    }
}

/// The sender's identity and the packet of a received frame (the inner one of a tunnel
/// packet from a peer node, whose VNI names the sender).
fn received_packet(ingress: u32, frame: &[u8]) -> Option<(Identity, Packet)> {
    if let Some(pod) = PODS.iter().find(|p| p.node() == 1 && p.ifindex == ingress) {
        return Some((pod.identity, packet_of(frame)?));
    }
    if ingress == UPLINK {
        if let Some((vni, inner)) = tunnelled(frame) {
            let sender = match Identity(vni) {
                Identity::HOST => Identity::REMOTE_NODE,
                other => other,
            };
            return Some((sender, packet_of(inner)?));
        }
    }
    let packet = packet_of(frame)?;
    let src = match packet {
        Packet::Plain(f) | Packet::Error { outer: f, .. } => f.src,
    };
    Some((identity_of(src), packet))
}

/// The packet of a transmitted frame (the inner one when this node encapsulated it).
fn transmitted_packet(ifindex: u32, frame: &[u8]) -> Option<Packet> {
    if ifindex == UPLINK {
        if let Some((_, inner)) = tunnelled(frame) {
            return packet_of(inner);
        }
    }
    packet_of(frame)
}

/// The VNI and inner frame of a VXLAN or Geneve packet between two nodes' underlay addresses.
fn tunnelled(frame: &[u8]) -> Option<(u32, &[u8])> {
    let (l3, ethertype) = ethernet(frame)?;
    if ethertype != 0x0800 {
        return None;
    }
    let ip = ipv4(l3)?;
    let node = |a: IpAddr| (1..=4).any(|n| a == IpAddr::V4(underlay(n)));
    if ip.proto != UDP || !node(ip.src) || !node(ip.dst) {
        return None;
    }
    let udp = ip.payload;
    let dport = u16::from_be_bytes([*udp.get(2)?, *udp.get(3)?]);
    let tunnel = udp.get(8..)?;
    let vni = u32::from_be_bytes([0, *tunnel.get(4)?, *tunnel.get(5)?, *tunnel.get(6)?]);
    let header_len = match dport {
        VXLAN_PORT => 8,
        GENEVE_PORT => 8 + 4 * usize::from(tunnel.first()? & 0x3f),
        _ => return None,
    };
    Some((vni, tunnel.get(header_len..)?))
}

/// The L3 bytes and EtherType of an Ethernet frame (one VLAN tag skipped).
fn ethernet(frame: &[u8]) -> Option<(&[u8], u16)> {
    let ethertype = u16::from_be_bytes([*frame.get(12)?, *frame.get(13)?]);
    if ethertype == 0x8100 {
        let inner = u16::from_be_bytes([*frame.get(16)?, *frame.get(17)?]);
        return Some((frame.get(18..)?, inner));
    }
    Some((frame.get(14..)?, ethertype))
}

/// An IP header's addresses, protocol (after IPv6 extension headers) and payload.
struct IpHeader<'a> {
    src: IpAddr,
    dst: IpAddr,
    proto: u8,
    payload: &'a [u8],
}

fn ipv4(bytes: &[u8]) -> Option<IpHeader<'_>> {
    let ihl = usize::from(bytes.first()? & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([*bytes.get(2)?, *bytes.get(3)?]));
    let fragment = u16::from_be_bytes([*bytes.get(6)?, *bytes.get(7)?]) & 0x3fff;
    if bytes.first()? >> 4 != 4 || ihl < 20 || fragment != 0 {
        return None;
    }
    let addr = |at: usize| -> Option<IpAddr> {
        let b: [u8; 4] = bytes.get(at..at + 4)?.try_into().ok()?;
        Some(IpAddr::V4(Ipv4Addr::from(b)))
    };
    Some(IpHeader {
        src: addr(12)?,
        dst: addr(16)?,
        proto: *bytes.get(9)?,
        payload: bytes.get(ihl..total.max(ihl).min(bytes.len()))?,
    })
}

fn ipv6(bytes: &[u8]) -> Option<IpHeader<'_>> {
    if bytes.first()? >> 4 != 6 {
        return None;
    }
    let len = usize::from(u16::from_be_bytes([*bytes.get(4)?, *bytes.get(5)?]));
    let addr = |at: usize| -> Option<IpAddr> {
        let b: [u8; 16] = bytes.get(at..at + 16)?.try_into().ok()?;
        Some(IpAddr::V6(Ipv6Addr::from(b)))
    };
    let payload = bytes.get(40..(40 + len).min(bytes.len()))?;
    let walk = ipv6::walk_extension_headers((*bytes.get(6)?).into(), payload).ok()?;
    if walk.fragment.is_some() {
        return None;
    }
    Some(IpHeader {
        src: addr(8)?,
        dst: addr(24)?,
        proto: walk.protocol.into(),
        payload: payload.get(walk.offset..)?,
    })
}

/// The packet of an Ethernet frame carrying IPv4 or IPv6 with a readable transport header.
pub fn packet_of(frame: &[u8]) -> Option<Packet> {
    let (l3, ethertype) = ethernet(frame)?;
    let ip = match ethertype {
        0x0800 => ipv4(l3)?,
        0x86dd => ipv6(l3)?,
        _ => return None,
    };
    let flow = flow_of(&ip)?;
    let is_error = match ip.proto {
        ICMP => icmpv4::Message::from(*ip.payload.first()?).is_error(),
        ICMPV6 => icmpv6::Message::from(*ip.payload.first()?).is_error(),
        _ => false,
    };
    if !is_error {
        return Some(Packet::Plain(flow));
    }
    let quote = ip.payload.get(8..)?;
    let quoted = match ip.proto {
        ICMP => ipv4(quote),
        _ => ipv6(quote),
    }?;
    Some(Packet::Error {
        outer: flow,
        quoted: flow_of(&quoted)?,
    })
}

/// The flow of an IP packet: ports for TCP and UDP, the echo identifier, or the ICMP type.
fn flow_of(ip: &IpHeader<'_>) -> Option<Flow> {
    let l4 = ip.payload;
    let port =
        |at: usize| -> Option<u16> { Some(u16::from_be_bytes([*l4.get(at)?, *l4.get(at + 1)?])) };
    let (sport, dport) = match ip.proto {
        TCP | UDP => (port(0)?, port(2)?),
        ICMP | ICMPV6 => {
            let ty = *l4.first()?;
            if matches!((ip.proto, ty), (ICMP, 0 | 8) | (ICMPV6, 128 | 129)) {
                (port(4)?, port(4)?)
            } else {
                (0, u16::from(ty))
            }
        }
        _ => (0, 0),
    };
    Some(Flow {
        src: ip.src,
        dst: ip.dst,
        proto: ip.proto,
        sport,
        dport,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flow(dst: IpAddr, proto: u8, dport: u16) -> Flow {
        Flow {
            src: IpAddr::V4(POD3.v4),
            dst,
            proto,
            sport: 40000,
            dport,
        }
    }

    #[test]
    fn the_model_policy_is_the_fixtures() {
        let server = IpAddr::V4(POD2.v4);
        assert!(model_allows(POD3.ifindex, ID_DB, flow(server, TCP, 80)));
        assert!(!model_allows(POD3.ifindex, ID_DB, flow(server, TCP, 22)));
        assert!(!model_allows(POD3.ifindex, ID_DB, flow(server, UDP, 53)));
        let dns = IpAddr::V4(WORLD_DNS);
        assert!(model_allows(POD3.ifindex, ID_DB, flow(dns, UDP, 53)));
        assert!(!model_allows(POD3.ifindex, ID_DB, flow(dns, TCP, 53)));
        let world = IpAddr::V4(Ipv4Addr::new(8, 8, 8, 8));
        assert!(!model_allows(POD3.ifindex, ID_DB, flow(world, UDP, 53)));
        assert!(model_allows(UPLINK, Identity::WORLD, flow(world, UDP, 53)));
        assert!(!model_allows(
            UPLINK,
            Identity::WORLD,
            flow(server, TCP, 8080)
        ));
    }
}
