//! A node's worth of traffic through the pipeline, with a live policy change.
//!
//! Builds one node with three pods (client, server, db), a remote node reached over VXLAN and
//! a service VIP, then sends frames the way the pods' kernels would and prints each verdict:
//! an allowed connection, the same connection denied after an ingress policy lands, the reply
//! of an allowed flow, a service DNAT, an encapsulated packet to another node, a spoofed frame
//! and an ARP request for the gateway. Ends with the drop counters by reason.
//!
//! Run: `cargo run --release -p dataplane --example node_demo`.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use dataplane::pipeline::{Pipeline, PipelineConfig, Verdict};
use dataplane::tables::endpoints::{EndpointId, EndpointSpec};
use dataplane::tables::ipcache::IpCacheEntry;
use dataplane::tables::maglev::DEFAULT_M;
use dataplane::tables::nodes::{Encap, Node};
use dataplane::tables::policy::{PolicyEntry, PolicyKey, PortRange};
use dataplane::tables::services::{Backend, Frontend, LbMode, ServiceSpec, Services};
use dataplane::tables::{LocalNode, Tables};
use dataplane::testutil::{self, PacketBuilder, TCP_ACK, TCP_SYN, TCP_SYN_ACK};
use dataplane::{Identity, MacAddr, Prefix};

const UPLINK: u32 = 100;
const ROUTER_MAC: MacAddr = MacAddr([0x02, 0, 0, 0, 0xff, 0x01]);

struct Pod {
    name: &'static str,
    ifindex: u32,
    mac: MacAddr,
    ip: Ipv4Addr,
    identity: Identity,
}

const CLIENT: Pod = pod("client", 11, 11, 1001);
const SERVER: Pod = pod("server", 12, 12, 1002);
const DB: Pod = pod("db", 13, 13, 1003);

