//! `cargo bench -p dataplane --bench pipeline`: the pipeline's cost in ns/packet on one core,
//! batch 64, on a node with a realistic state, per scenario and per stage.
//!
//! # The state ([`World::build`])
//! - 10,000 local endpoints (10.0.0.2..), identities drawn from 1,000 (1000..=1999);
//! - 100 remote nodes (VXLAN) with 100 pods each in the ipcache (10,000 remote pods);
//! - 1,000 services (SNAT mode, 3/4 TCP :80, 1/4 UDP :53) with 10 local backends each;
//! - policy: the 200 endpoints the traffic touches (100 clients, 100 servers) each hold their
//!   own full maps, ingress and egress, of 10,001 entries (1,000 identities x 10 L4 ports, plus
//!   one wildcard deny): 400 distinct maps, 4M entries. The other 9,800 endpoints hold small
//!   enforced maps (10 wildcard L4 entries): the traffic never reads them, and 9,800 full maps
//!   would cost ~8 GiB of RAM on a shared machine. The bench says so when it starts.
//! - conntrack: 2^18 slots, 100,000 entries: 16,000 flows opened through the pipeline (full
//!   TCP handshake, or UDP request + reply) plus 84,000 established filler entries created
//!   directly with `Conntrack::create`.
//!
//! # Scenarios (64-byte frames on the wire: 60 bytes without FCS, 3/4 TCP, 1/4 UDP)
//! a. established pod -> pod (10,000 flows, 100 per client pod);
//! b. new pod -> pod flows (TCP SYN / first UDP packet) through both 10k-entry policy maps and a
//!    conntrack create; the created entries are removed after each timed chunk (untimed), so
//!    every batch sees flows conntrack has never seen, and the table stays at 100k entries;
//! c. established traffic to service VIPs (Maglev + DNAT);
//! d. established traffic to remote pods (VXLAN encapsulation);
//! e. established VXLAN traffic from remote pods, decapsulated on this node;
//! f. new pod -> world flows, masqueraded: a source port allocated (a conntrack lookup per
//!    candidate, the translated entry created) and recorded in the flow's entry; the flows'
//!    entries and their translated entries are removed after each timed chunk (untimed);
//! g. established pod -> world traffic, masqueraded (the translated entry stepped, the source
//!    rewritten).
//!
//! f and g's clients are 100 of the endpoints with small maps (their wildcard-identity allows
//! admit `world`; the full maps name pod identities only), towards 203.0.113.0/24 through the
//! default gateway; the pipeline masquerades with the default range 61000-65535.
//!
//! A batch holds the frames of one ingress interface (one AF_XDP socket), as in the daemon:
//! a client pod's veth for a, b, c, d, f, g; the uplink for e.
//!
//! # Measurement
//! The pipeline rewrites frames (TTL, MACs, encapsulation), so every batch starts from a fresh
//! copy. Copies are made before the clock starts, 16 batches at a time; only the `process`
//! calls are timed (`iter_custom`: criterion's `iter_batched_ref` cannot run the untimed
//! conntrack clean-up of scenario b, its set-up closure has no access to the pipeline the
//! routine borrows). Two baselines are measured in the same run: `baseline_empty` (the same
//! timed loop with no work: the harness's floor) and `baseline_copy` (the cost of copying a
//! batch, which the figures do NOT include); `part_ct_gc` times a conntrack GC step of 64
//! slots (per packet of a batch), the GC's cost per slot examined. The figures include the GC
//! work `process` does at the pace of a virtual clock that advances 6.4 us per batch (10 Mpps):
//! the GC is paced by time, a full sweep per 10 s, about 0.17 slot per batch here. One
//! criterion iteration is one batch of 64 frames, so `Throughput::Elements(64)` makes criterion
//! print packets/s. The summary at the end prints ns/packet as the median over every timed
//! chunk of this run (warm-up included): on a shared machine a criterion sample (many chunks)
//! often includes time slices given to other processes, which inflates criterion's estimates;
//! a chunk lasts tens of microseconds, so the few chunks hit by a context switch are outliers
//! that the median ignores. The 10th and 90th percentiles show the spread.
//!
//! Per-stage cost: `Pipeline::process_until(.., last)` runs the same code up to `last`; the
//! summary gives the cumulative cost after each stage and the differences.

#![allow(clippy::unwrap_used, clippy::expect_used)] // A bench: a broken set-up should stop loudly.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput};
use dataplane::frame::Frame;
use dataplane::pipeline::meta::CtMark;
use dataplane::pipeline::{MasqueradeConfig, Pipeline, PipelineConfig, Stage, Verdict};
use dataplane::tables::conntrack::{
    Conntrack, CtConfig, CtCreate, CtFlags, FlowDirection, FlowKey,
};
use dataplane::tables::endpoints::{EndpointId, EndpointSpec, Endpoints};
use dataplane::tables::ipcache::{IpCache, IpCacheEntry};
use dataplane::tables::maglev::DEFAULT_M;
use dataplane::tables::next_hops::NextHops;
use dataplane::tables::nodes::{Encap, Node, Nodes};
use dataplane::tables::policy::{EndpointPolicy, PolicyEntry, PolicyKey, PolicyMap, PortRange};
use dataplane::tables::services::{Backend, Frontend, LbMode, ServiceSpec, Services};
use dataplane::tables::snat::DEFAULT_PORTS;
use dataplane::tables::{LocalNode, Tables, TunnelPorts};
use dataplane::testutil::{self, PacketBuilder, TunnelBuilder, TCP_ACK, TCP_SYN, TCP_SYN_ACK};
use dataplane::{Identity, MacAddr, Prefix};

