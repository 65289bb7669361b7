//! The `pipeline` fuzz body: the whole dataplane pipeline on a batch of arbitrary frames.
//!
//! Input layout (see [`encode_batch`], which the seed generator uses):
//! - byte 0, the selector: bits 0-1 pick the ingress interface ([`INGRESS`]: a pod, another
//!   pod, the uplink, an interface nothing is configured for); bit 2 turns on
//!   `complete_l4_checksums`; bit 3 gives the frames only [`SMALL_HEADROOM`] bytes of headroom
//!   and bit 4 no tailroom, so the encapsulation and DSR-option paths meet full buffers;
//!   bit 5 leaves IPv4 header checksums as they are: when it is clear, the harness recomputes
//!   them (outer, and inner for a VXLAN/Geneve packet) before the batch, because a mutated
//!   header would otherwise almost always stop at the checksum check of the parse stage;
//! - then up to [`MAX_FRAMES`] frames, each a 2-byte big-endian length (masked to
//!   [`MAX_FRAME_LEN`]) and that many bytes (fewer when the input ends first).
//!
//! The tables are built once per process ([`tables`]): this node (A) with three pods, remote
//! nodes reached by VXLAN, Geneve and native routing, SNAT and DSR services, and policies that
//! allow some flows and deny others. Each input gets a fresh [`Pipeline`] (so a crash replays
//! from its input alone) with a small conntrack table, so eviction is reached too. The batch is
//! processed twice, the second time with the original frames again and a later clock, so the
//! established-flow paths of conntrack run as well.
//!
//! Invariants asserted after each batch:
//! - no panic; one verdict per frame and no [`Verdict::Pending`];
//! - every frame's window fits its buffer (`offset + len <= buffer length`);
//! - a transmitted frame goes out on a configured interface (a pod's or the uplink) and is a
//!   valid Ethernet frame whose IPv4 headers (outer, and inner when tunnelled) carry a
//!   checksum that verifies;
//! - policy holds ([`crate::policy_oracle`]): every frame transmitted to or from an enforced
//!   endpoint is an allowed new flow, a flow admitted in the first round (or its reply), or an
//!   ICMP error that goes back to the sender of the packet it quotes, of an admitted flow;
//! - counters are consistent: `rx == tx + pass + drop`, per batch and in total; the verdicts
//!   of the batch match the counter deltas; the drops by reason and by stage both add up to
//!   the drop count; the parse stage saw every received frame.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::{Arc, OnceLock};

use dataplane::frame::{Frame, DEFAULT_HEADROOM};
use dataplane::pipeline::{Counters, MasqueradeConfig, Pipeline, PipelineConfig, Stage, Verdict};
use dataplane::tables::conntrack::CtConfig;
use dataplane::tables::endpoints::{EndpointId, EndpointSpec, Endpoints};
use dataplane::tables::ipcache::{IpCache, IpCacheEntry};
use dataplane::tables::next_hops::NextHops;
use dataplane::tables::nodes::{Encap, Node, Nodes};
use dataplane::tables::policy::{PolicyEntry, PolicyKey, PortRange};
use dataplane::tables::services::{Backend, Frontend, LbMode, ServiceSpec, Services};
use dataplane::tables::snat::DEFAULT_PORTS;
use dataplane::tables::{LocalNode, Tables, TunnelPorts};
use dataplane::wire::ethernet::{EtherType, EthernetFrame};
use dataplane::wire::ipv4::{Ipv4Packet, Protocol};
use dataplane::wire::udp::UdpPacket;
use dataplane::wire::{geneve, vxlan};
use dataplane::{Identity, MacAddr, Prefix};

use crate::policy_oracle::PolicyOracle;

/// Frames per input at most.
pub const MAX_FRAMES: usize = 8;
/// Largest frame an input can describe (the length prefix is masked to it): a jumbo-ish frame,
/// so length fields up to the uplink MTU and past it are reachable.
pub const MAX_FRAME_LEN: usize = 0x0fff;
/// Headroom when selector bit 3 is set: less than an outer header, so encapsulation must
/// fail cleanly.
pub const SMALL_HEADROOM: usize = 16;
/// Tailroom of a frame unless selector bit 4 is set.
pub const DEFAULT_TAILROOM: usize = 64;
/// Conntrack entries of the fuzzed pipeline: small, so that eviction is reached.
pub const CT_CAPACITY: usize = 64;

