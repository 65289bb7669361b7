//! ICMP type rules and host policies (issue 17, deliverable 2) through the real daemons of
//! `cluster.rs`'s three nodes (VXLAN), everything from etcd.
//!
//! ICMP: a CiliumNetworkPolicy admits only echo requests (`icmps`: type 8 for IPv4,
//! `EchoRequest` for IPv6) into n2a. Before it, an ICMP timestamp request (type 13, sent with a
//! raw socket) from n1b is answered by n2a's kernel, so the probe can tell; under it, n1a's
//! pings pass in both families while its timestamp request is refused and node 2 counts it,
//! and TCP is refused too; deleting the policy lets n1a's timestamp request through.
//!
//! Host policies: a CiliumClusterwideNetworkPolicy with `nodeSelector: {role: fw}` admits only
//! TCP 22 and 8080 from pods. Node 1's etcd record gets the label (nothing is pushed to a
//! dataplane): n1a (a local pod) and n2a (a pod of node 2, through the tunnel) reach node 1 on
//! 8080 but not on 9090, and node 1 counts the refusals; node 2, whose labels do not match,
//! still answers on 9090; deleting the policy restores 9090 on node 1.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;

use super::common::net::preflight;
use super::common::traffic::{echo, tcp_server};
use super::{
    assert_torn_down, delete_cnp, echo_from, import_cnp, in_pod, must, node_addr, ping,
    pod_cidr_v4, pod_cidr_v6, policy_drops, tcp_echo, wait_for, Cluster, Mode, Pod, SERIAL,
};

/// The ports of the echo servers in the nodes' own namespaces: one a host policy admits, one it
/// does not.
const ALLOWED_PORT: u16 = 8080;
const REFUSED_PORT: u16 = 9090;

/// Sends an ICMP timestamp request (type 13) from `from` to `to` with a raw socket and waits
/// up to 700 ms for `to`'s timestamp reply (type 14).
fn icmp_timestamp(from: &Pod, to: Ipv4Addr) -> Result<(), String> {
    in_pod(from, move || {
        // SAFETY: a raw ICMP socket of our own; closed below.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_ICMP) };
        if fd < 0 {
            return Err(format!("raw socket: {}", std::io::Error::last_os_error()));
        }
        let result = timestamp_exchange(fd, to);
        // SAFETY: fd is ours and used no more.
        unsafe { libc::close(fd) };
        result
    })
}

fn timestamp_exchange(fd: libc::c_int, to: Ipv4Addr) -> Result<(), String> {
    let timeout = libc::timeval {
        tv_sec: 0,
        tv_usec: 100_000,
    };
    // SAFETY: setsockopt with a timeval we own, of its size.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&timeout as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    // Type 13, code 0, checksum, identifier, sequence, three 32-bit timestamps.
    let mut msg = [0u8; 20];
    msg[0] = 13;
    msg[4..6].copy_from_slice(&0x1717u16.to_be_bytes());
    msg[6..8].copy_from_slice(&1u16.to_be_bytes());
    let sum = internet_checksum(&msg);
    msg[2..4].copy_from_slice(&sum.to_be_bytes());
    let addr = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from(to).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: sendto of a buffer we own to a sockaddr_in we own, with their sizes.
    let sent = unsafe {
        libc::sendto(
            fd,
            msg.as_ptr().cast(),
            msg.len(),
            0,
            (&addr as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    if sent < 0 {
        return Err(format!("sendto: {}", std::io::Error::last_os_error()));
    }
    let deadline = Instant::now() + Duration::from_millis(700);
    let mut buf = [0u8; 1500];
    while Instant::now() < deadline {
        // SAFETY: recv into a buffer we own, of its size.
        let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0) };
        let Ok(n) = usize::try_from(n) else {
            continue; // timeout (EAGAIN): look at the deadline again
        };
        let ihl = usize::from(buf[0] & 0x0f) * 4;
        let src = Ipv4Addr::new(buf[12], buf[13], buf[14], buf[15]);
        if n > ihl && src == to && buf[ihl] == 14 {
            return Ok(());
        }
    }
    Err(format!("no ICMP timestamp reply from {to}"))
}

fn internet_checksum(bytes: &[u8]) -> u16 {
    let mut sum = 0u32;
    for pair in bytes.chunks(2) {
        let word = u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]);
        sum += u32::from(word);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// `ping -6` from a pod (`ping` of cluster.rs takes either family from the address).
fn ping_pod(from: &Pod, to: IpAddr) -> Result<(), String> {
    ping(&from.netns, to)
}

fn icmp_types(c: &Cluster) {
    let (n1a, n1b, n2a) = (c.pod("n1a"), c.pod("n1b"), c.pod("n2a"));
    // From n1b: its request leaves a conntrack entry (60 s, as Cilium's) that would let n1a's
    // later requests through as an established flow whatever the policy says.
    must(
        "a timestamp request n1b -> n2a is answered without policy",
        || icmp_timestamp(n1b, n2a.v4),
    );
    import_cnp(
        c,
        "n2a-echo-only",
        json!({"endpointSelector": {"matchLabels": {"app": "n2a"}},
               "ingress": [{"fromEndpoints": [{}],
                            "icmps": [{"fields": [{"type": 8, "family": "IPv4"},
                                                  {"type": "EchoRequest", "family": "IPv6"}]}]}]}),
    );
    // The policy is in force once TCP (which it does not admit) is refused: only then may n1a
    // send its timestamp request, which, answered a moment too early, would leave a conntrack
    // entry that lets the next ones through for 60 s.
    wait_for(
        "n2a's policy refuses TCP: only ICMP echo is admitted",
        || tcp_echo(n1a, IpAddr::V4(n2a.v4), Duration::from_millis(700)).is_err(),
    );
    let before = policy_drops(c, 2);
    assert!(
        icmp_timestamp(n1a, n2a.v4).is_err(),
        "n2a's policy admits only echo requests, not a timestamp request"
    );
    wait_for("node 2 counts the refused timestamp request", || {
        policy_drops(c, 2) > before
    });
    must("ping n1a -> n2a (echo request allowed)", || {
        ping_pod(n1a, IpAddr::V4(n2a.v4))
    });
    let v6 = n2a.v6.expect("VXLAN pods are dual-stack");
    must("ping -6 n1a -> n2a (EchoRequest allowed)", || {
        ping_pod(n1a, IpAddr::V6(v6))
    });
    delete_cnp(c, "n2a-echo-only");
    must("the timestamp request is answered again", || {
        icmp_timestamp(n1a, n2a.v4)
    });
}

/// Echo servers on both ports in node 1's and node 2's own namespaces (every address).
fn start_node_servers(c: &mut Cluster) {
    let stop = Arc::clone(&c.stop_servers);
    for n in [1, 2] {
        let netns = c.node(n).netns.clone();
        for port in [ALLOWED_PORT, REFUSED_PORT] {
            let any = SocketAddr::new(IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED), port);
            c.servers.push(tcp_server(&netns, any, &stop, echo));
        }
    }
}

