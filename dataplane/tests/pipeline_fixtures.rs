//! Fixture-table tests of the whole pipeline: {description, tables, input frame, expected
//! verdict, expected output bytes}, in the manner of Cilium's PKTGEN/SETUP/CHECK and Katran's
//! test fixtures. Expected frames are built from scratch with full checksums, so every
//! incremental checksum update in the pipeline is checked too.

#![allow(clippy::unwrap_used)] // Tests: a failed setup should stop the test loudly.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use dataplane::frame::Frame;
use dataplane::pipeline::{DropReason, Pipeline, PipelineConfig, Verdict};
use dataplane::tables::conntrack::FlowKey;
use dataplane::tables::endpoints::{EndpointId, EndpointSpec, Endpoints};
use dataplane::tables::ipcache::{IpCache, IpCacheEntry};
use dataplane::tables::next_hops::NextHops;
use dataplane::tables::nodes::{Encap, Node, Nodes};
use dataplane::tables::policy::{PolicyEntry, PolicyKey, PortRange};
use dataplane::tables::services::{Backend, Frontend, LbMode, ServiceSpec, Services};
use dataplane::tables::{HostLink, LocalNode, Tables, TunnelPorts};
use dataplane::testutil::{
    self, PacketBuilder, TunnelBuilder, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN, TCP_SYN_ACK,
};
use dataplane::{Identity, MacAddr, Prefix};

// ---- the test cluster ----------------------------------------------------------------------
// Node A (192.168.0.1): pods 1..3 in 10.1.0.0/24. Node B (192.168.0.2, VXLAN): 10.2.0.0/24,
// pod 10.2.0.21. Node C (192.168.0.3, Geneve): 10.3.0.0/24, pod 10.3.0.31.
// Node D (192.168.0.4, native routing): 10.4.0.0/24, pod 10.4.0.41.

const UPLINK: u32 = 100;
const ROUTER_MAC: MacAddr = MacAddr([0x02, 0, 0, 0, 0xff, 0x01]);
const UPLINK_MAC_A: MacAddr = MacAddr([0x02, 0, 0, 0, 0xaa, 0x01]);
const UPLINK_MAC_B: MacAddr = MacAddr([0x02, 0, 0, 0, 0xbb, 0x01]);
const UPLINK_MAC_C: MacAddr = MacAddr([0x02, 0, 0, 0, 0xcc, 0x01]);
const UPLINK_MAC_D: MacAddr = MacAddr([0x02, 0, 0, 0, 0xdd, 0x01]);
const WORLD_GW_MAC: MacAddr = MacAddr([0x02, 0, 0, 0, 0xee, 0x01]);

const ID_CLIENT: Identity = Identity(1001);
const ID_SERVER: Identity = Identity(1002);
const ID_DB: Identity = Identity(1003);
const ID_REMOTE: Identity = Identity(2001);

struct Pod {
    id: u32,
    ifindex: u32,
    mac: MacAddr,
    v4: Ipv4Addr,
    v6: Ipv6Addr,
    identity: Identity,
}

const POD1: Pod = pod(1, 11, [10, 1, 0, 11], ID_CLIENT);
const POD2: Pod = pod(2, 12, [10, 1, 0, 12], ID_SERVER);
const POD3: Pod = pod(3, 13, [10, 1, 0, 13], ID_DB);
const POD_B: Pod = pod(21, 21, [10, 2, 0, 21], ID_REMOTE);
const POD_C: Pod = pod(31, 31, [10, 3, 0, 31], ID_REMOTE);
const POD_D: Pod = pod(41, 41, [10, 4, 0, 41], ID_REMOTE);

const fn pod(id: u32, ifindex: u32, v4: [u8; 4], identity: Identity) -> Pod {
    Pod {
        id,
        ifindex,
        mac: MacAddr([0x02, 0, 0, 0, 0, id as u8]),
        v4: Ipv4Addr::new(v4[0], v4[1], v4[2], v4[3]),
        v6: Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, v4[2] as u16, v4[3] as u16),
        identity,
    }
}

impl Pod {
    fn ip(&self) -> IpAddr {
        IpAddr::V4(self.v4)
    }
    fn ip6(&self) -> IpAddr {
        IpAddr::V6(self.v6)
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

fn underlay(node: u8) -> Ipv4Addr {
    Ipv4Addr::new(192, 168, 0, node)
}

const VIP_SNAT: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const VIP_DSR: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 20);
const VIP_DSR_GENEVE: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 30);
const VIP_DSR_NATIVE: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 40);
const VIP_EMPTY: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 99);
const CLIENT_WORLD: Ipv4Addr = Ipv4Addr::new(172, 16, 0, 5);

const REMOTE_NODES: [(&str, u8, &str, Encap, MacAddr); 4] = [
    ("node-a", 1, "10.1.0.0/24", Encap::Vxlan, UPLINK_MAC_A),
    ("node-b", 2, "10.2.0.0/24", Encap::Vxlan, UPLINK_MAC_B),
    ("node-c", 3, "10.3.0.0/24", Encap::Geneve, UPLINK_MAC_C),
    ("node-d", 4, "10.4.0.0/24", Encap::Native, UPLINK_MAC_D),
];

fn remote_nodes() -> Nodes {
    let mut nodes = Nodes::new();
    for (name, n, cidr, encap, _) in REMOTE_NODES {
        nodes
            .upsert(Node {
                name: name.to_string(),
                underlay: IpAddr::V4(underlay(n)),
                pod_cidrs: vec![cidr.parse().unwrap()],
                encap,
            })
            .unwrap();
    }
    nodes
}

/// What the next-hop resolver would find: every node on-link, the world behind a gateway.
fn next_hops() -> NextHops {
    let mut hops = NextHops::new();
    for (_, n, _, _, mac) in REMOTE_NODES {
        hops.set_peer(IpAddr::V4(underlay(n)), Some(mac));
    }
    hops.set_default_v4(Some(WORLD_GW_MAC));
    hops
}

fn services() -> Services {
    let mut s = Services::new(dataplane::tables::maglev::DEFAULT_M, 42).unwrap();
    let svc = |vip: Ipv4Addr, backends: Vec<(IpAddr, u16)>, mode| ServiceSpec {
        frontend: Frontend {
            addr: IpAddr::V4(vip),
            port: 80,
            proto: 6,
        },
        backends: backends
            .into_iter()
            .map(|(addr, port)| Backend {
                addr,
                port,
                weight: 1,
            })
            .collect(),
        mode,
        kind: Default::default(),
    };
    s.upsert(svc(VIP_SNAT, vec![(POD2.ip(), 8080)], LbMode::Snat))
        .unwrap();
    s.upsert(svc(VIP_DSR, vec![(POD_B.ip(), 8080)], LbMode::Dsr))
        .unwrap();
    s.upsert(svc(VIP_DSR_GENEVE, vec![(POD_C.ip(), 8080)], LbMode::Dsr))
        .unwrap();
    s.upsert(svc(VIP_DSR_NATIVE, vec![(POD_D.ip(), 8080)], LbMode::Dsr))
        .unwrap();
    let mut empty = svc(VIP_EMPTY, vec![(POD2.ip(), 8080)], LbMode::Snat);
    empty.backends[0].weight = 0;
    s.upsert(empty).unwrap();
    s
}

/// The tables of node `n` (1 = A, 2 = B, ...), holding `pods` as local endpoints.
fn node_tables(n: u8, uplink_mac: MacAddr, pods: &[&Pod]) -> Tables {
    let mut endpoints = Endpoints::new();
    let mut ipcache = IpCache::new();
    for p in pods {
        endpoints.upsert(p.spec()).unwrap();
    }
    let all = [&POD1, &POD2, &POD3, &POD_B, &POD_C, &POD_D];
    for p in all {
        let node = p.v4.octets()[1];
        let entry = if node == n {
            IpCacheEntry::local(p.identity)
        } else {
            IpCacheEntry::remote(p.identity, IpAddr::V4(underlay(node)))
        };
        ipcache.upsert(Prefix::host(p.ip()), entry);
        ipcache.upsert(Prefix::host(p.ip6()), entry);
    }
    Tables {
        node: Arc::new(LocalNode {
            name: format!("node-{n}"),
            underlay_ipv4: Some(underlay(n)),
            router_mac: ROUTER_MAC,
            gateway_ipv4: Some(Ipv4Addr::new(10, n, 0, 1)),
            gateway_ipv6: None,
            uplink_ifindex: Some(UPLINK),
            uplink_mac,
            uplink_mtu: 1500,
            default_encap: Encap::Vxlan,
            tunnel_ports: TunnelPorts::default(),
            host_link: None,
            host_addresses: Vec::new(),
        }),
        ipcache: Arc::new(ipcache),
        endpoints: Arc::new(endpoints),
        services: Arc::new(services()),
        nodes: Arc::new(remote_nodes()),
        next_hops: Arc::new(next_hops()),
    }
}

fn node_a() -> Tables {
    node_tables(1, UPLINK_MAC_A, &[&POD1, &POD2, &POD3])
}

fn pipeline() -> Pipeline {
    Pipeline::new(PipelineConfig::default()).unwrap()
}

// ---- fixtures -----------------------------------------------------------------------------

#[derive(Debug)]
enum Expect {
    /// Sent on this interface, exactly these bytes.
    Tx(u32, Vec<u8>),
    Pass,
    Drop(DropReason),
}

struct Fixture<'a> {
    description: &'a str,
    ingress: u32,
    input: Vec<u8>,
    expect: Expect,
}

/// Runs one fixture through `p` and returns the output bytes.
fn check(p: &mut Pipeline, t: &Tables, fx: Fixture<'_>) -> Vec<u8> {
    let mut frames = [testutil::frame(&fx.input)];
    let verdict = p.process(t, fx.ingress, &mut frames, 1_000_000_000)[0];
    let out = frames[0].data().to_vec();
    match fx.expect {
        Expect::Tx(ifindex, bytes) => {
            assert_eq!(verdict, Verdict::Tx { ifindex }, "{}", fx.description);
            assert_eq!(hex(&out), hex(&bytes), "{}: output bytes", fx.description);
        }
        Expect::Pass => assert_eq!(verdict, Verdict::Pass, "{}", fx.description),
        Expect::Drop(reason) => {
            assert_eq!(verdict, Verdict::Drop(reason), "{}", fx.description)
        }
    }
    out
}