/// Clock of the first batch, and of the second (a second later).
const NOW: u64 = 1_000_000_000;

// ---- the node and its cluster ----------------------------------------------------------------
// Node A (this node, 192.168.0.1): pods 1..3 in 10.1.0.0/24 and fd00::1:0/112. Node B
// (192.168.0.2, VXLAN): 10.2.0.0/24. Node C (192.168.0.3, Geneve): 10.3.0.0/24. Node D
// (192.168.0.4, native routing): 10.4.0.0/24.

/// The uplink's interface index.
pub const UPLINK: u32 = 100;
/// An interface index nothing is configured for.
pub const UNKNOWN_IFINDEX: u32 = 999;
pub const ROUTER_MAC: MacAddr = MacAddr([0x02, 0, 0, 0, 0xff, 0x01]);
pub const UPLINK_MAC: MacAddr = MacAddr([0x02, 0, 0, 0, 0xaa, 0x01]);
pub const WORLD_GW_MAC: MacAddr = MacAddr([0x02, 0, 0, 0, 0xee, 0x01]);

pub const ID_CLIENT: Identity = Identity(1001);
pub const ID_SERVER: Identity = Identity(1002);
pub const ID_DB: Identity = Identity(1003);
pub const ID_REMOTE: Identity = Identity(2001);

/// A pod of the test cluster.
#[derive(Clone, Copy, Debug)]
pub struct Pod {
    pub id: u32,
    pub ifindex: u32,
    pub mac: MacAddr,
    pub v4: Ipv4Addr,
    pub v6: Ipv6Addr,
    pub identity: Identity,
}

impl Pod {
    const fn new(id: u32, v4: [u8; 4], identity: Identity) -> Pod {
        Pod {
            id,
            ifindex: id + 10,
            mac: MacAddr([0x02, 0, 0, 0, v4[1], id as u8]),
            v4: Ipv4Addr::new(v4[0], v4[1], v4[2], v4[3]),
            v6: Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, v4[1] as u16, v4[3] as u16),
            identity,
        }
    }

    /// The node number (1 = A) the pod lives on.
    pub fn node(&self) -> u8 {
        self.v4.octets()[1]
    }

    fn spec(&self) -> EndpointSpec {
        EndpointSpec {
            id: EndpointId(self.id),
            ifindex: self.ifindex,
            mac: self.mac,
            ipv4: Some(self.v4),
            ipv6: Some(self.v6),
            identity: self.identity,
        }
    }
}

pub const POD1: Pod = Pod::new(1, [10, 1, 0, 11], ID_CLIENT);
pub const POD2: Pod = Pod::new(2, [10, 1, 0, 12], ID_SERVER);
pub const POD3: Pod = Pod::new(3, [10, 1, 0, 13], ID_DB);
pub const POD_B: Pod = Pod::new(21, [10, 2, 0, 21], ID_REMOTE);
pub const POD_C: Pod = Pod::new(31, [10, 3, 0, 31], ID_REMOTE);
pub const POD_D: Pod = Pod::new(41, [10, 4, 0, 41], ID_REMOTE);
/// Every pod; the first three are local.
pub const PODS: [Pod; 6] = [POD1, POD2, POD3, POD_B, POD_C, POD_D];

pub const VIP_SNAT: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
pub const VIP_DSR_VXLAN: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 20);
pub const VIP_DSR_GENEVE: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 30);
pub const VIP_DSR_NATIVE: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 40);
pub const VIP_EMPTY: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 99);
pub const VIP6_SNAT: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x96, 0, 0, 0, 0, 0, 0x10);
/// A world prefix with its own (CIDR) identity.
pub const WORLD_CIDR: &str = "172.16.0.0/16";
pub const ID_WORLD_CIDR: Identity = Identity(16_777_217);

/// The ingress interface for each value of the selector's low two bits.
pub const INGRESS: [u32; 4] = [POD1.ifindex, POD3.ifindex, UPLINK, UNKNOWN_IFINDEX];

/// The underlay address of node `n` (1 = A).
pub fn underlay(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(192, 168, 0, n)
}

/// The gateway address pods of node A use.
pub fn gateway_v4() -> Ipv4Addr {
    Ipv4Addr::new(10, 1, 0, 1)
}