// ---- sizes of the state ----------------------------------------------------------------------

const BATCH: usize = 64;
/// Batches copied before each timed run.
const CHUNK: usize = 16;
/// The clock the pipeline sees (ns); fixed, so nothing expires during the run.
const NOW: u64 = 1_000 * 1_000_000_000;
/// The clock advances this much per timed batch: 64 packets at 10 Mpps, the rate a pipeline
/// within its targets runs at. The conntrack GC is paced by this clock
/// (`PipelineConfig::ct_gc_sweep_ns`), so the figures include the GC work due at that rate.
/// Each benchmark restarts the clock at `NOW`, so within one benchmark (a few seconds of
/// virtual time) nothing the scenarios rely on expires.
const BATCH_INTERVAL_NS: u64 = 6_400;
/// How long before `NOW` the filler conntrack entries were last seen (ns).
const FILLER_AGE: u64 = 10 * 1_000_000_000;

const LOCAL_ENDPOINTS: u32 = 10_000;
const IDENTITIES: u32 = 1_000;
const FIRST_IDENTITY: u32 = 1_000;
/// Endpoints 0..100 are the clients, 100..200 the servers; both hold full policy maps.
const CLIENTS: u32 = 100;
const SERVERS: u32 = 100;
const ACTIVE: u32 = CLIENTS + SERVERS;
const TCP_PORTS: [u16; 5] = [80, 443, 8080, 5432, 6379];
const UDP_PORTS: [u16; 5] = [53, 123, 514, 8125, 9000];
const REMOTE_NODES: u32 = 100;
const PODS_PER_REMOTE_NODE: u32 = 100;
const SERVICES: u32 = 1_000;
const BACKENDS_PER_SERVICE: u32 = 10;
const CT_CAPACITY: usize = 1 << 18;
const CT_ENTRIES: usize = 100_000;
const POD_FLOWS_PER_CLIENT: u32 = 100;
const SERVICE_FLOWS_PER_CLIENT: u32 = 20;
const REMOTE_FLOWS_PER_CLIENT: u32 = 20;
const DECAP_FLOWS: u32 = 2_000;
/// Flows per masquerading client (scenario g), towards `WORLD_SERVERS` addresses.
const WORLD_FLOWS_PER_CLIENT: u32 = 20;
const WORLD_SERVERS: u32 = 200;
const NEW_FLOW_BATCHES: u32 = 1_000;
/// Conntrack slots per step of the `part_ct_gc` measurement (the GC's cost per slot examined).
const GC_SLOTS_PER_BATCH: usize = 64;
/// A fixed conntrack hash seed, so that runs are comparable (a daemon draws a random one).
const BENCH_CT_SEED: u64 = 0x0123_4567_89ab_cdef;

// ---- addresses -------------------------------------------------------------------------------

const UPLINK: u32 = 1;
const UNDERLAY: Ipv4Addr = Ipv4Addr::new(192, 168, 2, 1);
const ROUTER_MAC: MacAddr = MacAddr([0x02, 0, 0, 0, 0xff, 0x01]);
const UPLINK_MAC: MacAddr = MacAddr([0x02, 0, 0, 0, 0xaa, 0x01]);
const WORLD_GW_MAC: MacAddr = MacAddr([0x02, 0, 0, 0, 0xee, 0x01]);

fn local_ip(i: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 0, 0, 2)) + i)
}

fn local_mac(i: u32) -> MacAddr {
    let b = i.to_be_bytes();
    MacAddr([0x02, 0x00, b[0], b[1], b[2], b[3]])
}

fn local_ifindex(i: u32) -> u32 {
    1_000 + i
}

fn identity(n: u32) -> Identity {
    Identity(FIRST_IDENTITY + n % IDENTITIES)
}

fn local_index(ip: Ipv4Addr) -> u32 {
    u32::from(ip) - u32::from(Ipv4Addr::new(10, 0, 0, 2))
}

/// A pod of a remote node: node `n` in 0..100 has 10.(n+1).0.0/16 (service VIPs are in
/// 10.200.0.0/16).
#[derive(Clone, Copy)]
struct RemotePod {
    node: u32,
    pod: u32,
}

impl RemotePod {
    fn ip(self) -> Ipv4Addr {
        Ipv4Addr::new(10, (self.node + 1) as u8, 0, (self.pod + 2) as u8)
    }
    fn mac(self) -> MacAddr {
        MacAddr([0x02, 0x01, 0, 0, self.node as u8, self.pod as u8])
    }
    fn identity(self) -> Identity {
        identity(self.node * PODS_PER_REMOTE_NODE + self.pod + 500)
    }
}

fn node_underlay(n: u32) -> Ipv4Addr {
    Ipv4Addr::new(192, 168, 1, (n + 1) as u8)
}

fn node_mac(n: u32) -> MacAddr {
    MacAddr([0x02, 0xbb, 0, 0, 0, (n + 1) as u8])
}

fn vip(s: u32) -> Ipv4Addr {
    Ipv4Addr::new(10, 200, (s >> 8) as u8, (s & 0xff) as u8)
}

fn service_is_udp(s: u32) -> bool {
    s % 4 == 3
}

/// Flow `j`'s protocol and destination port: 3 TCP for 1 UDP.
fn l4_of(j: u32) -> (bool, u16) {
    let udp = j % 4 == 3;
    let ports = if udp { UDP_PORTS } else { TCP_PORTS };
    (udp, ports[(j as usize / 4) % ports.len()])
}

// ---- frames ----------------------------------------------------------------------------------

