//! Per-packet metadata that travels beside a frame through the stages.
//!
//! Written by the parse stage, refined by later ones; a stage reads what earlier stages left and
//! never re-parses headers. Everything is `Copy` and fixed-size: the pipeline owns one array of
//! these per batch and reuses it.

use std::net::{IpAddr, Ipv4Addr};

use crate::pipeline::DropReason;
use crate::tables::conntrack::{FlowKey, TcpSegment};
use crate::tables::endpoints::{EndpointId, EndpointSlot};
use crate::types::Identity;

/// What happens to a frame.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Verdict {
    /// Not decided yet (only seen between stages).
    #[default]
    Pending,
    /// Transmit on the interface with this index.
    Tx { ifindex: u32 },
    /// Hand to the kernel's stack.
    Pass,
    /// Drop, counted under the reason.
    Drop(DropReason),
}

/// Network-layer family of a frame.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Family {
    #[default]
    Other,
    Arp,
    Ipv4,
    Ipv6,
}

/// What the conntrack stage found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CtMark {
    /// Not looked up (not IP, or decided earlier).
    #[default]
    None,
    /// No entry: policy decides, and an allowed flow gets an entry.
    New,
    /// An entry in the direction of the originator.
    Established,
    /// An entry, in the reply direction.
    Reply,
    /// An ICMP error quoting a tracked flow.
    Related,
}

/// ICMP message class, for conntrack and policy.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum IcmpClass {
    #[default]
    NotIcmp,
    /// Echo request/reply: the identifier is used as both ports.
    Echo,
    /// An error quoting an inner header: `inner` holds the quoted flow.
    Error,
    /// Any other ICMP message.
    Other,
}

/// A flow's addresses and ports as they appear in a packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tuple {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
}

impl Tuple {
    const EMPTY: Tuple = Tuple {
        src: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        dst: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        sport: 0,
        dport: 0,
        proto: 0,
    };
}

impl Default for Tuple {
    fn default() -> Self {
        Tuple::EMPTY
    }
}

/// A service frontend carried with a flow (DNAT's original destination, or a DSR option).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrontendAddr {
    pub addr: IpAddr,
    pub port: u16,
}

/// Everything the stages know about one frame.
#[derive(Clone, Copy, Debug)]
pub struct PacketMeta {
    pub verdict: Verdict,
    /// The stage that dropped the frame (`Stage as u8`), for the monitor's drop events: set
    /// with a `Drop` verdict by `Batch`, never read by a stage.
    pub drop_stage: u8,
    pub family: Family,
    /// Offset of the IP (or ARP) header in the frame.
    pub l3: u16,
    /// Offset of the transport header.
    pub l4: u16,
    /// End of the IP payload (Ethernet padding may follow).
    pub l4_end: u16,
    /// The packet's 5-tuple (for ICMP echo, the identifier in both ports; for other ICMP the
    /// type in `dport`, which is what policy keys on).
    pub tuple: Tuple,
    /// TCP only: the segment's flags, and the numbers conntrack's sequence check reads.
    pub tcp: TcpSegment,
    pub icmp: IcmpClass,
    /// The ICMP message type (ICMP and ICMPv6 only): what an ICMP policy rule keys on, kept
    /// apart because an echo's ports hold its identifier.
    pub icmp_type: u8,
    /// For ICMP errors: the quoted packet's tuple (a packet that went the other way).
    pub inner: Tuple,
    /// Offset of a DSR IPv4 option in the IP header (0: none).
    pub dsr_option_offset: u8,
    /// Came out of a tunnel: `src_identity` is the VNI's.
    pub from_tunnel: bool,
    pub src_identity: Identity,
    pub dst_identity: Identity,
    pub src_ep: Option<EndpointId>,
    pub dst_ep: Option<EndpointId>,
    /// Slab slots of `src_ep` and `dst_ep` in the batch's endpoints table: later stages reach
    /// the endpoint with one indexed load instead of a hash probe by id.
    pub src_slot: Option<EndpointSlot>,
    pub dst_slot: Option<EndpointSlot>,
    /// The destination's tunnel endpoint from the ipcache (remote pods).
    pub tunnel_endpoint: Option<IpAddr>,
    /// The frontend this flow was addressed to: set by DNAT on the load-balancing node, or by
    /// a DSR option on the backend's node.
    pub frontend: Option<FrontendAddr>,
    /// Write the DSR option on the way out (remote backend of a DSR service).
    pub dsr_out: bool,
    /// The frontend came from a DSR option: replies are answered directly from this node.
    pub dsr_in: bool,
    pub ct: CtMark,
    /// The source port on the node's address this flow leaves with (masquerade): from its
    /// conntrack entry, for packets in the original direction (conntrack stage).
    pub snat_port: Option<u16>,
    pub ct_key: Option<FlowKey>,
    pub ct_hash: u64,
}

impl PacketMeta {
    /// Nothing known yet: what the parse stage starts every frame from. A constant, so that the
    /// reset is a copy from read-only data (a `Default` built on the stack and then copied cost a
    /// store-forwarding stall per packet).
    pub const EMPTY: PacketMeta = PacketMeta {
        verdict: Verdict::Pending,
        drop_stage: 0,
        family: Family::Other,
        l3: 0,
        l4: 0,
        l4_end: 0,
        tuple: Tuple::EMPTY,
        tcp: TcpSegment::NONE,
        icmp: IcmpClass::NotIcmp,
        icmp_type: 0,
        inner: Tuple::EMPTY,
        dsr_option_offset: 0,
        from_tunnel: false,
        src_identity: Identity(0),
        dst_identity: Identity(0),
        src_ep: None,
        dst_ep: None,
        src_slot: None,
        dst_slot: None,
        tunnel_endpoint: None,
        frontend: None,
        dsr_out: false,
        dsr_in: false,
        ct: CtMark::None,
        snat_port: None,
        ct_key: None,
        ct_hash: 0,
    };
}

impl PacketMeta {
    /// The "port" of a policy-map key for this packet: the destination port, or for ICMP the
    /// message type (as Cilium keys ICMP rules), so an echo request is looked up as type 8
    /// (128) whatever its identifier.
    #[inline]
    pub fn policy_port(&self) -> u16 {
        match self.icmp {
            IcmpClass::NotIcmp => self.tuple.dport,
            _ => u16::from(self.icmp_type),
        }
    }
}

impl Default for PacketMeta {
    fn default() -> Self {
        PacketMeta::EMPTY
    }
}