/// Rewrites node 1's etcd record (as `write_cluster` does) with `labels`.
fn label_node_1(c: &Cluster, labels: serde_json::Value) {
    let node = c.node(1);
    c.put(
        &format!("nodes/{}", node.name),
        json!({"underlay_ip": node.underlay.to_string(),
               "pod_cidrs": [pod_cidr_v4(c.mode, 1), pod_cidr_v6(c.mode, 1)],
               "tunnel": c.mode.name(), "labels": labels}),
    );
}

fn host_policies(c: &Cluster) {
    let (n1, n2) = (c.node(1), c.node(2));
    let (n1a, n2a) = (c.pod("n1a"), c.pod("n2a"));
    let node1 = |port| node_addr(n1, port);
    for from in [n1a, n2a] {
        must(
            &format!(
                "{} -> node-1:{REFUSED_PORT} before any host policy",
                from.name
            ),
            || echo_from(&from.netns, node1(REFUSED_PORT)),
        );
    }
    let policy = json!({
        "apiVersion": "cilium.io/v2", "kind": "CiliumClusterwideNetworkPolicy",
        "metadata": {"name": "fw-nodes"},
        "spec": {
            "nodeSelector": {"matchLabels": {"role": "fw"}},
            "ingress": [{"fromEndpoints": [{}],
                         "toPorts": [{"ports": [{"port": "22", "protocol": "TCP"},
                                                {"port": ALLOWED_PORT.to_string(), "protocol": "TCP"}]}]}],
        },
    });
    let file = c.dir.join("fw-nodes.json");
    std::fs::write(&file, policy.to_string()).unwrap();
    c.flagella(&["policy", "import", "-f", file.to_str().unwrap()]);
    // The policy selects no node yet: node 1 still answers on both ports.
    must("n1a -> node-1:9090 while no node has the label", || {
        echo_from(&n1a.netns, node1(REFUSED_PORT))
    });
    label_node_1(c, json!({"role": "fw"}));
    let before = policy_drops(c, 1);
    wait_for("node 1's host policy refuses n1a on 9090", || {
        echo_from(&n1a.netns, node1(REFUSED_PORT)).is_err()
    });
    must("n1a -> node-1:8080 under the host policy", || {
        echo_from(&n1a.netns, node1(ALLOWED_PORT))
    });
    wait_for("n2a (through the tunnel) is refused on node-1:9090", || {
        echo_from(&n2a.netns, node1(REFUSED_PORT)).is_err()
    });
    must("n2a -> node-1:8080 under the host policy", || {
        echo_from(&n2a.netns, node1(ALLOWED_PORT))
    });
    assert!(
        policy_drops(c, 1) > before,
        "node 1 counted no refused SYN as an ingress policy drop"
    );
    must("n1a -> node-2:9090: node 2 is not selected", || {
        echo_from(&n1a.netns, node_addr(n2, REFUSED_PORT))
    });
    c.flagella(&["policy", "delete", "fw-nodes"]);
    must(
        "n1a -> node-1:9090 after the host policy is deleted",
        || echo_from(&n1a.netns, node1(REFUSED_PORT)),
    );
    label_node_1(c, json!({}));
}

pub fn run() {
    let bin = match preflight() {
        Ok(bin) => bin,
        Err(reason) => return testkit::skip(&reason),
    };
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let mode = Mode::Vxlan;
    let prefix = format!("fcl-{}-{}", std::process::id(), mode.index());
    let mut c = Cluster::start(mode, &bin);
    c.wait_next_hops();
    c.start_servers();
    start_node_servers(&mut c);
    icmp_types(&c);
    host_policies(&c);
    super::check_host_traffic(&c, "after the host policies");
    let pids: Vec<u32> = c
        .nodes
        .iter()
        .flat_map(|n| [n.dataplane.pid(), n.control.pid()])
        .flatten()
        .collect();
    drop(c);
    assert_torn_down(&prefix, &pids);
}