/// The tables of node A, built once per process.
pub fn tables() -> &'static Tables {
    static TABLES: OnceLock<Tables> = OnceLock::new();
    TABLES.get_or_init(build_tables)
}

fn build_tables() -> Tables {
    let mut endpoints = Endpoints::new();
    let mut ipcache = IpCache::new();
    for pod in PODS {
        if pod.node() == 1 {
            endpoints
                .upsert(pod.spec())
                .expect("pod specs are distinct");
        }
        let entry = if pod.node() == 1 {
            IpCacheEntry::local(pod.identity)
        } else {
            IpCacheEntry::remote(pod.identity, IpAddr::V4(underlay(pod.node())))
        };
        ipcache.upsert(Prefix::host(IpAddr::V4(pod.v4)), entry);
        ipcache.upsert(Prefix::host(IpAddr::V6(pod.v6)), entry);
    }
    ipcache.upsert(
        WORLD_CIDR.parse().expect("a valid prefix"),
        IpCacheEntry::local(ID_WORLD_CIDR),
    );
    install_policies(&mut endpoints);
    Tables {
        node: Arc::new(LocalNode {
            name: "node-a".to_string(),
            underlay_ipv4: Some(underlay(1)),
            router_mac: ROUTER_MAC,
            gateway_ipv4: Some(gateway_v4()),
            gateway_ipv6: Some(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 1, 1)),
            uplink_ifindex: Some(UPLINK),
            uplink_mac: UPLINK_MAC,
            uplink_mtu: 1500,
            default_encap: Encap::Vxlan,
            tunnel_ports: TunnelPorts::default(),
            host_link: None,
            host_addresses: Vec::new(),
        }),
        ipcache: Arc::new(ipcache),
        endpoints: Arc::new(endpoints),
        services: Arc::new(services()),
        nodes: Arc::new(nodes()),
        next_hops: Arc::new(next_hops()),
    }
}

/// POD2 (server) admits only the db on 80 and the client on 8080 (the service's backend port)
/// and 53/udp, and denies port 22 to everyone; POD3 (db) may send only to the server and DNS
/// queries (53/udp) to the world prefix. POD1 has no policy. `policy_oracle` holds a
/// hand-written copy of these rules: change both together.
fn install_policies(endpoints: &mut Endpoints) {
    let server = endpoints
        .policy_mut(EndpointId(POD2.id))
        .expect("POD2 is local");
    server.ingress.enforced = true;
    let entries = [
        (
            PolicyKey::l4(ID_DB, 6, PortRange::single(80)),
            PolicyEntry::allow(1),
        ),
        (
            PolicyKey::l4(ID_CLIENT, 6, PortRange::single(8080)),
            PolicyEntry::allow(2),
        ),
        (
            PolicyKey::l4(ID_CLIENT, 17, PortRange::single(53)),
            PolicyEntry::allow(3),
        ),
        (
            PolicyKey::l4(Identity::ANY, 6, PortRange::single(22)),
            PolicyEntry::deny(4),
        ),
    ];
    for (key, entry) in entries {
        server
            .ingress
            .map
            .insert(key, entry)
            .expect("valid policy entry");
    }
    let db = endpoints
        .policy_mut(EndpointId(POD3.id))
        .expect("POD3 is local");
    db.egress.enforced = true;
    db.egress
        .map
        .insert(PolicyKey::l3(ID_SERVER), PolicyEntry::allow(5))
        .expect("valid policy entry");
    db.egress
        .map
        .insert(
            PolicyKey::l4(ID_WORLD_CIDR, 17, PortRange::single(53)),
            PolicyEntry::allow(6),
        )
        .expect("valid policy entry");
}

