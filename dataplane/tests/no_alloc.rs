//! The fast path allocates nothing: a counting global allocator watches `Pipeline::process` on
//! batches of established flows, new flows (policy lookups and conntrack creates), service
//! traffic (DNAT and reverse NAT), VXLAN encapsulation and decapsulation, and frames too big
//! for the tunnel, answered with ICMP errors built in place, and pods' flows to the world,
//! masqueraded (port allocation, translated entries, the rewrite).
//!
//! The counter is per thread, so the test harness's own threads do not disturb it; frames are
//! copied before the counted region, and each kind of traffic is run once beforehand (warm-up),
//! as a worker would have done before the batches that matter.

#![allow(clippy::unwrap_used)] // Tests: a failed setup should stop the test loudly.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use dataplane::frame::Frame;
use dataplane::pipeline::{MasqueradeConfig, Pipeline, PipelineConfig, Verdict};
use dataplane::tables::endpoints::{EndpointId, EndpointSpec, Endpoints};
use dataplane::tables::ipcache::{IpCache, IpCacheEntry};
use dataplane::tables::maglev::DEFAULT_M;
use dataplane::tables::next_hops::NextHops;
use dataplane::tables::nodes::{Encap, Node, Nodes};
use dataplane::tables::policy::{EndpointPolicy, PolicyEntry, PolicyKey, PortRange};
use dataplane::tables::services::{Backend, Frontend, LbMode, ServiceSpec, Services};
use dataplane::tables::snat::DEFAULT_PORTS;
use dataplane::tables::{LocalNode, Tables, TunnelPorts};
use dataplane::testutil::{self, PacketBuilder, TunnelBuilder, TCP_ACK, TCP_SYN, TCP_SYN_ACK};
use dataplane::{Identity, MacAddr, Prefix};

// ---- the counting allocator ----------------------------------------------------------------

