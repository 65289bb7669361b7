//! Writes the seed corpora, `corpus/seed-wire_parsers/` and `corpus/seed-pipeline/`, from real
//! frames built with `dataplane::testutil` for the topology of `flagella_fuzz::pipeline`.
//!
//! Ignored by default (it rewrites committed files); regenerate with
//! `cargo test --manifest-path fuzz/Cargo.toml --test make_seeds -- --ignored`.
//! The output is deterministic, so an unchanged generator leaves `git status` clean.

#![allow(clippy::unwrap_used)]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use dataplane::testutil::{
    arp_request, PacketBuilder, TunnelBuilder, L4, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN, TCP_SYN_ACK,
};
use dataplane::wire::icmpv6::{Icmpv6Packet, Repr as Icmpv6Repr};
use dataplane::wire::{checksum, geneve, ipv4};
use dataplane::MacAddr;
use flagella_fuzz::pipeline::{
    encode_batch, gateway_v4, underlay, Pod, POD1, POD2, POD3, POD_B, POD_C, POD_D, ROUTER_MAC,
    UPLINK_MAC, VIP6_SNAT, VIP_DSR_GENEVE, VIP_DSR_NATIVE, VIP_DSR_VXLAN, VIP_EMPTY, VIP_SNAT,
};
use flagella_fuzz::policy_oracle::WORLD_DNS;

/// Selector values (see `flagella_fuzz::pipeline::decode_batch`).
const FROM_POD1: u8 = 0;
const FROM_POD3: u8 = 1;
const FROM_UPLINK: u8 = 2;
const FROM_UNKNOWN: u8 = 3;
const COMPLETE_CHECKSUMS: u8 = 0x04;
const SMALL_HEADROOM: u8 = 0x08;
const NO_TAILROOM: u8 = 0x10;
const RAW_CHECKSUMS: u8 = 0x20;

fn v4(pod: Pod) -> IpAddr {
    IpAddr::V4(pod.v4)
}

fn v6(pod: Pod) -> IpAddr {
    IpAddr::V6(pod.v6)
}

/// A TCP packet as `from` (a local pod) sends it: its MAC to the router's.
fn tcp_from(from: Pod, dst: IpAddr, sport: u16, dport: u16, flags: u8) -> PacketBuilder {
    let src = if dst.is_ipv4() { v4(from) } else { v6(from) };
    PacketBuilder::tcp(src, sport, dst, dport, flags).macs(from.mac, ROUTER_MAC)
}

fn udp_from(from: Pod, dst: IpAddr, sport: u16, dport: u16) -> PacketBuilder {
    let src = if dst.is_ipv4() { v4(from) } else { v6(from) };
    PacketBuilder::udp(src, sport, dst, dport)
        .macs(from.mac, ROUTER_MAC)
        .payload(b"flagella")
}

/// A tunnel packet from node `n` to this node.
fn tunnel_from(n: u8, vni: u32, geneve_options: Option<Vec<u8>>) -> TunnelBuilder {
    TunnelBuilder {
        src_mac: MacAddr([0x02, 0, 0, 0, 0xaa + n, 0x01]),
        dst_mac: UPLINK_MAC,
        src: underlay(n),
        dst: underlay(1),
        sport: 50000 + u16::from(n),
        vni,
        geneve_options,
    }
}

/// A router on the world side of the uplink.
const WORLD_ROUTER: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);

/// An ICMPv4 Destination Unreachable (port) from `from` (arriving on the uplink) quoting
/// `quoted` (an IP packet).
fn icmp_unreachable(from: Ipv4Addr, to: IpAddr, quoted: &[u8]) -> Vec<u8> {
    let mut icmp = vec![3, 3, 0, 0, 0, 0, 0, 0];
    icmp.extend_from_slice(&quoted[..quoted.len().min(28)]);
    let c = checksum::checksum(&icmp);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    let world_gw = MacAddr([0x02, 0, 0, 0, 0xee, 0x01]);
    PacketBuilder::new(
        world_gw,
        UPLINK_MAC,
        IpAddr::V4(from),
        to,
        L4::Raw { proto: 1 },
    )
    .payload(&icmp)
    .build()
}