fn services() -> Services {
    let mut services =
        Services::new(dataplane::tables::maglev::DEFAULT_M, 42).expect("valid Maglev size");
    let spec = |addr: IpAddr, backends: &[(IpAddr, u16, u16)], mode| ServiceSpec {
        frontend: Frontend {
            addr,
            port: 80,
            proto: 6,
        },
        backends: backends
            .iter()
            .map(|&(addr, port, weight)| Backend { addr, port, weight })
            .collect(),
        mode,
        kind: Default::default(),
    };
    let v4 = |pod: Pod| IpAddr::V4(pod.v4);
    let specs = [
        spec(
            IpAddr::V4(VIP_SNAT),
            &[(v4(POD2), 8080, 1), (v4(POD_B), 8080, 1)],
            LbMode::Snat,
        ),
        spec(
            IpAddr::V4(VIP_DSR_VXLAN),
            &[(v4(POD_B), 8080, 1)],
            LbMode::Dsr,
        ),
        spec(
            IpAddr::V4(VIP_DSR_GENEVE),
            &[(v4(POD_C), 8080, 1)],
            LbMode::Dsr,
        ),
        spec(
            IpAddr::V4(VIP_DSR_NATIVE),
            &[(v4(POD_D), 8080, 1)],
            LbMode::Dsr,
        ),
        spec(IpAddr::V4(VIP_EMPTY), &[(v4(POD2), 8080, 0)], LbMode::Snat),
        spec(
            IpAddr::V6(VIP6_SNAT),
            &[(IpAddr::V6(POD2.v6), 8080, 1)],
            LbMode::Snat,
        ),
    ];
    for spec in specs {
        services.upsert(spec).expect("valid service");
    }
    services
}

fn nodes() -> Nodes {
    let mut nodes = Nodes::new();
    let specs = [
        (1, "10.1.0.0/24", Encap::Vxlan),
        (2, "10.2.0.0/24", Encap::Vxlan),
        (3, "10.3.0.0/24", Encap::Geneve),
        (4, "10.4.0.0/24", Encap::Native),
    ];
    for (n, cidr, encap) in specs {
        nodes
            .upsert(Node {
                name: format!("node-{n}"),
                underlay: IpAddr::V4(underlay(n)),
                pod_cidrs: vec![cidr.parse().expect("a valid prefix")],
                encap,
            })
            .expect("valid node");
    }
    nodes
}

/// What the next-hop resolver would find: every node on-link, the world behind a gateway.
fn next_hops() -> NextHops {
    let mut hops = NextHops::new();
    for n in 1..=4u8 {
        hops.set_peer(
            IpAddr::V4(underlay(n)),
            Some(MacAddr([0x02, 0, 0, 0, 0xaa + n, 0x01])),
        );
    }
    hops.set_default_v4(Some(WORLD_GW_MAC));
    hops
}

// ---- the input format --------------------------------------------------------------------------

/// What an input asks for.
#[derive(Debug)]
pub struct Batch<'a> {
    pub ingress_ifindex: u32,
    pub complete_l4_checksums: bool,
    pub headroom: usize,
    pub tailroom: usize,
    /// Recompute IPv4 header checksums before processing (selector bit 5 clear).
    pub repair_checksums: bool,
    pub frames: Vec<&'a [u8]>,
}

/// Splits an input into its batch (see the module doc); `None` for an empty input.
pub fn decode_batch(data: &[u8]) -> Option<Batch<'_>> {
    let (&selector, mut rest) = data.split_first()?;
    let mut frames = Vec::with_capacity(MAX_FRAMES);
    while frames.len() < MAX_FRAMES {
        let Some((len, after)) = rest.split_first_chunk::<2>() else {
            break;
        };
        let len = usize::from(u16::from_be_bytes(*len)) & MAX_FRAME_LEN;
        let take = len.min(after.len());
        frames.push(&after[..take]);
        rest = &after[take..];
    }
    Some(Batch {
        ingress_ifindex: INGRESS[usize::from(selector & 0x03)],
        complete_l4_checksums: selector & 0x04 != 0,
        headroom: if selector & 0x08 != 0 {
            SMALL_HEADROOM
        } else {
            DEFAULT_HEADROOM
        },
        tailroom: if selector & 0x10 != 0 {
            0
        } else {
            DEFAULT_TAILROOM
        },
        repair_checksums: selector & 0x20 == 0,
        frames,
    })
}

/// The input that [`decode_batch`] turns back into `frames` received with `selector`.
///
/// # Panics
/// When a frame is longer than [`MAX_FRAME_LEN`] or there are more than [`MAX_FRAMES`].
pub fn encode_batch(selector: u8, frames: &[&[u8]]) -> Vec<u8> {
    assert!(frames.len() <= MAX_FRAMES, "at most {MAX_FRAMES} frames");
    let mut out = vec![selector];
    for frame in frames {
        assert!(
            frame.len() <= MAX_FRAME_LEN,
            "frame longer than {MAX_FRAME_LEN}"
        );
        out.extend_from_slice(&(frame.len() as u16).to_be_bytes());
        out.extend_from_slice(frame);
    }
    out
}

