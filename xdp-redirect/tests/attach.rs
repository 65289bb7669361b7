//! Attaching the redirect program to real interfaces, as root.
//!
//! Each test builds its own network namespace `fxr-<pid>-<n>` holding a veth pair, runs its
//! body on a thread that entered that namespace (so interface indexes and `ip` resolve there),
//! and removes the namespace in a guard's `Drop`, pass or fail: deleting the namespace deletes
//! the veth pair with it. Nothing is created in, or attached to, the root namespace.
//!
//! The `uplink` module below needs no namespace: it drives the uplink filter (what the program
//! owns on the node's uplink) through BPF_PROG_TEST_RUN with hand-built frames.
//!
//! Skips, saying why, when not root, when `ip` or network namespaces are unavailable, or when
//! the kernel refuses BPF.

use std::sync::atomic::{AtomicU32, Ordering};

use testkit::NetNsGuard;
use xdp_redirect::{
    AttachMode, LinkOrigin, MapsOrigin, PinDir, RedirectConfig, XdpAction, XdpError, XdpProgram,
};

/// The two ends of the veth pair inside each test namespace.
const VETH_A: &str = "fxra";
const VETH_B: &str = "fxrb";

/// A test's network namespace; it exists as long as this value does (the guard removes it).
struct TestNs {
    name: String,
    _guard: NetNsGuard,
}

impl TestNs {
    /// Creates `fxr-<pid>-<n>`, or says why it cannot (the caller skips).
    fn create() -> Result<Self, String> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "fxr-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let mut guard = NetNsGuard::default();
        guard.add(&name)?;
        Ok(Self {
            name,
            _guard: guard,
        })
    }

    /// Runs `ip -n <ns> <args>`; panics (failing the test) if it fails.
    fn ip(&self, args: &[&str]) -> String {
        testkit::ip_in(&self.name, args)
    }

    /// Adds the veth pair, both ends up.
    fn add_veth_pair(&self) {
        self.ip(&[
            "link", "add", VETH_A, "type", "veth", "peer", "name", VETH_B,
        ]);
        self.ip(&["link", "set", VETH_A, "up"]);
        self.ip(&["link", "set", VETH_B, "up"]);
    }

    /// Runs `body` on a thread that has entered the namespace. A panic in `body` fails the
    /// test after the thread is joined; the guard still removes the namespace.
    fn run_inside<T: Send>(&self, body: impl FnOnce() -> T + Send) -> T {
        testkit::run_in(&self.name, body)
    }

    /// The XDP state `ip link` reports for `dev`: "xdp" (native), "xdpgeneric", or "none".
    fn xdp_state(&self, dev: &str) -> &'static str {
        let out = self.ip(&["link", "show", "dev", dev]);
        let words: Vec<&str> = out.split_whitespace().collect();
        if words.contains(&"xdpgeneric") {
            "xdpgeneric"
        } else if words.contains(&"xdp") {
            "xdp"
        } else {
            assert!(!out.contains("prog/xdp"), "unexpected XDP state: {out}");
            "none"
        }
    }
}

/// The namespace and a loaded program, or None after printing why the test is skipped.
fn setup() -> Option<TestNs> {
    if !nix::unistd::geteuid().is_root() {
        testkit::skip("attaching XDP needs root (run `sudo cargo test -p xdp-redirect`)");
        return None;
    }
    if let Err(err) = XdpProgram::load(RedirectConfig::default()) {
        match err {
            XdpError::PermissionDenied { .. } | XdpError::BpfUnavailable { .. } => {
                testkit::skip(&format!("BPF unavailable here: {err}"));
                return None;
            }
            other => panic!("loading the XDP program failed: {other} ({other:?})"),
        }
    }
    match TestNs::create() {
        Ok(ns) => Some(ns),
        Err(why) => {
            testkit::skip(&format!("no network namespace: {why}"));
            None
        }
    }
}

fn load() -> XdpProgram {
    XdpProgram::load(RedirectConfig::default()).expect("load (it loaded in setup)")
}

fn ifindex(name: &str) -> u32 {
    nix::net::if_::if_nametoindex(name).expect("interface index in the test namespace")
}

#[test]
fn native_attach_lives_exactly_as_long_as_the_attachment() {
    let Some(ns) = setup() else { return };
    ns.add_veth_pair();
    ns.run_inside(|| {
        let program = load();
        let attachment = program
            .attach(ifindex(VETH_A), AttachMode::Native)
            .expect("native XDP on veth");
        assert_eq!(attachment.mode(), AttachMode::Native);
        assert_eq!(ns.xdp_state(VETH_A), "xdp");
        assert_eq!(ns.xdp_state(VETH_B), "none", "only the interface asked for");

        // The link holds the program: dropping the loader does not detach it.
        drop(program);
        assert_eq!(ns.xdp_state(VETH_A), "xdp");

        drop(attachment);
        assert_eq!(ns.xdp_state(VETH_A), "none");
    });
}