/// An ICMPv4 Destination Unreachable (port) that the local pod `from` sends to `to`, quoting
/// `quoted` (an Ethernet frame; its IP header and 8 transport bytes).
fn icmp_unreachable_from_pod(from: Pod, to: IpAddr, quoted: &[u8]) -> Vec<u8> {
    let mut icmp = vec![3, 3, 0, 0, 0, 0, 0, 0];
    icmp.extend_from_slice(&quoted[14..14 + 28]);
    let c = checksum::checksum(&icmp);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    PacketBuilder::new(from.mac, ROUTER_MAC, v4(from), to, L4::Raw { proto: 1 })
        .payload(&icmp)
        .build()
}

/// Issue 14, finding 1: `pod` queries the world's DNS server (allowed: POD1 has no policy,
/// POD3 may send DNS to the world prefix), then quotes the server's reply in ICMP errors
/// toward the server (related: the error goes back to the quoted sender), toward POD2 (a
/// neighbour whose ingress refuses it) and toward 8.8.8.8 (the world, which POD3's egress
/// refuses). The batch runs twice, so the second time the query's flow is tracked.
fn icmp_errors_quoting_own_dns(pod: Pod) -> Vec<Vec<u8>> {
    let dns = IpAddr::V4(WORLD_DNS);
    let query = udp_from(pod, dns, 40053, 53);
    let reply = PacketBuilder::udp(dns, 53, v4(pod), 40053).build();
    let world = IpAddr::V4(Ipv4Addr::new(8, 8, 8, 8));
    vec![
        query.build(),
        icmp_unreachable_from_pod(pod, dns, &reply),
        icmp_unreachable_from_pod(pod, v4(POD2), &reply),
        icmp_unreachable_from_pod(pod, world, &reply),
    ]
}

/// An ICMPv6 Neighbor Solicitation from `from` for `target`.
fn neighbor_solicit(from: Pod, target: Ipv6Addr) -> Vec<u8> {
    let repr = Icmpv6Repr::NeighborSolicit {
        target,
        lladdr: Some(from.mac),
    };
    let mut icmp = vec![0u8; repr.buffer_len()];
    // Solicited-node multicast: ff02::1:ff00:0/104 and the target's low 24 bits.
    let low = u128::from(target) & 0x00ff_ffff;
    let solicited = Ipv6Addr::from(0xff02_0000_0000_0000_0000_0001_ff00_0000 | low);
    repr.emit(
        &mut Icmpv6Packet::new_unchecked(&mut icmp[..]),
        from.v6,
        solicited,
    );
    PacketBuilder::new(
        from.mac,
        MacAddr([0x33, 0x33, 0xff, 0x01, 0, 1]),
        v6(from),
        IpAddr::V6(solicited),
        L4::Raw { proto: 58 },
    )
    .ttl(255)
    .payload(&icmp)
    .build()
}

/// `frame` with an 802.1Q tag (VLAN 42) after the MAC addresses.
fn vlan_tagged(frame: &[u8]) -> Vec<u8> {
    let mut out = frame[..12].to_vec();
    out.extend_from_slice(&[0x81, 0x00, 0x00, 42]);
    out.extend_from_slice(&frame[12..]);
    out
}

/// `frame` (Ethernet + IPv4) turned into a first fragment, checksum fixed.
fn first_fragment(frame: &[u8]) -> Vec<u8> {
    let mut out = frame.to_vec();
    out[14 + 6] = 0x20; // More Fragments, offset 0
    out[14 + 10..14 + 12].fill(0);
    let ihl = usize::from(out[14] & 0x0f) * 4;
    let c = checksum::checksum(&out[14..14 + ihl]);
    out[14 + 10..14 + 12].copy_from_slice(&c.to_be_bytes());
    out
}

/// `frame` (Ethernet + IPv4) with its IPv4 header checksum broken.
fn bad_ipv4_checksum(frame: &[u8]) -> Vec<u8> {
    let mut out = frame.to_vec();
    out[14 + 10] ^= 0x5a;
    out
}