// ---- the fuzz body -----------------------------------------------------------------------------

/// Runs the pipeline on the batch `data` describes, twice; panics when an invariant breaks.
pub fn pipeline(data: &[u8]) {
    let Some(batch) = decode_batch(data) else {
        return;
    };
    let tables = tables();
    let config = PipelineConfig {
        complete_l4_checksums: batch.complete_l4_checksums,
        conntrack: CtConfig {
            capacity: CT_CAPACITY,
            ..CtConfig::default()
        },
        // Pods' flows to the world are masqueraded, and the uplink's replies un-NATed.
        masquerade: Some(MasqueradeConfig::single_worker(DEFAULT_PORTS)),
        ..PipelineConfig::default()
    };
    let mut pipeline = Pipeline::new(config).expect("the default batch size is valid");
    let mut oracle = PolicyOracle::default();
    for round in 0..2u64 {
        let mut frames: Vec<Frame<Vec<u8>>> = batch
            .frames
            .iter()
            .map(|f| Frame::from_packet(f, batch.headroom, batch.tailroom))
            .collect();
        if batch.repair_checksums {
            frames
                .iter_mut()
                .for_each(|f| repair_ipv4_checksums(f.data_mut()));
        }
        let inputs: Vec<Vec<u8>> = frames.iter().map(|f| f.data().to_vec()).collect();
        let before = pipeline.counters().clone();
        let verdicts = pipeline
            .process(
                tables,
                batch.ingress_ifindex,
                &mut frames,
                NOW * (round + 1),
            )
            .to_vec();
        check_batch(&frames, &verdicts);
        check_counters(&before, pipeline.counters(), &verdicts);
        let inputs: Vec<&[u8]> = inputs.iter().map(Vec::as_slice).collect();
        let outputs: Vec<&[u8]> = frames.iter().map(Frame::data).collect();
        oracle.check_round(batch.ingress_ifindex, &inputs, &outputs, &verdicts);
    }
}

/// Recomputes the IPv4 header checksum of an Ethernet frame, and of the frame inside it when
/// it is a VXLAN or Geneve packet. Anything that does not parse is left alone.
pub fn repair_ipv4_checksums(frame: &mut [u8]) {
    let Some(l3) = ipv4_offset(frame) else {
        return;
    };
    let Some(packet) = frame.get_mut(l3..) else {
        return;
    };
    if Ipv4Packet::new_checked(&*packet).is_err() {
        return;
    }
    Ipv4Packet::new_unchecked(&mut *packet).fill_checksum();
    // Where the inner frame lies in `packet` (it need not end where `packet` ends).
    let Some(inner) = tunnel_payload(packet).map(|inner| {
        let start = inner.as_ptr().addr() - packet.as_ptr().addr();
        start..start + inner.len()
    }) else {
        return;
    };
    let Some(inner_frame) = packet.get_mut(inner) else {
        return;
    };
    let Some(inner_l3) = ipv4_offset(inner_frame) else {
        return;
    };
    if let Some(inner_packet) = inner_frame.get_mut(inner_l3..) {
        if Ipv4Packet::new_checked(&*inner_packet).is_ok() {
            Ipv4Packet::new_unchecked(inner_packet).fill_checksum();
        }
    }
}

/// Offset of the IPv4 header in an Ethernet frame carrying IPv4.
fn ipv4_offset(frame: &[u8]) -> Option<usize> {
    let ethernet = EthernetFrame::new_checked(frame).ok()?;
    (ethernet.inner_ethertype() == EtherType::Ipv4).then(|| ethernet.header_len())
}

/// Per-frame invariants.
fn check_batch(frames: &[Frame<Vec<u8>>], verdicts: &[Verdict]) {
    assert_eq!(verdicts.len(), frames.len(), "one verdict per frame");
    for (frame, verdict) in frames.iter().zip(verdicts) {
        assert!(
            frame.offset() + frame.len() <= frame.buffer().len(),
            "frame window past its buffer"
        );
        match *verdict {
            Verdict::Pending => panic!("a frame left the pipeline undecided"),
            Verdict::Tx { ifindex } => check_transmitted(frame.data(), ifindex),
            Verdict::Pass | Verdict::Drop(_) => {}
        }
    }
}