/// A 60-byte frame (64 on the wire with the FCS): TCP with 6 payload bytes, UDP with 18.
fn packet(
    src: Ipv4Addr,
    sport: u16,
    dst: Ipv4Addr,
    dport: u16,
    udp: bool,
    flags: u8,
) -> PacketBuilder {
    let (s, d) = (IpAddr::V4(src), IpAddr::V4(dst));
    if udp {
        PacketBuilder::udp(s, sport, d, dport).payload(&[0xab; 18])
    } else {
        PacketBuilder::tcp(s, sport, d, dport, flags).payload(&[0xab; 6])
    }
}

fn flow_key(b: &PacketBuilder) -> FlowKey {
    let (sport, dport, proto) = match b.l4 {
        testutil::L4::Tcp { sport, dport, .. } => (sport, dport, 6),
        testutil::L4::Udp { sport, dport } => (sport, dport, 17),
        _ => unreachable!("the bench builds TCP and UDP only"),
    };
    FlowKey::new(b.src, b.dst, sport, dport, proto)
}

/// The VXLAN frame a remote pod's node sends us.
fn from_remote(pod: RemotePod, inner: &PacketBuilder) -> Vec<u8> {
    let inner = inner.clone().macs(pod.mac(), ROUTER_MAC).ttl(63);
    TunnelBuilder {
        src_mac: node_mac(pod.node),
        dst_mac: UPLINK_MAC,
        src: node_underlay(pod.node),
        dst: UNDERLAY,
        sport: 50_000,
        vni: pod.identity().0,
        geneve_options: None,
    }
    .wrap(&inner.build())
}

/// One batch: the frames of one ingress interface, and their flows' keys (for clean-up).
struct Batch {
    ifindex: u32,
    frames: Vec<Frame<Vec<u8>>>,
    keys: Vec<FlowKey>,
}

impl Batch {
    fn new(ifindex: u32) -> Self {
        Batch {
            ifindex,
            frames: Vec::with_capacity(BATCH),
            keys: Vec::with_capacity(BATCH),
        }
    }

    fn push(&mut self, b: &PacketBuilder, bytes: &[u8]) {
        self.frames.push(testutil::frame(bytes));
        self.keys.push(flow_key(b));
    }
}

/// What a scenario's frames must find in conntrack.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Flows {
    Established,
    New,
}

struct Scenario {
    name: &'static str,
    pool: Vec<Batch>,
    flows: Flows,
}

// ---- the world -------------------------------------------------------------------------------

struct World {
    tables: Tables,
    pipeline: Pipeline,
    scenarios: Vec<Scenario>,
}

/// Full policy maps: every identity x 5 TCP + 5 UDP ports allowed, plus a wildcard deny.
fn full_policy() -> EndpointPolicy {
    let mut map = PolicyMap::new();
    for id in 0..IDENTITIES {
        for (proto, ports) in [(6, TCP_PORTS), (17, UDP_PORTS)] {
            for port in ports {
                let key = PolicyKey::l4(identity(id), proto, PortRange::single(port));
                map.insert(key, PolicyEntry::allow(id)).unwrap();
            }
        }
    }
    let telnet = PolicyKey::l4(Identity::ANY, 6, PortRange::single(23));
    map.insert(telnet, PolicyEntry::deny(1)).unwrap();
    let mut p = EndpointPolicy::default();
    p.ingress.enforced = true;
    p.ingress.map = map.clone();
    p.egress.enforced = true;
    p.egress.map = map;
    p
}

/// Small maps for the endpoints the traffic never reads: 10 wildcard-identity L4 allows.
fn small_policy() -> EndpointPolicy {
    let mut map = PolicyMap::new();
    for (proto, ports) in [(6, TCP_PORTS), (17, UDP_PORTS)] {
        for port in ports {
            let key = PolicyKey::l4(Identity::ANY, proto, PortRange::single(port));
            map.insert(key, PolicyEntry::allow(2)).unwrap();
        }
    }
    let mut p = EndpointPolicy::default();
    p.ingress.enforced = true;
    p.ingress.map = map.clone();
    p.egress.enforced = true;
    p.egress.map = map;
    p
}