/// An IPv6 UDP packet behind a Hop-by-Hop and a Destination Options header.
fn ipv6_with_extensions(from: Pod, to: Pod) -> Vec<u8> {
    let udp = udp_from(from, v6(to), 5353, 53).build();
    let udp_part = &udp[14 + 40..];
    let mut payload = vec![60, 0, 1, 4, 0, 0, 0, 0]; // Hop-by-Hop: PadN
    payload.extend_from_slice(&[17, 0, 1, 4, 0, 0, 0, 0]); // Destination Options: PadN
    payload.extend_from_slice(udp_part);
    PacketBuilder::new(from.mac, ROUTER_MAC, v6(from), v6(to), L4::Raw { proto: 0 })
        .payload(&payload)
        .build()
}

fn dsr_ipv4_option(vip: Ipv4Addr, port: u16) -> Vec<u8> {
    ipv4::DsrOption { addr: vip, port }.to_ipv4_bytes().to_vec()
}

fn dsr_geneve_options(vip: Ipv4Addr, port: u16) -> Vec<u8> {
    let mut area = vec![0u8; geneve::DSR_OPTION_LEN];
    geneve::DsrOption { addr: vip, port }
        .emit_geneve(&mut area, 0)
        .unwrap();
    area
}

/// Every seed: a name, the ingress selector, and the frames of the batch.
fn seeds() -> Vec<(&'static str, u8, Vec<Vec<u8>>)> {
    // POD2 admits the client (POD1) on 8080 only.
    let syn = tcp_from(POD1, v4(POD2), 40000, 8080, TCP_SYN);
    let ack = tcp_from(POD1, v4(POD2), 40000, 8080, TCP_ACK).payload(b"GET / HTTP/1.1\r\n\r\n");
    let syn_ack = tcp_from(POD2, v4(POD1), 8080, 40000, TCP_SYN_ACK);
    let inner_b = PacketBuilder::tcp(v4(POD_B), 41000, v4(POD1), 8080, TCP_SYN)
        .macs(MacAddr([0x02, 0, 0, 0, 2, 21]), ROUTER_MAC)
        .build();
    let inner_c = PacketBuilder::tcp(v4(POD_C), 42000, v4(POD1), 8080, TCP_SYN)
        .macs(MacAddr([0x02, 0, 0, 0, 3, 31]), ROUTER_MAC)
        .build();
    let native_dsr = PacketBuilder::tcp(v4(POD_D), 43000, v4(POD1), 8080, TCP_SYN)
        .macs(MacAddr([0x02, 0, 0, 0, 0xae, 0x01]), UPLINK_MAC)
        .ipv4_options(&dsr_ipv4_option(VIP_SNAT, 80))
        .build();
    let to_world = udp_from(POD1, IpAddr::V4(Ipv4Addr::new(8, 8, 8, 8)), 40001, 53);
    let quoted = &to_world.build()[14..];
    // Masquerade: a reply to the node's address on a masquerade port, and a router's error
    // about a packet that left from one.
    let masquerade_reply = PacketBuilder::tcp(
        IpAddr::V4(WORLD_ROUTER),
        443,
        IpAddr::V4(underlay(1)),
        61000,
        TCP_SYN_ACK,
    )
    .macs(MacAddr([0x02, 0, 0, 0, 0xee, 0x01]), UPLINK_MAC);
    let masquerade_quoted = PacketBuilder::tcp(
        IpAddr::V4(underlay(1)),
        61000,
        IpAddr::V4(WORLD_ROUTER),
        443,
        TCP_SYN,
    );
    vec![
        ("tcp4-pod-to-pod-syn", FROM_POD1, vec![syn.build()]),
        (
            "tcp4-syn-then-data",
            FROM_POD1,
            vec![syn.build(), ack.build()],
        ),
        ("tcp4-reply-on-wrong-port", FROM_POD1, vec![syn_ack.build()]),
        (
            "tcp4-fin",
            FROM_POD1,
            vec![tcp_from(POD1, v4(POD2), 40000, 8080, TCP_FIN | TCP_ACK).build()],
        ),
        (
            "tcp4-denied-by-default",
            FROM_POD1,
            vec![tcp_from(POD1, v4(POD2), 40012, 80, TCP_SYN).build()],
        ),
        (
            "tcp6-pod-to-pod-syn",
            FROM_POD1,
            vec![tcp_from(POD1, v6(POD2), 40002, 8080, TCP_SYN).build()],
        ),
        (
            "tcp4-service-snat",
            FROM_POD1,
            vec![tcp_from(POD1, IpAddr::V4(VIP_SNAT), 40003, 80, TCP_SYN).build()],
        ),
        (
            "tcp6-service-snat",
            FROM_POD1 | COMPLETE_CHECKSUMS,
            vec![tcp_from(POD1, IpAddr::V6(VIP6_SNAT), 40004, 80, TCP_SYN).build()],
        ),
        (
            "tcp4-service-no-backend",
            FROM_POD1,
            vec![tcp_from(POD1, IpAddr::V4(VIP_EMPTY), 40005, 80, TCP_SYN).build()],
        ),
        (
            "tcp4-service-dsr-vxlan",
            FROM_POD1,
            vec![tcp_from(POD1, IpAddr::V4(VIP_DSR_VXLAN), 40006, 80, TCP_SYN).build()],
        ),
        (
            "tcp4-service-dsr-geneve-small-headroom",
            FROM_POD1 | SMALL_HEADROOM,
            vec![tcp_from(POD1, IpAddr::V4(VIP_DSR_GENEVE), 40007, 80, TCP_SYN).build()],
        ),
        (
            "tcp4-service-dsr-native-no-tailroom",
            FROM_POD1 | NO_TAILROOM,
            vec![tcp_from(POD1, IpAddr::V4(VIP_DSR_NATIVE), 40008, 80, TCP_SYN).build()],
        ),
        (
            "tcp4-denied-port-22",
            FROM_POD3,
            vec![tcp_from(POD3, v4(POD2), 40009, 22, TCP_SYN).build()],
        ),
        (
            "tcp4-egress-denied",
            FROM_POD3,
            vec![tcp_from(POD3, v4(POD1), 40010, 80, TCP_SYN).build()],
        ),
        (
            "udp4-to-remote-vxlan",
            FROM_POD1 | COMPLETE_CHECKSUMS,
            vec![udp_from(POD1, v4(POD_B), 40011, 53).build()],
        ),
        ("udp4-to-world", FROM_POD1, vec![to_world.build()]),
        (
            "icmp4-echo-to-geneve-node",
            FROM_POD1,
            vec![PacketBuilder::echo(v4(POD1), v4(POD_C), true, 7)
                .macs(POD1.mac, ROUTER_MAC)
                .payload(b"ping")
                .build()],
        ),
        (
            "icmp4-echo-to-native-node",
            FROM_POD1,
            vec![PacketBuilder::echo(v4(POD1), v4(POD_D), true, 8)
                .macs(POD1.mac, ROUTER_MAC)
                .build()],
        ),
        (
            "icmp6-echo-pod-to-pod",
            FROM_POD1,
            vec![PacketBuilder::echo(v6(POD1), v6(POD3), true, 9)
                .macs(POD1.mac, ROUTER_MAC)
                .build()],
        ),
        (
            "icmp4-unreachable-from-world",
            FROM_UPLINK,
            vec![icmp_unreachable(WORLD_ROUTER, v4(POD1), quoted)],
        ),
        (
            "tcp4-world-to-masquerade-port",
            FROM_UPLINK,
            vec![masquerade_reply.build()],
        ),
        (
            "icmp4-unreachable-about-masquerade-port",
            FROM_UPLINK,
            vec![icmp_unreachable(
                WORLD_ROUTER,
                IpAddr::V4(underlay(1)),
                &masquerade_quoted.build()[14..],
            )],
        ),
        (
            "arp-request-gateway",
            FROM_POD1,
            vec![arp_request(POD1.mac, POD1.v4, gateway_v4())],
        ),
        (
            "icmp6-neighbor-solicit-gateway",
            FROM_POD1,
            vec![neighbor_solicit(
                POD1,
                Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 1, 1),
            )],
        ),
        (
            "ipv6-extension-headers",
            FROM_POD1,
            vec![ipv6_with_extensions(POD1, POD2)],
        ),
        (
            "ipv4-first-fragment",
            FROM_POD1,
            vec![first_fragment(&syn.build())],
        ),
        (
            "ipv4-bad-header-checksum",
            FROM_POD1 | RAW_CHECKSUMS,
            vec![bad_ipv4_checksum(&syn.build())],
        ),
        (
            "vlan-tagged-tcp4",
            FROM_POD1,
            vec![vlan_tagged(&syn.build())],
        ),
        (
            "uplink-vxlan-from-node-b",
            FROM_UPLINK,
            vec![tunnel_from(2, 2001, None).wrap(&inner_b)],
        ),
        (
            "uplink-geneve-dsr-from-node-c",
            FROM_UPLINK,
            vec![tunnel_from(3, 2001, Some(dsr_geneve_options(VIP_SNAT, 80))).wrap(&inner_c)],
        ),
        ("uplink-native-dsr-option", FROM_UPLINK, vec![native_dsr]),
        (
            "uplink-reply-from-world",
            FROM_UPLINK,
            vec![
                PacketBuilder::udp(IpAddr::V4(Ipv4Addr::new(8, 8, 8, 8)), 53, v4(POD1), 40001)
                    .macs(MacAddr([0x02, 0, 0, 0, 0xee, 0x01]), UPLINK_MAC)
                    .build(),
            ],
        ),
        (
            "uplink-ssh-to-this-node",
            FROM_UPLINK,
            vec![PacketBuilder::tcp(
                IpAddr::V4(underlay(2)),
                50022,
                IpAddr::V4(underlay(1)),
                22,
                TCP_SYN,
            )
            .macs(MacAddr([0x02, 0, 0, 0, 0xac, 0x01]), UPLINK_MAC)
            .build()],
        ),
        ("unknown-interface", FROM_UNKNOWN, vec![syn.build()]),
        (
            "icmp-error-pod1-quotes-own-dns-to-neighbour-and-world",
            FROM_POD1,
            icmp_errors_quoting_own_dns(POD1),
        ),
        (
            "icmp-error-pod3-quotes-own-dns-to-neighbour-and-world",
            FROM_POD3,
            icmp_errors_quoting_own_dns(POD3),
        ),
        (
            "icmp-error-pod3-about-its-flow-to-server",
            FROM_POD3,
            vec![
                tcp_from(POD3, v4(POD2), 40080, 80, TCP_SYN).build(),
                icmp_unreachable_from_pod(
                    POD3,
                    v4(POD2),
                    &tcp_from(POD2, v4(POD3), 80, 40080, TCP_SYN_ACK).build(),
                ),
            ],
        ),
        // Conntrack's sequence check: POD3's SYN (sequence 1000) opens a flow in the first
        // round; in the second, a RST far from the expected number is dropped
        // (`tcp_rst_out_of_window`), one in the window but not exact passes and closes
        // nothing, and one at 1001 closes the flow.
        (
            "tcp-rst-out-of-window-in-window-and-exact",
            FROM_POD3,
            vec![
                tcp_from(POD3, v4(POD2), 40081, 80, TCP_SYN).build(),
                tcp_from(POD3, v4(POD2), 40081, 80, TCP_RST)
                    .seq_ack(0x8000_0000, 0)
                    .build(),
                tcp_from(POD3, v4(POD2), 40081, 80, TCP_RST)
                    .seq_ack(1_500, 0)
                    .build(),
                tcp_from(POD3, v4(POD2), 40081, 80, TCP_RST)
                    .seq_ack(1_001, 0)
                    .build(),
            ],
        ),
    ]
}