/// A transmitted frame goes to a configured interface and its IPv4 checksums verify: the
/// outer header always, the inner one when this node encapsulated the frame (outer source is
/// our underlay address, sent on the uplink).
fn check_transmitted(data: &[u8], ifindex: u32) {
    let configured =
        ifindex == UPLINK || PODS.iter().any(|p| p.node() == 1 && p.ifindex == ifindex);
    assert!(
        configured,
        "transmitted on unconfigured interface {ifindex}"
    );
    let frame = EthernetFrame::new_checked(data).expect("a transmitted frame is Ethernet");
    if frame.inner_ethertype() != EtherType::Ipv4 {
        return;
    }
    let ip = Ipv4Packet::new_checked(frame.payload())
        .unwrap_or_else(|e| panic!("IPv4 header of a transmitted frame: {e}"));
    assert!(ip.verify_checksum(), "IPv4 checksum of a transmitted frame");
    if ifindex != UPLINK || ip.src_addr() != underlay(1) {
        return;
    }
    let Some(inner) = tunnel_payload(frame.payload()) else {
        return;
    };
    let inner = EthernetFrame::new_checked(inner).expect("a tunnel carries an Ethernet frame");
    if inner.inner_ethertype() == EtherType::Ipv4 {
        let ip = Ipv4Packet::new_checked(inner.payload())
            .unwrap_or_else(|e| panic!("inner IPv4 header of an encapsulated frame: {e}"));
        assert!(
            ip.verify_checksum(),
            "inner IPv4 checksum of an encapsulated frame"
        );
    }
}

/// The frame inside a VXLAN or Geneve packet, if `packet` (an IPv4 packet) is one.
fn tunnel_payload(packet: &[u8]) -> Option<&[u8]> {
    let ip = Ipv4Packet::new_checked(packet).ok()?;
    if ip.protocol() != Protocol::Udp || ip.is_fragment() {
        return None;
    }
    let l4 = packet.get(ip.header_len()..usize::from(ip.total_len()))?;
    let udp = UdpPacket::new_checked(l4).ok()?;
    let tunnel = l4.get(dataplane::wire::udp::HEADER_LEN..usize::from(udp.len()))?;
    match udp.dst_port() {
        vxlan::UDP_PORT => tunnel.get(vxlan::HEADER_LEN..),
        geneve::UDP_PORT => {
            let header = geneve::GenevePacket::new_checked(tunnel).ok()?;
            tunnel.get(header.header_len()..)
        }
        _ => None,
    }
}

/// Counter invariants, for the batch (`before` -> `after`) and in total.
fn check_counters(before: &Counters, after: &Counters, verdicts: &[Verdict]) {
    for c in [before, after] {
        assert_eq!(
            c.rx_packets,
            c.tx_packets + c.pass_packets + c.drop_packets,
            "rx == tx + pass + drop"
        );
        assert_eq!(
            c.drops_by_reason.iter().sum::<u64>(),
            c.drop_packets,
            "drops by reason add up to the drops"
        );
        assert_eq!(
            c.stage_drops.iter().sum::<u64>(),
            c.drop_packets,
            "drops by stage add up to the drops"
        );
        assert_eq!(
            c.stage_in[Stage::Parse as usize],
            c.rx_packets,
            "the parse stage sees every received frame"
        );
        for stage in Stage::ALL {
            assert!(
                c.stage_drops[stage as usize] <= c.stage_in[stage as usize],
                "stage {} dropped more frames than entered it",
                stage.name()
            );
        }
    }
    let count = |f: fn(&Verdict) -> bool| verdicts.iter().filter(|v| f(v)).count() as u64;
    let rx = after.rx_packets - before.rx_packets;
    assert_eq!(
        rx,
        verdicts.len() as u64,
        "every frame of the batch counted as received"
    );
    assert_eq!(
        after.tx_packets - before.tx_packets,
        count(|v| matches!(v, Verdict::Tx { .. }))
    );
    assert_eq!(
        after.pass_packets - before.pass_packets,
        count(|v| matches!(v, Verdict::Pass))
    );
    assert_eq!(
        after.drop_packets - before.drop_packets,
        count(|v| matches!(v, Verdict::Drop(_)))
    );
    for verdict in verdicts {
        if let Verdict::Drop(reason) = verdict {
            assert!(
                after.drops(*reason) > before.drops(*reason),
                "a {reason:?} verdict without its counter"
            );
        }
    }
}