fn build_tables() -> Tables {
    let mut endpoints = Endpoints::new();
    let mut ipcache = IpCache::new();
    let full = full_policy();
    let small = small_policy();
    for i in 0..LOCAL_ENDPOINTS {
        let id = EndpointId(i + 1);
        endpoints
            .upsert(EndpointSpec {
                id,
                ifindex: local_ifindex(i),
                mac: local_mac(i),
                ipv4: Some(local_ip(i)),
                ipv6: None,
                identity: identity(i),
            })
            .unwrap();
        // `clone()` copies the maps: each active endpoint owns distinct allocations.
        *endpoints.policy_mut(id).unwrap() = if i < ACTIVE {
            full.clone()
        } else {
            small.clone()
        };
        let prefix = Prefix::host(IpAddr::V4(local_ip(i)));
        ipcache.upsert(prefix, IpCacheEntry::local(identity(i)));
    }
    let mut nodes = Nodes::new();
    let mut next_hops = NextHops::new();
    next_hops.set_default_v4(Some(WORLD_GW_MAC));
    for n in 0..REMOTE_NODES {
        next_hops.set_peer(IpAddr::V4(node_underlay(n)), Some(node_mac(n)));
        let cidr = format!("10.{}.0.0/16", n + 1);
        nodes
            .upsert(Node {
                name: format!("node-{n}"),
                underlay: IpAddr::V4(node_underlay(n)),
                pod_cidrs: vec![cidr.parse().unwrap()],
                encap: Encap::Vxlan,
            })
            .unwrap();
        for pod in 0..PODS_PER_REMOTE_NODE {
            let p = RemotePod { node: n, pod };
            let entry = IpCacheEntry::remote(p.identity(), IpAddr::V4(node_underlay(n)));
            ipcache.upsert(Prefix::host(IpAddr::V4(p.ip())), entry);
        }
    }
    let mut services = Services::new(DEFAULT_M, 42).unwrap();
    for s in 0..SERVICES {
        let (proto, port, backend_port) = if service_is_udp(s) {
            (17, 53, 53)
        } else {
            (6, 80, 8080)
        };
        // Backends among the endpoints that are neither clients nor servers (no hairpin).
        let backends = (0..BACKENDS_PER_SERVICE)
            .map(|k| Backend {
                addr: IpAddr::V4(local_ip(
                    ACTIVE + (s * BACKENDS_PER_SERVICE + k) % (LOCAL_ENDPOINTS - ACTIVE),
                )),
                port: backend_port,
                weight: 1,
            })
            .collect();
        services
            .upsert(ServiceSpec {
                frontend: Frontend {
                    addr: IpAddr::V4(vip(s)),
                    port,
                    proto,
                },
                backends,
                mode: LbMode::Snat,
                kind: Default::default(),
            })
            .unwrap();
    }
    Tables {
        node: Arc::new(LocalNode {
            name: "bench-node".to_string(),
            underlay_ipv4: Some(UNDERLAY),
            router_mac: ROUTER_MAC,
            gateway_ipv4: Some(Ipv4Addr::new(10, 0, 0, 1)),
            gateway_ipv6: None,
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
        services: Arc::new(services),
        nodes: Arc::new(nodes),
        next_hops: Arc::new(next_hops),
    }
}

/// Runs one frame through the pipeline during set-up and insists it is forwarded.
fn setup_one(p: &mut Pipeline, t: &Tables, ifindex: u32, bytes: &[u8]) -> Frame<Vec<u8>> {
    let mut frames = [testutil::frame(bytes)];
    let v = p.process(t, ifindex, &mut frames, NOW)[0];
    assert!(
        matches!(v, Verdict::Tx { .. }),
        "set-up frame not forwarded: {v:?}"
    );
    let [f] = frames;
    f
}

/// Opens a flow: the client's first packet, the server's answer, then the client's next packet
/// (the ACK that makes a TCP entry `Established`, so that eviction prefers other entries).
fn open_flow(
    p: &mut Pipeline,
    t: &Tables,
    (first_if, first): (u32, &[u8]),
    (next_if, next): (u32, &[u8]),
    answer: impl FnOnce(&Frame<Vec<u8>>) -> (u32, Vec<u8>),
) {
    let out = setup_one(p, t, first_if, first);
    let (answer_if, answer) = answer(&out);
    setup_one(p, t, answer_if, &answer);
    setup_one(p, t, next_if, next);
}

/// The TCP flags of flow `j`'s packets: the SYN-ACK answer of a TCP flow, 0 for UDP.
fn answer_flags(udp: bool) -> u8 {
    if udp {
        0
    } else {
        TCP_SYN_ACK
    }
}

fn pod_to_pod_scenario(p: &mut Pipeline, t: &Tables) -> Scenario {
    let mut pool = Vec::new();
    for c in 0..CLIENTS {
        let flow = |j: u32, flags: u8| {
            let server = CLIENTS + (c + j) % SERVERS;
            let (udp, dport) = l4_of(j);
            let b = packet(
                local_ip(c),
                20_000 + j as u16,
                local_ip(server),
                dport,
                udp,
                flags,
            );
            (server, udp, b.macs(local_mac(c), ROUTER_MAC))
        };
        for j in 0..POD_FLOWS_PER_CLIENT {
            let (server, udp, syn) = flow(j, TCP_SYN);
            let ack = flow(j, TCP_ACK).2.build();
            open_flow(
                p,
                t,
                (local_ifindex(c), &syn.build()),
                (local_ifindex(c), &ack),
                |_| {
                    let (sport, dport) = (l4_of(j).1, 20_000 + j as u16);
                    let ans = packet(
                        local_ip(server),
                        sport,
                        local_ip(c),
                        dport,
                        udp,
                        answer_flags(udp),
                    )
                    .macs(local_mac(server), ROUTER_MAC);
                    (local_ifindex(server), ans.build())
                },
            );
        }
        for half in 0..2 {
            let mut batch = Batch::new(local_ifindex(c));
            for i in 0..BATCH as u32 {
                let j = (half * BATCH as u32 + i) % POD_FLOWS_PER_CLIENT;
                let (_, _, b) = flow(j, TCP_ACK);
                batch.push(&b, &b.build());
            }
            pool.push(batch);
        }
    }
    Scenario {
        name: "a_established_pod_to_pod",
        pool,
        flows: Flows::Established,
    }
}

fn new_flow_scenario() -> Scenario {
    let mut pool = Vec::new();
    for b in 0..NEW_FLOW_BATCHES {
        let c = b % CLIENTS;
        let mut batch = Batch::new(local_ifindex(c));
        for i in 0..BATCH as u32 {
            let server = CLIENTS + (b / CLIENTS * 7 + i) % SERVERS;
            let (udp, dport) = l4_of(i);
            let sport = 50_000 + ((b / CLIENTS) * BATCH as u32 + i) as u16;
            let pb = packet(local_ip(c), sport, local_ip(server), dport, udp, TCP_SYN)
                .macs(local_mac(c), ROUTER_MAC);
            batch.push(&pb, &pb.build());
        }
        pool.push(batch);
    }
    Scenario {
        name: "b_new_flow_pod_to_pod",
        pool,
        flows: Flows::New,
    }
}

fn service_scenario(p: &mut Pipeline, t: &Tables) -> Scenario {
    let mut pool = Vec::new();
    for c in 0..CLIENTS {
        let flow = |j: u32, flags: u8| {
            let s = (c * SERVICE_FLOWS_PER_CLIENT + j) % SERVICES;
            let udp = service_is_udp(s);
            let dport = if udp { 53 } else { 80 };
            let b = packet(local_ip(c), 30_000 + j as u16, vip(s), dport, udp, flags);
            (udp, b.macs(local_mac(c), ROUTER_MAC))
        };
        for j in 0..SERVICE_FLOWS_PER_CLIENT {
            let (udp, syn) = flow(j, TCP_SYN);
            let ack = flow(j, TCP_ACK).1.build();
            open_flow(
                p,
                t,
                (local_ifindex(c), &syn.build()),
                (local_ifindex(c), &ack),
                |out| {
                    // The backend Maglev chose: the DNATed destination of the forwarded frame.
                    let d = out.data();
                    let backend = Ipv4Addr::new(d[30], d[31], d[32], d[33]);
                    let bport = u16::from_be_bytes([d[36], d[37]]);
                    let k = local_index(backend);
                    let ans = packet(
                        backend,
                        bport,
                        local_ip(c),
                        30_000 + j as u16,
                        udp,
                        answer_flags(udp),
                    )
                    .macs(local_mac(k), ROUTER_MAC);
                    (local_ifindex(k), ans.build())
                },
            );
        }
        let mut batch = Batch::new(local_ifindex(c));
        for i in 0..BATCH as u32 {
            let (_, b) = flow(i % SERVICE_FLOWS_PER_CLIENT, TCP_ACK);
            batch.push(&b, &b.build());
        }
        pool.push(batch);
    }
    Scenario {
        name: "c_established_service_dnat",
        pool,
        flows: Flows::Established,
    }
}

fn remote_scenario(p: &mut Pipeline, t: &Tables) -> Scenario {
    let mut pool = Vec::new();
    for c in 0..CLIENTS {
        let flow = |j: u32, flags: u8| {
            let pod = RemotePod {
                node: (c + j * 5) % REMOTE_NODES,
                pod: (c + j) % PODS_PER_REMOTE_NODE,
            };
            let (udp, dport) = l4_of(j);
            let b = packet(local_ip(c), 40_000 + j as u16, pod.ip(), dport, udp, flags);
            (pod, udp, b.macs(local_mac(c), ROUTER_MAC))
        };
        for j in 0..REMOTE_FLOWS_PER_CLIENT {
            let (pod, udp, syn) = flow(j, TCP_SYN);
            let ack = flow(j, TCP_ACK).2.build();
            open_flow(
                p,
                t,
                (local_ifindex(c), &syn.build()),
                (local_ifindex(c), &ack),
                |_| {
                    let ans = packet(
                        pod.ip(),
                        l4_of(j).1,
                        local_ip(c),
                        40_000 + j as u16,
                        udp,
                        answer_flags(udp),
                    );
                    (UPLINK, from_remote(pod, &ans))
                },
            );
        }
        let mut batch = Batch::new(local_ifindex(c));
        for i in 0..BATCH as u32 {
            let (_, _, b) = flow(i % REMOTE_FLOWS_PER_CLIENT, TCP_ACK);
            batch.push(&b, &b.build());
        }
        pool.push(batch);
    }
    Scenario {
        name: "d_established_remote_vxlan_encap",
        pool,
        flows: Flows::Established,
    }
}

/// Masquerading client `c` (0..CLIENTS): one of the endpoints with small maps.
fn masq_client(c: u32) -> u32 {
    ACTIVE + c
}

fn world_ip(j: u32) -> Ipv4Addr {
    Ipv4Addr::new(203, 0, 113, 1 + (j % WORLD_SERVERS) as u8)
}

/// The source port of an IPv4 frame without options (what masquerading chose).
fn sport_of(frame: &Frame<Vec<u8>>) -> u16 {
    let d = frame.data();
    u16::from_be_bytes([d[34], d[35]])
}

fn new_world_flow_scenario() -> Scenario {
    let mut pool = Vec::new();
    for b in 0..NEW_FLOW_BATCHES {
        let c = masq_client(b % CLIENTS);
        let mut batch = Batch::new(local_ifindex(c));
        for i in 0..BATCH as u32 {
            let (udp, dport) = l4_of(i);
            let sport = 50_000 + ((b / CLIENTS) * BATCH as u32 + i) as u16;
            let pb = packet(local_ip(c), sport, world_ip(b * 7 + i), dport, udp, TCP_SYN)
                .macs(local_mac(c), ROUTER_MAC);
            batch.push(&pb, &pb.build());
        }
        pool.push(batch);
    }
    Scenario {
        name: "f_new_flow_masquerade",
        pool,
        flows: Flows::New,
    }
}

fn established_world_scenario(p: &mut Pipeline, t: &Tables) -> Scenario {
    let mut pool = Vec::new();
    for k in 0..CLIENTS {
        let c = masq_client(k);
        let flow = |j: u32, flags: u8| {
            let (udp, dport) = l4_of(j);
            let b = packet(
                local_ip(c),
                45_000 + j as u16,
                world_ip(k + j),
                dport,
                udp,
                flags,
            );
            (udp, b.macs(local_mac(c), ROUTER_MAC))
        };
        for j in 0..WORLD_FLOWS_PER_CLIENT {
            let (udp, syn) = flow(j, TCP_SYN);
            let ack = flow(j, TCP_ACK).1.build();
            open_flow(
                p,
                t,
                (local_ifindex(c), &syn.build()),
                (local_ifindex(c), &ack),
                |out| {
                    let ans = packet(
                        world_ip(k + j),
                        l4_of(j).1,
                        UNDERLAY,
                        sport_of(out),
                        udp,
                        answer_flags(udp),
                    )
                    .macs(WORLD_GW_MAC, UPLINK_MAC);
                    (UPLINK, ans.build())
                },
            );
        }
        let mut batch = Batch::new(local_ifindex(c));
        for i in 0..BATCH as u32 {
            let (_, b) = flow(i % WORLD_FLOWS_PER_CLIENT, TCP_ACK);
            batch.push(&b, &b.build());
        }
        pool.push(batch);
    }
    Scenario {
        name: "g_established_masquerade",
        pool,
        flows: Flows::Established,
    }
}

/// Removes the translated entries of frames that left masqueraded (source = the node), so a
/// new-flow scenario's next pass allocates again.
fn remove_translated(p: &mut Pipeline, frames: &[Frame<Vec<u8>>]) {
    for f in frames {
        let d = f.data();
        if d.len() < 38 || d[26..30] != UNDERLAY.octets() {
            continue;
        }
        let ip = |at: usize| IpAddr::V4(Ipv4Addr::new(d[at], d[at + 1], d[at + 2], d[at + 3]));
        let port = |at: usize| u16::from_be_bytes([d[at], d[at + 1]]);
        let key = FlowKey::new(ip(26), ip(30), port(34), port(36), d[23]);
        p.conntrack_mut().remove(&key);
    }
}

fn decap_scenario(p: &mut Pipeline, t: &Tables) -> Scenario {
    let flow = |x: u32, flags: u8| {
        let pod = RemotePod {
            node: x % REMOTE_NODES,
            pod: x / REMOTE_NODES,
        };
        let server = CLIENTS + (x * 7) % SERVERS;
        let (udp, dport) = l4_of(x);
        let b = packet(pod.ip(), 45_000, local_ip(server), dport, udp, flags);
        (pod, server, udp, b)
    };
    for x in 0..DECAP_FLOWS {
        let (pod, server, udp, syn) = flow(x, TCP_SYN);
        let ack = from_remote(pod, &flow(x, TCP_ACK).3);
        open_flow(
            p,
            t,
            (UPLINK, &from_remote(pod, &syn)),
            (UPLINK, &ack),
            |_| {
                let ans = packet(
                    local_ip(server),
                    l4_of(x).1,
                    pod.ip(),
                    45_000,
                    udp,
                    answer_flags(udp),
                )
                .macs(local_mac(server), ROUTER_MAC);
                (local_ifindex(server), ans.build())
            },
        );
    }
    let mut pool = Vec::new();
    for b in 0..(4 * DECAP_FLOWS as usize).div_ceil(BATCH) as u32 {
        let mut batch = Batch::new(UPLINK);
        for i in 0..BATCH as u32 {
            let (pod, _, _, pb) = flow((b * BATCH as u32 + i) % DECAP_FLOWS, TCP_ACK);
            batch.push(&pb, &from_remote(pod, &pb));
        }
        pool.push(batch);
    }
    Scenario {
        name: "e_established_vxlan_decap",
        pool,
        flows: Flows::Established,
    }
}

/// Fills conntrack up to [`CT_ENTRIES`] with established flows nobody sends on: passive local
/// endpoints talking to remote pods.
fn fill_conntrack(ct: &mut Conntrack) {
    let passive = LOCAL_ENDPOINTS - ACTIVE;
    let mut i = 0u32;
    while ct.len() < CT_ENTRIES {
        let src = local_ip(ACTIVE + i % passive);
        let pod = RemotePod {
            node: (i * 31) % REMOTE_NODES,
            pod: (i * 17) % PODS_PER_REMOTE_NODE,
        };
        let key = FlowKey::new(
            IpAddr::V4(src),
            IpAddr::V4(pod.ip()),
            10_000 + (i / passive) as u16,
            443,
            6,
        );
        let info = CtCreate {
            src_identity: identity(ACTIVE + i % passive),
            established: true,
            flags: CtFlags::EMPTY,
            rev_nat: None,
        };
        let h = ct.hash_key(&key);
        // Older than the scenarios' flows: when a bucket is full, eviction (the entry idle the
        // longest) takes filler, not a flow the scenarios send on.
        ct.create(&key, h, FlowDirection::Original, info, NOW - FILLER_AGE);
        i += 1;
    }
}

impl World {
    fn build() -> World {
        let started = Instant::now();
        let tables = build_tables();
        let tables_built = started.elapsed();
        let mut pipeline = Pipeline::new(PipelineConfig {
            conntrack: CtConfig {
                capacity: CT_CAPACITY,
                // Not the default seed: with it, the hash ignores the lower IPv4 endpoint of a
                // flow (see the README's benchmark notes). A daemon uses a random one.
                hash_seed: BENCH_CT_SEED,
                ..CtConfig::default()
            },
            masquerade: Some(MasqueradeConfig::single_worker(DEFAULT_PORTS)),
            ..PipelineConfig::default()
        })
        .unwrap();
        let p = &mut pipeline;
        let scenarios = vec![
            pod_to_pod_scenario(p, &tables),
            new_flow_scenario(),
            service_scenario(p, &tables),
            remote_scenario(p, &tables),
            decap_scenario(p, &tables),
            new_world_flow_scenario(),
            established_world_scenario(p, &tables),
        ];
        let through_pipeline = p.conntrack().len();
        fill_conntrack(p.conntrack_mut());
        let world = World {
            tables,
            pipeline,
            scenarios,
        };
        world.report_state(tables_built, started.elapsed(), through_pipeline);
        world
    }

    fn report_state(&self, tables_built: Duration, total: Duration, through_pipeline: usize) {
        let t = &self.tables;
        let ct = self.pipeline.conntrack();
        let ep = t.endpoints.get(EndpointId(1)).unwrap();
        let full = &ep.policy.ingress.map;
        println!("== pipeline bench: state ==");
        let passive = LOCAL_ENDPOINTS - ACTIVE;
        let small = &t.endpoints.get(EndpointId(ACTIVE + 1)).unwrap().policy;
        println!(
            "endpoints: {} local; {} with their own full maps, {} with {}-entry maps (the \
             traffic reads only the full ones; full maps for those {} too would take {:.1} GiB)",
            t.endpoints.len(),
            ACTIVE,
            passive,
            small.ingress.map.len(),
            passive,
            (2 * passive as usize * full.approx_bytes()) as f64 / (1u64 << 30) as f64,
        );
        println!(
            "identities: {IDENTITIES}; remote nodes: {REMOTE_NODES} (VXLAN), remote pods: {}",
            REMOTE_NODES * PODS_PER_REMOTE_NODE
        );
        println!(
            "policy: {} entries per full map (ingress and egress), {} full maps",
            full.len(),
            2 * ACTIVE
        );
        println!(
            "services: {} x {} backends, Maglev M = {}",
            t.services.len(),
            BACKENDS_PER_SERVICE,
            t.services.maglev_m()
        );
        println!(
            "conntrack: {} entries ({} opened through the pipeline, the rest created directly), \
             {} slots, {} evictions while filling",
            ct.len(),
            through_pipeline,
            ct.capacity(),
            ct.stats().evictions
        );
        println!("== memory ==");
        println!(
            "conntrack: {} bytes per entry (slot + tag), {:.1} MiB for {} slots",
            Conntrack::bytes_per_entry(),
            ct.memory_bytes() as f64 / (1 << 20) as f64,
            ct.capacity()
        );
        println!(
            "policy: {:.1} bytes per entry (approx. heap of a {}-entry map: {:.2} MiB)",
            full.approx_bytes() as f64 / full.len() as f64,
            full.len(),
            full.approx_bytes() as f64 / (1 << 20) as f64
        );
        println!(
            "endpoints table with all policies: {:.1} MiB; services: {:.1} MiB ({} bytes per service)",
            t.endpoints.approx_bytes() as f64 / (1 << 20) as f64,
            t.services.memory_bytes() as f64 / (1 << 20) as f64,
            t.services.bytes_per_service()
        );
        println!(
            "set-up: tables {:.1} s, total {:.1} s",
            tables_built.as_secs_f64(),
            total.as_secs_f64()
        );
    }

    /// Runs every batch of every scenario once and checks that the frames are forwarded and
    /// find (or miss) conntrack as the scenario says: a bench of dropped frames measures nothing.
    fn validate(&mut self) {
        for s in &self.scenarios {
            for batch in &s.pool {
                let mut frames = batch.frames.clone();
                let v = self
                    .pipeline
                    .process(&self.tables, batch.ifindex, &mut frames, NOW);
                assert!(
                    v.iter().all(|v| matches!(v, Verdict::Tx { .. })),
                    "{}: a frame was not forwarded: {v:?}",
                    s.name
                );
                let want = match s.flows {
                    Flows::Established => CtMark::Established,
                    Flows::New => CtMark::New,
                };
                assert!(
                    self.pipeline.last_meta().iter().all(|m| m.ct == want),
                    "{}: expected every frame {want:?}, got {:?}",
                    s.name,
                    self.pipeline
                        .last_meta()
                        .iter()
                        .map(|m| (m.ct, m.tuple))
                        .collect::<Vec<_>>()
                );
                if s.flows == Flows::New {
                    remove_flows(&mut self.pipeline, batch);
                    remove_translated(&mut self.pipeline, &frames);
                }
            }
        }
    }
}

fn remove_flows(p: &mut Pipeline, batch: &Batch) {
    for key in &batch.keys {
        p.conntrack_mut().remove(key);
    }
}

// ---- measurement -----------------------------------------------------------------------------

/// What the timed part of a run does.
#[derive(Clone, Copy)]
enum Work {
    /// `process_until(.., last)` on each copied batch.
    Process(Stage),
    /// Nothing: the floor of the timed loop.
    Empty,
    /// Times the copying of the batches instead (not part of any other figure).
    Copy,
    /// Only a conntrack GC step of `GC_SLOTS_PER_BATCH` slots (its cost per slot).
    Gc,
}

/// ns/packet of each timed chunk of [`CHUNK`] batches, per benchmark id.
static SAMPLES: Mutex<BTreeMap<String, Vec<f64>>> = Mutex::new(BTreeMap::new());

/// Where a benchmark is in its scenario's pool of batches, and its virtual clock.
struct Position {
    cursor: usize,
    clock: u64,
}

/// Runs `iters` batches from `scenario`'s pool, starting at `at.cursor`, and returns the time of
/// the timed part only. Pushes each chunk's ns/packet onto `chunks`.
fn run(
    p: &mut Pipeline,
    t: &Tables,
    scenario: &Scenario,
    at: &mut Position,
    iters: u64,
    work: Work,
    chunks: &mut Vec<f64>,
) -> Duration {
    let pool = &scenario.pool;
    let mut total = Duration::ZERO;
    let mut left = iters;
    let mut copies: Vec<(u32, Vec<Frame<Vec<u8>>>)> = Vec::with_capacity(CHUNK);
    while left > 0 {
        let n = left.min(CHUNK as u64) as usize;
        let first = at.cursor;
        copies.clear();
        let copy_start = Instant::now();
        for k in 0..n {
            let b = &pool[(first + k) % pool.len()];
            copies.push((b.ifindex, b.frames.clone()));
        }
        let copy_time = copy_start.elapsed();
        let start = Instant::now();
        match work {
            Work::Process(last) => {
                for (ifindex, frames) in copies.iter_mut() {
                    black_box(p.process_until(t, *ifindex, frames, at.clock, last));
                    at.clock += BATCH_INTERVAL_NS;
                }
            }
            Work::Empty => {
                for (ifindex, frames) in copies.iter_mut() {
                    black_box((ifindex, frames));
                }
            }
            Work::Gc => {
                for _ in 0..n {
                    black_box(p.conntrack_mut().gc(NOW, GC_SLOTS_PER_BATCH));
                }
            }
            Work::Copy => {}
        }
        let elapsed = match work {
            Work::Copy => copy_time,
            _ => start.elapsed(),
        };
        total += elapsed;
        chunks.push(elapsed.as_nanos() as f64 / (n * BATCH) as f64);
        if scenario.flows == Flows::New {
            for k in 0..n {
                remove_flows(p, &pool[(first + k) % pool.len()]);
            }
            for (_, frames) in &copies {
                remove_translated(p, frames);
            }
        }
        at.cursor = (first + n) % pool.len();
        left -= n as u64;
    }
    total
}

fn bench(c: &mut Criterion, world: &mut World, group: &str, id: &str, scenario: usize, work: Work) {
    let World {
        tables,
        pipeline,
        scenarios,
    } = world;
    let scenario = &scenarios[scenario];
    let full_id = format!("{group}/{id}");
    let mut g = c.benchmark_group(group);
    g.throughput(Throughput::Elements(BATCH as u64));
    let mut at = Position {
        cursor: 0,
        clock: NOW,
    };
    g.bench_function(id, |b| {
        b.iter_custom(|iters| {
            let mut samples = SAMPLES.lock().unwrap();
            let chunks = samples.entry(full_id.clone()).or_default();
            run(pipeline, tables, scenario, &mut at, iters, work, chunks)
        })
    });
    g.finish();
}

/// The `q` quantile (0..=1) of `v`.
fn quantile(v: &[f64], q: f64) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * q) as usize]
}