#[test]
fn generic_mode_only_when_asked_and_explicit_detach() {
    let Some(ns) = setup() else { return };
    ns.add_veth_pair();
    ns.run_inside(|| {
        let program = load();
        let attachment = program
            .attach(ifindex(VETH_B), AttachMode::Generic)
            .expect("generic XDP on veth");
        assert!(attachment.mode().warning().is_some());
        assert_eq!(ns.xdp_state(VETH_B), "xdpgeneric");
        attachment.detach().expect("detach");
        assert_eq!(ns.xdp_state(VETH_B), "none");
    });
}

#[test]
fn a_busy_interface_is_refused_not_replaced() {
    let Some(ns) = setup() else { return };
    ns.add_veth_pair();
    ns.run_inside(|| {
        let program = load();
        let index = ifindex(VETH_A);
        let _first = program
            .attach(index, AttachMode::Native)
            .expect("first attach");
        for mode in [AttachMode::Native, AttachMode::Generic] {
            let err = program.attach(index, mode).unwrap_err();
            assert!(
                matches!(err, XdpError::InterfaceBusy { ifindex, .. } if ifindex == index),
                "{mode}: {err:?}"
            );
        }
        assert_eq!(
            ns.xdp_state(VETH_A),
            "xdp",
            "the first attachment is intact"
        );
    });
}

#[test]
fn native_mode_never_falls_back_silently() {
    let Some(ns) = setup() else { return };
    ns.run_inside(|| {
        let program = load();
        // The namespace's own loopback: its driver has no native XDP.
        let lo = ifindex("lo");
        let err = program.attach(lo, AttachMode::Native).unwrap_err();
        assert!(
            matches!(err, XdpError::NativeUnsupported { ifindex } if ifindex == lo),
            "{err:?}"
        );
        assert!(err.to_string().contains("AttachMode::Generic"), "{err}");
        assert_eq!(ns.xdp_state("lo"), "none");
    });
}

#[test]
fn a_missing_interface_is_named_as_such() {
    let Some(ns) = setup() else { return };
    ns.run_inside(|| {
        let program = load();
        // A fresh namespace holds only lo (index 1): no interface has this index.
        let err = program.attach(4242, AttachMode::Native).unwrap_err();
        assert!(
            matches!(err, XdpError::NoSuchInterface { ifindex: 4242 }),
            "{err:?}"
        );
    });
}

// ---- the uplink filter, through BPF_PROG_TEST_RUN ----
//
// These need no namespace: test_run executes the loaded program on a frame given here (receive
// queue 0, no interface). Which counter moved tells the decision apart, since a frame the
// dataplane owns also ends as XDP_PASS when no AF_XDP socket is registered: `no_socket` is
// "owned", `not_owned` is "the kernel's", `truncated` is "too short or malformed to decide".

/// A private bpffs for pins, or None after saying why the test is skipped.
fn bpffs() -> Option<testkit::BpffsGuard> {
    match testkit::BpffsGuard::mount("fxr-bpffs-") {
        Ok(guard) => Some(guard),
        Err(why) => {
            testkit::skip(&format!("no bpffs: {why}"));
            None
        }
    }
}

/// A pod interface's program as the restartable dataplane loads it.
fn dropping() -> RedirectConfig {
    RedirectConfig {
        drop_without_socket: true,
        ..RedirectConfig::default()
    }
}

/// 10.0.0.1 -> 10.0.0.2, UDP, no data: a frame the pod interface's program owns.
fn ipv4_frame() -> Vec<u8> {
    let mut bytes = vec![0xff; 6];
    bytes.extend_from_slice(&[0x02, 0, 0, 0, 0, 1, 0x08, 0x00]);
    #[rustfmt::skip]
    bytes.extend_from_slice(&[
        0x45, 0x00, 0x00, 0x1c, 0x00, 0x01, 0x00, 0x00, 0x40, 0x11, 0x66, 0xcd,
        10, 0, 0, 1, 10, 0, 0, 2,
        0x30, 0x39, 0x00, 0x35, 0x00, 0x08, 0x00, 0x00,
    ]);
    bytes
}