/// Request lines for `control_requests`: each documented op (docs/control-socket.md), a
/// state built up and torn down, and refusals (a bad field, a batch failing at its last item).
fn control_seeds() -> Vec<(&'static str, Vec<&'static str>)> {
    const LOCAL: &str = r#"{"op":"local_node.set","name":"node-1","underlay_ipv4":"192.168.0.1","router_mac":"02:00:00:00:ff:01","gateway_ipv4":"10.1.0.1","gateway_ipv6":null,"uplink_ifindex":2,"uplink_mac":"02:00:00:00:aa:01","uplink_mtu":1500,"default_encap":"vxlan"}"#;
    const NODE: &str = r#"{"op":"node.upsert","name":"node-2","underlay":"192.168.0.2","pod_cidrs":["10.2.0.0/24"],"encap":"vxlan"}"#;
    const EP1: &str = r#"{"op":"endpoint.upsert","id":1,"ifindex":11,"mac":"02:00:00:00:00:01","ipv4":"10.1.0.11","ipv6":"fd00::1:11","identity":1001}"#;
    const EP2: &str = r#"{"op":"endpoint.upsert","id":2,"ifindex":12,"mac":"02:00:00:00:00:02","ipv4":"10.1.0.12","identity":1002}"#;
    const IPC: &str = r#"{"op":"ipcache.upsert","prefix":"10.2.0.21/32","identity":2001,"tunnel_endpoint":"192.168.0.2"}"#;
    const UPDATE: &str = r#"{"op":"policy.update","endpoint":2,"direction":"ingress","enforced":true,"add":[{"identity":1003,"proto":"tcp","port":80,"action":"allow","cookie":7},{"identity":0,"proto":"tcp","port":8000,"end_port":8080,"action":"allow"},{"identity":1005,"action":"deny"}],"delete":[{"identity":1001,"proto":"tcp","port":80}]}"#;
    const REPLACE: &str = r#"{"op":"policy.replace","endpoint":2,"direction":"egress","enforced":true,"entries":[{"identity":1002,"proto":"udp","port":53,"action":"allow"}]}"#;
    const SVC: &str = r#"{"op":"service.upsert","frontend":{"addr":"10.96.0.10","port":80,"proto":"tcp"},"backends":[{"addr":"10.1.0.12","port":8080,"weight":1},{"addr":"10.2.0.21","port":8080}],"mode":"snat"}"#;
    const SVC_DSR: &str = r#"{"op":"service.upsert","frontend":{"addr":"10.96.0.20","port":443,"proto":"tcp"},"backends":[{"addr":"10.2.0.21","port":8443}],"mode":"dsr","kind":"external_ip"}"#;
    const BATCH: &str = r#"{"op":"batch","changes":[{"op":"endpoint.upsert","id":3,"ifindex":13,"mac":"02:00:00:00:00:03","ipv4":"10.1.0.13","identity":1003},{"op":"policy.replace","endpoint":3,"direction":"ingress","enforced":true,"entries":[{"identity":1001,"proto":"tcp","port":80,"action":"allow"}]},{"op":"policy.replace","endpoint":3,"direction":"egress","enforced":false,"entries":[]}]}"#;
    const BAD_BATCH: &str = r#"{"op":"batch","seq":9,"changes":[{"op":"endpoint.upsert","id":4,"ifindex":14,"mac":"02:00:00:00:00:04","ipv4":"10.1.0.14","identity":1004},{"op":"policy.update","endpoint":4,"direction":"ingress","add":[{"identity":1001,"proto":"tcp","port":70000,"action":"allow"}]}]}"#;
    // Parses, then fails to apply at its last change, after the others were applied to the copy.
    const LATE_BATCH: &str = r#"{"op":"batch","changes":[{"op":"endpoint.upsert","id":4,"ifindex":14,"mac":"02:00:00:00:00:04","ipv4":"10.1.0.14","identity":1004},{"op":"ipcache.upsert","prefix":"10.2.0.0/24","identity":2002},{"op":"policy.update","endpoint":7,"direction":"ingress","add":[]}]}"#;
    vec![
        (
            "control-every-op",
            vec![
                LOCAL, NODE, EP1, EP2, IPC, UPDATE, REPLACE, SVC, SVC_DSR, BATCH,
            ],
        ),
        (
            "control-build-and-tear-down",
            vec![
                EP1,
                EP2,
                UPDATE,
                IPC,
                SVC,
                r#"{"op":"service.delete","frontend":{"addr":"10.96.0.10","port":80,"proto":"tcp"}}"#,
                r#"{"op":"ipcache.delete","prefix":"10.2.0.21/32"}"#,
                r#"{"op":"endpoint.delete","id":2}"#,
                r#"{"op":"node.delete","name":"node-2"}"#,
                r#"{"op":"endpoint.delete","id":9}"#,
            ],
        ),
        (
            "control-refusals",
            vec![
                EP1,
                BAD_BATCH,
                LATE_BATCH,
                r#"{"op":"endpoint.upsert","id":5,"ifindex":15,"mac":"02:00:00:00:00:05","ipv4":"10.1.0.11","identity":1005}"#,
                r#"{"op":"policy.update","endpoint":7,"direction":"ingress","add":[]}"#,
                r#"{"op":"node.upsert","name":"node-3","underlay":"192.168.0.3","pod_cidrs":["10.1.0.0/16"]}"#,
                r#"{"op":"ipcache.upsert","prefix":"10.9.0.0/33","identity":1}"#,
                r#"{"op":"endpoint.upsert","id":1,"ifindex":11,"mac":"02:00:00:00:00:01","identity":0}"#,
                r#"{"op":"local_node.set","name":"n","vxlan_port":1}"#,
                "not json",
            ],
        ),
        (
            "control-queries",
            vec![
                r#"{"op":"ping","seq":1}"#,
                r#"{"op":"status"}"#,
                r#"{"op":"subscribe"}"#,
                EP2,
                r#"{"op":"dump","table":"policy","endpoint":2}"#,
                r#"{"op":"dump","table":"next_hops"}"#,
                r#"{"op":"dump","table":"policy"}"#,
                r#"{"op":"unsubscribe","seq":"x"}"#,
            ],
        ),
    ]
}