thread_local! {
    /// Allocations (alloc, alloc_zeroed, realloc) made by this thread.
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

struct CountingAllocator;

impl CountingAllocator {
    fn count() {
        // `try_with`: allocations during thread teardown, after the slot is gone, are not ours.
        let _ = ALLOCATIONS.try_with(|c| c.set(c.get() + 1));
    }
}

// SAFETY: every method forwards to `System` with the caller's arguments unchanged; counting
// touches only a const-initialised thread-local `Cell`, which never allocates.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        Self::count();
        // SAFETY: the caller's contract for `alloc` is passed on unchanged.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        Self::count();
        // SAFETY: as above.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        Self::count();
        // SAFETY: as above; `ptr` was allocated by `System` through this allocator.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: CountingAllocator = CountingAllocator;

fn allocations() -> u64 {
    ALLOCATIONS.with(Cell::get)
}

// ---- a small node --------------------------------------------------------------------------

const NOW: u64 = 1_000_000_000_000;
const UPLINK: u32 = 1;
const UNDERLAY: Ipv4Addr = Ipv4Addr::new(192, 168, 0, 1);
const REMOTE_NODE: Ipv4Addr = Ipv4Addr::new(192, 168, 0, 2);
const ROUTER_MAC: MacAddr = MacAddr([0x02, 0, 0, 0, 0xff, 0x01]);
const UPLINK_MAC: MacAddr = MacAddr([0x02, 0, 0, 0, 0xaa, 0x01]);
const REMOTE_MAC: MacAddr = MacAddr([0x02, 0, 0, 0, 0xbb, 0x01]);
const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const PODS: u32 = 8;

fn pod_ip(i: u32) -> Ipv4Addr {
    Ipv4Addr::new(10, 1, 0, 10 + i as u8)
}

fn pod_mac(i: u32) -> MacAddr {
    MacAddr([0x02, 0, 0, 0, 1, i as u8])
}

fn pod_ifindex(i: u32) -> u32 {
    10 + i
}

fn pod_identity(i: u32) -> Identity {
    Identity(1000 + i)
}

fn remote_pod(i: u32) -> Ipv4Addr {
    Ipv4Addr::new(10, 2, 0, 10 + i as u8)
}

/// Pods 0..8 with enforced policy maps (every pod identity and the remote identity allowed on
/// TCP 80 and UDP 53, one wildcard deny), one SNAT service (TCP 80, UDP 53), one VXLAN node.
fn tables() -> Tables {
    let mut policy = EndpointPolicy::default();
    for dir in [&mut policy.ingress, &mut policy.egress] {
        dir.enforced = true;
        for id in (0..PODS)
            .map(pod_identity)
            .chain([Identity(2000), Identity::WORLD])
        {
            for (proto, port) in [(6, 80), (17, 53)] {
                let key = PolicyKey::l4(id, proto, PortRange::single(port));
                dir.map.insert(key, PolicyEntry::allow(1)).unwrap();
            }
        }
        let telnet = PolicyKey::l4(Identity::ANY, 6, PortRange::single(23));
        dir.map.insert(telnet, PolicyEntry::deny(2)).unwrap();
    }
    let mut endpoints = Endpoints::new();
    let mut ipcache = IpCache::new();
    for i in 0..PODS {
        let id = EndpointId(i + 1);
        endpoints
            .upsert(EndpointSpec {
                id,
                ifindex: pod_ifindex(i),
                mac: pod_mac(i),
                ipv4: Some(pod_ip(i)),
                ipv6: None,
                identity: pod_identity(i),
            })
            .unwrap();
        *endpoints.policy_mut(id).unwrap() = policy.clone();
        let entry = IpCacheEntry::local(pod_identity(i));
        ipcache.upsert(Prefix::host(IpAddr::V4(pod_ip(i))), entry);
        let remote = IpCacheEntry::remote(Identity(2000), IpAddr::V4(REMOTE_NODE));
        ipcache.upsert(Prefix::host(IpAddr::V4(remote_pod(i))), remote);
    }
    let mut nodes = Nodes::new();
    nodes
        .upsert(Node {
            name: "remote".to_string(),
            underlay: IpAddr::V4(REMOTE_NODE),
            pod_cidrs: vec!["10.2.0.0/24".parse().unwrap()],
            encap: Encap::Vxlan,
        })
        .unwrap();
    let mut next_hops = NextHops::new();
    next_hops.set_peer(IpAddr::V4(REMOTE_NODE), Some(REMOTE_MAC));
    next_hops.set_default_v4(Some(REMOTE_MAC)); // the world's gateway
    let mut services = Services::new(DEFAULT_M, 42).unwrap();
    for (proto, port) in [(6, 80), (17, 53)] {
        services
            .upsert(ServiceSpec {
                frontend: Frontend {
                    addr: IpAddr::V4(VIP),
                    port,
                    proto,
                },
                backends: (4..PODS)
                    .map(|i| Backend {
                        addr: IpAddr::V4(pod_ip(i)),
                        port,
                        weight: 1,
                    })
                    .collect(),
                mode: LbMode::Snat,
                kind: Default::default(),
            })
            .unwrap();
    }
    Tables {
        node: Arc::new(LocalNode {
            name: "local".to_string(),
            underlay_ipv4: Some(UNDERLAY),
            router_mac: ROUTER_MAC,
            gateway_ipv4: Some(Ipv4Addr::new(10, 1, 0, 1)),
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

/// 64 frames from pod `c` to `dst`, over 16 flows, TCP with `flags` (3 of 4) and UDP.
fn batch_from_pod(c: u32, dst: impl Fn(u32) -> Ipv4Addr, sport_base: u16, flags: u8) -> Batch {
    sized_batch_from_pod(c, dst, sport_base, flags, 0)
}

/// [`batch_from_pod`] with `payload` bytes of payload in every frame.
fn sized_batch_from_pod(
    c: u32,
    dst: impl Fn(u32) -> Ipv4Addr,
    sport_base: u16,
    flags: u8,
    payload: usize,
) -> Batch {
    let payload = vec![0x5a; payload];
    let frames = (0..64u32)
        .map(|i| {
            let j = i % 16;
            let (s, d) = (IpAddr::V4(pod_ip(c)), IpAddr::V4(dst(j)));
            let sport = sport_base + j as u16;
            let b = if j % 4 == 3 {
                PacketBuilder::udp(s, sport, d, 53)
            } else {
                PacketBuilder::tcp(s, sport, d, 80, flags)
            };
            b.macs(pod_mac(c), ROUTER_MAC).payload(&payload).frame()
        })
        .collect();
    Batch {
        ifindex: pod_ifindex(c),
        frames,
    }
}

/// 64 VXLAN frames from remote pods to local pods 0..4 over 16 flows.
fn batch_from_tunnel(sport_base: u16, flags: u8) -> Batch {
    let frames = (0..64u32)
        .map(|i| {
            let j = i % 16;
            let (s, d) = (IpAddr::V4(remote_pod(j % PODS)), IpAddr::V4(pod_ip(j % 4)));
            let inner = PacketBuilder::tcp(s, sport_base + j as u16, d, 80, flags)
                .macs(MacAddr([0x02, 0, 0, 0, 2, 1]), ROUTER_MAC)
                .ttl(63);
            let outer = TunnelBuilder {
                src_mac: REMOTE_MAC,
                dst_mac: UPLINK_MAC,
                src: REMOTE_NODE,
                dst: UNDERLAY,
                sport: 50_000,
                vni: 2000,
                geneve_options: None,
            };
            testutil::frame(&outer.wrap(&inner.build()))
        })
        .collect();
    Batch {
        ifindex: UPLINK,
        frames,
    }
}

struct Batch {
    ifindex: u32,
    frames: Vec<Frame<Vec<u8>>>,
}

/// Processes a copy of `batch` and returns how many allocations `process` made.
fn allocations_during_process(p: &mut Pipeline, t: &Tables, batch: &Batch) -> u64 {
    let mut frames = batch.frames.clone();
    let before = allocations();
    let verdicts = p.process(t, batch.ifindex, &mut frames, NOW);
    let during = allocations() - before;
    assert!(
        verdicts.iter().all(|v| matches!(v, Verdict::Tx { .. })),
        "every frame should be forwarded: {verdicts:?}"
    );
    during
}

#[test]
fn counting_allocator_sees_allocations() {
    let before = allocations();
    let v = std::hint::black_box(vec![1u8; 100]);
    assert!(
        allocations() > before,
        "the counter must work for this test to mean anything"
    );
    drop(v);
}

#[test]
fn process_allocates_nothing_after_warm_up() {
    let t = tables();
    let mut p = Pipeline::new(PipelineConfig {
        masquerade: Some(MasqueradeConfig::single_worker(DEFAULT_PORTS)),
        ..PipelineConfig::default()
    })
    .unwrap();
    let to_world = |j: u32| Ipv4Addr::new(203, 0, 113, 1 + j as u8);
    let to_pods = |j: u32| pod_ip(4 + j % 4);
    let to_remote = |j: u32| remote_pod(j % PODS);
    // The first packets of each flow (new: policy lookups, conntrack creates), then the
    // established ones, for each kind of traffic; `base` shifts the source ports so that the
    // warm-up uses other flows than the counted run.
    let cases = |base: u16| {
        [
            ("new pod -> pod", batch_from_pod(0, to_pods, base, TCP_SYN)),
            (
                "established pod -> pod",
                batch_from_pod(0, to_pods, base, TCP_ACK),
            ),
            (
                "new pod -> service VIP",
                batch_from_pod(1, |_| VIP, base + 100, TCP_SYN),
            ),
            (
                "established pod -> VIP",
                batch_from_pod(1, |_| VIP, base + 100, TCP_ACK),
            ),
            (
                "new pod -> remote pod",
                batch_from_pod(2, to_remote, base + 200, TCP_SYN),
            ),
            (
                "established encap",
                batch_from_pod(2, to_remote, base + 200, TCP_ACK),
            ),
            (
                "too big for the tunnel: ICMP errors back",
                sized_batch_from_pod(3, to_remote, base + 400, TCP_ACK, 1460),
            ),
            (
                "new pod -> world, masqueraded",
                batch_from_pod(3, to_world, base + 500, TCP_SYN),
            ),
            (
                "established pod -> world, masqueraded",
                batch_from_pod(3, to_world, base + 500, TCP_ACK),
            ),
            ("new from tunnel", batch_from_tunnel(base + 300, TCP_SYN)),
            ("established decap", batch_from_tunnel(base + 300, TCP_ACK)),
        ]
    };
    for (_, batch) in &cases(30_000) {
        let mut frames = batch.frames.clone();
        p.process(&t, batch.ifindex, &mut frames, NOW);
    }
    for (name, batch) in &cases(40_000) {
        assert_eq!(allocations_during_process(&mut p, &t, batch), 0, "{name}");
    }
    // 16 flows per batch, warm-up and counted: one port each, every frame translated.
    assert_eq!(p.counters().masquerade_ports_allocated, 2 * 16);
    assert_eq!(p.counters().masquerade_translated, 2 * 2 * 64);
    assert_eq!(
        p.counters().icmp_too_big_sent,
        2 * 64,
        "the oversized frames were answered, not forwarded"
    );
    // Replies (pod 4 answers the flows pod 0 opened to it: j = 0, 4, 8, 12).
    let reply = Batch {
        ifindex: pod_ifindex(4),
        frames: (0..64u16)
            .map(|i| {
                let (s, d) = (IpAddr::V4(pod_ip(4)), IpAddr::V4(pod_ip(0)));
                PacketBuilder::tcp(s, 80, d, 40_000 + 4 * (i % 4), TCP_SYN_ACK)
                    .macs(pod_mac(4), ROUTER_MAC)
                    .frame()
            })
            .collect(),
    };
    assert_eq!(allocations_during_process(&mut p, &t, &reply), 0, "replies");
}