fn hex(b: &[u8]) -> String {
    b.iter()
        .map(|x| format!("{x:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// A TCP packet from `src` pod to `dst` with the MACs a pod uses (its own -> router).
fn from_pod(src: &Pod, dst: IpAddr, sport: u16, dport: u16, flags: u8) -> PacketBuilder {
    let s = if dst.is_ipv4() { src.ip() } else { src.ip6() };
    PacketBuilder::tcp(s, sport, dst, dport, flags).macs(src.mac, ROUTER_MAC)
}

/// What a pod receives: router MAC -> pod MAC, TTL one lower.
fn delivered(b: &PacketBuilder, to: &Pod) -> PacketBuilder {
    b.clone().macs(ROUTER_MAC, to.mac).ttl(b.ttl - 1)
}

fn allow_ingress(t: &mut Tables, pod: &Pod, from: Identity, port: u16) {
    let pol = Arc::make_mut(&mut t.endpoints)
        .policy_mut(EndpointId(pod.id))
        .unwrap();
    pol.ingress.enforced = true;
    pol.ingress
        .map
        .insert(
            PolicyKey::l4(from, 6, PortRange::single(port)),
            PolicyEntry::allow(1),
        )
        .unwrap();
}

fn enforce_ingress(t: &mut Tables, pod: &Pod) {
    Arc::make_mut(&mut t.endpoints)
        .policy_mut(EndpointId(pod.id))
        .unwrap()
        .ingress
        .enforced = true;
}

#[test]
fn pod_to_pod_allowed_without_policy() {
    let t = node_a();
    let mut p = pipeline();
    let syn = from_pod(&POD1, POD2.ip(), 40000, 80, TCP_SYN);
    check(
        &mut p,
        &t,
        Fixture {
            description: "pod1 -> pod2 SYN, no policy",
            ingress: POD1.ifindex,
            input: syn.build(),
            expect: Expect::Tx(POD2.ifindex, delivered(&syn, &POD2).build()),
        },
    );
    assert_eq!(p.counters().ct_created, 1);
}

#[test]
fn denied_by_ingress_policy_and_allowed_by_identity() {
    let mut t = node_a();
    allow_ingress(&mut t, &POD2, ID_DB, 80);
    let mut p = pipeline();
    let from_client = from_pod(&POD1, POD2.ip(), 40000, 80, TCP_SYN);
    check(
        &mut p,
        &t,
        Fixture {
            description: "client -> server:80 denied: server admits only db",
            ingress: POD1.ifindex,
            input: from_client.build(),
            expect: Expect::Drop(DropReason::PolicyDeniedIngress),
        },
    );
    let from_db = from_pod(&POD3, POD2.ip(), 40000, 80, TCP_SYN);
    check(
        &mut p,
        &t,
        Fixture {
            description: "db -> server:80 allowed",
            ingress: POD3.ifindex,
            input: from_db.build(),
            expect: Expect::Tx(POD2.ifindex, delivered(&from_db, &POD2).build()),
        },
    );
    let wrong_port = from_pod(&POD3, POD2.ip(), 40000, 81, TCP_SYN);
    check(
        &mut p,
        &t,
        Fixture {
            description: "db -> server:81 denied",
            ingress: POD3.ifindex,
            input: wrong_port.build(),
            expect: Expect::Drop(DropReason::PolicyDeniedIngress),
        },
    );
    assert_eq!(p.counters().drops(DropReason::PolicyDeniedIngress), 2);
}

#[test]
fn denied_by_egress_policy() {
    let mut t = node_a();
    let pol = Arc::make_mut(&mut t.endpoints)
        .policy_mut(EndpointId(POD1.id))
        .unwrap();
    pol.egress.enforced = true;
    pol.egress
        .map
        .insert(PolicyKey::l3(ID_DB), PolicyEntry::allow(7))
        .unwrap();
    pol.egress
        .map
        .insert(
            PolicyKey::l4(ID_SERVER, 6, PortRange::single(22)),
            PolicyEntry::deny(8),
        )
        .unwrap();
    let mut p = pipeline();
    let to_server = from_pod(&POD1, POD2.ip(), 40000, 80, TCP_SYN);
    check(
        &mut p,
        &t,
        Fixture {
            description: "client may only talk to db",
            ingress: POD1.ifindex,
            input: to_server.build(),
            expect: Expect::Drop(DropReason::PolicyDeniedEgress),
        },
    );
    let ssh = from_pod(&POD1, POD2.ip(), 40001, 22, TCP_SYN);
    check(
        &mut p,
        &t,
        Fixture {
            description: "explicit deny rule",
            ingress: POD1.ifindex,
            input: ssh.build(),
            expect: Expect::Drop(DropReason::PolicyDenyRuleEgress),
        },
    );
    let to_db = from_pod(&POD1, POD3.ip(), 40000, 5432, TCP_SYN);
    check(
        &mut p,
        &t,
        Fixture {
            description: "client -> db allowed by L3 rule",
            ingress: POD1.ifindex,
            input: to_db.build(),
            expect: Expect::Tx(POD3.ifindex, delivered(&to_db, &POD3).build()),
        },
    );
}

#[test]
fn reply_of_allowed_flow_passes_reverse_policy() {
    let mut t = node_a();
    allow_ingress(&mut t, &POD2, ID_CLIENT, 80);
    enforce_ingress(&mut t, &POD1); // pod1 admits no new flow at all
    let mut p = pipeline();
    let syn = from_pod(&POD1, POD2.ip(), 40000, 80, TCP_SYN);
    check(
        &mut p,
        &t,
        Fixture {
            description: "client -> server SYN allowed",
            ingress: POD1.ifindex,
            input: syn.build(),
            expect: Expect::Tx(POD2.ifindex, delivered(&syn, &POD2).build()),
        },
    );
    let syn_ack = from_pod(&POD2, POD1.ip(), 80, 40000, TCP_SYN_ACK);
    check(
        &mut p,
        &t,
        Fixture {
            description: "server -> client SYN-ACK is a reply: passes",
            ingress: POD2.ifindex,
            input: syn_ack.build(),
            expect: Expect::Tx(POD1.ifindex, delivered(&syn_ack, &POD1).build()),
        },
    );
    let ack = from_pod(&POD1, POD2.ip(), 40000, 80, TCP_ACK);
    check(
        &mut p,
        &t,
        Fixture {
            description: "client ACK established",
            ingress: POD1.ifindex,
            input: ack.build(),
            expect: Expect::Tx(POD2.ifindex, delivered(&ack, &POD2).build()),
        },
    );
    let new_flow = from_pod(&POD2, POD1.ip(), 40001, 80, TCP_SYN);
    check(
        &mut p,
        &t,
        Fixture {
            description: "a new flow server -> client is denied",
            ingress: POD2.ifindex,
            input: new_flow.build(),
            expect: Expect::Drop(DropReason::PolicyDeniedIngress),
        },
    );
    assert_eq!(p.counters().ct_established, 2);
}

#[test]
fn spoofed_source_ip_and_mac_dropped() {
    let t = node_a();
    let mut p = pipeline();
    let spoof_ip =
        PacketBuilder::tcp(POD3.ip(), 1, POD2.ip(), 80, TCP_SYN).macs(POD1.mac, ROUTER_MAC);
    check(
        &mut p,
        &t,
        Fixture {
            description: "pod1 sends with pod3's IP",
            ingress: POD1.ifindex,
            input: spoof_ip.build(),
            expect: Expect::Drop(DropReason::InvalidSourceIp),
        },
    );
    let spoof_mac =
        PacketBuilder::tcp(POD1.ip(), 1, POD2.ip(), 80, TCP_SYN).macs(POD3.mac, ROUTER_MAC);
    check(
        &mut p,
        &t,
        Fixture {
            description: "pod1 sends with pod3's MAC",
            ingress: POD1.ifindex,
            input: spoof_mac.build(),
            expect: Expect::Drop(DropReason::InvalidSourceMac),
        },
    );
}

#[test]
fn ipv6_link_scoped_sources_are_not_counted_as_spoofing() {
    // Regression: a pod's own neighbor discovery and MLD (from fe80::/10 or ::) used to be
    // counted `invalid_source_ip`, burying real spoofing under the noise every IPv6 interface
    // makes when it comes up.
    let t = node_a();
    let mut p = pipeline();
    let link_local: IpAddr = "fe80::1".parse().unwrap();
    let unspecified = IpAddr::V6(Ipv6Addr::UNSPECIFIED);
    let all_routers: IpAddr = "ff02::2".parse().unwrap();
    for (description, src) in [
        ("pod1 sends from its link-local address", link_local),
        ("pod1 sends from the unspecified address", unspecified),
    ] {
        let frame = PacketBuilder::echo(src, all_routers, true, 1).macs(POD1.mac, ROUTER_MAC);
        check(
            &mut p,
            &t,
            Fixture {
                description,
                ingress: POD1.ifindex,
                input: frame.build(),
                expect: Expect::Drop(DropReason::Ipv6LinkScopedSource),
            },
        );
    }
    let spoof_v6 = PacketBuilder::udp(POD3.ip6(), 1, POD2.ip6(), 53).macs(POD1.mac, ROUTER_MAC);
    check(
        &mut p,
        &t,
        Fixture {
            description: "pod1 sends with pod3's IPv6",
            ingress: POD1.ifindex,
            input: spoof_v6.build(),
            expect: Expect::Drop(DropReason::InvalidSourceIp),
        },
    );
    assert_eq!(p.counters().drops(DropReason::Ipv6LinkScopedSource), 2);
    assert_eq!(p.counters().drops(DropReason::InvalidSourceIp), 1);
}

#[test]
fn service_vip_dnat_and_reverse_nat_of_reply() {
    let t = node_a();
    let mut p = pipeline();
    let to_vip = from_pod(&POD1, IpAddr::V4(VIP_SNAT), 40000, 80, TCP_SYN).payload(b"hello");
    let mut to_backend = delivered(&to_vip, &POD2);
    to_backend.dst = POD2.ip();
    to_backend.l4 = testutil::L4::Tcp {
        sport: 40000,
        dport: 8080,
        flags: TCP_SYN,
        seq: 1000,
        ack: 0,
    };
    check(
        &mut p,
        &t,
        Fixture {
            description: "client -> VIP:80 DNATed to server:8080",
            ingress: POD1.ifindex,
            input: to_vip.build(),
            expect: Expect::Tx(POD2.ifindex, to_backend.build()),
        },
    );
    let reply = from_pod(&POD2, POD1.ip(), 8080, 40000, TCP_SYN_ACK).payload(b"world");
    let mut from_vip = delivered(&reply, &POD1);
    from_vip.src = IpAddr::V4(VIP_SNAT);
    from_vip.l4 = testutil::L4::Tcp {
        sport: 80,
        dport: 40000,
        flags: TCP_SYN_ACK,
        seq: 1000,
        ack: 0,
    };
    check(
        &mut p,
        &t,
        Fixture {
            description: "server reply reverse-NATed to come from VIP:80",
            ingress: POD2.ifindex,
            input: reply.build(),
            expect: Expect::Tx(POD1.ifindex, from_vip.build()),
        },
    );
    assert_eq!((p.counters().dnat, p.counters().reverse_nat), (1, 1));
}

#[test]
fn service_without_backend_dropped() {
    let t = node_a();
    let mut p = pipeline();
    let to_vip = from_pod(&POD1, IpAddr::V4(VIP_EMPTY), 40000, 80, TCP_SYN);
    check(
        &mut p,
        &t,
        Fixture {
            description: "VIP whose only backend has weight 0",
            ingress: POD1.ifindex,
            input: to_vip.build(),
            expect: Expect::Drop(DropReason::NoServiceBackend),
        },
    );
}

/// The UDP source port a node picks for a tunnel packet of this flow.
fn tunnel_sport(p: &Pipeline, src: IpAddr, sport: u16, dst: IpAddr, dport: u16) -> u16 {
    let key = FlowKey::new(src, dst, sport, dport, 6);
    49152 + (p.conntrack().hash_key(&key) % 16384) as u16
}

#[test]
fn vxlan_encap_decap_round_trip_carries_identity() {
    let a = node_a();
    let mut b = node_tables(2, UPLINK_MAC_B, &[&POD_B]);
    allow_ingress(&mut b, &POD_B, ID_CLIENT, 80); // only the client's identity may enter
    let (mut pa, mut pb) = (pipeline(), pipeline());

    let syn = from_pod(&POD1, POD_B.ip(), 40000, 80, TCP_SYN);
    let inner = syn.clone().ttl(63);
    let outer = TunnelBuilder {
        src_mac: UPLINK_MAC_A,
        dst_mac: UPLINK_MAC_B,
        src: underlay(1),
        dst: underlay(2),
        sport: tunnel_sport(&pa, POD1.ip(), 40000, POD_B.ip(), 80),
        vni: ID_CLIENT.0,
        geneve_options: None,
    };
    let wire = check(
        &mut pa,
        &a,
        Fixture {
            description: "pod1 -> remote pod on node B: VXLAN, VNI = client identity",
            ingress: POD1.ifindex,
            input: syn.build(),
            expect: Expect::Tx(UPLINK, outer.wrap(&inner.build())),
        },
    );
    check(
        &mut pb,
        &b,
        Fixture {
            description: "node B decapsulates and admits the client identity",
            ingress: UPLINK,
            input: wire.clone(),
            expect: Expect::Tx(POD_B.ifindex, delivered(&inner, &POD_B).build()),
        },
    );
    assert_eq!(pb.counters().decapsulated, 1);

    // The same packet from another identity in the VNI is refused by B's ingress policy.
    let mut forged = outer.clone();
    forged.vni = ID_DB.0;
    check(
        &mut pipeline(),
        &b,
        Fixture {
            description: "VNI says db: denied",
            ingress: UPLINK,
            input: forged.wrap(&inner.build()),
            expect: Expect::Drop(DropReason::PolicyDeniedIngress),
        },
    );
}

#[test]
fn geneve_encap_decap_round_trip() {
    let a = node_a();
    let c = node_tables(3, UPLINK_MAC_C, &[&POD_C]);
    let (mut pa, mut pc) = (pipeline(), pipeline());
    let syn = from_pod(&POD1, POD_C.ip(), 40000, 80, TCP_SYN);
    let inner = syn.clone().ttl(63);
    let outer = TunnelBuilder {
        src_mac: UPLINK_MAC_A,
        dst_mac: UPLINK_MAC_C,
        src: underlay(1),
        dst: underlay(3),
        sport: tunnel_sport(&pa, POD1.ip(), 40000, POD_C.ip(), 80),
        vni: ID_CLIENT.0,
        geneve_options: Some(Vec::new()),
    };
    let wire = check(
        &mut pa,
        &a,
        Fixture {
            description: "pod1 -> node C pod: Geneve",
            ingress: POD1.ifindex,
            input: syn.build(),
            expect: Expect::Tx(UPLINK, outer.wrap(&inner.build())),
        },
    );
    check(
        &mut pc,
        &c,
        Fixture {
            description: "node C decapsulates",
            ingress: UPLINK,
            input: wire,
            expect: Expect::Tx(POD_C.ifindex, delivered(&inner, &POD_C).build()),
        },
    );
    assert_eq!(pc.last_meta()[0].src_identity, ID_CLIENT);
}

#[test]
fn tunnel_from_unknown_node_dropped() {
    let b = node_tables(2, UPLINK_MAC_B, &[&POD_B]);
    let inner = from_pod(&POD1, POD_B.ip(), 40000, 80, TCP_SYN).build();
    let outer = TunnelBuilder {
        src_mac: UPLINK_MAC_A,
        dst_mac: UPLINK_MAC_B,
        src: Ipv4Addr::new(192, 168, 0, 99),
        dst: underlay(2),
        sport: 50000,
        vni: ID_CLIENT.0,
        geneve_options: None,
    };
    check(
        &mut pipeline(),
        &b,
        Fixture {
            description: "VXLAN from an address that is no node",
            ingress: UPLINK,
            input: outer.wrap(&inner),
            expect: Expect::Drop(DropReason::TunnelUnknownNode),
        },
    );
}

/// The DSR IPv4 option bytes: type 0x9a, length 8, port, address.
fn dsr_ipv4_option(vip: Ipv4Addr, port: u16) -> Vec<u8> {
    let mut o = vec![0x9a, 8];
    o.extend_from_slice(&port.to_be_bytes());
    o.extend_from_slice(&vip.octets());
    o
}

#[test]
fn dsr_native_option_written_on_lb_node_and_consumed_on_backend_node() {
    let a = node_a();
    let d = node_tables(4, UPLINK_MAC_D, &[&POD_D]);
    let (mut pa, mut pd) = (pipeline(), pipeline());

    // A client outside the cluster reaches the VIP through node A's uplink.
    let from_world = PacketBuilder::tcp(
        IpAddr::V4(CLIENT_WORLD),
        40000,
        IpAddr::V4(VIP_DSR_NATIVE),
        80,
        TCP_SYN,
    )
    .macs(WORLD_GW_MAC, UPLINK_MAC_A)
    .payload(b"GET /");
    let mut to_d = from_world.clone().macs(UPLINK_MAC_A, UPLINK_MAC_D).ttl(63);
    to_d.dst = POD_D.ip();
    to_d.l4 = testutil::L4::Tcp {
        sport: 40000,
        dport: 8080,
        flags: TCP_SYN,
        seq: 1000,
        ack: 0,
    };
    let with_option = to_d
        .clone()
        .ipv4_options(&dsr_ipv4_option(VIP_DSR_NATIVE, 80));
    let wire = check(
        &mut pa,
        &a,
        Fixture {
            description: "LB node: DNAT to the backend on node D, DSR option added, native route",
            ingress: UPLINK,
            input: from_world.build(),
            expect: Expect::Tx(UPLINK, with_option.build()),
        },
    );
    assert_eq!(pa.counters().dsr_option_written, 1);

    let at_pod = delivered(&to_d, &POD_D);
    check(
        &mut pd,
        &d,
        Fixture {
            description: "backend node: option consumed, plain packet to the pod",
            ingress: UPLINK,
            input: wire,
            expect: Expect::Tx(POD_D.ifindex, at_pod.build()),
        },
    );
    assert_eq!(pd.counters().dsr_option_consumed, 1);

    let reply = from_pod(&POD_D, IpAddr::V4(CLIENT_WORLD), 8080, 40000, TCP_SYN_ACK);
    let mut direct = reply.clone().macs(UPLINK_MAC_D, WORLD_GW_MAC).ttl(63);
    direct.src = IpAddr::V4(VIP_DSR_NATIVE);
    direct.l4 = testutil::L4::Tcp {
        sport: 80,
        dport: 40000,
        flags: TCP_SYN_ACK,
        seq: 1000,
        ack: 0,
    };
    check(
        &mut pd,
        &d,
        Fixture {
            description: "backend's reply leaves node D directly, from VIP:80",
            ingress: POD_D.ifindex,
            input: reply.build(),
            expect: Expect::Tx(UPLINK, direct.build()),
        },
    );
}

/// A DSR option is a node's word: a pod's, or one on the uplink from a MAC that is no node's,
/// would let its sender choose the source of another pod's replies. Dropped and counted.
#[test]
fn dsr_option_from_a_pod_or_a_stranger_is_not_trusted() {
    let a = node_a();
    let mut p = pipeline();
    let spoof = dsr_ipv4_option(Ipv4Addr::new(10, 1, 0, 99), 443);
    let from_pod1 = from_pod(&POD1, POD2.ip(), 40000, 8080, TCP_SYN).ipv4_options(&spoof);
    check(
        &mut p,
        &a,
        Fixture {
            description: "pod 1 -> pod 2 with a DSR option naming another frontend",
            ingress: POD1.ifindex,
            input: from_pod1.build(),
            expect: Expect::Drop(DropReason::DsrOptionUntrusted),
        },
    );
    let d = node_tables(4, UPLINK_MAC_D, &[&POD_D]);
    let mut pd = pipeline();
    let stranger = PacketBuilder::tcp(IpAddr::V4(CLIENT_WORLD), 40000, POD_D.ip(), 8080, TCP_SYN)
        .macs(MacAddr([0x02, 0, 0, 0, 0x77, 0x77]), UPLINK_MAC_D)
        .ipv4_options(&dsr_ipv4_option(VIP_DSR_NATIVE, 80));
    check(
        &mut pd,
        &d,
        Fixture {
            description: "the option on the uplink, from a MAC that is no node's next hop",
            ingress: UPLINK,
            input: stranger.build(),
            expect: Expect::Drop(DropReason::DsrOptionUntrusted),
        },
    );
    assert_eq!(
        p.counters().dsr_option_consumed + pd.counters().dsr_option_consumed,
        0
    );
}

#[test]
fn dsr_geneve_option_round_trip() {
    let a = node_a();
    let c = node_tables(3, UPLINK_MAC_C, &[&POD_C]);
    let (mut pa, mut pc) = (pipeline(), pipeline());
    let from_world = PacketBuilder::tcp(
        IpAddr::V4(CLIENT_WORLD),
        40000,
        IpAddr::V4(VIP_DSR_GENEVE),
        80,
        TCP_SYN,
    )
    .macs(WORLD_GW_MAC, UPLINK_MAC_A);
    let mut inner = from_world.clone().ttl(63);
    inner.dst = POD_C.ip();
    inner.l4 = testutil::L4::Tcp {
        sport: 40000,
        dport: 8080,
        flags: TCP_SYN,
        seq: 1000,
        ack: 0,
    };
    // Geneve option: class 0x014b, type 0x01, length 2 (8 bytes): VIP, port, padding.
    let mut opt = vec![0x01, 0x4b, 0x01, 0x02];
    opt.extend_from_slice(&VIP_DSR_GENEVE.octets());
    opt.extend_from_slice(&80u16.to_be_bytes());
    opt.extend_from_slice(&[0, 0]);
    let outer = TunnelBuilder {
        src_mac: UPLINK_MAC_A,
        dst_mac: UPLINK_MAC_C,
        src: underlay(1),
        dst: underlay(3),
        sport: tunnel_sport(&pa, IpAddr::V4(CLIENT_WORLD), 40000, POD_C.ip(), 8080),
        vni: Identity::WORLD.0,
        geneve_options: Some(opt),
    };
    let wire = check(
        &mut pa,
        &a,
        Fixture {
            description: "LB node: Geneve with the DSR option, VNI = world",
            ingress: UPLINK,
            input: from_world.build(),
            expect: Expect::Tx(UPLINK, outer.wrap(&inner.build())),
        },
    );
    check(
        &mut pc,
        &c,
        Fixture {
            description: "backend node: decap, frontend remembered",
            ingress: UPLINK,
            input: wire,
            expect: Expect::Tx(POD_C.ifindex, delivered(&inner, &POD_C).build()),
        },
    );
    assert_eq!(pc.counters().dsr_option_consumed, 1);
    let reply = from_pod(&POD_C, IpAddr::V4(CLIENT_WORLD), 8080, 40000, TCP_SYN_ACK);
    let mut direct = reply.clone().macs(UPLINK_MAC_C, WORLD_GW_MAC).ttl(63);
    direct.src = IpAddr::V4(VIP_DSR_GENEVE);
    direct.l4 = testutil::L4::Tcp {
        sport: 80,
        dport: 40000,
        flags: TCP_SYN_ACK,
        seq: 1000,
        ack: 0,
    };
    check(
        &mut pc,
        &c,
        Fixture {
            description: "reply from the VIP, straight to the client",
            ingress: POD_C.ifindex,
            input: reply.build(),
            expect: Expect::Tx(UPLINK, direct.build()),
        },
    );
}

#[test]
fn ipv6_pod_to_pod() {
    let mut t = node_a();
    allow_ingress(&mut t, &POD2, ID_CLIENT, 443);
    let mut p = pipeline();
    let syn = from_pod(&POD1, POD2.ip6(), 40000, 443, TCP_SYN);
    check(
        &mut p,
        &t,
        Fixture {
            description: "IPv6 pod1 -> pod2:443 allowed, hop limit decremented",
            ingress: POD1.ifindex,
            input: syn.build(),
            expect: Expect::Tx(POD2.ifindex, delivered(&syn, &POD2).build()),
        },
    );
    let denied = from_pod(&POD3, POD2.ip6(), 40000, 443, TCP_SYN);
    check(
        &mut p,
        &t,
        Fixture {
            description: "IPv6 db -> server denied",
            ingress: POD3.ifindex,
            input: denied.build(),
            expect: Expect::Drop(DropReason::PolicyDeniedIngress),
        },
    );
    let reply = from_pod(&POD2, POD1.ip6(), 443, 40000, TCP_SYN_ACK);
    check(
        &mut p,
        &t,
        Fixture {
            description: "IPv6 reply",
            ingress: POD2.ifindex,
            input: reply.build(),
            expect: Expect::Tx(POD1.ifindex, delivered(&reply, &POD1).build()),
        },
    );
}

#[test]
fn icmp_echo_and_reply() {
    let t = node_a();
    let mut p = pipeline();
    let req = PacketBuilder::echo(POD1.ip(), POD2.ip(), true, 77).macs(POD1.mac, ROUTER_MAC);
    check(
        &mut p,
        &t,
        Fixture {
            description: "ping pod2",
            ingress: POD1.ifindex,
            input: req.build(),
            expect: Expect::Tx(POD2.ifindex, delivered(&req, &POD2).build()),
        },
    );
    let rep = PacketBuilder::echo(POD2.ip(), POD1.ip(), false, 77).macs(POD2.mac, ROUTER_MAC);
    check(
        &mut p,
        &t,
        Fixture {
            description: "pong",
            ingress: POD2.ifindex,
            input: rep.build(),
            expect: Expect::Tx(POD1.ifindex, delivered(&rep, &POD1).build()),
        },
    );
    assert_eq!(p.counters().ct_established, 1);
}

/// An ICMP message other than echo (`ty`: e.g. 13, timestamp request; ICMPv6 139, node
/// information query) with an 8-byte body and a full checksum.
fn icmp_query(from: &Pod, to: IpAddr, ty: u8) -> PacketBuilder {
    use dataplane::wire::checksum;
    let (src, proto) = match to {
        IpAddr::V4(_) => (from.ip(), 1),
        IpAddr::V6(_) => (from.ip6(), 58),
    };
    let mut msg = vec![ty, 0, 0, 0, 0x12, 0x34, 0, 1, 0, 0, 0, 0];
    let pseudo = match (src, to) {
        (IpAddr::V6(s), IpAddr::V6(d)) => checksum::pseudo_header_v6(s, d, 58, msg.len() as u32),
        _ => 0,
    };
    let c = checksum::finish(checksum::sum(&msg, pseudo));
    msg[2..4].copy_from_slice(&c.to_be_bytes());
    PacketBuilder::new(from.mac, ROUTER_MAC, src, to, testutil::L4::Raw { proto }).payload(&msg)
}

/// Cilium's `icmps` rules: the policy key's port is the ICMP type (8 / 128 for echo requests),
/// whatever the echo's identifier; other types find no entry and are refused; the reply follows
/// conntrack although the map has no entry for type 0 / 129.
#[test]
fn icmp_type_rules_admit_echo_and_refuse_other_types() {
    let mut t = node_a();
    let pol = Arc::make_mut(&mut t.endpoints)
        .policy_mut(EndpointId(POD2.id))
        .unwrap();
    pol.ingress.enforced = true;
    for (proto, ty) in [(1, 8), (58, 128)] {
        pol.ingress
            .map
            .insert(
                PolicyKey::l4(ID_CLIENT, proto, PortRange::single(ty)),
                PolicyEntry::allow(1),
            )
            .unwrap();
    }
    let mut p = pipeline();
    for (family, to_server, to_client) in [
        ("IPv4", POD2.ip(), POD1.ip()),
        ("IPv6", POD2.ip6(), POD1.ip6()),
    ] {
        let src = |pod: &Pod| {
            if to_server.is_ipv4() {
                pod.ip()
            } else {
                pod.ip6()
            }
        };
        let req = PacketBuilder::echo(src(&POD1), to_server, true, 4242).macs(POD1.mac, ROUTER_MAC);
        check(
            &mut p,
            &t,
            Fixture {
                description: &format!("{family} echo request (type allowed) passes"),
                ingress: POD1.ifindex,
                input: req.build(),
                expect: Expect::Tx(POD2.ifindex, delivered(&req, &POD2).build()),
            },
        );
        let rep =
            PacketBuilder::echo(src(&POD2), to_client, false, 4242).macs(POD2.mac, ROUTER_MAC);
        check(
            &mut p,
            &t,
            Fixture {
                description: &format!("{family} echo reply follows conntrack"),
                ingress: POD2.ifindex,
                input: rep.build(),
                expect: Expect::Tx(POD1.ifindex, delivered(&rep, &POD1).build()),
            },
        );
        let other_type = if to_server.is_ipv4() { 13 } else { 139 };
        check(
            &mut p,
            &t,
            Fixture {
                description: &format!("{family} ICMP type {other_type} refused"),
                ingress: POD1.ifindex,
                input: icmp_query(&POD1, to_server, other_type).build(),
                expect: Expect::Drop(DropReason::PolicyDeniedIngress),
            },
        );
        let from_db =
            PacketBuilder::echo(src(&POD3), to_server, true, 8).macs(POD3.mac, ROUTER_MAC);
        check(
            &mut p,
            &t,
            Fixture {
                description: &format!("{family} echo request from an identity not allowed refused"),
                ingress: POD3.ifindex,
                input: from_db.build(),
                expect: Expect::Drop(DropReason::PolicyDeniedIngress),
            },
        );
    }
    assert_eq!(p.counters().drops(DropReason::PolicyDeniedIngress), 4);
}

#[test]
fn arp_for_gateway_answered_with_router_mac() {
    let t = node_a();
    let gw = Ipv4Addr::new(10, 1, 0, 1);
    check(
        &mut pipeline(),
        &t,
        Fixture {
            description: "who-has 10.1.0.1",
            ingress: POD1.ifindex,
            input: testutil::arp_request(POD1.mac, POD1.v4, gw),
            expect: Expect::Tx(
                POD1.ifindex,
                testutil::arp_reply(ROUTER_MAC, gw, POD1.mac, POD1.v4),
            ),
        },
    );
}

#[test]
fn ttl_expiring_dropped() {
    let t = node_a();
    let syn = from_pod(&POD1, POD2.ip(), 40000, 80, TCP_SYN).ttl(1);
    check(
        &mut pipeline(),
        &t,
        Fixture {
            description: "TTL 1 cannot be routed",
            ingress: POD1.ifindex,
            input: syn.build(),
            expect: Expect::Drop(DropReason::TtlExceeded),
        },
    );
}

#[test]
fn traffic_from_uplink_not_for_us_goes_to_kernel() {
    let t = node_a();
    let ssh = PacketBuilder::tcp(
        IpAddr::V4(CLIENT_WORLD),
        5000,
        IpAddr::V4(underlay(1)),
        22,
        TCP_SYN,
    )
    .macs(WORLD_GW_MAC, UPLINK_MAC_A);
    check(
        &mut pipeline(),
        &t,
        Fixture {
            description: "ssh to the node itself",
            ingress: UPLINK,
            input: ssh.build(),
            expect: Expect::Pass,
        },
    );
    check(
        &mut pipeline(),
        &t,
        Fixture {
            description: "frame on an interface nobody configured",
            ingress: 999,
            input: ssh.build(),
            expect: Expect::Drop(DropReason::UnknownInterface),
        },
    );
}

// ---- the host interface (Cilium's cilium_host): pods <-> their node --------------------------

/// The dataplane's side of the host veth, and the kernel side's MAC.
const HOST_NET: u32 = 90;
const HOST_KERNEL_MAC: MacAddr = MacAddr([0x02, 0, 0, 0, 0x90, 0x01]);

fn with_host_link(mut t: Tables) -> Tables {
    Arc::make_mut(&mut t.node).host_link = Some(HostLink {
        ifindex: HOST_NET,
        kernel_mac: HOST_KERNEL_MAC,
    });
    t
}

/// A TCP packet the node's own stack sends out of the host interface.
fn from_host(src: Ipv4Addr, dst: IpAddr, sport: u16, dport: u16, flags: u8) -> PacketBuilder {
    PacketBuilder::tcp(IpAddr::V4(src), sport, dst, dport, flags).macs(HOST_KERNEL_MAC, ROUTER_MAC)
}

/// What the host's side receives: router MAC -> its MAC, TTL one lower.
fn to_kernel(b: &PacketBuilder) -> PacketBuilder {
    b.clone().macs(ROUTER_MAC, HOST_KERNEL_MAC).ttl(b.ttl - 1)
}

#[test]
fn a_pod_reaches_its_node_through_the_host_interface_and_back() {
    let t = with_host_link(node_a());
    let mut p = pipeline();
    for (description, node_addr) in [
        ("pod1 -> the node's underlay address", underlay(1)),
        ("pod1 -> its gateway address", Ipv4Addr::new(10, 1, 0, 1)),
    ] {
        let syn = from_pod(&POD1, IpAddr::V4(node_addr), 40000, 22, TCP_SYN);
        check(
            &mut p,
            &t,
            Fixture {
                description,
                ingress: POD1.ifindex,
                input: syn.build(),
                expect: Expect::Tx(HOST_NET, to_kernel(&syn).build()),
            },
        );
        assert_eq!(
            p.last_meta()[0].dst_identity,
            Identity::HOST,
            "{description}"
        );
    }
    let reply = from_host(underlay(1), POD1.ip(), 22, 40000, TCP_SYN_ACK);
    check(
        &mut p,
        &t,
        Fixture {
            description: "the node's SYN-ACK comes back from the host interface to the pod",
            ingress: HOST_NET,
            input: reply.build(),
            expect: Expect::Tx(POD1.ifindex, delivered(&reply, &POD1).build()),
        },
    );
    assert_eq!(p.last_meta()[0].src_identity, Identity::HOST);
    assert_eq!(
        p.counters().ct_established,
        1,
        "the reply hit the pod's flow"
    );

    let syn = from_pod(&POD1, IpAddr::V4(underlay(1)), 40001, 22, TCP_SYN);
    check(
        &mut pipeline(),
        &node_a(),
        Fixture {
            description: "without a host interface the frame can only go to the kernel",
            ingress: POD1.ifindex,
            input: syn.build(),
            expect: Expect::Pass,
        },
    );
}

#[test]
fn the_node_reaches_its_pods_as_host_and_policy_sees_it() {
    let mut t = with_host_link(node_a());
    allow_ingress(&mut t, &POD2, Identity::HOST, 80);
    let mut p = pipeline();
    let gateway = Ipv4Addr::new(10, 1, 0, 1);
    let syn = from_host(gateway, POD2.ip(), 50000, 80, TCP_SYN);
    check(
        &mut p,
        &t,
        Fixture {
            description: "host -> pod2:80, admitted for `host`",
            ingress: HOST_NET,
            input: syn.build(),
            expect: Expect::Tx(POD2.ifindex, delivered(&syn, &POD2).build()),
        },
    );
    assert_eq!(p.last_meta()[0].src_identity, Identity::HOST);
    let reply = from_pod(&POD2, IpAddr::V4(gateway), 80, 50000, TCP_SYN_ACK);
    check(
        &mut p,
        &t,
        Fixture {
            description: "pod2's reply goes back out of the host interface",
            ingress: POD2.ifindex,
            input: reply.build(),
            expect: Expect::Tx(HOST_NET, to_kernel(&reply).build()),
        },
    );
    let other_port = from_host(gateway, POD2.ip(), 50001, 81, TCP_SYN);
    check(
        &mut p,
        &t,
        Fixture {
            description: "host -> pod2:81 is not admitted",
            ingress: HOST_NET,
            input: other_port.build(),
            expect: Expect::Drop(DropReason::PolicyDeniedIngress),
        },
    );
    let forwarded = from_host(CLIENT_WORLD, POD2.ip(), 50002, 80, TCP_SYN);
    check(
        &mut p,
        &t,
        Fixture {
            description: "a source that is not the node's is world, not host",
            ingress: HOST_NET,
            input: forwarded.build(),
            expect: Expect::Drop(DropReason::PolicyDeniedIngress),
        },
    );
    assert_eq!(p.last_meta()[0].src_identity, Identity::WORLD);
}

/// Host policies (Cilium's host firewall): once the host's ingress is enforced, a pod reaches
/// the node's addresses only on the ports its map allows; the node's replies follow
/// conntrack; without enforcement everything passes (the default); the host's egress map
/// decides what the node itself starts towards pods.
#[test]
fn host_policy_admits_pods_to_the_node_only_on_allowed_ports() {
    let mut t = with_host_link(node_a());
    let host = Arc::make_mut(&mut t.endpoints).host_policy_mut();
    host.ingress.enforced = true;
    for port in [22, 8080] {
        host.ingress
            .map
            .insert(
                PolicyKey::l4(Identity::ANY, 6, PortRange::single(port)),
                PolicyEntry::allow(1),
            )
            .unwrap();
    }
    let mut p = pipeline();
    let allowed = from_pod(&POD1, IpAddr::V4(underlay(1)), 40000, 8080, TCP_SYN);
    check(
        &mut p,
        &t,
        Fixture {
            description: "pod1 -> node:8080, allowed by the host policy",
            ingress: POD1.ifindex,
            input: allowed.build(),
            expect: Expect::Tx(HOST_NET, to_kernel(&allowed).build()),
        },
    );
    let reply = from_host(underlay(1), POD1.ip(), 8080, 40000, TCP_SYN_ACK);
    check(
        &mut p,
        &t,
        Fixture {
            description: "the node's reply follows conntrack",
            ingress: HOST_NET,
            input: reply.build(),
            expect: Expect::Tx(POD1.ifindex, delivered(&reply, &POD1).build()),
        },
    );
    let gateway = IpAddr::V4(Ipv4Addr::new(10, 1, 0, 1));
    for (description, dst, port) in [
        ("pod1 -> node:9090 refused", IpAddr::V4(underlay(1)), 9090),
        (
            "pod1 -> gateway:9090 refused (every own address is the host)",
            gateway,
            9090,
        ),
    ] {
        let syn = from_pod(&POD1, dst, 40001, port, TCP_SYN);
        check(
            &mut p,
            &t,
            Fixture {
                description,
                ingress: POD1.ifindex,
                input: syn.build(),
                expect: Expect::Drop(DropReason::PolicyDeniedIngress),
            },
        );
    }
    let ping =
        PacketBuilder::echo(POD1.ip(), IpAddr::V4(underlay(1)), true, 9).macs(POD1.mac, ROUTER_MAC);
    check(
        &mut p,
        &t,
        Fixture {
            description: "ICMP to the node is refused too: it is not in the map",
            ingress: POD1.ifindex,
            input: ping.build(),
            expect: Expect::Drop(DropReason::PolicyDeniedIngress),
        },
    );
    let to_pod = from_host(underlay(1), POD2.ip(), 50000, 80, TCP_SYN);
    check(
        &mut p,
        &t,
        Fixture {
            description: "the host's egress is not enforced: host -> pod2 passes",
            ingress: HOST_NET,
            input: to_pod.build(),
            expect: Expect::Tx(POD2.ifindex, delivered(&to_pod, &POD2).build()),
        },
    );
    Arc::make_mut(&mut t.endpoints)
        .host_policy_mut()
        .egress
        .enforced = true;
    let to_pod = from_host(underlay(1), POD2.ip(), 50001, 80, TCP_SYN);
    check(
        &mut p,
        &t,
        Fixture {
            description: "an enforced host egress with nothing allowed refuses host -> pod2",
            ingress: HOST_NET,
            input: to_pod.build(),
            expect: Expect::Drop(DropReason::PolicyDeniedEgress),
        },
    );
    let t = with_host_link(node_a());
    let syn = from_pod(&POD1, IpAddr::V4(underlay(1)), 40002, 9090, TCP_SYN);
    check(
        &mut pipeline(),
        &t,
        Fixture {
            description: "no host policy: pod1 -> node:9090 passes",
            ingress: POD1.ifindex,
            input: syn.build(),
            expect: Expect::Tx(HOST_NET, to_kernel(&syn).build()),
        },
    );
}

#[test]
fn the_host_resolves_every_pod_to_the_router_mac() {
    let t = with_host_link(node_a());
    let gw = Ipv4Addr::new(10, 1, 0, 1);
    check(
        &mut pipeline(),
        &t,
        Fixture {
            description: "the host's who-has 10.1.0.11 on the host interface",
            ingress: HOST_NET,
            input: testutil::arp_request(HOST_KERNEL_MAC, gw, POD1.v4),
            expect: Expect::Tx(
                HOST_NET,
                testutil::arp_reply(ROUTER_MAC, POD1.v4, HOST_KERNEL_MAC, gw),
            ),
        },
    );
}

#[test]
fn the_host_interface_carries_only_pod_traffic() {
    let t = with_host_link(node_a());
    for (description, dst) in [
        ("host -> the world through the dataplane", CLIENT_WORLD),
        ("host -> itself, back into the host interface", underlay(1)),
    ] {
        let syn = from_host(underlay(1), IpAddr::V4(dst), 50000, 80, TCP_SYN);
        check(
            &mut pipeline(),
            &t,
            Fixture {
                description,
                ingress: HOST_NET,
                input: syn.build(),
                expect: Expect::Drop(DropReason::NoRoute),
            },
        );
    }
}

#[test]
fn the_host_reaches_remote_pods_and_arrives_there_as_remote_node() {
    let a = with_host_link(node_a());
    let mut b = node_tables(2, UPLINK_MAC_B, &[&POD_B]);
    allow_ingress(&mut b, &POD_B, Identity::REMOTE_NODE, 80);
    let (mut pa, mut pb) = (pipeline(), pipeline());
    let gateway = Ipv4Addr::new(10, 1, 0, 1);
    let syn = from_host(gateway, POD_B.ip(), 50000, 80, TCP_SYN);
    let inner = syn.clone().ttl(63);
    let outer = TunnelBuilder {
        src_mac: UPLINK_MAC_A,
        dst_mac: UPLINK_MAC_B,
        src: underlay(1),
        dst: underlay(2),
        sport: tunnel_sport(&pa, IpAddr::V4(gateway), 50000, POD_B.ip(), 80),
        vni: Identity::HOST.0,
        geneve_options: None,
    };
    let wire = check(
        &mut pa,
        &a,
        Fixture {
            description: "node A's host -> pod on node B: VXLAN, VNI = host",
            ingress: HOST_NET,
            input: syn.build(),
            expect: Expect::Tx(UPLINK, outer.wrap(&inner.build())),
        },
    );
    check(
        &mut pb,
        &b,
        Fixture {
            description: "node B sees node A's host as remote-node, which its policy admits",
            ingress: UPLINK,
            input: wire,
            expect: Expect::Tx(POD_B.ifindex, delivered(&inner, &POD_B).build()),
        },
    );
    assert_eq!(pb.last_meta()[0].src_identity, Identity::REMOTE_NODE);
}

#[test]
fn a_pod_reaches_another_nodes_address_through_the_tunnel_or_natively() {
    let a = node_a();
    let b = with_host_link(node_tables(2, UPLINK_MAC_B, &[&POD_B]));
    let mut pa = pipeline();
    let syn = from_pod(&POD1, IpAddr::V4(underlay(2)), 40000, 22, TCP_SYN);
    let inner = syn.clone().ttl(63);
    let outer = TunnelBuilder {
        src_mac: UPLINK_MAC_A,
        dst_mac: UPLINK_MAC_B,
        src: underlay(1),
        dst: underlay(2),
        sport: tunnel_sport(&pa, POD1.ip(), 40000, IpAddr::V4(underlay(2)), 22),
        vni: ID_CLIENT.0,
        geneve_options: None,
    };
    let wire = check(
        &mut pa,
        &a,
        Fixture {
            description: "pod1 -> node B's address: VXLAN to node B",
            ingress: POD1.ifindex,
            input: syn.build(),
            expect: Expect::Tx(UPLINK, outer.wrap(&inner.build())),
        },
    );
    check(
        &mut pipeline(),
        &b,
        Fixture {
            description: "node B decapsulates and hands it to its host interface",
            ingress: UPLINK,
            input: wire,
            expect: Expect::Tx(HOST_NET, to_kernel(&inner).build()),
        },
    );
    let native = from_pod(&POD1, IpAddr::V4(underlay(4)), 40001, 22, TCP_SYN);
    check(
        &mut pa,
        &a,
        Fixture {
            description: "pod1 -> node D's address: natively, to node D's MAC",
            ingress: POD1.ifindex,
            input: native.build(),
            expect: Expect::Tx(
                UPLINK,
                native
                    .clone()
                    .macs(UPLINK_MAC_A, UPLINK_MAC_D)
                    .ttl(63)
                    .build(),
            ),
        },
    );
}

/// Every prefix of valid frames is dropped with a reason (or answered, for ARP), never a
/// panic, and the reason names the header that was cut.
#[test]
fn truncated_frames_dropped_at_every_boundary() {
    let t = node_a();
    let mut p = pipeline();
    let frames = [
        from_pod(&POD1, POD2.ip(), 40000, 80, TCP_SYN)
            .payload(b"abc")
            .build(),
        PacketBuilder::udp(POD1.ip(), 5353, POD2.ip(), 53)
            .macs(POD1.mac, ROUTER_MAC)
            .build(),
        from_pod(&POD1, POD2.ip6(), 40000, 80, TCP_SYN).build(),
        PacketBuilder::echo(POD1.ip(), POD2.ip(), true, 1)
            .macs(POD1.mac, ROUTER_MAC)
            .build(),
        testutil::arp_request(POD1.mac, POD1.v4, Ipv4Addr::new(10, 1, 0, 1)),
    ];
    for full in &frames {
        for len in 0..full.len() {
            let mut f = [testutil::frame(&full[..len])];
            let v = p.process(&t, POD1.ifindex, &mut f, 1)[0];
            assert!(
                matches!(v, Verdict::Drop(_)),
                "prefix of {len} bytes gave {v:?}"
            );
            if len < 14 {
                assert_eq!(v, Verdict::Drop(DropReason::EthernetTruncated));
            }
        }
    }
    // Lengths consistent at the IP layer, but the transport header is cut short.
    let mut short_tcp = from_pod(&POD1, POD2.ip(), 1, 80, TCP_SYN).build();
    short_tcp.truncate(14 + 20 + 10);
    short_tcp[16..18].copy_from_slice(&30u16.to_be_bytes());
    fix_ipv4_checksum(&mut short_tcp);
    let mut f = [testutil::frame(&short_tcp)];
    assert_eq!(
        p.process(&t, POD1.ifindex, &mut f, 1)[0],
        Verdict::Drop(DropReason::L4Truncated)
    );
    // A bad IPv4 header checksum.
    let mut bad = from_pod(&POD1, POD2.ip(), 1, 80, TCP_SYN).build();
    bad[24] ^= 0xff;
    let mut f = [testutil::frame(&bad)];
    assert_eq!(
        p.process(&t, POD1.ifindex, &mut f, 1)[0],
        Verdict::Drop(DropReason::Ipv4BadChecksum)
    );
    assert!(p.counters().drop_packets > 100);
}

fn fix_ipv4_checksum(frame: &mut [u8]) {
    frame[24] = 0;
    frame[25] = 0;
    let c = dataplane::wire::checksum::checksum(&frame[14..34]);
    frame[24..26].copy_from_slice(&c.to_be_bytes());
}

#[test]
fn a_batch_mixes_verdicts_in_order() {
    let mut t = node_a();
    allow_ingress(&mut t, &POD2, ID_DB, 80);
    let mut p = pipeline();
    let mut frames: Vec<Frame<Vec<u8>>> = vec![
        from_pod(&POD3, POD2.ip(), 1, 80, TCP_SYN).frame(),
        from_pod(&POD1, POD2.ip(), 1, 80, TCP_SYN).frame(),
        testutil::frame(&[0u8; 5]),
        from_pod(&POD1, POD3.ip(), 1, 80, TCP_SYN).frame(),
    ];
    // POD1's frames arrive on POD1's interface only; run them as one batch from POD1 too:
    // the first frame is then spoofed (POD3's addresses on POD1's interface).
    let v = p.process(&t, POD1.ifindex, &mut frames, 5).to_vec();
    assert_eq!(
        v,
        vec![
            Verdict::Drop(DropReason::InvalidSourceMac),
            Verdict::Drop(DropReason::PolicyDeniedIngress),
            Verdict::Drop(DropReason::EthernetTruncated),
            Verdict::Tx {
                ifindex: POD3.ifindex
            },
        ]
    );
}

/// An ICMPv4 error of `ty`/`code` from `from` to `to`, quoting the first 28 bytes of `quoted`'s
/// IP packet (its IP header and 8 transport bytes).
fn icmp_error(from: &Pod, to: IpAddr, ty: u8, code: u8, quoted: &[u8]) -> PacketBuilder {
    let mut msg = vec![ty, code, 0, 0, 0, 0, 0, 0];
    msg.extend_from_slice(&quoted[14..14 + 28]);
    let c = dataplane::wire::checksum::checksum(&msg);
    msg[2..4].copy_from_slice(&c.to_be_bytes());
    PacketBuilder::new(
        from.mac,
        ROUTER_MAC,
        from.ip(),
        to,
        testutil::L4::Raw { proto: 1 },
    )
    .payload(&msg)
}

#[test]
fn icmp_error_about_a_tracked_flow_follows_it() {
    let mut t = node_a();
    enforce_ingress(&mut t, &POD1); // pod1 admits nothing new
    let mut p = pipeline();
    let query = PacketBuilder::udp(POD1.ip(), 5353, POD2.ip(), 53).macs(POD1.mac, ROUTER_MAC);
    check(
        &mut p,
        &t,
        Fixture {
            description: "client -> server:53/udp",
            ingress: POD1.ifindex,
            input: query.build(),
            expect: Expect::Tx(POD2.ifindex, delivered(&query, &POD2).build()),
        },
    );
    let unreachable = icmp_error(&POD2, POD1.ip(), 3, 3, &query.build());
    check(
        &mut p,
        &t,
        Fixture {
            description: "port unreachable about that flow: related, passes client's ingress",
            ingress: POD2.ifindex,
            input: unreachable.build(),
            expect: Expect::Tx(POD1.ifindex, delivered(&unreachable, &POD1).build()),
        },
    );
    assert_eq!(p.counters().ct_related, 1);
    let other = PacketBuilder::udp(POD1.ip(), 5353, POD3.ip(), 53).macs(POD1.mac, ROUTER_MAC);
    let unrelated = icmp_error(&POD2, POD1.ip(), 3, 3, &other.build());
    check(
        &mut p,
        &t,
        Fixture {
            description: "an error quoting a flow that never existed: dropped, never related",
            ingress: POD2.ifindex,
            input: unrelated.build(),
            expect: Expect::Drop(DropReason::IcmpErrorUnrelated),
        },
    );
    // Issue 14's bypass: pod1 quotes its own tracked flow (pod1 -> pod2:53) to carry bytes to
    // pod3, which is no party to that flow. The error must go back to the quoted sender.
    let smuggled = icmp_error(&POD1, POD3.ip(), 3, 3, &query.build());
    check(
        &mut p,
        &t,
        Fixture {
            description: "an error about pod1's own flow, sent to a third pod: dropped",
            ingress: POD1.ifindex,
            input: smuggled.build(),
            expect: Expect::Drop(DropReason::IcmpErrorUnrelated),
        },
    );
    assert_eq!(p.counters().ct_related, 1, "neither counted as related");
}

/// The verdict of one frame from `ingress` (for steps whose output bytes are not the point).
fn verdict_of(p: &mut Pipeline, t: &Tables, ingress: u32, input: &[u8]) -> Verdict {
    let mut frames = [testutil::frame(input)];
    p.process(t, ingress, &mut frames, 1_000_000_000)[0]
}

/// Issue 14, finding 1, as the fuzz target's policy oracle checks it: a pod quotes the reply of
/// its own allowed DNS flow to the world in ICMP errors. Only the error that goes back to the
/// quoted sender (the DNS server) is related; toward a neighbour whose ingress refuses the pod,
/// or toward another world address its egress refuses, it is dropped, whether or not the pod
/// has a policy of its own.
#[test]
fn icmp_error_quoting_own_dns_flow_reaches_only_the_quoted_sender() {
    let mut t = node_a();
    enforce_ingress(&mut t, &POD2); // the server admits nothing new
    let db = Arc::make_mut(&mut t.endpoints)
        .policy_mut(EndpointId(POD3.id))
        .unwrap();
    db.egress.enforced = true; // the db may only query DNS in the world
    db.egress
        .map
        .insert(
            PolicyKey::l4(Identity::WORLD, 17, PortRange::single(53)),
            PolicyEntry::allow(9),
        )
        .unwrap();
    let dns = IpAddr::V4(Ipv4Addr::new(8, 8, 8, 8));
    let elsewhere = IpAddr::V4(Ipv4Addr::new(1, 1, 1, 1));
    for pod in [&POD3, &POD1] {
        let mut p = pipeline();
        let query = PacketBuilder::udp(pod.ip(), 40053, dns, 53).macs(pod.mac, ROUTER_MAC);
        assert_eq!(
            verdict_of(&mut p, &t, pod.ifindex, &query.build()),
            Verdict::Tx { ifindex: UPLINK },
            "pod {}: its DNS query leaves",
            pod.id
        );
        let reply = PacketBuilder::udp(dns, 53, pod.ip(), 40053).build();
        for (to, what) in [(POD2.ip(), "a refused neighbour"), (elsewhere, "the world")] {
            let smuggled = icmp_error(pod, to, 3, 3, &reply);
            assert_eq!(
                verdict_of(&mut p, &t, pod.ifindex, &smuggled.build()),
                Verdict::Drop(DropReason::IcmpErrorUnrelated),
                "pod {}: an error about its own DNS flow, sent to {what}",
                pod.id
            );
        }
        let related = icmp_error(pod, dns, 3, 3, &reply);
        assert_eq!(
            verdict_of(&mut p, &t, pod.ifindex, &related.build()),
            Verdict::Tx { ifindex: UPLINK },
            "pod {}: the same error to the DNS server is related",
            pod.id
        );
        assert_eq!(p.counters().ct_related, 1, "pod {}", pod.id);
    }
}

#[test]
fn icmp_error_from_a_service_backend_is_reverse_nated() {
    let t = node_a();
    let mut p = pipeline();
    let to_vip = from_pod(&POD1, IpAddr::V4(VIP_SNAT), 40000, 80, TCP_SYN);
    let mut at_backend = delivered(&to_vip, &POD2);
    at_backend.dst = POD2.ip();
    at_backend.l4 = testutil::L4::Tcp {
        sport: 40000,
        dport: 8080,
        flags: TCP_SYN,
        seq: 1000,
        ack: 0,
    };
    check(
        &mut p,
        &t,
        Fixture {
            description: "client -> VIP, DNATed",
            ingress: POD1.ifindex,
            input: to_vip.build(),
            expect: Expect::Tx(POD2.ifindex, at_backend.build()),
        },
    );
    let unreachable = icmp_error(&POD2, POD1.ip(), 3, 3, &at_backend.build());
    // What the client must see: from the VIP, quoting the packet it sent to the VIP.
    let mut expected = icmp_error(&POD2, POD1.ip(), 3, 3, &to_vip.clone().ttl(63).build());
    expected.src = IpAddr::V4(VIP_SNAT);
    check(
        &mut p,
        &t,
        Fixture {
            description: "backend's port unreachable reaches the client from VIP, about VIP:80",
            ingress: POD2.ifindex,
            input: unreachable.build(),
            expect: Expect::Tx(POD1.ifindex, delivered(&expected, &POD1).build()),
        },
    );
}

/// An Ethernet + IPv6 frame carrying the ICMPv6 message `msg` (checksum filled by the wire code).
fn icmpv6_frame(
    src_mac: MacAddr,
    dst_mac: MacAddr,
    src: Ipv6Addr,
    dst: Ipv6Addr,
    hop_limit: u8,
    msg: dataplane::wire::icmpv6::Repr,
) -> Vec<u8> {
    use dataplane::wire::icmpv6::Icmpv6Packet;
    let mut b = Vec::new();
    b.extend_from_slice(dst_mac.as_bytes());
    b.extend_from_slice(src_mac.as_bytes());
    b.extend_from_slice(&[0x86, 0xdd, 0x60, 0, 0, 0]);
    b.extend_from_slice(&(msg.buffer_len() as u16).to_be_bytes());
    b.extend_from_slice(&[58, hop_limit]);
    b.extend_from_slice(&src.octets());
    b.extend_from_slice(&dst.octets());
    let mut icmp = vec![0u8; msg.buffer_len()];
    msg.emit(&mut Icmpv6Packet::new_unchecked(&mut icmp[..]), src, dst);
    b.extend_from_slice(&icmp);
    b
}

#[test]
fn neighbor_solicitation_for_gateway_answered_with_router_mac() {
    use dataplane::wire::icmpv6::{NeighborFlags, Repr as Icmpv6Repr};
    let t = node_a();
    let gateway: Ipv6Addr = "fe80::1".parse().unwrap();
    let solicited_node: Ipv6Addr = "ff02::1:ff00:1".parse().unwrap();
    let ns = Icmpv6Repr::NeighborSolicit {
        target: gateway,
        lladdr: Some(POD1.mac),
    };
    let multicast_mac = MacAddr([0x33, 0x33, 0xff, 0, 0, 1]);
    let request = icmpv6_frame(POD1.mac, multicast_mac, POD1.v6, solicited_node, 255, ns);
    let na = Icmpv6Repr::NeighborAdvert {
        flags: NeighborFlags::ROUTER | NeighborFlags::SOLICITED | NeighborFlags::OVERRIDE,
        target: gateway,
        lladdr: Some(ROUTER_MAC),
    };
    let mut p = pipeline();
    check(
        &mut p,
        &t,
        Fixture {
            description: "who has fe80::1 (the gateway)?",
            ingress: POD1.ifindex,
            input: request,
            expect: Expect::Tx(
                POD1.ifindex,
                icmpv6_frame(ROUTER_MAC, POD1.mac, gateway, POD1.v6, 255, na),
            ),
        },
    );
    assert_eq!(p.counters().ndp_replies, 1);

    let dad = Icmpv6Repr::NeighborSolicit {
        target: POD1.v6,
        lladdr: None,
    };
    let unspecified = Ipv6Addr::UNSPECIFIED;
    check(
        &mut p,
        &t,
        Fixture {
            description: "duplicate address detection is not answered",
            ingress: POD1.ifindex,
            input: icmpv6_frame(
                POD1.mac,
                multicast_mac,
                unspecified,
                solicited_node,
                255,
                dad,
            ),
            expect: Expect::Drop(DropReason::NdpIgnored),
        },
    );
    check(
        &mut p,
        &t,
        Fixture {
            description: "a solicitation with hop limit 254 is discarded (RFC 4861 7.1.1)",
            ingress: POD1.ifindex,
            input: icmpv6_frame(POD1.mac, multicast_mac, POD1.v6, solicited_node, 254, ns),
            expect: Expect::Drop(DropReason::NdpIgnored),
        },
    );
}

// ---- MTU: frames that do not fit their path --------------------------------------------------

/// Node A's pods' IPv6 gateway, for the tests that need one (`node_tables` sets none).
const GATEWAY_V6_A: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1);

/// What node A sends back to `pod` about its frame `original` that does not fit a path of MTU
/// `mtu`: ICMPv4 "fragmentation needed" or ICMPv6 "packet too big" from `gateway`, quoting the
/// original IP packet up to the 576- / 1280-byte limit of an error. Built byte by byte, with
/// checksums computed from scratch.
fn too_big_error(pod: &Pod, gateway: IpAddr, mtu: u16, original: &[u8]) -> Vec<u8> {
    use dataplane::wire::checksum;
    let ip = &original[14..];
    let mut b = Vec::new();
    b.extend_from_slice(pod.mac.as_bytes());
    b.extend_from_slice(ROUTER_MAC.as_bytes());
    match gateway {
        IpAddr::V4(gw) => {
            let quote = &ip[..ip.len().min(576 - 20 - 8)];
            let mut icmp = vec![3, 4, 0, 0, 0, 0];
            icmp.extend_from_slice(&mtu.to_be_bytes());
            icmp.extend_from_slice(quote);
            let c = checksum::checksum(&icmp);
            icmp[2..4].copy_from_slice(&c.to_be_bytes());
            let mut hdr = vec![0x45, 0];
            hdr.extend_from_slice(&((20 + icmp.len()) as u16).to_be_bytes());
            hdr.extend_from_slice(&[0, 0, 0, 0, 64, 1, 0, 0]);
            hdr.extend_from_slice(&gw.octets());
            hdr.extend_from_slice(&pod.v4.octets());
            let c = checksum::checksum(&hdr);
            hdr[10..12].copy_from_slice(&c.to_be_bytes());
            b.extend_from_slice(&[0x08, 0x00]);
            b.extend_from_slice(&hdr);
            b.extend_from_slice(&icmp);
        }
        IpAddr::V6(gw) => {
            let quote = &ip[..ip.len().min(1280 - 40 - 8)];
            let mut icmp = vec![2, 0, 0, 0];
            icmp.extend_from_slice(&u32::from(mtu).to_be_bytes());
            icmp.extend_from_slice(quote);
            let pseudo = checksum::pseudo_header_v6(gw, pod.v6, 58, icmp.len() as u32);
            let c = checksum::finish(checksum::sum(&icmp, pseudo));
            icmp[2..4].copy_from_slice(&c.to_be_bytes());
            b.extend_from_slice(&[0x86, 0xdd, 0x60, 0, 0, 0]);
            b.extend_from_slice(&(icmp.len() as u16).to_be_bytes());
            b.extend_from_slice(&[58, 64]);
            b.extend_from_slice(&gw.octets());
            b.extend_from_slice(&pod.v6.octets());
            b.extend_from_slice(&icmp);
        }
    }
    b
}

/// A TCP segment from `src` pod to `dst` whose IP packet is `ip_len` bytes long.
fn sized_from_pod(src: &Pod, dst: IpAddr, sport: u16, dport: u16, ip_len: usize) -> PacketBuilder {
    let headers = if dst.is_ipv4() { 20 + 20 } else { 40 + 20 };
    from_pod(src, dst, sport, dport, TCP_ACK).payload(&vec![0x61; ip_len - headers])
}

#[test]
fn full_size_ipv4_to_a_vxlan_node_gets_fragmentation_needed_back() {
    use dataplane::wire::icmpv4::{DstUnreachable, Icmpv4Packet, Repr as Icmpv4Repr};
    use dataplane::wire::ipv4::{Ipv4Packet, Repr as Ipv4Repr};
    let t = node_a();
    let mut p = pipeline();
    let mtu = Encap::Vxlan.pod_mtu(1500);
    assert_eq!(
        mtu,
        1500 - 50 - 8,
        "VXLAN + the DSR option of the inner header"
    );
    let input = sized_from_pod(&POD1, POD_B.ip(), 40000, 80, 1500).build();
    assert_eq!(input.len(), 1514);
    let gateway = IpAddr::V4(Ipv4Addr::new(10, 1, 0, 1));
    let out = check(
        &mut p,
        &t,
        Fixture {
            description: "1500-byte DF TCP to a pod behind VXLAN: frag needed, MTU 1442, to pod1",
            ingress: POD1.ifindex,
            input: input.clone(),
            expect: Expect::Tx(POD1.ifindex, too_big_error(&POD1, gateway, mtu, &input)),
        },
    );
    // What the pod's stack checks, through the wire views.
    assert_eq!(out.len(), 14 + 576);
    let ip = Ipv4Packet::new_checked(&out[14..]).unwrap();
    let ip_repr = Ipv4Repr::parse(&ip).unwrap(); // Verifies the header checksum.
    assert_eq!(
        (ip_repr.src_addr, ip_repr.dst_addr),
        (Ipv4Addr::new(10, 1, 0, 1), POD1.v4)
    );
    let icmp = Icmpv4Packet::new_checked(ip.payload()).unwrap();
    assert!(icmp.verify_checksum());
    assert_eq!(
        Icmpv4Repr::parse(&icmp).unwrap(),
        Icmpv4Repr::DstUnreachable {
            reason: DstUnreachable::FragRequired,
            next_hop_mtu: 1442,
            quoted_len: 576 - 28,
        }
    );
    assert_eq!(icmp.quoted(), &input[14..14 + 548]);
    assert_eq!(p.counters().icmp_too_big_sent, 1);
    assert_eq!(p.counters().encapsulated, 0);
    assert_eq!(p.counters().drops(DropReason::FrameTooLong), 0);

    // A packet of exactly the pod MTU goes through the tunnel.
    let fits = sized_from_pod(&POD1, POD_B.ip(), 40001, 80, 1442).build();
    let mut frames = [testutil::frame(&fits)];
    assert_eq!(
        p.process(&t, POD1.ifindex, &mut frames, 1)[0],
        Verdict::Tx { ifindex: UPLINK }
    );
    assert_eq!(p.counters().encapsulated, 1);
}

#[test]
fn the_worst_case_of_each_mode_fills_the_uplink_mtu_exactly() {
    // A DSR service with its backend behind each mode is the worst case the pod MTU reserves
    // for: a packet of exactly the pod MTU leaves as a 1500-byte IP packet, and one byte more
    // is answered with the pod MTU, quoting the packet as sent (to the VIP, not the backend).
    let t = node_a();
    let gateway = IpAddr::V4(Ipv4Addr::new(10, 1, 0, 1));
    for (vip, encap) in [
        (VIP_DSR, Encap::Vxlan),
        (VIP_DSR_GENEVE, Encap::Geneve),
        (VIP_DSR_NATIVE, Encap::Native),
    ] {
        let mut p = pipeline();
        let mtu = encap.pod_mtu(1500);
        let fits = sized_from_pod(&POD1, IpAddr::V4(vip), 40000, 80, usize::from(mtu)).build();
        let mut frames = [testutil::frame(&fits)];
        let v = p.process(&t, POD1.ifindex, &mut frames, 1)[0];
        assert_eq!(v, Verdict::Tx { ifindex: UPLINK }, "{encap}");
        let out = frames[0].data();
        assert_eq!(out.len(), 14 + 1500, "{encap}: outer frame");
        assert_eq!(
            &out[16..18],
            &1500u16.to_be_bytes(),
            "{encap}: outer IP length"
        );
        assert_eq!(p.counters().dsr_option_written, 1, "{encap}");

        let input = sized_from_pod(&POD1, IpAddr::V4(vip), 40001, 80, usize::from(mtu) + 1).build();
        check(
            &mut p,
            &t,
            Fixture {
                description: "one byte over the pod MTU, to a DSR VIP: error quoting the VIP",
                ingress: POD1.ifindex,
                input: input.clone(),
                expect: Expect::Tx(POD1.ifindex, too_big_error(&POD1, gateway, mtu, &input)),
            },
        );
        assert_eq!(p.counters().icmp_too_big_sent, 1, "{encap}");
    }
}

#[test]
fn full_size_ipv6_gets_packet_too_big_back() {
    use dataplane::wire::icmpv6::{Icmpv6Packet, Repr as Icmpv6Repr};
    let mut t = node_a();
    let input = sized_from_pod(&POD1, POD_B.ip6(), 40000, 80, 1500).build();
    check(
        &mut pipeline(),
        &t,
        Fixture {
            description: "IPv6 without a gateway address to answer from: dropped",
            ingress: POD1.ifindex,
            input: input.clone(),
            expect: Expect::Drop(DropReason::TooBigNoGateway),
        },
    );
    Arc::make_mut(&mut t.node).gateway_ipv6 = Some(GATEWAY_V6_A);
    let mut p = pipeline();
    let out = check(
        &mut p,
        &t,
        Fixture {
            description: "1500-byte IPv6 TCP to a pod behind VXLAN: packet too big, MTU 1442",
            ingress: POD1.ifindex,
            input: input.clone(),
            expect: Expect::Tx(
                POD1.ifindex,
                too_big_error(&POD1, IpAddr::V6(GATEWAY_V6_A), 1442, &input),
            ),
        },
    );
    assert_eq!(out.len(), 14 + 1280);
    let icmp = Icmpv6Packet::new_checked(&out[14 + 40..]).unwrap();
    assert!(icmp.verify_checksum(GATEWAY_V6_A, POD1.v6));
    assert_eq!(
        Icmpv6Repr::parse(&icmp).unwrap(),
        Icmpv6Repr::PktTooBig {
            mtu: 1442,
            quoted_len: 1280 - 48,
        }
    );
    assert_eq!(p.counters().icmp_too_big_sent, 1);
}

#[test]
fn too_big_without_an_error_back_is_dropped() {
    let t = node_a();
    let mut p = pipeline();

    // IPv4 without Don't Fragment: a router would fragment it; the dataplane does not.
    let mut no_df = sized_from_pod(&POD1, POD_B.ip(), 40000, 80, 1500).build();
    no_df[14 + 6] = 0;
    fix_ipv4_checksum(&mut no_df);
    check(
        &mut p,
        &t,
        Fixture {
            description: "1500-byte IPv4 without DF to a pod behind VXLAN: dropped",
            ingress: POD1.ifindex,
            input: no_df,
            expect: Expect::Drop(DropReason::FrameTooLong),
        },
    );

    // An ICMP error is never answered with an ICMP error (RFC 1122 section 3.2.2). The flow it
    // quotes is tracked (pod1 sent on it first), so the error is related and reaches routing.
    let earlier = PacketBuilder::udp(POD1.ip(), 9, POD_B.ip(), 5000)
        .macs(POD1.mac, ROUTER_MAC)
        .build();
    let mut frames = [testutil::frame(&earlier)];
    let verdict = p.process(&t, POD1.ifindex, &mut frames, 1_000_000_000)[0];
    assert_eq!(
        verdict,
        Verdict::Tx { ifindex: UPLINK },
        "pod1 -> pod B, tracked"
    );
    let quoted = PacketBuilder::udp(POD_B.ip(), 5000, POD1.ip(), 9)
        .macs(ROUTER_MAC, POD1.mac)
        .payload(&[0x62; 1444])
        .build();
    let mut msg = vec![3, 3, 0, 0, 0, 0, 0, 0];
    msg.extend_from_slice(&quoted[14..]);
    let c = dataplane::wire::checksum::checksum(&msg);
    msg[2..4].copy_from_slice(&c.to_be_bytes());
    let error = PacketBuilder::new(
        POD1.mac,
        ROUTER_MAC,
        POD1.ip(),
        POD_B.ip(),
        testutil::L4::Raw { proto: 1 },
    )
    .payload(&msg)
    .build();
    assert_eq!(error.len(), 14 + 20 + 8 + 1472);
    check(
        &mut p,
        &t,
        Fixture {
            description: "a 1500-byte port unreachable from pod1 to a pod behind VXLAN: dropped",
            ingress: POD1.ifindex,
            input: error,
            expect: Expect::Drop(DropReason::FrameTooLong),
        },
    );

    // Frames from the uplink get no error: the sender is not ours to tell.
    let from_world = PacketBuilder::tcp(IpAddr::V4(CLIENT_WORLD), 40000, POD_B.ip(), 80, TCP_ACK)
        .macs(WORLD_GW_MAC, UPLINK_MAC_A)
        .payload(&[0x63; 1460]);
    check(
        &mut p,
        &t,
        Fixture {
            description: "1500 bytes from the world through node A to a pod behind VXLAN",
            ingress: UPLINK,
            input: from_world.build(),
            expect: Expect::Drop(DropReason::FrameTooLong),
        },
    );
    assert_eq!(p.counters().icmp_too_big_sent, 0);
    assert_eq!(p.counters().drops(DropReason::FrameTooLong), 3);
}

#[test]
fn too_big_for_the_uplink_quotes_a_backend_reply_as_the_backend_sent_it() {
    // A world client reaches the SNAT service's backend, pod2, through node A's uplink; pod2's
    // reply is reverse-NATed to the VIP and leaves through the uplink. One byte over the
    // uplink's MTU: the error goes back to pod2 and quotes its reply from its own address and
    // port, not the VIP's (the NAT is undone), or its stack would not find the socket.
    let t = node_a();
    let mut p = pipeline();
    let syn = PacketBuilder::tcp(
        IpAddr::V4(CLIENT_WORLD),
        40000,
        IpAddr::V4(VIP_SNAT),
        80,
        TCP_SYN,
    )
    .macs(WORLD_GW_MAC, UPLINK_MAC_A);
    let mut frames = [syn.frame()];
    assert_eq!(
        p.process(&t, UPLINK, &mut frames, 1)[0],
        Verdict::Tx {
            ifindex: POD2.ifindex
        }
    );
    let reply = from_pod(&POD2, IpAddr::V4(CLIENT_WORLD), 8080, 40000, TCP_SYN_ACK)
        .payload(&[0x64; 1501 - 40])
        .build();
    let gateway = IpAddr::V4(Ipv4Addr::new(10, 1, 0, 1));
    check(
        &mut p,
        &t,
        Fixture {
            description: "pod2's 1501-byte reply to the world: frag needed, MTU 1500, to pod2",
            ingress: POD2.ifindex,
            input: reply.clone(),
            expect: Expect::Tx(POD2.ifindex, too_big_error(&POD2, gateway, 1500, &reply)),
        },
    );
    assert_eq!(p.counters().reverse_nat, 1);
    assert_eq!(p.counters().icmp_too_big_sent, 1);
}

// ---- masquerade: pods reach the world with the node's address --------------------------------

const WORLD_SERVER: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 7);

fn masquerading_pipeline() -> Pipeline {
    use dataplane::pipeline::MasqueradeConfig;
    use dataplane::tables::snat::DEFAULT_PORTS;
    Pipeline::new(PipelineConfig {
        masquerade: Some(MasqueradeConfig::single_worker(DEFAULT_PORTS)),
        ..PipelineConfig::default()
    })
    .unwrap()
}

/// The TCP/UDP source port of an IPv4 frame without options.
fn l4_sport(frame: &[u8]) -> u16 {
    u16::from_be_bytes([frame[34], frame[35]])
}

/// What leaves the uplink for a pod's packet: the node's address and `port` as the source,
/// uplink MAC -> the default gateway's, TTL one lower.
fn masqueraded(b: &PacketBuilder, port: u16) -> PacketBuilder {
    let mut out = b.clone().macs(UPLINK_MAC_A, WORLD_GW_MAC).ttl(b.ttl - 1);
    out.src = IpAddr::V4(underlay(1));
    set_l4_ports(&mut out, Some(port), None);
    out
}

fn set_l4_ports(b: &mut PacketBuilder, sport: Option<u16>, dport: Option<u16>) {
    match &mut b.l4 {
        testutil::L4::Tcp {
            sport: s, dport: d, ..
        }
        | testutil::L4::Udp { sport: s, dport: d } => {
            *s = sport.unwrap_or(*s);
            *d = dport.unwrap_or(*d);
        }
        _ => unreachable!("TCP or UDP only"),
    }
}

/// The world's answer to the node's address and `port`, arriving on the uplink.
fn world_reply(flags: u8, port: u16) -> PacketBuilder {
    PacketBuilder::tcp(
        IpAddr::V4(WORLD_SERVER),
        80,
        IpAddr::V4(underlay(1)),
        port,
        flags,
    )
    .macs(WORLD_GW_MAC, UPLINK_MAC_A)
}

#[test]
fn masquerade_pod_to_world_and_the_reply_back() {
    let t = node_a();
    let mut p = masquerading_pipeline();
    let syn = from_pod(&POD1, IpAddr::V4(WORLD_SERVER), 40000, 80, TCP_SYN);
    let mut frames = [syn.frame()];
    assert_eq!(
        p.process(&t, POD1.ifindex, &mut frames, 1_000_000_000)[0],
        Verdict::Tx { ifindex: UPLINK }
    );
    let port = l4_sport(frames[0].data());
    assert!((61000..=65535).contains(&port), "port {port}");
    assert_eq!(
        hex(frames[0].data()),
        hex(&masqueraded(&syn, port).build()),
        "SYN leaves with the node's address"
    );
    // The SYN-ACK comes back to the node's address and that port: the pod gets it as the
    // answer to its own address and port.
    let syn_ack = world_reply(TCP_SYN_ACK, port);
    let mut to_pod = syn_ack
        .clone()
        .macs(ROUTER_MAC, POD1.mac)
        .ttl(syn_ack.ttl - 1);
    to_pod.dst = POD1.ip();
    set_l4_ports(&mut to_pod, None, Some(40000));
    check(
        &mut p,
        &t,
        Fixture {
            description: "SYN-ACK from the world, un-NATed to the pod",
            ingress: UPLINK,
            input: syn_ack.build(),
            expect: Expect::Tx(POD1.ifindex, to_pod.build()),
        },
    );
    // The flow's next packet keeps its port.
    let ack = from_pod(&POD1, IpAddr::V4(WORLD_SERVER), 40000, 80, TCP_ACK);
    check(
        &mut p,
        &t,
        Fixture {
            description: "ACK keeps the port",
            ingress: POD1.ifindex,
            input: ack.build(),
            expect: Expect::Tx(UPLINK, masqueraded(&ack, port).build()),
        },
    );
    let c = p.counters();
    assert_eq!(c.masquerade_ports_allocated, 1);
    assert_eq!(c.masquerade_translated, 2);
    assert_eq!(c.masquerade_reversed, 1);
    assert_eq!(
        c.ct_established, 2,
        "the reply and the ACK found the pod's flow"
    );
}

/// Conntrack's sequence check: a RST from the world at a number the pod does not expect (an
/// off-path guess of the masqueraded flow's tuple) is dropped and leaves the flow, and so its
/// masquerade port, alone; the server's RST at the expected number closes it.
#[test]
fn masquerade_a_guessed_rst_from_the_world_is_dropped_and_the_servers_own_closes() {
    let t = node_a();
    let mut p = masquerading_pipeline();
    let world = IpAddr::V4(WORLD_SERVER);
    let (pod_isn, server_isn) = (1_000, 50_000);
    let syn = from_pod(&POD1, world, 40000, 80, TCP_SYN).seq_ack(pod_isn, 0);
    let mut frames = [syn.frame()];
    let now = 1_000_000_000;
    assert_eq!(
        p.process(&t, POD1.ifindex, &mut frames, now)[0],
        Verdict::Tx { ifindex: UPLINK }
    );
    let port = l4_sport(frames[0].data());
    let mut verdict = |ingress: u32, b: PacketBuilder| {
        let mut frames = [b.frame()];
        p.process(&t, ingress, &mut frames, now)[0]
    };
    let to_pod1 = Verdict::Tx {
        ifindex: POD1.ifindex,
    };
    let syn_ack = world_reply(TCP_SYN_ACK, port).seq_ack(server_isn, pod_isn + 1);
    assert_eq!(verdict(UPLINK, syn_ack), to_pod1);
    let ack = from_pod(&POD1, world, 40000, 80, TCP_ACK).seq_ack(pod_isn + 1, server_isn + 1);
    assert_eq!(verdict(POD1.ifindex, ack), Verdict::Tx { ifindex: UPLINK });
    for guess in [0x8000_0000, server_isn + 1 + (1 << 20), 0xdead_beef] {
        let rst = world_reply(TCP_RST, port).seq_ack(guess, 0);
        assert_eq!(
            verdict(UPLINK, rst),
            Verdict::Drop(DropReason::TcpRstOutOfWindow),
            "RST at {guess:#x}"
        );
    }
    // The flow carries on, on its port: the server's data reaches the pod.
    let data = world_reply(TCP_ACK, port)
        .seq_ack(server_isn + 1, pod_isn + 1)
        .payload(b"hello");
    assert_eq!(verdict(UPLINK, data), to_pod1);
    let rst = world_reply(TCP_RST, port).seq_ack(server_isn + 6, 0);
    assert_eq!(verdict(UPLINK, rst), to_pod1, "the server's own RST");
    // Closed now (its port recyclable, `tables::snat`'s tests): a guess after the close is
    // judged against the same numbers.
    let late_guess = world_reply(TCP_RST, port).seq_ack(0xdead_beef, 0);
    assert_eq!(
        verdict(UPLINK, late_guess),
        Verdict::Drop(DropReason::TcpRstOutOfWindow)
    );
    assert_eq!(p.counters().drops(DropReason::TcpRstOutOfWindow), 4);
}

#[test]
fn masquerade_gives_each_flow_its_own_port_and_handles_udp() {
    let t = node_a();
    let mut p = masquerading_pipeline();
    let mut ports = std::collections::HashSet::new();
    for (pod, sport) in [(&POD1, 40000), (&POD2, 40000), (&POD1, 40001)] {
        let syn = from_pod(pod, IpAddr::V4(WORLD_SERVER), sport, 80, TCP_SYN);
        let mut frames = [syn.frame()];
        assert_eq!(
            p.process(&t, pod.ifindex, &mut frames, 1_000_000_000)[0],
            Verdict::Tx { ifindex: UPLINK }
        );
        assert!(ports.insert(l4_sport(frames[0].data())));
    }
    let dns = PacketBuilder::udp(POD3.ip(), 5353, IpAddr::V4(WORLD_SERVER), 53)
        .macs(POD3.mac, ROUTER_MAC);
    let mut frames = [dns.frame()];
    assert_eq!(
        p.process(&t, POD3.ifindex, &mut frames, 1_000_000_000)[0],
        Verdict::Tx { ifindex: UPLINK }
    );
    let port = l4_sport(frames[0].data());
    let mut expected = dns
        .clone()
        .macs(UPLINK_MAC_A, WORLD_GW_MAC)
        .ttl(dns.ttl - 1);
    expected.src = IpAddr::V4(underlay(1));
    set_l4_ports(&mut expected, Some(port), None);
    assert_eq!(hex(frames[0].data()), hex(&expected.build()));
    let answer = PacketBuilder::udp(IpAddr::V4(WORLD_SERVER), 53, IpAddr::V4(underlay(1)), port)
        .macs(WORLD_GW_MAC, UPLINK_MAC_A);
    let mut to_pod = answer
        .clone()
        .macs(ROUTER_MAC, POD3.mac)
        .ttl(answer.ttl - 1);
    to_pod.dst = POD3.ip();
    set_l4_ports(&mut to_pod, None, Some(5353));
    check(
        &mut p,
        &t,
        Fixture {
            description: "DNS answer back to the pod",
            ingress: UPLINK,
            input: answer.build(),
            expect: Expect::Tx(POD3.ifindex, to_pod.build()),
        },
    );
}

/// What the pod receives for the world's `reply` to the masqueraded flow from `pod:sport`.
fn unmasqueraded(reply: &PacketBuilder, pod: &Pod, sport: u16) -> PacketBuilder {
    let mut to_pod = reply.clone().macs(ROUTER_MAC, pod.mac).ttl(reply.ttl - 1);
    to_pod.dst = pod.ip();
    set_l4_ports(&mut to_pod, None, Some(sport));
    to_pod
}

#[test]
fn masquerade_recycles_the_port_of_a_closed_flow_for_the_next_one() {
    use dataplane::pipeline::MasqueradeConfig;
    use dataplane::tables::snat::PortRange;
    let t = node_a();
    let only = PortRange::new(61000, 61000).unwrap();
    let mut p = Pipeline::new(PipelineConfig {
        masquerade: Some(MasqueradeConfig::single_worker(only)),
        ..PipelineConfig::default()
    })
    .unwrap();
    let world = IpAddr::V4(WORLD_SERVER);
    let pod1 = |flags| from_pod(&POD1, world, 40000, 80, flags);
    let pod2 = |flags| from_pod(&POD2, world, 40000, 80, flags);
    // SYN out, SYN-ACK back, ACK out, FIN out, FIN back: the flow has closed both ways.
    let closing = [
        (false, TCP_SYN, "pod 1's SYN takes the only port"),
        (true, TCP_SYN_ACK, "the SYN-ACK reaches pod 1"),
        (false, TCP_ACK, "pod 1's handshake ACK"),
        (false, TCP_FIN | TCP_ACK, "pod 1 closes"),
        (
            true,
            TCP_FIN | TCP_ACK,
            "the server closes too: the flow is closed",
        ),
    ];
    for (from_world, flags, description) in closing {
        let fx = if from_world {
            let reply = world_reply(flags, 61000);
            Fixture {
                description,
                ingress: UPLINK,
                input: reply.build(),
                expect: Expect::Tx(POD1.ifindex, unmasqueraded(&reply, &POD1, 40000).build()),
            }
        } else {
            let out = pod1(flags);
            Fixture {
                description,
                ingress: POD1.ifindex,
                input: out.build(),
                expect: Expect::Tx(UPLINK, masqueraded(&out, 61000).build()),
            }
        };
        check(&mut p, &t, fx);
    }
    // Within the close timeout, pod 2's flow to the same server gets the closed flow's port
    // (before, it was dropped: masquerade_ports_exhausted).
    let syn = pod2(TCP_SYN);
    check(
        &mut p,
        &t,
        Fixture {
            description: "pod 2's SYN recycles the port",
            ingress: POD2.ifindex,
            input: syn.build(),
            expect: Expect::Tx(UPLINK, masqueraded(&syn, 61000).build()),
        },
    );
    let reply = world_reply(TCP_SYN_ACK, 61000);
    check(
        &mut p,
        &t,
        Fixture {
            description: "the port's replies now reach pod 2",
            ingress: UPLINK,
            input: reply.build(),
            expect: Expect::Tx(POD2.ifindex, unmasqueraded(&reply, &POD2, 40000).build()),
        },
    );
    // Pod 1's late packet (its last ACK retransmitted) no longer leaves with that port; the
    // port is pod 2's open flow's, and the range has no other.
    check(
        &mut p,
        &t,
        Fixture {
            description: "the closed flow's late packet cannot use the recycled port",
            ingress: POD1.ifindex,
            input: pod1(TCP_ACK).build(),
            expect: Expect::Drop(DropReason::MasqueradePortsExhausted),
        },
    );
    // An open flow's port is never taken.
    check(
        &mut p,
        &t,
        Fixture {
            description: "pod 3's SYN finds no closed port",
            ingress: POD3.ifindex,
            input: from_pod(&POD3, world, 40000, 80, TCP_SYN).build(),
            expect: Expect::Drop(DropReason::MasqueradePortsExhausted),
        },
    );
    assert_eq!(p.counters().masquerade_ports_allocated, 2);
}

#[test]
fn masquerade_refuses_what_it_cannot_translate_and_leaves_the_host_alone() {
    let t = node_a();
    let mut p = masquerading_pipeline();
    let cases = [
        Fixture {
            description: "no flow left with this port: nothing on the node listens there",
            ingress: UPLINK,
            input: world_reply(TCP_SYN, 61234).build(),
            expect: Expect::Drop(DropReason::MasqueradeNoMapping),
        },
        Fixture {
            description: "a pod's ping to the world is not masqueraded",
            ingress: POD1.ifindex,
            input: PacketBuilder::echo(POD1.ip(), IpAddr::V4(WORLD_SERVER), true, 9)
                .macs(POD1.mac, ROUTER_MAC)
                .build(),
            expect: Expect::Drop(DropReason::MasqueradeUnsupportedProtocol),
        },
        Fixture {
            description: "the node's own traffic below the range stays the kernel's",
            ingress: UPLINK,
            input: world_reply(TCP_SYN_ACK, 45000).build(),
            expect: Expect::Pass,
        },
    ];
    for fx in cases {
        check(&mut p, &t, fx);
    }
    assert_eq!(p.counters().masquerade_ports_allocated, 0);
}

#[test]
fn masquerade_comes_after_egress_policy_on_the_pods_address() {
    let mut t = node_a();
    Arc::make_mut(&mut t.endpoints)
        .policy_mut(EndpointId(POD1.id))
        .unwrap()
        .egress
        .enforced = true; // Nothing allowed, `world` included.
    let mut p = masquerading_pipeline();
    check(
        &mut p,
        &t,
        Fixture {
            description: "egress policy refusing world",
            ingress: POD1.ifindex,
            input: from_pod(&POD1, IpAddr::V4(WORLD_SERVER), 40000, 80, TCP_SYN).build(),
            expect: Expect::Drop(DropReason::PolicyDeniedEgress),
        },
    );
    assert_eq!(p.counters().masquerade_ports_allocated, 0);
    // Without masquerading the pod's packet leaves with its own address, as before.
    let syn = from_pod(&POD2, IpAddr::V4(WORLD_SERVER), 40000, 80, TCP_SYN);
    check(
        &mut pipeline(),
        &t,
        Fixture {
            description: "masquerade off",
            ingress: POD2.ifindex,
            input: syn.build(),
            expect: Expect::Tx(
                UPLINK,
                syn.clone().macs(UPLINK_MAC_A, WORLD_GW_MAC).ttl(63).build(),
            ),
        },
    );
}

#[test]
fn masquerade_translates_a_routers_icmp_error_back_to_the_pod() {
    let t = node_a();
    let mut p = masquerading_pipeline();
    let syn = from_pod(&POD1, IpAddr::V4(WORLD_SERVER), 40000, 80, TCP_SYN);
    let mut frames = [syn.frame()];
    p.process(&t, POD1.ifindex, &mut frames, 1_000_000_000);
    let left = frames[0].data().to_vec();
    let port = l4_sport(&left);
    // A router on the way: "fragmentation needed", about the packet as it left.
    let router = Ipv4Addr::new(192, 0, 2, 254);
    let error = |to: IpAddr, quoted: &[u8], dst_mac| {
        let mut msg = vec![3, 4, 0, 0, 0, 0, 0x05, 0x00];
        msg.extend_from_slice(&quoted[14..14 + 28]);
        let c = dataplane::wire::checksum::checksum(&msg);
        msg[2..4].copy_from_slice(&c.to_be_bytes());
        PacketBuilder::new(
            WORLD_GW_MAC,
            dst_mac,
            IpAddr::V4(router),
            to,
            testutil::L4::Raw { proto: 1 },
        )
        .payload(&msg)
    };
    let incoming = error(IpAddr::V4(underlay(1)), &left, UPLINK_MAC_A);
    // What the pod must get: the error to its own address, quoting the packet it sent (TTL
    // one lower: the quote is what left, only the translation undone).
    let as_sent = syn.clone().ttl(63).build();
    let expected = error(POD1.ip(), &as_sent, POD1.mac)
        .macs(ROUTER_MAC, POD1.mac)
        .ttl(63);
    check(
        &mut p,
        &t,
        Fixture {
            description: "a router's ICMP error about the masqueraded SYN reaches the pod",
            ingress: UPLINK,
            input: incoming.build(),
            expect: Expect::Tx(POD1.ifindex, expected.build()),
        },
    );
    assert_eq!(p.counters().ct_related, 1);
    let stale = error(
        IpAddr::V4(underlay(1)),
        &masqueraded(&syn, if port == 65535 { 61000 } else { port + 1 }).build(),
        UPLINK_MAC_A,
    );
    check(
        &mut p,
        &t,
        Fixture {
            description: "an error about a masquerade port no flow holds",
            ingress: UPLINK,
            input: stale.build(),
            expect: Expect::Drop(DropReason::MasqueradeNoMapping),
        },
    );
}

// ---- services from outside: NodePort in SNAT and DSR mode ---------------------------------

const NODE_PORT: u16 = 30080;

/// Node A's tables with a NodePort frontend (node A's address, 30080/tcp) in `mode`, its one
/// backend POD_D on node D (natively routed, so the frames stay plain on the underlay).
fn node_a_with_node_port(mode: LbMode) -> Tables {
    use dataplane::tables::services::FrontendKind;
    let mut t = node_a();
    Arc::make_mut(&mut t.services)
        .upsert(ServiceSpec {
            frontend: Frontend {
                addr: IpAddr::V4(underlay(1)),
                port: NODE_PORT,
                proto: 6,
            },
            backends: vec![Backend {
                addr: POD_D.ip(),
                port: 8080,
                weight: 1,
            }],
            mode,
            kind: FrontendKind::NodePort,
        })
        .unwrap();
    t
}

/// An external client's packet to node A's NodePort, arriving on the uplink from the gateway.
fn to_node_port(flags: u8) -> PacketBuilder {
    PacketBuilder::tcp(
        IpAddr::V4(WORLD_SERVER),
        45000,
        IpAddr::V4(underlay(1)),
        NODE_PORT,
        flags,
    )
    .macs(WORLD_GW_MAC, UPLINK_MAC_A)
}

#[test]
fn node_port_snat_mode_translates_the_client_and_brings_the_reply_back() {
    let t = node_a_with_node_port(LbMode::Snat);
    let mut p = masquerading_pipeline();
    let syn = to_node_port(TCP_SYN);
    let mut frames = [syn.frame()];
    assert_eq!(
        p.process(&t, UPLINK, &mut frames, 1_000_000_000)[0],
        Verdict::Tx { ifindex: UPLINK }
    );
    let port = l4_sport(frames[0].data());
    assert!((61000..=65535).contains(&port), "port {port}");
    let mut to_backend = syn
        .clone()
        .macs(UPLINK_MAC_A, UPLINK_MAC_D)
        .ttl(syn.ttl - 1);
    to_backend.src = IpAddr::V4(underlay(1));
    to_backend.dst = POD_D.ip();
    set_l4_ports(&mut to_backend, Some(port), Some(8080));
    assert_eq!(
        hex(frames[0].data()),
        hex(&to_backend.build()),
        "the SYN leaves for node D from node A's address and a masquerade port"
    );
    // The backend answers node A; the reply leaves for the client from the NodePort.
    let syn_ack = PacketBuilder::tcp(POD_D.ip(), 8080, IpAddr::V4(underlay(1)), port, TCP_SYN_ACK)
        .macs(UPLINK_MAC_D, UPLINK_MAC_A);
    let mut to_client = syn_ack
        .clone()
        .macs(UPLINK_MAC_A, WORLD_GW_MAC)
        .ttl(syn_ack.ttl - 1);
    to_client.src = IpAddr::V4(underlay(1));
    to_client.dst = IpAddr::V4(WORLD_SERVER);
    set_l4_ports(&mut to_client, Some(NODE_PORT), Some(45000));
    check(
        &mut p,
        &t,
        Fixture {
            description: "the backend's SYN-ACK goes back out to the client from the NodePort",
            ingress: UPLINK,
            input: syn_ack.build(),
            expect: Expect::Tx(UPLINK, to_client.build()),
        },
    );
    let ack = to_node_port(TCP_ACK);
    let mut ack_out = ack
        .clone()
        .macs(UPLINK_MAC_A, UPLINK_MAC_D)
        .ttl(ack.ttl - 1);
    ack_out.src = IpAddr::V4(underlay(1));
    ack_out.dst = POD_D.ip();
    set_l4_ports(&mut ack_out, Some(port), Some(8080));
    check(
        &mut p,
        &t,
        Fixture {
            description: "the client's ACK keeps the flow's port",
            ingress: UPLINK,
            input: ack.build(),
            expect: Expect::Tx(UPLINK, ack_out.build()),
        },
    );
    let c = p.counters();
    assert_eq!(c.masquerade_ports_allocated, 1);
    assert_eq!((c.masquerade_translated, c.masquerade_reversed), (2, 1));
    assert_eq!((c.dnat, c.reverse_nat, c.dsr_option_written), (2, 1, 0));
}

#[test]
fn node_port_dsr_mode_keeps_the_client_and_writes_the_option() {
    let t = node_a_with_node_port(LbMode::Dsr);
    let mut p = masquerading_pipeline();
    let syn = to_node_port(TCP_SYN);
    let mut frames = [syn.frame()];
    assert_eq!(
        p.process(&t, UPLINK, &mut frames, 1_000_000_000)[0],
        Verdict::Tx { ifindex: UPLINK }
    );
    let mut to_backend = syn
        .clone()
        .macs(UPLINK_MAC_A, UPLINK_MAC_D)
        .ttl(syn.ttl - 1)
        .ipv4_options(&dsr_ipv4_option(underlay(1), NODE_PORT));
    to_backend.dst = POD_D.ip();
    set_l4_ports(&mut to_backend, None, Some(8080));
    assert_eq!(
        hex(frames[0].data()),
        hex(&to_backend.build()),
        "the client's own address, the frontend in the DSR option"
    );
    let c = p.counters();
    assert_eq!((c.dsr_option_written, c.masquerade_translated), (1, 0));
}

/// On the backend's node: a client that reuses its source port towards the same backend
/// through another frontend (a NodePort, then an external IP) while the first flow's entry is
/// closing gets its replies from the new frontend, not the old one.
#[test]
fn dsr_reply_comes_from_the_frontend_of_the_current_flow() {
    let d = node_tables(4, UPLINK_MAC_D, &[&POD_D]);
    let mut p = pipeline();
    let from_a = |frontend: Ipv4Addr, port: u16, flags: u8| {
        let mut b = PacketBuilder::tcp(IpAddr::V4(CLIENT_WORLD), 40000, POD_D.ip(), 8080, flags)
            .macs(UPLINK_MAC_A, UPLINK_MAC_D)
            .ipv4_options(&dsr_ipv4_option(frontend, port));
        b.ttl = 63;
        b.build()
    };
    let reply_source = |p: &mut Pipeline| {
        let reply = from_pod(&POD_D, IpAddr::V4(CLIENT_WORLD), 8080, 40000, TCP_SYN_ACK);
        let mut frames = [reply.frame()];
        assert_eq!(
            p.process(&d, POD_D.ifindex, &mut frames, 1_000_000_000)[0],
            Verdict::Tx { ifindex: UPLINK }
        );
        let out = frames[0].data();
        let src = Ipv4Addr::new(out[26], out[27], out[28], out[29]);
        (src, u16::from_be_bytes([out[34], out[35]]))
    };
    let (first, second) = (underlay(1), Ipv4Addr::new(203, 0, 113, 7));
    for (frame, what) in [
        (from_a(first, 30080, TCP_SYN), "SYN through the NodePort"),
        (from_a(first, 30080, TCP_RST), "the first flow is reset"),
        (from_a(second, 80, TCP_SYN), "SYN through the external IP"),
    ] {
        let mut frames = [testutil::frame(&frame)];
        let verdict = p.process(&d, UPLINK, &mut frames, 1_000_000_000)[0];
        assert_eq!(
            verdict,
            Verdict::Tx {
                ifindex: POD_D.ifindex
            },
            "{what}"
        );
    }
    assert_eq!(
        reply_source(&mut p),
        (second, 80),
        "from the external IP, port 80"
    );
}

// ---- many workers: a flow is processed by its owner, whichever worker's queue received it ----
//
// Each worker is what `io::Worker` is around its pipeline: a `Pipeline` (its own conntrack and
// masquerade share) and a `Handoff`. A frame "arrives on worker w's queue": w dispatches it,
// and a frame w does not own is taken over by its owner from the ring and processed there.

mod many_workers {
    use super::*;
    use dataplane::pipeline::flow_owner::FlowOwner;
    use dataplane::pipeline::handoff::{mesh, Dispatch, Handoff};
    use dataplane::pipeline::MasqueradeConfig;
    use dataplane::tables::snat::DEFAULT_PORTS;

    pub(super) struct Workers {
        pub pipelines: Vec<Pipeline>,
        pub handoffs: Vec<Handoff>,
    }

    /// `n` workers; with `masquerade`, each allocates from its own share of the default range.
    pub(super) fn workers(n: usize, masquerade: bool) -> Workers {
        let nat = masquerade.then_some(DEFAULT_PORTS);
        let owner = FlowOwner::new(n, nat);
        let pipelines = (0..n)
            .map(|i| {
                let masquerade = nat.map(|ports| MasqueradeConfig {
                    ports,
                    worker_ports: ports.share(i, n).unwrap(),
                });
                Pipeline::new(PipelineConfig {
                    masquerade,
                    ..PipelineConfig::default()
                })
                .unwrap()
            })
            .collect();
        let handoffs = mesh(n, 64, 2048)
            .into_iter()
            .map(|links| Handoff::new(owner, links))
            .collect();
        Workers {
            pipelines,
            handoffs,
        }
    }

    impl Workers {
        /// `frame` arrives on worker `w`'s queue of `ingress`: the worker that processed it,
        /// its verdict and its bytes after the pipeline.
        pub fn receive(
            &mut self,
            t: &Tables,
            w: usize,
            ingress: u32,
            frame: &[u8],
        ) -> (usize, Verdict, Vec<u8>) {
            match self.handoffs[w].dispatch(t, ingress, frame) {
                Dispatch::Keep => self.run(t, w, ingress, frame),
                Dispatch::HandedOff => {
                    for o in (0..self.handoffs.len()).filter(|&o| o != w) {
                        let mut got = None;
                        self.handoffs[o].take_over(1, |i, b| got = Some((i, b.to_vec())));
                        if let Some((i, bytes)) = got {
                            assert_eq!(i, ingress, "the ring keeps the ingress interface");
                            return self.run(t, o, i, &bytes);
                        }
                    }
                    panic!("a handed-off frame reached no worker");
                }
                Dispatch::Dropped => panic!("a 64-slot ring cannot be full here"),
            }
        }

        fn run(
            &mut self,
            t: &Tables,
            w: usize,
            ingress: u32,
            frame: &[u8],
        ) -> (usize, Verdict, Vec<u8>) {
            let mut frames = [testutil::frame(frame)];
            let verdict = self.pipelines[w].process(t, ingress, &mut frames, 1_000_000_000)[0];
            (w, verdict, frames[0].data().to_vec())
        }

        pub fn sum(&self, f: impl Fn(&dataplane::pipeline::Counters) -> u64) -> u64 {
            self.pipelines.iter().map(|p| f(p.counters())).sum()
        }

        pub fn handed_off(&self) -> u64 {
            self.handoffs.iter().map(|h| h.counters.handed_off).sum()
        }
    }
}

use many_workers::workers;

/// 64 flows, each SYN on one worker's queue and its SYN-ACK on the other's: every reply passes
/// as established on the flow's owner; a new flow the other way is still denied.
#[test]
fn two_workers_a_reply_on_the_other_workers_queue_passes_as_established() {
    let mut t = node_a();
    allow_ingress(&mut t, &POD2, ID_CLIENT, 80);
    enforce_ingress(&mut t, &POD1); // pod1 admits no new flow at all
    let mut w = workers(2, false);
    for sport in 40000..40064u16 {
        let first = usize::from(sport % 2);
        let syn = from_pod(&POD1, POD2.ip(), sport, 80, TCP_SYN);
        let (owner, verdict, out) = w.receive(&t, first, POD1.ifindex, &syn.build());
        assert_eq!(
            verdict,
            Verdict::Tx {
                ifindex: POD2.ifindex
            },
            "SYN {sport}"
        );
        assert_eq!(hex(&out), hex(&delivered(&syn, &POD2).build()));
        let syn_ack = from_pod(&POD2, POD1.ip(), 80, sport, TCP_SYN_ACK);
        let (replier, verdict, out) = w.receive(&t, 1 - first, POD2.ifindex, &syn_ack.build());
        assert_eq!(
            replier, owner,
            "both directions on the flow's owner ({sport})"
        );
        assert_eq!(
            verdict,
            Verdict::Tx {
                ifindex: POD1.ifindex
            },
            "SYN-ACK {sport}"
        );
        assert_eq!(hex(&out), hex(&delivered(&syn_ack, &POD1).build()));
        let denied = from_pod(&POD2, POD1.ip(), sport, 80, TCP_SYN);
        let (_, verdict, _) = w.receive(&t, first, POD2.ifindex, &denied.build());
        assert_eq!(
            verdict,
            Verdict::Drop(DropReason::PolicyDeniedIngress),
            "{sport}"
        );
    }
    assert_eq!(
        w.sum(|c| c.ct_established),
        64,
        "every reply found its flow"
    );
    assert!(
        w.handed_off() >= 32,
        "half the frames arrived on the other worker"
    );
    assert!(
        w.pipelines.iter().all(|p| p.conntrack().len() >= 10),
        "both workers own flows"
    );
}

/// Masquerade with two workers: each allocates from its share; the world's reply, arriving on
/// either worker's uplink queue, is reverse-translated by the flow's owner.
#[test]
fn two_workers_a_masqueraded_reply_is_reverse_translated_whichever_worker_receives_it() {
    let t = node_a();
    let mut w = workers(2, true);
    for sport in 40000..40032u16 {
        let first = usize::from(sport % 2);
        let syn = from_pod(&POD1, IpAddr::V4(WORLD_SERVER), sport, 80, TCP_SYN);
        let (owner, verdict, out) = w.receive(&t, first, POD1.ifindex, &syn.build());
        assert_eq!(verdict, Verdict::Tx { ifindex: UPLINK });
        let port = l4_sport(&out);
        assert!(
            DEFAULT_PORTS_SHARE(owner).contains(port),
            "port {port} from worker {owner}'s share"
        );
        let syn_ack = world_reply(TCP_SYN_ACK, port);
        let mut to_pod = syn_ack
            .clone()
            .macs(ROUTER_MAC, POD1.mac)
            .ttl(syn_ack.ttl - 1);
        to_pod.dst = POD1.ip();
        set_l4_ports(&mut to_pod, None, Some(sport));
        let (replier, verdict, out) = w.receive(&t, 1 - first, UPLINK, &syn_ack.build());
        assert_eq!(replier, owner, "the port's share names the owner");
        assert_eq!(
            verdict,
            Verdict::Tx {
                ifindex: POD1.ifindex
            }
        );
        assert_eq!(hex(&out), hex(&to_pod.build()), "un-NATed to the pod");
    }
    assert_eq!(w.sum(|c| c.masquerade_reversed), 32);
    assert!(w.handed_off() >= 16);
}

#[allow(non_snake_case)]
fn DEFAULT_PORTS_SHARE(worker: usize) -> dataplane::tables::snat::PortRange {
    dataplane::tables::snat::DEFAULT_PORTS
        .share(worker, 2)
        .unwrap()
}

/// A service flow with two workers: the client's packets to the VIP on one worker, the
/// backend's replies on the other: the owner DNATs and reverse-NATs both.
#[test]
fn two_workers_a_service_reply_is_reverse_natted_whichever_worker_receives_it() {
    let t = node_a();
    let mut w = workers(2, false);
    for sport in 40000..40032u16 {
        let first = usize::from(sport % 2);
        let to_vip = from_pod(&POD1, IpAddr::V4(VIP_SNAT), sport, 80, TCP_SYN);
        let (owner, verdict, _) = w.receive(&t, first, POD1.ifindex, &to_vip.build());
        assert_eq!(
            verdict,
            Verdict::Tx {
                ifindex: POD2.ifindex
            }
        );
        let reply = from_pod(&POD2, POD1.ip(), 8080, sport, TCP_SYN_ACK);
        let mut from_vip = delivered(&reply, &POD1);
        from_vip.src = IpAddr::V4(VIP_SNAT);
        set_l4_ports(&mut from_vip, Some(80), None);
        let (replier, verdict, out) = w.receive(&t, 1 - first, POD2.ifindex, &reply.build());
        assert_eq!(replier, owner);
        assert_eq!(
            verdict,
            Verdict::Tx {
                ifindex: POD1.ifindex
            }
        );
        assert_eq!(hex(&out), hex(&from_vip.build()), "from VIP:80");
    }
    assert_eq!(w.sum(|c| c.reverse_nat), 32);
}

/// DSR on the backend's node with two workers: the request (option consumed) on one worker, the
/// backend's replies on the other: they leave from the VIP, straight to the client.
#[test]
fn two_workers_a_dsr_reply_leaves_from_the_vip_whichever_worker_receives_it() {
    let d = node_tables(4, UPLINK_MAC_D, &[&POD_D]);
    let mut w = workers(2, false);
    for sport in 40000..40032u16 {
        let first = usize::from(sport % 2);
        let mut to_d =
            PacketBuilder::tcp(IpAddr::V4(CLIENT_WORLD), sport, POD_D.ip(), 8080, TCP_SYN)
                .macs(UPLINK_MAC_A, UPLINK_MAC_D)
                .ttl(63);
        to_d.ipv4_options = dsr_ipv4_option(VIP_DSR_NATIVE, 80);
        let (owner, verdict, _) = w.receive(&d, first, UPLINK, &to_d.build());
        assert_eq!(
            verdict,
            Verdict::Tx {
                ifindex: POD_D.ifindex
            }
        );
        let reply = from_pod(&POD_D, IpAddr::V4(CLIENT_WORLD), 8080, sport, TCP_SYN_ACK);
        let mut direct = reply.clone().macs(UPLINK_MAC_D, WORLD_GW_MAC).ttl(63);
        direct.src = IpAddr::V4(VIP_DSR_NATIVE);
        set_l4_ports(&mut direct, Some(80), None);
        let (replier, verdict, out) = w.receive(&d, 1 - first, POD_D.ifindex, &reply.build());
        assert_eq!(replier, owner);
        assert_eq!(verdict, Verdict::Tx { ifindex: UPLINK });
        assert_eq!(hex(&out), hex(&direct.build()), "from VIP:80");
    }
    assert_eq!(w.sum(|c| c.dsr_option_consumed), 32);
}