#[test]
fn a_pinned_program_outlives_its_process_and_the_next_one_takes_it_over() {
    let Some(ns) = setup() else { return };
    let Some(fs) = bpffs() else { return };
    ns.add_veth_pair();
    let pins = PinDir::new(fs.path(), VETH_A).expect("pin directory");
    ns.run_inside(|| {
        let index = ifindex(VETH_A);
        let (first, maps) = XdpProgram::load_pinned(dropping(), &pins).expect("load pinned");
        assert_eq!(maps, MapsOrigin::Created);
        let (attachment, link) = first
            .attach_pinned(index, AttachMode::Native, &pins)
            .expect("attach pinned");
        assert_eq!(link, LinkOrigin::Created);
        assert!(attachment.is_pinned());
        // No socket: the frame is dropped and counted, never passed to the kernel.
        assert_eq!(
            first.test_run(&ipv4_frame()).expect("test run"),
            XdpAction::Drop
        );
        // At least the test frame (the veth's own IPv6 chatter may add more).
        let dropped = first.counters().expect("counters").no_socket_dropped;
        assert!(dropped >= 1, "{dropped}");

        // The process goes away: the program stays on the interface.
        drop(attachment);
        drop(first);
        assert_eq!(ns.xdp_state(VETH_A), "xdp", "pinned: still attached");

        // The next process takes over the maps (its counters go on) and the link, in place.
        let (second, maps) = XdpProgram::load_pinned(dropping(), &pins).expect("load again");
        assert_eq!(maps, MapsOrigin::Reused);
        let carried = second.counters().expect("counters").no_socket_dropped;
        assert!(
            carried >= dropped,
            "counters carried over: {carried} < {dropped}"
        );
        let (_attachment, link) = second
            .attach_pinned(index, AttachMode::Native, &pins)
            .expect("take over the link");
        assert_eq!(link, LinkOrigin::Updated);
        assert_eq!(ns.xdp_state(VETH_A), "xdp");

        // The explicit uninstall detaches and removes every pin.
        pins.remove().expect("uninstall");
        assert_eq!(ns.xdp_state(VETH_A), "none");
        assert!(!pins.path().exists(), "pins removed");
        assert!(xdp_redirect::pinned_interfaces(fs.path())
            .expect("list")
            .is_empty());
    });
}

#[test]
fn pinned_maps_of_another_layout_are_rebuilt_not_misread() {
    let Some(_ns) = setup() else { return };
    let Some(fs) = bpffs() else { return };
    let pins = PinDir::new(fs.path(), "fxr-old").expect("pin directory");
    std::fs::create_dir_all(pins.path()).expect("pin dir");
    // An older program's counters: one u64 per CPU where this one has five.
    let opts = libbpf_rs::libbpf_sys::bpf_map_create_opts {
        sz: std::mem::size_of::<libbpf_rs::libbpf_sys::bpf_map_create_opts>() as _,
        ..Default::default()
    };
    let mut old = libbpf_rs::MapHandle::create(
        libbpf_rs::MapType::PercpuArray,
        Some("counters_map"),
        4,
        8,
        1,
        &opts,
    )
    .expect("create an old-layout map");
    old.pin(pins.map_path("counters_map")).expect("pin it");
    let (program, maps) = XdpProgram::load_pinned(dropping(), &pins).expect("load");
    assert!(
        matches!(&maps, MapsOrigin::Rebuilt { reason } if !reason.is_empty()),
        "{maps:?}"
    );
    assert_eq!(program.counters().expect("counters"), Default::default());
    pins.remove().expect("remove pins");
}

mod uplink {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

    use xdp_redirect::{
        OwnedPort, OwnedPrefix, RedirectConfig, RedirectCounters, XdpAction, XdpError, XdpProgram,
        GENEVE_PORT, VXLAN_PORT,
    };