fn median(v: &[f64]) -> f64 {
    quantile(v, 0.5)
}

fn summary() {
    let samples = SAMPLES.lock().unwrap();
    let get = |id: &str| samples.get(id).map(|v| median(v));
    println!(
        "\n== summary: ns/packet (median of this run's timed chunks), batch {BATCH}, one core =="
    );
    println!(
        "{:<44} {:>10} {:>8} {:>8} {:>8}  target",
        "benchmark", "ns/packet", "Mpps", "p10", "p90"
    );
    for (id, v) in samples.iter().filter(|(id, _)| id.starts_with("pipeline/")) {
        let ns = median(v);
        let target = if id.contains("new_flow") {
            "< 250"
        } else if id.contains("established") {
            "< 100"
        } else {
            ""
        };
        let mpps = if ns >= 0.5 {
            format!("{:.2}", 1e3 / ns)
        } else {
            "-".to_string()
        };
        println!(
            "{id:<44} {ns:>10.1} {mpps:>8} {:>8.1} {:>8.1}  {target}",
            quantile(v, 0.1),
            quantile(v, 0.9)
        );
    }
    for scenario in ["a_established_pod_to_pod", "b_new_flow_pod_to_pod"] {
        let group = format!("stages_{scenario}");
        if !Stage::ALL
            .iter()
            .any(|s| samples.contains_key(&format!("{group}/{}", stage_id(*s))))
        {
            continue;
        }
        println!("\n{group}: cumulative cost after each stage, and the stage's own share");
        let mut previous = 0.0;
        for s in Stage::ALL {
            if let Some(ns) = get(&format!("{group}/{}", stage_id(s))) {
                println!(
                    "  after {:<10} {:>8.1} ns/packet   {:>+8.1}",
                    s.name(),
                    ns,
                    ns - previous
                );
                previous = ns;
            }
        }
    }
}

fn stage_id(s: Stage) -> String {
    format!("{}_{}", s as u8 + 1, s.name())
}

fn main() {
    let mut c = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args();
    let mut world = World::build();
    world.validate();
    let w = &mut world;
    bench(&mut c, w, "pipeline", "baseline_empty", 0, Work::Empty);
    bench(&mut c, w, "pipeline", "baseline_copy", 0, Work::Copy);
    bench(&mut c, w, "pipeline", "part_ct_gc", 0, Work::Gc);
    for (i, name) in w
        .scenarios
        .iter()
        .map(|s| s.name)
        .enumerate()
        .collect::<Vec<_>>()
    {
        bench(&mut c, w, "pipeline", name, i, Work::Process(Stage::Route));
    }
    for (i, name) in [
        (0, "a_established_pod_to_pod"),
        (1, "b_new_flow_pod_to_pod"),
    ] {
        let group = format!("stages_{name}");
        for s in Stage::ALL {
            bench(&mut c, w, &group, &stage_id(s), i, Work::Process(s));
        }
    }
    c.final_summary();
    summary();
}