const fn pod(name: &'static str, ifindex: u32, host: u8, identity: u32) -> Pod {
    Pod {
        name,
        ifindex,
        mac: MacAddr([0x02, 0, 0, 0, 0, host]),
        ip: Ipv4Addr::new(10, 1, 0, host),
        identity: Identity(identity),
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut tables = node_tables()?;
    let mut pipeline = Pipeline::new(PipelineConfig::default())?;
    let mut now = 1_000_000_000u64;
    let mut send = |tables: &Tables, what: &str, from: &Pod, frame: Vec<u8>| {
        now += 1_000_000;
        let mut frames = [testutil::frame(&frame)];
        let verdict = pipeline.process(tables, from.ifindex, &mut frames, now)[0];
        println!("  {:<58} -> {}", what, describe(verdict));
    };

    println!("node-a: pods client 10.1.0.11, server 10.1.0.12, db 10.1.0.13; node-b over VXLAN");
    println!("\n1. no policy: everything is allowed");
    send(
        &tables,
        "client -> server:80 SYN",
        &CLIENT,
        tcp(&CLIENT, SERVER.ip, 40000, 80, TCP_SYN),
    );
    send(
        &tables,
        "server -> client SYN-ACK (reply)",
        &SERVER,
        tcp(&SERVER, CLIENT.ip, 80, 40000, TCP_SYN_ACK),
    );
    send(
        &tables,
        "client -> server ACK (established)",
        &CLIENT,
        tcp(&CLIENT, SERVER.ip, 40000, 80, TCP_ACK),
    );

    println!("\n2. policy lands: server admits only db on TCP 80");
    let policy = Arc::make_mut(&mut tables.endpoints)
        .policy_mut(EndpointId(2))
        .ok_or("server endpoint missing")?;
    policy.ingress.enforced = true;
    policy.ingress.map.insert(
        PolicyKey::l4(DB.identity, 6, PortRange::single(80)),
        PolicyEntry::allow(1),
    )?;
    send(
        &tables,
        "client -> server:80 ACK (established flow keeps going)",
        &CLIENT,
        tcp(&CLIENT, SERVER.ip, 40000, 80, TCP_ACK),
    );
    send(
        &tables,
        "client -> server:80 SYN (new flow)",
        &CLIENT,
        tcp(&CLIENT, SERVER.ip, 40001, 80, TCP_SYN),
    );
    send(
        &tables,
        "db -> server:80 SYN",
        &DB,
        tcp(&DB, SERVER.ip, 40000, 80, TCP_SYN),
    );
    send(
        &tables,
        "db -> server:81 SYN",
        &DB,
        tcp(&DB, SERVER.ip, 40000, 81, TCP_SYN),
    );

    println!("\n3. service 10.96.0.10:80 -> db:5432, a remote pod, spoofing, ARP");
    send(
        &tables,
        "client -> 10.96.0.10:80 (DNAT to db:5432)",
        &CLIENT,
        tcp(&CLIENT, Ipv4Addr::new(10, 96, 0, 10), 40002, 80, TCP_SYN),
    );
    send(
        &tables,
        "client -> 10.2.0.21:443 on node-b (VXLAN, VNI = 1001)",
        &CLIENT,
        tcp(&CLIENT, Ipv4Addr::new(10, 2, 0, 21), 40003, 443, TCP_SYN),
    );
    let spoofed = PacketBuilder::tcp(IpAddr::V4(DB.ip), 1, IpAddr::V4(SERVER.ip), 80, TCP_SYN)
        .macs(CLIENT.mac, ROUTER_MAC)
        .build();
    send(
        &tables,
        "client sends with db's source IP",
        &CLIENT,
        spoofed,
    );
    let arp = testutil::arp_request(CLIENT.mac, CLIENT.ip, Ipv4Addr::new(10, 1, 0, 1));
    send(
        &tables,
        "client: who-has 10.1.0.1 (its gateway)?",
        &CLIENT,
        arp,
    );
    send(
        &tables,
        "a frame cut after 20 bytes",
        &CLIENT,
        tcp(&CLIENT, SERVER.ip, 1, 80, TCP_SYN)[..20].to_vec(),
    );

    let c = pipeline.counters();
    println!(
        "\ncounters: rx {} tx {} pass {} drop {} (conntrack: {} created, {} established hits)",
        c.rx_packets, c.tx_packets, c.pass_packets, c.drop_packets, c.ct_created, c.ct_established
    );
    println!("drops by reason:");
    for (reason, n) in c.nonzero_drops() {
        println!("  {:<28} {n}", reason.to_string());
    }
    Ok(())
}

fn tcp(from: &Pod, dst: Ipv4Addr, sport: u16, dport: u16, flags: u8) -> Vec<u8> {
    PacketBuilder::tcp(IpAddr::V4(from.ip), sport, IpAddr::V4(dst), dport, flags)
        .macs(from.mac, ROUTER_MAC)
        .build()
}

fn describe(v: Verdict) -> String {
    match v {
        Verdict::Tx { ifindex } if ifindex == UPLINK => "sent on the uplink".to_string(),
        Verdict::Tx { ifindex } => {
            let pod = [&CLIENT, &SERVER, &DB]
                .into_iter()
                .find(|p| p.ifindex == ifindex);
            format!("sent to {}", pod.map_or("?", |p| p.name))
        }
        Verdict::Pass => "passed to the kernel".to_string(),
        Verdict::Drop(reason) => format!("DROPPED: {reason}"),
        Verdict::Pending => "undecided (bug)".to_string(),
    }
}

fn node_tables() -> Result<Tables, Box<dyn std::error::Error>> {
    let node = LocalNode {
        name: "node-a".into(),
        underlay_ipv4: Some(Ipv4Addr::new(192, 168, 0, 1)),
        router_mac: ROUTER_MAC,
        gateway_ipv4: Some(Ipv4Addr::new(10, 1, 0, 1)),
        uplink_ifindex: Some(UPLINK),
        uplink_mac: MacAddr([0x02, 0, 0, 0, 0xaa, 0x01]),
        ..LocalNode::default()
    };
    let mut services = Services::new(DEFAULT_M, 42)?;
    services.upsert(ServiceSpec {
        frontend: Frontend {
            addr: IpAddr::V4(Ipv4Addr::new(10, 96, 0, 10)),
            port: 80,
            proto: 6,
        },
        backends: vec![Backend {
            addr: IpAddr::V4(DB.ip),
            port: 5432,
            weight: 1,
        }],
        mode: LbMode::Snat,
        kind: Default::default(),
    })?;
    let mut t = Tables::empty(node, services);
    let (endpoints, ipcache) = (
        Arc::make_mut(&mut t.endpoints),
        Arc::make_mut(&mut t.ipcache),
    );
    for (id, p) in [&CLIENT, &SERVER, &DB].into_iter().enumerate() {
        endpoints.upsert(EndpointSpec {
            id: EndpointId(id as u32 + 1),
            ifindex: p.ifindex,
            mac: p.mac,
            ipv4: Some(p.ip),
            ipv6: None,
            identity: p.identity,
        })?;
        ipcache.upsert(
            Prefix::host(IpAddr::V4(p.ip)),
            IpCacheEntry::local(p.identity),
        );
    }
    let node_b = IpAddr::V4(Ipv4Addr::new(192, 168, 0, 2));
    ipcache.upsert(
        "10.2.0.21/32".parse()?,
        IpCacheEntry::remote(Identity(2001), node_b),
    );
    Arc::make_mut(&mut t.nodes).upsert(Node {
        name: "node-b".into(),
        underlay: node_b,
        pod_cidrs: vec!["10.2.0.0/24".parse()?],
        encap: Encap::Vxlan,
    })?;
    // In the daemon the next-hop resolver learns this from the kernel's neighbour table.
    Arc::make_mut(&mut t.next_hops).set_peer(node_b, Some(MacAddr([0x02, 0, 0, 0, 0xbb, 0x01])));
    Ok(t)
}