    const UNDERLAY: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
    const PEER: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);
    const POD_V4: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 7);
    const POD_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 1, 0, 0, 0, 0, 0, 7);
    const HOST_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xff, 0, 0, 0, 0, 0, 1);

    const ETH_P_IP: u16 = 0x0800;
    const ETH_P_ARP: u16 = 0x0806;
    const ETH_P_IPV6: u16 = 0x86dd;
    const ICMP: u8 = 1;
    const TCP: u8 = 6;
    const UDP: u8 = 17;
    const ICMPV6: u8 = 58;
    /// iphdr.frag_off bits, host order.
    const MORE_FRAGMENTS: u16 = 0x2000;

    /// Which counter a frame moved: the program's decision.
    #[derive(Debug, PartialEq, Eq)]
    enum Decision {
        Redirected,
        /// Owned, but no socket on the queue: passed to the kernel.
        NoSocket,
        NotOwned,
        Truncated,
    }

    fn load_or_skip(config: RedirectConfig) -> Option<XdpProgram> {
        if !nix::unistd::geteuid().is_root() {
            testkit::skip("BPF tests need root (run `sudo cargo test -p xdp-redirect`)");
            return None;
        }
        match XdpProgram::load(config) {
            Ok(program) => Some(program),
            Err(err @ (XdpError::PermissionDenied { .. } | XdpError::BpfUnavailable { .. })) => {
                testkit::skip(&format!("BPF unavailable here: {err}"));
                None
            }
            Err(err) => panic!("loading the XDP program failed: {err} ({err:?})"),
        }
    }

    fn uplink_or_skip() -> Option<XdpProgram> {
        load_or_skip(RedirectConfig::uplink(Some(UNDERLAY)))
    }

    /// Runs `frame` once; the decision from the counters, checked against the verdict.
    fn decide(program: &XdpProgram, frame: &[u8]) -> Decision {
        let before = program.counters().expect("counters");
        let action = program.test_run(frame).expect("BPF_PROG_TEST_RUN");
        let after = program.counters().expect("counters");
        let delta = |f: fn(&RedirectCounters) -> u64| f(&after) - f(&before);
        let moved = [
            (delta(|c| c.redirected), Decision::Redirected),
            (delta(|c| c.no_socket), Decision::NoSocket),
            (delta(|c| c.not_owned), Decision::NotOwned),
            (delta(|c| c.truncated), Decision::Truncated),
        ];
        let mut moved: Vec<Decision> = moved
            .into_iter()
            .filter(|(n, _)| *n > 0)
            .map(|(n, d)| {
                assert_eq!(n, 1, "{d:?} moved by {n}");
                d
            })
            .collect();
        assert_eq!(moved.len(), 1, "exactly one counter moves: {moved:?}");
        let decision = moved.remove(0);
        let expected = if decision == Decision::Redirected {
            XdpAction::Redirect
        } else {
            XdpAction::Pass
        };
        assert_eq!(action, expected, "{decision:?}");
        decision
    }

    fn ethernet(ethertype: u16, payload: &[u8]) -> Vec<u8> {
        let mut bytes = vec![0x02, 0, 0, 0, 0, 0x01, 0x02, 0, 0, 0, 0, 0x02];
        bytes.extend_from_slice(&ethertype.to_be_bytes());
        bytes.extend_from_slice(payload);
        bytes
    }

    /// An IPv4 packet from PEER to `dst`: `options` (a multiple of 4 bytes) after the fixed
    /// header, `frag_off` as in the header (host order), a valid header checksum.
    fn ipv4_packet(dst: Ipv4Addr, proto: u8, options: &[u8], frag_off: u16, l4: &[u8]) -> Vec<u8> {
        assert_eq!(options.len() % 4, 0);
        let header_len = 20 + options.len();
        let total = u16::try_from(header_len + l4.len()).expect("small packet");
        let ihl = u8::try_from(header_len / 4).expect("at most 15 words");
        let mut ip = vec![0x40 | ihl, 0];
        ip.extend_from_slice(&total.to_be_bytes());
        ip.extend_from_slice(&[0, 1]); // identification
        ip.extend_from_slice(&frag_off.to_be_bytes());
        ip.extend_from_slice(&[64, proto, 0, 0]);
        ip.extend_from_slice(&PEER.octets());
        ip.extend_from_slice(&dst.octets());
        ip.extend_from_slice(options);
        let checksum = internet_checksum(&ip);
        ip[10..12].copy_from_slice(&checksum.to_be_bytes());
        ip.extend_from_slice(l4);
        ip
    }

    fn ipv4(dst: Ipv4Addr, proto: u8, l4: &[u8]) -> Vec<u8> {
        ethernet(ETH_P_IP, &ipv4_packet(dst, proto, &[], 0, l4))
    }

    fn ipv6(dst: Ipv6Addr, next_header: u8, l4: &[u8]) -> Vec<u8> {
        let mut ip = vec![0x60, 0, 0, 0];
        let len = u16::try_from(l4.len()).expect("small packet");
        ip.extend_from_slice(&len.to_be_bytes());
        ip.extend_from_slice(&[next_header, 64]);
        ip.extend_from_slice(&HOST_V6.octets());
        ip.extend_from_slice(&dst.octets());
        ip.extend_from_slice(l4);
        ethernet(ETH_P_IPV6, &ip)
    }

    /// A UDP header to `port` and an 8-byte VXLAN header (VNI 1) behind it.
    fn udp(port: u16) -> Vec<u8> {
        let mut l4 = 49152u16.to_be_bytes().to_vec();
        l4.extend_from_slice(&port.to_be_bytes());
        l4.extend_from_slice(&16u16.to_be_bytes());
        l4.extend_from_slice(&[0, 0]);
        l4.extend_from_slice(&[0x08, 0, 0, 0, 0, 0, 1, 0]);
        l4
    }

    /// A TCP SYN to `port` (no options).
    fn tcp_syn(port: u16) -> Vec<u8> {
        let mut l4 = 49152u16.to_be_bytes().to_vec();
        l4.extend_from_slice(&port.to_be_bytes());
        l4.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x02, 0xff, 0xff, 0, 0, 0, 0]);
        l4
    }

    /// An ICMP error (`ty` 3 or 11) quoting a TCP packet `src:sport -> PEER:80`.
    fn icmp_error_about(ty: u8, src: Ipv4Addr, sport: u16) -> Vec<u8> {
        let mut msg = vec![ty, 4, 0, 0, 0, 0, 0x05, 0x00];
        let mut quoted = vec![0x45, 0, 0, 40, 0, 1, 0x40, 0, 63, TCP, 0, 0];
        quoted.extend_from_slice(&src.octets());
        quoted.extend_from_slice(&PEER.octets());
        msg.extend_from_slice(&quoted);
        msg.extend_from_slice(&sport.to_be_bytes());
        msg.extend_from_slice(&80u16.to_be_bytes());
        msg.extend_from_slice(&[0, 0, 0, 1]);
        msg
    }

    fn icmp_echo() -> Vec<u8> {
        vec![8, 0, 0xf7, 0xfe, 0, 1, 0, 1]
    }

    fn arp_request(target: Ipv4Addr) -> Vec<u8> {
        let mut arp = vec![0, 1, 0x08, 0, 6, 4, 0, 1, 0x02, 0, 0, 0, 0, 0x02];
        arp.extend_from_slice(&PEER.octets());
        arp.extend_from_slice(&[0; 6]);
        arp.extend_from_slice(&target.octets());
        ethernet(ETH_P_ARP, &arp)
    }

    fn internet_checksum(bytes: &[u8]) -> u16 {
        let mut sum: u32 = bytes
            .chunks(2)
            .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
            .sum();
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        !(sum as u16)
    }

    fn host(addr: impl Into<IpAddr>) -> OwnedPrefix {
        OwnedPrefix::host(addr.into())
    }

    #[test]
    fn tunnel_traffic_to_the_underlay_address_is_owned() {
        let Some(p) = uplink_or_skip() else { return };
        assert_eq!(
            decide(&p, &ipv4(UNDERLAY, UDP, &udp(VXLAN_PORT))),
            Decision::NoSocket
        );
        assert_eq!(
            decide(&p, &ipv4(UNDERLAY, UDP, &udp(GENEVE_PORT))),
            Decision::NoSocket
        );
        // The same to another address is not this node's tunnel traffic.
        assert_eq!(
            decide(&p, &ipv4(PEER, UDP, &udp(VXLAN_PORT))),
            Decision::NotOwned
        );
    }

    #[test]
    fn the_hosts_own_traffic_stays_with_the_kernel() {
        let Some(p) = uplink_or_skip() else { return };
        let cases = [
            ("ping", ipv4(UNDERLAY, ICMP, &icmp_echo())),
            ("ssh", ipv4(UNDERLAY, TCP, &tcp_syn(22))),
            ("etcd", ipv4(UNDERLAY, TCP, &tcp_syn(2379))),
            (
                "tcp to the vxlan port",
                ipv4(UNDERLAY, TCP, &tcp_syn(VXLAN_PORT)),
            ),
            ("dns", ipv4(UNDERLAY, UDP, &udp(53))),
            ("arp", arp_request(UNDERLAY)),
            (
                "ipv6 ping",
                ipv6(HOST_V6, ICMPV6, &[128, 0, 0, 0, 0, 1, 0, 1]),
            ),
        ];
        for (name, frame) in cases {
            assert_eq!(decide(&p, &frame), Decision::NotOwned, "{name}");
        }
    }

    #[test]
    fn ip_options_are_skipped_to_find_the_udp_port() {
        let Some(p) = uplink_or_skip() else { return };
        for words in 1..=10 {
            let options = vec![1u8; 4 * words]; // NOPs
            let packet = ipv4_packet(UNDERLAY, UDP, &options, 0, &udp(VXLAN_PORT));
            assert_eq!(
                decide(&p, &ethernet(ETH_P_IP, &packet)),
                Decision::NoSocket,
                "{words} option words"
            );
            let packet = ipv4_packet(UNDERLAY, UDP, &options, 0, &udp(53));
            assert_eq!(
                decide(&p, &ethernet(ETH_P_IP, &packet)),
                Decision::NotOwned,
                "{words} option words, port 53"
            );
        }
    }

    #[test]
    fn masquerade_replies_are_owned_by_port_and_the_hosts_ports_are_not() {
        let Some(p) = load_or_skip(RedirectConfig {
            masquerade_ports: Some((61000, 65535)),
            ..RedirectConfig::uplink(Some(UNDERLAY))
        }) else {
            return;
        };
        for port in [61000, 63000, 65535] {
            for (name, frame) in [
                ("tcp", ipv4(UNDERLAY, TCP, &tcp_syn(port))),
                ("udp", ipv4(UNDERLAY, UDP, &udp(port))),
            ] {
                assert_eq!(decide(&p, &frame), Decision::NoSocket, "{name} {port}");
            }
        }
        // A router's errors about a masqueraded packet.
        for ty in [3, 11] {
            let error = ipv4(UNDERLAY, ICMP, &icmp_error_about(ty, UNDERLAY, 62000));
            assert_eq!(decide(&p, &error), Decision::NoSocket, "ICMP type {ty}");
        }
        // With IP options in front of the ports too.
        let packet = ipv4_packet(UNDERLAY, TCP, &[1u8; 40], 0, &tcp_syn(62000));
        assert_eq!(decide(&p, &ethernet(ETH_P_IP, &packet)), Decision::NoSocket);
        let kernels = [
            ("below the range", ipv4(UNDERLAY, TCP, &tcp_syn(60999))),
            ("ssh", ipv4(UNDERLAY, TCP, &tcp_syn(22))),
            ("ping", ipv4(UNDERLAY, ICMP, &icmp_echo())),
            (
                "an error about the host's own connection",
                ipv4(UNDERLAY, ICMP, &icmp_error_about(3, UNDERLAY, 40000)),
            ),
            (
                "an error quoting another source",
                ipv4(UNDERLAY, ICMP, &icmp_error_about(3, PEER, 62000)),
            ),
            (
                "a parameter problem",
                ipv4(UNDERLAY, ICMP, &icmp_error_about(12, UNDERLAY, 62000)),
            ),
            (
                "an error cut short",
                ipv4(UNDERLAY, ICMP, &icmp_error_about(3, UNDERLAY, 62000)[..30]),
            ),
            ("another address", ipv4(PEER, TCP, &tcp_syn(62000))),
            (
                "a later fragment",
                ethernet(
                    ETH_P_IP,
                    &ipv4_packet(UNDERLAY, TCP, &[], 185, &tcp_syn(62000)),
                ),
            ),
        ];
        for (name, frame) in kernels {
            assert_eq!(decide(&p, &frame), Decision::NotOwned, "{name}");
        }
        // Without a range (the default), no reply is owned.
        let Some(plain) = uplink_or_skip() else {
            return;
        };
        assert_eq!(
            decide(&plain, &ipv4(UNDERLAY, TCP, &tcp_syn(62000))),
            Decision::NotOwned
        );
        assert_eq!(
            decide(
                &plain,
                &ipv4(UNDERLAY, ICMP, &icmp_error_about(3, UNDERLAY, 62000))
            ),
            Decision::NotOwned
        );
    }

    #[test]
    fn only_the_first_fragment_has_a_port() {
        let Some(p) = uplink_or_skip() else { return };
        let first = ipv4_packet(UNDERLAY, UDP, &[], MORE_FRAGMENTS, &udp(VXLAN_PORT));
        assert_eq!(decide(&p, &ethernet(ETH_P_IP, &first)), Decision::NoSocket);
        // A later fragment whose first payload bytes happen to look like port 4789.
        for frag_off in [MORE_FRAGMENTS | 1, 185] {
            let later = ipv4_packet(UNDERLAY, UDP, &[], frag_off, &udp(VXLAN_PORT));
            assert_eq!(
                decide(&p, &ethernet(ETH_P_IP, &later)),
                Decision::NotOwned,
                "frag_off {frag_off:#x}"
            );
        }
    }

    #[test]
    fn owned_prefixes_decide_for_pod_addresses_and_can_be_removed() {
        let Some(p) = uplink_or_skip() else { return };
        let to_pod_v4 = ipv4(POD_V4, TCP, &tcp_syn(80));
        let to_pod_v6 = ipv6(POD_V6, TCP, &tcp_syn(80));
        assert_eq!(decide(&p, &to_pod_v4), Decision::NotOwned);
        assert_eq!(decide(&p, &to_pod_v6), Decision::NotOwned);

        p.add_owned_prefix(host(POD_V4)).expect("add /32");
        p.add_owned_prefix(host(POD_V6)).expect("add /128");
        p.add_owned_prefix(host(POD_V4))
            .expect("adding twice is fine");
        assert_eq!(decide(&p, &to_pod_v4), Decision::NoSocket);
        assert_eq!(decide(&p, &to_pod_v6), Decision::NoSocket);
        assert_eq!(
            decide(&p, &ipv4(Ipv4Addr::new(10, 1, 0, 8), TCP, &tcp_syn(80))),
            Decision::NotOwned,
            "the neighbour of an owned /32"
        );
        let mut listed = p.owned_prefixes().expect("list");
        listed.sort();
        assert_eq!(listed, vec![host(POD_V4), host(POD_V6)]);

        p.remove_owned_prefix(host(POD_V4)).expect("remove /32");
        p.remove_owned_prefix(host(POD_V6)).expect("remove /128");
        p.remove_owned_prefix(host(POD_V6))
            .expect("removing twice is fine");
        assert_eq!(decide(&p, &to_pod_v4), Decision::NotOwned);
        assert_eq!(decide(&p, &to_pod_v6), Decision::NotOwned);
        assert_eq!(p.owned_prefixes().expect("list"), vec![]);
    }

    /// NodePort: exactly (address, protocol, port) is owned, behind IP options too; the
    /// address's other ports, the other protocol and non-first fragments stay the kernel's.
    #[test]
    fn owned_ports_take_exactly_their_port_and_can_be_removed() {
        let Some(p) = uplink_or_skip() else { return };
        let node_port = OwnedPort::new(UNDERLAY, TCP, 30080).expect("TCP");
        let udp_port = OwnedPort::new(UNDERLAY, UDP, 30053).expect("UDP");
        let syn = ipv4(UNDERLAY, TCP, &tcp_syn(30080));
        assert_eq!(decide(&p, &syn), Decision::NotOwned, "before it is added");
        p.add_owned_port(node_port).expect("add");
        p.add_owned_port(node_port).expect("adding twice is fine");
        p.add_owned_port(udp_port).expect("add");
        assert_eq!(decide(&p, &syn), Decision::NoSocket);
        let behind_options = ethernet(
            ETH_P_IP,
            &ipv4_packet(UNDERLAY, TCP, &[1, 1, 1, 1, 1, 1, 1, 1], 0, &tcp_syn(30080)),
        );
        assert_eq!(decide(&p, &behind_options), Decision::NoSocket);
        assert_eq!(
            decide(&p, &ipv4(UNDERLAY, UDP, &udp(30053))),
            Decision::NoSocket
        );
        for (what, frame) in [
            ("ssh on the same address", ipv4(UNDERLAY, TCP, &tcp_syn(22))),
            ("the next port", ipv4(UNDERLAY, TCP, &tcp_syn(30081))),
            ("UDP to the TCP node port", ipv4(UNDERLAY, UDP, &udp(30080))),
            ("another address", ipv4(PEER, TCP, &tcp_syn(30080))),
            (
                "a non-first fragment",
                ethernet(
                    ETH_P_IP,
                    &ipv4_packet(UNDERLAY, TCP, &[], 1, &tcp_syn(30080)),
                ),
            ),
        ] {
            assert_eq!(decide(&p, &frame), Decision::NotOwned, "{what}");
        }
        let mut owned = p.owned_ports().expect("list");
        owned.sort();
        assert_eq!(owned, vec![node_port, udp_port]);
        p.remove_owned_port(node_port).expect("remove");
        p.remove_owned_port(node_port)
            .expect("removing twice is fine");
        assert_eq!(decide(&p, &syn), Decision::NotOwned, "after removal");
        assert_eq!(p.owned_ports().expect("list"), vec![udp_port]);
    }

    #[test]
    fn a_shorter_prefix_owns_every_address_inside_it() {
        let Some(p) = uplink_or_skip() else { return };
        let cidr = OwnedPrefix::new(IpAddr::V4(Ipv4Addr::new(10, 1, 0, 99)), 24).expect("/24");
        p.add_owned_prefix(cidr).expect("add /24");
        assert_eq!(
            p.owned_prefixes().expect("list")[0].to_string(),
            "10.1.0.0/24"
        );
        assert_eq!(decide(&p, &ipv4(POD_V4, UDP, &udp(53))), Decision::NoSocket);
        assert_eq!(
            decide(&p, &ipv4(Ipv4Addr::new(10, 1, 1, 7), UDP, &udp(53))),
            Decision::NotOwned
        );
    }

    #[test]
    fn without_an_underlay_address_no_tunnel_traffic_is_owned() {
        let Some(p) = load_or_skip(RedirectConfig::uplink(None)) else {
            return;
        };
        assert_eq!(
            decide(&p, &ipv4(UNDERLAY, UDP, &udp(VXLAN_PORT))),
            Decision::NotOwned
        );
        // Learning the address later (as the dataplane does) takes effect at once.
        p.set_config(RedirectConfig::uplink(Some(UNDERLAY)))
            .expect("set_config");
        assert_eq!(p.config().expect("read back").underlay_ipv4, Some(UNDERLAY));
        assert_eq!(
            decide(&p, &ipv4(UNDERLAY, UDP, &udp(VXLAN_PORT))),
            Decision::NoSocket
        );
    }

    #[test]
    fn tunnel_ports_are_configurable() {
        let Some(p) = load_or_skip(RedirectConfig {
            vxlan_port: 8472, // Linux's historical VXLAN port
            geneve_port: 0,   // no Geneve
            ..RedirectConfig::uplink(Some(UNDERLAY))
        }) else {
            return;
        };
        assert_eq!(
            decide(&p, &ipv4(UNDERLAY, UDP, &udp(8472))),
            Decision::NoSocket
        );
        assert_eq!(
            decide(&p, &ipv4(UNDERLAY, UDP, &udp(VXLAN_PORT))),
            Decision::NotOwned
        );
        assert_eq!(
            decide(&p, &ipv4(UNDERLAY, UDP, &udp(GENEVE_PORT))),
            Decision::NotOwned
        );
        assert_eq!(
            decide(&p, &ipv4(UNDERLAY, UDP, &udp(0))),
            Decision::NotOwned,
            "port 0"
        );
    }

    #[test]
    fn odd_and_truncated_headers_are_passed_safely() {
        let Some(p) = uplink_or_skip() else { return };
        p.add_owned_prefix(host(POD_V6)).expect("add /128");
        let vxlan = ipv4_packet(UNDERLAY, UDP, &[], 0, &udp(VXLAN_PORT));

        // IHL below 5: the header claims to be shorter than its fixed part.
        for ihl in 0..5u8 {
            let mut bad = vxlan.clone();
            bad[0] = 0x40 | ihl;
            assert_eq!(
                decide(&p, &ethernet(ETH_P_IP, &bad)),
                Decision::Truncated,
                "ihl {ihl}"
            );
        }
        // Cut inside the IPv4 header, and inside the UDP header.
        for len in [0, 1, 19, 20 + 3] {
            assert_eq!(
                decide(&p, &ethernet(ETH_P_IP, &vxlan[..len])),
                Decision::Truncated,
                "{len} bytes of IPv4"
            );
        }
        // IHL 15 claims 40 bytes of options that are not there.
        let mut long = vxlan.clone();
        long[0] = 0x4f;
        assert_eq!(decide(&p, &ethernet(ETH_P_IP, &long)), Decision::Truncated);
        // IPv6 without its full 40-byte header, to an owned address.
        let to_pod = ipv6(POD_V6, UDP, &udp(53));
        for len in [14, 14 + 1, 14 + 39] {
            assert_eq!(
                decide(&p, &to_pod[..len]),
                Decision::Truncated,
                "{len} bytes"
            );
        }
        assert_eq!(
            decide(&p, &to_pod[..14 + 40]),
            Decision::NoSocket,
            "header complete"
        );
    }

    #[test]
    fn pod_interfaces_still_own_all_ip() {
        let Some(p) = load_or_skip(RedirectConfig::default()) else {
            return;
        };
        // Even with the fields of an uplink filled in: the filter flag is what decides.
        p.set_config(RedirectConfig {
            underlay_ipv4: Some(UNDERLAY),
            ..RedirectConfig::default()
        })
        .expect("set_config");
        assert_eq!(
            decide(&p, &ipv4(UNDERLAY, TCP, &tcp_syn(22))),
            Decision::NoSocket
        );
        assert_eq!(
            decide(&p, &ipv6(HOST_V6, TCP, &tcp_syn(22))),
            Decision::NoSocket
        );
        let mut short = ipv4(UNDERLAY, TCP, &tcp_syn(22));
        short.truncate(14 + 3);
        assert_eq!(
            decide(&p, &short),
            Decision::NoSocket,
            "the dataplane parses"
        );
        assert_eq!(decide(&p, &arp_request(UNDERLAY)), Decision::NotOwned);
    }

    #[test]
    fn owned_frames_reach_a_registered_socket() {
        let Some(p) = uplink_or_skip() else { return };
        // SAFETY: plain syscall with constant arguments; the result is checked below.
        let fd = unsafe { libc::socket(libc::AF_XDP, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            testkit::skip("no AF_XDP socket here");
            return;
        }
        // SAFETY: `socket` returned a new fd that nothing else owns.
        let xsk = unsafe { OwnedFd::from_raw_fd(fd) };
        p.register_socket(0, xsk.as_raw_fd()).expect("register");
        p.add_owned_prefix(host(POD_V4)).expect("add /32");
        assert_eq!(
            decide(&p, &ipv4(UNDERLAY, UDP, &udp(VXLAN_PORT))),
            Decision::Redirected
        );
        assert_eq!(
            decide(&p, &ipv4(POD_V4, TCP, &tcp_syn(80))),
            Decision::Redirected
        );
        assert_eq!(
            decide(&p, &ipv4(UNDERLAY, TCP, &tcp_syn(22))),
            Decision::NotOwned
        );
    }

    #[test]
    fn prefix_lengths_beyond_the_address_are_refused() {
        let err = OwnedPrefix::new(IpAddr::V4(POD_V4), 33).unwrap_err();
        assert!(err.to_string().contains("at most 32"), "{err}");
    }
}