/// Key/value sequences for `etcd_events` (`put <key> <value>`, `del <key>`, `commit`,
/// `restart`): a small cluster with both policy kinds and a service, churn, and malformed keys
/// and values between good ones.
fn etcd_seeds() -> Vec<(&'static str, Vec<&'static str>)> {
    const N1: &str =
        r#"put nodes/n1 {"underlay_ip":"192.168.0.1","pod_cidrs":["10.1.0.0/24","fd00:1::/64"]}"#;
    const N2: &str = r#"put nodes/n2 {"underlay_ip":"192.168.0.2","pod_cidrs":["10.2.0.0/24"],"tunnel":"geneve"}"#;
    const NS: &str = r#"put namespaces/default {"labels":{"team":"a"}}"#;
    const EP_A: &str = r#"put endpoints/default/a {"node":"n1","labels":{"app":"a"},"ipv4":"10.1.0.5","ipv6":"fd00:1::5","interface":"lxc1","ifindex":7,"mac":"02:00:00:00:00:05"}"#;
    const EP_B: &str = r#"put endpoints/default/b {"node":"n2","labels":{"app":"b"},"ipv4":"10.2.0.9","interface":"lxc9"}"#;
    const EP_C: &str = r#"put endpoints/default/c {"node":"n1","labels":{"app":"c","tier":"db"},"ipv4":"10.1.0.6","interface":"lxc2","ifindex":8,"mac":"02:00:00:00:00:06"}"#;
    const NP: &str = r#"put policies/NetworkPolicy/default/p {"apiVersion":"networking.k8s.io/v1","kind":"NetworkPolicy","metadata":{"name":"p","namespace":"default"},"spec":{"podSelector":{"matchLabels":{"app":"a"}},"ingress":[{"from":[{"podSelector":{"matchLabels":{"app":"b"}}}],"ports":[{"port":80,"protocol":"TCP"}]}]}}"#;
    const CNP: &str = r#"put policies/CiliumNetworkPolicy/default/web {"apiVersion":"cilium.io/v2","kind":"CiliumNetworkPolicy","metadata":{"name":"web","namespace":"default"},"spec":{"endpointSelector":{"matchLabels":{"app":"c"}},"ingress":[{"fromEndpoints":[{"matchLabels":{"app":"a"}}],"toPorts":[{"ports":[{"port":"5432","protocol":"TCP"}]}]}],"egress":[{"toCIDR":["172.16.0.0/16"]},{"toEndpoints":[{"matchLabels":{"app":"b"}}]}]}}"#;
    const SVC: &str = r#"put services/default/web {"frontends":[{"ip":"10.96.0.20","port":80,"node_port":30080}],"backends":[{"ip":"10.2.0.9","port":8080},{"ip":"10.1.0.5","port":8080}],"mode":"dsr","external_ips":["203.0.113.7"]}"#;
    vec![
        (
            "etcd-cluster",
            vec![N1, N2, NS, EP_A, EP_B, EP_C, NP, CNP, SVC, "commit"],
        ),
        (
            "etcd-churn",
            vec![
                N1,
                NS,
                EP_A,
                EP_B, // its node comes later: kept aside, then retried
                NP,
                "commit",
                N2,
                "commit",
                r#"put endpoints/default/a {"node":"n1","labels":{"app":"b"},"ipv4":"10.1.0.5","interface":"lxc1","ifindex":7,"mac":"02:00:00:00:00:05"}"#,
                "commit",
                "del policies/NetworkPolicy/default/p",
                "del endpoints/default/b",
                "restart",
                "del nodes/n2",
                "del endpoints/default/a",
                "commit",
            ],
        ),
        (
            "etcd-malformed",
            vec![
                N1,
                NS,
                "put identities/labels/app=a not-a-number",
                "put identities/id/99999999 {\"labels\":{}}",
                "put endpoints/default/x {\"node\":\"n1\",\"labels\":{",
                r#"put endpoints/default/dup {"node":"n1","labels":{"app":"d"},"ipv4":"10.1.0.5","interface":"lxc3","ifindex":9,"mac":"02:00:00:00:00:09"}"#,
                "put nodes/bad/key {}",
                r#"put nodes/n3 {"underlay_ip":"192.168.0.3","pod_cidrs":["10.1.0.0/16"]}"#,
                r#"put services/default/low {"frontends":[{"ip":"10.96.0.30","port":80,"node_port":80}],"backends":[]}"#,
                "put policies/Unknown/default/p {}",
                EP_A,
                "commit",
                "del endpoints/default/nothing",
                "restart",
            ],
        ),
    ]
}

fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("corpus/seed-{target}"))
}

/// Replaces the files of `dir` by `files`.
fn write_dir(dir: &Path, files: &[(String, Vec<u8>)]) {
    if dir.exists() {
        std::fs::remove_dir_all(dir).unwrap();
    }
    std::fs::create_dir_all(dir).unwrap();
    for (name, bytes) in files {
        std::fs::write(dir.join(name), bytes).unwrap();
    }
}

#[test]
#[ignore = "rewrites the committed seed corpora"]
fn write_seeds() {
    let seeds = seeds();
    let mut wire = Vec::new();
    let mut batches = Vec::new();
    for (name, selector, frames) in &seeds {
        let refs: Vec<&[u8]> = frames.iter().map(Vec::as_slice).collect();
        batches.push((name.to_string(), encode_batch(*selector, &refs)));
        // The wire seeds: each distinct frame once.
        for (i, frame) in frames.iter().enumerate() {
            if !wire.iter().any(|(_, f): &(String, Vec<u8>)| f == frame) {
                let suffix = if frames.len() > 1 {
                    format!("-{i}")
                } else {
                    String::new()
                };
                wire.push((format!("{name}{suffix}"), frame.clone()));
            }
        }
    }
    write_dir(&corpus_dir("wire_parsers"), &wire);
    write_dir(&corpus_dir("pipeline"), &batches);
    let control: Vec<(String, Vec<u8>)> = control_seeds()
        .into_iter()
        .map(|(name, lines)| (name.to_string(), lines.join("\n").into_bytes()))
        .collect();
    write_dir(&corpus_dir("control_requests"), &control);
    let etcd: Vec<(String, Vec<u8>)> = etcd_seeds()
        .into_iter()
        .map(|(name, lines)| (name.to_string(), lines.join("\n").into_bytes()))
        .collect();
    write_dir(&corpus_dir("etcd_events"), &etcd);
    for (_, input) in &etcd {
        flagella_fuzz::etcd_events(input);
    }
    for (_, input) in &control {
        flagella_fuzz::control_requests(input);
    }
    // The seeds must run clean through their targets.
    for (_, input) in &wire {
        flagella_fuzz::wire_parsers(input);
    }
    for (_, input) in &batches {
        flagella_fuzz::pipeline(input);
    }
}
